//! Timing helpers shared by the benchmarks.
#![allow(dead_code)] // each bench uses a part

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The median of a set of timings.
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs a command to completion (it must succeed) and returns its wall time and stdout.
pub fn run(cmd: &mut Command) -> (Duration, Vec<u8>) {
    let t = Instant::now();
    let out = cmd.stderr(Stdio::piped()).output().expect("spawn");
    let d = t.elapsed();
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    (d, out.stdout)
}

/// The wall time of a command that must succeed.
pub fn time(cmd: &mut Command) -> Duration {
    run(cmd.stdout(Stdio::piped())).0
}

/// Writes the engine config `<dir>/<name>.yml`: working and cache dirs inside `dir`, then `extra`.
pub fn config_file(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let config = dir.join(format!("{name}.yml"));
    let text =
        format!("working-dir: {}\ncache-dir: {}\n{extra}", dir.join("work").display(), dir.join("cache").display());
    std::fs::write(&config, text).expect("write config");
    config
}

/// `addon run --json --config CONFIG ADDON` through the engine's binary.
pub fn addon_run(config: &Path, addon: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_addon"));
    c.args(["run", "--json", "--config"]).arg(config).arg(addon);
    c
}
