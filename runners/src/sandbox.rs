//! Sandboxes for host-run addons (trivial, nix-flake): how a command is wrapped so that the addon
//! gets the isolation it asks for, and what each sandbox can give.
//!
//! A sandbox never weakens silently: [`Sandbox::check`] says what is missing and the runner then
//! refuses to start the addon. Every sandbox puts the addon in its own PID namespace so that the
//! supervisor can stop all of it.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Serialize;
use tokio::process::Command;

/// The sandboxes, by name as in the config and the run result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxKind {
    /// bubblewrap: read-only host, private /tmp, new PID/IPC/UTS (and network) namespaces.
    Bwrap,
    /// The engine's own network and PID namespaces; the filesystem stays the host's.
    Netns,
    /// systemd-nspawn (the nix issue fills this slot).
    Nspawn,
    /// The bare host (explicit choice only). Still a PID namespace when possible, for cleanup.
    None,
}

impl SandboxKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxKind::Bwrap => "bwrap",
            SandboxKind::Netns => "netns",
            SandboxKind::Nspawn => "nspawn",
            SandboxKind::None => "none",
        }
    }

    /// Can this sandbox cut the network?
    pub fn cuts_network(self) -> bool {
        matches!(self, SandboxKind::Bwrap | SandboxKind::Netns | SandboxKind::Nspawn)
    }

    /// Does it keep the addon from writing outside its directories?
    pub fn isolates_filesystem(self) -> bool {
        matches!(self, SandboxKind::Bwrap | SandboxKind::Nspawn)
    }
}

/// Whether a sandbox works on this host, and why not.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    pub name: &'static str,
    pub available: bool,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// The directories of one run that the addon may write.
#[derive(Debug, Clone)]
pub struct Mounts {
    pub work: PathBuf,
    pub output: PathBuf,
    pub cache: PathBuf,
}

/// One program to start in a sandbox, with exactly `env`, in `cwd`.
#[derive(Debug, Clone, Copy)]
pub struct Spec<'a> {
    pub program: &'a Path,
    pub args: &'a [String],
    pub env: &'a [(String, String)],
    pub cwd: &'a Path,
    pub mounts: &'a Mounts,
    /// Extra host paths made readable (e.g. /nix/store).
    pub extra_ro: &'a [PathBuf],
    pub iso: Isolation,
}

/// What the addon asks for.
#[derive(Debug, Clone, Copy)]
pub struct Isolation {
    pub network: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox {sandbox} is not available on this host: {detail}")]
    Unavailable { sandbox: &'static str, detail: String },
    #[error("sandbox {sandbox} cannot cut the network, and the addon asks for none (set `sandbox:` to bwrap, netns or nspawn)")]
    CannotCutNetwork { sandbox: &'static str },
}

impl SandboxKind {
    /// Probes this sandbox (cached for the life of the process, and on disk when
    /// [`set_probe_cache`] named a directory).
    pub fn probe(self) -> Probe {
        static BWRAP: OnceLock<Probe> = OnceLock::new();
        static NETNS: OnceLock<Probe> = OnceLock::new();
        match self {
            SandboxKind::Bwrap => {
                BWRAP.get_or_init(|| cached_probe("bwrap", bwrap_path().as_deref(), probe_bwrap)).clone()
            }
            SandboxKind::Netns => NETNS.get_or_init(|| cached_probe("netns", None, probe_netns)).clone(),
            SandboxKind::Nspawn => {
                static NSPAWN: OnceLock<Probe> = OnceLock::new();
                NSPAWN.get_or_init(|| cached_probe("nspawn", nspawn_path().as_deref(), probe_nspawn)).clone()
            }
            SandboxKind::None => {
                Probe { name: "none", available: true, detail: "bare host; no isolation".into(), version: None }
            }
        }
    }

    /// Where the run's work, output and cache directories appear inside this sandbox.
    pub fn view(self, mounts: &Mounts) -> (PathBuf, PathBuf, PathBuf) {
        match self {
            SandboxKind::Nspawn => ("/mnt/work".into(), "/mnt/output".into(), "/mnt/cache".into()),
            _ => (mounts.work.clone(), mounts.output.clone(), mounts.cache.clone()),
        }
    }

    /// Checks that this sandbox can run an addon that asks for `iso`.
    pub fn check(self, iso: Isolation) -> Result<(), SandboxError> {
        let p = self.probe();
        if !p.available {
            return Err(SandboxError::Unavailable { sandbox: self.as_str(), detail: p.detail });
        }
        // `none` is the administrator's explicit choice of the bare host (SPEC): it runs.
        if !iso.network && !self.cuts_network() && self != SandboxKind::None {
            return Err(SandboxError::CannotCutNetwork { sandbox: self.as_str() });
        }
        Ok(())
    }

    /// Builds the command that runs `spec` in this sandbox.
    pub fn command(self, spec: &Spec<'_>) -> Result<Command, SandboxError> {
        self.check(spec.iso)?;
        Ok(self.build(spec))
    }

    /// The command for `spec`, without checking that this sandbox works here (the decision
    /// logic, testable without the runtimes).
    fn build(self, spec: &Spec<'_>) -> Command {
        let Spec { program, args, env, cwd, mounts, extra_ro, iso } = *spec;
        let mut cmd = match self {
            SandboxKind::Bwrap => {
                let mut c = Command::new(bwrap_path().unwrap_or_else(|| PathBuf::from("bwrap")));
                c.args(["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]);
                for p in extra_ro {
                    c.arg("--ro-bind").arg(p).arg(p);
                }
                for p in [&mounts.work, &mounts.output, &mounts.cache] {
                    c.arg("--bind").arg(p).arg(p);
                }
                c.args(["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent", "--new-session"]);
                if !iso.network {
                    c.arg("--unshare-net");
                }
                c.arg("--chdir").arg(cwd).arg("--").arg(program).args(args);
                c
            }
            SandboxKind::Netns | SandboxKind::None => {
                let mut c = Command::new(program);
                c.args(args);
                let cut_network = self == SandboxKind::Netns && !iso.network;
                let plan = NsPlan::new(cut_network);
                // SAFETY: the closure runs in the forked child before exec and only makes raw
                // system calls (unshare, open/write, ioctl, fork, waitpid, _exit), which are
                // async-signal-safe; all allocation happened in `NsPlan::new`.
                unsafe {
                    c.pre_exec(move || plan.enter());
                }
                c
            }
            SandboxKind::Nspawn => {
                let nspawn = nspawn_path().unwrap_or_else(|| PathBuf::from("systemd-nspawn"));
                let mut c = match (is_root(), nspawn_settings()) {
                    (false, settings) => {
                        let mut c = Command::new(&settings.sudo);
                        c.arg("-n").arg(&nspawn);
                        c
                    }
                    (true, _) => Command::new(&nspawn),
                };
                c.args(["--quiet", "--directory=/", "--volatile=yes", "--as-pid2", "--console=pipe"]);
                c.args(nspawn_host_flags());
                if !iso.network {
                    c.arg("--private-network");
                }
                for (host, inside) in
                    [(&mounts.work, "/mnt/work"), (&mounts.output, "/mnt/output"), (&mounts.cache, "/mnt/cache")]
                {
                    c.arg(format!("--bind={}:{inside}", host.display()));
                }
                for p in extra_ro.iter().filter(|p| p.exists()) {
                    c.arg(format!("--bind-ro={}", p.display()));
                }
                c.arg("--chdir=/mnt/work");
                for (k, v) in env {
                    c.arg(format!("--setenv={k}={v}"));
                }
                let inside = match program.strip_prefix(&mounts.work) {
                    Ok(rel) => Path::new("/mnt/work").join(rel),
                    Err(_) => program.to_path_buf(),
                };
                c.arg("--").arg(inside).args(args);
                // A container outlives a killed nspawn, so nspawn itself runs in a PID namespace
                // of ours whose init dies with the engine: the kernel then kills everything in it,
                // the container's nested namespace included.
                let plan = NsPlan::new(false);
                // SAFETY: as for netns above.
                unsafe {
                    c.pre_exec(move || plan.enter());
                }
                c.env_clear();
                if let Some(path) = std::env::var_os("PATH") {
                    c.env("PATH", path);
                }
                return c;
            }
        };
        cmd.current_dir(cwd).env_clear().envs(env.iter().map(|(k, v)| (k, v)));
        cmd
    }
}

static PROBE_CACHE: OnceLock<PathBuf> = OnceLock::new();

/// Keeps probe results in `dir` so that each run does not start a trial sandbox. A result is
/// reused only while the tool binary (path, size, mtime), the kernel and the user are unchanged.
pub fn set_probe_cache(dir: &Path) {
    let _ = PROBE_CACHE.set(dir.to_path_buf());
}

pub(crate) fn cached_probe(name: &'static str, tool: Option<&Path>, probe: impl FnOnce() -> Probe) -> Probe {
    let Some(dir) = PROBE_CACHE.get() else { return probe() };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let tool_id = tool
        .and_then(|t| std::fs::metadata(t).ok().map(|m| (t, m)))
        .map(|(t, m)| {
            use std::os::unix::fs::MetadataExt;
            format!("{}:{}:{}", t.display(), m.size(), m.mtime())
        })
        .unwrap_or_default();
    // SAFETY: geteuid has no preconditions.
    let key = format!("{name}|{tool_id}|{}|{}", kernel.trim(), unsafe { libc::geteuid() });
    let file = dir.join(format!("probe-{name}.json"));
    if let Ok(text) = std::fs::read_to_string(&file) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            if v["key"] == key.as_str() && v["available"] == true {
                let version = v["version"].as_str().map(str::to_string);
                return Probe {
                    name,
                    available: true,
                    detail: v["detail"].as_str().unwrap_or_default().to_string(),
                    version,
                };
            }
        }
    }
    let p = probe();
    if p.available {
        // Only successes are kept: a failure is probed again next time (it may be fixed).
        let v = serde_json::json!({"key": key, "available": true, "detail": p.detail, "version": p.version});
        let tmp = dir.join(format!(".probe-{name}.{}.tmp", std::process::id()));
        if std::fs::create_dir_all(dir).is_ok() && std::fs::write(&tmp, v.to_string()).is_ok() {
            let _ = std::fs::rename(&tmp, &file);
        }
    }
    p
}

/// Settings of the nspawn sandbox (from the engine configuration).
#[derive(Debug, Clone)]
pub struct NspawnSettings {
    pub binary: String,
    /// Used when the engine is not root.
    pub sudo: String,
}

static NSPAWN_SETTINGS: OnceLock<NspawnSettings> = OnceLock::new();

/// Sets the nspawn binary and sudo (once per process; later calls are ignored).
pub fn configure_nspawn(settings: NspawnSettings) {
    let _ = NSPAWN_SETTINGS.set(settings);
}

fn nspawn_settings() -> NspawnSettings {
    NSPAWN_SETTINGS.get().cloned().unwrap_or(NspawnSettings { binary: "systemd-nspawn".into(), sudo: "sudo".into() })
}

fn nspawn_path() -> Option<PathBuf> {
    which::which(nspawn_settings().binary).ok()
}

/// What this host needs: without systemd as PID 1 there is no machined to register with and no
/// unit to move into, so nspawn must be told `--register=no --keep-unit`.
fn nspawn_host_flags() -> &'static [&'static str] {
    if Path::new("/run/systemd/system").is_dir() {
        &[]
    } else {
        &["--register=no", "--keep-unit"]
    }
}

fn probe_nspawn() -> Probe {
    let Some(path) = nspawn_path() else {
        return Probe {
            name: "nspawn",
            available: false,
            detail: format!("{} not found in PATH (apt-get install systemd-container)", nspawn_settings().binary),
            version: None,
        };
    };
    let version = std::process::Command::new(&path)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(str::to_string))
        .unwrap_or_default();
    let mut c = if is_root() {
        std::process::Command::new(&path)
    } else {
        let mut c = std::process::Command::new(nspawn_settings().sudo);
        c.arg("-n").arg(&path);
        c
    };
    c.args(["--quiet", "--directory=/", "--volatile=yes", "--as-pid2", "--console=pipe", "--private-network"]);
    c.args(nspawn_host_flags()).args(["--", "/bin/true"]);
    let how = if is_root() {
        path.display().to_string()
    } else {
        format!("{} -n {} (not root; setting nspawn.sudo-binary)", nspawn_settings().sudo, path.display())
    };
    match c.output() {
        Ok(o) if o.status.success() => Probe {
            name: "nspawn",
            available: true,
            detail: format!(
                "{version} at {} (volatile host root{})",
                path.display(),
                if nspawn_host_flags().is_empty() { "" } else { "; --register=no --keep-unit: no systemd here" }
            ),
            version: None,
        },
        Ok(o) => Probe {
            name: "nspawn",
            available: false,
            detail: format!("{how} fails here: {}", String::from_utf8_lossy(&o.stderr).trim()),
            version: None,
        },
        Err(e) => Probe { name: "nspawn", available: false, detail: format!("cannot start {how}: {e}"), version: None },
    }
}

/// The sandbox `auto` picks: the strongest available of bwrap, netns (never none).
pub fn auto() -> Option<SandboxKind> {
    [SandboxKind::Bwrap, SandboxKind::Netns].into_iter().find(|s| s.probe().available)
}

fn bwrap_path() -> Option<PathBuf> {
    which::which("bwrap").ok()
}

fn probe_bwrap() -> Probe {
    let Some(path) = bwrap_path() else {
        return Probe {
            name: "bwrap",
            available: false,
            detail: "bwrap not found in PATH (apt-get install bubblewrap)".into(),
            version: None,
        };
    };
    let out = std::process::Command::new(&path)
        .args(["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-pid", "--unshare-net"])
        .args(["--die-with-parent", "--", "true"])
        .output();
    let version = std::process::Command::new(&path)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    match out {
        Ok(o) if o.status.success() => {
            Probe { name: "bwrap", available: true, detail: format!("{version} at {}", path.display()), version: None }
        }
        Ok(o) => Probe {
            name: "bwrap",
            available: false,
            detail: format!("{} fails here: {}", path.display(), String::from_utf8_lossy(&o.stderr).trim()),
            version: None,
        },
        Err(e) => Probe {
            name: "bwrap",
            available: false,
            detail: format!("cannot start {}: {e}", path.display()),
            version: None,
        },
    }
}

fn probe_netns() -> Probe {
    let mut c = std::process::Command::new("/bin/true");
    let plan = NsPlan::new(true);
    // SAFETY: as in `SandboxKind::command`.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut c, move || plan.enter());
    }
    match c.status() {
        Ok(s) if s.success() => Probe {
            name: "netns",
            available: true,
            detail: format!("network and PID namespaces{}", if is_root() { "" } else { " inside a user namespace" }),
            version: None,
        },
        Ok(s) => {
            Probe { name: "netns", available: false, detail: format!("namespace setup failed ({s})"), version: None }
        }
        Err(e) => {
            Probe { name: "netns", available: false, detail: format!("cannot create namespaces: {e}"), version: None }
        }
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Everything the child needs to enter its namespaces, prepared before fork (no allocation after).
#[derive(Debug, Clone)]
struct NsPlan {
    cut_network: bool,
    user_ns: bool,
    uid_map: CString,
    gid_map: CString,
    parent_pid: i32,
}

impl NsPlan {
    fn new(cut_network: bool) -> NsPlan {
        // SAFETY: getters without preconditions.
        let (uid, gid, pid) = unsafe { (libc::geteuid(), libc::getegid(), libc::getpid()) };
        NsPlan {
            cut_network,
            user_ns: uid != 0,
            uid_map: CString::new(format!("{uid} {uid} 1")).expect("no NUL"),
            gid_map: CString::new(format!("{gid} {gid} 1")).expect("no NUL"),
            parent_pid: pid,
        }
    }

    /// Runs in the forked child: new namespaces, loopback up, then a shim and a mini init so the
    /// addon is not PID 1 (it keeps normal signal behaviour) and orphans are reaped.
    fn enter(&self) -> io::Result<()> {
        // SAFETY: raw async-signal-safe system calls in a single-threaded forked child.
        unsafe {
            // Die with the engine. Checked against a race with an engine that already died.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != self.parent_pid {
                libc::_exit(137);
            }
            let mut flags = libc::CLONE_NEWPID;
            if self.cut_network {
                flags |= libc::CLONE_NEWNET;
            }
            if self.user_ns {
                flags |= libc::CLONE_NEWUSER;
            }
            if libc::unshare(flags) != 0 {
                return Err(io::Error::last_os_error());
            }
            if self.user_ns {
                write_proc(c"/proc/self/setgroups", c"deny")?;
                write_proc(c"/proc/self/uid_map", &self.uid_map)?;
                write_proc(c"/proc/self/gid_map", &self.gid_map)?;
            }
            if self.cut_network {
                loopback_up()?;
            }
            // The shim: stays in the engine's PID namespace and mirrors the init's exit.
            let init = libc::fork();
            if init < 0 {
                return Err(io::Error::last_os_error());
            }
            if init > 0 {
                // Close the standard library's exec-status pipe (and anything else above
                // stderr), or `spawn` would wait for this shim to end.
                libc::close_range(3, u32::MAX, 0);
                libc::_exit(wait_for(init));
            }
            // PID 1 of the new namespace: dies with the shim; its death kills the namespace.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            let addon = libc::fork();
            if addon < 0 {
                libc::_exit(126);
            }
            if addon == 0 {
                libc::setsid();
                return Ok(()); // the addon: exec follows
            }
            // Do not hold the addon's pipes open.
            libc::close_range(0, u32::MAX, 0);
            loop {
                let mut status = 0;
                let w = libc::waitpid(-1, &mut status, 0);
                if w == addon {
                    libc::_exit(status_code(status));
                }
                if w < 0 && *libc::__errno_location() == libc::ECHILD {
                    libc::_exit(126);
                }
            }
        }
    }
}

unsafe fn wait_for(pid: i32) -> i32 {
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child.
        let w = unsafe { libc::waitpid(pid, &mut status, 0) };
        if w == pid {
            return status_code(status);
        }
        // SAFETY: reading errno.
        if w < 0 && unsafe { *libc::__errno_location() } != libc::EINTR {
            return 126;
        }
    }
}

fn status_code(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        126
    }
}

unsafe fn write_proc(path: &std::ffi::CStr, data: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY: plain open/write/close on valid C strings.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let bytes = data.to_bytes();
        let n = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        libc::close(fd);
        if n != bytes.len() as isize {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Brings `lo` up in the current network namespace (a new one starts with it down).
unsafe fn loopback_up() -> io::Result<()> {
    // SAFETY: ioctl on a socket we own with a zeroed, correctly sized ifreq.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        req.ifr_name[0] = b'l' as libc::c_char;
        req.ifr_name[1] = b'o' as libc::c_char;
        if libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) < 0 {
            libc::close(sock);
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        let r = libc::ioctl(sock, libc::SIOCSIFFLAGS, &mut req);
        libc::close(sock);
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(kind: SandboxKind, network: bool) -> Vec<String> {
        let mounts = Mounts { work: "/w/run".into(), output: "/w/out".into(), cache: "/c/data".into() };
        let env = vec![("OUTPUT_DIR".to_string(), "/mnt/output".to_string())];
        let args = vec!["arguments/user-input".to_string()];
        let store = [PathBuf::from("/")];
        let spec = Spec {
            program: Path::new("/w/run/addons/a-1/run.sh"),
            args: &args,
            env: &env,
            cwd: Path::new("/w/run"),
            mounts: &mounts,
            extra_ro: &store,
            iso: Isolation { network },
        };
        let cmd = kind.build(&spec);
        let std = cmd.as_std();
        std::iter::once(std.get_program()).chain(std.get_args()).map(|a| a.to_string_lossy().to_string()).collect()
    }

    #[test]
    fn bwrap_cuts_the_network_only_when_asked_and_binds_the_run_dirs() {
        let pure = argv(SandboxKind::Bwrap, false);
        assert!(pure.contains(&"--unshare-net".to_string()));
        assert!(pure.contains(&"--unshare-pid".to_string()) && pure.contains(&"--die-with-parent".to_string()));
        assert!(pure.windows(3).any(|w| w == ["--bind", "/w/out", "/w/out"]));
        assert!(pure.windows(3).any(|w| w == ["--bind", "/c/data", "/c/data"]));
        assert!(pure.windows(4).any(|w| w == ["--ro-bind", "/", "/", "--dev"]), "host read-only first: {pure:?}");
        assert!(pure.ends_with(&["--".into(), "/w/run/addons/a-1/run.sh".into(), "arguments/user-input".into()]));
        let impure = argv(SandboxKind::Bwrap, true);
        assert!(!impure.contains(&"--unshare-net".to_string()));
        assert!(impure.contains(&"--unshare-pid".to_string()), "a PID namespace even with network");
    }

    #[test]
    fn nspawn_mounts_at_mnt_and_translates_the_program() {
        let pure = argv(SandboxKind::Nspawn, false);
        assert!(pure.contains(&"--private-network".to_string()));
        assert!(pure.contains(&"--volatile=yes".to_string()) && pure.contains(&"--directory=/".to_string()));
        assert!(!pure.iter().any(|a| a == "--ephemeral"), "never copies a whole tree");
        for b in
            ["--bind=/w/run:/mnt/work", "--bind=/w/out:/mnt/output", "--bind=/c/data:/mnt/cache", "--chdir=/mnt/work"]
        {
            assert!(pure.contains(&b.to_string()), "{b} in {pure:?}");
        }
        assert!(pure.contains(&"--setenv=OUTPUT_DIR=/mnt/output".to_string()));
        assert!(pure.ends_with(&["--".into(), "/mnt/work/addons/a-1/run.sh".into(), "arguments/user-input".into()]));
        assert!(!argv(SandboxKind::Nspawn, true).contains(&"--private-network".to_string()));
    }

    #[test]
    fn only_none_may_run_a_pure_addon_without_cutting_the_network() {
        assert!(
            SandboxKind::Bwrap.cuts_network()
                && SandboxKind::Netns.cuts_network()
                && SandboxKind::Nspawn.cuts_network()
        );
        assert!(!SandboxKind::None.cuts_network());
        assert!(SandboxKind::None.check(Isolation { network: false }).is_ok(), "explicit `none` runs, and says so");
    }
}
