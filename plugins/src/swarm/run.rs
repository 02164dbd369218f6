//! One run as a `replicated-job` service: the service's spec, the connection its task's helper
//! opens (inputs out, output and the addon's streams in, every tree checked by digest), and the
//! service's removal on every path.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use addon_runner_api::{Artifact, Exit, ExitKind, RunEvent, RunnerError, StartSpec, Usage};
use bollard::auth::DockerCredentials;
use bollard::models::{
    Limit, Mount, MountTmpfsOptions, MountType, NetworkAttachmentConfig, ServiceSpec, ServiceSpecMode,
    ServiceSpecModeReplicatedJob, TaskSpec as SwarmTaskSpec, TaskSpecContainerSpec, TaskSpecResources,
    TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::Docker;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use super::bundle::Bundle;
use super::wire::{self, TaskExit};
use super::{setup, Recorded, LABEL_SERVICE_ID, NAME};

/// The capabilities of the task: the docker runner's six, and what the helper needs before it
/// drops them for the addon (a network namespace with `lo` up; the bounding set).
const TASK_CAPABILITIES: [&str; 9] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SYS_ADMIN",
    "CAP_NET_ADMIN",
    "CAP_SETPCAP",
];

/// The helper's environment: every variable of the image emptied (the image's `LD_PRELOAD`,
/// `LD_AUDIT`, `GLIBC_TUNABLES`... must not reach the helper's loader; Docker merges the image's
/// environment into the task's, and a task's variable replaces the image's of the same name),
/// then where the plugin is and the run's token. The addon gets the image's environment back
/// from the run's spec.
fn helper_env(image_env: &[String], advertise: &str, token: &str) -> Vec<String> {
    let mut env: Vec<String> = image_env
        .iter()
        .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
        .chain(["LD_PRELOAD", "LD_AUDIT", "LD_LIBRARY_PATH", "GLIBC_TUNABLES"])
        .map(|k| format!("{k}="))
        .collect();
    env.sort();
    env.dedup();
    env.push(format!("{}={advertise}", wire::ENV_ENDPOINT));
    env.push(format!("{}={token}", wire::ENV_TOKEN));
    env
}

/// Processes the helper itself uses (its threads): added to the run's process limit.
pub const HELPER_PIDS: u64 = 8;

/// Where the tasks' helpers connect; hands each connection to the run its token names.
pub struct Listener {
    pub advertise: String,
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<TcpStream>>>>,
}

impl Listener {
    pub async fn bind(listen: &str, advertise: Option<String>) -> io::Result<Listener> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let advertise = match advertise {
            Some(a) => a,
            None if addr.ip().is_unspecified() => {
                return Err(io::Error::other(
                    "listening on every address, the tasks need to be told which one to use: set advertise",
                ))
            }
            None => addr.to_string(),
        };
        let waiting: Arc<Mutex<HashMap<String, oneshot::Sender<TcpStream>>>> = Arc::default();
        let table = waiting.clone();
        tokio::spawn(async move {
            loop {
                let (mut conn, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of descriptors, say: wait, never spin.
                        tracing::warn!("accepting a task's connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let table = table.clone();
                tokio::spawn(async move {
                    // A hello is a token: a frame of 64 bytes, read before anything is kept.
                    let hello = tokio::time::timeout(Duration::from_secs(10), async {
                        let mut frame = [0u8; 5 + 64];
                        conn.read_exact(&mut frame).await.ok()?;
                        (frame[0] == wire::HELLO && frame[1..5] == 64u32.to_be_bytes()).then(|| frame[5..].to_vec())
                    })
                    .await;
                    let token = match hello {
                        Ok(Some(token)) => token,
                        _ => {
                            tracing::warn!("a connection from {peer} did not say hello");
                            return;
                        }
                    };
                    // A token is good for one connection: it is taken out of the table.
                    let run = {
                        let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
                        let key = t.keys().find(|k| wire::same_token(k.as_bytes(), &token)).cloned();
                        key.and_then(|k| t.remove(&k))
                    };
                    match run {
                        Some(tx) => {
                            let _ = tx.send(conn);
                        }
                        None => {
                            tracing::warn!("a connection from {peer} named no run waiting for its task");
                            let _ = write_frame(&mut conn, wire::ERROR, b"unknown or used token").await;
                        }
                    }
                });
            }
        });
        Ok(Listener { advertise, waiting })
    }

    fn expect(&self, token: &str) -> oneshot::Receiver<TcpStream> {
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).insert(token.to_string(), tx);
        rx
    }

    fn forget(&self, token: &str) {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).remove(token);
    }
}

pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head[..1]).await {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        other => other?,
    };
    r.read_exact(&mut head[1..]).await?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > wire::MAX_FRAME {
        return Err(wire::invalid(format!("a frame of {len} bytes (at most {})", wire::MAX_FRAME)));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok(Some((head[0], payload)))
}

pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, kind: u8, payload: &[u8]) -> io::Result<()> {
    let mut frame = Vec::with_capacity(5 + payload.len());
    frame.push(kind);
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    w.write_all(&frame).await
}

/// Everything a run needs.
pub struct Run {
    pub docker: Docker,
    pub spec: StartSpec,
    pub artifact: Artifact,
    pub recorded: Recorded,
    pub labels: HashMap<String, String>,
    pub host_network: bool,
    pub credentials: Option<DockerCredentials>,
    pub start_timeout: Duration,
}

/// Why a run failed, and whether the addon ran.
type Failure = String;

impl Run {
    /// Creates the service; the run goes on in a task of its own. Returns the run id and its
    /// events.
    pub async fn start(
        self,
        listener: &Listener,
        stops: mpsc::Receiver<Duration>,
    ) -> Result<(String, mpsc::Receiver<RunEvent>), RunnerError> {
        let token = wire::token().map_err(|e| setup(format!("a token for the run: {e}")))?;
        let connected = listener.expect(&token);
        let spec = self.service_spec(&listener.advertise, &token).await;
        let created = match self.docker.create_service(spec, self.credentials.clone()).await {
            Ok(c) => c,
            Err(e) => {
                listener.forget(&token);
                return Err(setup(format!("creating the run's swarm service: {}", service_error(&e))));
            }
        };
        let Some(id) = created.id else {
            listener.forget(&token);
            return Err(setup("the swarm did not name the run's service"));
        };
        let (tx, rx) = mpsc::channel(64);
        let run_id = self.spec.run_id.clone();
        let waiting = listener.waiting.clone();
        tokio::spawn(async move {
            let ended = self.drive(&id, connected, stops, &tx).await;
            waiting.lock().unwrap_or_else(|e| e.into_inner()).remove(&token);
            remove_service(&self.docker, &id).await;
            let event = match ended {
                Ok(exit) => RunEvent::Exited(exit),
                Err(why) => RunEvent::Failed(RunnerError::Runner { runner: NAME.into(), message: why }),
            };
            let _ = tx.send(event).await;
        });
        Ok((run_id, rx))
    }

    async fn service_spec(&self, advertise: &str, token: &str) -> ServiceSpec {
        let limits = self.spec.limits;
        let tmpfs = |target: &str| Mount {
            target: Some(target.into()),
            typ: Some(MountType::TMPFS),
            tmpfs_options: Some(MountTmpfsOptions { mode: Some(0o755), ..Default::default() }),
            ..Default::default()
        };
        // The task's network: the node's default bridge (swarm's choice for a task given none),
        // which the helper uses to reach the plugin and which a pure addon never sees (the
        // helper gives it a namespace of its own with only `lo`); the node's own network only
        // when the policy gives an impure addon the host's (`network.impure: host`). So the
        // helper's NET_ADMIN is the task's, never the node's.
        let networks = if self.host_network {
            let host =
                self.docker.inspect_network("host", None::<bollard::query_parameters::InspectNetworkOptions>).await;
            let host_id = host.ok().and_then(|n| n.id).unwrap_or_else(|| "host".into());
            Some(vec![NetworkAttachmentConfig { target: Some(host_id), ..Default::default() }])
        } else {
            None
        };
        let name = format!(
            "addon-{}-{}",
            self.spec.run_id.chars().filter(|c| c.is_ascii_alphanumeric()).take(24).collect::<String>(),
            &token[..8]
        );
        ServiceSpec {
            name: Some(name),
            labels: Some(self.labels.clone()),
            mode: Some(ServiceSpecMode {
                replicated_job: Some(ServiceSpecModeReplicatedJob {
                    max_concurrent: Some(1),
                    total_completions: Some(1),
                }),
                ..Default::default()
            }),
            task_template: Some(SwarmTaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    image: Some(self.artifact.reference.clone()),
                    labels: Some(self.labels.clone()),
                    command: Some(Bundle::command(&self.recorded.helper_dir)),
                    args: Some(Vec::new()),
                    env: Some(helper_env(&self.recorded.env, advertise, token)),
                    dir: Some("/".into()),
                    user: Some("0:0".into()),
                    mounts: Some(
                        ["/mnt/work", "/mnt/output", "/mnt/cache"]
                            .into_iter()
                            .chain(self.recorded.volumes.iter().map(String::as_str))
                            .map(tmpfs)
                            .chain(std::iter::once(Mount {
                                // The image's /etc/ld.so.preload would be loaded into the helper
                                // (its loader reads it whatever the environment): empty.
                                target: Some("/etc/ld.so.preload".into()),
                                source: Some("/dev/null".into()),
                                typ: Some(MountType::BIND),
                                read_only: Some(true),
                                ..Default::default()
                            }))
                            .collect(),
                    ),
                    capability_drop: Some(vec!["ALL".into()]),
                    capability_add: Some(TASK_CAPABILITIES.iter().map(|c| c.to_string()).collect()),
                    stop_grace_period: Some(10_000_000_000),
                    ..Default::default()
                }),
                resources: Some(TaskSpecResources {
                    limits: Some(Limit {
                        nano_cpus: limits.cpus.map(|c| (c * 1e9) as i64),
                        memory_bytes: limits.memory.map(|m| m as i64),
                        pids: limits.pids.map(|p| (p + HELPER_PIDS) as i64),
                    }),
                    ..Default::default()
                }),
                restart_policy: Some(TaskSpecRestartPolicy {
                    condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
                    max_attempts: Some(0),
                    ..Default::default()
                }),
                networks,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn task_spec(&self) -> wire::TaskSpec {
        let r = &self.recorded;
        let mut argv = r.entrypoint.clone();
        argv.extend(if self.spec.args.is_empty() { r.cmd.clone() } else { self.spec.args.clone() });
        let mut env: Vec<(String, String)> =
            r.env.iter().filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))).collect();
        // The image's own HOME is kept, as the docker runner keeps it.
        for (k, v) in self.spec.env_in(&addon_runner_api::Mounts::mnt(), true) {
            if k == "PATH" {
                continue; // the image's PATH, not the host's
            }
            env.retain(|(ek, _)| *ek != k);
            env.push((k, v));
        }
        wire::TaskSpec {
            argv,
            env,
            user: r.user.clone(),
            workdir: "/mnt/work".into(),
            isolate_network: !self.host_network,
            max_file_size: self.spec.limits.output_size,
            max_entries: self.spec.limits.output_entries,
            pids: self.spec.limits.pids,
            inputs: vec!["/mnt/work".into(), "/mnt/cache".into()],
            outputs: vec!["/mnt/output".into(), "/mnt/cache".into()],
        }
    }

    /// The run from the service's creation to the helper's last frame.
    async fn drive(
        &self,
        service: &str,
        connected: oneshot::Receiver<TcpStream>,
        mut stops: mpsc::Receiver<Duration>,
        tx: &mpsc::Sender<RunEvent>,
    ) -> Result<Exit, Failure> {
        // 1. The task is scheduled, pulls the image and its helper connects.
        let deadline = tokio::time::Instant::now() + self.start_timeout;
        let mut connected = connected;
        let mut poll = tokio::time::interval(Duration::from_millis(500));
        let conn = loop {
            tokio::select! {
                c = &mut connected => break c.map_err(|_| "the plugin stopped listening".to_string())?,
                _ = poll.tick() => {
                    if let Some(why) = task_ended(&self.docker, service).await {
                        return Err(format!("the run's task ended before its helper connected: {why}"));
                    }
                }
                Some(_) = stops.recv() => {
                    return Ok(Exit { kind: ExitKind::Code(143), usage: Usage::default() });
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let state = task_state(&self.docker, service).await;
                    return Err(format!(
                        "the run's task did not start within start-timeout ({}s): {state}",
                        self.start_timeout.as_secs()
                    ));
                }
            }
        };
        let _ = conn.set_nodelay(true);
        let (mut reader, mut writer) = conn.into_split();
        // 2. The spec and the inputs.
        let spec = serde_json::to_vec(&self.task_spec()).map_err(|e| e.to_string())?;
        write_frame(&mut writer, wire::SPEC, &spec).await.map_err(|e| cut("sending the run's spec", &e))?;
        for dir in [&self.spec.dirs.work, &self.spec.dirs.cache] {
            send_tree(&mut writer, dir).await.map_err(|e| cut(&format!("sending {}", dir.display()), &e))?;
        }
        // 3. The addon's streams, its exit, then the trees it hands back.
        let (frames_tx, mut frames) = mpsc::channel::<io::Result<Option<(u8, Vec<u8>)>>>(16);
        let pump = tokio::spawn(async move {
            loop {
                let f = read_frame(&mut reader).await;
                let end = !matches!(f, Ok(Some(_)));
                if frames_tx.send(f).await.is_err() || end {
                    return;
                }
            }
        });
        let _pump = AbortOnDrop(pump);
        let back = [self.spec.dirs.output.clone(), self.spec.dirs.cache.clone()];
        let mut exit: Option<TaskExit> = None;
        let mut trees: Vec<Received> = Vec::new();
        let mut current: Option<Receiving> = None;
        let limit = self.spec.limits.output_size;
        // What a tree may carry beyond the output size: tar's headers and padding.
        let tree_bound = limit.map(|l| l.saturating_add(l / 8).saturating_add(64 << 20));
        let mut tree_bytes = 0u64;
        // A stop the task does not obey within its grace (and the slack) ends the run here.
        let mut stop_by: Option<tokio::time::Instant> = None;
        loop {
            let frame = tokio::select! {
                f = frames.recv() => f,
                Some(grace) = stops.recv() => {
                    let ms = grace.as_millis().min(u64::MAX as u128) as u64;
                    let _ = write_frame(&mut writer, wire::STOP, &ms.to_be_bytes()).await;
                    let by = tokio::time::Instant::now() + grace + addon_runner_api::STOP_SLACK;
                    stop_by = Some(stop_by.map_or(by, |s| s.min(by)));
                    continue;
                }
                _ = tokio::time::sleep_until(stop_by.unwrap_or_else(tokio::time::Instant::now)), if stop_by.is_some() => {
                    return Err(format!(
                        "the run's task did not end when it was stopped (task: {}); its service was removed",
                        task_state(&self.docker, service).await
                    ));
                }
            };
            let (kind, payload) = match frame {
                Some(Ok(Some(f))) => f,
                Some(Err(e)) => return Err(self.lost(service, exit.is_some(), &e.to_string()).await),
                Some(Ok(None)) | None => return Err(self.lost(service, exit.is_some(), "the connection closed").await),
            };
            match kind {
                wire::STDOUT if exit.is_none() => {
                    let _ = tx.send(RunEvent::Stdout(payload)).await;
                }
                wire::STDERR if exit.is_none() => {
                    let _ = tx.send(RunEvent::Stderr(payload)).await;
                }
                wire::EXIT if exit.is_none() => {
                    exit =
                        Some(serde_json::from_slice(&payload).map_err(|e| format!("the helper's exit report: {e}"))?);
                }
                wire::DATA if exit.is_some() && trees.len() < back.len() => {
                    tree_bytes += payload.len() as u64;
                    if tree_bound.is_some_and(|b| tree_bytes > b) {
                        // Sparse files cost the task nothing and the transfer everything: the
                        // run ends here, nothing of it kept.
                        let exit = exit.unwrap_or_default();
                        let written = tree_bytes;
                        return Ok(Exit {
                            kind: ExitKind::Limit(
                                addon_runner_api::Breach::OutputSize { limit: limit.unwrap_or(0), written }.to_string(),
                            ),
                            usage: Usage { oom_kills: exit.oom_kills, cpu_ms: exit.cpu_ms, ..Usage::default() },
                        });
                    }
                    if current.is_none() {
                        let staging = self.spec.dirs.scratch.join(format!("returned-{}", trees.len()));
                        current = Some(Receiving::start(staging, limit).map_err(|e| e.to_string())?);
                    }
                    if let Some(r) = current.as_mut() {
                        r.data(payload).await;
                    }
                }
                wire::END if exit.is_some() && trees.len() < back.len() => {
                    let r = match current.take() {
                        Some(r) => r,
                        None => {
                            let staging = self.spec.dirs.scratch.join(format!("returned-{}", trees.len()));
                            Receiving::start(staging, limit).map_err(|e| e.to_string())?
                        }
                    };
                    trees.push(r.end(&String::from_utf8_lossy(&payload)).await);
                    tree_bytes = 0;
                }
                wire::DONE if exit.is_some() && trees.len() == back.len() => break,
                wire::ERROR => {
                    return Err(format!("the task's helper failed: {}", String::from_utf8_lossy(&payload)));
                }
                other => return Err(format!("the task's helper sent frame {other} out of order")),
            }
        }
        // 4. Every tree arrived whole: only now do they replace what the run had.
        let exit = exit.unwrap_or_default();
        let mut breach: Option<String> = None;
        for (i, t) in trees.iter().enumerate() {
            match &t.outcome {
                Ok(_) => {}
                Err(TreeFailure::TooBig) => {
                    breach = Some(format!(
                        "the addon wrote more than its output size allows ({} bytes) to {}",
                        limit.unwrap_or(0),
                        ["OUTPUT_DIR", "CACHE_DIR"][i]
                    ))
                }
                Err(TreeFailure::Other(e)) => {
                    return Err(format!(
                        "{} came back damaged, so nothing of the run was kept: {e}",
                        ["OUTPUT_DIR", "CACHE_DIR"][i]
                    ))
                }
            }
        }
        if breach.is_none() {
            for (t, dir) in trees.iter().zip(&back) {
                addon_tree::replace_content(dir, &t.staging)
                    .map_err(|e| format!("keeping what the task handed back in {}: {e}", dir.display()))?;
            }
        }
        for t in &trees {
            let _ = std::fs::remove_dir_all(&t.staging);
        }
        let _ = write_frame(&mut writer, wire::ACK, &[]).await;
        let usage = Usage {
            peak_memory_bytes: exit.peak_memory_bytes,
            cpu_ms: exit.cpu_ms,
            oom_kills: exit.oom_kills,
            pids_refused: exit.pids_refused,
            network_refused: None,
            dns_queries: None,
        };
        let kind = match breach.or(exit.breach) {
            Some(why) => ExitKind::Limit(why),
            None => ExitKind::Code(exit.code),
        };
        Ok(Exit { kind, usage })
    }

    /// Why the connection to the task's helper ended early, with what swarm says of the task.
    async fn lost(&self, service: &str, ran: bool, why: &str) -> Failure {
        let state = task_state(&self.docker, service).await;
        if ran {
            format!(
                "the connection to the run's task was cut while it handed back its directories ({why}; task: {state}); \
                 nothing of them was kept"
            )
        } else {
            format!("the connection to the run's task was cut while the addon ran ({why}; task: {state})")
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn cut(what: &str, e: &io::Error) -> Failure {
    format!("{what} to the run's task: {e}")
}

/// Sends `dir` as a tar tree: `Data` frames and `End` with its digest.
async fn send_tree<W: AsyncWrite + Unpin>(w: &mut W, dir: &Path) -> io::Result<()> {
    let (tx, mut rx) = mpsc::channel(4);
    let d = dir.to_path_buf();
    let packing = tokio::task::spawn_blocking(move || addon_runner_protocol::copy::pack(&d, tx));
    let mut hash = Sha256::new();
    while let Some(chunk) = rx.recv().await {
        hash.update(&chunk);
        write_frame(w, wire::DATA, &chunk).await?;
    }
    packing.await.map_err(io::Error::other)??;
    write_frame(w, wire::END, hex::encode(hash.finalize()).as_bytes()).await
}

enum TreeFailure {
    TooBig,
    Other(String),
}

struct Received {
    staging: PathBuf,
    outcome: Result<u64, TreeFailure>,
}

/// A tree being unpacked into a staging directory as its frames arrive.
struct Receiving {
    staging: PathBuf,
    hash: Sha256,
    chunks: Option<mpsc::Sender<Vec<u8>>>,
    unpacking: tokio::task::JoinHandle<io::Result<u64>>,
}

impl Receiving {
    fn start(staging: PathBuf, limit: Option<u64>) -> io::Result<Receiving> {
        if staging.exists() {
            std::fs::remove_dir_all(&staging)?;
        }
        std::fs::create_dir_all(&staging)?;
        let (tx, rx) = mpsc::channel::<Vec<u8>>(16);
        let dest = staging.clone();
        let policy = addon_tree::UnpackPolicy { symlinks: true, max_bytes: limit, owners: false };
        let unpacking = tokio::task::spawn_blocking(move || {
            let reader = ChunkReader { rx, chunk: Vec::new(), at: 0 };
            addon_tree::unpack_tar(reader, &dest, policy).map(|u| u.bytes)
        });
        Ok(Receiving { staging, hash: Sha256::new(), chunks: Some(tx), unpacking })
    }

    async fn data(&mut self, payload: Vec<u8>) {
        self.hash.update(&payload);
        if let Some(tx) = &self.chunks {
            if tx.send(payload).await.is_err() {
                self.chunks = None; // the unpacker stopped; its error comes at the end
            }
        }
    }

    async fn end(mut self, announced: &str) -> Received {
        self.chunks = None;
        let unpacked = self.unpacking.await;
        let got = hex::encode(self.hash.finalize());
        let outcome = match unpacked {
            Err(e) => Err(TreeFailure::Other(e.to_string())),
            Ok(Err(e)) if e.kind() == io::ErrorKind::FileTooLarge => Err(TreeFailure::TooBig),
            Ok(Err(e)) => Err(TreeFailure::Other(e.to_string())),
            Ok(Ok(_)) if got != announced => {
                Err(TreeFailure::Other(format!("it arrived with digest {got}, not the {announced} it was sent with")))
            }
            Ok(Ok(bytes)) => Ok(bytes),
        };
        Received { staging: self.staging, outcome }
    }
}

struct ChunkReader {
    rx: mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.blocking_recv() {
                Some(c) => {
                    self.chunk = c;
                    self.at = 0;
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// The service's task, if it has one yet.
async fn task_of(docker: &Docker, service: &str) -> Option<bollard::models::Task> {
    let filters = HashMap::from([("service".to_string(), vec![service.to_string()])]);
    let opts = bollard::query_parameters::ListTasksOptions { filters: Some(filters) };
    docker.list_tasks(Some(opts)).await.ok()?.into_iter().next()
}

/// What swarm says of the service's task.
async fn task_state(docker: &Docker, service: &str) -> String {
    match task_of(docker, service).await {
        None => "not scheduled yet".into(),
        Some(t) => describe(&t),
    }
}

fn describe(t: &bollard::models::Task) -> String {
    let s = t.status.clone().unwrap_or_default();
    let state = s.state.map(|s| s.to_string()).unwrap_or_else(|| "unknown".into());
    let detail = s.err.or(s.message).unwrap_or_default();
    if detail.is_empty() {
        state
    } else {
        format!("{state} ({detail})")
    }
}

/// Why the task ended, if it did.
async fn task_ended(docker: &Docker, service: &str) -> Option<String> {
    let t = task_of(docker, service).await?;
    let state = t.status.as_ref().and_then(|s| s.state)?;
    matches!(
        state,
        TaskState::COMPLETE | TaskState::FAILED | TaskState::REJECTED | TaskState::SHUTDOWN | TaskState::ORPHANED
    )
    .then(|| describe(&t))
}

/// Removes a service and its task's container on this node (swarm keeps a removed job's
/// container until the node leaves the swarm).
pub async fn remove_service(docker: &Docker, id: &str) -> bool {
    let removed = docker.delete_service(id).await.is_ok();
    let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_SERVICE_ID}={id}")])]);
    for attempt in 0..6 {
        let opts = bollard::query_parameters::ListContainersOptions {
            all: true,
            filters: Some(filters.clone()),
            ..Default::default()
        };
        let list = docker.list_containers(Some(opts)).await.unwrap_or_default();
        if list.is_empty() && attempt > 0 {
            break;
        }
        for c in list {
            if let Some(cid) = c.id {
                let opts =
                    bollard::query_parameters::RemoveContainerOptions { force: true, v: true, ..Default::default() };
                if let Err(e) = docker.remove_container(&cid, Some(opts)).await {
                    tracing::debug!("removing task container {cid}: {e}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    removed
}

/// The daemon's refusal, said plainly (a node that is not a manager says how to make one).
fn service_error(e: &bollard::errors::Error) -> String {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, message } => {
            format!("{message} (HTTP {status_code})")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(dir: &Path) -> Vec<u8> {
        addon_tree::pack_tar(dir, Vec::new(), addon_tree::Links::Keep).unwrap().0
    }

    async fn receive(bytes: &[u8], announced: Option<&str>, staging: PathBuf, limit: Option<u64>) -> Received {
        let mut r = Receiving::start(staging, limit).unwrap();
        for c in bytes.chunks(1000) {
            r.data(c.to_vec()).await;
        }
        let digest = hex::encode(Sha256::digest(bytes));
        r.end(announced.unwrap_or(&digest)).await
    }

    #[tokio::test]
    async fn a_tree_is_kept_only_with_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("a")).unwrap();
        std::fs::write(src.join("a/f"), vec![1u8; 5000]).unwrap();
        let tar = tar_of(&src);
        let ok = receive(&tar, None, dir.path().join("ok"), None).await;
        assert!(matches!(ok.outcome, Ok(5000)), "a whole tree arrives");
        assert_eq!(std::fs::read(ok.staging.join("a/f")).unwrap().len(), 5000);
        let bad = receive(&tar, Some(&"0".repeat(64)), dir.path().join("bad"), None).await;
        assert!(
            matches!(&bad.outcome, Err(TreeFailure::Other(e)) if e.contains("digest")),
            "a changed tree is refused"
        );
        let cut = receive(&tar[..tar.len() / 2], None, dir.path().join("cut"), None).await;
        assert!(matches!(cut.outcome, Err(TreeFailure::Other(_))), "a cut tree is refused, whatever its digest");
        let big = receive(&tar, None, dir.path().join("big"), Some(100)).await;
        assert!(matches!(big.outcome, Err(TreeFailure::TooBig)), "a tree past the output size is a limit");
    }
}

#[cfg(test)]
mod env_tests {
    #[test]
    fn the_images_variables_never_reach_the_helper() {
        let env = super::helper_env(&["LD_PRELOAD=/evil.so".into(), "PATH=/bin".into()], "127.0.0.1:1", "t");
        assert!(env.contains(&"LD_PRELOAD=".to_string()) && env.contains(&"PATH=".to_string()), "{env:?}");
        assert!(env.contains(&"LD_AUDIT=".to_string()));
        assert!(!env.iter().any(|e| e.contains("evil")));
    }
}
