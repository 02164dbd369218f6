//! The content digest of an unpacked addon: `sha256:<hex>` over a canonical listing.
//!
//! The listing is every entry below the root in sorted order of its relative path, each with its
//! type, executable bit and content (symlinks by their target). Timestamps, owners and the order
//! of entries in a zip do not count, so the same content gives the same digest from a directory or
//! from an archive. The cache and the runners key everything by it.

use std::fmt;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use fs_err as fs;
use sha2::{Digest as _, Sha256};

/// A content digest, printed as `sha256:<64 hex digits>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContentDigest(String);

impl ContentDigest {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hex part, without `sha256:`.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// A short form for names and logs (12 hex digits).
    pub fn short(&self) -> &str {
        &self.hex()[..12]
    }

    pub fn parse(s: &str) -> Option<ContentDigest> {
        let hex = s.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
            .then(|| ContentDigest(s.to_string()))
    }
}

impl fmt::Display for ContentDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for ContentDigest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Computes the digest of the directory tree at `root`.
pub fn digest_dir(root: &Path) -> io::Result<ContentDigest> {
    let mut hasher = Sha256::new();
    hasher.update(b"addon-digest-v1\0");
    let mut buf = vec![0u8; 256 * 1024];
    let walker = walkdir::WalkDir::new(root).min_depth(1).follow_links(false).sort_by_file_name();
    for entry in walker {
        let entry = entry.map_err(|e| {
            let path = e.path().map(|p| p.display().to_string()).unwrap_or_default();
            io::Error::other(format!("cannot list {path}: {e}"))
        })?;
        let rel = entry.path().strip_prefix(root).map_err(io::Error::other)?;
        let name = rel.as_os_str().as_bytes();
        let ft = entry.file_type();
        if ft.is_dir() {
            hasher.update(b"d\0");
            hasher.update(name);
            hasher.update(b"\0");
        } else if ft.is_symlink() {
            let target = fs::read_link(entry.path())?;
            hasher.update(b"l\0");
            hasher.update(name);
            hasher.update(b"\0");
            hasher.update(target.as_os_str().as_bytes());
            hasher.update(b"\0");
        } else if ft.is_file() {
            let mut file = fs::File::open(entry.path())?;
            let meta = file.metadata()?;
            let exec = meta.permissions().mode() & 0o111 != 0;
            hasher.update(if exec { b"x\0" } else { b"f\0" });
            hasher.update(name);
            hasher.update(b"\0");
            hasher.update(meta.len().to_le_bytes());
            let mut total = 0u64;
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                total += n as u64;
                hasher.update(&buf[..n]);
            }
            if total != meta.len() {
                return Err(io::Error::other(format!("{} changed while it was hashed", entry.path().display())));
            }
        } else {
            return Err(io::Error::other(format!(
                "{} is not a file, directory or symlink (sockets, fifos and devices are not addon content)",
                entry.path().display()
            )));
        }
    }
    Ok(ContentDigest(format!("sha256:{}", hex::encode(hasher.finalize()))))
}

/// Digests of addon directories, remembered by what `stat` says of every entry, so that a
/// long-lived engine reading the same unchanged directory again (a job server running an addon per
/// document) walks it but does not read and hash its content again.
///
/// An entry is trusted only while every file, directory and link below the root has the same
/// inode, type, mode, size, mtime and ctime. The ctime cannot be set by a program (it changes with
/// every write, chmod, rename or replacement), and a digest is only remembered when no entry was
/// changed in the last [`DigestCache::SETTLE`] before it was computed: a file written within the
/// timestamp granularity of a change already seen could otherwise keep its ctime (git's "racily
/// clean" rule). What does not settle is digested in full every time.
#[derive(Debug, Default)]
pub struct DigestCache {
    entries: std::sync::Mutex<std::collections::HashMap<std::path::PathBuf, (Vec<u8>, ContentDigest)>>,
    hits: std::sync::atomic::AtomicU64,
}

impl DigestCache {
    /// How long the newest change in a directory must be in the past for its digest to be kept.
    pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);
    /// Directories remembered at most (all are forgotten when more come).
    const CAPACITY: usize = 512;

    pub fn new() -> DigestCache {
        DigestCache::default()
    }

    /// The digest of the directory tree at `root`, as [`digest_dir`] computes it.
    pub fn digest(&self, root: &Path) -> io::Result<ContentDigest> {
        let started = std::time::SystemTime::now();
        let (listing, newest_change) = stat_listing(root)?;
        let key = root.to_path_buf();
        {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((seen, digest)) = entries.get(&key) {
                if *seen == listing {
                    self.hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Ok(digest.clone());
                }
            }
        }
        let digest = digest_dir(root)?;
        // Unchanged while it was hashed, and settled before: kept.
        let settled = started.checked_sub(Self::SETTLE).is_some_and(|t| newest_change < t);
        if settled && stat_listing(root).is_ok_and(|(again, _)| again == listing) {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            if entries.len() >= Self::CAPACITY {
                entries.clear();
            }
            entries.insert(key, (listing, digest.clone()));
        }
        Ok(digest)
    }

    /// How many digests were answered from memory (for tests and diagnostics).
    pub fn hits(&self) -> u64 {
        self.hits.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// What `lstat` says of every entry below `root` (and of the root), in walk order, as bytes;
/// and the newest ctime or mtime among them.
fn stat_listing(root: &Path) -> io::Result<(Vec<u8>, std::time::SystemTime)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    for entry in walkdir::WalkDir::new(root).follow_links(false).sort_by_file_name() {
        let entry = entry.map_err(io::Error::other)?;
        let m = entry.metadata().map_err(io::Error::other)?;
        out.extend_from_slice(entry.path().as_os_str().as_bytes());
        out.push(0);
        for n in [m.dev(), m.ino(), u64::from(m.mode()), m.size(), m.nlink()] {
            out.extend_from_slice(&n.to_le_bytes());
        }
        for (s, ns) in [(m.mtime(), m.mtime_nsec()), (m.ctime(), m.ctime_nsec())] {
            out.extend_from_slice(&s.to_le_bytes());
            out.extend_from_slice(&ns.to_le_bytes());
            let t = std::time::UNIX_EPOCH + std::time::Duration::new(s.max(0) as u64, ns.clamp(0, 999_999_999) as u32);
            newest = newest.max(t);
        }
    }
    Ok((out, newest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_not_timestamps() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for d in [a.path(), b.path()] {
            std::fs::create_dir(d.join("src")).unwrap();
            std::fs::write(d.join("src/run.sh"), b"echo hi").unwrap();
            std::fs::write(d.join("docspell-addon.yml"), b"meta: {}").unwrap();
        }
        let da = digest_dir(a.path()).unwrap();
        assert_eq!(da, digest_dir(b.path()).unwrap());
        assert!(ContentDigest::parse(da.as_str()).is_some());
        std::fs::set_permissions(b.path().join("src/run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_ne!(da, digest_dir(b.path()).unwrap(), "the exec bit counts");
        std::fs::write(a.path().join("src/run.sh"), b"echo ho").unwrap();
        assert_ne!(da, digest_dir(a.path()).unwrap());
    }

    #[test]
    fn the_cache_answers_for_unchanged_settled_trees_only() {
        use std::time::{Duration, SystemTime};
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("src")).unwrap();
        std::fs::write(d.path().join("src/run.sh"), b"echo hi").unwrap();
        std::fs::write(d.path().join("docspell-addon.yml"), b"meta: {}").unwrap();
        let cache = DigestCache::new();
        // Just written: not settled, so digested in full every time.
        let fresh = cache.digest(d.path()).unwrap();
        assert_eq!(fresh, digest_dir(d.path()).unwrap());
        assert_eq!(cache.digest(d.path()).unwrap(), fresh);
        assert_eq!(cache.hits(), 0, "a tree changed just now is not remembered");
        // Settled (as if the files were older): remembered, then answered from memory.
        let (listing, _) = stat_listing(d.path()).unwrap();
        cache.entries.lock().unwrap().insert(d.path().to_path_buf(), (listing, fresh.clone()));
        assert_eq!(cache.digest(d.path()).unwrap(), fresh);
        assert_eq!(cache.hits(), 1);
        // Same size, same mtime: the ctime still moves, and the digest follows the content.
        let old = SystemTime::now() - Duration::from_secs(3600);
        std::fs::write(d.path().join("src/run.sh"), b"echo ho").unwrap();
        std::fs::File::options().write(true).open(d.path().join("src/run.sh")).unwrap().set_modified(old).unwrap();
        let changed = cache.digest(d.path()).unwrap();
        assert_ne!(changed, fresh);
        assert_eq!(changed, digest_dir(d.path()).unwrap());
        assert_eq!(cache.hits(), 1);
        // A new file anywhere below is a change too.
        std::fs::write(d.path().join("src/new"), b"").unwrap();
        assert_eq!(cache.digest(d.path()).unwrap(), digest_dir(d.path()).unwrap());
    }

    #[test]
    fn a_settled_tree_is_remembered() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("docspell-addon.yml"), b"meta: {}").unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(d.path().join("docspell-addon.yml"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        // The ctimes are fresh (the kernel sets them): wait them out, as a job server's addons are.
        std::thread::sleep(DigestCache::SETTLE + std::time::Duration::from_millis(100));
        let cache = DigestCache::new();
        let first = cache.digest(d.path()).unwrap();
        assert_eq!(cache.digest(d.path()).unwrap(), first);
        assert_eq!(cache.hits(), 1);
    }
}
