//! Runner resolution: the configured order (or `--runner`), intersected with what the addon
//! supports, skipping what this host cannot run. Every decision carries a reason, which is what
//! `addon plan` prints.

use addon_descriptors::{Descriptor, RunnerKind};
use addon_runners::{Isolation, Runner, SandboxKind, Sandboxes};

use crate::config::SandboxChoice;

/// One runner considered for an addon.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub kind: RunnerKind,
    pub enabled: bool,
    pub configured: bool,
    pub available: bool,
    /// For host runners, the sandbox that would wrap it (even when it cannot be used).
    pub sandbox: Option<SandboxKind>,
    /// Why it is or is not usable.
    pub reason: String,
    /// The runner can be started; a sandbox refusal is reported at run time as execution-failed.
    pub runnable: bool,
}

/// Which sandbox a host runner gets under `choice`, or why there is none.
pub fn pick_sandbox(sandboxes: &Sandboxes, choice: SandboxChoice) -> Result<SandboxKind, String> {
    match choice {
        SandboxChoice::Auto => sandboxes.auto().ok_or_else(|| {
            let why: Vec<String> = Sandboxes::AUTO
                .iter()
                .map(|s| format!("{}: {}", s.as_str(), sandboxes.get(*s).probe().detail))
                .collect();
            format!("sandbox auto found no usable sandbox ({}); `auto` never falls back to none", why.join("; "))
        }),
        SandboxChoice::Bwrap => Ok(SandboxKind::Bwrap),
        SandboxChoice::Netns => Ok(SandboxKind::Netns),
        SandboxChoice::Nspawn => Ok(SandboxKind::Nspawn),
        SandboxChoice::None => Ok(SandboxKind::None),
    }
}

/// Considers every runner that is configured or supported, configured ones first in order.
pub async fn resolve(
    descriptor: &Descriptor,
    order: &[RunnerKind],
    runners: &[Box<dyn Runner>],
    sandboxes: &Sandboxes,
    sandbox_choice: SandboxChoice,
) -> Vec<Resolved> {
    resolve_where(descriptor, order, runners, sandboxes, sandbox_choice, |_| true).await
}

/// Resolves only the kinds `want` accepts (the others are left out).
pub async fn resolve_where(
    descriptor: &Descriptor,
    order: &[RunnerKind],
    runners: &[Box<dyn Runner>],
    sandboxes: &Sandboxes,
    sandbox_choice: SandboxChoice,
    want: impl Fn(RunnerKind) -> bool,
) -> Vec<Resolved> {
    let mut kinds: Vec<RunnerKind> = order.to_vec();
    for k in descriptor.runners() {
        if !kinds.contains(&k) {
            kinds.push(k);
        }
    }
    let iso = Isolation { network: descriptor.networking() };
    let mut out = Vec::new();
    for kind in kinds.into_iter().filter(|k| want(*k)) {
        out.push({
            let enabled = descriptor.supports(kind);
            let configured = order.contains(&kind);
            let runner = runners.iter().find(|r| r.kind() == kind);
            let mut sandbox = None;
            let (available, runnable, reason) = match runner {
                None => (false, false, format!("the {kind} runner is not built into this engine")),
                Some(r) => {
                    let probe = r.probe().await;
                    if !probe.available {
                        (false, false, probe.detail)
                    } else if r.capabilities().uses_sandbox {
                        match pick_sandbox(sandboxes, sandbox_choice) {
                            Err(why) => (false, true, why),
                            Ok(kind) => {
                                sandbox = Some(kind);
                                let s = sandboxes.get(kind);
                                match s.check(iso) {
                                    Ok(()) if kind == SandboxKind::None => (
                                        true,
                                        true,
                                        "sandbox none: runs on the bare host, with network (explicit choice)".into(),
                                    ),
                                    Ok(()) => (true, true, format!("sandbox {}: {}", s.name(), s.probe().detail)),
                                    Err(e) => (false, true, e.to_string()),
                                }
                            }
                        }
                    } else {
                        (true, true, probe.detail)
                    }
                }
            };
            let reason = match (enabled, configured) {
                (false, _) => format!("the addon does not enable the {kind} runner"),
                (true, false) => format!("not in the configured runner list; {reason}"),
                _ => reason,
            };
            Resolved { kind, enabled, configured, available, sandbox, reason, runnable }
        });
    }
    out
}

/// The candidates a run tries, in order: enabled, configured and startable.
pub fn run_candidates(resolved: &[Resolved]) -> Vec<&Resolved> {
    resolved.iter().filter(|r| r.enabled && r.configured && r.runnable).collect()
}
