//! netns: the engine's own namespaces, made with system calls and no external tool: a network
//! namespace with only `lo` (unless the addon asks for network), a PID namespace, and a mount
//! namespace whose private `/mnt` holds the run's directories. Unprivileged, a user namespace
//! mapping the engine's user makes this possible.

use std::path::Path;
use std::sync::Arc;

use tokio::process::Command;

use super::ns::{MountPlan, NsPlan};
use super::{is_root, Mounts, Probe, ProbeCache, Sandbox, SandboxKind, Spec};

#[derive(Debug)]
pub struct Netns {
    probes: Arc<ProbeCache>,
}

impl Netns {
    pub fn new(probes: Arc<ProbeCache>) -> Netns {
        Netns { probes }
    }
}

impl Sandbox for Netns {
    fn kind(&self) -> SandboxKind {
        SandboxKind::Netns
    }

    fn cuts_network(&self) -> bool {
        true
    }

    fn isolates_filesystem(&self) -> bool {
        false
    }

    fn probe(&self) -> Probe {
        self.probes.get("netns", "", None, probe)
    }

    fn view(&self, _host: &Mounts) -> Mounts {
        Mounts::mnt()
    }

    fn build(&self, spec: &Spec<'_>) -> Command {
        let Spec { program, args, env, mounts, iso, .. } = *spec;
        let view = self.view(mounts);
        let mut c = Command::new(mounts.translate(program, &view));
        c.args(args).env_clear().envs(env.iter().map(|(k, v)| (k, v)));
        mount_plan(mounts, &view, NsPlan::new(!iso.network)).install(&mut c);
        c
    }
}

fn mount_plan(mounts: &Mounts, view: &Mounts, plan: NsPlan) -> NsPlan {
    let mut m = MountPlan::default();
    for (host, inside) in mounts.pairs(view) {
        m = m.bind(host, inside, false);
    }
    plan.with_mounts(m.chdir(&view.work)).with_fresh_proc()
}

fn probe() -> Probe {
    let dir = std::env::temp_dir();
    let host = Mounts { work: dir.clone(), output: dir.clone(), cache: dir.clone(), home: dir };
    let mut c = std::process::Command::new("/bin/true");
    mount_plan(&host, &Mounts::mnt(), NsPlan::new(true)).install_std(&mut c);
    let how = if is_root() { "" } else { " inside a user namespace" };
    if !Path::new("/mnt").is_dir() {
        return Probe::missing("netns", "the host has no /mnt directory to mount the run's directories on");
    }
    match c.status() {
        Ok(s) if s.success() => Probe::ok("netns", format!("network, PID and mount namespaces{how}"), None),
        Ok(s) => Probe::missing("netns", format!("namespace setup failed ({s})")),
        Err(e) => Probe::missing("netns", format!("cannot create namespaces{how}: {e}")),
    }
}
