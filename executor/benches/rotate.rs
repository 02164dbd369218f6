//! The rotate-pdf-shaped addon (tests/fixtures/rotate-addon: Guile with guile-json, qpdf and
//! pdftotext on a Docspell item), warm (its compiled code in its HOME), through `addon run` as a
//! user or a job server calls it, against the same program without the engine, interleaved in
//! one run:
//!
//! - the bare program on the host, its HOME warm (what the engine's host sandboxes add);
//! - trivial in bwrap and in netns through the engine;
//! - the gVisor plugin through the engine, against a bare `runsc run` of the same program from a
//!   bundle made here (the host's `/usr` and `/etc`, the item, a warm HOME; runsc's flags as the
//!   plugin's), and a bare `runsc run /bin/true` (what runsc costs before the program starts).
//!   The difference between the plugin and the bare `runsc run` is ours; the rest is runsc's.
//!
//! `cargo bench -p addon-executor --bench rotate` (needs guile-3.0 with guile-json, qpdf,
//! poppler-utils, bwrap and, as root, runsc; BENCH_RUNS to change the number of runs).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use addon_executor::engine::ITEM_ENV;
use common::{config_file, median, plugin, time};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn copy(from: &Path, to: &Path) {
    assert!(Command::new("cp").arg("-a").arg(from).arg(to).status().expect("cp").success(), "cp {}", from.display());
}

/// A run directory as the engine lays it out: the item, the user input, the addon; writable by
/// anyone (the bare runsc program runs as an unprivileged uid).
fn run_dir(dir: &Path, fixtures: &Path) -> PathBuf {
    let work = dir.join("bare-work");
    std::fs::create_dir_all(work.join("arguments")).expect("mkdir");
    copy(&fixtures.join("rotate-item"), &work.join("item"));
    copy(&fixtures.join("rotate-addon"), &work.join("addon"));
    std::fs::write(work.join("arguments/user-input"), r#"{"degree": "90"}"#).expect("write");
    // The host program's and runsc's own (runsc's program runs as another user).
    for d in ["output", "home", "runsc-output", "runsc-home"] {
        std::fs::create_dir_all(dir.join(d)).expect("mkdir");
    }
    let ok = Command::new("chmod")
        .args(["-R", "a+rwX"])
        .arg(&work)
        .arg(dir.join("runsc-output"))
        .arg(dir.join("runsc-home"))
        .status();
    assert!(ok.expect("chmod").success());
    work
}

/// An OCI bundle in `dir/bundle` that runs `args` as uid 65534 in `/mnt/work`, with the host's
/// `/usr` and `/etc` read-only, the run's directories at `/mnt/*`, no network.
fn bundle(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
    let bundle = dir.join(name);
    let rootfs = bundle.join("rootfs");
    for d in ["usr", "etc", "proc", "dev", "tmp", "mnt/work", "mnt/output", "mnt/home"] {
        std::fs::create_dir_all(rootfs.join(d)).expect("mkdir");
    }
    for l in ["bin", "lib", "lib64", "sbin"] {
        if let Ok(target) = std::fs::read_link(Path::new("/").join(l)) {
            let _ = std::os::unix::fs::symlink(target, rootfs.join(l));
        }
    }
    let bind = |at: &str, src: &Path, mode: &str| serde_json::json!({"destination": at, "type": "bind", "source": src, "options": ["rbind", mode, "nosuid", "nodev"]});
    let mut env: Vec<String> = ITEM_ENV.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.extend(["PATH=/usr/bin:/bin", "HOME=/mnt/home", "OUTPUT_DIR=/mnt/output", "LANG=C.UTF-8"].map(String::from));
    let config = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false, "user": {"uid": 65534, "gid": 65534}, "args": args, "env": env, "cwd": "/mnt/work",
            "capabilities": {"bounding": [], "effective": [], "inheritable": [], "permitted": [], "ambient": []},
            "noNewPrivileges": true,
            // As the plugin's: with runsc's default (2^20 files), Guile's `system*` closes every
            // descriptor up to the limit before it execs, which under ptrace takes seconds.
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 1024}]
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "bare",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=1777"]},
            bind("/usr", Path::new("/usr"), "ro"),
            bind("/etc", Path::new("/etc"), "ro"),
            bind("/mnt/work", &dir.join("bare-work"), "rw"),
            bind("/mnt/output", &dir.join("runsc-output"), "rw"),
            bind("/mnt/home", &dir.join("runsc-home"), "rw"),
        ],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}]}
    });
    std::fs::write(bundle.join("config.json"), serde_json::to_vec_pretty(&config).expect("json")).expect("write");
    bundle
}

/// `runsc run` of a bundle, as the plugin starts its runs (then the container is deleted).
fn runsc_run(state: &Path, bundle: &Path) -> Command {
    let id = format!("bench-{}", std::process::id());
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(
            "runsc --root=\"$1\" --network=none --host-uds=none --ignore-cgroups run --bundle=\"$2\" \"$3\"; rc=$?; \
             runsc --root=\"$1\" delete --force \"$3\" 2>/dev/null; exit $rc",
        )
        .args(["runsc-run"])
        .arg(state)
        .arg(bundle)
        .arg(id);
    c
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(9);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut dir = tempfile::tempdir().expect("tempdir");
    if std::env::var("BENCH_KEEP").is_ok_and(|v| v == "1") {
        dir.disable_cleanup(true);
        eprintln!("keeping {}", dir.path().display());
    }
    let d = dir.path();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let addon = fixtures.join("rotate-addon");
    let item = fixtures.join("rotate-item");
    let work = run_dir(d, &fixtures);

    // The bare program on the host: its HOME warm after the first run.
    let bare = || {
        let mut c = Command::new(work.join("addon/src/addon.scm"));
        c.arg("arguments/user-input").envs(ITEM_ENV).env("HOME", d.join("home")).env("OUTPUT_DIR", d.join("output"));
        c.current_dir(&work);
        c
    };
    // Through the engine, as `addon run` (trivial in a sandbox, or the gVisor plugin).
    let mut configs = vec![
        ("trivial in bwrap", config_file(d, "bwrap", "sandbox: bwrap\nrunner: [trivial]\n")),
        ("trivial in netns", config_file(d, "netns", "sandbox: netns\nrunner: [trivial]\n")),
    ];
    if root {
        let gvisor = format!(
            "runner: [gvisor]\nplugins:\n  gvisor: {{command: [{}], serves: [trivial]}}\n",
            plugin("addon-runner-gvisor").display()
        );
        configs.push(("gVisor plugin", config_file(d, "gvisor", &gvisor)));
    }
    let engine = |config: &Path| {
        let mut c = common::addon_run(config, &addon);
        c.arg("--item").arg(&item).args(["--args", r#"{"degree": "90"}"#]);
        c.arg("--output-dir").arg(d.join("engine-output"));
        c
    };
    let state = d.join("runsc-state");
    let program = bundle(d, "bundle-rotate", &["/mnt/work/addon/src/addon.scm", "arguments/user-input"]);
    let noop = bundle(d, "bundle-true", &["/bin/true"]);
    // Warm up: compiled code in every HOME, probes remembered.
    time(&mut bare());
    for (_, config) in &configs {
        time(&mut engine(config));
        time(&mut engine(config));
    }
    if root {
        let out = runsc_run(&state, &program).output().expect("runsc");
        assert!(out.status.success(), "bare runsc run: {}", String::from_utf8_lossy(&out.stderr));
        let out = runsc_run(&state, &program).output().expect("runsc");
        let compiled = String::from_utf8_lossy(&out.stderr).contains(";;; compiling");
        assert!(!compiled, "bare runsc run must be warm: {}", String::from_utf8_lossy(&out.stderr));
    }

    let mut bare_t = Vec::new();
    let mut engine_t: Vec<Vec<Duration>> = vec![Vec::new(); configs.len()];
    let (mut runsc_t, mut true_t) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        bare_t.push(time(&mut bare()));
        for (i, (_, config)) in configs.iter().enumerate() {
            engine_t[i].push(time(&mut engine(config)));
        }
        if root {
            runsc_t.push(time(&mut runsc_run(&state, &program)));
            true_t.push(time(&mut runsc_run(&state, &noop)));
        }
    }
    let bare_m = median(bare_t);
    println!("rotate-pdf-shaped addon, warm: medians of {runs} interleaved runs (wall time of `addon run`)");
    println!("  bare program, warm HOME                {:>8.1} ms", ms(bare_m));
    let mut bwrap_m = Duration::ZERO;
    for (i, (name, _)) in configs.iter().enumerate() {
        let m = median(std::mem::take(&mut engine_t[i]));
        if i == 0 {
            bwrap_m = m;
        }
        let vs_bwrap = if i > 0 { format!("   {:.1}x bwrap", ms(m) / ms(bwrap_m)) } else { String::new() };
        println!("  engine, {name:<30} {:>8.1} ms   {:.2}x bare{vs_bwrap}", ms(m), ms(m) / ms(bare_m));
        if *name == "gVisor plugin" {
            let (r, t) = (median(std::mem::take(&mut runsc_t)), median(std::mem::take(&mut true_t)));
            println!(
                "  bare `runsc run` of the same program    {:>8.1} ms   {:.2}x bare   {:.1}x bwrap   (gVisor plugin: {:.2}x this, {:+.0} ms)",
                ms(r),
                ms(r) / ms(bare_m),
                ms(r) / ms(bwrap_m),
                ms(m) / ms(r),
                ms(m) - ms(r)
            );
            println!("  bare `runsc run /bin/true`              {:>8.1} ms   (runsc's start and stop)", ms(t));
        }
    }
    if !root {
        println!("  (gVisor: not measured; runsc runs as root)");
    }
}
