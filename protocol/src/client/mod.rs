//! The engine's side: a plugin behind the [`Runner`] trait. It starts the plugin (go-plugin
//! handshake) or dials a standalone one, checks the protocol version, configures it and calls
//! Reap whenever it (re)connects; it keeps one plugin process per engine, starts it again when it
//! died, and ends a run whose plugin died or stopped answering as a runner failure that names the
//! plugin and the tail of its stderr. For plugins that do not share the host filesystem it copies
//! the run's directories in and the output back.

mod connect;
mod launch;

use launch::Process;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use addon_descriptors::Section;
use addon_runner_api::{
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

/// Names the engine's configuration on every call ([`crate::CONFIG_DIGEST_HEADER`]), so
/// that a plugin shared by engines of different configurations answers each with its own.
#[derive(Clone)]
struct NameConfig(tonic::metadata::AsciiMetadataValue);

impl tonic::service::Interceptor for NameConfig {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        request.metadata_mut().insert(crate::CONFIG_DIGEST_HEADER, self.0.clone());
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
        if status.code() == tonic::Code::FailedPrecondition && status.message().starts_with(crate::UNCONFIGURED) {
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
        dirs: &addon_runner_api::RunDirs,
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
