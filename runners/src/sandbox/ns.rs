//! Entering namespaces in the forked child, before exec: the engine's own sandbox primitive,
//! used by `netns` (network, PID, mount and, unprivileged, user namespaces), by `none` and by
//! the nspawn wrapper and nix builds (a PID namespace only, so that the whole tree can be killed).
//!
//! Everything the child needs is prepared in [`NsPlan::new`]; [`NsPlan::enter`] runs between fork
//! and exec and makes only raw, async-signal-safe system calls (no allocation, no locks).

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// One bind mount inside the new mount namespace.
#[derive(Debug, Clone)]
struct Bind {
    src: CString,
    dst: CString,
    read_only: bool,
}

/// A private `/mnt` (a tmpfs) with the run's directories bound into it, then `chdir`.
#[derive(Debug, Clone, Default)]
pub struct MountPlan {
    binds: Vec<Bind>,
    chdir: Option<CString>,
}

impl MountPlan {
    /// Binds host `src` at `dst` (which must lie below `/mnt`).
    pub fn bind(mut self, src: &Path, dst: &Path, read_only: bool) -> MountPlan {
        self.binds.push(Bind { src: cstring(src), dst: cstring(dst), read_only });
        self
    }

    pub fn chdir(mut self, dir: &Path) -> MountPlan {
        self.chdir = Some(cstring(dir));
        self
    }
}

fn cstring(p: &Path) -> CString {
    // Paths come from the engine's own directories; a NUL byte cannot occur in a Unix path.
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

/// Everything the child needs to enter its namespaces, prepared before fork (no allocation after).
#[derive(Debug, Clone)]
pub struct NsPlan {
    cut_network: bool,
    user_ns: bool,
    mounts: Option<MountPlan>,
    /// Mount a /proc of the new PID namespace (programs that read /proc/<pid> of their own
    /// children, such as nix, need it; it also hides the host's processes).
    fresh_proc: bool,
    uid_map: CString,
    gid_map: CString,
    parent_pid: i32,
}

impl NsPlan {
    /// A new PID namespace (and user namespace when not root), plus a network namespace with only
    /// `lo` when `cut_network`.
    pub fn new(cut_network: bool) -> NsPlan {
        // SAFETY: getters without preconditions.
        let (uid, gid, pid) = unsafe { (libc::geteuid(), libc::getegid(), libc::getpid()) };
        NsPlan {
            cut_network,
            user_ns: uid != 0,
            mounts: None,
            fresh_proc: false,
            uid_map: CString::new(format!("{uid} {uid} 1")).unwrap_or_default(),
            gid_map: CString::new(format!("{gid} {gid} 1")).unwrap_or_default(),
            parent_pid: pid,
        }
    }

    /// A PID namespace only: its init dies with the engine and takes every process along.
    pub fn pid_only() -> NsPlan {
        NsPlan::new(false)
    }

    /// Also a private mount namespace laid out by `mounts`.
    pub fn with_mounts(mut self, mounts: MountPlan) -> NsPlan {
        self.mounts = Some(mounts);
        self
    }

    /// Also a private mount namespace with a /proc of the new PID namespace.
    pub fn with_fresh_proc(mut self) -> NsPlan {
        self.fresh_proc = true;
        self
    }

    /// Installs the plan on `cmd` (runs in the child between fork and exec).
    pub fn install(self, cmd: &mut tokio::process::Command) {
        // SAFETY: `enter` makes only raw async-signal-safe system calls (unshare, open/write,
        // mount, mkdir, ioctl, fork, waitpid, _exit); everything it needs was allocated before.
        unsafe {
            cmd.pre_exec(move || self.enter());
        }
    }

    /// Installs the plan on a standard-library command (probes).
    pub fn install_std(self, cmd: &mut std::process::Command) {
        // SAFETY: as in `install`.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(cmd, move || self.enter());
        }
    }

    /// Runs in the forked child: new namespaces, loopback up, mounts, then a shim and a mini init
    /// so the addon is not PID 1 (it keeps normal signal behaviour) and orphans are reaped.
    fn enter(&self) -> io::Result<()> {
        // SAFETY: raw async-signal-safe system calls in a single-threaded forked child.
        unsafe {
            // Die with the engine. Checked against a race with an engine that already died.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != self.parent_pid {
                libc::_exit(137);
            }
            let mut flags = libc::CLONE_NEWPID;
            if self.cut_network {
                flags |= libc::CLONE_NEWNET;
            }
            if self.user_ns {
                flags |= libc::CLONE_NEWUSER;
            }
            if self.mounts.is_some() || self.fresh_proc {
                flags |= libc::CLONE_NEWNS;
            }
            if libc::unshare(flags) != 0 {
                return Err(io::Error::last_os_error());
            }
            if self.user_ns {
                write_proc(c"/proc/self/setgroups", c"deny")?;
                write_proc(c"/proc/self/uid_map", &self.uid_map)?;
                write_proc(c"/proc/self/gid_map", &self.gid_map)?;
            }
            if self.cut_network {
                loopback_up()?;
            }
            if self.mounts.is_some() || self.fresh_proc {
                // Nothing done here may propagate back to the host.
                let private = libc::MS_REC | libc::MS_PRIVATE;
                if libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), private, std::ptr::null()) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(m) = &self.mounts {
                mount_plan(m)?;
            }
            // The shim: stays in the engine's PID namespace and mirrors the init's exit.
            let init = libc::fork();
            if init < 0 {
                return Err(io::Error::last_os_error());
            }
            if init > 0 {
                // Close the standard library's exec-status pipe (and anything else above
                // stderr), or `spawn` would wait for this shim to end.
                libc::close_range(3, u32::MAX, 0);
                libc::_exit(wait_for(init));
            }
            // PID 1 of the new namespace: dies with the shim; its death kills the namespace.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if self.fresh_proc {
                let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
                if libc::mount(c"proc".as_ptr(), c"/proc".as_ptr(), c"proc".as_ptr(), flags, std::ptr::null()) != 0 {
                    libc::_exit(125);
                }
            }
            let addon = libc::fork();
            if addon < 0 {
                libc::_exit(126);
            }
            if addon == 0 {
                libc::setsid();
                return Ok(()); // the addon: exec follows
            }
            // Do not hold the addon's pipes open.
            libc::close_range(0, u32::MAX, 0);
            loop {
                let mut status = 0;
                let w = libc::waitpid(-1, &mut status, 0);
                if w == addon {
                    libc::_exit(status_code(status));
                }
                if w < 0 && *libc::__errno_location() == libc::ECHILD {
                    libc::_exit(126);
                }
            }
        }
    }
}

/// Makes the mount namespace private, puts a tmpfs on `/mnt` and binds the run's directories.
unsafe fn mount_plan(m: &MountPlan) -> io::Result<()> {
    let check = |r: libc::c_int| if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) };
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
            if libc::mkdir(b.dst.as_ptr(), 0o755) != 0 && *libc::__errno_location() != libc::EEXIST {
                return Err(io::Error::last_os_error());
            }
            check(libc::mount(
                b.src.as_ptr(),
                b.dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ))?;
            if b.read_only {
                let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
                check(libc::mount(std::ptr::null(), b.dst.as_ptr(), std::ptr::null(), flags, std::ptr::null()))?;
            }
        }
        if let Some(dir) = &m.chdir {
            check(libc::chdir(dir.as_ptr()))?;
        }
    }
    Ok(())
}

unsafe fn wait_for(pid: i32) -> i32 {
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child.
        let w = unsafe { libc::waitpid(pid, &mut status, 0) };
        if w == pid {
            return status_code(status);
        }
        // SAFETY: reading errno.
        if w < 0 && unsafe { *libc::__errno_location() } != libc::EINTR {
            return 126;
        }
    }
}

fn status_code(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        126
    }
}

unsafe fn write_proc(path: &CStr, data: &CStr) -> io::Result<()> {
    // SAFETY: plain open/write/close on valid C strings.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let bytes = data.to_bytes();
        let n = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        libc::close(fd);
        if n != bytes.len() as isize {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Brings `lo` up in the current network namespace (a new one starts with it down).
unsafe fn loopback_up() -> io::Result<()> {
    // SAFETY: ioctl on a socket we own with a zeroed, correctly sized ifreq.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        req.ifr_name[0] = b'l' as libc::c_char;
        req.ifr_name[1] = b'o' as libc::c_char;
        if libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) < 0 {
            libc::close(sock);
            return Err(io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        let r = libc::ioctl(sock, libc::SIOCSIFFLAGS, &mut req);
        libc::close(sock);
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
