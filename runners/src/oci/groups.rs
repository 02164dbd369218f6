//! The control groups of containers: where crun and runc put them, and their removal.

use super::*;

/// The cgroup v2 hierarchy of a hybrid host (v1 controllers at `/sys/fs/cgroup/<name>`, v2 at
/// `/sys/fs/cgroup/unified`), if this is one. crun (1.8) refuses to start a container next to a
/// v2 hierarchy that has controllers, even when told to manage no cgroups; it is told that
/// here (the run's envelope, joined before, holds the limits), so the engine covers the v2
/// hierarchy in the runtime's own mount namespace and crun works as on a v1 host. The container
/// stays in the engine's v2 group (no controllers are used there), and sees no /sys at all.
pub fn hybrid_v2_mount() -> Option<&'static Path> {
    const ROOT: &str = "/sys/fs/cgroup";
    const V2: &str = "/sys/fs/cgroup/unified";
    let magic = |p: &str| -> Option<libc::__fsword_t> {
        let c = std::ffi::CString::new(p).ok()?;
        // SAFETY: statfs with a valid C string and a zeroed, correctly sized buffer.
        unsafe {
            let mut st: libc::statfs = std::mem::zeroed();
            (libc::statfs(c.as_ptr(), &mut st) == 0).then_some(st.f_type)
        }
    };
    // The host's layout does not change under a running engine: looked at once, not per run.
    static HYBRID: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    HYBRID
        .get_or_init(|| magic(ROOT) == Some(libc::TMPFS_MAGIC) && magic(V2) == Some(libc::CGROUP2_SUPER_MAGIC))
        .then(|| Path::new(V2))
}

/// The control group runc puts the container in: a child of the run's envelope (whose limits
/// hold it; the envelope reads its refused forks and out-of-memory events), named after the
/// container. runc itself stays outside: on cgroup v1 every move into a group may wait for an
/// RCU grace period (~10 ms), and runc moves the container anyway. crun is told to make no
/// group; it joins the envelope itself instead (see [`OciRunner::command`]).
pub(super) fn container_cgroup(envelope: &[PathBuf], runtime: &Runtime, run_id: &str, id: &str) -> Option<String> {
    (!envelope.is_empty() && runtime.name != "crun")
        .then(|| format!("/{}/{id}", crate::limits::Envelope::group_name(run_id)))
}

/// Removes what runc's group path left in the hierarchies the envelope does not use (cpuset,
/// devices, freezer, ...: runc removes only the container's own group, not its parents).
pub(super) fn remove_run_groups(run_id: &str) {
    let name = crate::limits::Envelope::group_name(run_id);
    for e in fs_err::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
        let dir = e.path().join(&name);
        if dir.is_dir() {
            let _ = fs_err::remove_dir(&dir);
        }
    }
}
