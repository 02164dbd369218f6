//! Laying out mounts for a sandbox, with plain system calls between fork and exec: a private
//! `/mnt` with the run's directories (and parts of a view staged for a sandbox tool), a whole new
//! root from a [`View`], an overlay over a read-only root filesystem.

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::ns::{check, cstring, write_with};
use super::view::{Step, View};

/// One bind mount below a private `/mnt`.
#[derive(Debug, Clone)]
struct Bind {
    src: CString,
    dst: CString,
}

/// A private `/mnt` (a tmpfs) with the run's directories bound into it, and parts of a view
/// laid out below it ahead of the sandbox tool (see [`MountPlan::stage`]), then `chdir`.
#[derive(Debug, Clone, Default)]
pub struct MountPlan {
    binds: Vec<Bind>,
    staged: Vec<Op>,
    chdir: Option<CString>,
}

impl MountPlan {
    /// Binds host `src` at `dst` (which must lie below `/mnt`).
    pub fn bind(mut self, src: &Path, dst: &Path) -> MountPlan {
        self.binds.push(Bind { src: cstring(src), dst: cstring(dst) });
        self
    }

    pub fn chdir(mut self, dir: &Path) -> MountPlan {
        self.chdir = Some(cstring(dir));
        self
    }

    /// Lays out `steps` (binds, directories, symbolic links and engine-made files of a [`View`])
    /// below `root` (a new directory below `/mnt`), with plain system calls: a sandbox tool then
    /// binds the result in one operation instead of one per step (bubblewrap reads the whole
    /// mount table for each of its binds).
    pub fn stage(mut self, steps: &[Step], root: &Path) -> MountPlan {
        self.staged.push(Op::Dir { dst: cstring(root), mode: 0o755 });
        self.staged.extend(ops(steps, root));
        self
    }
}

/// One operation of building a new root, with paths already below the root's mount point.
#[derive(Debug, Clone)]
enum Op {
    Bind { src: CString, dst: CString, dir: bool, read_only: bool, device: bool },
    Symlink { target: CString, dst: CString },
    Dir { dst: CString, mode: libc::mode_t },
    File { dst: CString, data: Vec<u8> },
    Tmpfs { dst: CString, options: CString },
    DevPts { dst: CString },
}

/// A new root built from a [`View`] on an empty host directory, entered with `pivot_root`.
#[derive(Debug, Clone)]
pub struct RootPlan {
    root: CString,
    old: CString,
    proc_at: CString,
    ops: Vec<Op>,
    pub(super) chdir: CString,
}

impl RootPlan {
    /// Lays out `view` on `root` (an empty directory that outlives the sandbox); the addon starts
    /// in `chdir` (a path inside the new root).
    pub fn new(view: &View, root: &Path, chdir: &Path) -> RootPlan {
        let at = |p: &Path| cstring(&root.join(p.strip_prefix("/").unwrap_or(p)));
        let ops = ops(&view.steps, root);
        RootPlan {
            root: cstring(root),
            old: cstring(&root.join(".oldroot")),
            proc_at: at(Path::new("/proc")),
            ops,
            chdir: cstring(chdir),
        }
    }
}

/// The operations that lay out `steps` below `root` (paths of the view joined to it).
fn ops(steps: &[Step], root: &Path) -> Vec<Op> {
    let at = |p: &Path| cstring(&root.join(p.strip_prefix("/").unwrap_or(p)));
    let mut ops = Vec::new();
    // Parents first (`/etc/ssl` before `/etc/ssl/certs`), each once.
    let mut made = std::collections::BTreeSet::new();
    let parents = |p: &Path, ops: &mut Vec<Op>, made: &mut std::collections::BTreeSet<PathBuf>| {
        let mut todo: Vec<&Path> = p.ancestors().skip(1).take_while(|a| *a != Path::new("/")).collect();
        todo.reverse();
        for a in todo {
            if made.insert(a.to_path_buf()) {
                ops.push(Op::Dir { dst: at(a), mode: 0o755 });
            }
        }
    };
    for step in steps {
        let target = match step {
            Step::RoBind(p) | Step::Dir(p) | Step::Tmpfs { at: p, .. } => Some(p.as_path()),
            Step::Bind { at, .. } | Step::Symlink { at, .. } | Step::File { at, .. } => Some(at.as_path()),
            Step::Dev | Step::Proc => None,
        };
        if let Some(t) = target {
            parents(t, &mut ops, &mut made);
        }
        match step {
            Step::RoBind(p) => {
                ops.push(Op::Bind { src: cstring(p), dst: at(p), dir: p.is_dir(), read_only: true, device: false })
            }
            Step::Bind { src, at: to } => {
                ops.push(Op::Bind { src: cstring(src), dst: at(to), dir: true, read_only: false, device: false })
            }
            Step::Symlink { target, at: to } => ops.push(Op::Symlink { target: cstring(target), dst: at(to) }),
            Step::Dir(p) => {
                if made.insert(p.clone()) {
                    ops.push(Op::Dir { dst: at(p), mode: 0o755 })
                }
            }
            Step::File { at: to, contents } => ops.push(Op::File { dst: at(to), data: contents.as_bytes().to_vec() }),
            Step::Tmpfs { at: p, bound } => {
                ops.push(Op::Tmpfs { dst: at(p), options: CString::new(bound.options()).unwrap_or_default() })
            }
            Step::Dev => {
                let dev = Path::new("/dev");
                ops.push(Op::Tmpfs { dst: at(dev), options: c"mode=0755".into() });
                for node in ["null", "zero", "full", "random", "urandom", "tty"] {
                    let host = dev.join(node);
                    let dst = at(&host);
                    ops.push(Op::Bind { src: cstring(&host), dst, dir: false, read_only: false, device: true });
                }
                ops.push(Op::DevPts { dst: at(&dev.join("pts")) });
                ops.push(Op::Symlink { target: c"pts/ptmx".into(), dst: at(&dev.join("ptmx")) });
                for (link, target) in [
                    ("fd", "/proc/self/fd"),
                    ("stdin", "/proc/self/fd/0"),
                    ("stdout", "/proc/self/fd/1"),
                    ("stderr", "/proc/self/fd/2"),
                ] {
                    ops.push(Op::Symlink { target: cstring(Path::new(target)), dst: at(&dev.join(link)) });
                }
            }
            Step::Proc => ops.push(Op::Dir { dst: at(Path::new("/proc")), mode: 0o555 }),
        }
    }
    ops
}

/// Why an [`OverlayPlan`] cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// The overlay's options are a comma-separated list: a path with `,`, `:` or `\\` in it
    /// could name other options or directories.
    #[error("{}: an overlay path must be absolute, without `,`, `:` or `\\`", path.display())]
    Path { path: PathBuf },
    #[error("{0}")]
    Options(#[source] std::ffi::NulError),
}

/// A writable overlay over a read-only lower directory: a tmpfs (bounded, and charged to the
/// memory of whoever writes it) holds the upper and work directories and the merged root, so
/// nothing the addon writes outside its directories reaches the host's disk or outlives the
/// mount namespace.
#[derive(Debug, Clone)]
pub struct OverlayPlan {
    tmpfs: CString,
    tmpfs_options: CString,
    upper: CString,
    work: CString,
    merged: CString,
    options: CString,
    /// Owner and mode of the lower root, given to the upper root (the merged root takes them).
    owner: (u32, u32, u32),
}

impl OverlayPlan {
    /// An overlay of `lower` mounted at `at/root`, on a tmpfs of `size` bytes mounted at `at`.
    /// `owner` is the (uid, gid, mode) the merged root gets, as the namespace sees ids;
    /// `user_xattr` for a mount in a user namespace.
    pub fn new(
        lower: &Path,
        at: &Path,
        size: u64,
        owner: (u32, u32, u32),
        user_xattr: bool,
    ) -> Result<OverlayPlan, OverlayError> {
        for p in [lower, at] {
            if p.to_string_lossy().contains([',', ':', '\\']) || !p.is_absolute() {
                return Err(OverlayError::Path { path: p.to_path_buf() });
            }
        }
        let c = |p: PathBuf| cstring(&p);
        let (upper, work, merged) = (at.join("upper"), at.join("work"), at.join("root"));
        let mut options =
            format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display());
        if user_xattr {
            options.push_str(",userxattr");
        }
        Ok(OverlayPlan {
            tmpfs: cstring(at),
            tmpfs_options: CString::new(format!("size={},mode=0711", size.max(1 << 20))).unwrap_or_default(),
            upper: c(upper),
            work: c(work),
            merged: c(merged),
            options: CString::new(options).map_err(OverlayError::Options)?,
            owner,
        })
    }

    /// Where the merged root is.
    pub fn root(&self) -> PathBuf {
        PathBuf::from(std::ffi::OsStr::from_bytes(self.merged.as_bytes()))
    }
}

/// Mounts the tmpfs and the overlay of an [`OverlayPlan`].
pub(super) unsafe fn mount_overlay(o: &OverlayPlan) -> io::Result<()> {
    // SAFETY: mount/mkdir/chown/chmod with valid NUL-terminated strings.
    unsafe {
        let flags = libc::MS_NOSUID | libc::MS_NODEV;
        check(libc::mount(
            c"tmpfs".as_ptr(),
            o.tmpfs.as_ptr(),
            c"tmpfs".as_ptr(),
            flags,
            o.tmpfs_options.as_ptr().cast(),
        ))?;
        for dir in [&o.upper, &o.work] {
            mkdir(dir, 0o700)?;
        }
        // Reached by the container's root, which may be an unprivileged id of the host.
        mkdir(&o.merged, 0o711)?;
        let (uid, gid, mode) = o.owner;
        check(libc::chown(o.upper.as_ptr(), uid, gid))?;
        check(libc::chmod(o.upper.as_ptr(), mode & 0o7777))?;
        check(libc::mount(c"overlay".as_ptr(), o.merged.as_ptr(), c"overlay".as_ptr(), 0, o.options.as_ptr().cast()))?;
    }
    Ok(())
}

/// Puts a tmpfs on `/mnt` and binds the run's directories.
pub(super) unsafe fn mount_plan(m: &MountPlan) -> io::Result<()> {
    // SAFETY: mount/mkdir/chdir with valid NUL-terminated strings.
    unsafe {
        check(libc::mount(
            c"tmpfs".as_ptr(),
            c"/mnt".as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            c"mode=0755".as_ptr().cast(),
        ))?;
        for b in &m.binds {
            mkdir(&b.dst, 0o755)?;
            bind(&b.src, &b.dst, false, false)?;
        }
        apply(&m.staged)?;
        if let Some(dir) = &m.chdir {
            check(libc::chdir(dir.as_ptr()))?;
        }
    }
    Ok(())
}

/// Carries out `ops` in order.
unsafe fn apply(ops: &[Op]) -> io::Result<()> {
    // SAFETY: mount/mkdir/symlink/open with valid NUL-terminated strings.
    unsafe {
        for op in ops {
            match op {
                Op::Dir { dst, mode } => mkdir(dst, *mode)?,
                Op::Bind { src, dst, dir, read_only, device } => {
                    if *dir {
                        mkdir(dst, 0o755)?;
                    } else {
                        touch(dst)?;
                    }
                    bind(src, dst, *read_only, *device)?;
                }
                Op::Symlink { target, dst } => check(libc::symlink(target.as_ptr(), dst.as_ptr()))?,
                Op::File { dst, data } => {
                    write_with(dst, data, libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC, 0o644)?
                }
                Op::Tmpfs { dst, options } => {
                    mkdir(dst, 0o755)?;
                    let flags = libc::MS_NOSUID | libc::MS_NODEV;
                    check(libc::mount(
                        c"tmpfs".as_ptr(),
                        dst.as_ptr(),
                        c"tmpfs".as_ptr(),
                        flags,
                        options.as_ptr().cast(),
                    ))?;
                }
                Op::DevPts { dst } => {
                    mkdir(dst, 0o755)?;
                    let flags = libc::MS_NOSUID | libc::MS_NOEXEC;
                    let opts = c"newinstance,ptmxmode=0666,mode=620";
                    check(libc::mount(
                        c"devpts".as_ptr(),
                        dst.as_ptr(),
                        c"devpts".as_ptr(),
                        flags,
                        opts.as_ptr().cast(),
                    ))?;
                }
            }
        }
    }
    Ok(())
}

/// Builds the new root, mounts /proc (this is PID 1 of the new namespace), pivots into it and
/// makes it read-only.
pub(super) unsafe fn enter_root(r: &RootPlan) -> io::Result<()> {
    // SAFETY: mount/mkdir/symlink/open/pivot_root with valid NUL-terminated strings.
    unsafe {
        check(libc::mount(
            c"tmpfs".as_ptr(),
            r.root.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            c"mode=0755".as_ptr().cast(),
        ))?;
        apply(&r.ops)?;
        // /proc of this PID namespace, mounted while the host's is still visible (a user
        // namespace may mount proc only then).
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        check(libc::mount(c"proc".as_ptr(), r.proc_at.as_ptr(), c"proc".as_ptr(), flags, std::ptr::null()))?;
        mkdir(&r.old, 0o700)?;
        check(libc::syscall(libc::SYS_pivot_root, r.root.as_ptr(), r.old.as_ptr()) as libc::c_int)?;
        check(libc::chdir(c"/".as_ptr()))?;
        check(libc::umount2(c"/.oldroot".as_ptr(), libc::MNT_DETACH))?;
        check(libc::rmdir(c"/.oldroot".as_ptr()))?;
        // The root (a tmpfs of mount points and engine-made files) becomes read-only.
        let ro = libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
        check(libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), ro, std::ptr::null()))?;
    }
    Ok(())
}

unsafe fn mkdir(path: &CStr, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: mkdir with a valid C string.
    unsafe {
        if libc::mkdir(path.as_ptr(), mode) != 0 && *libc::__errno_location() != libc::EEXIST {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

unsafe fn touch(path: &CStr) -> io::Result<()> {
    // SAFETY: open/close with a valid C string.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC, 0o644);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        libc::close(fd);
    }
    Ok(())
}

/// Binds `src` on `dst`, then remounts it `nosuid` and, unless it is a device node, `nodev` (and
/// read-only when asked), keeping the flags the source mount already has (a user namespace may
/// not clear locked ones).
unsafe fn bind(src: &CStr, dst: &CStr, read_only: bool, device: bool) -> io::Result<()> {
    // SAFETY: mount/statvfs with valid C strings and a zeroed, correctly sized statvfs.
    unsafe {
        check(libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        ))?;
        // glibc's statvfs takes the flags from the statfs system call (no /proc/mounts walk).
        let mut st: libc::statvfs = std::mem::zeroed();
        check(libc::statvfs(dst.as_ptr(), &mut st))?;
        let have = st.f_flag;
        let mut flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID;
        if !device || have & libc::ST_NODEV != 0 {
            flags |= libc::MS_NODEV;
        }
        for (st_flag, ms_flag) in [
            (libc::ST_NOEXEC, libc::MS_NOEXEC),
            (libc::ST_NOATIME, libc::MS_NOATIME),
            (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
            (libc::ST_RELATIME, libc::MS_RELATIME),
            (libc::ST_RDONLY, libc::MS_RDONLY),
        ] {
            if have & st_flag != 0 {
                flags |= ms_flag;
            }
        }
        if read_only {
            flags |= libc::MS_RDONLY;
        }
        check(libc::mount(std::ptr::null(), dst.as_ptr(), std::ptr::null(), flags, std::ptr::null()))?;
    }
    Ok(())
}
