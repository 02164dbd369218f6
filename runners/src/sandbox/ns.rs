//! Entering namespaces in the forked child, before exec: the engine's own sandbox primitive.
//!
//! - `netns` uses all of it: network (only `lo`), PID, mount, IPC and UTS namespaces (and a user
//!   namespace when the engine is not root), a new root built from a [`View`] and entered with
//!   `pivot_root`, a `/proc` of its own, then the addon's identity, `no_new_privs` and the seccomp
//!   filter.
//! - bwrap started by a root engine uses the preparation only: the run's directories bound at
//!   `/mnt` while still root (so bwrap need not reach them through the engine's private
//!   directories), then the drop to the addon's identity.
//! - `none`, the nspawn wrapper and nix builds use a PID namespace only, so that the whole tree
//!   can be killed.
//!
//! Everything the child needs is prepared in the builder methods; [`NsPlan::enter`] runs between
//! fork and exec and makes only raw, async-signal-safe system calls (no allocation, no locks).

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::mounts::{enter_root, mount_overlay, mount_plan};
pub use super::mounts::{MountPlan, OverlayError, OverlayPlan, RootPlan};
use super::seccomp::Filters;

/// Who the addon runs as on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

impl Identity {
    /// The engine's own user.
    pub fn current() -> Identity {
        // SAFETY: getters without preconditions.
        unsafe { Identity { uid: libc::geteuid(), gid: libc::getegid() } }
    }
}

pub(super) fn cstring(p: &Path) -> CString {
    // Paths come from the engine's own directories; a NUL byte cannot occur in a Unix path.
    CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

/// Everything the child needs to enter its namespaces, prepared before fork (no allocation after).
#[derive(Debug, Clone)]
pub struct NsPlan {
    cut_network: bool,
    pid_ns: bool,
    /// IPC and UTS namespaces too.
    ipc_uts: bool,
    user_ns: bool,
    mounts: Option<MountPlan>,
    root: Option<RootPlan>,
    overlay: Option<OverlayPlan>,
    /// A host mount hidden under an empty read-only tmpfs in the private mount namespace.
    cover: Option<CString>,
    /// Mount a /proc of the new PID namespace (programs that read /proc/<pid> of their own
    /// children, such as nix, need it; it also hides the host's processes).
    fresh_proc: bool,
    /// Root only: become this identity (no supplementary groups) before exec.
    drop_to: Option<Identity>,
    seccomp: Option<&'static Filters>,
    /// `cgroup.procs` files to join before anything else (while still privileged).
    cgroups: Vec<CString>,
    rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
    /// Root only: a network namespace (a descriptor open in the engine) joined before anything
    /// else is unshared.
    join_net: Option<i32>,
    /// Files bound read-only over host files in the private mount namespace (`(source, over)`).
    file_binds: Vec<(CString, CString)>,
    /// Descriptors above stderr that the exec'd program must still have (bwrap's memory files);
    /// every other one is closed on exec.
    keep_fds: Vec<i32>,
    /// `(info, block)`: once its namespaces exist, report `{"child-pid": N}` on `info` and wait
    /// on `block` (see [`super::Handoff`]): the engine gives the network namespace its egress
    /// network meanwhile. Both are closed before the addon starts.
    handoff: Option<(i32, i32)>,
    /// The engine's argv and environment areas (copied into the child by fork), blanked in the
    /// namespace's init so that /proc/1 of the sandbox does not show them.
    blank: [(usize, usize); 2],
    uid_map: CString,
    gid_map: CString,
    parent_pid: i32,
}

impl NsPlan {
    /// A new PID namespace (and user namespace when not root), plus a network namespace with only
    /// `lo` when `cut_network`.
    pub fn new(cut_network: bool) -> NsPlan {
        let me = Identity::current();
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        NsPlan {
            cut_network,
            pid_ns: true,
            ipc_uts: false,
            user_ns: me.uid != 0,
            mounts: None,
            root: None,
            overlay: None,
            cover: None,
            fresh_proc: false,
            drop_to: None,
            seccomp: None,
            cgroups: Vec::new(),
            rlimits: Vec::new(),
            keep_fds: Vec::new(),
            join_net: None,
            file_binds: Vec::new(),
            handoff: None,
            blank: own_areas(),
            uid_map: CString::new(format!("{0} {0} 1", me.uid)).unwrap_or_default(),
            gid_map: CString::new(format!("{0} {0} 1", me.gid)).unwrap_or_default(),
            parent_pid: pid,
        }
    }

    /// A PID namespace only: its init dies with the engine and takes every process along.
    pub fn pid_only() -> NsPlan {
        NsPlan::new(false)
    }

    /// Preparation for a sandbox tool that makes its own namespaces (bwrap): no PID namespace
    /// and no user namespace here, only what `with_mounts`, `drop_to`, `join_cgroups` add.
    pub fn prepare_only() -> NsPlan {
        NsPlan { pid_ns: false, user_ns: false, ..NsPlan::new(false) }
    }

    /// IPC and UTS namespaces too.
    pub fn with_ipc_uts(mut self) -> NsPlan {
        self.ipc_uts = true;
        self
    }

    /// Also a private mount namespace laid out by `mounts`.
    pub fn with_mounts(mut self, mounts: MountPlan) -> NsPlan {
        self.mounts = Some(mounts);
        self
    }

    /// Also a private mount namespace with a new root (implies a /proc of its own).
    pub fn with_root(mut self, root: RootPlan) -> NsPlan {
        self.root = Some(root);
        self.fresh_proc = true;
        self
    }

    /// Also a private mount namespace with a writable overlay over a read-only root filesystem
    /// (an OCI runtime's bundle root), gone with the namespace.
    pub fn with_overlay(mut self, overlay: OverlayPlan) -> NsPlan {
        self.overlay = Some(overlay);
        self
    }

    /// Also a private mount namespace where `path` (a mount point of the host) is covered by an
    /// empty read-only tmpfs: what the program must not see of the host, such as the cgroup v2
    /// hierarchy of a hybrid host, which crun refuses to start next to.
    pub fn with_cover(mut self, path: &Path) -> NsPlan {
        self.cover = Some(cstring(path));
        self
    }

    /// In the user namespace (an engine that is not root), be uid and gid 0 rather than the
    /// engine's own ids, so that a tool that wants root there (an OCI runtime) has it.
    pub fn map_root(mut self) -> NsPlan {
        let me = Identity::current();
        self.uid_map = CString::new(format!("0 {} 1", me.uid)).unwrap_or_default();
        self.gid_map = CString::new(format!("0 {} 1", me.gid)).unwrap_or_default();
        self
    }

    /// Also a private mount namespace with a /proc of the new PID namespace.
    pub fn with_fresh_proc(mut self) -> NsPlan {
        self.fresh_proc = true;
        self
    }

    /// Become `who` (without supplementary groups) before exec, when the engine is root.
    pub fn drop_to(mut self, who: Option<Identity>) -> NsPlan {
        self.drop_to = who.filter(|w| w.uid != 0 && Identity::current().uid == 0);
        self
    }

    /// Install the seccomp filters (and `no_new_privs`) right before exec.
    pub fn with_seccomp(mut self, filters: &'static Filters) -> NsPlan {
        self.seccomp = Some(filters);
        self
    }

    /// Join these cgroups (their `cgroup.procs` files) first.
    pub fn join_cgroups(mut self, procs_files: &[PathBuf]) -> NsPlan {
        self.cgroups = procs_files.iter().map(|p| cstring(p)).collect();
        self
    }

    /// Set these resource limits (soft and hard).
    pub fn with_rlimits(mut self, limits: &[(libc::__rlimit_resource_t, u64)]) -> NsPlan {
        self.rlimits = limits.to_vec();
        self
    }

    /// Join the network namespace open on `fd` (root only; the descriptor must stay open until
    /// the command has started) instead of making one.
    pub fn join_network(mut self, fd: i32) -> NsPlan {
        self.join_net = Some(fd);
        self.cut_network = false;
        self
    }

    /// Also a private mount namespace where the file `source` is bound read-only over `over`
    /// (the engine's resolv.conf over the host's, say).
    pub fn with_file_over(mut self, source: &Path, over: &Path) -> NsPlan {
        self.file_binds.push((cstring(source), cstring(over)));
        self
    }

    /// Keep these descriptors open across exec (all others above stderr are closed).
    /// Waits for the engine once the namespaces exist (see the `handoff` field).
    pub fn with_handoff(mut self, info: i32, block: i32) -> NsPlan {
        debug_assert!(self.keep_fds.is_empty(), "a plan with a handoff keeps no descriptors");
        self.handoff = Some((info, block));
        self
    }

    /// [`NsPlan::with_handoff`] with the child's ends of the handoff's pipes, which `cmd` keeps
    /// open until it is spawned (they close in the engine then).
    pub fn with_handoff_ends(
        self,
        cmd: &mut tokio::process::Command,
        ends: (std::os::fd::OwnedFd, std::os::fd::OwnedFd),
    ) -> NsPlan {
        use std::os::fd::AsRawFd;
        let plan = self.with_handoff(ends.0.as_raw_fd(), ends.1.as_raw_fd());
        // SAFETY: the closure does nothing; it keeps the pipe ends open until the spawn.
        unsafe {
            cmd.pre_exec(move || {
                let _keep = &ends;
                Ok(())
            });
        }
        plan
    }

    pub fn keep_fds(mut self, fds: &[i32]) -> NsPlan {
        self.keep_fds = fds.to_vec();
        self
    }

    /// Installs the plan on `cmd` (runs in the child between fork and exec).
    pub fn install(self, cmd: &mut tokio::process::Command) {
        // SAFETY: `enter` makes only raw async-signal-safe system calls; everything it needs was
        // allocated before.
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

    /// The namespaces `enter` unshares (a pure function of the plan: the seam its tests use).
    fn clone_flags(&self) -> libc::c_int {
        let mut flags = 0;
        if self.pid_ns {
            flags |= libc::CLONE_NEWPID;
        }
        if self.cut_network {
            flags |= libc::CLONE_NEWNET;
        }
        if self.ipc_uts {
            flags |= libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
        }
        if self.user_ns {
            flags |= libc::CLONE_NEWUSER;
        }
        if self.needs_mount_ns() {
            flags |= libc::CLONE_NEWNS;
        }
        flags
    }

    /// Whether anything of the plan mounts (then it gets a mount namespace of its own).
    fn needs_mount_ns(&self) -> bool {
        self.mounts.is_some()
            || self.root.is_some()
            || self.overlay.is_some()
            || self.cover.is_some()
            || self.fresh_proc
            || !self.file_binds.is_empty()
    }

    /// Runs in the forked child: what it inherits, then namespaces and mounts, then (with a PID
    /// namespace) a shim and a mini init so the addon is not PID 1 (it keeps normal signal
    /// behaviour) and orphans are reaped, then the addon's identity and filters.
    fn enter(&self) -> io::Result<()> {
        // SAFETY (each step): raw async-signal-safe system calls in a single-threaded forked
        // child, on memory allocated before the fork.
        unsafe {
            self.inherit()?;
            self.unshare()?;
            if !self.pid_ns {
                return self.become_addon();
            }
            self.shim_and_init()
        }
    }

    /// The child's inheritance, settled: it dies with the engine, makes what others can read,
    /// keeps only the descriptors it is given, is in its control groups and under its rlimits.
    unsafe fn inherit(&self) -> io::Result<()> {
        // SAFETY: see `enter`.
        unsafe {
            // Die with the engine. Checked against a race with an engine that already died.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != self.parent_pid {
                libc::_exit(137);
            }
            // What is made here (a new root's directories and files, the addon's own files) is
            // made for others to read, whatever the engine's umask: under a job server's
            // `UMask=0077` a root engine's directories would shut the addon's identity out.
            libc::umask(0o022);
            // Nothing the engine inherited or opened reaches the addon: every descriptor above
            // stderr is closed on exec (the standard library's exec-status pipe among them, as
            // it expects), except the ones the sandbox tool is given.
            check(libc::close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_int))?;
            for fd in &self.keep_fds {
                check(libc::fcntl(*fd, libc::F_SETFD, 0))?;
            }
            for procs in &self.cgroups {
                write_file(procs, b"0")?;
            }
            for (resource, value) in &self.rlimits {
                let lim = libc::rlimit { rlim_cur: *value, rlim_max: *value };
                check(libc::setrlimit(*resource, &lim))?;
            }
            Ok(())
        }
    }

    /// The new namespaces ([`NsPlan::clone_flags`]), their id maps and loopback, and the mounts,
    /// none of which propagates back to the host.
    unsafe fn unshare(&self) -> io::Result<()> {
        // SAFETY: see `enter`.
        unsafe {
            if let Some(fd) = self.join_net {
                check(libc::setns(fd, libc::CLONE_NEWNET))?;
            }
            let flags = self.clone_flags();
            if flags != 0 {
                check(libc::unshare(flags))?;
            }
            if self.user_ns {
                write_file(c"/proc/self/setgroups", b"deny")?;
                write_file(c"/proc/self/uid_map", self.uid_map.to_bytes())?;
                write_file(c"/proc/self/gid_map", self.gid_map.to_bytes())?;
            }
            if self.cut_network {
                loopback_up()?;
            }
            if self.needs_mount_ns() {
                let private = libc::MS_REC | libc::MS_PRIVATE;
                check(libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), private, std::ptr::null()))?;
            }
            if let Some(m) = &self.mounts {
                mount_plan(m)?;
            }
            if let Some(o) = &self.overlay {
                mount_overlay(o)?;
            }
            for (source, over) in &self.file_binds {
                check(libc::mount(source.as_ptr(), over.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()))?;
                let ro = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
                check(libc::mount(std::ptr::null(), over.as_ptr(), std::ptr::null(), ro, std::ptr::null()))?;
            }
            if let Some(path) = &self.cover {
                let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
                check(libc::mount(
                    c"tmpfs".as_ptr(),
                    path.as_ptr(),
                    c"tmpfs".as_ptr(),
                    flags,
                    c"size=4k,mode=0555".as_ptr().cast(),
                ))?;
            }
            Ok(())
        }
    }

    /// With a PID namespace: this process stays outside as a shim that mirrors the exit of the
    /// namespace's PID 1, a mini init that reaps orphans and whose death ends the namespace;
    /// the init's child becomes the addon. Returns only in the addon (exec follows).
    unsafe fn shim_and_init(&self) -> io::Result<()> {
        // SAFETY: see `enter`.
        unsafe {
            let init = libc::fork();
            if init < 0 {
                return Err(io::Error::last_os_error());
            }
            if init > 0 {
                // The shim is in the new namespaces (all but the PID one): it reports itself,
                // and the init waits for the release.
                if let Some((info, _)) = self.handoff {
                    report(info);
                }
                // Close the standard library's exec-status pipe (and anything else above
                // stderr), or `spawn` would wait for this shim to end.
                libc::close_range(3, u32::MAX, 0);
                libc::_exit(wait_for(init));
            }
            // PID 1 of the new namespace: dies with the shim; its death kills the namespace. Its
            // memory (the engine's environment, copied by fork) is not the addon's to read
            // through /proc/1: not dumpable.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            libc::prctl(libc::PR_SET_DUMPABLE, 0);
            if let Some((info, block)) = self.handoff {
                libc::close(info);
                // The standard library's spawn waits until no one but an exec'd program holds its
                // exec-status pipe: nothing above stderr but `block` waits here (a plan with a
                // handoff has no descriptors to keep).
                if block > 3 {
                    libc::close_range(3, (block - 1) as u32, 0);
                }
                libc::close_range((block + 1) as u32, u32::MAX, 0);
                wait_release(block);
            }
            for (start, end) in self.blank {
                if start != 0 && end > start {
                    std::ptr::write_bytes(start as *mut u8, 0, end - start);
                }
            }
            if let Some(root) = &self.root {
                if enter_root(root).is_err() {
                    // The reason is lost across the fork; 125 tells the engine setup failed.
                    libc::_exit(125);
                }
            } else if self.fresh_proc {
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
                return self.become_addon(); // exec follows
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

    /// The last steps before exec: the addon's identity, its directory, its filters.
    unsafe fn become_addon(&self) -> io::Result<()> {
        // SAFETY: raw system calls in the forked child.
        unsafe {
            if let Some(who) = self.drop_to {
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setresgid(who.gid, who.gid, who.gid))?;
                check(libc::setresuid(who.uid, who.uid, who.uid))?;
            }
            if let Some(root) = &self.root {
                check(libc::chdir(root.chdir.as_ptr()))?;
            }
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
            if let Some(filters) = self.seccomp {
                super::seccomp::install(filters)?;
            }
        }
        Ok(())
    }
}

/// Where this process's argv and environment strings live (fields 48 to 51 of
/// /proc/self/stat); the same in a forked child.
fn own_areas() -> [(usize, usize); 2] {
    let stat = fs_err::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<usize> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect())
        .unwrap_or_default();
    // After the command name, field 3 (state) is index 0: field N is index N - 3.
    let at = |n: usize| fields.get(n - 3).copied().unwrap_or(0);
    [(at(48), at(49)), (at(50), at(51))]
}

/// Writes `{"child-pid": N}` (this process) on `info` and closes it. Async-signal-safe: no
/// allocation. A failed write leaves the engine waiting until it gives up and kills the run.
unsafe fn report(info: i32) {
    // SAFETY: raw system calls on a descriptor this process holds, buffers on the stack.
    unsafe {
        let mut text = *b"{\"child-pid\": 0000000000}";
        let mut pid = libc::getpid() as u32;
        let mut at = 23; // the last digit
        loop {
            text[at] = b'0' + (pid % 10) as u8;
            pid /= 10;
            if pid == 0 || at == 14 {
                break;
            }
            at -= 1;
        }
        // Leading zeros are not JSON: the digits follow the prefix directly.
        let digits = 24 - at;
        let mut out = [0u8; 26];
        out[..14].copy_from_slice(&text[..14]);
        out[14..14 + digits].copy_from_slice(&text[at..24]);
        out[14 + digits] = b'}';
        libc::write(info, out.as_ptr().cast(), 15 + digits);
        libc::close(info);
    }
}

/// Waits for a byte (or the end) on `block`, then closes it.
unsafe fn wait_release(block: i32) {
    // SAFETY: a raw read into a stack byte, on a descriptor this process holds.
    unsafe {
        let mut byte = 0u8;
        while libc::read(block, (&mut byte as *mut u8).cast(), 1) < 0 {
            if *libc::__errno_location() != libc::EINTR {
                break;
            }
        }
        libc::close(block);
    }
}

pub(super) fn check(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
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

unsafe fn write_file(path: &CStr, data: &[u8]) -> io::Result<()> {
    // SAFETY: as write_with.
    unsafe { write_with(path, data, libc::O_WRONLY | libc::O_CLOEXEC, 0) }
}

/// Writes `data` to `path` opened with `flags` (and `mode` when it creates it).
pub(super) unsafe fn write_with(path: &CStr, data: &[u8], flags: libc::c_int, mode: libc::mode_t) -> io::Result<()> {
    // SAFETY: plain open/write/close on a valid C string.
    unsafe {
        let fd = libc::open(path.as_ptr(), flags, mode);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = libc::write(fd, data.as_ptr().cast(), data.len());
        libc::close(fd);
        if n != data.len() as isize {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn has(flags: libc::c_int, flag: libc::c_int) -> bool {
        flags & flag == flag
    }

    #[test]
    fn each_plan_unshares_what_it_says() {
        let pure = NsPlan::new(true).with_ipc_uts().with_fresh_proc();
        let f = pure.clone_flags();
        for flag in [libc::CLONE_NEWPID, libc::CLONE_NEWNET, libc::CLONE_NEWIPC, libc::CLONE_NEWUTS, libc::CLONE_NEWNS]
        {
            assert!(has(f, flag), "a pure plan unshares {flag:#x}");
        }
        let impure = NsPlan::new(false).clone_flags();
        assert!(!has(impure, libc::CLONE_NEWNET), "an impure plan keeps the network");
        assert!(!has(impure, libc::CLONE_NEWNS), "nothing mounts: no mount namespace");
        assert_eq!(has(impure, libc::CLONE_NEWUSER), !is_root_now(), "a user namespace when not root");
        // bwrap's preparation: the tool makes the namespaces; here nothing is unshared.
        assert_eq!(NsPlan::prepare_only().clone_flags(), 0);
        assert!(has(NsPlan::prepare_only().with_cover(Path::new("/x")).clone_flags(), libc::CLONE_NEWNS));
    }

    #[test]
    fn the_handoff_reports_this_process_and_waits_for_the_release() {
        let (info_r, info_w) = crate::sandbox::pipe().unwrap();
        let (block_r, block_w) = crate::sandbox::pipe().unwrap();
        std::io::Write::write_all(&mut std::fs::File::from(block_w), b"x").unwrap();
        use std::os::fd::IntoRawFd;
        // SAFETY: descriptors this test owns; the functions close them.
        unsafe {
            report(info_w.into_raw_fd());
            wait_release(block_r.into_raw_fd());
        }
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(info_r), &mut text).unwrap();
        assert_eq!(text, format!("{{\"child-pid\": {}}}", std::process::id()));
        assert_eq!(crate::sandbox::child_pid_of(&text), Some(std::process::id() as i32));
    }

    fn is_root_now() -> bool {
        Identity::current().uid == 0
    }
}
