//! The names of the engine's sandboxes and the run's directories as a sandbox maps them: what a
//! [`StartSpec`](crate::StartSpec) names, without the sandboxes themselves (`addon-runners`'
//! `sandbox`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The sandboxes, by name as in the config and the run result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxKind {
    /// bubblewrap: read-only host, private /tmp, new PID/IPC/UTS (and network) namespaces.
    Bwrap,
    /// The engine's own namespaces (network, PID, mount with a root built from what a program
    /// needs, IPC, UTS), made with system calls and no external tool.
    Netns,
    /// systemd-nspawn with a volatile root built from the host.
    Nspawn,
    /// The bare host (explicit choice only). Still a PID namespace, for cleanup.
    None,
}

impl SandboxKind {
    pub const ALL: [SandboxKind; 4] = [SandboxKind::Bwrap, SandboxKind::Netns, SandboxKind::Nspawn, SandboxKind::None];

    /// The kind named `name` (as [`SandboxKind::as_str`] writes it).
    pub fn parse(name: &str) -> Option<SandboxKind> {
        SandboxKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SandboxKind::Bwrap => "bwrap",
            SandboxKind::Netns => "netns",
            SandboxKind::Nspawn => "nspawn",
            SandboxKind::None => "none",
        }
    }
}

impl std::fmt::Display for SandboxKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The directories of one run that the addon may write, as host paths or as the addon sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mounts {
    pub work: PathBuf,
    pub output: PathBuf,
    pub cache: PathBuf,
    /// The addon's private HOME, kept between its runs.
    pub home: PathBuf,
}

impl Mounts {
    /// The layout inside sandboxes with their own mount namespace (as docker and Docspell's
    /// nspawn mount them). Stable paths also keep interpreters' compile caches valid: they are
    /// keyed by the source file's absolute path, and the run directory's host path is new each run.
    pub fn mnt() -> Mounts {
        Mounts {
            work: "/mnt/work".into(),
            output: "/mnt/output".into(),
            cache: "/mnt/cache".into(),
            home: "/mnt/home".into(),
        }
    }

    /// `path` (a host path inside one of these directories) as seen through `view`.
    pub fn translate(&self, path: &Path, view: &Mounts) -> PathBuf {
        for (host, inside) in self.pairs(view) {
            if let Ok(rel) = path.strip_prefix(host) {
                return inside.join(rel);
            }
        }
        path.to_path_buf()
    }

    /// `(host, inside)` for each directory.
    pub fn pairs<'a>(&'a self, view: &'a Mounts) -> [(&'a Path, &'a Path); 4] {
        [(&self.work, &view.work), (&self.output, &view.output), (&self.cache, &view.cache), (&self.home, &view.home)]
    }
}
