//! The walk: depth first, by descriptors, with a bounded number of them open.

use std::ffi::{CStr, CString, OsStr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, CWD};
use rustix::io::Errno;

use crate::TreeError;

/// Descriptors of ancestor directories kept open at most; deeper walks close the shallowest and
/// reopen them through `..` on the way back up.
const FD_BUDGET: usize = 48;
/// How often an entry that changes type between two looks (a concurrent swap) is looked at again.
const RETRIES: u32 = 8;

/// What kind of entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
    /// A type this code does not know.
    Other,
}

impl Kind {
    fn of(mode: u32) -> Kind {
        match FileType::from_raw_mode(mode as _) {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            FileType::Fifo => Kind::Fifo,
            FileType::Socket => Kind::Socket,
            FileType::CharacterDevice => Kind::CharDevice,
            FileType::BlockDevice => Kind::BlockDevice,
            FileType::Unknown => Kind::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Dir => "directory",
            Kind::Symlink => "symlink",
            Kind::Fifo => "fifo",
            Kind::Socket => "socket",
            Kind::CharDevice => "character device",
            Kind::BlockDevice => "block device",
            Kind::Other => "special file",
        }
    }
}

/// What `stat` says of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky (`mode & 0o7777`).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Allocated bytes (`st_blocks * 512`).
    pub allocated: u64,
    pub nlink: u64,
    pub dev: u64,
    pub ino: u64,
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
}

impl Stat {
    // The fields' integer types differ between architectures.
    #[allow(clippy::unnecessary_cast)]
    pub(crate) fn from(st: &rustix::fs::Stat) -> Stat {
        Stat {
            kind: Kind::of(st.st_mode as u32),
            perm: st.st_mode as u32 & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            size: st.st_size.max(0) as u64,
            allocated: (st.st_blocks.max(0) as u64).saturating_mul(512),
            nlink: st.st_nlink as u64,
            dev: st.st_dev,
            ino: st.st_ino,
            mtime: (st.st_mtime as i64, st.st_mtime_nsec as u32),
            ctime: (st.st_ctime as i64, st.st_ctime_nsec as u32),
        }
    }

    fn same_inode(&self, other: &Stat) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }
}

/// Where the walk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A directory, before its entries (the root too, at depth 0).
    Enter,
    /// A directory, after its entries.
    Leave,
    /// Anything else.
    Entry,
}

/// What the walk does next with the entry just visited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visit {
    Continue,
    /// At `Enter`: do not go into this directory.
    Skip,
    /// Remove the entry: a directory with everything in it (its entries are still visited, as
    /// `Entry`/`Enter` events, before they go). Not for the root.
    Remove,
}

/// One entry, as the visitor sees it. Changes go through a descriptor of the entry whose
/// identity was checked against the `stat` the walk saw; never through its name.
pub struct Node<'a> {
    root: &'a Path,
    parent: Option<BorrowedFd<'a>>,
    name: &'a CStr,
    path: &'a [CString],
    /// The directory's own descriptor; for other entries opened (`O_PATH`) on first use.
    fd: std::cell::OnceCell<Result<OwnedFd, Errno>>,
    dir_fd: Option<BorrowedFd<'a>>,
    pub stat: Stat,
    pub depth: usize,
    pub event: Event,
}

impl<'a> Node<'a> {
    /// The entry at `path` below `root`, in the directory `parent` (None: the root itself, which
    /// has no name), with its own descriptor when it is a directory.
    fn new(
        root: &'a Path,
        path: &'a [CString],
        parent: Option<(BorrowedFd<'a>, &'a CStr)>,
        dir_fd: Option<BorrowedFd<'a>>,
        stat: Stat,
        depth: usize,
        event: Event,
    ) -> Node<'a> {
        let (parent, name) = match parent {
            Some((fd, name)) => (Some(fd), name),
            None => (None, c""),
        };
        Node { root, parent, name, path, fd: Default::default(), dir_fd, stat, depth, event }
    }

    /// The entry's name (empty for the root).
    pub fn name(&self) -> &OsStr {
        OsStr::from_bytes(self.name.to_bytes())
    }

    /// The path below the root, for messages (shortened in the middle when very deep).
    pub fn display(&self) -> String {
        display_path(self.path)
    }

    /// The path below the root, whole (can be longer than `PATH_MAX`: never open it).
    pub fn rel_path(&self) -> std::path::PathBuf {
        self.path.iter().map(|c| OsStr::from_bytes(c.to_bytes())).collect()
    }

    /// An error about this entry (for visitors that fail on it).
    pub fn err(&self, what: &'static str, e: impl Into<std::io::Error>) -> TreeError {
        TreeError::new(self.root, self.display(), what, e.into())
    }

    /// A descriptor of this very entry (a directory's own; else `O_PATH`, opened now and
    /// checked against the walk's `stat`).
    pub fn fd(&self) -> Result<BorrowedFd<'_>, TreeError> {
        if let Some(fd) = self.dir_fd {
            return Ok(fd);
        }
        let parent = self.parent.expect("only the root has no parent, and it is a directory");
        let opened = self.fd.get_or_init(|| {
            let fd = open_beneath(parent, self.name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC)?;
            let now = Stat::from(&rustix::fs::fstat(&fd)?);
            if !now.same_inode(&self.stat) || now.kind != self.stat.kind {
                // Swapped since the walk looked: act on nothing.
                return Err(Errno::STALE);
            }
            Ok(fd)
        });
        match opened {
            Ok(fd) => Ok(fd.as_fd()),
            Err(e) => Err(self.err("opening", *e)),
        }
    }

    /// `lchown`, on this entry.
    pub fn chown(&self, uid: u32, gid: u32) -> Result<(), TreeError> {
        let fd = self.fd()?;
        rustix::fs::chownat(
            fd,
            c"",
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
            AtFlags::EMPTY_PATH,
        )
        .map_err(|e| self.err("changing the owner", e))
    }

    /// `chmod`, on this entry (not for symlinks: Linux has no modes for them).
    pub fn chmod(&self, perm: u32) -> Result<(), TreeError> {
        let mode = Mode::from_raw_mode(perm & 0o7777);
        match self.dir_fd {
            Some(fd) => rustix::fs::fchmod(fd, mode),
            None => rustix::fs::chmodat(CWD, magic(self.fd()?), mode, AtFlags::empty()),
        }
        .map_err(|e| self.err("changing the mode", e))
    }

    /// Removes extended attribute `name`; false when it was not there.
    pub fn remove_xattr(&self, name: &CStr) -> Result<bool, TreeError> {
        let r = match self.dir_fd {
            Some(fd) => rustix::fs::fremovexattr(fd, name),
            None => rustix::fs::removexattr(magic(self.fd()?), name),
        };
        match r {
            Ok(()) => Ok(true),
            Err(Errno::NODATA) | Err(Errno::NOTSUP) => Ok(false),
            Err(e) => Err(self.err("removing an extended attribute", e)),
        }
    }

    /// Whether extended attribute `name` is set.
    pub fn has_xattr(&self, name: &CStr) -> Result<bool, TreeError> {
        let mut buf = [0u8; 0];
        let r = match self.dir_fd {
            Some(fd) => rustix::fs::fgetxattr(fd, name, &mut buf[..]),
            None => rustix::fs::getxattr(magic(self.fd()?), name, &mut buf[..]),
        };
        match r {
            Ok(_) | Err(Errno::RANGE) => Ok(true),
            Err(Errno::NODATA) | Err(Errno::NOTSUP) => Ok(false),
            Err(e) => Err(self.err("reading an extended attribute", e)),
        }
    }

    /// A symlink's target.
    pub fn read_link(&self) -> Result<std::ffi::OsString, TreeError> {
        let target = rustix::fs::readlinkat(self.fd()?, c"", Vec::new()).map_err(|e| self.err("reading a link", e))?;
        Ok(std::ffi::OsString::from_vec(target.into_bytes()))
    }

    /// A regular file, opened for reading (through its checked descriptor).
    pub fn open_read(&self) -> Result<std::fs::File, TreeError> {
        if self.stat.kind != Kind::File {
            return Err(self.err("opening", std::io::Error::other("not a regular file")));
        }
        let fd = rustix::fs::open(magic(self.fd()?), OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY, Mode::empty())
            .map_err(|e| self.err("opening for reading", e))?;
        Ok(std::fs::File::from(fd))
    }

    /// The entry's name as the walk holds it.
    pub(crate) fn cname(&self) -> &CStr {
        self.name
    }

    /// The descriptor of the directory holding this entry (not for the root).
    pub(crate) fn parent_fd(&self) -> BorrowedFd<'_> {
        self.parent.expect("not the root")
    }

    /// The directory's descriptor, for `*at` calls on its entries (directories only).
    pub fn dir(&self) -> Option<BorrowedFd<'_>> {
        self.dir_fd
    }
}

use std::os::unix::ffi::OsStringExt;

/// `/proc/self/fd/N`: the path that reaches exactly the inode behind `fd`.
pub(crate) fn magic(fd: BorrowedFd<'_>) -> String {
    use std::os::fd::AsRawFd;
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Opens `name` (one component) below `dir`: no symlink, no mount crossing, never above `dir`.
pub(crate) fn open_beneath(dir: BorrowedFd<'_>, name: &CStr, flags: OFlags) -> Result<OwnedFd, Errno> {
    let resolve =
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_XDEV | ResolveFlags::NO_MAGICLINKS;
    let mut tries = 0;
    loop {
        tries += 1;
        match rustix::fs::openat2(dir, name, flags, Mode::empty(), resolve) {
            // A rename elsewhere in the file system made the kernel unsure: ask again.
            Err(Errno::AGAIN) | Err(Errno::INTR) if tries < 64 => continue,
            Err(Errno::NOSYS) => return open_beneath_fallback(dir, name, flags),
            other => return other,
        }
    }
}

/// Kernels before 5.6: one component with `O_NOFOLLOW`, and the device checked by hand.
fn open_beneath_fallback(dir: BorrowedFd<'_>, name: &CStr, flags: OFlags) -> Result<OwnedFd, Errno> {
    if name.to_bytes().contains(&b'/') || name.to_bytes() == b".." {
        return Err(Errno::XDEV);
    }
    let fd = rustix::fs::openat(dir, name, flags | OFlags::NOFOLLOW, Mode::empty())?;
    if rustix::fs::fstat(&fd)?.st_dev != rustix::fs::fstat(dir)?.st_dev {
        return Err(Errno::XDEV);
    }
    Ok(fd)
}

/// A path below a walk's root as messages show it: at most six names at each end (the middle
/// counted), control characters escaped. Also for callers that walk on their own.
pub fn display_path(path: &[CString]) -> String {
    const KEEP: usize = 6;
    // Names are the addon's: control characters in them are shown escaped, never sent raw to a
    // terminal or a log.
    let part = |c: &CString| {
        String::from_utf8_lossy(c.to_bytes())
            .chars()
            .map(|ch| if ch.is_control() { ch.escape_default().to_string() } else { ch.to_string() })
            .collect::<String>()
    };
    if path.is_empty() {
        return ".".into();
    }
    if path.len() <= 2 * KEEP {
        return path.iter().map(part).collect::<Vec<_>>().join("/");
    }
    let head: Vec<String> = path[..KEEP].iter().map(part).collect();
    let tail: Vec<String> = path[path.len() - KEEP..].iter().map(part).collect();
    format!("{}/...({} levels)/{}", head.join("/"), path.len() - 2 * KEEP, tail.join("/"))
}

/// One directory on the way down.
struct Frame {
    /// Its descriptor, while within the budget.
    dir: Option<Dir>,
    stat: Stat,
    /// Entries not yet visited (taken from the end).
    names: Vec<CString>,
    /// Everything below is being removed.
    removing: bool,
    /// The walk went into it after the visitor asked to remove it.
    remove_self: bool,
}

impl Frame {
    fn fd(&self) -> BorrowedFd<'_> {
        self.dir.as_ref().and_then(|d| d.fd().ok()).expect("the walk keeps the current directory open")
    }
}

/// The entries of an open directory, without `.` and `..`.
fn list(dir: &mut Dir) -> Result<Vec<CString>, Errno> {
    let mut names = Vec::new();
    while let Some(e) = dir.read() {
        let e = match e {
            Ok(e) => e,
            // Removed since it was opened: it holds nothing any more.
            Err(Errno::NOENT) => break,
            Err(e) => return Err(e),
        };
        let n = e.file_name();
        if n != c"." && n != c".." {
            names.push(n.to_owned());
        }
    }
    // Visited in name order (popped from the end).
    names.sort_unstable_by(|a, b| b.cmp(a));
    Ok(names)
}

/// Opens a directory entry for the walk. `fix`: a directory the walk cannot read (the addon
/// took the modes away) is given back `u+rwx` through a checked descriptor.
pub(crate) fn open_dir(parent: BorrowedFd<'_>, name: &CStr, fix: bool) -> Result<(OwnedFd, Stat), Errno> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match open_beneath(parent, name, flags) {
        Err(Errno::ACCESS) if fix => {
            let p = open_beneath(parent, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::DIRECTORY | OFlags::CLOEXEC)?;
            let st = rustix::fs::fstat(&p)?;
            rustix::fs::chmodat(
                CWD,
                magic(p.as_fd()),
                Mode::from_raw_mode((st.st_mode | 0o700) & 0o7777),
                AtFlags::empty(),
            )?;
            open_beneath(parent, name, flags)?
        }
        other => other?,
    };
    let stat = Stat::from(&rustix::fs::fstat(&fd)?);
    Ok((fd, stat))
}

/// Walks the tree at `root` depth first, calling `visit` for every entry (the root itself
/// first, as `Enter` at depth 0). `fix_modes`: directories the walk cannot read are made
/// readable by their owner (the engine's own user, or root).
///
/// The root path is opened without following a final symlink; its parent directories are the
/// caller's (the engine's own directories), not the addon's.
pub fn walk(
    root: &Path,
    fix_modes: bool,
    visit: impl FnMut(&Node<'_>) -> Result<Visit, TreeError>,
) -> Result<(), TreeError> {
    let root_err = |what: &'static str, e: Errno| TreeError::new(root, ".".into(), what, e.into());
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match rustix::fs::open(root, flags, Mode::empty()) {
        Err(Errno::ACCESS) if fix_modes => {
            let p = rustix::fs::open(
                root,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| root_err("opening", e))?;
            let st = rustix::fs::fstat(&p).map_err(|e| root_err("opening", e))?;
            rustix::fs::chmodat(
                CWD,
                magic(p.as_fd()),
                Mode::from_raw_mode((st.st_mode | 0o700) & 0o7777),
                AtFlags::empty(),
            )
            .map_err(|e| root_err("making readable", e))?;
            rustix::fs::open(root, flags, Mode::empty()).map_err(|e| root_err("opening", e))?
        }
        other => other.map_err(|e| root_err("opening", e))?,
    };
    walk_fd(fd, root, fix_modes, visit)
}

/// [`walk`] from a directory already open (`label` names it in messages).
pub(crate) fn walk_fd(
    fd: OwnedFd,
    root: &Path,
    fix_modes: bool,
    mut visit: impl FnMut(&Node<'_>) -> Result<Visit, TreeError>,
) -> Result<(), TreeError> {
    let root_err = |what: &'static str, e: Errno| TreeError::new(root, ".".into(), what, e.into());
    let stat = Stat::from(&rustix::fs::fstat(&fd).map_err(|e| root_err("reading", e))?);
    if stat.kind != Kind::Dir {
        return Err(root_err("walking", Errno::NOTDIR));
    }
    let mut dir = Dir::new(fd).map_err(|e| root_err("opening", e))?;
    let path: Vec<CString> = Vec::new();
    {
        let node =
            Node::new(root, &path, None, Some(dir.fd().map_err(|e| root_err("opening", e))?), stat, 0, Event::Enter);
        match visit(&node)? {
            Visit::Skip => return Ok(()),
            Visit::Remove => {
                return Err(root_err("removing", Errno::INVAL));
            }
            Visit::Continue => {}
        }
    }
    let names = list(&mut dir).map_err(|e| root_err("listing", e))?;
    let mut stack = vec![Frame { dir: Some(dir), stat, names, removing: false, remove_self: false }];
    let mut path = path;
    loop {
        let depth = stack.len();
        let top = stack.last_mut().expect("the root frame is popped last");
        let Some(name) = top.names.pop() else {
            // This directory is done: back up to its parent.
            let done = stack.pop().expect("non-empty");
            let Some(parent) = stack.last_mut() else {
                let node = Node::new(root, &path, None, Some(done.fd()), done.stat, 0, Event::Leave);
                visit(&node)?;
                return Ok(());
            };
            if parent.dir.is_none() {
                parent.dir = Some(reopen_parent(&done, parent.stat).map_err(|e| {
                    TreeError::new(
                        root,
                        display_path(&path),
                        "going back up (the tree changed during the walk)",
                        e.into(),
                    )
                })?);
            }
            let parent_fd = parent.fd();
            let name = path.last().expect("a frame below the root has a name");
            let node =
                Node::new(root, &path, Some((parent_fd, name)), Some(done.fd()), done.stat, depth - 1, Event::Leave);
            visit(&node)?;
            drop(node);
            let remove = done.remove_self;
            drop(done);
            if remove {
                rustix::fs::unlinkat(parent_fd, name, AtFlags::REMOVEDIR)
                    .map_err(|e| TreeError::new(root, display_path(&path), "removing a directory", e.into()))?;
            }
            path.pop();
            continue;
        };
        let removing = top.removing;
        path.push(name);
        let name = path.last().expect("pushed");
        let parent_fd = top.fd();
        let mut tries = 0;
        let descend = loop {
            tries += 1;
            let err = |what: &'static str, e: Errno| TreeError::new(root, display_path(&path), what, e.into());
            let st = match rustix::fs::statat(parent_fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => Stat::from(&st),
                // Gone between listing and looking: nothing to do.
                Err(Errno::NOENT) => break None,
                Err(e) => return Err(err("reading", e)),
            };
            if st.kind == Kind::Dir {
                let (dir, dstat) =
                    match open_dir(parent_fd, name, fix_modes).and_then(|(fd, st)| Ok((Dir::new(fd)?, st))) {
                        Ok(d) => d,
                        Err(Errno::NOENT) => break None,
                        // Swapped for something else since the look: look again.
                        Err(Errno::NOTDIR) | Err(Errno::LOOP) if tries < RETRIES => continue,
                        Err(e) => return Err(err("opening a directory", e)),
                    };
                let node = Node::new(
                    root,
                    &path,
                    Some((parent_fd, name)),
                    Some(dir.fd().map_err(|e| err("opening a directory", e))?),
                    dstat,
                    depth,
                    Event::Enter,
                );
                let v = visit(&node)?;
                let v = if removing { Visit::Remove } else { v };
                drop(node);
                match v {
                    Visit::Skip => break None,
                    Visit::Continue | Visit::Remove => break Some((dir, dstat, v == Visit::Remove)),
                }
            }
            let node = Node::new(root, &path, Some((parent_fd, name)), None, st, depth, Event::Entry);
            // Inside a directory being removed the visitor still sees what goes (to count it).
            let v = visit(&node)?;
            let v = if removing { Visit::Remove } else { v };
            if v == Visit::Remove {
                match rustix::fs::unlinkat(parent_fd, name, AtFlags::empty()) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    // Became a directory since the look: look again.
                    Err(Errno::ISDIR) if tries < RETRIES => continue,
                    Err(e) => return Err(err("removing", e)),
                }
            }
            break None;
        };
        let Some((mut dir, dstat, remove)) = descend else {
            path.pop();
            continue;
        };
        let names = match list(&mut dir) {
            Ok(n) => n,
            Err(e) => return Err(TreeError::new(root, display_path(&path), "listing", e.into())),
        };
        if remove {
            // Its entries go first; the directory must be writable for that.
            if let Ok(fd) = dir.fd() {
                if dstat.perm & 0o700 != 0o700 {
                    let _ = rustix::fs::fchmod(fd, Mode::from_raw_mode(dstat.perm | 0o700));
                }
            }
        }
        stack.push(Frame { dir: Some(dir), stat: dstat, names, removing: remove, remove_self: remove });
        // Keep within the descriptor budget: the shallowest open ancestor (never the directory
        // being walked or its parent) gives its descriptor up.
        if stack.len() > FD_BUDGET {
            let open = stack.iter().filter(|f| f.dir.is_some()).count();
            if open > FD_BUDGET {
                let keep = stack.len() - 2;
                if let Some(f) = stack[..keep].iter_mut().find(|f| f.dir.is_some()) {
                    f.dir = None;
                }
            }
        }
    }
}

/// Reopens the parent of `child` through `..` and checks it is the directory seen on the way
/// down (`want`).
fn reopen_parent(child: &Frame, want: Stat) -> Result<Dir, Errno> {
    let fd = rustix::fs::openat(
        child.fd(),
        c"..",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = Stat::from(&rustix::fs::fstat(&fd)?);
    if !st.same_inode(&want) {
        return Err(Errno::STALE);
    }
    Dir::new(fd)
}
