//! What supervision is made of beside the runs themselves (`host`): how a run ended and what was
//! seen of it, the log callback, and tools run to their end (the build steps of nix and oci),
//! their output read in bounded lines (`lines`) and killed at their timeout.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, BufReader};
use tokio::process::Command;

pub use crate::lines::STDERR_TAIL_LINES;
use crate::lines::{exit_code, next_line, Tail};

pub use addon_runner_api::log::{LogSink, LogStream};

/// Tells the lines a sandbox tool printed itself apart from the addon's.
pub type NoiseFilter = Arc<dyn Fn(&str) -> bool + Send + Sync>;

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

/// Why a tool run to its end (a build step: nix build, buildah, skopeo, umoci) failed.
#[derive(Debug)]
pub enum ToolFailure {
    /// It could not be started.
    Start(std::io::Error),
    /// It exited with this code (128 + N for signal N); the last lines it printed.
    Exit { code: i32, tail: Tail },
    /// It ran past its timeout and was killed.
    TimedOut { tail: Tail },
    /// It printed more than this many bytes on stdout, which was collected.
    TooMuchOutput(u64),
}

/// Runs a tool to its end: its output lines go to `log` (prefixed with `prefix`) with the last
/// ones kept, stdout is collected instead when `collect_stdout` bounds it, and at `timeout` it
/// is killed (a tool started in a PID namespace of its own takes everything it started along).
/// Returns the collected stdout.
pub async fn run_tool(
    mut cmd: Command,
    prefix: &str,
    log: &LogSink,
    timeout: Duration,
    collect_stdout: Option<u64>,
) -> Result<Vec<u8>, ToolFailure> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn().map_err(ToolFailure::Start)?;
    // What the command held for the child alone (descriptors a pre_exec hands down) closes now.
    drop(cmd);
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut err = BufReader::new(child.stderr.take().expect("piped"));
    let mut tail = Tail::default();
    let mut collected = Vec::new();
    let mut too_much = None;
    let run = async {
        let (mut out_done, mut err_done) = (false, false);
        while !(out_done && err_done) {
            tokio::select! {
                got = next_out(&mut out, collect_stdout.is_some()), if !out_done => match got {
                    Out::End => out_done = true,
                    Out::Bytes(bytes) => {
                        let limit = collect_stdout.unwrap_or(0);
                        if collected.len() as u64 + bytes.len() as u64 > limit {
                            too_much = Some(limit);
                            return None;
                        }
                        collected.extend_from_slice(&bytes);
                    }
                    Out::Line(l) => {
                        log(LogStream::Stdout, &format!("{prefix}{l}"));
                        tail.push(l);
                    }
                },
                l = next_line(&mut err), if !err_done => match l {
                    Some(l) => {
                        log(LogStream::Stderr, &format!("{prefix}{l}"));
                        tail.push(l);
                    }
                    None => err_done = true,
                },
            }
        }
        Some(child.wait().await)
    };
    let ended = tokio::time::timeout(timeout, run).await;
    match ended {
        Ok(Some(Ok(status))) if status.success() => Ok(collected),
        Ok(Some(Ok(status))) => Err(ToolFailure::Exit { code: exit_code(status), tail }),
        Ok(Some(Err(e))) => Err(ToolFailure::Start(e)),
        Ok(None) => {
            let _ = child.start_kill();
            Err(ToolFailure::TooMuchOutput(too_much.unwrap_or(0)))
        }
        Err(_) => {
            let _ = child.start_kill();
            Err(ToolFailure::TimedOut { tail })
        }
    }
}

/// What a tool's stdout gave next.
enum Out {
    Line(String),
    Bytes(Vec<u8>),
    End,
}

/// The next chunk of bytes (collected) or line (logged) of `r`.
async fn next_out(r: &mut BufReader<tokio::process::ChildStdout>, collect: bool) -> Out {
    if !collect {
        return next_line(r).await.map_or(Out::End, Out::Line);
    }
    let mut chunk = vec![0u8; 16 * 1024];
    match r.read(&mut chunk).await {
        Ok(0) | Err(_) => Out::End,
        Ok(n) => {
            chunk.truncate(n);
            Out::Bytes(chunk)
        }
    }
}

/// A timeout as people write it in the configuration: `900s`, `1500ms`.
pub fn human_secs(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c").arg(script);
        c
    }

    fn quiet() -> LogSink {
        Arc::new(|_, _| {})
    }

    #[tokio::test]
    async fn a_tool_is_run_to_its_end_and_says_how_it_failed() {
        let t = Duration::from_secs(10);
        let out = run_tool(sh("echo '{\"a\": 1}'; echo noise >&2"), "", &quiet(), t, Some(1024)).await.unwrap();
        assert_eq!(out, b"{\"a\": 1}\n", "stdout collected as it was");
        match run_tool(sh("echo step one; echo broke >&2; exit 7"), "", &quiet(), t, None).await {
            Err(ToolFailure::Exit { code: 7, tail }) => {
                // Both streams, in the order they were read.
                let mut lines = tail.to_vec();
                lines.sort();
                assert_eq!(lines, ["broke", "step one"]);
            }
            other => panic!("{other:?}"),
        }
        match run_tool(sh("echo started; exec sleep 30"), "", &quiet(), Duration::from_millis(300), None).await {
            Err(ToolFailure::TimedOut { tail }) => assert_eq!(tail.to_vec(), ["started"]),
            other => panic!("{other:?}"),
        }
        let flood = sh("head -c 100000 /dev/zero");
        assert!(matches!(run_tool(flood, "", &quiet(), t, Some(1000)).await, Err(ToolFailure::TooMuchOutput(1000))));
        assert!(matches!(
            run_tool(Command::new("/no/such/tool"), "", &quiet(), t, None).await,
            Err(ToolFailure::Start(_))
        ));
    }
}
