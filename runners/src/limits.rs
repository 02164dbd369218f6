//! The resource envelope of a run: memory, processes, CPU and what the addon may write.
//!
//! Host sandboxes enforce it with a control group per run (cgroup v1 or v2, through the
//! `cgroups-rs` crate) when the engine may create one (root), else with resource limits of the
//! process (rlimits: address space, processes of the user, file size; CPU share is then not
//! enforced). The envelope also watches the run while it goes (a refused fork, the output size)
//! and measures it afterwards (peak memory, CPU time, OOM kills). Containers get the same limits
//! from their runtime (see the docker runner).
//!
//! The data (`Limits`, `Usage`, `Breach`, `Enforcement`) is `addon-runner-api`'s, re-exported
//! here; this module is the enforcing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cgroups_rs::cgroup_builder::CgroupBuilder;
use cgroups_rs::{Cgroup, MaxValue};

pub use addon_runner_api::limits::{Breach, Enforcement, Limits, Usage};

/// Why a run's envelope (or the probe's control group) could not be made.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("creating control group {name}: {source}")]
    CreateGroup { name: String, source: cgroups_rs::error::Error },
    /// The crate only warns when a directory cannot be made; the group is then incomplete.
    #[error("control group {name} could not be created under /sys/fs/cgroup")]
    GroupMissing { name: String },
    /// A walk over the directories whose growth counts failed.
    #[error(transparent)]
    Unmeasurable(#[from] addon_tree::TreeError),
}

/// Probes how this process may enforce limits here: control groups when it may create them.
pub fn probe_enforcement() -> Enforcement {
    if !crate::procfs::is_root() {
        return Enforcement::Rlimits { why: "the engine is not root, so it cannot create control groups".into() };
    }
    let name = format!("addon-engine/probe-{}", std::process::id());
    match RunCgroup::create(&name, &Limits { pids: Some(64), ..Limits::default() }) {
        Ok(cg) => {
            let version = if cg.cgroup.v2() { 2 } else { 1 };
            cg.delete();
            Enforcement::Cgroups { version }
        }
        Err(e) => Enforcement::Rlimits { why: e.to_string() },
    }
}

/// The control group of one run.
#[derive(Debug)]
struct RunCgroup {
    cgroup: Cgroup,
    /// cgroup v1: an eventfd the kernel signals when the group is out of memory. A v1 group's
    /// `oom_kill` counts only kills of its own members, not of its child groups' (an OCI
    /// runtime's container): the notification is for the group whose limit was hit.
    oom_events: Option<std::os::fd::OwnedFd>,
}

const CONTROLLERS: [&str; 4] = ["memory", "pids", "cpu", "cpuacct"];

impl RunCgroup {
    fn create(name: &str, limits: &Limits) -> Result<RunCgroup, EnvelopeError> {
        let hier = cgroups_rs::hierarchies::auto();
        let mut b = CgroupBuilder::new(name).set_specified_controllers(CONTROLLERS.map(String::from).to_vec());
        if let Some(m) = limits.memory {
            b = b.memory().memory_hard_limit(m as i64).done();
        }
        if let Some(p) = limits.pids {
            b = b.pid().maximum_number_of_processes(MaxValue::Value(p as i64)).done();
        }
        if let Some(c) = limits.cpus {
            let period = 100_000u64;
            b = b.cpu().period(period).quota(((c * period as f64) as i64).max(1000)).done();
        }
        let cgroup = b.build(hier).map_err(|source| EnvelopeError::CreateGroup { name: name.to_string(), source })?;
        let mut cg = RunCgroup { cgroup, oom_events: None };
        if !cg.cgroup.v2() {
            cg.oom_events = cg.controller_path("memory").and_then(|dir| oom_eventfd(&dir).ok());
        }
        // The crate only warns when a directory cannot be made: check that each one exists.
        let procs = cg.procs_files();
        if procs.is_empty() || procs.iter().any(|p| !p.exists()) {
            cg.delete();
            return Err(EnvelopeError::GroupMissing { name: name.to_string() });
        }
        // An engine that was killed left its runs' groups behind (empty: their processes died
        // with their PID namespaces); the first run of each engine removes them.
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(|| remove_stale_groups(STALE_AFTER));
        if let Some(m) = limits.memory {
            // No swap beyond the memory limit, where swap is accounted.
            if let Some(mem) = cg.cgroup.controller_of::<cgroups_rs::memory::MemController>() {
                let _ = mem.set_memswap_limit(m as i64);
            }
        }
        Ok(cg)
    }

    /// The `cgroup.procs` file of each controller: writing "0" there moves the writer in.
    fn procs_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> =
            self.cgroup.subsystems().iter().map(|s| s.to_controller().path().join("cgroup.procs")).collect();
        files.sort();
        files.dedup();
        files
    }

    fn controller_path(&self, name: &str) -> Option<PathBuf> {
        self.cgroup
            .subsystems()
            .iter()
            .find(|s| s.controller_name() == name)
            .map(|s| s.to_controller().path().to_path_buf())
    }

    /// Forks refused at the process limit: the group's own, and (cgroup v1 counts them where
    /// the fork was) its child groups'.
    fn pids_refused(&self) -> u64 {
        let own = self
            .cgroup
            .controller_of::<cgroups_rs::pid::PidController>()
            .and_then(|p| p.get_pid_events().ok())
            .unwrap_or(0);
        if own > 0 || self.cgroup.v2() {
            return own;
        }
        let Some(dir) = self.controller_path("pids") else { return own };
        walkdir::WalkDir::new(&dir)
            .min_depth(1)
            .into_iter()
            .flatten()
            .filter(|e| e.file_type().is_dir())
            .filter_map(|e| fs_err::read_to_string(e.path().join("pids.events")).ok())
            .filter_map(|t| t.lines().find_map(|l| l.strip_prefix("max ")?.trim().parse::<u64>().ok()))
            .sum()
    }

    /// How many times the group ran out of memory (cgroup v1's notification).
    fn oom_notified(&self) -> u64 {
        use std::io::Read;
        let Some(fd) = self.oom_events.as_ref().and_then(|fd| fd.try_clone().ok()) else { return 0 };
        let mut buf = [0u8; 8];
        match std::fs::File::from(fd).read(&mut buf) {
            Ok(8) => u64::from_ne_bytes(buf),
            _ => 0,
        }
    }

    fn usage(&self) -> Usage {
        let read = |ctl: &str, file: &str| -> Option<String> {
            fs_err::read_to_string(self.controller_path(ctl)?.join(file)).ok()
        };
        let field = |text: &str, key: &str| -> Option<u64> {
            text.lines().find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
        };
        let (peak, oom) = if self.cgroup.v2() {
            let events = read("memory", "memory.events").unwrap_or_default();
            (read("memory", "memory.peak").and_then(|s| s.trim().parse().ok()), field(&events, "oom_kill "))
        } else {
            let oom = read("memory", "memory.oom_control").unwrap_or_default();
            let kills = field(&oom, "oom_kill ").unwrap_or(0).max(self.oom_notified().min(1));
            (read("memory", "memory.max_usage_in_bytes").and_then(|s| s.trim().parse().ok()), Some(kills))
        };
        let cpu_ns = if self.cgroup.v2() {
            read("cpu", "cpu.stat").and_then(|s| field(&s, "usage_usec ")).map(|us| us * 1000)
        } else {
            read("cpuacct", "cpuacct.usage").and_then(|s| s.trim().parse().ok())
        };
        Usage {
            peak_memory_bytes: peak,
            cpu_ms: cpu_ns.map(|ns: u64| ns / 1_000_000),
            oom_kills: oom.unwrap_or(0),
            pids_refused: self.pids_refused(),
            ..Usage::default()
        }
    }

    /// Kills whatever is left and removes the group (a few tries: a dying task lingers).
    fn delete(&self) {
        let _ = self.cgroup.kill();
        for _ in 0..50 {
            if self.cgroup.delete().is_ok() && self.procs_files().iter().all(|p| !p.exists()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::warn!("control group {} could not be removed", self.cgroup.path());
    }
}

/// How old an empty run group must be to count as left behind when its engine is not known to
/// be gone.
pub const STALE_AFTER: Duration = Duration::from_secs(60);

/// Removes the empty run groups below `addon-engine`, in every hierarchy, that runs of killed
/// engines left: those whose engine (the pid in `run-<ms>-<pid>-...`) is gone, and any older
/// than `age`, with the empty child groups a runtime made in them (runc's). A group with
/// processes or child groups cannot be removed, so a live run keeps its own.
pub fn remove_stale_groups(age: Duration) {
    let root = Path::new("/sys/fs/cgroup");
    let hierarchies = fs_err::read_dir(root).into_iter().flatten().flatten().map(|h| h.path());
    let parents = std::iter::once(root.to_path_buf()).chain(hierarchies).map(|h| h.join("addon-engine"));
    remove_stale_groups_in(parents, age);
}

fn remove_stale_groups_in(parents: impl Iterator<Item = PathBuf>, age: Duration) {
    let old = |p: &Path| {
        fs_err::metadata(p).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|e| e > age)
    };
    let owner_gone = |name: &str| {
        let pid = name.strip_prefix("run-").and_then(|r| r.split('-').nth(1)).and_then(|p| p.parse::<i32>().ok());
        pid.is_some_and(|pid| pid > 0 && !Path::new(&format!("/proc/{pid}")).exists())
    };
    for parent in parents {
        for run in fs_err::read_dir(&parent).into_iter().flatten().flatten() {
            let path = run.path();
            let gone = owner_gone(&run.file_name().to_string_lossy());
            if !path.is_dir() || !(gone || old(&path)) {
                continue;
            }
            for child in fs_err::read_dir(&path).into_iter().flatten().flatten() {
                if child.path().is_dir() && (gone || old(&child.path())) {
                    let _ = std::fs::remove_dir(child.path());
                }
            }
            // rmdir refuses a group with processes or child groups: only empty ones go.
            if std::fs::remove_dir(&path).is_ok() {
                tracing::debug!("removed the control group {} that a run left", path.display());
            }
        }
    }
}

/// Registers an eventfd for the out-of-memory notifications of the v1 memory group `dir`.
fn oom_eventfd(dir: &std::path::Path) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: eventfd returns a new descriptor (or -1), owned from here on.
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if efd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: efd is a valid descriptor nobody else owns.
    let efd = unsafe { OwnedFd::from_raw_fd(efd) };
    let control = std::fs::File::open(dir.join("memory.oom_control"))?;
    fs_err::write(dir.join("cgroup.event_control"), format!("{} {}", efd.as_raw_fd(), control.as_raw_fd()))?;
    Ok(efd)
}

/// The envelope of one run: created before the addon starts, watched while it runs, measured and
/// removed when it ends.
#[derive(Debug)]
pub struct Envelope {
    limits: Limits,
    cgroup: Option<RunCgroup>,
    /// Directories whose growth counts against `output_size` and `output_entries`, with what
    /// they held at the start.
    watched: Vec<PathBuf>,
    start: addon_tree::Measure,
    last_size_check: Option<Instant>,
    /// How long the last walk of the watched directories took (the next waits ten times that).
    last_walk: Duration,
    /// The process the run's tree hangs from (for files it holds open after unlinking them).
    root_pid: Option<i32>,
    /// Bytes the run wrote where no walk of ours reaches (a container's writable layer, as its
    /// runtime measures it).
    elsewhere: u64,
    /// Entries it made there (as a watcher inside measures them).
    elsewhere_entries: u64,
}

impl Envelope {
    /// An envelope for `limits`: a control group named after `run` when `enforcement` says so.
    pub fn new(
        run: &str,
        limits: Limits,
        enforcement: &Enforcement,
        watched: Vec<PathBuf>,
    ) -> Result<Envelope, EnvelopeError> {
        let cgroup = match enforcement {
            Enforcement::Cgroups { .. } => Some(RunCgroup::create(&Envelope::group_name(run), &limits)?),
            Enforcement::Rlimits { .. } => None,
        };
        let start = measure_all(&watched)?;
        Ok(Envelope {
            limits,
            cgroup,
            watched,
            start,
            last_size_check: None,
            last_walk: Duration::ZERO,
            root_pid: None,
            elsewhere: 0,
            elsewhere_entries: 0,
        })
    }

    /// The control group of run `run` (below each hierarchy's root).
    pub fn group_name(run: &str) -> String {
        format!("addon-engine/{run}")
    }

    /// The process the run hangs from, once started: files its tree holds open after unlinking
    /// them count against the output size too.
    pub fn set_root_pid(&mut self, pid: i32) {
        self.root_pid = Some(pid);
    }

    /// The processes of the run: its control group's and its child groups' (an OCI runtime puts
    /// the container in one of its own below), else the root process's tree.
    fn pids(&self) -> Vec<i32> {
        if let Some(cg) = &self.cgroup {
            if let Some(dir) = cg.procs_files().first().and_then(|p| p.parent()) {
                return walkdir::WalkDir::new(dir)
                    .into_iter()
                    .flatten()
                    .filter(|e| e.file_type().is_dir())
                    .filter_map(|e| fs_err::read_to_string(e.path().join("cgroup.procs")).ok())
                    .flat_map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect::<Vec<i32>>())
                    .collect();
            }
        }
        // A run whose root process is gone holds nothing open (and /proc need not be scanned).
        self.root_pid
            .filter(|p| Path::new(&format!("/proc/{p}")).exists())
            .map(|p| std::iter::once(p).chain(crate::procfs::descendants(p)).collect())
            .unwrap_or_default()
    }

    /// Also counts everything in `dir`, from nothing: a directory that was empty when the run
    /// began (a container's writable layer), whatever it holds by the time it is found.
    pub fn watch_from_empty(&mut self, dir: PathBuf) {
        self.watched.push(dir);
    }

    /// What the run has written where the envelope's walks do not reach (a container's writable
    /// layer): counted against `output_size` from the next check on.
    pub fn set_written_elsewhere(&mut self, bytes: u64) {
        self.elsewhere = bytes;
    }

    /// Entries the run made where the envelope's walks do not reach: counted against
    /// `output_entries` from the next check on.
    pub fn set_entries_elsewhere(&mut self, entries: u64) {
        self.elsewhere_entries = entries;
    }

    /// The `cgroup.procs` files the sandboxed process must join before it does anything else.
    pub fn cgroup_procs(&self) -> Vec<PathBuf> {
        self.cgroup.as_ref().map(RunCgroup::procs_files).unwrap_or_default()
    }

    /// The rlimits to set in the sandboxed process.
    pub fn rlimits(&self) -> Vec<(libc::__rlimit_resource_t, u64)> {
        let mut out = Vec::new();
        if let Some(size) = self.limits.output_size {
            out.push((libc::RLIMIT_FSIZE, size));
        }
        if self.cgroup.is_none() {
            if let Some(m) = self.limits.memory {
                out.push((libc::RLIMIT_AS, m));
            }
            if let Some(p) = self.limits.pids {
                out.push((libc::RLIMIT_NPROC, p));
            }
        }
        out
    }

    /// Checks the running addon against its limits (called a few times a second).
    pub fn check(&mut self) -> Option<Breach> {
        if let (Some(cg), Some(max)) = (&self.cgroup, self.limits.pids) {
            if cg.pids_refused() > 0 {
                return Some(Breach::Pids(max));
            }
        }
        if self.limits.output_size.is_some() || self.limits.output_entries.is_some() {
            // Walking the directories costs: at most a tenth of the time goes to it (RLIMIT_FSIZE
            // stops any single file at once, where the sandbox sets it).
            // At most a tenth of the time goes to walking, but never less often than twice a
            // second: a large tree must not buy a flood time.
            let every = (self.last_walk * 10).clamp(Duration::from_millis(50), Duration::from_millis(500));
            if self.last_size_check.is_none_or(|t| t.elapsed() >= every) {
                let walk = Instant::now();
                self.last_size_check = Some(walk);
                let now = match measure_all(&self.watched) {
                    Ok(m) => m,
                    Err(e) => return Some(Breach::Unmeasurable(e.to_string())),
                };
                // The cadence follows the directory walk (what grows with the addon's trees).
                self.last_walk = walk.elapsed();
                let hidden = unlinked_open_size(&self.pids());
                let written = (now.bytes + hidden + self.elsewhere).saturating_sub(self.start.bytes);
                if let Some(limit) = self.limits.output_size.filter(|l| written > *l) {
                    return Some(Breach::OutputSize { limit, written });
                }
                let made = (now.entries + self.elsewhere_entries).saturating_sub(self.start.entries);
                if let Some(limit) = self.limits.output_entries.filter(|l| made > *l) {
                    return Some(Breach::OutputEntries { limit, made });
                }
            }
        }
        None
    }

    /// [`Envelope::check`] now, whenever the last walk was: the last look after the run ended
    /// (a fill faster than the checks is still caught).
    pub fn check_now(&mut self) -> Option<Breach> {
        self.last_size_check = None;
        self.check()
    }

    /// What the run used; the control group is removed.
    pub fn finish(self) -> Usage {
        match &self.cgroup {
            Some(cg) => {
                let usage = cg.usage();
                cg.delete();
                usage
            }
            None => Usage::default(),
        }
    }

    /// Whether usage is measured (else `finish` reports nothing).
    pub fn measures(&self) -> bool {
        self.cgroup.is_some()
    }
}

impl Drop for Envelope {
    fn drop(&mut self) {
        if let Some(cg) = self.cgroup.take() {
            cg.delete();
        }
    }
}

/// Bytes in files the processes `pids` hold open, or keep mapped, after unlinking them (a way
/// to fill a disk that no directory walk sees), each file counted once. Mappings are read from
/// `/proc/PID/map_files` (following those links needs CAP_SYS_ADMIN: a root engine's, the
/// docker watcher's; others see the descriptors only).
pub fn unlinked_open_size(pids: &[i32]) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    for pid in pids {
        for kind in ["fd", "map_files"] {
            let Ok(entries) = fs_err::read_dir(format!("/proc/{pid}/{kind}")) else { continue };
            for e in entries.flatten() {
                // The magic link leads to the file itself, unlinked or not.
                let Ok(m) = fs_err::metadata(e.path()) else { continue };
                if m.is_file() && m.nlink() == 0 && seen.insert((m.dev(), m.ino())) {
                    total += m.blocks() * 512;
                }
            }
        }
    }
    total
}

/// Every process this process can see, but itself (in a PID namespace of its own: the others of
/// that namespace).
pub fn other_processes() -> Vec<i32> {
    let me = std::process::id() as i32;
    fs_err::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| *p != me)
        .collect()
}

/// What the directories hold together (by the walk that never follows a link; a failed walk is
/// an error, never a smaller number).
fn measure_all(dirs: &[PathBuf]) -> Result<addon_tree::Measure, addon_tree::TreeError> {
    dirs.iter().try_fold(addon_tree::Measure::default(), |sum, d| Ok(sum + addon_tree::measure(d)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A killed engine's run groups are removed by the next engine: empty ones whose engine is
    /// gone, and no other.
    #[test]
    fn groups_of_dead_engines_are_removed_and_no_others() {
        let parent = tempfile::tempdir().unwrap();
        let dead = 2_000_000_000; // above any pid_max
        let me = std::process::id();
        for name in
            [format!("run-1-{dead}-0-0-0"), format!("run-1-{me}-0-0-0"), format!("run-2-{dead}-0-0-0"), "other".into()]
        {
            std::fs::create_dir(parent.path().join(name)).unwrap();
        }
        // A group that still holds something stays (here a child that cannot be removed, as a
        // group with processes could not).
        std::fs::create_dir(parent.path().join(format!("run-2-{dead}-0-0-0/child"))).unwrap();
        std::fs::write(parent.path().join(format!("run-2-{dead}-0-0-0/child/held")), "").unwrap();
        remove_stale_groups_in(std::iter::once(parent.path().to_path_buf()), Duration::from_secs(3600));
        let mut left: Vec<String> = std::fs::read_dir(parent.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into())
            .collect();
        left.sort();
        assert_eq!(left, ["other".to_string(), format!("run-1-{me}-0-0-0"), format!("run-2-{dead}-0-0-0")]);
    }

    /// A container's writable layer is found after the container started: what the addon wrote
    /// before that look counts too (it was counted from the look on, and a fast fill passed
    /// the limit under a loaded machine).
    #[test]
    fn a_layer_found_late_counts_from_empty() {
        let layer = tempfile::tempdir().unwrap();
        std::fs::write(layer.path().join("fill"), vec![0u8; 2 << 20]).unwrap();
        let limits = Limits { output_size: Some(1 << 20), ..Default::default() };
        let mut e = Envelope::new("t", limits, &Enforcement::Rlimits { why: "test".into() }, vec![]).unwrap();
        e.watch_from_empty(layer.path().into());
        assert!(matches!(e.check_now(), Some(Breach::OutputSize { .. })), "the 2 MiB written before count");
    }

    #[test]
    fn rlimits_stand_in_for_a_missing_cgroup() {
        let limits = Limits {
            memory: Some(1 << 30),
            pids: Some(512),
            cpus: Some(1.0),
            output_size: Some(1 << 20),
            output_entries: None,
        };
        let e = Envelope::new("t", limits, &Enforcement::Rlimits { why: "test".into() }, vec![]).unwrap();
        let r = e.rlimits();
        assert!(r.contains(&(libc::RLIMIT_AS, 1 << 30)));
        assert!(r.contains(&(libc::RLIMIT_NPROC, 512)));
        assert!(r.contains(&(libc::RLIMIT_FSIZE, 1 << 20)));
        assert!(e.cgroup_procs().is_empty());
        assert!(!e.measures());
    }

    #[test]
    fn output_growth_is_a_breach() {
        let dir = tempfile::tempdir().unwrap();
        fs_err::write(dir.path().join("before"), vec![1u8; 8192]).unwrap();
        let limits = Limits { output_size: Some(10_000), ..Limits::default() };
        let mut e =
            Envelope::new("t", limits, &Enforcement::Rlimits { why: "test".into() }, vec![dir.path().into()]).unwrap();
        assert_eq!(e.check(), None, "what was there before does not count");
        fs_err::write(dir.path().join("after"), vec![1u8; 20_000]).unwrap();
        e.last_size_check = None;
        assert!(matches!(e.check(), Some(Breach::OutputSize { limit: 10_000, .. })));
    }

    #[test]
    fn an_inode_flood_is_a_breach() {
        let dir = tempfile::tempdir().unwrap();
        fs_err::write(dir.path().join("before"), "").unwrap();
        let limits = Limits { output_entries: Some(100), ..Limits::default() };
        let mut e =
            Envelope::new("t", limits, &Enforcement::Rlimits { why: "test".into() }, vec![dir.path().into()]).unwrap();
        assert_eq!(e.check(), None);
        for i in 0..101 {
            fs_err::write(dir.path().join(format!("empty-{i}")), "").unwrap();
        }
        e.last_size_check = None;
        assert_eq!(e.check(), Some(Breach::OutputEntries { limit: 100, made: 101 }));
    }

    /// A run whose directories cannot be measured gets no envelope (it would go unwatched); the
    /// error is the walk's, naming the directory.
    #[test]
    fn an_unmeasurable_directory_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        // The walk follows no link, not even at its root.
        let link = dir.path().join("link-to-elsewhere");
        std::os::unix::fs::symlink(dir.path(), &link).unwrap();
        let e = Envelope::new("t", Limits::default(), &Enforcement::Rlimits { why: "test".into() }, vec![link])
            .unwrap_err();
        assert!(matches!(e, EnvelopeError::Unmeasurable(_)), "{e:?}");
        assert!(e.to_string().contains("link-to-elsewhere"), "{e}");
    }
}
