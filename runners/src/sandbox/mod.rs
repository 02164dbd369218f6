//! Sandboxes for host-run addons (trivial, nix-flake): how a command is wrapped so that the addon
//! gets the isolation it asks for, and what each sandbox can give.
//!
//! One trait, [`Sandbox`], one module per sandbox (`bwrap`, `netns`, `nspawn`, `none`), and
//! [`Sandboxes`], the set an engine owns with its settings and probe cache. A fifth sandbox is one
//! more module and one line in [`Sandboxes::new`].
//!
//! A sandbox never weakens silently: [`Sandbox::check`] says what is missing and the runner then
//! refuses to start the addon. Every sandbox puts the addon in its own PID namespace so that the
//! supervisor can stop all of it.

mod bwrap;
mod mounts;
mod netns;
pub mod ns;
pub mod nspawn;
mod plain;
pub mod seccomp;
pub mod view;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::process::Command;

use crate::egress::NetKind;

pub use crate::probe::{Probe, ProbeCache};
pub use addon_runner_api::sandbox::{Mounts, SandboxKind};
pub use ns::Identity;

/// One program to start in a sandbox, with exactly `env`, in the work directory.
#[derive(Debug, Clone, Copy)]
pub struct Spec<'a> {
    /// The program as a host path (translated by the sandbox when it lies in a run directory).
    pub program: &'a Path,
    pub args: &'a [String],
    /// The environment, already in the sandbox's view (see [`Sandbox::view`]).
    pub env: &'a [(String, String)],
    /// The run's directories as host paths.
    pub mounts: &'a Mounts,
    /// Extra host paths made readable at the same place (e.g. /nix/store).
    pub extra_ro: &'a [PathBuf],
    pub iso: Isolation,
    /// An empty host directory, private to this run and outliving the process, on which a
    /// sandbox may build the addon's root.
    pub scratch: &'a Path,
    /// Control groups the process joins first (`cgroup.procs` files of the run's envelope).
    pub cgroups: &'a [PathBuf],
    /// Resource limits the process gets.
    pub rlimits: &'a [(libc::__rlimit_resource_t, u64)],
    /// The bounds of the private tmpfs mounts the sandbox makes.
    pub tmpfs: view::TmpfsBound,
}

/// What the addon asks for.
#[derive(Debug, Clone, Copy)]
pub struct Isolation {
    /// Its network: none (pure), the host's, or an egress network of its own.
    pub network: crate::egress::NetKind,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox {sandbox} is not available on this host: {detail}")]
    Unavailable { sandbox: &'static str, detail: String },
    #[error("sandbox {sandbox} cannot cut the network, and the addon asks for none (set `sandbox:` to bwrap, netns or nspawn)")]
    CannotCutNetwork { sandbox: &'static str },
    #[error("sandbox {sandbox} cannot give the egress network `network.impure: egress` asks for: {why}")]
    NoEgress { sandbox: &'static str, why: String },
}

/// A way to wrap a host program so that it sees only what it may.
pub trait Sandbox: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> SandboxKind;

    /// Can this sandbox cut the network? Every one but the bare host.
    fn cuts_network(&self) -> bool {
        self.kind() != SandboxKind::None
    }

    /// Does it keep the addon from writing outside its directories? Every one but the bare host.
    fn isolates_filesystem(&self) -> bool {
        self.kind() != SandboxKind::None
    }

    /// Whether it works here (remembered by the engine's probe cache).
    fn probe(&self) -> Probe;

    /// Where the run's directories appear inside this sandbox.
    fn view(&self, host: &Mounts) -> Mounts;

    /// Who must own the run's writable directories for the addon to use them (None: the
    /// engine's user, as they are made).
    fn owner(&self) -> Option<Identity> {
        None
    }

    /// The command that runs `spec` in this sandbox, without checking that it works here (the
    /// decision logic, testable without the runtimes).
    fn build(&self, spec: &Spec<'_>) -> Command;

    fn name(&self) -> &'static str {
        self.kind().as_str()
    }

    /// True for a stderr line the sandbox tool printed itself (not the addon): it is logged at
    /// debug level and kept out of the stderr tail that errors quote.
    fn is_own_message(&self, line: &str) -> bool {
        let _ = line;
        false
    }

    /// Whether it can give an impure addon an egress network of its own here (see
    /// [`crate::egress`]), or why not.
    fn egress(&self) -> Result<(), String> {
        Err(format!("the {} sandbox does not make egress networks yet (bwrap and netns do)", self.name()))
    }

    /// Checks that this sandbox can run an addon that asks for `iso`.
    fn check(&self, iso: Isolation) -> Result<(), SandboxError> {
        let p = self.probe();
        if !p.available {
            return Err(SandboxError::Unavailable { sandbox: self.name(), detail: p.detail });
        }
        match iso.network {
            // `none` is the administrator's explicit choice of the bare host (SPEC): it runs.
            NetKind::None if !self.cuts_network() && self.kind() != SandboxKind::None => {
                Err(SandboxError::CannotCutNetwork { sandbox: self.name() })
            }
            NetKind::Egress => self.egress().map_err(|why| SandboxError::NoEgress { sandbox: self.name(), why }),
            _ => Ok(()),
        }
    }

    /// Builds the command that runs `spec` in this sandbox, after checking it works here.
    fn command(&self, spec: &Spec<'_>) -> Result<Command, SandboxError> {
        self.check(spec.iso)?;
        Ok(self.build(spec))
    }

    /// [`Sandbox::command`], and what the engine completes once it is spawned: a sandbox that
    /// sets itself up while the engine moves it into the run's control groups (see [`Handoff`])
    /// returns one. By default the process joins them itself before it execs.
    fn launch(&self, spec: &Spec<'_>) -> Result<Launch, SandboxError> {
        Ok(Launch { cmd: self.command(spec)?, handoff: None })
    }
}

/// A command to spawn, and what completes its start.
#[derive(Debug)]
pub struct Launch {
    pub cmd: Command,
    pub handoff: Option<Handoff>,
}

/// A sandbox started before it is in the run's control groups, waiting for the engine: the
/// engine learns the pid of its inner process, moves it and the outer one into the groups, then
/// lets it go on to the addon. Moving a process into a new control group waits for an RCU grace
/// period on cgroup v1 (several milliseconds here); done this way, the wait overlaps the
/// sandbox's own setup instead of coming before it. No addon code runs before the move: the
/// sandbox blocks until it is released, and a handoff that is not completed kills it first.
#[derive(Debug)]
pub struct Handoff {
    /// Where the sandbox tool writes the pid of its inner process (and closes).
    pub info: std::os::fd::OwnedFd,
    /// Written once the move is done; the sandbox waits on the other end.
    pub release: std::os::fd::OwnedFd,
    /// The `cgroup.procs` files to join.
    pub cgroups: Vec<std::path::PathBuf>,
}

impl Handoff {
    /// Moves the sandbox's processes (`outer`, the spawned one, and the inner one it reports)
    /// into the control groups and releases it. On any failure, both are killed before the
    /// release end is closed (a closed end would release it too).
    pub fn complete(self, outer: i32) -> std::io::Result<()> {
        self.complete_with(outer, |_| Ok(()))
    }

    /// [`Handoff::complete`], with `then` done on the inner process (its pid) after the move and
    /// before the release (the egress network is attached there). Its failure kills both.
    pub fn complete_with<T>(self, outer: i32, then: impl FnOnce(i32) -> std::io::Result<T>) -> std::io::Result<T> {
        let Handoff { info, release, cgroups } = self;
        // The inner process is not the engine's child: it is held by a process handle opened at
        // once, so that a kill reaches it and never a process that got its pid after it died.
        let mut inner = None;
        let moved = (|| {
            let pid = read_child_pid(&info, std::time::Duration::from_secs(30))?;
            inner = crate::procfs::PidFd::open(pid);
            for procs in &cgroups {
                for p in [outer, pid] {
                    fs_err::write(procs, p.to_string())?;
                }
            }
            then(pid)
        })();
        let released = moved.and_then(|done| {
            std::io::Write::write_all(&mut std::fs::File::from(release.try_clone()?), b"x")?;
            Ok(done)
        });
        if released.is_err() {
            if let Some(inner) = &inner {
                inner.kill();
            }
            // The outer process is the engine's child, not yet waited for: its pid is its own.
            // SAFETY: kill(2) has no memory effects.
            unsafe {
                libc::kill(outer, libc::SIGKILL);
            }
            // The waiting side takes a closed end as its release: it stays open until the
            // killed processes are surely gone.
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_secs(10));
                drop(release);
            });
        }
        released
    }
}

/// A pipe (read end, write end), both ends closed on exec.
pub(crate) fn pipe() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fresh descriptors nobody else owns.
    Ok(unsafe { (std::os::fd::OwnedFd::from_raw_fd(fds[0]), std::os::fd::OwnedFd::from_raw_fd(fds[1])) })
}

/// The `"child-pid": N` a sandbox tool writes on its info descriptor (bubblewrap's
/// `--info-fd`), read until the tool closes it or `within` passes.
pub(crate) fn read_child_pid(info: &std::os::fd::OwnedFd, within: std::time::Duration) -> std::io::Result<i32> {
    use std::os::fd::AsRawFd;
    let deadline = std::time::Instant::now() + within;
    let mut text = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut pfd = libc::pollfd { fd: info.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: poll on one valid descriptor.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the sandbox did not report its process"));
        }
        let mut buf = [0u8; 512];
        // SAFETY: read into a buffer of its length.
        let got = unsafe { libc::read(info.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if got < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if got == 0 || text.len() > 64 * 1024 {
            break;
        }
        text.extend_from_slice(&buf[..got as usize]);
        // Whole once it parses: no need to wait for the end of the stream.
        if let Some(pid) = child_pid_of(&String::from_utf8_lossy(&text)) {
            return Ok(pid);
        }
    }
    child_pid_of(&String::from_utf8_lossy(&text)).ok_or_else(|| {
        std::io::Error::other(format!(
            "the sandbox ended before it reported its process: {}",
            String::from_utf8_lossy(&text).trim()
        ))
    })
}

/// `N` of `"child-pid": N` in bubblewrap's info JSON.
pub(crate) fn child_pid_of(text: &str) -> Option<i32> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v.get("child-pid")?.as_i64().and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 0)
}

/// What sandboxes are made with: the engine's identity for addons and helper, and the
/// configuration's sections, where a sandbox with settings finds its own.
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    /// Who addons run as when the engine is root (bwrap, netns): an unprivileged identity of
    /// their own, with no supplementary groups.
    pub identity: Identity,
    /// The `addon` binary, run inside nspawn containers to install the seccomp filter.
    pub helper: Option<PathBuf>,
    /// The components' sections of the configuration (`nspawn:`).
    pub sections: crate::settings::Sections,
}

/// Makes one kind of sandbox.
#[derive(Clone, Copy)]
pub struct SandboxFactory {
    pub kind: SandboxKind,
    /// Its section of the engine configuration, when it has settings.
    pub settings: Option<crate::settings::ConfigSection>,
    pub make: fn(&SandboxSettings, Arc<ProbeCache>) -> Arc<dyn Sandbox>,
}

impl std::fmt::Debug for SandboxFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxFactory").field("kind", &self.kind).finish()
    }
}

/// The sandboxes, one line each. Adding one is a module, a [`SandboxKind`], and a line here.
pub fn builtin_sandboxes() -> Vec<SandboxFactory> {
    use crate::settings::ConfigSection;
    vec![
        SandboxFactory {
            kind: SandboxKind::Bwrap,
            settings: None,
            make: |s, p| Arc::new(bwrap::Bwrap::new(s.identity, p)),
        },
        SandboxFactory {
            kind: SandboxKind::Netns,
            settings: None,
            make: |s, p| Arc::new(netns::Netns::new(s.identity, p)),
        },
        SandboxFactory {
            kind: SandboxKind::Nspawn,
            settings: Some(ConfigSection::of::<nspawn::NspawnSettings>()),
            make: |s, p| Arc::new(nspawn::Nspawn::new(s, p)),
        },
        SandboxFactory { kind: SandboxKind::None, settings: None, make: |_, _| Arc::new(plain::Plain) },
    ]
}

/// The default identity of addons under a root engine: a uid and gid no account uses, outside
/// the ranges Debian, systemd (dynamic users, nspawn's private users) and subuid allocate.
pub const DEFAULT_IDENTITY: Identity = Identity { uid: 2_147_000_000, gid: 2_147_000_000 };

impl Default for SandboxSettings {
    fn default() -> Self {
        SandboxSettings { identity: DEFAULT_IDENTITY, helper: None, sections: Default::default() }
    }
}

/// Gives the trees `dirs` to `who` before an addon runs as that identity, and makes them safe on
/// the way (no setuid or setgid bits, no file capabilities, no fifos, sockets or devices; links
/// kept as links). The trees may hold what earlier runs of the addon left, and a concurrent run
/// may change them during the walk: the walk goes by descriptors and never leaves a tree.
pub fn claim(dirs: &[&Path], who: Identity) -> Result<(), addon_tree::TreeError> {
    let how = addon_tree::Sanitize { owner: Some((who.uid, who.gid)), keep_symlinks: true, dirs_writable: false };
    for dir in dirs {
        addon_tree::sanitize(dir, &how)?;
    }
    Ok(())
}

/// The sandboxes of one engine, with its settings and its probe cache.
#[derive(Debug, Clone)]
pub struct Sandboxes {
    all: Vec<Arc<dyn Sandbox>>,
    probes: Arc<ProbeCache>,
}

impl Sandboxes {
    pub fn new(settings: &SandboxSettings, probes: Arc<ProbeCache>) -> Sandboxes {
        Sandboxes { all: builtin_sandboxes().iter().map(|f| (f.make)(settings, probes.clone())).collect(), probes }
    }

    /// The sandbox of this kind.
    pub fn get(&self, kind: SandboxKind) -> Arc<dyn Sandbox> {
        self.all.iter().find(|s| s.kind() == kind).cloned().expect("every kind has a sandbox")
    }

    pub fn all(&self) -> &[Arc<dyn Sandbox>] {
        &self.all
    }

    /// The sandbox `auto` picks: the strongest available of bwrap, netns (never none).
    pub fn auto(&self) -> Option<SandboxKind> {
        Self::AUTO.into_iter().find(|k| self.get(*k).probe().available)
    }

    /// What `auto` considers, strongest first.
    pub const AUTO: [SandboxKind; 2] = [SandboxKind::Bwrap, SandboxKind::Netns];

    /// How host sandboxes enforce limits here (remembered like the other probes).
    pub fn enforcement(&self) -> crate::limits::Enforcement {
        let p = self.probes.get("limits", "", None, || {
            let e = crate::limits::probe_enforcement();
            match &e {
                crate::limits::Enforcement::Cgroups { version } => {
                    Probe::ok("limits", e.describe(), Some(version.to_string()))
                }
                // The reason alone: `describe` is made again from it below.
                crate::limits::Enforcement::Rlimits { why } => Probe::missing("limits", why.clone()),
            }
        });
        match (p.available, p.version.as_deref()) {
            (true, Some("2")) => crate::limits::Enforcement::Cgroups { version: 2 },
            (true, _) => crate::limits::Enforcement::Cgroups { version: 1 },
            (false, _) => crate::limits::Enforcement::Rlimits { why: p.detail },
        }
    }
}

impl Default for Sandboxes {
    fn default() -> Self {
        Sandboxes::new(&SandboxSettings::default(), Arc::new(ProbeCache::default()))
    }
}

pub use crate::procfs::is_root;

/// The first line a tool prints for `--version`.
pub(crate) fn version_of(path: &Path) -> Option<String> {
    let out = std::process::Command::new(path).arg("--version").output().ok()?;
    String::from_utf8_lossy(&out.stdout).lines().next().map(|l| l.trim().to_string()).filter(|l| !l.is_empty())
}

/// Host files under `/etc` that programs need besides `/usr`: the dynamic loader's cache, name
/// service switch, time zone, TLS certificates and, because Debian reaches many programs through
/// them (`guile`, `awk`, `pager`), the alternatives links. Bound read-only where the sandbox
/// builds its own root.
pub const HOST_ETC: [&str; 11] = [
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/nsswitch.conf",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/ssl/certs",
    "/etc/ssl/openssl.cnf",
    "/etc/os-release",
    "/etc/debian_version",
];

/// Host files an addon with network also needs, to resolve names.
pub const HOST_ETC_NETWORK: [&str; 3] = ["/etc/resolv.conf", "/etc/hosts", "/etc/host.conf"];

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for a sandbox tool speaking the handoff protocol (bubblewrap's `--info-fd`
    /// and `--block-fd`): reports its pid on fd 3, waits on fd 4, then writes `marker`.
    fn tool(marker: &Path) -> (std::process::Child, Handoff, tempfile::TempDir) {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let ((info_r, info_w), (block_r, block_w)) = (pipe().unwrap(), pipe().unwrap());
        let (w, r) = (info_w.as_raw_fd(), block_r.as_raw_fd());
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c")
            .arg(format!("echo '{{\"child-pid\": '$$'}}' >&3; exec 3>&-; read x <&4; touch {}", marker.display()));
        // SAFETY: dup2 only, between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                libc::dup2(w, 3);
                libc::dup2(r, 4);
                Ok(())
            });
        }
        let child = cmd.spawn().unwrap();
        drop((info_w, block_r));
        let groups = tempfile::tempdir().unwrap();
        (child, Handoff { info: info_r, release: block_w, cgroups: vec![] }, groups)
    }

    #[test]
    fn a_completed_handoff_moves_both_processes_then_releases() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let (mut child, mut handoff, groups) = tool(&marker);
        let procs = groups.path().join("cgroup.procs");
        fs_err::write(&procs, "").unwrap();
        handoff.cgroups = vec![procs.clone()];
        handoff.complete(child.id() as i32).unwrap();
        assert!(child.wait().unwrap().success());
        assert!(marker.exists(), "released");
        // Both pids were written (here the tool is its own inner process).
        assert_eq!(fs_err::read_to_string(&procs).unwrap(), child.id().to_string());
    }

    #[test]
    fn a_failed_handoff_kills_the_tool_before_it_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let (mut child, mut handoff, groups) = tool(&marker);
        handoff.cgroups = vec![groups.path().join("no-such-group/cgroup.procs")];
        let err = handoff.complete(child.id() as i32).unwrap_err();
        assert!(err.to_string().contains("no-such-group"), "{err}");
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL), "killed, not released: {status:?}");
        assert!(!marker.exists(), "what the sandbox would have started never ran");
    }

    pub(crate) fn argv(kind: SandboxKind, network: NetKind) -> Vec<String> {
        let mounts =
            Mounts { work: "/w/run".into(), output: "/w/out".into(), cache: "/c/data".into(), home: "/c/home".into() };
        let env = vec![("OUTPUT_DIR".to_string(), "/mnt/output".to_string())];
        let args = vec!["arguments/user-input".to_string()];
        let store = [PathBuf::from("/")];
        let spec = Spec {
            program: Path::new("/w/run/addons/a-1/run.sh"),
            args: &args,
            env: &env,
            mounts: &mounts,
            extra_ro: &store,
            iso: Isolation { network },
            scratch: Path::new("/w/run.root"),
            cgroups: &[],
            rlimits: &[],
            tmpfs: Default::default(),
        };
        let cmd = Sandboxes::default().get(kind).build(&spec);
        let std = cmd.as_std();
        std::iter::once(std.get_program()).chain(std.get_args()).map(|a| a.to_string_lossy().to_string()).collect()
    }

    #[test]
    fn bwrap_cuts_the_network_only_when_asked_and_binds_the_run_dirs_at_mnt() {
        let pure = argv(SandboxKind::Bwrap, NetKind::None);
        assert!(pure.contains(&"--unshare-net".to_string()));
        assert!(pure.contains(&"--unshare-pid".to_string()) && pure.contains(&"--die-with-parent".to_string()));
        for (host, inside) in
            [("/w/run", "/mnt/work"), ("/w/out", "/mnt/output"), ("/c/data", "/mnt/cache"), ("/c/home", "/mnt/home")]
        {
            // A root engine binds the run's directories at /mnt itself before bwrap starts.
            let src = if is_root() { inside } else { host };
            assert!(pure.windows(3).any(|w| w == ["--bind", src, inside]), "{host}: {pure:?}");
        }
        for hardening in ["--disable-userns", "--unshare-user", "--remount-ro"] {
            assert!(pure.contains(&hardening.to_string()), "{hardening}: {pure:?}");
        }
        assert!(pure.windows(2).any(|w| w == ["--cap-drop", "ALL"]));
        assert_eq!(pure.iter().filter(|a| *a == "--add-seccomp-fd").count(), 2, "both filters");
        assert!(pure.windows(4).any(|w| w == ["--chdir", "/mnt/work", "--", "/mnt/work/addons/a-1/run.sh"]));
        assert!(pure.ends_with(&["arguments/user-input".into()]));
        // An egress network is a namespace of the run's own too (the engine gives it its
        // network in the handoff).
        assert!(argv(SandboxKind::Bwrap, NetKind::Egress).contains(&"--unshare-net".to_string()));
        let impure = argv(SandboxKind::Bwrap, NetKind::Host);
        assert!(!impure.contains(&"--unshare-net".to_string()));
        assert!(impure.contains(&"--unshare-pid".to_string()), "a PID namespace even with network");
    }

    #[test]
    fn nspawn_mounts_at_mnt_brings_alternatives_and_translates_the_program() {
        let pure = argv(SandboxKind::Nspawn, NetKind::None);
        assert!(pure.contains(&"--private-network".to_string()));
        assert!(pure.contains(&"--volatile=yes".to_string()) && pure.contains(&"--directory=/".to_string()));
        assert!(!pure.iter().any(|a| a == "--ephemeral"), "never copies a whole tree");
        for b in [
            "--bind=/w/run:/mnt/work:idmap",
            "--bind=/w/out:/mnt/output:idmap",
            "--bind=/c/data:/mnt/cache:idmap",
            "--bind=/c/home:/mnt/home:idmap",
            "--chdir=/mnt/work",
            "--private-users=pick",
            "--drop-capability=all",
            "--no-new-privileges=yes",
        ] {
            assert!(pure.contains(&b.to_string()), "{b} in {pure:?}");
        }
        if Path::new("/etc/alternatives").exists() {
            assert!(pure.contains(&"--bind-ro=/etc/alternatives".to_string()), "{pure:?}");
        }
        assert!(pure.contains(&"--setenv=OUTPUT_DIR=/mnt/output".to_string()));
        assert!(pure.ends_with(&[
            "--".into(),
            nspawn::HELPER_AT.into(),
            nspawn::HELPER_COMMAND.into(),
            "/mnt/work/addons/a-1/run.sh".into(),
            "arguments/user-input".into()
        ]));
        assert!(pure.iter().any(|a| a.starts_with("--system-call-filter=~") && a.contains("@mount")));
        assert!(!argv(SandboxKind::Nspawn, NetKind::Host).contains(&"--private-network".to_string()));
    }

    #[test]
    fn only_none_may_run_a_pure_addon_without_cutting_the_network() {
        let s = Sandboxes::default();
        assert!(s.get(SandboxKind::Bwrap).cuts_network() && s.get(SandboxKind::Netns).cuts_network());
        assert!(s.get(SandboxKind::Nspawn).cuts_network());
        let none = s.get(SandboxKind::None);
        assert!(!none.cuts_network());
        assert!(none.check(Isolation { network: NetKind::None }).is_ok(), "explicit `none` runs, and says so");
    }

    #[test]
    fn two_engines_keep_their_own_settings() {
        let probes = Arc::new(ProbeCache::default());
        let settings = |bin: &str| {
            let mut s = SandboxSettings::default();
            s.sections.set(nspawn::NspawnSettings { nspawn_binary: bin.into(), ..Default::default() });
            s
        };
        let a = Sandboxes::new(&settings("/opt/a/systemd-nspawn"), probes.clone());
        let b = Sandboxes::new(&settings("/opt/b/systemd-nspawn"), probes);
        let pa = a.get(SandboxKind::Nspawn).probe();
        let pb = b.get(SandboxKind::Nspawn).probe();
        assert!(pa.detail.contains("/opt/a/") && pb.detail.contains("/opt/b/"), "{pa:?} {pb:?}");
    }

    #[test]
    fn translate_maps_host_paths_into_the_view() {
        let host = Mounts { work: "/w/run".into(), output: "/w/out".into(), cache: "/c".into(), home: "/h".into() };
        let view = Mounts::mnt();
        assert_eq!(host.translate(Path::new("/w/run/addons/x/run"), &view), Path::new("/mnt/work/addons/x/run"));
        assert_eq!(host.translate(Path::new("/nix/store/abc/bin/x"), &view), Path::new("/nix/store/abc/bin/x"));
    }
}
