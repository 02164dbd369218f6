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

/// A duration in milliseconds, for the reports.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Prints the engine's median, then each baseline's with the engine's ratio to it: baselines are
/// `(label, median, note)`, tagged (a), (b), ... in order; labels are padded to `width` and times
/// to `digits` characters.
pub fn print_against(engine: (&str, Duration), baselines: &[(&str, Duration, &str)], width: usize, digits: usize) {
    let (label, e) = engine;
    println!("  {label:<width$}{:>digits$.1} ms", ms(e));
    for (i, (label, t, note)) in baselines.iter().enumerate() {
        let tag = format!("({})", char::from(b'a' + i as u8));
        let label = format!("{tag} {label}");
        println!("  {label:<width$}{:>digits$.1} ms   ratio engine/{tag} {:.2}x{note}", ms(*t), ms(e) / ms(*t));
    }
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

/// A no-op addon in `dir/name` for `section` (`docker`: a FROM-scratch image with the host's
/// static busybox; else `trivial`): pure, printing `{}`.
pub fn noop_addon(dir: &Path, name: &str, section: &str) -> PathBuf {
    let addon = dir.join(name);
    std::fs::create_dir_all(&addon).expect("mkdir");
    let runner = match section {
        "docker" => {
            std::fs::copy("/bin/busybox", addon.join("busybox")).expect("static busybox (busybox-static)");
            std::fs::write(
                addon.join("Dockerfile"),
                "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nENV PATH=/bin\nCOPY run.sh /run.sh\nENTRYPOINT [\"/bin/sh\", \"/run.sh\"]\n",
            )
            .expect("write");
            "{docker: {enable: true}}"
        }
        _ => "{trivial: {enable: true, exec: run.sh}}",
    };
    std::fs::write(addon.join("run.sh"), "#!/bin/sh\necho '{}'\n").expect("write");
    std::fs::set_permissions(addon.join("run.sh"), std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
    std::fs::write(
        addon.join("docspell-addon.yml"),
        format!("meta: {{name: {name}, version: \"1\"}}\nrunner: {runner}\noptions: {{networking: false, collectOutput: true}}\n"),
    )
    .expect("write");
    addon
}

/// One run of `addon` on `runner` through a library engine (it must succeed): its wall time and
/// the report.
pub async fn engine_run(
    engine: &addon_executor::Engine,
    addon: &Path,
    runner: &str,
) -> (Duration, addon_executor::RunReport) {
    let req = addon_executor::RunRequest {
        sources: vec![addon.display().to_string()],
        runners: Some(vec![runner.to_string()]),
        fail_fast: Some(true),
        ..Default::default()
    };
    run_request(engine, req, runner).await
}

/// One run of `req` (on `runner`, for the message) through a library engine (it must succeed):
/// its wall time and the report.
pub async fn run_request(
    engine: &addon_executor::Engine,
    req: addon_executor::RunRequest,
    runner: &str,
) -> (Duration, addon_executor::RunReport) {
    let t = Instant::now();
    let report = engine.run(req, None, addon_executor::CancellationToken::new()).await.expect("engine run");
    let d = t.elapsed();
    let a = &report.addons[0];
    assert!(report.success, "{runner}: {:?} {:?}", a.result, a.error);
    (d, report)
}

/// A plugin program beside the `addon` binary, built (`cargo build -p addon-runner-plugins
/// --bins`, in the bench's profile) when missing.
pub fn plugin(program: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_addon")).with_file_name(program);
    if !p.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let profile = if env!("CARGO_BIN_EXE_addon").contains("/release/") { "--release" } else { "--quiet" };
        let ok = Command::new(cargo)
            .args(["build", "--quiet", profile, "-p", "addon-runner-plugins", "--bins"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok && p.is_file(), "{} is missing: cargo build --release -p addon-runner-plugins", p.display());
    }
    p
}
