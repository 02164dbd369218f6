//! The Guile test addon (tests/fixtures/guile-addon, written the way published Docspell addons
//! are) through the engine in each sandbox, first run (compiles into its HOME) and second run
//! (warm), against a bare run of the same program with a fresh and then a warm HOME, in the same
//! run. Shows that the addon's HOME is kept: the engine's second run is near the bare warm run.
//!
//! `cargo bench -p addon-executor --bench guile` (needs guile-3.0, bwrap and nspawn; BENCH_RUNS
//! to change the number of first/second pairs).

mod common;

use common::{addon_run, config_file, median, time};

use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let dir = tempfile::tempdir().expect("tempdir");
    let addon = dir.path().join("guile-test");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/guile-addon");
    assert!(Command::new("cp").arg("-a").arg(&fixture).arg(&addon).status().expect("cp").success());
    let input = dir.path().join("input");
    std::fs::write(&input, "Ada").expect("write");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;

    // Interleaved: each round runs the bare pair, then each sandbox's pair, so that a change in
    // the machine's load falls on all of them alike.
    const SANDBOXES: [&str; 3] = ["bwrap", "netns", "nspawn"];
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    let mut pairs: Vec<(Vec<Duration>, Vec<Duration>)> = SANDBOXES.iter().map(|_| (Vec::new(), Vec::new())).collect();
    for i in 0..runs {
        // The bare program, as Docspell's host runs start it (HOME inherited, so warm after once).
        let home = dir.path().join(format!("bare-home-{i}"));
        std::fs::create_dir_all(&home).expect("mkdir");
        let bare = || {
            let mut c = Command::new(addon.join("src/addon.scm"));
            c.arg(&input).env("HOME", &home).env("OUTPUT_DIR", dir.path()).current_dir(dir.path());
            c
        };
        cold.push(time(&mut bare()));
        warm.push(time(&mut bare()));
        for (sandbox, (first, second)) in SANDBOXES.iter().zip(pairs.iter_mut()) {
            let world = dir.path().join(format!("{sandbox}-{i}"));
            std::fs::create_dir_all(&world).expect("mkdir");
            let config = config_file(&world, "config", &format!("sandbox: {sandbox}\nrunner: [trivial]\n"));
            let engine = || {
                let mut c = addon_run(&config, &addon);
                c.arg("--args").arg("Ada");
                c
            };
            first.push(time(&mut engine()));
            second.push(time(&mut engine()));
        }
    }
    let (bare_cold, bare_warm) = (median(cold), median(warm));
    println!("guile benchmark: median of {runs} first/second pairs, interleaved (each pair with a new cache-dir)");
    println!("  bare program               first {:>7.1} ms   second {:>7.1} ms", ms(bare_cold), ms(bare_warm));
    for (sandbox, (first, second)) in SANDBOXES.iter().zip(pairs) {
        let (f, s) = (median(first), median(second));
        println!(
            "  engine, trivial in {sandbox:<7} first {:>7.1} ms   second {:>7.1} ms   second/bare second {:.2}x",
            ms(f),
            ms(s),
            ms(s) / ms(bare_warm)
        );
    }
}
