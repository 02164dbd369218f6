//! The docker runner, through the Docker Engine API (bollard); Podman's compatible API works too.
//!
//! Images are either the descriptor's `image` (pulled only when absent) or built once from the
//! addon's Dockerfile, tagged and labelled by the addon's content digest; the engine caches the
//! build, so a second run of the same content does not call it. Containers carry labels (engine,
//! run, addon) and are removed after every run, on timeout and on stop; containers of an engine
//! that died are reaped by the next one.

mod build;
mod follow;
mod settle;
pub use settle::runtime_files;
mod volumes;

pub use build::DockerImageMeta;
use build::{build, image_tag};
use follow::follow;

pub use settle::{
    AGENT_COMMAND, AGENT_READY, COMMAND as SETTLE_COMMAND, HOLD_COMMAND, IMAGE as SETTLE_IMAGE, WATCH_COMMAND,
};

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use addon_descriptors::{normalise_relative, Section};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{
    AttachContainerOptions, BuildImageOptions, CreateImageOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, RemoveImageOptions, StopContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, OnceCell};

use crate::limits::{Enforcement, Envelope, Limits};
use crate::process::{LogSink, LogStream};
use crate::runner::{
    Artifact, ArtifactData, Availability, BuildFailed, BuildSpec, Capabilities, Exit, ExitKind, RunEvent, Runner,
    RunnerError, RunnerInfo, StartSpec, Started,
};
use crate::settings::{
    check_build_network, deprecated_build_network, BuildNetwork, ComponentSettings, HumanDuration, SettingError,
    DEFAULT_BUILD_TIMEOUT,
};

pub const NAME: &str = "docker";

/// Label on everything the engine creates in docker.
pub const LABEL_MANAGED: &str = "org.addon-engine.managed";
const LABEL_ENGINE_PID: &str = "org.addon-engine.engine-pid";
const LABEL_ENGINE_START: &str = "org.addon-engine.engine-start";
const LABEL_ENGINE_HOST: &str = "org.addon-engine.engine-host";
const LABEL_RUN: &str = "org.addon-engine.run";
const LABEL_ADDON: &str = "org.addon-engine.addon";
const LABEL_DIGEST: &str = "org.addon-engine.digest";

/// The capabilities a container keeps: enough for an image's root to write the engine's
/// directories and switch to its own users; nothing that reaches the kernel or the network.
pub const CAPABILITIES: [&str; 6] = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETGID", "SETUID"];

/// The `docker` runner's settings (`docker-runner:` of the engine configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct DockerSettings {
    /// Docker API address; null: `DOCKER_HOST`, else the local socket.
    pub host: Option<String>,
    /// How long one image build may take.
    #[serde(with = "crate::settings::duration")]
    #[schemars(with = "HumanDuration")]
    pub build_timeout: Duration,
    /// User inside the container: null keeps the image's user; `engine` uses the engine's
    /// uid:gid so output files stay readable; or an explicit `uid:gid`.
    pub user: Option<String>,
    /// Deprecated: `network.build` says what every runner's builds reach. When set, it is the
    /// daemon's network for this runner's builds (`none`, `host`, a network's name), over it.
    /// Once the runner is made: the network of its builds (None: the daemon's default).
    #[schemars(skip)]
    pub build_network: Option<String>,
    /// Not a setting: under `network.build: egress` (and no `build_network` above), the egress
    /// network builds get: their RUN steps join a holder container given it.
    #[serde(skip)]
    pub build_egress: Option<crate::egress::Egress>,
    /// The engine's `addon` binary: an engine that is not root settles what a container wrote
    /// with it (see `settle`). Not a setting: the engine's.
    #[serde(skip)]
    pub helper: Option<std::path::PathBuf>,
}

impl Default for DockerSettings {
    fn default() -> Self {
        DockerSettings {
            host: None,
            build_timeout: DEFAULT_BUILD_TIMEOUT,
            user: None,
            build_network: None,
            build_egress: None,
            helper: None,
        }
    }
}

impl ComponentSettings for DockerSettings {
    const KEY: &'static str = "docker-runner";

    fn check(&self) -> Result<(), SettingError> {
        check_build_network(self.build_network.as_deref())
    }

    fn warnings(&self) -> Vec<String> {
        deprecated_build_network(Self::KEY, self.build_network.as_deref())
    }

    fn build_timeout(&self) -> Option<Duration> {
        Some(self.build_timeout)
    }
}

impl DockerSettings {
    /// The settings as configured, made whole with what is the engine's: the network of builds
    /// (egress: an egress network of the build's own, see [`DockerRunner::build`]) and the helper.
    pub fn from_context(ctx: &crate::RunnerContext) -> DockerSettings {
        let mut s: DockerSettings = ctx.sections.get();
        if s.build_network.is_none() {
            s.build_network = match ctx.build_network {
                BuildNetwork::Egress => None,
                BuildNetwork::Host => Some("host".to_string()),
                BuildNetwork::None => Some("none".to_string()),
            };
            s.build_egress = ctx.build_egress();
        }
        s.helper = ctx.helper.clone();
        s
    }
}

#[derive(Debug)]
pub struct DockerRunner {
    settings: DockerSettings,
    client: OnceCell<Result<Docker, NoDaemon>>,
    reaped: OnceCell<u64>,
    /// Whether the daemon is Podman's compatible service (asked once).
    podman: OnceCell<bool>,
    /// The `VOLUME`s of each image this runner ran (an image id's configuration never changes;
    /// a name's may, so only ids are remembered).
    volumes: Mutex<HashMap<String, Vec<String>>>,
    /// The container of each run, so that `stop` finds it.
    containers: Arc<Mutex<HashMap<String, String>>>,
}

/// What a docker artifact records beside its image id (its reference): the tag it was built as.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Recorded {
    image: String,
}

fn setup(message: impl Into<String>) -> RunnerError {
    RunnerError::setup(NAME, message)
}

/// The daemon cannot be used (remembered per runner: every later call says the same).
#[derive(Debug, Clone, thiserror::Error)]
pub enum NoDaemon {
    #[error("no Docker daemon at {address}: {source}")]
    Api {
        address: String,
        #[source]
        source: Arc<bollard::errors::Error>,
    },
    #[error("no Docker daemon at {address}: no answer within 10s")]
    Silent { address: String },
    /// The plain reason the unix socket cannot be used (missing, permission denied), which the
    /// HTTP client's error hides.
    #[error("no Docker daemon at {address}: {}: {source}{}", socket.display(), socket_hint(source))]
    Socket {
        address: String,
        socket: std::path::PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
}

fn socket_hint(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        " (run as root or as a member of the docker group)"
    } else {
        ""
    }
}

/// What keeps a container from being prepared: the image's `VOLUME`s and user, and the
/// helper containers of an engine that is not root.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error("inspecting image {image}: {source}")]
    Inspect {
        image: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("reading the VOLUMEs of {image}: {source}")]
    VolumesOf {
        image: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("reading {path} of the image: {source}")]
    ReadVolume {
        path: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("the image's VOLUME {path} holds more than the run's output size")]
    VolumeTooLarge { path: String },
    #[error("unpacking {path} of the image: {source}")]
    UnpackVolume {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the image's user: {0}")]
    ImageUser(#[source] crate::oci::bundle::UserError),
    /// Giving the run's directories to the image's user (`USER` or `docker-runner.user`) failed.
    #[error("giving the run's directories to the image's user {user}: {source}")]
    GiveDirs {
        user: String,
        #[source]
        source: Box<DockerError>,
    },
    #[error("ldd {}: {source} (apt-get install libc-bin)", helper.display())]
    Ldd {
        helper: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ldd {} names no dynamic loader: {said}", helper.display())]
    NoLoader { helper: std::path::PathBuf, said: String },
    #[error("{0}")]
    PackImage(#[source] std::io::Error),
    #[error("making the engine's image {}: {source}", settle::IMAGE)]
    MakeImage {
        #[source]
        source: bollard::errors::Error,
    },
    /// A call about a helper container failed: `doing` says which (`creating the settling container`).
    #[error("{doing}: {source}")]
    Helper {
        doing: &'static str,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("the settling container did not finish within 10 minutes")]
    SettleTimeout,
    /// The network agent (an unprivileged engine's egress network) did not come up.
    #[error("the egress network's agent container: {0}")]
    Agent(String),
    #[error("settling the run's directories failed (exit {code}): {said}")]
    SettleFailed { code: i64, said: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tree(#[from] addon_tree::TreeError),
}

impl DockerRunner {
    pub fn new(settings: DockerSettings) -> DockerRunner {
        DockerRunner {
            settings,
            client: OnceCell::new(),
            reaped: OnceCell::new(),
            podman: OnceCell::new(),
            volumes: Mutex::default(),
            containers: Arc::default(),
        }
    }

    /// Whether this engine gives docker addons egress networks: slirp4netns, nft and its helper
    /// binary (the holder's init, and the agent of an engine that is not root, which cannot
    /// enter the holder's network namespace itself), and /dev/net/tun for the agent.
    pub fn gives_egress(&self) -> Result<(), String> {
        crate::egress::tools().map_err(|e| e.to_string())?;
        if !crate::sandbox::is_root() && !Path::new("/dev/net/tun").exists() {
            return Err("the docker runner's egress network needs /dev/net/tun on the host".into());
        }
        match &self.settings.helper {
            Some(h) if h.is_file() => Ok(()),
            _ => Err("the docker runner's egress network needs the engine's helper, the `addon` binary (set nspawn.helper, or put `addon` in PATH)".into()),
        }
    }

    /// The address used: setting, then DOCKER_HOST, then the local socket.
    pub fn address(&self) -> String {
        self.settings
            .host
            .clone()
            .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string())
    }

    /// Connects once, negotiating the API version.
    pub async fn client(&self) -> Result<&Docker, NoDaemon> {
        let r = self
            .client
            .get_or_init(|| async {
                let address = self.address();
                let docker =
                    connect(&address).map_err(|e| NoDaemon::Api { address: address.clone(), source: Arc::new(e) })?;
                tokio::time::timeout(Duration::from_secs(10), docker.negotiate_version())
                    .await
                    .map_err(|_| NoDaemon::Silent { address: address.clone() })?
                    .map_err(|e| match socket_problem(&address) {
                        Some((socket, source)) => {
                            NoDaemon::Socket { address: address.clone(), socket, source: Arc::new(source) }
                        }
                        None => NoDaemon::Api { address: address.clone(), source: Arc::new(e) },
                    })
            })
            .await;
        r.as_ref().map_err(Clone::clone)
    }

    /// What this runner's builds reach: `none`, `host`, `egress` (an egress network of their
    /// own), a network's name of the daemon, or `default` (the daemon's bridge).
    pub fn build_network_name(&self) -> String {
        match (&self.settings.build_network, &self.settings.build_egress) {
            (Some(mode), _) => mode.clone(),
            (None, Some(_)) if self.gives_egress().is_ok() => "egress".into(),
            (None, Some(_)) => "none".into(),
            (None, None) => "default".into(),
        }
    }

    /// Whether the daemon is Podman's compatible service (asked once).
    async fn is_podman(&self, docker: &Docker) -> bool {
        *self
            .podman
            .get_or_init(|| async {
                docker.version().await.ok().is_some_and(|v| {
                    let platform = v.platform.map(|p| p.name).unwrap_or_default();
                    let components = v.components.unwrap_or_default().into_iter().map(|c| c.name);
                    std::iter::once(platform).chain(components).any(|n| n.to_lowercase().contains("podman"))
                })
            })
            .await
    }

    /// The labels of the engine's containers for `addon` (a run's add its run id): a later
    /// engine reaps them by these once this one is gone.
    fn engine_labels(addon: &str) -> HashMap<String, String> {
        let me = std::process::id() as i32;
        HashMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_ENGINE_PID.to_string(), me.to_string()),
            (LABEL_ENGINE_START.to_string(), process_start(me).unwrap_or_default()),
            (LABEL_ENGINE_HOST.to_string(), hostname()),
            (LABEL_ADDON.to_string(), addon.to_string()),
        ])
    }

    /// A holder container ([`settle::hold_network`]) given an egress network: its id and the
    /// network (finished once the holder is removed). A root engine gives it the network itself;
    /// one that is not root through an agent container ([`settle::egress_agent`]). Nothing is
    /// left when it fails.
    async fn egress_holder(
        &self,
        docker: &Docker,
        labels: HashMap<String, String>,
        egress: &crate::egress::Egress,
    ) -> Result<(String, HeldNet), RunnerError> {
        let helper = self.settings.helper.clone().unwrap_or_default();
        let holder = settle::hold_network(docker, &helper, labels.clone()).await.map_err(|e| setup(e.to_string()))?;
        let why = if crate::sandbox::is_root() {
            let (pid, e) = (holder.pid, egress.clone());
            let attached = tokio::task::spawn_blocking(move || crate::egress::EgressNet::attach(pid, &e, false)).await;
            match attached {
                Ok(Ok(net)) => return Ok((holder.id, HeldNet::Engine(net))),
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            }
        } else {
            match settle::egress_agent(docker, &helper, &holder.id, egress, labels).await {
                Ok(agent) => return Ok((holder.id, HeldNet::Agent(agent))),
                Err(e) => e.to_string(),
            }
        };
        settle::remove_helper(docker, &holder.id).await;
        Err(setup(why))
    }

    /// Removes containers left by dead engines, once per runner instance.
    pub async fn reap_once(&self, docker: &Docker) -> u64 {
        *self.reaped.get_or_init(|| reap(docker)).await
    }

    async fn docker(&self) -> Result<&Docker, RunnerError> {
        self.client().await.map_err(|e| RunnerError::Unavailable { runner: NAME.into(), detail: e.to_string() })
    }

    /// The image to run: the built one, or the descriptor's (pulled only when absent).
    async fn image(&self, docker: &Docker, spec: &StartSpec) -> Result<String, RunnerError> {
        if let Some(artifact) = &spec.artifact {
            return Ok(artifact.reference.clone());
        }
        let image = spec
            .descriptor
            .docker_image()
            .ok_or_else(|| setup(format!("{} names no image and was not built", spec.addon.label())))?;
        addon_descriptors::image_reference(image).map_err(|why| setup(format!("runner.docker.image: {why}")))?;
        if docker.inspect_image(image).await.is_err() {
            if self.settings.build_network.as_deref() == Some("none") {
                // Fetching the image is part of getting the addon, which `network.build` governs.
                return Err(setup(format!(
                    "image {image} is not present here and is not pulled: builds have no network \
                     (network.build: none); load it with `docker load` or `docker pull` where there is one"
                )));
            }
            tracing::info!(addon = %spec.addon.label(), "pulling image {image}");
            let opts = CreateImageOptions { from_image: Some(image.to_string()), ..Default::default() };
            let mut pull = docker.create_image(Some(opts), None, None);
            while let Some(step) = pull.next().await {
                step.map_err(|e| {
                    setup(format!("image {image} is not present here and pulling it failed (offline?): {e}"))
                })?;
            }
        }
        Ok(image.to_string())
    }
}

fn connect(addr: &str) -> Result<Docker, bollard::errors::Error> {
    if let Some(path) = addr.strip_prefix("unix://") {
        Docker::connect_with_unix(path, 600, bollard::API_DEFAULT_VERSION)
    } else if let Some(rest) = addr.strip_prefix("tcp://") {
        Docker::connect_with_http(&format!("http://{rest}"), 600, bollard::API_DEFAULT_VERSION)
    } else if addr.starts_with('/') {
        Docker::connect_with_unix(addr, 600, bollard::API_DEFAULT_VERSION)
    } else {
        Docker::connect_with_http(addr, 600, bollard::API_DEFAULT_VERSION)
    }
}

/// The plain reason a unix socket cannot be used (missing, permission denied), which the HTTP
/// client's error hides: the socket and the error of connecting to it.
fn socket_problem(addr: &str) -> Option<(std::path::PathBuf, std::io::Error)> {
    let path = addr.strip_prefix("unix://").or_else(|| addr.starts_with('/').then_some(addr))?;
    std::os::unix::net::UnixStream::connect(path).err().map(|e| (path.into(), e))
}

/// Removes containers whose engine is gone (labelled with a pid that no longer runs the same
/// engine start).
async fn reap(docker: &Docker) -> u64 {
    let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_MANAGED}=true")])]);
    let opts = ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
    let Ok(list) = docker.list_containers(Some(opts)).await else { return 0 };
    let mut removed = 0;
    for c in list {
        let labels = c.labels.unwrap_or_default();
        // Only what an engine started names its engine: a container of someone else's made
        // from one of the engine's images inherits the image's `managed` label but no pid (the
        // swarm plugin's task containers are such; removing them killed their runs).
        if !labels.contains_key(LABEL_ENGINE_PID) {
            continue;
        }
        // A daemon may serve engines on other hosts; their pids mean nothing here.
        if labels.get(LABEL_ENGINE_HOST).is_some_and(|h| *h != hostname()) {
            continue;
        }
        let pid: i32 = labels.get(LABEL_ENGINE_PID).and_then(|p| p.parse().ok()).unwrap_or(0);
        let start = labels.get(LABEL_ENGINE_START).cloned().unwrap_or_default();
        if pid > 0 && process_start(pid).is_some_and(|s| s == start) {
            continue; // its engine is alive
        }
        if let Some(id) = c.id {
            tracing::warn!("removing container {id} left by a dead engine (pid {pid})");
            let opts = RemoveContainerOptions { force: true, v: true, ..Default::default() };
            if docker.remove_container(&id, Some(opts)).await.is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

use crate::procfs::hostname;

/// The start time of a process (field 22 of /proc/PID/stat), to tell a reused pid apart.
use crate::procfs::process_start;

/// The numeric user and group the container `id` runs as when that is not root (which may
/// write anything it is given) or the engine's own user (which owns the run's directories):
/// `spec` is a docker `--user` (`name`, `uid`, `name:group`, `uid:gid`), names read from the
/// container's `/etc/passwd` and `/etc/group` as Docker reads them.
async fn container_user(docker: &Docker, id: &str, spec: &str) -> Result<Option<(u32, u32)>, DockerError> {
    let numeric = spec.split(':').all(|p| p.is_empty() || p.parse::<u32>().is_ok());
    let (passwd, group) = if numeric {
        (String::new(), String::new())
    } else {
        (volumes::small_file(docker, id, "/etc/passwd").await, volumes::small_file(docker, id, "/etc/group").await)
    };
    let user = crate::oci::bundle::resolve_user_in(&passwd, &group, spec).map_err(DockerError::ImageUser)?;
    let engine = addon_tree::current_owner();
    Ok((user.uid != 0 && (user.uid, user.gid) != engine).then_some((user.uid, user.gid)))
}

/// Containers removed when this is dropped (in the background), unless `ids` was emptied: what a
/// cancelled future would otherwise leave until the engine ends.
struct Leftovers {
    docker: Docker,
    ids: Vec<String>,
}

impl Drop for Leftovers {
    fn drop(&mut self) {
        let ids = std::mem::take(&mut self.ids);
        if ids.is_empty() {
            return;
        }
        let docker = self.docker.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                for id in ids {
                    settle::remove_helper(&docker, &id).await;
                }
            });
        }
    }
}

/// What gives a holder container its egress network.
enum HeldNet {
    /// The engine itself (root).
    Engine(crate::egress::EgressNet),
    /// An agent container (an engine that is not root).
    Agent(settle::Agent),
}

impl HeldNet {
    /// The agent's container, if any.
    fn agent_id(&self) -> Option<String> {
        match self {
            HeldNet::Engine(_) => None,
            HeldNet::Agent(a) => Some(a.id.clone()),
        }
    }

    /// Stops the network; what it saw.
    async fn finish(self, docker: &Docker) -> crate::egress::EgressUse {
        match self {
            HeldNet::Engine(net) => tokio::task::spawn_blocking(move || net.finish()).await.unwrap_or_default(),
            HeldNet::Agent(agent) => settle::stop_agent(docker, agent).await,
        }
    }
}

/// Removes the images of pruned cache entries.
pub async fn remove_image(docker: &Docker, id: &str) -> Result<(), bollard::errors::Error> {
    docker.remove_image(id, Some(RemoveImageOptions { force: true, ..Default::default() }), None).await.map(|_| ())
}

#[async_trait::async_trait]
impl Runner for DockerRunner {
    fn info(&self) -> RunnerInfo {
        let capabilities = Capabilities {
            isolates_network: true,
            isolates_filesystem: true,
            builds: true,
            needs_daemon: true,
            // Docker 20.10 has no user namespace per container: its root is the host's, with
            // the six capabilities above and no new privileges.
            host_root: true,
            ptrace_children: true,
            egress: self.gives_egress().is_ok(),
            ..Capabilities::SHIPPED
        };
        RunnerInfo::shipped(NAME, &[Section::Docker], capabilities)
    }

    async fn probe(&self) -> Availability {
        let addr = self.address();
        let docker = match self.client().await {
            Ok(d) => d,
            Err(e) => return Availability { available: false, version: None, detail: e.to_string() },
        };
        self.reap_once(docker).await;
        match docker.version().await {
            Ok(v) => {
                let version = format!(
                    "{} {} (API {})",
                    v.platform
                        .map(|p| p.name)
                        .filter(|n| !n.trim().is_empty())
                        .unwrap_or_else(|| "Docker Engine".into()),
                    v.version.unwrap_or_default(),
                    v.api_version.unwrap_or_default()
                );
                Availability {
                    available: true,
                    version: Some(version),
                    detail: format!(
                        "Docker API at {addr}; limits through the API (memory, pids, cpus; output size watched); \
                         no-new-privileges, capabilities {}; builds' network: {}",
                        CAPABILITIES.join(","),
                        self.build_network_name()
                    ),
                }
            }
            Err(e) => {
                Availability { available: false, version: None, detail: format!("no Docker daemon at {addr}: {e}") }
            }
        }
    }

    async fn cache_key(&self, spec: &BuildSpec) -> Result<Option<BTreeMap<String, String>>, RunnerError> {
        if spec.descriptor.docker_image().is_some() {
            return Ok(None); // a named image is run as is
        }
        Ok(Some(BTreeMap::from([
            ("digest".to_string(), spec.addon.digest.clone()),
            ("dockerfile".to_string(), spec.descriptor.dockerfile().to_string()),
            ("docker-host".to_string(), self.address()),
            // What the build reached is part of what it made, and of why it failed (a failure
            // remembered under `none` is not one under another setting).
            ("build-network".to_string(), self.build_network_name()),
        ])))
    }

    async fn build(&self, spec: &BuildSpec, log: LogSink) -> Result<Artifact, RunnerError> {
        let docker = self.docker().await?;
        let dockerfile = spec.descriptor.dockerfile().to_string();
        normalise_relative(&dockerfile).map_err(|why| setup(format!("runner.docker.build `{dockerfile}` {why}")))?;
        let label = spec.addon.label();
        let tag = image_tag(&spec.addon.name, spec.addon.short_digest());
        let s = &self.settings;
        // Under `network.build: egress` the build's RUN steps join a holder container given an
        // egress network (the classic builder runs each step with `network_mode: container:ID`,
        // and with the holder's resolv.conf): the internet, never the host or its network. An
        // engine that cannot make one builds with no network, and a build that fails for want of
        // one says why.
        let mut held = None;
        let net = match (&s.build_network, &s.build_egress) {
            (Some(mode), _) => build::BuildNet { mode: Some(mode.clone()), offline_why: None },
            (None, Some(_)) if self.is_podman(docker).await => build::BuildNet {
                mode: Some("none".into()),
                offline_why: Some(
                    "builds get no network here: network.build: egress, and Podman's compatible API builds with \
                     buildah, whose steps cannot join the engine's egress network through it; network.build: host \
                     gives RUN steps the host's network"
                        .into(),
                ),
            },
            (None, Some(egress)) => match self.gives_egress() {
                Ok(()) => {
                    let (id, net) = self.egress_holder(docker, Self::engine_labels(&label), egress).await?;
                    let mode = format!("container:{id}");
                    held = Some((id, net));
                    build::BuildNet { mode: Some(mode), offline_why: None }
                }
                Err(why) => build::BuildNet {
                    mode: Some("none".into()),
                    offline_why: Some(format!(
                        "builds get no network here: network.build: egress, and {why}; network.build: host \
                         gives RUN steps the host's network"
                    )),
                },
            },
            (None, None) => build::BuildNet { mode: None, offline_why: None },
        };
        // Should the build be dropped mid-way (cancelled), its holder (and agent) go anyway.
        let mut guard = Leftovers {
            docker: docker.clone(),
            ids: held
                .as_ref()
                .map(|(id, net): &(String, HeldNet)| std::iter::once(id.clone()).chain(net.agent_id()).collect())
                .unwrap_or_default(),
        };
        let built =
            build(docker, &spec.addon_dir, &dockerfile, &tag, &spec.addon.digest, &label, s.build_timeout, &net, &log)
                .await;
        guard.ids.clear();
        if let Some((id, net)) = held {
            let used = net.finish(docker).await;
            settle::remove_helper(docker, &id).await;
            if used.refused > 0 {
                log(
                    LogStream::Stderr,
                    &format!(
                        "build: the build's egress network refused {} packets (to the host, its network or \
                         addresses never reachable)",
                        used.refused
                    ),
                );
            }
        }
        let meta = built.map_err(|failed| failed.into_error(NAME, &label))?;
        let data = ArtifactData::of(&Recorded { image: meta.image }).map_err(|e| setup(e.to_string()))?;
        Ok(Artifact { reference: meta.id, size: meta.size, data })
    }

    async fn artifact_valid(&self, artifact: &Artifact) -> bool {
        match self.client().await {
            Ok(docker) => docker.inspect_image(&artifact.reference).await.is_ok(),
            Err(_) => false,
        }
    }

    async fn start(&self, spec: StartSpec) -> Result<Started, RunnerError> {
        let egress = match &spec.network {
            crate::egress::Network::Egress(e) => {
                self.gives_egress().map_err(setup)?;
                Some(e.clone())
            }
            _ => None,
        };
        let host_network = spec.network == crate::egress::Network::Host;
        let docker = self.docker().await?;
        self.reap_once(docker).await;
        let image = self.image(docker, &spec).await?;
        // The image's own HOME is kept, as Docspell does: images often pre-compile into it.
        let env: Vec<String> = spec
            .env_in(&crate::sandbox::Mounts::mnt(), true)
            .into_iter()
            .filter(|(k, _)| k != "PATH") // the image's PATH, not the host's
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let user = match self.settings.user.as_deref() {
            Some("engine") => {
                // SAFETY: getters without preconditions.
                let (u, g) = unsafe { (libc::geteuid(), libc::getegid()) };
                Some(format!("{u}:{g}"))
            }
            other => other.map(str::to_string),
        };
        let mut labels = Self::engine_labels(&spec.addon.label());
        labels.insert(LABEL_RUN.to_string(), spec.run_id.clone());
        let bind = |host: &Path, inside: &str| format!("{}:{inside}", host.display());
        let limits = spec.limits;
        let podman = self.is_podman(docker).await;
        // No file may grow past the output size (RLIMIT_FSIZE, as in host sandboxes): a single
        // file fills no faster than the limit allows. Not with Podman, which then replaces its
        // configured limits with ones the host refuses.
        let ulimits = limits.output_size.filter(|_| !podman).map(|size| {
            let size = size.min(i64::MAX as u64) as i64;
            vec![bollard::models::ResourcesUlimits { name: Some("fsize".into()), soft: Some(size), hard: Some(size) }]
        });
        // An engine that is not root cannot take back what the container's users write: a
        // helper container does it after the run, or the addon does not run.
        let settle_with = if crate::sandbox::is_root() {
            None
        } else {
            let helper = self.settings.helper.clone().filter(|h| h.is_file()).ok_or_else(|| {
                setup(
                    "the engine is not root, so what the container writes must be given back to the engine's user \
                     by the engine's helper, the `addon` binary, which was not found (set nspawn.helper, or put \
                     `addon` in PATH)",
                )
            })?;
            Some(helper)
        };
        let mut binds = vec![
            bind(&spec.dirs.work, "/mnt/work"),
            bind(&spec.dirs.output, "/mnt/output"),
            bind(&spec.dirs.cache, "/mnt/cache"),
        ];
        // An egress run's container joins the network namespace of a holder container, given its
        // egress network before the addon's container starts; names resolve through the engine.
        let mut network = None;
        if let Some(e) = &egress {
            let resolv = spec.dirs.scratch.join("resolv.conf");
            fs_err::create_dir_all(&spec.dirs.scratch)
                .and_then(|()| crate::egress::write_resolv_conf(&resolv))
                .map_err(|e| setup(format!("the egress network's resolv.conf: {e}")))?;
            binds.push(format!("{}:/etc/resolv.conf:ro", resolv.display()));
            network = Some(self.egress_holder(docker, labels.clone(), e).await?);
        }
        let holder_id = network.as_ref().map(|(id, _)| id.clone());
        // The holder and, for an engine that is not root, its agent: removed on every path.
        let holder_ids: Vec<String> = network
            .as_ref()
            .map(|(id, net)| std::iter::once(id.clone()).chain(net.agent_id()).collect())
            .unwrap_or_default();
        let remove_holder = |docker: Docker, ids: Vec<String>| async move {
            for id in ids {
                settle::remove_helper(&docker, &id).await;
            }
        };
        let mut watched = [&spec.dirs.work, &spec.dirs.output, &spec.dirs.cache].map(|p| p.to_path_buf()).to_vec();
        // The image's VOLUMEs are directories of the run (filled from the image), never
        // anonymous volumes of the daemon that outlive the run and count against nothing.
        let known = self.volumes.lock().unwrap_or_else(|e| e.into_inner()).get(&image).cloned();
        let volume_paths = match known {
            Some(v) => v,
            None => {
                let v = volumes::of(docker, &image).await.map_err(|e| setup(e.to_string()))?;
                if image.starts_with("sha256:") {
                    self.volumes.lock().unwrap_or_else(|e| e.into_inner()).insert(image.clone(), v.clone());
                }
                v
            }
        };
        let mut volume_dirs = Vec::new();
        let mut volume_mounts = Vec::new();
        if !volume_paths.is_empty() {
            let dir = spec.dirs.scratch.join("docker-volumes");
            let filled = volumes::fill(docker, &image, &volume_paths, &dir, labels.clone(), limits.output_size)
                .await
                .map_err(|e| setup(e.to_string()))?;
            for (host, inside) in filled {
                // A mount, not a `host:inside` string: an image's path may hold `:` or `,`.
                volume_mounts.push(bollard::models::Mount {
                    target: Some(inside),
                    source: Some(host.display().to_string()),
                    typ: Some(bollard::models::MountType::BIND),
                    ..Default::default()
                });
                watched.push(host.clone());
                volume_dirs.push(host);
            }
        }
        let run_as = user.clone();
        let body = ContainerCreateBody {
            image: Some(image.clone()),
            cmd: Some(spec.args.clone()),
            env: Some(env),
            working_dir: Some("/mnt/work".into()),
            user,
            labels: Some(labels.clone()),
            host_config: Some(HostConfig {
                binds: Some(binds),
                mounts: (!volume_mounts.is_empty()).then_some(volume_mounts),
                network_mode: Some(match (&holder_id, host_network) {
                    (Some(id), _) => format!("container:{id}"),
                    (None, true) => "host".into(),
                    (None, false) => "none".into(),
                }),
                // Least privilege: no new privileges (setuid binaries stay what they are), and of
                // Docker's default capabilities only those an addon needs to write its mounted
                // directories as its image's user (no raw sockets, mknod, chroot, ...). The
                // daemon's default seccomp profile stays on.
                security_opt: Some(vec!["no-new-privileges:true".into()]),
                cap_drop: Some(vec!["ALL".into()]),
                cap_add: Some(CAPABILITIES.iter().map(|c| c.to_string()).collect()),
                // The envelope, through the runtime: memory without swap beyond it, processes and
                // CPU. (No ulimits: naming one makes Podman replace its configured defaults with
                // values the host refuses; the output size is watched on the mounts instead.)
                memory: limits.memory.map(|m| m as i64),
                memory_swap: limits.memory.map(|m| m as i64),
                pids_limit: limits.pids.map(|p| p as i64),
                nano_cpus: limits.cpus.map(|c| (c * 1e9) as i64),
                ulimits,
                // The daemon's copy of the container's output is bounded too (the engine reads
                // it only should the attached stream break). Podman keeps its own defaults.
                log_config: (!podman).then(|| bollard::models::HostConfigLogConfig {
                    typ: Some("json-file".into()),
                    config: Some(HashMap::from([
                        ("max-size".to_string(), "64m".to_string()),
                        ("max-file".to_string(), "1".to_string()),
                    ])),
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        // An engine that is not root cannot see what the container's processes hold open after
        // unlinking it: a watcher tells, from a PID namespace of its own that the container
        // joins (so it watches from the first instruction, and whatever the addon leaves running
        // dies when the watcher is removed).
        let watcher = match &settle_with {
            Some(helper) => match settle::watch(docker, helper, &watched, &limits, labels.clone()).await {
                Ok(w) => Some(w),
                Err(e) => {
                    remove_holder(docker.clone(), holder_ids.clone()).await;
                    return Err(setup(format!(
                        "{e}; without it the run's disk use could not be bounded, so it does not run"
                    )));
                }
            },
            None => None,
        };
        let mut body = body;
        if let (Some(w), Some(hc)) = (&watcher, body.host_config.as_mut()) {
            hc.pid_mode = Some(format!("container:{}", w.id));
        }
        let created =
            match docker.create_container(None::<bollard::query_parameters::CreateContainerOptions>, body).await {
                Ok(c) => c,
                Err(e) => {
                    if let Some(w) = watcher {
                        w.remove(docker).await;
                    }
                    remove_holder(docker.clone(), holder_ids.clone()).await;
                    return Err(setup(format!("creating a container from {image}: {e}")));
                }
            };
        let id = created.id;
        let watcher_id =
            watcher.as_ref().map(|w| w.id.clone()).into_iter().chain(holder_ids.clone()).collect::<Vec<_>>();
        let remove = move |docker: Docker, id: String| {
            let watcher_id = watcher_id.clone();
            async move {
                // Removed on every path. (Not auto-remove: Podman removes such a container before
                // its exit code can be read.) The watcher after it: its PID namespace, and what
                // is left in it, ends then; and the holder of its network.
                for id in std::iter::once(id).chain(watcher_id) {
                    let opts = RemoveContainerOptions { force: true, v: true, ..Default::default() };
                    if let Err(e) = docker.remove_container(&id, Some(opts)).await {
                        tracing::warn!("removing container {id}: {e}");
                    }
                }
            }
        };
        // An image that runs as a user of its own (`USER appuser`) writes its output, work and
        // cache directories as that user, as it would in Docker's own volumes.
        let handed = async {
            let spec_user = match run_as {
                Some(u) => u,
                None => volumes::user_of(docker, &image).await?,
            };
            let Some(who) = container_user(docker, &id, &spec_user).await? else { return Ok(()) };
            let dirs: [&Path; 3] = [&spec.dirs.work, &spec.dirs.output, &spec.dirs.cache];
            let given = match &settle_with {
                None => crate::sandbox::claim(&dirs, crate::sandbox::Identity { uid: who.0, gid: who.1 })
                    .map_err(DockerError::from),
                Some(helper) => {
                    let trees: Vec<settle::Tree> =
                        dirs.iter().map(|d| settle::Tree { host: d.to_path_buf(), keep_symlinks: true }).collect();
                    settle::run(docker, helper, who, &trees, labels.clone()).await
                }
            };
            given.map_err(|e| DockerError::GiveDirs { user: spec_user, source: Box::new(e) })
        }
        .await;
        if let Err(e) = handed {
            remove(docker.clone(), id.clone()).await;
            return Err(setup(e.to_string()));
        }
        // The streams are attached before the container starts, as the docker CLI does: following
        // the logs after `start` misses the last unterminated writes of a short-lived container on
        // Docker 20.10 (an addon's JSON, printed without a newline just before it exits).
        let attach =
            AttachContainerOptions { stdout: true, stderr: true, stream: true, logs: false, ..Default::default() };
        let output = match docker.attach_container(&id, Some(attach)).await {
            Ok(a) => a.output,
            Err(e) => {
                remove(docker.clone(), id.clone()).await;
                return Err(setup(format!("attaching to container {id}: {e}")));
            }
        };
        // The watcher measures the run's directories (the engine may not be able to read what
        // the container's users made there): the engine walks only what it can. Their baseline
        // is taken before the container starts: all it writes from its first instruction is its
        // own, however slow the engine is to look (the VOLUMEs come filled from the image).
        let watched = if watcher.is_some() { Vec::new() } else { watched };
        let only_output =
            Limits { output_size: limits.output_size, output_entries: limits.output_entries, ..Default::default() };
        let no_cgroup = Enforcement::Rlimits { why: "the container runtime enforces the rest".into() };
        let envelope = Envelope::new(&id, only_output, &no_cgroup, watched);
        if let Err(e) = docker.start_container(&id, None::<bollard::query_parameters::StartContainerOptions>).await {
            remove(docker.clone(), id.clone()).await;
            return Err(setup(format!("starting container {id}: {e}")));
        }
        self.containers.lock().unwrap_or_else(|e| e.into_inner()).insert(spec.run_id.clone(), id.clone());
        let (tx, rx) = mpsc::channel(64);
        let docker = docker.clone();
        let containers = self.containers.clone();
        let run_id = spec.run_id.clone();
        let mut trees = vec![
            settle::Tree { host: spec.dirs.work.clone(), keep_symlinks: true },
            settle::Tree { host: spec.dirs.output.clone(), keep_symlinks: false },
            settle::Tree { host: spec.dirs.cache.clone(), keep_symlinks: true },
        ];
        trees.extend(volume_dirs.into_iter().map(|host| settle::Tree { host, keep_symlinks: true }));
        let unlinked = watcher.map(|w| w.report);
        tokio::spawn(async move {
            let mut exit = follow(&docker, &id, output, &tx, limits, envelope, unlinked).await;
            if let Some((_, net)) = network {
                let seen = net.finish(&docker).await;
                exit.usage.network_refused = Some(seen.refused);
                exit.usage.dns_queries = Some(seen.dns_queries);
            }
            containers.lock().unwrap_or_else(|e| e.into_inner()).remove(&run_id);
            remove(docker.clone(), id).await;
            if let Some(helper) = settle_with {
                if let Err(e) = settle::run(&docker, &helper, addon_tree::current_owner(), &trees, labels).await {
                    let _ = tx.send(RunEvent::Failed(setup(e.to_string()))).await;
                    return;
                }
            }
            let _ = tx.send(RunEvent::Exited(exit)).await;
        });
        Ok(Started { sandbox: "docker".into(), events: rx })
    }

    async fn stop(&self, run_id: &str, grace: Duration) -> Result<(), RunnerError> {
        let Some(id) = self.containers.lock().unwrap_or_else(|e| e.into_inner()).get(run_id).cloned() else {
            return Ok(()); // already ended
        };
        let docker = self.docker().await?;
        let t = grace.as_secs() as i32;
        let _ = docker.stop_container(&id, Some(StopContainerOptions { t: Some(t), ..Default::default() })).await;
        Ok(())
    }

    async fn release(&self, artifact: &Artifact) -> Result<(), RunnerError> {
        let docker = self.docker().await?;
        remove_image(docker, &artifact.reference)
            .await
            .map_err(|e| setup(format!("removing image {}: {e}", artifact.reference)))
    }

    async fn reap(&self) -> Result<u64, RunnerError> {
        let docker = self.docker().await?;
        Ok(reap(docker).await)
    }
}

type OutputStream = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<bollard::container::LogOutput, bollard::errors::Error>> + Send>,
>;
