//! What a run may use and what it used: the limits every runner is given, the usage it reports,
//! the breaches that stop a run, and how host sandboxes enforce limits here. Data only: the
//! control groups and rlimits that enforce them are `addon-runners`' (`limits`).

use serde::{Deserialize, Serialize};

/// What one run may use. `None`: unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Bytes of memory (RAM; no swap beyond it).
    pub memory: Option<u64>,
    /// Processes and threads at once.
    pub pids: Option<u64>,
    /// CPUs' worth of time per period (1.5 = one and a half CPUs).
    pub cpus: Option<f64>,
    /// Bytes the addon may add to its directories (output, work, CACHE_DIR, HOME) in one run.
    pub output_size: Option<u64>,
    /// Entries (files, directories, links) the addon may add to those directories in one run:
    /// empty files cost no bytes but use up the file system's inodes.
    #[serde(default)]
    pub output_entries: Option<u64>,
}

/// What a run used, as far as it could be measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub peak_memory_bytes: Option<u64>,
    pub cpu_ms: Option<u64>,
    /// Processes the kernel's OOM killer ended.
    pub oom_kills: u64,
    /// Forks refused because of the process limit.
    pub pids_refused: u64,
    /// Packets its egress network refused (connections and datagrams to the host, private
    /// ranges and other refused destinations); None without an egress network.
    #[serde(default)]
    pub network_refused: Option<u64>,
    /// DNS queries the engine's resolver answered for its egress network.
    #[serde(default)]
    pub dns_queries: Option<u64>,
}

/// A limit the addon ran into while it ran; the run is stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Breach {
    /// The process limit refused a fork.
    Pids(u64),
    /// The addon wrote more than the output size allows.
    OutputSize { limit: u64, written: u64 },
    /// The addon made more entries than the limit allows.
    OutputEntries { limit: u64, made: u64 },
    /// What the addon wrote could not be measured (the walk over its directories failed): it is
    /// stopped rather than left unwatched.
    Unmeasurable(String),
}

impl std::fmt::Display for Breach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Breach::Pids(n) => write!(f, "it reached its process limit ({n} processes and threads; setting limits.pids, option --pids) and was stopped"),
            Breach::OutputSize { limit, written } => write!(
                f,
                "it wrote {written} bytes, more than its output limit of {limit} bytes (setting limits.output-size) and was stopped"
            ),
            Breach::OutputEntries { limit, made } => write!(
                f,
                "it made {made} files and directories, more than its limit of {limit} (setting limits.output-entries) and was stopped"
            ),
            Breach::Unmeasurable(why) => {
                write!(f, "what it wrote could not be measured ({why}), so it was stopped")
            }
        }
    }
}

/// How host sandboxes enforce limits on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind")]
pub enum Enforcement {
    /// A control group per run: memory, pids and CPU are enforced and measured.
    Cgroups { version: u8 },
    /// Process resource limits: memory as address space, processes per user, file size; CPU share
    /// is not enforced and usage is not measured.
    Rlimits { why: String },
}

impl Enforcement {
    pub fn describe(&self) -> String {
        match self {
            Enforcement::Cgroups { version } => {
                format!("limits by cgroup v{version} per run (memory, pids, cpus; usage measured)")
            }
            Enforcement::Rlimits { why } => format!(
                "limits by rlimits ({why}): memory as address space, pids per user, file size; cpus not enforced, usage not measured"
            ),
        }
    }
}
