//! A no-op pure addon through the whole engine (`addon run`, one process per run, as a job server
//! calling the command would) against the bare sandbox start of the same script, in the same run.
//!
//! `cargo bench -p addon-executor --bench engine` (BENCH_RUNS to change the number of runs).

mod common;

use common::{addon_run, config_file, median, time};

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let dir = tempfile::tempdir().expect("tempdir");
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

    let mut table = Vec::new();
    for sandbox in ["bwrap", "netns", "nspawn"] {
        let config = config_file(dir.path(), sandbox, &format!("sandbox: {sandbox}\n"));
        let engine = || {
            let mut c = addon_run(&config, &addon);
            c.arg("--output-dir").arg(&out);
            c
        };
        let bare = || {
            let mut c;
            if sandbox == "bwrap" {
                c = Command::new("bwrap");
                c.args(["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]);
                c.arg("--bind").arg(dir.path()).arg(dir.path());
                c.args(["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net", "--die-with-parent"]);
                c.arg("--").arg(&script);
            } else if sandbox == "nspawn" {
                c = Command::new("systemd-nspawn");
                c.args(["--quiet", "--register=no", "--keep-unit", "--directory=/", "--volatile=yes", "--as-pid2"]);
                c.args(["--console=pipe", "--private-network"]).arg(format!("--bind={}", dir.path().display()));
                c.arg("--").arg(&script);
            } else {
                c = Command::new("unshare");
                c.args(["--net", "--pid", "--fork", "--kill-child"]).arg(&script);
            }
            c
        };
        // Warm-up: page cache, the engine's probe cache.
        time(&mut engine());
        time(&mut bare());
        let (mut e, mut b) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            e.push(time(&mut engine()));
            b.push(time(&mut bare()));
        }
        table.push((sandbox, median(e), median(b)));
    }
    println!("engine benchmark: no-op pure addon, median of {runs} runs each, interleaved");
    for (sandbox, e, b) in table {
        println!(
            "  {sandbox:<6} addon run {:>7.2} ms | bare {:<26} {:>7.2} ms | ratio {:.2}x",
            e.as_secs_f64() * 1e3,
            match sandbox {
                "bwrap" => "bwrap ... run.sh",
                "nspawn" => "systemd-nspawn ... run.sh",
                _ => "unshare -n -p -f run.sh",
            },
            b.as_secs_f64() * 1e3,
            e.as_secs_f64() / b.as_secs_f64()
        );
    }
}
