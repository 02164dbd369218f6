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
    AddonRef, Artifact, BuildSpec, CacheUse, Ending, ExitKind, LogStream, ProbeCache, RunDirs, RunEvent, Runner,
    RunnerError, SandboxKind, Sandboxes, StartSpec,
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
        let sandboxes = Arc::new(Sandboxes::new(&sandbox_settings(&config), probes.clone()));
        let ctx = addon_runners::RunnerContext {
            sandboxes: sandboxes.clone(),
            probes,
            settings: addon_runners::Settings {
                #[cfg(feature = "docker")]
                docker: addon_runners::docker::DockerSettings {
                    host: config.docker_runner.host.clone(),
                    build_timeout: config.docker_runner.build_timeout.0,
                    user: config.docker_runner.user.clone(),
                    // Egress: the daemon's default (its bridge), as Docspell's builds.
                    build_network: config.docker_runner.build_network.clone().or(match config.network.build {
                        crate::config::BuildNetwork::Egress => None,
                        crate::config::BuildNetwork::Host => Some("host".to_string()),
                        crate::config::BuildNetwork::None => Some("none".to_string()),
                    }),
                    helper: config.nspawn.helper(),
                },
                #[cfg(feature = "nix")]
                nix: addon_runners::nix::NixSettings {
                    nix_binary: config.nix_runner.nix_binary.clone(),
                    build_timeout: config.nix_runner.build_timeout.0,
                    extra_args: {
                        let mut a = config.nix_runner.extra_args.clone();
                        if config.network.build == crate::config::BuildNetwork::None
                            && !a.iter().any(|x| x == "--offline")
                        {
                            a.push("--offline".into());
                        }
                        a
                    },
                },
                oci: config.oci_runner.settings(config.network.build),
            },
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
        Engine { config, runners, sandboxes, digests: DigestCache::new() }
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
        Engine { config, runners: slots, sandboxes, digests: DigestCache::new() }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The runner called `name`, when this engine has it.
    pub fn runner(&self, name: &str) -> Option<Arc<dyn Runner>> {
        self.runners.iter().find(|s| s.name == name).and_then(|s| s.runner.clone())
    }

    /// The engine's sandboxes.
    pub fn sandboxes(&self) -> &Sandboxes {
        &self.sandboxes
    }

    /// Probes this host for every runner and sandbox.
    pub async fn probe(&self) -> RunnersReport {
        let mut runners = Vec::new();
        for slot in &self.runners {
            let serves = slot.serves.iter().map(|s| s.as_str().to_string()).collect();
            runners.push(match &slot.runner {
                Some(r) => {
                    let a = r.probe().await;
                    RunnerProbe {
                        name: slot.name.clone(),
                        available: a.available,
                        version: a.version,
                        detail: a.detail,
                        serves,
                        builtin: slot.builtin,
                        capabilities: Some(r.info().capabilities),
                    }
                }
                None => RunnerProbe {
                    name: slot.name.clone(),
                    available: false,
                    version: None,
                    detail: slot.missing.clone().unwrap_or_default(),
                    serves,
                    builtin: slot.builtin,
                    capabilities: None,
                },
            });
        }
        let enforcement = self.sandboxes.enforcement().describe();
        let sandboxes = self
            .sandboxes
            .all()
            .iter()
            .map(|s| crate::report::SandboxProbe { probe: s.probe(), limits: enforcement.clone() })
            .collect();
        RunnersReport { runners, sandboxes }
    }

    /// Explains runner resolution for one addon without running anything.
    pub async fn plan(&self, source: &str, runners: Option<&[String]>) -> Result<PlanReport, EngineError> {
        let scratch = self.scratch()?;
        let addon = source::open(source, &self.config, scratch.path(), None, Some(&self.digests))
            .map_err(|error| EngineError::Source { source_arg: source.to_string(), error })?;
        let d = addon.parsed.descriptor.clone().unwrap_or_else(|| empty_descriptor(source));
        let order = runners.unwrap_or(&self.config.runner.0);
        let resolved = resolve(&d, order, &self.runners, &self.sandboxes, self.config.sandbox).await;
        let mut candidates = Vec::new();
        for r in &resolved {
            let usable = r.enabled && r.configured && r.available;
            let cannot_build = match (usable, addon.parsed.is_valid(), &addon.root) {
                (true, true, Some(root)) => self.cannot_build(&d, &addon.digest.to_string(), root, r).await,
                _ => None,
            };
            candidates.push(Candidate {
                runner: r.name.clone(),
                enabled: r.enabled,
                configured: r.configured,
                available: r.available,
                sandbox: r.sandbox.map(|s| s.as_str().to_string()).or_else(|| {
                    let isolates = self.runner(&r.name).is_some_and(|x| !x.info().capabilities.uses_sandbox);
                    isolates.then(|| r.name.clone())
                }),
                reason: r.reason.clone(),
                cannot_build,
            });
        }
        let mut reason = None;
        let selected = if !addon.parsed.is_valid() {
            reason = Some(format!("the descriptor is invalid: {}", first_error(&addon)));
            None
        } else if !self.config.allow_impure && !d.pure() {
            reason = Some(impure_refusal(&d));
            None
        } else {
            let first = resolved
                .iter()
                .zip(&candidates)
                .find(|(r, c)| r.enabled && r.configured && r.available && c.cannot_build.is_none());
            let first = first.map(|(r, _)| r);
            if first.is_none() {
                let builds: Vec<String> = candidates
                    .iter()
                    .filter_map(|c| c.cannot_build.as_ref().map(|why| format!("{}: {why}", c.runner)))
                    .collect();
                reason = Some(if builds.is_empty() {
                    no_runner_reason(&resolved)
                } else {
                    format!("no runner can build it: {}", builds.join("; "))
                });
            }
            first.map(|r| Selected {
                runner: r.name.clone(),
                sandbox: candidates.iter().find(|c| c.runner == r.name).and_then(|c| c.sandbox.clone()),
            })
        };
        let origin = crate::identity::origin_of(source, None);
        let identity = crate::identity::resolve(&self.config, &d.meta.name, &origin, &addon.digest.to_string(), false);
        Ok(PlanReport {
            identity,
            addon: PlanAddon {
                name: d.meta.name.clone(),
                version: d.meta.version.clone(),
                digest: addon.digest.to_string(),
            },
            pure: d.pure(),
            networking: d.networking(),
            candidates,
            selected,
            reason,
        })
    }

    /// Why runner `r` cannot build this addon, known before building: the runner can tell
    /// (a flake with no default package), or its build failed recently and is remembered.
    async fn cannot_build(
        &self,
        d: &Descriptor,
        digest: &str,
        root: &Path,
        r: &crate::resolve::Resolved,
    ) -> Option<String> {
        let (Some(runner), Some(section)) = (self.runner(&r.name), r.section) else { return None };
        let spec = BuildSpec {
            addon: AddonRef { name: d.meta.name.clone(), version: d.meta.version.clone(), digest: digest.to_string() },
            section,
            descriptor: d.clone(),
            addon_dir: root.to_path_buf(),
            content_dir: PathBuf::new(),
        };
        if let Some(why) = runner.cannot_build(&spec).await {
            return Some(why);
        }
        let remember = self.config.remember_failed_builds.0;
        if remember.is_zero() {
            return None;
        }
        let key = artifact_key(&runner, &spec).await.ok().flatten()?;
        let (meta, age) = self.cache().ok()?.remembered_failure(&key, remember)?;
        let first = meta.data.message.split(addon_runners::runner::BUILD_LOG_MARK).next().unwrap_or("").to_string();
        Some(format!("{}: {first}", remembered_note(age, remember)))
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
                let longest = plugins
                    .chain([
                        self.config.docker_runner.build_timeout.0,
                        self.config.nix_runner.build_timeout.0,
                        self.config.oci_runner.build_timeout.0,
                    ])
                    .max()
                    .unwrap_or_default();
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
            let _ = std::fs::remove_dir_all(self.config.cache_dir.join(crate::build_log::DIR));
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
            let owner = e.meta.as_ref().and_then(|m| m.key.parts.get("runner")).cloned().unwrap_or_default();
            let (Some(runner), Some(artifact)) = (self.runner(&owner), e.data::<addon_runners::Artifact>()) else {
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

    async fn run_one(&self, ctx: &RunCtx<'_>, idx: usize, src: &str, addon: &LoadedAddon) -> AddonReport {
        let (req, cancel) = (ctx.req, ctx.cancel);
        let start = Instant::now();
        let mut report = base_report(src, addon);
        let Some(d) = addon.descriptor() else {
            report.result = AddonResult::ExecutionFailed;
            report.error = Some(format!("the descriptor is invalid: {}", first_error(addon)));
            return report;
        };
        if !self.config.allow_impure && !d.pure() {
            report.result = AddonResult::ExecutionFailed;
            report.error = Some(impure_refusal(d));
            return report;
        }
        let declared = req.origins.iter().find(|(s, _)| s == src).map(|(_, o)| o.as_str());
        let ident = crate::identity::resolve(
            &self.config,
            &d.meta.name,
            &crate::identity::origin_of(src, declared),
            &addon.digest.to_string(),
            true,
        );
        if let Some(note) = &ident.note {
            tracing::warn!(addon = %d.id(), "{note}");
        }
        report.identity = Some(ident.clone());
        let order = req.runners.as_deref().unwrap_or(&self.config.runner.0);
        // Candidates are resolved one at a time, so a run probes only the runtimes it reaches.
        let names: Vec<String> = order
            .iter()
            .filter(|n| self.runners.iter().any(|s| s.name == **n && s.section_for(d).is_some()))
            .cloned()
            .collect();
        let mut seen = Vec::new();
        let mut attempt_no = 0;
        for name in names {
            let cand = resolve_one(d, &name, order, &self.runners, &self.sandboxes, self.config.sandbox).await;
            seen.push(cand.clone());
            if !(cand.enabled && cand.configured && cand.runnable) {
                continue;
            }
            let (Some(runner), Some(section)) = (self.runner(&cand.name), cand.section) else { continue };
            let attempt = self.attempt(ctx, idx, attempt_no, d, addon, &ident, &runner, section, cand.sandbox).await;
            attempt_no += 1;
            report.runner = Some(cand.name.clone());
            report.sandbox = attempt.sandbox.clone();
            report.cache = attempt.cache;
            report.result = attempt.result;
            report.exit_code = attempt.exit_code;
            report.error = attempt.error.clone();
            report.output = attempt.output.clone();
            report.stderr_tail = attempt.stderr_tail.clone();
            report.rejected_files = attempt.rejected.clone();
            report.log_lines_dropped += attempt.log_lines_dropped;
            report.termination = attempt.termination;
            report.resources = attempt.resources;
            report.limits = Some(attempt.limits);
            let (p, a) = (&mut report.phases_ms, &attempt.phases);
            (p.prepare, p.build, p.run, p.collect, p.cleanup) =
                (p.prepare + a.prepare, p.build + a.build, p.run + a.run, p.collect + a.collect, p.cleanup + a.cleanup);
            report.attempts.push(Attempt {
                runner: cand.name.clone(),
                sandbox: attempt.sandbox.clone(),
                result: attempt.result,
                error: attempt.error.clone(),
            });
            // A pure addon may run again elsewhere; an impure one only when nothing of it ran
            // (its build or setup failed), since a run may have had effects beyond its output.
            let never_ran = !attempt.started;
            let fall_through = (d.pure() || never_ran) && attempt.result.may_fall_through() && !cancel.is_cancelled();
            if !fall_through {
                break;
            }
            let why = if never_ran { "could not start" } else { "failed" };
            tracing::info!(addon = %d.id(), runner = %cand.name, result = attempt.result.as_str(), "the addon {why} on this runner; trying the next runner, if any");
        }
        if attempt_no == 0 {
            if seen.is_empty() {
                // Nothing the addon supports is configured: explain with the full picture.
                seen = resolve(d, order, &self.runners, &self.sandboxes, self.config.sandbox).await;
            }
            report.result = AddonResult::ExecutionFailed;
            report.error = Some(no_runner_reason(&seen));
        }
        report.duration_ms = start.elapsed().as_millis() as u64;
        report
    }

    #[allow(clippy::too_many_arguments)] // one attempt: which addon, which runner, which try
    async fn attempt(
        &self,
        ctx: &RunCtx<'_>,
        idx: usize,
        attempt_no: usize,
        d: &Descriptor,
        addon: &LoadedAddon,
        ident: &crate::identity::Identity,
        runner: &Arc<dyn Runner>,
        section: Section,
        sandbox: Option<SandboxKind>,
    ) -> AttemptOutcome {
        let RunCtx { run_id, req, output_dir, events, cancel, cache } = *ctx;
        let label = d.id();
        let work_dir = self.config.working_dir.join(format!("run-{run_id}-{idx}-{attempt_no}"));
        let staging = output_dir.join(STAGING).join(format!("{idx}-{label}-{attempt_no}"));
        let mut outcome = AttemptOutcome::failed(sandbox.map(|s| s.as_str().to_string()), String::new());
        let limits = self.limits_for(d, ident, req);
        outcome.limits = limits;
        let started = Instant::now();
        let prepare_span = tracing::info_span!("prepare", addon = %label);
        // The addon's persistent CACHE_DIR (by name) and HOME (by name and version) are cache
        // entries, held (shared) for the whole run.
        let (data, home) = match self.persistent_dirs(cache, d, ident).instrument(prepare_span.clone()).await {
            Ok(dirs) => dirs,
            Err(e) => {
                outcome.error = Some(format!("the CACHE_DIR or HOME of {label}: {e}"));
                return outcome;
            }
        };
        let cache_dir = data.content();
        let addon_dir =
            match self.prepare(d, addon, req, &work_dir, &staging, &cache_dir).instrument(prepare_span).await {
                Ok(dir) => dir,
                Err(e) => {
                    outcome.error = Some(format!("preparing the run of {label}: {e}"));
                    self.cleanup(&work_dir, req.keep_work);
                    crate::settle::remove(&staging);
                    return outcome;
                }
            };
        if let Some(tx) = events {
            let _ = tx
                .send(Event::Started {
                    addon: label.clone(),
                    runner: runner.info().name,
                    sandbox: sandbox.map(|s| s.as_str().to_string()),
                })
                .await;
        }
        outcome.phases.prepare = started.elapsed().as_millis() as u64;
        let dropped = Arc::new(AtomicU64::new(0));
        let log = log_sink(&label, events.cloned(), dropped.clone());
        let timeout = req.timeout.unwrap_or(self.config.run_timeout.0);
        let mut args = d.args.clone();
        args.push("arguments/user-input".to_string());
        let addon_ref =
            AddonRef { name: d.meta.name.clone(), version: d.meta.version.clone(), digest: addon.digest.to_string() };
        let home_dir = home.content();
        let running = Instant::now();
        let build_spec = BuildSpec {
            addon: addon_ref.clone(),
            section,
            descriptor: d.clone(),
            addon_dir: addon_dir.clone(),
            content_dir: PathBuf::new(),
        };
        let build_span = tracing::info_span!("build", addon = %label, runner = %runner.info().name);
        let built = self.artifact(runner, &build_spec, cache, &log, cancel).instrument(build_span).await;
        outcome.phases.build = running.elapsed().as_millis() as u64;
        let ran = match built {
            Err(e) => Err(e),
            Ok((artifact, entry, cache_use)) => {
                outcome.cache = cache_use;
                let spec = StartSpec {
                    run_id: work_dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default(),
                    addon: addon_ref,
                    section,
                    descriptor: d.clone(),
                    artifact,
                    artifact_dir: entry.as_ref().map(|e| e.content()),
                    args,
                    env: self.extra_env(d, ident, req),
                    dirs: RunDirs {
                        work: work_dir.clone(),
                        addon: addon_dir.clone(),
                        output: staging.clone(),
                        cache: cache_dir.clone(),
                        home: home_dir.clone(),
                        scratch: work_dir.with_extension("root"),
                    },
                    network: d.networking(),
                    limits,
                    sandbox,
                };
                let collect = d.collect_output().then_some(self.config.max_stdout.0);
                let run_span = tracing::info_span!("run", addon = %label, runner = %runner.info().name);
                let ran = self
                    .follow(runner, spec, timeout, collect, &log, cancel, &mut outcome.started)
                    .instrument(run_span)
                    .await;
                // The artifact's cache entry is held for the whole run: a concurrent prune
                // cannot remove the image of a run in progress.
                drop(entry);
                ran
            }
        };
        let collecting = Instant::now();
        let collect_span = tracing::info_span!("collect", addon = %label).entered();
        // Only files and directories leave an addon's output, owned by the engine's user and
        // without privileges: a symlink there (`x -> /etc/shadow`) would name a host file to
        // whoever reads the output next, a setuid file made by a container's root would be a
        // root shell. A walk that cannot finish removes the output and fails the run.
        let output_settled = crate::settle::output(&staging);
        let output_safe = output_settled.is_ok();
        if let Ok(s) = &output_settled {
            if s.removed_count > 0 {
                tracing::warn!(addon = %label, "removed {} entries from its output that are not files or directories: {}", s.removed_count, s.removed.join(", "));
            }
        }
        match ran {
            Err(e) => {
                outcome.error = Some(error_with_tail(&e));
                outcome.stderr_tail = e.log_tail().to_vec();
            }
            Ok((supervised, isolation)) => {
                outcome.sandbox = Some(isolation);
                outcome.stderr_tail = supervised.stderr_tail.clone();
                outcome.phases.run = supervised.duration.as_millis() as u64;
                let usage = supervised.usage;
                outcome.resources = Resources {
                    peak_memory_bytes: usage.peak_memory_bytes,
                    cpu_ms: usage.cpu_ms,
                    wall_ms: Some(supervised.duration.as_millis() as u64),
                };
                if usage.peak_memory_bytes.is_none() || usage.cpu_ms.is_none() {
                    tracing::debug!(addon = %label, "peak memory or CPU time not measured here");
                }
                judge(&mut outcome, &supervised, d, &staging, timeout, &limits);
            }
        }
        // Nothing the addon keeps between runs may carry privileges on the host either.
        let mut unsafe_trees = Vec::new();
        if let Err(e) = output_settled {
            unsafe_trees.push(e);
        }
        for (dir, what) in [(&cache_dir, "its CACHE_DIR"), (&home_dir, "its HOME")] {
            match crate::settle::kept(dir, what) {
                Ok(s) if s.defused + s.removed_count > 0 => tracing::warn!(
                    addon = %label,
                    "{what}: removed setuid/setgid bits or file capabilities from {} entries and removed {} special files ({})",
                    s.defused,
                    s.removed_count,
                    s.removed.join(", ")
                ),
                Ok(_) => {}
                Err(e) => unsafe_trees.push(e),
            }
        }
        if !unsafe_trees.is_empty() {
            outcome.result = AddonResult::ExecutionFailed;
            outcome.output = None;
            outcome.error = Some(format!("after the run of {label}: {}", unsafe_trees.join("; ")));
        }
        if outcome.result == AddonResult::Success {
            if let Err(e) = addon_tree::merge_into(&staging, output_dir) {
                outcome.result = AddonResult::ExecutionFailed;
                outcome.error = Some(format!("moving the output of {label} into {}: {e}", output_dir.display()));
            }
        }
        // Set aside only what was made safe: a tree whose walk failed (and that could not be
        // removed) stays in the private staging folder, never where others read the output.
        if outcome.result != AddonResult::Success && output_safe && crate::settle::has_entries(&staging) {
            let rejected = output_dir.join(".rejected").join(format!("{idx}-{label}-{attempt_no}"));
            if fs::create_dir_all(rejected.parent().unwrap_or(output_dir)).is_ok()
                && fs::rename(&staging, &rejected).is_ok()
            {
                tracing::warn!(addon = %label, "the addon failed; its output files were set aside in {}", rejected.display());
                outcome.rejected = Some(rejected);
            }
        }
        outcome.phases.collect = collecting.elapsed().as_millis() as u64;
        drop(collect_span);
        let cleaning = Instant::now();
        tracing::info_span!("cleanup", addon = %label).in_scope(|| {
            crate::settle::remove(&staging);
            self.cleanup(&work_dir, req.keep_work);
        });
        drop((data, home));
        outcome.phases.cleanup = cleaning.elapsed().as_millis() as u64;
        outcome.log_lines_dropped = dropped.load(Ordering::Relaxed);
        if outcome.log_lines_dropped > 0 {
            tracing::warn!(addon = %label, "{} log lines were not delivered to the event channel: it was full (the receiver did not keep up)", outcome.log_lines_dropped);
        }
        outcome
    }

    /// The runner's artifact for `spec`: from the engine's cache, or built now under the cache
    /// lock (so concurrent engines build once) and stored. The cache entry is returned too, to be
    /// held while the artifact is used.
    async fn artifact(
        &self,
        runner: &Arc<dyn Runner>,
        spec: &BuildSpec,
        cache: &Cache,
        log: &addon_runners::LogSink,
        cancel: &CancellationToken,
    ) -> Result<(Option<Artifact>, Option<Entry<Artifact>>, CacheUse), RunnerError> {
        let info = runner.info();
        let Some(key) = artifact_key(runner, spec).await? else { return Ok((None, None, CacheUse::None)) };
        let remember = self.config.remember_failed_builds.0;
        // Shown as a progress line on a terminal, kept whole for the file a failure names.
        let build_log = crate::build_log::BuildLog::new(&info.name, &spec.addon.label());
        let log = build_log.sink(log.clone());
        let (cache, runner2, spec, cancel) = (cache.clone(), runner.clone(), spec.clone(), cancel.clone());
        let (log_dir, build_log2, runner_name) = (self.config.cache_dir.clone(), build_log.clone(), info.name.clone());
        let handle = tokio::runtime::Handle::current();
        let label = spec.addon.label();
        let spec_label = label.clone();
        let name = info.name.clone();
        let entry = tokio::task::spawn_blocking(move || {
            let valid_runner = runner2.clone();
            let valid_handle = handle.clone();
            cache.get_or_build_remembering(
                &key,
                &label,
                move |a: &Artifact, _| valid_handle.block_on(valid_runner.artifact_valid(a)),
                |content| {
                    let spec = BuildSpec { content_dir: content.to_path_buf(), ..spec };
                    handle.block_on(async {
                        tokio::select! {
                            // Only the build's own failure is remembered; a runtime that
                            // could not be reached says nothing about the addon.
                            r = runner2.build(&spec, log) => r.map_err(|e| match e {
                                RunnerError::Build { message, log_tail, .. } => {
                                    let whole = build_log2
                                        // The digest too: another addon claiming the name
                                        // does not write over this one's log.
                                        .save(&log_dir, &runner_name, &spec.addon.label(), spec.addon.short_digest())
                                        .map(|f| format!(" (the whole build log: {})", f.display()))
                                        .unwrap_or_default();
                                    addon_cache::BuildFailure {
                                        message: format!(
                                            "{message}{whole}{}{}",
                                            addon_runners::runner::BUILD_LOG_MARK,
                                            log_tail.join("\n")
                                        ),
                                        remember: true,
                                    }
                                }
                                other => addon_cache::BuildFailure { message: other.to_string(), remember: false },
                            }),
                            // Dropping the build stops it (the process is killed, the stream
                            // closed); a cancelled build says nothing about the addon.
                            _ = cancel.cancelled() => Err(addon_cache::BuildFailure {
                                message: format!("the run was cancelled during the {name} build"),
                                remember: false,
                            }),
                        }
                    })
                },
                remember,
            )
        })
        .await
        .map_err(|e| RunnerError::setup(&info.name, format!("build task failed: {e}")))?;
        build_log.finish();
        match entry {
            Ok(e) => {
                let used = if e.hit { CacheUse::Hit } else { CacheUse::Miss };
                Ok((Some(e.data().clone()), Some(e), used))
            }
            Err(addon_cache::CacheError::Build { message, .. }) => {
                Err(RunnerError::build(&info.name, &spec_label, &message))
            }
            Err(addon_cache::CacheError::Remembered { message, age, .. }) => Err(RunnerError::build(
                &info.name,
                &spec_label,
                &format!("{} (not tried again: {})", message, remembered_note(age, remember)),
            )),
            Err(other) => Err(RunnerError::setup(&info.name, other.to_string())),
        }
    }

    /// Starts a run and follows its events to the end: stdout collected (up to the limit) or
    /// logged, stderr logged with its tail kept, the timeout and cancellation enforced by asking
    /// the runner to stop (SIGTERM, grace, kill). A runner that does not report the end within
    /// the grace and some slack is a failed runner.
    #[allow(clippy::too_many_arguments)] // one run, all of its inputs, and whether it started
    async fn follow(
        &self,
        runner: &Arc<dyn Runner>,
        spec: StartSpec,
        timeout: Duration,
        collect: Option<u64>,
        log: &addon_runners::LogSink,
        cancel: &CancellationToken,
        started_flag: &mut bool,
    ) -> Result<(addon_runners::Supervised, String), RunnerError> {
        let name = runner.info().name;
        let started_at = Instant::now();
        let run_id = spec.run_id.clone();
        let mut started = runner.start(spec).await?;
        // From here the addon may have run, whatever happens next.
        *started_flag = true;
        let grace = self.config.kill_grace.0;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let stop_wait = tokio::time::sleep(Duration::MAX / 4);
        tokio::pin!(stop_wait);
        let mut stopping: Option<Ending> = None;
        let mut out = Collector::new(collect);
        let exit = loop {
            tokio::select! {
                event = started.events.recv() => match event {
                    None => {
                        return Err(RunnerError::Runner {
                            runner: name.clone(),
                            message: format!("the run {run_id} ended without reporting how (the runner went away)"),
                        })
                    }
                    Some(RunEvent::Stdout(bytes)) => {
                        if !out.stdout(&bytes, log) && stopping.is_none() {
                            stopping = Some(Ending::StdoutTooLarge(collect.unwrap_or(0)));
                            let _ = runner.stop(&run_id, Duration::ZERO).await;
                            stop_wait.as_mut().reset(tokio::time::Instant::now() + addon_runners::runner::STOP_SLACK);
                        }
                    }
                    Some(RunEvent::Stderr(bytes)) => out.stderr(&bytes, log),
                    Some(RunEvent::Exited(exit)) => break exit,
                    Some(RunEvent::Failed(e)) => return Err(e),
                },
                _ = &mut deadline, if stopping.is_none() => {
                    stopping = Some(Ending::TimedOut(timeout));
                    if let Err(e) = runner.stop(&run_id, grace).await {
                        tracing::warn!("{name}: stopping run {run_id}: {e}");
                    }
                    stop_wait.as_mut().reset(tokio::time::Instant::now() + grace + addon_runners::runner::STOP_SLACK);
                }
                _ = cancel.cancelled(), if stopping.is_none() => {
                    stopping = Some(Ending::Cancelled);
                    if let Err(e) = runner.stop(&run_id, grace).await {
                        tracing::warn!("{name}: stopping run {run_id}: {e}");
                    }
                    stop_wait.as_mut().reset(tokio::time::Instant::now() + grace + addon_runners::runner::STOP_SLACK);
                }
                _ = &mut stop_wait => {
                    return Err(RunnerError::Runner {
                        runner: name.clone(),
                        message: format!("the run {run_id} did not end within {:?} of being stopped", grace + addon_runners::runner::STOP_SLACK),
                    })
                }
            }
        };
        let (stdout, stderr_tail) = out.finish(log);
        let ending = stopping.unwrap_or(match exit.kind {
            ExitKind::Code(c) => Ending::Exited(c),
            ExitKind::Limit(why) => Ending::Limit(why),
        });
        let supervised = addon_runners::Supervised {
            ending,
            stdout,
            stderr_tail,
            duration: started_at.elapsed(),
            usage: exit.usage,
        };
        Ok((supervised, started.sandbox))
    }

    /// The limits of one addon's run: configured, then per addon (when the name is its), then
    /// per request.
    fn limits_for(&self, d: &Descriptor, ident: &crate::identity::Identity, req: &RunRequest) -> addon_runners::Limits {
        let mut l = self.config.limits;
        if let Some(o) = self.config.addon_limits.get(&d.meta.name).filter(|_| ident.settings) {
            l = l.with(o);
        }
        l.with(&req.limits).to_limits()
    }

    /// The addon's CACHE_DIR (kept by name and identity, so across its versions as Docspell
    /// does, but never shared with another addon of the same name) and HOME (kept by name,
    /// identity and version, so an interpreter's compile cache stays warm between runs of the
    /// same code).
    async fn persistent_dirs(
        &self,
        cache: &Cache,
        d: &Descriptor,
        ident: &crate::identity::Identity,
    ) -> Result<(Entry<()>, Entry<()>), String> {
        let data_key =
            addon_cache::Key::new(addon_cache::Kind::Data).with("addon", &d.meta.name).with("identity", &ident.key);
        let home_key = addon_cache::Key::new(addon_cache::Kind::Home)
            .with("addon", &d.meta.name)
            .with("identity", &ident.key)
            .with("version", &d.meta.version);
        let (cache, name, id) = (cache.clone(), d.meta.name.clone(), d.id());
        tokio::task::spawn_blocking(move || {
            let data = cache.get_or_build(&data_key, &name, |_, _| true, |_| Ok(())).map_err(|e| e.to_string())?;
            let home = cache
                .get_or_build(
                    &home_key,
                    &id,
                    |_, _| true,
                    |c| fs::create_dir_all(c.join(".cache")).map_err(|e| e.to_string()),
                )
                .map_err(|e| e.to_string())?;
            Ok((data, home))
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Lays out the run directory (SPEC "What an addon sees"). Returns the addon's copy.
    async fn prepare(
        &self,
        d: &Descriptor,
        addon: &LoadedAddon,
        req: &RunRequest,
        work: &Path,
        staging: &Path,
        cache_dir: &Path,
    ) -> std::io::Result<PathBuf> {
        let root = addon.root.clone().ok_or_else(|| std::io::Error::other("a descriptor file alone cannot be run"))?;
        let addon_dir = work.join("addons").join(d.id());
        let work = work.to_path_buf();
        let staging = staging.to_path_buf();
        let user_input = req.user_input.clone();
        let inputs = req.inputs.clone();
        let item = req.item.clone();
        let (addon_dir2, cache_dir2) = (addon_dir.clone(), cache_dir.to_path_buf());
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            fs::create_dir_all(&work)?;
            fs::create_dir_all(work.with_extension("root"))?;
            fs::create_dir_all(addon_dir2.parent().unwrap_or(&work))?;
            copy_tree(&root, &addon_dir2)?;
            fs::create_dir_all(work.join("arguments"))?;
            fs::write(work.join("arguments/user-input"), user_input)?;
            fs::create_dir_all(work.join("temp"))?;
            // Private to the engine's user: while an addon runs, what it writes there is not yet
            // made safe (a container's root can make a setuid file), and no other user of the
            // host may reach it.
            fs::create_dir_all(staging.parent().unwrap_or(&staging))?;
            let _ = std::fs::set_permissions(
                staging.parent().unwrap_or(&staging),
                std::os::unix::fs::PermissionsExt::from_mode(0o700),
            );
            fs::create_dir_all(&staging)?;
            fs::create_dir_all(&cache_dir2)?;
            for (dest, src) in &inputs {
                let rel = normalise_relative(dest).map_err(std::io::Error::other)?;
                let target = work.join(rel);
                if let Some(p) = target.parent() {
                    fs::create_dir_all(p)?;
                }
                if src.is_dir() {
                    copy_tree(src, &target)?;
                } else {
                    fs::copy(src, &target)?;
                }
            }
            if let Some(item) = &item {
                copy_tree(item, &work.join("item"))?;
            }
            Ok(())
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(addon_dir)
    }

    fn extra_env(&self, d: &Descriptor, ident: &crate::identity::Identity, req: &RunRequest) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = Vec::new();
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into());
        env.push(("PATH".into(), path));
        for (k, v) in std::env::vars() {
            if k == "LANG" || k == "LANGUAGE" || k.starts_with("LC_") {
                env.push((k, v));
            }
        }
        if req.item.is_some() {
            for (k, v) in ITEM_ENV {
                env.push((k.to_string(), v.to_string()));
            }
        }
        if let Some(vars) = self.config.env.get(&d.meta.name).filter(|_| ident.settings) {
            env.extend(vars.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        env.extend(req.env.iter().cloned());
        env
    }

    fn cleanup(&self, work: &Path, keep: bool) {
        crate::settle::remove(&work.with_extension("root"));
        if keep {
            match crate::settle::kept_work(work) {
                Ok(_) => tracing::info!("keeping the run directory {}", work.display()),
                Err(e) => tracing::error!("not keeping the run directory {}: {e}", work.display()),
            }
            return;
        }
        crate::settle::remove(work);
    }
}

const STAGING: &str = ".addon-staging";

fn sandbox_settings(config: &Config) -> addon_runners::SandboxSettings {
    addon_runners::SandboxSettings {
        nspawn_binary: config.nspawn.nspawn_binary.clone(),
        sudo_binary: config.nspawn.sudo_binary.clone(),
        identity: addon_runners::sandbox::Identity { uid: config.sandbox_user.uid, gid: config.sandbox_user.gid },
        helper: config.nspawn.helper(),
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

/// What every addon of one run shares.
#[derive(Clone, Copy)]
struct RunCtx<'a> {
    run_id: &'a str,
    req: &'a RunRequest,
    output_dir: &'a Path,
    events: Option<&'a Sender<Event>>,
    cancel: &'a CancellationToken,
    cache: &'a Cache,
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

/// The log callback of one addon: every line goes to `tracing`; to the job server's event channel
/// when there is room, else it is counted in `dropped`.
fn log_sink(label: &str, events: Option<Sender<Event>>, dropped: Arc<AtomicU64>) -> addon_runners::LogSink {
    let label = label.to_string();
    Arc::new(move |stream, line: &str| {
        // What the addon printed is shown to people, never obeyed by their terminal.
        tracing::info!(target: "addon", "[{}] {}", addon_descriptors::for_terminal(&label), addon_descriptors::for_terminal(line));
        if let Some(tx) = &events {
            let event = Event::Log { addon: label.clone(), stream, line: line.to_string() };
            if let Err(tokio::sync::mpsc::error::TrySendError::Full(_)) = tx.try_send(event) {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}

#[derive(Debug)]
struct AttemptOutcome {
    sandbox: Option<String>,
    cache: CacheUse,
    result: AddonResult,
    exit_code: Option<i32>,
    error: Option<String>,
    output: Option<AddonOutput>,
    stderr_tail: Vec<String>,
    rejected: Option<PathBuf>,
    log_lines_dropped: u64,
    termination: Option<Termination>,
    /// The runner started it: something of it may have run (even when no ending was seen).
    started: bool,
    resources: Resources,
    phases: Phases,
    limits: addon_runners::Limits,
}

impl AttemptOutcome {
    fn failed(sandbox: Option<String>, error: String) -> Self {
        AttemptOutcome {
            sandbox,
            cache: CacheUse::None,
            result: AddonResult::ExecutionFailed,
            exit_code: None,
            error: Some(error),
            output: None,
            stderr_tail: Vec::new(),
            rejected: None,
            log_lines_dropped: 0,
            termination: None,
            started: false,
            resources: Resources::default(),
            phases: Phases::default(),
            limits: addon_runners::Limits::default(),
        }
    }
}

/// Lines of the addon's stderr quoted in an execution error.
const ERROR_TAIL_LINES: usize = 5;

/// Turns what supervision saw into a result (SPEC `addon run`).
fn judge(
    o: &mut AttemptOutcome,
    s: &addon_runners::Supervised,
    d: &Descriptor,
    staging: &Path,
    timeout: Duration,
    limits: &addon_runners::Limits,
) {
    // The end of the addon's own stderr (a sandbox tool's messages are already filtered out)
    // usually says why it failed.
    let last: Vec<&str> = s.stderr_tail.iter().rev().take(ERROR_TAIL_LINES).rev().map(String::as_str).collect();
    let tail = if last.is_empty() { String::new() } else { format!("; its stderr ended with:\n{}", last.join("\n")) };
    o.termination = Some(termination(&s.ending, &s.usage));
    match &s.ending {
        Ending::Exited(0) => {
            o.exit_code = Some(0);
            if !d.collect_output() {
                o.result = AddonResult::Success;
                o.error = None;
                return;
            }
            match AddonOutput::from_stdout(&s.stdout).and_then(|out| out.check(Some(staging)).map(|()| out)) {
                Ok(out) => {
                    o.result = AddonResult::Success;
                    o.error = None;
                    o.output = Some(out);
                }
                Err(e) => {
                    o.result = AddonResult::DecodingError;
                    o.error = Some(e.to_string());
                }
            }
        }
        Ending::Exited(code) => {
            o.result = AddonResult::ExecutionError;
            o.exit_code = Some(*code);
            o.error = Some(if o.termination == Some(Termination::Oom) {
                let limit = limits.memory.map(|m| format!(" of {}", bytesize::ByteSize(m))).unwrap_or_default();
                format!(
                    "{} was killed by the kernel's OOM killer: it needed more than its memory limit{limit} (setting \
                     limits.memory, option --memory); exit code {code}{tail}",
                    d.id()
                )
            } else {
                format!("{} exited with code {code}{tail}", d.id())
            });
        }
        Ending::TimedOut(_) => {
            o.result = AddonResult::Timeout;
            o.error = Some(format!(
                "{} did not finish within {} (setting run-timeout, option --timeout); it was stopped",
                d.id(),
                humantime::format_duration(timeout)
            ));
        }
        Ending::Cancelled => {
            o.result = AddonResult::ExecutionFailed;
            o.error = Some(format!("the run of {} was cancelled; it was stopped", d.id()));
        }
        Ending::StdoutTooLarge(limit) => {
            o.result = AddonResult::DecodingError;
            o.error = Some(format!(
                "{} printed more than {limit} bytes on stdout (setting max-stdout); it was stopped",
                d.id()
            ));
        }
        Ending::Limit(why) => {
            o.result = AddonResult::ExecutionError;
            o.error = Some(format!("{}: {why}{tail}", d.id()));
        }
    }
}

/// How the process ended, from how supervision saw it and what the envelope counted.
fn termination(ending: &Ending, usage: &addon_runners::Usage) -> Termination {
    match ending {
        Ending::Exited(0) => Termination::Exited,
        Ending::Exited(_) if usage.oom_kills > 0 => Termination::Oom,
        // Sandboxes and runtimes report a child ended by signal N as 128 + N.
        Ending::Exited(code) if (129..=128 + 64).contains(code) => Termination::Signaled,
        Ending::Exited(_) => Termination::Exited,
        Ending::TimedOut(_) => Termination::Timeout,
        Ending::Cancelled => Termination::Cancelled,
        Ending::StdoutTooLarge(_) | Ending::Limit(_) => Termination::Limit,
    }
}

fn error_with_tail(e: &RunnerError) -> String {
    match e {
        RunnerError::Build { log_tail, .. } if !log_tail.is_empty() => {
            format!("{e}\n{}", log_tail.join("\n"))
        }
        _ => e.to_string(),
    }
}

fn label(r: &AddonReport) -> String {
    format!("{}-{}", r.name, r.version)
}

fn empty_descriptor(source: &str) -> Descriptor {
    Descriptor {
        meta: addon_descriptors::model::Meta { name: source.to_string(), version: String::new(), description: None },
        triggers: Vec::new(),
        args: Vec::new(),
        runner: Default::default(),
        options: None,
    }
}

fn first_error(addon: &LoadedAddon) -> String {
    addon
        .parsed
        .diagnostics
        .iter()
        .find(|d| d.is_error())
        .map(|d| match (&d.field, d.line) {
            (Some(f), Some(l)) => format!("{f} (line {l}): {}", d.message),
            (Some(f), None) => format!("{f}: {}", d.message),
            (None, _) => d.message.clone(),
        })
        .unwrap_or_else(|| "unknown problem".into())
}

/// The cache key of what `runner` builds for `spec` (None: it builds nothing).
async fn artifact_key(runner: &Arc<dyn Runner>, spec: &BuildSpec) -> Result<Option<addon_cache::Key>, RunnerError> {
    let info = runner.info();
    let Some(parts) = runner.cache_key(spec).await? else { return Ok(None) };
    let mut key = addon_cache::Key::new(addon_cache::Kind::Artifact)
        .with("runner", &info.name)
        .with("runner-version", &info.version)
        .with("section", spec.section.as_str());
    for (k, v) in parts {
        key = key.with(&k, v);
    }
    Ok(Some(key))
}

/// How a remembered build failure is explained.
fn remembered_note(age: Duration, remember: Duration) -> String {
    format!(
        "this build failed {} ago and is remembered for {} (setting remember-failed-builds; \
         `addon cache prune --failed-builds` forgets it)",
        addon_runners::process::human_secs(age),
        addon_runners::process::human_secs(remember)
    )
}

fn impure_refusal(d: &Descriptor) -> String {
    let why = if d.networking() {
        "it asks for network (options.networking: true)"
    } else {
        "it does not collect its output (options.collectOutput: false)"
    };
    format!("refused by policy: {} is impure ({why}) and allow-impure is false", d.id())
}

fn no_runner_reason(resolved: &[crate::resolve::Resolved]) -> String {
    let parts: Vec<String> = resolved.iter().map(|r| format!("{}: {}", r.name, r.reason)).collect();
    format!("no runner can run this addon here ({})", parts.join("; "))
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
        termination: None,
        resources: Resources::default(),
        phases_ms: Phases::default(),
        limits: None,
        identity: None,
    }
}

/// Copies a tree that is not the addon's own doing yet (the addon's source, `--input`, `--item`)
/// into a run directory: modes (without setuid bits), times and links kept, by the walk that
/// never follows a link.
fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    match addon_tree::copy_tree(src, dst) {
        Ok(0) => Ok(()),
        Ok(n) => {
            tracing::debug!("{}: {n} fifos, sockets or devices were not copied", src.display());
            Ok(())
        }
        Err(e) => Err(std::io::Error::other(e.to_string())),
    }
}

/// A run's output as its events arrive: stdout collected up to a limit (or logged line by line
/// when the addon does not collect output), stderr logged line by line with its tail kept.
struct Collector {
    limit: Option<u64>,
    stdout: Vec<u8>,
    out_partial: Vec<u8>,
    err_partial: Vec<u8>,
    tail: std::collections::VecDeque<String>,
}

impl Collector {
    fn new(limit: Option<u64>) -> Collector {
        Collector {
            limit,
            stdout: Vec::new(),
            out_partial: Vec::new(),
            err_partial: Vec::new(),
            tail: Default::default(),
        }
    }

    /// False once stdout grew past the limit.
    fn stdout(&mut self, bytes: &[u8], log: &addon_runners::LogSink) -> bool {
        match self.limit {
            Some(limit) => {
                if self.stdout.len() as u64 + bytes.len() as u64 > limit {
                    return false;
                }
                self.stdout.extend_from_slice(bytes);
            }
            None => {
                self.out_partial.extend_from_slice(bytes);
                for line in drain_lines(&mut self.out_partial) {
                    log(LogStream::Stdout, &line);
                }
            }
        }
        true
    }

    fn stderr(&mut self, bytes: &[u8], log: &addon_runners::LogSink) {
        self.err_partial.extend_from_slice(bytes);
        for line in drain_lines(&mut self.err_partial) {
            self.stderr_line(line, log);
        }
    }

    fn stderr_line(&mut self, line: String, log: &addon_runners::LogSink) {
        log(LogStream::Stderr, &line);
        if self.tail.len() == addon_runners::process::STDERR_TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    /// The collected stdout and stderr tail, with unterminated last lines flushed.
    fn finish(mut self, log: &addon_runners::LogSink) -> (Vec<u8>, Vec<String>) {
        let rest = String::from_utf8_lossy(&std::mem::take(&mut self.err_partial)).trim_end().to_string();
        if !rest.trim().is_empty() {
            self.stderr_line(rest, log);
        }
        let rest = String::from_utf8_lossy(&self.out_partial);
        if !rest.trim().is_empty() {
            log(LogStream::Stdout, rest.trim_end());
        }
        (self.stdout, self.tail.into_iter().collect())
    }
}

/// Removes and returns the complete lines at the front of `buf` (bytes, so that a character
/// split between two chunks stays whole). Lines are capped, so a binary blob cannot grow memory.
fn drain_lines(buf: &mut Vec<u8>) -> Vec<String> {
    const MAX_LINE: usize = 64 * 1024;
    let mut out = Vec::new();
    while let Some(pos) = buf.iter().position(|b| *b == b'\n').or((buf.len() > MAX_LINE).then_some(MAX_LINE - 1)) {
        let line: Vec<u8> = buf.drain(..=pos).collect();
        out.push(String::from_utf8_lossy(&line).trim_end_matches(['\n', '\r']).to_string());
    }
    out
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
        std::fs::create_dir(&addon).unwrap();
        std::fs::write(addon.join("Dockerfile"), "FROM scratch").unwrap();
        std::fs::write(addon.join("run.sh"), "#!/bin/sh").unwrap();
        std::fs::write(
            addon.join("docspell-addon.yml"),
            format!("meta: {{name: a, version: \"1\"}}\nrunner: {{docker: {{enable: true}}, trivial: {{enable: true, exec: run.sh}}}}\n{options}"),
        )
        .unwrap();
        let mut config = Config::default();
        config.working_dir = dir.join("work");
        config.cache_dir = dir.join("cache");
        config.runner = crate::config::RunnerOrder(vec!["docker".into(), "trivial".into()]);
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
        config.sandbox = crate::config::SandboxChoice::None;
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
