//! bubblewrap: the host read-only, a private `/tmp` and `/mnt` with the run's directories, new
//! PID, IPC and UTS namespaces, and a network namespace with only `lo` unless the addon asks for
//! network.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::process::Command;

use super::{Mounts, Probe, ProbeCache, Sandbox, SandboxKind, Spec};

#[derive(Debug)]
pub struct Bwrap {
    probes: Arc<ProbeCache>,
}

impl Bwrap {
    pub fn new(probes: Arc<ProbeCache>) -> Bwrap {
        Bwrap { probes }
    }
}

fn bwrap_path() -> Option<PathBuf> {
    which::which("bwrap").ok()
}

impl Sandbox for Bwrap {
    fn kind(&self) -> SandboxKind {
        SandboxKind::Bwrap
    }

    fn cuts_network(&self) -> bool {
        true
    }

    fn isolates_filesystem(&self) -> bool {
        true
    }

    fn probe(&self) -> Probe {
        let path = bwrap_path();
        self.probes.get("bwrap", "", path.as_deref(), || probe(path.clone()))
    }

    fn view(&self, _host: &Mounts) -> Mounts {
        Mounts::mnt()
    }

    fn build(&self, spec: &Spec<'_>) -> Command {
        let Spec { program, args, env, mounts, extra_ro, iso } = *spec;
        let view = self.view(mounts);
        let mut c = Command::new(bwrap_path().unwrap_or_else(|| PathBuf::from("bwrap")));
        c.args(["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs", "/mnt"]);
        for p in extra_ro {
            c.arg("--ro-bind").arg(p).arg(p);
        }
        for (host, inside) in mounts.pairs(&view) {
            c.arg("--bind").arg(host).arg(inside);
        }
        c.args(["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent", "--new-session"]);
        if !iso.network {
            c.arg("--unshare-net");
        }
        c.arg("--chdir").arg(&view.work).arg("--").arg(mounts.translate(program, &view)).args(args);
        c.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
        c
    }
}

fn probe(path: Option<PathBuf>) -> Probe {
    let Some(path) = path else {
        return Probe::missing("bwrap", "bwrap not found in PATH (apt-get install bubblewrap)");
    };
    let out = std::process::Command::new(&path)
        .args(["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-pid", "--unshare-net"])
        .args(["--die-with-parent", "--", "true"])
        .output();
    let version = super::version_of(&path).unwrap_or_default();
    match out {
        Ok(o) if o.status.success() => Probe::ok("bwrap", format!("{version} at {}", path.display()), None),
        Ok(o) => Probe::missing(
            "bwrap",
            format!("{} fails here: {}", path.display(), String::from_utf8_lossy(&o.stderr).trim()),
        ),
        Err(e) => Probe::missing("bwrap", format!("cannot start {}: {e}", path.display())),
    }
}
