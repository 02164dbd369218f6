//! Runner resolution: the configured order of runner names (or `--runner`), intersected with the
//! runners that serve a descriptor section the addon enables, skipping what this host cannot run.
//! Every decision carries a reason, which is what `addon plan` prints.

use std::sync::Arc;

use addon_descriptors::{Descriptor, Section};
use addon_runners::egress::NetKind;
use addon_runners::{Isolation, Runner, SandboxKind, Sandboxes};

use crate::config::SandboxChoice;

/// One runner the engine knows: built in (compiled in or not) or a plugin.
#[derive(Clone)]
pub struct RunnerSlot {
    pub name: String,
    /// The descriptor sections it serves.
    pub serves: Vec<Section>,
    /// None: not available in this engine at all (`missing` says why).
    pub runner: Option<Arc<dyn Runner>>,
    pub builtin: bool,
    pub missing: Option<String>,
}

impl std::fmt::Debug for RunnerSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerSlot").field("name", &self.name).field("serves", &self.serves).finish()
    }
}

impl RunnerSlot {
    /// The first section this runner serves that the addon enables.
    pub fn section_for(&self, d: &Descriptor) -> Option<Section> {
        self.serves.iter().copied().find(|s| d.enables(*s))
    }
}

/// One runner considered for an addon.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub name: String,
    /// The section it would serve the addon from.
    pub section: Option<Section>,
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

/// `sandbox: auto` found nothing it may use here (it never falls back to none).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sandbox auto found no usable sandbox ({}); `auto` never falls back to none", .why.join("; "))]
pub struct NoSandbox {
    /// Each candidate with why it cannot be used (`bwrap: ...`).
    pub why: Vec<String>,
}

/// Which sandbox a host runner gets under `choice`, or why there is none.
pub fn pick_sandbox(sandboxes: &Sandboxes, choice: SandboxChoice) -> Result<SandboxKind, NoSandbox> {
    match choice {
        SandboxChoice::Auto => sandboxes.auto().ok_or_else(|| NoSandbox {
            why: Sandboxes::AUTO
                .iter()
                .map(|s| format!("{}: {}", s.as_str(), sandboxes.get(*s).probe().detail))
                .collect(),
        }),
        SandboxChoice::Kind(kind) => Ok(kind),
    }
}

/// Considers every runner that is configured or serves the addon, configured ones first in order.
pub async fn resolve(
    descriptor: &Descriptor,
    order: &[String],
    slots: &[RunnerSlot],
    sandboxes: &Sandboxes,
    sandbox_choice: SandboxChoice,
    net: NetKind,
) -> Vec<Resolved> {
    let mut names: Vec<String> = order.to_vec();
    for slot in slots {
        if slot.section_for(descriptor).is_some() && !names.contains(&slot.name) {
            names.push(slot.name.clone());
        }
    }
    let mut out = Vec::new();
    for name in names {
        out.push(resolve_one(descriptor, &name, order, slots, sandboxes, sandbox_choice, net).await);
    }
    out
}

/// Resolves one runner by name.
pub async fn resolve_one(
    descriptor: &Descriptor,
    name: &str,
    order: &[String],
    slots: &[RunnerSlot],
    sandboxes: &Sandboxes,
    sandbox_choice: SandboxChoice,
    net: NetKind,
) -> Resolved {
    let slot = slots.iter().find(|s| s.name == name);
    let section = slot.and_then(|s| s.section_for(descriptor));
    let enabled = section.is_some();
    let configured = order.iter().any(|n| n == name);
    let iso = Isolation { network: net };
    let mut sandbox = None;
    let (available, runnable, reason) = match slot.map(|s| (s, &s.runner)) {
        None => (false, false, format!("no runner is called `{name}`")),
        Some((s, None)) => (false, false, s.missing.clone().unwrap_or_else(|| format!("`{name}` is not available"))),
        Some((_, Some(r))) => {
            let probe = r.probe().await;
            if !probe.available {
                (false, false, probe.detail)
            } else if r.info().capabilities.uses_sandbox {
                match pick_sandbox(sandboxes, sandbox_choice) {
                    Err(why) => (false, true, why.to_string()),
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
            } else if !r.info().capabilities.isolates_filesystem {
                // Without a sandbox of the engine's, the runner must isolate the addon itself.
                (
                    false,
                    false,
                    format!(
                        "the {name} runner does not keep addons off the host filesystem (isolates_filesystem: false)"
                    ),
                )
            } else if !r.info().capabilities.isolates_network && !descriptor.networking() {
                (
                    false,
                    false,
                    format!("the {name} runner does not cut the network (isolates_network: false) and the addon is pure (networking: false)"),
                )
            } else if net == NetKind::Egress && !r.info().capabilities.egress {
                (
                    false,
                    false,
                    format!("the {name} runner does not make egress networks, and the addon is impure under `network.impure: egress` (`network.impure: host` gives impure addons the host's network)"),
                )
            } else {
                (true, true, probe.detail)
            }
        }
    };
    let reason = match (enabled, configured, slot) {
        (false, _, Some(s)) => {
            let served: Vec<&str> = s.serves.iter().map(|x| x.as_str()).collect();
            format!("the addon enables no section the {name} runner serves ({})", served.join(", "))
        }
        (false, _, None) => reason,
        (true, false, _) => format!("not in the configured runner list; {reason}"),
        _ => reason,
    };
    Resolved { name: name.to_string(), section, enabled, configured, available, sandbox, reason, runnable }
}
