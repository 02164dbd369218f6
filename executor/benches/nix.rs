//! A cache-hit nix-flake addon run through the engine against, interleaved in the same run:
//! (a) the bare primitive, the built program started in a plain `bwrap` with the store bound
//! read-only (what is left of the ratio is the engine's own work and its hardening), and
//! (b) Docspell's per-run path (`nix build` of the flake, which evaluates it every time, then
//! exec of the program on the bare host).
//!
//! `cargo bench -p addon-executor --bench nix` (needs nix and bwrap; BENCH_RUNS to change).

mod common;

use common::{addon_run, config_file, median, print_against, run};

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
    // `nix build` of the flake, as Docspell runs it: the program it built.
    let nix_build = || {
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
        format!("{}/bin/run", v[0]["outputs"]["out"].as_str().expect("out"))
    };
    let docspell = || {
        // Docspell: nix build (evaluation each time, build cached in the store), then exec.
        let t = Instant::now();
        run(Command::new(nix_build()).stdout(Stdio::null()));
        t.elapsed()
    };
    run(&mut engine());
    docspell();
    // The built program, for the bare primitive.
    let program = nix_build();
    let bare = || {
        let mut c = Command::new("bwrap");
        c.args(["--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib"]);
        c.args(["--symlink", "usr/lib64", "/lib64", "--ro-bind", "/nix/store", "/nix/store"]);
        c.args(["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--unshare-all", "--die-with-parent"]);
        c.arg("--").arg(&program).stdout(Stdio::null());
        c
    };
    run(&mut bare());
    let (mut e, mut b, mut d) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        e.push(run(&mut engine()).0);
        b.push(run(&mut bare()).0);
        d.push(docspell());
    }
    let (e, b, d) = (median(e), median(b), median(d));
    println!("nix benchmark: median of {runs} runs each, interleaved (input-free flake, --offline)");
    print_against(
        ("engine, cache hit, in bwrap (addon run)", e),
        &[("the built program in a plain bwrap", b, ""), ("Docspell: nix build + exec, bare host", d, "")],
        45,
        7,
    );
}
