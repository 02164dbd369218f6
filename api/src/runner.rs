//! The runner boundary: one trait with a lifecycle split into steps (probe, cache key, build,
//! start, stop, release, reap) over plain, serialisable specs, so that a runner can live in this
//! process or in another one (see the `addon-runner-protocol` crate). The engine keeps the cache,
//! the locks and the timeouts; a runner builds what it is asked, starts a run and streams its
//! events (stdout, stderr, then the exit).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use addon_descriptors::{Descriptor, Section};
use serde::{Deserialize, Serialize};

use crate::artifact::Artifact;
use crate::limits::{Limits, Usage};
use crate::log::LogSink;
use crate::sandbox::{Mounts, SandboxKind};

/// What a runner can do, so the executor asks questions instead of checking names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// The runner cuts the network itself (containers); otherwise a sandbox must.
    pub isolates_network: bool,
    /// The runner keeps the addon off the host filesystem itself.
    pub isolates_filesystem: bool,
    /// It builds an artifact before the first run (cached by the engine).
    pub builds: bool,
    /// It needs a daemon (e.g. the Docker engine).
    pub needs_daemon: bool,
    /// It runs a host program and wants the engine's configured sandbox around it.
    pub uses_sandbox: bool,
    /// It reads and writes the run's directories at their host paths (else the engine copies
    /// them in and out).
    pub shares_host_filesystem: bool,
    /// It enforces the run's limits.
    pub enforces_limits: bool,
    /// It reports peak memory and CPU time.
    pub measures_resources: bool,
    /// The addon may be uid 0 of the host (a container without a user namespace), held to a
    /// minimal set of capabilities and `no_new_privs`. Every runner that does not declare it is
    /// held by the hostile-addon kit to "never the host's root".
    #[serde(default)]
    pub host_root: bool,
    /// A process of the addon may trace its own children (Docker's default seccomp profile).
    #[serde(default)]
    pub ptrace_children: bool,
    /// It gives an impure addon `network.impure: egress` itself (runners that use the engine's
    /// sandbox get it from the sandbox). A runner without it never gets an egress run: the
    /// engine tries the next runner or says why none can.
    #[serde(default)]
    pub egress: bool,
}

impl Capabilities {
    /// What every runner shipped with the engine gives, whatever else it does: the run's
    /// directories at their host paths, the run's limits enforced, its usage measured.
    pub const SHIPPED: Capabilities = Capabilities {
        isolates_network: false,
        isolates_filesystem: false,
        builds: false,
        needs_daemon: false,
        uses_sandbox: false,
        shares_host_filesystem: true,
        enforces_limits: true,
        measures_resources: true,
        host_root: false,
        ptrace_children: false,
        egress: false,
    };
}

/// Who a runner is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerInfo {
    /// The name used in `runner:` and `--runner`.
    pub name: String,
    pub version: String,
    /// The descriptor sections it serves.
    pub serves: Vec<Section>,
    pub capabilities: Capabilities,
}

impl RunnerInfo {
    /// A runner shipped with the engine (so of its version) serving `serves`.
    pub fn shipped(name: &str, serves: &[Section], capabilities: Capabilities) -> RunnerInfo {
        RunnerInfo {
            name: name.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            serves: serves.to_vec(),
            capabilities,
        }
    }
}

/// Whether a runner works on this host.
#[derive(Debug, Clone, Serialize)]
pub struct Availability {
    pub available: bool,
    pub version: Option<String>,
    pub detail: String,
}

/// Whether a build ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheUse {
    /// The artifact was in the cache; no build ran.
    Hit,
    /// A build ran and its result was stored.
    Miss,
    /// Nothing to build.
    None,
}

impl CacheUse {
    /// As the JSON says it.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheUse::Hit => "hit",
            CacheUse::Miss => "miss",
            CacheUse::None => "none",
        }
    }
}

/// The addon a spec is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddonRef {
    pub name: String,
    pub version: String,
    /// `sha256:...` of its content.
    pub digest: String,
}

impl AddonRef {
    /// `name-version`, for logs and errors.
    pub fn label(&self) -> String {
        format!("{}-{}", self.name, self.version)
    }

    /// The first 12 hex digits of the digest.
    pub fn short_digest(&self) -> &str {
        let hex = self.digest.trim_start_matches("sha256:");
        &hex[..hex.len().min(12)]
    }
}

/// What a build needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildSpec {
    pub addon: AddonRef,
    /// The section the runner serves the addon from.
    pub section: Section,
    pub descriptor: Descriptor,
    /// The unpacked addon (host path).
    pub addon_dir: PathBuf,
    /// An empty directory of the engine's cache entry the runner may fill (a GC root, say).
    pub content_dir: PathBuf,
}

/// The run's directories (host paths).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunDirs {
    /// The run directory: the addon's working directory.
    pub work: PathBuf,
    /// The addon's copy inside it (`addons/<name>-<version>`).
    pub addon: PathBuf,
    /// The addon's private output directory.
    pub output: PathBuf,
    /// Its persistent `CACHE_DIR`.
    pub cache: PathBuf,
    /// Its private `HOME`, kept between its runs.
    pub home: PathBuf,
    /// An empty directory beside the run directory on which a sandbox may build a root.
    pub scratch: PathBuf,
}

/// One run to start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StartSpec {
    /// Unique per run; `stop` names it.
    pub run_id: String,
    pub addon: AddonRef,
    pub section: Section,
    pub descriptor: Descriptor,
    /// What `build` made, when the runner builds.
    pub artifact: Option<Artifact>,
    /// The cache entry's content directory of that artifact.
    pub artifact_dir: Option<PathBuf>,
    /// Arguments: the descriptor's args, then `arguments/user-input` (relative to the work dir).
    pub args: Vec<String>,
    /// Environment besides the contract's directories: PATH, locale, ITEM_*, configured, --env.
    pub env: Vec<(String, String)>,
    pub dirs: RunDirs,
    /// The run's network: none for a pure addon; for an impure one, the host's or an egress
    /// network by `network.impure`. A runner that cannot give what this says fails the start.
    pub network: crate::network::Network,
    pub limits: Limits,
    /// The engine's sandbox for runners that use one.
    pub sandbox: Option<SandboxKind>,
}

impl StartSpec {
    /// The addon's environment with the contract's directories as the addon sees them (`view`).
    /// `HOME` (and `XDG_CACHE_HOME`) point into the addon's private home unless `keep_home` (a
    /// container's image brings its own, often with pre-compiled code in it).
    pub fn env_in(&self, view: &Mounts, keep_home: bool) -> Vec<(String, String)> {
        let rel_addon = self.dirs.addon.strip_prefix(&self.dirs.work).unwrap_or(&self.dirs.addon);
        let s = |p: &std::path::Path| p.display().to_string();
        let mut env = vec![
            ("ADDON_DIR".to_string(), s(&view.work.join(rel_addon))),
            ("TMPDIR".to_string(), s(&view.work.join("temp"))),
            ("TMP_DIR".to_string(), s(&view.work.join("temp"))),
            ("OUTPUT_DIR".to_string(), s(&view.output)),
            ("CACHE_DIR".to_string(), s(&view.cache)),
        ];
        if !keep_home {
            env.push(("HOME".to_string(), s(&view.home)));
            env.push(("XDG_CACHE_HOME".to_string(), s(&view.home.join(".cache"))));
        }
        for (k, v) in &self.env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        env
    }

    /// The run's writable directories as host paths.
    pub fn mounts(&self) -> Mounts {
        Mounts {
            work: self.dirs.work.clone(),
            output: self.dirs.output.clone(),
            cache: self.dirs.cache.clone(),
            home: self.dirs.home.clone(),
        }
    }
}

/// How a run's process ended, as the runner saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExitKind {
    /// It exited by itself, or was stopped (128 + signal when a signal ended it).
    Code(i32),
    /// The runner stopped it at one of its limits (the reason, for people).
    Limit(String),
}

/// The end of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exit {
    pub kind: ExitKind,
    pub usage: Usage,
}

/// What a started run reports, in order: output as it comes, then exactly one `Exited`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEvent {
    Stdout(Vec<u8>),
    /// Lines of the addon's own stderr (a sandbox tool's messages already left out).
    Stderr(Vec<u8>),
    Exited(Exit),
    /// The runner lost the run (a plugin that died or stopped answering); nothing follows.
    Failed(RunnerError),
}

/// A started run.
#[derive(Debug)]
pub struct Started {
    /// What isolates the process: a sandbox name, `docker`, a plugin's own.
    pub sandbox: String,
    pub events: tokio::sync::mpsc::Receiver<RunEvent>,
}

/// A runner's error; serialisable, so it crosses a process boundary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum RunnerError {
    /// The runtime is not there or not usable.
    #[error("{runner} runner is not available: {detail}")]
    Unavailable { runner: String, detail: String },
    /// The sandbox refused (it cannot give what the addon needs).
    #[error("{runner} runner: {detail}")]
    Sandbox { runner: String, detail: String },
    /// The build failed; `log_tail` holds its last lines.
    #[error("{runner} runner: build of {addon} failed: {message}")]
    Build { runner: String, addon: String, message: String, log_tail: Vec<String> },
    /// The process could not be started.
    #[error("{runner} runner: cannot start {program}: {detail}")]
    Spawn { runner: String, program: String, detail: String },
    /// Anything else that kept the run from starting.
    #[error("{runner} runner: {message}")]
    Setup { runner: String, message: String },
    /// The runner itself failed (a plugin that crashed, hung or spoke another protocol).
    #[error("{runner} runner failed: {message}")]
    Runner { runner: String, message: String },
}

/// A failed build as a runner's own steps report it: what went wrong, and the last lines of the
/// log of the tool that failed (none when no tool ran).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BuildFailed {
    pub message: String,
    pub log_tail: Vec<String>,
}

impl BuildFailed {
    pub fn with_log(message: impl Into<String>, log_tail: Vec<String>) -> BuildFailed {
        BuildFailed { message: message.into(), log_tail }
    }

    /// The runner's error for the build of `addon`.
    pub fn into_error(self, runner: &str, addon: &str) -> RunnerError {
        RunnerError::Build {
            runner: runner.to_string(),
            addon: addon.to_string(),
            message: self.message,
            log_tail: self.log_tail,
        }
    }
}

/// A step that failed before any tool printed a log.
impl From<&str> for BuildFailed {
    fn from(message: &str) -> BuildFailed {
        BuildFailed { message: message.to_string(), log_tail: Vec::new() }
    }
}

/// A step that failed before any tool printed a log.
impl From<String> for BuildFailed {
    fn from(message: String) -> BuildFailed {
        BuildFailed { message, log_tail: Vec::new() }
    }
}

impl std::fmt::Display for BuildFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl RunnerError {
    pub fn setup(runner: &str, message: impl Into<String>) -> RunnerError {
        RunnerError::Setup { runner: runner.to_string(), message: message.into() }
    }

    /// A sandbox that refused, with its reason.
    pub fn sandbox(runner: &str, e: &impl std::fmt::Display) -> RunnerError {
        RunnerError::Sandbox { runner: runner.to_string(), detail: e.to_string() }
    }

    /// A failed build with no log to show.
    pub fn build(runner: &str, addon: &str, message: &str) -> RunnerError {
        BuildFailed::from(message.to_string()).into_error(runner, addon)
    }

    /// The last log lines of a failed build.
    pub fn log_tail(&self) -> &[String] {
        match self {
            RunnerError::Build { log_tail, .. } => log_tail,
            _ => &[],
        }
    }
}

/// A way to build and start an addon: built into the engine, or a plugin behind this same
/// trait. Every method may be called concurrently for different runs.
#[async_trait::async_trait]
pub trait Runner: Send + Sync {
    fn info(&self) -> RunnerInfo;

    /// Probes the host: is the runtime there, which version, why not.
    async fn probe(&self) -> Availability;

    /// The parts of the cache key of what `build` makes from `spec` (the engine adds the
    /// runner's name, version and configuration); None when this runner builds nothing.
    async fn cache_key(&self, spec: &BuildSpec) -> Result<Option<BTreeMap<String, String>>, RunnerError> {
        let _ = spec;
        Ok(None)
    }

    /// Builds the artifact (called by the engine under its cache lock, only on a miss). The
    /// engine drops the future to cancel it or at its build timeout.
    async fn build(&self, spec: &BuildSpec, log: LogSink) -> Result<Artifact, RunnerError> {
        let _ = log;
        Err(RunnerError::setup(&self.info().name, format!("builds nothing for {}", spec.addon.label())))
    }

    /// Why this runner cannot build `spec`'s addon, when it can tell without building (a flake
    /// with no default package): `addon plan` then passes over it. None when it can, or cannot
    /// tell (the build will say). `spec.content_dir` is empty here.
    async fn cannot_build(&self, spec: &BuildSpec) -> Option<String> {
        let _ = spec;
        None
    }

    /// Whether a cached artifact is still usable (its image was not removed behind our back).
    async fn artifact_valid(&self, artifact: &Artifact) -> bool {
        let _ = artifact;
        true
    }

    /// Starts the run; its events follow on the returned channel.
    async fn start(&self, spec: StartSpec) -> Result<Started, RunnerError>;

    /// Stops a run: SIGTERM (or the runtime's equivalent), `grace`, then kill. The run's
    /// `Exited` event still follows.
    async fn stop(&self, run_id: &str, grace: Duration) -> Result<(), RunnerError>;

    /// Releases what a pruned artifact owned outside the engine's cache (an image).
    async fn release(&self, artifact: &Artifact) -> Result<(), RunnerError> {
        let _ = artifact;
        Ok(())
    }

    /// Removes whatever runs of engines that died left behind; returns how many things.
    async fn reap(&self) -> Result<u64, RunnerError> {
        Ok(0)
    }
}

/// How long to wait for a run's `Exited` after asking it to stop, beyond its grace.
pub const STOP_SLACK: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_use_names_are_the_json_ones() {
        for c in [CacheUse::Hit, CacheUse::Miss, CacheUse::None] {
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
    }
}
