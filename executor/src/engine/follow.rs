//! The run step: start the addon on its runner and follow its events to the end, with the
//! timeout, cancellation and stdout bound enforced.

use super::*;

impl Engine {
    /// Starts a run and follows its events to the end: stdout collected (up to the limit) or
    /// logged, stderr logged with its tail kept, the timeout and cancellation enforced by asking
    /// the runner to stop (SIGTERM, grace, kill). A runner that does not report the end within
    /// the grace and some slack is a failed runner.
    #[allow(clippy::too_many_arguments)] // one run, all of its inputs, and whether it started
    pub(super) async fn follow(
        &self,
        runner: &Arc<dyn Runner>,
        spec: StartSpec,
        timeout: Duration,
        collect: Option<u64>,
        log: &addon_runners::LogSink,
        cancel: &CancellationToken,
        started_flag: &mut bool,
    ) -> Result<(addon_runners::Supervised, String), RunnerError> {
        let name = runner.info().name;
        let started_at = Instant::now();
        let run_id = spec.run_id.clone();
        let mut started = runner.start(spec).await?;
        // From here the addon may have run, whatever happens next.
        *started_flag = true;
        let grace = self.config.kill_grace.0;
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
                            stop_wait.as_mut().reset(tokio::time::Instant::now() + addon_runners::runner::STOP_SLACK);
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
                    stop_wait.as_mut().reset(tokio::time::Instant::now() + grace + addon_runners::runner::STOP_SLACK);
                }
                _ = cancel.cancelled(), if stopping.is_none() => {
                    stopping = Some(Ending::Cancelled);
                    if let Err(e) = runner.stop(&run_id, grace).await {
                        tracing::warn!("{name}: stopping run {run_id}: {e}");
                    }
                    stop_wait.as_mut().reset(tokio::time::Instant::now() + grace + addon_runners::runner::STOP_SLACK);
                }
                _ = &mut stop_wait => {
                    return Err(RunnerError::Runner {
                        runner: name.clone(),
                        message: format!("the run {run_id} did not end within {:?} of being stopped", grace + addon_runners::runner::STOP_SLACK),
                    })
                }
            }
        };
        let (stdout, stderr_tail) = out.finish(log);
        let ending = stopping.unwrap_or(match exit.kind {
            ExitKind::Code(c) => Ending::Exited(c),
            ExitKind::Limit(why) => Ending::Limit(why),
        });
        let supervised = addon_runners::Supervised {
            ending,
            stdout,
            stderr_tail,
            duration: started_at.elapsed(),
            usage: exit.usage,
        };
        Ok((supervised, started.sandbox))
    }
}

/// The log callback of one addon: every line goes to `tracing`; to the job server's event channel
/// when there is room, else it is counted in `dropped`.
pub(super) fn log_sink(label: &str, events: Option<Sender<Event>>, dropped: Arc<AtomicU64>) -> addon_runners::LogSink {
    let label = label.to_string();
    Arc::new(move |stream, line: &str| {
        // What the addon printed is shown to people, never obeyed by their terminal.
        tracing::info!(target: "addon", "[{}] {}", addon_descriptors::for_terminal(&label), addon_descriptors::for_terminal(line));
        if let Some(tx) = &events {
            let event = Event::Log { addon: label.clone(), stream, line: line.to_string() };
            if let Err(tokio::sync::mpsc::error::TrySendError::Full(_)) = tx.try_send(event) {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

/// A run's output as its events arrive: stdout collected up to a limit (or logged line by line
/// when the addon does not collect output), stderr logged line by line with its tail kept.
pub(super) struct Collector {
    limit: Option<u64>,
    stdout: Vec<u8>,
    out_partial: Vec<u8>,
    err_partial: Vec<u8>,
    tail: addon_runners::lines::Tail,
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
    fn stdout(&mut self, bytes: &[u8], log: &addon_runners::LogSink) -> bool {
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

    fn stderr(&mut self, bytes: &[u8], log: &addon_runners::LogSink) {
        self.err_partial.extend_from_slice(bytes);
        for line in drain_lines(&mut self.err_partial) {
            self.stderr_line(line, log);
        }
    }

    fn stderr_line(&mut self, line: String, log: &addon_runners::LogSink) {
        log(LogStream::Stderr, &line);
        self.tail.push(line);
    }

    /// The collected stdout and stderr tail, with unterminated last lines flushed.
    fn finish(mut self, log: &addon_runners::LogSink) -> (Vec<u8>, Vec<String>) {
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

/// Removes and returns the complete lines at the front of `buf` (bytes, so that a character
/// split between two chunks stays whole). Lines are capped, so a binary blob cannot grow memory.
pub(super) fn drain_lines(buf: &mut Vec<u8>) -> Vec<String> {
    const MAX_LINE: usize = 64 * 1024;
    let mut out = Vec::new();
    while let Some(pos) = buf.iter().position(|b| *b == b'\n').or((buf.len() > MAX_LINE).then_some(MAX_LINE - 1)) {
        let line: Vec<u8> = buf.drain(..=pos).collect();
        out.push(String::from_utf8_lossy(&line).trim_end_matches(['\n', '\r']).to_string());
    }
    out
}
