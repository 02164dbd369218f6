//! What the engine does to addon trees, each one walk: measure, sanitize, remove, copy, merge.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, Mode, OFlags, CWD};
use rustix::io::Errno;

use crate::walk::{display_path, open_beneath, open_dir, walk, walk_fd, Event, Kind, Node, Visit};
use crate::TreeError;

/// What a tree holds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Measure {
    /// Bytes allocated on disk (every entry; sparse files count for what they take).
    pub bytes: u64,
    /// Entries below the root (files, directories, links, anything).
    pub entries: u64,
    /// What `ls` would add up: the lengths of everything but directories.
    pub length: u64,
}

impl std::ops::Add for Measure {
    type Output = Measure;
    fn add(self, o: Measure) -> Measure {
        Measure { bytes: self.bytes + o.bytes, entries: self.entries + o.entries, length: self.length + o.length }
    }
}

/// Bytes and entries below `root` (a missing root holds nothing).
pub fn measure(root: &Path) -> Result<Measure, TreeError> {
    let mut m = Measure::default();
    let r = walk(root, true, |n| {
        if n.event == Event::Leave {
            return Ok(Visit::Continue);
        }
        if n.depth > 0 {
            m.entries += 1;
        }
        m.bytes += n.stat.allocated;
        if n.stat.kind != Kind::Dir {
            m.length += n.stat.size;
        }
        Ok(Visit::Continue)
    });
    match r {
        Err(e) if e.at == "." && e.kind() == std::io::ErrorKind::NotFound => Ok(Measure::default()),
        Err(e) => Err(e),
        Ok(()) => Ok(m),
    }
}

/// What [`sanitize`] makes of a tree.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sanitize {
    /// Give every entry to this `(uid, gid)` (the root too).
    pub owner: Option<(u32, u32)>,
    /// Keep symlinks (as links; never followed). Otherwise they are removed like fifos,
    /// sockets and devices, which always are.
    pub keep_symlinks: bool,
    /// Give the owner `rwx` on every directory (a tree to be moved: a directory's entries, and
    /// a directory moved to another parent, need it writable).
    pub dirs_writable: bool,
}

/// What [`sanitize`] did.
#[derive(Debug, Clone, Default)]
pub struct Sanitized {
    /// Entries that lost setuid or setgid bits or file capabilities.
    pub defused: u64,
    /// Entries removed (not files or directories), the first few by path.
    pub removed: Vec<String>,
    pub removed_count: u64,
    /// Entries given to the owner.
    pub chowned: u64,
    /// What is left.
    pub measure: Measure,
}

/// How many removed entries [`Sanitized::removed`] names.
const NAMED: usize = 20;

/// Makes the tree at `root` safe to keep on the host: no setuid or setgid bits, no file
/// capabilities, nothing but files, directories (and, when `keep_symlinks`, links), all owned
/// by `owner` when one is given. Directories the walk cannot read are made readable by their
/// owner. An error stops the walk and is returned: the caller must not keep the tree as it is.
pub fn sanitize(root: &Path, how: &Sanitize) -> Result<Sanitized, TreeError> {
    let mut out = Sanitized::default();
    walk(root, true, |n| match sanitize_one(n, how, &mut out) {
        // Gone while the walk was at it (a concurrent run of the addon): nothing to make safe.
        Err(e) if e.vanished() && n.depth > 0 => Ok(Visit::Continue),
        other => other,
    })?;
    Ok(out)
}

/// What [`sanitize`] does with one entry.
fn sanitize_one(n: &Node<'_>, how: &Sanitize, out: &mut Sanitized) -> Result<Visit, TreeError> {
    if n.event == Event::Leave {
        return Ok(Visit::Continue);
    }
    let remove = match n.stat.kind {
        Kind::File | Kind::Dir => false,
        Kind::Symlink => !how.keep_symlinks,
        _ => true,
    };
    if remove {
        out.removed_count += 1;
        if out.removed.len() < NAMED {
            out.removed.push(format!("{} ({})", n.display(), n.stat.kind.as_str()));
        }
        return Ok(Visit::Remove);
    }
    let mut defused = false;
    if n.stat.kind != Kind::Symlink && n.stat.perm & 0o6000 != 0 {
        n.chmod(n.stat.perm & !0o6000)?;
        defused = true;
    }
    // Looked for first: an unprivileged process may not even try to remove a `security.`
    // attribute. Only on files someone may execute: capabilities take effect on exec alone, and
    // only the file's owner (the engine's user, once given) could add an exec bit; it never
    // does. (Looking costs a descriptor and a lookup per file; kept trees hold many.)
    if n.stat.kind == Kind::File
        && n.stat.perm & 0o111 != 0
        && n.has_xattr(c"security.capability")?
        && n.remove_xattr(c"security.capability")?
    {
        defused = true;
    }
    out.defused += u64::from(defused);
    if let Some((uid, gid)) = how.owner {
        if n.stat.uid != uid || n.stat.gid != gid {
            n.chown(uid, gid)?;
            out.chowned += 1;
        }
    }
    if how.dirs_writable && n.stat.kind == Kind::Dir && n.stat.perm & 0o700 != 0o700 {
        n.chmod((n.stat.perm & !0o6000) | 0o700)?;
    }
    if n.depth > 0 {
        out.measure.entries += 1;
    }
    out.measure.bytes += n.stat.allocated;
    if n.stat.kind != Kind::Dir {
        out.measure.length += n.stat.size;
    }
    Ok(Visit::Continue)
}

/// Removes `path` and everything below it (a symlink or file at `path` is unlinked, never
/// followed). Directories are made writable as needed; a missing `path` is not an error.
pub fn remove_tree(path: &Path) -> Result<(), TreeError> {
    let err = |what: &'static str, e: Errno| TreeError::new(path, ".".into(), what, e.into());
    match rustix::fs::statat(CWD, path, AtFlags::SYMLINK_NOFOLLOW) {
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(err("reading", e)),
        Ok(st) if crate::walk::Stat::from(&st).kind != Kind::Dir => {
            return match rustix::fs::unlink(path) {
                Ok(()) | Err(Errno::NOENT) => Ok(()),
                Err(e) => Err(err("removing", e)),
            };
        }
        Ok(_) => {}
    }
    walk(path, true, |n| Ok(empty_out(n)))?;
    match rustix::fs::rmdir(path) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(err("removing", e)),
    }
}

/// The visitor of a removal: the root made writable and kept, everything below removed.
fn empty_out(n: &Node<'_>) -> Visit {
    if n.depth == 0 {
        if n.event == Event::Enter && n.stat.perm & 0o700 != 0o700 {
            let _ = n.chmod(n.stat.perm | 0o700);
        }
        return Visit::Continue;
    }
    Visit::Remove
}

/// Removes entry `name` of directory `dir` with everything below it.
fn remove_at(dir: BorrowedFd<'_>, name: &CStr, label: &Path) -> Result<(), TreeError> {
    let err = |what: &'static str, e: Errno| TreeError::new(label, ".".into(), what, e.into());
    match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) => {}
        Err(e) => return Err(err("removing", e)),
    }
    let (fd, _) = open_dir(dir, name, true).map_err(|e| err("opening", e))?;
    walk_fd(fd, label, true, |n| Ok(empty_out(n)))?;
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(|e| err("removing", e))
}

/// Directories of the destination, parallel to the walk of the source.
struct Dest {
    /// `(descriptor, name in its parent)`; the root has an empty name.
    dirs: Vec<(Option<OwnedFd>, CString)>,
    /// Modes and times to set on leaving each directory (set last, so a read-only source
    /// directory can still be filled).
    label: std::path::PathBuf,
}

/// Descriptors of destination directories kept open at most (the rest are reopened through
/// `..`: the destination is the engine's own, being made now).
const DEST_BUDGET: usize = 48;

impl Dest {
    fn top(&self) -> BorrowedFd<'_> {
        self.dirs.last().and_then(|(fd, _)| fd.as_ref()).expect("the current destination directory is open").as_fd()
    }

    fn err(&self, what: &'static str, e: Errno) -> TreeError {
        let names: Vec<CString> = self.dirs.iter().skip(1).map(|(_, n)| n.clone()).collect();
        TreeError::new(&self.label, display_path(&names), what, e.into())
    }

    fn push(&mut self, fd: OwnedFd, name: CString) {
        self.dirs.push((Some(fd), name));
        let open = self.dirs.iter().filter(|(fd, _)| fd.is_some()).count();
        if open > DEST_BUDGET {
            let n = self.dirs.len();
            if let Some((fd, _)) = self.dirs[..n - 2].iter_mut().find(|(fd, _)| fd.is_some()) {
                *fd = None;
            }
        }
    }

    /// Leaves the current directory; its parent is reopened through `..` when it was closed.
    fn pop(&mut self) -> Result<(OwnedFd, CString), TreeError> {
        let (fd, name) = self.dirs.pop().expect("not past the root");
        let fd = fd.expect("the current destination directory is open");
        if let Some((parent, _)) = self.dirs.last_mut() {
            if parent.is_none() {
                let p = rustix::fs::openat(
                    &fd,
                    c"..",
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| TreeError::new(&self.label, ".".into(), "going back up", e.into()))?;
                *parent = Some(p);
            }
        }
        Ok((fd, name))
    }
}

fn set_times(fd: BorrowedFd<'_>, name: Option<&CStr>, mtime: (i64, u32)) -> Result<(), Errno> {
    let t = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT },
        last_modification: rustix::fs::Timespec { tv_sec: mtime.0, tv_nsec: mtime.1 as _ },
    };
    match name {
        Some(n) => rustix::fs::utimensat(fd, n, &t, AtFlags::SYMLINK_NOFOLLOW),
        None => rustix::fs::futimens(fd, &t),
    }
}

/// Copies the tree at `src` to `dst` (which must not exist, or be an empty directory), keeping
/// modes (without setuid and setgid bits), modification times and symlinks (as links). Fifos,
/// sockets and devices are not copied; their count is returned. Times matter: interpreters
/// (Guile, Python) judge a compiled file fresh when it is newer than its source, so a copy
/// stamped "now" would make every run compile again.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<u64, TreeError> {
    let derr = |what: &'static str, e: Errno| TreeError::new(dst, ".".into(), what, e.into());
    match rustix::fs::mkdir(dst, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(derr("making", e)),
    }
    let root =
        rustix::fs::open(dst, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| derr("opening", e))?;
    let mut dest = Dest { dirs: vec![(Some(root), CString::default())], label: dst.to_path_buf() };
    let mut skipped = 0;
    walk(src, false, |n| {
        match (n.event, n.stat.kind) {
            (Event::Enter, _) if n.depth == 0 => {}
            (Event::Leave, _) if n.depth == 0 => {
                let top = dest.top();
                rustix::fs::fchmod(top, Mode::from_raw_mode(n.stat.perm & 0o1777))
                    .map_err(|e| dest.err("setting the mode", e))?;
                set_times(top, None, n.stat.mtime).map_err(|e| dest.err("setting the time", e))?;
            }
            (Event::Enter, _) => {
                let name = n.cname().to_owned();
                let parent = dest.top();
                rustix::fs::mkdirat(parent, &name, Mode::from_raw_mode(0o700))
                    .map_err(|e| dest.err("making a directory", e))?;
                let fd = open_beneath(
                    parent,
                    &name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                )
                .map_err(|e| dest.err("opening a directory", e))?;
                dest.push(fd, name);
            }
            (Event::Leave, _) => {
                let (fd, _) = dest.pop()?;
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(n.stat.perm & 0o1777))
                    .map_err(|e| dest.err("setting the mode", e))?;
                set_times(fd.as_fd(), None, n.stat.mtime).map_err(|e| dest.err("setting the time", e))?;
            }
            (_, Kind::File) => {
                let name = n.cname().to_owned();
                let mut from = n.open_read()?;
                let to = rustix::fs::openat(
                    dest.top(),
                    &name,
                    OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| dest.err("making a file", e))?;
                let mut to = std::fs::File::from(to);
                std::io::copy(&mut from, &mut to).map_err(|e| n.err("copying", e))?;
                rustix::fs::fchmod(&to, Mode::from_raw_mode(n.stat.perm & 0o1777))
                    .map_err(|e| dest.err("setting the mode", e))?;
                // futimens needs ownership, not write access: read-only files keep their time too.
                set_times(to.as_fd(), None, n.stat.mtime).map_err(|e| dest.err("setting the time", e))?;
            }
            (_, Kind::Symlink) => {
                let name = n.cname().to_owned();
                let target = n.read_link()?;
                rustix::fs::symlinkat(target.as_os_str(), dest.top(), &name)
                    .map_err(|e| dest.err("making a link", e))?;
                let _ = set_times(dest.top(), Some(&name), n.stat.mtime);
            }
            _ => skipped += 1,
        }
        Ok(Visit::Continue)
    })?;
    Ok(skipped)
}

/// Moves everything in `from` into `to`, replacing what is there (a later addon's file wins;
/// directories are merged). Both are the engine's: `from` a sanitized staging folder, `to` an
/// output directory. Nothing is followed: a link in `to` where `from` has a directory is
/// replaced, not entered.
pub fn merge_into(from: &Path, to: &Path) -> Result<(), TreeError> {
    let terr = |what: &'static str, e: Errno| TreeError::new(to, ".".into(), what, e.into());
    let root =
        rustix::fs::open(to, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| terr("opening", e))?;
    let mut dest = Dest { dirs: vec![(Some(root), CString::default())], label: to.to_path_buf() };
    walk(from, false, |n| {
        if n.depth == 0 {
            return Ok(Visit::Continue);
        }
        if n.event == Event::Leave {
            dest.pop()?;
            return Ok(Visit::Continue);
        }
        let name = n.cname().to_owned();
        let parent_from = n.parent_fd();
        let target = match rustix::fs::statat(dest.top(), &name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Some(crate::walk::Stat::from(&st).kind),
            Err(Errno::NOENT) => None,
            Err(e) => return Err(dest.err("reading", e)),
        };
        match (n.stat.kind, target) {
            (Kind::Dir, Some(Kind::Dir)) => {
                let fd = open_beneath(
                    dest.top(),
                    &name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                )
                .map_err(|e| dest.err("opening a directory", e))?;
                dest.push(fd, name);
                Ok(Visit::Continue)
            }
            (kind, existing) => {
                if existing == Some(Kind::Dir) || (kind == Kind::Dir && existing.is_some()) {
                    remove_at(dest.top(), &name, &dest.label)?;
                }
                rustix::fs::renameat(parent_from, &name, dest.top(), &name).map_err(|e| dest.err("moving", e))?;
                Ok(Visit::Skip)
            }
        }
    })
}

/// Makes the file at `rel` below `root` readable and executable by everyone (`a+rx`), as
/// Docspell does for a trivial addon's program. `rel` is resolved below
/// `root` only: a link on the way or at the end that leads out of `root` is an error, never a
/// chmod of a host file. Returns the file's mode afterwards.
pub fn make_executable(root: &Path, rel: &Path) -> Result<u32, TreeError> {
    use rustix::fs::ResolveFlags;
    let at = rel.display().to_string();
    let err = |what: &'static str, e: Errno| TreeError::new(root, at.clone(), what, e.into());
    let dir = rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| err("opening", e))?;
    let fd = rustix::fs::openat2(
        &dir,
        rel,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| err("opening (it must stay inside the addon)", e))?;
    let st = crate::walk::Stat::from(&rustix::fs::fstat(&fd).map_err(|e| err("reading", e))?);
    if st.kind != Kind::File {
        return Err(err("making executable", Errno::ACCESS));
    }
    let mode = (st.perm | 0o555) & 0o1777;
    if mode != st.perm {
        rustix::fs::chmodat(CWD, crate::walk::magic(fd.as_fd()), Mode::from_raw_mode(mode), AtFlags::empty())
            .map_err(|e| err("making executable", e))?;
    }
    Ok(mode)
}

/// Reads the regular file at `rel` below `root`, resolved below `root` only (a link out of it
/// is an error, never a read of a host file), at most `max` bytes: `Ok(None)` when there is no
/// such entry; an error of kind `FileTooLarge` when it holds more (whatever its size says: a
/// `/proc` file says 0), `InvalidInput` when it is not a regular file.
pub fn read_beneath(root: &Path, rel: &Path, max: u64) -> Result<Option<Vec<u8>>, TreeError> {
    use rustix::fs::ResolveFlags;
    use std::io::Read;
    let at = rel.display().to_string();
    let err = |what: &'static str, e: std::io::Error| TreeError::new(root, at.clone(), what, e);
    let dir = rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| err("opening", e.into()))?;
    let flags = OFlags::RDONLY | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd =
        match rustix::fs::openat2(&dir, rel, flags, Mode::empty(), ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS)
        {
            Ok(fd) => fd,
            Err(Errno::NOENT) => return Ok(None),
            Err(e) => return Err(err("opening (it must stay inside the directory)", e.into())),
        };
    let st = rustix::fs::fstat(&fd).map_err(|e| err("reading", e.into()))?;
    if crate::walk::Stat::from(&st).kind != Kind::File {
        return Err(err("reading", std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file")));
    }
    let mut bytes = Vec::new();
    std::fs::File::from(fd).take(max.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| err("reading", e))?;
    if bytes.len() as u64 > max {
        return Err(err(
            "reading",
            std::io::Error::new(std::io::ErrorKind::FileTooLarge, format!("larger than {max} bytes")),
        ));
    }
    Ok(Some(bytes))
}
