//! The content digest of an unpacked addon: `sha256:<hex>` over a canonical listing.
//!
//! The listing is every entry below the root in sorted order of its relative path, each with its
//! type, executable bit and content (symlinks by their target). Timestamps, owners and the order
//! of entries in a zip do not count, so the same content gives the same digest from a directory or
//! from an archive. The cache and the runners key everything by it.

use std::fmt;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

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

/// Computes the digest of the directory tree at `root` (by the walk that follows no link and
/// reads each file through the descriptor it checked: an addon's tree may be any shape).
pub fn digest_dir(root: &Path) -> io::Result<ContentDigest> {
    use addon_tree::Kind;
    let mut hasher = Sha256::new();
    hasher.update(b"addon-digest-v1\0");
    let mut buf = vec![0u8; 256 * 1024];
    let mut failure: Option<io::Error> = None;
    let walked = addon_tree::walk(root, false, |n| {
        if n.depth == 0 || n.event == addon_tree::Event::Leave {
            return Ok(addon_tree::Visit::Continue);
        }
        let rel = n.rel_path();
        let name = rel.as_os_str().as_bytes();
        match n.stat.kind {
            Kind::Dir => {
                hasher.update(b"d\0");
                hasher.update(name);
                hasher.update(b"\0");
            }
            Kind::Symlink => {
                let target = n.read_link()?;
                hasher.update(b"l\0");
                hasher.update(name);
                hasher.update(b"\0");
                hasher.update(target.as_bytes());
                hasher.update(b"\0");
            }
            Kind::File => {
                let mut file = n.open_read()?;
                let exec = n.stat.perm & 0o111 != 0;
                hasher.update(if exec { b"x\0" } else { b"f\0" });
                hasher.update(name);
                hasher.update(b"\0");
                hasher.update(n.stat.size.to_le_bytes());
                let mut total = 0u64;
                loop {
                    let got = file.read(&mut buf).map_err(|e| n.err("reading", e))?;
                    if got == 0 {
                        break;
                    }
                    total += got as u64;
                    hasher.update(&buf[..got]);
                }
                if total != n.stat.size {
                    failure =
                        Some(io::Error::other(format!("{} changed while it was hashed", root.join(&rel).display())));
                    return Ok(addon_tree::Visit::Skip);
                }
            }
            _ => {
                failure = Some(io::Error::other(format!(
                    "{} is not a file, directory or symlink (sockets, fifos and devices are not addon content)",
                    root.join(&rel).display()
                )));
            }
        }
        Ok(addon_tree::Visit::Continue)
    });
    walked.map_err(|e| io::Error::new(e.kind(), format!("cannot list {e}")))?;
    if let Some(e) = failure {
        return Err(e);
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
    let mut out = Vec::new();
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    addon_tree::walk(root, false, |n| {
        if n.event == addon_tree::Event::Leave {
            return Ok(addon_tree::Visit::Continue);
        }
        let st = &n.stat;
        out.extend_from_slice(n.rel_path().as_os_str().as_bytes());
        out.push(0);
        out.push(st.kind as u8);
        for v in [st.dev, st.ino, u64::from(st.perm), st.size, st.nlink] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for (s, ns) in [st.mtime, st.ctime] {
            out.extend_from_slice(&s.to_le_bytes());
            out.extend_from_slice(&ns.to_le_bytes());
            let t = std::time::UNIX_EPOCH + std::time::Duration::new(s.max(0) as u64, ns.min(999_999_999));
            newest = newest.max(t);
        }
        Ok(addon_tree::Visit::Continue)
    })
    .map_err(|e| io::Error::new(e.kind(), e.to_string()))?;
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
            fs_err::create_dir(d.join("src")).unwrap();
            fs_err::write(d.join("src/run.sh"), b"echo hi").unwrap();
            fs_err::write(d.join("docspell-addon.yml"), b"meta: {}").unwrap();
        }
        let da = digest_dir(a.path()).unwrap();
        assert_eq!(da, digest_dir(b.path()).unwrap());
        assert!(ContentDigest::parse(da.as_str()).is_some());
        fs_err::set_permissions(b.path().join("src/run.sh"), std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        assert_ne!(da, digest_dir(b.path()).unwrap(), "the exec bit counts");
        fs_err::write(a.path().join("src/run.sh"), b"echo ho").unwrap();
        assert_ne!(da, digest_dir(a.path()).unwrap());
    }

    #[test]
    fn the_cache_answers_for_unchanged_settled_trees_only() {
        use std::time::{Duration, SystemTime};
        let d = tempfile::tempdir().unwrap();
        fs_err::create_dir(d.path().join("src")).unwrap();
        fs_err::write(d.path().join("src/run.sh"), b"echo hi").unwrap();
        fs_err::write(d.path().join("docspell-addon.yml"), b"meta: {}").unwrap();
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
        fs_err::write(d.path().join("src/run.sh"), b"echo ho").unwrap();
        std::fs::File::options().write(true).open(d.path().join("src/run.sh")).unwrap().set_modified(old).unwrap();
        let changed = cache.digest(d.path()).unwrap();
        assert_ne!(changed, fresh);
        assert_eq!(changed, digest_dir(d.path()).unwrap());
        assert_eq!(cache.hits(), 1);
        // A new file anywhere below is a change too.
        fs_err::write(d.path().join("src/new"), b"").unwrap();
        assert_eq!(cache.digest(d.path()).unwrap(), digest_dir(d.path()).unwrap());
    }

    #[test]
    fn a_settled_tree_is_remembered() {
        let d = tempfile::tempdir().unwrap();
        fs_err::write(d.path().join("docspell-addon.yml"), b"meta: {}").unwrap();
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
