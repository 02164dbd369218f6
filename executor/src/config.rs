//! The engine configuration: a YAML file in kebab-case that mirrors Docspell's joex
//! `addons.executor-config`. Unknown keys are errors that name the key, the file and the line.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Engine configuration. Every key is optional; absent keys take the defaults shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
#[schemars(title = "addon engine configuration")]
pub struct Config {
    /// Runner preference, first to last: a list or a comma-separated string.
    pub runner: RunnerOrder,
    /// After a failed addon, skip the rest of the run.
    pub fail_fast: bool,
    /// Per-addon run timeout (`500ms`, `30s`, `15m`).
    pub run_timeout: HumanDuration,
    /// false: impure addons (network, or side effects without collected output) are refused.
    pub allow_impure: bool,
    /// Sandbox for trivial and nix-flake runs.
    pub sandbox: SandboxChoice,
    /// Docspell-style nspawn settings; `enabled: true` means `sandbox: nspawn`.
    pub nspawn: NspawnConfig,
    pub nix_runner: NixRunnerConfig,
    pub docker_runner: DockerRunnerConfig,
    /// The daemonless `oci` runner of docker addons.
    pub oci_runner: OciRunnerConfig,
    /// What builds may reach.
    pub network: NetworkConfig,
    /// Where run directories are made.
    pub working_dir: PathBuf,
    /// The artifact cache and the addons' persistent CACHE_DIR data.
    pub cache_dir: PathBuf,
    /// Per-addon environment: `{ADDON_NAME: {KEY: VALUE}}`.
    pub env: BTreeMap<String, BTreeMap<String, String>>,
    pub archive: ArchiveConfig,
    /// Most stdout collected from one addon; more is a failure.
    pub max_stdout: ByteSize,
    /// Time between SIGTERM and SIGKILL when a run is stopped.
    pub kill_grace: HumanDuration,
    /// How long a failed build is remembered (by the artifact's key, with its error): runs in
    /// that time do not build it again but fail at once, and fall through to the next runner;
    /// `addon plan` and `addon cache ls` show it, `addon cache prune --failed-builds` forgets
    /// it. `0s` turns this off.
    pub remember_failed_builds: HumanDuration,
    /// Who addons run as when the engine is root (bwrap and netns): an unprivileged uid and gid
    /// of their own, without supplementary groups. No account should use them.
    pub sandbox_user: SandboxUser,
    /// The resource envelope of every run, every runner (`null` for no limit).
    pub limits: LimitsConfig,
    /// Per-addon overrides of `limits`: `{ADDON_NAME: {memory: 4GiB}}`.
    pub addon_limits: BTreeMap<String, LimitsOverride>,
    /// Out-of-process runners, usable by name in `runner:` and `--runner`.
    pub plugins: BTreeMap<String, PluginConfig>,
    /// Which addon a name means: `{ADDON_NAME: {origins: [...], digests: [...]}}`. The name's
    /// settings (`env`, `addon-limits`) and its CACHE_DIR and HOME go only to an addon from one
    /// of these origins (a URL or directory prefix) or with one of these content digests; see
    /// docs/usage.md "Which addon a name means". Unpinned names belong to the first origin seen.
    pub addons: BTreeMap<String, AddonPin>,
}

/// The addon a name means (see [`Config::addons`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct AddonPin {
    /// Where it may come from: URL prefixes (`https://github.com/docspell/`) or directories
    /// (`/srv/addons/rotate-pdf`, which also covers what is below it). Versions of the addon
    /// from any of them share its CACHE_DIR.
    pub origins: Vec<String>,
    /// Content digests it may have (`sha256:...`, as `addon validate` prints).
    pub digests: Vec<String>,
}

/// A runner plugin: a program the engine starts (`command`) or a server it connects to
/// (`address`), speaking the gRPC protocol of `proto/addon/runner/v1/runner.proto`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct PluginConfig {
    /// The plugin program and its arguments; the engine starts it (go-plugin handshake).
    pub command: Option<Vec<String>>,
    /// A standalone plugin server: `unix:///PATH`, `http://HOST:PORT` or `https://HOST:PORT`.
    pub address: Option<String>,
    /// TLS for an `https://` address.
    pub tls: Option<PluginTls>,
    /// The descriptor sections it serves: `docker`, `nix`, `trivial`.
    pub serves: Vec<String>,
    /// The plugin's own configuration, checked by the plugin (its Configure call).
    #[schemars(with = "serde_json::Value")]
    pub config: serde_json::Value,
    /// How long its start, handshake or any call may take before it counts as hung (10s).
    pub timeout: Option<HumanDuration>,
    /// How long one of its builds may take (15m).
    pub build_timeout: Option<HumanDuration>,
}

/// TLS settings of a plugin server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct PluginTls {
    /// PEM file of the CA that signed the server's certificate.
    pub ca: Option<PathBuf>,
    /// PEM files of the engine's client certificate and key (mutual TLS).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// The name the server's certificate is for, when not the address's host.
    pub domain: Option<String>,
}

/// Limits of one run. Defaults protect a job server: 1 GiB of memory, 512 processes, 1 CPU,
/// 1 GiB written.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct LimitsConfig {
    /// Memory (RAM, no swap beyond it): `1GiB`, `512MiB`.
    pub memory: Option<ByteSize>,
    /// Processes and threads at once.
    pub pids: Option<u64>,
    /// CPUs' worth of time: `1`, `0.5`, `2`.
    pub cpus: Option<f64>,
    /// What one run may add to its directories (output, work, CACHE_DIR, HOME).
    pub output_size: Option<ByteSize>,
    /// How many files, directories and links one run may add to those directories (empty files
    /// cost no bytes, but each takes one of the file system's inodes).
    pub output_entries: Option<u64>,
}

/// The default of `limits.output-entries`: as many as an addon archive may hold.
pub const DEFAULT_OUTPUT_ENTRIES: u64 = 100_000;

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            memory: Some(ByteSize(1 << 30)),
            pids: Some(512),
            cpus: Some(1.0),
            output_size: Some(ByteSize(1 << 30)),
            output_entries: Some(DEFAULT_OUTPUT_ENTRIES),
        }
    }
}

/// Some limits set anew (for one addon, or one run); the others are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct LimitsOverride {
    pub memory: Option<ByteSize>,
    pub pids: Option<u64>,
    pub cpus: Option<f64>,
    pub output_size: Option<ByteSize>,
    pub output_entries: Option<u64>,
}

impl LimitsConfig {
    /// These limits with `o`'s values where it has some.
    pub fn with(mut self, o: &LimitsOverride) -> LimitsConfig {
        self.memory = o.memory.or(self.memory);
        self.pids = o.pids.or(self.pids);
        self.cpus = o.cpus.or(self.cpus);
        self.output_size = o.output_size.or(self.output_size);
        self.output_entries = o.output_entries.or(self.output_entries);
        self
    }

    pub fn to_limits(self) -> addon_runners::Limits {
        addon_runners::Limits {
            memory: self.memory.map(|b| b.0),
            pids: self.pids,
            cpus: self.cpus,
            output_size: self.output_size.map(|b| b.0),
            output_entries: self.output_entries,
        }
    }

    fn check(&self, at: &str) -> Result<(), String> {
        if self.cpus.is_some_and(|c| !(c > 0.0 && c.is_finite())) {
            return Err(format!("{at}.cpus must be a positive number of CPUs, like 1 or 0.5"));
        }
        if self.pids == Some(0) {
            return Err(format!("{at}.pids must be at least 1"));
        }
        if self.memory.is_some_and(|m| m.0 < (4 << 20)) {
            return Err(format!("{at}.memory must be at least 4MiB"));
        }
        Ok(())
    }
}

/// A host uid and gid for addons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxUser {
    pub uid: u32,
    pub gid: u32,
}

impl Default for SandboxUser {
    fn default() -> Self {
        let id = addon_runners::sandbox::DEFAULT_IDENTITY;
        SandboxUser { uid: id.uid, gid: id.gid }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            runner: RunnerOrder(vec!["nix-flake".into(), "docker".into(), "trivial".into()]),
            fail_fast: true,
            run_timeout: HumanDuration(Duration::from_secs(15 * 60)),
            allow_impure: true,
            sandbox: SandboxChoice::Auto,
            nspawn: NspawnConfig::default(),
            nix_runner: NixRunnerConfig::default(),
            docker_runner: DockerRunnerConfig::default(),
            oci_runner: OciRunnerConfig::default(),
            network: NetworkConfig::default(),
            working_dir: Config::default_working_dir(),
            cache_dir: dirs::cache_dir().unwrap_or_else(std::env::temp_dir).join("addon"),
            env: BTreeMap::new(),
            archive: ArchiveConfig::default(),
            max_stdout: ByteSize(16 << 20),
            kill_grace: HumanDuration(Duration::from_secs(2)),
            remember_failed_builds: HumanDuration(Duration::from_secs(10 * 60)),
            sandbox_user: SandboxUser::default(),
            limits: LimitsConfig::default(),
            addon_limits: BTreeMap::new(),
            plugins: BTreeMap::new(),
            addons: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct NspawnConfig {
    pub enabled: bool,
    /// Used when the engine is not root.
    pub sudo_binary: String,
    pub nspawn_binary: String,
    /// The `addon` binary, run inside each container to install the seccomp filter nspawn cannot
    /// express; null: this program when it is `addon`, else `addon` in PATH.
    pub helper: Option<PathBuf>,
}

impl Default for NspawnConfig {
    fn default() -> Self {
        NspawnConfig {
            enabled: false,
            sudo_binary: "sudo".into(),
            nspawn_binary: "systemd-nspawn".into(),
            helper: None,
        }
    }
}

impl NspawnConfig {
    /// The helper binary: the setting, else this program when it is `addon`, else `addon` in
    /// PATH.
    pub fn helper(&self) -> Option<PathBuf> {
        self.helper.clone().or_else(|| {
            std::env::current_exe().ok().filter(|p| p.file_name().is_some_and(|n| n == "addon")).or_else(which_addon)
        })
    }
}

fn which_addon() -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join("addon")).find(|p| p.is_file())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct NixRunnerConfig {
    pub nix_binary: String,
    pub build_timeout: HumanDuration,
    /// Extra arguments for `nix build` (for example `--offline`).
    pub extra_args: Vec<String>,
}

impl Default for NixRunnerConfig {
    fn default() -> Self {
        NixRunnerConfig {
            nix_binary: "nix".into(),
            build_timeout: HumanDuration(Duration::from_secs(15 * 60)),
            extra_args: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct DockerRunnerConfig {
    /// Docker API address; null: `DOCKER_HOST`, else the local socket.
    pub host: Option<String>,
    pub build_timeout: HumanDuration,
    /// User inside the container: null keeps the image's user; `engine` uses the engine's
    /// uid:gid so output files stay readable; or an explicit `uid:gid`.
    pub user: Option<String>,
    /// Deprecated: `network.build` says what every runner's builds reach. When set, it is the
    /// daemon's network for this runner's builds (`none`, `host`, a network's name), over it.
    #[schemars(skip)]
    pub build_network: Option<String>,
}

impl Default for DockerRunnerConfig {
    fn default() -> Self {
        DockerRunnerConfig {
            host: None,
            build_timeout: HumanDuration(Duration::from_secs(15 * 60)),
            user: None,
            build_network: None,
        }
    }
}

/// `network:` of the configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct NetworkConfig {
    /// What builds reach (a Dockerfile's `RUN` steps and its base image, nix's fetches), for
    /// every runner that builds and whatever the addon's own `networking` says: builds are not
    /// the run, and a real Dockerfile installs packages. `egress` (the default): a network of
    /// the build's own with outbound access (docker's bridge, buildah's private network), not
    /// the host's own namespace; `host`: the host's network; `none`: no network (nix builds
    /// `--offline`; images must be in a local store).
    pub build: BuildNetwork,
    /// What an impure addon (`networking: true`) reaches. Only `host` for now (the host's own
    /// network, as Docspell gives it): the egress network of SPEC's default is not built yet, and
    /// an engine that cannot give it says so rather than run addons with more than was meant.
    pub impure: ImpureNetwork,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ImpureNetwork {
    #[default]
    Host,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BuildNetwork {
    #[default]
    Egress,
    Host,
    None,
}

impl BuildNetwork {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildNetwork::Egress => "egress",
            BuildNetwork::Host => "host",
            BuildNetwork::None => "none",
        }
    }
}

/// The `oci` runner: docker addons without a daemon, from a cached root filesystem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct OciRunnerConfig {
    /// OCI runtime: `auto` (crun, then runc: the first that starts a container here), `crun`,
    /// `runc`, or a path.
    pub runtime: String,
    /// The Dockerfile builder (buildah; rootless when the engine is not root).
    pub buildah_binary: String,
    /// Copies `image:` references from local stores and registries.
    pub skopeo_binary: String,
    /// Unpacks images into root filesystems.
    pub umoci_binary: String,
    /// A local image store `image:` references are taken from first: `none`, `docker` (read
    /// once, when the image is first unpacked) or `podman`.
    pub image_store: OciImageStore,
    /// When an image (`image:`, a Dockerfile's base) may be pulled from a registry, after the
    /// local stores and only when builds have a network (`network.build`): `missing` (the
    /// default: when no local store has it; `always` is an older name of it), `if-networking`
    /// (only for addons that ask for network), `never`.
    pub pull: OciPull,
    pub build_timeout: HumanDuration,
    /// Deprecated: `network.build` says what every runner's builds reach. When set, it is
    /// buildah's `--network` for this runner's builds, over it.
    #[schemars(skip)]
    pub build_network: Option<String>,
    /// As root, container ids 0..65535 are host ids from this one up (never the host's root);
    /// Dockerfile builds use the 65536 ids after those.
    pub uid_base: u32,
    /// The runtime's state directory; null: `/run/addon-engine/oci` as root, else under the
    /// temp directory.
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OciImageStore {
    None,
    Docker,
    Podman,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OciPull {
    Never,
    IfNetworking,
    #[serde(alias = "always")]
    Missing,
}

impl Default for OciRunnerConfig {
    fn default() -> Self {
        let d = addon_runners::oci::OciSettings::default();
        OciRunnerConfig {
            runtime: d.runtime,
            buildah_binary: d.buildah,
            skopeo_binary: d.skopeo,
            umoci_binary: d.umoci,
            image_store: OciImageStore::None,
            pull: OciPull::Missing,
            build_timeout: HumanDuration(d.build_timeout),
            build_network: None,
            uid_base: d.uid_base,
            state_dir: None,
        }
    }
}

impl OciRunnerConfig {
    /// The runner's settings, its builds reaching `build`.
    pub fn settings(&self, build: BuildNetwork) -> addon_runners::oci::OciSettings {
        use addon_runners::oci::{ImageStore, Pull};
        addon_runners::oci::OciSettings {
            runtime: self.runtime.clone(),
            buildah: self.buildah_binary.clone(),
            skopeo: self.skopeo_binary.clone(),
            umoci: self.umoci_binary.clone(),
            image_store: match self.image_store {
                OciImageStore::None => ImageStore::None,
                OciImageStore::Docker => ImageStore::Docker,
                OciImageStore::Podman => ImageStore::Podman,
            },
            pull: match self.pull {
                OciPull::Never => Pull::Never,
                OciPull::IfNetworking => Pull::IfNetworking,
                OciPull::Missing => Pull::Missing,
            },
            build_timeout: self.build_timeout.0,
            build_network: match self.build_network.as_deref() {
                Some(deprecated) => deprecated,
                // A network of the build's own (buildah's `private`: a CNI bridge as root,
                // slirp4netns rootless), never the host's own namespace unless asked for.
                None => match build {
                    BuildNetwork::Egress => "private",
                    BuildNetwork::Host => "host",
                    BuildNetwork::None => "none",
                },
            }
            .to_string(),
            uid_base: self.uid_base,
            state_dir: self.state_dir.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ArchiveConfig {
    pub max_size: ByteSize,
    pub max_entries: usize,
    pub download_timeout: HumanDuration,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            max_size: ByteSize(1 << 30),
            max_entries: 100_000,
            download_timeout: HumanDuration(Duration::from_secs(5 * 60)),
        }
    }
}

impl ArchiveConfig {
    pub fn limits(&self) -> addon_descriptors::Limits {
        addon_descriptors::Limits { max_size: self.max_size.0, max_entries: self.max_entries }
    }
}

/// Which sandbox wraps trivial and nix-flake runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SandboxChoice {
    /// The strongest available of bwrap, netns; never none.
    Auto,
    Bwrap,
    Nspawn,
    Netns,
    /// The bare host: only by explicit choice.
    None,
}

/// The runner order, by name; accepts `[nix-flake, docker]` or `"nix-flake, docker"` (and
/// Docspell's `nix` for `nix-flake`). Names are built-in runners or plugins of `plugins:`.
#[derive(Debug, Clone, PartialEq, Eq, JsonSchema)]
#[schemars(with = "RunnerOrderSchema")]
pub struct RunnerOrder(pub Vec<String>);

#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)] // only describes the accepted shapes for the schema
enum RunnerOrderSchema {
    List(Vec<String>),
    Text(String),
}

impl Serialize for RunnerOrder {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for RunnerOrder {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            List(Vec<String>),
            Text(String),
        }
        let names = match Raw::deserialize(d)? {
            Raw::List(v) => v,
            Raw::Text(s) => s.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect(),
        };
        normalise_runner_names(&names).map(RunnerOrder).map_err(serde::de::Error::custom)
    }
}

/// The names of the built-in runners (compiled into this engine or not).
pub fn builtin_runner_names() -> Vec<&'static str> {
    addon_runners::builtin_factories().iter().map(|f| f.name).collect()
}

/// Trims runner names, maps Docspell's `nix` to `nix-flake`, refuses duplicates.
pub fn normalise_runner_names(names: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for n in names {
        let name = match n.trim() {
            "nix" => "nix-flake".to_string(),
            other => other.to_string(),
        };
        if out.contains(&name) {
            return Err(format!("runner `{n}` is listed twice"));
        }
        out.push(name);
    }
    Ok(out)
}

/// Parses runner names against the known ones (built-in runners and `plugins`).
pub fn parse_runner_names(names: &[String], known: &[String]) -> Result<Vec<String>, String> {
    let out = normalise_runner_names(names)?;
    for name in &out {
        if !known.contains(name) {
            return Err(format!("unknown runner `{name}`; known runners: {}", known.join(", ")));
        }
    }
    Ok(out)
}

/// A duration written as `500ms`, `30s`, `15m`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[schemars(with = "String")]
pub struct HumanDuration(pub Duration);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map(HumanDuration).map_err(serde::de::Error::custom)
    }
}

/// Parses `500ms`, `30s`, `15m`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| format!("invalid duration `{s}` ({e}); write e.g. 500ms, 30s, 15m"))
}

/// A size in bytes: a number, or text like `1GiB`, `500MB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[schemars(with = "String")]
pub struct ByteSize(pub u64);

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => parse_size(&s).map(ByteSize).map_err(serde::de::Error::custom),
        }
    }
}

pub fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("invalid size `{s}` ({e}); write e.g. 1048576, 500MB, 1GiB"))
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    /// `<system temp>/addon-work-<uid>`: private to the user, so that a job server and an addon
    /// author on one host do not trip over each other's directory.
    pub fn default_working_dir() -> PathBuf {
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        std::env::temp_dir().join(format!("addon-work-{uid}"))
    }

    /// Every runner name this configuration can use: the built-in runners, then its plugins.
    pub fn runner_names(&self) -> Vec<String> {
        builtin_runner_names().into_iter().map(str::to_string).chain(self.plugins.keys().cloned()).collect()
    }

    /// Reads a config file. Empty files give the defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            fs_err::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Config::from_yaml(&text).map_err(|message| ConfigError::Invalid { path: path.to_path_buf(), message })
    }

    pub fn from_yaml(text: &str) -> Result<Config, String> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        let mut config: Config = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        if config.nspawn.enabled && config.sandbox == SandboxChoice::Auto {
            config.sandbox = SandboxChoice::Nspawn;
        }
        if config.sandbox_user.uid == 0 || config.sandbox_user.gid == 0 {
            return Err(
                "sandbox-user: uid and gid must not be 0 (root); give an unprivileged identity no account uses".into(),
            );
        }
        if config.oci_runner.uid_base == 0
            || u64::from(config.oci_runner.uid_base) + 2 * u64::from(addon_runners::oci::ID_RANGE) > u64::from(u32::MAX)
        {
            return Err(format!(
                "oci-runner.uid-base: {} must be above 0 with {} ids free above it (containers, then builds)",
                config.oci_runner.uid_base,
                2 * addon_runners::oci::ID_RANGE
            ));
        }
        for (key, value) in [
            ("oci-runner.build-network", &config.oci_runner.build_network),
            ("docker-runner.build-network", &config.docker_runner.build_network),
        ] {
            match value.as_deref() {
                None => {}
                Some("") => return Err(format!("{key}: empty (and deprecated: use network.build)")),
                Some(v) => tracing::warn!(
                    "{key} is deprecated: network.build says what every runner's builds reach; `{key}: {v}` \
                     still decides this runner's, over network.build"
                ),
            }
        }
        config.limits.check("limits")?;
        for (name, p) in &config.plugins {
            let at = format!("plugins.{name}");
            if builtin_runner_names().contains(&name.as_str()) {
                return Err(format!("{at}: `{name}` is a built-in runner; give the plugin another name"));
            }
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(format!("{at}: a plugin name is letters, digits, `-` and `_`"));
            }
            if let Some(a) = &p.address {
                if !["unix:///", "http://", "https://"].iter().any(|s| a.starts_with(s)) {
                    return Err(format!(
                        "{at}.address: `{a}` is not unix:///PATH, http://HOST:PORT or https://HOST:PORT"
                    ));
                }
                if p.tls.is_some() && !a.starts_with("https://") {
                    return Err(format!("{at}.tls: TLS settings need an https:// address"));
                }
            }
            if p.timeout.is_some_and(|t| t.0.is_zero()) {
                return Err(format!("{at}.timeout: must be more than 0"));
            }
            match (&p.command, &p.address) {
                (Some(c), None) if c.is_empty() => return Err(format!("{at}.command: give the program to start")),
                (Some(_), None) | (None, Some(_)) => {}
                _ => return Err(format!("{at}: give either `command` (a program to start) or `address` (a server)")),
            }
            if p.serves.is_empty() {
                return Err(format!("{at}.serves: name the descriptor sections it serves (docker, nix, trivial)"));
            }
            for section in &p.serves {
                if addon_descriptors::Section::parse(section).is_none() {
                    return Err(format!("{at}.serves: unknown section `{section}`; sections are docker, nix, trivial"));
                }
            }
        }
        for (name, o) in &config.addon_limits {
            config.limits.with(o).check(&format!("addon-limits.{name}"))?;
        }
        let known = config.runner_names();
        for name in &config.runner.0 {
            if !known.contains(name) {
                return Err(format!("runner: unknown runner `{name}`; known runners: {}", known.join(", ")));
            }
        }
        if config.runner.0.is_empty() {
            return Err(format!("runner: the runner list is empty; name at least one of {}", known.join(", ")));
        }
        Ok(config)
    }

    /// The config from `--config`, else `$ADDON_CONFIG`, else the defaults.
    pub fn discover(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        match explicit {
            Some(p) => Config::load(p),
            None => match std::env::var_os("ADDON_CONFIG").filter(|v| !v.is_empty()) {
                Some(p) => Config::load(Path::new(&p)),
                None => Ok(Config::default()),
            },
        }
    }
}

/// The JSON Schema of the configuration.
pub fn config_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Config)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_example_parses() {
        let c = Config::from_yaml(
            r#"
runner: "nix-flake, docker, trivial"
fail-fast: false
run-timeout: 90s
allow-impure: false
sandbox: netns
nspawn: {enabled: false, sudo-binary: sudo, nspawn-binary: systemd-nspawn}
nix-runner: {nix-binary: nix, build-timeout: 15m, extra-args: [--offline]}
docker-runner: {host: null, build-timeout: 15m}
working-dir: /tmp/w
cache-dir: /tmp/c
env: {my-addon: {TOKEN: abc}}
archive: {max-size: 1GiB, max-entries: 100000, download-timeout: 5m}
limits: {memory: 1GiB, pids: 512, cpus: 1, output-size: 1GiB, output-entries: 100000}
addon-limits: {big-addon: {memory: 4GiB}}
"#,
        )
        .unwrap();
        assert_eq!(c.limits, LimitsConfig::default());
        let big = c.limits.with(&c.addon_limits["big-addon"]).to_limits();
        assert_eq!(big.memory, Some(4 << 30));
        assert_eq!(big.pids, Some(512));
        assert_eq!(c.runner.0, ["nix-flake", "docker", "trivial"]);
        assert_eq!(c.run_timeout.0, Duration::from_secs(90));
        assert_eq!(c.archive.max_size.0, 1 << 30);
        assert_eq!(c.sandbox, SandboxChoice::Netns);
        assert_eq!(c.env["my-addon"]["TOKEN"], "abc");
    }

    #[test]
    fn unknown_keys_name_key_and_line() {
        let e = Config::from_yaml("fail-fast: true\nrun-timout: 5m\n").unwrap_err();
        assert!(e.contains("run-timout") && e.contains("line 2"), "{e}");
        let e = Config::from_yaml("runner: [trivial, podman]").unwrap_err();
        assert!(e.contains("podman"), "{e}");
        let e = Config::from_yaml("run-timeout: soon").unwrap_err();
        assert!(e.contains("soon"), "{e}");
    }

    #[test]
    fn limits_can_be_lifted_and_bad_ones_are_named() {
        let c = Config::from_yaml("limits: {memory: null, cpus: 0.5}").unwrap();
        assert_eq!(c.limits.memory, None);
        assert_eq!(c.limits.cpus, Some(0.5));
        assert_eq!(c.limits.pids, Some(512), "unnamed limits keep their defaults");
        let e = Config::from_yaml("limits: {cpus: 0}").unwrap_err();
        assert!(e.contains("limits.cpus"), "{e}");
        let e = Config::from_yaml("addon-limits: {x: {pids: 0}}").unwrap_err();
        assert!(e.contains("addon-limits.x.pids"), "{e}");
        let e = Config::from_yaml("limits: {memroy: 1GiB}").unwrap_err();
        assert!(e.contains("memroy"), "{e}");
    }

    #[test]
    fn nspawn_enabled_selects_nspawn() {
        let c = Config::from_yaml("nspawn: {enabled: true}").unwrap();
        assert_eq!(c.sandbox, SandboxChoice::Nspawn);
    }
}
