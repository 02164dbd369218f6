//! The build step: a runner's artifact from the engine's cache, or built once under its lock.

use super::*;

impl Engine {
    /// The runner's artifact for `spec`: from the engine's cache, or built now under the cache
    /// lock (so concurrent engines build once) and stored. The cache entry is returned too, to be
    /// held while the artifact is used.
    pub(super) async fn artifact(
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
                                RunnerError::Build { runner, addon, message, log_tail } => {
                                    let whole = build_log2
                                        // The digest too: another addon claiming the name
                                        // does not write over this one's log.
                                        .save(&log_dir, &runner_name, &spec.addon.label(), spec.addon.short_digest())
                                        .map(|f| format!(" (the whole build log: {})", f.display()))
                                        .unwrap_or_default();
                                    let message = format!("{message}{whole}");
                                    let error = RunnerError::Build { runner, addon, message, log_tail };
                                    addon_cache::BuildFailure { error, remember: true }
                                }
                                other => addon_cache::BuildFailure { error: other, remember: false },
                            }),
                            // Dropping the build stops it (the process is killed, the stream
                            // closed); a cancelled build says nothing about the addon.
                            _ = cancel.cancelled() => Err(addon_cache::BuildFailure {
                                error: RunnerError::setup(&name, format!("the run was cancelled during the {name} build")),
                                remember: false,
                            }),
                        }
                    })
                },
                remember,
            )
            .map_err(Box::new)
        })
        .await
        .map_err(|e| RunnerError::setup(&info.name, format!("build task failed: {e}")))?;
        build_log.finish();
        let e = match entry {
            Ok(e) => {
                let used = if e.hit { CacheUse::Hit } else { CacheUse::Miss };
                return Ok((Some(e.data().clone()), Some(e), used));
            }
            Err(e) => *e,
        };
        match e {
            addon_cache::GetError::Build { error, .. } => Err(error),
            addon_cache::GetError::Remembered { mut error, age, .. } => {
                if let RunnerError::Build { message, .. } = &mut error {
                    message.push_str(&format!(" (not tried again: {})", remembered_note(age, remember)));
                }
                Err(error)
            }
            addon_cache::GetError::Cache(e) => Err(RunnerError::setup(&info.name, e.to_string())),
        }
    }
}

/// The cache key of what `runner` builds for `spec` (None: it builds nothing).
pub(super) async fn artifact_key(
    runner: &Arc<dyn Runner>,
    spec: &BuildSpec,
) -> Result<Option<addon_cache::Key>, RunnerError> {
    let info = runner.info();
    let Some(parts) = runner.cache_key(spec).await? else { return Ok(None) };
    let mut key = addon_cache::Key::artifact(&info.name)
        .with("runner-version", &info.version)
        .with("section", spec.section.as_str());
    for (k, v) in parts {
        key = key.with(&k, v);
    }
    Ok(Some(key))
}

/// How a remembered build failure is explained.
pub(super) fn remembered_note(age: Duration, remember: Duration) -> String {
    format!(
        "this build failed {} ago and is remembered for {} (setting remember-failed-builds; \
         `addon cache prune --failed-builds` forgets it)",
        addon_runners::process::human_secs(age),
        addon_runners::process::human_secs(remember)
    )
}
