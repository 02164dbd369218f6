//! Directory copies as tar streams, for plugins that do not share the host filesystem (CopyIn,
//! CopyOut). Unpacking treats the stream as hostile: only regular files and directories (and, when
//! allowed, symlinks) at plain relative paths, never through a symlink, never over an existing
//! file, no setuid/setgid bits, and at most a given number of bytes.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use tokio::sync::mpsc;

/// Size of the pieces a tar stream is sent in.
pub const CHUNK: usize = 256 * 1024;

/// What an unpack may contain.
#[derive(Debug, Clone, Copy)]
pub struct UnpackPolicy {
    /// Symlinks are recreated (inside the destination they cannot be followed by later entries).
    pub symlinks: bool,
    /// Bytes of file content at most.
    pub max_bytes: Option<u64>,
}

/// Writes a tar of `dir`'s content (not following symlinks) to `out` in chunks. Runs in a
/// blocking thread; ends when the receiver goes away.
pub fn pack(dir: &Path, out: mpsc::Sender<Vec<u8>>) -> io::Result<()> {
    let writer = ChunkWriter { buf: Vec::with_capacity(CHUNK), out };
    let mut tar = tar::Builder::new(writer);
    tar.follow_symlinks(false);
    tar.mode(tar::HeaderMode::Complete);
    if dir.exists() {
        tar.append_dir_all(".", dir)?;
    }
    let mut writer = tar.into_inner()?;
    writer.flush()
}

struct ChunkWriter {
    buf: Vec<u8>,
    out: mpsc::Sender<Vec<u8>>,
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.out.blocking_send(chunk).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the receiver went away"))
    }
}

/// Unpacks a tar stream into `dest` (created when missing); returns the bytes of file content.
pub fn unpack(reader: impl Read, dest: &Path, policy: UnpackPolicy) -> io::Result<u64> {
    fs::create_dir_all(dest)?;
    let mut archive = tar::Archive::new(reader);
    let mut total = 0u64;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw = entry.path()?.into_owned();
        let Some(rel) = plain_relative(&raw) else {
            return Err(bad(format!("entry `{}` is not a plain relative path", raw.display())));
        };
        if rel.as_os_str().is_empty() {
            continue; // "." itself
        }
        let target = dest.join(&rel);
        no_symlink_between(dest, &rel)?;
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                match fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => return Err(bad(format!("`{}` is both a file and a directory", rel.display()))),
                    Err(_) => fs::create_dir(&target)?,
                }
                set_mode(&target, mode | 0o700)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.header().size()?;
                total = total.saturating_add(size);
                if let Some(max) = policy.max_bytes {
                    if total > max {
                        return Err(io::Error::new(
                            io::ErrorKind::FileTooLarge,
                            format!("more than {max} bytes (at `{}`)", rel.display()),
                        ));
                    }
                }
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&target)
                    .map_err(|e| io::Error::new(e.kind(), format!("`{}`: {e}", rel.display())))?;
                io::copy(&mut (&mut entry).take(size), &mut f)?;
                drop(f);
                set_mode(&target, mode)?;
                if let Ok(mtime) = entry.header().mtime() {
                    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime);
                    let _ = fs::File::options().write(true).open(&target).and_then(|f| f.set_modified(t));
                }
            }
            tar::EntryType::Symlink if policy.symlinks => {
                let link =
                    entry.link_name()?.ok_or_else(|| bad(format!("symlink `{}` has no target", rel.display())))?;
                std::os::unix::fs::symlink(link.as_ref(), &target)?;
            }
            other => {
                tracing::warn!(
                    "left out `{}`: a {other:?} entry (only files and directories are copied)",
                    rel.display()
                );
            }
        }
    }
    Ok(total)
}

fn set_mode(p: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
}

fn bad(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// `a/b/c` from `./a/b/c`; None for absolute paths or `..`.
fn plain_relative(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

/// Refuses a path whose parent directories include a symlink (inside `dest`).
fn no_symlink_between(dest: &Path, rel: &Path) -> io::Result<()> {
    let mut at = dest.to_path_buf();
    let parents: Vec<_> = rel.parent().map(|p| p.components().collect()).unwrap_or_default();
    for c in parents {
        at.push(c);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(bad(format!("`{}` would be written through a symlink", rel.display())))
            }
            Ok(m) if !m.is_dir() => return Err(bad(format!("`{}` is below a file", rel.display()))),
            Ok(_) => {}
            Err(_) => fs::create_dir(&at)?,
        }
    }
    Ok(())
}

/// Replaces the content of `dir` with the content of `fresh` (a sibling it can be renamed from).
pub fn replace_content(dir: &Path, fresh: &Path) -> io::Result<()> {
    if dir.exists() {
        for e in fs::read_dir(dir)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                fs::remove_dir_all(e.path())?;
            } else {
                fs::remove_file(e.path())?;
            }
        }
    } else {
        fs::create_dir_all(dir)?;
    }
    for e in fs::read_dir(fresh)? {
        let e = e?;
        fs::rename(e.path(), dir.join(e.file_name()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_entry_type(tar::EntryType::Regular);
        // set_path refuses `..`; write the name bytes directly to test hostile streams.
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn symlink(b: &mut tar::Builder<Vec<u8>>, path: &str, to: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, path, to).unwrap();
    }

    const STRICT: UnpackPolicy = UnpackPolicy { symlinks: false, max_bytes: Some(1000) };

    #[test]
    fn a_directory_round_trips() {
        let src = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("a/b")).unwrap();
        fs::write(src.path().join("a/b/f"), b"hello").unwrap();
        set_mode(&src.path().join("a/b/f"), 0o755).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let dir = src.path().to_path_buf();
        let t = std::thread::spawn(move || pack(&dir, tx));
        let mut bytes = Vec::new();
        while let Some(c) = rx.blocking_recv() {
            bytes.extend(c);
        }
        t.join().unwrap().unwrap();
        let dest = tempfile::tempdir().unwrap();
        assert_eq!(unpack(&bytes[..], dest.path(), STRICT).unwrap(), 5);
        assert_eq!(fs::read(dest.path().join("a/b/f")).unwrap(), b"hello");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(dest.path().join("a/b/f")).unwrap().permissions().mode() & 0o777, 0o755);
    }

    #[test]
    fn hostile_streams_write_nothing_outside() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("d");
        for (what, t) in [
            ("dotdot", tar_of(|b| file(b, "../escape", b"x", 0o644))),
            ("absolute", tar_of(|b| file(b, "/tmp/escape-abs", b"x", 0o644))),
            (
                "through a symlink",
                tar_of(|b| {
                    symlink(b, "l", root.path().to_str().unwrap());
                    file(b, "l/escape", b"x", 0o644)
                }),
            ),
            ("too big", tar_of(|b| file(b, "big", &[0u8; 2000], 0o644))),
            (
                "twice",
                tar_of(|b| {
                    file(b, "f", b"1", 0o644);
                    file(b, "f", b"2", 0o644)
                }),
            ),
        ] {
            let policy = UnpackPolicy { symlinks: what == "through a symlink", ..STRICT };
            assert!(unpack(&t[..], &dest, policy).is_err(), "{what} was accepted");
            assert!(!root.path().join("escape").exists(), "{what}");
            let _ = fs::remove_dir_all(&dest);
        }
        assert!(!Path::new("/tmp/escape-abs").exists());
    }

    #[test]
    fn setuid_bits_and_symlinks_do_not_arrive() {
        let dest = tempfile::tempdir().unwrap();
        let t = tar_of(|b| {
            file(b, "suid", b"x", 0o4755);
            symlink(b, "link", "/etc/shadow");
        });
        unpack(&t[..], dest.path(), STRICT).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(dest.path().join("suid")).unwrap().permissions().mode() & 0o7777, 0o755);
        assert!(fs::symlink_metadata(dest.path().join("link")).is_err());
    }
}
