//! The swarm runner's cost per run (cache hit), interleaved in the same run against:
//! (a) the bare primitive: `docker service create --mode replicated-job --restart-condition none`
//!     of the same image by digest, waited for with `docker service ps` until its task completes,
//!     then `docker service rm` (no helper, no inputs, no outputs);
//! (b) the in-process docker runner on the same addon (a container on this host).
//! Each for a no-op addon and for one given a 50 MB input file (which the swarm runner sends to
//! the task and the docker runner bind-mounts).
//!
//! `cargo bench -p addon-executor --bench swarm` (needs the swarm and registry of
//! scripts/test-all; BENCH_RUNS to change the number of runs, 7 by default).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use addon_executor::{Config, Engine, RunRequest};
use common::{config_file, median, print_against};

/// The bare job: create, wait for completion, remove.
fn bare(image: &str, n: usize) -> Duration {
    let name = format!("addon-bench-bare-{}-{n}", std::process::id());
    let t = Instant::now();
    let ok = Command::new("docker")
        .args(["service", "create", "--quiet", "--detach", "--mode", "replicated-job", "--restart-condition", "none"])
        .args(["--name", &name, image])
        .output()
        .expect("docker");
    assert!(ok.status.success(), "docker service create: {}", String::from_utf8_lossy(&ok.stderr));
    loop {
        let out = Command::new("docker")
            .args(["service", "ps", "--format", "{{.CurrentState}}", &name])
            .output()
            .expect("docker");
        let state = String::from_utf8_lossy(&out.stdout);
        if state.starts_with("Complete") {
            break;
        }
        assert!(!state.starts_with("Failed") && !state.starts_with("Rejected"), "bare job: {state}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let d = t.elapsed();
    let _ = Command::new("docker").args(["service", "rm", &name]).output();
    d
}

async fn run(engine: &Engine, addon: &Path, runner: &str, input: Option<&Path>) -> Duration {
    let req = RunRequest {
        sources: vec![addon.display().to_string()],
        runners: Some(vec![runner.to_string()]),
        fail_fast: Some(true),
        inputs: input.map(|p| vec![("input.bin".to_string(), p.to_path_buf())]).unwrap_or_default(),
        ..Default::default()
    };
    common::run_request(engine, req, runner).await.0
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(7);
    let dir = tempfile::tempdir().expect("tempdir");
    let program = common::plugin("addon-runner-swarm");
    common::plugin("addon-swarm-task");
    let config_path = config_file(
        dir.path(),
        "config",
        &format!(
            "runner: [swarm, docker]\nplugins:\n  swarm: {{command: [{}], serves: [docker]}}\n",
            program.display()
        ),
    );
    let config = Config::load(&config_path).expect("config");
    let addon = common::noop_addon(dir.path(), "bench-swarm", "docker");
    let input = dir.path().join("input.bin");
    let mut data = vec![0u8; 50 << 20];
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i.wrapping_mul(2654435761) >> 13) as u8; // not all zeros: nothing compresses it away
    }
    std::fs::write(&input, data).expect("write input");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let engine = Engine::new(config);
        // Warm up: both images built, the swarm image pushed and pulled, the plugin started.
        run(&engine, &addon, "swarm", None).await;
        run(&engine, &addon, "docker", None).await;
        let image = Command::new("docker")
            .args(["image", "inspect", "--format", "{{index .RepoDigests 0}}"])
            .arg(pushed_tag("bench-swarm"))
            .output()
            .expect("docker");
        let image = String::from_utf8_lossy(&image.stdout).trim().to_string();
        assert!(image.contains('@'), "the pushed image's digest: {image}");
        let (mut s, mut d, mut b, mut s50, mut d50) = (vec![], vec![], vec![], vec![], vec![]);
        for n in 0..runs {
            s.push(run(&engine, &addon, "swarm", None).await);
            d.push(run(&engine, &addon, "docker", None).await);
            b.push(bare(&image, n));
            s50.push(run(&engine, &addon, "swarm", Some(&input)).await);
            d50.push(run(&engine, &addon, "docker", Some(&input)).await);
        }
        println!("swarm runner, median of {runs} runs each, interleaved (cache hits):");
        let bare = median(b);
        print_against(
            ("no-op addon through the engine (swarm)", median(s)),
            &[
                ("bare docker service create (replicated-job)", bare, ""),
                ("engine, in-process docker runner", median(d), ""),
            ],
            50,
            8,
        );
        print_against(
            ("50 MB input through the engine (swarm)", median(s50)),
            &[
                ("bare docker service create (replicated-job)", bare, ""),
                ("engine, in-process docker runner", median(d50), ""),
            ],
            50,
            8,
        );
    });
}

/// The tag the plugin pushed for `addon` (the newest of its repository in the daemon).
fn pushed_tag(addon: &str) -> String {
    let out = Command::new("docker")
        .args(["image", "ls", "--format", "{{.Repository}}:{{.Tag}}"])
        .arg(format!("127.0.0.1:5000/addon-engine/{addon}"))
        .output()
        .expect("docker");
    String::from_utf8_lossy(&out.stdout).lines().find(|l| !l.ends_with("-base")).unwrap_or_default().to_string()
}
