//! A content-addressed store of build artifacts under one root directory. It knows keys,
//! entries, locks and pruning, and nothing about addons.
//!
//! Layout: `<root>/CACHEDIR.TAG`, and one bucket per kind with a format version
//! (`images-v1/`, `archives-v1/`, `nix-v1/`, `data-v1/`). An entry is `<bucket>/<hash>/` with
//! `entry.json` (key, kind, label, creation and the owner's typed data, see [`EntryData`]) and
//! `content/`, plus the lock file `<bucket>/<hash>.lock` beside it. Entries are built in a
//! temporary folder of the bucket and renamed into place, under an exclusive lock, so two engines
//! build the same entry once. A user holds a shared lock for as long as it uses the entry; pruning
//! takes the exclusive lock without waiting and skips entries in use. A damaged entry is a miss
//! with a warning, never an error.
//!
//! Lock files are never deleted: another process may hold one open or wait on it, and a deleted
//! lock file would let two processes lock different files. Entries are removed by renaming them out
//! of their place first (`.trash-*`), then deleting, so a crash mid-removal never leaves a
//! half-removed entry that reads as valid.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use fs_err as fs;
use serde::de::DeserializeOwned;
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
    /// What a runner built for an addon (an image id, a nix store path with its GC root in the
    /// entry); the key names the runner.
    Artifact,
    /// An addon's persistent CACHE_DIR.
    Data,
    /// An addon's private HOME, kept between its runs.
    Home,
    /// A build that failed, remembered for a while under its artifact's key (see
    /// [`Cache::get_or_build_remembering`]), so that every run does not pay for it again.
    FailedBuild,
}

impl Kind {
    pub const ALL: [Kind; 5] = [Kind::Archive, Kind::Artifact, Kind::Data, Kind::Home, Kind::FailedBuild];

    fn bucket(self) -> String {
        let name = match self {
            Kind::Archive => "archives",
            Kind::Artifact => "artifacts",
            Kind::Data => "data",
            Kind::Home => "home",
            Kind::FailedBuild => "failed-builds",
        };
        format!("{name}-{FORMAT}")
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Archive => "archive",
            Kind::Artifact => "artifact",
            Kind::Data => "data",
            Kind::Home => "home",
            Kind::FailedBuild => "failed-build",
        }
    }
}

/// The part of an artifact's key that names the runner that made it (see [`Key::artifact`]).
const RUNNER_PART: &str = "runner";

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

    /// The key of an artifact that `runner` makes; the engine adds what else changes it.
    pub fn artifact(runner: &str) -> Key {
        Key::new(Kind::Artifact).with(RUNNER_PART, runner)
    }

    /// The runner that made the entry, as [`Key::artifact`] recorded it (an artifact, or a build
    /// failure remembered under an artifact's key); None for other entries.
    pub fn runner(&self) -> Option<&str> {
        self.parts.get(RUNNER_PART).map(String::as_str)
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
}

/// Why [`Cache::get_or_build`] gave no entry: the cache itself failed, or the build did (with the
/// builder's own error, typed as the builder made it).
#[derive(Debug, thiserror::Error)]
pub enum GetError<E: std::fmt::Display + std::fmt::Debug> {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("building cache entry for `{label}` failed: {error}")]
    Build { label: String, error: E },
    /// The build failed earlier and is remembered; it was not tried again.
    #[error("building cache entry for `{label}` failed {}s ago (remembered, not tried again): {error}", age.as_secs())]
    Remembered { label: String, error: E, age: Duration },
}

/// Why a build failed, as the build of [`Cache::get_or_build_remembering`] returns it.
#[derive(Debug, Clone)]
pub struct BuildFailure<E> {
    pub error: E,
    /// Whether the failure says something about the entry (a cancelled build does not).
    pub remember: bool,
}

/// What a remembered failure records: the builder's error as it was.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailedBuild<E> {
    pub error: E,
}

impl<E: Serialize + DeserializeOwned + Send + 'static> EntryData for FailedBuild<E> {}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io { path: path.to_path_buf(), source }
}

/// What an entry's owner records beside its content: one serde type per kind of entry (an image
/// id, a store path, a digest), so that a missing or misnamed field is a compile error, not a
/// silently absent map key.
pub trait EntryData: Serialize + DeserializeOwned + Send + 'static {
    /// Bytes the artifact takes outside the cache (a docker image), counted by `ls` and `prune`.
    fn external_size(&self) -> u64 {
        0
    }
}

/// Entries that record nothing but their content.
impl EntryData for () {}

/// The record stored beside an entry's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntryMeta<D = serde_json::Value> {
    pub key: Key,
    /// What the entry is for, for people (`hello-1.0.0`).
    pub label: String,
    pub created: u64,
    /// See [`EntryData::external_size`].
    #[serde(default)]
    pub external_size: u64,
    /// The owner's data.
    pub data: D,
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

impl EntryInfo {
    /// The runner that made the entry (see [`Key::runner`]); None when it is damaged or not
    /// an artifact.
    pub fn runner(&self) -> Option<&str> {
        self.meta.as_ref()?.key.runner()
    }

    /// The owner's data, read as `D` (None when the entry is damaged or of another kind).
    pub fn data<D: EntryData>(&self) -> Option<D> {
        serde_json::from_value(self.meta.as_ref()?.data.clone()).ok()
    }
}

/// An entry in use: its content stays until this is dropped (a shared lock is held).
#[derive(Debug)]
pub struct Entry<D = ()> {
    pub path: PathBuf,
    pub meta: EntryMeta<D>,
    /// True when the entry was already there (no build ran).
    pub hit: bool,
    _lock: File,
}

impl<D> Entry<D> {
    /// The entry's content folder.
    pub fn content(&self) -> PathBuf {
        self.path.join("content")
    }

    /// What the owner recorded.
    pub fn data(&self) -> &D {
        &self.meta.data
    }
}

/// The cache at one root directory.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    lock_timeout: Duration,
}

impl Cache {
    /// Opens (creating) the cache at `root`, with `CACHEDIR.TAG`. A root it creates is private
    /// to its user (0700): addons' CACHE_DIR and HOME live in it.
    pub fn open(root: &Path) -> Result<Cache, CacheError> {
        use std::os::unix::fs::DirBuilderExt;
        if !root.is_dir() {
            if let Some(parent) = root.parent() {
                fs::create_dir_all(parent).map_err(io(parent))?;
            }
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(root)
                .or_else(|e| if e.kind() == std::io::ErrorKind::AlreadyExists { Ok(()) } else { Err(e) })
                .map_err(io(root))?;
        }
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
    /// `build` fills the given (empty) content folder and returns the owner data to record.
    /// `valid` tells whether an existing entry is still usable (e.g. its image still exists).
    pub fn get_or_build<D, E, F, V>(&self, key: &Key, label: &str, valid: V, build: F) -> Result<Entry<D>, GetError<E>>
    where
        D: EntryData,
        E: std::fmt::Display + std::fmt::Debug,
        F: FnOnce(&Path) -> Result<D, E>,
        V: Fn(&D, &Path) -> bool,
    {
        self.get_or_build_with(
            key,
            label,
            valid,
            |c| build(c).map_err(|error| BuildFailure { error, remember: false }),
            None,
        )
    }

    /// The failure remembered for `key` (an artifact's key) and how long ago it happened, when
    /// it is younger than `within`.
    pub fn remembered_failure<E: Serialize + DeserializeOwned + Send + 'static>(
        &self,
        key: &Key,
        within: Duration,
    ) -> Option<(EntryMeta<FailedBuild<E>>, Duration)> {
        let (dir, _, _) = self.paths(&failure_key(key));
        let meta = read_meta::<FailedBuild<E>>(&dir)?;
        // The record's mtime, written once, is when the build failed (finer than `created`).
        let written = fs_err::metadata(dir.join("entry.json")).and_then(|m| m.modified()).ok()?;
        let age = SystemTime::now().duration_since(written).unwrap_or_default();
        (age < within).then_some((meta, age))
    }

    /// Forgets every remembered build failure not being written now; returns what was removed.
    pub fn forget_failures(&self) -> Vec<EntryInfo> {
        let mut removed = Vec::new();
        for e in self.list().into_iter().filter(|e| e.kind == Kind::FailedBuild) {
            let Ok(lock) = open_lock(&e.path.with_extension("lock")) else { continue };
            if lock.try_lock().is_err() {
                continue;
            }
            let Some(bucket) = e.path.parent() else { continue };
            if retire_with(&e.path, bucket, &e.key, &remove_tree).is_ok() {
                removed.push(e);
            }
        }
        removed
    }

    /// Records (or with `failure` None, forgets) the failure of `key`'s build. The caller holds
    /// the exclusive lock of `key`'s entry; the record's own lock guards it against pruning.
    fn record_failure<E: Serialize>(&self, key: &Key, label: &str, failure: Option<&E>) -> Result<(), CacheError> {
        let fkey = failure_key(key);
        let (dir, lock_path, bucket) = self.paths(&fkey);
        if failure.is_none() && !dir.exists() {
            return Ok(());
        }
        fs::create_dir_all(&bucket).map_err(io(&bucket))?;
        let lock = open_lock(&lock_path)?;
        lock_with_timeout(&lock, &lock_path, label, self.lock_timeout, true)?;
        if dir.exists() {
            retire(&dir, &bucket, &fkey.hash())?;
        }
        let Some(error) = failure else { return Ok(()) };
        let tmp = bucket.join(format!(".tmp-{}-{}", fkey.hash(), std::process::id()));
        let _ = remove_tree(&tmp);
        fs::create_dir_all(tmp.join("content")).map_err(io(&tmp))?;
        let meta = EntryMeta {
            key: fkey,
            label: label.to_string(),
            created: now(),
            external_size: 0,
            data: FailedBuild { error },
        };
        let record = tmp.join("entry.json");
        fs::write(&record, serde_json::to_vec_pretty(&meta).unwrap_or_default()).map_err(io(&record))?;
        fs::rename(&tmp, &dir).map_err(io(&dir))
    }

    /// [`Cache::get_or_build`], and a failed build is remembered for `remember_for`: until then
    /// the entry is not built again and the same failure is returned as
    /// [`CacheError::Remembered`] (a failure `build` marks as not worth remembering, such as a
    /// cancelled build, is not recorded). A build that succeeds forgets the failure.
    pub fn get_or_build_remembering<D, E, F, V>(
        &self,
        key: &Key,
        label: &str,
        valid: V,
        build: F,
        remember_for: Duration,
    ) -> Result<Entry<D>, GetError<E>>
    where
        D: EntryData,
        E: std::fmt::Display + std::fmt::Debug + Serialize + DeserializeOwned + Send + 'static,
        F: FnOnce(&Path) -> Result<D, BuildFailure<E>>,
        V: Fn(&D, &Path) -> bool,
    {
        if remember_for.is_zero() {
            return self.get_or_build_with(key, label, valid, build, None);
        }
        let recall = |key: &Key| self.remembered_failure::<E>(key, remember_for).map(|(m, age)| (m.data.error, age));
        let record = |key: &Key, label: &str, e: Option<&E>| self.record_failure(key, label, e);
        self.get_or_build_with(key, label, valid, build, Some((&recall, &record)))
    }

    /// The one path of [`Cache::get_or_build`] and [`Cache::get_or_build_remembering`]; `memory`
    /// recalls and records failures when they are remembered.
    #[allow(clippy::type_complexity)] // the two callbacks of remembering, named where they are made
    fn get_or_build_with<D, E, F, V>(
        &self,
        key: &Key,
        label: &str,
        valid: V,
        build: F,
        memory: Option<(
            &dyn Fn(&Key) -> Option<(E, Duration)>,
            &dyn Fn(&Key, &str, Option<&E>) -> Result<(), CacheError>,
        )>,
    ) -> Result<Entry<D>, GetError<E>>
    where
        D: EntryData,
        E: std::fmt::Display + std::fmt::Debug,
        F: FnOnce(&Path) -> Result<D, BuildFailure<E>>,
        V: Fn(&D, &Path) -> bool,
    {
        let (dir, lock_path, bucket) = self.paths(key);
        fs::create_dir_all(&bucket).map_err(io(&bucket))?;
        // Fast path: a shared lock and a sound entry.
        let lock = open_lock(&lock_path)?;
        lock_with_timeout(&lock, &lock_path, label, self.lock_timeout, false)?;
        if let Some(meta) = read_meta::<D>(&dir) {
            if valid(&meta.data, &dir.join("content")) {
                touch(&dir);
                return Ok(Entry { path: dir, meta, hit: true, _lock: lock });
            }
        }
        let _ = lock.unlock();
        // Slow path: exclusive, check again (someone may have built it meanwhile), build.
        lock_with_timeout(&lock, &lock_path, label, self.lock_timeout, true)?;
        if let Some(meta) = read_meta::<D>(&dir) {
            if valid(&meta.data, &dir.join("content")) {
                downgrade(&lock, &lock_path)?;
                touch(&dir);
                return Ok(Entry { path: dir, meta, hit: true, _lock: lock });
            }
            tracing::warn!("cache entry {} for {label} is damaged or stale; rebuilding", dir.display());
        } else if dir.exists() {
            tracing::warn!("cache entry {} for {label} has no readable record; rebuilding", dir.display());
        }
        if let Some((recall, _)) = memory {
            // Under the exclusive lock: an engine that waited for another's failed build
            // takes its failure instead of building again.
            if let Some((error, age)) = recall(key) {
                return Err(GetError::Remembered { label: label.to_string(), error, age });
            }
        }
        if dir.exists() {
            retire(&dir, &bucket, &key.hash())?;
        }
        let tmp = bucket.join(format!(".tmp-{}-{}", key.hash(), std::process::id()));
        let _ = remove_tree(&tmp);
        fs::create_dir_all(tmp.join("content")).map_err(io(&tmp))?;
        let data = match build(&tmp.join("content")) {
            Ok(d) => d,
            Err(failure) => {
                let _ = remove_tree(&tmp);
                if let (Some((_, record)), true) = (memory, failure.remember) {
                    if let Err(e) = record(key, label, Some(&failure.error)) {
                        tracing::warn!("remembering the failed build of {label}: {e}");
                    }
                }
                return Err(GetError::Build { label: label.to_string(), error: failure.error });
            }
        };
        if let Some((_, record)) = memory {
            if let Err(e) = record(key, label, None) {
                tracing::warn!("forgetting the earlier failed build of {label}: {e}");
            }
        }
        let meta = EntryMeta {
            key: key.clone(),
            label: label.to_string(),
            created: now(),
            external_size: data.external_size(),
            data,
        };
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
            let Ok(rd) = fs_err::read_dir(&bucket) else { continue };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with('.') || name.ends_with(".lock") || !e.path().is_dir() {
                    continue;
                }
                let meta = read_meta::<serde_json::Value>(&e.path());
                out.push(EntryInfo {
                    key: name,
                    kind,
                    addon: meta.as_ref().map(|m| m.label.clone()).unwrap_or_else(|| "(damaged)".into()),
                    // Artifacts that live elsewhere (a docker image) report their size in the record.
                    size: dir_size(&e.path()) + meta.as_ref().map_or(0, |m| m.external_size),
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
        self.prune_with(max_size, older_than, remove_tree)
    }

    /// [`Cache::prune`] with the final deletion given (tests make it fail, as a crash would).
    fn prune_with(
        &self,
        max_size: Option<u64>,
        older_than: Option<Duration>,
        remove: impl Fn(&Path) -> std::io::Result<()>,
    ) -> Vec<EntryInfo> {
        self.sweep(&remove);
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
            let Some(bucket) = e.path.parent() else { continue };
            // Out of its place first (under the lock), so that it never reads as valid again.
            match retire_with(&e.path, bucket, &e.key, &remove) {
                Ok(()) => {
                    total = total.saturating_sub(e.size);
                    removed.push(e);
                }
                Err(err) => tracing::warn!("removing cache entry {}: {err}", e.path.display()),
            }
        }
        removed
    }

    /// Deletes what earlier removals and builds left behind: retired entries (`.trash-*`) and
    /// temporary build folders whose entry is not being built.
    fn sweep(&self, remove: &impl Fn(&Path) -> std::io::Result<()>) {
        for kind in Kind::ALL {
            let bucket = self.root.join(kind.bucket());
            let Ok(rd) = fs_err::read_dir(&bucket) else { continue };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with(".trash-") {
                    let _ = remove(&e.path());
                } else if let Some(rest) = name.strip_prefix(".tmp-") {
                    let hash = rest.split('-').next().unwrap_or_default();
                    let Ok(lock) = open_lock(&bucket.join(format!("{hash}.lock"))) else { continue };
                    if lock.try_lock().is_ok() {
                        let _ = remove(&e.path());
                    }
                }
            }
        }
    }
}

static TRASH_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Renames an entry out of its place, then deletes it. The caller holds its exclusive lock.
fn retire(dir: &Path, bucket: &Path, hash: &str) -> Result<(), CacheError> {
    retire_with(dir, bucket, hash, &remove_tree).map_err(|source| CacheError::Io { path: dir.to_path_buf(), source })
}

fn retire_with(
    dir: &Path,
    bucket: &Path,
    hash: &str,
    remove: &impl Fn(&Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let n = TRASH_COUNTER.fetch_add(1, Ordering::Relaxed);
    let trash = bucket.join(format!(".trash-{hash}-{}-{n}", std::process::id()));
    fs_err::rename(dir, &trash)?;
    if let Err(e) = remove(&trash) {
        // Out of place already: the next prune finishes the job.
        tracing::warn!("deleting {} (retired cache entry): {e}; the next prune retries", trash.display());
    }
    Ok(())
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

/// The key a failure of `key`'s build is remembered under.
fn failure_key(key: &Key) -> Key {
    Key { kind: Kind::FailedBuild, parts: key.parts.clone() }
}

fn read_meta<D: DeserializeOwned>(dir: &Path) -> Option<EntryMeta<D>> {
    let text = fs_err::read(dir.join("entry.json")).ok()?;
    let meta: EntryMeta<D> = serde_json::from_slice(&text).ok()?;
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
    fs_err::metadata(dir.join("entry.json"))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Bytes an entry takes (entries hold trees an addon wrote, its CACHE_DIR and HOME: measured by
/// the walk that follows no link; what cannot be measured counts as nothing).
fn dir_size(p: &Path) -> u64 {
    addon_tree::measure(p).map(|m| m.length).unwrap_or(0)
}

/// Removes an entry's folder (possibly a tree an addon wrote) without following anything in it.
fn remove_tree(p: &Path) -> std::io::Result<()> {
    addon_tree::remove_tree(p).map_err(|e| std::io::Error::new(e.kind(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(d: &str) -> Key {
        Key::new(Kind::Archive).with("digest", d)
    }

    #[test]
    fn keys_are_ordered_and_namespaced() {
        let a = Key::new(Kind::Artifact).with("digest", "x").with("dockerfile", "Dockerfile");
        let b = Key::new(Kind::Artifact).with("dockerfile", "Dockerfile").with("digest", "x");
        assert_eq!(a.hash(), b.hash(), "insertion order does not matter");
        assert_ne!(a.hash(), Key::new(Kind::Data).with("digest", "x").with("dockerfile", "Dockerfile").hash());
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
                        fs_err::write(c.join("f"), b"x").map_err(|e| e.to_string())?;
                        Ok::<(), String>(())
                    },
                )
                .unwrap();
            assert_eq!(e.hit, expect_hit);
            assert!(e.content().join("f").exists());
        }
        assert_eq!(builds, 1);
        // Damage the record: a miss with a rebuild, never an error.
        let entry = cache.list().pop().unwrap();
        fs_err::write(entry.path.join("entry.json"), b"{not json").unwrap();
        let e = cache.get_or_build(&key("a"), "a-1", |_, _| true, |_| Ok::<(), String>(())).unwrap();
        assert!(!e.hit);
        // A failed build leaves nothing behind.
        let err =
            cache.get_or_build(&key("b"), "b-1", |_: &(), _| true, |_| Err::<(), String>("boom".into())).unwrap_err();
        assert!(err.to_string().contains("boom"));
        assert_eq!(cache.list().len(), 1);
    }

    /// An artifact's key names its runner as the part `runner` it always had (entries made
    /// before the accessor keep their names), and a pruned entry tells its runner from it.
    #[test]
    fn an_artifact_key_names_its_runner() {
        let k = Key::artifact("oci").with("section", "docker");
        assert_eq!(k.hash(), Key::new(Kind::Artifact).with("runner", "oci").with("section", "docker").hash());
        assert_eq!(k.runner(), Some("oci"));
        assert_eq!(key("a").runner(), None);
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        drop(cache.get_or_build(&k, "a-1", |_, _| true, |_| Ok::<(), String>(())).unwrap());
        let removed = cache.prune(Some(0), None);
        assert_eq!(removed.iter().map(EntryInfo::runner).collect::<Vec<_>>(), vec![Some("oci")]);
    }

    #[test]
    fn prune_skips_entries_in_use_and_goes_lru_first() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let fill = |c: &Path| fs_err::write(c.join("f"), vec![0u8; 1000]).map(|_| ()).map_err(|e| e.to_string());
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
                                Ok::<(), String>(())
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
    fn typed_data_round_trips_and_a_wrong_shape_is_a_miss() {
        #[derive(Debug, Serialize, Deserialize, PartialEq)]
        struct Image {
            id: String,
            size: u64,
        }
        impl EntryData for Image {
            fn external_size(&self) -> u64 {
                self.size
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let img = || Ok::<Image, String>(Image { id: "sha256:1".into(), size: 5000 });
        let e = cache.get_or_build(&key("img"), "img", |_, _| true, |_| img()).unwrap();
        assert!(!e.hit);
        drop(e);
        let e = cache.get_or_build(&key("img"), "img", |d: &Image, _| d.id == "sha256:1", |_| img()).unwrap();
        assert!(e.hit);
        assert_eq!(e.data(), &Image { id: "sha256:1".into(), size: 5000 });
        drop(e);
        let listed = cache.list();
        assert!((5000..10_000).contains(&listed[0].size), "external size counts: {}", listed[0].size);
        assert_eq!(listed[0].data::<Image>().unwrap().id, "sha256:1");
        // Read back as another shape: damaged for this owner, so a miss and a rebuild.
        #[derive(Debug, Serialize, Deserialize)]
        struct Other {
            out: String,
        }
        impl EntryData for Other {}
        let e = cache
            .get_or_build(&key("img"), "img", |_, _| true, |_| Ok::<Other, String>(Other { out: "x".into() }))
            .unwrap();
        assert!(!e.hit);
    }

    #[test]
    fn prune_never_deletes_a_lock_file() {
        // A process waiting on (or holding) a lock file keeps its inode; if prune deleted and a
        // third process recreated the file, the two would lock different files.
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        drop(cache.get_or_build(&key("a"), "a", |_: &(), _| true, |_| Ok::<(), String>(())).unwrap());
        let (_, lock_path, _) = cache.paths(&key("a"));
        let inode = fs_err::metadata(&lock_path).unwrap().ino();
        let waiter = open_lock(&lock_path).unwrap();
        assert_eq!(cache.prune(Some(0), None).len(), 1);
        assert!(lock_path.exists(), "the lock file stays");
        assert_eq!(fs_err::metadata(&lock_path).unwrap().ino(), inode, "and is the same file");
        // The waiter's lock and a new opener's lock exclude each other.
        waiter.lock().unwrap();
        assert!(open_lock(&lock_path).unwrap().try_lock_shared().is_err());
    }

    #[test]
    fn a_crash_mid_prune_never_leaves_a_valid_looking_entry() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let fill = |c: &Path| {
            for i in 0..20 {
                fs_err::write(c.join(format!("f{i}")), b"data").map_err(|e| e.to_string())?;
            }
            Ok::<(), String>(())
        };
        drop(cache.get_or_build(&key("a"), "a", |_: &(), _| true, fill).unwrap());
        // The deletion dies halfway (a crash, a full disk): half of the files are gone.
        let removed = cache.prune_with(Some(0), None, |p| {
            for e in fs_err::read_dir(p.join("content"))?.flatten().take(10) {
                fs_err::remove_file(e.path())?;
            }
            Err(std::io::Error::other("crashed"))
        });
        assert_eq!(removed.len(), 1);
        assert!(cache.list().is_empty(), "nothing half-removed is listed");
        let e = cache.get_or_build(&key("a"), "a", |_: &(), c| c.join("f0").exists(), fill).unwrap();
        assert!(!e.hit, "a fresh build, not a hit on a half-removed entry");
        assert_eq!(fs_err::read_dir(e.content()).unwrap().count(), 20);
        drop(e);
        // The next prune finishes the removal.
        let bucket = dir.path().join(Kind::Archive.bucket());
        assert!(fs_err::read_dir(&bucket)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".trash-")));
        cache.prune(None, None);
        assert!(!fs_err::read_dir(&bucket)
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".trash-")));
    }

    #[test]
    fn lock_timeout_names_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap().with_lock_timeout(Duration::from_millis(200));
        let (_, lock_path, bucket) = cache.paths(&key("x"));
        fs_err::create_dir_all(bucket).unwrap();
        let other = open_lock(&lock_path).unwrap();
        other.lock().unwrap();
        let err = cache.get_or_build(&key("x"), "x-1", |_, _| true, |_| Ok::<(), String>(())).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(".lock") && msg.contains("x-1"), "{msg}");
    }

    #[test]
    fn a_failed_build_is_remembered_until_it_expires_succeeds_or_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let k = Key::new(Kind::Artifact).with("digest", "x");
        let builds = std::cell::Cell::new(0);
        let fail = |remember: bool| {
            let builds = &builds;
            move |_: &Path| -> Result<(), BuildFailure<String>> {
                builds.set(builds.get() + 1);
                Err(BuildFailure { error: "no base image".into(), remember })
            }
        };
        let minute = Duration::from_secs(60);
        // Not worth remembering (a cancelled build): tried again.
        let err = cache.get_or_build_remembering(&k, "x-1", |_, _| true, fail(false), minute).unwrap_err();
        assert!(matches!(err, GetError::Build { .. }), "{err}");
        assert!(cache.remembered_failure::<String>(&k, minute).is_none());
        // Remembered: the next call does not build and returns the same failure.
        cache.get_or_build_remembering(&k, "x-1", |_, _| true, fail(true), minute).unwrap_err();
        assert_eq!(builds.get(), 2);
        let err = cache.get_or_build_remembering(&k, "x-1", |_, _| true, fail(true), minute).unwrap_err();
        assert!(matches!(&err, GetError::Remembered { error, .. } if error == "no base image"), "{err}");
        assert_eq!(builds.get(), 2, "not built again");
        assert!(cache.list().iter().any(|e| e.kind == Kind::FailedBuild), "listed");
        // Expired (remembered for no time): built again.
        cache.get_or_build_remembering(&k, "x-1", |_, _| true, fail(true), Duration::from_nanos(1)).unwrap_err();
        assert_eq!(builds.get(), 3);
        // Forgotten on request: built again.
        assert_eq!(cache.forget_failures().len(), 1);
        assert!(cache.remembered_failure::<String>(&k, minute).is_none());
        cache.get_or_build_remembering(&k, "x-1", |_, _| true, fail(true), minute).unwrap_err();
        assert_eq!(builds.get(), 4);
        // A success (another engine's, after the record expired) forgets the failure.
        let e = cache
            .get_or_build_remembering(
                &k,
                "x-1",
                |_, _| true,
                |_| Ok::<(), BuildFailure<String>>(()),
                Duration::from_nanos(1),
            )
            .unwrap();
        assert!(!e.hit);
        assert!(cache.remembered_failure::<String>(&k, minute).is_none());
        assert!(!cache.list().iter().any(|e| e.kind == Kind::FailedBuild));
    }
}
