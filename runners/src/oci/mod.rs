//! The `oci` runner: docker addons without a daemon. The image is got once (built from the
//! addon's Dockerfile with buildah, or copied from a local image store or a registry with
//! skopeo), unpacked with umoci into the engine's cache entry, and every run starts it with an
//! OCI runtime (crun or runc, whichever works here) from a bundle made for the run:
//!
//! - the cached root filesystem stays read-only; a writable overlay on a tmpfs (bounded by the
//!   output size, charged to the run's memory) takes the run's writes to the image and is gone
//!   with the run, as a container's layer is;
//! - the run's work, output and cache directories at `/mnt/work`, `/mnt/output`, `/mnt/cache`,
//!   the environment and arguments as the docker runner passes them, the image's own `HOME`;
//! - a user namespace always: as root, the image's ids are moved up to `uid-base` (its root is
//!   not the host's); rootless, the engine's own user is the container's root;
//! - only `lo` when the addon asked for no network; no new privileges, the docker runner's six
//!   capabilities (inside the user namespace), the engine's seccomp filter as an OCI profile;
//! - the runtime runs inside the run's envelope (its control group, or rlimits), in a PID
//!   namespace whose init dies with the engine, so nothing outlives a run or a killed engine.

mod build_net;
pub mod bundle;
pub mod dockerfile;
mod fetch;
mod groups;
pub mod image;

pub use groups::hybrid_v2_mount;
use groups::{container_cgroup, remove_run_groups};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use addon_descriptors::{normalise_relative, Section};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use crate::host::{self, HostRuns};
use crate::limits::Enforcement;
use crate::probe::{Probe, ProbeCache};
use crate::process::LogSink;
use crate::runner::{
    Artifact, ArtifactData, Availability, BuildFailed, BuildSpec, Capabilities, RunEvent, Runner, RunnerError,
    RunnerInfo, StartSpec, Started,
};
use crate::sandbox::ns::{Identity, NsPlan, OverlayPlan};
use crate::sandbox::{is_root, Sandboxes};
use crate::settings::{
    check_build_network, deprecated_build_network, BuildNetwork, ComponentSettings, HumanDuration, SettingError,
    DEFAULT_BUILD_TIMEOUT,
};
use bundle::{Binds, ImageConfig, RunConfig};

pub const NAME: &str = "oci";

/// How many ids a root engine maps into each container (from `uid-base` up).
pub const ID_RANGE: u32 = 65536;

/// Where `image:` references may come from besides a registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ImageStore {
    None,
    /// The Docker daemon's images (read at build time only, with `skopeo copy docker-daemon:`).
    Docker,
    /// Podman's and buildah's image storage (`containers-storage:`).
    Podman,
}

/// When an image (an `image:` reference, a Dockerfile's base) may be pulled from a registry:
/// always after the local stores, and only when builds have a network (`network.build`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Pull {
    Never,
    /// Only for addons that ask for network.
    IfNetworking,
    /// When no local store has it (fetching the addon's image is not running the addon: the
    /// reference is the descriptor's text, so nothing of a run's data can leave through it).
    #[serde(alias = "always")]
    Missing,
}

/// The `oci` runner's settings (`oci-runner:` of the engine configuration): docker addons
/// without a daemon, from a cached root filesystem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct OciSettings {
    /// OCI runtime: `auto` (crun, then runc: the first that starts a container here), `crun`,
    /// `runc`, or a path.
    pub runtime: String,
    /// The Dockerfile builder (buildah; rootless when the engine is not root).
    #[serde(rename = "buildah-binary")]
    pub buildah: String,
    /// Copies `image:` references from local stores and registries.
    #[serde(rename = "skopeo-binary")]
    pub skopeo: String,
    /// Unpacks images into root filesystems.
    #[serde(rename = "umoci-binary")]
    pub umoci: String,
    /// A local image store `image:` references are taken from first: `none`, `docker` (read
    /// once, when the image is first unpacked) or `podman`.
    pub image_store: ImageStore,
    /// When an image (`image:`, a Dockerfile's base) may be pulled from a registry, after the
    /// local stores and only when builds have a network (`network.build`): `missing` (the
    /// default: when no local store has it; `always` is an older name of it), `if-networking`
    /// (only for addons that ask for network), `never`.
    pub pull: Pull,
    /// How long one build (a Dockerfile, or fetching and unpacking an image) may take.
    #[serde(with = "crate::settings::duration")]
    #[schemars(with = "HumanDuration")]
    pub build_timeout: Duration,
    /// Deprecated: `network.build` says what every runner's builds reach. When set, it is
    /// buildah's `--network` for this runner's builds, over it.
    #[serde(rename = "build-network")]
    #[schemars(skip)]
    pub build_network_setting: Option<String>,
    /// buildah's `--network` for Dockerfile builds, whatever the addon's `networking`
    /// (`egress`, `host` or `none`, from `network.build` of the configuration; `egress` is a
    /// network namespace of the engine's, see `fetch`).
    #[serde(skip)]
    pub build_network: String,
    /// Not a setting: the egress network of builds under `network.build: egress`.
    #[serde(skip)]
    pub build_egress: Option<crate::egress::Egress>,
    /// As root, container ids 0..65535 are host ids from this one up (never the host's root);
    /// Dockerfile builds use the 65536 ids after those.
    pub uid_base: u32,
    /// The runtime's state directory; null: `/run/addon-engine/oci` as root, else under the
    /// temp directory.
    pub state_dir: Option<PathBuf>,
}

impl Default for OciSettings {
    fn default() -> Self {
        OciSettings {
            runtime: "auto".into(),
            buildah: "buildah".into(),
            skopeo: "skopeo".into(),
            umoci: "umoci".into(),
            image_store: ImageStore::None,
            pull: Pull::Missing,
            build_timeout: DEFAULT_BUILD_TIMEOUT,
            build_network_setting: None,
            build_network: "egress".into(),
            build_egress: None,
            uid_base: 2_147_200_000,
            state_dir: None,
        }
    }
}

impl ComponentSettings for OciSettings {
    const KEY: &'static str = "oci-runner";

    fn check(&self) -> Result<(), SettingError> {
        if self.uid_base == 0 || u64::from(self.uid_base) + 2 * u64::from(ID_RANGE) > u64::from(u32::MAX) {
            return Err(SettingError::new(
                "uid-base",
                format!(
                    "{} must be above 0 with {} ids free above it (containers, then builds)",
                    self.uid_base,
                    2 * ID_RANGE
                ),
            ));
        }
        check_build_network(self.build_network_setting.as_deref())
    }

    fn warnings(&self) -> Vec<String> {
        deprecated_build_network(Self::KEY, self.build_network_setting.as_deref())
    }

    fn build_timeout(&self) -> Option<Duration> {
        Some(self.build_timeout)
    }
}

impl OciSettings {
    /// The settings as configured, made whole with the network of builds: an egress network of
    /// the build's own (the internet, never the host or its network), never the host's own
    /// namespace unless asked for.
    pub fn from_context(ctx: &crate::RunnerContext) -> OciSettings {
        let mut s: OciSettings = ctx.sections.get();
        s.build_egress = ctx.build_egress();
        s.build_network = match (&s.build_network_setting, ctx.build_network) {
            (Some(deprecated), _) => deprecated.clone(),
            (None, BuildNetwork::Egress) => "egress".into(),
            (None, BuildNetwork::Host) => "host".into(),
            (None, BuildNetwork::None) => "none".into(),
        };
        s
    }
}

/// The OCI runtime chosen here.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// `crun` or `runc` (what the result's `sandbox` says).
    pub name: String,
    pub path: PathBuf,
    pub version: String,
    /// What its probe found (who containers run as).
    pub detail: String,
}

#[derive(Debug)]
pub struct OciRunner {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: OciSettings,
    probes: Arc<ProbeCache>,
    sandboxes: Arc<Sandboxes>,
    runs: Arc<HostRuns>,
    reaped: OnceCell<u64>,
}

fn setup(message: impl Into<String>) -> RunnerError {
    RunnerError::setup(NAME, message)
}

/// No runtime works here (the runner's probe says why, at the runner's boundary).
fn unavailable(e: OciError) -> RunnerError {
    RunnerError::Unavailable { runner: NAME.into(), detail: e.to_string() }
}

/// What keeps the oci runner from getting an image or starting a container, before any tool's
/// log explains more (those failures are [`BuildFailed`]s with the tool's last lines).
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("probing the OCI runtime: {0}")]
    ProbeTask(#[source] tokio::task::JoinError),
    /// Why each candidate (crun, runc, or the one configured) does not work here.
    #[error("no OCI runtime starts a container here: {}", refused.join("; "))]
    NoRuntime { refused: Vec<String> },
    /// umoci, which every image needs, is missing or broken (its probe says how).
    #[error("{detail}")]
    Umoci { detail: String },
    #[error("{tool} is not installed; it {why} (apt-get install {})", base_name(tool))]
    NotInstalled { tool: String, why: &'static str },
    #[error(
        "crun cannot run build steps on this host (cgroups in hybrid mode: v1 controllers and a v2 \
         hierarchy with controllers) and runc, which can, is not installed (apt-get install runc)"
    )]
    NoBuildRuntime,
    #[error("runner.docker.image: {0}")]
    Image(#[source] addon_descriptors::ImageReferenceError),
    #[error("the build context: {0}")]
    Context(#[source] addon_tree::TreeError),
    /// The addon's Dockerfile (`runner.docker.build`), as the descriptor names it.
    #[error("{file}: {source}")]
    ReadDockerfile {
        file: String,
        #[source]
        source: addon_tree::TreeError,
    },
    #[error("{file}: {source}")]
    Dockerfile {
        file: String,
        #[source]
        source: dockerfile::DockerfileError,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: the OCI runtime's state directory is not a directory of this user (set oci-runner.state-dir)", dir.display())]
    StateNotOurs { dir: PathBuf },
    #[error(transparent)]
    Overlay(#[from] crate::sandbox::ns::OverlayError),
    #[error("cannot start: {0}")]
    Start(#[source] std::io::Error),
    #[error("did not finish within {}", crate::process::human_secs(*timeout))]
    TimedOut { timeout: Duration },
    #[error("{0}")]
    Wait(#[source] std::io::Error),
}

impl OciError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OciError + '_ {
        move |source| OciError::Io { path: path.to_path_buf(), source }
    }
}

/// A step of getting the image that failed before any tool ran (the error is the message).
impl From<OciError> for BuildFailed {
    fn from(e: OciError) -> BuildFailed {
        BuildFailed::from(e.to_string())
    }
}

impl OciRunner {
    /// Whether this engine gives oci addons egress networks: slirp4netns and nft, and for an
    /// unprivileged engine a usable /dev/net/tun. As root the container joins a network
    /// namespace the engine made; otherwise it shares the runtime's, made in the engine's user
    /// namespace and given the network while the runtime waits.
    pub fn gives_egress(&self) -> Result<(), String> {
        crate::egress::tools().map(|_| ()).map_err(|e| e.to_string())?;
        if crate::sandbox::is_root() {
            Ok(())
        } else {
            crate::egress::tun_usable()
        }
    }

    pub fn new(settings: OciSettings, probes: Arc<ProbeCache>, sandboxes: Arc<Sandboxes>) -> OciRunner {
        OciRunner {
            inner: Arc::new(Inner { settings, probes, sandboxes, runs: Arc::default(), reaped: OnceCell::new() }),
        }
    }

    /// The id mapping of containers: `(base, size)` as root; None rootless (the engine's user is
    /// the container's root, in a user namespace the engine makes).
    fn id_map(&self) -> Option<(u32, u32)> {
        is_root().then_some((self.inner.settings.uid_base, ID_RANGE))
    }

    /// An empty tree (only the cgroup file system's mount point, `fs/cgroup`) that builds given
    /// an egress network see as /sys.
    fn empty_sys(&self) -> std::io::Result<PathBuf> {
        let dir = self.state_dir().join("empty-sys");
        fs_err::create_dir_all(dir.join("fs/cgroup"))?;
        Ok(dir)
    }

    fn state_dir(&self) -> PathBuf {
        self.inner.settings.state_dir.clone().unwrap_or_else(|| {
            if is_root() {
                PathBuf::from("/run/addon-engine/oci")
            } else if let Some(run) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).filter(|d| owned_dir(d)) {
                run.join("addon-engine-oci")
            } else {
                std::env::temp_dir().join(format!("addon-engine-oci-{}", Identity::current().uid))
            }
        })
    }

    /// The runtime that works here, with why the others do not.
    async fn runtime(&self) -> Result<(Runtime, Vec<String>), OciError> {
        let me = OciRunner { inner: self.inner.clone() };
        tokio::task::spawn_blocking(move || me.runtime_blocking()).await.map_err(OciError::ProbeTask)?
    }

    fn runtime_blocking(&self) -> Result<(Runtime, Vec<String>), OciError> {
        let s = &self.inner.settings;
        let candidates: Vec<&str> = if s.runtime == "auto" { vec!["crun", "runc"] } else { vec![s.runtime.as_str()] };
        let mut refused = Vec::new();
        for candidate in candidates {
            let Ok(path) = which::which(candidate) else {
                refused.push(format!("{candidate}: not installed (apt-get install {})", base_name(candidate)));
                continue;
            };
            let name = base_name(candidate);
            let probe_name: &'static str = match name.as_str() {
                "crun" => "oci-crun",
                "runc" => "oci-runc",
                _ => "oci-runtime",
            };
            let settings = format!("{} {:?} {}", path.display(), self.id_map(), self.state_dir().display());
            let p = self.inner.probes.get(probe_name, &settings, Some(&path), || self.trial(&name, &path));
            let version = p.version.clone().unwrap_or_else(|| name.clone());
            if p.available {
                return Ok((Runtime { name, path, version, detail: p.detail }, refused));
            }
            refused.push(format!("{version}: {}", p.detail));
        }
        Err(OciError::NoRuntime { refused })
    }

    /// A real start of `/bin/true` (the host's, bound read-only) through the same bundle, overlay
    /// and namespaces as a run: a runtime that cannot work here (crun on hybrid cgroups) says so
    /// now, not at an addon's run.
    fn trial(&self, name: &str, path: &Path) -> Probe {
        let version =
            crate::sandbox::version_of(path).map(|v| v.replace(" version", "")).unwrap_or_else(|| name.to_string());
        let fail =
            |why: String| Probe { name: "oci-runtime", available: false, detail: why, version: Some(version.clone()) };
        let dir = match tempfile::Builder::new().prefix("addon-oci-probe-").tempdir() {
            Ok(d) => d,
            Err(e) => return fail(format!("cannot make a probe directory: {e}")),
        };
        let d = dir.path();
        let lower = d.join("lower");
        for sub in ["lower", "work", "bundle"] {
            if let Err(e) = fs_err::create_dir_all(d.join(sub)) {
                return fail(format!("{}: {e}", d.join(sub).display()));
            }
        }
        let _ = fs_err::write(d.join("hosts"), "127.0.0.1 localhost\n");
        // As a run's, whatever the engine's umask: the container's root enters them.
        for (p, mode) in [(d.join("work"), 0o755), (d.join("hosts"), 0o644), (lower.clone(), 0o755)] {
            let _ = fs_err::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(mode));
        }
        if let Some((base, _)) = self.id_map() {
            // The probe's root belongs to the container's root, as an unpacked image's does.
            if let Err(e) = std::os::unix::fs::chown(&lower, Some(base), Some(base)) {
                return fail(format!("{}: {e}", lower.display()));
            }
        }
        let user = bundle::User { uid: 0, gid: 0, additional_gids: Vec::new(), home: "/".into() };
        let argv = vec!["/bin/true".to_string()];
        let id = host::container_id("probe");
        let root = mountpoint(&self.state_dir(), &id).join("root");
        let mut config = bundle::config_json(&RunConfig {
            root: &root,
            argv: &argv,
            env: &["PATH=/usr/bin:/bin".to_string()],
            user: &user,
            binds: Binds {
                work: &d.join("work"),
                output: &d.join("work"),
                cache: &d.join("work"),
                hosts: &d.join("hosts"),
            },
            network: bundle::Net::None,
            id_map: self.id_map(),
            rlimits: &[],
            cgroup: None,
        });
        if let Some(mounts) = config["mounts"].as_array_mut() {
            for host_dir in ["/usr", "/bin", "/lib", "/lib64", "/etc/ld.so.cache"] {
                if Path::new(host_dir).exists() {
                    mounts.push(serde_json::json!({"destination": host_dir, "type": "bind", "source": host_dir, "options": ["rbind", "ro"]}));
                }
            }
        }
        let bundle_dir = d.join("bundle");
        if let Err(e) = fs_err::write(bundle_dir.join("config.json"), config.to_string()) {
            return fail(e.to_string());
        }
        let state = self.state_dir();
        let root = mountpoint(&state, &id);
        if let Err(e) = make_state(&state).and_then(|()| fs_err::create_dir_all(&root).map_err(OciError::io(&root))) {
            return fail(e.to_string());
        }
        let cmd = match self.command(name, path, &state, &bundle_dir, &id, &lower, 16 << 20, &[], None) {
            Ok(c) => c,
            Err(e) => return fail(e.to_string()),
        };
        let mut cmd = cmd.into_std();
        cmd.stdin(std::process::Stdio::null());
        let out = run_with_timeout(cmd, Duration::from_secs(20));
        let _ = fs_err::remove_dir(mountpoint(&state, &id));
        let out = match out {
            Ok(o) => o,
            Err(e) => return fail(e.to_string()),
        };
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let why = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no message").trim().to_string();
            return fail(format!("could not start a container here ({}): {why}", out.status));
        }
        let who = match self.id_map() {
            Some((base, size)) => {
                format!("as root; containers in a user namespace as host ids {base}-{}", base + size - 1)
            }
            None if name == "crun" => "rootless; the engine's user is the container's root, in a user namespace; without control groups memory is limited as address space".to_string(),
            None => "rootless; the engine's user is the container's root, in a user namespace; without control groups the memory limit is not enforced (runc's init cannot run under an address-space limit; crun's can)".to_string(),
        };
        let who = match hybrid_v2_mount() {
            Some(v2) if name == "crun" => format!(
                "{who}; cgroups are hybrid here, so crun runs with {} covered and makes no groups (the run's envelope holds the limits), and builds use runc",
                v2.display()
            ),
            _ => who,
        };
        Probe::ok("oci-runtime", format!("{version} ({who})"), Some(version.clone()))
    }

    /// The runtime's command for one container, prepared to run inside the run's envelope (its
    /// control group), in a PID namespace that dies with the engine, with the overlay root.
    #[allow(clippy::too_many_arguments)] // one container, all of what starts it
    fn command(
        &self,
        name: &str,
        path: &Path,
        state: &Path,
        bundle_dir: &Path,
        id: &str,
        lower: &Path,
        overlay_size: u64,
        cgroups: &[PathBuf],
        handoff: Option<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)>,
    ) -> Result<tokio::process::Command, OciError> {
        use std::os::unix::fs::MetadataExt;
        let meta = fs_err::metadata(lower).map_err(OciError::io(lower))?;
        let owner = if is_root() { (meta.uid(), meta.gid(), meta.mode()) } else { (0, 0, meta.mode()) };
        let overlay = OverlayPlan::new(lower, &mountpoint(state, id), overlay_size, owner, !is_root())?;
        let mut cmd = tokio::process::Command::new(path);
        cmd.arg(format!("--root={}", state.display()));
        if name == "crun" {
            // The envelope around the runtime holds the limits; crun need not make a group.
            cmd.arg("--cgroup-manager=disabled");
        }
        cmd.arg("run").arg(format!("--bundle={}", bundle_dir.display())).arg(id);
        // runc moves the container into its group below the envelope; crun makes none, so it
        // joins the envelope first and the container inherits it.
        let cgroups = if name == "crun" { cgroups } else { &[] };
        // A /proc of the new PID namespace: the runtime finds its children there by their pids.
        // With a handoff (an unprivileged engine's egress run): a network namespace of its own,
        // which the container shares, given the egress network while the runtime waits.
        let mut plan =
            NsPlan::new(handoff.is_some()).map_root().join_cgroups(cgroups).with_overlay(overlay).with_fresh_proc();
        if name == "crun" {
            if let Some(v2) = hybrid_v2_mount() {
                plan = plan.with_cover(v2);
            }
        }
        if let Some(ends) = handoff {
            plan = plan.with_handoff_ends(&mut cmd, ends);
        }
        plan.install(&mut cmd);
        Ok(cmd)
    }

    /// The versions of umoci (which every image needs), buildah and skopeo, for `addon runners`
    /// (remembered like the runtime's); Err for umoci when it is missing.
    fn tools(&self) -> Result<Vec<String>, OciError> {
        let s = &self.inner.settings;
        let mut out = Vec::new();
        for (probe_name, tool, why) in [
            ("oci-umoci", &s.umoci, "unpacks images"),
            ("oci-buildah", &s.buildah, "builds Dockerfiles"),
            ("oci-skopeo", &s.skopeo, "copies `image:` references"),
        ] {
            let p = match which::which(tool) {
                Ok(path) => {
                    self.inner.probes.get(probe_name, tool, Some(&path), || match crate::sandbox::version_of(&path) {
                        Some(v) => Probe::ok(probe_name, v.replace(" version", ""), None),
                        None => Probe::missing(probe_name, format!("{tool}: `--version` failed")),
                    })
                }
                Err(_) => {
                    Probe::missing(probe_name, format!("{tool} missing ({why}; apt-get install {})", base_name(tool)))
                }
            };
            if !p.available && probe_name == "oci-umoci" {
                return Err(OciError::Umoci { detail: p.detail });
            }
            out.push(p.detail);
        }
        Ok(out)
    }

    fn tool(&self, tool: &str, why: &'static str) -> Result<PathBuf, OciError> {
        which::which(tool).map_err(|_| OciError::NotInstalled { tool: tool.to_string(), why })
    }

    async fn reap_once(&self) {
        let me = OciRunner { inner: self.inner.clone() };
        self.inner.reaped.get_or_init(|| async move { me.reap_now().await }).await;
    }

    async fn reap_now(&self) -> u64 {
        let Ok((runtime, _)) = self.runtime().await else { return 0 };
        let state = self.state_dir();
        let Ok(entries) = fs_err::read_dir(&state) else { return 0 };
        let mut removed = 0;
        for e in fs_err::read_dir(state.join("roots")).into_iter().flatten().flatten() {
            if host::orphaned(&e.file_name().to_string_lossy()) {
                let _ = fs_err::remove_dir(e.path());
            }
        }
        crate::limits::remove_stale_groups(crate::limits::STALE_AFTER);
        for e in entries.flatten() {
            let id = e.file_name().to_string_lossy().to_string();
            if id.starts_with("addon-") && host::orphaned(&id) {
                tracing::warn!("removing OCI container {id} left by a dead engine");
                delete(&runtime.path, &state, &id).await;
                removed += 1;
            }
        }
        removed
    }
}

/// A containers tool (buildah, skopeo): a runtime directory that is not this user's (a job
/// server started by root's session, `runuser`) makes them fail, so it is left out then.
fn tool_command(program: &Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(program);
    if std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| !owned_dir(Path::new(&d))) {
        c.env_remove("XDG_RUNTIME_DIR");
    }
    c
}

/// A directory (not a link) of this user.
fn owned_dir(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    fs_err::symlink_metadata(p).is_ok_and(|m| m.is_dir() && m.uid() == Identity::current().uid)
}

fn writable_dir(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: access with a valid C string.
    p.is_dir() && unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0
}

fn base_name(tool: &str) -> String {
    Path::new(tool).file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| tool.to_string())
}

/// Runs a prepared command to its end within `timeout` (killing it at the deadline).
fn run_with_timeout(mut cmd: std::process::Command, timeout: Duration) -> Result<std::process::Output, OciError> {
    use std::io::Read;
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().map_err(OciError::Start)?;
    let mut stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(OciError::TimedOut { timeout });
            }
            Err(e) => return Err(OciError::Wait(e)),
        }
    };
    let stderr = reader.join().unwrap_or_default();
    Ok(std::process::Output { status, stdout: Vec::new(), stderr })
}

/// Makes the runtime's state directory, and below it `roots/`: the mount points of the
/// containers' roots (each only mounted in its run's own mount namespace), which the container's
/// root, an unprivileged id of the host, must be able to pass through.
fn make_state(state: &Path) -> Result<(), OciError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let roots = state.join("roots");
    fs_err::create_dir_all(&roots).map_err(OciError::io(&roots))?;
    // In a shared temp directory someone else may have made it first: it must be ours.
    for dir in [state, roots.as_path()] {
        let meta = fs_err::symlink_metadata(dir).map_err(OciError::io(dir))?;
        if !meta.is_dir() || meta.uid() != Identity::current().uid {
            return Err(OciError::StateNotOurs { dir: dir.to_path_buf() });
        }
    }
    for dir in [state, roots.as_path()] {
        fs_err::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).map_err(OciError::io(dir))?;
    }
    Ok(())
}

/// Where container `id`'s root is mounted (an empty directory on the host).
fn mountpoint(state: &Path, id: &str) -> PathBuf {
    state.join("roots").join(id)
}

/// Removes a container's state (and its control group) after its end.
async fn delete(runtime: &Path, state: &Path, id: &str) {
    let _ = fs_err::remove_dir(mountpoint(state, id));
    if !state.join(id).exists() {
        return; // `run` removed it
    }
    let mut c = tokio::process::Command::new(runtime);
    c.arg(format!("--root={}", state.display())).args(["delete", "--force", id]);
    c.stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let _ = tokio::time::timeout(Duration::from_secs(10), c.status()).await;
}

/// What an OCI artifact records.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Recorded {
    /// Where the image came from.
    source: String,
    config: ImageConfig,
    /// The id mapping it was unpacked with (None: rootless).
    id_map: Option<(u32, u32)>,
}

#[async_trait::async_trait]
impl Runner for OciRunner {
    fn info(&self) -> RunnerInfo {
        // Always a user namespace: the container's root is never the host's (no `host_root`).
        let capabilities = Capabilities {
            isolates_network: true,
            isolates_filesystem: true,
            builds: true,
            egress: self.gives_egress().is_ok(),
            ..Capabilities::SHIPPED
        };
        RunnerInfo::shipped(NAME, &[Section::Docker], capabilities)
    }

    async fn probe(&self) -> Availability {
        let (runtime, refused) = match self.runtime().await {
            Ok(r) => r,
            Err(e) => return Availability { available: false, version: None, detail: e.to_string() },
        };
        let me = OciRunner { inner: self.inner.clone() };
        let tools = match tokio::task::spawn_blocking(move || me.tools()).await {
            Ok(Ok(tools)) => tools,
            Ok(Err(missing)) => {
                return Availability { available: false, version: Some(runtime.version), detail: missing.to_string() }
            }
            Err(e) => {
                return Availability { available: false, version: None, detail: format!("probing the tools: {e}") }
            }
        };
        self.reap_once().await;
        let mut detail = format!("{}; {}", runtime.detail, tools.join(", "));
        if !refused.is_empty() {
            detail.push_str(&format!("; not used: {}", refused.join("; ")));
        }
        detail.push_str(&format!("; {}", self.inner.sandboxes.enforcement().describe()));
        Availability { available: true, version: Some(runtime.version), detail }
    }

    async fn cache_key(&self, spec: &BuildSpec) -> Result<Option<BTreeMap<String, String>>, RunnerError> {
        let unpack = match self.id_map() {
            Some((base, size)) => format!("ids {base}+{size}"),
            None => "rootless".into(),
        };
        let s = &self.inner.settings;
        // Where the image may come from is part of what was got, and of why getting it failed
        // (a failure remembered under one setting is not one under another).
        let mut key = BTreeMap::from([
            ("unpack".to_string(), unpack),
            ("build-network".to_string(), s.build_network.clone()),
            ("image-store".to_string(), format!("{:?}", s.image_store)),
            ("pull".to_string(), format!("{:?}", s.pull)),
        ]);
        if s.pull == Pull::IfNetworking {
            key.insert("networking".into(), spec.descriptor.networking().to_string());
        }
        match spec.descriptor.docker_image() {
            Some(image) => {
                key.insert("image".into(), image.to_string());
            }
            None => {
                key.insert("digest".into(), spec.addon.digest.clone());
                key.insert("dockerfile".into(), spec.descriptor.dockerfile().to_string());
            }
        }
        Ok(Some(key))
    }

    async fn build(&self, spec: &BuildSpec, log: LogSink) -> Result<Artifact, RunnerError> {
        let label = spec.addon.label();
        let fail = |m: String| RunnerError::build(NAME, &label, &m);
        let failed = |f: BuildFailed| f.into_error(NAME, &label);
        let (runtime, _) = self.runtime().await.map_err(unavailable)?;
        let umoci = self.tool(&self.inner.settings.umoci, "unpacks images").map_err(|e| fail(e.to_string()))?;
        let started = Instant::now();
        let layout = spec.content_dir.join("layout");
        let source = self.fetch(spec, &layout, &runtime, &log).await.map_err(failed)?;
        let fetched = started.elapsed();
        let (digest, config) = image::read_layout(&layout).map_err(|e| fail(e.to_string()))?;
        // A root build ran in the build range of ids, and its one (squashed) layer holds them.
        let built = spec.descriptor.docker_image().is_none();
        let shift = self.id_map().map(|(base, size)| image::IdShift {
            from: if built { base + size } else { 0 },
            to: base,
            size,
        });
        image::unpack(&umoci, &layout, &spec.content_dir, shift, &log, self.inner.settings.build_timeout)
            .await
            .map_err(failed)?;
        let _ = fs_err::remove_dir_all(&layout);
        tracing::info!(
            addon = %label,
            "image {digest} from {source}: got in {fetched:?}, unpacked in {:?}",
            started.elapsed() - fetched
        );
        let data = Recorded { source, config, id_map: self.id_map() };
        Ok(Artifact {
            reference: digest,
            size: 0, // the root filesystem is in the cache entry itself
            data: ArtifactData::of(&data).map_err(|e| fail(e.to_string()))?,
        })
    }

    async fn artifact_valid(&self, artifact: &Artifact) -> bool {
        artifact.data.read::<Recorded>().is_ok_and(|r| r.id_map == self.id_map())
    }

    async fn start(&self, spec: StartSpec) -> Result<Started, RunnerError> {
        let (runtime, _) = self.runtime().await.map_err(unavailable)?;
        self.reap_once().await;
        let (Some(artifact), Some(content)) = (&spec.artifact, &spec.artifact_dir) else {
            return Err(setup(format!("{} was not built", spec.addon.label())));
        };
        let recorded: Recorded = artifact
            .data
            .read()
            .map_err(|e| setup(format!("the cached image record of {}: {e}", spec.addon.label())))?;
        let rootfs = image::rootfs_of(content);
        if !rootfs.is_dir() {
            return Err(setup(format!(
                "the cached root filesystem {} is gone; `addon cache prune` and run again",
                rootfs.display()
            )));
        }
        let img = &recorded.config;
        let mut user = bundle::resolve_user(&rootfs, &img.user).map_err(|e| setup(format!("image user: {e}")))?;
        let id_map = self.id_map();
        let owner = match id_map {
            Some((base, size)) => {
                if user.uid >= size || user.gid >= size {
                    return Err(setup(format!("image user {}:{} is beyond the {size} ids mapped", user.uid, user.gid)));
                }
                Identity { uid: base + user.uid, gid: base + user.gid }
            }
            None => {
                // Rootless, the container has one id: the engine's user as its root.
                if user.uid != 0 {
                    tracing::debug!(addon = %spec.addon.label(), "rootless: runs as the container's root, not uid {}", user.uid);
                }
                user = bundle::User { uid: 0, gid: 0, additional_gids: Vec::new(), ..user };
                Identity::current()
            }
        };
        let mounts = spec.mounts();
        if id_map.is_some() {
            crate::sandbox::claim(&[&mounts.work, &mounts.output, &mounts.cache], owner)
                .map_err(|e| setup(format!("giving the run's directories to uid {}: {e}", owner.uid)))?;
        }
        let env = img.env(&spec.env_in(&crate::sandbox::Mounts::mnt(), true), &user.home);
        let argv = img.argv(&spec.args).map_err(|e| setup(e.to_string()))?;
        let enforcement: Enforcement = self.inner.sandboxes.enforcement();
        let mut envelope = host::envelope_for(NAME, &spec, &enforcement)?;
        // Without control groups (rootless here), the envelope's limits are rlimits, set by the
        // runtime in the container's init before it starts the addon. runc's init (Go) goes on
        // running under them and cannot under an address-space limit: with runc, all but that.
        let rlimits: Vec<(&'static str, u64)> = envelope
            .rlimits()
            .into_iter()
            .filter(|(r, _)| *r != libc::RLIMIT_AS || runtime.name == "crun")
            .filter_map(|(r, v)| bundle::rlimit_name(r).map(|n| (n, v)))
            .collect();
        let bundle_dir = spec.dirs.scratch.join("oci");
        let io = |e: std::io::Error| setup(format!("making the bundle in {}: {e}", bundle_dir.display()));
        fs_err::create_dir_all(&bundle_dir).map_err(io)?;
        let id = host::container_id(&spec.run_id);
        let state = self.state_dir();
        make_state(&state).map_err(|e| setup(e.to_string()))?;
        let root = mountpoint(&state, &id);
        fs_err::create_dir_all(&root).map_err(|e| setup(OciError::io(&root)(e).to_string()))?;
        let root = root.join("root");
        let hosts = bundle_dir.join("hosts");
        fs_err::write(&hosts, "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\taddon\n")
            .map_err(io)?;
        // Every user of the image reads it, whatever the engine's umask.
        fs_err::set_permissions(&hosts, std::os::unix::fs::PermissionsExt::from_mode(0o644)).map_err(io)?;
        let cgroup = container_cgroup(&envelope.cgroup_procs(), &runtime, &spec.run_id, &id);
        // An egress run joins a network namespace the engine made and gave its network (root),
        // or shares the runtime's, given its network while the runtime waits (unprivileged).
        let (network, resolv) = match &spec.network {
            crate::egress::Network::Egress(e) => {
                self.gives_egress().map_err(setup)?;
                let net = if is_root() {
                    let (e, at) = (e.clone(), bundle_dir.clone());
                    let held = tokio::task::spawn_blocking(move || crate::egress::EgressNet::hold(&e, &at))
                        .await
                        .map_err(|e| setup(e.to_string()))?
                        .map_err(|e| setup(e.to_string()))?;
                    Some(held)
                } else {
                    None
                };
                let resolv = bundle_dir.join("resolv.conf");
                crate::egress::write_resolv_conf(&resolv).map_err(io)?;
                (net, Some(resolv))
            }
            _ => (None, None),
        };
        let netns = network.as_ref().and_then(|n| n.path().map(Path::to_path_buf));
        let bundle_net = match (&netns, &resolv) {
            (Some(netns), Some(resolv)) => bundle::Net::Join { netns, resolv },
            (None, Some(resolv)) => bundle::Net::Runtime { resolv },
            _ if spec.network == crate::egress::Network::Host => bundle::Net::Host,
            _ => bundle::Net::None,
        };
        let mut handoff = None;
        let mut waiting = None;
        if let (crate::egress::Network::Egress(e), None) = (&spec.network, &network) {
            let no_pipes = |e: std::io::Error| setup(format!("no pipes for the egress network's handoff: {e}"));
            let (info_r, info_w) = crate::sandbox::pipe().map_err(no_pipes)?;
            let (block_r, block_w) = crate::sandbox::pipe().map_err(no_pipes)?;
            handoff = Some((info_w, block_r));
            waiting =
                Some((crate::sandbox::Handoff { info: info_r, release: block_w, cgroups: Vec::new() }, e.clone()));
        }
        let config = bundle::config_json(&RunConfig {
            root: &root,
            argv: &argv,
            env: &env,
            user: &user,
            binds: Binds { work: &mounts.work, output: &mounts.output, cache: &mounts.cache, hosts: &hosts },
            network: bundle_net,
            id_map,
            rlimits: &rlimits,
            cgroup: cgroup.as_deref(),
        });
        fs_err::write(bundle_dir.join("config.json"), config.to_string()).map_err(io)?;
        if let Some(p) = std::env::var_os("ADDON_OCI_DUMP") {
            let _ = fs_err::write(p, config.to_string());
        }
        // The writable layer: bounded by the output size (and charged to the run's memory).
        let overlay_size = spec.limits.output_size.unwrap_or(4 << 30);
        let cmd = self
            .command(
                &runtime.name,
                &runtime.path,
                &state,
                &bundle_dir,
                &id,
                &rootfs,
                overlay_size,
                &envelope.cgroup_procs(),
                handoff,
            )
            .map_err(|e| setup(e.to_string()))?;
        let noise: crate::NoiseFilter = Arc::new(|_: &str| false);
        let program = argv.first().cloned().unwrap_or_default();
        let spawned = host::spawn(NAME, &self.inner.runs, &spec, cmd, &program, &mut envelope, noise)?;
        let mut network = network;
        if let Some((handoff, egress)) = waiting {
            let pid = spawned.pid();
            let given = tokio::task::spawn_blocking(move || {
                handoff.complete_with(pid, |inner| {
                    crate::egress::EgressNet::attach(inner, &egress, true).map_err(std::io::Error::other)
                })
            })
            .await;
            match given {
                Ok(Ok(net)) => network = Some(net),
                other => {
                    self.inner.runs.forget(&spec.run_id);
                    let why = match other {
                        Ok(Err(e)) => e.to_string(),
                        Err(e) => e.to_string(),
                        Ok(Ok(_)) => unreachable!(),
                    };
                    return Err(setup(format!("giving the container its egress network: {why}")));
                }
            }
        }
        let mut events = spawned.watch(&self.inner.runs, &spec, envelope, network);
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let run_id = spec.run_id.clone();
        tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                let exited = matches!(e, RunEvent::Exited(_));
                if exited {
                    // A runtime killed mid-run (timeout, cancel) leaves its state behind.
                    delete(&runtime.path, &state, &id).await;
                    remove_run_groups(&run_id);
                }
                let _ = tx.send(e).await;
            }
        });
        Ok(Started { sandbox: runtime.name.clone(), events: rx })
    }

    async fn stop(&self, run_id: &str, grace: Duration) -> Result<(), RunnerError> {
        self.inner.runs.stop(run_id, grace);
        Ok(())
    }

    async fn reap(&self) -> Result<u64, RunnerError> {
        Ok(self.reap_now().await)
    }
}
