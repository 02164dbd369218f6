//! What a runner costs out of process: a no-op addon through a plugin against the same work
//! in process or through the bare tool, interleaved in one run, through the `addon-executor`
//! library with one engine (a job server keeps its engine, and the engine keeps its plugins warm
//! between runs):
//!
//! - protocol: the trivial runner in bwrap in process, against the same runner code served out
//!   of process by `addon-runner-example`: the difference is the plugin's cost per run (Start,
//!   Events, Forget over a unix socket; the streams crossing it);
//! - docker: the in-process `docker` runner against `addon-runner-docker` (cache hit);
//! - gvisor: `addon-runner-gvisor` against a bare `runsc --network=none do` of the same script;
//! - the one-off cost of starting a plugin (process, handshake, health, Info, Configure).
//!
//! `cargo bench -p addon-executor --bench plugins` (needs bwrap, a Docker daemon and runsc, and
//! root for gVisor; BENCH_RUNS to change the number of runs). The plugin programs are built
//! (`cargo build --release -p addon-runner-plugins`) when missing.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use addon_executor::{Config, Engine};
use common::{config_file, median, ms, plugin, time};

/// Wall time of one run through the engine.
async fn run_once(engine: &Engine, addon: &Path, runner: &str) -> Duration {
    common::engine_run(engine, addon, runner).await.0
}

/// One row of the report: `label`'s median `x` against `base`, with their ratio and `x - base`
/// (called `what`).
fn against(label: &str, x: Duration, base: Duration, what: &str) {
    println!("    {label:<38}{:>8.1} ms   ratio {:.2}x   {what} {:+.2} ms", ms(x), ms(x) / ms(base), ms(x) - ms(base));
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let dir = tempfile::tempdir().expect("tempdir");
    let config_path = config_file(
        dir.path(),
        "config",
        &format!(
            "runner: [trivial, docker]\nplugins:\n  example: {{command: [{}], serves: [trivial]}}\n  docker-plugin: {{command: [{}], serves: [docker]}}\n  gvisor: {{command: [{}], serves: [trivial]}}\n",
            plugin("addon-runner-example").display(),
            plugin("addon-runner-docker").display(),
            plugin("addon-runner-gvisor").display(),
        ),
    );
    let config = Config::load(&config_path).expect("config");
    let trivial = common::noop_addon(dir.path(), "bench-trivial", "trivial");
    let docker = common::noop_addon(dir.path(), "bench-docker", "docker");
    let script = trivial.join("run.sh");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        // The one-off cost of a plugin: a fresh engine's first call starts it.
        let mut starts = Vec::new();
        for _ in 0..5 {
            let engine = Engine::new(config.clone());
            let runner = engine.runner("example").expect("example plugin");
            let t = Instant::now();
            let probe = runner.probe().await;
            starts.push(t.elapsed());
            assert!(probe.available, "{}", probe.detail);
        }
        let engine = Engine::new(config.clone());
        // Warm up: plugins started, the docker image built and cached, probes remembered.
        for (addon, runner) in
            [(&trivial, "trivial"), (&trivial, "example"), (&docker, "docker"), (&docker, "docker-plugin"), (&trivial, "gvisor")]
        {
            run_once(&engine, addon, runner).await;
        }
        let bare_runsc = || {
            let mut c = Command::new("runsc");
            c.args(["--network=none", "do"]).arg(&script);
            c
        };
        let (mut t, mut x, mut d, mut dp, mut g, mut rd) = (vec![], vec![], vec![], vec![], vec![], vec![]);
        for i in 0..runs {
            t.push(run_once(&engine, &trivial, "trivial").await);
            x.push(run_once(&engine, &trivial, "example").await);
            if i % 2 == 0 {
                d.push(run_once(&engine, &docker, "docker").await);
                dp.push(run_once(&engine, &docker, "docker-plugin").await);
                g.push(run_once(&engine, &trivial, "gvisor").await);
                rd.push(time(&mut bare_runsc()));
            }
        }
        let n2 = d.len();
        // Host sandbox starts here are bimodal (cgroup v1 set-up and removal): the fastest runs
        // show the protocol's own cost best.
        let (tmin, xmin) = (t.iter().min().copied().unwrap_or_default(), x.iter().min().copied().unwrap_or_default());
        let (t, x, d, dp, g, rd) = (median(t), median(x), median(d), median(dp), median(g), median(rd));
        println!("runner plugins benchmark: medians, interleaved; one engine (library), plugins kept warm");
        println!("  protocol, {runs} runs each (trivial runner in bwrap, in process vs out of process):");
        println!("    trivial, in process                   {:>8.1} ms", ms(t));
        against("example plugin (same runner)", x, t, "plugin overhead per run");
        println!(
            "    fastest runs: in process {:.1} ms, plugin {:.1} ms: plugin overhead per run {:+.2} ms",
            ms(tmin),
            ms(xmin),
            ms(xmin) - ms(tmin)
        );
        println!("  docker, {n2} runs each (no-op addon, cache hit):");
        println!("    docker, in process                    {:>8.1} ms", ms(d));
        against("docker-plugin (addon-runner-docker)", dp, d, "plugin overhead per run");
        println!("  gvisor, {n2} runs each (no-op addon):");
        println!("    runsc --network=none do (bare)        {:>8.1} ms", ms(rd));
        against("gvisor plugin (runsc run, limits)", g, rd, "difference");
        println!(
            "  starting a plugin (process, handshake, health, Info, Configure, Probe), median of {}: {:.1} ms, once per engine",
            starts.len(),
            ms(median(starts))
        );
    });
}
