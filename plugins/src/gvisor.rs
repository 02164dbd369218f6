//! The gVisor runner: trivial and nix addons under gVisor's user-space kernel (`runsc`), from an
//! OCI bundle made per run. Nix addons are built as the nix-flake runner builds them (`nix
//! build`, cached by the engine); their program runs under gVisor with `/nix/store` readable. The root is the same minimal view the bwrap sandbox builds (`/usr` and
//! the merged-/usr links, a minimal `/etc` with an engine-made `passwd`, the run's directories at
//! `/mnt/{work,output,cache,home}`), served by gVisor's gofer; the addon runs as an unprivileged
//! identity with no capabilities and no new privileges, with only `lo` when it did not ask for
//! network (`--network=none`), no host unix sockets (`--host-uds=none`), inside the run's control
//! group (memory, CPU, processes of the whole sandbox) with the output size watched.
//!
//! Why `runsc run` and not `runsc do`: `do` serves the whole host root (with its secrets) through
//! a memory overlay, so the addon's writes to its output would be lost, or, with the overlay off,
//! the addon could write anywhere on the host.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::unavailable;
use addon_descriptors::{normalise_relative, Section};
use addon_runners::egress::NetKind;
use addon_runners::host::{self, HostRuns};
use addon_runners::limits::Enforcement;
use addon_runners::nix::NixRunner;
use addon_runners::procfs::kill_tree;
use addon_runners::sandbox::ns::{Identity, NsPlan};
use addon_runners::sandbox::seccomp::HELPER_COMMAND;
use addon_runners::sandbox::view::{Inside, Step, View};
use addon_runners::sandbox::SandboxSettings;
use addon_runners::{
    Artifact, Availability, BuildSpec, Capabilities, LogSink, Mounts, ProbeCache, RunEvent, Runner, RunnerError,
    RunnerInfo, Sandboxes, StartSpec, Started,
};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;

pub const NAME: &str = "gvisor";

/// Where the seccomp helper (this program) sits in the sandbox.
const HELPER_AT: &str = "/.addon-sandbox-exec";

/// Host tasks of gVisor itself (runsc, its gofer and sentry), on top of the addon's processes:
/// on the ptrace platform each of the addon's threads is a host task too, so the run's process
/// limit is the addon's plus this.
const RUNSC_TASKS: u64 = 160;

/// The plugin's configuration (`plugins.NAME.config`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct GvisorSettings {
    /// The runsc program.
    pub runsc: String,
    /// gVisor platform: `ptrace` (works everywhere), `systrap`, `kvm`; null: runsc's default.
    pub platform: Option<String>,
    /// Where runsc keeps container state.
    pub state_dir: PathBuf,
    /// Who addons run as (uid, and gid the same).
    pub uid: u32,
    /// More runsc flags (before the command).
    pub extra_args: Vec<String>,
    /// How nix addons are built (as `nix-runner` of the engine's configuration).
    pub nix: crate::PluginNix,
}

impl Default for GvisorSettings {
    fn default() -> Self {
        GvisorSettings {
            runsc: "runsc".into(),
            platform: None,
            state_dir: PathBuf::from("/run/addon-runner-gvisor"),
            uid: 2_147_000_000,
            extra_args: Vec::new(),
            nix: crate::PluginNix::default(),
        }
    }
}

/// What a bundle runs: the program (a host path under the run's directories or a store path),
/// its arguments and environment, and host paths it needs readable besides the view.
struct Process<'a> {
    program: &'a Path,
    args: &'a [String],
    env: &'a [(String, String)],
    extra_ro: &'a [PathBuf],
    /// Bounds of the private tmpfs mounts.
    tmpfs: addon_runners::sandbox::view::TmpfsBound,
}

#[derive(Debug)]
pub struct GvisorRunner {
    settings: GvisorSettings,
    runs: Arc<HostRuns>,
    /// runsc container id of each run.
    containers: Arc<Mutex<HashMap<String, String>>>,
    enforcement: Enforcement,
    /// A successful probe, kept; a failed one is tried again next time.
    probed: tokio::sync::Mutex<Option<Availability>>,
    /// Builds nix addons (and finds their program).
    nix: NixRunner,
}

impl GvisorRunner {
    pub fn new(settings: GvisorSettings) -> GvisorRunner {
        let probes = Arc::new(ProbeCache::default());
        let nix = settings.nix.runner(probes.clone(), Arc::new(Sandboxes::new(&SandboxSettings::default(), probes)));
        GvisorRunner {
            nix,
            settings,
            runs: Arc::default(),
            containers: Arc::default(),
            enforcement: addon_runners::limits::probe_enforcement(),
            probed: tokio::sync::Mutex::new(None),
        }
    }

    fn identity(&self) -> Identity {
        Identity { uid: self.settings.uid, gid: self.settings.uid }
    }

    /// runsc and its global flags.
    /// With a network (the host's, or an egress one), gVisor passes the addon's socket calls to
    /// the kernel in the sandbox's network namespace (`--network=host`, hostinet): the egress
    /// network's filter sees them there. gVisor's own network stack would send frames through a
    /// packet socket, which the filter does not see.
    fn runsc(&self, network: bool) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(&self.settings.runsc);
        c.arg(format!("--root={}", self.settings.state_dir.display()))
            .arg(if network { "--network=host" } else { "--network=none" })
            .arg("--host-uds=none")
            .arg("--ignore-cgroups");
        if let Some(p) = &self.settings.platform {
            c.arg(format!("--platform={p}"));
        }
        c.args(&self.settings.extra_args);
        c
    }

    async fn probe_now(&self) -> Availability {
        let version = match tokio::process::Command::new(&self.settings.runsc).arg("--version").output().await {
            Ok(o) if o.status.success() => {
                String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_string()
            }
            Ok(o) => {
                return unavailable(format!(
                    "`{} --version` failed: {}",
                    self.settings.runsc,
                    String::from_utf8_lossy(&o.stderr)
                ))
            }
            Err(e) => {
                return unavailable(format!("{}: {e} (apt-get install runsc)", self.settings.runsc));
            }
        };
        if !addon_runners::sandbox::is_root() {
            return unavailable(format!(
                "{version}: this plugin runs gVisor as root (rootless runsc is not supported)"
            ));
        }
        // A real start of /bin/true under the real configuration: a kernel or platform gVisor
        // cannot use says so here, not at run time.
        let dir = match tempfile::Builder::new().prefix("addon-gvisor-probe-").tempdir() {
            Ok(d) => d,
            Err(e) => return unavailable(format!("cannot make a probe directory: {e}")),
        };
        let d = dir.path();
        let dirs = ["work", "output", "cache", "home", "scratch"].map(|n| d.join(n));
        for x in &dirs {
            let _ = fs_err::create_dir(x);
        }
        let mounts =
            Mounts { work: dirs[0].clone(), output: dirs[1].clone(), cache: dirs[2].clone(), home: dirs[3].clone() };
        let id = host::container_id("probe");
        let result = async {
            let probe = Process {
                program: Path::new("/bin/true"),
                args: &[],
                env: &[],
                extra_ro: &[],
                tmpfs: Default::default(),
            };
            let bundle = self.bundle(&dirs[4], &mounts, NetKind::None, None, probe).map_err(|e| e.to_string())?;
            let mut cmd = self.runsc(false);
            cmd.arg("run").arg(format!("--bundle={}", bundle.display())).arg(&id);
            cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
            let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
                .await
                .map_err(|_| "runsc did not finish a /bin/true within 20 s".to_string())?
                .map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(format!("runsc could not run /bin/true: {}", String::from_utf8_lossy(&out.stderr).trim()));
            }
            Ok(())
        }
        .await;
        self.delete(&id).await;
        match result {
            Ok(()) => {
                // runsc's default was ptrace until systrap took its place (mid-2023).
                let release: u32 = version
                    .split(|c: char| !c.is_ascii_digit())
                    .find(|w| w.len() == 8)
                    .and_then(|w| w.parse().ok())
                    .unwrap_or(0);
                let default = if release != 0 && release < 20230601 { "ptrace" } else { "default" };
                let platform = self.settings.platform.as_deref().unwrap_or(default);
                // What the administrator can change: measured with the rotate bench (a Guile addon
                // starting qpdf and pdftotext), a bare `runsc run` under ptrace is ~9x bwrap.
                let hint = if platform == "ptrace" {
                    "; the ptrace platform (runsc's default) stops each system call in the host kernel, so \
                     programs that make many (interpreters starting tools) run about 10x slower than in bwrap: \
                     set the plugin's `config: {platform: kvm}` where /dev/kvm works, or `systrap` with runsc \
                     2023 or later"
                } else {
                    ""
                };
                Availability {
                    available: true,
                    version: Some(version.clone()),
                    detail: format!(
                        "{version}, platform {platform}; runs as uid {} without capabilities, {}{hint}",
                        self.settings.uid,
                        self.enforcement.describe()
                    ),
                }
            }
            Err(e) => unavailable(e),
        }
    }

    /// Writes an OCI bundle for `process` under `scratch`; returns its directory.
    fn bundle(
        &self,
        scratch: &Path,
        mounts: &Mounts,
        net: NetKind,
        netns: Option<&Path>,
        process: Process<'_>,
    ) -> Result<PathBuf, BundleError> {
        let Process { program, args, env, extra_ro, tmpfs } = process;
        let inside = Mounts::mnt();
        let id = self.identity();
        let view = View::host_program(mounts, &inside, net, extra_ro, Inside { uid: id.uid, gid: id.gid }, tmpfs);
        let bundle = scratch.join("gvisor-bundle");
        let rootfs = bundle.join("rootfs");
        let files = bundle.join("files");
        let io = BundleError::Io;
        fs_err::create_dir_all(&rootfs).map_err(io)?;
        fs_err::create_dir_all(&files).map_err(io)?;
        let in_root = |p: &Path| rootfs.join(p.strip_prefix("/").unwrap_or(p));
        let mut oci_mounts = vec![
            json!({"destination": "/proc", "type": "proc", "source": "proc"}),
            json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}),
        ];
        let make_point = |at: &Path, dir: bool| -> Result<(), BundleError> {
            let p = in_root(at);
            if let Some(parent) = p.parent() {
                fs_err::create_dir_all(parent).map_err(io)?;
            }
            if dir {
                fs_err::create_dir_all(&p).map_err(io)
            } else {
                fs_err::write(&p, b"").map_err(io)
            }
        };
        for (n, step) in view.steps.iter().enumerate() {
            match step {
                Step::RoBind(p) => {
                    make_point(p, p.is_dir())?;
                    oci_mounts.push(json!({"destination": p, "type": "bind", "source": p, "options": ["rbind", "ro", "nosuid", "nodev"]}));
                }
                Step::Bind { src, at } => {
                    make_point(at, true)?;
                    oci_mounts.push(json!({"destination": at, "type": "bind", "source": src, "options": ["rbind", "rw", "nosuid", "nodev"]}));
                }
                Step::Symlink { target, at } => {
                    let p = in_root(at);
                    if fs_err::symlink_metadata(&p).is_err() {
                        fs_err::os::unix::fs::symlink(target, &p).map_err(io)?;
                    }
                }
                Step::Dir(p) => make_point(p, true)?,
                Step::File { at, contents } => {
                    let f = files.join(format!("{n}"));
                    fs_err::write(&f, contents).map_err(io)?;
                    make_point(at, false)?;
                    oci_mounts
                        .push(json!({"destination": at, "type": "bind", "source": f, "options": ["rbind", "ro"]}));
                }
                Step::Tmpfs { at: p, bound } => {
                    make_point(p, true)?;
                    let mut options = vec!["nosuid".to_string(), "nodev".to_string()];
                    options.extend(bound.options().split(',').map(str::to_string));
                    oci_mounts.push(json!({"destination": p, "type": "tmpfs", "source": "tmpfs", "options": options}));
                }
                Step::Dev | Step::Proc => {}
            }
        }
        // The program starts through this plugin's own binary, which installs the engine's
        // seccomp filter inside gVisor (runsc of 2022 ignores an OCI seccomp profile) and execs it.
        let helper = std::env::current_exe().map_err(BundleError::OwnProgram)?;
        make_point(Path::new(HELPER_AT), false)?;
        oci_mounts
            .push(json!({"destination": HELPER_AT, "type": "bind", "source": helper, "options": ["rbind", "ro"]}));
        let argv: Vec<String> = [HELPER_AT.to_string(), HELPER_COMMAND.to_string()]
            .into_iter()
            .chain(std::iter::once(mounts.translate(program, &inside).display().to_string()))
            .chain(args.iter().cloned())
            .collect();
        let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        // With the host's network, the sandbox stays in the host's network namespace (runsc
        // --network=host); with an egress network it joins the one the engine made (by path);
        // without, it gets its own with only `lo` (--network=none).
        let mut namespaces =
            vec![json!({"type": "pid"}), json!({"type": "ipc"}), json!({"type": "uts"}), json!({"type": "mount"})];
        match (net, netns) {
            (NetKind::Host, _) => {}
            (NetKind::Egress, Some(path)) => namespaces.push(json!({"type": "network", "path": path})),
            _ => namespaces.push(json!({"type": "network"})),
        }
        let config = json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": id.uid, "gid": id.gid},
                "args": argv,
                "env": env,
                "cwd": inside.work,
                "capabilities": {"bounding": [], "effective": [], "inheritable": [], "permitted": [], "ambient": []},
                "noNewPrivileges": true,
                "rlimits": [
                    {"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 1024},
                    {"type": "RLIMIT_CORE", "hard": 0, "soft": 0}
                ]
            },
            "root": {"path": "rootfs", "readonly": true},
            "hostname": "addon",
            "mounts": oci_mounts,
            "linux": {
                "namespaces": namespaces,
                "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
                "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus"]
            }
        });
        fs_err::write(bundle.join("config.json"), serde_json::to_vec_pretty(&config).unwrap_or_default())
            .map_err(io)?;
        Ok(bundle)
    }

    async fn delete(&self, id: &str) {
        let mut c = tokio::process::Command::new(&self.settings.runsc);
        c.arg(format!("--root={}", self.settings.state_dir.display())).args(["delete", "--force", id]);
        c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        let _ = tokio::time::timeout(Duration::from_secs(10), c.status()).await;
    }
}

/// Why a run's OCI bundle could not be written.
#[derive(Debug, thiserror::Error)]
enum BundleError {
    /// fs-err's error names the path.
    #[error("making the bundle: {0}")]
    Io(#[source] std::io::Error),
    #[error("finding this plugin's program: {0}")]
    OwnProgram(#[source] std::io::Error),
}

#[async_trait::async_trait]
impl Runner for GvisorRunner {
    fn info(&self) -> RunnerInfo {
        let capabilities = Capabilities {
            builds: true,
            isolates_network: true,
            isolates_filesystem: true,
            // The plugin runs as root; the egress network needs slirp4netns and nft here.
            egress: addon_runners::egress::tools().is_ok(),
            ..Capabilities::SHIPPED
        };
        RunnerInfo::shipped(NAME, &[Section::Trivial, Section::Nix], capabilities)
    }

    /// Whether runsc starts a sandbox here: a trial start costs 130-200 ms under ptrace, so a
    /// success is kept, in memory and (for the next `addon` process, which starts this plugin
    /// anew) in the state directory, while runsc's binary, this plugin's, the settings, the
    /// kernel and the user stay the same, for at most 5 minutes. A failure is tried again.
    async fn probe(&self) -> Availability {
        let mut probed = self.probed.lock().await;
        if let Some(a) = probed.as_ref() {
            return a.clone();
        }
        let runsc = which::which(&self.settings.runsc).ok();
        let s = &self.settings;
        let key = format!("{}|{:?}|{}|{:?}|{}", s.runsc, s.platform, s.uid, s.extra_args, s.state_dir.display());
        let cache = ProbeCache::new(Some(s.state_dir.join("probes")));
        let p = cache
            .get_async("gvisor", &key, runsc.as_deref(), async {
                let a = self.probe_now().await;
                addon_runners::Probe { name: "gvisor", available: a.available, detail: a.detail, version: a.version }
            })
            .await;
        let a = Availability { available: p.available, version: p.version, detail: p.detail };
        if a.available {
            *probed = Some(a.clone());
        }
        a
    }

    async fn start(&self, spec: StartSpec) -> Result<Started, RunnerError> {
        let setup = |m: String| RunnerError::setup(NAME, m);
        let (program, extra_ro) = match spec.section {
            Section::Nix => {
                let program = self.nix.program(&spec).await.map_err(|e| setup(e.to_string()))?;
                (program, vec![PathBuf::from(addon_runners::nix::STORE)])
            }
            Section::Trivial => {
                let exec = spec
                    .descriptor
                    .trivial_exec()
                    .ok_or_else(|| setup(format!("{} has no runner.trivial.exec", spec.addon.label())))?;
                let rel = normalise_relative(exec).map_err(|why| setup(format!("exec `{exec}` {why}")))?;
                // Made executable inside the addon only (a link to a host file is refused).
                addon_tree::make_executable(&spec.dirs.addon, std::path::Path::new(&rel))
                    .map_err(|e| setup(e.to_string()))?;
                (spec.dirs.addon.join(rel), Vec::new())
            }
            other => return Err(setup(format!("serves trivial and nix addons, not {other}"))),
        };
        let net = spec.network.kind();
        let mounts = spec.mounts();
        addon_runners::sandbox::claim(&[&mounts.work, &mounts.output, &mounts.cache, &mounts.home], self.identity())
            .map_err(|e| setup(format!("giving the run's directories to uid {}: {e}", self.settings.uid)))?;
        fs_err::create_dir_all(&self.settings.state_dir)
            .map_err(|e| setup(format!("{}: {e}", self.settings.state_dir.display())))?;
        // An egress network: a namespace the plugin holds (root), given the network, which the
        // sandbox joins by path.
        let egress = match &spec.network {
            addon_runners::egress::Network::Egress(e) => {
                addon_runners::egress::tools().map_err(|e| setup(e.to_string()))?;
                fs_err::create_dir_all(&spec.dirs.scratch).map_err(|e| setup(e.to_string()))?;
                let (e, at) = (e.clone(), spec.dirs.scratch.clone());
                let held = tokio::task::spawn_blocking(move || addon_runners::egress::EgressNet::hold(&e, &at))
                    .await
                    .map_err(|e| setup(e.to_string()))?
                    .map_err(|e| setup(e.to_string()))?;
                Some(held)
            }
            _ => None,
        };
        let env = spec.env_in(&Mounts::mnt(), false);
        let bundle = self
            .bundle(
                &spec.dirs.scratch,
                &mounts,
                net,
                egress.as_ref().and_then(|e| e.path()),
                Process {
                    program: &program,
                    args: &spec.args,
                    env: &env,
                    extra_ro: &extra_ro,
                    tmpfs: addon_runners::sandbox::view::TmpfsBound::of(&spec.limits),
                },
            )
            .map_err(|e| setup(e.to_string()))?;
        let id = host::container_id(&spec.run_id);
        let mut enveloped = spec.clone();
        enveloped.limits.pids = spec.limits.pids.map(|p| p + RUNSC_TASKS);
        let mut envelope = host::envelope_for(NAME, &enveloped, &self.enforcement)?;
        let mut cmd = self.runsc(net != NetKind::None);
        cmd.arg("run").arg(format!("--bundle={}", bundle.display())).arg(&id);
        // runsc and its sandbox join the run's control group before exec; the process dies with
        // this plugin (the sandbox follows it; Reap removes what a SIGKILL leaves).
        NsPlan::prepare_only().join_cgroups(&envelope.cgroup_procs()).install(&mut cmd);
        let noise: addon_runners::NoiseFilter = Arc::new(|_: &str| false);
        let spawned = host::spawn(NAME, &self.runs, &spec, cmd, &program.display().to_string(), &mut envelope, noise)?;
        let mut events = spawned.watch(&self.runs, &spec, envelope, egress);
        self.containers.lock().unwrap_or_else(|e| e.into_inner()).insert(spec.run_id.clone(), id.clone());
        // Forward the events; once the run ended, delete its container state.
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let (containers, run_id, runsc, state) = (
            self.containers.clone(),
            spec.run_id.clone(),
            self.settings.runsc.clone(),
            self.settings.state_dir.clone(),
        );
        tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                let exited = matches!(e, RunEvent::Exited(_));
                let _ = tx.send(e).await;
                if exited {
                    // `runsc run` destroys its container when the addon ends; what a kill left is
                    // removed here, after the exit is told (a delete costs ~30 ms even when
                    // there is nothing to delete).
                    let mut c = tokio::process::Command::new(&runsc);
                    c.arg(format!("--root={}", state.display())).args(["delete", "--force", &id]);
                    c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
                    let _ = tokio::time::timeout(Duration::from_secs(10), c.status()).await;
                    containers.lock().unwrap_or_else(|e| e.into_inner()).remove(&run_id);
                }
            }
        });
        Ok(Started { sandbox: NAME.into(), events: rx })
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

    async fn stop(&self, run_id: &str, grace: Duration) -> Result<(), RunnerError> {
        let Some(pid) = self.runs.pid(run_id) else { return Ok(()) };
        let id = self.containers.lock().unwrap_or_else(|e| e.into_inner()).get(run_id).cloned();
        if !grace.is_zero() {
            if let Some(id) = &id {
                // SIGTERM to every process of the container, inside gVisor.
                let mut c = tokio::process::Command::new(&self.settings.runsc);
                c.arg(format!("--root={}", self.settings.state_dir.display())).args(["kill", "--all", id, "TERM"]);
                c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
                let _ = tokio::time::timeout(Duration::from_secs(5), c.status()).await;
            }
            let runs = self.runs.clone();
            let run_id = run_id.to_string();
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                if runs.pid(&run_id) == Some(pid) {
                    kill_tree(pid, libc::SIGKILL, true);
                }
            });
            return Ok(());
        }
        kill_tree(pid, libc::SIGKILL, true);
        Ok(())
    }

    async fn reap(&self) -> Result<u64, RunnerError> {
        let out = tokio::process::Command::new(&self.settings.runsc)
            .arg(format!("--root={}", self.settings.state_dir.display()))
            .args(["list", "--quiet"])
            .output()
            .await;
        let Ok(out) = out else { return Ok(0) };
        let mut removed = 0;
        for id in String::from_utf8_lossy(&out.stdout).lines().map(str::trim).filter(|l| l.starts_with("addon-")) {
            if host::orphaned(id) {
                tracing::warn!("removing gVisor container {id} left by a dead plugin process");
                self.delete(id).await;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// The plugin around [`GvisorRunner`].
pub struct GvisorPlugin;

impl addon_runner_protocol::Plugin for GvisorPlugin {
    fn info(&self) -> RunnerInfo {
        GvisorRunner::new(GvisorSettings::default()).info()
    }

    fn configure(&self, config: &serde_json::Value) -> Result<Arc<dyn Runner>, Vec<addon_runner_protocol::FieldError>> {
        let settings: GvisorSettings = crate::parse_config(config)?;
        if let Some(p) = &settings.platform {
            if !["ptrace", "systrap", "kvm"].contains(&p.as_str()) {
                return Err(vec![addon_runner_protocol::FieldError::new(
                    "platform",
                    format!("`{p}` is not ptrace, systrap or kvm"),
                )]);
            }
        }
        if settings.uid == 0 {
            return Err(vec![addon_runner_protocol::FieldError::new("uid", "addons never run as root")]);
        }
        Ok(Arc::new(GvisorRunner::new(settings)))
    }
}
