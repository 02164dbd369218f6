//! The daemonless `oci` runner against the docker runner: the same docker addons (the contract
//! script, output without a trailing newline, the Guile addon) give the same output and files;
//! the image is got and unpacked once (`miss`, then `hit`); it works as a user with no access to
//! any daemon; a pure addon's image never comes from the network; prune removes the root
//! filesystem.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const SCRIPT: &str = r#"
echo "args=$*" >&2
echo "cwd=$(pwd)" >&2
for v in ADDON_DIR OUTPUT_DIR CACHE_DIR TMPDIR HOME FROM_CONFIG SECRET_TOKEN; do eval "echo $v=\${$v-unset}" >&2; done
echo "input=$(cat arguments/user-input)" >&2
echo "ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\n' ' ')" >&2
mkdir -p "$OUTPUT_DIR/sub" && echo done > "$OUTPUT_DIR/out.txt" && printf 'no newline' > "$OUTPUT_DIR/sub/raw"
printf '%s' '{"newItems": [{"files": ["out.txt"]}]}'
"#;

/// A world whose runner is oci, with `extra` configuration (None: skipped, no OCI runtime).
fn oci_world(extra: &str) -> Option<World> {
    require_oci().then(|| World::new("auto", &format!("runner: [oci]\n{extra}")))
}

/// Runs `addon` through `runner` twice; returns both runs' output.
fn twice(runner: &str, addon: &Path, out: &str) -> [(std::process::Output, serde_json::Value); 2] {
    let w = World::new("auto", &format!("runner: [{runner}]\nenv:\n  same:\n    FROM_CONFIG: configured\n"));
    let out_dir = w.path().join(out);
    let run = || {
        w.run_env(
            &[addon.to_str().unwrap(), "--args", "Ada", "--output-dir", out_dir.to_str().unwrap()],
            &[("SECRET_TOKEN", "s3cret")],
        )
    };
    let first = run();
    let files = tree(&out_dir);
    let second = run();
    assert_eq!(files, tree(&out_dir), "{runner}: the second run wrote the same files");
    [first, second]
}

/// Every file under `dir` with its content.
fn tree(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for e in walkdir(dir) {
        if e.is_file() {
            let rel = e.strip_prefix(dir).unwrap().display().to_string();
            out.push((rel, std::fs::read_to_string(&e).unwrap_or_default()));
        }
    }
    out.sort();
    out
}

fn walkdir(p: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![p.to_path_buf()];
    if p.is_dir() {
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            out.extend(walkdir(&e.path()));
        }
    }
    out
}

/// What the addon said about its world, without what differs by run (temp paths).
fn seen(out: &std::process::Output) -> std::collections::BTreeMap<String, String> {
    stderr_map(out).into_iter().filter(|(k, _)| !k.starts_with("build") && !k.contains(' ')).collect()
}

#[test]
fn docker_addons_give_the_same_output_and_files_through_oci_as_through_docker() {
    if !require_docker() || !require_oci() {
        return;
    }
    let w = World::new("auto", "");
    let addon = w.docker_addon("same", PURE, SCRIPT, &format!("same-{}", std::process::id()));
    let [(d1, dv1), (_, dv2)] = twice("docker", &addon, "out-docker");
    let [(o1, ov1), (o2, ov2)] = twice("oci", &addon, "out-oci");
    for (v, what) in [(&dv1, "docker 1"), (&dv2, "docker 2"), (&ov1, "oci 1"), (&ov2, "oci 2")] {
        assert_eq!(v["addons"][0]["result"], "success", "{what}: {v}");
    }
    assert_eq!(ov1["addons"][0]["runner"], "oci");
    assert_eq!(ov1["addons"][0]["sandbox"], oci_runtime());
    assert_eq!((&ov1["addons"][0]["cache"], &ov2["addons"][0]["cache"]), (&"miss".into(), &"hit".into()));
    // The second run neither builds nor unpacks. (Its build phase is the cache lookup: its
    // milliseconds are a timing, not a sign of a build, so they are not asserted.)
    let second = String::from_utf8_lossy(&o2.stderr);
    assert!(!second.contains("build:") && !second.contains("unpacked"), "{second}");
    // Same collected output, same files, same world as the addon saw it.
    assert_eq!(dv1["addons"][0]["output"], ov1["addons"][0]["output"]);
    assert_eq!(dv1["output"], ov1["output"]);
    let w_docker = tree(Path::new(dv1["output_dir"].as_str().unwrap()));
    let w_oci = tree(Path::new(ov1["output_dir"].as_str().unwrap()));
    assert_eq!(w_docker, w_oci);
    let (sd, so) = (seen(&d1), seen(&o1));
    assert_eq!(sd, so, "docker and oci give the addon the same world");
    assert_eq!(so["ifaces"], "lo ", "a pure addon gets only lo");
    assert_eq!(so["SECRET_TOKEN"], "unset");
    assert_eq!(so["FROM_CONFIG"], "configured");
}

#[test]
fn the_guile_addon_gives_the_same_output_through_oci_as_through_docker() {
    if !require_docker() || !require_oci() {
        return;
    }
    let w = World::new("auto", "");
    let addon = w.guile_addon(true);
    let [(_, dv1), _] = twice("docker", &addon, "out-docker");
    let [(o1, ov1), (o2, ov2)] = twice("oci", &addon, "out-oci");
    assert_eq!(ov1["addons"][0]["result"], "success", "{ov1}\n{}", String::from_utf8_lossy(&o1.stderr));
    assert_eq!((&ov1["addons"][0]["cache"], &ov2["addons"][0]["cache"]), (&"miss".into(), &"hit".into()));
    assert_eq!(dv1["addons"][0]["output"], ov1["addons"][0]["output"]);
    assert_eq!(
        tree(Path::new(dv1["output_dir"].as_str().unwrap())),
        tree(Path::new(ov1["output_dir"].as_str().unwrap()))
    );
    // The image's HOME holds the code compiled while building: no run compiles.
    for out in [&o1, &o2] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("HOME=/root"), "{stderr}");
        let runs: Vec<&str> = stderr.lines().filter(|l| l.contains(";;; compiling") && !l.contains("build:")).collect();
        assert!(runs.is_empty(), "no compilation at run time: {runs:?}");
    }
}

/// The unprivileged user the rootless tests run the engine as (not in group docker).
const ROOTLESS: &str = "addon-rootless";

/// Whether the rootless tests can run: as root (to act as [`ROOTLESS`]), with the oci runner
/// available and the user present and outside group docker.
fn rootless_ready() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return missing(&format!("acting as {ROOTLESS} needs root"));
    }
    if !require_oci() {
        return false;
    }
    let groups = Command::new("id").args(["-nG", ROOTLESS]).output().unwrap();
    if !groups.status.success() {
        return missing(&format!("user {ROOTLESS} is missing; scripts/test-all creates it"));
    }
    assert!(
        !String::from_utf8_lossy(&groups.stdout).split_whitespace().any(|g| g == "docker"),
        "{ROOTLESS} is in group docker"
    );
    true
}

/// A world the rootless user owns, with its own copy of the `addon` binary, and a way to run an
/// addon of it as that user (without HOME or DOCKER_HOST): its output and JSON report.
fn rootless_world(config: &str) -> (World, impl Fn(&Path) -> (std::process::Output, serde_json::Value)) {
    let w = World::new("auto", config);
    let bin = w.path().join("addon");
    std::fs::copy(env!("CARGO_BIN_EXE_addon"), &bin).unwrap();
    let (dir, config) = (w.path().to_path_buf(), w.config.clone());
    let run = move |addon: &Path| {
        let out = Command::new("runuser")
            .args(["-u", ROOTLESS, "--", "env", "-u", "HOME", "-u", "DOCKER_HOST"])
            .arg(&bin)
            .args(["run", "--json", "--config"])
            .arg(&config)
            .arg(addon)
            .current_dir(&dir)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out, v)
    };
    (w, run)
}

/// Gives the world's files to the rootless user (after its addons are written).
fn give_to_rootless(w: &World) {
    assert!(Command::new("chown").args(["-R", ROOTLESS]).arg(w.path()).status().unwrap().success());
}

/// A user who may reach no daemon (not in group docker) builds, unpacks and runs docker addons.
#[test]
fn runs_as_a_user_with_no_daemon() {
    if !rootless_ready() {
        return;
    }
    let (w, run) = rootless_world("runner: [oci]\n");
    let addon = w.docker_addon("rootless", PURE, SCRIPT, &format!("rootless-{}", std::process::id()));
    give_to_rootless(&w);
    let (out, v) = run(&addon);
    let a = &v["addons"][0];
    assert_eq!(a["result"], "success", "{v}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!((&a["runner"], &a["cache"]), (&"oci".into(), &"miss".into()));
    assert_eq!(seen(&out)["ifaces"], "lo ");
    let (_, v) = run(&addon);
    assert_eq!(v["addons"][0]["cache"], "hit", "{v}");
    // It could not have asked a daemon: the socket is not its to open.
    let probe =
        Command::new("runuser").args(["-u", ROOTLESS, "--", "test", "-w", "/var/run/docker.sock"]).status().unwrap();
    assert!(!probe.success(), "{ROOTLESS} can write the docker socket");
}

/// Rootless there are no control groups: crun (unlike runc, whose Go init cannot run under it)
/// takes the memory limit as an address-space limit, and an addon that wants more fails.
#[test]
fn rootless_crun_limits_memory() {
    if !rootless_ready() {
        return;
    }
    if which::which("crun").is_err() {
        missing("crun is not installed (scripts/test-all installs it)");
        return;
    }
    let (w, run) = rootless_world("runner: [oci]\noci-runner: {runtime: crun}\nlimits: {memory: 64Mi}\n");
    let marker = format!("rootless-mem-{}", std::process::id());
    let small = w.docker_addon("small", PURE, "#!/bin/sh\necho '{}'\n", &marker);
    let hog = w.docker_addon(
        "hog",
        PURE,
        "#!/bin/sh\nx=$(head -c 200000000 /dev/zero | tr '\\0' a)\necho got ${#x}\n",
        &marker,
    );
    give_to_rootless(&w);
    let a = run(&small).1["addons"][0].clone();
    assert_eq!((&a["result"], &a["sandbox"]), (&"success".into(), &"crun".into()), "{a}");
    let a = run(&hog).1["addons"][0].clone();
    assert_ne!(a["result"], "success", "200 MB in 64 MiB: {a}");
    assert!(a["stderr_tail"].to_string().contains("out of memory"), "{a}");
}

/// A pure docker addon of `w` that runs `image` (no Dockerfile).
fn image_addon(w: &World, name: &str, image: &str) -> std::path::PathBuf {
    w.addon_dir(
        name,
        &format!("meta:\n  name: {name}\n  version: \"1.0\"\nrunner:\n  docker:\n    enable: true\n    image: {image}\n{PURE}"),
    )
}

/// Getting an `image:` is not running the addon: it may be pulled when no local store has it,
/// unless builds have no network (`network.build: none`) or `oci-runner.pull` says otherwise;
/// each refusal names its setting. (No test reaches a registry: only the refusals are run.)
#[test]
fn an_image_is_pulled_only_as_the_settings_allow_and_a_local_store_serves_it() {
    if !require_docker() || !require_oci() {
        return;
    }
    for (runner, settings, says) in [
        ("oci", "network: {build: none}\n", "network.build: none"),
        ("oci", "oci-runner: {pull: if-networking}\n", "oci-runner.pull: if-networking"),
        ("oci", "oci-runner: {pull: never}\n", "pulling is off"),
        ("docker", "network: {build: none}\n", "network.build: none"),
    ] {
        let w = World::new("auto", &format!("runner: [{runner}]\n{settings}"));
        let addon = image_addon(&w, "remote", "registry.invalid/nobody/none:1");
        let (_, a) = w.run_first(&[addon.to_str().unwrap()]);
        assert_eq!(a.result, "execution-failed", "{a}");
        let err = &a.error;
        assert!(err.contains(says) && err.contains("registry.invalid/nobody/none:1"), "{runner} {settings}: {err}");
    }
    // An image in the Docker daemon's store, read once at build time.
    let w2 = World::new("auto", "runner: [oci]\noci-runner: {image-store: docker}\n");
    let src =
        w2.docker_addon("stored", PURE, "echo from-store >&2\necho '{}'", &format!("stored-{}", std::process::id()));
    let tag = format!("addon-oci-test/stored:{}", std::process::id());
    docker_build(&tag, &src);
    let addon = image_addon(&w2, "stored", &tag);
    let (out, v) = w2.run(&[addon.to_str().unwrap()]);
    let _ = Command::new("docker").args(["rmi", "-f", &tag]).output();
    assert_eq!(v["addons"][0]["result"], "success", "{v}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("from-store"));
    let (_, v) = w2.run(&[addon.to_str().unwrap()]);
    assert_eq!(v["addons"][0]["cache"], "hit");
}

#[test]
fn prune_removes_the_root_filesystem() {
    let Some(w) = oci_world("") else { return };
    let addon = w.docker_addon("pruned", PURE, "echo '{}'", &format!("pruned-{}", std::process::id()));
    let (_, v) = w.run(&[addon.to_str().unwrap()]);
    assert_eq!(v["addons"][0]["result"], "success", "{v}");
    let rootfs: Vec<_> = walkdir(&w.path().join("cache")).into_iter().filter(|p| p.ends_with("image/rootfs")).collect();
    assert_eq!(rootfs.len(), 1, "one unpacked root filesystem in the cache");
    let out = w.cli(&["cache", "prune", "--max-size", "0"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!rootfs[0].exists(), "prune removed {}", rootfs[0].display());
}

/// The addon's Dockerfile is the addon's code: with `network.build: none` its build has no
/// network, and as root its RUN steps run in a user namespace of unprivileged host ids. RUN options (`--mount` binds
/// a path the builder resolves on the host) are refused with the line.
#[test]
fn builds_are_isolated_and_run_options_refused() {
    let Some(w) = oci_world("network: {build: none}\n") else { return };
    let addon =
        w.docker_addon("isobuild", PURE, "cat /build-seen >&2\necho '{}'", &format!("iso-{}", std::process::id()));
    edit(
        &addon.join("Dockerfile"),
        "COPY run.sh /run.sh",
        "RUN [\"/bin/sh\", \"-c\", \"echo build_ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\\\\n' ' ') > /build-seen; echo build_uidmap=$(cat /proc/self/uid_map | tr -s ' ') >> /build-seen\"]\nCOPY run.sh /run.sh",
    );
    let (out, v) = w.run(&[addon.to_str().unwrap()]);
    assert_eq!(v["addons"][0]["result"], "success", "{v}\n{}", String::from_utf8_lossy(&out.stderr));
    let seen = stderr_map(&out);
    assert_eq!(seen["build_ifaces"].trim(), "lo", "network.build: none: the build has no network");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let map = &seen["build_uidmap"];
        let host: u64 = map.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(host >= 2_147_265_536, "RUN steps run as unprivileged host ids: {map}");
    }
    // CVE-2024-1753: a bind of the host's root through a link in another stage.
    let evil = w.docker_addon("evilbuild", PURE, "echo '{}'", "evil");
    std::fs::write(
        evil.join("Dockerfile"),
        "FROM scratch AS evil\nCOPY busybox /bin/busybox\n\nFROM scratch\nCOPY busybox /bin/busybox\nRUN \\\n  --mount=type=bind,from=evil,source=/,target=/h,rw [\"/bin/busybox\", \"cat\", \"/h/etc/shadow\"]\n",
    )
    .unwrap();
    let (_, a) = w.run_first(&[evil.to_str().unwrap()]);
    assert_eq!(a.result, "execution-failed", "{a}");
    assert!(a.error.contains("line 6") && a.error.contains("RUN options are refused"), "{}", a.error);
}

/// The attack review's two ways to smuggle `RUN --mount` past the Dockerfile check (a blank line
/// inside a `\` continuation; a `# escape=` directive with a backtick continuation), with a bind
/// source naming a host directory: the build is refused before buildah runs, and nothing of the
/// host is read or written. (The review's `hostlink -> <host directory>` in the context is
/// refused on its own: see the next test.)
#[test]
fn run_options_smuggled_through_the_dockerfile_grammar_are_refused() {
    let Some(w) = oci_world("") else { return };
    let host = w.host_dir_with_secret("secret.txt");
    let steal = r#"["/bin/busybox", "sh", "-c", "cp /h/secret.txt /stolen; echo x > /h/planted"]"#;
    for (name, dockerfile) in [
        ("blank-line", format!("FROM scratch\nCOPY busybox /bin/busybox\nRUN \\\n\n  --mount=type=bind,source=hostlink,target=/h,rw {steal}\nCOPY run.sh /run.sh\nENTRYPOINT [\"/bin/busybox\", \"sh\", \"/run.sh\"]\n")),
        ("escape", format!("# escape=`\nFROM scratch\nCOPY busybox /bin/busybox\nRUN `\n  --mount=type=bind,source=hostlink,target=/h,rw {steal}\nCOPY run.sh /run.sh\nENTRYPOINT [\"/bin/busybox\", \"sh\", \"/run.sh\"]\n")),
    ] {
        let addon = w.docker_addon(name, PURE, "echo '{}'", &format!("{name}-{}", std::process::id()));
        std::fs::write(addon.join("Dockerfile"), dockerfile.replace("source=hostlink", &format!("source={}", host.display())))
            .unwrap();
        let (_, a) = w.run_first(&[addon.to_str().unwrap()]);
        assert_eq!(a.result, "execution-failed", "{name}: {a}");
        let err = &a.error;
        assert!(err.contains("RUN options are refused") && err.contains("--mount"), "{name}: {err}");
        assert!(!host.join("planted").exists(), "{name}: the build wrote on the host");
    }
}

/// A build context with a link that leads out of it is refused, whatever the Dockerfile says.
#[test]
fn a_build_context_with_a_link_out_of_it_is_refused() {
    let Some(w) = oci_world("") else { return };
    let addon = w.docker_addon("linked", PURE, "echo '{}'", &format!("linked-{}", std::process::id()));
    std::os::unix::fs::symlink("/etc", addon.join("hostlink")).unwrap();
    let (_, a) = w.run_first(&[addon.to_str().unwrap()]);
    assert_eq!(a.result, "execution-failed", "{a}");
    let err = &a.error;
    assert!(err.contains("build context") && err.contains("hostlink") && err.contains("outside"), "{err}");
}

/// An `image:` addon shaped like the published Python example: an interpreter that loads shared
/// libraries, in an image that runs as a non-root `USER` (uid 5678), writing its output without
/// a trailing newline and a file into its output directory. The engine runs with umask 077, as
/// job servers often do (systemd's `UMask=0077`): what it makes for the image (its root, mount
/// points) must still let uid 5678 in.
#[test]
fn an_image_that_runs_as_a_non_root_user_runs_on_oci_and_docker() {
    if !require_docker() || !require_oci() {
        return;
    }
    let w = World::new("auto", "runner: [oci]\noci-runner: {image-store: docker}\n");
    let ctx = w.path().join("example-image");
    host_rootfs(&ctx.join("rootfs"), &["/bin/dash", "/bin/mkdir"], &[]);
    std::fs::create_dir_all(ctx.join("rootfs/etc")).unwrap();
    let passwd = "root:x:0:0::/root:/bin/dash\nappuser:x:5678:5678::/home/appuser:/bin/dash\n";
    std::fs::write(ctx.join("rootfs/etc/passwd"), passwd).unwrap();
    std::fs::write(ctx.join("rootfs/etc/group"), "root:x:0:\nappuser:x:5678:\n").unwrap();
    // Its output, and a cache it keeps in CACHE_DIR across runs (a directory made in the first).
    std::fs::write(
        ctx.join("run.sh"),
        "printf 'from %s\\n' \"$0\" >&2\nprintf 'made by 5678' > \"$OUTPUT_DIR/note.txt\"\n\
         mkdir -p \"$CACHE_DIR/models\" && printf x >> \"$CACHE_DIR/models/runs\" || exit 3\n\
         printf '{\"files\":[]}'",
    )
    .unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM scratch\nCOPY rootfs/ /\nCOPY run.sh /app/run.sh\nLABEL test.marker=user-{}\nUSER appuser\nWORKDIR /app\nENTRYPOINT [\"/bin/dash\", \"/app/run.sh\"]\n",
            std::process::id()
        ),
    )
    .unwrap();
    let tag = format!("addon-oci-test/appuser:{}", std::process::id());
    docker_build(&tag, &ctx);
    let addon = image_addon(&w, "appuser", &tag);
    // The engine (not the image) under umask 077.
    // SAFETY: umask has no preconditions; this test's process is its own (nextest).
    unsafe { libc::umask(0o077) };
    for (runner, n) in [("oci", 1), ("oci", 2), ("docker", 1), ("docker", 2)] {
        let out_dir = w.path().join(format!("out-{runner}-{n}"));
        let (out, v) = w.run(&[addon.to_str().unwrap(), "--runner", runner, "--output-dir", out_dir.to_str().unwrap()]);
        let a = &v["addons"][0];
        assert_eq!(a["result"], "success", "{runner}: {v}\n{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(a["runner"], runner);
        let note = std::fs::read_to_string(out_dir.join("note.txt"));
        assert_eq!(
            note.ok().as_deref(),
            Some("made by 5678"),
            "{runner}: {v}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = Command::new("docker").args(["rmi", "-f", &tag]).output();
}

/// The attack review's ways to make the builder itself fetch or open what the build may not:
/// `ADD <URL>` (the builder fetches it on the host's own network, its loopback included, even
/// under `network.build: none`) and a `FROM` with a transport (`containers-storage:[...]` makes
/// buildah open a store at paths of the addon's choosing). Refused before any builder runs, on
/// docker and on oci: the loopback service sees no connection, no store is made.
#[test]
fn a_build_fetches_no_url_and_opens_no_store_of_the_host() {
    if !require_docker() || !require_oci() {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let contacted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = contacted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            seen.store(true, std::sync::atomic::Ordering::SeqCst);
            let mut s = stream;
            let _ = std::io::Write::write_all(&mut s, b"HTTP/1.0 200 OK\r\nContent-Length: 15\r\n\r\nSECRET-LOOPBACK");
        }
    });
    let store = tempfile::tempdir().unwrap();
    let (st, rr) = (store.path().join("st"), store.path().join("rr"));
    for runner in ["docker", "oci"] {
        for network in ["egress", "none"] {
            let w = World::new(
                "auto",
                &format!("runner: [{runner}]\nnetwork: {{build: {network}}}\nremember-failed-builds: 0s\n"),
            );
            let marker = format!("loot-{runner}-{network}-{}", std::process::id());
            let addon = w.docker_addon("loot", PURE, "echo '{}'", &marker);
            edit(
                &addon.join("Dockerfile"),
                "COPY run.sh /run.sh",
                &format!("ADD http://127.0.0.1:{port}/index.html /loot\nCOPY run.sh /run.sh"),
            );
            let (out, v) = w.run(&[addon.to_str().unwrap()]);
            let a = &v["addons"][0];
            assert_eq!(a["result"], "execution-failed", "{runner}/{network}: {a}");
            let err = a["error"].as_str().unwrap_or_default();
            assert!(err.contains("ADD from a URL is refused") && err.contains("line 6"), "{runner}/{network}: {err}");
            assert!(!String::from_utf8_lossy(&out.stderr).contains("SECRET-LOOPBACK") && !err.contains("SECRET"));
        }
        let w = World::new("auto", &format!("runner: [{runner}]\nremember-failed-builds: 0s\n"));
        let addon = w.docker_addon("store", PURE, "echo '{}'", &format!("store-{runner}-{}", std::process::id()));
        std::fs::write(
            addon.join("Dockerfile"),
            format!("FROM containers-storage:[overlay@{}+{}]foo\nCOPY run.sh /run.sh\n", st.display(), rr.display()),
        )
        .unwrap();
        let (_, v) = w.run(&[addon.to_str().unwrap()]);
        let err = v["addons"][0]["error"].as_str().unwrap_or_default().to_string();
        assert!(err.contains("line 1: image") && err.contains("only an image reference"), "{runner}: {err}");
        assert!(!st.exists() && !rr.exists(), "{runner}: a store was made at the addon's paths");
    }
    assert!(!contacted.load(std::sync::atomic::Ordering::SeqCst), "the builder fetched from the host's loopback");
}
