//! systemd-nspawn: a volatile root built from the host (`--directory=/ --volatile=yes`: a tmpfs
//! root with the host's `/usr` read-only), the `/etc` of the shared [`View`] (engine-made
//! `passwd`/`group`, the host's essentials), the run's directories at `/mnt/...` (id-mapped, so
//! the container's root owns them), `--private-network` for a pure addon.
//!
//! Least privilege: user namespacing (`--private-users=pick`: the container's root is an
//! unprivileged host uid), no capabilities, `no_new_privs`, nspawn's own system-call filter with
//! the dangerous groups removed, and, because nspawn cannot filter `clone`'s namespace flags, the
//! engine's seccomp filter installed inside the container by a helper (the `addon` binary bound
//! read-only at [`HELPER_AT`], run as `addon __sandbox-exec PROGRAM ARGS`) before the addon.
//!
//! nspawn prints messages of its own on the addon's stderr; those are recognised by
//! [`is_own_message`] so that errors name the addon's output, not nspawn's chatter.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::process::Command;

use super::ns::NsPlan;
use super::view::{Inside, Step, View};
use crate::settings::ComponentSettings;

use super::{is_root, Mounts, Probe, ProbeCache, Sandbox, SandboxKind, SandboxSettings, Spec};

#[derive(Debug)]
pub struct Nspawn {
    binary: String,
    sudo: String,
    helper: Option<PathBuf>,
    probes: Arc<ProbeCache>,
}

/// Where the helper binary appears inside the container.
pub const HELPER_AT: &str = "/run/addon-sandbox-exec";

/// The helper's subcommand: install the engine's seccomp filter, then exec the rest.
pub use super::seccomp::HELPER_COMMAND;

/// System-call groups and calls nspawn's own filter refuses on top of its defaults.
const DENIED_SYSCALLS: &str = "~@clock @cpu-emulation @debug @keyring @module @mount @obsolete @raw-io @reboot \
     @swap bpf perf_event_open userfaultfd io_uring_setup io_uring_enter io_uring_register unshare setns";

/// Docspell-style nspawn settings (`nspawn:` of the engine configuration); `enabled: true`
/// means `sandbox: nspawn`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct NspawnSettings {
    /// Docspell's switch: true means `sandbox: nspawn` (when `sandbox` is `auto`).
    pub enabled: bool,
    /// `sudo`, which starts nspawn when the engine is not root (`sudo -n`).
    pub sudo_binary: String,
    /// The `systemd-nspawn` program: a name in PATH or a path.
    pub nspawn_binary: String,
    /// The `addon` binary, run inside each container to install the seccomp filter nspawn cannot
    /// express; null: this program when it is `addon`, else `addon` in PATH.
    pub helper: Option<PathBuf>,
}

impl Default for NspawnSettings {
    fn default() -> Self {
        NspawnSettings {
            enabled: false,
            sudo_binary: "sudo".into(),
            nspawn_binary: "systemd-nspawn".into(),
            helper: None,
        }
    }
}

impl ComponentSettings for NspawnSettings {
    const KEY: &'static str = "nspawn";
}

impl Nspawn {
    pub fn new(settings: &SandboxSettings, probes: Arc<ProbeCache>) -> Nspawn {
        let own: NspawnSettings = settings.sections.get();
        Nspawn { binary: own.nspawn_binary, sudo: own.sudo_binary, helper: settings.helper.clone(), probes }
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
        let Some(helper) = self.helper.as_ref().filter(|h| h.is_file()) else {
            return Probe::missing(
                "nspawn",
                "nspawn needs the `addon` binary as its in-container helper (it installs the seccomp filter \
                 nspawn cannot express), and none was found (setting nspawn.helper)",
            );
        };
        let mode = fs_err::metadata(helper).map_or(0, |m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
        if mode & 0o001 == 0 {
            // The addon's identity starts it inside the container.
            return Probe::missing(
                "nspawn",
                format!(
                    "the in-container helper {} (mode {:o}) cannot be run by the sandbox's user: it must be \
                     executable by others (chmod 755; was it installed under umask 077?)",
                    helper.display(),
                    mode & 0o7777
                ),
            );
        }
        let version = super::version_of(&path).unwrap_or_default();
        let (_, mut c) = self.launcher(&path);
        c.args(BASE).args(hardening()).args(["--private-network"]).args(host_flags());
        c.arg(format!("--bind-ro={}:{HELPER_AT}", helper.display()));
        c.args(["--", HELPER_AT, HELPER_COMMAND, "/bin/true"]);
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

/// Least privilege: the container's root is an unprivileged host uid, without capabilities.
fn hardening() -> [String; 5] {
    [
        "--private-users=pick".into(),
        "--private-users-ownership=off".into(),
        "--drop-capability=all".into(),
        "--no-new-privileges=yes".into(),
        format!("--system-call-filter={DENIED_SYSCALLS}"),
    ]
}

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

    /// Not yet: nspawn joins a network namespace from inside the user namespace it picks for the
    /// container, which cannot enter one the engine made (tried: "Failed to join network
    /// namespace: Operation not permitted").
    /// Its container's own network namespace (`--private-network`) gets the engine's egress
    /// network while the addon waits at a gate (see [`Nspawn::launch`]). (Joining a namespace
    /// of the engine's is refused: nspawn would do it from inside the container's user
    /// namespace.)
    fn egress(&self) -> Result<(), String> {
        if !crate::sandbox::is_root() {
            return Err("nspawn runs only for a root engine".into());
        }
        crate::egress::tools().map(|_| ()).map_err(|e| e.to_string())
    }

    /// An egress run: the engine's helper inside the container connects to a unix socket bound
    /// into it and waits; the engine learns the helper's pid from the connection (the kernel
    /// gives it in the engine's PID namespace), gives that process's network namespace the
    /// egress network, and then lets it go on to the addon. Anything but the go-ahead (the
    /// engine failing or dying) and the helper does not start the addon.
    fn launch(&self, spec: &Spec<'_>) -> Result<super::Launch, super::SandboxError> {
        self.check(spec.iso)?;
        if spec.iso.network != crate::egress::NetKind::Egress {
            return Ok(super::Launch { cmd: self.build(spec), handoff: None });
        }
        let failed =
            |e: std::io::Error| super::SandboxError::NoEgress { sandbox: "nspawn", why: format!("the gate: {e}") };
        // In a directory only the engine may enter: the socket itself must be open to the
        // container's root (an unprivileged host uid picked by nspawn), nobody else may reach it.
        let dir = spec.scratch.join("nspawn-gate");
        let _ = fs_err::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .and_then(|()| fs_err::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)))
            .map_err(failed)?;
        let gate = dir.join("gate");
        let listener = std::os::unix::net::UnixListener::bind(&gate).map_err(failed)?;
        fs_err::set_permissions(&gate, std::os::unix::fs::PermissionsExt::from_mode(0o666)).map_err(failed)?;
        let (info_r, info_w) = super::pipe().map_err(failed)?;
        let (block_r, block_w) = super::pipe().map_err(failed)?;
        std::thread::spawn(move || gatekeeper(listener, info_w, block_r));
        let cmd = self.build_with(spec, Some(&gate));
        Ok(super::Launch { cmd, handoff: Some(super::Handoff { info: info_r, release: block_w, cgroups: vec![] }) })
    }

    fn build(&self, spec: &Spec<'_>) -> Command {
        self.build_with(spec, None)
    }
}

/// Where the gate's socket is inside the container.
const GATE_AT: &str = "/.addon-gate";

/// The engine's side of the gate (see [`Nspawn::launch`]): tells the handoff the pid of the
/// helper that connected, then passes the release on to it. Gives up after 30 s without one.
fn gatekeeper(listener: std::os::unix::net::UnixListener, info: std::os::fd::OwnedFd, release: std::os::fd::OwnedFd) {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: poll on one valid descriptor.
    if unsafe { libc::poll(&mut pfd, 1, 30_000) } != 1 {
        return;
    }
    let Ok((mut stream, _)) = listener.accept() else { return };
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt into a ucred of the given length.
    let got = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if got != 0 || cred.pid <= 0 {
        return;
    }
    if std::fs::File::from(info).write_all(format!("{{\"child-pid\": {}}}", cred.pid).as_bytes()).is_err() {
        return;
    }
    let mut go = [0u8; 1];
    if std::fs::File::from(release).read_exact(&mut go).is_ok() {
        let _ = stream.write_all(b"x");
    }
}

impl Nspawn {
    fn build_with(&self, spec: &Spec<'_>, gate: Option<&Path>) -> Command {
        let Spec { program, args, env, mounts, extra_ro, iso, scratch, cgroups, rlimits, tmpfs } = *spec;
        let inside = self.view(mounts);
        // Container root: uid 0 inside an unprivileged user namespace.
        let who = Inside { uid: 0, gid: 0 };
        let view = View::host_program(mounts, &inside, iso.network, extra_ro, who, tmpfs);
        let nspawn = self.path().unwrap_or_else(|| PathBuf::from(&self.binary));
        let (mut c, _) = self.launcher(&nspawn);
        c.args(BASE).args(hardening()).args(host_flags());
        if iso.network != crate::egress::NetKind::Host {
            c.arg("--private-network");
        }
        for step in &view.steps {
            match step {
                // The run's directories, id-mapped: owned by the engine on the host, by the
                // container's root inside.
                Step::Bind { src, at } => {
                    c.arg(format!("--bind={}:{}:idmap", src.display(), at.display()));
                }
                // /usr (and the merged-/usr links) come with the volatile root.
                Step::RoBind(p) if !p.starts_with("/usr") && p.exists() => {
                    c.arg(format!("--bind-ro={}", p.display()));
                }
                // Bounded like every sandbox's (the volatile root's own tmpfs is not).
                Step::Tmpfs { at, bound } => {
                    c.arg(format!("--tmpfs={}:{}", at.display(), bound.options()));
                }
                Step::File { at, contents } => {
                    let file = scratch.join(at.file_name().unwrap_or_default());
                    match fs_err::write(&file, contents) {
                        Ok(()) => {
                            c.arg(format!("--bind-ro={}:{}", file.display(), at.display()));
                        }
                        Err(e) => tracing::warn!("nspawn: cannot make {}: {e}", file.display()),
                    }
                }
                _ => {}
            }
        }
        if let Some(helper) = &self.helper {
            c.arg(format!("--bind-ro={}:{HELPER_AT}", helper.display()));
        }
        c.arg(format!("--chdir={}", inside.work.display()));
        for (k, v) in env {
            c.arg(format!("--setenv={k}={v}"));
        }
        if let Some(gate) = gate {
            c.arg(format!("--bind-ro={}:{GATE_AT}", gate.display()));
        }
        c.args(["--", HELPER_AT, HELPER_COMMAND]);
        if gate.is_some() {
            c.args([crate::sandbox::seccomp::GATE_FLAG, GATE_AT]);
        }
        c.arg(mounts.translate(program, &inside)).args(args);
        // A container outlives a killed nspawn, so nspawn itself runs in a PID namespace of ours
        // whose init dies with the engine: the kernel then kills everything in it, the
        // container's nested namespace included. nspawn writes /proc/<pid>/uid_map of its own
        // children (user namespacing, id-mapped binds), so that namespace gets its own /proc.
        NsPlan::pid_only().with_fresh_proc().join_cgroups(cgroups).with_rlimits(rlimits).install(&mut c);
        c.env_clear();
        if let Some(path) = std::env::var_os("PATH") {
            c.env("PATH", path);
        }
        c
    }
}
