//! `addon-runner-swarm`: docker addons as Docker Swarm jobs. The image is built once (the docker
//! runner's build, under the engine's cache and locks), given the task helper
//! (`addon-swarm-task`) in a layer of its own and pushed to the cluster's registry; a run is a
//! `replicated-job` service of that image by digest. The run's directories travel over one TCP
//! connection the task's helper opens to this plugin with a one-run token ([`wire`]), so the
//! task may run on any node that reaches the plugin and the registry.
//!
//! Design, and what several hosts still need: docs/swarm.md.

pub mod task;
pub mod wire;

mod bundle;
mod run;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use addon_descriptors::Section;
use addon_runner_api::{
    Artifact, ArtifactData, Availability, BuildSpec, Capabilities, LogSink, LogStream, Runner, RunnerError, RunnerInfo,
    StartSpec, Started,
};
use addon_runner_protocol::{FieldError, Plugin};
use addon_runners::docker::{DockerRunner, DockerSettings};
use bollard::auth::DockerCredentials;
use bollard::Docker;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

pub const NAME: &str = "swarm";

/// Labels of the plugin's services and their tasks' containers: a later plugin removes those
/// whose plugin process is gone.
pub const LABEL_MANAGED: &str = "org.addon-engine.swarm";
const LABEL_PID: &str = "org.addon-engine.swarm.plugin-pid";
const LABEL_START: &str = "org.addon-engine.swarm.plugin-start";
const LABEL_HOST: &str = "org.addon-engine.swarm.plugin-host";
const LABEL_RUN: &str = "org.addon-engine.swarm.run";
const LABEL_ADDON: &str = "org.addon-engine.swarm.addon";
/// Swarm's own label on a task's container.
const LABEL_SERVICE_ID: &str = "com.docker.swarm.service.id";

/// `plugins.NAME.config` of the swarm plugin.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct SwarmConfig {
    /// Docker API address of a swarm manager; null: `DOCKER_HOST`, else the local socket.
    pub host: Option<String>,
    /// The cluster's registry (`host:port`): images are pushed there and tasks pull them by
    /// digest. Its TLS is the daemons' (`/etc/docker/certs.d/HOST:PORT/`).
    pub registry: String,
    /// Repository prefix inside the registry.
    pub repository: String,
    /// Registry user, when it asks for one.
    pub registry_username: Option<String>,
    /// File holding the registry password (not the password: configuration is often shown).
    pub registry_password_file: Option<PathBuf>,
    /// Where the plugin listens for its tasks' helpers (`address:port`, port 0 for a free one);
    /// null: the gateway of the manager's default bridge network (`172.17.0.1:0` usually), which
    /// a pure run's task reaches from that bridge, enough for a single-node swarm.
    pub listen: Option<String>,
    /// The address tasks connect to (`host:port`); null: the listening address.
    pub advertise: Option<String>,
    /// How long a task may take to be scheduled, pull its image and connect.
    #[serde(with = "crate::human_duration")]
    pub start_timeout: Duration,
    /// How long an image build may take.
    #[serde(with = "crate::human_duration")]
    pub build_timeout: Duration,
    /// Network of image builds (`none` to cut it); null: the daemon's default.
    pub build_network: Option<String>,
}

impl Default for SwarmConfig {
    fn default() -> Self {
        SwarmConfig {
            host: None,
            registry: "127.0.0.1:5000".into(),
            repository: "addon-engine".into(),
            registry_username: None,
            registry_password_file: None,
            listen: None,
            advertise: None,
            start_timeout: Duration::from_secs(300),
            build_timeout: crate::DEFAULT_BUILD_TIMEOUT,
            build_network: None,
        }
    }
}

pub struct SwarmPlugin;

impl Plugin for SwarmPlugin {
    fn info(&self) -> RunnerInfo {
        info()
    }

    fn configure(&self, config: &serde_json::Value) -> Result<Arc<dyn Runner>, Vec<FieldError>> {
        let c: SwarmConfig = crate::parse_config(config)?;
        let mut errors = Vec::new();
        if c.registry.is_empty() || c.registry.contains('/') || c.registry.contains("://") {
            errors.push(FieldError::new("registry", format!("`{}` is not a registry's host:port", c.registry)));
        }
        if c.repository.is_empty()
            || !c.repository.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_./".contains(&b))
        {
            errors.push(FieldError::new(
                "repository",
                format!("`{}` is not a repository name (lower case letters, digits, - _ . /)", c.repository),
            ));
        }
        if let Some(l) = c.listen.as_ref().filter(|l| l.parse::<std::net::SocketAddr>().is_err()) {
            errors.push(FieldError::new("listen", format!("`{l}` is not an address:port")));
        }
        // An address, never a name: resolving a name in the task would load the image's NSS
        // modules into the helper, which holds capabilities the addon never gets.
        if let Some(a) = c.advertise.as_ref().filter(|a| a.parse::<std::net::SocketAddr>().is_err()) {
            errors.push(FieldError::new(
                "advertise",
                format!("`{a}` is not an IP address:port (names are not resolved in tasks)"),
            ));
        }
        if let Some(f) = &c.registry_password_file {
            if c.registry_username.is_none() {
                errors.push(FieldError::new("registry-password-file", "needs registry-username"));
            }
            if let Err(e) = std::fs::metadata(f) {
                errors.push(FieldError::new("registry-password-file", format!("{}: {e}", f.display())));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Arc::new(SwarmRunner::new(c)))
    }
}

fn info() -> RunnerInfo {
    let capabilities = Capabilities {
        isolates_network: true,
        isolates_filesystem: true,
        builds: true,
        needs_daemon: true,
        // As the docker runner: the task's root is the node's, with six capabilities and
        // no_new_privs (set by the helper; services have no such option).
        host_root: true,
        ptrace_children: true,
        // The run's directories travel with the task (CopyIn, CopyOut).
        shares_host_filesystem: false,
        egress: false,
        ..Capabilities::SHIPPED
    };
    RunnerInfo::shipped(NAME, &[Section::Docker], capabilities)
}

/// What a build recorded: how the helper runs the image's program.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Recorded {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub user: String,
    /// The image's VOLUMEs: each gets a tmpfs of the task (an anonymous volume would outlive
    /// the run on whichever node ran it).
    #[serde(default)]
    pub volumes: Vec<String>,
    /// Where the helper is in the image (its label).
    #[serde(default)]
    pub helper_dir: String,
}

pub struct SwarmRunner {
    config: SwarmConfig,
    docker: DockerRunner,
    reaped: OnceCell<u64>,
    listener: OnceCell<Result<run::Listener, String>>,
    runs: Arc<Mutex<HashMap<String, tokio::sync::mpsc::Sender<Duration>>>>,
}

fn setup(message: impl Into<String>) -> RunnerError {
    RunnerError::setup(NAME, message)
}

impl SwarmRunner {
    pub fn new(config: SwarmConfig) -> SwarmRunner {
        let docker = DockerRunner::new(DockerSettings {
            host: config.host.clone(),
            build_timeout: config.build_timeout,
            user: None,
            build_network: config.build_network.clone(),
            build_egress: config.build_network.is_none().then(Default::default),
            helper: std::env::current_exe().ok().map(|p| p.with_file_name("addon")).filter(|p| p.is_file()),
        });
        SwarmRunner { config, docker, reaped: OnceCell::new(), listener: OnceCell::new(), runs: Arc::default() }
    }

    async fn client(&self) -> Result<&Docker, RunnerError> {
        self.docker.client().await.map_err(|e| RunnerError::Unavailable { runner: NAME.into(), detail: e.to_string() })
    }

    fn credentials(&self) -> Result<Option<DockerCredentials>, RunnerError> {
        let Some(user) = &self.config.registry_username else { return Ok(None) };
        let password = match &self.config.registry_password_file {
            Some(f) => std::fs::read_to_string(f)
                .map_err(|e| setup(format!("registry-password-file {}: {e}", f.display())))?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
            None => String::new(),
        };
        Ok(Some(DockerCredentials {
            username: Some(user.clone()),
            password: Some(password),
            serveraddress: Some(self.config.registry.clone()),
            ..Default::default()
        }))
    }

    /// Why the daemon cannot run swarm jobs, if it cannot: not in a swarm, or not a manager.
    async fn swarm_problem(&self, docker: &Docker) -> Option<String> {
        let info = match docker.info().await {
            Ok(i) => i,
            Err(e) => return Some(format!("the Docker daemon at {} did not answer: {e}", self.docker.address())),
        };
        let swarm = info.swarm.unwrap_or_default();
        if swarm.control_available != Some(true) {
            let state = swarm.local_node_state.map(|s| s.to_string()).unwrap_or_else(|| "unknown".into());
            return Some(format!(
                "the Docker daemon at {} is not a swarm manager (its swarm state: {state}); run `docker swarm init` \
                 there, or set host to a manager's address",
                self.docker.address()
            ));
        }
        None
    }

    /// Why the registry cannot be reached, if it cannot (a TCP connection, then `/v2/`).
    async fn registry_problem(&self) -> Option<String> {
        let addr = self.config.registry.clone();
        let reached = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(&addr)).await;
        match reached {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(format!("the registry {addr} cannot be reached: {e}; start it, or set registry")),
            Err(_) => Some(format!("the registry {addr} did not accept a connection within 5 s")),
        }
    }

    fn engine_labels(&self, addon: &str) -> HashMap<String, String> {
        let me = std::process::id() as i32;
        HashMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_PID.to_string(), me.to_string()),
            (LABEL_START.to_string(), addon_runners::procfs::process_start(me).unwrap_or_default()),
            (LABEL_HOST.to_string(), hostname()),
            (LABEL_ADDON.to_string(), addon.to_string()),
        ])
    }

    /// The repository of an addon's images in the registry.
    fn repository(&self, addon: &str) -> String {
        let name: String = addon
            .to_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '-' })
            .collect();
        format!(
            "{}/{}/{}",
            self.config.registry,
            self.config.repository.trim_matches('/'),
            name.trim_matches(['-', '.', '_'])
        )
    }

    async fn listener(&self) -> Result<&run::Listener, RunnerError> {
        let l = self
            .listener
            .get_or_init(|| async {
                let listen = match &self.config.listen {
                    Some(l) => l.clone(),
                    None => format!("{}:0", self.bridge_gateway().await?),
                };
                run::Listener::bind(&listen, self.config.advertise.clone())
                    .await
                    .map_err(|e| format!("listening for the tasks' helpers on {listen}: {e}"))
            })
            .await;
        l.as_ref().map_err(|e| setup(e.clone()))
    }

    /// The gateway address of the daemon's default bridge network (where its containers reach
    /// the host).
    async fn bridge_gateway(&self) -> Result<String, String> {
        let docker = self.docker.client().await.map_err(|e| e.to_string())?;
        let net =
            docker.inspect_network("bridge", None::<bollard::query_parameters::InspectNetworkOptions>).await.map_err(
                |e| format!("the default bridge network (for the tasks to reach the plugin; or set listen): {e}"),
            )?;
        net.ipam
            .and_then(|i| i.config)
            .and_then(|c| c.into_iter().find_map(|c| c.gateway.filter(|g| g.parse::<std::net::Ipv4Addr>().is_ok())))
            .ok_or_else(|| "the default bridge network has no IPv4 gateway; set listen".to_string())
    }

    async fn reap_once(&self, docker: &Docker) -> u64 {
        *self.reaped.get_or_init(|| reap(docker)).await
    }

    /// Pulls `reference` unless the daemon has it, then reads how its program runs.
    async fn recorded(&self, docker: &Docker, reference: &str) -> Result<Recorded, String> {
        if docker.inspect_image(reference).await.is_err() {
            let opts = bollard::query_parameters::CreateImageOptions {
                from_image: Some(reference.to_string()),
                ..Default::default()
            };
            let creds = self.credentials().map_err(|e| e.to_string())?;
            let mut pull = docker.create_image(Some(opts), None, creds);
            while let Some(step) = pull.next().await {
                step.map_err(|e| format!("pulling {reference}: {e}"))?;
            }
        }
        let image = docker.inspect_image(reference).await.map_err(|e| format!("inspecting {reference}: {e}"))?;
        let c = image.config.unwrap_or_default();
        let helper_dir = c.labels.as_ref().and_then(|l| l.get(bundle::LABEL_HELPER_DIR)).cloned().unwrap_or_default();
        if !helper_dir.starts_with("/.addon-swarm-") {
            return Err(format!("{reference} has no task helper (label {})", bundle::LABEL_HELPER_DIR));
        }
        Ok(Recorded {
            helper_dir,
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            user: c.user.unwrap_or_default(),
            volumes: c.volumes.unwrap_or_default(),
        })
    }
}

use addon_runners::procfs::hostname;

/// `sha256:...` of a push's last status line (`TAG: digest: sha256:HEX size: N`).
fn pushed_digest(status: &str) -> Option<String> {
    let d = status.split_once("digest: ")?.1.split_whitespace().next()?;
    let hex = d.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| d.to_string())
}

/// The digest that names a build's image in the registry: what went into it.
fn image_tag(parts: &BTreeMap<String, String>) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (k, v) in parts {
        h.update(k.as_bytes());
        h.update([0]);
        h.update(v.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())[..40].to_string()
}

#[async_trait::async_trait]
impl Runner for SwarmRunner {
    fn info(&self) -> RunnerInfo {
        info()
    }

    async fn probe(&self) -> Availability {
        let docker = match self.docker.client().await {
            Ok(d) => d,
            Err(e) => return crate::unavailable(e.to_string()),
        };
        if let Some(why) = self.swarm_problem(docker).await {
            return crate::unavailable(why);
        }
        if let Some(why) = self.registry_problem().await {
            return crate::unavailable(why);
        }
        if let Err(e) = bundle::Bundle::find() {
            return crate::unavailable(e);
        }
        self.reap_once(docker).await;
        let version = docker.version().await.ok().and_then(|v| v.version).unwrap_or_default();
        Availability {
            available: true,
            version: Some(format!("Docker Engine {version} (swarm manager)")),
            detail: format!(
                "swarm at {}, registry {}; tasks fetch their inputs from {}; limits: memory, cpus, pids through the \
                 service, output size and files by the helper; no network for pure addons (the helper's own \
                 namespace)",
                self.docker.address(),
                self.config.registry,
                match self.listener().await {
                    Ok(l) => l.advertise.clone(),
                    Err(e) => return crate::unavailable(e.to_string()),
                }
            ),
        }
    }

    async fn cache_key(&self, spec: &BuildSpec) -> Result<Option<BTreeMap<String, String>>, RunnerError> {
        let helper = bundle::Bundle::find().map_err(setup)?;
        let mut parts = match spec.descriptor.docker_image() {
            Some(image) => BTreeMap::from([("image".to_string(), image.to_string())]),
            None => self.docker.cache_key(spec).await?.unwrap_or_default(),
        };
        parts.insert("registry".into(), format!("{}/{}", self.config.registry, self.config.repository));
        parts.insert("helper".into(), helper.digest.clone());
        Ok(Some(parts))
    }

    async fn build(&self, spec: &BuildSpec, log: LogSink) -> Result<Artifact, RunnerError> {
        let docker = self.client().await?;
        if let Some(why) = self.swarm_problem(docker).await.or(self.registry_problem().await) {
            return Err(RunnerError::Unavailable { runner: NAME.into(), detail: why });
        }
        let parts = self.cache_key(spec).await?.unwrap_or_default();
        let repo = self.repository(&spec.addon.name);
        let tag = image_tag(&parts);
        let tagged = format!("{repo}:{tag}");
        let creds = self.credentials()?;
        let label = spec.addon.label();
        // Built once per cluster: another engine sharing the registry may have pushed it. A tag
        // is trusted only in a registry that asks for a password (which addons never get): in
        // an open one, anything that reaches it (an addon with the host's network) could have
        // pushed its own image under that tag.
        let found = match &creds {
            Some(_) => docker.inspect_registry_image(&tagged, creds.clone()).await.ok(),
            None => None,
        };
        if let Some(found) = found {
            let reference = format!("{repo}@{}", found.descriptor.digest.clone().unwrap_or_default());
            log(LogStream::Stdout, &format!("{tagged} is in the registry already ({reference}); not building"));
            let recorded = self.recorded(docker, &reference).await.map_err(setup)?;
            let data = ArtifactData::of(&recorded).map_err(|e| setup(e.to_string()))?;
            return Ok(Artifact { reference, size: found.descriptor.size.unwrap_or(0).max(0) as u64, data });
        }
        let base = match spec.descriptor.docker_image() {
            Some(image) => {
                addon_descriptors::image_reference(image)
                    .map_err(|why| setup(format!("runner.docker.image: {why}")))?;
                if docker.inspect_image(image).await.is_err() {
                    return Err(RunnerError::build(
                        NAME,
                        &label,
                        &format!("image {image} is not present at the swarm manager's daemon; load it there (docker load) to mirror it to {}", self.config.registry),
                    ));
                }
                log(LogStream::Stdout, &format!("mirroring {image} to {}", self.config.registry));
                image.to_string()
            }
            None => self.docker.build(spec, log.clone()).await?.reference,
        };
        let helper = bundle::Bundle::find().map_err(setup)?;
        let image = bundle::layer(docker, &base, &helper, &repo, &tag, &self.engine_labels(&label))
            .await
            .map_err(|e| RunnerError::build(NAME, &label, &e))?;
        log(LogStream::Stdout, &format!("pushing {tagged}"));
        let push = bollard::query_parameters::PushImageOptions { tag: Some(tag.clone()), ..Default::default() };
        let mut pushed = docker.push_image(&repo, Some(push), creds.clone());
        // The digest the daemon pushed (`TAG: digest: sha256:... size: N`), never what the tag
        // names by the time we would ask: someone else may push to it in between.
        let mut digest = None;
        while let Some(step) = pushed.next().await {
            let step =
                step.map_err(|e| RunnerError::build(NAME, &label, &format!("pushing {tagged} to the registry: {e}")))?;
            if let Some(d) = step.status.as_deref().and_then(pushed_digest) {
                digest = Some(d);
            }
        }
        let digest = digest
            .ok_or_else(|| RunnerError::build(NAME, &label, &format!("the push of {tagged} reported no digest")))?;
        let reference = format!("{repo}@{digest}");
        log(LogStream::Stdout, &format!("pushed {reference}"));
        let recorded = self.recorded(docker, &image).await.map_err(setup)?;
        let data = ArtifactData::of(&recorded).map_err(|e| setup(e.to_string()))?;
        let size = docker.inspect_image(&image).await.ok().and_then(|i| i.size).unwrap_or(0).max(0) as u64;
        Ok(Artifact { reference, size, data })
    }

    async fn artifact_valid(&self, artifact: &Artifact) -> bool {
        let Ok(docker) = self.client().await else { return false };
        let Ok(creds) = self.credentials() else { return false };
        docker.inspect_registry_image(&artifact.reference, creds).await.is_ok()
    }

    async fn start(&self, spec: StartSpec) -> Result<Started, RunnerError> {
        let host_network = match &spec.network {
            addon_runner_api::Network::None => false,
            addon_runner_api::Network::Host => true,
            addon_runner_api::Network::Egress(_) => {
                return Err(setup(
                    "the swarm runner gives no egress network (network.impure: egress): a task's network reaches \
                     the nodes and their LAN, and no filter of the engine runs on the nodes; run impure addons \
                     with another runner, or set network.impure: host",
                ))
            }
        };
        let docker = self.client().await?;
        self.reap_once(docker).await;
        let artifact = spec.artifact.clone().ok_or_else(|| setup(format!("{} was not built", spec.addon.label())))?;
        let recorded: Recorded = artifact.data.read().map_err(|e| setup(format!("the artifact's record: {e}")))?;
        let listener = self.listener().await?;
        let (stop_tx, stop_rx) = tokio::sync::mpsc::channel(4);
        let mut labels = self.engine_labels(&spec.addon.label());
        labels.insert(LABEL_RUN.to_string(), spec.run_id.clone());
        let run = run::Run {
            docker: docker.clone(),
            spec,
            artifact,
            recorded,
            labels,
            host_network,
            credentials: self.credentials()?,
            start_timeout: self.config.start_timeout,
        };
        let started = run.start(listener, stop_rx).await?;
        let run_id = started.0;
        self.runs.lock().unwrap_or_else(|e| e.into_inner()).insert(run_id.clone(), stop_tx);
        let runs = self.runs.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let mut events = started.1;
        tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                if tx.send(e).await.is_err() {
                    break;
                }
            }
            runs.lock().unwrap_or_else(|e| e.into_inner()).remove(&run_id);
        });
        Ok(Started { sandbox: "swarm".into(), events: rx })
    }

    async fn stop(&self, run_id: &str, grace: Duration) -> Result<(), RunnerError> {
        let tx = self.runs.lock().unwrap_or_else(|e| e.into_inner()).get(run_id).cloned();
        if let Some(tx) = tx {
            let _ = tx.send(grace).await;
        }
        Ok(())
    }

    async fn release(&self, artifact: &Artifact) -> Result<(), RunnerError> {
        // The registry's copy stays (other engines may use it; the registry's own garbage
        // collection owns it); the manager's local copy goes.
        let docker = self.client().await?;
        let _ = addon_runners::docker::remove_image(docker, &artifact.reference).await;
        Ok(())
    }

    async fn reap(&self) -> Result<u64, RunnerError> {
        let docker = self.client().await?;
        Ok(reap(docker).await)
    }
}

/// Whether the plugin process named by a service's or container's labels is gone.
fn owner_gone(labels: &HashMap<String, String>) -> bool {
    if labels.get(LABEL_HOST).is_some_and(|h| *h != hostname()) {
        return false; // another host's plugin: its pid means nothing here
    }
    let pid: i32 = labels.get(LABEL_PID).and_then(|p| p.parse().ok()).unwrap_or(0);
    let start = labels.get(LABEL_START).cloned().unwrap_or_default();
    !(pid > 0 && addon_runners::procfs::process_start(pid).is_some_and(|s| s == start))
}

/// Removes the services (and their tasks' containers on this node) of plugins that are gone.
async fn reap(docker: &Docker) -> u64 {
    let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_MANAGED}=true")])]);
    let mut removed = 0;
    let opts = bollard::query_parameters::ListServicesOptions { filters: Some(filters.clone()), ..Default::default() };
    for s in docker.list_services(Some(opts)).await.unwrap_or_default() {
        let labels = s.spec.as_ref().and_then(|s| s.labels.clone()).unwrap_or_default();
        if !owner_gone(&labels) {
            continue;
        }
        if let Some(id) = s.id {
            tracing::warn!("removing swarm service {id} left by a plugin that is gone");
            if run::remove_service(docker, &id).await {
                removed += 1;
            }
        }
    }
    let opts =
        bollard::query_parameters::ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
    for c in docker.list_containers(Some(opts)).await.unwrap_or_default() {
        let labels = c.labels.unwrap_or_default();
        if !owner_gone(&labels) || !labels.contains_key(LABEL_SERVICE_ID) {
            continue;
        }
        if let Some(id) = c.id {
            let opts = bollard::query_parameters::RemoveContainerOptions { force: true, v: true, ..Default::default() };
            if docker.remove_container(&id, Some(opts)).await.is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_names_its_digest() {
        let hex = "a".repeat(64);
        assert_eq!(pushed_digest(&format!("abc: digest: sha256:{hex} size: 527")), Some(format!("sha256:{hex}")));
        assert_eq!(pushed_digest("Pushing"), None);
        assert_eq!(pushed_digest("x: digest: sha256:short size: 1"), None);
    }

    #[test]
    fn image_tags_follow_what_went_in() {
        let a = BTreeMap::from([("digest".to_string(), "sha256:1".to_string())]);
        let b = BTreeMap::from([("digest".to_string(), "sha256:2".to_string())]);
        assert_eq!(image_tag(&a), image_tag(&a.clone()));
        assert_ne!(image_tag(&a), image_tag(&b));
        assert_eq!(image_tag(&a).len(), 40);
    }

    #[test]
    fn bad_settings_name_their_field() {
        let errors = SwarmPlugin
            .configure(&serde_json::json!({"registry": "http://x/y", "listen": "nowhere", "repository": "Up"}))
            .err()
            .unwrap();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["registry", "repository", "listen"]);
        let errors = SwarmPlugin.configure(&serde_json::json!({"registry-pasword-file": "/x"})).err().unwrap();
        assert!(errors[0].message.contains("unknown field"), "{:?}", errors[0]);
    }

    #[test]
    fn repositories_are_names_the_registry_takes() {
        let r = SwarmRunner::new(SwarmConfig::default());
        assert_eq!(r.repository("Rotate PDF"), "127.0.0.1:5000/addon-engine/rotate-pdf");
    }
}
