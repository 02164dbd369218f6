//! The VM runner's cost per run, against a bare QEMU boot of the same command in the same run
//! (interleaved): the same kernel, initramfs, shares, guest init and run script, QEMU started
//! directly by this program as root, with no engine, plugin, sandbox or helper around it.
//!
//! - a no-op addon (`echo '{}'`) through the engine (`addon-runner-vm`) against the bare boot;
//! - `python3 -c 'print(42)'` (the host's interpreter read over 9p) in a bare boot, for what an
//!   interpreter costs on top of the boot.
//!
//! `cargo bench -p addon-executor --bench vm` (needs root, bwrap, qemu-system-x86 and a kernel in
//! /boot; BENCH_RUNS to change the number of runs, 5 by default: under TCG a run takes seconds).

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use addon_executor::{Config, Engine};
use addon_runner_plugins::vm::{boot, exec};
use common::{config_file, median, ms};

/// A bare boot running `argv` in the guest, as the helper would have it run: its wall time.
fn bare(root: &Path, plan: &exec::Plan, argv: &[&str]) -> Duration {
    let shares = exec::Shares {
        usr: "/usr".into(),
        etc: "/etc".into(),
        work: root.join("work"),
        output: root.join("output"),
        cache: root.join("cache"),
        home: root.join("home"),
        io: root.join("io"),
        console: root.join("console"),
    };
    let _ = std::fs::remove_dir_all(&shares.io);
    for d in [&shares.work, &shares.output, &shares.cache, &shares.home, &shares.io] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    let argv: Vec<OsString> = argv.iter().map(OsString::from).collect();
    let env = vec![(OsString::from("PATH"), OsString::from("/usr/bin:/bin"))];
    std::fs::write(shares.io.join("run"), exec::run_script(plan, 0, 0, &env, &argv)).expect("run");
    let t = Instant::now();
    let status = Command::new(&plan.qemu).args(exec::qemu_args(plan, &shares)).status().expect("qemu");
    let d = t.elapsed();
    let said = std::fs::read_to_string(shares.io.join("status")).unwrap_or_default();
    assert!(status.success() && said.starts_with("code=0"), "bare boot: {status} {said}");
    d
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let dir = tempfile::tempdir().expect("tempdir");
    let program = common::plugin("addon-runner-vm");
    let config_path = config_file(
        dir.path(),
        "config",
        &format!("runner: [vm]\nplugins:\n  vm: {{command: [{}], serves: [trivial]}}\n", program.display()),
    );
    let config = Config::load(&config_path).expect("config");
    let addon = common::noop_addon(dir.path(), "bench-vm", "trivial");
    let settings = addon_runner_plugins::vm::VmSettings::default();
    let (kernel, release) = boot::find_kernel(None).expect("a kernel in /boot");
    let b = boot::prepare(&settings.state_dir, &kernel, &release, &settings.busybox).expect("boot files");
    let plan = exec::Plan {
        qemu: which_qemu(),
        kernel: b.kernel.clone(),
        initrd: b.initrd.clone(),
        accel: "tcg".into(),
        guest_mib: 1024 + 96,
        cpus: 1,
        net: false,
        pids: Some(512),
        memory: Some(1 << 30),
        tsc_khz: addon_runner_plugins::vm::tsc_khz(),
        cwd: "/mnt/work".into(),
        nonce: "bench".into(),
        run_dir: dir.path().to_path_buf(),
        tmpfs: addon_runners::sandbox::view::TmpfsBound::default().options(),
        helper: program.clone(),
        nix_store: false,
        extra_args: Vec::new(),
    };
    let root = dir.path().join("bare");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let engine = Engine::new(config.clone());
        // Warm up: the plugin started, its probe and boot files made, the page cache filled.
        let (_, report) = common::engine_run(&engine, &addon, "vm").await;
        let sandbox = report.addons[0].sandbox.clone().unwrap_or_default();
        bare(&root, &plan, &["/bin/sh", "-c", "echo '{}'"]);
        let (mut e, mut x, mut py) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            e.push(common::engine_run(&engine, &addon, "vm").await.0);
            x.push(bare(&root, &plan, &["/bin/sh", "-c", "echo '{}'"]));
            py.push(bare(&root, &plan, &["/usr/bin/python3", "-c", "print(42)"]));
        }
        let (e, x, py) = (median(e), median(x), median(py));
        println!("VM runner ({sandbox}), median of {runs} runs, interleaved:");
        println!("  no-op addon through the engine     {:>8.0} ms", ms(e));
        println!(
            "  bare QEMU boot, same command       {:>8.0} ms   engine/bare {:.2}x  (+{:.0} ms)",
            ms(x),
            ms(e) / ms(x),
            ms(e) - ms(x)
        );
        println!(
            "  bare QEMU boot, python3 print(42)  {:>8.0} ms   (+{:.0} ms for the interpreter over 9p)",
            ms(py),
            ms(py) - ms(x)
        );
    });
}

fn which_qemu() -> PathBuf {
    let out = Command::new("sh").args(["-c", "command -v qemu-system-x86_64"]).output().expect("sh");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}
