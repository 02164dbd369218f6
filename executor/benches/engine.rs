//! A no-op pure addon through the whole engine (`addon run`, one process per run, as a job server
//! calling the command would) against bare sandbox starts of the same script, in the same run:
//!
//! - "same sandbox": the exact command the engine builds for this sandbox (same view, identity,
//!   seccomp filter, namespaces), started directly from this benchmark, in a control group of its
//!   own as the engine's runs are: what is left of the ratio is the engine's own work;
//! - "plain": the tool with the simplest isolating flags (`bwrap --ro-bind / / ...`,
//!   `unshare -n -p -f`, `systemd-nspawn --volatile`), as before least privilege and limits: the
//!   ratio also prices the hardening and the resource envelope.
//!
//! `cargo bench -p addon-executor --bench engine` (BENCH_RUNS to change the number of runs).

mod common;

use common::{addon_run, config_file, median, time};

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
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
    let limits = Limits {
        memory: Some(1 << 30),
        pids: Some(512),
        cpus: Some(1.0),
        output_size: Some(1 << 30),
        output_entries: None,
    };
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
        iso: Isolation { network: false },
        scratch: &scratch,
        cgroups: &cgroups,
        rlimits: &rlimits,
        tmpfs: addon_runners::sandbox::view::TmpfsBound::of(&limits),
    };
    let mut cmd = sandbox.build(&spec);
    let out = cmd.as_std_mut().stdout(std::process::Stdio::null()).output().expect("spawn");
    assert!(out.status.success(), "{kind}: {}", String::from_utf8_lossy(&out.stderr));
    let _usage = envelope.finish();
    started.elapsed()
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

    let mut table = Vec::new();
    for kind in [SandboxKind::Bwrap, SandboxKind::Netns, SandboxKind::Nspawn] {
        let sandbox = kind.as_str();
        let config = config_file(dir.path(), sandbox, &format!("sandbox: {sandbox}\n"));
        let engine = || {
            let mut c = addon_run(&config, &addon);
            c.arg("--output-dir").arg(&out);
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
        let in_run = Path::new("/mnt/work/run.sh");
        // Warm-up: page cache, the engine's probe cache.
        time(&mut engine());
        time(&mut plain());
        same_sandbox(&sandboxes, kind, &run, in_run, 0);
        let (mut e, mut s, mut p) = (Vec::new(), Vec::new(), Vec::new());
        for n in 0..runs {
            e.push(time(&mut engine()));
            s.push(same_sandbox(&sandboxes, kind, &run, in_run, n + 1));
            p.push(time(&mut plain()));
        }
        table.push((sandbox, median(e), median(s), median(p)));
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
    println!("  sandbox   addon run | same sandbox, no engine   ratio | plain tool              ratio");
    for (sandbox, e, s, p) in table {
        println!(
            "  {sandbox:<7} {:>8.2} ms | {:>8.2} ms              {:>5.2}x | {:>8.2} ms           {:>5.2}x",
            ms(e),
            ms(s),
            ms(e) / ms(s),
            ms(p),
            ms(e) / ms(p)
        );
    }
    if let Enforcement::Cgroups { .. } = enforcement {
        println!("  (a control group per run costs one RCU grace period when the process joins it, 5-15 ms here on cgroup v1)");
    }
}
