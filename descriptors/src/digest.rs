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
}
