//! Following a started run to its end: the one fold of a runner's events (built-in or plugin)
//! into what supervision observed, with the timeout, cancellation and the stdout bound enforced
//! by asking the runner to stop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::lines::{drain_lines, Tail};
use crate::process::{Ending, LogSink, LogStream, Supervised};
use crate::runner::{ExitKind, RunEvent, Runner, RunnerError, StartSpec, STOP_SLACK};

/// How to follow one run.
#[derive(Clone, Copy)]
pub struct Follow<'a> {
    /// How long the run may take before it is stopped.
    pub timeout: Duration,
    /// Collect stdout up to this many bytes (more stops the run); None: log it line by line.
    pub collect: Option<u64>,
    /// Time between SIGTERM and SIGKILL when the run is stopped.
    pub grace: Duration,
    /// Where every line goes.
    pub log: &'a LogSink,
    pub cancel: &'a CancellationToken,
}

/// Starts a run and follows its events to the end: stdout collected (up to the limit) or
/// logged, stderr logged with its tail kept, the timeout and cancellation enforced by asking the
/// runner to stop (SIGTERM, grace, kill). A runner that does not report the end within the grace
/// and some slack is a failed runner. `started` turns true once the addon may have run; the
/// sandbox it ran in is returned with what was observed.
pub async fn follow(
    runner: &Arc<dyn Runner>,
    spec: StartSpec,
    how: Follow<'_>,
    started_flag: &mut bool,
) -> Result<(Supervised, String), RunnerError> {
    let Follow { timeout, collect, grace, log, cancel } = how;
    let name = runner.info().name;
    let started_at = Instant::now();
    let run_id = spec.run_id.clone();
    let mut started = runner.start(spec).await?;
    // From here the addon may have run, whatever happens next.
    *started_flag = true;
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let stop_wait = tokio::time::sleep(Duration::MAX / 4);
    tokio::pin!(stop_wait);
    let mut stopping: Option<Ending> = None;
    let mut out = Collector::new(collect);
    let exit = loop {
        tokio::select! {
            event = started.events.recv() => match event {
                None => {
                    return Err(RunnerError::Runner {
                        runner: name.clone(),
                        message: format!("the run {run_id} ended without reporting how (the runner went away)"),
                    })
                }
                Some(RunEvent::Stdout(bytes)) => {
                    if !out.stdout(&bytes, log) && stopping.is_none() {
                        stopping = Some(Ending::StdoutTooLarge(collect.unwrap_or(0)));
                        let _ = runner.stop(&run_id, Duration::ZERO).await;
                        stop_wait.as_mut().reset(tokio::time::Instant::now() + STOP_SLACK);
                    }
                }
                Some(RunEvent::Stderr(bytes)) => out.stderr(&bytes, log),
                Some(RunEvent::Exited(exit)) => break exit,
                Some(RunEvent::Failed(e)) => return Err(e),
            },
            _ = &mut deadline, if stopping.is_none() => {
                stopping = Some(Ending::TimedOut(timeout));
                if let Err(e) = runner.stop(&run_id, grace).await {
                    tracing::warn!("{name}: stopping run {run_id}: {e}");
                }
                stop_wait.as_mut().reset(tokio::time::Instant::now() + grace + STOP_SLACK);
            }
            _ = cancel.cancelled(), if stopping.is_none() => {
                stopping = Some(Ending::Cancelled);
                if let Err(e) = runner.stop(&run_id, grace).await {
                    tracing::warn!("{name}: stopping run {run_id}: {e}");
                }
                stop_wait.as_mut().reset(tokio::time::Instant::now() + grace + STOP_SLACK);
            }
            _ = &mut stop_wait => {
                return Err(RunnerError::Runner {
                    runner: name.clone(),
                    message: format!("the run {run_id} did not end within {:?} of being stopped", grace + STOP_SLACK),
                })
            }
        }
    };
    let (stdout, stderr_tail) = out.finish(log);
    let ending = stopping.unwrap_or(match exit.kind {
        ExitKind::Code(c) => Ending::Exited(c),
        ExitKind::Limit(why) => Ending::Limit(why),
    });
    let supervised = Supervised { ending, stdout, stderr_tail, duration: started_at.elapsed(), usage: exit.usage };
    Ok((supervised, started.sandbox))
}

/// A run's output as its events arrive: stdout collected up to a limit (or logged line by line
/// when the addon does not collect output), stderr logged line by line with its tail kept.
struct Collector {
    limit: Option<u64>,
    stdout: Vec<u8>,
    out_partial: Vec<u8>,
    err_partial: Vec<u8>,
    tail: Tail,
}

impl Collector {
    fn new(limit: Option<u64>) -> Collector {
        Collector {
            limit,
            stdout: Vec::new(),
            out_partial: Vec::new(),
            err_partial: Vec::new(),
            tail: Default::default(),
        }
    }

    /// False once stdout grew past the limit.
    fn stdout(&mut self, bytes: &[u8], log: &LogSink) -> bool {
        match self.limit {
            Some(limit) => {
                if self.stdout.len() as u64 + bytes.len() as u64 > limit {
                    return false;
                }
                self.stdout.extend_from_slice(bytes);
            }
            None => {
                self.out_partial.extend_from_slice(bytes);
                for line in drain_lines(&mut self.out_partial) {
                    log(LogStream::Stdout, &line);
                }
            }
        }
        true
    }

    fn stderr(&mut self, bytes: &[u8], log: &LogSink) {
        self.err_partial.extend_from_slice(bytes);
        for line in drain_lines(&mut self.err_partial) {
            self.stderr_line(line, log);
        }
    }

    fn stderr_line(&mut self, line: String, log: &LogSink) {
        log(LogStream::Stderr, &line);
        self.tail.push(line);
    }

    /// The collected stdout and stderr tail, with unterminated last lines flushed.
    fn finish(mut self, log: &LogSink) -> (Vec<u8>, Vec<String>) {
        let rest = String::from_utf8_lossy(&std::mem::take(&mut self.err_partial)).trim_end().to_string();
        if !rest.trim().is_empty() {
            self.stderr_line(rest, log);
        }
        let rest = String::from_utf8_lossy(&self.out_partial);
        if !rest.trim().is_empty() {
            log(LogStream::Stdout, rest.trim_end());
        }
        (self.stdout, self.tail.into_vec())
    }
}
