//! systemd-nspawn: a volatile root built from the host (`--directory=/ --volatile=yes`: a tmpfs
//! root with the host's `/usr` read-only), the host's `/etc` essentials (see [`HOST_ETC`]), the
//! run's directories at `/mnt/...`, `--private-network` for a pure addon.
//!
//! nspawn prints messages of its own on the addon's stderr; those are recognised by
//! [`is_own_message`] so that errors name the addon's output, not nspawn's chatter.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::process::Command;

use super::ns::NsPlan;
use super::{
    is_root, Mounts, Probe, ProbeCache, Sandbox, SandboxKind, SandboxSettings, Spec, HOST_ETC, HOST_ETC_NETWORK,
};

#[derive(Debug)]
pub struct Nspawn {
    binary: String,
    sudo: String,
    probes: Arc<ProbeCache>,
}

impl Nspawn {
    pub fn new(settings: &SandboxSettings, probes: Arc<ProbeCache>) -> Nspawn {
        Nspawn { binary: settings.nspawn_binary.clone(), sudo: settings.sudo_binary.clone(), probes }
    }

    fn path(&self) -> Option<PathBuf> {
        which::which(&self.binary).ok()
    }

    /// nspawn itself, or through `sudo -n` when the engine is not root.
    fn launcher(&self, nspawn: &Path) -> (Command, std::process::Command) {
        if is_root() {
            (Command::new(nspawn), std::process::Command::new(nspawn))
        } else {
            let mut a = Command::new(&self.sudo);
            a.arg("-n").arg(nspawn);
            let mut b = std::process::Command::new(&self.sudo);
            b.arg("-n").arg(nspawn);
            (a, b)
        }
    }

    fn probe_now(&self) -> Probe {
        let Some(path) = self.path() else {
            return Probe::missing(
                "nspawn",
                format!("{} not found in PATH (apt-get install systemd-container)", self.binary),
            );
        };
        let version = super::version_of(&path).unwrap_or_default();
        let (_, mut c) = self.launcher(&path);
        c.args(BASE).args(["--private-network"]).args(host_flags()).args(["--", "/bin/true"]);
        let how = if is_root() {
            path.display().to_string()
        } else {
            format!("{} -n {} (not root; setting nspawn.sudo-binary)", self.sudo, path.display())
        };
        match c.output() {
            Ok(o) if o.status.success() => Probe::ok(
                "nspawn",
                format!(
                    "{version} at {} (volatile host root{})",
                    path.display(),
                    if host_flags().is_empty() { "" } else { "; --register=no --keep-unit: no systemd here" }
                ),
                None,
            ),
            Ok(o) => Probe::missing("nspawn", format!("{how} fails here: {}", own_stderr(&o.stderr))),
            Err(e) => Probe::missing("nspawn", format!("cannot start {how}: {e}")),
        }
    }
}

/// The flags every nspawn run gets.
const BASE: [&str; 5] = ["--quiet", "--directory=/", "--volatile=yes", "--as-pid2", "--console=pipe"];

/// What this host needs: without systemd as PID 1 there is no machined to register with and no
/// unit to move into, so nspawn must be told `--register=no --keep-unit`.
fn host_flags() -> &'static [&'static str] {
    if Path::new("/run/systemd/system").is_dir() {
        &[]
    } else {
        &["--register=no", "--keep-unit"]
    }
}

/// Lines nspawn prints itself (with `--quiet` too), as opposed to the addon's output. Seen here on
/// every run without systemd: "Attempted to remove disk file system under
/// "/run/systemd/nspawn/propagate/vm", and we can't allow that."
pub fn is_own_message(line: &str) -> bool {
    line.starts_with("Attempted to remove disk file system under \"/run/systemd/nspawn/")
        || line.starts_with("Failed to remove ") && line.contains("/run/systemd/nspawn/")
}

fn own_stderr(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = text.lines().filter(|l| !is_own_message(l)).collect();
    lines.join("\n").trim().to_string()
}

impl Sandbox for Nspawn {
    fn kind(&self) -> SandboxKind {
        SandboxKind::Nspawn
    }

    fn cuts_network(&self) -> bool {
        true
    }

    fn isolates_filesystem(&self) -> bool {
        true
    }

    fn probe(&self) -> Probe {
        let path = self.path();
        let settings = format!("{}|{}", self.binary, self.sudo);
        self.probes.get("nspawn", &settings, path.as_deref(), || self.probe_now())
    }

    fn view(&self, _host: &Mounts) -> Mounts {
        Mounts::mnt()
    }

    fn is_own_message(&self, line: &str) -> bool {
        is_own_message(line)
    }

    fn build(&self, spec: &Spec<'_>) -> Command {
        let Spec { program, args, env, mounts, extra_ro, iso, .. } = *spec;
        let view = self.view(mounts);
        let nspawn = self.path().unwrap_or_else(|| PathBuf::from(&self.binary));
        let (mut c, _) = self.launcher(&nspawn);
        c.args(BASE).args(host_flags());
        if !iso.network {
            c.arg("--private-network");
        }
        for (host, inside) in mounts.pairs(&view) {
            c.arg(format!("--bind={}:{}", host.display(), inside.display()));
        }
        let etc = HOST_ETC.iter().chain(if iso.network { &HOST_ETC_NETWORK[..] } else { &[] });
        for p in etc.map(Path::new).chain(extra_ro.iter().map(PathBuf::as_path)).filter(|p| p.exists()) {
            c.arg(format!("--bind-ro={}", p.display()));
        }
        c.arg(format!("--chdir={}", view.work.display()));
        for (k, v) in env {
            c.arg(format!("--setenv={k}={v}"));
        }
        c.arg("--").arg(mounts.translate(program, &view)).args(args);
        // A container outlives a killed nspawn, so nspawn itself runs in a PID namespace of ours
        // whose init dies with the engine: the kernel then kills everything in it, the
        // container's nested namespace included.
        NsPlan::pid_only().install(&mut c);
        c.env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            c.env("PATH", path);
        }
        c
    }
}
