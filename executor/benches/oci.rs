//! A cache-hit no-op docker addon through the daemonless `oci` runner against (a) a bare
//! `docker run --rm --network none` of the same image and (b) a bare `runc run` (or crun, what
//! the runner picked) of a bundle over the same cached root filesystem, interleaved in one run;
//! with the engine's phases. The engine is used as a job server uses it (the library, one
//! long-lived engine); the `addon run` command is timed too.
//!
//! (b) is a minimal bundle; (c) is the configuration the engine writes for a run (its mounts,
//! seccomp profile, capabilities, id mapping) without the per-run overlay.
//!
//! `cargo bench -p addon-executor --bench oci` (needs root, runc or crun, umoci, buildah and a
//! Docker daemon; BENCH_RUNS to change).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use addon_executor::{Config, Engine};
use common::{addon_run, median, time};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One run through the engine: wall time and the phases it reported (prepare, run, collect,
/// cleanup, in ms).
async fn run_once(engine: &Engine, addon: &Path) -> (Duration, [u64; 4]) {
    let (d, report) = common::engine_run(engine, addon, "oci").await;
    let p = &report.addons[0].phases_ms;
    (d, [p.prepare, p.run, p.collect, p.cleanup])
}

fn find(dir: &Path, end: &str) -> Option<PathBuf> {
    if dir.ends_with(end) {
        return Some(dir.to_path_buf());
    }
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .find_map(|e| find(&e.path(), end))
}

fn main() {
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let dir = tempfile::tempdir().expect("tempdir");
    let addon = common::noop_addon(dir.path(), "bench-oci", "docker");
    let config_path = common::config_file(dir.path(), "config", "runner: [oci]\n");
    let config = Config::load(&config_path).expect("config");
    let tag = "addon-bench-oci:latest";
    time(Command::new("docker").env("DOCKER_BUILDKIT", "0").args(["build", "-q", "-t", tag]).arg(&addon));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let engine = Engine::new(config);
    // Warm up: the image is built, unpacked and cached; the runtime probed.
    let (first, _) = rt.block_on(run_once(&engine, &addon));
    let runtime = rt.block_on(async { engine.runner("oci").expect("oci").probe().await });
    let runtime_name = runtime.version.unwrap_or_default().split(' ').next().unwrap_or("runc").to_string();
    // The bare runtime: a bundle over the same cached root filesystem (read-only, no overlay),
    // with the same namespaces and id mapping, no engine.
    let rootfs = find(&dir.path().join("cache"), "image/rootfs").expect("the cached root filesystem");
    // The container's root (an unprivileged id of the host) must pass through to it; the engine
    // reaches it through a mount point of its own instead.
    {
        use std::os::unix::fs::PermissionsExt;
        let mut p = rootfs.parent();
        while let Some(d) = p.filter(|d| d.starts_with(dir.path())) {
            let mode = std::fs::metadata(d).expect("stat").permissions().mode();
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o001)).expect("chmod");
            p = d.parent();
        }
    }
    let bundle = dir.path().join("bare-bundle");
    std::fs::create_dir_all(&bundle).expect("mkdir");
    let base = addon_runners::oci::OciSettings::default().uid_base;
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["/bin/sh", "/run.sh"],
                    "env": ["PATH=/bin"], "cwd": "/", "noNewPrivileges": true},
        "root": {"path": rootfs, "readonly": true},
        "hostname": "bare",
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                   {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}],
        "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                                  {"type": "network"}, {"type": "user"}],
                  "uidMappings": [{"containerID": 0, "hostID": base, "size": 65536}],
                  "gidMappings": [{"containerID": 0, "hostID": base, "size": 65536}]}
    });
    std::fs::write(bundle.join("config.json"), spec.to_string()).expect("write");
    // The engine's own configuration of a run (bundle::config_json: its mounts, seccomp profile,
    // capabilities, id mapping), over the same root filesystem read-only, without the overlay.
    let same = dir.path().join("same-bundle");
    for sub in ["work", "output", "cache"] {
        let d = same.join(sub);
        std::fs::create_dir_all(&d).expect("mkdir");
        std::os::unix::fs::chown(&d, Some(base), Some(base)).expect("chown");
    }
    std::fs::write(same.join("hosts"), "127.0.0.1 localhost\n").expect("write");
    let user = addon_runners::oci::bundle::User { uid: 0, gid: 0, additional_gids: vec![], home: "/".into() };
    let argv = ["/bin/sh".to_string(), "/run.sh".to_string()];
    let mut same_config = addon_runners::oci::bundle::config_json(&addon_runners::oci::bundle::RunConfig {
        root: &rootfs,
        argv: &argv,
        env: &["PATH=/bin".to_string()],
        user: &user,
        binds: addon_runners::oci::bundle::Binds {
            work: &same.join("work"),
            output: &same.join("output"),
            cache: &same.join("cache"),
            hosts: &same.join("hosts"),
        },
        network: false,
        id_map: Some((base, addon_runners::oci::ID_RANGE)),
        rlimits: &[],
        cgroup: None,
    });
    same_config["root"]["readonly"] = serde_json::json!(true);
    std::fs::write(same.join("config.json"), same_config.to_string()).expect("write");
    let state = dir.path().join("bare-state");
    let mut n = 0;
    let mut bare_runtime = |bundle: &Path| {
        n += 1;
        let mut c = Command::new(&runtime_name);
        c.arg(format!("--root={}", state.display()));
        if runtime_name == "crun" {
            c.arg("--cgroup-manager=disabled");
        }
        c.args(["run", "--bundle"]).arg(bundle).arg(format!("bare-{n}"));
        c
    };
    let bare_docker = || {
        let mut c = Command::new("docker");
        c.args(["run", "--rm", "--network", "none", tag]);
        c
    };
    let cli = || addon_run(&config_path, &addon);
    time(&mut cli());
    let (mut e, mut phases, mut c, mut d, mut r, mut rs) = (vec![], vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        let (t, p) = rt.block_on(run_once(&engine, &addon));
        e.push(t);
        phases.push(p);
        r.push(time(&mut bare_runtime(&bundle)));
        rs.push(time(&mut bare_runtime(&same)));
        c.push(time(&mut cli()));
        d.push(time(&mut bare_docker()));
    }
    let phase = |i: usize| {
        let mut v: Vec<u64> = phases.iter().map(|p| p[i]).collect();
        v.sort();
        v[v.len() / 2]
    };
    let fastest = |v: &[Duration]| v.iter().min().copied().unwrap_or_default();
    let (em, cm, dm, rm, rsm) = (median(e.clone()), median(c), median(d), median(r.clone()), median(rs.clone()));
    println!("oci benchmark: median of {runs} runs each, interleaved (runtime: {runtime_name})");
    println!("  first run (buildah build + umoci unpack + run)  {:>8.1} ms", ms(first));
    println!(
        "  engine, cache hit (library, warm engine)        {:>8.1} ms   fastest {:.1} ms",
        ms(em),
        ms(fastest(&e))
    );
    println!(
        "    phases (median ms): prepare {}, run {}, collect {}, cleanup {}",
        phase(0),
        phase(1),
        phase(2),
        phase(3)
    );
    println!("  addon run --json (CLI, new process each time)   {:>8.1} ms", ms(cm));
    println!(
        "  (a) docker run --rm --network none              {:>8.1} ms   engine/(a) {:.2}x, CLI/(a) {:.2}x",
        ms(dm),
        ms(em) / ms(dm),
        ms(cm) / ms(dm)
    );
    println!(
        "  (b) bare {runtime_name} run of the same root filesystem     {:>8.1} ms   engine/(b) {:.2}x (fastest {:.2}x), CLI/(b) {:.2}x",
        ms(rm),
        ms(em) / ms(rm),
        ms(fastest(&e)) / ms(fastest(&r)),
        ms(cm) / ms(rm)
    );
    println!(
        "  (c) bare {runtime_name} run, the engine's bundle config       {:>8.1} ms   engine/(c) {:.2}x (fastest {:.2}x), CLI/(c) {:.2}x",
        ms(rsm),
        ms(em) / ms(rsm),
        ms(fastest(&e)) / ms(fastest(&rs)),
        ms(cm) / ms(rsm)
    );
    let _ = Command::new("docker").args(["rmi", "-f", tag]).output();
}
