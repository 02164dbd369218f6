//! A plugin started by the engine: its process (killed with the engine, its stderr tail kept for
//! explaining its death), the handshake line it prints, and the channel to it.

use super::*;

pub(super) struct Process {
    /// Why the engine killed it, when it did.
    pub(super) killed: Mutex<Option<String>>,
    pub(super) child: Mutex<tokio::process::Child>,
    pub(super) pid: i32,
    pub(super) stderr: Arc<Mutex<addon_runners::lines::Tail>>,
    pub(super) stderr_done: Mutex<Option<tokio::task::JoinHandle<()>>>,
    pub(super) _socket_dir: Option<tempfile::TempDir>,
}

impl Process {
    pub(super) fn exited(&self) -> Option<std::process::ExitStatus> {
        self.child.lock().unwrap_or_else(|e| e.into_inner()).try_wait().ok().flatten()
    }

    pub(super) fn kill(&self) {
        // Through the child handle: once reaped, its pid may be someone else's.
        let _ = self.child.lock().unwrap_or_else(|e| e.into_inner()).start_kill();
    }

    /// Kills it, remembering why (for the error of the runs it takes along).
    pub(super) fn kill_because(&self, why: String) {
        *self.killed.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        self.kill();
    }

    /// How it ended, for errors.
    pub(super) fn ending(&self, status: Option<std::process::ExitStatus>) -> String {
        match self.killed.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(why) => format!("the engine killed it: {why}"),
            None => format!("it died ({})", describe_status(status)),
        }
    }

    pub(super) fn tail(&self) -> Vec<String> {
        self.stderr.lock().unwrap_or_else(|e| e.into_inner()).to_vec()
    }

    /// Waits a little for the process to end and its stderr to be read out.
    pub(super) async fn settle(&self) -> Option<std::process::ExitStatus> {
        for _ in 0..20 {
            if self.exited().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let reader = self.stderr_done.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(r) = reader {
            let _ = tokio::time::timeout(Duration::from_millis(500), r).await;
        }
        self.exited()
    }
}

impl Drop for Process {
    /// The plugin is asked to stop (SIGTERM: it stops its runs) and killed if it does not.
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        // SAFETY: signals to our own, not yet reaped child.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        for _ in 0..60 {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let _ = child.try_wait();
    }
}

impl PluginRunner {
    /// Starts the plugin program and reads its handshake.
    pub(super) async fn launch(&self, argv: &[String]) -> Result<(Channel, Process), RunnerError> {
        let program = argv.first().ok_or_else(|| self.failed("its command is empty"))?;
        let socket_dir = tempfile::Builder::new()
            .prefix("addon-plugin-")
            .tempdir()
            .map_err(|e| self.failed(format!("making its socket directory: {e}")))?;
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(&argv[1..])
            .env(handshake::MAGIC_COOKIE_KEY, handshake::MAGIC_COOKIE_VALUE)
            .env("PLUGIN_PROTOCOL_VERSIONS", crate::PROTOCOL_VERSION.to_string())
            .env("PLUGIN_UNIX_SOCKET_DIR", socket_dir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        // Its own process group: a terminal's Ctrl-C reaches the engine, which stops runs with
        // their grace, not the plugin directly.
        cmd.process_group(0);
        // SAFETY: getpid before the fork; only async-signal-safe calls between fork and exec.
        let engine = unsafe { libc::getpid() };
        unsafe {
            cmd.pre_exec(move || {
                // It dies with the engine: SIGTERM lets it stop its runs first.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The engine died before that took effect.
                if libc::getppid() != engine {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let mut child = spawn_from_launcher(cmd).await.map_err(|e| RunnerError::Spawn {
            runner: self.name().to_string(),
            program: program.clone(),
            detail: format!("cannot start the plugin: {e}"),
        })?;
        let pid = child.id().map(|p| p as i32).unwrap_or(0);
        let stderr = Arc::new(Mutex::new(addon_runners::lines::Tail::default()));
        let stderr_reader = child.stderr.take().map(|err| {
            let (tail, name) = (stderr.clone(), self.name().to_string());
            tokio::spawn(async move {
                let mut err = BufReader::new(err);
                while let Ok(Some(line)) = next_line_capped(&mut err).await {
                    tracing::debug!(plugin = %name, "{line}");
                    tail.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            })
        });
        let stdout = child.stdout.take().expect("stdout is piped");
        let process = Process {
            killed: Mutex::new(None),
            child: Mutex::new(child),
            pid,
            stderr,
            stderr_done: Mutex::new(stderr_reader),
            _socket_dir: Some(socket_dir),
        };
        let mut lines = BufReader::new(stdout);
        let first = tokio::time::timeout(self.settings.timeout, next_line_capped(&mut lines)).await;
        let line = match first {
            Ok(Ok(Some(line))) => line,
            Ok(_) => {
                let status = process.settle().await;
                return Err(self.failed(format!(
                    "it ended before its handshake ({}){}",
                    describe_status(status),
                    tail_text(&process.tail())
                )));
            }
            Err(_) => {
                process.kill();
                process.settle().await;
                return Err(self.failed(format!(
                    "no handshake within {:?} (is `{program}` a runner plugin?){}",
                    self.settings.timeout,
                    tail_text(&process.tail())
                )));
            }
        };
        let h = match handshake::parse(&line, crate::PROTOCOL_VERSION) {
            Ok(h) => h,
            Err(e) => {
                process.kill();
                process.settle().await;
                return Err(self.failed(e.to_string()));
            }
        };
        // Everything after the handshake on stdout is log.
        let name = self.name().to_string();
        tokio::spawn(async move {
            while let Ok(Some(line)) = next_line_capped(&mut lines).await {
                tracing::info!(plugin = %name, "{line}");
            }
        });
        let channel = match h.network {
            Network::Unix => self.connect_unix(PathBuf::from(&h.address)).await,
            Network::Tcp => self.connect_uri(&format!("http://{}", h.address), None).await,
        };
        match channel {
            Ok(c) => Ok((c, process)),
            Err(e) => {
                process.kill();
                Err(e)
            }
        }
    }
}

/// Starts `cmd` from one thread that lives as long as the engine's process. The parent-death
/// signal follows the thread that forked, not the process: a plugin started from a tokio
/// blocking-pool thread (a build calls the runner from one) would get SIGTERM when that thread
/// retires after 10 s idle.
pub(super) async fn spawn_from_launcher(cmd: tokio::process::Command) -> std::io::Result<tokio::process::Child> {
    type Answer = tokio::sync::oneshot::Sender<std::io::Result<tokio::process::Child>>;
    type Job = (tokio::process::Command, tokio::runtime::Handle, Answer);
    static LAUNCHER: std::sync::OnceLock<Mutex<std::sync::mpsc::Sender<Job>>> = std::sync::OnceLock::new();
    let launcher = LAUNCHER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let started = std::thread::Builder::new().name("addon-plugin-launcher".into()).spawn(move || {
            for (mut cmd, handle, answer) in rx {
                // The child is reaped by the runtime of whoever asked.
                let _entered = handle.enter();
                let _ = answer.send(cmd.spawn());
            }
        });
        if let Err(e) = started {
            tracing::error!("cannot start the plugin launcher thread: {e}");
        }
        Mutex::new(tx)
    });
    let (answer, answered) = tokio::sync::oneshot::channel();
    let gone = || std::io::Error::other("the plugin launcher thread is gone");
    launcher
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, tokio::runtime::Handle::current(), answer))
        .map_err(|_| gone())?;
    answered.await.map_err(|_| gone())?
}

/// Longest line kept of a plugin's stdout or stderr; the rest of a longer line is dropped.
pub(super) const MAX_LINE: usize = 8192;

/// The next line (without its newline; invalid UTF-8 replaced), at most [`MAX_LINE`] bytes of
/// it, so that a plugin printing without newlines cannot grow the engine's memory.
pub(super) async fn next_line_capped<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> std::io::Result<Option<String>> {
    use tokio::io::AsyncBufReadExt;
    let mut line = Vec::new();
    let mut any = false;
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(any.then(|| String::from_utf8_lossy(&line).into_owned()));
        }
        any = true;
        let (take, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (i, true),
            None => (buf.len(), false),
        };
        let room = MAX_LINE.saturating_sub(line.len());
        line.extend_from_slice(&buf[..take.min(room)]);
        r.consume(if done { take + 1 } else { take });
        if done {
            return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_of_a_plugin_are_capped_and_never_lost_to_bad_utf8() {
        let mut long = vec![b'x'; MAX_LINE * 3];
        long.extend_from_slice(b"\n\xffok\nlast");
        let mut r = BufReader::with_capacity(64, &long[..]);
        assert_eq!(next_line_capped(&mut r).await.unwrap().unwrap().len(), MAX_LINE);
        assert_eq!(next_line_capped(&mut r).await.unwrap().unwrap(), "\u{fffd}ok");
        assert_eq!(next_line_capped(&mut r).await.unwrap().unwrap(), "last");
        assert_eq!(next_line_capped(&mut r).await.unwrap(), None);
    }
}
