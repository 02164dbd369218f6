//! The engine configuration: a YAML file in kebab-case that mirrors Docspell's joex
//! `addons.executor-config`. Unknown keys are errors that name the key, the file and the line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use addon_runners::sandbox::nspawn::NspawnSettings;
use addon_runners::settings::{check_keys, SectionError};
pub use addon_runners::settings::{parse_duration, BuildNetwork, HumanDuration};
use addon_runners::{SandboxKind, Sections};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Engine configuration. Every key is optional; absent keys take the defaults shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, rename_all = "kebab-case")]
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
    /// Sandbox for trivial and nix-flake runs: `auto` (the strongest available of bwrap,
    /// netns; never none), `bwrap`, `netns`, `nspawn`, or `none` (the bare host: only by
    /// explicit choice).
    pub sandbox: SandboxChoice,
    /// What impure addons (`impure`, `allow`, `resolvers`) and builds (`build`) may reach.
    pub network: NetworkConfig,
    /// Where run directories are made.
    pub working_dir: PathBuf,
    /// The artifact cache and the addons' persistent CACHE_DIR data.
    pub cache_dir: PathBuf,
    /// Per-addon environment: `{ADDON_NAME: {KEY: VALUE}}`.
    pub env: BTreeMap<String, BTreeMap<String, String>>,
    /// Addon archives (zips): how large, how many entries, how long a download may take.
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
    /// The sections that runners and sandboxes own (`docker-runner:`, `nix-runner:`,
    /// `oci-runner:`, `nspawn:`): each is its component's settings type, read and checked by
    /// [`Config::from_yaml`]; take one out with `config.components.get::<DockerSettings>()`.
    #[serde(flatten)]
    #[schemars(skip)]
    pub components: Sections,
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
    /// PEM file of the engine's client certificate (mutual TLS, with `key`).
    pub cert: Option<PathBuf>,
    /// PEM file of the engine's client key (mutual TLS, with `cert`).
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
    /// `limits.memory` for this addon.
    pub memory: Option<ByteSize>,
    /// `limits.pids` for this addon.
    pub pids: Option<u64>,
    /// `limits.cpus` for this addon.
    pub cpus: Option<f64>,
    /// `limits.output-size` for this addon.
    pub output_size: Option<ByteSize>,
    /// `limits.output-entries` for this addon.
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

    fn check(&self, at: &str) -> Result<(), ConfigProblem> {
        if self.cpus.is_some_and(|c| !(c > 0.0 && c.is_finite())) {
            return Err(ConfigProblem::setting(
                format!("{at}.cpus"),
                "must be a positive number of CPUs, like 1 or 0.5",
            ));
        }
        if self.pids == Some(0) {
            return Err(ConfigProblem::setting(format!("{at}.pids"), "must be at least 1"));
        }
        if self.memory.is_some_and(|m| m.0 < (4 << 20)) {
            return Err(ConfigProblem::setting(format!("{at}.memory"), "must be at least 4MiB"));
        }
        Ok(())
    }
}

/// A host uid and gid for addons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SandboxUser {
    /// The addons' uid (not 0; default 2147000000).
    pub uid: u32,
    /// The addons' gid (not 0; default 2147000000).
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
            components: Sections::default(),
        }
    }
}

/// `network:` of the configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct NetworkConfig {
    /// What builds reach (a Dockerfile's `RUN` steps, nix's fetches and fixed-output
    /// derivations), for every runner that builds and whatever the addon's own `networking`
    /// says: builds are not the run, and a real Dockerfile installs packages. `egress` (the
    /// default): a network of the build's own, as `impure: egress` gives runs (the internet and
    /// the engine's resolver, never the host, its loopback, its addresses or private ranges;
    /// `allow` is for runs only); where the engine cannot make one (docker builds through
    /// Podman's API, slirp4netns or nft missing, an unprivileged engine without a usable
    /// /dev/net/tun) builds get no network and a build that fails for want of it says why; nix builds through nix-daemon (an
    /// engine that is not root, `NIX_REMOTE`, or `store = daemon`) reach what the daemon's do.
    /// Base images and `image:` are pulled by the daemon or buildah itself. `host`: the host's
    /// network; `none`: no network (nix builds `--offline`; images must be in a local store).
    pub build: BuildNetwork,
    /// What an impure addon (`networking: true`) reaches. `egress` (the default): a network of
    /// its own with outbound TCP and UDP to public addresses and DNS through the engine's
    /// resolver; never the host's loopback or addresses, link-local (cloud metadata), private
    /// or shared ranges, except what `allow` names for the addon. `host`: the host's own network,
    /// as Docspell gives it (the addon reaches everything the host reaches).
    pub impure: ImpureNetwork,
    /// Per addon (`{ADDON_NAME: [DESTINATION, ...]}`): destinations an egress network also
    /// reaches, as `HOST:PORT`, `ADDRESS:PORT`, `CIDR:PORT` or `[IPV6]:PORT` (`*` for every
    /// port); names are resolved when the run starts. Like `env`, they belong to the addon the
    /// administrator meant, not to whoever declares its name.
    pub allow: BTreeMap<String, Vec<String>>,
    /// The resolvers the engine's DNS forwarder asks for egress networks (`ADDRESS` or
    /// `ADDRESS:PORT`); empty (the default): those of the host's /etc/resolv.conf.
    pub resolvers: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ImpureNetwork {
    /// A network of the addon's own reaching public addresses only.
    #[default]
    Egress,
    /// The host's own network.
    Host,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ArchiveConfig {
    /// Most bytes one addon archive (zip) may unpack to (and a download may be).
    pub max_size: ByteSize,
    /// Most files, directories and links in one addon archive.
    pub max_entries: usize,
    /// How long downloading one addon archive (an `https://` source) may take.
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

/// Which sandbox wraps trivial and nix-flake runs: `auto`, or a sandbox by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxChoice {
    /// The strongest available of bwrap, netns; never none.
    Auto,
    /// This one (`none`, the bare host, only by explicit choice).
    Kind(SandboxKind),
}

impl SandboxChoice {
    pub const NSPAWN: SandboxChoice = SandboxChoice::Kind(SandboxKind::Nspawn);
    pub const NONE: SandboxChoice = SandboxChoice::Kind(SandboxKind::None);

    pub fn as_str(self) -> &'static str {
        match self {
            SandboxChoice::Auto => "auto",
            SandboxChoice::Kind(k) => k.as_str(),
        }
    }

    /// `auto` or a sandbox's name.
    pub fn parse(name: &str) -> Option<SandboxChoice> {
        match name {
            "auto" => Some(SandboxChoice::Auto),
            other => SandboxKind::parse(other).map(SandboxChoice::Kind),
        }
    }

    fn names() -> Vec<&'static str> {
        std::iter::once("auto")
            .chain(addon_runners::sandbox::builtin_sandboxes().iter().map(|f| f.kind.as_str()))
            .collect()
    }
}

impl Serialize for SandboxChoice {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for SandboxChoice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        SandboxChoice::parse(&name).ok_or_else(|| {
            serde::de::Error::custom(format_args!(
                "unknown sandbox `{name}`, expected one of {}",
                SandboxChoice::names().join(", ")
            ))
        })
    }
}

impl JsonSchema for SandboxChoice {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SandboxChoice".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "enum": SandboxChoice::names()})
    }
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

/// A runner name that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunnerNameError {
    #[error("runner `{0}` is listed twice")]
    Twice(String),
    #[error("unknown runner `{name}`; known runners: {}", known.join(", "))]
    Unknown { name: String, known: Vec<String> },
}

/// Trims runner names, maps Docspell's `nix` to `nix-flake`, refuses duplicates.
pub fn normalise_runner_names(names: &[String]) -> Result<Vec<String>, RunnerNameError> {
    let mut out: Vec<String> = Vec::new();
    for n in names {
        let name = match n.trim() {
            "nix" => "nix-flake".to_string(),
            other => other.to_string(),
        };
        if out.contains(&name) {
            return Err(RunnerNameError::Twice(n.clone()));
        }
        out.push(name);
    }
    Ok(out)
}

/// Parses runner names against the known ones (built-in runners and `plugins`).
pub fn parse_runner_names(names: &[String], known: &[String]) -> Result<Vec<String>, RunnerNameError> {
    let out = normalise_runner_names(names)?;
    if let Some(name) = out.iter().find(|n| !known.contains(n)) {
        return Err(RunnerNameError::Unknown { name: name.clone(), known: known.to_vec() });
    }
    Ok(out)
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

/// A size that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size `{text}` ({reason}); write e.g. 1048576, 500MB, 1GiB")]
pub struct SizeError {
    pub text: String,
    pub reason: String,
}

pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|reason| SizeError { text: s.to_string(), reason })
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config {path}: {problem}")]
    Invalid {
        path: PathBuf,
        #[source]
        problem: ConfigProblem,
    },
}

/// What is wrong with a configuration's text.
#[derive(Debug, thiserror::Error)]
pub enum ConfigProblem {
    /// Not the configuration's shape: serde's message, with the key, line and column.
    #[error("{0}")]
    Shape(#[from] serde_yaml::Error),
    /// A component's section (`oci-runner.uid-base: ...`).
    #[error("{0}")]
    Section(#[from] SectionError),
    /// A setting the shape allows and the engine does not.
    #[error("{key}: {message}")]
    Setting { key: String, message: String },
}

impl ConfigProblem {
    fn setting(key: impl Into<String>, message: impl Into<String>) -> ConfigProblem {
        ConfigProblem::Setting { key: key.into(), message: message.into() }
    }
}

impl Config {
    /// `<system temp>/addon-work-<uid>`: private to the user, so that a job server and an addon
    /// author on one host do not trip over each other's directory.
    pub fn default_working_dir() -> PathBuf {
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        std::env::temp_dir().join(format!("addon-work-{uid}"))
    }

    /// The engine's `addon` binary, for helpers run inside sandboxes and containers:
    /// `nspawn.helper`, else this program when it is `addon`, else `addon` in PATH.
    pub fn helper(&self) -> Option<PathBuf> {
        self.components.get::<NspawnSettings>().helper.or_else(|| {
            std::env::current_exe().ok().filter(|p| p.file_name().is_some_and(|n| n == "addon")).or_else(which_addon)
        })
    }

    /// Every runner name this configuration can use: the built-in runners, then its plugins.
    pub fn runner_names(&self) -> Vec<String> {
        builtin_runner_names().into_iter().map(str::to_string).chain(self.plugins.keys().cloned()).collect()
    }

    /// Reads a config file. Empty files give the defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            fs_err::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Config::from_yaml(&text).map_err(|problem| ConfigError::Invalid { path: path.to_path_buf(), problem })
    }

    pub fn from_yaml(text: &str) -> Result<Config, ConfigProblem> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        let (sections, absent) = addon_runners::config_sections();
        // The top-level keys first, so that a misspelt one is named with its line (the struct
        // below takes the components' sections in without looking at them).
        let keys: Vec<&str> =
            engine_keys().iter().map(String::as_str).chain(sections.iter().map(|s| s.key)).chain(absent).collect();
        check_keys(text, &keys)?;
        let mut config: Config = serde_yaml::from_str(text)?;
        config.components = Sections::read(text, &sections)?;
        for (_, settings) in config.components.iter() {
            for warning in settings.warnings() {
                tracing::warn!("{warning}");
            }
        }
        if config.components.get::<NspawnSettings>().enabled && config.sandbox == SandboxChoice::Auto {
            config.sandbox = SandboxChoice::NSPAWN;
        }
        if config.sandbox_user.uid == 0 || config.sandbox_user.gid == 0 {
            return Err(ConfigProblem::setting(
                "sandbox-user",
                "uid and gid must not be 0 (root); give an unprivileged identity no account uses",
            ));
        }
        config.limits.check("limits")?;
        for (name, p) in &config.plugins {
            let at = format!("plugins.{name}");
            if builtin_runner_names().contains(&name.as_str()) {
                return Err(ConfigProblem::setting(
                    at.clone(),
                    format!("`{name}` is a built-in runner; give the plugin another name"),
                ));
            }
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err(ConfigProblem::setting(at.clone(), "a plugin name is letters, digits, `-` and `_`"));
            }
            if let Some(a) = &p.address {
                if !["unix:///", "http://", "https://"].iter().any(|s| a.starts_with(s)) {
                    return Err(ConfigProblem::setting(
                        format!("{at}.address"),
                        format!("`{a}` is not unix:///PATH, http://HOST:PORT or https://HOST:PORT"),
                    ));
                }
                if p.tls.is_some() && !a.starts_with("https://") {
                    return Err(ConfigProblem::setting(format!("{at}.tls"), "TLS settings need an https:// address"));
                }
            }
            if p.timeout.is_some_and(|t| t.0.is_zero()) {
                return Err(ConfigProblem::setting(format!("{at}.timeout"), "must be more than 0"));
            }
            match (&p.command, &p.address) {
                (Some(c), None) if c.is_empty() => {
                    return Err(ConfigProblem::setting(format!("{at}.command"), "give the program to start"))
                }
                (Some(_), None) | (None, Some(_)) => {}
                _ => {
                    return Err(ConfigProblem::setting(
                        at.clone(),
                        "give either `command` (a program to start) or `address` (a server)",
                    ))
                }
            }
            if p.serves.is_empty() {
                return Err(ConfigProblem::setting(
                    format!("{at}.serves"),
                    "name the descriptor sections it serves (docker, nix, trivial)",
                ));
            }
            for section in &p.serves {
                if addon_descriptors::Section::parse(section).is_none() {
                    return Err(ConfigProblem::setting(
                        format!("{at}.serves"),
                        format!("unknown section `{section}`; sections are docker, nix, trivial"),
                    ));
                }
            }
        }
        for (name, o) in &config.addon_limits {
            config.limits.with(o).check(&format!("addon-limits.{name}"))?;
        }
        for (name, list) in &config.network.allow {
            for (i, entry) in list.iter().enumerate() {
                crate::network::Allow::parse(entry)
                    .map_err(|why| ConfigProblem::setting(format!("network.allow.{name}[{i}]"), why))?;
            }
        }
        for (i, r) in config.network.resolvers.iter().enumerate() {
            crate::network::parse_resolver(r).ok_or_else(|| {
                ConfigProblem::setting(
                    format!("network.resolvers[{i}]"),
                    format!("`{r}` is not ADDRESS or ADDRESS:PORT"),
                )
            })?;
        }
        let known = config.runner_names();
        parse_runner_names(&config.runner.0, &known).map_err(|e| ConfigProblem::setting("runner", e.to_string()))?;
        if config.runner.0.is_empty() {
            return Err(ConfigProblem::setting(
                "runner",
                format!("the runner list is empty; name at least one of {}", known.join(", ")),
            ));
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

/// The engine's own top-level keys (those of [`Config`] but its components' sections).
fn engine_keys() -> &'static [String] {
    static KEYS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let schema = schemars::schema_for!(Config);
        schema.get("properties").and_then(|p| p.as_object()).map(|p| p.keys().cloned().collect()).unwrap_or_default()
    })
}

fn which_addon() -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join("addon")).find(|p| p.is_file())
}

/// The JSON Schema of the configuration: the engine's keys, and each component's section with
/// its own schema (a section of a runner not built into this engine takes anything).
pub fn config_schema() -> serde_json::Value {
    let mut generator =
        schemars::generate::SchemaSettings::draft2020_12().with(|s| s.inline_subschemas = true).into_generator();
    let mut schema = generator.root_schema_for::<Config>().to_value();
    let (sections, absent) = addon_runners::config_sections();
    if let Some(properties) = schema.get_mut("properties").and_then(|p| p.as_object_mut()) {
        for s in &sections {
            properties.insert(s.key.to_string(), (s.schema)(&mut generator).to_value());
        }
        for key in absent {
            properties.insert(
                key.to_string(),
                serde_json::json!({"description": "The settings of a runner not built into this engine (unused)."}),
            );
        }
    }
    schema["additionalProperties"] = serde_json::Value::Bool(false);
    // Defaults that depend on who asks, written as the rule rather than this user's value.
    for (key, rule) in
        [("cache-dir", "$XDG_CACHE_HOME/addon (~/.cache/addon)"), ("working-dir", "$TMPDIR/addon-work-<uid>")]
    {
        schema["properties"][key]["default"] = serde_json::Value::from(rule);
    }
    schema
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
        assert_eq!(c.sandbox, SandboxChoice::Kind(SandboxKind::Netns));
        assert_eq!(c.env["my-addon"]["TOKEN"], "abc");
    }

    #[test]
    fn unknown_keys_name_key_and_line() {
        let e = Config::from_yaml("fail-fast: true\nrun-timout: 5m\n").unwrap_err().to_string();
        assert!(e.contains("run-timout") && e.contains("line 2"), "{e}");
        let e = Config::from_yaml("runner: [trivial, podman]").unwrap_err().to_string();
        assert!(e.contains("podman"), "{e}");
        let e = Config::from_yaml("run-timeout: soon").unwrap_err().to_string();
        assert!(e.contains("soon"), "{e}");
    }

    #[test]
    fn limits_can_be_lifted_and_bad_ones_are_named() {
        let c = Config::from_yaml("limits: {memory: null, cpus: 0.5}").unwrap();
        assert_eq!(c.limits.memory, None);
        assert_eq!(c.limits.cpus, Some(0.5));
        assert_eq!(c.limits.pids, Some(512), "unnamed limits keep their defaults");
        let e = Config::from_yaml("limits: {cpus: 0}").unwrap_err().to_string();
        assert!(e.contains("limits.cpus"), "{e}");
        let e = Config::from_yaml("addon-limits: {x: {pids: 0}}").unwrap_err().to_string();
        assert!(e.contains("addon-limits.x.pids"), "{e}");
        let e = Config::from_yaml("limits: {memroy: 1GiB}").unwrap_err().to_string();
        assert!(e.contains("memroy"), "{e}");
    }

    #[test]
    fn components_read_their_own_sections() {
        let c =
            Config::from_yaml("oci-runner: {runtime: crun, pull: always}\nnspawn: {nspawn-binary: /opt/n}\n").unwrap();
        let oci: addon_runners::oci::OciSettings = c.components.get();
        assert_eq!((oci.runtime.as_str(), oci.pull), ("crun", addon_runners::oci::Pull::Missing));
        assert_eq!(c.components.get::<NspawnSettings>().nspawn_binary, "/opt/n");
        let e = Config::from_yaml("fail-fast: true\noci-runner:\n  runtme: crun\n").unwrap_err().to_string();
        assert!(e.contains("oci-runner") && e.contains("runtme") && e.contains("line 3"), "{e}");
        let e = Config::from_yaml("oci-runner: {uid-base: 0}").unwrap_err().to_string();
        assert!(e.starts_with("oci-runner.uid-base: 0 must be above 0"), "{e}");
        // A runner's section reads whether or not the runner is built into this engine.
        Config::from_yaml("docker-runner: {host: unix:///run/d.sock}\nnix-runner: {extra-args: [--offline]}\n")
            .unwrap();
    }

    #[test]
    fn every_section_is_in_the_schema_and_nothing_else_is() {
        let schema = config_schema();
        let properties = schema["properties"].as_object().unwrap();
        for key in ["docker-runner", "nix-runner", "oci-runner", "nspawn", "runner", "limits"] {
            assert!(properties.contains_key(key), "{key} missing from the schema");
        }
        assert_eq!(schema["additionalProperties"], false);
        assert!(properties["oci-runner"]["properties"]["uid-base"]["description"].is_string(), "doc comments carried");
    }

    #[test]
    fn nspawn_enabled_selects_nspawn() {
        let c = Config::from_yaml("nspawn: {enabled: true}").unwrap();
        assert_eq!(c.sandbox, SandboxChoice::NSPAWN);
    }
}
