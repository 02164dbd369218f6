//! The typed results of `run`, `plan` and `runners`, serialised exactly as SPEC shows them.

use std::path::PathBuf;

use addon_descriptors::AddonOutput;
use addon_runners::{CacheUse, Probe};
use serde::Serialize;

/// The result of a whole run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub success: bool,
    pub output_dir: PathBuf,
    pub addons: Vec<AddonReport>,
    /// All successful addons' outputs merged in run order.
    pub output: AddonOutput,
}

/// How one addon's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AddonResult {
    Success,
    DecodingError,
    ExecutionError,
    ExecutionFailed,
    Timeout,
    Skipped,
}

impl AddonResult {
    pub fn as_str(self) -> &'static str {
        match self {
            AddonResult::Success => "success",
            AddonResult::DecodingError => "decoding-error",
            AddonResult::ExecutionError => "execution-error",
            AddonResult::ExecutionFailed => "execution-failed",
            AddonResult::Timeout => "timeout",
            AddonResult::Skipped => "skipped",
        }
    }

    /// Docspell semantics: a pure addon whose run failed this way may try the next runner.
    pub fn may_fall_through(self) -> bool {
        matches!(self, AddonResult::ExecutionError | AddonResult::ExecutionFailed)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AddonReport {
    pub source: String,
    pub name: String,
    pub version: String,
    pub digest: Option<String>,
    pub runner: Option<String>,
    pub sandbox: Option<String>,
    pub pure: bool,
    pub cache: CacheUse,
    pub result: AddonResult,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub output: Option<AddonOutput>,
    pub duration_ms: u64,
    /// Every runner tried, in order (a pure addon falls through on failure).
    pub attempts: Vec<Attempt>,
    /// The last lines of the addon's stderr.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stderr_tail: Vec<String>,
    /// Where the files of a failed addon were set aside, if it wrote any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejected_files: Option<PathBuf>,
    /// Log lines not delivered to the library caller's event channel because it was full (they
    /// still went to the engine's log).
    #[serde(skip_serializing_if = "is_zero")]
    pub log_lines_dropped: u64,
    /// How the addon's process ended (null when nothing ran).
    pub termination: Option<Termination>,
    /// What it used (a field is null where the runner cannot measure it).
    pub resources: Resources,
    /// Where the time went, in milliseconds.
    pub phases_ms: Phases,
    /// The limits it ran under.
    pub limits: Option<addon_runners::Limits>,
    /// Which addon its name meant: its origin, and whether the name's settings and data are
    /// its (see docs/usage.md "Which addon a name means").
    pub identity: Option<crate::identity::Identity>,
    /// The network it ran with (null when nothing ran).
    pub network: Option<NetworkUse>,
}

/// The network a run had, and what its egress network saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetworkUse {
    /// `none` (a pure addon), `egress` (a network of its own reaching public addresses) or
    /// `host` (the host's own network).
    pub policy: addon_runners::egress::NetKind,
    /// Destinations `network.allow` added for it, as resolved when it started.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed: Vec<String>,
    /// Packets the egress network refused (to the host, link-local, private ranges, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused_packets: Option<u64>,
    /// DNS queries the engine's resolver answered for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_queries: Option<u64>,
}

/// How a run's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Termination {
    /// It exited by itself (with any code).
    Exited,
    /// A signal ended it (an exit code of 128 + N from a sandbox or runtime).
    Signaled,
    /// It ran past its timeout and was stopped.
    Timeout,
    /// The kernel's OOM killer ended it at its memory limit.
    Oom,
    /// It ran into another limit (processes, output size, stdout) and was stopped.
    Limit,
    /// The run was cancelled and it was stopped.
    Cancelled,
}

/// What a run used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Resources {
    pub peak_memory_bytes: Option<u64>,
    pub cpu_ms: Option<u64>,
    pub wall_ms: Option<u64>,
}

/// Milliseconds per phase of one addon's run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Phases {
    /// Opening the source, the addon's persistent directories, the run directory.
    pub prepare: u64,
    /// Building or finding the artifact (image, nix result).
    pub build: u64,
    /// The addon's process, from start to end.
    pub run: u64,
    /// Judging its output and moving its files.
    pub collect: u64,
    /// Removing the run directory.
    pub cleanup: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    pub runner: String,
    pub sandbox: Option<String>,
    pub result: AddonResult,
    pub error: Option<String>,
}

/// `addon plan`.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    pub addon: PlanAddon,
    pub pure: bool,
    pub networking: bool,
    /// The network it would run with under `network.impure`: `none`, `egress` or `host`.
    pub network: addon_runners::egress::NetKind,
    /// `network.allow` entries for it (resolved when a run starts).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub network_allow: Vec<String>,
    pub candidates: Vec<Candidate>,
    pub selected: Option<Selected>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Which addon its name would mean in a run (nothing is recorded by a plan).
    pub identity: crate::identity::Identity,
}

#[derive(Debug, Clone, Serialize)]
pub struct PlanAddon {
    pub name: String,
    pub version: String,
    pub digest: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Candidate {
    pub runner: String,
    /// The addon supports this runner.
    pub enabled: bool,
    /// The configuration (or --runner) lists it.
    pub configured: bool,
    /// It works on this host, with the sandbox the addon needs.
    pub available: bool,
    pub sandbox: Option<String>,
    pub reason: String,
    /// Why it cannot build this addon, found without building: what the addon lacks (a flake
    /// with no default package), or its build failed a short while ago and is remembered
    /// (setting `remember-failed-builds`). A runner with this is not selected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cannot_build: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Selected {
    pub runner: String,
    pub sandbox: Option<String>,
}

/// `addon runners`.
#[derive(Debug, Clone, Serialize)]
pub struct RunnersReport {
    pub runners: Vec<RunnerProbe>,
    pub sandboxes: Vec<SandboxProbe>,
}

/// One sandbox in `addon runners`.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxProbe {
    #[serde(flatten)]
    pub probe: Probe,
    /// How it enforces the resource envelope here.
    pub limits: String,
    /// The networks it gives impure addons here: `host`, and `egress` when it can make one
    /// (see `egress_detail` when it cannot).
    pub networks: Vec<addon_runners::egress::NetKind>,
    /// Why it gives no egress network here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress_detail: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunnerProbe {
    pub name: String,
    pub available: bool,
    pub version: Option<String>,
    pub detail: String,
    /// The descriptor sections it serves.
    pub serves: Vec<String>,
    /// Built into the engine (false: a plugin).
    pub builtin: bool,
    pub capabilities: Option<addon_runners::Capabilities>,
}
