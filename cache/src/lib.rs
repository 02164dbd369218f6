//! A content-addressed store of build artifacts under one root directory. It knows keys,
//! entries, locks and pruning, and nothing about addons.
//!
//! Layout: `<root>/CACHEDIR.TAG`, and one bucket per kind with a format version
//! (`images-v1/`, `archives-v1/`, `nix-v1/`, `data-v1/`). An entry is `<bucket>/<hash>/` with
//! `entry.json` (key, kind, label, creation) and `content/`, plus the lock file
//! `<bucket>/<hash>.lock` beside it. Entries are built in a temporary folder of the bucket and
//! renamed into place, under an exclusive lock, so two engines build the same entry once. A user
//! holds a shared lock for as long as it uses the entry; pruning takes the exclusive lock without
//! waiting and skips entries in use. A damaged entry is a miss with a warning, never an error.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use fs_err as fs;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bumped when the layout of entries changes; old buckets are then ignored.
pub const FORMAT: &str = "v1";

const TAG: &str = "Signature: 8a477f597d28d172789f06886806bc55\n# This directory is a cache of the addon engine.\n# For information about cache directory tags see https://bford.info/cachedir/\n";

/// What an entry holds. Each kind has its own bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// An unpacked addon archive.
    Archive,
    /// A docker image built by the engine (the entry records its id; the image lives in docker).
    DockerImage,
    /// A nix build result (a GC root lives in the entry).
    NixBuild,
    /// An addon's persistent CACHE_DIR.
    Data,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Archive, Kind::DockerImage, Kind::NixBuild, Kind::Data];

    fn bucket(self) -> String {
        let name = match self {
            Kind::Archive => "archives",
            Kind::DockerImage => "images",
            Kind::NixBuild => "nix",
            Kind::Data => "data",
        };
        format!("{name}-{FORMAT}")
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Archive => "archive",
            Kind::DockerImage => "docker-image",
            Kind::NixBuild => "nix-build",
            Kind::Data => "data",
        }
    }
}

/// An explicit, ordered cache key. Every part that changes the artifact belongs in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    pub kind: Kind,
    pub parts: BTreeMap<String, String>,
}

impl Key {
    pub fn new(kind: Kind) -> Key {
        let mut parts = BTreeMap::new();
        parts.insert("format".to_string(), FORMAT.to_string());
        Key { kind, parts }
    }

    pub fn with(mut self, name: &str, value: impl Into<String>) -> Key {
        self.parts.insert(name.to_string(), value.into());
        self
    }

    /// The entry's name: sha256 over the kind and the sorted parts.
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.kind.as_str().as_bytes());
        for (k, v) in &self.parts {
            h.update(b"\n");
            h.update(k.as_bytes());
            h.update(b"=");
            h.update(v.as_bytes());
        }
        hex::encode(h.finalize())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("timed out after {waited:?} waiting for the cache lock {path} (another engine is building `{label}`)")]
    LockTimeout { path: PathBuf, label: String, waited: Duration },
    #[error("building cache entry for `{label}` failed: {message}")]
    Build { label: String, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io { path: path.to_path_buf(), source }
}

/// The record stored beside an entry's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntryMeta {
    pub key: Key,
    /// What the entry is for, for people (`hello-1.0.0`).
    pub label: String,
    pub created: u64,
    /// Free-form data of the entry's owner (an image id, a store path).
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

/// One entry as `addon cache ls` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct EntryInfo {
    pub key: String,
    pub kind: Kind,
    pub addon: String,
    pub size: u64,
    /// Seconds since the epoch.
    pub last_used: u64,
    #[serde(skip)]
    pub path: PathBuf,
    #[serde(skip)]
    pub meta: Option<EntryMeta>,
}

/// An entry in use: its content stays until this is dropped (a shared lock is held).
#[derive(Debug)]
pub struct Entry {
    pub path: PathBuf,
    pub meta: EntryMeta,
    /// True when the entry was already there (no build ran).
    pub hit: bool,
    _lock: File,
}

impl Entry {
    /// The entry's content folder.
    pub fn content(&self) -> PathBuf {
        self.path.join("content")
    }
}

/// The cache at one root directory.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    lock_timeout: Duration,
}

impl Cache {
    /// Opens (creating) the cache at `root`, with `CACHEDIR.TAG`.
    pub fn open(root: &Path) -> Result<Cache, CacheError> {
        fs::create_dir_all(root).map_err(io(root))?;
        let tag = root.join("CACHEDIR.TAG");
        if !tag.exists() {
            fs::write(&tag, TAG).map_err(io(&tag))?;
        }
        Ok(Cache { root: root.to_path_buf(), lock_timeout: Duration::from_secs(30 * 60) })
    }

    /// How long to wait for another engine's build of the same entry.
    pub fn with_lock_timeout(mut self, t: Duration) -> Cache {
        self.lock_timeout = t;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn paths(&self, key: &Key) -> (PathBuf, PathBuf, PathBuf) {
        let bucket = self.root.join(key.kind.bucket());
        let hash = key.hash();
        (bucket.join(&hash), bucket.join(format!("{hash}.lock")), bucket)
    }

    /// Returns the entry for `key`, building it with `build` when it is missing or damaged.
    ///
    /// `build` fills the given (empty) content folder and may return owner data to record.
    /// `valid` tells whether an existing entry is still usable (e.g. its image still exists).
    pub fn get_or_build<F, V>(&self, key: &Key, label: &str, valid: V, build: F) -> Result<Entry, CacheError>
    where
        F: FnOnce(&Path) -> Result<BTreeMap<String, String>, String>,
        V: Fn(&EntryMeta, &Path) -> bool,
    {
        let (dir, lock_path, bucket) = self.paths(key);
        fs::create_dir_all(&bucket).map_err(io(&bucket))?;
        // Fast path: a shared lock and a sound entry.
        let lock = open_lock(&lock_path)?;
        lock_with_timeout(&lock, &lock_path, label, self.lock_timeout, false)?;
        if let Some(meta) = read_meta(&dir) {
            if valid(&meta, &dir.join("content")) {
                touch(&dir);
                return Ok(Entry { path: dir, meta, hit: true, _lock: lock });
            }
        }
        let _ = lock.unlock();
        // Slow path: exclusive, check again (someone may have built it meanwhile), build.
        lock_with_timeout(&lock, &lock_path, label, self.lock_timeout, true)?;
        if let Some(meta) = read_meta(&dir) {
            if valid(&meta, &dir.join("content")) {
                downgrade(&lock, &lock_path)?;
                touch(&dir);
                return Ok(Entry { path: dir, meta, hit: true, _lock: lock });
            }
            tracing::warn!("cache entry {} for {label} is damaged or stale; rebuilding", dir.display());
        } else if dir.exists() {
            tracing::warn!("cache entry {} for {label} has no readable record; rebuilding", dir.display());
        }
        if dir.exists() {
            fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
        let tmp = bucket.join(format!(".tmp-{}-{}", key.hash(), std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        fs::create_dir_all(tmp.join("content")).map_err(io(&tmp))?;
        let data = match build(&tmp.join("content")) {
            Ok(d) => d,
            Err(message) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(CacheError::Build { label: label.to_string(), message });
            }
        };
        let meta = EntryMeta { key: key.clone(), label: label.to_string(), created: now(), data };
        let record = tmp.join("entry.json");
        fs::write(&record, serde_json::to_vec_pretty(&meta).unwrap_or_default()).map_err(io(&record))?;
        fs::rename(&tmp, &dir).map_err(io(&dir))?;
        downgrade(&lock, &lock_path)?;
        Ok(Entry { path: dir, meta, hit: false, _lock: lock })
    }

    /// Every entry, least recently used first.
    pub fn list(&self) -> Vec<EntryInfo> {
        let mut out = Vec::new();
        for kind in Kind::ALL {
            let bucket = self.root.join(kind.bucket());
            let Ok(rd) = std::fs::read_dir(&bucket) else { continue };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with('.') || name.ends_with(".lock") || !e.path().is_dir() {
                    continue;
                }
                let meta = read_meta(&e.path());
                out.push(EntryInfo {
                    key: name,
                    kind,
                    addon: meta.as_ref().map(|m| m.label.clone()).unwrap_or_else(|| "(damaged)".into()),
                    // Artifacts that live elsewhere (a docker image) report their size in the record.
                    size: dir_size(&e.path())
                        + meta
                            .as_ref()
                            .and_then(|m| m.data.get("external-size"))
                            .and_then(|v| v.parse::<u64>().ok())
                            .unwrap_or(0),
                    last_used: last_used(&e.path()),
                    path: e.path(),
                    meta,
                });
            }
        }
        out.sort_by_key(|e| (e.last_used, e.key.clone()));
        out
    }

    /// Removes least recently used entries until the total size is at most `max_size` and no
    /// entry is older than `older_than`. Entries in use are skipped. Returns what was removed, so
    /// the owner can release what lives outside the cache (docker images).
    pub fn prune(&self, max_size: Option<u64>, older_than: Option<Duration>) -> Vec<EntryInfo> {
        let entries = self.list();
        let mut total: u64 = entries.iter().map(|e| e.size).sum();
        let cutoff = older_than.map(|d| now().saturating_sub(d.as_secs()));
        let mut removed = Vec::new();
        for e in entries {
            let too_old = cutoff.is_some_and(|c| e.last_used < c);
            let too_big = max_size.is_some_and(|m| total > m);
            if !too_old && !too_big {
                continue;
            }
            let lock_path = e.path.with_extension("lock");
            let Ok(lock) = open_lock(&lock_path) else { continue };
            if lock.try_lock().is_err() {
                tracing::info!("cache entry {} ({}) is in use; kept", e.key, e.addon);
                continue;
            }
            if std::fs::remove_dir_all(&e.path).is_ok() {
                let _ = std::fs::remove_file(&lock_path);
                total = total.saturating_sub(e.size);
                removed.push(e);
            }
        }
        removed
    }
}

fn open_lock(path: &Path) -> Result<File, CacheError> {
    std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).map_err(io(path))
}

fn lock_with_timeout(f: &File, path: &Path, label: &str, timeout: Duration, exclusive: bool) -> Result<(), CacheError> {
    let start = Instant::now();
    loop {
        let r = if exclusive { f.try_lock() } else { f.try_lock_shared() };
        match r {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) => {
                if start.elapsed() >= timeout {
                    return Err(CacheError::LockTimeout {
                        path: path.to_path_buf(),
                        label: label.to_string(),
                        waited: start.elapsed(),
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(CacheError::Io { path: path.to_path_buf(), source: e }),
        }
    }
}

/// Exclusive to shared. flock(2) converts in place, so no other writer can slip in between.
fn downgrade(f: &File, path: &Path) -> Result<(), CacheError> {
    f.lock_shared().map_err(io(path))
}

fn read_meta(dir: &Path) -> Option<EntryMeta> {
    let text = std::fs::read(dir.join("entry.json")).ok()?;
    let meta: EntryMeta = serde_json::from_slice(&text).ok()?;
    dir.join("content").is_dir().then_some(meta)
}

fn now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Marks an entry used now (its `entry.json` mtime is the last use).
fn touch(dir: &Path) {
    let f = std::fs::OpenOptions::new().append(true).open(dir.join("entry.json"));
    if let Ok(f) = f {
        let _ = f.set_modified(SystemTime::now());
    }
}

fn last_used(dir: &Path) -> u64 {
    std::fs::metadata(dir.join("entry.json"))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn dir_size(p: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(p) else { return 0 };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(p).map(|rd| rd.flatten().map(|e| dir_size(&e.path())).sum()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(d: &str) -> Key {
        Key::new(Kind::Archive).with("digest", d)
    }

    #[test]
    fn keys_are_ordered_and_namespaced() {
        let a = Key::new(Kind::DockerImage).with("digest", "x").with("dockerfile", "Dockerfile");
        let b = Key::new(Kind::DockerImage).with("dockerfile", "Dockerfile").with("digest", "x");
        assert_eq!(a.hash(), b.hash(), "insertion order does not matter");
        assert_ne!(a.hash(), Key::new(Kind::NixBuild).with("digest", "x").with("dockerfile", "Dockerfile").hash());
        assert_ne!(a.hash(), a.clone().with("digest", "y").hash());
    }

    #[test]
    fn second_get_is_a_hit_and_damage_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        assert!(dir.path().join("CACHEDIR.TAG").exists());
        let mut builds = 0;
        for expect_hit in [false, true] {
            let e = cache
                .get_or_build(
                    &key("a"),
                    "a-1",
                    |_, _| true,
                    |c| {
                        builds += 1;
                        std::fs::write(c.join("f"), b"x").map_err(|e| e.to_string())?;
                        Ok(BTreeMap::new())
                    },
                )
                .unwrap();
            assert_eq!(e.hit, expect_hit);
            assert!(e.content().join("f").exists());
        }
        assert_eq!(builds, 1);
        // Damage the record: a miss with a rebuild, never an error.
        let entry = cache.list().pop().unwrap();
        std::fs::write(entry.path.join("entry.json"), b"{not json").unwrap();
        let e = cache.get_or_build(&key("a"), "a-1", |_, _| true, |_| Ok(BTreeMap::new())).unwrap();
        assert!(!e.hit);
        // A failed build leaves nothing behind.
        let err = cache.get_or_build(&key("b"), "b-1", |_, _| true, |_| Err("boom".into())).unwrap_err();
        assert!(err.to_string().contains("boom"));
        assert_eq!(cache.list().len(), 1);
    }

    #[test]
    fn prune_skips_entries_in_use_and_goes_lru_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let fill =
            |c: &Path| std::fs::write(c.join("f"), vec![0u8; 1000]).map(|_| BTreeMap::new()).map_err(|e| e.to_string());
        let held = cache.get_or_build(&key("held"), "held", |_, _| true, fill).unwrap();
        drop(cache.get_or_build(&key("old"), "old", |_, _| true, fill).unwrap());
        drop(cache.get_or_build(&key("new"), "new", |_, _| true, fill).unwrap());
        // Make "old" the least recently used.
        let old = cache.list().into_iter().find(|e| e.addon == "old").unwrap();
        let f = std::fs::OpenOptions::new().append(true).open(old.path.join("entry.json")).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(3600)).unwrap();
        let removed = cache.prune(Some(2500), None);
        let names: Vec<_> = removed.iter().map(|e| e.addon.clone()).collect();
        assert_eq!(names, vec!["old".to_string()], "LRU first, then stop when under the limit");
        let removed = cache.prune(Some(0), None);
        let names: Vec<_> = removed.iter().map(|e| e.addon.clone()).collect();
        assert_eq!(names, vec!["new".to_string()], "the held entry is in use");
        drop(held);
        assert_eq!(cache.prune(Some(0), None).len(), 1);
        assert!(cache.list().is_empty());
    }

    #[test]
    fn concurrent_builders_build_once() {
        let dir = tempfile::tempdir().unwrap();
        let builds = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let root = dir.path().to_path_buf();
                let builds = builds.clone();
                std::thread::spawn(move || {
                    let cache = Cache::open(&root).unwrap();
                    let e = cache
                        .get_or_build(
                            &key("same"),
                            "same",
                            |_, _| true,
                            |_| {
                                builds.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                std::thread::sleep(Duration::from_millis(200));
                                Ok(BTreeMap::new())
                            },
                        )
                        .unwrap();
                    e.hit
                })
            })
            .collect();
        let hits = threads.into_iter().map(|t| t.join().unwrap()).filter(|h| *h).count();
        assert_eq!(builds.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(hits, 3);
    }

    #[test]
    fn lock_timeout_names_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap().with_lock_timeout(Duration::from_millis(200));
        let (_, lock_path, bucket) = cache.paths(&key("x"));
        std::fs::create_dir_all(bucket).unwrap();
        let other = open_lock(&lock_path).unwrap();
        other.lock().unwrap();
        let err = cache.get_or_build(&key("x"), "x-1", |_, _| true, |_| Ok(BTreeMap::new())).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(".lock") && msg.contains("x-1"), "{msg}");
    }
}
