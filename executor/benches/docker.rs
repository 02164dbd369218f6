//! A cache-hit docker run through the engine against, interleaved in the same run: (a) the bare
//! primitive, `docker run --rm --network none` of the same image (what is left of the ratio is
//! the engine's own work), and (b) what Docspell does for every run, `docker build` (warm layer
//! cache) then `docker run --rm`. (b) is not a like-for-like baseline: Docspell rebuilds each
//! time, the engine does not; it says what a Docspell user gains, (a) says what the engine costs.
//!
//! `cargo bench -p addon-executor --bench docker` (needs a Docker daemon; BENCH_RUNS to change).

mod common;

use common::{addon_run, config_file, median, print_against, time};

use std::process::Command;
use std::time::Instant;

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(15);
    let dir = tempfile::tempdir().expect("tempdir");
    let addon = common::noop_addon(dir.path(), "bench-noop", "docker");
    let config = config_file(dir.path(), "config", "runner: [docker]\n");
    let engine = || addon_run(&config, &addon);
    let tag = "addon-bench-docspell:latest";
    let docspell = |addon: &std::path::Path| {
        // Docspell: build (warm layer cache) then run, every time.
        let t = Instant::now();
        time(Command::new("docker").env("DOCKER_BUILDKIT", "0").args(["build", "-q", "-t", tag]).arg(addon));
        time(Command::new("docker").args(["run", "--rm", "--network", "none", tag]));
        t.elapsed()
    };
    let bare = || {
        let mut c = Command::new("docker");
        c.args(["run", "--rm", "--network", "none", tag]);
        c
    };
    // Warm up: the engine builds and caches its image; docker's layer cache gets warm.
    time(&mut engine());
    docspell(&addon);
    let (mut e, mut a, mut b) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        e.push(time(&mut engine()));
        a.push(docspell(&addon));
        b.push(time(&mut bare()));
    }
    let (e, a, b) = (median(e), median(a), median(b));
    println!("docker benchmark: median of {runs} runs each, interleaved");
    print_against(
        ("engine, cache hit (addon run)", e),
        &[
            ("docker run --rm --network none, bare", b, ""),
            ("Docspell per run: build (warm) + run", a, " (Docspell rebuilds every run)"),
        ],
        47,
        8,
    );
    let _ = Command::new("docker").args(["rmi", "-f", tag]).output();
}
