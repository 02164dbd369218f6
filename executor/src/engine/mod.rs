//! The engine: opens sources, resolves runners, prepares run directories, runs each addon under
//! supervision, judges its output and merges results in run order.
//!
//! Each addon writes into a private staging folder; its files join the shared output directory
//! only when it succeeds, and a failed addon's files are set aside under `.rejected/`, never lost.
//! Run directories are removed afterwards unless `keep_work` is set.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use addon_cache::{Cache, Entry};
use addon_descriptors::{normalise_relative, AddonOutput, Descriptor, DigestCache, LoadedAddon, Section};
use addon_runners::{
    AddonRef, Artifact, BuildSpec, CacheUse, Ending, LogStream, ProbeCache, RunDirs, Runner, RunnerError, SandboxKind,
    Sandboxes, StartSpec,
};
use fs_err as fs;
use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::report::{
    AddonReport, AddonResult, Attempt, Candidate, Phases, PlanAddon, PlanReport, Resources, RunReport, RunnerProbe,
    RunnersReport, Selected, Termination,
};
use crate::resolve::{resolve, resolve_one, RunnerSlot};
use crate::source::{self, OpenError};
use tracing::Instrument;

mod artifact;
mod attempt;
mod follow;
mod janitor;
mod plan;
mod prepare;

use artifact::{artifact_key, remembered_note};
use attempt::RunCtx;
use follow::log_sink;
use plan::{first_error, impure_refusal, no_runner_reason};

/// What to run, and how; the library form of `addon run`.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    pub sources: Vec<String>,
    /// Replaces the configured runner order (runner names).
    pub runners: Option<Vec<String>>,
    /// Content of `arguments/user-input`.
    pub user_input: String,
    /// Extra environment for every addon.
    pub env: Vec<(String, String)>,
    /// `(DEST, SRC)`: SRC is copied into the run directory at relative DEST.
    pub inputs: Vec<(String, PathBuf)>,
    /// A Docspell item fixture laid out as `item/`.
    pub item: Option<PathBuf>,
    pub output_dir: Option<PathBuf>,
    pub timeout: Option<Duration>,
    pub fail_fast: Option<bool>,
    /// Keep run directories for debugging.
    pub keep_work: bool,
    /// Limits set for this run (over the configured `limits` and `addon-limits`).
    pub limits: crate::config::LimitsOverride,
    /// `(SOURCE, ORIGIN)`: where the job server says the addon of SOURCE comes from (its own
    /// record of it), which decides which addon its name means (see `identity`). Without one,
    /// the source's location is the origin.
    pub origins: Vec<(String, String)>,
}

/// Progress of a run, for job servers that want to follow it.
#[derive(Debug, Clone)]
pub enum Event {
    Started { addon: String, runner: String, sandbox: Option<String> },
    Log { addon: String, stream: LogStream, line: String },
    Finished { addon: String, result: AddonResult },
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("addon source {source_arg}: {error}")]
    Source { source_arg: String, error: OpenError },
    #[error("addon source {source_arg} is a descriptor file alone; `run` needs the addon (a directory, zip or URL). `addon validate` checks a descriptor alone")]
    DescriptorOnly { source_arg: String },
    #[error("--input {dest}: {message}")]
    Input { dest: String, message: String },
    #[error("--item {path}: {message}")]
    Item { path: PathBuf, message: String },
    #[error("{context}: {error}")]
    Io { context: String, error: std::io::Error },
    #[error("cache: {0}")]
    Cache(String),
    #[error("setting `{setting}`: {message}")]
    Setting { setting: &'static str, message: String },
}

fn io_ctx(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> EngineError {
    let context = context.into();
    move |error| EngineError::Io { context, error }
}

/// The engine. Cheap to share; every run is independent. Its settings (sandboxes, runners) are
/// its own: two engines in one process do not share them.
pub struct Engine {
    config: Config,
    runners: Vec<RunnerSlot>,
    sandboxes: Arc<Sandboxes>,
    /// Digests of addon directories this engine has read (an unchanged one is not read again).
    digests: DigestCache,
    /// Removes finished runs' directories off the runs' path.
    janitor: janitor::Janitor,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.runners.iter().map(|r| r.name.clone()).collect();
        f.debug_struct("Engine").field("config", &self.config).field("runners", &names).finish()
    }
}

static RUN_COUNTER: AtomicU64 = AtomicU64::new(0);

fn run_id() -> String {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    format!("{ms}-{}-{}", std::process::id(), RUN_COUNTER.fetch_add(1, Ordering::Relaxed))
}

impl Engine {
    /// An engine with the built-in runners compiled into it and the configured plugins.
    pub fn new(config: Config) -> Engine {
        let probes = Arc::new(ProbeCache::new(Some(config.cache_dir.join("probes-v1"))));
        // The helper is looked for once (this program, or `addon` in PATH): sandboxes and
        // runners take the same.
        let settings = sandbox_settings(&config);
        let sandboxes = Arc::new(Sandboxes::new(&settings, probes.clone()));
        let ctx = addon_runners::RunnerContext {
            sandboxes: sandboxes.clone(),
            probes,
            sections: settings.sections,
            build_network: config.network.build,
            resolvers: config.network.resolvers.iter().filter_map(|r| crate::network::parse_resolver(r)).collect(),
            helper: settings.helper,
        };
        let mut runners: Vec<RunnerSlot> = addon_runners::builtin_factories()
            .into_iter()
            .map(|f| RunnerSlot {
                name: f.name.to_string(),
                serves: f.serves.to_vec(),
                runner: f.make.map(|make| make(&ctx)),
                builtin: true,
                missing: f.make.is_none().then(|| format!("the {} runner is not built into this engine", f.name)),
            })
            .collect();
        runners.extend(crate::plugins::slots(&config));
        Engine { config, runners, sandboxes, digests: DigestCache::new(), janitor: janitor::Janitor::new() }
    }

    /// An engine with a chosen set of runners (tests, or embedders that compile some out).
    pub fn with_runners(config: Config, runners: Vec<Arc<dyn Runner>>) -> Engine {
        let probes = Arc::new(ProbeCache::new(Some(config.cache_dir.join("probes-v1"))));
        let sandboxes = Arc::new(Sandboxes::new(&sandbox_settings(&config), probes));
        let mut slots: Vec<RunnerSlot> = runners
            .into_iter()
            .map(|r| {
                let info = r.info();
                RunnerSlot { name: info.name, serves: info.serves, runner: Some(r), builtin: true, missing: None }
            })
            .collect();
        for f in addon_runners::builtin_factories() {
            if !slots.iter().any(|s| s.name == f.name) {
                slots.push(RunnerSlot {
                    name: f.name.to_string(),
                    serves: f.serves.to_vec(),
                    runner: None,
                    builtin: true,
                    missing: Some(format!("the {} runner is not built into this engine", f.name)),
                });
            }
        }
        Engine { config, runners: slots, sandboxes, digests: DigestCache::new(), janitor: janitor::Janitor::new() }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Waits (blocking) until the directories of every run that has returned are removed.
    ///
    /// A run returns its report before its run directory is gone: the engine removes finished
    /// runs' directories on a thread of its own, and waits for that thread when it is dropped.
    /// Call this where something must see the working directory empty while the engine lives.
    pub fn settle(&self) {
        self.janitor.settle();
    }

    /// The runner called `name`, when this engine has it.
    pub fn runner(&self, name: &str) -> Option<Arc<dyn Runner>> {
        self.runners.iter().find(|s| s.name == name).and_then(|s| s.runner.clone())
    }

    /// The engine's sandboxes.
    pub fn sandboxes(&self) -> &Sandboxes {
        &self.sandboxes
    }

    fn scratch(&self) -> Result<tempfile::TempDir, EngineError> {
        let dir = self.working_dir()?;
        tempfile::Builder::new().prefix("sources-").tempdir_in(dir).map_err(|e| EngineError::Setting {
            setting: "working-dir",
            message: format!("{} is not usable: cannot create a directory in it: {e}", dir.display()),
        })
    }

    /// The working directory, created private to this user. The default one
    /// (`<temp>/addon-work-<uid>`) must belong to this user: a directory of that name made by
    /// someone else in a shared temp directory is refused, not used.
    fn working_dir(&self) -> Result<&Path, EngineError> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
        let dir = &self.config.working_dir;
        let setting = |message: String| EngineError::Setting { setting: "working-dir", message };
        if let Err(e) = std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir) {
            return Err(setting(format!("cannot create {}: {e}", dir.display())));
        }
        if *dir == Config::default_working_dir() {
            let meta = fs::symlink_metadata(dir).map_err(|e| setting(e.to_string()))?;
            // SAFETY: geteuid has no preconditions.
            let me = unsafe { libc::geteuid() };
            if !meta.is_dir() || meta.uid() != me {
                return Err(setting(format!(
                    "the default {} belongs to uid {}, not to this user (uid {me}); set `working-dir` to a \
                     directory of your own",
                    dir.display(),
                    meta.uid()
                )));
            }
            if meta.permissions().mode() & 0o077 != 0 {
                fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| setting(e.to_string()))?;
            }
        }
        Ok(dir)
    }

    /// Runs the addons of `req` in order as one run.
    pub async fn run(
        &self,
        req: RunRequest,
        events: Option<Sender<Event>>,
        cancel: CancellationToken,
    ) -> Result<RunReport, EngineError> {
        let id = run_id();
        let cache = self.cache()?;
        let scratch = self.scratch()?;
        // Every source is opened before anything runs: a missing one fails the run up front.
        let mut addons = Vec::new();
        let mut opening = Vec::new();
        for src in &req.sources {
            let started = Instant::now();
            let addon = tracing::info_span!("open", source = %src)
                .in_scope(|| source::open(src, &self.config, scratch.path(), Some(&cache), Some(&self.digests)));
            opening.push(started.elapsed());
            match addon {
                Ok(a) if a.root.is_none() => {
                    return Err(EngineError::DescriptorOnly { source_arg: src.clone() });
                }
                Ok(a) => addons.push((src.clone(), Ok(a))),
                Err(error) if error.is_judgement() => addons.push((src.clone(), Err(error.to_string()))),
                Err(error) => return Err(EngineError::Source { source_arg: src.clone(), error }),
            }
        }
        for (dest, _) in &req.inputs {
            normalise_relative(dest).map_err(|why| EngineError::Input { dest: dest.clone(), message: why.into() })?;
        }
        if let Some(item) = &req.item {
            if !item.is_dir() {
                return Err(EngineError::Item { path: item.clone(), message: "is not a directory".into() });
            }
        }
        let output_dir = match &req.output_dir {
            Some(d) => d.clone(),
            None => self.working_dir()?.join(format!("output-{id}")),
        };
        fs::create_dir_all(&output_dir).map_err(io_ctx(format!("creating output dir {}", output_dir.display())))?;
        let output_dir = fs::canonicalize(&output_dir).map_err(io_ctx("output dir"))?;
        let fail_fast = req.fail_fast.unwrap_or(self.config.fail_fast);

        let mut reports = Vec::new();
        let mut merged = AddonOutput::default();
        let mut stop = false;
        for (idx, (src, addon)) in addons.iter().enumerate() {
            let report = if stop || cancel.is_cancelled() {
                skipped(src, addon.as_ref().ok())
            } else {
                match addon {
                    Ok(a) => {
                        let ctx = RunCtx {
                            run_id: &id,
                            req: &req,
                            output_dir: &output_dir,
                            events: events.as_ref(),
                            cancel: &cancel,
                            cache: &cache,
                        };
                        let mut r = self.run_one(&ctx, idx, src, a).await;
                        r.phases_ms.prepare += opening[idx].as_millis() as u64;
                        r
                    }
                    Err(msg) => failed_source(src, msg),
                }
            };
            if let Some(tx) = &events {
                let _ = tx.send(Event::Finished { addon: label(&report), result: report.result }).await;
            }
            if report.result == AddonResult::Success {
                if let Some(out) = &report.output {
                    merged.extend(out.clone());
                }
            } else if fail_fast && report.result != AddonResult::Skipped {
                stop = true;
            }
            reports.push(report);
        }
        let _ = fs::remove_dir(output_dir.join(STAGING));
        self.janitor.hand(vec![janitor::Chore::Drop(Box::new(scratch))]);
        Ok(RunReport {
            success: reports.iter().all(|r| r.result == AddonResult::Success),
            output_dir,
            addons: reports,
            output: merged,
        })
    }

    /// Opens the artifact cache under `cache-dir`.
    pub fn cache(&self) -> Result<Cache, EngineError> {
        Cache::open(&self.config.cache_dir)
            .map(|c| {
                // A run waiting for another's build waits as long as the longest build may take.
                let plugins = self
                    .config
                    .plugins
                    .values()
                    .map(|p| p.build_timeout.map(|t| t.0).unwrap_or(crate::plugins::DEFAULT_BUILD_TIMEOUT));
                let builds = self.config.components.iter().filter_map(|(_, s)| s.build_timeout());
                let longest = plugins.chain(builds).max().unwrap_or_default();
                c.with_lock_timeout(longest + std::time::Duration::from_secs(60))
            })
            .map_err(|e| EngineError::Cache(e.to_string()))
    }

    /// `addon cache ls`.
    pub fn cache_ls(&self) -> Result<CacheListing, EngineError> {
        let entries = self.cache()?.list();
        let total_size = entries.iter().map(|e| e.size).sum();
        Ok(CacheListing { entries, total_size })
    }

    /// `addon cache prune`: LRU first, entries in use kept; docker images of removed entries go too.
    pub async fn cache_prune(
        &self,
        max_size: Option<u64>,
        older_than: Option<Duration>,
        failed_builds: bool,
    ) -> Result<PruneReport, EngineError> {
        let cache = self.cache()?;
        let forgotten = if failed_builds {
            // Their logs go with them.
            let _ = fs_err::remove_dir_all(self.config.cache_dir.join(crate::build_log::DIR));
            cache.forget_failures()
        } else {
            Vec::new()
        };
        // Entries are removed under their locks; what they owned outside the cache (a docker
        // image) is then released by the runner that made it.
        let pruner = cache.clone();
        let mut removed = if max_size.is_some() || older_than.is_some() {
            tokio::task::spawn_blocking(move || pruner.prune(max_size, older_than))
                .await
                .map_err(|e| EngineError::Cache(e.to_string()))?
        } else {
            Vec::new()
        };
        for e in removed.iter().filter(|e| e.kind == addon_cache::Kind::Artifact) {
            let Some(owner) = e.runner() else { continue };
            let (Some(runner), Some(artifact)) = (self.runner(owner), e.data::<addon_runners::Artifact>()) else {
                continue;
            };
            if let Err(err) = runner.release(&artifact).await {
                tracing::warn!("{owner} runner: releasing what pruned entry {} owned: {err}", e.key);
            }
        }
        removed.extend(forgotten);
        let total_size = cache.list().iter().map(|e| e.size).sum();
        Ok(PruneReport { removed, total_size })
    }
}

const STAGING: &str = ".addon-staging";

fn sandbox_settings(config: &Config) -> addon_runners::SandboxSettings {
    addon_runners::SandboxSettings {
        identity: addon_runners::sandbox::Identity { uid: config.sandbox_user.uid, gid: config.sandbox_user.gid },
        helper: config.helper(),
        sections: config.components.clone(),
    }
}

/// `addon cache ls`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CacheListing {
    pub entries: Vec<addon_cache::EntryInfo>,
    pub total_size: u64,
}

/// `addon cache prune`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PruneReport {
    pub removed: Vec<addon_cache::EntryInfo>,
    pub total_size: u64,
}

/// The item variables, relative to the working directory, as Docspell sets them.
pub const ITEM_ENV: [(&str, &str); 7] = [
    ("ITEM_DIR", "item"),
    ("ITEM_DATA_JSON", "item/item-data.json"),
    ("ITEM_ARGS_JSON", "item/given-data.json"),
    ("ITEM_PDF_DIR", "item/pdfs"),
    ("ITEM_ORIGINAL_DIR", "item/originals"),
    ("ITEM_ORIGINAL_JSON", "item/source-files.json"),
    ("ITEM_PDF_JSON", "item/pdf-files.json"),
];

fn label(r: &AddonReport) -> String {
    format!("{}-{}", r.name, r.version)
}

fn base_report(src: &str, addon: &LoadedAddon) -> AddonReport {
    let d = addon.parsed.descriptor.as_ref();
    AddonReport {
        name: d.map(|d| d.meta.name.clone()).unwrap_or_default(),
        version: d.map(|d| d.meta.version.clone()).unwrap_or_default(),
        digest: Some(addon.digest.to_string()),
        pure: d.is_some_and(|d| d.pure()),
        error: None,
        ..failed_source(src, "")
    }
}

fn skipped(src: &str, addon: Option<&LoadedAddon>) -> AddonReport {
    let mut r = match addon {
        Some(a) => base_report(src, a),
        None => failed_source(src, ""),
    };
    r.result = AddonResult::Skipped;
    r.error = Some("skipped: an earlier addon failed and fail-fast is on".into());
    r
}

fn failed_source(src: &str, msg: &str) -> AddonReport {
    AddonReport {
        source: src.to_string(),
        name: String::new(),
        version: String::new(),
        digest: None,
        runner: None,
        sandbox: None,
        pure: false,
        cache: CacheUse::None,
        result: AddonResult::ExecutionFailed,
        exit_code: None,
        error: Some(msg.to_string()),
        output: None,
        duration_ms: 0,
        attempts: Vec::new(),
        stderr_tail: Vec::new(),
        rejected_files: None,
        log_lines_dropped: 0,
        network: None,
        termination: None,
        resources: Resources::default(),
        phases_ms: Phases::default(),
        limits: None,
        identity: None,
    }
}

#[cfg(test)]
mod tests {
    //! Resolution and fall-through decisions, with test doubles in place of real runtimes.
    use super::*;
    use addon_runners::{
        Availability, Capabilities, Exit, ExitKind, LogSink, RunEvent, RunnerInfo, StartSpec, Started,
    };
    use std::collections::BTreeMap;

    struct Fake {
        name: &'static str,
        section: Section,
        exit: i32,
        /// Its build fails (it then never starts the addon).
        build_fails: bool,
        calls: Arc<std::sync::Mutex<Vec<&'static str>>>,
    }

    #[async_trait::async_trait]
    impl Runner for Fake {
        fn info(&self) -> RunnerInfo {
            RunnerInfo {
                name: self.name.into(),
                version: "0".into(),
                serves: vec![self.section],
                capabilities: Capabilities {
                    isolates_network: true,
                    isolates_filesystem: true,
                    shares_host_filesystem: true,
                    ..Default::default()
                },
            }
        }
        async fn probe(&self) -> Availability {
            Availability { available: true, version: None, detail: "fake".into() }
        }
        async fn cache_key(&self, spec: &BuildSpec) -> Result<Option<BTreeMap<String, String>>, RunnerError> {
            Ok(self.build_fails.then(|| BTreeMap::from([("digest".to_string(), spec.addon.digest.clone())])))
        }
        async fn build(&self, spec: &BuildSpec, _log: LogSink) -> Result<Artifact, RunnerError> {
            self.calls.lock().unwrap().push("build");
            Err(RunnerError::build(self.name, &spec.addon.label(), "no base image"))
        }
        async fn start(&self, _spec: StartSpec) -> Result<Started, RunnerError> {
            self.calls.lock().unwrap().push(self.name);
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(RunEvent::Stdout(b"{}".to_vec())).await.unwrap();
            if self.exit == LOST {
                // The runner loses the run after starting it (a plugin that died mid-run).
                let message = "lost the run".to_string();
                tx.send(RunEvent::Failed(RunnerError::Runner { runner: self.name.into(), message })).await.unwrap();
            } else {
                let exit = Exit { kind: ExitKind::Code(self.exit), usage: Default::default() };
                tx.send(RunEvent::Exited(exit)).await.unwrap();
            }
            Ok(Started { sandbox: "fake".into(), events: rx })
        }
        async fn stop(&self, _run_id: &str, _grace: Duration) -> Result<(), RunnerError> {
            Ok(())
        }
    }

    /// An addon enabling docker and trivial, and a config preferring docker, inside `dir`.
    fn docker_and_trivial(dir: &Path, options: &str) -> (PathBuf, Config) {
        let addon = dir.join("a");
        fs_err::create_dir(&addon).unwrap();
        fs_err::write(addon.join("Dockerfile"), "FROM scratch").unwrap();
        fs_err::write(addon.join("run.sh"), "#!/bin/sh").unwrap();
        fs_err::write(
            addon.join("docspell-addon.yml"),
            format!("meta: {{name: a, version: \"1\"}}\nrunner: {{docker: {{enable: true}}, trivial: {{enable: true, exec: run.sh}}}}\n{options}"),
        )
        .unwrap();
        let mut config = Config::default();
        config.working_dir = dir.join("work");
        config.cache_dir = dir.join("cache");
        config.runner = crate::config::RunnerOrder(vec!["docker".into(), "trivial".into()]);
        // The fakes give no egress network: these tests are about falling through.
        config.network.impure = crate::config::ImpureNetwork::Host;
        (addon, config)
    }

    /// A [`Fake`] exit code: the run is lost after it started, with no ending seen.
    const LOST: i32 = -999;

    async fn run_with(options: &str) -> (RunReport, Vec<&'static str>) {
        run_with_build(options, false).await
    }

    async fn run_with_build(options: &str, build_fails: bool) -> (RunReport, Vec<&'static str>) {
        run_with_first(options, build_fails, 1).await
    }

    /// Runs with a docker [`Fake`] (whose build fails with `build_fails`, whose run ends with
    /// `exit`) before a trivial one that succeeds.
    async fn run_with_first(options: &str, build_fails: bool, exit: i32) -> (RunReport, Vec<&'static str>) {
        let dir = tempfile::tempdir().unwrap();
        let (addon, config) = docker_and_trivial(dir.path(), options);
        let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
        let runners: Vec<Arc<dyn Runner>> = vec![
            Arc::new(Fake { name: "docker", section: Section::Docker, exit, build_fails, calls: calls.clone() }),
            Arc::new(Fake {
                name: "trivial",
                section: Section::Trivial,
                exit: 0,
                build_fails: false,
                calls: calls.clone(),
            }),
        ];
        let engine = Engine::with_runners(config, runners);
        let req = RunRequest { sources: vec![addon.display().to_string()], ..Default::default() };
        let report = engine.run(req, None, CancellationToken::new()).await.unwrap();
        let calls = calls.lock().unwrap().clone();
        (report, calls)
    }

    /// Under the default `network.impure: egress`, an impure addon never goes to a runner that
    /// cannot give it an egress network (the host's network would be a silent downgrade).
    #[tokio::test]
    async fn an_impure_addon_under_egress_skips_runners_without_egress() {
        let dir = tempfile::tempdir().unwrap();
        let (addon, mut config) = docker_and_trivial(dir.path(), "options: {networking: true, collectOutput: true}");
        config.network.impure = crate::config::ImpureNetwork::Egress;
        let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
        let fake = |name, section| -> Arc<dyn Runner> {
            Arc::new(Fake { name, section, exit: 0, build_fails: false, calls: calls.clone() })
        };
        let engine =
            Engine::with_runners(config, vec![fake("docker", Section::Docker), fake("trivial", Section::Trivial)]);
        let req = RunRequest { sources: vec![addon.display().to_string()], ..Default::default() };
        let report = engine.run(req, None, CancellationToken::new()).await.unwrap();
        assert!(calls.lock().unwrap().is_empty(), "nothing ran: {:?}", calls.lock().unwrap());
        let a = &report.addons[0];
        assert_eq!(a.result, AddonResult::ExecutionFailed);
        let error = a.error.as_deref().unwrap_or_default();
        assert!(error.contains("does not make egress networks") && error.contains("network.impure: host"), "{error}");
    }

    #[tokio::test]
    async fn a_pure_addon_falls_through_to_the_next_runner() {
        let (report, calls) = run_with("options: {networking: false, collectOutput: true}").await;
        assert_eq!(calls, vec!["docker", "trivial"]);
        let a = &report.addons[0];
        assert_eq!(a.result, AddonResult::Success);
        assert_eq!(a.runner.as_deref(), Some("trivial"));
        assert_eq!(a.attempts.len(), 2);
        assert_eq!(a.attempts[0].result, AddonResult::ExecutionError);
    }

    #[tokio::test]
    async fn an_impure_addon_stops_at_the_first_failure() {
        let (report, calls) = run_with("options: {networking: true, collectOutput: true}").await;
        assert_eq!(calls, vec!["docker"]);
        assert_eq!(report.addons[0].result, AddonResult::ExecutionError);
        assert_eq!(report.addons[0].exit_code, Some(1));
    }

    #[tokio::test]
    async fn an_impure_addon_whose_build_failed_falls_through() {
        // Nothing of it ran, so trying the next runner cannot repeat an effect.
        let (report, calls) = run_with_build("options: {networking: true, collectOutput: true}", true).await;
        assert_eq!(calls, vec!["build", "trivial"]);
        let a = &report.addons[0];
        assert_eq!(a.result, AddonResult::Success, "{a:?}");
        assert_eq!(a.attempts[0].result, AddonResult::ExecutionFailed);
        assert!(a.attempts[0].error.as_deref().unwrap_or("").contains("no base image"), "{a:?}");
    }

    #[tokio::test]
    async fn an_impure_addon_whose_run_was_lost_after_it_started_does_not_run_again() {
        // No ending was seen, but it started: it may have had its effects.
        let (report, calls) = run_with_first("options: {networking: true, collectOutput: true}", false, LOST).await;
        assert_eq!(calls, vec!["docker"]);
        let a = &report.addons[0];
        assert_eq!(a.attempts.len(), 1, "{a:?}");
        assert!(a.error.as_deref().unwrap_or("").contains("lost the run"), "{a:?}");
    }

    #[tokio::test]
    async fn a_runner_compiled_out_is_explained_not_hidden() {
        // An engine built without the docker and nix features has only the trivial runner.
        let dir = tempfile::tempdir().unwrap();
        let (addon, mut config) = docker_and_trivial(dir.path(), "");
        config.sandbox = crate::config::SandboxChoice::NONE;
        let sandboxes = Arc::new(Sandboxes::new(&sandbox_settings(&config), Arc::new(ProbeCache::new(None))));
        let engine =
            Engine::with_runners(config, vec![Arc::new(addon_runners::trivial::TrivialRunner::new(sandboxes))]);
        let plan = engine.plan(addon.to_str().unwrap(), None).await.unwrap();
        let docker = plan.candidates.iter().find(|c| c.runner == "docker").unwrap();
        assert!(!docker.available);
        assert_eq!(docker.reason, "the docker runner is not built into this engine");
        assert_eq!(plan.selected.as_ref().map(|s| s.runner.as_str()), Some("trivial"));
        let probe = engine.probe().await;
        let docker = probe.runners.iter().find(|r| r.name == "docker").unwrap();
        assert!(!docker.available && docker.detail.contains("not built into this engine"), "{docker:?}");
    }
}
