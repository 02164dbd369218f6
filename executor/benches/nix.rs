//! A cache-hit nix-flake addon run through the engine against Docspell's per-run path
//! (`nix build` of the flake, then exec of the program), interleaved in the same run.
//!
//! `cargo bench -p addon-executor --bench nix` (needs nix and bwrap; BENCH_RUNS to change).

mod common;

use common::{addon_run, config_file, median, run};

use std::process::{Command, Stdio};
use std::time::Instant;

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let dir = tempfile::tempdir().expect("tempdir");
    let addon = dir.path().join("noop");
    std::fs::create_dir(&addon).expect("mkdir");
    std::fs::write(addon.join("run.sh"), "#!/bin/sh\necho '{}'\n").expect("write");
    std::fs::write(
        addon.join("flake.nix"),
        format!(
            "{{ outputs = {{ self }}: {{ packages.x86_64-linux.default = derivation {{ name = \"bench-noop-{}\"; system = \"x86_64-linux\"; builder = \"/bin/busybox\"; args = [ \"sh\" \"-c\" \"/bin/busybox mkdir -p $out/bin && /bin/busybox cp ${{./run.sh}} $out/bin/run && /bin/busybox chmod 555 $out/bin/run\" ]; }}; }}; }}\n",
            std::process::id()
        ),
    )
    .expect("write");
    std::fs::write(
        addon.join("docspell-addon.yml"),
        "meta: {name: bench-nix, version: \"1\"}\nrunner: {nix: {enable: true}}\noptions: {networking: false, collectOutput: true}\n",
    )
    .expect("write");
    let config = config_file(
        dir.path(),
        "config",
        "runner: [nix-flake]\nsandbox: bwrap\nnix-runner: {extra-args: [--offline, --option, extra-sandbox-paths, /bin/busybox]}\n",
    );
    let engine = || addon_run(&config, &addon);
    let flake = format!("path:{}", addon.display());
    let docspell = || {
        // Docspell: nix build (evaluation each time, build cached in the store), then exec.
        let t = Instant::now();
        let (_, out) = run(Command::new("nix").args([
            "--extra-experimental-features",
            "nix-command flakes",
            "build",
            &flake,
            "--no-link",
            "--json",
            "--offline",
            "--option",
            "extra-sandbox-paths",
            "/bin/busybox",
        ]));
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        let path = format!("{}/bin/run", v[0]["outputs"]["out"].as_str().expect("out"));
        run(Command::new(path).stdout(Stdio::null()));
        t.elapsed()
    };
    run(&mut engine());
    docspell();
    let (mut e, mut d) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        e.push(run(&mut engine()).0);
        d.push(docspell());
    }
    let (e, d) = (median(e), median(d));
    println!("nix benchmark: median of {runs} runs each, interleaved (input-free flake, --offline)");
    println!("  engine, cache hit, in bwrap (addon run)  {:>7.1} ms", e.as_secs_f64() * 1e3);
    println!(
        "  Docspell path: nix build + exec, bare    {:>7.1} ms   ratio {:.2}x",
        d.as_secs_f64() * 1e3,
        e.as_secs_f64() / d.as_secs_f64()
    );
}
