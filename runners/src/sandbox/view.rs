//! The filesystem an addon sees in a sandbox that builds its own root (bwrap, netns): what a
//! program needs from the host, read-only, plus the run's directories, and nothing else. No
//! `/run`, `/var`, `/home`, `/root`, host `/tmp` or `/sys`: daemon sockets, other users' files and
//! the engine's secrets are not hidden by permissions but absent.
//!
//! A [`View`] is a list of steps in order; each sandbox turns it into its own mechanism (bwrap
//! arguments, or mount calls in the engine's own namespaces).

use std::path::{Path, PathBuf};

use super::{Mounts, HOST_ETC, HOST_ETC_NETWORK};
use crate::egress::NetKind;

/// One step in building the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Bind a host path read-only at the same place.
    RoBind(PathBuf),
    /// Bind a host directory read-write at `at`.
    Bind { src: PathBuf, at: PathBuf },
    /// A symlink `at -> target` (the merged-/usr links).
    Symlink { target: PathBuf, at: PathBuf },
    /// An empty directory.
    Dir(PathBuf),
    /// A read-only file made by the engine.
    File { at: PathBuf, contents: String },
    /// A private, writable tmpfs, bounded in bytes and inodes (it is memory: without a control
    /// group nothing else would bound it).
    Tmpfs { at: PathBuf, bound: TmpfsBound },
    /// A minimal /dev (null, zero, full, random, urandom, tty, pts, shm).
    Dev,
    /// A /proc of the sandbox's PID namespace.
    Proc,
}

/// The root filesystem of a sandboxed addon.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    pub steps: Vec<Step>,
}

/// Top-level directories that hold programs and libraries: bound read-only, or recreated as the
/// symlinks they are on a merged-/usr host.
const SYSTEM: [&str; 7] = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"];

/// Configuration that common programs read (fonts, interpreters, JVM, ImageMagick, file(1)):
/// system settings, never secrets. Bound read-only when present.
const PROGRAM_ETC: [&str; 14] = [
    "/etc/fonts",
    "/etc/ImageMagick-6",
    "/etc/ImageMagick-7",
    "/etc/ghostscript",
    "/etc/java-17-openjdk",
    "/etc/java-21-openjdk",
    "/etc/perl",
    "/etc/python3",
    "/etc/python3.11",
    "/etc/mime.types",
    "/etc/magic",
    "/etc/protocols",
    "/etc/services",
    "/etc/papersize",
];

/// The bounds of each private tmpfs (`/tmp`, `/var/tmp`, `/dev/shm`): the smaller of the run's
/// memory and output size, and its entry limit. `None`: unbounded (no such limits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TmpfsBound {
    pub size: Option<u64>,
    pub inodes: Option<u64>,
}

impl TmpfsBound {
    /// The bound for a run with `limits`.
    pub fn of(limits: &crate::Limits) -> TmpfsBound {
        let size = match (limits.memory, limits.output_size) {
            (Some(m), Some(o)) => Some(m.min(o)),
            (m, o) => m.or(o),
        };
        TmpfsBound { size: size.map(|s| s.max(1 << 20)), inodes: limits.output_entries.map(|n| n.max(1024)) }
    }

    /// tmpfs mount options: `mode=1777` with `size=` and `nr_inodes=` where bounded.
    pub fn options(&self) -> String {
        let mut o = String::from("mode=1777");
        if let Some(s) = self.size {
            o.push_str(&format!(",size={s}"));
        }
        if let Some(n) = self.inodes {
            o.push_str(&format!(",nr_inodes={n}"));
        }
        o
    }
}

/// Who the addon is inside the sandbox, for the engine-made `/etc/passwd` and `/etc/group`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inside {
    pub uid: u32,
    pub gid: u32,
}

impl View {
    /// The view for a host program: the system directories, a minimal `/etc`, `/dev`, `/proc`,
    /// a private `/tmp`, `extra_ro` (e.g. `/nix/store`) and the run's directories at `view`.
    pub fn host_program(
        host: &Mounts,
        view: &Mounts,
        network: NetKind,
        extra_ro: &[PathBuf],
        who: Inside,
        tmpfs: TmpfsBound,
    ) -> View {
        let mut steps = Vec::new();
        for dir in SYSTEM.iter().map(Path::new) {
            match fs_err::read_link(dir) {
                Ok(target) => steps.push(Step::Symlink { target, at: dir.to_path_buf() }),
                Err(_) if dir.is_dir() => steps.push(Step::RoBind(dir.to_path_buf())),
                Err(_) => {}
            }
        }
        steps.push(Step::Dir("/etc".into()));
        let host_net = if network == NetKind::Host { &HOST_ETC_NETWORK[..] } else { &[] };
        let etc = HOST_ETC.iter().chain(PROGRAM_ETC.iter()).chain(host_net);
        steps.extend(etc.map(Path::new).filter(|p| p.exists()).map(|p| Step::RoBind(p.to_path_buf())));
        if network == NetKind::Egress {
            // Names resolve through the engine's resolver; the host's own names stay the host's.
            let resolv = crate::egress::resolv_conf();
            steps.push(Step::File { at: "/etc/resolv.conf".into(), contents: resolv });
            steps.push(Step::File { at: "/etc/hosts".into(), contents: "127.0.0.1 localhost\n::1 localhost\n".into() });
        }
        steps.push(Step::File { at: "/etc/passwd".into(), contents: passwd(who) });
        steps.push(Step::File { at: "/etc/group".into(), contents: group(who) });
        steps.push(Step::Dev);
        steps.push(Step::Proc);
        for at in ["/tmp", "/var/tmp", "/dev/shm"] {
            steps.push(Step::Tmpfs { at: at.into(), bound: tmpfs });
        }
        steps.extend(extra_ro.iter().filter(|p| p.exists()).map(|p| Step::RoBind(p.clone())));
        steps.push(Step::Dir("/mnt".into()));
        for (src, at) in host.pairs(view) {
            steps.push(Step::Bind { src: src.to_path_buf(), at: at.to_path_buf() });
        }
        View { steps }
    }
}

fn passwd(who: Inside) -> String {
    let mut s = String::from("root:x:0:0:root:/root:/usr/sbin/nologin\n");
    if who.uid != 0 && who.uid != 65534 {
        s.push_str(&format!("addon:x:{}:{}:addon:/mnt/home:/bin/sh\n", who.uid, who.gid));
    }
    s.push_str("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n");
    s
}

fn group(who: Inside) -> String {
    let mut s = String::from("root:x:0:\n");
    if who.gid != 0 && who.gid != 65534 {
        s.push_str(&format!("addon:x:{}:\n", who.gid));
    }
    s.push_str("nogroup:x:65534:\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(network: NetKind) -> View {
        let host = Mounts { work: "/w/run".into(), output: "/w/out".into(), cache: "/c/d".into(), home: "/c/h".into() };
        View::host_program(&host, &Mounts::mnt(), network, &[], Inside { uid: 1000, gid: 1000 }, TmpfsBound::default())
    }

    #[test]
    fn only_what_programs_need_is_there() {
        let v = view(NetKind::None);
        let bound: Vec<&Path> = v
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::RoBind(p) => Some(p.as_path()),
                Step::Bind { src, .. } => Some(src.as_path()),
                _ => None,
            })
            .collect();
        assert!(bound.contains(&Path::new("/usr")));
        for secret in ["/", "/etc", "/run", "/var", "/home", "/root", "/tmp", "/sys", "/etc/shadow", "/etc/ssl/private"]
        {
            assert!(!bound.contains(&Path::new(secret)), "{secret} must not be in the view: {bound:?}");
        }
        assert!(!bound.contains(&Path::new("/etc/resolv.conf")), "no name resolution without network");
        if Path::new("/etc/resolv.conf").exists() {
            assert!(view(NetKind::Host).steps.contains(&Step::RoBind("/etc/resolv.conf".into())));
        }
        // An egress network resolves through the engine's resolver, and not the host's names.
        let egress = view(NetKind::Egress);
        assert!(!egress
            .steps
            .iter()
            .any(|s| matches!(s, Step::RoBind(p) if p.starts_with("/etc/resolv.conf") || p.starts_with("/etc/hosts"))));
        assert!(egress.steps.iter().any(|s| matches!(s, Step::File { at, contents } if at == Path::new("/etc/resolv.conf") && contents.contains("nameserver 10.0.2.3"))));
        if Path::new("/etc/alternatives").exists() {
            assert!(bound.contains(&Path::new("/etc/alternatives")));
        }
        let passwd = v.steps.iter().find_map(|s| match s {
            Step::File { at, contents } if at == Path::new("/etc/passwd") => Some(contents.clone()),
            _ => None,
        });
        assert!(passwd.unwrap().contains("addon:x:1000:1000:addon:/mnt/home"));
        assert!(v.steps.contains(&Step::Bind { src: "/w/out".into(), at: "/mnt/output".into() }));
    }
}
