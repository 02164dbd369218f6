//! Probing the host for a tool or kernel feature, with results kept for a while.
//!
//! A probe that starts a trial sandbox costs 5 to 70 ms, so results are remembered in memory and,
//! when a directory is given, on disk for the next `addon` process. A remembered result is used
//! only while the tool's binary (path, size, mtime), the kernel and the user are unchanged, and for
//! at most [`ProbeCache::ttl`]: a long-running job server notices bubblewrap being installed or
//! removed. Failures are never kept on disk (they may be fixed by the next run).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

/// Whether a tool or sandbox works on this host, and why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Probe {
    pub name: &'static str,
    pub available: bool,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl Probe {
    pub fn ok(name: &'static str, detail: impl Into<String>, version: Option<String>) -> Probe {
        Probe { name, available: true, detail: detail.into(), version }
    }

    pub fn missing(name: &'static str, detail: impl Into<String>) -> Probe {
        Probe { name, available: false, detail: detail.into(), version: None }
    }
}

/// What a probe result on disk holds.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    key: String,
    detail: String,
    version: Option<String>,
    /// Seconds since the epoch.
    at: u64,
}

#[derive(Debug)]
struct Memo {
    at: Instant,
    probe: Probe,
}

/// Remembered probe results, owned by one engine.
#[derive(Debug)]
pub struct ProbeCache {
    dir: Option<PathBuf>,
    ttl: Duration,
    /// By identity (see [`identity`]), so engines with different settings do not share results.
    memo: Mutex<HashMap<String, Memo>>,
}

impl Default for ProbeCache {
    fn default() -> Self {
        ProbeCache::new(None)
    }
}

impl ProbeCache {
    /// Probe results are kept in memory, and in `dir` when given.
    pub fn new(dir: Option<PathBuf>) -> ProbeCache {
        ProbeCache { dir, ttl: Duration::from_secs(5 * 60), memo: Mutex::new(HashMap::new()) }
    }

    /// How long a result is trusted at most.
    pub fn with_ttl(mut self, ttl: Duration) -> ProbeCache {
        self.ttl = ttl;
        self
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The result of `probe` for `name`, remembered while `settings` (what the engine was told,
    /// e.g. a binary's name), `tool` (the binary it depends on), the kernel and the user stay the
    /// same and the result is younger than the TTL.
    pub fn get(&self, name: &'static str, settings: &str, tool: Option<&Path>, probe: impl FnOnce() -> Probe) -> Probe {
        let key = identity(name, settings, tool);
        if let Some(m) = self.memo.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            if m.at.elapsed() < self.ttl {
                return m.probe.clone();
            }
        }
        let p = self.read_disk(name, &key).unwrap_or_else(|| {
            let p = probe();
            if p.available {
                self.write_disk(name, &key, &p);
            }
            p
        });
        self.memo.lock().unwrap_or_else(|e| e.into_inner()).insert(key, Memo { at: Instant::now(), probe: p.clone() });
        p
    }

    /// [`ProbeCache::get`] for a probe that is a future (a plugin's trial start under tokio).
    pub async fn get_async(
        &self,
        name: &'static str,
        settings: &str,
        tool: Option<&Path>,
        probe: impl std::future::Future<Output = Probe>,
    ) -> Probe {
        let key = identity(name, settings, tool);
        if let Some(m) = self.memo.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            if m.at.elapsed() < self.ttl {
                return m.probe.clone();
            }
        }
        let p = match self.read_disk(name, &key) {
            Some(p) => p,
            None => {
                let p = probe.await;
                if p.available {
                    self.write_disk(name, &key, &p);
                }
                p
            }
        };
        self.memo.lock().unwrap_or_else(|e| e.into_inner()).insert(key, Memo { at: Instant::now(), probe: p.clone() });
        p
    }

    fn file(&self, name: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("probe-{name}.json")))
    }

    fn read_disk(&self, name: &'static str, key: &str) -> Option<Probe> {
        use std::os::unix::fs::MetadataExt;
        let file = self.file(name)?;
        // Only a result this user wrote (a directory others can write to must not plant one).
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        let meta = fs_err::symlink_metadata(&file).ok()?;
        if !meta.is_file() || meta.uid() != me {
            return None;
        }
        let text = fs_err::read(&file).ok()?;
        let s: Stored = serde_json::from_slice(&text).ok()?;
        let age = now().saturating_sub(s.at);
        (s.key == key && age < self.ttl.as_secs()).then(|| Probe::ok(name, s.detail, s.version))
    }

    fn write_disk(&self, name: &'static str, key: &str, p: &Probe) {
        let (Some(dir), Some(file)) = (&self.dir, self.file(name)) else { return };
        let stored = Stored { key: key.to_string(), detail: p.detail.clone(), version: p.version.clone(), at: now() };
        if fs_err::create_dir_all(dir).is_err() {
            return;
        }
        // A fresh file of a random name (never a planted one followed), renamed over the last.
        let Ok(mut tmp) = tempfile::Builder::new().prefix(&format!(".probe-{name}.")).tempfile_in(dir) else { return };
        if std::io::Write::write_all(&mut tmp, &serde_json::to_vec(&stored).unwrap_or_default()).is_ok() {
            let _ = tmp.persist(&file);
        }
    }
}

/// What a probe result depends on: the tool's binary, the engine's own binary (a new engine may
/// probe differently), the kernel, the user.
fn identity(name: &str, settings: &str, tool: Option<&Path>) -> String {
    use std::os::unix::fs::MetadataExt;
    let kernel = fs_err::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let id = |t: &Path| fs_err::metadata(t).ok().map(|m| format!("{}:{}:{}", t.display(), m.size(), m.mtime()));
    let tool_id = tool.and_then(id).unwrap_or_default();
    static ENGINE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let engine_id = ENGINE.get_or_init(|| std::env::current_exe().ok().as_deref().and_then(id).unwrap_or_default());
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    format!("{name}|{settings}|{tool_id}|{engine_id}|{}|{uid}", kernel.trim())
}

fn now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn results_are_kept_until_the_tool_changes_or_they_age() {
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("tool");
        fs_err::write(&tool, "v1").unwrap();
        let calls = AtomicUsize::new(0);
        let probe = || {
            calls.fetch_add(1, Ordering::SeqCst);
            Probe::ok("t", "works", None)
        };
        let cache = ProbeCache::new(Some(dir.path().join("probes")));
        cache.get("t", "", Some(&tool), probe);
        cache.get("t", "", Some(&tool), probe);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "remembered in memory");
        // A new engine reads the disk.
        ProbeCache::new(Some(dir.path().join("probes"))).get("t", "", Some(&tool), probe);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "remembered on disk");
        // The tool changed (reinstalled, upgraded): probed again.
        fs_err::write(&tool, "version 2").unwrap();
        cache.get("t", "", Some(&tool), probe);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // Too old: probed again, in memory and on disk.
        let short = ProbeCache::new(Some(dir.path().join("probes"))).with_ttl(Duration::ZERO);
        short.get("t", "", Some(&tool), probe);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn failures_are_not_kept_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let calls = AtomicUsize::new(0);
        let probe = || {
            calls.fetch_add(1, Ordering::SeqCst);
            Probe::missing("f", "not installed")
        };
        ProbeCache::new(Some(dir.path().to_path_buf())).get("f", "", None, probe);
        ProbeCache::new(Some(dir.path().to_path_buf())).get("f", "", None, probe);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
