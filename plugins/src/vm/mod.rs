//! The VM runner: trivial and nix addons behind a kernel of their own, in a QEMU micro VM. Nix
//! addons are built as the nix-flake runner builds them (cached by the engine); the guest sees
//! `/nix/store` read-only.
//!
//! QEMU runs as the engine's host sandbox would run the addon itself: as the addon's
//! unprivileged identity, in bwrap (or the engine's netns sandbox), in the run's control group,
//! with the sandbox's seccomp filter and network (none for a pure addon; the egress network
//! for an impure one, which QEMU's user-mode network sends the guest's traffic into). The guest
//! sees what that sandbox sees, over virtio-9p: `/usr` and `/etc` read-only, the run's
//! directories at `/mnt`; QEMU's 9p server writes as that identity whatever the guest's uid.
//! Inside, the addon runs as the same uid without capabilities, in a control group holding
//! its process and memory limits; the guest powers off when it ends.
//!
//! KVM when it boots a guest here, TCG (software emulation) otherwise. The kernel (the host's,
//! uncompressed once) and a small initramfs (busybox, the virtio and 9p modules, the init) are
//! made once per kernel in the plugin's state directory (see `boot`).

pub mod boot;
pub mod exec;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::unavailable;
use addon_descriptors::{normalise_relative, Section};
use addon_runners::host::{self, HostRuns};
use addon_runners::nix::NixRunner;
use addon_runners::sandbox::{SandboxKind, SandboxSettings, Sandboxes};
use addon_runners::{
    Artifact, Availability, BuildSpec, Capabilities, ExitKind, LogSink, ProbeCache, RunEvent, Runner, RunnerError,
    RunnerInfo, StartSpec, Started,
};
use serde::Deserialize;
use std::collections::BTreeMap;

pub const NAME: &str = "vm";

/// Host tasks of QEMU itself (vCPU threads, 9p workers, the helper, the sandbox), the run's
/// process limit on the host; the addon's own limit holds inside the guest.
const QEMU_TASKS: u64 = 256;

/// Address space QEMU reserves beyond what it uses, added where memory is bounded as address
/// space (an engine without control groups).
const ADDRESS_SPACE_SLACK_MIB: u64 = 1536;

/// Guest memory beyond the addon's own limit: the guest kernel, its init and page cache.
const GUEST_OVERHEAD_MIB: u64 = 96;

/// The plugin's configuration (`plugins.NAME.config`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct VmSettings {
    /// The QEMU program.
    pub qemu: String,
    /// The kernel (`/boot/vmlinuz-RELEASE`, with its modules in /lib/modules/RELEASE); null:
    /// the newest in /boot.
    pub kernel: Option<PathBuf>,
    /// A static busybox for the initramfs.
    pub busybox: PathBuf,
    /// `auto` (KVM when a trial guest boots with it, else TCG), `kvm` or `tcg`.
    pub accel: String,
    /// Guest memory (MiB) for runs without a memory limit.
    pub memory_mib: u64,
    /// What QEMU itself may use beyond the guest's memory (MiB), added to the run's limit.
    pub qemu_overhead_mib: u64,
    /// Where the kernel and initramfs are kept (made once per kernel).
    pub state_dir: PathBuf,
    /// More QEMU arguments.
    pub extra_args: Vec<String>,
    /// How nix addons are built (as `nix-runner` of the engine's configuration): `nix-binary`,
    /// `build-timeout`, `extra-args`.
    pub nix: crate::PluginNix,
}

impl Default for VmSettings {
    fn default() -> Self {
        VmSettings {
            qemu: "qemu-system-x86_64".into(),
            kernel: None,
            busybox: PathBuf::from("/bin/busybox"),
            accel: "auto".into(),
            memory_mib: 512,
            qemu_overhead_mib: 384,
            state_dir: default_state_dir(),
            extra_args: Vec::new(),
            nix: crate::PluginNix::default(),
        }
    }
}

/// As root `/var/lib/addon-runner-vm`; otherwise under the user's state directory
/// (`$XDG_STATE_HOME`, `~/.local/state`), or a directory of the user's own in the temporary
/// directory (checked: owned by the user, not a link, closed to others; see
/// [`boot::own_dir`]).
fn default_state_dir() -> PathBuf {
    if addon_runners::sandbox::is_root() {
        return PathBuf::from("/var/lib/addon-runner-vm");
    }
    // Only where this user may make it (a job server's HOME may be another user's, or missing).
    let writable = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
            // SAFETY: access with a valid C string.
            .is_ok_and(|c| p.is_dir() && unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0)
    };
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .filter(|p| p.is_absolute() && (writable(p) || !p.exists() && p.parent().is_some_and(writable)));
    match state {
        Some(s) => s.join("addon-runner-vm"),
        // SAFETY: getuid cannot fail.
        None => std::env::temp_dir().join(format!("addon-runner-vm-{}", unsafe { libc::getuid() })),
    }
}

/// What the probe found: the boot files, the accelerator, and this program's copy that runs in
/// the sandbox and is shared with the guest.
#[derive(Debug, Clone)]
struct Ready {
    boot: boot::Boot,
    accel: String,
    qemu: PathBuf,
    helper: PathBuf,
}

#[derive(Debug)]
pub struct VmRunner {
    settings: VmSettings,
    sandboxes: Arc<Sandboxes>,
    runs: Arc<HostRuns>,
    probed: tokio::sync::Mutex<Option<(Availability, Option<Ready>)>>,
    /// Each run's nonce, which marks its helper's report.
    nonces: Arc<Mutex<HashMap<String, String>>>,
    /// Builds nix addons (and finds their program), as the nix-flake runner does.
    nix: NixRunner,
}

impl VmRunner {
    pub fn new(settings: VmSettings) -> VmRunner {
        let probes = Arc::new(ProbeCache::default());
        let sandboxes = Arc::new(Sandboxes::new(&SandboxSettings::default(), probes.clone()));
        let nix = settings.nix.runner(probes, sandboxes.clone());
        VmRunner {
            settings,
            nix,
            sandboxes,
            runs: Arc::default(),
            probed: tokio::sync::Mutex::new(None),
            nonces: Arc::default(),
        }
    }

    /// The boot files and the accelerator, found (and made) once.
    async fn ready(&self) -> Result<Ready, String> {
        let mut probed = self.probed.lock().await;
        if let Some((a, r)) = probed.as_ref() {
            return r.clone().ok_or_else(|| a.detail.clone());
        }
        let (a, r) = self.probe_now().await;
        let out = r.clone().ok_or_else(|| a.detail.clone());
        if a.available {
            *probed = Some((a, r));
        }
        out
    }

    async fn probe_now(&self) -> (Availability, Option<Ready>) {
        let s = self.settings.clone();
        let found = tokio::task::spawn_blocking(move || -> Result<(PathBuf, String, boot::Boot, PathBuf), String> {
            let qemu = which::which(&s.qemu).map_err(|_| {
                format!("{} not found (apt-get install --no-install-recommends qemu-system-x86)", s.qemu)
            })?;
            let version = std::process::Command::new(&qemu)
                .arg("--version")
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_string())
                .unwrap_or_default();
            let (kernel, release) = boot::find_kernel(s.kernel.as_deref()).map_err(|e| e.to_string())?;
            let b = boot::prepare(&s.state_dir, &kernel, &release, &s.busybox).map_err(|e| e.to_string())?;
            let helper = boot::helper_copy(&s.state_dir).map_err(|e| e.to_string())?;
            Ok((qemu, version, b, helper))
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        let (qemu, version, boot, helper) = match found {
            Ok(x) => x,
            Err(why) => return (unavailable(why), None),
        };
        let sandbox = self.sandbox_kind();
        if let Err(why) = sandbox {
            return (unavailable(why), None);
        }
        // KVM only when a guest really boots with it (this machine's /dev/kvm, a PVM, does not
        // run a stock guest).
        // The verdict is kept (in the state directory, for the next plugin process) while QEMU,
        // the boot files and the setting stay the same, for an hour.
        let (accel, why_not_kvm) = match self.settings.accel.as_str() {
            "tcg" => ("tcg".to_string(), "accel: tcg".to_string()),
            "kvm" => ("kvm".to_string(), String::new()),
            _ => {
                let cache =
                    ProbeCache::new(Some(self.settings.state_dir.join("probes"))).with_ttl(Duration::from_secs(3600));
                let key = format!("{}|{}", qemu.display(), boot.dir.display());
                let p = cache
                    .get_async("vm-accel", &key, Some(&qemu), async {
                        let detail = match trial_boot(&qemu, &boot, "kvm").await.and_then(|()| kvm_open_to_all()) {
                            Ok(()) => "kvm".to_string(),
                            Err(why) => format!("tcg KVM: {why}"),
                        };
                        addon_runners::Probe { name: "vm-accel", available: true, detail, version: None }
                    })
                    .await;
                match p.detail.strip_prefix("tcg ") {
                    Some(why) => ("tcg".to_string(), why.to_string()),
                    None => ("kvm".to_string(), String::new()),
                }
            }
        };
        let detail = format!(
            "{version}; kernel {} (uncompressed once, in {}); {}{}; QEMU runs as the addon's identity in the {} sandbox",
            boot.release,
            boot.dir.display(),
            if accel == "kvm" { "KVM" } else { "TCG (software emulation, 2-4 s a run)" },
            if why_not_kvm.is_empty() { String::new() } else { format!(" ({why_not_kvm})") },
            sandbox.map(|k| k.to_string()).unwrap_or_default()
        );
        let a = Availability { available: true, version: Some(version), detail };
        (a, Some(Ready { boot, accel, qemu, helper }))
    }

    /// QEMU's sandbox: bwrap where it works, else the engine's netns sandbox.
    fn sandbox_kind(&self) -> Result<SandboxKind, String> {
        let mut why = Vec::new();
        for kind in [SandboxKind::Bwrap, SandboxKind::Netns] {
            let p = self.sandboxes.get(kind).probe();
            if p.available {
                return Ok(kind);
            }
            why.push(format!("{kind}: {}", p.detail));
        }
        Err(format!("QEMU runs in the engine's bwrap or netns sandbox, and neither works here: {}", why.join("; ")))
    }
}

/// Boots the guest with `accel` and nothing to run (the init fails at once for want of its
/// share): whether QEMU starts the machine at all, within 5 s (a KVM guest reaches its init in
/// well under one; the plugin's calls must answer within the engine's timeout).
async fn trial_boot(qemu: &Path, boot: &boot::Boot, accel: &str) -> Result<(), String> {
    if !Path::new("/dev/kvm").exists() && accel == "kvm" {
        return Err("no /dev/kvm".into());
    }
    let mut c = tokio::process::Command::new(qemu);
    c.args(["-machine", "microvm", "-accel", accel, "-m", "128M", "-nodefaults", "-no-user-config", "-nographic"])
        .args(["-no-reboot", "-kernel"])
        .arg(&boot.kernel)
        .arg("-initrd")
        .arg(&boot.initrd)
        .args(["-append", "console=ttyS0 panic=-1 rdinit=/init", "-serial", "stdio"])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(5), c.output())
        .await
        .map_err(|_| "a trial guest did not reach its init within 5 s".to_string())?
        .map_err(|e| e.to_string())?;
    let console = String::from_utf8_lossy(&out.stdout);
    if console.contains("vm init:") {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!("a trial guest did not reach its init: {}", err.lines().last().unwrap_or("").trim()))
    }
}

/// Whether QEMU in the sandbox may open /dev/kvm: it runs as the addon's identity, with no
/// supplementary groups (so not in group `kvm`).
fn kvm_open_to_all() -> Result<(), String> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let m = fs_err::metadata("/dev/kvm").map_err(|e| e.to_string())?;
    let mode = m.permissions().mode() & 0o777;
    if m.file_type().is_char_device() && mode & 0o006 == 0o006 {
        Ok(())
    } else {
        Err(format!(
            "a guest boots with it, but /dev/kvm (mode {mode:o}) is not open to the sandbox's user, which has no \
             supplementary groups (chmod 0666 /dev/kvm, as some distributions ship it)"
        ))
    }
}

/// The host's TSC rate in kHz (`cpu MHz` of /proc/cpuinfo).
pub fn tsc_khz() -> Option<u64> {
    let info = fs_err::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info.lines().find(|l| l.starts_with("cpu MHz"))?.split(':').nth(1)?.trim().parse().ok()?;
    Some((mhz * 1000.0) as u64)
}

#[async_trait::async_trait]
impl Runner for VmRunner {
    fn info(&self) -> RunnerInfo {
        let capabilities = Capabilities {
            // Nix addons are built first (cached by the engine).
            builds: true,
            // QEMU runs in the engine's sandbox, which gives the network (none, or egress).
            uses_sandbox: false,
            isolates_network: true,
            isolates_filesystem: true,
            egress: self.sandboxes.get(SandboxKind::Bwrap).egress().is_ok(),
            ..Capabilities::SHIPPED
        };
        RunnerInfo::shipped(NAME, &[Section::Trivial, Section::Nix], capabilities)
    }

    async fn probe(&self) -> Availability {
        match self.ready().await {
            Ok(_) => self.probed.lock().await.as_ref().map(|(a, _)| a.clone()).unwrap_or_else(|| unavailable("")),
            Err(why) => unavailable(why),
        }
    }

    async fn start(&self, spec: StartSpec) -> Result<Started, RunnerError> {
        let setup = |m: String| RunnerError::setup(NAME, m);
        let ready = self.ready().await.map_err(setup)?;
        // A nix addon's program is in the store, which the sandbox and the guest see read-only.
        let (program, nix_store) = match spec.section {
            Section::Nix => (self.nix.program(&spec).await.map_err(|e| setup(e.to_string()))?, true),
            Section::Trivial => {
                let exec = spec
                    .descriptor
                    .trivial_exec()
                    .ok_or_else(|| setup(format!("{} has no runner.trivial.exec", spec.addon.label())))?;
                let rel = normalise_relative(exec).map_err(|why| setup(format!("exec `{exec}` {why}")))?;
                addon_tree::make_executable(&spec.dirs.addon, Path::new(&rel)).map_err(|e| setup(e.to_string()))?;
                (spec.dirs.addon.join(&rel), false)
            }
            other => return Err(setup(format!("serves trivial and nix addons, not {other}"))),
        };
        let kind = self.sandbox_kind().map_err(setup)?;
        let inside = addon_runners::Mounts::mnt();
        let guest_program = spec.mounts().translate(&program, &inside);
        let helper = ready.helper.clone();
        let nonce = format!("{:x}{:x}", std::process::id(), rand_u64());
        let memory_mib = spec.limits.memory.map(|m| m.div_ceil(1 << 20)).unwrap_or(self.settings.memory_mib);
        let plan = exec::Plan {
            qemu: ready.qemu.clone(),
            kernel: ready.boot.kernel.clone(),
            initrd: ready.boot.initrd.clone(),
            accel: ready.accel.clone(),
            guest_mib: memory_mib + GUEST_OVERHEAD_MIB,
            cpus: spec.limits.cpus.map(|c| c.ceil().max(1.0) as u32).unwrap_or(1),
            net: spec.network.kind() != addon_runners::egress::NetKind::None,
            pids: spec.limits.pids,
            memory: spec.limits.memory,
            tsc_khz: tsc_khz(),
            cwd: inside.work.clone(),
            nonce: nonce.clone(),
            run_dir: spec.dirs.work.clone(),
            tmpfs: addon_runners::sandbox::view::TmpfsBound::of(&spec.limits).options(),
            helper: helper.clone(),
            nix_store,
            extra_args: self.settings.extra_args.clone(),
        };
        let plan_json = serde_json::to_string(&plan).map_err(|e| setup(e.to_string()))?;
        let mut vm = spec.clone();
        vm.sandbox = Some(kind);
        vm.args = [exec::COMMAND.to_string(), plan_json, "--".to_string(), guest_program.display().to_string()]
            .into_iter()
            .chain(spec.args.iter().cloned())
            .collect();
        // The host's envelope holds QEMU: the guest's memory and QEMU's own, its threads.
        // Without control groups the bound is on address space, which QEMU reserves far beyond
        // what it uses (1.5 GiB for a 1.1 GiB guest, measured; 8 MiB a thread).
        let slack = match self.sandboxes.enforcement() {
            addon_runners::limits::Enforcement::Rlimits { .. } => ADDRESS_SPACE_SLACK_MIB,
            addon_runners::limits::Enforcement::Cgroups { .. } => 0,
        };
        vm.limits.memory = Some((plan.guest_mib + self.settings.qemu_overhead_mib + slack) << 20);
        vm.limits.pids = Some(QEMU_TASKS);
        let helper_dir = helper.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut extra_ro = vec![helper_dir, ready.boot.dir.clone()];
        if nix_store {
            extra_ro.push(PathBuf::from(addon_runners::nix::STORE));
        }
        if ready.accel == "kvm" {
            extra_ro.push(PathBuf::from("/dev/kvm"));
        }
        let started = host::start(NAME, self.sandboxes.clone(), self.runs.clone(), vm, helper, extra_ro).await?;
        self.nonces.lock().unwrap_or_else(|e| e.into_inner()).insert(spec.run_id.clone(), nonce.clone());
        // The helper's report (the guest's OOM kills and refused forks) becomes the run's.
        let mut events = started.events;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let (nonces, run_id) = (self.nonces.clone(), spec.run_id.clone());
        let limit = spec.limits.pids;
        tokio::spawn(async move {
            let mark = format!("{} {nonce} ", exec::REPORT);
            let (mut oom, mut pids) = (0u64, 0u64);
            while let Some(e) = events.recv().await {
                let e = match e {
                    RunEvent::Stderr(line) if line.starts_with(mark.as_bytes()) => {
                        let text = String::from_utf8_lossy(&line[mark.len()..]).to_string();
                        for w in text.split_whitespace() {
                            match w.split_once('=') {
                                Some(("oom", n)) => oom = n.parse().unwrap_or(0),
                                Some(("pids", n)) => pids = n.parse().unwrap_or(0),
                                _ => {}
                            }
                        }
                        continue;
                    }
                    RunEvent::Exited(mut exit) => {
                        exit.usage.oom_kills += oom;
                        exit.usage.pids_refused += pids;
                        if pids > 0 && matches!(exit.kind, ExitKind::Code(_)) {
                            exit.kind = ExitKind::Limit(format!(
                                "process limit ({}) reached in the VM",
                                limit.map(|l| l.to_string()).unwrap_or_default()
                            ));
                        }
                        nonces.lock().unwrap_or_else(|e| e.into_inner()).remove(&run_id);
                        RunEvent::Exited(exit)
                    }
                    other => other,
                };
                if tx.send(e).await.is_err() {
                    break;
                }
            }
        });
        Ok(Started { sandbox: format!("{NAME}-{}", ready.accel), events: rx })
    }

    async fn cache_key(&self, spec: &BuildSpec) -> Result<Option<BTreeMap<String, String>>, RunnerError> {
        match spec.section {
            Section::Nix => self.nix.cache_key(spec).await,
            _ => Ok(None),
        }
    }

    async fn build(&self, spec: &BuildSpec, log: LogSink) -> Result<Artifact, RunnerError> {
        self.nix.build(spec, log).await
    }

    async fn artifact_valid(&self, artifact: &Artifact) -> bool {
        self.nix.artifact_valid(artifact).await
    }

    /// With grace, only the helper is told (it passes the stop to the guest, whose init sends
    /// SIGTERM to the addon's processes; QEMU would quit at once on a SIGTERM of its own); what
    /// is still running after `grace` is killed, QEMU and the guest with it.
    async fn stop(&self, run_id: &str, grace: Duration) -> Result<(), RunnerError> {
        let Some(pid) = self.runs.pid(run_id) else { return Ok(()) };
        let helper = (!grace.is_zero()).then(|| helper_below(pid)).flatten();
        let Some(helper) = helper else {
            self.runs.stop(run_id, Duration::ZERO);
            return Ok(());
        };
        // SAFETY: kill with a pid found below this run's sandbox process.
        unsafe { libc::kill(helper, libc::SIGTERM) };
        let (runs, run_id) = (self.runs.clone(), run_id.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if runs.pid(&run_id) == Some(pid) {
                runs.stop(&run_id, Duration::ZERO);
            }
        });
        Ok(())
    }
}

/// The helper (`vm-exec`) among the processes below `root`.
fn helper_below(root: i32) -> Option<i32> {
    addon_runners::procfs::descendants(root).into_iter().find(|pid| {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        cmd.split(|b| *b == 0).nth(1) == Some(exec::COMMAND.as_bytes())
    })
}

/// A random number from the kernel (or, should it fail, the clock's nanoseconds).
fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom into a buffer of its length.
    let got = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if got == 8 {
        u64::from_ne_bytes(b)
    } else {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
    }
}

/// The plugin around [`VmRunner`].
pub struct VmPlugin;

impl addon_runner_protocol::Plugin for VmPlugin {
    fn info(&self) -> RunnerInfo {
        VmRunner::new(VmSettings::default()).info()
    }

    fn configure(&self, config: &serde_json::Value) -> Result<Arc<dyn Runner>, Vec<addon_runner_protocol::FieldError>> {
        let settings: VmSettings = crate::parse_config(config)?;
        if !["auto", "kvm", "tcg"].contains(&settings.accel.as_str()) {
            return Err(vec![addon_runner_protocol::FieldError::new(
                "accel",
                format!("`{}` is not auto, kvm or tcg", settings.accel),
            )]);
        }
        if settings.memory_mib < 16 {
            return Err(vec![addon_runner_protocol::FieldError::new("memory-mib", "at least 16")]);
        }
        Ok(Arc::new(VmRunner::new(settings)))
    }
}
