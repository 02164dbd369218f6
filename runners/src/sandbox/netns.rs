//! netns: the engine's own sandbox, made with system calls and no external tool. The addon gets
//! the same guarantees as under bwrap: network (only `lo` unless it asks for network), PID, mount,
//! IPC and UTS namespaces, a root built from what a program needs (see [`View`]) entered with
//! `pivot_root`, a `/proc` of its own, no capabilities, `no_new_privs` and the seccomp filter. A
//! root engine runs the addon as its own unprivileged identity; otherwise a user namespace maps
//! the engine's user.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::process::Command;

use super::ns::{NsPlan, RootPlan};
use super::view::{Inside, View};
use super::{is_root, Identity, Isolation, Mounts, Probe, ProbeCache, Sandbox, SandboxKind, Spec};
use crate::egress::NetKind;

#[derive(Debug)]
pub struct Netns {
    /// Who the addon is when the engine is root.
    identity: Identity,
    probes: Arc<ProbeCache>,
}

impl Netns {
    pub fn new(identity: Identity, probes: Arc<ProbeCache>) -> Netns {
        Netns { identity, probes }
    }

    fn plan(&self, spec: &Spec<'_>) -> Result<NsPlan, super::seccomp::SeccompError> {
        let Spec { mounts, extra_ro, iso, scratch, cgroups, rlimits, tmpfs, .. } = *spec;
        let inside = self.view(mounts);
        let who = if is_root() { self.identity } else { Identity::current() };
        let view =
            View::host_program(mounts, &inside, iso.network, extra_ro, Inside { uid: who.uid, gid: who.gid }, tmpfs);
        let filters = super::seccomp::filters()?;
        Ok(NsPlan::new(iso.network != NetKind::Host)
            .with_ipc_uts()
            .with_root(RootPlan::new(&view, scratch, &inside.work))
            .drop_to(Some(self.identity))
            .with_seccomp(filters)
            .join_cgroups(cgroups)
            .with_rlimits(rlimits))
    }
}

impl Sandbox for Netns {
    fn kind(&self) -> SandboxKind {
        SandboxKind::Netns
    }

    fn probe(&self) -> Probe {
        self.probes.get("netns", &format!("{:?}", self.identity), None, || self.probe_now())
    }

    fn view(&self, _host: &Mounts) -> Mounts {
        Mounts::mnt()
    }

    fn owner(&self) -> Option<Identity> {
        is_root().then_some(self.identity)
    }

    /// Its network namespace gets the engine's egress network while it waits after unsharing.
    fn egress(&self) -> Result<(), String> {
        crate::egress::tools().map_err(|e| e.to_string())?;
        crate::egress::tun_usable()
    }

    fn build(&self, spec: &Spec<'_>) -> Command {
        self.command_with(spec, None)
    }

    /// An egress run reports its process once its namespaces exist and waits for the engine
    /// (see [`super::Handoff`]); others join their control groups themselves before exec.
    fn launch(&self, spec: &Spec<'_>) -> Result<super::Launch, super::SandboxError> {
        self.check(spec.iso)?;
        if spec.iso.network != NetKind::Egress {
            return Ok(super::Launch { cmd: self.build(spec), handoff: None });
        }
        let no_pipes = |e: std::io::Error| super::SandboxError::NoEgress {
            sandbox: "netns",
            why: format!("no pipes for the handoff: {e}"),
        };
        let (info_r, info_w) = super::pipe().map_err(no_pipes)?;
        let (block_r, block_w) = super::pipe().map_err(no_pipes)?;
        let cmd = self.command_with(spec, Some((info_w, block_r)));
        Ok(super::Launch { cmd, handoff: Some(super::Handoff { info: info_r, release: block_w, cgroups: vec![] }) })
    }
}

impl Netns {
    fn command_with(&self, spec: &Spec<'_>, handoff: Option<(OwnedFd, OwnedFd)>) -> Command {
        let Spec { program, args, env, mounts, .. } = *spec;
        let inside = self.view(mounts);
        let mut c = Command::new(mounts.translate(program, &inside));
        c.args(args).env_clear().envs(env.iter().map(|(k, v)| (k, v)));
        match self.plan(spec) {
            Ok(mut plan) => {
                if let Some(ends) = handoff {
                    plan = plan.with_handoff_ends(&mut c, ends);
                }
                plan.install(&mut c)
            }
            Err(e) => {
                // Never run unfiltered: a command that cannot start, saying why.
                tracing::error!("netns: {e}");
                c = Command::new(format!("/nonexistent/netns-cannot-start: {e}"));
            }
        }
        c
    }
}

impl Netns {
    /// Starts `/bin/true` in the real sandbox, as a run would.
    fn probe_now(&self) -> Probe {
        let how = if is_root() {
            format!("running as uid {} (setting sandbox-user)", self.identity.uid)
        } else {
            "inside a user namespace".to_string()
        };
        if !Path::new("/proc/self/ns/net").exists() {
            return Probe::missing("netns", "this kernel has no network namespaces");
        }
        let dir = match tempfile::Builder::new().prefix("addon-netns-probe-").tempdir() {
            Ok(d) => d,
            Err(e) => return Probe::missing("netns", format!("cannot make a probe directory: {e}")),
        };
        let d = dir.path().to_path_buf();
        let _ = fs_err::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o755));
        let scratch = d.join("root");
        if let Err(e) = fs_err::create_dir(&scratch) {
            return Probe::missing("netns", format!("cannot make a probe directory: {e}"));
        }
        let mounts = Mounts { work: d.clone(), output: d.clone(), cache: d.clone(), home: d };
        let spec = Spec {
            program: Path::new("/bin/true"),
            args: &[],
            env: &[],
            mounts: &mounts,
            extra_ro: &[] as &[PathBuf],
            iso: Isolation { network: NetKind::None },
            scratch: &scratch,
            cgroups: &[],
            rlimits: &[],
            tmpfs: Default::default(),
        };
        let plan = match self.plan(&spec) {
            Ok(p) => p,
            Err(e) => return Probe::missing("netns", e.to_string()),
        };
        let mut c = std::process::Command::new("/bin/true");
        plan.install_std(&mut c);
        match c.output() {
            Ok(o) if o.status.success() => Probe::ok(
                "netns",
                format!("network, PID, mount, IPC and UTS namespaces, own root, seccomp; {how}"),
                None,
            ),
            Ok(o) if o.status.code() == Some(125) => {
                Probe::missing("netns", format!("building the addon's root failed here ({how})"))
            }
            Ok(o) => Probe::missing("netns", format!("namespace setup failed ({}; {how})", o.status)),
            Err(e) => Probe::missing("netns", format!("cannot create namespaces ({how}): {e}")),
        }
    }
}
