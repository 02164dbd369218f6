//! The docker runner against the real Docker daemon: the contract inside a container, network
//! isolation, build once by digest, failing builds, timeouts, no leftovers, concurrent engines,
//! prune, and Podman's compatible API.

mod common;

use std::process::Command;

use common::*;

const CONTRACT: &str = r#"
echo "args=$*" >&2
echo "cwd=$(pwd)" >&2
echo "ADDON_DIR=$ADDON_DIR" >&2
echo "OUTPUT_DIR=$OUTPUT_DIR" >&2
echo "CACHE_DIR=$CACHE_DIR" >&2
echo "TMPDIR=$TMPDIR" >&2
echo "SECRET=${SECRET_TOKEN-unset}" >&2
echo "FROM_CLI=$FROM_CLI" >&2
echo "input=$(cat arguments/user-input)" >&2
echo "ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\n' ' ')" >&2
if echo hi | nc -w 2 127.0.0.1 "$PORT" >/dev/null 2>&1; then echo "reached=yes" >&2; else echo "reached=no" >&2; fi
echo done > "$OUTPUT_DIR/out.txt"
echo '{"newItems": [{"files": ["out.txt"]}]}'
"#;

/// A world whose runner is docker, with `extra` configuration (None: skipped, no daemon).
fn docker_world(extra: &str) -> Option<World> {
    require_docker().then(|| World::new("auto", &format!("runner: [docker]\n{extra}")))
}

fn listener() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            drop(s);
        }
    });
    format!("PORT={port}")
}

#[test]
fn contract_network_and_build_once() {
    if !require_docker() {
        return;
    }
    // `network.impure: host`: the impure addon reaches a listener on the host, as in Docspell.
    let w = World::new("auto", "runner: [docker, trivial]\nnetwork: {impure: host}\n");
    let marker = format!("contract-{}", std::process::id());
    let addon = w.docker_addon("dcontract", PURE, CONTRACT, &marker);
    let port = listener();
    let out_dir = w.path().join("out");
    let (out, v) = w.run_env(
        &[
            addon.to_str().unwrap(),
            "--args",
            "hello",
            "--env",
            "FROM_CLI=cli",
            "--env",
            &port,
            "--output-dir",
            out_dir.to_str().unwrap(),
        ],
        &[("SECRET_TOKEN", "hunter2")],
    );
    assert_eq!(out.status.code(), Some(0), "{v}\n{}", String::from_utf8_lossy(&out.stderr));
    let a = &v["addons"][0];
    assert_eq!(a["runner"], "docker");
    assert_eq!(a["sandbox"], "docker");
    assert_eq!(a["cache"], "miss");
    let m = stderr_map(&out);
    assert_eq!(m["args"], "--flag arguments/user-input");
    assert_eq!(m["cwd"], "/mnt/work");
    assert_eq!(m["ADDON_DIR"], "/mnt/work/addons/dcontract-1.0");
    assert_eq!(m["OUTPUT_DIR"], "/mnt/output");
    assert_eq!(m["CACHE_DIR"], "/mnt/cache");
    assert_eq!(m["TMPDIR"], "/mnt/work/temp");
    assert_eq!(m["SECRET"], "unset");
    assert_eq!(m["FROM_CLI"], "cli");
    assert_eq!(m["input"], "hello");
    assert_eq!(m["ifaces"].trim(), "lo", "pure: only loopback");
    assert_eq!(m["reached"], "no");
    assert_eq!(std::fs::read_to_string(out_dir.join("out.txt")).unwrap(), "done\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("build: Step"));

    // Second run: a cache hit that does not call the build.
    let (out, v) = w.run(&[addon.to_str().unwrap(), "--env", &port]);
    assert_eq!(v["addons"][0]["cache"], "hit", "{v}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("build: Step"), "no build on a hit");

    // Changed content: a new image.
    std::fs::write(addon.join("extra.txt"), "changed").unwrap();
    let (_, v2) = w.run(&[addon.to_str().unwrap(), "--env", &port]);
    assert_eq!(v2["addons"][0]["cache"], "miss");
    assert_ne!(v2["addons"][0]["digest"], v["addons"][0]["digest"]);
    assert!(containers_of("dcontract-1.0").is_empty(), "containers must be removed");

    // Impure: host network, reaches the host's loopback listener.
    let impure = w.docker_addon("dimpure", IMPURE, CONTRACT, &marker);
    let (out, v) = w.run(&[impure.to_str().unwrap(), "--env", &port]);
    assert_eq!(v["addons"][0]["result"], "success", "{v}");
    assert_eq!(stderr_map(&out)["reached"], "yes");
    assert!(containers_of("dimpure-1.0").is_empty());
}

#[test]
fn a_failing_build_is_execution_failed_with_the_step() {
    let Some(w) = docker_world("") else { return };
    let addon = w.docker_addon_building("dfail", "fail", "RUN echo broken-step >&2 && exit 7");
    let a = w.run_execution_failed(&[addon.to_str().unwrap()]);
    assert!(a.error.contains("exit 7") || a.error.contains("non-zero code"), "{}", a.error);
    assert!(a.error.contains("Step"), "names the failing step: {}", a.error);
    // Nothing was cached: the next run builds (and fails) again rather than claiming success.
    let (_, v) = w.run(&[addon.to_str().unwrap()]);
    assert_eq!(v["addons"][0]["result"], "execution-failed");
    assert!(containers_of("dfail-1.0").is_empty());
}

#[test]
fn a_container_ignoring_sigterm_is_killed_at_its_timeout() {
    let Some(w) = docker_world("") else { return };
    let addon = w.docker_addon("dstubborn", PURE, "trap '' TERM\nwhile true; do sleep 1; done\n", "stubborn");
    // The loop never ends by itself: that the engine returns at all means it was killed (a hang
    // is the test harness's timeout). What it reports must say so.
    let (code, a) = w.run_first(&[addon.to_str().unwrap(), "--timeout", "2s"]);
    assert_eq!(code, Some(1));
    assert_eq!(a.result, "timeout", "{a}");
    assert_eq!(a["termination"], "timeout", "{a}");
    assert!(a["resources"]["wall_ms"].as_u64().unwrap() >= 2000, "stopped before its timeout: {a}");
    assert!(containers_of("dstubborn-1.0").is_empty(), "the container must be gone");
}

#[test]
fn two_engines_build_a_new_addon_once() {
    let Some(w) = docker_world("") else { return };
    let addon = w.docker_addon("dtwice", PURE, "echo '{}'", &format!("twice-{}", std::process::id()));
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_addon"))
            .args(["run", "--json", "--config", w.config.to_str().unwrap(), addon.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(spawn);
        let b = s.spawn(spawn);
        (a.join().unwrap(), b.join().unwrap())
    });
    let mut caches: Vec<String> = [a, b]
        .iter()
        .map(|o| {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(v["addons"][0]["result"], "success", "{v}");
            v["addons"][0]["cache"].as_str().unwrap().to_string()
        })
        .collect();
    caches.sort();
    assert_eq!(caches, ["hit", "miss"], "exactly one engine builds");
}

#[test]
fn prune_removes_entries_and_their_images() {
    let Some(w) = docker_world("") else { return };
    let addon = w.docker_addon("dprune", PURE, "echo '{}'", &format!("prune-{}", std::process::id()));
    let (_, v) = w.run(&[addon.to_str().unwrap()]);
    assert_eq!(v["addons"][0]["cache"], "miss");
    let ls = w.cli_json(&["cache", "ls"]);
    let entries = ls["entries"].as_array().unwrap();
    let image_entry = entries.iter().find(|e| e["kind"] == "artifact").expect("an image entry");
    assert_eq!(image_entry["addon"], "dprune-1.0");
    assert!(image_entry["size"].as_u64().unwrap() > 1_000_000, "the image size counts: {image_entry}");
    assert!(entries.iter().any(|e| e["kind"] == "data"));
    let tag = format!("addon-dprune:{}", &v["addons"][0]["digest"].as_str().unwrap()[7..19]);
    assert!(Command::new("docker").args(["image", "inspect", &tag]).output().unwrap().status.success());
    let pr = w.cli(&["cache", "prune", "--max-size", "0", "--json"]);
    assert_eq!(pr.status.code(), Some(0), "{}", String::from_utf8_lossy(&pr.stderr));
    let pr: serde_json::Value = serde_json::from_slice(&pr.stdout).unwrap();
    assert_eq!(pr["removed"].as_array().unwrap().len(), entries.len());
    assert_eq!(pr["total_size"], 0);
    assert!(
        !Command::new("docker").args(["image", "inspect", &tag]).output().unwrap().status.success(),
        "the image is removed"
    );
    // After pruning, the next run builds again.
    let (_, v) = w.run(&[addon.to_str().unwrap()]);
    assert_eq!(v["addons"][0]["cache"], "miss");
}

/// A Podman API service on a private socket, stopped when dropped.
struct Podman {
    service: std::process::Child,
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.service.kill();
        let _ = self.service.wait();
    }
}

/// Starts Podman's Docker-compatible API and points `w`'s config at it (None: skipped).
fn podman(w: &World) -> Option<Podman> {
    if !require_docker() {
        return None;
    }
    let have_podman = Command::new("podman").arg("--version").output().is_ok_and(|o| o.status.success());
    if !have_podman {
        missing("podman is not installed (apt-get install podman)");
        return None;
    }
    let sock = w.path().join("podman.sock");
    let conf = w.path().join("containers.conf");
    // Podman prefers crun when it is installed (test-all installs it for the oci runner), and
    // crun 1.8 refuses hosts with hybrid cgroups (the oci runner hides the v2 hierarchy from it;
    // podman does not): runc when it is there.
    let runtime = if which::which("runc").is_ok() { "runc" } else { "crun" };
    std::fs::write(
        &conf,
        format!("[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n[engine]\nruntime = \"{runtime}\"\n"),
    )
    .unwrap();
    let service = Command::new("podman")
        .args(["system", "service", "--time=0", &format!("unix://{}", sock.display())])
        .env("CONTAINERS_CONF", &conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::fs::write(
        &w.config,
        format!(
            "runner: [docker]\nworking-dir: {}\ncache-dir: {}\ndocker-runner: {{host: \"unix://{}\"}}\n",
            w.path().join("work").display(),
            w.path().join("cache").display(),
            sock.display()
        ),
    )
    .unwrap();
    Some(Podman { service })
}

#[test]
fn podman_compatible_api() {
    let w = World::new("auto", "");
    let Some(_podman) = podman(&w) else { return };
    let addon = w.docker_addon("dpodman", PURE, CONTRACT, "podman");
    let port = listener();
    let (out, v) = w.run(&[addon.to_str().unwrap(), "--env", &port]);
    assert_eq!(v["addons"][0]["result"], "success", "{v}\n{}", String::from_utf8_lossy(&out.stderr));
    let m = stderr_map(&out);
    assert_eq!(m["ifaces"].trim(), "lo");
    assert_eq!(m["cwd"], "/mnt/work");
}

/// An addon that prints its JSON without a trailing newline and exits at once: its output must
/// arrive whole, every time (following the logs after start lost it in 7 of 10 runs on Docker
/// 20.10). Fifty runs in a row, in one engine.
fn output_arrives_whole_every_time(w: &World, marker: &str) {
    let script = "echo x > \"$OUTPUT_DIR/x.txt\"\nprintf '%s' '{\"newItems\": [{\"files\": [\"x.txt\"]}]}'\n";
    let addon = w.docker_addon("dnonl", PURE, script, marker);
    let src = addon.to_str().unwrap();
    let mut args = vec![src; 50];
    args.push("--no-fail-fast");
    let (out, v) = w.run(&args);
    let addons = v["addons"].as_array().unwrap();
    assert_eq!(addons.len(), 50);
    let lost: Vec<usize> = addons
        .iter()
        .enumerate()
        .filter(|(_, a)| a["result"] != "success" || a["output"]["newItems"][0]["files"][0] != "x.txt")
        .map(|(i, _)| i)
        .collect();
    assert!(lost.is_empty(), "output lost in runs {lost:?}: {v}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(v["output"]["newItems"].as_array().unwrap().len(), 50);
}

#[test]
fn docker_output_without_newline_arrives_whole_in_50_of_50_runs() {
    let Some(w) = docker_world("") else { return };
    output_arrives_whole_every_time(&w, &format!("nonl-{}", std::process::id()));
}

#[test]
fn podman_output_without_newline_arrives_whole_in_50_of_50_runs() {
    let w = World::new("auto", "");
    let Some(_podman) = podman(&w) else { return };
    output_arrives_whole_every_time(&w, "nonl-podman");
}

#[test]
fn containers_of_a_dead_engine_are_reaped_by_the_next() {
    let Some(w) = docker_world("") else { return };
    let addon = w.docker_addon("dorphan", PURE, "echo started >&2\nsleep 300\n", "orphan");
    let mut engine = w.spawn_until(&addon, "started");
    engine.kill().unwrap();
    engine.wait().unwrap();
    // The daemon keeps the container of a killed engine until an engine reaps it: the next
    // one here, or any other engine of this host that talks to docker first (tests run side
    // by side, and every probe of the docker runner reaps).
    let left = containers_of("dorphan-1.0").len();
    assert!(left <= 1, "one container: {left}");
    if left == 0 {
        eprintln!("another engine of this host reaped it first");
    }
    assert!(w.cli(&["runners"]).status.success());
    assert!(containers_of("dorphan-1.0").is_empty(), "reaped");
}

#[test]
fn a_named_image_is_used_as_is_and_a_missing_one_fails_clearly() {
    let Some(w) = docker_world("") else { return };
    // Build an image outside the engine, as an admin would provide one.
    let src = w.docker_addon(
        "dnamedsrc",
        PURE,
        "echo named-image-ran >&2\necho '{}'\n",
        &format!("named-{}", std::process::id()),
    );
    let tag = format!("addon-test-named:{}", std::process::id());
    docker_build(&tag, &src);
    let addon = w.path().join("named");
    std::fs::create_dir_all(&addon).unwrap();
    let use_image = |image: &str| {
        let descriptor = format!(
            "meta: {{name: dnamed, version: \"1\"}}\nrunner: {{docker: {{enable: true, image: \"{image}\"}}}}\n{PURE}"
        );
        std::fs::write(addon.join("docspell-addon.yml"), descriptor).unwrap();
    };
    use_image(&tag);
    let (out, v) = w.run(&[addon.to_str().unwrap()]);
    let _ = Command::new("docker").args(["rmi", "-f", &tag]).output();
    assert_eq!(v["addons"][0]["result"], "success", "{v}");
    assert_eq!(v["addons"][0]["cache"], "none", "nothing was built");
    assert!(String::from_utf8_lossy(&out.stderr).contains("named-image-ran"));

    use_image(&format!("addon-test-absent/none:{}", std::process::id()));
    let (_, a) = w.run_first(&[addon.to_str().unwrap()]);
    assert_eq!(a.result, "execution-failed", "{a}");
    assert!(a.error.contains("not present here and pulling it failed"), "{a}");
}

#[test]
fn a_build_over_build_timeout_is_execution_failed() {
    let Some(w) = docker_world("docker-runner: {build-timeout: 2s}\n") else { return };
    let addon = w.docker_addon_building("dslowbuild", &format!("slow-{}", std::process::id()), "RUN sleep 60");
    let a = w.run_execution_failed(&[addon.to_str().unwrap()]);
    assert!(a.error.contains("build-timeout"), "{a}");
    assert!(containers_of("dslowbuild-1.0").is_empty());
}

/// A build goes on when an image it took from the daemon's cache is removed under it. Removing
/// an image (another engine's prune, `docker image prune`) removes its untagged parents, the
/// classic builder's cache of earlier steps, and a build that has just taken one of them from
/// the cache, and made no child of it yet, lost it ("unable to find image": seen when the
/// suite's tests built and pruned side by side). Here the build takes a step from the cache,
/// and while it reads a large file for its next step, the only other image made from that step
/// is removed, and the step's image with it.
#[test]
fn a_build_whose_cached_step_is_removed_under_it_builds_again() {
    let Some(w) = docker_world("") else { return };
    let pid = std::process::id();
    let shared = format!("ENV CHURN={pid}");
    let other = w.docker_addon_building("dother", "other", &shared);
    let tag = format!("addon-test-other:{pid}");
    docker_build(&tag, &other);
    // The image of the shared step.
    let history = Command::new("docker")
        .args(["history", "--no-trunc", "--format", "{{.ID}} {{.CreatedBy}}", &tag])
        .output()
        .unwrap();
    let history = String::from_utf8_lossy(&history.stdout).to_string();
    let step = history
        .lines()
        .find(|l| l.contains(&shared))
        .and_then(|l| l.split(' ').next())
        .unwrap_or_else(|| panic!("no step `{shared}` in the history of {tag}: {history}"))
        .to_string();
    assert!(step.starts_with("sha256:"), "{history}");
    let short = &step[7..19];
    let addon = w.docker_addon_building("dlosing", &format!("losing-{pid}"), &format!("{shared}\nCOPY big /big"));
    // The classic builder hashes a COPY's source before it looks for the step's parent.
    std::fs::write(addon.join("big"), vec![7u8; 96 << 20]).unwrap();
    let mut engine = Command::new(env!("CARGO_BIN_EXE_addon"))
        .args(["run", "--json", "--config", w.config.to_str().unwrap(), addon.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(engine.stderr.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    // The step's line, then the cache's image for it.
    while std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0
        && !(seen.contains(&shared) && line.contains(&format!("---> {short}")))
    {
        seen.push_str(&line);
        line.clear();
    }
    assert!(!line.is_empty(), "the build took the shared step from the cache: {seen}");
    let rmi = Command::new("docker").args(["rmi", &tag]).output().unwrap();
    let rmi = String::from_utf8_lossy(&rmi.stdout);
    assert!(
        rmi.contains(&step),
        "the shared step's image {step} went with the other image: {rmi}\n{history}\n{seen}{line}"
    );
    let rest = std::thread::spawn(move || {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
        rest
    });
    let out = engine.wait_with_output().unwrap();
    let stderr = rest.join().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["addons"][0]["result"], "success", "{v}\n{stderr}");
    assert!(stderr.contains("was removed meanwhile") && stderr.contains("building again"), "{stderr}");
    let _ = w.cli(&["cache", "prune", "--max-size", "0"]);
}

/// A prune during a run keeps the image that the run's container uses (its cache entry is held
/// for the whole run, not only while the image is looked up).
#[test]
fn a_prune_during_a_run_keeps_its_image() {
    let Some(w) = docker_world("") else { return };
    // An image no run holds, which the prune must remove: a prune that removed nothing would
    // otherwise pass.
    let idle = w.docker_addon("didle", PURE, "echo '{}'\n", &format!("idle-{}", std::process::id()));
    let (_, v) = w.run(&[idle.to_str().unwrap()]);
    assert_eq!(v["addons"][0]["result"], "success", "{v}");
    let marker = format!("inuse-{}", std::process::id());
    let addon = w.docker_addon("dinuse", PURE, "echo started >&2\nsleep 3\necho '{}'\n", &marker);
    let engine = w.spawn_until(&addon, "started");
    let pr = w.cli_json(&["cache", "prune", "--max-size", "0"]);
    let removed_artifacts: Vec<&str> = pr["removed"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "artifact")
        .map(|e| e["addon"].as_str().unwrap())
        .collect();
    assert_eq!(removed_artifacts, ["didle-1.0"], "only the idle image goes, the running addon's stays: {pr}");
    let out = engine.wait_with_output().unwrap();
    assert!(out.status.success());
    let ls = w.cli_json(&["cache", "ls"]);
    assert!(ls["entries"].as_array().unwrap().iter().any(|e| e["kind"] == "artifact"), "{ls}");
}

/// Finding 5 of the attack review: an image that declares a VOLUME got an anonymous volume per
/// run that was never removed and not counted by output-size (two runs left 202 MiB under a
/// 32 MiB limit). Now the VOLUME is a directory of the run, filled from the image, counted and
/// gone with the run.
#[test]
fn image_volumes_are_bounded_and_leave_nothing() {
    let Some(w) = docker_world("limits: {output-size: 32MiB}\n") else { return };
    // Files of 20 MiB (no single file may pass the output size: RLIMIT_FSIZE), 100 MiB in all.
    let script = "cat /data/seed >&2\nfor i in 1 2 3 4 5; do dd if=/dev/zero of=/data/big$i bs=1M count=20 2>/dev/null; done\necho '{}'\n";
    let addon = w.docker_addon("volumes", PURE, script, &format!("volumes-{}", std::process::id()));
    edit(
        &addon.join("Dockerfile"),
        "COPY run.sh /run.sh",
        "RUN [\"/bin/busybox\", \"sh\", \"-c\", \"mkdir -p /data && echo seeded > /data/seed\"]\nVOLUME /data\nCOPY run.sh /run.sh",
    );
    let volumes = || {
        let out = std::process::Command::new("docker").args(["volume", "ls", "-q"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    let before = volumes();
    for _ in 0..2 {
        let (out, v) = w.run(&[addon.to_str().unwrap()]);
        let a = &v["addons"][0];
        assert!(String::from_utf8_lossy(&out.stderr).contains("seeded"), "the image's content is in its VOLUME");
        assert_eq!(a["termination"], "limit", "100 MiB into a VOLUME under a 32 MiB limit: {a}");
    }
    assert_eq!(volumes(), before, "no volume outlives its run");
}

/// Finding 6 of the attack review: what a container writes into its own file system (its
/// writable layer: /, /tmp, the image's HOME) counts against output-size (1 GiB went into / under
/// a 64 MiB limit); a breach ends as `limit`. (As the unprivileged engine user: the kit's
/// fills_are_bounded_as_docker_group_user.)
#[test]
fn the_writable_layer_is_bounded() {
    let Some(w) = docker_world("limits: {output-size: 32MiB}\n") else { return };
    let script = "for i in 1 2 3 4 5; do dd if=/dev/zero of=/fill$i bs=1M count=20 2>/dev/null; done\necho '{}'\n";
    let addon = w.docker_addon("layer", PURE, script, &format!("layer-{}", std::process::id()));
    let (_, a) = w.run_first(&[addon.to_str().unwrap()]);
    assert_eq!(a["termination"], "limit", "100 MiB into the container's root under a 32 MiB limit: {a}");
    assert!(a.error.contains("output-size"), "{a}");
}

/// The second attack review: an image whose VOLUME path is a link to a host directory got that
/// directory bound into the container (read and written as root), and, for an unprivileged
/// engine, given to the engine's user by the settle container. The run gets an empty directory
/// there instead, and the host directory is untouched.
#[test]
fn a_volume_that_is_a_link_leads_nowhere() {
    let Some(w) = docker_world("") else { return };
    let host = w.host_dir_with_secret("secret");
    let script = "cat /data/secret >&2 || echo no-secret >&2\necho planted > /data/planted\necho '{}'\n";
    let addon = w.docker_addon("vollink", PURE, script, &format!("vollink-{}", std::process::id()));
    // The link reaches the image through a tar (the build context itself holds no link).
    let staging = w.path().join("link-staging");
    std::fs::create_dir(&staging).unwrap();
    std::os::unix::fs::symlink(&host, staging.join("data")).unwrap();
    let tar = std::process::Command::new("tar")
        .arg("-C")
        .arg(&staging)
        .arg("-cf")
        .arg(addon.join("link.tar"))
        .arg("data")
        .status()
        .unwrap();
    assert!(tar.success());
    edit(&addon.join("Dockerfile"), "COPY run.sh /run.sh", "ADD link.tar /\nVOLUME /data\nCOPY run.sh /run.sh");
    let (out, v) = w.run(&[addon.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("host secret"), "the addon read a host file through its VOLUME: {stderr}\n{v}");
    assert!(!host.join("planted").exists(), "the addon wrote a host directory through its VOLUME");
    assert_eq!(std::fs::read_dir(&host).unwrap().count(), 1);
}
