//! A no-op pure addon through the whole engine (`addon run`, one process per run, as a job server
//! calling the command would) against bare sandbox starts of the same script, in the same run:
//!
//! - "same sandbox": the exact command the engine builds for this sandbox (same view, identity,
//!   seccomp filter, namespaces), started directly from this benchmark, in a control group of its
//!   own as the engine's runs are: what is left of the ratio is the engine's own work;
//! - "plain in a fresh group": the plain tool below, started in a new control group with the
//!   engine's default limits (made, joined before exec, and removed, as the engine does): what a
//!   job server would pay doing it by hand with the same resource envelope;
//! - "plain": the tool with the simplest isolating flags (`bwrap --ro-bind / / ...`,
//!   `unshare -n -p -f`, `systemd-nspawn --volatile`), as before least privilege and limits: the
//!   ratio also prices the hardening and the resource envelope.
//!
//! Then throughput: 8 runs at a time, engine against the plain tool in a fresh group, in runs/s.
//!
//! `cargo bench -p addon-executor --bench engine` (BENCH_RUNS to change the number of runs,
//! BENCH_SANDBOXES=bwrap,netns to pick sandboxes).

mod common;

use common::{addon_run, config_file, median, time};

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use addon_runners::sandbox::{Identity, Isolation, Mounts, SandboxSettings, Spec, DEFAULT_IDENTITY};
use addon_runners::{Enforcement, Limits, ProbeCache, SandboxKind, Sandboxes};

/// The engine's own command for `kind`, started directly (with the engine's default limits in a
/// control group of its own when the engine would make one).
fn same_sandbox(sandboxes: &Sandboxes, kind: SandboxKind, run: &Path, script: &Path, n: usize) -> Duration {
    let mounts =
        Mounts { work: run.join("work"), output: run.join("output"), cache: run.join("cache"), home: run.join("home") };
    let scratch = run.join("root");
    let sandbox = sandboxes.get(kind);
    let enforcement = sandboxes.enforcement();
    let limits = DEFAULT_LIMITS;
    let started = Instant::now();
    let envelope =
        addon_runners::limits::Envelope::new(&format!("bench-{n}"), limits, &enforcement, vec![]).expect("envelope");
    let (cgroups, rlimits) = (envelope.cgroup_procs(), envelope.rlimits());
    let view = sandbox.view(&mounts);
    let env = vec![("OUTPUT_DIR".to_string(), view.output.display().to_string())];
    let spec = Spec {
        program: script,
        args: &[],
        env: &env,
        mounts: &mounts,
        extra_ro: &[] as &[PathBuf],
        iso: Isolation { network: addon_runners::egress::NetKind::None },
        scratch: &scratch,
        cgroups: &cgroups,
        rlimits: &rlimits,
        tmpfs: addon_runners::sandbox::view::TmpfsBound::of(&limits),
    };
    // As the engine starts it: with its handoff, when the sandbox has one.
    let addon_runners::sandbox::Launch { mut cmd, handoff } = sandbox.launch(&spec).expect("sandbox");
    let child = cmd.as_std_mut().stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn();
    drop(cmd);
    let child = child.expect("spawn");
    if let Some(handoff) = handoff {
        handoff.complete(child.id() as i32).expect("handoff");
    }
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{kind}: {}", String::from_utf8_lossy(&out.stderr));
    let _usage = envelope.finish();
    started.elapsed()
}

/// Runs at a time in the throughput measurement.
const PARALLEL: usize = 8;

/// The engine's default limits (SPEC "Engine configuration").
const DEFAULT_LIMITS: Limits = Limits {
    memory: Some(1 << 30),
    pids: Some(512),
    cpus: Some(1.0),
    output_size: Some(1 << 30),
    output_entries: None,
};

/// `cmd` started in a control group of its own with the default limits (made before, joined
/// between fork and exec, removed after), as a job server would do by hand.
fn in_fresh_group(sandboxes: &Sandboxes, name: &str, mut cmd: Command) -> Duration {
    let started = Instant::now();
    let envelope =
        addon_runners::limits::Envelope::new(name, DEFAULT_LIMITS, &sandboxes.enforcement(), vec![]).expect("envelope");
    addon_runners::sandbox::ns::NsPlan::prepare_only()
        .join_cgroups(&envelope.cgroup_procs())
        .with_rlimits(&envelope.rlimits())
        .install_std(&mut cmd);
    let out = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).output().expect("spawn");
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    let _usage = envelope.finish();
    started.elapsed()
}

/// Runs/s with `parallel` at a time over `total` runs of `one(n)`.
fn throughput(parallel: usize, total: usize, one: impl Fn(usize) + Sync) -> f64 {
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..parallel {
            s.spawn(|| loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                one(n);
            });
        }
    });
    total as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let addon = dir.path().join("noop");
    std::fs::create_dir(&addon).expect("mkdir");
    std::fs::write(
        addon.join("docspell-addon.yml"),
        "meta: {name: noop, version: \"1\"}\nrunner: {trivial: {enable: true, exec: run.sh}}\noptions: {networking: false, collectOutput: true}\n",
    )
    .expect("write");
    let script = addon.join("run.sh");
    std::fs::write(&script, "#!/bin/sh\necho '{}'\n").expect("write");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = dir.path().join("out");

    // A prepared run directory for the "same sandbox" starts, owned as the engine would own it.
    let run = dir.path().join("run");
    for d in ["work", "output", "cache", "home", "root"] {
        std::fs::create_dir_all(run.join(d)).expect("mkdir");
    }
    std::fs::copy(&script, run.join("work/run.sh")).expect("copy");
    let settings =
        SandboxSettings { helper: Some(PathBuf::from(env!("CARGO_BIN_EXE_addon"))), ..SandboxSettings::default() };
    let sandboxes = Sandboxes::new(&settings, Arc::new(ProbeCache::default()));
    let enforcement = sandboxes.enforcement();

    let picked = std::env::var("BENCH_SANDBOXES").unwrap_or_else(|_| "bwrap,netns,nspawn".into());
    let mut table = Vec::new();
    let mut rates = Vec::new();
    for kind in [SandboxKind::Bwrap, SandboxKind::Netns, SandboxKind::Nspawn] {
        let sandbox = kind.as_str();
        if !picked.split(',').any(|p| p == sandbox) {
            continue;
        }
        let config = config_file(dir.path(), sandbox, &format!("sandbox: {sandbox}\n"));
        let engine = |out: &Path| {
            let mut c = addon_run(&config, &addon);
            c.arg("--output-dir").arg(out);
            c
        };
        if let Some(owner) = sandboxes.get(kind).owner() {
            addon_runners::sandbox::claim(&[&run], owner).expect("chown");
        } else {
            addon_runners::sandbox::claim(&[&run], Identity::current()).expect("chown");
        }
        let plain = || {
            let mut c;
            match kind {
                SandboxKind::Bwrap => {
                    c = Command::new("bwrap");
                    c.args(["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]);
                    c.arg("--bind").arg(dir.path()).arg(dir.path());
                    c.args(["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net", "--die-with-parent"]);
                    c.arg("--").arg(&script);
                }
                SandboxKind::Nspawn => {
                    c = Command::new("systemd-nspawn");
                    c.args(["--quiet", "--register=no", "--keep-unit", "--directory=/", "--volatile=yes", "--as-pid2"]);
                    c.args(["--console=pipe", "--private-network"]).arg(format!("--bind={}", dir.path().display()));
                    c.arg("--").arg(&script);
                }
                _ => {
                    c = Command::new("unshare");
                    c.args(["--net", "--pid", "--fork", "--kill-child"]).arg(&script);
                }
            }
            c
        };
        // The engine as a job server embeds it: one long-lived `Engine`, runs through the library.
        let library = Arc::new(addon_executor::Engine::new(addon_executor::Config::load(&config).expect("config")));
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let in_process = |out: PathBuf| {
            let request = addon_executor::RunRequest {
                sources: vec![addon.display().to_string()],
                output_dir: Some(out),
                ..Default::default()
            };
            let started = Instant::now();
            let report =
                rt.block_on(library.run(request, None, addon_executor::CancellationToken::new())).expect("run");
            assert!(report.success, "{report:?}");
            let took = started.elapsed();
            // The run directory goes on the engine's janitor after the report is back: that work
            // is not left to slow the next measurement.
            library.settle();
            took
        };
        let in_run = Path::new("/mnt/work/run.sh");
        // Warm-up: page cache, the engine's probe cache.
        time(&mut engine(&out));
        in_process(out.clone());
        time(&mut plain());
        same_sandbox(&sandboxes, kind, &run, in_run, 0);
        in_fresh_group(&sandboxes, "bench-fresh", plain());
        let (mut e, mut l, mut s, mut g, mut p) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for n in 0..runs {
            e.push(time(&mut engine(&out)));
            l.push(in_process(out.clone()));
            s.push(same_sandbox(&sandboxes, kind, &run, in_run, n + 1));
            g.push(in_fresh_group(&sandboxes, &format!("bench-fresh-{n}"), plain()));
            p.push(time(&mut plain()));
        }
        table.push((sandbox, median(e), median(l), median(s), median(g), median(p)));
        // Throughput, 8 at a time: each engine run with its own output directory, as 8 jobs of
        // a job server would be.
        let total = (runs * 4).max(40);
        let engine_rate = throughput(PARALLEL, total, |n| {
            time(&mut engine(&dir.path().join(format!("out-{n}"))));
        });
        let plain_rate = throughput(PARALLEL, total, |n| {
            in_fresh_group(&sandboxes, &format!("bench-rate-{n}"), plain());
        });
        // The library: 8 runs at a time on the job server's runtime.
        let library_rate = {
            let started = Instant::now();
            rt.block_on(async {
                let next = Arc::new(AtomicUsize::new(0));
                let mut workers = tokio::task::JoinSet::new();
                for _ in 0..PARALLEL {
                    let (next, library, addon, base) =
                        (next.clone(), library.clone(), addon.display().to_string(), dir.path().to_path_buf());
                    workers.spawn(async move {
                        loop {
                            let n = next.fetch_add(1, Ordering::Relaxed);
                            if n >= total {
                                break;
                            }
                            let request = addon_executor::RunRequest {
                                sources: vec![addon.clone()],
                                output_dir: Some(base.join(format!("lib-out-{n}"))),
                                ..Default::default()
                            };
                            let cancel = addon_executor::CancellationToken::new();
                            assert!(library.run(request, None, cancel).await.expect("run").success);
                        }
                    });
                }
                while let Some(done) = workers.join_next().await {
                    done.expect("worker");
                }
            });
            total as f64 / started.elapsed().as_secs_f64()
        };
        rates.push((sandbox, engine_rate, library_rate, plain_rate));
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let identity = if addon_runners::sandbox::is_root() {
        format!("root engine, addons as uid {}", DEFAULT_IDENTITY.uid)
    } else {
        "unprivileged engine".to_string()
    };
    println!(
        "engine benchmark: no-op pure addon, median of {runs} runs each, interleaved ({identity}; {})",
        enforcement.describe()
    );
    println!("  `addon run`: one process per run, as a job server calling the command; library: one long-lived");
    println!("  Engine, as a job server linking addon-executor. Ratios are each against the three baselines.");
    println!("  sandbox   addon run   library | same sandbox, no engine | plain in a fresh group  | plain tool");
    for (sandbox, e, l, s, g, p) in table {
        let r = |base: Duration| format!("{:>5.2}x {:>5.2}x", ms(e) / ms(base), ms(l) / ms(base));
        println!(
            "  {sandbox:<7} {:>8.2} ms {:>6.2} ms | {:>6.2} ms {} | {:>6.2} ms {} | {:>5.2} ms {}",
            ms(e),
            ms(l),
            ms(s),
            r(s),
            ms(g),
            r(g),
            ms(p),
            r(p)
        );
    }
    println!("  throughput, {PARALLEL} runs at a time:");
    for (sandbox, engine, library, plain) in rates {
        println!(
            "  {sandbox:<7} addon run {engine:>6.1} runs/s, library {library:>6.1} runs/s | plain in a fresh group {plain:>6.1} runs/s ({:.2}x, {:.2}x)",
            engine / plain,
            library / plain
        );
    }
    if let Enforcement::Cgroups { .. } = enforcement {
        println!("  (a control group per run costs one RCU grace period when the process joins it, 5-15 ms here on cgroup v1)");
    }
}
