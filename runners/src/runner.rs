//! The runner boundary: one small trait, declared capabilities, and the launch description the
//! executor hands over.

use std::path::{Path, PathBuf};

use addon_descriptors::{ContentDigest, Descriptor, RunnerKind};
use serde::Serialize;

use crate::limits::{Enforcement, Envelope, Limits};
use crate::process::{Supervised, Supervision};
use crate::sandbox::{Mounts, Sandbox, SandboxError};

/// What a runner can do, so the executor asks questions instead of checking names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// The runner cuts the network itself (containers); otherwise a sandbox must.
    pub isolates_network: bool,
    /// The runner keeps the addon off the host filesystem itself.
    pub isolates_filesystem: bool,
    /// It builds an artifact before the first run (cached by digest).
    pub builds: bool,
    /// It needs a daemon (e.g. the Docker engine).
    pub needs_daemon: bool,
    /// It runs a host program and wants the configured sandbox around it.
    pub uses_sandbox: bool,
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

/// One run of one addon, prepared by the executor.
#[derive(Debug, Clone)]
pub struct Launch {
    pub descriptor: Descriptor,
    pub digest: ContentDigest,
    /// The run directory (the addon's working directory).
    pub work_dir: PathBuf,
    /// The addon's copy inside the run directory (`addons/<name>-<version>`).
    pub addon_dir: PathBuf,
    /// The addon's private output directory.
    pub output_dir: PathBuf,
    /// The addon's persistent cache directory.
    pub cache_dir: PathBuf,
    /// The addon's private HOME, kept between its runs (host runners; containers keep the
    /// image's own).
    pub home_dir: PathBuf,
    /// Arguments: the descriptor's args, then the user-input path (relative to the work dir).
    pub args: Vec<String>,
    /// Environment besides the contract's directories: PATH, locale, ITEM_*, configured, --env.
    pub extra_env: Vec<(String, String)>,
    /// The sandbox for host runners.
    pub sandbox: std::sync::Arc<dyn Sandbox>,
    pub supervision: Supervision,
    /// The artifact cache (built images, nix results).
    pub cache: addon_cache::Cache,
    /// What the run may use.
    pub limits: Limits,
    /// How host sandboxes enforce `limits` here.
    pub enforcement: Enforcement,
}

impl Launch {
    /// The run's directories as host paths.
    pub fn mounts(&self) -> Mounts {
        Mounts {
            work: self.work_dir.clone(),
            output: self.output_dir.clone(),
            cache: self.cache_dir.clone(),
            home: self.home_dir.clone(),
        }
    }

    /// The addon's environment with the contract's directories as the addon sees them (`view`:
    /// host paths, or mount points inside a sandbox or container). `HOME` (and
    /// `XDG_CACHE_HOME`) point into the addon's private home unless `keep_home` (a container's
    /// image brings its own, often with pre-compiled code in it).
    pub fn env(&self, view: &Mounts, keep_home: bool) -> Vec<(String, String)> {
        let rel_addon = self.addon_dir.strip_prefix(&self.work_dir).unwrap_or(&self.addon_dir);
        let s = |p: &Path| p.display().to_string();
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
        for (k, v) in &self.extra_env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        env
    }

    /// An empty directory beside the run directory on which a sandbox may build the addon's
    /// root (made and removed by the executor).
    pub fn scratch_dir(&self) -> PathBuf {
        self.work_dir.with_extension("root")
    }

    /// `name-version`, for logs and errors.
    pub fn label(&self) -> String {
        self.descriptor.id()
    }
}

/// What a runner observed.
#[derive(Debug, Clone)]
pub struct RunnerOutcome {
    pub supervised: Supervised,
    /// What isolated the process: a sandbox name or `docker`.
    pub sandbox: String,
    pub cache: CacheUse,
    /// Time spent building or finding the artifact before the process started.
    pub build: std::time::Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("{runner} runner is not available: {detail}")]
    Unavailable { runner: RunnerKind, detail: String },
    #[error("{runner} runner: {source}")]
    Sandbox { runner: RunnerKind, source: SandboxError },
    #[error("{runner} runner: build of {addon} failed: {message}")]
    Build { runner: RunnerKind, addon: String, message: String, log_tail: Vec<String> },
    #[error("{runner} runner: cannot start {program}: {source}")]
    Spawn { runner: RunnerKind, program: PathBuf, source: std::io::Error },
    #[error("{runner} runner: {message}")]
    Setup { runner: RunnerKind, message: String },
}

/// Separates a build failure's message from its log tail (joined by [`BUILD_LOG_MARK`]).
pub const BUILD_LOG_MARK: &str = "\n--- log ---\n";

impl RunnerError {
    /// Turns a cache entry's failed build into a typed build error with the log's tail.
    pub fn from_cache(runner: RunnerKind, addon: String, e: addon_cache::CacheError) -> RunnerError {
        match e {
            addon_cache::CacheError::Build { message, .. } => {
                let (message, tail) = message.split_once(BUILD_LOG_MARK).unwrap_or((&message, ""));
                RunnerError::Build {
                    runner,
                    addon,
                    message: message.to_string(),
                    log_tail: tail.lines().map(str::to_string).collect(),
                }
            }
            other => RunnerError::Setup { runner, message: other.to_string() },
        }
    }

    /// The sandbox that refused, when a sandbox was the reason.
    pub fn sandbox(&self) -> Option<&SandboxError> {
        match self {
            RunnerError::Sandbox { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Starts `program` for `launch` in its sandbox with the contract's environment (as the sandbox
/// sees the run's directories) and supervises it. Shared by the host runners.
pub async fn run_sandboxed(
    runner: RunnerKind,
    launch: &Launch,
    program: &Path,
    extra_ro: &[PathBuf],
) -> Result<Supervised, RunnerError> {
    let mounts = launch.mounts();
    let sandbox = &launch.sandbox;
    let env = launch.env(&sandbox.view(&mounts), false);
    let iso = crate::sandbox::Isolation { network: launch.descriptor.networking() };
    let scratch = launch.scratch_dir();
    sandbox.check(iso).map_err(|source| RunnerError::Sandbox { runner, source })?;
    if let Some(owner) = sandbox.owner() {
        let dirs = [&mounts.work, &mounts.output, &mounts.cache, &mounts.home].map(PathBuf::as_path);
        crate::sandbox::claim(&dirs, owner).map_err(|e| RunnerError::Setup {
            runner,
            message: format!("giving the run's directories to uid {}: {e}", owner.uid),
        })?;
    }
    // The envelope: a control group (or rlimits) for this run, watched while it runs.
    let run_name = launch.work_dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let watched = vec![mounts.work.clone(), mounts.output.clone(), mounts.cache.clone(), mounts.home.clone()];
    let mut envelope = Envelope::new(&run_name, launch.limits, &launch.enforcement, watched)
        .map_err(|message| RunnerError::Setup { runner, message })?;
    if !envelope.measures() {
        tracing::debug!(addon = %launch.label(), "resource usage is not measured: {}", launch.enforcement.describe());
    }
    let (cgroups, rlimits) = (envelope.cgroup_procs(), envelope.rlimits());
    let spec = crate::sandbox::Spec {
        program,
        args: &launch.args,
        env: &env,
        mounts: &mounts,
        extra_ro,
        iso,
        scratch: &scratch,
        cgroups: &cgroups,
        rlimits: &rlimits,
    };
    let cmd = sandbox.command(&spec).map_err(|source| RunnerError::Sandbox { runner, source })?;
    tracing::debug!(addon = %launch.label(), sandbox = sandbox.name(), program = %program.display(), "starting");
    let own = sandbox.clone();
    let supervision = Supervision {
        noise: Some(std::sync::Arc::new(move |l: &str| own.is_own_message(l))),
        ..launch.supervision.clone()
    };
    let mut watch = |pid: i32| {
        envelope.set_root_pid(pid);
        envelope.check()
    };
    let mut done = crate::process::supervise_watched(cmd, &supervision, Some(&mut watch))
        .await
        .map_err(|source| RunnerError::Spawn { runner, program: program.to_path_buf(), source })?;
    done.usage = envelope.finish();
    Ok(done)
}

/// Returns the cache entry for `key`, building it with `build` when missing or damaged. The
/// build runs on a blocking thread that holds the entry's lock (so concurrent engines build once)
/// and is dropped when the run is cancelled. Failures become [`RunnerError::Build`].
pub async fn cached_build<D, V, F, Fut>(
    runner: RunnerKind,
    launch: &Launch,
    key: addon_cache::Key,
    valid: V,
    build: F,
) -> Result<addon_cache::Entry<D>, RunnerError>
where
    D: addon_cache::EntryData,
    V: Fn(&D, &Path) -> bool + Send + 'static,
    F: FnOnce(PathBuf) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<D, String>>,
{
    let cache = launch.cache.clone();
    let label = launch.label();
    let cancel = launch.supervision.cancel.clone();
    let handle = tokio::runtime::Handle::current();
    let label2 = label.clone();
    let entry = tokio::task::spawn_blocking(move || {
        cache.get_or_build(&key, &label2, valid, |content| {
            handle.block_on(async {
                tokio::select! {
                    r = build(content.to_path_buf()) => r,
                    // Dropping the build stops it (the process is killed, the API stream closed).
                    _ = cancel.cancelled() => Err(format!("the run was cancelled during the {runner} build")),
                }
            })
        })
    })
    .await
    .map_err(|e| RunnerError::Setup { runner, message: format!("build task failed: {e}") })?;
    entry.map_err(|e| RunnerError::from_cache(runner, label, e))
}

/// A way to build and start an addon.
#[async_trait::async_trait]
pub trait Runner: Send + Sync {
    fn kind(&self) -> RunnerKind;
    fn capabilities(&self) -> Capabilities;
    /// Probes the host: is the runtime there, which version, why not.
    async fn probe(&self) -> Availability;
    /// Builds (or finds in the cache) and runs the addon once.
    async fn run(&self, launch: &Launch) -> Result<RunnerOutcome, RunnerError>;

    /// Releases what a pruned cache entry of this runner owned outside the cache (an image).
    /// Called for every removed entry; a runner ignores entries that are not its own.
    async fn release(&self, entry: &addon_cache::EntryInfo) -> Result<(), String> {
        let _ = entry;
        Ok(())
    }
}
