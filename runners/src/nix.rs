//! The nix-flake runner: `nix build` the addon's flake once per content digest, keep the result
//! alive with a GC root inside its cache entry, and run the first program of `result/bin` with
//! the trivial contract inside the configured sandbox.
//!
//! Docspell evaluates the flake on every run and ignores a failed build; here a cache hit does not
//! call nix at all, and a failed build is `execution-failed` with the tail of its log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use addon_descriptors::Section;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::host::HostRuns;
use crate::probe::{Probe, ProbeCache};
use crate::process::{run_tool, LogSink, LogStream, ToolFailure};
use crate::runner::{
    Artifact, ArtifactData, Availability, BuildFailed, BuildSpec, Capabilities, Runner, RunnerError, RunnerInfo,
    StartSpec, Started,
};
use crate::sandbox::ns::NsPlan;
use crate::sandbox::Sandboxes;
use crate::settings::{BuildNetwork, ComponentSettings, HumanDuration, DEFAULT_BUILD_TIMEOUT};

pub const NAME: &str = "nix-flake";
const FEATURES: [&str; 2] = ["--extra-experimental-features", "nix-command flakes"];

/// The `nix-flake` runner's settings (`nix-runner:` of the engine configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct NixSettings {
    /// The `nix` program: a name in PATH or a path.
    pub nix_binary: String,
    /// How long one `nix build` may take.
    #[serde(with = "crate::settings::duration")]
    #[schemars(with = "HumanDuration")]
    pub build_timeout: Duration,
    /// Extra arguments for `nix build` (for example `--offline`).
    pub extra_args: Vec<String>,
    /// Not a setting: what builds reach (`network.build`).
    #[serde(skip)]
    #[schemars(skip)]
    pub build_network: BuildNetwork,
    /// Not a setting: the egress network of builds under `network.build: egress`.
    #[serde(skip)]
    #[schemars(skip)]
    pub build_egress: Option<crate::egress::Egress>,
}

impl Default for NixSettings {
    fn default() -> Self {
        NixSettings {
            nix_binary: "nix".into(),
            build_timeout: DEFAULT_BUILD_TIMEOUT,
            extra_args: Vec::new(),
            build_network: BuildNetwork::Egress,
            build_egress: None,
        }
    }
}

impl ComponentSettings for NixSettings {
    const KEY: &'static str = "nix-runner";

    fn build_timeout(&self) -> Option<Duration> {
        Some(self.build_timeout)
    }
}

impl NixSettings {
    /// The settings as configured, made whole with the network of builds: none means
    /// `nix build --offline`.
    pub fn from_context(ctx: &crate::RunnerContext) -> NixSettings {
        let mut s: NixSettings = ctx.sections.get();
        if ctx.build_network == BuildNetwork::None && !s.extra_args.iter().any(|a| a == "--offline") {
            s.extra_args.push("--offline".into());
        }
        s.build_network = ctx.build_network;
        s.build_egress = ctx.build_egress();
        s
    }

    /// What this engine's builds reach, and how.
    fn build_net(&self) -> BuildNet {
        if !crate::sandbox::is_root() || std::env::var("NIX_REMOTE").is_ok_and(|v| !v.is_empty()) || store_is_daemon() {
            // nix-daemon builds, fetches included, in its own network namespace.
            return BuildNet::Daemon;
        }
        match (self.build_network, &self.build_egress) {
            (BuildNetwork::Host, _) => BuildNet::Host,
            (BuildNetwork::None, _) => BuildNet::Cut(None),
            (BuildNetwork::Egress, egress) => match crate::egress::tools() {
                Ok(_) => BuildNet::Egress(egress.clone().unwrap_or_default()),
                Err(e) => BuildNet::Cut(Some(format!(
                    "network.build: egress, and {e}; network.build: host gives builds the host's network"
                ))),
            },
        }
    }
}

/// Whether nix's configuration (`store =` in nix.conf) sends builds to a daemon.
fn store_is_daemon() -> bool {
    let dir = std::env::var_os("NIX_CONF_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/etc/nix"));
    let Ok(text) = fs_err::read_to_string(dir.join("nix.conf")) else { return false };
    text.lines()
        .filter_map(|l| l.split('#').next()?.split_once('='))
        .any(|(k, v)| k.trim() == "store" && (v.trim() == "daemon" || v.trim().starts_with("unix://")))
}

/// The network of a `nix build` (fetches and fixed-output derivations run in its network
/// namespace).
#[derive(Debug, Clone)]
enum BuildNet {
    /// The host's own (`network.build: host`).
    Host,
    /// None: only a loopback of its own; with why, when that is not `network.build: none`.
    Cut(Option<String>),
    /// A network namespace of the engine's, given the egress network, with the engine's
    /// resolver over /etc/resolv.conf.
    Egress(crate::egress::Egress),
    /// Through nix-daemon (an engine that is not root): the daemon's network, which the engine
    /// cannot narrow.
    Daemon,
}

impl BuildNet {
    fn name(&self) -> &'static str {
        match self {
            BuildNet::Host => "host",
            BuildNet::Cut(_) => "none",
            BuildNet::Egress(_) => "egress",
            BuildNet::Daemon => "the nix daemon's",
        }
    }
}

#[derive(Debug)]
pub struct NixRunner {
    settings: NixSettings,
    probes: Arc<ProbeCache>,
    sandboxes: Arc<Sandboxes>,
    runs: Arc<HostRuns>,
}

fn setup(message: impl Into<String>) -> RunnerError {
    RunnerError::setup(NAME, message)
}

impl NixRunner {
    pub fn new(settings: NixSettings, probes: Arc<ProbeCache>, sandboxes: Arc<Sandboxes>) -> NixRunner {
        NixRunner { settings, probes, sandboxes, runs: Arc::default() }
    }
}

fn probe_nix(nix: &str, path: Option<&Path>) -> Probe {
    let Some(path) = path else {
        return Probe::missing(
            "nix",
            format!("`{nix}` not found in PATH (apt-get install nix-bin; setting nix-runner.nix-binary)"),
        );
    };
    let version = match std::process::Command::new(path).arg("--version").output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Ok(o) => {
            return Probe::missing(
                "nix",
                format!("`{} --version` failed: {}", path.display(), String::from_utf8_lossy(&o.stderr).trim()),
            )
        }
        Err(e) => return Probe::missing("nix", format!("cannot run {}: {e}", path.display())),
    };
    // Flakes arrived in 2.4 (behind the experimental flag, which we pass).
    let numbers: Vec<u32> =
        version.rsplit(' ').next().unwrap_or("").split('.').take(2).filter_map(|p| p.parse().ok()).collect();
    if numbers.len() == 2 && (numbers[0], numbers[1]) < (2, 4) {
        let mut p = Probe::missing("nix", format!("{version} has no flake support (needs nix 2.4 or later)"));
        p.version = Some(version);
        return p;
    }
    if let Some(why) = daemon_problem() {
        let mut p = Probe::missing("nix", why);
        p.version = Some(version);
        return p;
    }
    if let Some(why) = build_users_problem(path) {
        let mut p = Probe::missing("nix", why);
        p.version = Some(version);
        return p;
    }
    Probe::ok("nix", format!("{} with flakes", path.display()), Some(version))
}

/// Not root, nix builds through its daemon; without one every build fails on the store's
/// permissions ("could not set permissions on '/nix/var/nix/profiles/per-user'").
fn daemon_problem() -> Option<String> {
    if crate::sandbox::is_root() {
        return None;
    }
    let socket = std::env::var("NIX_DAEMON_SOCKET_PATH").unwrap_or_else(|_| "/nix/var/nix/daemon-socket/socket".into());
    match std::os::unix::net::UnixStream::connect(&socket) {
        Ok(_) => None,
        Err(e) => Some(format!(
            "the engine is not root, so nix must build through its daemon, and there is none at {socket} ({e}); \
             start nix-daemon, or run the engine as root"
        )),
    }
}

/// As root without a daemon, nix builds as the users of `build-users-group`; when that group does
/// not exist every build fails ("the group 'nixbld' specified in 'build-users-group' does not
/// exist"). Debian creates it in the recommended package nix-setup-systemd, so an install with
/// `--no-install-recommends` lacks it.
fn build_users_problem(nix: &Path) -> Option<String> {
    if !crate::sandbox::is_root() || std::env::var("NIX_REMOTE").is_ok_and(|v| !v.is_empty()) {
        return None; // builds go through the daemon, whose configuration is its own
    }
    let out = std::process::Command::new(nix).args(FEATURES).arg("show-config").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let group = text.lines().find_map(|l| l.strip_prefix("build-users-group = ")).map(str::trim)?;
    if group.is_empty() || group_exists(group) {
        return None;
    }
    Some(format!(
        "nix is configured with build-users-group = {group}, but the group `{group}` does not exist, so every \
         build fails. Create Nix's build users (groupadd --system {group}; then for i in 1..10: useradd --system \
         --gid {group} --groups {group} --home-dir /var/empty --shell /usr/sbin/nologin {group}$i), install \
         Debian's nix-setup-systemd, or set `build-users-group =` in /etc/nix/nix.conf to build as root"
    ))
}

fn group_exists(name: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(name) else { return false };
    // SAFETY: getgrnam with a valid C string; only the null-ness of the result is read.
    unsafe { !libc::getgrnam(c.as_ptr()).is_null() }
}

/// `nix build path:<addon> --no-link --json`, supervised like an addon (timeout; the
/// whole process tree is stopped when the future is dropped); returns the output store path.
async fn build(s: &NixSettings, addon_dir: &Path, log: LogSink) -> Result<PathBuf, BuildFailed> {
    let mut cmd = tokio::process::Command::new(&s.nix_binary);
    cmd.args(FEATURES)
        .arg("build")
        // No attribute, as Docspell builds it: nix then takes `packages.<system>.default` or,
        // where flake-utils' `eachDefaultSystem` wrote the flake, `defaultPackage.<system>`
        // (asking for `#default` finds only the first; the published addons have the second).
        .arg(format!("path:{}", addon_dir.display()))
        .args(["--no-link", "--json"])
        .args(&s.extra_args);
    // nix reads /proc/<pid> of its builders, so the namespace gets a /proc of its own.
    let net = s.build_net();
    let mut plan = NsPlan::new(matches!(net, BuildNet::Cut(_))).with_fresh_proc();
    // Under egress: a network namespace held by the engine, given the egress network, joined by
    // nix (its fetches and fixed-output builds run there) with the engine's resolver.
    let mut held = None;
    if let BuildNet::Egress(egress) = &net {
        let joined = (|| {
            let dir = tempfile::Builder::new().prefix("addon-nix-build-").tempdir()?;
            let net = crate::egress::EgressNet::hold(egress, dir.path()).map_err(std::io::Error::other)?;
            let at = net.path().map(Path::to_path_buf).unwrap_or_default();
            let resolv = dir.path().join("resolv.conf");
            crate::egress::write_resolv_conf(&resolv)?;
            let fd = fs_err::File::open(&at)?.into_parts().0;
            Ok::<_, std::io::Error>((net, fd, resolv, dir))
        })();
        let (egress_net, fd, resolv, dir) = joined.map_err(|e| format!("the build's egress network: {e}"))?;
        plan = plan.join_network(std::os::fd::AsRawFd::as_raw_fd(&fd));
        if Path::new("/etc/resolv.conf").exists() {
            plan = plan.with_file_over(&resolv, Path::new("/etc/resolv.conf"));
        }
        held = Some((egress_net, fd, dir));
    }
    plan.install(&mut cmd);
    let result = run_tool(cmd, "nix: ", &log, s.build_timeout, Some(1 << 20)).await;
    if let Some((egress_net, fd, dir)) = held {
        let used = tokio::task::spawn_blocking(move || egress_net.finish()).await.unwrap_or_default();
        drop((fd, dir));
        if used.refused > 0 {
            log(
                LogStream::Stderr,
                &format!(
                    "nix: the build's egress network refused {} packets (to the host, its network or addresses \
                     never reachable)",
                    used.refused
                ),
            );
        }
    }
    let offline_note = match &net {
        BuildNet::Cut(Some(why)) => format!(" (builds have no network here: {why})"),
        _ => String::new(),
    };
    let stdout = match result {
        Ok(stdout) => stdout,
        Err(ToolFailure::Start(e)) => return Err(format!("cannot start {}: {e}", s.nix_binary).into()),
        Err(ToolFailure::Exit { code, tail }) => {
            return Err(BuildFailed::with_log(
                format!("nix build failed (exit code {code}){offline_note}"),
                tail.into_vec(),
            ))
        }
        Err(ToolFailure::TimedOut { tail }) => {
            let why = format!(
                "nix build timed out: it did not finish within {} (setting nix-runner.build-timeout) and was stopped",
                crate::process::human_secs(s.build_timeout)
            );
            return Err(BuildFailed::with_log(why, tail.into_vec()));
        }
        Err(ToolFailure::TooMuchOutput(n)) => {
            return Err(format!("nix build printed more than {n} bytes of JSON").into())
        }
    };
    let out = String::from_utf8_lossy(&stdout);
    let parsed: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| format!("nix build printed no JSON ({e}): {out}"))?;
    let store_path =
        parsed[0]["outputs"]["out"].as_str().ok_or_else(|| format!("nix build JSON names no `out` output: {out}"))?;
    Ok(PathBuf::from(store_path))
}

/// What `nix build` builds from a flake given no attribute, read without building.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlakeDefault {
    /// The attribute it builds (`packages.x86_64-linux.default` or `defaultPackage.x86_64-linux`).
    Buildable(String),
    /// Nothing: the flake has no such output; says what it has instead.
    Missing(String),
    /// The flake could not be read here (nix missing, inputs not available offline, an
    /// evaluation error); the build will say more.
    Unknown(String),
}

/// This machine's nix system name.
pub fn nix_system() -> String {
    format!("{}-linux", std::env::consts::ARCH)
}

/// Reads the outputs of the flake in `dir` with `nix flake show --json` (pure evaluation,
/// offline, no import from derivation, the lock file left as it is), and tells what `nix build`
/// with no attribute would build for this system: `packages.<system>.default`, else
/// `defaultPackage.<system>` (flake-utils' shape). Stopped after `timeout`.
pub async fn flake_default(nix: &str, dir: &Path, timeout: Duration) -> FlakeDefault {
    let mut cmd = tokio::process::Command::new(nix);
    cmd.args(FEATURES)
        .args(["flake", "show", "--json", "--offline", "--no-write-lock-file"])
        .args(["--option", "allow-import-from-derivation", "false"])
        .arg(format!("path:{}", dir.display()))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(timeout, cmd.output()).await {
        Err(_) => {
            return FlakeDefault::Unknown(format!(
                "`nix flake show` did not finish within {}",
                crate::process::human_secs(timeout)
            ))
        }
        Ok(Err(e)) => return FlakeDefault::Unknown(format!("cannot run {nix}: {e}")),
        Ok(Ok(o)) => o,
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let first = err.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| err.lines().next().unwrap_or(""));
        return FlakeDefault::Unknown(format!("`nix flake show` failed: {}", first.trim()));
    }
    let Ok(outputs) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return FlakeDefault::Unknown("`nix flake show` printed no JSON".into());
    };
    default_output(&outputs, &nix_system())
}

/// [`flake_default`]'s reading of `nix flake show --json` output.
pub fn default_output(outputs: &serde_json::Value, system: &str) -> FlakeDefault {
    let is_drv = |v: &serde_json::Value| v.get("type").and_then(|t| t.as_str()) == Some("derivation");
    for path in [["packages", system, "default"].as_slice(), ["defaultPackage", system].as_slice()] {
        let found = path.iter().try_fold(outputs, |v, k| v.get(*k));
        if found.is_some_and(is_drv) {
            return FlakeDefault::Buildable(path.join("."));
        }
    }
    let named: Vec<String> = outputs
        .get("packages")
        .and_then(|p| p.get(system))
        .and_then(|p| p.as_object())
        .map(|m| m.keys().map(|k| format!("packages.{system}.{k}")).collect())
        .unwrap_or_default();
    let systems: Vec<String> = ["packages", "defaultPackage"]
        .iter()
        .filter_map(|o| outputs.get(*o).and_then(|v| v.as_object()))
        .flat_map(|m| m.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let has = if !named.is_empty() {
        format!("it has {}, but nix builds only a default", named.join(", "))
    } else if !systems.is_empty() {
        format!("it has packages for {} only", systems.join(", "))
    } else {
        let tops: Vec<&str> = outputs.as_object().map(|m| m.keys().map(String::as_str).collect()).unwrap_or_default();
        format!("its outputs are: {}", if tops.is_empty() { "none".to_string() } else { tops.join(", ") })
    };
    FlakeDefault::Missing(format!(
        "the flake provides neither packages.{system}.default nor defaultPackage.{system}, which `nix build` builds \
         ({has})"
    ))
}

/// Why a built addon's program cannot be started.
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error("started without its build result")]
    NotBuilt,
    #[error("cannot run {}: {source}", tool.display())]
    Spawn {
        tool: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `nix-store --add-root` failed; what it printed.
    #[error("registering the GC root for {}: {stderr}", store_path.display())]
    GcRoot { store_path: PathBuf, stderr: String },
    #[error("the build result {} has no bin/ folder: {source}", out.display())]
    NoBin {
        out: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} holds no program", bin.display())]
    NoProgram { bin: PathBuf },
}

/// Registers `link` (inside a cache entry) as an indirect GC root for `store_path`. Pruning the
/// entry removes the link, and with it the protection.
async fn add_gc_root(s: &NixSettings, link: &Path, store_path: &Path) -> Result<(), ProgramError> {
    let nix_store = which::which(&s.nix_binary)
        .ok()
        .map(|p| p.with_file_name("nix-store"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("nix-store"));
    let out = tokio::process::Command::new(&nix_store)
        .arg("--add-root")
        .arg(link)
        .arg("--indirect")
        .arg("--realise")
        .arg(store_path)
        .output()
        .await
        .map_err(|source| ProgramError::Spawn { tool: nix_store.clone(), source })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(ProgramError::GcRoot {
            store_path: store_path.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// The first file of `<out>/bin` in name order, as Docspell takes the first.
fn program_of(out: &Path) -> Result<PathBuf, ProgramError> {
    let bin = out.join("bin");
    let mut files: Vec<PathBuf> = fs_err::read_dir(&bin)
        .map_err(|source| ProgramError::NoBin { out: out.to_path_buf(), source })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files.into_iter().next().ok_or(ProgramError::NoProgram { bin })
}

/// What a nix run needs readable besides the view: the store.
pub const STORE: &str = "/nix/store";

impl NixRunner {
    /// The program a run of `spec` starts: the first program of the built store path (whose GC
    /// root in the cache entry is made sure of). For other runners that run nix builds.
    pub async fn program(&self, spec: &StartSpec) -> Result<PathBuf, ProgramError> {
        let artifact = spec.artifact.as_ref().ok_or(ProgramError::NotBuilt)?;
        let out = PathBuf::from(&artifact.reference);
        // `result` in the cache entry is the GC root. It must point at the entry's final place
        // (the build ran in a temporary folder that was renamed), so it is added here, and
        // re-added if an earlier engine died before adding it.
        if let Some(dir) = &spec.artifact_dir {
            let link = dir.join("result");
            if fs_err::symlink_metadata(&link).is_err() {
                add_gc_root(&self.settings, &link, &out).await?;
            }
        }
        let program = program_of(&out)?;
        tracing::info!(addon = %spec.addon.label(), "running {} (the first program of {}/bin)", program.display(), out.display());
        Ok(program)
    }
}

#[async_trait::async_trait]
impl Runner for NixRunner {
    fn info(&self) -> RunnerInfo {
        let capabilities = Capabilities { builds: true, uses_sandbox: true, ..Capabilities::SHIPPED };
        RunnerInfo::shipped(NAME, &[Section::Nix], capabilities)
    }

    async fn probe(&self) -> Availability {
        let nix = self.settings.nix_binary.clone();
        let path = which::which(&nix).ok();
        let p = self.probes.get("nix", &nix, path.as_deref(), || probe_nix(&nix, path.as_deref()));
        Availability { available: p.available, version: p.version, detail: p.detail }
    }

    async fn cache_key(&self, spec: &BuildSpec) -> Result<Option<BTreeMap<String, String>>, RunnerError> {
        let s = &self.settings;
        Ok(Some(BTreeMap::from([
            ("digest".to_string(), spec.addon.digest.clone()),
            ("nix-binary".to_string(), s.nix_binary.clone()),
            ("extra-args".to_string(), s.extra_args.join("\u{1f}")),
            ("build-network".to_string(), s.build_net().name().to_string()),
        ])))
    }

    async fn build(&self, spec: &BuildSpec, log: LogSink) -> Result<Artifact, RunnerError> {
        let out = build(&self.settings, &spec.addon_dir, log)
            .await
            .map_err(|failed| failed.into_error(NAME, &spec.addon.label()))?;
        Ok(Artifact { reference: out.display().to_string(), size: 0, data: ArtifactData::none() })
    }

    async fn artifact_valid(&self, artifact: &Artifact) -> bool {
        Path::new(&artifact.reference).is_dir()
    }

    async fn cannot_build(&self, spec: &BuildSpec) -> Option<String> {
        if !spec.addon_dir.join("flake.nix").is_file() {
            return Some("the addon has no flake.nix".into());
        }
        match flake_default(&self.settings.nix_binary, &spec.addon_dir, Duration::from_secs(30)).await {
            FlakeDefault::Missing(why) => Some(why),
            FlakeDefault::Buildable(_) => None,
            FlakeDefault::Unknown(why) => {
                tracing::debug!("reading the flake of {}: {why}", spec.addon.label());
                None
            }
        }
    }

    async fn start(&self, spec: StartSpec) -> Result<Started, RunnerError> {
        let program = self.program(&spec).await.map_err(|e| setup(e.to_string()))?;
        crate::host::start(NAME, self.sandboxes.clone(), self.runs.clone(), spec, program, vec![PathBuf::from(STORE)])
            .await
    }

    async fn stop(&self, run_id: &str, grace: Duration) -> Result<(), RunnerError> {
        self.runs.stop(run_id, grace);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_on_the_daemon_is_read_from_nix_conf() {
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var("NIX_CONF_DIR", dir.path());
        assert!(!store_is_daemon(), "no nix.conf");
        std::fs::write(dir.path().join("nix.conf"), "sandbox = true\n# store = daemon\n").unwrap();
        assert!(!store_is_daemon(), "a comment");
        std::fs::write(dir.path().join("nix.conf"), "store = daemon\n").unwrap();
        assert!(store_is_daemon());
        std::fs::write(dir.path().join("nix.conf"), "store=unix:///nix/var/nix/daemon-socket/socket\n").unwrap();
        assert!(store_is_daemon());
    }
}
