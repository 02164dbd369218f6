//! `addon runners check NAME`: the conformance checks and the hostile-addon kit against one
//! runner or plugin as configured, as a command a runner or plugin author runs. Every check runs
//! real addons through the engine with only that runner; a runner's declared capabilities are
//! not taken on trust (one that says it isolates the network is held to it by the kit).
//!
//! The kit's probe is a static C program (`check/probe.c`, built in), compiled
//! here with `gcc -static`; without gcc the kit's checks are reported as skipped, never passed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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
pub const CHECKS: [&str; 15] = [
    "available",
    "contract",
    "failure-cause",
    "timeout",
    "leftovers",
    "network-isolation",
    "hostile-kit",
    "fork-bomb",
    "memory-hog",
    "disk-fill",
    "nested-trees",
    "cache-race",
    "inode-flood",
    "tmpfs-fill",
    "container-fill",
];

/// What may pass the output size before the engine sees it and stops the addon (it writes a
/// few GB a second into the page cache; limits are checked every 50 ms).
const FILL_SLACK: u64 = 512 << 20;

/// Runs every check against runner `name` of `config` (in a private working and cache
/// directory). `only` limits the checks to some names.
pub async fn run(config: &Config, name: &str, only: &[String]) -> Result<CheckReport, String> {
    let root = tempfile::Builder::new().prefix("addon-check-").tempdir().map_err(|e| e.to_string())?;
    set_mode(root.path(), 0o755);
    let mut config = config.clone();
    config.working_dir = root.path().join("work");
    config.cache_dir = root.path().join("cache");
    config.fail_fast = false;
    let engine = Engine::new(config);
    let Some(runner) = engine.runner(name) else {
        let known: Vec<String> = engine.config().runner_names();
        return Err(format!("no runner `{name}` here; known runners: {}", known.join(", ")));
    };
    let info = runner.info();
    let section = [Section::Trivial, Section::Docker, Section::Nix].into_iter().find(|s| info.serves.contains(s));
    let mut kit =
        Kit { engine: &engine, name: name.to_string(), section, root: root.path().to_path_buf(), probe: None, n: 0 };
    let mut checks = Vec::new();
    let wanted = |c: &str| only.is_empty() || only.iter().any(|o| o == c);
    let started = Instant::now();
    let probe = runner.probe().await;
    let available = probe.available;
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
        let local = ["timeout", "leftovers", "network-isolation", "hostile-kit"].contains(check);
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
    section: Option<Section>,
    root: PathBuf,
    probe: Option<Result<PathBuf, String>>,
    n: u32,
}

/// What a check's run gave.
struct Ran {
    report: AddonReport,
    /// The addon's log lines (stderr, and stdout when not collected).
    lines: Vec<String>,
}

impl Ran {
    /// `key=value` lines the addon printed on stderr.
    fn map(&self) -> BTreeMap<String, String> {
        self.lines.iter().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
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
    timeout: Option<Duration>,
    limits: LimitsOverride,
    output_dir: Option<PathBuf>,
}

const PURE: &str = "options:\n  networking: false\n  collectOutput: true\n";

impl Kit<'_> {
    async fn run(&mut self, check: &str) -> Checked {
        match check {
            "contract" => self.contract().await,
            "failure-cause" => self.failure_cause().await,
            "timeout" => self.timeout().await,
            "leftovers" => self.leftovers().await,
            "network-isolation" => self.kit(true).await,
            "hostile-kit" => self.kit(false).await,
            "fork-bomb" => self.fork_bomb().await,
            "memory-hog" => self.memory_hog().await,
            "disk-fill" => self.disk_fill().await,
            "nested-trees" => self.nested_trees().await,
            "cache-race" => self.cache_race().await,
            "inode-flood" => self.inode_flood().await,
            "tmpfs-fill" => self.tmpfs_fill().await,
            "container-fill" => self.container_fill().await,
            other => Err(Outcome::Skip(format!("unknown check {other}"))),
        }
    }

    fn section(&self) -> Section {
        self.section.unwrap_or(Section::Trivial)
    }

    /// A fresh addon called `name` whose program is `script` (POSIX sh), or `program` (a file
    /// copied in as the program).
    fn addon(&mut self, name: &str, script: &str, program: Option<&Path>) -> Result<PathBuf, Outcome> {
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
            format!("meta:\n  name: {name}\n  version: \"1.0\"\nargs: [--flag, second]\nrunner:\n{runner_yaml}{PURE}"),
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

    async fn go(&self, addon: &Path, extra: Extra) -> Result<Ran, Outcome> {
        let req = RunRequest {
            sources: vec![addon.display().to_string()],
            runners: Some(vec![self.name.clone()]),
            user_input: extra.user_input,
            env: extra.env,
            timeout: extra.timeout,
            limits: extra.limits,
            output_dir: extra.output_dir,
            fail_fast: Some(false),
            ..Default::default()
        };
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
        let report = self.engine.run(req, Some(tx), CancellationToken::new()).await.map_err(|e| fail(e.to_string()))?;
        let lines = collect.await.unwrap_or_default();
        let report = report.addons.into_iter().next().ok_or_else(|| fail("the engine reported no addon"))?;
        Ok(Ran { report, lines })
    }

    async fn contract(&mut self) -> Checked {
        let script = r#"
echo "args=$*" >&2
echo "input=$(cat "$3")" >&2
[ "$ADDON_DIR" = "$(pwd)/addons/$ADDON_ID" ] && [ -d "$ADDON_DIR" ] && echo "layout=ok" >&2
[ -f arguments/user-input ] && echo "arguments=ok" >&2
touch "$TMPDIR/x" && echo "tmp=writable" >&2
runs=$(cat "$CACHE_DIR/runs" 2>/dev/null || echo 0); runs=$((runs+1)); echo $runs > "$CACHE_DIR/runs"; echo "cache_runs=$runs" >&2
echo "result" > "$OUTPUT_DIR/result.txt"
printf '%s' '{"files": [{"itemId": "item-1", "textFiles": {"att-1": "result.txt"}}]}'"#;
        let addon = self.addon("check-contract", script, None)?;
        let out = self.root.join("contract-out");
        let extra = || Extra {
            user_input: "user text".into(),
            env: vec![("ADDON_ID".into(), "check-contract-1.0".into())],
            output_dir: Some(out.clone()),
            ..Default::default()
        };
        let ran = self.go(&addon, extra()).await?;
        if ran.report.result != AddonResult::Success {
            return Err(fail(format!("a well-behaved addon did not succeed: {}", ran.describe())));
        }
        let m = ran.map();
        let mut wrong = Vec::new();
        let mut expect = |k: &str, v: &str| {
            if m.get(k).map(String::as_str) != Some(v) {
                wrong.push(format!("{k}: expected `{v}`, got `{}`", m.get(k).map(String::as_str).unwrap_or("nothing")));
            }
        };
        expect("args", "--flag second arguments/user-input");
        expect("input", "user text");
        expect("layout", "ok");
        expect("arguments", "ok");
        expect("tmp", "writable");
        expect("cache_runs", "1");
        if fs_err::read_to_string(out.join("result.txt")).ok().as_deref() != Some("result\n") {
            wrong.push("the output file did not arrive in the output directory".into());
        }
        let json_ok = ran.report.output.as_ref().is_some_and(|o| !o.files.is_empty());
        if !json_ok {
            wrong.push("the JSON the addon printed (without a trailing newline) was lost".into());
        }
        let again = self.go(&addon, extra()).await?;
        if again.map().get("cache_runs").map(String::as_str) != Some("2") {
            wrong.push("CACHE_DIR did not persist to the second run".into());
        }
        if again.report.cache == addon_runners::CacheUse::Miss {
            wrong.push("the second run built again".into());
        }
        if wrong.is_empty() {
            Ok(format!(
                "directories, environment, arguments, output files and JSON; second run cache {:?}",
                again.report.cache
            )
            .to_lowercase())
        } else {
            Err(fail(wrong.join("; ")))
        }
    }

    async fn failure_cause(&mut self) -> Checked {
        let addon =
            self.addon("check-missing", "echo 'preparing the rotation' >&2\nexec no-such-program-xyz --rotate", None)?;
        let ran = self.go(&addon, Extra::default()).await?;
        let a = &ran.report;
        let err = a.error.clone().unwrap_or_default();
        if a.result == AddonResult::ExecutionError && a.exit_code == Some(127) && err.contains("preparing the rotation")
        {
            Ok("exit code 127 and the addon's own stderr in the error".into())
        } else {
            Err(fail(format!(
                "expected execution-error with exit code 127 and the addon's stderr; got {}",
                ran.describe()
            )))
        }
    }

    /// A stubborn addon (ignores SIGTERM, leaves a setsid'ed child): stopped at its timeout, and
    /// nothing of it is left.
    async fn timeout(&mut self) -> Checked {
        let marker = format!("{}", 51_000 + self.n + std::process::id() % 1000);
        let script =
            format!("trap '' TERM\n( setsid sh -c \"trap '' TERM; exec sleep {marker}\" & )\nsleep {marker}\n");
        let addon = self.addon("check-stubborn", &script, None)?;
        let ran = self.go(&addon, Extra { timeout: Some(Duration::from_secs(3)), ..Default::default() }).await?;
        if ran.report.result != AddonResult::Timeout {
            return Err(fail(format!("expected timeout; got {}", ran.describe())));
        }
        self.nothing_left(&format!("sleep {marker}")).await?;
        Ok("stopped at its 3 s timeout; nothing left running".into())
    }

    async fn leftovers(&mut self) -> Checked {
        let marker = format!("{}", 52_000 + self.n + std::process::id() % 1000);
        let addon = self.addon("check-leaver", &format!("( setsid sleep {marker} & )\necho '{{}}'"), None)?;
        let ran = self.go(&addon, Extra::default()).await?;
        if ran.report.result != AddonResult::Success {
            return Err(fail(format!("expected success; got {}", ran.describe())));
        }
        self.nothing_left(&format!("sleep {marker}")).await?;
        Ok("a background process died with its addon".into())
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
        let built = self.probe.get_or_insert_with(|| {
            let src = root.join("probe.c");
            let out = root.join("probe");
            fs_err::write(&src, PROBE_C).map_err(|e| e.to_string())?;
            let cc =
                std::process::Command::new("gcc").args(["-static", "-O2", "-o"]).arg(&out).arg(&src).output().map_err(
                    |e| format!("the kit's probe is compiled with gcc -static: {e} (apt-get install gcc libc6-dev)"),
                )?;
            if !cc.status.success() {
                return Err(format!("compiling the kit's probe failed: {}", String::from_utf8_lossy(&cc.stderr)));
            }
            Ok(out)
        });
        built.clone().map_err(Outcome::Skip)
    }

    /// The probe, judged whole (`hostile-kit`) or for the network only.
    async fn kit(&mut self, network_only: bool) -> Checked {
        const NETWORK: [&str; 7] = [
            "host-loopback-tcp",
            "host-loopback-udp",
            "abstract-unix",
            "raw-socket",
            "packet-socket",
            "interfaces",
            "route-out",
        ];
        let probe = self.probe()?;
        let addon = self.addon(if network_only { "check-net" } else { "check-hostile" }, "", Some(&probe))?;
        // Digits, distinct per bait of this process (the probe sleeps that many seconds).
        static MARKERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let serial = MARKERS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let marker = format!("{}{serial}", 53_000 + std::process::id() % 1000);
        let bait = Bait::new(&self.root, marker).map_err(|e| fail(format!("setting the kit's bait: {e}")))?;
        let ran =
            self.go(&addon, Extra { user_input: "probe".into(), env: bait.env(None), ..Default::default() }).await;
        let udp = bait.udp_got();
        let escaped = bait.escaped_writes();
        drop(bait);
        let ran = ran?;
        if ran.report.result != AddonResult::Success {
            return Err(fail(format!("the probe did not run to its end: {}", ran.describe())));
        }
        let caps = self.engine.runner(&self.name).map(|r| r.info().capabilities).unwrap_or_default();
        let mut found: Vec<String> = judge(&ran.lines, &caps)
            .into_iter()
            .filter(|f| !network_only || NETWORK.iter().any(|n| f.starts_with(n)))
            .collect();
        if udp {
            found.push("host-loopback-udp: a datagram reached the host".into());
        }
        if !network_only && !escaped.is_empty() {
            found.push(format!("writes outside the addon's directories: {escaped:?}"));
        }
        let total = ran.lines.iter().filter(|l| l.starts_with("kit ")).count();
        if found.is_empty() {
            Ok(if network_only {
                "a pure addon reached no network: only lo, no host loopback (TCP, UDP, abstract unix), no raw or packet sockets".into()
            } else {
                format!("{total} probes found nothing (daemon sockets, host secrets, writes outside, privileges, kernel interfaces, network)")
            })
        } else {
            Err(fail(found.join("; ")))
        }
    }

    async fn fork_bomb(&mut self) -> Checked {
        let probe = self.probe()?;
        let addon = self.addon("check-forkbomb", "", Some(&probe))?;
        let limits = LimitsOverride { pids: Some(64), ..Default::default() };
        let ran = self
            .go(
                &addon,
                Extra {
                    user_input: "forkbomb".into(),
                    limits,
                    timeout: Some(Duration::from_secs(60)),
                    ..Default::default()
                },
            )
            .await?;
        match ran.report.termination {
            Some(Termination::Limit) => Ok("ended at its process limit (64)".into()),
            _ => Err(fail(format!("expected termination at the process limit; got {}", ran.describe()))),
        }
    }

    async fn memory_hog(&mut self) -> Checked {
        let probe = self.probe()?;
        let addon = self.addon("check-memhog", "", Some(&probe))?;
        let limits = LimitsOverride { memory: Some(ByteSize(64 << 20)), ..Default::default() };
        let ran = self.go(&addon, Extra { user_input: "memhog".into(), limits, ..Default::default() }).await?;
        match ran.report.termination {
            Some(Termination::Oom) => Ok("ended by the OOM killer at its memory limit (64 MiB)".into()),
            _ => Err(fail(format!("expected termination by the OOM killer; got {}", ran.describe()))),
        }
    }

    async fn disk_fill(&mut self) -> Checked {
        let probe = self.probe()?;
        let addon = self.addon("check-diskfill", "", Some(&probe))?;
        let out = self.root.join("diskfill-out");
        let limits = LimitsOverride { output_size: Some(ByteSize(64 << 20)), ..Default::default() };
        let ran = self
            .go(
                &addon,
                Extra {
                    user_input: "diskfill".into(),
                    limits,
                    output_dir: Some(out.clone()),
                    timeout: Some(Duration::from_secs(120)),
                    ..Default::default()
                },
            )
            .await?;
        // What the probe says it wrote (what is left on disk says nothing of what it held open).
        let written = last_number(&ran.lines, "kit-written=").unwrap_or(0) << 20;
        let left = addon_tree::measure(&out).map(|m| m.length).unwrap_or(0);
        if ran.report.termination == Some(Termination::Limit) && written <= (64 << 20) + FILL_SLACK {
            Ok(format!("stopped at its output size (64 MiB) after {} MiB; {left} bytes left", written >> 20))
        } else {
            Err(fail(format!(
                "expected a stop near the output size (64 MiB); got {}; {} MiB written",
                ran.describe(),
                written >> 20
            )))
        }
    }

    /// Directories nested past PATH_MAX in the output, CACHE_DIR and HOME with a setuid copy,
    /// a link to /etc/shadow and a fifo at the bottom: nothing of that is left on the host.
    async fn nested_trees(&mut self) -> Checked {
        let probe = self.probe()?;
        let addon = self.addon("check-nested", "", Some(&probe))?;
        let out = self.root.join("nested-out");
        let ran = self
            .go(&addon, Extra { user_input: "deepnest".into(), output_dir: Some(out.clone()), ..Default::default() })
            .await?;
        if !ran.lines.iter().any(|l| l.contains("OUTPUT_DIR: 1500 levels; setuid copy made")) {
            return Err(fail(format!("the probe could not nest its directories: {}", ran.describe())));
        }
        let mut bad = unsafe_entries(&out, false, None).map_err(fail)?;
        bad.extend(unsafe_entries(&self.root.join("cache"), true, None).map_err(fail)?);
        if bad.is_empty() {
            Ok("1500 levels in output, CACHE_DIR and HOME; no setuid file, link or fifo left".into())
        } else {
            Err(fail(format!("left on the host: {}", bad.join("; "))))
        }
    }

    /// A second run of the same addon swaps a directory of the shared CACHE_DIR for a link to a
    /// host directory while this engine runs the addon three times: the host directory's setuid
    /// files keep their bits and owner.
    async fn cache_race(&mut self) -> Checked {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let probe = self.probe()?;
        let addon = self.addon("check-race", "", Some(&probe))?;
        let host = self.root.join("race-host");
        let io = |e: std::io::Error| fail(format!("setting the race's bait: {e}"));
        fs_err::create_dir_all(&host).map_err(io)?;
        let baits: Vec<PathBuf> = (0..10).map(|i| host.join(format!("setuid-{i}"))).collect();
        for b in &baits {
            fs_err::write(b, "#!/bin/sh\n").map_err(io)?;
            fs_err::set_permissions(b, std::fs::Permissions::from_mode(0o4755)).map_err(io)?;
        }
        let before: Vec<(u32, u32)> =
            baits.iter().filter_map(|b| fs_err::metadata(b).ok()).map(|m| (m.uid(), m.mode() & 0o7777)).collect();
        let req = RunRequest {
            sources: vec![addon.display().to_string()],
            runners: Some(vec![self.name.clone()]),
            user_input: "swaprace".into(),
            env: vec![("RACE_TARGET".into(), host.display().to_string()), ("RACE_SECONDS".into(), "6".into())],
            timeout: Some(Duration::from_secs(60)),
            ..Default::default()
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
        let b_run = self.engine.run(req, Some(tx), CancellationToken::new());
        let a_runs = async {
            let started = tokio::time::timeout(Duration::from_secs(120), async {
                while let Some(e) = rx.recv().await {
                    if matches!(&e, Event::Log { line, .. } if line.contains("kit-swaprace started")) {
                        return true;
                    }
                }
                false
            })
            .await
            .unwrap_or(false);
            if started {
                for _ in 0..3 {
                    let _ = self.go(&addon, Extra { user_input: "setuid".into(), ..Default::default() }).await;
                }
            }
            // Drain the rest, so the swapping run is never held up by a full channel.
            while rx.recv().await.is_some() {}
            started
        };
        let (b, started) = tokio::join!(b_run, a_runs);
        b.map_err(|e| fail(e.to_string()))?;
        if !started {
            return Err(fail("the swapping run never started"));
        }
        let after: Vec<(u32, u32)> =
            baits.iter().filter_map(|b| fs_err::metadata(b).ok()).map(|m| (m.uid(), m.mode() & 0o7777)).collect();
        if after == before {
            Ok("a directory of CACHE_DIR swapped for a link to a host directory during three runs' walks: the host's setuid files kept their owner and bits".into())
        } else {
            Err(fail(format!(
                "the host directory's files changed through the link: before {before:?}, after {after:?}"
            )))
        }
    }

    /// Empty files in CACHE_DIR until stopped: bounded by `output-entries`.
    async fn inode_flood(&mut self) -> Checked {
        let probe = self.probe()?;
        let addon = self.addon("check-inodes", "", Some(&probe))?;
        let limits = LimitsOverride { output_entries: Some(20_000), ..Default::default() };
        let ran = self
            .go(
                &addon,
                Extra {
                    user_input: "inodeflood".into(),
                    limits,
                    timeout: Some(Duration::from_secs(120)),
                    ..Default::default()
                },
            )
            .await?;
        let made = last_number(&ran.lines, "kit-inodeflood made=").unwrap_or(0);
        let error = ran.report.error.clone().unwrap_or_default();
        if ran.report.termination == Some(Termination::Limit) && error.contains("output-entries") && made <= 220_000 {
            Ok(format!("stopped at its entry limit (20000) after {made}+ files"))
        } else {
            Err(fail(format!("expected a stop at the entry limit (20000); got {}; {made}+ files made", ran.describe())))
        }
    }

    /// A container's own file system (its writable layer, an image `VOLUME` at /data): bounded
    /// near the output size, and no volume left behind. Host runners' roots are read-only.
    async fn container_fill(&mut self) -> Checked {
        let probe = self.probe()?;
        let addon = self.addon("check-rootfill", "", Some(&probe))?;
        let limits = LimitsOverride { output_size: Some(ByteSize(64 << 20)), ..Default::default() };
        let ran = self
            .go(
                &addon,
                Extra {
                    user_input: "rootfill".into(),
                    limits,
                    timeout: Some(Duration::from_secs(120)),
                    ..Default::default()
                },
            )
            .await?;
        let root = last_number(&ran.lines, "kit-fill /kit-fill=").unwrap_or(0) << 20;
        let volume = last_number(&ran.lines, "kit-fill /data/kit-fill=").unwrap_or(0) << 20;
        let bound = (64 << 20) + FILL_SLACK;
        if root <= bound && volume <= bound {
            Ok(format!(
                "its root took {} MiB and a VOLUME {} MiB under a 64 MiB output size ({})",
                root >> 20,
                volume >> 20,
                ran.describe()
            ))
        } else {
            Err(fail(format!(
                "its root took {} MiB and a VOLUME {} MiB under a 64 MiB output size",
                root >> 20,
                volume >> 20
            )))
        }
    }

    /// /dev/shm, /tmp and /var/tmp (memory, where they are a tmpfs): bounded near the output size.
    async fn tmpfs_fill(&mut self) -> Checked {
        let probe = self.probe()?;
        let addon = self.addon("check-tmpfs", "", Some(&probe))?;
        let limits = LimitsOverride { output_size: Some(ByteSize(64 << 20)), ..Default::default() };
        let ran = self
            .go(
                &addon,
                Extra {
                    user_input: "tmpfill".into(),
                    env: vec![("TMPFS_BOUND_MIB".into(), "64".into())],
                    limits,
                    timeout: Some(Duration::from_secs(120)),
                    ..Default::default()
                },
            )
            .await?;
        let over: Vec<&String> =
            ran.lines.iter().filter(|l| l.starts_with("kit tmpfs-") && l.contains("found=yes")).collect();
        let reported = ran.lines.iter().filter(|l| l.starts_with("kit tmpfs-")).count();
        if !over.is_empty() {
            Err(fail(format!("more than the output size went into memory: {over:?}")))
        } else if reported == 3 || ran.report.termination == Some(Termination::Limit) {
            Ok("each of /dev/shm, /tmp, /var/tmp held at most the output size (64 MiB), or the run was stopped at it"
                .into())
        } else {
            Err(fail(format!("the fills were neither bounded nor stopped: {}", ran.describe())))
        }
    }
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
