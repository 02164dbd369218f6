//! Process supervision: start a prepared command, stream its output with bounded memory, enforce
//! the timeout and cancellation, and make sure nothing it started outlives it.
//!
//! Every sandbox puts the addon in its own PID namespace, so "everything it started" is the
//! descendants of the child we spawned. Stopping is: SIGTERM to every descendant (the namespace's
//! init ignores it by kernel rule, the addon's processes do not), a grace period, then SIGKILL to
//! the whole tree; killing a namespace's init makes the kernel kill every process inside it.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, BufReader};

pub use crate::lines::STDERR_TAIL_LINES;
use crate::lines::{exit_code, next_line, Tail};
use crate::procfs::kill_tree;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

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
        let mut tail = Tail::default();
        let mut lines = BufReader::new(stderr);
        while let Some(line) = next_line(&mut lines).await {
            if noise.as_ref().is_some_and(|is_noise| is_noise(&line)) {
                tracing::debug!("sandbox: {line}");
                continue;
            }
            log(LogStream::Stderr, &line);
            tail.push(line);
        }
        tail.into_vec()
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
                while let Some(line) = next_line(&mut reader).await {
                    log(LogStream::Stdout, &line);
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

/// A timeout as people write it in the configuration: `900s`, `1500ms`.
pub fn human_secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}
