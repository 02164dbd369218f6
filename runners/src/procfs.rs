//! What the kernel's /proc says about processes, and signals to whole process trees: the bottom
//! of supervision, with no other part of the engine below it.

use std::collections::{HashMap, VecDeque};

/// Whether this process runs as root (its effective uid).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A process's start time in clock ticks since boot (with its pid, it names one process for good:
/// pids are reused, start times of the same pid are not).
/// None for a process that is gone, or dead and not yet reaped (a zombie).
pub fn process_start(pid: i32) -> Option<String> {
    let stat = fs_err::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    if matches!(fields.next(), Some("Z" | "X" | "x")) {
        return None;
    }
    fields.nth(18).map(str::to_string)
}

/// Sends `sig` to every descendant of `pid` (and to `pid` itself when `include_root`).
pub fn kill_tree(pid: i32, sig: i32, include_root: bool) {
    let mut targets = descendants(pid);
    if include_root {
        targets.insert(0, pid);
    }
    for p in targets {
        // SAFETY: kill(2) has no memory effects; a stale pid at worst gets ESRCH.
        unsafe {
            libc::kill(p, sig);
        }
    }
}

/// All descendants of `pid`, parents before children, from a scan of /proc.
pub fn descendants(pid: i32) -> Vec<i32> {
    // The kernel's own lists of children (`/proc/PID/task/TID/children`) walk only the subtree;
    // without them, every process's parent is read.
    if std::path::Path::new("/proc/self/task").join(std::process::id().to_string()).join("children").exists() {
        let mut out = Vec::new();
        let mut queue = VecDeque::from([pid]);
        while let Some(p) = queue.pop_front() {
            for task in fs_err::read_dir(format!("/proc/{p}/task")).into_iter().flatten().flatten() {
                let Ok(text) = fs_err::read_to_string(task.path().join("children")) else { continue };
                for c in text.split_whitespace().filter_map(|c| c.parse::<i32>().ok()) {
                    out.push(c);
                    queue.push_back(c);
                }
            }
        }
        return out;
    }
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    if let Ok(dir) = fs_err::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            if let Some(ppid) = parent_of(p) {
                children.entry(ppid).or_default().push(p);
            }
        }
    }
    let mut out = Vec::new();
    let mut queue = VecDeque::from([pid]);
    while let Some(p) = queue.pop_front() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
            out.push(c);
            queue.push_back(c);
        }
    }
    out
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = fs_err::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(1)?.parse().ok()
}

/// A process handle (`pidfd_open`): signals reach the process it was opened for, never another
/// that got its pid after it died.
#[derive(Debug)]
pub struct PidFd(std::os::fd::OwnedFd);

impl PidFd {
    pub fn open(pid: i32) -> Option<PidFd> {
        use std::os::fd::FromRawFd;
        // SAFETY: pidfd_open returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        // SAFETY: a descriptor nobody else owns.
        (fd >= 0).then(|| PidFd(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// SIGKILL to the process (when it still exists).
    pub fn kill(&self) {
        use std::os::fd::AsRawFd;
        // SAFETY: pidfd_send_signal on a descriptor we own, without siginfo.
        unsafe {
            libc::syscall(libc::SYS_pidfd_send_signal, self.0.as_raw_fd(), libc::SIGKILL, std::ptr::null::<u8>(), 0);
        }
    }
}

/// This host's name (`/proc/sys/kernel/hostname`), as labels name the host of an engine or
/// plugin; empty when it cannot be read.
pub fn hostname() -> String {
    fs_err::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}
