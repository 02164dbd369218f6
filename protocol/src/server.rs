//! The plugin SDK: serve any [`addon_runner_api::Runner`] over the protocol. Implement [`Plugin`]
//! (who you are, and how your runner is made from its configuration), call [`main`], done: the
//! handshake, the health service, run bookkeeping, CopyIn/CopyOut staging, stopping runs whose
//! engine went away, and a clean exit on SIGTERM are the SDK's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use addon_runner_api::{RunEvent, Runner, RunnerInfo};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

pub use crate::{CONFIG_DIGEST_HEADER, UNCONFIGURED};

use crate::convert;
use crate::handshake::{self, Handshake, Network};
use crate::pb;
use crate::pb::runner_server::{Runner as RunnerService, RunnerServer};

/// A plugin: who it is, and how its runner is made from its configuration.
pub trait Plugin: Send + Sync + 'static {
    /// Name, version, served sections, capabilities (also before any configuration).
    fn info(&self) -> RunnerInfo;
    /// Makes the runner from the plugin's `config:` (JSON null when there is none). Errors name
    /// the field.
    fn configure(&self, config: &serde_json::Value) -> Result<Arc<dyn Runner>, Vec<FieldError>>;
}

/// A problem with one field of a plugin's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path inside the plugin's config; empty for the whole.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError { field: field.into(), message: message.into() }
    }
}

/// How long a started run may wait for its Events stream before the SDK stops it (the engine
/// died between Start and Events).
const UNCLAIMED_RUN: Duration = Duration::from_secs(30);

struct Run {
    /// The runner (of the configuration) that started it: Stop goes there, whatever else was
    /// configured since.
    runner: Arc<dyn Runner>,
    events: Option<mpsc::Receiver<RunEvent>>,
    /// The run's Events stream ended (exited, or stopped after its engine went away).
    done: bool,
    /// Forget came while the run was still ending: drop it once it has.
    forgotten: bool,
}

/// A run's events have ended: mark it done, and when the engine already forgot it, remove it
/// and its copies now.
fn run_ended(state: &State, id: &str) {
    let forget = {
        let mut runs = state.runs.lock().unwrap_or_else(|e| e.into_inner());
        match runs.get_mut(id) {
            Some(r) if r.forgotten => {
                runs.remove(id);
                true
            }
            Some(r) => {
                r.done = true;
                false
            }
            None => false,
        }
    };
    if forget {
        let _ = addon_tree::remove_tree(&state.staging.path().join(id));
    }
}

struct State {
    plugin: Box<dyn Plugin>,
    /// A runner per configuration, by the digest engines send with every call
    /// ([`CONFIG_DIGEST_HEADER`]); "" for engines that send none.
    runners: Mutex<HashMap<String, Arc<dyn Runner>>>,
    runs: Mutex<HashMap<String, Run>>,
    /// Per run or build: the copies of plugins that do not share the host filesystem.
    staging: tempfile::TempDir,
    /// Fires once on shutdown.
    shutdown: tokio_util::sync::CancellationToken,
    /// A protocol version to claim instead of ours (testing engines' version checks).
    announce: Option<u32>,
}

/// The gRPC service around a plugin.
#[derive(Clone)]
pub struct Service {
    state: Arc<State>,
}

impl Service {
    pub fn new(plugin: impl Plugin, announce: Option<u32>) -> std::io::Result<Service> {
        let staging = tempfile::Builder::new().prefix("addon-runner-plugin-").tempdir()?;
        Ok(Service {
            state: Arc::new(State {
                plugin: Box::new(plugin),
                runners: Mutex::new(HashMap::new()),
                runs: Mutex::new(HashMap::new()),
                staging,
                shutdown: tokio_util::sync::CancellationToken::new(),
                announce,
            }),
        })
    }

    /// The runner of the caller's configuration. A caller that names a configuration this
    /// process does not have (it restarted since, say) is told so; one that names none gets the
    /// plugin configured with no configuration.
    fn runner(&self, meta: &tonic::metadata::MetadataMap) -> Result<Arc<dyn Runner>, Status> {
        let digest = config_digest(meta);
        let mut runners = self.state.runners.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = runners.get(&digest) {
            return Ok(r.clone());
        }
        if !digest.is_empty() {
            return Err(Status::failed_precondition(format!(
                "{UNCONFIGURED}: configuration {digest} is not known here"
            )));
        }
        let r = self.state.plugin.configure(&serde_json::Value::Null).map_err(|errors| {
            Status::failed_precondition(format!("{UNCONFIGURED}, and it needs a configuration: {}", join(&errors)))
        })?;
        runners.insert(digest, r.clone());
        Ok(r)
    }

    /// The caller's configured runner's info, else the plugin's.
    fn info(&self, meta: &tonic::metadata::MetadataMap) -> RunnerInfo {
        let runners = self.state.runners.lock().unwrap_or_else(|e| e.into_inner());
        match runners.get(&config_digest(meta)) {
            Some(r) => r.info(),
            None => self.state.plugin.info(),
        }
    }

    fn shares_host_filesystem(&self, meta: &tonic::metadata::MetadataMap) -> bool {
        self.info(meta).capabilities.shares_host_filesystem
    }

    fn staging(&self, id: &str) -> Result<PathBuf, Status> {
        if id.is_empty()
            || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            || id.starts_with('.')
        {
            return Err(Status::invalid_argument(format!("id `{id}` is not a plain name")));
        }
        Ok(self.state.staging.path().join(id))
    }

    /// Stops every run and waits (up to `wait`) for them to end.
    pub async fn stop_all(&self, wait: Duration) {
        let runs: Vec<(String, Arc<dyn Runner>)> = self
            .state
            .runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, r)| (id.clone(), r.runner.clone()))
            .collect();
        for (id, runner) in &runs {
            let _ = runner.stop(id, Duration::ZERO).await;
        }
        let deadline = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < deadline {
            let open = self.state.runs.lock().unwrap_or_else(|e| e.into_inner()).values().filter(|r| !r.done).count();
            if open == 0 {
                break;
            }
            // Unclaimed runs' receivers: drain them here so their processes are reaped.
            let unclaimed: Vec<(String, mpsc::Receiver<RunEvent>)> = self
                .state
                .runs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter_mut()
                .filter_map(|(id, r)| r.events.take().map(|e| (id.clone(), e)))
                .collect();
            for (id, rx) in unclaimed {
                self.drain(id, rx);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Reads a run's events to its end without anyone listening.
    fn drain(&self, id: String, mut rx: mpsc::Receiver<RunEvent>) {
        let state = self.state.clone();
        tokio::spawn(async move {
            while let Some(e) = rx.recv().await {
                if matches!(e, RunEvent::Exited(_) | RunEvent::Failed(_)) {
                    break;
                }
            }
            run_ended(&state, &id);
        });
    }
}

fn config_digest(meta: &tonic::metadata::MetadataMap) -> String {
    meta.get(CONFIG_DIGEST_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| if e.field.is_empty() { e.message.clone() } else { format!("{}: {}", e.field, e.message) })
        .collect::<Vec<_>>()
        .join("; ")
}

fn bad_request(e: convert::Malformed) -> Status {
    Status::invalid_argument(e.to_string())
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

fn dir_name(d: i32) -> Result<&'static str, Status> {
    match pb::Dir::try_from(d).unwrap_or(pb::Dir::Unspecified) {
        pb::Dir::Work => Ok("work"),
        pb::Dir::Output => Ok("output"),
        pb::Dir::Cache => Ok("cache"),
        pb::Dir::Home => Ok("home"),
        pb::Dir::Addon => Ok("addon"),
        pb::Dir::Unspecified => Err(Status::invalid_argument("dir is unspecified")),
    }
}

#[tonic::async_trait]
impl RunnerService for Service {
    async fn info(&self, request: Request<pb::InfoRequest>) -> Result<Response<pb::InfoResponse>, Status> {
        let mut info = convert::info_to_pb(&self.info(request.metadata()));
        if let Some(v) = self.state.announce {
            info.protocol_version = v;
        }
        Ok(Response::new(info))
    }

    async fn configure(
        &self,
        request: Request<pb::ConfigureRequest>,
    ) -> Result<Response<pb::ConfigureResponse>, Status> {
        let digest = config_digest(request.metadata());
        let text = request.into_inner().config_json;
        let config: serde_json::Value = if text.trim().is_empty() {
            serde_json::Value::Null
        } else {
            match serde_json::from_str(&text) {
                Ok(v) => v,
                Err(e) => {
                    let errors = vec![pb::FieldError { field: String::new(), message: format!("not JSON: {e}") }];
                    return Ok(Response::new(pb::ConfigureResponse { errors }));
                }
            }
        };
        // Each configuration gets a runner of its own: engines sharing a standalone plugin with
        // different configurations do not switch it under each other.
        let mut runners = self.state.runners.lock().unwrap_or_else(|e| e.into_inner());
        if runners.contains_key(&digest) {
            return Ok(Response::new(pb::ConfigureResponse { errors: vec![] }));
        }
        match self.state.plugin.configure(&config) {
            Ok(runner) => {
                runners.insert(digest, runner);
                Ok(Response::new(pb::ConfigureResponse { errors: vec![] }))
            }
            Err(errors) => Ok(Response::new(pb::ConfigureResponse {
                errors: errors.into_iter().map(|e| pb::FieldError { field: e.field, message: e.message }).collect(),
            })),
        }
    }

    async fn probe(&self, request: Request<pb::ProbeRequest>) -> Result<Response<pb::ProbeResponse>, Status> {
        let a = self.runner(request.metadata())?.probe().await;
        Ok(Response::new(pb::ProbeResponse {
            available: a.available,
            version: a.version.unwrap_or_default(),
            detail: a.detail,
        }))
    }

    async fn cache_key(&self, request: Request<pb::BuildSpec>) -> Result<Response<pb::CacheKeyResponse>, Status> {
        let spec = convert::build_spec_from_pb(request.get_ref()).map_err(bad_request)?;
        let answer = match self.runner(request.metadata())?.cache_key(&spec).await {
            Ok(parts) => pb::CacheKeyResponse {
                builds: parts.is_some(),
                parts: parts.unwrap_or_default().into_iter().collect(),
                error: None,
            },
            Err(e) => pb::CacheKeyResponse { error: Some(convert::error_to_pb(&e)), ..Default::default() },
        };
        Ok(Response::new(answer))
    }

    type BuildStream = BoxStream<pb::BuildEvent>;

    async fn build(&self, request: Request<pb::BuildSpec>) -> Result<Response<Self::BuildStream>, Status> {
        let runner = self.runner(request.metadata())?;
        let shares = self.shares_host_filesystem(request.metadata());
        let wire = request.into_inner();
        let mut spec = convert::build_spec_from_pb(&wire).map_err(bad_request)?;
        if !shares {
            let base = self.staging(&wire.build_id)?;
            spec.addon_dir = base.join("addon");
            spec.content_dir = base.join("content");
            fs_err::create_dir_all(&spec.content_dir).map_err(|e| Status::internal(e.to_string()))?;
        }
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let log_tx = tx.clone();
            let log: addon_runner_api::LogSink = Arc::new(move |_, line: &str| {
                let _ =
                    log_tx.try_send(Ok(pb::BuildEvent { event: Some(pb::build_event::Event::Log(line.to_string())) }));
            });
            // A dropped stream (the engine cancelled) drops this future and so the build.
            let result = tokio::select! {
                r = runner.build(&spec, log) => r,
                _ = tx.closed() => return,
            };
            let event = match result {
                Ok(a) => pb::build_event::Event::Artifact(convert::artifact_to_pb(&a)),
                Err(e) => pb::build_event::Event::Error(convert::error_to_pb(&e)),
            };
            let _ = tx.send(Ok(pb::BuildEvent { event: Some(event) })).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn artifact_valid(
        &self,
        request: Request<pb::Artifact>,
    ) -> Result<Response<pb::ArtifactValidResponse>, Status> {
        let a = convert::artifact_from_pb(request.get_ref()).map_err(bad_request)?;
        Ok(Response::new(pb::ArtifactValidResponse {
            valid: self.runner(request.metadata())?.artifact_valid(&a).await,
        }))
    }

    async fn release(&self, request: Request<pb::Artifact>) -> Result<Response<pb::ReleaseResponse>, Status> {
        let a = convert::artifact_from_pb(request.get_ref()).map_err(bad_request)?;
        let error = self.runner(request.metadata())?.release(&a).await.err().map(|e| convert::error_to_pb(&e));
        Ok(Response::new(pb::ReleaseResponse { error }))
    }

    async fn start(&self, request: Request<pb::StartSpec>) -> Result<Response<pb::StartResponse>, Status> {
        let mut spec = convert::start_spec_from_pb(request.get_ref()).map_err(bad_request)?;
        if self.state.shutdown.is_cancelled() {
            return Err(Status::unavailable("the plugin is shutting down"));
        }
        let runner = self.runner(request.metadata())?;
        if !self.shares_host_filesystem(request.metadata()) {
            let base = self.staging(&spec.run_id)?;
            let rel = spec.dirs.addon.strip_prefix(&spec.dirs.work).map(Path::to_path_buf).unwrap_or_default();
            spec.dirs.work = base.join("work");
            spec.dirs.addon = spec.dirs.work.join(rel);
            spec.dirs.output = base.join("output");
            spec.dirs.cache = base.join("cache");
            spec.dirs.home = base.join("home");
            spec.dirs.scratch = base.join("scratch");
            for d in [&spec.dirs.work, &spec.dirs.output, &spec.dirs.cache, &spec.dirs.home, &spec.dirs.scratch] {
                fs_err::create_dir_all(d).map_err(|e| Status::internal(format!("{}: {e}", d.display())))?;
            }
        }
        let run_id = spec.run_id.clone();
        {
            let runs = self.state.runs.lock().unwrap_or_else(|e| e.into_inner());
            if runs.contains_key(&run_id) {
                return Err(Status::already_exists(format!("run {run_id} exists")));
            }
        }
        match runner.start(spec).await {
            Ok(started) => {
                self.state.runs.lock().unwrap_or_else(|e| e.into_inner()).insert(
                    run_id.clone(),
                    Run { runner: runner.clone(), events: Some(started.events), done: false, forgotten: false },
                );
                // A run nobody asks the events of within a while: its engine is gone.
                let this = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(UNCLAIMED_RUN).await;
                    let rx = this
                        .state
                        .runs
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_mut(&run_id)
                        .and_then(|r| r.events.take());
                    if let Some(rx) = rx {
                        tracing::warn!("run {run_id}: nobody asked for its events; stopping it");
                        let _ = runner.stop(&run_id, Duration::ZERO).await;
                        this.drain(run_id, rx);
                    }
                });
                Ok(Response::new(pb::StartResponse { sandbox: started.sandbox, error: None }))
            }
            Err(e) => {
                Ok(Response::new(pb::StartResponse { sandbox: String::new(), error: Some(convert::error_to_pb(&e)) }))
            }
        }
    }

    type EventsStream = BoxStream<pb::RunEvent>;

    async fn events(&self, request: Request<pb::EventsRequest>) -> Result<Response<Self::EventsStream>, Status> {
        let run_id = request.into_inner().run_id;
        let (mut events, runner) = {
            let mut runs = self.state.runs.lock().unwrap_or_else(|e| e.into_inner());
            let run = runs.get_mut(&run_id).ok_or_else(|| Status::not_found(format!("no run {run_id}")))?;
            let events = run.events.take().ok_or_else(|| {
                Status::failed_precondition(format!("the events of run {run_id} are already being read"))
            })?;
            (events, run.runner.clone())
        };
        let state = self.state.clone();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut listening = true;
            loop {
                tokio::select! {
                    event = events.recv() => {
                        let Some(event) = event else { break };
                        let last = matches!(event, RunEvent::Exited(_) | RunEvent::Failed(_));
                        let wire = match event {
                            RunEvent::Stdout(b) => Ok(pb::RunEvent { event: Some(pb::run_event::Event::Stdout(b)) }),
                            RunEvent::Stderr(b) => Ok(pb::RunEvent { event: Some(pb::run_event::Event::Stderr(b)) }),
                            RunEvent::Exited(e) => {
                                Ok(pb::RunEvent { event: Some(pb::run_event::Event::Exited(convert::exit_to_pb(&e))) })
                            }
                            RunEvent::Failed(e) => Err(Status::internal(e.to_string())),
                        };
                        if listening {
                            let _ = tx.send(wire).await;
                        }
                        if last {
                            break;
                        }
                    }
                    _ = tx.closed(), if listening => {
                        // The engine went away: nothing of the run may outlive it.
                        tracing::warn!("run {run_id}: its engine stopped listening; stopping it");
                        listening = false;
                        let _ = runner.stop(&run_id, Duration::ZERO).await;
                    }
                }
            }
            run_ended(&state, &run_id);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn stop(&self, request: Request<pb::StopRequest>) -> Result<Response<pb::StopResponse>, Status> {
        let r = request.into_inner();
        let runner =
            self.state.runs.lock().unwrap_or_else(|e| e.into_inner()).get(&r.run_id).map(|run| run.runner.clone());
        // Stopping a run this process does not know (it ended and was forgotten) is not an error.
        let Some(runner) = runner else { return Ok(Response::new(pb::StopResponse { error: None })) };
        let error = runner.stop(&r.run_id, Duration::from_millis(r.grace_ms)).await.err();
        Ok(Response::new(pb::StopResponse { error: error.map(|e| convert::error_to_pb(&e)) }))
    }

    async fn reap(&self, request: Request<pb::ReapRequest>) -> Result<Response<pb::ReapResponse>, Status> {
        let removed = self.runner(request.metadata())?.reap().await.map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::ReapResponse { removed }))
    }

    async fn copy_in(
        &self,
        request: Request<Streaming<pb::CopyInChunk>>,
    ) -> Result<Response<pb::CopyInResponse>, Status> {
        let mut stream = request.into_inner();
        let header = match stream.next().await {
            Some(Ok(pb::CopyInChunk { chunk: Some(pb::copy_in_chunk::Chunk::Header(h)) })) => h,
            Some(Err(e)) => return Err(e),
            _ => return Err(Status::invalid_argument("CopyIn must start with its header")),
        };
        let dest = self.staging(&header.id)?.join(dir_name(header.dir)?);
        let bytes = stream.map(|c| match c {
            Ok(pb::CopyInChunk { chunk: Some(pb::copy_in_chunk::Chunk::Data(d)) }) => Ok(bytes::Bytes::from(d)),
            Ok(_) => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "a second header")),
            Err(e) => Err(std::io::Error::other(e.to_string())),
        });
        let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(bytes));
        let policy = crate::copy::UnpackPolicy { symlinks: true, max_bytes: None, owners: false };
        let result = tokio::task::spawn_blocking(move || crate::copy::unpack(reader, &dest, policy))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let error = result
            .err()
            .map(|e| convert::error_to_pb(&addon_runner_api::RunnerError::setup("", format!("copying in: {e}"))));
        Ok(Response::new(pb::CopyInResponse { error }))
    }

    type CopyOutStream = BoxStream<pb::Chunk>;

    async fn copy_out(&self, request: Request<pb::CopyOutRequest>) -> Result<Response<Self::CopyOutStream>, Status> {
        let r = request.into_inner();
        let dir = self.staging(&r.id)?.join(dir_name(r.dir)?);
        if !dir.is_dir() {
            return Err(Status::not_found(format!("run {} has no {} directory here", r.id, dir_name(r.dir)?)));
        }
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
        let (out, stream) = mpsc::channel::<Result<pb::Chunk, Status>>(4);
        let packer = tokio::task::spawn_blocking(move || {
            crate::copy::pack(&dir, tx).map_err(|e| format!("packing {}: {e}", dir.display()))
        });
        // A failed pack ends the stream with an error status, never as a shorter archive.
        tokio::spawn(async move {
            while let Some(data) = rx.recv().await {
                if out.send(Ok(pb::Chunk { data })).await.is_err() {
                    return;
                }
            }
            let failed = match packer.await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(e) => Some(e.to_string()),
            };
            if let Some(e) = failed {
                tracing::warn!("copying out: {e}");
                let _ = out.send(Err(Status::internal(e))).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(stream))))
    }

    async fn forget(&self, request: Request<pb::ForgetRequest>) -> Result<Response<pb::ForgetResponse>, Status> {
        let id = request.into_inner().id;
        let dir = self.staging(&id)?;
        let done = {
            let mut runs = self.state.runs.lock().unwrap_or_else(|e| e.into_inner());
            match runs.get_mut(&id) {
                // Still ending (its events read or not yet claimed): dropped once it has ended.
                Some(r) if !r.done => {
                    r.forgotten = true;
                    false
                }
                _ => {
                    runs.remove(&id);
                    true
                }
            }
        };
        if done && dir.exists() {
            let _ = tokio::task::spawn_blocking(move || addon_tree::remove_tree(&dir)).await;
        }
        Ok(Response::new(pb::ForgetResponse {}))
    }
}

/// Where a standalone plugin listens, and with which TLS.
#[derive(Debug, Clone)]
pub struct Listen {
    /// `unix:///PATH`, or `HOST:PORT` / `tcp://HOST:PORT`.
    pub address: String,
    pub tls: Option<ServerTls>,
}

/// TLS of a standalone plugin (PEM files); `client_ca` makes it mutual.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

/// Why a plugin could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("making a staging directory: {0}")]
    Staging(#[source] std::io::Error),
    /// A TLS file could not be read (fs-err's error names it), or tonic refused the TLS setup.
    #[error("{0}")]
    TlsFile(#[source] std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[source] tonic::transport::Error),
    #[error(
        "this is an addon runner plugin: an addon engine starts it (see PLUGINS.md), or run it as a standalone \
         server with --listen unix:///PATH or --listen HOST:PORT ({} is not set)",
        handshake::MAGIC_COOKIE_KEY
    )]
    NotStartedByEngine,
    #[error("{address} exists and is not a socket")]
    NotASocket { address: String },
    #[error(
        "refusing to listen on {address} without client certificates: anyone who reaches it could run programs as \
         this plugin; give --tls-cert, --tls-key and --tls-client-ca (mutual TLS), or listen on a loopback address \
         or a unix socket"
    )]
    Exposed { address: String },
    #[error("listening on {address}: {source}")]
    Listen { address: String, source: std::io::Error },
    #[error("serving: {0}")]
    Serve(#[source] tonic::transport::Error),
}

/// Serves `plugin`: standalone at `listen`, or (None) started by an engine with the go-plugin
/// handshake. Returns on SIGTERM or SIGINT after stopping every run (and, started by an engine,
/// when the engine is gone).
pub async fn serve(plugin: impl Plugin, listen: Option<Listen>, announce: Option<u32>) -> Result<(), ServeError> {
    let info = plugin.info();
    let service = Service::new(plugin, announce).map_err(ServeError::Staging)?;
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<RunnerServer<Service>>().await;
    health_reporter.set_service_status("plugin", tonic_health::ServingStatus::Serving).await;
    let shutdown = service.state.shutdown.clone();
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            shutdown.cancel();
        });
    }
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = listen.as_ref().and_then(|l| l.tls.as_ref()) {
        let read = |p: &Path| fs_err::read(p).map_err(ServeError::TlsFile);
        let mut config = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(read(&tls.cert)?, read(&tls.key)?));
        if let Some(ca) = &tls.client_ca {
            config = config.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
        }
        builder = builder.tls_config(config).map_err(ServeError::Tls)?;
    }
    let router = builder.add_service(health).add_service(RunnerServer::new(service.clone()));
    // On SIGTERM: stop every run (waiting for them to end), then stop serving. Connections are
    // not waited for beyond a moment: an engine that is going away may never close its own.
    let stopped = tokio_util::sync::CancellationToken::new();
    let stop = {
        let (service, shutdown, stopped) = (service.clone(), shutdown.clone(), stopped.clone());
        async move {
            shutdown.cancelled().await;
            service.stop_all(Duration::from_secs(10)).await;
            stopped.cancel();
        }
    };
    let drained = async move {
        stopped.cancelled().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (network, address, _socket_dir) = match listen.as_ref().map(|l| l.address.as_str()) {
        None => {
            if std::env::var(handshake::MAGIC_COOKIE_KEY).ok().as_deref() != Some(handshake::MAGIC_COOKIE_VALUE) {
                return Err(ServeError::NotStartedByEngine);
            }
            let base = std::env::var_os("PLUGIN_UNIX_SOCKET_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
            let dir = tempfile::Builder::new().prefix("plugin").tempdir_in(base).map_err(ServeError::Staging)?;
            let path = dir.path().join("plugin.sock");
            (Network::Unix, path.display().to_string(), Some(dir))
        }
        Some(a) if a.starts_with("unix://") => (Network::Unix, a.trim_start_matches("unix://").to_string(), None),
        Some(a) => (Network::Tcp, a.trim_start_matches("tcp://").to_string(), None),
    };
    let listen_error = |source| ServeError::Listen { address: address.clone(), source };
    let announce = |at: String| {
        let h = Handshake {
            core_version: handshake::CORE_PROTOCOL_VERSION,
            protocol_version: announce.unwrap_or(crate::PROTOCOL_VERSION),
            network: network.clone(),
            address: at,
        };
        print_handshake(&info, listen.is_none(), h);
    };
    let served = match network {
        Network::Unix => {
            // A stale socket of an earlier run is replaced; anything else at that path is not ours.
            if let Ok(m) = fs_err::symlink_metadata(&address) {
                use std::os::unix::fs::FileTypeExt;
                if !m.file_type().is_socket() {
                    return Err(ServeError::NotASocket { address });
                }
                let _ = fs_err::remove_file(&address);
            }
            let listener = tokio::net::UnixListener::bind(&address).map_err(listen_error)?;
            // Whoever can connect can run programs as this plugin: its owner and group only.
            use std::os::unix::fs::PermissionsExt;
            fs_err::set_permissions(&address, std::fs::Permissions::from_mode(0o660)).map_err(listen_error)?;
            announce(address.clone());
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            let served = until_drained(router.serve_with_incoming_shutdown(incoming, stop), drained).await;
            let _ = fs_err::remove_file(&address);
            served
        }
        Network::Tcp => {
            // Whoever reaches the port can run programs as this plugin: beyond loopback only
            // engines with a client certificate may.
            let mutual = listen.as_ref().and_then(|l| l.tls.as_ref()).is_some_and(|t| t.client_ca.is_some());
            let loopback = tokio::net::lookup_host(&address).await.map_err(listen_error)?.all(|a| a.ip().is_loopback());
            if !loopback && !mutual {
                return Err(ServeError::Exposed { address });
            }
            let listener = tokio::net::TcpListener::bind(&address).await.map_err(listen_error)?;
            announce(listener.local_addr().map_err(listen_error)?.to_string());
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            until_drained(router.serve_with_incoming_shutdown(incoming, stop), drained).await
        }
    };
    // The process exits without running destructors (tasks still hold the state): remove the
    // copies of runs here.
    let _ = addon_tree::remove_tree(service.state.staging.path());
    served
}

/// Serving until it ends or the runs are drained after a stop, whichever is first.
async fn until_drained(
    serving: impl std::future::Future<Output = Result<(), tonic::transport::Error>>,
    drained: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    tokio::select! {
        r = serving => r.map_err(ServeError::Serve),
        _ = drained => Ok(()),
    }
}

fn print_handshake(info: &RunnerInfo, handshake: bool, h: Handshake) {
    use std::io::Write;
    if handshake {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{h}");
        let _ = out.flush();
    }
    tracing::info!("runner plugin {} {} serving on {}", info.name, info.version, h.address);
}
