//! bubblewrap: a root built from what a program needs (see [`View`]), the run's directories at
//! `/mnt`, new PID, IPC and UTS namespaces, and a network namespace with only `lo` unless the
//! addon asks for network.

use std::io::{Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::process::Command;

use super::ns::{MountPlan, NsPlan};
use super::view::{Inside, Step, View};
use super::{is_root, Identity, Mounts, Probe, ProbeCache, Sandbox, SandboxKind, Spec};
use crate::egress::NetKind;

#[derive(Debug)]
pub struct Bwrap {
    /// Who the addon is when the engine is root.
    identity: Identity,
    probes: Arc<ProbeCache>,
}

impl Bwrap {
    pub fn new(identity: Identity, probes: Arc<ProbeCache>) -> Bwrap {
        Bwrap { identity, probes }
    }
}

fn bwrap_path() -> Option<PathBuf> {
    which::which("bwrap").ok()
}

impl Sandbox for Bwrap {
    fn kind(&self) -> SandboxKind {
        SandboxKind::Bwrap
    }

    fn probe(&self) -> Probe {
        let path = bwrap_path();
        self.probes.get("bwrap", &format!("{:?}", self.identity), path.as_deref(), || self.probe_now(path.clone()))
    }

    fn view(&self, _host: &Mounts) -> Mounts {
        Mounts::mnt()
    }

    fn owner(&self) -> Option<Identity> {
        is_root().then_some(self.identity)
    }

    /// Its network namespace gets the engine's egress network during the handoff.
    fn egress(&self) -> Result<(), String> {
        crate::egress::tools().map_err(|e| e.to_string())?;
        crate::egress::tun_usable()
    }

    fn build(&self, spec: &Spec<'_>) -> Command {
        self.command_with(spec, None)
    }

    /// Started before it is in the run's control groups: bwrap reports its inner process on
    /// `--info-fd` and waits on `--block-fd` after its setup, before the addon, while the engine
    /// moves both processes (see [`super::Handoff`]).
    fn launch(&self, spec: &Spec<'_>) -> Result<super::Launch, super::SandboxError> {
        self.check(spec.iso)?;
        // An egress run waits for its network as it waits for its groups.
        let egress = spec.iso.network == NetKind::Egress;
        if spec.cgroups.is_empty() && !egress {
            return Ok(super::Launch { cmd: self.build(spec), handoff: None });
        }
        let (Ok((info_r, info_w)), Ok((block_r, block_w))) = (super::pipe(), super::pipe()) else {
            if egress {
                return Err(super::SandboxError::NoEgress { sandbox: "bwrap", why: "no pipes for the handoff".into() });
            }
            // Without pipes, the process joins the groups itself, as before.
            return Ok(super::Launch { cmd: self.build(spec), handoff: None });
        };
        let cmd = self.command_with(&Spec { cgroups: &[], ..*spec }, Some(HandoffFds { info: info_w, block: block_r }));
        let handoff = super::Handoff { info: info_r, release: block_w, cgroups: spec.cgroups.to_vec() };
        Ok(super::Launch { cmd, handoff: Some(handoff) })
    }
}

/// The ends of the handoff pipes bwrap gets.
struct HandoffFds {
    info: OwnedFd,
    block: OwnedFd,
}

impl Bwrap {
    fn command_with(&self, spec: &Spec<'_>, handoff: Option<HandoffFds>) -> Command {
        let Spec { program, args, env, mounts, extra_ro, iso, cgroups, rlimits, tmpfs, .. } = *spec;
        let inside = self.view(mounts);
        // A root engine first binds the run's directories at /mnt in a mount namespace of its
        // own (it can reach them; the addon's identity could not, through the engine's private
        // directories), then becomes the addon's identity and starts bwrap unprivileged, which
        // binds them from there.
        let root = is_root();
        let who = if root { self.identity } else { Identity::current() };
        let sources = if root { inside.clone() } else { mounts.clone() };
        let mut view =
            View::host_program(&sources, &inside, iso.network, extra_ro, Inside { uid: who.uid, gid: who.gid }, tmpfs);
        // A root engine lays out the view's /etc (a score of files, each a bind) itself, below
        // its private /mnt, and bwrap binds it read-only in one step: bwrap reads the whole mount
        // table for each bind, which was a third of a no-op run's cost.
        let staged_etc = root.then(|| {
            let (etc, rest): (Vec<Step>, Vec<Step>) = view.steps.drain(..).partition(is_staged_etc);
            view.steps = rest;
            etc
        });
        let mut c = Command::new(bwrap_path().unwrap_or_else(|| PathBuf::from("bwrap")));
        if staged_etc.is_some() {
            c.arg("--ro-bind").arg(Path::new(STAGE).join("etc")).arg("/etc");
        }
        // Engine-made files and the seccomp programs reach bwrap as inherited memory files.
        let mut data = Vec::new();
        let mut memfd_arg = |c: &mut Command, flag: &str, bytes: &[u8], at: Option<&Path>| match memfd(bytes) {
            Ok(fd) => {
                c.arg(flag).arg(fd.as_raw_fd().to_string());
                if let Some(at) = at {
                    c.arg(at);
                }
                data.push(fd);
                true
            }
            Err(e) => {
                tracing::warn!("bwrap: cannot make a memory file for {flag}: {e}");
                false
            }
        };
        for step in &view.steps {
            match step {
                Step::RoBind(p) => {
                    c.arg("--ro-bind").arg(p).arg(p);
                }
                Step::Bind { src, at } => {
                    c.arg("--bind").arg(src).arg(at);
                }
                Step::Symlink { target, at } => {
                    c.arg("--symlink").arg(target).arg(at);
                }
                Step::Dir(p) => {
                    c.arg("--dir").arg(p);
                }
                Step::Tmpfs { at, bound } => {
                    if let Some(size) = bound.size {
                        c.arg("--size").arg(size.to_string());
                    }
                    c.args(["--perms", "1777", "--tmpfs"]).arg(at);
                }
                Step::Dev => {
                    c.args(["--dev", "/dev"]);
                }
                Step::Proc => {
                    c.args(["--proc", "/proc"]);
                }
                Step::File { at, contents } => {
                    // Without the file the program still runs; user lookups fail.
                    memfd_arg(&mut c, "--ro-bind-data", contents.as_bytes(), Some(at));
                }
            }
        }
        // The root itself (a tmpfs holding the mount points) becomes read-only: only /tmp,
        // /var/tmp and the run's directories are writable.
        c.args(["--remount-ro", "/"]);
        c.args(["--unshare-user", "--disable-userns", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]);
        c.args(["--unshare-cgroup-try", "--cap-drop", "ALL", "--die-with-parent", "--new-session"]);
        if iso.network != NetKind::Host {
            // None: only its own loopback; egress: a namespace the engine gives its network.
            c.arg("--unshare-net");
        }
        match super::seccomp::filters() {
            Ok(f) => {
                for program in [&f.deny, &f.no_clone3] {
                    if !memfd_arg(&mut c, "--add-seccomp-fd", &super::seccomp::to_bytes(program), None) {
                        // Never start without the filter: an impossible option makes bwrap fail.
                        c.arg("--seccomp-filter-missing");
                    }
                }
            }
            Err(e) => {
                tracing::error!("{e}");
                c.arg("--seccomp-filter-missing");
            }
        }
        if let Some(h) = handoff {
            c.arg("--info-fd").arg(h.info.as_raw_fd().to_string());
            c.arg("--block-fd").arg(h.block.as_raw_fd().to_string());
            // The engine's copies close with the command, once it is spawned: the info end
            // then reaches its end when bwrap closes its own.
            data.push(h.info);
            data.push(h.block);
        }
        c.arg("--chdir").arg(&inside.work).arg("--").arg(mounts.translate(program, &inside)).args(args);
        c.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
        let fds: Vec<i32> = data.iter().map(|f| f.as_raw_fd()).collect();
        // SAFETY: the closure does nothing; it keeps the memory files open until the spawn.
        unsafe {
            c.pre_exec(move || {
                let _keep = &data;
                Ok(())
            });
        }
        let mut prep = NsPlan::prepare_only().join_cgroups(cgroups).with_rlimits(rlimits).keep_fds(&fds);
        if root {
            let mut binds = MountPlan::default();
            for (host, at) in mounts.pairs(&inside) {
                binds = binds.bind(host, at);
            }
            if let Some(etc) = &staged_etc {
                binds = binds.stage(etc, Path::new(STAGE));
            }
            prep = prep.with_mounts(binds).drop_to(Some(self.identity));
        }
        prep.install(&mut c);
        c
    }
}

/// Where a root engine lays out the view's `/etc` (below the private `/mnt` of the process that
/// starts bwrap; never seen by the addon, whose `/mnt` is bwrap's own).
const STAGE: &str = "/mnt/.view";

/// Whether `step` makes part of the view's `/etc` from what the engine can lay out itself.
fn is_staged_etc(step: &Step) -> bool {
    let under = |p: &Path| p.starts_with("/etc");
    match step {
        Step::RoBind(p) | Step::Dir(p) => under(p),
        Step::Symlink { at, .. } | Step::File { at, .. } => under(at),
        Step::Bind { .. } | Step::Tmpfs { .. } | Step::Dev | Step::Proc => false,
    }
}

/// A memory file with `contents`, closed on exec unless a child clears that.
fn memfd(contents: &[u8]) -> std::io::Result<OwnedFd> {
    // SAFETY: memfd_create with a valid name; the fd is owned by the returned OwnedFd.
    let fd = unsafe { libc::memfd_create(c"addon-etc".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut f = std::fs::File::from(fd);
    f.write_all(contents)?;
    f.seek(SeekFrom::Start(0))?;
    Ok(f.into())
}

impl Bwrap {
    /// Starts `/bin/true` in the real configuration (as the addon's identity, with the filters),
    /// so that a host where unprivileged user namespaces are off says so here, not at run time.
    fn probe_now(&self, path: Option<PathBuf>) -> Probe {
        let Some(path) = path else {
            return Probe::missing("bwrap", "bwrap not found in PATH (apt-get install bubblewrap)");
        };
        let version = super::version_of(&path).unwrap_or_default();
        let dir = match tempfile::Builder::new().prefix("addon-bwrap-probe-").tempdir() {
            Ok(d) => d,
            Err(e) => return Probe::missing("bwrap", format!("cannot make a probe directory: {e}")),
        };
        let d = dir.path().to_path_buf();
        let _ = fs_err::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o755));
        let mounts = Mounts { work: d.clone(), output: d.clone(), cache: d.clone(), home: d.clone() };
        let spec = Spec {
            program: Path::new("/bin/true"),
            args: &[],
            env: &[],
            mounts: &mounts,
            extra_ro: &[],
            iso: super::Isolation { network: NetKind::None },
            scratch: &d,
            cgroups: &[],
            rlimits: &[],
            tmpfs: Default::default(),
        };
        let how =
            if is_root() { format!("as uid {} (setting sandbox-user)", self.identity.uid) } else { String::new() };
        let mut c = self.build(&spec);
        match c.as_std_mut().output() {
            Ok(o) if o.status.success() => Probe::ok("bwrap", format!("{version} at {} {how}", path.display()), None),
            Ok(o) => Probe::missing(
                "bwrap",
                format!(
                    "{} fails here {how}: {} (bubblewrap 0.8 or later is needed, with unprivileged user namespaces)",
                    path.display(),
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
            ),
            Err(e) => Probe::missing("bwrap", format!("cannot start {}: {e}", path.display())),
        }
    }
}
