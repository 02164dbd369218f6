//! bubblewrap: a root built from what a program needs (see [`View`]), the run's directories at
//! `/mnt`, new PID, IPC and UTS namespaces, and a network namespace with only `lo` unless the
//! addon asks for network.

use std::io::{Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::process::Command;

use super::view::{Inside, Step, View};
use super::{Mounts, Probe, ProbeCache, Sandbox, SandboxKind, Spec};

#[derive(Debug)]
pub struct Bwrap {
    probes: Arc<ProbeCache>,
}

impl Bwrap {
    pub fn new(probes: Arc<ProbeCache>) -> Bwrap {
        Bwrap { probes }
    }
}

fn bwrap_path() -> Option<PathBuf> {
    which::which("bwrap").ok()
}

impl Sandbox for Bwrap {
    fn kind(&self) -> SandboxKind {
        SandboxKind::Bwrap
    }

    fn cuts_network(&self) -> bool {
        true
    }

    fn isolates_filesystem(&self) -> bool {
        true
    }

    fn probe(&self) -> Probe {
        let path = bwrap_path();
        self.probes.get("bwrap", "", path.as_deref(), || probe(path.clone()))
    }

    fn view(&self, _host: &Mounts) -> Mounts {
        Mounts::mnt()
    }

    fn build(&self, spec: &Spec<'_>) -> Command {
        let Spec { program, args, env, mounts, extra_ro, iso } = *spec;
        let inside = self.view(mounts);
        // SAFETY: getters without preconditions.
        let who = unsafe { Inside { uid: libc::geteuid(), gid: libc::getegid() } };
        let view = View::host_program(mounts, &inside, iso.network, extra_ro, who);
        let mut c = Command::new(bwrap_path().unwrap_or_else(|| PathBuf::from("bwrap")));
        // Engine-made files reach bwrap as inherited memory files (`--ro-bind-data FD`).
        let mut data = Vec::new();
        for step in &view.steps {
            match step {
                Step::RoBind(p) => {
                    c.arg("--ro-bind").arg(p).arg(p);
                }
                Step::Bind { src, at } => {
                    c.arg("--bind").arg(src).arg(at);
                }
                Step::Symlink { target, at } => {
                    c.arg("--symlink").arg(target).arg(at);
                }
                Step::Dir(p) => {
                    c.arg("--dir").arg(p);
                }
                Step::Tmpfs(p) => {
                    c.arg("--tmpfs").arg(p);
                }
                Step::Dev => {
                    c.args(["--dev", "/dev"]);
                }
                Step::Proc => {
                    c.args(["--proc", "/proc"]);
                }
                Step::File { at, contents } => match memfd(contents) {
                    Ok(fd) => {
                        c.arg("--ro-bind-data").arg(fd.as_raw_fd().to_string()).arg(at);
                        data.push(fd);
                    }
                    // Without the file the program still runs; user lookups fail.
                    Err(e) => tracing::warn!("bwrap: cannot make {}: {e}", at.display()),
                },
            }
        }
        // The root itself (a tmpfs holding the mount points) becomes read-only: only /tmp,
        // /var/tmp and the run's directories are writable.
        c.args(["--remount-ro", "/"]);
        c.args(["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--die-with-parent", "--new-session"]);
        if !iso.network {
            c.arg("--unshare-net");
        }
        c.arg("--chdir").arg(&inside.work).arg("--").arg(mounts.translate(program, &inside)).args(args);
        c.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
        let fds: Vec<i32> = data.iter().map(|f| f.as_raw_fd()).collect();
        // SAFETY: fcntl on descriptors this closure keeps open (it owns `data`); async-signal-safe.
        unsafe {
            c.pre_exec(move || {
                let _keep = &data;
                for fd in &fds {
                    if libc::fcntl(*fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        c
    }
}

/// A sealed-in-memory file with `contents`, closed on exec unless a child clears that.
fn memfd(contents: &str) -> std::io::Result<OwnedFd> {
    // SAFETY: memfd_create with a valid name; the fd is owned by the returned OwnedFd.
    let fd = unsafe { libc::memfd_create(c"addon-etc".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut f = std::fs::File::from(fd);
    f.write_all(contents.as_bytes())?;
    f.seek(SeekFrom::Start(0))?;
    Ok(f.into())
}

fn probe(path: Option<PathBuf>) -> Probe {
    let Some(path) = path else {
        return Probe::missing("bwrap", "bwrap not found in PATH (apt-get install bubblewrap)");
    };
    let out = std::process::Command::new(&path)
        .args(["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--unshare-pid", "--unshare-net"])
        .args(["--die-with-parent", "--", "true"])
        .output();
    let version = super::version_of(&path).unwrap_or_default();
    match out {
        Ok(o) if o.status.success() => Probe::ok("bwrap", format!("{version} at {}", path.display()), None),
        Ok(o) => Probe::missing(
            "bwrap",
            format!("{} fails here: {}", path.display(), String::from_utf8_lossy(&o.stderr).trim()),
        ),
        Err(e) => Probe::missing("bwrap", format!("cannot start {}: {e}", path.display())),
    }
}
