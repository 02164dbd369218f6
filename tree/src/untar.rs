//! Unpacking a tar stream that is treated as hostile (an archive of a tree an addon wrote, from
//! a plugin or a container): only regular files and directories (and, when allowed, symlinks) at
//! plain relative paths, never through a symlink, never over an existing file, no setuid/setgid
//! bits, and at most a given number of bytes.

use std::fs;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags};

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
    // Every entry is made relative to a descriptor of its parent, opened one component at a time
    // without following links: no path longer than PATH_MAX is ever handed to the kernel, and
    // nothing is written through a symlink (an earlier entry's, or anyone's).
    let mut parents = Parents::open(dest)?;
    let mut archive =
        tar::Archive::new(EndCheck { inner: reader, total: 0, tail: Vec::with_capacity(1024), eof: false });
    let mut total = 0u64;
    for entry in archive.entries()? {
        let mut entry = entry?;
        let raw = entry.path()?.into_owned();
        let Some(rel) = plain_relative(&raw) else {
            return Err(bad(format!("entry `{}` is not a plain relative path", raw.display())));
        };
        let Some(name) = rel.file_name().map(|n| n.to_os_string()) else {
            continue; // "." itself
        };
        let parent = parents.of(&rel)?;
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        let named = |e: io::Error| io::Error::new(e.kind(), format!("`{}`: {e}", rel.display()));
        match entry.header().entry_type() {
            tar::EntryType::Directory => {
                match rustix::fs::mkdirat(parent, &name, Mode::from_raw_mode(0o700)) {
                    Ok(()) => {}
                    Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(named(e.into())),
                }
                let dir = match rustix::fs::openat(parent, &name, DIR_FLAGS, Mode::empty()) {
                    Ok(fd) => fd,
                    Err(rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP) => {
                        return Err(bad(format!("`{}` is both a file and a directory", rel.display())))
                    }
                    Err(e) => return Err(named(e.into())),
                };
                rustix::fs::fchmod(&dir, Mode::from_raw_mode(mode | 0o700)).map_err(|e| named(e.into()))?;
                own(parent, &name, &entry, policy).map_err(named)?;
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
                let fd = rustix::fs::openat(
                    parent,
                    &name,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| named(e.into()))?;
                let mut f = fs::File::from(fd);
                io::copy(&mut (&mut entry).take(size), &mut f)?;
                own(parent, &name, &entry, policy).map_err(named)?;
                // After the owner: a change of owner clears setuid and setgid, and the mode never
                // carries them anyway (0o777 above).
                rustix::fs::fchmod(&f, Mode::from_raw_mode(mode)).map_err(|e| named(e.into()))?;
                if let Ok(mtime) = entry.header().mtime() {
                    let _ = f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime));
                }
            }
            tar::EntryType::Symlink if policy.symlinks => {
                let link =
                    entry.link_name()?.ok_or_else(|| bad(format!("symlink `{}` has no target", rel.display())))?;
                rustix::fs::symlinkat(link.as_ref(), parent, &name).map_err(|e| named(e.into()))?;
                own(parent, &name, &entry, policy).map_err(named)?;
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

const DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

/// Descriptors of the directories above the last entry, from the destination down: entries
/// come in walk order, so the next one mostly shares them. At most [`OPEN_PARENTS`] are held
/// (a tree may be deeper than a process may hold descriptors); one dropped is opened again from
/// the nearest one held when an entry needs it.
struct Parents {
    names: Vec<std::ffi::OsString>,
    /// `fds[0]` is the destination; `fds[i]` the directory `names[..i]`.
    fds: Vec<Option<OwnedFd>>,
}

/// Descriptors of parent directories held at once.
const OPEN_PARENTS: usize = 128;

impl Parents {
    fn open(dest: &Path) -> io::Result<Parents> {
        let root = rustix::fs::open(dest, DIR_FLAGS, Mode::empty())
            .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("{}: {e}", dest.display())))?;
        Ok(Parents { names: Vec::new(), fds: vec![Some(root)] })
    }

    /// The directory `rel` is made in; missing directories on the way are made (0700, as tar
    /// does before their own entry comes). A symlink or a file on the way is an error.
    fn of(&mut self, rel: &Path) -> io::Result<&OwnedFd> {
        let wanted: Vec<&std::ffi::OsStr> =
            rel.parent().map(|p| p.components().map(|c| c.as_os_str()).collect()).unwrap_or_default();
        let common = self.names.iter().zip(&wanted).take_while(|(a, b)| a.as_os_str() == **b).count();
        self.names.truncate(common);
        self.fds.truncate(common + 1);
        // The deepest directory held, then down again by name to where the entry starts.
        let held = self.fds.iter().rposition(Option::is_some).expect("the root is always held");
        for i in held..common {
            let at = self.fds[i].as_ref().expect("opened on the way down");
            let fd = open_dir(at, &self.names[i], rel, false)?;
            self.fds[i + 1] = Some(fd);
        }
        for name in &wanted[common..] {
            let at = self.fds.last().and_then(Option::as_ref).expect("opened on the way down");
            let fd = open_dir(at, name, rel, true)?;
            self.names.push(name.to_os_string());
            self.fds.push(Some(fd));
        }
        let open = self.fds.iter().filter(|f| f.is_some()).count();
        if open > OPEN_PARENTS {
            let drop_to = open - OPEN_PARENTS;
            for f in self.fds.iter_mut().skip(1).filter(|f| f.is_some()).take(drop_to) {
                *f = None;
            }
        }
        Ok(self.fds.last().and_then(Option::as_ref).expect("opened on the way down"))
    }
}

/// Opens the directory `name` of `at` without following a link; makes it first when `make`.
fn open_dir(at: &OwnedFd, name: &std::ffi::OsStr, rel: &Path, make: bool) -> io::Result<OwnedFd> {
    let opened = match rustix::fs::openat(at, name, DIR_FLAGS, Mode::empty()) {
        Err(rustix::io::Errno::NOENT) if make => {
            rustix::fs::mkdirat(at, name, Mode::from_raw_mode(0o700))?;
            rustix::fs::openat(at, name, DIR_FLAGS, Mode::empty())
        }
        other => other,
    };
    match opened {
        Ok(fd) => Ok(fd),
        Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
            let link = rustix::fs::statat(at, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|st| rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Symlink);
            Err(bad(if link {
                format!("`{}` would be written through a symlink", rel.display())
            } else {
                format!("`{}` is below a file", rel.display())
            }))
        }
        Err(e) => Err(io::Error::new(io::Error::from(e).kind(), format!("`{}`: {e}", rel.display()))),
    }
}

/// Gives the entry `name` of `parent` the owner the archive names for it, when the policy says
/// so (the link itself, never what it points to).
fn own<R: Read>(
    parent: &OwnedFd,
    name: &std::ffi::OsStr,
    entry: &tar::Entry<'_, R>,
    policy: UnpackPolicy,
) -> io::Result<()> {
    if !policy.owners {
        return Ok(());
    }
    let (uid, gid) = (entry.header().uid()?, entry.header().gid()?);
    let id = |v: u64| u32::try_from(v).map_err(|_| bad(format!("owner {v} out of range")));
    let (uid, gid) = (rustix::fs::Uid::from_raw(id(uid)?), rustix::fs::Gid::from_raw(id(gid)?));
    rustix::fs::chownat(parent, name, Some(uid), Some(gid), rustix::fs::AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
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
