//! One addon's run: its attempts on the resolved runners in order, each as the steps prepare,
//! build, start and follow, collect and judge, clean up.

use super::*;

impl Engine {
    pub(super) async fn run_one(&self, ctx: &RunCtx<'_>, idx: usize, src: &str, addon: &LoadedAddon) -> AddonReport {
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
            let net = crate::network::kind_for(d, &self.config.network);
            let cand = resolve_one(d, &name, order, &self.runners, &self.sandboxes, self.config.sandbox, net).await;
            seen.push(cand.clone());
            if !(cand.enabled && cand.configured && cand.runnable) {
                continue;
            }
            let (Some(runner), Some(section)) = (self.runner(&cand.name), cand.section) else { continue };
            let attempt = self.attempt(ctx, idx, attempt_no, d, addon, &ident, &runner, section, cand.sandbox).await;
            attempt_no += 1;
            attempt.record(&cand.name, &mut report);
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
                let net = crate::network::kind_for(d, &self.config.network);
                seen = resolve(d, order, &self.runners, &self.sandboxes, self.config.sandbox, net).await;
            }
            report.result = AddonResult::ExecutionFailed;
            report.error = Some(no_runner_reason(&seen));
        }
        report.duration_ms = start.elapsed().as_millis() as u64;
        report
    }

    /// One attempt on one runner, as its steps: prepare the run directory, build (or find) the
    /// artifact, start and follow the run, collect and judge what it left, clean up.
    #[allow(clippy::too_many_arguments)] // one attempt: which addon, which runner, which try
    pub(super) async fn attempt(
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
        let at = AttemptRun::new(self, ctx, idx, attempt_no, d, ident, sandbox);
        let mut run = match self.prepare_step(at, addon).await {
            Ok(run) => run,
            Err(outcome) => return outcome,
        };
        let built = self.build_step(&mut run, runner, section).await;
        let ran = self.run_step(&mut run, runner, section, built).await;
        self.collect_step(&mut run, ran);
        self.cleanup_step(run)
    }

    /// Prepare: the addon's kept CACHE_DIR and HOME (held for the whole attempt) and the run
    /// directory it sees.
    async fn prepare_step<'c>(
        &self,
        mut at: AttemptRun<'c>,
        addon: &LoadedAddon,
    ) -> Result<Prepared<'c>, AttemptOutcome> {
        let started = Instant::now();
        at.addon_ref.digest = addon.digest.to_string();
        let span = tracing::info_span!("prepare", addon = %at.label);
        // The addon's persistent CACHE_DIR (by name) and HOME (by name and version) are cache
        // entries, held (shared) for the whole run.
        let (data, home) = match self.persistent_dirs(at.ctx.cache, at.d, at.ident).instrument(span.clone()).await {
            Ok(dirs) => dirs,
            Err(e) => {
                at.outcome.error = Some(format!("the CACHE_DIR or HOME of {}: {e}", at.label));
                return Err(at.outcome);
            }
        };
        let cache_dir = data.content();
        let prepared =
            self.prepare(at.d, addon, at.ctx.req, &at.work_dir, &at.staging, &cache_dir).instrument(span).await;
        let addon_dir = match prepared {
            Ok(dir) => dir,
            Err(e) => {
                at.outcome.error = Some(format!("preparing the run of {}: {e}", at.label));
                self.cleanup(&at.work_dir, at.ctx.req.keep_work);
                crate::settle::remove(&at.staging);
                return Err(at.outcome);
            }
        };
        at.outcome.phases.prepare = started.elapsed().as_millis() as u64;
        let home_dir = home.content();
        Ok(Prepared { at, data, home, cache_dir, home_dir, addon_dir })
    }

    /// Build: the runner's artifact, from the cache or built now.
    async fn build_step(
        &self,
        run: &mut Prepared<'_>,
        runner: &Arc<dyn Runner>,
        section: Section,
    ) -> Result<(Option<Artifact>, Option<Entry<Artifact>>), RunnerError> {
        let at = &mut run.at;
        if let Some(tx) = at.ctx.events {
            let _ = tx
                .send(Event::Started {
                    addon: at.label.clone(),
                    runner: runner.info().name,
                    sandbox: at.sandbox.map(|s| s.as_str().to_string()),
                })
                .await;
        }
        let building = Instant::now();
        let build_spec = BuildSpec {
            addon: at.addon_ref.clone(),
            section,
            descriptor: at.d.clone(),
            addon_dir: run.addon_dir.clone(),
            content_dir: PathBuf::new(),
        };
        let span = tracing::info_span!("build", addon = %at.label, runner = %runner.info().name);
        let built = self.artifact(runner, &build_spec, at.ctx.cache, &at.log, at.ctx.cancel).instrument(span).await;
        at.outcome.phases.build = building.elapsed().as_millis() as u64;
        built.map(|(artifact, entry, cache_use)| {
            at.outcome.cache = cache_use;
            (artifact, entry)
        })
    }

    /// Start and follow: the run on the runner, to its end (or its timeout, or cancellation).
    async fn run_step(
        &self,
        run: &mut Prepared<'_>,
        runner: &Arc<dyn Runner>,
        section: Section,
        built: Result<(Option<Artifact>, Option<Entry<Artifact>>), RunnerError>,
    ) -> Result<(addon_runners::Supervised, String), RunnerError> {
        let (artifact, entry) = built?;
        let at = &mut run.at;
        let network = crate::network::network_for(at.d, &self.config.network, at.ident.settings)
            .map_err(|e| RunnerError::setup(&runner.info().name, e))?;
        at.outcome.network = Some(crate::report::NetworkUse {
            policy: network.kind(),
            allowed: match &network {
                addon_runners::egress::Network::Egress(e) => e.allow.iter().map(|d| d.to_string()).collect(),
                _ => Vec::new(),
            },
            refused_packets: None,
            dns_queries: None,
        });
        let mut args = at.d.args.clone();
        args.push("arguments/user-input".to_string());
        let spec = StartSpec {
            run_id: at.work_dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default(),
            addon: at.addon_ref.clone(),
            section,
            descriptor: at.d.clone(),
            artifact,
            artifact_dir: entry.as_ref().map(|e| e.content()),
            args,
            env: self.extra_env(at.d, at.ident, at.ctx.req),
            dirs: RunDirs {
                work: at.work_dir.clone(),
                addon: run.addon_dir.clone(),
                output: at.staging.clone(),
                cache: run.cache_dir.clone(),
                home: run.home_dir.clone(),
                scratch: at.work_dir.with_extension("root"),
            },
            network,
            limits: at.outcome.limits,
            sandbox: at.sandbox,
        };
        let collect = at.d.collect_output().then_some(self.config.max_stdout.0);
        let span = tracing::info_span!("run", addon = %at.label, runner = %runner.info().name);
        let how = addon_runners::follow::Follow {
            timeout: at.timeout,
            collect,
            grace: self.config.kill_grace.0,
            log: &at.log,
            cancel: at.ctx.cancel,
        };
        let ran = addon_runners::follow::follow(runner, spec, how, &mut at.outcome.started).instrument(span).await;
        // The artifact's cache entry is held for the whole run: a concurrent prune cannot
        // remove the image of a run in progress.
        drop(entry);
        ran
    }

    /// Collect and judge: make what the addon left safe (its output, CACHE_DIR and HOME), judge
    /// the run, then move its output into the run's output directory or set it aside.
    fn collect_step(&self, run: &mut Prepared<'_>, ran: Result<(addon_runners::Supervised, String), RunnerError>) {
        let at = &mut run.at;
        let (label, staging, output_dir) = (at.label.clone(), at.staging.clone(), at.ctx.output_dir);
        let outcome = &mut at.outcome;
        let collecting = Instant::now();
        let _span = tracing::info_span!("collect", addon = %label).entered();
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
                if let Some(net) = &mut outcome.network {
                    net.refused_packets = usage.network_refused;
                    net.dns_queries = usage.dns_queries;
                }
                outcome.resources = Resources {
                    peak_memory_bytes: usage.peak_memory_bytes,
                    cpu_ms: usage.cpu_ms,
                    wall_ms: Some(supervised.duration.as_millis() as u64),
                };
                if usage.peak_memory_bytes.is_none() || usage.cpu_ms.is_none() {
                    tracing::debug!(addon = %label, "peak memory or CPU time not measured here");
                }
                let limits = outcome.limits;
                judge(outcome, &supervised, at.d, &staging, at.timeout, &limits);
            }
        }
        // Nothing the addon keeps between runs may carry privileges on the host either.
        let mut unsafe_trees = Vec::new();
        if let Err(e) = output_settled {
            unsafe_trees.push(e.to_string());
        }
        for (dir, what) in [(&run.cache_dir, "its CACHE_DIR"), (&run.home_dir, "its HOME")] {
            match crate::settle::kept(dir, what) {
                Ok(s) if s.defused + s.removed_count > 0 => tracing::warn!(
                    addon = %label,
                    "{what}: removed setuid/setgid bits or file capabilities from {} entries and removed {} special files ({})",
                    s.defused,
                    s.removed_count,
                    s.removed.join(", ")
                ),
                Ok(_) => {}
                Err(e) => unsafe_trees.push(e.to_string()),
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
            let rejected = output_dir.join(".rejected").join(format!("{}-{label}-{}", at.idx, at.attempt_no));
            if fs::create_dir_all(rejected.parent().unwrap_or(output_dir)).is_ok()
                && fs::rename(&staging, &rejected).is_ok()
            {
                tracing::warn!(addon = %label, "the addon failed; its output files were set aside in {}", rejected.display());
                outcome.rejected = Some(rejected);
            }
        }
        outcome.phases.collect = collecting.elapsed().as_millis() as u64;
    }

    /// Clean up: the run directory and the staging folder go; the kept directories are released.
    fn cleanup_step(&self, run: Prepared<'_>) -> AttemptOutcome {
        let Prepared { at, data, home, .. } = run;
        let mut outcome = at.outcome;
        let cleaning = Instant::now();
        tracing::info_span!("cleanup", addon = %at.label).in_scope(|| {
            crate::settle::remove(&at.staging);
            self.cleanup(&at.work_dir, at.ctx.req.keep_work);
        });
        drop((data, home));
        outcome.phases.cleanup = cleaning.elapsed().as_millis() as u64;
        outcome.log_lines_dropped = at.dropped.load(Ordering::Relaxed);
        if outcome.log_lines_dropped > 0 {
            tracing::warn!(addon = %at.label, "{} log lines were not delivered to the event channel: it was full (the receiver did not keep up)", outcome.log_lines_dropped);
        }
        outcome
    }
}

/// What every addon of one run shares.
#[derive(Clone, Copy)]
pub(super) struct RunCtx<'a> {
    pub(super) run_id: &'a str,
    pub(super) req: &'a RunRequest,
    pub(super) output_dir: &'a Path,
    pub(super) events: Option<&'a Sender<Event>>,
    pub(super) cancel: &'a CancellationToken,
    pub(super) cache: &'a Cache,
}

#[derive(Debug)]
pub(super) struct AttemptOutcome {
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
    network: Option<crate::report::NetworkUse>,
}

impl AttemptOutcome {
    /// Writes this attempt into the addon's report: the last attempt decides the result, the
    /// phases add up, every attempt is listed.
    fn record(&self, runner: &str, report: &mut AddonReport) {
        report.runner = Some(runner.to_string());
        report.sandbox = self.sandbox.clone();
        report.cache = self.cache;
        report.result = self.result;
        report.exit_code = self.exit_code;
        report.error = self.error.clone();
        report.output = self.output.clone();
        report.stderr_tail = self.stderr_tail.clone();
        report.rejected_files = self.rejected.clone();
        report.log_lines_dropped += self.log_lines_dropped;
        report.termination = self.termination;
        report.resources = self.resources;
        report.limits = Some(self.limits);
        report.network = self.network.clone();
        let (p, a) = (&mut report.phases_ms, &self.phases);
        (p.prepare, p.build, p.run, p.collect, p.cleanup) =
            (p.prepare + a.prepare, p.build + a.build, p.run + a.run, p.collect + a.collect, p.cleanup + a.cleanup);
        report.attempts.push(Attempt {
            runner: runner.to_string(),
            sandbox: self.sandbox.clone(),
            result: self.result,
            error: self.error.clone(),
        });
    }

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
            network: None,
        }
    }
}

/// Lines of the addon's stderr quoted in an execution error.
pub(super) const ERROR_TAIL_LINES: usize = 5;

/// Turns what supervision saw into a result (SPEC `addon run`).
pub(super) fn judge(
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
pub(super) fn termination(ending: &Ending, usage: &addon_runners::Usage) -> Termination {
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

pub(super) fn error_with_tail(e: &RunnerError) -> String {
    match e {
        RunnerError::Build { log_tail, .. } if !log_tail.is_empty() => {
            format!("{e}\n{}", log_tail.join("\n"))
        }
        _ => e.to_string(),
    }
}

/// One attempt's inputs and where it runs, before anything is made.
struct AttemptRun<'c> {
    ctx: &'c RunCtx<'c>,
    d: &'c Descriptor,
    ident: &'c crate::identity::Identity,
    idx: usize,
    attempt_no: usize,
    sandbox: Option<SandboxKind>,
    label: String,
    addon_ref: AddonRef,
    work_dir: PathBuf,
    staging: PathBuf,
    timeout: Duration,
    log: addon_runners::LogSink,
    dropped: Arc<AtomicU64>,
    outcome: AttemptOutcome,
}

impl<'c> AttemptRun<'c> {
    fn new(
        engine: &Engine,
        ctx: &'c RunCtx<'c>,
        idx: usize,
        attempt_no: usize,
        d: &'c Descriptor,
        ident: &'c crate::identity::Identity,
        sandbox: Option<SandboxKind>,
    ) -> AttemptRun<'c> {
        let label = d.id();
        let mut outcome = AttemptOutcome::failed(sandbox.map(|s| s.as_str().to_string()), String::new());
        outcome.limits = engine.limits_for(d, ident, ctx.req);
        let dropped = Arc::new(AtomicU64::new(0));
        AttemptRun {
            ctx,
            d,
            ident,
            idx,
            attempt_no,
            sandbox,
            work_dir: engine.config.working_dir.join(format!("run-{}-{idx}-{attempt_no}", ctx.run_id)),
            staging: ctx.output_dir.join(STAGING).join(format!("{idx}-{label}-{attempt_no}")),
            timeout: ctx.req.timeout.unwrap_or(engine.config.run_timeout.0),
            log: log_sink(&label, ctx.events.cloned(), dropped.clone()),
            addon_ref: AddonRef { name: d.meta.name.clone(), version: d.meta.version.clone(), digest: String::new() },
            dropped,
            outcome,
            label,
        }
    }
}

/// An attempt whose run directory and kept directories are ready.
struct Prepared<'c> {
    at: AttemptRun<'c>,
    /// The CACHE_DIR and HOME entries, held until clean-up.
    data: Entry<()>,
    home: Entry<()>,
    cache_dir: PathBuf,
    home_dir: PathBuf,
    addon_dir: PathBuf,
}
