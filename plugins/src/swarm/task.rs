//! `addon-swarm-task`: the entrypoint of every swarm task (PID 1 of its container). It fetches
//! the run's inputs from the plugin, runs the addon with no more than the docker runner gives
//! it, streams its output back as it comes and hands back its output and `CACHE_DIR`.
//!
//! The task starts as root with three capabilities beyond the docker runner's six
//! (`SYS_ADMIN` and `NET_ADMIN` to give a pure addon a network namespace with only `lo`,
//! `SETPCAP` to drop capabilities from the bounding set). Between fork and exec the addon's
//! process gets that namespace, an OOM score that makes it the one the kernel kills first, the
//! file size limit, the image's user, only the six capabilities (none for another user) and
//! `no_new_privs`. The helper itself keeps its connection in the task's network: the one-run
//! token never reaches the addon (it is removed from the environment, and the addon, with fewer
//! capabilities, cannot read the helper's memory or environment). As PID 1 it cannot be killed
//! by the addon, and it kills whatever the addon left running before it packs the outputs.

use std::ffi::CString;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::wire::{self, TaskExit, TaskSpec};

/// The docker runner's capabilities (kept for an addon that runs as root).
/// (CAP_CHOWN 0, CAP_DAC_OVERRIDE 1, CAP_FOWNER 3, CAP_FSETID 4, CAP_SETGID 6, CAP_SETUID 7.)
const KEEP: [u32; 6] = [0, 1, 3, 4, 6, 7];

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_term(_: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(-pid, libc::SIGTERM) };
    }
}

/// Runs the task; the process's exit code says whether the transfer succeeded (the addon's
/// own code travels in `Exit`).
pub fn main() -> i32 {
    match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("addon-swarm-task: {e}");
            kill_all();
            // The plugin hears why (it would only see the connection close).
            if let Some(conn) = CONN.get() {
                let mut w = conn.lock().unwrap_or_else(|e| e.into_inner());
                let _ = wire::write_frame(&mut *w, wire::ERROR, format!("addon-swarm-task: {e}").as_bytes());
            }
            3
        }
    }
}

/// The connection to the plugin, for the last word of a helper that fails.
static CONN: std::sync::OnceLock<Mutex<TcpStream>> = std::sync::OnceLock::new();

/// A stop that came before the addon was started.
static STOPPED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Reads a small configuration file of the image (`/etc/passwd`, `/etc/group`): a regular file
/// of at most 1 MiB, opened without blocking (the image may have put a fifo there), else empty.
fn read_image_file(path: &str) -> String {
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(f) = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path) else {
        return String::new();
    };
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return String::new();
    }
    let mut text = String::new();
    let _ = f.take(1 << 20).read_to_string(&mut text);
    text
}

fn run() -> io::Result<()> {
    let endpoint =
        std::env::var(wire::ENV_ENDPOINT).map_err(|_| wire::invalid(format!("{} is not set", wire::ENV_ENDPOINT)))?;
    let token = std::env::var(wire::ENV_TOKEN).map_err(|_| wire::invalid(format!("{} is not set", wire::ENV_TOKEN)))?;
    std::env::remove_var(wire::ENV_TOKEN);
    std::env::remove_var(wire::ENV_ENDPOINT);
    let mut conn = connect(&endpoint)?;
    conn.set_nodelay(true)?;
    let _ = CONN.set(Mutex::new(conn.try_clone()?));
    wire::write_frame(&mut conn, wire::HELLO, token.as_bytes())?;
    let spec: TaskSpec = match wire::read_frame(&mut conn)? {
        Some((wire::SPEC, json)) => {
            serde_json::from_slice(&json).map_err(|e| wire::invalid(format!("the spec: {e}")))?
        }
        Some((wire::ERROR, text)) => return Err(io::Error::other(String::from_utf8_lossy(&text).into_owned())),
        _ => return Err(wire::invalid("the plugin did not send the run's spec".into())),
    };
    // The run's directories are the task's tmpfs mounts, which Docker makes noexec; a bind
    // mount of the docker runner is not, and addons run scripts from their work directory.
    for dir in spec.inputs.iter().chain(&spec.outputs) {
        if let Err(e) = rustix::mount::mount_remount(
            dir.as_str(),
            rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV,
            "",
        ) {
            eprintln!("addon-swarm-task: {dir} stays noexec (remounting it: {e})");
        }
    }
    let policy = addon_tree::UnpackPolicy { symlinks: true, max_bytes: None, owners: false };
    for dir in &spec.inputs {
        let dest = Path::new(dir);
        std::fs::create_dir_all(dest)?;
        let mut tree = wire::TreeReader::new(&mut conn);
        addon_tree::unpack_tar(&mut tree, dest, policy)
            .map_err(|e| io::Error::new(e.kind(), format!("unpacking {dir}: {e}")))?;
        tree.finish().map_err(|e| io::Error::new(e.kind(), format!("{dir}: {e}")))?;
    }
    for dir in &spec.outputs {
        std::fs::create_dir_all(dir)?;
    }
    let who = user_of(&spec.user)?;
    let mut spec = spec;
    if !spec.env.iter().any(|(k, _)| k == "HOME") {
        // As Docker does for a container whose image names no HOME: the user's home in the
        // image's /etc/passwd, else /.
        spec.env.push(("HOME".into(), home_of(who.as_ref().map_or(0, |w| w.0))));
    }
    if let Some((uid, gid, _)) = &who {
        for dir in spec.inputs.iter().chain(&spec.outputs) {
            chown_tree(Path::new(dir), *uid, *gid)?;
        }
    }
    let oom_before = oom_kills();
    let pids_before = pids_refused();
    let dirs: Vec<String> = spec
        .inputs
        .iter()
        .chain(&spec.outputs)
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let use_before = dir_use(&dirs);
    let writer = Arc::new(Mutex::new(conn.try_clone()?));
    let filters = addon_runners::sandbox::seccomp::filters().map_err(io::Error::other)?;
    // Every thread of the helper runs before the addon starts: a fork bomb must not leave the
    // helper unable to start the threads that report and bound it.
    let (out_r, out_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let (err_r, err_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let pumps: Vec<_> = [(out_r, wire::STDOUT), (err_r, wire::STDERR)]
        .into_iter()
        .map(|(r, kind)| {
            let w = writer.clone();
            let mut r = std::fs::File::from(r);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match r.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
                            if wire::write_frame(&mut *w, kind, &buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    // The plugin may ask to stop the run; should it go away, nothing of the run stays.
    let mut control = conn.try_clone()?;
    let (acked, ack) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || loop {
        match wire::read_frame(&mut control) {
            Ok(Some((wire::STOP, grace))) => {
                let ms = grace.get(..8).map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default())).unwrap_or(0);
                STOPPED.store(true, Ordering::SeqCst);
                let pid = CHILD.load(Ordering::SeqCst);
                if pid > 0 {
                    // SAFETY: signals to the addon's process group.
                    unsafe { libc::kill(-pid, libc::SIGTERM) };
                }
                std::thread::sleep(Duration::from_millis(ms));
                kill_all();
            }
            Ok(Some((wire::ACK, _))) => {
                let _ = acked.send(());
                return;
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                kill_all();
                std::process::exit(4);
            }
        }
    });
    // The limits the service cannot set: what the addon adds to its directories (tmpfs, so
    // files it unlinked but holds open count too), and a fork the process limit refused.
    let breach: Arc<Mutex<Option<String>>> = Arc::default();
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (breach, watching) = (breach.clone(), watching.clone());
        let (max_bytes, max_entries, pids) = (spec.max_file_size, spec.max_entries, spec.pids);
        std::thread::spawn(move || {
            while watching.load(Ordering::SeqCst) {
                let (bytes, entries) = dir_use(&dirs);
                let found = if pids_refused() > pids_before {
                    Some(addon_runner_api::Breach::Pids(pids.unwrap_or(0)))
                } else if let Some(limit) = max_bytes.filter(|l| bytes.saturating_sub(use_before.0) > *l) {
                    Some(addon_runner_api::Breach::OutputSize { limit, written: bytes - use_before.0 })
                } else {
                    max_entries
                        .filter(|l| entries.saturating_sub(use_before.1) > *l)
                        .map(|limit| addon_runner_api::Breach::OutputEntries { limit, made: entries - use_before.1 })
                };
                if let Some(b) = found {
                    *breach.lock().unwrap_or_else(|e| e.into_inner()) = Some(b.to_string());
                    kill_all();
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    // SAFETY: installing a handler that only calls kill.
    unsafe { libc::signal(libc::SIGTERM, forward_term as *const () as libc::sighandler_t) };
    let child = spawn(&spec, who, filters, out_w, err_w)?;
    let pid = child.id() as i32;
    CHILD.store(pid, Ordering::SeqCst);
    if STOPPED.load(Ordering::SeqCst) {
        // Stopped while it was being started: it does not run on.
        kill_all();
    }
    // PID 1 reaps every process; the addon's own status is the run's.
    let status = reap_until(pid);
    watching.store(false, Ordering::SeqCst);
    let _ = watcher.join();
    CHILD.store(0, Ordering::SeqCst);
    kill_all();
    reap_all();
    for p in pumps {
        let _ = p.join();
    }
    let code = if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) };
    let usage = children_usage();
    let exit = TaskExit {
        code,
        oom_kills: oom_kills().saturating_sub(oom_before),
        peak_memory_bytes: Some(usage.ru_maxrss as u64 * 1024),
        cpu_ms: Some(
            (usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) as u64 * 1000
                + (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) as u64 / 1000,
        ),
        pids_refused: pids_refused().saturating_sub(pids_before),
        breach: breach.lock().unwrap_or_else(|e| e.into_inner()).take(),
    };
    let mut w = writer.lock().unwrap_or_else(|e| e.into_inner());
    wire::write_frame(&mut *w, wire::EXIT, &serde_json::to_vec(&exit).map_err(io::Error::other)?)?;
    for dir in &spec.outputs {
        let tree = wire::TreeWriter::new(&mut *w);
        let (tree, _) = addon_tree::pack_tar(Path::new(dir), tree, addon_tree::Links::Keep)
            .map_err(|e| io::Error::new(e.kind(), e.to_string()))?;
        tree.finish()?;
    }
    wire::write_frame(&mut *w, wire::DONE, &[])?;
    w.flush()?;
    drop(w);
    // The plugin acknowledges once it kept the outputs (the control thread exits the task
    // should the connection be cut first).
    ack.recv_timeout(Duration::from_secs(60))
        .map_err(|_| io::Error::other("the plugin did not acknowledge the outputs"))
}

fn connect(endpoint: &str) -> io::Result<TcpStream> {
    let mut last = None;
    for _ in 0..20 {
        match TcpStream::connect(endpoint) {
            Ok(c) => return Ok(c),
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Err(io::Error::other(format!(
        "connecting to the plugin at {endpoint}: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    )))
}

/// The image's user as numbers and groups, read from the task's own `/etc/passwd` and
/// `/etc/group` as Docker reads them; None for root.
fn user_of(spec: &str) -> io::Result<Option<(u32, u32, Vec<u32>)>> {
    if spec.is_empty() {
        return Ok(None);
    }
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read_image_file("/etc/passwd");
    let groups = read_image_file("/etc/group");
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && (f[0] == user || f[2] == user));
    let uid: u32 = match (user.parse(), &entry) {
        (Ok(n), _) => n,
        (Err(_), Some(f)) => f[2].parse().map_err(|_| wire::invalid(format!("user `{user}` has no numeric id")))?,
        (Err(_), None) => return Err(wire::invalid(format!("the image's user `{user}` is not in its /etc/passwd"))),
    };
    let gid: u32 = match group {
        Some(g) => match g.parse() {
            Ok(n) => n,
            Err(_) => groups
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() > 2 && f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| wire::invalid(format!("the image's group `{g}` is not in its /etc/group")))?,
        },
        None => entry.as_ref().and_then(|f| f[3].parse().ok()).unwrap_or(0),
    };
    if uid == 0 && gid == 0 {
        return Ok(None);
    }
    let name = entry.as_ref().map(|f| f[0].to_string()).unwrap_or_default();
    let extra = groups
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() > 3 && !name.is_empty() && f[3].split(',').any(|m| m == name))
        .filter_map(|f| f[2].parse().ok())
        .collect();
    Ok(Some((uid, gid, extra)))
}

/// The home directory of `uid` in the task's `/etc/passwd`, else `/`.
fn home_of(uid: u32) -> String {
    let passwd = read_image_file("/etc/passwd");
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 5 && f[2] == uid.to_string())
        .map(|f| f[5].to_string())
        .unwrap_or_else(|| "/".into())
}

/// Gives a tree (made by the helper, before the addon starts) to the addon's user.
fn chown_tree(dir: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))?;
    if std::fs::symlink_metadata(dir)?.is_dir() {
        for e in std::fs::read_dir(dir)? {
            chown_tree(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}

fn spawn(
    spec: &TaskSpec,
    who: Option<(u32, u32, Vec<u32>)>,
    filters: &'static addon_runners::sandbox::seccomp::Filters,
    stdout: std::os::fd::OwnedFd,
    stderr: std::os::fd::OwnedFd,
) -> io::Result<std::process::Child> {
    let (program, args) = spec.argv.split_first().ok_or_else(|| wire::invalid("nothing to run".into()))?;
    let isolate = spec.isolate_network;
    let fsize = spec.max_file_size;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&spec.workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr));
    // SAFETY: between fork and exec only system calls, on memory prepared before the fork.
    let oom = CString::new("/proc/self/oom_score_adj").expect("no NUL");
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The addon, not the helper, is what the OOM killer picks in the task.
            let fd = libc::open(oom.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                libc::write(fd, b"1000".as_ptr().cast(), 4);
                libc::close(fd);
            }
            if isolate {
                if libc::unshare(libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                loopback_up()?;
            }
            if let Some(size) = fsize {
                let l = libc::rlimit { rlim_cur: size, rlim_max: size };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &l) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            for cap in 0..=63u32 {
                if !KEEP.contains(&cap)
                    && libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) == 1
                    && libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0);
            // Root (whatever its group) keeps the docker runner's six; another user none.
            let mut keep = KEEP.iter().fold(0, |acc, c| acc | (1 << c));
            if let Some((uid, gid, groups)) = &who {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setresgid(*gid, *gid, *gid) != 0
                    || libc::setresuid(*uid, *uid, *uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                if *uid != 0 {
                    keep = 0;
                }
            }
            capset(keep)?;
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The engine's system-call filter, as in its host sandboxes: the task's own profile
            // (Docker's default) lets through what CAP_SYS_ADMIN unlocks (namespaces, bpf,
            // perf events), which the helper needed and the addon must not reach.
            addon_runners::sandbox::seccomp::install(filters)?;
            Ok(())
        });
    }
    cmd.spawn().map_err(|e| io::Error::new(e.kind(), format!("starting {program}: {e}")))
}

/// Sets the effective, permitted and inheritable sets to `keep` (capabilities 0 to 31).
unsafe fn capset(keep: u32) -> io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut h = Header { version: 0x2008_0522, pid: 0 };
    let d = [
        Data { effective: keep, permitted: keep, inheritable: 0 },
        Data { effective: 0, permitted: 0, inheritable: 0 },
    ];
    // SAFETY: the kernel reads a header and two data structs (version 3).
    if unsafe { libc::syscall(libc::SYS_capset, &mut h as *mut Header, d.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Brings `lo` up in the current network namespace.
unsafe fn loopback_up() -> io::Result<()> {
    // SAFETY: a datagram socket and two interface ioctls on a zeroed ifreq.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        req.ifr_name[0] = b'l' as libc::c_char;
        req.ifr_name[1] = b'o' as libc::c_char;
        let r = if libc::ioctl(s, libc::SIOCGIFFLAGS, &mut req) == 0 {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            libc::ioctl(s, libc::SIOCSIFFLAGS, &req)
        } else {
            -1
        };
        let e = io::Error::last_os_error();
        libc::close(s);
        if r != 0 {
            return Err(e);
        }
    }
    Ok(())
}

/// Waits for `pid`, reaping every other process that ends meanwhile; its wait status.
fn reap_until(pid: i32) -> i32 {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid out pointer.
        let got = unsafe { libc::waitpid(-1, &mut status, 0) };
        if got == pid {
            return status;
        }
        if got < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return 255 << 8;
        }
    }
}

/// Kills every process of the task but the helper (it is PID 1 of the task's PID namespace).
fn kill_all() {
    // SAFETY: kill(-1) from PID 1 signals every other process of its namespace.
    if unsafe { libc::getpid() } == 1 {
        unsafe { libc::kill(-1, libc::SIGKILL) };
    } else {
        let pid = CHILD.load(Ordering::SeqCst);
        if pid > 0 {
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
    }
}

fn reap_all() {
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid out pointer.
        let got = unsafe { libc::waitpid(-1, &mut status, 0) };
        if got < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

fn children_usage() -> libc::rusage {
    // SAFETY: getrusage fills a zeroed struct.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut u);
        u
    }
}

/// Bytes and entries used on the run's directories (each a tmpfs of its own: what its files
/// hold, unlinked ones still open included).
fn dir_use(dirs: &[String]) -> (u64, u64) {
    dirs.iter().fold((0, 0), |(b, e), d| match rustix::fs::statvfs(d.as_str()) {
        Ok(s) => (b + (s.f_blocks - s.f_bfree) * s.f_frsize, e + (s.f_files - s.f_ffree)),
        Err(_) => (b, e),
    })
}

/// Forks the task's process limit refused (v2 `pids.events`, v1 `pids/pids.events`).
fn pids_refused() -> u64 {
    for file in ["/sys/fs/cgroup/pids.events", "/sys/fs/cgroup/pids/pids.events"] {
        if let Ok(text) = std::fs::read_to_string(file) {
            if let Some(n) = text.lines().find_map(|l| l.strip_prefix("max ")).and_then(|n| n.trim().parse().ok()) {
                return n;
            }
        }
    }
    0
}

/// OOM kills in the task's memory control group (v2 `memory.events`, v1 `memory.oom_control`).
fn oom_kills() -> u64 {
    for (file, key) in
        [("/sys/fs/cgroup/memory.events", "oom_kill "), ("/sys/fs/cgroup/memory/memory.oom_control", "oom_kill ")]
    {
        if let Ok(text) = std::fs::read_to_string(file) {
            if let Some(n) = text.lines().find_map(|l| l.strip_prefix(key)).and_then(|n| n.trim().parse().ok()) {
                return n;
            }
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_no_user_to_switch_to() {
        assert_eq!(user_of("").unwrap(), None);
        assert_eq!(user_of("0").unwrap(), None);
        assert_eq!(user_of("0:0").unwrap(), None);
        assert_eq!(user_of("1000:1000").unwrap().map(|u| (u.0, u.1)), Some((1000, 1000)));
    }

    #[test]
    fn a_name_missing_from_passwd_is_named() {
        let e = user_of("no-such-user-here").unwrap_err();
        assert!(e.to_string().contains("no-such-user-here"), "{e}");
    }
}
