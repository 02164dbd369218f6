//! The nix-flake runner: `nix build` the addon's flake once per content digest, keep the result
//! alive with a GC root inside its cache entry, and run the first program of `result/bin` with
//! the trivial contract inside the configured sandbox.
//!
//! Docspell evaluates the flake on every run and ignores a failed build; here a cache hit does not
//! call nix at all, and a failed build is `execution-failed` with the tail of its log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use addon_cache::{Key, Kind};
use addon_descriptors::RunnerKind;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::OnceCell;

use crate::process::{LogStream, STDERR_TAIL_LINES};
use crate::runner::{
    cached_build, run_sandboxed, Availability, CacheUse, Capabilities, Launch, Runner, RunnerError, RunnerOutcome,
    BUILD_LOG_MARK,
};

const KIND: RunnerKind = RunnerKind::NixFlake;
const FEATURES: [&str; 2] = ["--extra-experimental-features", "nix-command flakes"];

#[derive(Debug, Clone)]
pub struct NixSettings {
    pub nix_binary: String,
    pub build_timeout: Duration,
    pub extra_args: Vec<String>,
}

#[derive(Debug)]
pub struct NixRunner {
    settings: NixSettings,
    probed: OnceCell<Availability>,
}

fn setup(message: impl Into<String>) -> RunnerError {
    RunnerError::Setup { runner: KIND, message: message.into() }
}

impl NixRunner {
    pub fn new(settings: NixSettings) -> NixRunner {
        NixRunner { settings, probed: OnceCell::new() }
    }

    /// Probes nix (cached on disk with the sandbox probes, keyed by the binary).
    fn probe_once(&self) -> Availability {
        let nix = self.settings.nix_binary.clone();
        let path = which::which(&nix).ok();
        let p = crate::sandbox::cached_probe("nix", path.as_deref(), || probe_nix(&nix, path.as_deref()));
        Availability { available: p.available, version: p.version, detail: p.detail }
    }

    /// Builds the flake, or finds its result in the cache. Returns the store path and cache use.
    async fn realise(&self, launch: &Launch) -> Result<(PathBuf, CacheUse, addon_cache::Entry), RunnerError> {
        let s = &self.settings;
        let key = Key::new(Kind::NixBuild)
            .with("digest", launch.digest.as_str())
            .with("nix-binary", &s.nix_binary)
            .with("extra-args", s.extra_args.join("\u{1f}"));
        let settings = s.clone();
        let addon_dir = launch.addon_dir.clone();
        let log = launch.supervision.log.clone();
        let valid =
            |meta: &addon_cache::EntryMeta, _: &Path| meta.data.get("out").is_some_and(|out| Path::new(out).is_dir());
        let e =
            cached_build(
                KIND,
                launch,
                key,
                valid,
                move |_content| async move { build(&settings, &addon_dir, &log).await },
            )
            .await?;
        let out = PathBuf::from(e.meta.data.get("out").cloned().unwrap_or_default());
        let used = if e.hit { CacheUse::Hit } else { CacheUse::Miss };
        // `result` is the GC root. It must point at the entry's final place (the build ran in a
        // temporary folder that was renamed), so it is added here, and re-added if an earlier
        // engine died before adding it.
        let link = e.content().join("result");
        if std::fs::symlink_metadata(&link).is_err() {
            add_gc_root(&self.settings, &link, &out).await.map_err(setup)?;
        }
        Ok((out, used, e))
    }
}

fn probe_nix(nix: &str, path: Option<&Path>) -> crate::sandbox::Probe {
    let fail = |detail: String, version: Option<String>| crate::sandbox::Probe {
        name: "nix",
        available: false,
        detail,
        version,
    };
    let Some(path) = path else {
        return fail(
            format!("`{nix}` not found in PATH (apt-get install nix-bin; setting nix-runner.nix-binary)"),
            None,
        );
    };
    let version = match std::process::Command::new(path).arg("--version").output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Ok(o) => {
            return fail(
                format!("`{} --version` failed: {}", path.display(), String::from_utf8_lossy(&o.stderr).trim()),
                None,
            )
        }
        Err(e) => return fail(format!("cannot run {}: {e}", path.display()), None),
    };
    // Flakes arrived in 2.4 (behind the experimental flag, which we pass).
    let numbers: Vec<u32> =
        version.rsplit(' ').next().unwrap_or("").split('.').take(2).filter_map(|p| p.parse().ok()).collect();
    if numbers.len() == 2 && (numbers[0], numbers[1]) < (2, 4) {
        return fail(format!("{version} has no flake support (needs nix 2.4 or later)"), Some(version.clone()));
    }
    crate::sandbox::Probe {
        name: "nix",
        available: true,
        detail: format!("{} with flakes", path.display()),
        version: Some(version),
    }
}

/// `nix build path:<addon>#default --no-link --json`; returns the output store path.
async fn build(
    s: &NixSettings,
    addon_dir: &Path,
    log: &crate::process::LogSink,
) -> Result<BTreeMap<String, String>, String> {
    let mut cmd = tokio::process::Command::new(&s.nix_binary);
    cmd.args(FEATURES)
        .arg("build")
        .arg(format!("path:{}#default", addon_dir.display()))
        .args(["--no-link", "--json"])
        .args(&s.extra_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| format!("cannot start {}: {e}", s.nix_binary))?;
    let mut stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let log2 = log.clone();
    let tail_task = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut tail: Vec<String> = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            log2(LogStream::Stderr, &format!("nix: {line}"));
            tail.push(line);
            if tail.len() > STDERR_TAIL_LINES {
                tail.remove(0);
            }
        }
        tail
    });
    let run = async {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out).await;
        let status = child.wait().await;
        (out, status)
    };
    let (out, status) = match tokio::time::timeout(s.build_timeout, run).await {
        Ok(r) => r,
        Err(_) => {
            let tail = tail_task.await.unwrap_or_default();
            return Err(format!(
                "nix build did not finish within {:?} (setting nix-runner.build-timeout){BUILD_LOG_MARK}{}",
                s.build_timeout,
                tail.join("\n")
            ));
        }
    };
    let tail = tail_task.await.unwrap_or_default();
    match status {
        Ok(st) if st.success() => {}
        Ok(st) => return Err(format!("nix build failed ({st}){BUILD_LOG_MARK}{}", tail.join("\n"))),
        Err(e) => return Err(format!("nix build: {e}")),
    }
    let parsed: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| format!("nix build printed no JSON ({e}): {out}"))?;
    let store_path = parsed[0]["outputs"]["out"]
        .as_str()
        .ok_or_else(|| format!("nix build JSON names no `out` output: {out}"))?
        .to_string();
    Ok(BTreeMap::from([("out".to_string(), store_path)]))
}

/// Registers `link` (inside a cache entry) as an indirect GC root for `store_path`. Pruning the
/// entry removes the link, and with it the protection.
async fn add_gc_root(s: &NixSettings, link: &Path, store_path: &Path) -> Result<(), String> {
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
        .map_err(|e| format!("cannot run {}: {e}", nix_store.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "registering the GC root for {}: {}",
            store_path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The first file of `<out>/bin` in name order, as Docspell takes the first.
fn program_of(out: &Path) -> Result<PathBuf, String> {
    let bin = out.join("bin");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&bin)
        .map_err(|e| format!("the build result {} has no bin/ folder: {e}", out.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files.into_iter().next().ok_or_else(|| format!("{} holds no program", bin.display()))
}

#[async_trait::async_trait]
impl Runner for NixRunner {
    fn kind(&self) -> RunnerKind {
        KIND
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            isolates_network: false,
            isolates_filesystem: false,
            builds: true,
            needs_daemon: false,
            uses_sandbox: true,
        }
    }

    async fn probe(&self) -> Availability {
        self.probed.get_or_init(|| async { self.probe_once() }).await.clone()
    }

    async fn run(&self, launch: &Launch) -> Result<RunnerOutcome, RunnerError> {
        let (out, cache, entry) = self.realise(launch).await?;
        let program = program_of(&out).map_err(setup)?;
        tracing::info!(addon = %launch.label(), "running {} (the first program of {}/bin)", program.display(), out.display());
        let supervised = run_sandboxed(KIND, launch, &program, &[PathBuf::from("/nix/store")]).await?;
        drop(entry); // the store path stays protected by the GC root; the entry lock ends here
        Ok(RunnerOutcome { supervised, sandbox: launch.sandbox.as_str().to_string(), cache })
    }
}
