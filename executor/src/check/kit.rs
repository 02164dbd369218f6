//! The hostile-addon kit's judge: what the probe (`probe.c`) may find for a runner that declares
//! what it isolates, the bait it looks for (host secrets, a writable place outside, processes), and
//! the check that nothing unsafe is left in a tree.

use super::*;
use rustix::fs::{Mode, OFlags};

/// Capabilities a docker container keeps (CHOWN, DAC_OVERRIDE, FOWNER, FSETID, SETGID, SETUID).
pub(crate) const DOCKER_CAPS: u64 = 0b1101_1011;

/// Every check the probe makes in its `probe` mode: each must report, and a missing one is a
/// finding (the probe did not run it, or its input did not reach it).
pub const PROBE_CHECKS: [&str; 36] = [
    "inherited-fds",
    "daemon-sockets",
    "shadow",
    "gshadow",
    "root-home",
    "ssh-host-key",
    "ssl-private",
    "secret-file",
    "other-user-file",
    "engine-config",
    "engine-environment",
    "engine-command-line",
    "writes-attempted",
    "host-root",
    "capabilities",
    "new-privileges",
    "no-seccomp",
    "mount",
    "ptrace-child",
    "ptrace-init",
    "keyring",
    "user-namespace",
    "bpf",
    "userfaultfd",
    "perf-event-open",
    "kernel-module",
    "proc-sys-write",
    "sys-write",
    "host-processes",
    "interfaces",
    "host-loopback-tcp",
    "route-out",
    "udp-attempted",
    "raw-socket",
    "packet-socket",
    "abstract-unix",
];

/// What the probe found, for a runner that declares `caps`: every check must report and find
/// nothing. Only what the runner declares is allowed: a runner that declares `host_root` (a
/// container without a user namespace) may run the addon as the host's uid 0 with no more than
/// the docker runner's minimal capabilities; one that declares `ptrace_children` may let a
/// process trace its own children. A check that reports an error (its input did not reach the
/// probe) is a finding, not a pass.
pub fn judge(lines: &[String], caps: &addon_runners::Capabilities) -> Vec<String> {
    let mut found = Vec::new();
    let mut reported = std::collections::BTreeSet::new();
    for l in lines.iter().filter_map(|l| l.strip_prefix("kit ")) {
        let Some((check, rest)) = l.split_once(" found=") else { continue };
        reported.insert(check.to_string());
        if rest.starts_with("no") {
            continue;
        }
        let detail = rest.trim_start_matches("yes").trim();
        let allowed = rest.starts_with("yes")
            && match check {
                "host-root" => caps.host_root,
                "ptrace-child" => caps.ptrace_children,
                "capabilities" => {
                    caps.host_root && u64::from_str_radix(detail, 16).is_ok_and(|c| c & !DOCKER_CAPS == 0)
                }
                _ => false,
            };
        if !allowed {
            found.push(format!("{check}: {}", rest.trim()));
        }
    }
    for missing in PROBE_CHECKS.iter().filter(|c| !reported.contains(**c)) {
        found.push(format!("{missing}: the probe did not report this check"));
    }
    found
}

/// Host-side bait for the hostile-addon kit: loopback listeners (TCP, UDP, abstract unix), a
/// marked host process, files the addon must not read (root's only, another user's), and a
/// secret value. [`Bait::env`] tells the probe where they are. Also used by the engine's
/// conformance suite.
pub struct Bait {
    /// Digits, unique per bait: the probe names what it leaves with it.
    pub marker: String,
    tcp_port: u16,
    udp_port: u16,
    udp_got: std::sync::Arc<std::sync::atomic::AtomicBool>,
    abstract_name: String,
    host_process: std::process::Child,
    /// Readable by root only.
    pub secret_file: PathBuf,
    /// Another user's (uid 4242's, when the engine is root) private file.
    pub other_file: PathBuf,
    /// A value the probe must find nowhere it can read (it is given reversed).
    pub secret_value: String,
    /// A stand-in for the engine's configuration when the caller has none to name (private).
    config_bait: PathBuf,
    /// The caller's directory, outside the addon's.
    outside: PathBuf,
}

impl Bait {
    /// Sets the bait up in `outside` (a directory of the caller's, outside the addon's).
    /// `marker`: digits, unique per bait (an earlier bait's listeners may still be bound).
    pub fn new(outside: &Path, marker: String) -> std::io::Result<Bait> {
        Bait::with_secret(outside, marker, None)
    }

    /// [`Bait::new`], with `secret` as the secret value when given (one the engine's own
    /// environment holds, so that it is bait too).
    pub fn with_secret(outside: &Path, marker: String, secret: Option<String>) -> std::io::Result<Bait> {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::process::CommandExt;
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let tcp_port = tcp.local_addr()?.port();
        std::thread::spawn(move || {
            for s in tcp.incoming().flatten() {
                drop(s);
            }
        });
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let udp_port = udp.local_addr()?.port();
        let udp_got = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (got, want) = (udp_got.clone(), marker.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while let Ok(n) = udp.recv(&mut buf) {
                if buf[..n] == *want.as_bytes() {
                    got.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
        });
        // Unique in this process whatever the marker: earlier baits' listener threads keep their
        // sockets bound (they end with the process).
        static BAITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let serial = BAITS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let abstract_name = format!("addon-kit-{marker}-{}-{serial}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())?;
        let abs = std::os::unix::net::UnixListener::bind_addr(&addr)?;
        std::thread::spawn(move || {
            for s in abs.incoming().flatten() {
                drop(s);
            }
        });
        let secret_file = outside.join(format!("root-only-secret-{marker}"));
        fs_err::write(&secret_file, "top secret")?;
        set_mode(&secret_file, 0o600);
        let other_file = outside.join(format!("other-users-file-{marker}"));
        fs_err::write(&other_file, "private")?;
        set_mode(&other_file, 0o600);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::chown(&other_file, Some(4242), Some(4242))?;
        }
        let config_bait = outside.join(format!("engine-config-{marker}.yml"));
        fs_err::write(&config_bait, "plugins: {}\n")?;
        set_mode(&config_bait, 0o600);
        let secret_value = secret.unwrap_or_else(|| format!("kit-secret-{}-{marker}", std::process::id()));
        // A host process with the secret in its environment: an addon that can read other
        // processes' environments finds it.
        let host_process = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("sleep 600; : host-process {marker}"))
            .env("SECRET_TOKEN", &secret_value)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()?;
        Ok(Bait {
            tcp_port,
            udp_port,
            udp_got,
            abstract_name,
            host_process,
            secret_file,
            other_file,
            secret_value,
            config_bait,
            outside: outside.to_path_buf(),
            marker,
        })
    }

    /// The probe's environment: where the bait is. `engine_config`: the engine's configuration
    /// file, which the addon must not read either.
    pub fn env(&self, engine_config: Option<&Path>) -> Vec<(String, String)> {
        let mut env = vec![
            ("HOST_PORT".to_string(), self.tcp_port.to_string()),
            ("HOST_UDP_PORT".into(), self.udp_port.to_string()),
            ("ABSTRACT_NAME".into(), self.abstract_name.clone()),
            ("MARKER".into(), self.marker.clone()),
            ("SECRET_FILE".into(), self.secret_file.display().to_string()),
            ("OTHER_FILE".into(), self.other_file.display().to_string()),
            ("OUTSIDE_DIR".into(), self.outside.display().to_string()),
            ("SECRET_VALUE".into(), self.secret_value.chars().rev().collect()),
        ];
        let config = engine_config.unwrap_or(&self.config_bait);
        env.push(("ENGINE_CONFIG".into(), config.display().to_string()));
        env
    }

    /// Whether a datagram from the addon reached the host's loopback (waits a moment for it).
    pub fn udp_got(&self) -> bool {
        std::thread::sleep(Duration::from_millis(200));
        self.udp_got.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Files the probe managed to leave outside its directories.
    pub fn escaped_writes(&self) -> Vec<PathBuf> {
        ["/etc", "/root", "/var/tmp", "/tmp", "/usr", "/home", "/var/lib"]
            .iter()
            .map(PathBuf::from)
            .chain([self.outside.clone()])
            .map(|d| d.join(format!("addon-kit-{}", self.marker)))
            .filter(|p| p.exists())
            .collect()
    }
}

impl Drop for Bait {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the process group this bait started.
        unsafe { libc::kill(-(self.host_process.id() as i32), libc::SIGKILL) };
        let _ = self.host_process.wait();
        for p in self.escaped_writes() {
            let _ = fs_err::remove_file(p);
        }
        let _ = fs_err::remove_file(&self.secret_file);
        let _ = fs_err::remove_file(&self.other_file);
        let _ = fs_err::remove_file(&self.config_bait);
    }
}

pub(crate) fn set_mode(p: &Path, mode: u32) {
    let _ = fs_err::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(mode));
}

/// Every process and its command line.
pub(crate) fn processes() -> Vec<(String, String)> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    if let Ok(rd) = fs_err::read_dir("/proc") {
        for e in rd.flatten() {
            let pid = e.file_name().to_string_lossy().to_string();
            if pid == me || !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            if let Ok(cmd) = fs_err::read(e.path().join("cmdline")) {
                out.push((pid, String::from_utf8_lossy(&cmd).replace('\0', " ")));
            }
        }
    }
    out
}

/// The last number an addon reported after `prefix` (the probe's progress lines).
pub(crate) fn last_number(lines: &[String], prefix: &str) -> Option<u64> {
    lines.iter().rev().find_map(|l| l.split_once(prefix).and_then(|(_, r)| r.split_whitespace().next()?.parse().ok()))
}

/// What must not be left on the host below `root` after a run: setuid or setgid entries,
/// fifos, sockets, devices (and links, unless `links_allowed`), and entries not owned by `owner`
/// when one is given. Shared with the conformance suite.
///
/// This is the judge of the engine's walks, so it does not use them: it is a walk of its own,
/// recursive and by descriptors (`openat` with `O_NOFOLLOW`, names relative to their directory),
/// so no path is ever longer than a name and trees deeper than PATH_MAX are seen whole. A walk
/// sharing addon-tree's code would miss what that code misses (seen: with addon-tree's walk made
/// to skip entries past PATH_MAX, the judge built on it found nothing either).
///
/// It holds one descriptor per level: made for the checks' trees (tens of levels). A tree deeper
/// than the descriptors it may open fails the judgement (EMFILE), never passes it. It crosses
/// mount points (the judged trees have none unless a run left one, which is worth seeing).
pub fn unsafe_entries(root: &Path, links_allowed: bool, owner: Option<u32>) -> std::io::Result<Vec<String>> {
    let mut bad = Vec::new();
    let dir = match rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(bad),
        Err(e) => return Err(std::io::Error::other(format!("{}: {e}", root.display()))),
    };
    let judge = Judge { links_allowed, owner };
    let st = rustix::fs::fstat(&dir)?;
    judge.entry(&root.display().to_string(), &st, &mut bad);
    judge.below(&dir, &mut Vec::new(), root, &mut bad)?;
    Ok(bad)
}

/// What [`unsafe_entries`] looks for.
struct Judge {
    links_allowed: bool,
    owner: Option<u32>,
}

impl Judge {
    fn entry(&self, shown: &str, st: &rustix::fs::Stat, bad: &mut Vec<String>) {
        use rustix::fs::FileType;
        let kind = FileType::from_raw_mode(st.st_mode);
        let special = match kind {
            FileType::RegularFile | FileType::Directory => false,
            FileType::Symlink => !self.links_allowed,
            _ => true,
        };
        if special {
            bad.push(format!("{shown} is a {}", format!("{kind:?}").to_lowercase()));
        }
        if kind != FileType::Symlink && st.st_mode & 0o6000 != 0 {
            bad.push(format!("{shown} has mode {:o} (uid {})", st.st_mode & 0o7777, st.st_uid));
        }
        if self.owner.is_some_and(|o| o != st.st_uid) {
            bad.push(format!("{shown} belongs to uid {}", st.st_uid));
        }
    }

    /// The entries below `dir` (at `names` below `root`), recursively.
    fn below(
        &self,
        dir: &rustix::fd::OwnedFd,
        names: &mut Vec<std::ffi::CString>,
        root: &Path,
        bad: &mut Vec<String>,
    ) -> std::io::Result<()> {
        let shown = |names: &[std::ffi::CString]| format!("{}/{}", root.display(), addon_tree::display_path(names));
        // What a run's late clean-up removes while this looks is not left: a vanished entry
        // (ENOENT) is skipped, anything else fails the judgement.
        let mut list = Vec::new();
        let listing = |e: rustix::io::Errno| std::io::Error::other(format!("listing {}: {e}", shown(names)));
        let entries = match rustix::fs::Dir::read_from(dir) {
            Ok(entries) => entries,
            Err(rustix::io::Errno::NOENT) => return Ok(()),
            Err(e) => return Err(listing(e)),
        };
        for e in entries {
            let e = match e {
                Err(rustix::io::Errno::NOENT) => return Ok(()),
                e => e.map_err(listing)?,
            };
            let name = e.file_name().to_owned();
            if name.as_bytes() != b"." && name.as_bytes() != b".." {
                list.push(name);
            }
        }
        for name in list {
            names.push(name.clone());
            let here = shown(names);
            let st = match rustix::fs::statat(dir, &name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(rustix::io::Errno::NOENT) => {
                    names.pop();
                    continue;
                }
                Err(e) => return Err(std::io::Error::other(format!("{here}: {e}"))),
            };
            self.entry(&here, &st, bad);
            if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory {
                match rustix::fs::openat(
                    dir,
                    &name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                ) {
                    Ok(sub) => self.below(&sub, names, root, bad)?,
                    Err(rustix::io::Errno::NOENT) => {}
                    Err(e) => return Err(std::io::Error::other(format!("{here}: {e}"))),
                }
            }
            names.pop();
        }
        Ok(())
    }
}
