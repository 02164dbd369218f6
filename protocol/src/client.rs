//! The engine's side: a plugin behind the [`Runner`] trait. It starts the plugin (go-plugin
//! handshake) or dials a standalone one, checks the protocol version, configures it and calls
//! Reap whenever it (re)connects; it keeps one plugin process per engine, starts it again when it
//! died, and ends a run whose plugin died or stopped answering as a runner failure that names the
//! plugin and the tail of its stderr. For plugins that do not share the host filesystem it copies
//! the run's directories in and the output back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use addon_descriptors::Section;
use addon_runners::{
    Artifact, Availability, BuildSpec, Capabilities, LogSink, LogStream, RunEvent, Runner, RunnerError, RunnerInfo,
    StartSpec, Started,
};
use sha2::Digest;
use tokio::io::BufReader;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint as TonicEndpoint};

use crate::convert;
use crate::handshake::{self, Network};
use crate::pb;
use crate::pb::runner_client::RunnerClient;

/// Where a plugin is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A program the engine starts (its argv).
    Command(Vec<String>),
    /// A standalone server: `unix:///PATH`, `http://HOST:PORT`, `https://HOST:PORT`.
    Address { url: String, tls: Option<ClientTls> },
}

/// TLS towards a standalone plugin (PEM files).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub domain: Option<String>,
}

/// A configured plugin.
#[derive(Debug, Clone)]
pub struct PluginSettings {
    /// The name it is configured under (what `runner:` and reports use).
    pub name: String,
    /// The sections it is configured to serve.
    pub serves: Vec<Section>,
    pub endpoint: Endpoint,
    /// Its own configuration, passed to Configure.
    pub config: serde_json::Value,
    /// How long a start, handshake or call may take before the plugin counts as hung.
    pub timeout: Duration,
    /// How long a Build may take, from the call to its artifact.
    pub build_timeout: Duration,
}

struct Process {
    /// Why the engine killed it, when it did.
    killed: Mutex<Option<String>>,
    child: Mutex<tokio::process::Child>,
    pid: i32,
    stderr: Arc<Mutex<addon_runners::lines::Tail>>,
    stderr_done: Mutex<Option<tokio::task::JoinHandle<()>>>,
    _socket_dir: Option<tempfile::TempDir>,
}

impl Process {
    fn exited(&self) -> Option<std::process::ExitStatus> {
        self.child.lock().unwrap_or_else(|e| e.into_inner()).try_wait().ok().flatten()
    }

    fn kill(&self) {
        // Through the child handle: once reaped, its pid may be someone else's.
        let _ = self.child.lock().unwrap_or_else(|e| e.into_inner()).start_kill();
    }

    /// Kills it, remembering why (for the error of the runs it takes along).
    fn kill_because(&self, why: String) {
        *self.killed.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        self.kill();
    }

    /// How it ended, for errors.
    fn ending(&self, status: Option<std::process::ExitStatus>) -> String {
        match self.killed.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(why) => format!("the engine killed it: {why}"),
            None => format!("it died ({})", describe_status(status)),
        }
    }

    fn tail(&self) -> Vec<String> {
        self.stderr.lock().unwrap_or_else(|e| e.into_inner()).to_vec()
    }

    /// Waits a little for the process to end and its stderr to be read out.
    async fn settle(&self) -> Option<std::process::ExitStatus> {
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

/// Names the engine's configuration on every call ([`crate::server::CONFIG_DIGEST_HEADER`]), so
/// that a plugin shared by engines of different configurations answers each with its own.
#[derive(Clone)]
struct NameConfig(tonic::metadata::AsciiMetadataValue);

impl tonic::service::Interceptor for NameConfig {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert(crate::server::CONFIG_DIGEST_HEADER, self.0.clone());
        Ok(request)
    }
}

type Client = RunnerClient<tonic::service::interceptor::InterceptedService<Channel, NameConfig>>;

struct Conn {
    client: Client,
    health: tonic_health::pb::health_client::HealthClient<Channel>,
    process: Option<Process>,
    info: RunnerInfo,
}

impl Conn {
    fn alive(&self) -> bool {
        self.process.as_ref().is_none_or(|p| p.exited().is_none())
    }
}

/// A runner plugin behind the [`Runner`] trait.
pub struct PluginRunner {
    settings: PluginSettings,
    config_digest: String,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    /// A call timed out: the plugin may be alive but hung; the next use asks its health service
    /// and starts it afresh when that does not answer either.
    hung: std::sync::atomic::AtomicBool,
    /// A call was answered "not configured" (a standalone plugin restarted): the next use
    /// configures it again.
    unconfigured: std::sync::atomic::AtomicBool,
    /// The plugin's info as last seen (for the synchronous `info`).
    info: Mutex<Option<RunnerInfo>>,
}

impl std::fmt::Debug for PluginRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginRunner").field("name", &self.settings.name).finish()
    }
}

impl PluginRunner {
    pub fn new(settings: PluginSettings) -> PluginRunner {
        let canonical = serde_json::to_string(&settings.config).unwrap_or_default();
        let config_digest = hex::encode(sha2::Sha256::digest(canonical.as_bytes()));
        PluginRunner {
            settings,
            config_digest,
            conn: tokio::sync::Mutex::new(None),
            hung: std::sync::atomic::AtomicBool::new(false),
            unconfigured: std::sync::atomic::AtomicBool::new(false),
            info: Mutex::new(None),
        }
    }

    fn name(&self) -> &str {
        &self.settings.name
    }

    fn failed(&self, message: impl Into<String>) -> RunnerError {
        RunnerError::Runner { runner: self.name().to_string(), message: message.into() }
    }

    /// The live connection, starting (or restarting) the plugin when needed.
    async fn connect(&self) -> Result<Arc<Conn>, RunnerError> {
        let mut slot = self.conn.lock().await;
        if self.hung.swap(false, std::sync::atomic::Ordering::SeqCst) {
            // Only that call may have been slow (an image pulled in Start): a plugin whose health
            // service still answers is kept, with its runs.
            let healthy = match slot.as_ref() {
                Some(c) if c.alive() => {
                    let mut health = c.health.clone();
                    let req = tonic_health::pb::HealthCheckRequest { service: "plugin".into() };
                    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
                    matches!(
                        tokio::time::timeout(Duration::from_secs(2), health.check(req)).await,
                        Ok(Ok(r)) if r.get_ref().status == serving
                    )
                }
                _ => true,
            };
            if !healthy {
                if let Some(c) = slot.take() {
                    tracing::warn!(
                        "plugin {}: a call timed out and it does not answer; starting it afresh",
                        self.name()
                    );
                    if let Some(p) = &c.process {
                        p.kill_because(format!(
                            "a call did not answer within {:?}, nor its health service",
                            self.settings.timeout
                        ));
                        p.settle().await;
                    }
                }
            }
        }
        if let Some(c) = slot.as_ref() {
            if c.alive() {
                if self.unconfigured.swap(false, std::sync::atomic::Ordering::SeqCst) {
                    // A standalone plugin restarted behind the same address: configure it again.
                    let mut client = c.client.clone();
                    self.configure(&mut client).await?;
                }
                return Ok(c.clone());
            }
            let p = c.process.as_ref().expect("only processes die");
            let status = p.settle().await;
            tracing::warn!(
                "plugin {} died ({}); starting it again{}",
                self.name(),
                describe_status(status),
                tail_text(&p.tail())
            );
        }
        *slot = None;
        let conn = Arc::new(self.open().await?);
        *self.info.lock().unwrap_or_else(|e| e.into_inner()) = Some(conn.info.clone());
        *slot = Some(conn.clone());
        drop(slot);
        // Whatever runs of an earlier process of this plugin left behind.
        let mut client = conn.client.clone();
        match self.call_optional(client.reap(pb::ReapRequest {})).await {
            Ok(r) if r.removed > 0 => {
                tracing::warn!("plugin {}: reaped {} leftovers of earlier runs", self.name(), r.removed)
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("plugin {}: reap: {e}", self.name()),
        }
        Ok(conn)
    }

    async fn open(&self) -> Result<Conn, RunnerError> {
        let (channel, process) = match &self.settings.endpoint {
            Endpoint::Command(argv) => {
                let (channel, process) = self.launch(argv).await?;
                (channel, Some(process))
            }
            Endpoint::Address { url, tls } => (self.dial(url, tls.as_ref()).await?, None),
        };
        let with_tail = |e: RunnerError| match (&e, &process) {
            (RunnerError::Runner { runner, message }, Some(p)) => {
                RunnerError::Runner { runner: runner.clone(), message: format!("{message}{}", tail_text(&p.tail())) }
            }
            _ => e,
        };
        // go-plugin hosts check the health service first; so do we.
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let req = tonic_health::pb::HealthCheckRequest { service: "plugin".into() };
        let status = self.call(health.check(req)).await.map_err(with_tail)?;
        if status.status != tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
            return Err(with_tail(self.failed("its health service says it is not serving")));
        }
        let digest = tonic::metadata::AsciiMetadataValue::try_from(self.config_digest.as_str())
            .map_err(|e| self.failed(e.to_string()))?;
        let mut client =
            RunnerClient::with_interceptor(channel, NameConfig(digest)).max_decoding_message_size(64 << 20);
        let info = self
            .call(client.info(pb::InfoRequest { protocol_version: crate::PROTOCOL_VERSION }))
            .await
            .map_err(with_tail)?;
        if info.protocol_version != crate::PROTOCOL_VERSION {
            return Err(self.failed(format!(
                "it speaks runner protocol version {}; this engine speaks version {}",
                info.protocol_version,
                crate::PROTOCOL_VERSION
            )));
        }
        let mut info = convert::info_from_pb(&info).map_err(|e| self.failed(e.to_string()))?;
        let missing: Vec<&str> =
            self.settings.serves.iter().filter(|s| !info.serves.contains(s)).map(|s| s.as_str()).collect();
        if !missing.is_empty() {
            return Err(RunnerError::Unavailable {
                runner: self.name().to_string(),
                detail: format!(
                    "configured to serve {} but the plugin serves only {}",
                    missing.join(", "),
                    info.serves.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                ),
            });
        }
        info.name = self.name().to_string();
        info.serves = self.settings.serves.clone();
        self.configure(&mut client).await.map_err(with_tail)?;
        // What it can do may depend on its configuration: ask again.
        let configured = self
            .call(client.info(pb::InfoRequest { protocol_version: crate::PROTOCOL_VERSION }))
            .await
            .map_err(with_tail)?;
        info.version = configured.version.clone();
        info.capabilities = configured.capabilities.as_ref().map(convert::capabilities_from_pb).unwrap_or_default();
        Ok(Conn { client, health, process, info })
    }

    /// Configure with our configuration; its errors name the fields (`plugins.NAME.config.FIELD`).
    async fn configure(&self, client: &mut Client) -> Result<(), RunnerError> {
        let config_json = serde_json::to_string(&self.settings.config).unwrap_or_else(|_| "null".into());
        let configured = self.call(client.configure(pb::ConfigureRequest { config_json })).await?;
        if configured.errors.is_empty() {
            return Ok(());
        }
        let errors: Vec<String> = configured
            .errors
            .iter()
            .map(|e| {
                let field = if e.field.is_empty() { String::new() } else { format!(".{}", e.field) };
                format!("plugins.{}.config{field}: {}", self.name(), e.message)
            })
            .collect();
        Err(RunnerError::Unavailable { runner: self.name().to_string(), detail: errors.join("; ") })
    }

    /// Starts the plugin program and reads its handshake.
    async fn launch(&self, argv: &[String]) -> Result<(Channel, Process), RunnerError> {
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

    async fn dial(&self, url: &str, tls: Option<&ClientTls>) -> Result<Channel, RunnerError> {
        if let Some(path) = url.strip_prefix("unix://") {
            return self.connect_unix(PathBuf::from(path)).await;
        }
        self.connect_uri(url, tls).await
    }

    async fn connect_unix(&self, path: PathBuf) -> Result<Channel, RunnerError> {
        let endpoint = TonicEndpoint::from_static("http://plugin.invalid").connect_timeout(self.settings.timeout);
        let connector = tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        });
        tokio::time::timeout(self.settings.timeout, endpoint.connect_with_connector(connector))
            .await
            .map_err(|_| self.failed(format!("no connection within {:?}", self.settings.timeout)))?
            .map_err(|e| self.failed(format!("cannot connect: {}", error_chain(&e))))
    }

    async fn connect_uri(&self, url: &str, tls: Option<&ClientTls>) -> Result<Channel, RunnerError> {
        let mut endpoint = TonicEndpoint::from_shared(url.to_string())
            .map_err(|e| self.failed(format!("address `{url}`: {e}")))?
            .connect_timeout(self.settings.timeout)
            .tcp_nodelay(true);
        if url.starts_with("https://") {
            let read = |p: &Path| std::fs::read(p).map_err(|e| self.failed(format!("TLS file {}: {e}", p.display())));
            let mut config = tonic::transport::ClientTlsConfig::new();
            // Without a CA of its own, the server's certificate is checked against the host's.
            if tls.and_then(|t| t.ca.as_ref()).is_none() {
                config = config.with_native_roots();
            }
            if let Some(t) = tls {
                if let Some(ca) = &t.ca {
                    config = config.ca_certificate(tonic::transport::Certificate::from_pem(read(ca)?));
                }
                if let (Some(cert), Some(key)) = (&t.cert, &t.key) {
                    config = config.identity(tonic::transport::Identity::from_pem(read(cert)?, read(key)?));
                }
                if let Some(d) = &t.domain {
                    config = config.domain_name(d.clone());
                }
            }
            endpoint = endpoint.tls_config(config).map_err(|e| self.failed(format!("TLS: {e}")))?;
        }
        tokio::time::timeout(self.settings.timeout, endpoint.connect())
            .await
            .map_err(|_| self.failed(format!("no connection to {url} within {:?}", self.settings.timeout)))?
            .map_err(|e| self.failed(format!("cannot connect to {url}: {}", error_chain(&e))))
    }

    /// A unary call with the plugin's timeout; a failed call is the plugin's failure.
    async fn call<T>(
        &self,
        fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, RunnerError> {
        self.call_within(self.settings.timeout, fut).await
    }

    async fn call_within<T>(
        &self,
        limit: Duration,
        fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, RunnerError> {
        match tokio::time::timeout(limit, fut).await {
            Err(_) => {
                self.hung.store(true, std::sync::atomic::Ordering::SeqCst);
                Err(self.failed(format!("it did not answer within {limit:?}")))
            }
            Ok(Err(status)) => {
                self.note_unconfigured(&status);
                Err(self.failed(describe(&status)))
            }
            Ok(Ok(r)) => Ok(r.into_inner()),
        }
    }

    fn note_unconfigured(&self, status: &tonic::Status) {
        if status.code() == tonic::Code::FailedPrecondition && status.message().starts_with(crate::server::UNCONFIGURED)
        {
            self.unconfigured.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// A call a plugin may leave out (CacheKey, Release, Reap, Forget): `UNIMPLEMENTED` is the
    /// default answer (nothing to build, nothing to release or reap).
    async fn call_optional<T: Default>(
        &self,
        fut: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, RunnerError> {
        match tokio::time::timeout(self.settings.timeout, fut).await {
            Err(_) => {
                self.hung.store(true, std::sync::atomic::Ordering::SeqCst);
                Err(self.failed(format!("it did not answer within {:?}", self.settings.timeout)))
            }
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => Ok(T::default()),
            Ok(Err(status)) => {
                self.note_unconfigured(&status);
                Err(self.failed(describe(&status)))
            }
            Ok(Ok(r)) => Ok(r.into_inner()),
        }
    }

    /// What happened to a plugin whose stream broke: its death (and stderr) or the status.
    async fn lost(&self, conn: &Conn, status: Option<tonic::Status>) -> RunnerError {
        if let Some(p) = &conn.process {
            if let Some(st) = p.settle().await {
                return self.failed(format!(
                    "the plugin ended during the run: {}{}",
                    p.ending(Some(st)),
                    tail_text(&p.tail())
                ));
            }
        }
        match status {
            Some(s) => self.failed(format!("the run's event stream broke: {}", describe(&s))),
            None => self.failed("the run's event stream ended before the run did"),
        }
    }

    /// A failed call, explained by the plugin's death when it died (with its stderr).
    async fn explain(&self, conn: &Conn, e: RunnerError) -> RunnerError {
        match (&e, &conn.process) {
            (RunnerError::Runner { message, .. }, Some(p)) => match p.settle().await {
                Some(st) => self.failed(format!(
                    "the plugin ended while it was asked something ({message}): {}{}",
                    p.ending(Some(st)),
                    tail_text(&p.tail())
                )),
                None => e,
            },
            _ => e,
        }
    }

    /// Sends a directory's content with CopyIn.
    async fn copy_in(&self, client: &mut Client, id: &str, dir: pb::Dir, from: &Path) -> Result<(), RunnerError> {
        let (tx, rx) = mpsc::channel::<Vec<u8>>(4);
        let from = from.to_path_buf();
        let packer = tokio::task::spawn_blocking(move || crate::copy::pack(&from, tx));
        let header = pb::CopyInChunk {
            chunk: Some(pb::copy_in_chunk::Chunk::Header(pb::CopyHeader { id: id.to_string(), dir: dir as i32 })),
        };
        let body = tokio_stream::iter([header]).chain(
            tokio_stream::wrappers::ReceiverStream::new(rx)
                .map(|data| pb::CopyInChunk { chunk: Some(pb::copy_in_chunk::Chunk::Data(data)) }),
        );
        use tokio_stream::StreamExt;
        let answer = self.call_within(self.settings.timeout * 30, client.copy_in(body)).await?;
        let packed = match tokio::time::timeout(self.settings.timeout, packer).await {
            Err(_) => Err(self.failed(format!("packing {dir:?} did not end within {:?}", self.settings.timeout))),
            Ok(Err(e)) => Err(self.failed(e.to_string())),
            // The plugin refused the stream and hung up: its answer says why, not our pipe.
            Ok(Ok(Err(e))) if e.kind() == std::io::ErrorKind::BrokenPipe && answer.error.is_some() => Ok(()),
            Ok(Ok(Err(e))) => Err(self.failed(format!("packing {dir:?}: {e}"))),
            Ok(Ok(Ok(()))) => Ok(()),
        };
        // Our own failure to pack first (the plugin only saw a stream cut short), then the
        // plugin's answer.
        packed?;
        match answer.error {
            Some(e) => Err(convert::error_from_pb(self.name(), "", &e)),
            None => Ok(()),
        }
    }

    /// Receives a directory's content with CopyOut into a fresh `into`.
    async fn copy_out(
        &self,
        client: &mut Client,
        id: &str,
        dir: pb::Dir,
        into: &Path,
        max_bytes: Option<u64>,
    ) -> Result<u64, RunnerError> {
        use tokio_stream::StreamExt;
        let stream = self.call(client.copy_out(pb::CopyOutRequest { id: id.to_string(), dir: dir as i32 })).await?;
        // A plugin that stops sending mid-copy fails the copy instead of holding the run forever.
        let idle = self.settings.timeout;
        let bytes = Box::pin(stream.timeout(idle)).map(move |c| match c {
            Ok(Ok(c)) => Ok(bytes::Bytes::from(c.data)),
            Ok(Err(s)) => Err(std::io::Error::other(s.message().to_string())),
            Err(_) => {
                Err(std::io::Error::new(std::io::ErrorKind::TimedOut, format!("the plugin sent nothing for {idle:?}")))
            }
        });
        let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(bytes));
        let into = into.to_path_buf();
        let policy = crate::copy::UnpackPolicy { symlinks: false, max_bytes, owners: false };
        tokio::task::spawn_blocking(move || crate::copy::unpack(reader, &into, policy))
            .await
            .map_err(|e| self.failed(e.to_string()))?
            .map_err(|e| self.failed(format!("copying {dir:?} out: {e}")))
    }
}

/// Starts `cmd` from one thread that lives as long as the engine's process. The parent-death
/// signal follows the thread that forked, not the process: a plugin started from a tokio
/// blocking-pool thread (a build calls the runner from one) would get SIGTERM when that thread
/// retires after 10 s idle.
async fn spawn_from_launcher(cmd: tokio::process::Command) -> std::io::Result<tokio::process::Child> {
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
const MAX_LINE: usize = 8192;

/// The next line (without its newline; invalid UTF-8 replaced), at most [`MAX_LINE`] bytes of
/// it, so that a plugin printing without newlines cannot grow the engine's memory.
async fn next_line_capped<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> std::io::Result<Option<String>> {
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

/// Tells the plugin it may drop what it keeps of run (or build) `id`; best effort.
async fn forget(client: &mut Client, id: &str, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, client.forget(pb::ForgetRequest { id: id.to_string() })).await;
}

/// Bytes of the files under `p`, by the walk that follows no link (nothing, when it cannot be
/// measured: the copy back is bounded all the same).
fn tree_size(p: &Path) -> u64 {
    addon_tree::measure(p).map(|m| m.length).unwrap_or(0)
}

fn describe(s: &tonic::Status) -> String {
    // A transport failure says little by itself ("transport error"); its causes say what (a
    // refused certificate, a reset connection).
    let causes = std::error::Error::source(s).map(|c| format!(" ({})", error_chain(c))).unwrap_or_default();
    match s.code() {
        tonic::Code::Unimplemented => format!("it does not implement this call ({})", s.message()),
        tonic::Code::Unavailable => format!("it is unreachable ({}){causes}", s.message()),
        _ => format!("{:?}: {}{causes}", s.code(), s.message()),
    }
}

fn describe_status(s: Option<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match s {
        Some(s) if s.signal().is_some() => format!("killed by signal {}", s.signal().unwrap_or(0)),
        Some(s) => format!("exit status {}", s.code().unwrap_or(-1)),
        None => "still running".into(),
    }
}

fn tail_text(tail: &[String]) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("; its stderr ends with: {}", tail.join(" | "))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn unique_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

impl PluginRunner {
    async fn probe_once(&self) -> Availability {
        let conn = match self.connect().await {
            Ok(c) => c,
            Err(e) => {
                let detail = match e {
                    RunnerError::Unavailable { detail, .. } => detail,
                    RunnerError::Spawn { detail, program, .. } => format!("{program}: {detail}"),
                    other => other.to_string(),
                };
                return Availability { available: false, version: None, detail: format!("plugin: {detail}") };
            }
        };
        let mut client = conn.client.clone();
        match self.call(client.probe(pb::ProbeRequest {})).await {
            Ok(p) => Availability {
                available: p.available,
                version: (!p.version.is_empty()).then_some(p.version),
                detail: format!("plugin {} {}: {}", conn.info.name, conn.info.version, p.detail),
            },
            Err(e) => Availability { available: false, version: None, detail: e.to_string() },
        }
    }
}

#[async_trait::async_trait]
impl Runner for PluginRunner {
    fn info(&self) -> RunnerInfo {
        match self.info.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(i) => i.clone(),
            None => RunnerInfo {
                name: self.name().to_string(),
                version: "unknown".into(),
                serves: self.settings.serves.clone(),
                capabilities: Capabilities::default(),
            },
        }
    }

    async fn probe(&self) -> Availability {
        let first = self.probe_once().await;
        // A standalone plugin that restarted answers "not configured" once: configure it again
        // (the next connect does) and ask again, instead of failing this run.
        if !first.available && self.unconfigured.load(std::sync::atomic::Ordering::SeqCst) {
            return self.probe_once().await;
        }
        first
    }

    async fn cache_key(&self, spec: &BuildSpec) -> Result<Option<BTreeMap<String, String>>, RunnerError> {
        let conn = self.connect().await?;
        let mut client = conn.client.clone();
        let r = match self.call_optional(client.cache_key(convert::build_spec_to_pb(spec, ""))).await {
            Ok(r) => r,
            Err(e) => return Err(self.explain(&conn, e).await),
        };
        if let Some(e) = r.error {
            return Err(convert::error_from_pb(self.name(), &spec.addon.label(), &e));
        }
        if !r.builds {
            return Ok(None);
        }
        let mut parts: BTreeMap<String, String> = r.parts.into_iter().collect();
        parts.insert("plugin-config".into(), self.config_digest.clone());
        Ok(Some(parts))
    }

    async fn build(&self, spec: &BuildSpec, log: LogSink) -> Result<Artifact, RunnerError> {
        let conn = self.connect().await?;
        let mut client = conn.client.clone();
        let build_id = unique_id("build");
        let shares = conn.info.capabilities.shares_host_filesystem;
        if !shares {
            if let Err(e) = self.copy_in(&mut client, &build_id, pb::Dir::Addon, &spec.addon_dir).await {
                forget(&mut client, &build_id, self.settings.timeout).await;
                return Err(self.explain(&conn, e).await);
            }
        }
        let limit = self.settings.build_timeout;
        let result = tokio::time::timeout(limit, async {
            let mut stream = match self.call(client.build(convert::build_spec_to_pb(spec, &build_id))).await {
                Ok(s) => s,
                Err(e) => return Err(self.explain(&conn, e).await),
            };
            loop {
                match stream.message().await {
                    Ok(Some(pb::BuildEvent { event: Some(pb::build_event::Event::Log(line)) })) => {
                        log(LogStream::Stdout, &line)
                    }
                    Ok(Some(pb::BuildEvent { event: Some(pb::build_event::Event::Artifact(a)) })) => {
                        return convert::artifact_from_pb(&a).map_err(|e| self.failed(e.to_string()))
                    }
                    Ok(Some(pb::BuildEvent { event: Some(pb::build_event::Event::Error(e)) })) => {
                        return Err(convert::error_from_pb(self.name(), &spec.addon.label(), &e))
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => return Err(self.lost(&conn, None).await),
                    Err(s) => return Err(self.lost(&conn, Some(s)).await),
                }
            }
        })
        .await
        .unwrap_or_else(|_| {
            Err(RunnerError::build(
                self.name(),
                &spec.addon.label(),
                &format!(
                    "the build did not end within the plugin's build-timeout ({})",
                    addon_runners::process::human_secs(limit)
                ),
            ))
        });
        if !shares {
            let _ = self.call_optional(client.forget(pb::ForgetRequest { id: build_id })).await;
        }
        result
    }

    async fn artifact_valid(&self, artifact: &Artifact) -> bool {
        let Ok(conn) = self.connect().await else { return true };
        let mut client = conn.client.clone();
        // Unknown is not invalid: a plugin that cannot answer fails the run with a clear error.
        self.call(client.artifact_valid(convert::artifact_to_pb(artifact))).await.map(|r| r.valid).unwrap_or(true)
    }

    async fn start(&self, spec: StartSpec) -> Result<Started, RunnerError> {
        let conn = self.connect().await?;
        let mut client = conn.client.clone();
        let shares = conn.info.capabilities.shares_host_filesystem;
        let run_id = spec.run_id.clone();
        if !shares {
            for (dir, path) in
                [(pb::Dir::Work, &spec.dirs.work), (pb::Dir::Cache, &spec.dirs.cache), (pb::Dir::Home, &spec.dirs.home)]
            {
                if let Err(e) = self.copy_in(&mut client, &run_id, dir, path).await {
                    forget(&mut client, &run_id, self.settings.timeout).await;
                    return Err(self.explain(&conn, e).await);
                }
            }
        }
        let started = match self.call(client.start(convert::start_spec_to_pb(&spec))).await {
            Ok(s) => s,
            Err(e) => {
                forget(&mut client, &run_id, self.settings.timeout).await;
                return Err(self.explain(&conn, e).await);
            }
        };
        if let Some(e) = started.error {
            forget(&mut client, &run_id, self.settings.timeout).await;
            return Err(convert::error_from_pb(self.name(), &spec.addon.label(), &e));
        }
        let mut stream = match self.call(client.events(pb::EventsRequest { run_id: run_id.clone() })).await {
            Ok(s) => s,
            Err(e) => {
                let _ = self.call(client.stop(pb::StopRequest { run_id: run_id.clone(), grace_ms: 0 })).await;
                forget(&mut client, &run_id, self.settings.timeout).await;
                return Err(self.explain(&conn, e).await);
            }
        };
        let (tx, rx) = mpsc::channel(64);
        let this = PluginRunRef { settings: self.settings.clone(), conn: conn.clone() };
        let (dirs, output_size) = (spec.dirs.clone(), spec.limits.output_size);
        tokio::spawn(async move {
            let runner = this.runner();
            let timeout = this.settings.timeout;
            loop {
                let message = tokio::select! {
                    m = stream.message() => m,
                    // The engine stopped listening: dropping the stream tells the plugin (it stops
                    // the run), and Forget lets it drop its copies.
                    _ = tx.closed() => {
                        drop(stream);
                        forget(&mut this.conn.client.clone(), &run_id, timeout).await;
                        return;
                    }
                };
                let event = match message {
                    Ok(Some(pb::RunEvent { event: Some(pb::run_event::Event::Stdout(b)) })) => RunEvent::Stdout(b),
                    Ok(Some(pb::RunEvent { event: Some(pb::run_event::Event::Stderr(b)) })) => RunEvent::Stderr(b),
                    Ok(Some(pb::RunEvent { event: Some(pb::run_event::Event::Exited(e)) })) => {
                        let event = match convert::exit_from_pb(&e) {
                            Ok(exit) => match this.collect(&runner, &run_id, &dirs, output_size, shares).await {
                                Ok(()) => RunEvent::Exited(exit),
                                Err(e) => RunEvent::Failed(e),
                            },
                            Err(e) => RunEvent::Failed(runner.failed(e.to_string())),
                        };
                        let _ = tx.send(event).await;
                        let mut client = this.conn.client.clone();
                        let _ = runner.call_optional(client.forget(pb::ForgetRequest { id: run_id })).await;
                        return;
                    }
                    Ok(Some(_)) => continue,
                    Ok(None) => RunEvent::Failed(runner.lost(&this.conn, None).await),
                    Err(s) => RunEvent::Failed(runner.lost(&this.conn, Some(s)).await),
                };
                let last = matches!(event, RunEvent::Failed(_));
                if tx.send(event).await.is_err() || last {
                    forget(&mut this.conn.client.clone(), &run_id, timeout).await;
                    return;
                }
            }
        });
        Ok(Started {
            sandbox: if started.sandbox.is_empty() { self.name().to_string() } else { started.sandbox },
            events: rx,
        })
    }

    async fn stop(&self, run_id: &str, grace: Duration) -> Result<(), RunnerError> {
        let conn = {
            let slot = self.conn.lock().await;
            match slot.as_ref() {
                Some(c) if c.alive() => c.clone(),
                _ => return Ok(()), // a dead plugin's runs are reaped when it comes back
            }
        };
        let mut client = conn.client.clone();
        let req = pb::StopRequest { run_id: run_id.to_string(), grace_ms: grace.as_millis() as u64 };
        match self.call_within(grace + self.settings.timeout, client.stop(req)).await {
            Ok(r) => match r.error {
                Some(e) => Err(convert::error_from_pb(self.name(), "", &e)),
                None => Ok(()),
            },
            Err(e) => {
                // A plugin that cannot stop a run is killed (it stops its runs on the way, or
                // they are reaped when it is started again).
                if let Some(p) = &conn.process {
                    tracing::warn!("plugin {}: {e}; killing it", self.name());
                    p.kill_because(format!(
                        "asked to stop run {run_id}, {}",
                        match &e {
                            RunnerError::Runner { message, .. } => message.clone(),
                            other => other.to_string(),
                        }
                    ));
                }
                Err(e)
            }
        }
    }

    async fn release(&self, artifact: &Artifact) -> Result<(), RunnerError> {
        let conn = self.connect().await?;
        let mut client = conn.client.clone();
        match self.call_optional(client.release(convert::artifact_to_pb(artifact))).await?.error {
            Some(e) => Err(convert::error_from_pb(self.name(), "", &e)),
            None => Ok(()),
        }
    }

    async fn reap(&self) -> Result<u64, RunnerError> {
        let conn = self.connect().await?;
        let mut client = conn.client.clone();
        Ok(self.call_optional(client.reap(pb::ReapRequest {})).await?.removed)
    }
}

/// What a run's event task needs of its runner.
struct PluginRunRef {
    settings: PluginSettings,
    conn: Arc<Conn>,
}

impl PluginRunRef {
    fn runner(&self) -> PluginRunner {
        PluginRunner::new(self.settings.clone())
    }

    /// Brings the output, CACHE_DIR and HOME back from a plugin that keeps its own copies.
    async fn collect(
        &self,
        runner: &PluginRunner,
        run_id: &str,
        dirs: &addon_runners::RunDirs,
        output_size: Option<u64>,
        shares: bool,
    ) -> Result<(), RunnerError> {
        if shares {
            return Ok(());
        }
        let mut client = self.conn.client.clone();
        // `output-size` bounds what the addon adds: what CACHE_DIR and HOME held before counts
        // on top.
        let before = {
            let (cache, home) = (dirs.cache.clone(), dirs.home.clone());
            tokio::task::spawn_blocking(move || tree_size(&cache) + tree_size(&home)).await.unwrap_or(0)
        };
        let mut budget = output_size.map(|b| b.saturating_add(before));
        // All three come back whole before any is put in place: a copy that fails leaves the
        // output, CACHE_DIR and HOME as they were.
        let mut copies = Vec::new();
        for (dir, path) in [(pb::Dir::Output, &dirs.output), (pb::Dir::Cache, &dirs.cache), (pb::Dir::Home, &dirs.home)]
        {
            let fresh = tempfile::Builder::new()
                .prefix(".copy-out-")
                .tempdir_in(path.parent().unwrap_or(Path::new("/tmp")))
                .map_err(|e| runner.failed(format!("copying out: {e}")))?;
            let n = runner.copy_out(&mut client, run_id, dir, fresh.path(), budget).await?;
            budget = budget.map(|b| b.saturating_sub(n));
            copies.push((path, fresh));
        }
        for (path, fresh) in copies {
            crate::copy::replace_content(path, fresh.path()).map_err(|e| runner.failed(format!("copying out: {e}")))?;
        }
        Ok(())
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
