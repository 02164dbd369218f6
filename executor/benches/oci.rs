//! A cache-hit no-op docker addon through the daemonless `oci` runner, once with each OCI
//! runtime that works here (crun, runc), against (a) a bare `docker run --rm --network none` of
//! the same image and, per runtime, (b) a bare `crun run` / `runc run` of a minimal bundle over
//! the same cached root filesystem and (c) of the configuration the engine writes for a run (its
//! mounts, seccomp profile, capabilities, id mapping) without the per-run overlay, and (d) that
//! bundle started in a new control group with the run's limits (what the engine does for every
//! run; on cgroup v1 the move into a group waits for an RCU grace period unless the host mounts
//! cgroups with `favordynmods`); all interleaved in one run, with the engine's phases. The engine is used as a job server uses it
//! (the library, one long-lived engine per runtime); the `addon run` command (runtime `auto`) is
//! timed too.
//!
//! On a host with hybrid cgroups crun starts only with the v2 hierarchy out of its sight; the
//! bare crun gets that too (a private mount namespace with it covered), and nothing else.
//!
//! `cargo bench -p addon-executor --bench oci` (needs root, crun and/or runc, umoci, buildah and
//! a Docker daemon; BENCH_RUNS to change).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use addon_executor::{Config, Engine};
use addon_runners::sandbox::ns::NsPlan;
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
    let tag = "addon-bench-oci:latest";
    time(Command::new("docker").env("DOCKER_BUILDKIT", "0").args(["build", "-q", "-t", tag]).arg(&addon));
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    // One engine per runtime, sharing the cache: the first run builds and unpacks, the others hit.
    let mut first = None;
    let mut engines = Vec::new();
    for name in ["crun", "runc"] {
        let path = common::config_file(dir.path(), name, &format!("runner: [oci]\noci-runner: {{runtime: {name}}}\n"));
        let engine = Engine::new(Config::load(&path).expect("config"));
        let probe = rt.block_on(async { engine.runner("oci").expect("oci").probe().await });
        if !probe.available {
            println!("({name} is left out: {})", probe.detail);
            continue;
        }
        let (t, _) = rt.block_on(run_once(&engine, &addon));
        first.get_or_insert(t);
        engines.push((name, engine));
    }
    assert!(!engines.is_empty(), "no OCI runtime works here");
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
    let (minimal, same) = bare_bundles(dir.path(), &rootfs);
    let state = dir.path().join("bare-state");
    let n = std::cell::Cell::new(0);
    // A bare runtime start; in the control groups whose `cgroup.procs` are `join` when given.
    let bare_runtime = |runtime: &str, bundle: &Path, join: &[PathBuf]| {
        n.set(n.get() + 1);
        let mut c = Command::new(runtime);
        c.arg(format!("--root={}", state.display()));
        let mut plan = None;
        if runtime == "crun" {
            c.arg("--cgroup-manager=disabled");
            if let Some(v2) = addon_runners::oci::hybrid_v2_mount() {
                plan = Some(NsPlan::prepare_only().with_cover(v2));
            }
        }
        if !join.is_empty() {
            plan = Some(plan.unwrap_or_else(NsPlan::prepare_only).join_cgroups(join));
        }
        if let Some(plan) = plan {
            plan.install_std(&mut c);
        }
        c.args(["run", "--bundle"]).arg(bundle).arg(format!("bare-{}", n.get()));
        c
    };
    // (d): the same, started in a new control group (cgroup v1 here: memory, pids, cpu, cpuacct)
    // with the run's limits, made and removed around it, as the engine does for a run.
    let v1 = Path::new("/sys/fs/cgroup/memory").is_dir();
    let in_group = |runtime: &str, bundle: &Path| -> Option<Duration> {
        if !v1 {
            return None;
        }
        let t = std::time::Instant::now();
        let name = format!("addon-engine/bare-{}-{}", std::process::id(), n.get());
        let dirs: Vec<PathBuf> = ["memory", "pids", "cpu", "cpuacct"]
            .iter()
            .map(|h| Path::new("/sys/fs/cgroup").join(h).join(&name))
            .collect();
        for d in &dirs {
            std::fs::create_dir_all(d).expect("cgroup");
        }
        std::fs::write(dirs[0].join("memory.limit_in_bytes"), "1073741824").expect("memory limit");
        std::fs::write(dirs[1].join("pids.max"), "512").expect("pids limit");
        std::fs::write(dirs[2].join("cpu.cfs_quota_us"), "100000").expect("cpu limit");
        let procs: Vec<PathBuf> = dirs.iter().map(|d| d.join("cgroup.procs")).collect();
        time(&mut bare_runtime(runtime, bundle, &procs));
        for d in &dirs {
            let _ = std::fs::remove_dir(d);
        }
        Some(t.elapsed())
    };
    let bare_docker = || {
        let mut c = Command::new("docker");
        c.args(["run", "--rm", "--network", "none", tag]);
        c
    };
    let cli = || addon_run(&config_path, &addon);
    time(&mut cli());
    struct Times {
        engine: Vec<Duration>,
        phases: Vec<[u64; 4]>,
        minimal: Vec<Duration>,
        same: Vec<Duration>,
        grouped: Vec<Duration>,
    }
    let mut per: Vec<Times> = engines
        .iter()
        .map(|_| Times { engine: vec![], phases: vec![], minimal: vec![], same: vec![], grouped: vec![] })
        .collect();
    let (mut c, mut d) = (vec![], vec![]);
    for _ in 0..runs {
        for ((name, engine), t) in engines.iter().zip(per.iter_mut()) {
            let (e, p) = rt.block_on(run_once(engine, &addon));
            t.engine.push(e);
            t.phases.push(p);
            t.minimal.push(time(&mut bare_runtime(name, &minimal, &[])));
            t.same.push(time(&mut bare_runtime(name, &same, &[])));
            t.grouped.extend(in_group(name, &same));
        }
        c.push(time(&mut cli()));
        d.push(time(&mut bare_docker()));
    }
    let fastest = |v: &[Duration]| v.iter().min().copied().unwrap_or_default();
    let (cm, dm) = (median(c), median(d));
    println!("oci benchmark: median of {runs} runs each, interleaved");
    println!("  first run (buildah build + umoci unpack + run)     {:>8.1} ms", ms(first.unwrap_or_default()));
    println!("  (a) docker run --rm --network none                 {:>8.1} ms", ms(dm));
    println!(
        "  addon run --json (CLI, runtime auto)               {:>8.1} ms   CLI/(a) {:.2}x",
        ms(cm),
        ms(cm) / ms(dm)
    );
    for ((name, _), t) in engines.iter().zip(&per) {
        let phase = |i: usize| {
            let mut v: Vec<u64> = t.phases.iter().map(|p| p[i]).collect();
            v.sort();
            v[v.len() / 2]
        };
        let (em, bm, sm) = (median(t.engine.clone()), median(t.minimal.clone()), median(t.same.clone()));
        println!("  {name}:");
        println!(
            "    engine, cache hit (library, warm engine)       {:>8.1} ms   fastest {:.1} ms   engine/(a) {:.2}x",
            ms(em),
            ms(fastest(&t.engine)),
            ms(em) / ms(dm)
        );
        println!(
            "      phases (median ms): prepare {}, run {}, collect {}, cleanup {}",
            phase(0),
            phase(1),
            phase(2),
            phase(3)
        );
        println!(
            "    (b) bare {name} run, minimal bundle               {:>8.1} ms   engine/(b) {:.2}x (fastest {:.2}x)",
            ms(bm),
            ms(em) / ms(bm),
            ms(fastest(&t.engine)) / ms(fastest(&t.minimal))
        );
        println!(
            "    (c) bare {name} run, the engine's bundle config   {:>8.1} ms   engine/(c) {:.2}x (fastest {:.2}x)",
            ms(sm),
            ms(em) / ms(sm),
            ms(fastest(&t.engine)) / ms(fastest(&t.same))
        );
        if !t.grouped.is_empty() {
            let gm = median(t.grouped.clone());
            println!(
                "    (d) (c) in a new control group with the limits {:>8.1} ms   engine/(d) {:.2}x (fastest {:.2}x)",
                ms(gm),
                ms(em) / ms(gm),
                ms(fastest(&t.engine)) / ms(fastest(&t.grouped))
            );
        }
    }
    let _ = Command::new("docker").args(["rmi", "-f", tag]).output();
}

/// Two bundles over `rootfs` (read-only, no overlay), with the engine's namespaces and id
/// mapping: a minimal one, and the engine's own configuration of a run (`bundle::config_json`).
fn bare_bundles(dir: &Path, rootfs: &Path) -> (PathBuf, PathBuf) {
    use addon_runners::oci::bundle;
    let minimal = dir.join("bare-bundle");
    std::fs::create_dir_all(&minimal).expect("mkdir");
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
    std::fs::write(minimal.join("config.json"), spec.to_string()).expect("write");
    let same = dir.join("same-bundle");
    for sub in ["work", "output", "cache"] {
        let d = same.join(sub);
        std::fs::create_dir_all(&d).expect("mkdir");
        std::os::unix::fs::chown(&d, Some(base), Some(base)).expect("chown");
    }
    std::fs::write(same.join("hosts"), "127.0.0.1 localhost\n").expect("write");
    let user = bundle::User { uid: 0, gid: 0, additional_gids: vec![], home: "/".into() };
    let argv = ["/bin/sh".to_string(), "/run.sh".to_string()];
    let mut config = bundle::config_json(&bundle::RunConfig {
        root: rootfs,
        argv: &argv,
        env: &["PATH=/bin".to_string()],
        user: &user,
        binds: bundle::Binds {
            work: &same.join("work"),
            output: &same.join("output"),
            cache: &same.join("cache"),
            hosts: &same.join("hosts"),
        },
        network: addon_runners::oci::bundle::Net::None,
        id_map: Some((base, addon_runners::oci::ID_RANGE)),
        rlimits: &[],
        cgroup: None,
    });
    config["root"]["readonly"] = serde_json::json!(true);
    std::fs::write(same.join("config.json"), config.to_string()).expect("write");
    (minimal, same)
}
