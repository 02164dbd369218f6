//! Safe extraction of addon zip archives. This is a security boundary: archives come from URLs.
//!
//! Every entry name is checked before anything is written (`..`, absolute, drive and backslash
//! names, duplicates, entries below a symlink), symlink targets are resolved through the archive's
//! own symlinks and must stay inside, and sizes are counted while inflating, never trusted from
//! headers. Extraction goes to a fresh temporary directory beside the target and is renamed into
//! place only when complete, so a refused archive leaves nothing behind and nothing is ever written
//! outside the target.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use fs_err as fs;

/// Limits for untrusted archives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Total unpacked bytes.
    pub max_size: u64,
    /// Number of entries.
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_size: 1 << 30, max_entries: 100_000 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot read zip archive {path}: {source}")]
    Zip { path: PathBuf, source: zip::result::ZipError },
    #[error("zip archive {path}: entry `{entry}` refused: {reason}")]
    Entry { path: PathBuf, entry: String, reason: String },
    #[error("zip archive {path} has {count} entries, more than the limit of {limit} (setting archive.max-entries)")]
    TooManyEntries { path: PathBuf, count: usize, limit: usize },
    #[error("zip archive {path} unpacks to more than {limit} bytes (at entry `{entry}`; setting archive.max-size)")]
    TooLarge { path: PathBuf, entry: String, limit: u64 },
    #[error(transparent)]
    Io(#[from] io::Error),
}

enum Kind {
    Dir,
    File { index: usize, mode: u32 },
    Symlink { target: String },
}

/// Extracts `zip_path` into `target` (which must not exist yet), unwrapping single top
/// directories as Docspell does. Returns `target`.
pub fn extract_zip(zip_path: &Path, target: &Path, limits: Limits) -> Result<PathBuf, ArchiveError> {
    let file = fs::File::open(zip_path)?;
    let zerr = |source| ArchiveError::Zip { path: zip_path.to_path_buf(), source };
    let mut archive = zip::ZipArchive::new(io::BufReader::new(file.into_file())).map_err(zerr)?;
    if archive.len() > limits.max_entries {
        return Err(ArchiveError::TooManyEntries {
            path: zip_path.to_path_buf(),
            count: archive.len(),
            limit: limits.max_entries,
        });
    }
    let refuse = |entry: &str, reason: &str| ArchiveError::Entry {
        path: zip_path.to_path_buf(),
        entry: entry.to_string(),
        reason: reason.to_string(),
    };
    // The reader keeps one entry per name; an archive that lists a name twice would show one
    // file to us and another to whoever reviews it with a different tool.
    if archive.has_duplicate_names() {
        return Err(refuse("(central directory)", "lists an entry name more than once"));
    }

    // Pass 1: names and kinds only; nothing is written until the whole listing is sound.
    let mut entries: BTreeMap<Vec<String>, Kind> = BTreeMap::new();
    let mut declared: u64 = 0;
    for i in 0..archive.len() {
        let mut f = archive.by_index(i).map_err(zerr)?;
        let raw = String::from_utf8_lossy(f.name_raw()).into_owned();
        let comps = check_name(&raw).map_err(|r| refuse(&raw, r))?;
        let kind = if f.is_symlink() {
            if f.size() > 4096 {
                return Err(refuse(&raw, "symlink target longer than 4096 bytes"));
            }
            let mut target = String::new();
            (&mut f)
                .take(4097)
                .read_to_string(&mut target)
                .map_err(|_| refuse(&raw, "symlink target is not UTF-8 text"))?;
            Kind::Symlink { target }
        } else if f.is_dir() {
            Kind::Dir
        } else {
            declared = declared.saturating_add(f.size());
            Kind::File { index: i, mode: f.unix_mode().unwrap_or(0o644) & 0o777 }
        };
        if comps.is_empty() {
            if matches!(kind, Kind::Dir) {
                continue;
            }
            return Err(refuse(&raw, "empty entry name"));
        }
        if let Some(prev) = entries.get(&comps) {
            // Docspell-made zips sometimes list a directory twice; a duplicate file is ambiguous.
            if !(matches!(prev, Kind::Dir) && matches!(kind, Kind::Dir)) {
                return Err(refuse(&raw, "duplicate entry name"));
            }
        }
        entries.insert(comps, kind);
    }
    if declared > limits.max_size {
        return Err(ArchiveError::TooLarge {
            path: zip_path.to_path_buf(),
            entry: "(declared sizes)".into(),
            limit: limits.max_size,
        });
    }
    let symlinks: BTreeMap<&[String], &str> = entries
        .iter()
        .filter_map(|(p, k)| match k {
            Kind::Symlink { target } => Some((p.as_slice(), target.as_str())),
            _ => None,
        })
        .collect();
    for (path, kind) in &entries {
        let name = path.join("/");
        // No entry may live below a symlink: writing it would follow the link.
        for n in 1..path.len() {
            if symlinks.contains_key(&path[..n]) {
                return Err(refuse(&name, "lies below a symlink of the archive"));
            }
            if matches!(entries.get(&path[..n]), Some(Kind::File { .. })) {
                return Err(refuse(&name, "lies below a file of the archive"));
            }
        }
        if let Kind::Symlink { target } = kind {
            resolve_link(&path[..path.len() - 1], target, &symlinks, 0)
                .map_err(|r| refuse(&name, &format!("symlink to `{target}` {r}")))?;
        }
    }

    // Pass 2: write into a fresh directory beside the target, then move it into place.
    let parent = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(parent)?;
    let staging = tempfile::Builder::new().prefix(".unpack-").tempdir_in(parent)?;
    let root = staging.path().join("root");
    fs::create_dir(&root)?;
    let mut written: u64 = 0;
    let mut buf = vec![0u8; 64 * 1024];
    for (path, kind) in &entries {
        let dest = path.iter().fold(root.clone(), |p, c| p.join(c));
        match kind {
            Kind::Dir => fs::create_dir_all(&dest)?,
            Kind::File { index, mode } => {
                if let Some(dir) = dest.parent() {
                    fs::create_dir_all(dir)?;
                }
                let mut f = archive.by_index(*index).map_err(zerr)?;
                let mut out = fs::OpenOptions::new().write(true).create_new(true).open(&dest)?;
                loop {
                    let n = match f.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) => return Err(refuse(&path.join("/"), &format!("cannot inflate: {e}"))),
                    };
                    written += n as u64;
                    if written > limits.max_size {
                        return Err(ArchiveError::TooLarge {
                            path: zip_path.to_path_buf(),
                            entry: path.join("/"),
                            limit: limits.max_size,
                        });
                    }
                    out.write_all(&buf[..n])?;
                }
                // The owner keeps read and write so the engine can clean up.
                fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode | 0o600))?;
            }
            Kind::Symlink { .. } => {}
        }
    }
    // Symlinks last, so no write above can follow one.
    for (path, kind) in &entries {
        if let Kind::Symlink { target } = kind {
            let dest = path.iter().fold(root.clone(), |p, c| p.join(c));
            if let Some(dir) = dest.parent() {
                fs::create_dir_all(dir)?;
            }
            fs::os::unix::fs::symlink(target, &dest)?;
        }
    }
    let content = unwrap_single_dir(&root)?;
    // Links were checked against the archive's root; unwrapping moved the root down, so a link
    // that climbed out of the top folder and back would now leave the addon: every link is
    // checked again against the root the addon will have, as the kernel resolves it.
    if let Err(e) = addon_tree::links_stay_inside(&content) {
        return Err(ArchiveError::Entry {
            path: zip_path.to_path_buf(),
            entry: e.at.clone(),
            reason: format!("after unwrapping the top folder, {}", e.source),
        });
    }
    fs::rename(&content, target)?;
    Ok(target.to_path_buf())
}

/// Descends while a directory holds exactly one entry that is a real directory.
pub fn unwrap_single_dir(dir: &Path) -> io::Result<PathBuf> {
    let mut cur = dir.to_path_buf();
    loop {
        let mut it = fs::read_dir(&cur)?;
        let (Some(first), None) = (it.next().transpose()?, it.next()) else { return Ok(cur) };
        if first.file_type()?.is_dir() {
            cur = first.path();
        } else {
            return Ok(cur);
        }
    }
}

/// Splits and checks an entry name. Returns its normal components (empty for the root).
fn check_name(raw: &str) -> Result<Vec<String>, &'static str> {
    if raw.contains('\0') {
        return Err("name contains a NUL byte");
    }
    if raw.contains('\\') {
        return Err("name contains a backslash (a Windows path)");
    }
    if raw.starts_with('/') {
        return Err("absolute path");
    }
    let bytes = raw.as_bytes();
    if bytes.len() >= 2 && bytes[1] == b':' && bytes[0].is_ascii_alphabetic() {
        return Err("drive letter path");
    }
    let mut out = Vec::new();
    for c in raw.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err("path contains `..`"),
            c => out.push(c.to_string()),
        }
    }
    Ok(out)
}

/// Resolves a symlink `target` written in directory `dir` through the archive's own symlinks and
/// fails when the result would be outside the archive root.
fn resolve_link(
    dir: &[String],
    target: &str,
    links: &BTreeMap<&[String], &str>,
    depth: usize,
) -> Result<Vec<String>, &'static str> {
    if depth > 32 {
        return Err("resolves through too many symlinks");
    }
    if target.starts_with('/') {
        return Err("is absolute");
    }
    if target.is_empty() || target.contains('\0') || target.contains('\\') {
        return Err("is not a usable path");
    }
    let mut cur: Vec<String> = dir.to_vec();
    let mut seen = BTreeSet::new();
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if cur.pop().is_none() {
                    return Err("points out of the addon");
                }
            }
            c => {
                cur.push(c.to_string());
                if let Some(next) = links.get(cur.as_slice()) {
                    if !seen.insert(cur.clone()) {
                        return Err("forms a loop");
                    }
                    let base = cur[..cur.len() - 1].to_vec();
                    cur = resolve_link(&base, next, links, depth + 1)?;
                }
            }
        }
    }
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(check_name("a/./b/").unwrap(), vec!["a", "b"]);
        assert!(check_name("../x").is_err());
        assert!(check_name("a/../../x").is_err());
        assert!(check_name("/etc/passwd").is_err());
        assert!(check_name("C:/x").is_err());
        assert!(check_name("a\\..\\x").is_err());
    }

    #[test]
    fn links_resolve_through_links() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let dot = s(&["s"]);
        let mut links: BTreeMap<&[String], &str> = BTreeMap::new();
        links.insert(dot.as_slice(), ".");
        // `s -> .` is fine, but `s/..` through it is the parent of the root.
        assert!(resolve_link(&[], "s/..", &links, 0).is_err());
        assert!(resolve_link(&[], "s/x", &links, 0).is_ok());
        assert!(resolve_link(&s(&["a"]), "../b", &links, 0).is_ok());
        assert!(resolve_link(&s(&["a"]), "../../b", &links, 0).is_err());
        let l = s(&["l"]);
        let mut loops: BTreeMap<&[String], &str> = BTreeMap::new();
        loops.insert(l.as_slice(), "l");
        assert!(resolve_link(&[], "l", &loops, 0).is_err());
    }
}
