//! Process supervision: start a prepared command, stream its output with bounded memory, enforce
//! the timeout and cancellation, and make sure nothing it started outlives it.
//!
//! Every sandbox puts the addon in its own PID namespace, so "everything it started" is the
//! descendants of the child we spawned. Stopping is: SIGTERM to every descendant (the namespace's
//! init ignores it by kernel rule, the addon's processes do not), a grace period, then SIGKILL to
//! the whole tree; killing a namespace's init makes the kernel kill every process inside it.

use std::collections::{HashMap, VecDeque};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// Lines of stderr kept for error messages.
pub const STDERR_TAIL_LINES: usize = 20;

/// Receives the addon's log lines (stderr, and stdout when it is not collected).
pub type LogSink = Arc<dyn Fn(LogStream, &str) + Send + Sync>;

/// Tells the lines a sandbox tool printed itself apart from the addon's.
pub type NoiseFilter = Arc<dyn Fn(&str) -> bool + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// How a supervised process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Exited by itself with this code (128 + signal when a signal ended it).
    Exited(i32),
    /// Stopped at its timeout.
    TimedOut(Duration),
    /// Stopped because the run was cancelled.
    Cancelled,
    /// Stopped because its stdout grew past the limit.
    StdoutTooLarge(u64),
    /// Stopped because it ran into a limit of its envelope (the reason, for people).
    Limit(String),
}

/// What supervision observed.
#[derive(Debug, Clone)]
pub struct Supervised {
    pub ending: Ending,
    /// Collected stdout (empty when not collected).
    pub stdout: Vec<u8>,
    /// The last lines of stderr.
    pub stderr_tail: Vec<String>,
    pub duration: Duration,
    /// What the run used, where the sandbox or runtime measures it.
    pub usage: crate::limits::Usage,
}

/// Limits and plumbing for one supervised process.
#[derive(Clone)]
pub struct Supervision {
    pub timeout: Duration,
    pub kill_grace: Duration,
    /// Collect stdout up to this many bytes; None streams stdout to the log instead.
    pub collect_stdout: Option<u64>,
    pub log: LogSink,
    pub cancel: CancellationToken,
    /// Lines on stderr that are not the addon's (logged at debug level, kept out of the tail).
    pub noise: Option<NoiseFilter>,
}

impl std::fmt::Debug for Supervision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervision")
            .field("timeout", &self.timeout)
            .field("kill_grace", &self.kill_grace)
            .field("collect_stdout", &self.collect_stdout)
            .finish_non_exhaustive()
    }
}

/// Called a few times a second while a process runs (with its pid); a breach stops it.
pub type Watch<'a> = &'a mut (dyn FnMut(i32) -> Option<crate::limits::Breach> + Send);

/// How often a [`Watch`] is asked.
const WATCH_EVERY: Duration = Duration::from_millis(200);

/// Spawns `cmd` and supervises it to the end. `cmd` must already carry its sandbox.
pub async fn supervise(cmd: Command, sup: &Supervision) -> std::io::Result<Supervised> {
    supervise_watched(cmd, sup, None).await
}

/// [`supervise`], also stopping the process when `watch` reports a breach of its limits.
pub async fn supervise_watched(
    mut cmd: Command,
    sup: &Supervision,
    mut watch: Option<Watch<'_>>,
) -> std::io::Result<Supervised> {
    let start = Instant::now();
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let pid = child.id().map(|p| p as i32);
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");

    let log = sup.log.clone();
    let noise = sup.noise.clone();
    let stderr_task = tokio::spawn(async move {
        let mut tail: VecDeque<String> = VecDeque::with_capacity(STDERR_TAIL_LINES);
        let mut lines = BufReader::new(stderr);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            // Lines are capped so that a binary blob without newlines cannot grow memory.
            match (&mut lines).take(64 * 1024).read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end_matches(['\n', '\r']);
                    if noise.as_ref().is_some_and(|is_noise| is_noise(line)) {
                        tracing::debug!("sandbox: {line}");
                        continue;
                    }
                    log(LogStream::Stderr, line);
                    if tail.len() == STDERR_TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line.to_string());
                }
            }
        }
        tail.into_iter().collect::<Vec<_>>()
    });

    let limit = sup.collect_stdout;
    let log = sup.log.clone();
    let overflow = CancellationToken::new();
    let overflow_set = overflow.clone();
    let stdout_task = tokio::spawn(async move {
        let mut out = Vec::new();
        let mut reader = BufReader::new(stdout);
        match limit {
            Some(limit) => {
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match reader.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if out.len() as u64 + n as u64 > limit {
                                overflow_set.cancel();
                                break;
                            }
                            out.extend_from_slice(&buf[..n]);
                        }
                    }
                }
            }
            None => {
                let mut line = Vec::new();
                loop {
                    line.clear();
                    match (&mut reader).take(64 * 1024).read_until(b'\n', &mut line).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => log(LogStream::Stdout, String::from_utf8_lossy(&line).trim_end_matches(['\n', '\r'])),
                    }
                }
            }
        }
        out
    });

    let deadline = tokio::time::sleep(sup.timeout);
    tokio::pin!(deadline);
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut ending = loop {
        tokio::select! {
            status = child.wait() => break Ending::Exited(status.map(exit_code).unwrap_or(-1)),
            _ = &mut deadline => break Ending::TimedOut(sup.timeout),
            _ = sup.cancel.cancelled() => break Ending::Cancelled,
            _ = overflow.cancelled() => break Ending::StdoutTooLarge(limit.unwrap_or(0)),
            _ = tick.tick(), if watch.is_some() => {
                if let Some(breach) = watch.as_mut().and_then(|w| w(pid.unwrap_or(0))) {
                    break Ending::Limit(breach.to_string());
                }
            }
        }
    };
    // After a normal exit nothing is left to stop: every sandbox runs the addon in its own PID
    // namespace, whose init ended with the addon and took every leftover process with it.
    // A breached limit gets no grace: the addon would go on filling the disk or forking.
    let grace = if matches!(ending, Ending::Limit(_)) { Duration::ZERO } else { sup.kill_grace };
    if let (Some(pid), false) = (pid, matches!(ending, Ending::Exited(_))) {
        stop_tree(pid, &mut child, grace).await;
    }
    let _ = child.wait().await;
    // Pipes close once every holder is dead; the readers then finish.
    let stdout = stdout_task.await.unwrap_or_default();
    let stderr_tail = stderr_task.await.unwrap_or_default();
    if overflow.is_cancelled() && matches!(ending, Ending::Exited(_)) {
        ending = Ending::StdoutTooLarge(limit.unwrap_or(0));
    }
    Ok(Supervised { ending, stdout, stderr_tail, duration: start.elapsed(), usage: Default::default() })
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// SIGTERM to everything below the child, a grace period, then SIGKILL to all of it.
async fn stop_tree(pid: i32, child: &mut tokio::process::Child, grace: Duration) {
    if grace.is_zero() {
        kill_tree(pid, libc::SIGKILL, true);
        return;
    }
    // The child itself (a sandbox shim or bwrap) is spared the SIGTERM: its death would take the
    // namespace down at once and leave the addon no grace.
    kill_tree(pid, libc::SIGTERM, false);
    let deadline = tokio::time::sleep(grace);
    tokio::pin!(deadline);
    tokio::select! {
        _ = child.wait() => {}
        _ = &mut deadline => {}
    }
    kill_tree(pid, libc::SIGKILL, true);
}

/// A process's start time in clock ticks since boot (with its pid, it names one process for good:
/// pids are reused, start times of the same pid are not).
/// None for a process that is gone, or dead and not yet reaped (a zombie).
pub fn process_start(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    if matches!(fields.next(), Some("Z" | "X" | "x")) {
        return None;
    }
    fields.nth(18).map(str::to_string)
}

/// Sends `sig` to every descendant of `pid` (and to `pid` itself when `include_root`).
pub fn kill_tree(pid: i32, sig: i32, include_root: bool) {
    let mut targets = descendants(pid);
    if include_root {
        targets.insert(0, pid);
    }
    for p in targets {
        // SAFETY: kill(2) has no memory effects; a stale pid at worst gets ESRCH.
        unsafe {
            libc::kill(p, sig);
        }
    }
}

/// All descendants of `pid`, parents before children, from a scan of /proc.
pub fn descendants(pid: i32) -> Vec<i32> {
    // The kernel's own lists of children (`/proc/PID/task/TID/children`) walk only the subtree;
    // without them, every process's parent is read.
    if std::path::Path::new("/proc/self/task").join(std::process::id().to_string()).join("children").exists() {
        let mut out = Vec::new();
        let mut queue = VecDeque::from([pid]);
        while let Some(p) = queue.pop_front() {
            for task in std::fs::read_dir(format!("/proc/{p}/task")).into_iter().flatten().flatten() {
                let Ok(text) = std::fs::read_to_string(task.path().join("children")) else { continue };
                for c in text.split_whitespace().filter_map(|c| c.parse::<i32>().ok()) {
                    out.push(c);
                    queue.push_back(c);
                }
            }
        }
        return out;
    }
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            if let Some(ppid) = parent_of(p) {
                children.entry(ppid).or_default().push(p);
            }
        }
    }
    let mut out = Vec::new();
    let mut queue = VecDeque::from([pid]);
    while let Some(p) = queue.pop_front() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
            out.push(c);
            queue.push_back(c);
        }
    }
    out
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
}

/// A timeout as people write it in the configuration: `900s`, `1500ms`.
pub fn human_secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A process handle (`pidfd_open`): signals reach the process it was opened for, never another
/// that got its pid after it died.
#[derive(Debug)]
pub struct PidFd(std::os::fd::OwnedFd);

impl PidFd {
    pub fn open(pid: i32) -> Option<PidFd> {
        use std::os::fd::FromRawFd;
        // SAFETY: pidfd_open returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        // SAFETY: a descriptor nobody else owns.
        (fd >= 0).then(|| PidFd(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// SIGKILL to the process (when it still exists).
    pub fn kill(&self) {
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_send_signal on a descriptor we own, without siginfo.
        unsafe {
            libc::syscall(libc::SYS_pidfd_send_signal, self.0.as_raw_fd(), libc::SIGKILL, std::ptr::null::<u8>(), 0);
        }
    }
}
