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

/// Writes a tar of `dir`'s content (not following symlinks) to `out` in chunks: directories,
/// regular files and symlinks; sockets, fifos and devices are left out (they cannot cross, and
/// an addon's HOME often holds an agent's socket). Runs in a blocking thread. A missing `dir` is
/// an error, never an empty archive: the receiver would take that for an emptied directory.
pub fn pack(dir: &Path, out: mpsc::Sender<Vec<u8>>) -> io::Result<()> {
    if !fs::symlink_metadata(dir)?.is_dir() {
        return Err(bad(format!("{} is not a directory", dir.display())));
    }
    let writer = ChunkWriter { buf: Vec::with_capacity(CHUNK), out };
    // Read by the walk that acts on checked descriptors: a concurrent run of the same addon
    // cannot swap a file of its CACHE_DIR for a link to a host file while it is packed.
    let (mut writer, packed) = addon_tree::pack_tar(dir, writer, addon_tree::Links::Keep)
        .map_err(|e| io::Error::new(e.kind(), e.to_string()))?;
    for p in packed.left_out {
        tracing::debug!("not copying {} (neither file, directory nor symlink)", p.display());
    }
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

/// Remembers whether the last 512-byte block read was all zeros: a tar stream that was cut at
/// an entry's boundary reads like a complete one to the tar crate; a complete one ends with
/// zero blocks.
struct EndCheck<R> {
    inner: R,
    total: u64,
    tail: Vec<u8>,
    /// The stream ended under the tar reader: it stopped at EOF, not at the end blocks.
    eof: bool,
}

impl<R: Read> Read for EndCheck<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.eof = true;
        }
        self.total += n as u64;
        self.tail.extend_from_slice(&buf[..n]);
        if self.tail.len() > 512 {
            self.tail.drain(..self.tail.len() - 512);
        }
        Ok(n)
    }
}

impl<R> EndCheck<R> {
    /// The tar reader stopped at a zero block (the end of the archive), not at the stream's end
    /// after a block that merely held zeros (a file ending in NULs).
    fn ended(&self) -> bool {
        !self.eof && self.tail.len() == 512 && self.tail.iter().all(|b| *b == 0)
    }
}

/// Unpacks a tar stream into `dest` (created when missing); returns the bytes of file content.
/// A stream without tar's end-of-archive blocks (cut short, or empty) is an error.
pub fn unpack(reader: impl Read, dest: &Path, policy: UnpackPolicy) -> io::Result<u64> {
    fs::create_dir_all(dest)?;
    let mut archive =
        tar::Archive::new(EndCheck { inner: reader, total: 0, tail: Vec::with_capacity(1024), eof: false });
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
    let read = archive.into_inner();
    if !read.ended() {
        return Err(bad(if read.total == 0 {
            "the stream was empty, not a tar archive".to_string()
        } else {
            format!("the tar stream was cut short after {} bytes (no end-of-archive blocks)", read.total)
        }));
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

/// Puts the content of `fresh` (a directory on the same filesystem) in the place of `dir` in one
/// step (`renameat2` with RENAME_EXCHANGE): whoever reads `dir` sees the old content or the new,
/// never a half-emptied directory, and a crash leaves one of the two whole. The old content is
/// then at `fresh`, for the caller to remove.
pub fn replace_content(dir: &Path, fresh: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    if !dir.exists() {
        if let Some(parent) = dir.parent() {
            fs::create_dir_all(parent)?;
        }
        return fs::rename(fresh, dir).and_then(|()| fs::create_dir(fresh));
    }
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| bad(format!("{} holds a NUL", p.display())))
    };
    let (a, b) = (c(fresh)?, c(dir)?);
    // SAFETY: two valid NUL-terminated paths; renameat2 only reads them.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, a.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
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

    fn packed(dir: &Path) -> io::Result<Vec<u8>> {
        let (tx, mut rx) = mpsc::channel(4);
        let dir = dir.to_path_buf();
        let t = std::thread::spawn(move || pack(&dir, tx));
        let mut bytes = Vec::new();
        while let Some(c) = rx.blocking_recv() {
            bytes.extend(c);
        }
        t.join().unwrap().map(|()| bytes)
    }

    /// A stream cut at an entry's boundary, or an empty one, reads like a whole archive to the
    /// tar crate; it must not be taken for a directory that lost its files.
    #[test]
    fn a_cut_or_empty_stream_is_refused() {
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("a"), vec![0u8; 600]).unwrap();
        fs::write(src.path().join("b"), b"bee").unwrap();
        let bytes = packed(src.path()).unwrap();
        let lax = UnpackPolicy { symlinks: false, max_bytes: None };
        // Header + two blocks of `a`: cut right after the first entry.
        let cut = &bytes[..512 * 3];
        let e = unpack(cut, tempfile::tempdir().unwrap().path(), lax).unwrap_err();
        assert!(e.to_string().contains("cut short"), "{e}");
        let e = unpack(&b""[..], tempfile::tempdir().unwrap().path(), lax).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        assert_eq!(unpack(&bytes[..], tempfile::tempdir().unwrap().path(), lax).unwrap(), 603);
    }

    /// Sockets and fifos (an agent's socket in HOME) are left out; the rest still crosses. A
    /// missing directory is an error, not an empty archive.
    #[test]
    fn pack_leaves_out_what_cannot_cross_and_refuses_a_missing_directory() {
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("kept"), b"k").unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(src.path().join("agent.sock")).unwrap();
        let fifo = std::ffi::CString::new(src.path().join("fifo").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let bytes = packed(src.path()).unwrap();
        let dest = tempfile::tempdir().unwrap();
        unpack(&bytes[..], dest.path(), STRICT).unwrap();
        assert_eq!(fs::read(dest.path().join("kept")).unwrap(), b"k");
        assert!(!dest.path().join("agent.sock").exists() && !dest.path().join("fifo").exists());
        assert!(packed(&src.path().join("missing")).is_err());
    }

    #[test]
    fn replace_content_swaps_in_one_step() {
        let root = tempfile::tempdir().unwrap();
        let (dir, fresh) = (root.path().join("dir"), root.path().join("fresh"));
        fs::create_dir_all(dir.join("old")).unwrap();
        fs::create_dir_all(&fresh).unwrap();
        fs::write(fresh.join("new"), b"n").unwrap();
        replace_content(&dir, &fresh).unwrap();
        assert!(dir.join("new").is_file() && !dir.join("old").exists());
        assert!(fresh.join("old").is_dir(), "the old content is left at `fresh` for the caller");
        let absent = root.path().join("absent");
        replace_content(&absent, &fresh).unwrap();
        assert!(absent.join("old").is_dir() && fresh.is_dir());
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
