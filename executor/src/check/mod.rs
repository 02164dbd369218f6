//! `addon runners check NAME`: the conformance checks and the hostile-addon kit against one
//! runner or plugin as configured, as a command a runner or plugin author runs. Every check runs
//! real addons through the engine with only that runner; a runner's declared capabilities are
//! not taken on trust (one that says it isolates the network is held to it by the kit).
//!
//! This is the one place where each check is written (what addon it runs, what it asserts):
//! the engine's conformance suite (`executor/tests/conformance.rs`) runs this command for each
//! check against each runner and sandbox, as root and as an unprivileged user. It must never
//! trust what a runner says of itself beyond what `judge` allows, nor pass a check it skipped.
//!
//! The kit's probe is a static C program (`check/probe.c`, built in), compiled
//! here with `gcc -static`; without gcc the kit's checks are reported as skipped, never passed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use addon_descriptors::Section;
use serde::Serialize;

use crate::config::{ByteSize, Config, LimitsOverride};
use crate::engine::{Engine, Event, RunRequest};
use crate::report::{AddonReport, AddonResult, Termination};
use crate::CancellationToken;

/// The probe's source.
const PROBE_C: &str = include_str!("probe.c");

mod kit;
pub use kit::*;

/// How one check went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Fail,
    /// Not run (the reason says why); never counts as passed.
    Skip,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub name: &'static str,
    /// `status` is pass.
    pub passed: bool,
    pub status: Status,
    pub detail: String,
    pub duration_ms: u64,
}

/// The result of `addon runners check` (SPEC: `{"runner", "checks": [{"name", "passed",
/// "detail"}], "passed": N, "failed": N}`).
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub runner: String,
    /// The descriptor section the checks' addons use.
    pub section: Option<String>,
    pub checks: Vec<CheckResult>,
    /// How many checks passed.
    pub passed: usize,
    /// How many did not: failed, or skipped (a skip is never a pass).
    pub failed: usize,
    /// Of those, how many were skipped.
    pub skipped: usize,
    /// The sandbox the checks' runs named (the runner's own, or the engine's around it).
    pub sandbox: Option<String>,
}

impl CheckReport {
    /// Every check passed.
    pub fn all_passed(&self) -> bool {
        self.failed == 0
    }
}

impl CheckResult {
    fn new(name: &'static str, status: Status, detail: String, started: Instant) -> CheckResult {
        let duration_ms = started.elapsed().as_millis() as u64;
        CheckResult { name, passed: status == Status::Pass, status, detail, duration_ms }
    }
}

/// The checks, in the order they run.
pub const CHECKS: [&str; 20] = [
    "available",
    "contract",
    "failure-cause",
    "timeout",
    "leftovers",
    "engine-death",
    "network-isolation",
    "hostile-kit",
    "fork-bomb",
    "memory-hog",
    "double-fork",
    "setuid-files",
    "disk-fill",
    "unlinked-fill",
    "nested-trees",
    "cache-race",
    "inode-flood",
    "tmpfs-fill",
    "container-fill",
    "private-directories",
];

/// Checks whose verdict is what is left on this host (processes, files, what the bait saw).
const JUDGED_HERE: [&str; 6] =
    ["timeout", "leftovers", "engine-death", "network-isolation", "hostile-kit", "double-fork"];

/// A variable of the engine's environment that an addon must never see: when it is set (the
/// conformance suite sets it), `contract` checks the addon's environment for it and the kit's
/// bait uses its value as the secret the probe looks for everywhere it can read.
pub const SECRET_ENV: &str = "ADDON_CHECK_SECRET";

/// The output size the fills run under (MiB).
const FILL_LIMIT_MIB: u64 = 64;

/// The entry limit (`output-entries`) the inode flood runs under: a bound holds or not at any
/// size, and each entry costs a VM's 9p share a round trip (20,000 took a TCG guest 59 s).
const FLOOD_ENTRIES: u64 = 5_000;

/// What may pass the output size before the engine sees it and stops the addon (it writes a
/// few GB a second into the page cache; limits are checked every 50 ms).
const FILL_SLACK: u64 = 512 << 20;

/// What `addon runners check` runs against.
pub struct Setup<'a> {
    pub config: &'a Config,
    /// The configuration's file, when it came from one: the kit's probe must not read it.
    pub config_path: Option<&'a Path>,
    /// The runner's (or plugin's) name.
    pub name: &'a str,
    /// Only these checks (all when empty); `available` always runs.
    pub only: &'a [String],
}

/// Runs every check against runner `name` of `config` (in a private working and cache
/// directory). `only` limits the checks to some names.
/// Why the checks could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("making the checks' scratch directory: {0}")]
    Scratch(#[source] std::io::Error),
    #[error("no runner `{name}` here; known runners: {}", .known.join(", "))]
    NoRunner { name: String, known: Vec<String> },
}

/// The kit's probe could not be compiled (its checks are then skipped, never passed).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProbeBuildError {
    #[error("writing the kit's probe: {0}")]
    Write(#[source] Arc<std::io::Error>),
    #[error("the kit's probe is compiled with gcc -static: {0} (apt-get install gcc libc6-dev)")]
    NoCompiler(#[source] Arc<std::io::Error>),
    #[error("compiling the kit's probe failed: {stderr}")]
    Compile { stderr: String },
}

pub async fn run(setup: Setup<'_>) -> Result<CheckReport, CheckError> {
    let Setup { config, config_path, name, only } = setup;
    let root = tempfile::Builder::new().prefix("addon-check-").tempdir().map_err(CheckError::Scratch)?;
    set_mode(root.path(), 0o755);
    let mut config = config.clone();
    config.working_dir = root.path().join("work");
    config.cache_dir = root.path().join("cache");
    config.fail_fast = false;
    // What `contract` expects the addon to be given from the configuration.
    config.env.entry("check-contract".into()).or_default().insert("FROM_CONFIG".into(), "configured".into());
    let engine = Engine::new(config);
    let Some(runner) = engine.runner(name) else {
        return Err(CheckError::NoRunner { name: name.to_string(), known: engine.config().runner_names() });
    };
    let started = Instant::now();
    let probe = runner.probe().await;
    let available = probe.available;
    // After the probe: a plugin says what it is once it runs.
    let info = runner.info();
    let section = [Section::Trivial, Section::Docker, Section::Nix].into_iter().find(|s| info.serves.contains(s));
    let mut kit = Kit {
        engine: &engine,
        name: name.to_string(),
        caps: info.capabilities,
        section,
        root: root.path().to_path_buf(),
        config_path: config_path.map(Path::to_path_buf),
        probe: None,
        sandbox: None,
        n: 0,
    };
    let mut checks = Vec::new();
    let wanted = |c: &str| only.is_empty() || only.iter().any(|o| o == c);
    checks.push(CheckResult::new(
        "available",
        if available { Status::Pass } else { Status::Fail },
        probe.detail,
        started,
    ));
    for check in &CHECKS[1..] {
        if !wanted(check) {
            continue;
        }
        let t = Instant::now();
        let (status, detail) = if !available {
            (Status::Skip, format!("the {name} runner is not available here"))
        } else if section.is_none() {
            (Status::Skip, format!("the {name} runner serves no descriptor section these checks know"))
        } else {
            match kit.run(check).await {
                Ok(detail) => (Status::Pass, detail),
                Err(Outcome::Fail(d)) => (Status::Fail, d),
                Err(Outcome::Skip(d)) => (Status::Skip, d),
            }
        };
        // What is left behind and what the bait sees are judged on this host: for a runner that
        // keeps its own copies (possibly on another machine), say so instead of implying more.
        let local = JUDGED_HERE.contains(check);
        let detail = if local && status == Status::Pass && !info.capabilities.shares_host_filesystem {
            format!("{detail} (judged on this host; {name} keeps its own copies of the run, possibly elsewhere)")
        } else {
            detail
        };
        checks.push(CheckResult::new(check, status, detail, t));
    }
    let passed = checks.iter().filter(|c| c.passed).count();
    let skipped = checks.iter().filter(|c| c.status == Status::Skip).count();
    Ok(CheckReport {
        runner: name.to_string(),
        section: section.map(|s| s.as_str().to_string()),
        sandbox: kit.sandbox,
        failed: checks.len() - passed,
        passed,
        skipped,
        checks,
    })
}

enum Outcome {
    Fail(String),
    Skip(String),
}

fn fail(message: impl Into<String>) -> Outcome {
    Outcome::Fail(message.into())
}

type Checked = Result<String, Outcome>;

struct Kit<'a> {
    engine: &'a Engine,
    name: String,
    /// What the runner declares.
    caps: addon_runners::Capabilities,
    section: Option<Section>,
    root: PathBuf,
    config_path: Option<PathBuf>,
    probe: Option<Result<PathBuf, ProbeBuildError>>,
    /// The sandbox the runs named.
    sandbox: Option<String>,
    n: u32,
}

/// What a check's run gave.
struct Ran {
    report: AddonReport,
    /// The run's output directory.
    output_dir: PathBuf,
    /// The addon's log lines (stderr, and stdout when not collected).
    lines: Vec<String>,
}

impl Ran {
    /// `key=value` lines the addon printed on stderr.
    fn map(&self) -> BTreeMap<String, String> {
        self.lines.iter().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn said(&self, needle: &str) -> bool {
        self.lines.iter().any(|l| l.contains(needle))
    }

    fn error(&self) -> &str {
        self.report.error.as_deref().unwrap_or_default()
    }

    fn describe(&self) -> String {
        let a = &self.report;
        format!(
            "result {}, termination {:?}, error {}",
            a.result.as_str(),
            a.termination,
            a.error.as_deref().unwrap_or("none")
        )
    }
}

#[derive(Default)]
struct Extra {
    user_input: String,
    env: Vec<(String, String)>,
    inputs: Vec<(String, PathBuf)>,
    item: Option<PathBuf>,
    timeout: Option<Duration>,
    limits: LimitsOverride,
    output_dir: Option<PathBuf>,
}

const PURE: &str = "options:\n  networking: false\n  collectOutput: true\n";
const IMPURE: &str = "options:\n  networking: true\n  collectOutput: true\n";

/// Findings of a check, gathered so that one run reports all that was wrong.
#[derive(Default)]
struct Wrong(Vec<String>);

impl Wrong {
    fn unless(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    /// `key=value` `k` of what the addon said is `v`.
    fn expect(&mut self, said: &BTreeMap<String, String>, k: &str, v: &str) {
        let got = said.get(k).map(String::as_str);
        self.unless(got == Some(v), || format!("{k}: expected `{v}`, got `{}`", got.unwrap_or("nothing")));
    }

    /// The run was stopped by `by`, an execution error whose message says `says`.
    fn stopped(&mut self, ran: &Ran, by: Termination, says: &str) {
        let a = &ran.report;
        self.unless(
            a.termination == Some(by) && a.result == AddonResult::ExecutionError && ran.error().contains(says),
            || format!("expected an execution-error stopped by {by:?} saying `{says}`; got {}", ran.describe()),
        );
    }

    fn verdict(self, passed: impl FnOnce() -> String) -> Checked {
        if self.0.is_empty() {
            Ok(passed())
        } else {
            Err(fail(self.0.join("; ")))
        }
    }
}

impl Kit<'_> {
    async fn run(&mut self, check: &str) -> Checked {
        match check {
            "contract" => self.contract().await,
            "failure-cause" => self.failure_cause().await,
            "timeout" => self.timeout().await,
            "leftovers" => self.leftovers().await,
            "engine-death" => self.engine_death().await,
            "network-isolation" => self.network().await,
            "hostile-kit" => self.kit().await,
            "fork-bomb" => self.fork_bomb().await,
            "memory-hog" => self.memory_hog().await,
            "double-fork" => self.double_fork().await,
            "setuid-files" => self.setuid_files().await,
            "disk-fill" => self.disk_fill("diskfill").await,
            "unlinked-fill" => self.disk_fill("unlinkfill").await,
            "nested-trees" => self.nested_trees().await,
            "cache-race" => self.cache_race().await,
            "inode-flood" => self.inode_flood().await,
            "tmpfs-fill" => self.tmpfs_fill().await,
            "container-fill" => self.container_fill().await,
            "private-directories" => self.private_directories().await,
            other => Err(Outcome::Skip(format!("unknown check {other}"))),
        }
    }

    fn section(&self) -> Section {
        self.section.unwrap_or(Section::Trivial)
    }

    /// A container runner: the image brings its own root and HOME.
    fn container(&self) -> bool {
        self.section() == Section::Docker
    }

    /// A number for `sleep` that is unique per check and process: what is left of a run is
    /// found by it.
    fn marker(&self, base: u32) -> String {
        format!("{}", base + self.n + std::process::id() % 1000)
    }

    /// A fresh addon called `name` whose program is `script` (POSIX sh), or `program` (a file
    /// copied in as the program), with `options` (pure or impure).
    fn addon(&mut self, name: &str, options: &str, script: &str, program: Option<&Path>) -> Result<PathBuf, Outcome> {
        self.n += 1;
        let marker = format!("{}-{}", std::process::id(), self.n);
        let dir = self.root.join("addons").join(format!("{name}-{}", self.n));
        let io = |e: std::io::Error| fail(format!("writing the check's addon: {e}"));
        fs_err::create_dir_all(&dir).map_err(io)?;
        let runner_yaml = match self.section() {
            Section::Trivial => "  trivial:\n    enable: true\n    exec: run.sh\n".to_string(),
            Section::Docker => "  docker:\n    enable: true\n".to_string(),
            Section::Nix => "  nix:\n    enable: true\n".to_string(),
        };
        fs_err::write(
            dir.join("docspell-addon.yml"),
            format!(
                "meta:\n  name: {name}\n  version: \"1.0\"\nargs: [--flag, second]\nrunner:\n{runner_yaml}{options}"
            ),
        )
        .map_err(io)?;
        let run = dir.join("run.sh");
        match program {
            Some(p) => fs_err::copy(p, &run).map(|_| ()).map_err(io)?,
            None => fs_err::write(&run, format!("#!/bin/sh\n{script}\n")).map_err(io)?,
        }
        set_mode(&run, 0o755);
        match self.section() {
            Section::Trivial => {}
            Section::Docker => {
                let busybox = Path::new("/bin/busybox");
                if !busybox.exists() {
                    return Err(Outcome::Skip(
                        "docker checks build FROM-scratch images with the host's static busybox (apt-get install busybox-static)".into(),
                    ));
                }
                fs_err::copy(busybox, dir.join("busybox")).map_err(io)?;
                let entry = if program.is_some() { "[\"/run.sh\"]" } else { "[\"/bin/sh\", \"/run.sh\"]" };
                // A VOLUME, as images often declare: it must be bounded and gone with the run.
                fs_err::write(
                    dir.join("Dockerfile"),
                    format!("FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nENV PATH=/bin\nLABEL addon-check.marker={marker}\nCOPY run.sh /run.sh\nVOLUME /data\nENTRYPOINT {entry}\n"),
                )
                .map_err(io)?;
            }
            Section::Nix => {
                fs_err::write(dir.join("flake.nix"), run_sh_flake(name, &marker)).map_err(io)?;
            }
        }
        Ok(dir)
    }

    /// An addon whose program is the kit's probe.
    fn probe_addon(&mut self, name: &str, options: &str) -> Result<PathBuf, Outcome> {
        let probe = self.probe()?;
        self.addon(name, options, "", Some(&probe))
    }

    fn request(&self, addon: &Path, extra: Extra) -> RunRequest {
        RunRequest {
            sources: vec![addon.display().to_string()],
            runners: Some(vec![self.name.clone()]),
            user_input: extra.user_input,
            env: extra.env,
            inputs: extra.inputs,
            item: extra.item,
            timeout: extra.timeout,
            limits: extra.limits,
            output_dir: extra.output_dir,
            fail_fast: Some(false),
            ..Default::default()
        }
    }

    async fn go(&mut self, addon: &Path, extra: Extra) -> Result<Ran, Outcome> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
        let collect = tokio::spawn(async move {
            let mut lines = Vec::new();
            while let Some(e) = rx.recv().await {
                if let Event::Log { line, .. } = e {
                    lines.push(line);
                }
            }
            lines
        });
        let req = self.request(addon, extra);
        let report = self.engine.run(req, Some(tx), CancellationToken::new()).await.map_err(|e| fail(e.to_string()))?;
        let lines = collect.await.unwrap_or_default();
        let output_dir = report.output_dir.clone();
        let report = report.addons.into_iter().next().ok_or_else(|| fail("the engine reported no addon"))?;
        if self.sandbox.is_none() {
            self.sandbox = report.sandbox.clone();
        }
        Ok(Ran { report, output_dir, lines })
    }

    /// The runtime contract: arguments, user input, directories at `/mnt`, the environment (the
    /// configuration's and the caller's, never the engine's own), the item and input files,
    /// TMPDIR, output files and JSON; CACHE_DIR (and a host runner's HOME) persist to a second
    /// run, which builds nothing; run directories are removed.
    async fn contract(&mut self) -> Checked {
        let script = format!(
            r#"
echo "args=$*" >&2
echo "input=$(cat "$3")" >&2
echo "cwd=$(pwd)" >&2
for v in ADDON_DIR TMPDIR TMP_DIR OUTPUT_DIR CACHE_DIR HOME ITEM_DIR ITEM_DATA_JSON ITEM_ARGS_JSON ITEM_PDF_DIR ITEM_ORIGINAL_DIR ITEM_ORIGINAL_JSON ITEM_PDF_JSON FROM_CLI FROM_CONFIG {SECRET_ENV}; do
  eval "echo $v=\${{$v-unset}}" >&2
done
[ -d "addons/$ADDON_ID" ] && [ "$ADDON_DIR" = "$(pwd)/addons/$ADDON_ID" ] && echo "layout=ok" >&2
[ -f arguments/user-input ] && [ -d temp ] && echo "layout2=ok" >&2
[ -f item/item-data.json ] && echo "item=ok" >&2
[ -f in/data.txt ] && echo "input_file=$(cat in/data.txt)" >&2
touch "$TMPDIR/x" && echo "tmp=writable" >&2
runs=$(cat "$CACHE_DIR/runs" 2>/dev/null || echo 0); runs=$((runs+1)); echo $runs > "$CACHE_DIR/runs"; echo "cache_runs=$runs" >&2
home=$(cat "$HOME/runs" 2>/dev/null || echo 0); home=$((home+1)); echo $home > "$HOME/runs" && echo "home_runs=$home" >&2
echo "result" > "$OUTPUT_DIR/result.txt"
printf '%s' '{{"files": [{{"itemId": "item-1", "textFiles": {{"att-1": "result.txt"}}}}]}}'"#
        );
        let addon = self.addon("check-contract", PURE, &script, None)?;
        let io = |e: std::io::Error| fail(format!("writing the contract's item and input: {e}"));
        let item = self.root.join("contract-item");
        fs_err::create_dir_all(item.join("originals")).map_err(io)?;
        fs_err::write(item.join("item-data.json"), "{}").map_err(io)?;
        let data = self.root.join("contract-data.txt");
        fs_err::write(&data, "payload").map_err(io)?;
        let out = self.root.join("contract-out");
        let ran = self
            .go(
                &addon,
                Extra {
                    user_input: "user text".into(),
                    env: vec![("FROM_CLI".into(), "cli".into()), ("ADDON_ID".into(), "check-contract-1.0".into())],
                    inputs: vec![("in/data.txt".into(), data)],
                    item: Some(item),
                    output_dir: Some(out.clone()),
                    ..Default::default()
                },
            )
            .await?;
        let a = &ran.report;
        if a.result != AddonResult::Success {
            return Err(fail(format!("a well-behaved addon did not succeed: {}", ran.describe())));
        }
        // What it declares aside: a trivial addon has nothing to build, the others have.
        let builds = self.section() != Section::Trivial;
        let mut wrong = Wrong::default();
        wrong.unless(a.runner.as_deref() == Some(self.name.as_str()), || {
            format!("the result names runner {:?}", a.runner)
        });
        wrong.unless(a.sandbox.as_deref().is_some_and(|s| !s.is_empty()), || "the result names no sandbox".into());
        wrong.unless(a.pure, || "a pure addon's result says it was not pure".into());
        let first_cache = if builds { addon_runners::CacheUse::Miss } else { addon_runners::CacheUse::None };
        wrong.unless(a.cache == first_cache, || format!("first run: cache {:?}, expected {first_cache:?}", a.cache));
        let m = ran.map();
        let mut expect = |k: &str, v: &str| wrong.expect(&m, k, v);
        expect("args", "--flag second arguments/user-input");
        expect("input", "user text");
        // The run's directories sit at /mnt in every sandbox.
        expect("cwd", "/mnt/work");
        expect("ADDON_DIR", "/mnt/work/addons/check-contract-1.0");
        expect("OUTPUT_DIR", "/mnt/output");
        expect("CACHE_DIR", "/mnt/cache");
        expect("TMPDIR", "/mnt/work/temp");
        expect("TMP_DIR", "/mnt/work/temp");
        expect("FROM_CLI", "cli");
        expect("FROM_CONFIG", "configured");
        // The engine's environment must not leak.
        expect(SECRET_ENV, "unset");
        expect("ITEM_DIR", "item");
        expect("ITEM_DATA_JSON", "item/item-data.json");
        expect("ITEM_ARGS_JSON", "item/given-data.json");
        expect("ITEM_PDF_DIR", "item/pdfs");
        expect("ITEM_ORIGINAL_DIR", "item/originals");
        expect("ITEM_ORIGINAL_JSON", "item/source-files.json");
        expect("ITEM_PDF_JSON", "item/pdf-files.json");
        expect("layout", "ok");
        expect("layout2", "ok");
        expect("item", "ok");
        expect("input_file", "payload");
        expect("tmp", "writable");
        expect("cache_runs", "1");
        // HOME is writable.
        expect("home_runs", "1");
        if !self.container() {
            expect("HOME", "/mnt/home");
        }
        wrong.unless(!self.container() || m.get("HOME").map(String::as_str) != Some("/mnt/home"), || {
            "a container keeps its image's HOME, not /mnt/home".into()
        });
        wrong.unless(fs_err::read_to_string(out.join("result.txt")).ok().as_deref() == Some("result\n"), || {
            "the output file did not arrive in the output directory".into()
        });
        let text_file = a.output.as_ref().and_then(|o| o.files.first()).and_then(|f| f.text_files.get("att-1"));
        wrong.unless(text_file.map(String::as_str) == Some("result.txt"), || {
            format!("the JSON the addon printed (without a trailing newline) was lost: {:?}", a.output)
        });
        let canonical = out.canonicalize().unwrap_or_else(|_| out.clone());
        wrong.unless(ran.output_dir == canonical, || {
            format!("the result names output directory {}, not {}", ran.output_dir.display(), canonical.display())
        });
        // CACHE_DIR persists between runs of the same addon, and so does a host runner's HOME; run
        // directories do not. The second run builds nothing.
        let again = self
            .go(&addon, Extra { env: vec![("ADDON_ID".into(), "check-contract-1.0".into())], ..Default::default() })
            .await?;
        let m = again.map();
        wrong.unless(m.get("cache_runs").map(String::as_str) == Some("2"), || {
            "CACHE_DIR did not persist to the second run".into()
        });
        let home = if self.container() { "1" } else { "2" };
        wrong.unless(m.get("home_runs").map(String::as_str) == Some(home), || {
            format!(
                "second run: home_runs {:?}, expected {home} (a host runner's HOME persists, a container's does not)",
                m.get("home_runs")
            )
        });
        let second_cache = if builds { addon_runners::CacheUse::Hit } else { addon_runners::CacheUse::None };
        wrong.unless(again.report.cache == second_cache, || {
            format!("second run: cache {:?}, expected {second_cache:?}", again.report.cache)
        });
        // Runs hand their directories to the engine's janitor when they return.
        self.engine.settle();
        let runs: Vec<String> = fs_err::read_dir(self.root.join("work"))
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let runs: Vec<&String> = runs.iter().filter(|n| n.starts_with("run-")).collect();
        wrong.unless(runs.is_empty(), || format!("run directories must be removed: {runs:?}"));
        wrong.verdict(|| {
            format!(
                "directories, environment, arguments, item, inputs, output files and JSON; second run cache {:?}",
                again.report.cache
            )
            .to_lowercase()
        })
    }

    /// A failing addon's error names its own exit code and stderr, never the sandbox tool's
    /// chatter (nspawn prints "Attempted to remove disk file system under ..." on every run).
    async fn failure_cause(&mut self) -> Checked {
        let script = "echo 'preparing the rotation' >&2\nexec no-such-program-xyz --rotate";
        let addon = self.addon("check-missing", PURE, script, None)?;
        let ran = self.go(&addon, Extra::default()).await?;
        let a = &ran.report;
        let err = ran.error();
        let mut wrong = Wrong::default();
        wrong.unless(a.result == AddonResult::ExecutionError && a.exit_code == Some(127), || {
            format!("expected execution-error with exit code 127; got {}", ran.describe())
        });
        wrong.unless(err.contains("exited with code 127") && err.contains("no-such-program-xyz"), || {
            format!("the error does not name the exit code and the missing program: {err}")
        });
        wrong.unless(err.contains("preparing the rotation"), || {
            format!("the error holds no more than the last line: {err}")
        });
        let chatter = |s: &str| s.contains("Attempted to remove");
        wrong.unless(!chatter(err) && !a.stderr_tail.iter().any(|l| chatter(l)), || {
            format!("the sandbox tool's chatter is in the error or the stderr tail: {err}")
        });
        wrong.verdict(|| "exit code 127 and the addon's own stderr in the error".into())
    }

    /// A stubborn addon (ignores SIGTERM, leaves a setsid'ed child): stopped at its timeout, and
    /// nothing of it is left.
    async fn timeout(&mut self) -> Checked {
        let marker = self.marker(51_000);
        let script =
            format!("trap '' TERM\n( setsid sh -c \"trap '' TERM; exec sleep {marker}\" & )\nsleep {marker}\n");
        let addon = self.addon("check-stubborn", PURE, &script, None)?;
        let ran = self.go(&addon, Extra { timeout: Some(Duration::from_secs(3)), ..Default::default() }).await?;
        if ran.report.result != AddonResult::Timeout || !ran.error().contains("3s") {
            return Err(fail(format!("expected timeout, with the 3s in the error; got {}", ran.describe())));
        }
        self.nothing_left(&format!("sleep {marker}")).await?;
        Ok("stopped at its 3 s timeout; nothing left running".into())
    }

    async fn leftovers(&mut self) -> Checked {
        let marker = self.marker(52_000);
        let addon = self.addon("check-leaver", PURE, &format!("( setsid sleep {marker} & )\necho '{{}}'"), None)?;
        let ran = self.go(&addon, Extra::default()).await?;
        if ran.report.result != AddonResult::Success {
            return Err(fail(format!("expected success; got {}", ran.describe())));
        }
        self.nothing_left(&format!("sleep {marker}")).await?;
        Ok("a background process died with its addon".into())
    }

    /// An engine killed without warning mid-run (SIGKILL) takes its addon along: the runner's
    /// sandbox dies with it, or (for a runner with a daemon, which keeps its containers) the next
    /// engine to start removes it before anything else. Needs the `addon` program, which this
    /// check starts as the engine to kill.
    async fn engine_death(&mut self) -> Checked {
        let Some(program) = addon_program() else {
            return Err(Outcome::Skip(
                "this check starts the `addon` program as the engine to kill; run it from `addon runners check`".into(),
            ));
        };
        let marker = self.marker(54_000);
        let script = format!("( setsid sleep {marker} & )\necho started >&2\nexec sleep {marker}\n");
        let addon = self.addon("check-orphan", PURE, &script, None)?;
        let config = self.root.join("engine.yml");
        let yaml = serde_yaml::to_string(self.engine.config())
            .map_err(|e| fail(format!("writing the engine's configuration: {e}")))?;
        fs_err::write(&config, yaml).map_err(|e| fail(format!("writing the engine's configuration: {e}")))?;
        let mut engine = std::process::Command::new(&program)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--runner", &self.name])
            .arg(&addon)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| fail(format!("starting {}: {e}", program.display())))?;
        let stderr = engine.stderr.take();
        let started = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = started.clone();
        std::thread::spawn(move || {
            let Some(stderr) = stderr else { return };
            for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
                if line.contains("started") {
                    seen.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
        });
        // The addon's processes (a sandbox with a kernel of its own, gVisor's, shows none on the
        // host: there the runtime's own, which name the run's directory).
        let work = self.root.join("work").display().to_string();
        let sleeps = || {
            let sleep = format!("sleep {marker}");
            processes().into_iter().filter(|(_, c)| c.contains(&sleep) || c.contains(&work)).count()
        };
        // "started" comes just before `exec sleep`: wait until the sleeps have been exec'd.
        let deadline = Instant::now() + Duration::from_secs(300);
        while !started.load(std::sync::atomic::Ordering::SeqCst) && Instant::now() < deadline {
            if let Ok(Some(status)) = engine.try_wait() {
                return Err(fail(format!("the engine ended ({status}) before its addon started")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while sleeps() < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let running = sleeps();
        let _ = engine.kill();
        let _ = engine.wait();
        if running == 0 {
            return Err(fail("the addon never ran, so its end could not be judged"));
        }
        if self.caps.needs_daemon {
            // A daemon keeps the container of a killed engine: the next engine to start (here
            // `addon runners`, which talks to every runtime) removes it before anything else.
            let out = std::process::Command::new(&program)
                .arg("runners")
                .arg("--config")
                .arg(&config)
                .output()
                .map_err(|e| fail(format!("starting {}: {e}", program.display())))?;
            if !out.status.success() {
                return Err(fail(format!("the next engine failed: {}", String::from_utf8_lossy(&out.stderr))));
            }
        }
        self.nothing_left(&format!("sleep {marker}")).await?;
        Ok(if self.caps.needs_daemon {
            "the killed engine's addon was gone once the next engine started".into()
        } else {
            "the addon died with the engine killed under it".into()
        })
    }

    /// No process mentions `marker` or this check's directories (a sandbox runtime's own
    /// processes name them) within a few seconds.
    async fn nothing_left(&self, marker: &str) -> Result<(), Outcome> {
        let root = self.root.display().to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left: Vec<String> = processes()
                .into_iter()
                .filter(|(_, cmd)| cmd.contains(marker) || cmd.contains(&root))
                .map(|(p, c)| format!("{p}: {c}"))
                .collect();
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(fail(format!("processes outlived the run: {}", left.join("; "))));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn probe(&mut self) -> Result<PathBuf, Outcome> {
        let root = self.root.clone();
        self.probe.get_or_insert_with(|| build_probe(&root)).clone().map_err(|e| Outcome::Skip(e.to_string()))
    }

    /// Runs the probe in `probe` mode with the bait set: what it found, and what the bait saw.
    async fn probe_with_bait(&mut self, name: &str, options: &str) -> Result<(Ran, Vec<String>), Outcome> {
        let addon = self.probe_addon(name, options)?;
        // Digits, distinct per bait of this process (the probe sleeps that many seconds).
        static MARKERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let serial = MARKERS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let marker = format!("{}{serial}", 53_000 + std::process::id() % 1000);
        let secret = std::env::var(SECRET_ENV).ok().filter(|s| !s.is_empty());
        let bait =
            Bait::with_secret(&self.root, marker, secret).map_err(|e| fail(format!("setting the kit's bait: {e}")))?;
        // The engine holds a descriptor it did not open (as a job server or a wrapper leaves
        // them): a root-only file, open for writing, without close-on-exec.
        let leaked = fs_err::OpenOptions::new()
            .append(true)
            .open(&bait.secret_file)
            .map_err(|e| fail(format!("setting the kit's bait: {e}")))?;
        // SAFETY: clearing close-on-exec on a descriptor this check owns (closed below).
        unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&leaked), libc::F_SETFD, 0) };
        let env = bait.env(self.config_path.as_deref());
        let ran = self.go(&addon, Extra { user_input: "probe".into(), env, ..Default::default() }).await;
        drop(leaked);
        let udp = bait.udp_got();
        let escaped = bait.escaped_writes();
        drop(bait);
        let ran = ran?;
        if ran.report.result != AddonResult::Success {
            return Err(fail(format!("the probe did not run to its end: {}", ran.describe())));
        }
        let mut found = judge(&ran.lines, &self.caps);
        if udp {
            found.push("host-loopback-udp: a datagram reached the host".into());
        }
        if !escaped.is_empty() {
            found.push(format!("writes outside the addon's directories: {escaped:?}"));
        }
        Ok((ran, found))
    }

    /// A pure addon reaches no network (only `lo`, nothing of the host's loopback); an impure
    /// one reaches the host.
    async fn network(&mut self) -> Checked {
        const NETWORK: [&str; 7] = [
            "host-loopback-tcp",
            "host-loopback-udp",
            "abstract-unix",
            "raw-socket",
            "packet-socket",
            "interfaces",
            "route-out",
        ];
        let is_network = |f: &String| NETWORK.iter().any(|n| f.starts_with(n));
        let (pure, found) = self.probe_with_bait("check-net", PURE).await?;
        let mut wrong = Wrong::default();
        for f in found.into_iter().filter(is_network) {
            wrong.0.push(f);
        }
        wrong.unless(pure.report.pure, || "a pure addon's result says it was not pure".into());
        let pure_said = "a pure addon reached no network: only lo, no host loopback (TCP, UDP, abstract unix), no raw or packet sockets";
        if self.engine.config().network.impure == crate::config::ImpureNetwork::Host {
            let (impure, found) = self.probe_with_bait("check-net-impure", IMPURE).await?;
            wrong.unless(!impure.report.pure, || "an impure addon's result says it was pure".into());
            wrong.unless(found.iter().any(|f| f.starts_with("host-loopback-tcp")), || {
                "an impure addon did not reach the host's loopback (networking: true, network.impure: host)".into()
            });
            return wrong.verdict(|| format!("{pure_said}; an impure one reached the host (network.impure: host)"));
        }
        if !self.gives_egress() {
            // No silent downgrade to the host's network: the impure addon is refused, saying why.
            let addon = self.probe_addon("check-net-impure", IMPURE)?;
            let ran = self.go(&addon, Extra { user_input: "probe".into(), ..Default::default() }).await?;
            let error = ran.report.error.clone().unwrap_or_default();
            wrong.unless(ran.report.result == AddonResult::ExecutionFailed && error.contains("egress"), || {
                format!(
                    "an impure addon on a runner without egress networks was not refused for it: {}",
                    ran.describe()
                )
            });
            return wrong.verdict(|| {
                format!("{pure_said}; an impure one is refused (this runner gives no egress network; `network.impure: host` runs it with the host's)")
            });
        }
        // The hostile kit in impure mode: with its egress network, the probe finds nothing of the
        // host either (its loopback, abstract sockets, raw and packet sockets, secrets, sockets
        // of daemons); it has an interface and a route out, which is what it asked for.
        let (impure, found) = self.probe_with_bait("check-net-impure", IMPURE).await?;
        wrong.unless(!impure.report.pure, || "an impure addon's result says it was pure".into());
        let policy = impure.report.network.as_ref().map(|n| n.policy);
        wrong.unless(policy == Some(addon_runners::egress::NetKind::Egress), || {
            format!("an impure addon ran with network {policy:?}, not egress")
        });
        for f in found.into_iter().filter(|f| !f.starts_with("interfaces") && !f.starts_with("route-out")) {
            wrong.0.push(format!("impure (egress): {f}"));
        }
        wrong.verdict(|| format!("{pure_said}; an impure one (egress network) reached nothing of the host either"))
    }

    /// Whether the target gives an impure addon an egress network here: itself, or through the
    /// engine's sandbox.
    fn gives_egress(&self) -> bool {
        if self.caps.egress {
            return true;
        }
        let sandboxes = self.engine.sandboxes();
        self.caps.uses_sandbox
            && crate::resolve::pick_sandbox(sandboxes, self.engine.config().sandbox)
                .is_ok_and(|kind| sandboxes.get(kind).egress().is_ok())
    }

    /// The probe, judged whole.
    async fn kit(&mut self) -> Checked {
        let (ran, found) = self.probe_with_bait("check-hostile", PURE).await?;
        let total = ran.lines.iter().filter(|l| l.starts_with("kit ")).count();
        Wrong(found).verdict(|| {
            format!("{total} probes found nothing (daemon sockets, host secrets, inherited descriptors, writes outside, privileges, kernel interfaces, network)")
        })
    }

    async fn fork_bomb(&mut self) -> Checked {
        let addon = self.probe_addon("check-forkbomb", PURE)?;
        let limits = LimitsOverride { pids: Some(64), ..Default::default() };
        let extra = Extra {
            user_input: "forkbomb".into(),
            limits,
            timeout: Some(Duration::from_secs(60)),
            ..Default::default()
        };
        let ran = self.go(&addon, extra).await?;
        let mut wrong = Wrong::default();
        wrong.stopped(&ran, Termination::Limit, "process limit");
        let host = std::process::Command::new("/bin/true").status().is_ok_and(|s| s.success());
        wrong.unless(host, || "the host cannot start processes after the fork bomb".into());
        wrong.verdict(|| "ended at its process limit (64)".into())
    }

    async fn memory_hog(&mut self) -> Checked {
        let addon = self.probe_addon("check-memhog", PURE)?;
        let limits = LimitsOverride { memory: Some(ByteSize(64 << 20)), ..Default::default() };
        let ran = self.go(&addon, Extra { user_input: "memhog".into(), limits, ..Default::default() }).await?;
        let a = &ran.report;
        let mut wrong = Wrong::default();
        wrong.stopped(&ran, Termination::Oom, "OOM");
        let memory = a.limits.as_ref().and_then(|l| l.memory);
        wrong.unless(memory == Some(64 << 20), || format!("the result's memory limit is {memory:?}, not 64 MiB"));
        wrong.verdict(|| "ended by the OOM killer at its memory limit (64 MiB)".into())
    }

    /// A grandchild that double-forked away from the addon does not outlive the run.
    async fn double_fork(&mut self) -> Checked {
        let marker = self.marker(57_000);
        let addon = self.probe_addon("check-doublefork", PURE)?;
        let extra = Extra {
            user_input: "doublefork".into(),
            env: vec![("MARKER".into(), marker.clone())],
            ..Default::default()
        };
        let ran = self.go(&addon, extra).await?;
        if ran.report.result != AddonResult::Success {
            return Err(fail(format!("expected success; got {}", ran.describe())));
        }
        self.nothing_left(&format!("sleep {marker}")).await?;
        Ok("a double-forked grandchild died with the run".into())
    }

    /// Setuid and setgid files an addon leaves in its output, CACHE_DIR or HOME lose those bits
    /// (a container's root, or nspawn's id-mapped root, makes them owned by the host's root).
    async fn setuid_files(&mut self) -> Checked {
        let addon = self.probe_addon("check-setuid", PURE)?;
        let out = self.root.join("setuid-out");
        let extra = Extra { user_input: "setuid".into(), output_dir: Some(out.clone()), ..Default::default() };
        let ran = self.go(&addon, extra).await?;
        if ran.report.result != AddonResult::Success || !ran.said("made") {
            return Err(fail(format!("the probe made no setuid copies: {}", ran.describe())));
        }
        let bad = self.left_unsafe(&[(&out, false), (&self.root.join("cache"), true)], None)?;
        Wrong(bad).verdict(|| "setuid copies in output, CACHE_DIR and HOME lost their bits".into())
    }

    /// The limits every fill runs under: the output size, 20000 entries, 512 MiB of memory.
    fn fill(&self, mode: &str, out: &Path) -> Extra {
        Extra {
            user_input: mode.into(),
            env: vec![("TMPFS_BOUND_MIB".into(), FILL_LIMIT_MIB.to_string())],
            limits: LimitsOverride {
                output_size: Some(ByteSize(FILL_LIMIT_MIB << 20)),
                output_entries: Some(20_000),
                memory: Some(ByteSize(512 << 20)),
                ..Default::default()
            },
            output_dir: Some(out.to_path_buf()),
            timeout: Some(Duration::from_secs(120)),
            ..Default::default()
        }
    }

    /// `diskfill` (its directories) or `unlinkfill` (files it holds open after unlinking them):
    /// stopped near the output size.
    async fn disk_fill(&mut self, mode: &str) -> Checked {
        let addon = self.probe_addon(&format!("check-{mode}"), PURE)?;
        let out = self.root.join(format!("{mode}-out"));
        let ran = self.go(&addon, self.fill(mode, &out)).await?;
        // What the probe says it wrote (what is left on disk says nothing of what it held open).
        let Some(written) = last_number(&ran.lines, "kit-written=").map(|w| w << 20) else {
            return Err(fail(format!("the probe reported no progress: {}", ran.describe())));
        };
        let left = addon_tree::measure(&out).map(|m| m.length).unwrap_or(0);
        if ran.report.termination == Some(Termination::Limit) && written <= (FILL_LIMIT_MIB << 20) + FILL_SLACK {
            Ok(format!(
                "stopped at its output size ({FILL_LIMIT_MIB} MiB) after {} MiB; {left} bytes left",
                written >> 20
            ))
        } else {
            Err(fail(format!(
                "expected a stop near the output size ({FILL_LIMIT_MIB} MiB); got {}; {} MiB written",
                ran.describe(),
                written >> 20
            )))
        }
    }

    /// The owner every entry left on the host must have: the engine's user, when it is not
    /// root (root's engine gives entries to whoever it judges).
    fn owner(&self) -> Option<u32> {
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        (uid != 0).then_some(uid)
    }

    /// What is left unsafe in `trees` (each with whether links may stay there; see
    /// [`unsafe_entries`]), judged once the engine's janitor has removed what runs handed it.
    fn left_unsafe(&self, trees: &[(&PathBuf, bool)], owner: Option<u32>) -> Result<Vec<String>, Outcome> {
        self.engine.settle();
        let mut bad = Vec::new();
        for (tree, links_allowed) in trees {
            bad.extend(unsafe_entries(tree, *links_allowed, owner).map_err(|e| fail(e.to_string()))?);
        }
        Ok(bad)
    }

    /// Directories nested past PATH_MAX in the output, CACHE_DIR and HOME with a setuid copy,
    /// a link to /etc/shadow and a fifo at the bottom: nothing of that is left on the host (and
    /// for an unprivileged engine, everything left is its user's).
    async fn nested_trees(&mut self) -> Checked {
        let addon = self.probe_addon("check-nested", PURE)?;
        let out = self.root.join("nested-out");
        let ran = self
            .go(&addon, Extra { user_input: "deepnest".into(), output_dir: Some(out.clone()), ..Default::default() })
            .await?;
        for dir in ["OUTPUT_DIR", "CACHE_DIR", "HOME"] {
            if !ran.said(&format!("{dir}: 40 levels, 8040 bytes; setuid copy made")) {
                return Err(fail(format!("the probe could not nest its directories in {dir}: {}", ran.describe())));
            }
        }
        if !matches!(ran.report.result, AddonResult::Success | AddonResult::ExecutionFailed) {
            return Err(fail(format!("expected success or execution-failed; got {}", ran.describe())));
        }
        let trees = [(&out, false), (&self.root.join("cache"), true), (&self.root.join("work"), true)];
        let bad = self.left_unsafe(&trees, self.owner())?;
        if bad.is_empty() {
            Ok("8,040 bytes deep (PATH_MAX is 4,096) in output, CACHE_DIR and HOME; no setuid file, link or fifo left"
                .into())
        } else {
            Err(fail(format!("left on the host: {}", bad.join("; "))))
        }
    }

    /// A second run of the same addon swaps a directory of the shared CACHE_DIR for a link to a
    /// host directory while this engine runs the addon three times: the host directory's setuid
    /// files (the engine's user's own) keep their bits and owner.
    async fn cache_race(&mut self) -> Checked {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let addon = self.probe_addon("check-race", PURE)?;
        let host = self.root.join("race-host");
        let io = |e: std::io::Error| fail(format!("setting the race's bait: {e}"));
        fs_err::create_dir_all(&host).map_err(io)?;
        let baits: Vec<PathBuf> = (0..20).map(|i| host.join(format!("setuid-{i}"))).collect();
        for b in &baits {
            fs_err::write(b, "#!/bin/sh\n").map_err(io)?;
            fs_err::set_permissions(b, std::fs::Permissions::from_mode(0o4755)).map_err(io)?;
        }
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        let state = || -> Vec<(u32, u32)> {
            baits
                .iter()
                .map(|b| fs_err::metadata(b).map(|m| (m.uid(), m.mode() & 0o7777)).unwrap_or_default())
                .collect()
        };
        let before = state();
        let req = self.request(
            &addon,
            Extra {
                user_input: "swaprace".into(),
                env: vec![("RACE_TARGET".into(), host.display().to_string()), ("RACE_SECONDS".into(), "6".into())],
                timeout: Some(Duration::from_secs(60)),
                ..Default::default()
            },
        );
        let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
        let engine = self.engine;
        let b_run = engine.run(req, Some(tx), CancellationToken::new());
        let a_runs = async {
            let mut said = Vec::new();
            let started = tokio::time::timeout(Duration::from_secs(120), async {
                while let Some(e) = rx.recv().await {
                    if let Event::Log { line, .. } = e {
                        let go = line.contains("kit-swaprace started");
                        said.push(line);
                        if go {
                            return true;
                        }
                    }
                }
                false
            })
            .await
            .unwrap_or(false);
            let mut results = Vec::new();
            if started {
                for _ in 0..3 {
                    let req = self.request(&addon, Extra { user_input: "setuid".into(), ..Default::default() });
                    let r = engine.run(req, None, CancellationToken::new()).await;
                    results.push(r.map(|r| r.addons.len()).map_err(|e| e.to_string()));
                }
            }
            // Drain the rest, so the swapping run is never held up by a full channel.
            while let Some(e) = rx.recv().await {
                if let Event::Log { line, .. } = e {
                    said.push(line);
                }
            }
            (started, said, results)
        };
        let (b, (started, said, results)) = tokio::join!(b_run, a_runs);
        let b = b.map_err(|e| fail(e.to_string()))?;
        let swapping = b.addons.first().map(|a| format!("{:?}: {}", a.result, a.error.clone().unwrap_or_default()));
        if !started {
            return Err(fail(format!("the swapping run never started: {}", said.join("\n"))));
        }
        let mut wrong = Wrong::default();
        wrong.unless(said.iter().any(|l| l.contains("kit-swaprace swaps=")), || {
            format!(
                "the swapping run ({}) did not report its swaps: {}",
                swapping.clone().unwrap_or_default(),
                said.join("\n")
            )
        });
        for r in &results {
            wrong.unless(r.as_ref().is_ok_and(|n| *n == 1), || format!("a walking run reported no result: {r:?}"));
        }
        let after = state();
        wrong.unless(before.iter().all(|b| *b == (me, 0o4755)), || format!("the bait was not set: {before:?}"));
        wrong.unless(after == before, || {
            format!("the host directory's files changed through the link: before {before:?}, after {after:?}")
        });
        let mut bad = self.left_unsafe(&[(&self.root.join("cache"), true)], self.owner())?;
        // The race's own tree in CACHE_DIR holds the link it swaps in: judged by the bait's
        // state above, not here. Matched below the judged root only (the root's own path may
        // hold any word).
        let cache = self.root.join("cache").display().to_string();
        bad.retain(|b| !b.strip_prefix(&cache).is_some_and(|below| below.contains("/race/")));
        wrong.unless(bad.is_empty(), || format!("left on the host: {}", bad.join("; ")));
        wrong.verdict(|| "a directory of CACHE_DIR swapped for a link to a host directory during three runs' walks: the host's setuid files kept their owner and bits".into())
    }

    /// Empty files in CACHE_DIR until stopped: bounded by `output-entries`.
    async fn inode_flood(&mut self) -> Checked {
        let addon = self.probe_addon("check-inodes", PURE)?;
        let out = self.root.join("inodes-out");
        let mut fill = self.fill("inodeflood", &out);
        fill.limits.output_entries = Some(FLOOD_ENTRIES);
        let ran = self.go(&addon, fill).await?;
        let made = last_number(&ran.lines, "kit-inodeflood made=").unwrap_or(0);
        if ran.report.termination == Some(Termination::Limit)
            && ran.error().contains("output-entries")
            && made <= 11 * FLOOD_ENTRIES
        {
            Ok(format!("stopped at its entry limit ({FLOOD_ENTRIES}) after {made}+ files"))
        } else {
            Err(fail(format!(
                "expected a stop at the entry limit ({FLOOD_ENTRIES}); got {}; {made}+ files made",
                ran.describe()
            )))
        }
    }

    /// A container's own file system (its writable layer, an image `VOLUME` at /data): bounded
    /// near the output size, and no volume left behind. Host runners' roots are read-only.
    async fn container_fill(&mut self) -> Checked {
        let addon = self.probe_addon("check-rootfill", PURE)?;
        let out = self.root.join("rootfill-out");
        let ran = self.go(&addon, self.fill("rootfill", &out)).await?;
        let root = last_number(&ran.lines, "kit-fill /kit-fill=").unwrap_or(0) << 20;
        let volume = last_number(&ran.lines, "kit-fill /data/kit-fill=").unwrap_or(0) << 20;
        let bound = (FILL_LIMIT_MIB << 20) + FILL_SLACK;
        let mut wrong = Wrong::default();
        wrong.unless(root <= bound && volume <= bound, || {
            format!(
                "its root took {} MiB and a VOLUME {} MiB under a {FILL_LIMIT_MIB} MiB output size",
                root >> 20,
                volume >> 20
            )
        });
        if self.container() {
            // Stopped at the limit, or held to it by the file system (oci's overlay is a tmpfs
            // of the output size).
            wrong.unless(
                ran.report.termination == Some(Termination::Limit) || root <= (FILL_LIMIT_MIB + 8) << 20,
                || format!("its root took {} MiB and it was not stopped: {}", root >> 20, ran.describe()),
            );
        }
        wrong.verdict(|| {
            format!(
                "its root took {} MiB and a VOLUME {} MiB under a {FILL_LIMIT_MIB} MiB output size ({})",
                root >> 20,
                volume >> 20,
                ran.describe()
            )
        })
    }

    /// /dev/shm, /tmp and /var/tmp (memory, where they are a tmpfs): bounded near the output size.
    async fn tmpfs_fill(&mut self) -> Checked {
        let addon = self.probe_addon("check-tmpfs", PURE)?;
        let out = self.root.join("tmpfs-out");
        let ran = self.go(&addon, self.fill("tmpfill", &out)).await?;
        let over: Vec<&String> =
            ran.lines.iter().filter(|l| l.starts_with("kit tmpfs-") && l.contains("found=yes")).collect();
        let all_reported = ["tmpfs-shm", "tmpfs-tmp", "tmpfs-var-tmp"]
            .iter()
            .all(|c| ran.lines.iter().any(|l| l.starts_with(&format!("kit {c} "))));
        if !over.is_empty() {
            Err(fail(format!("more than the output size went into memory: {over:?}")))
        } else if all_reported || ran.report.termination == Some(Termination::Limit) {
            Ok("each of /dev/shm, /tmp, /var/tmp held at most the output size (64 MiB), or the run was stopped at it"
                .into())
        } else {
            Err(fail(format!("the fills were neither bounded nor stopped: {}", ran.describe())))
        }
    }

    /// An honest addon that makes private directories (`mktemp -d`, mode 0700, as whoever the
    /// image runs as, root in a container) in TMPDIR and CACHE_DIR is measured and succeeds,
    /// twice, whoever runs the engine: an unprivileged engine cannot read them itself.
    async fn private_directories(&mut self) -> Checked {
        let script = "d=$(mktemp -d) && echo x > \"$d/f\" && mkdir -p \"$CACHE_DIR/p\" && chmod 700 \"$CACHE_DIR/p\" && echo y > \"$CACHE_DIR/p/f\" && echo '{}'";
        let addon = self.addon("check-private", PURE, script, None)?;
        for run in ["first", "second"] {
            let limits = LimitsOverride { output_size: Some(ByteSize(64 << 20)), ..Default::default() };
            let ran = self.go(&addon, Extra { limits, ..Default::default() }).await?;
            if ran.report.result != AddonResult::Success {
                return Err(fail(format!("the {run} run did not succeed: {}", ran.describe())));
            }
        }
        Ok("private directories in TMPDIR and CACHE_DIR were measured; both runs succeeded".into())
    }
}

/// This program, when it is `addon` (the engine a check can start and kill).
fn addon_program() -> Option<PathBuf> {
    std::env::current_exe().ok().filter(|p| p.file_name().is_some_and(|n| n == "addon"))
}

/// Compiles the kit's probe (`probe.c`) into `dir` with `gcc -static`.
pub fn build_probe(dir: &Path) -> Result<PathBuf, ProbeBuildError> {
    let src = dir.join("probe.c");
    let out = dir.join("probe");
    fs_err::write(&src, PROBE_C).map_err(|e| ProbeBuildError::Write(Arc::new(e)))?;
    let cc = std::process::Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .map_err(|e| ProbeBuildError::NoCompiler(Arc::new(e)))?;
    if !cc.status.success() {
        return Err(ProbeBuildError::Compile { stderr: String::from_utf8_lossy(&cc.stderr).into_owned() });
    }
    Ok(out)
}

/// A flake without inputs whose package is the addon's `run.sh` as `bin/run`, built with the
/// host's static busybox (nix needs `extra-sandbox-paths /bin/busybox`); `marker` makes its
/// store path unique.
pub fn run_sh_flake(name: &str, marker: &str) -> String {
    format!(
        r#"{{
  outputs = {{ self }}: {{
    packages.x86_64-linux.default = derivation {{
      name = "{name}-{marker}";
      system = "x86_64-linux";
      builder = "/bin/busybox";
      args = [ "sh" "-c" "/bin/busybox mkdir -p $out/bin && /bin/busybox cp ${{./run.sh}} $out/bin/run && /bin/busybox chmod 555 $out/bin/run" ];
    }};
  }};
}}
"#
    )
}
