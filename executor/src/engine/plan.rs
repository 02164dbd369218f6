//! What the engine tells before running: the host's runners and sandboxes (`addon runners`) and
//! how an addon would be resolved (`addon plan`).

use super::*;

impl Engine {
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
            .map(|s| {
                let egress = s.egress();
                let mut networks = vec![addon_runners::egress::NetKind::Host];
                if egress.is_ok() {
                    networks.push(addon_runners::egress::NetKind::Egress);
                }
                if s.kind() == SandboxKind::None {
                    networks.retain(|n| *n == addon_runners::egress::NetKind::Host);
                }
                crate::report::SandboxProbe {
                    probe: s.probe(),
                    limits: enforcement.clone(),
                    networks,
                    egress_detail: egress.err(),
                }
            })
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
        let net = crate::network::kind_for(&d, &self.config.network);
        let resolved = resolve(&d, order, &self.runners, &self.sandboxes, self.config.sandbox, net).await;
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
        let network_allow = match identity.settings {
            true => self.config.network.allow.get(&d.meta.name).cloned().unwrap_or_default(),
            false => Vec::new(),
        };
        Ok(PlanReport {
            identity,
            addon: PlanAddon {
                name: d.meta.name.clone(),
                version: d.meta.version.clone(),
                digest: addon.digest.to_string(),
            },
            pure: d.pure(),
            networking: d.networking(),
            network: net,
            network_allow,
            candidates,
            selected,
            reason,
        })
    }

    /// Why runner `r` cannot build this addon, known before building: the runner can tell
    /// (a flake with no default package), or its build failed recently and is remembered.
    pub(super) async fn cannot_build(
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
        let (meta, age) = self.cache().ok()?.remembered_failure::<RunnerError>(&key, remember)?;
        let first = match meta.data.error {
            RunnerError::Build { message, .. } => message,
            other => other.to_string(),
        };
        Some(format!("{}: {first}", remembered_note(age, remember)))
    }
}

pub(super) fn empty_descriptor(source: &str) -> Descriptor {
    Descriptor {
        meta: addon_descriptors::model::Meta { name: source.to_string(), version: String::new(), description: None },
        triggers: Vec::new(),
        args: Vec::new(),
        runner: Default::default(),
        options: None,
    }
}

pub(super) fn first_error(addon: &LoadedAddon) -> String {
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

pub(super) fn impure_refusal(d: &Descriptor) -> String {
    let why = if d.networking() {
        "it asks for network (options.networking: true)"
    } else {
        "it does not collect its output (options.collectOutput: false)"
    };
    format!("refused by policy: {} is impure ({why}) and allow-impure is false", d.id())
}

pub(super) fn no_runner_reason(resolved: &[crate::resolve::Resolved]) -> String {
    let parts: Vec<String> = resolved.iter().map(|r| format!("{}: {}", r.name, r.reason)).collect();
    format!("no runner can run this addon here ({})", parts.join("; "))
}
