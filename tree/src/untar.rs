//! Unpacking a tar stream that is treated as hostile (an archive of a tree an addon wrote, from
//! a plugin or a container): only regular files and directories (and, when allowed, symlinks) at
//! plain relative paths, never through a symlink, never over an existing file, no setuid/setgid
//! bits, and at most a given number of bytes.

use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

/// What an unpack may contain.
#[derive(Debug, Clone, Copy)]
pub struct UnpackPolicy {
    /// Symlinks are recreated (inside the destination they cannot be followed by later entries).
    pub symlinks: bool,
    /// Bytes of file content at most.
    pub max_bytes: Option<u64>,
    /// Entries keep the owners the archive names (needs root; setuid bits never come along).
    pub owners: bool,
}

/// What an unpack did.
#[derive(Debug, Clone, Default)]
pub struct Unpacked {
    /// Bytes of file content.
    pub bytes: u64,
    /// Entries left out (neither file, directory nor, when allowed, symlink).
    pub left_out: Vec<String>,
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
pub fn unpack_tar(reader: impl Read, dest: &Path, policy: UnpackPolicy) -> io::Result<Unpacked> {
    let mut left_out = Vec::new();
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
                own(&target, &entry, policy)?;
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
                own(&target, &entry, policy)?;
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
                own(&target, &entry, policy)?;
            }
            other => left_out.push(format!("`{}`: a {other:?} entry", rel.display())),
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
    Ok(Unpacked { bytes: total, left_out })
}

/// Gives `target` the owner the archive names for it, when the policy says so (the link itself,
/// never what it points to).
fn own<R: Read>(target: &Path, entry: &tar::Entry<'_, R>, policy: UnpackPolicy) -> io::Result<()> {
    if !policy.owners {
        return Ok(());
    }
    let (uid, gid) = (entry.header().uid()?, entry.header().gid()?);
    let id = |v: u64| u32::try_from(v).map_err(|_| bad(format!("`{}`: owner {v} out of range", target.display())));
    std::os::unix::fs::lchown(target, Some(id(uid)?), Some(id(gid)?))
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
