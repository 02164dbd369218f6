//! The shared conformance suite: the same runtime contract, network isolation and cleanup checks
//! against every runner in every sandbox it can use (trivial and nix-flake in bwrap, netns and
//! nspawn; docker). A new sandbox or runner gets all of them by adding one line at the bottom.

mod common;

use addon_executor::check::Bait;

use std::path::PathBuf;

use common::*;

/// Where an addon runs: a runner, and for host runners the sandbox.
#[derive(Debug, Clone, Copy)]
struct Target {
    runner: &'static str,
    sandbox: &'static str,
}

impl Target {
    /// The plugin program serving this target's runner, when it is a plugin.
    fn plugin(&self) -> Option<&'static str> {
        match self.runner {
            "docker-plugin" => Some("addon-runner-docker"),
            "gvisor" | "gvisor-nix" => Some("addon-runner-gvisor"),
            _ => None,
        }
    }

    /// The descriptor section the runner serves.
    fn section(&self) -> &'static str {
        match self.runner {
            "docker" | "docker-plugin" | "oci" => "docker",
            "nix-flake" | "gvisor-nix" => "nix",
            _ => "trivial",
        }
    }

    /// A container runner (the image brings its own root and HOME, and runs as its uid 0).
    fn container(&self) -> bool {
        self.section() == "docker"
    }

    /// What the runner declares it isolates (from `addon runners --json`): the kit allows what
    /// it declares and nothing else.
    fn declared(&self, w: &World) -> addon_runners::Capabilities {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_addon"))
            .args(["runners", "--json", "--config", w.config.to_str().unwrap()])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let r = v["runners"].as_array().unwrap().iter().find(|r| r["name"] == self.runner).cloned();
        serde_json::from_value(r.map(|r| r["capabilities"].clone()).unwrap_or_default())
            .unwrap_or_else(|e| panic!("{self:?}: capabilities: {e}"))
    }

    /// Whether the unprivileged engine user in group `docker` can run this target, and if not,
    /// what the refusal must say.
    fn as_kit_user(&self) -> Result<(), &'static [&'static str]> {
        match (self.runner, self.sandbox) {
            // Nix without its daemon builds as root only (the build users); asked first.
            ("nix-flake", _) | ("gvisor-nix", _) => Err(&["nix"]),
            // nspawn needs root (or sudo, which the kit user has not).
            (_, "nspawn") => Err(&["nspawn"]),
            // runsc needs root.
            ("gvisor", _) => Err(&["gvisor", "root"]),
            _ => Ok(()),
        }
    }

    /// Skips (or fails in CI) when the runtime is missing.
    fn available(&self) -> bool {
        match self.runner {
            "docker" => require_docker(),
            "oci" => require_oci(),
            "nix-flake" => require_nix() && require(self.sandbox),
            "docker-plugin" => require_docker() && require_plugin(&self.world(""), self.runner),
            "gvisor" => require_plugin(&self.world(""), self.runner),
            "gvisor-nix" => require_nix() && require_plugin(&self.world(""), self.runner),
            _ => require(self.sandbox),
        }
    }

    fn world(&self, extra: &str) -> World {
        let runner = match (self.runner, self.sandbox) {
            ("nix-flake", _) => nix_config(""),
            // The `oci` runner with one runtime named, rather than the one `auto` picks.
            ("oci", rt @ ("runc" | "crun")) => format!("runner: [oci]\noci-runner: {{runtime: {rt}}}\n"),
            (r, _) => format!("runner: [{r}]\n"),
        };
        let sandbox = if self.container() || self.plugin().is_some() { "auto" } else { self.sandbox };
        let w = World::new(sandbox, &format!("{runner}{extra}"));
        if let Some(program) = self.plugin() {
            // Nix builds offline, with the static busybox the test flakes build with.
            let config = match self.section() {
                "nix" => "    config: {nix: {extra-args: [--offline, --option, extra-sandbox-paths, /bin/busybox]}}\n",
                _ => "",
            };
            w.add_plugin(self.runner, program, self.section(), config);
        }
        w
    }

    /// The sandbox the result names (the OCI runtime the `oci` runner picked).
    fn sandbox_name(&self) -> String {
        if self.runner == "oci" && self.sandbox != "oci" {
            self.sandbox.into()
        } else if self.runner == "oci" {
            oci_runtime()
        } else if self.container() {
            "docker".into()
        } else {
            self.sandbox.into()
        }
    }

    /// Processes left by a run marked `marker` (a gVisor sandbox's processes are not host
    /// processes: there it is runsc's own, which name the world's bundle).
    fn leftovers(&self, w: &World, marker: &str) -> Vec<String> {
        let mut left = processes_with(marker);
        if self.runner.starts_with("gvisor") {
            left.extend(processes_with(&format!("{}/work", w.path().display())));
        }
        left
    }

    /// An addon for this runner running `script` (POSIX sh; busybox's inside docker), with
    /// `args: [--flag, second]`.
    fn addon(&self, w: &World, name: &str, options: &str, script: &str) -> PathBuf {
        let marker = format!("{name}-{}-{}", self.sandbox_name(), std::process::id());
        let root = match self.section() {
            "docker" => w.docker_addon(name, options, &format!("#!/bin/sh\n{script}\n"), &marker),
            "nix" => w.nix_addon(name, options, script, &marker),
            _ => return w.addon(name, options, script),
        };
        let yml = root.join("docspell-addon.yml");
        let text = std::fs::read_to_string(&yml).unwrap().replace("args: [--flag]", "args: [--flag, second]");
        std::fs::write(yml, text).unwrap();
        root
    }
}

/// What the contract script prints: one `key=value` per line on stderr, the output JSON on stdout.
const CONTRACT: &str = r#"
echo "args=$*" >&2
echo "input=$(cat "$3")" >&2
echo "cwd=$(pwd)" >&2
for v in ADDON_DIR TMPDIR TMP_DIR OUTPUT_DIR CACHE_DIR HOME ITEM_DIR ITEM_DATA_JSON ITEM_ARGS_JSON ITEM_PDF_DIR ITEM_ORIGINAL_DIR ITEM_ORIGINAL_JSON ITEM_PDF_JSON FROM_CLI FROM_CONFIG SECRET_TOKEN; do
  eval "echo $v=\${$v-unset}" >&2
done
[ -d "addons/$ADDON_ID" ] && [ "$ADDON_DIR" = "$(pwd)/addons/$ADDON_ID" ] && echo "layout=ok" >&2
[ -f arguments/user-input ] && [ -d temp ] && echo "layout2=ok" >&2
[ -f item/item-data.json ] && echo "item=ok" >&2
[ -f in/data.txt ] && echo "input_file=$(cat in/data.txt)" >&2
touch "$TMPDIR/x" && echo "tmp=writable" >&2
runs=$(cat "$CACHE_DIR/runs" 2>/dev/null || echo 0); runs=$((runs+1)); echo $runs > "$CACHE_DIR/runs"; echo "cache_runs=$runs" >&2
home=$(cat "$HOME/runs" 2>/dev/null || echo 0); home=$((home+1)); echo $home > "$HOME/runs" && echo "home_runs=$home" >&2
echo "result" > "$OUTPUT_DIR/result.txt"
printf '%s' '{"files": [{"itemId": "item-1", "textFiles": {"att-1": "result.txt"}}]}'
"#;

fn contract(t: Target) {
    if !t.available() {
        return;
    }
    let w = t.world("env:\n  contract:\n    FROM_CONFIG: configured\n");
    let addon = t.addon(&w, "contract", PURE, CONTRACT);
    let item = w.path().join("item");
    std::fs::create_dir_all(item.join("originals")).unwrap();
    std::fs::write(item.join("item-data.json"), "{}").unwrap();
    let data = w.path().join("data.txt");
    std::fs::write(&data, "payload").unwrap();
    let out_dir = w.path().join("out");
    let input_arg = format!("in/data.txt={}", data.display());
    let args = [
        addon.to_str().unwrap(),
        "--args",
        "user text",
        "--env",
        "FROM_CLI=cli",
        "--env",
        "ADDON_ID=contract-1.0",
        "--item",
        item.to_str().unwrap(),
        "--input",
        &input_arg,
        "--output-dir",
        out_dir.to_str().unwrap(),
    ];
    let (out, v) = w.run_env(&args, &[("SECRET_TOKEN", "hunter2")]);
    assert_eq!(out.status.code(), Some(0), "{t:?}: {v}\n{}", String::from_utf8_lossy(&out.stderr));
    let a = &v["addons"][0];
    assert_eq!(a["result"], "success");
    assert_eq!(a["runner"], t.runner);
    assert_eq!(a["sandbox"], t.sandbox_name());
    assert_eq!(a["cache"], if t.section() == "trivial" { "none" } else { "miss" });
    assert_eq!(a["pure"], true);
    let m = stderr_map(&out);
    assert_eq!(m["args"], "--flag second arguments/user-input", "{t:?}");
    assert_eq!(m["input"], "user text");
    assert_eq!(m["cwd"], "/mnt/work", "{t:?}: the run's directories sit at /mnt in every sandbox");
    assert_eq!(m["ADDON_DIR"], "/mnt/work/addons/contract-1.0");
    assert_eq!(m["OUTPUT_DIR"], "/mnt/output");
    assert_eq!(m["CACHE_DIR"], "/mnt/cache");
    assert_eq!(m["TMPDIR"], "/mnt/work/temp");
    assert_eq!(m["TMP_DIR"], m["TMPDIR"]);
    assert_eq!(m["FROM_CLI"], "cli");
    assert_eq!(m["FROM_CONFIG"], "configured");
    assert_eq!(m["SECRET_TOKEN"], "unset", "the engine's environment must not leak");
    assert_eq!(m["ITEM_DIR"], "item");
    assert_eq!(m["ITEM_DATA_JSON"], "item/item-data.json");
    assert_eq!(m["ITEM_ARGS_JSON"], "item/given-data.json");
    assert_eq!(m["ITEM_PDF_DIR"], "item/pdfs");
    assert_eq!(m["ITEM_ORIGINAL_DIR"], "item/originals");
    assert_eq!(m["ITEM_ORIGINAL_JSON"], "item/source-files.json");
    assert_eq!(m["ITEM_PDF_JSON"], "item/pdf-files.json");
    for k in ["layout", "layout2", "item"] {
        assert_eq!(m.get(k).map(String::as_str), Some("ok"), "{t:?} {k}: {m:?}");
    }
    assert_eq!(m["input_file"], "payload");
    assert_eq!(m["tmp"], "writable");
    assert_eq!(m["cache_runs"], "1");
    assert_eq!(m["home_runs"], "1", "HOME is writable");
    if t.container() {
        assert_ne!(m["HOME"], "/mnt/home", "a container keeps its image's HOME");
    } else {
        assert_eq!(m["HOME"], "/mnt/home");
    }
    assert_eq!(std::fs::read_to_string(out_dir.join("result.txt")).unwrap(), "result\n");
    assert_eq!(v["output"]["files"][0]["textFiles"]["att-1"], "result.txt");
    assert_eq!(v["output_dir"], out_dir.canonicalize().unwrap().to_str().unwrap());
    // CACHE_DIR persists between runs of the same addon, and so does a host runner's HOME; run
    // directories do not. The second run builds nothing.
    let (out, v) = w.run(&[addon.to_str().unwrap(), "--env", "ADDON_ID=contract-1.0"]);
    assert_eq!(v["addons"][0]["cache"], if t.section() == "trivial" { "none" } else { "hit" });
    let m = stderr_map(&out);
    assert_eq!(m["cache_runs"], "2");
    assert_eq!(m["home_runs"], if t.container() { "1" } else { "2" }, "{t:?}");
    let leftovers: Vec<_> = std::fs::read_dir(w.path().join("work"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("run-"))
        .collect();
    assert!(leftovers.is_empty(), "run directories must be removed: {leftovers:?}");
}

/// Prints the network interfaces the addon sees, then tries the host's loopback listener.
const NET: &str = r#"
ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\n' ' ')
echo "ifaces=$ifaces" >&2
if echo hi | /bin/busybox nc -w 2 127.0.0.1 "$PORT" >/dev/null 2>&1; then echo "reached=yes" >&2; else echo "reached=no" >&2; fi
echo '{}'
"#;

fn network(t: Target) {
    if !t.available() {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            drop(s);
        }
    });
    let w = t.world("");
    let pure = t.addon(&w, "pure", PURE, NET);
    let impure = t.addon(&w, "impure", IMPURE, NET);
    let port_env = format!("PORT={port}");
    let (out, v) = w.run(&[pure.to_str().unwrap(), "--env", &port_env]);
    assert_eq!(v["addons"][0]["result"], "success", "{v}");
    let m = stderr_map(&out);
    assert_eq!(m["ifaces"].trim(), "lo", "{t:?}: a pure addon sees only loopback: {m:?}");
    assert_eq!(m["reached"], "no", "{t:?}: a pure addon must not reach the host's 127.0.0.1");
    let (out, v) = w.run(&[impure.to_str().unwrap(), "--env", &port_env]);
    assert_eq!(v["addons"][0]["result"], "success", "{v}");
    assert_eq!(v["addons"][0]["pure"], false);
    let m = stderr_map(&out);
    assert_eq!(m["reached"], "yes", "{t:?}: an impure addon reaches the host: {m:?}");
}

/// A number for `sleep` that is unique per test, process and target (tests run in parallel and
/// look for their own leftovers by command line).
fn marker(base: u32, t: Target) -> String {
    let salt: u32 = t.runner.bytes().chain(t.sandbox.bytes()).map(u32::from).sum();
    format!("{}{salt}", base + std::process::id() % 1000)
}

fn timeout_kills_everything(t: Target) {
    if !t.available() {
        return;
    }
    let w = t.world("");
    let marker = marker(31_000, t);
    let script = format!("trap '' TERM\n( setsid sh -c \"trap '' TERM; exec sleep {marker}\" & )\nsleep {marker}\n");
    let addon = t.addon(&w, "stubborn", PURE, &script);
    let (out, v) = w.run(&[addon.to_str().unwrap(), "--timeout", "3s"]);
    assert_eq!(out.status.code(), Some(1));
    let a = &v["addons"][0];
    assert_eq!(a["result"], "timeout", "{v}");
    assert!(a["error"].as_str().unwrap().contains("3s"), "{a}");
    let left = t.leftovers(&w, &format!("sleep {marker}"));
    assert!(left.is_empty(), "{t:?}: processes outlived the run: {left:?}");
}

fn exit_leftovers_are_killed(t: Target) {
    if !t.available() {
        return;
    }
    let w = t.world("");
    let marker = marker(32_000, t);
    let script = format!("( setsid sleep {marker} & )\necho '{{}}'\n");
    let addon = t.addon(&w, "leaver", PURE, &script);
    let (_, v) = w.run(&[addon.to_str().unwrap()]);
    assert_eq!(v["addons"][0]["result"], "success", "{v}");
    let left = t.leftovers(&w, &format!("sleep {marker}"));
    assert!(left.is_empty(), "{t:?}: a background process outlived its addon: {left:?}");
}

fn engine_killed_takes_the_sandbox_along(t: Target) {
    if !t.available() {
        return;
    }
    let w = t.world("");
    let marker = marker(34_000, t);
    let script = format!("( setsid sleep {marker} & )\necho started >&2\nexec sleep {marker}\n");
    let addon = t.addon(&w, "orphan", PURE, &script);
    // Wait until the addon runs, then kill the engine without warning.
    let mut child = w.spawn_until(&addon, "started");
    // "started" comes just before `exec sleep`: wait until the sleeps have been exec'd.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while t.leftovers(&w, &format!("sleep {marker}")).len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(!t.leftovers(&w, &format!("sleep {marker}")).is_empty(), "the addon should be running");
    child.kill().unwrap();
    child.wait().unwrap();
    if t.container() && t.runner != "oci" {
        // A daemon keeps the container of a killed engine: the next engine to start (here
        // `addon runners`, which talks to every runtime) removes it before anything else.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_addon"))
            .args(["runners", "--config", w.config.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !t.leftovers(&w, &format!("sleep {marker}")).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let left = t.leftovers(&w, &format!("sleep {marker}"));
    assert!(left.is_empty(), "{t:?}: the sandbox outlived the killed engine: {left:?}");
}

/// A failing addon's error names its own exit code and stderr, never the sandbox tool's chatter
/// (nspawn prints "Attempted to remove disk file system under ..." on every run here).
fn failure_names_the_real_cause(t: Target) {
    if !t.available() {
        return;
    }
    let w = t.world("");
    let addon = t.addon(&w, "missing", PURE, "echo 'preparing the rotation' >&2\nexec no-such-program-xyz --rotate");
    let (_, v) = w.run(&[addon.to_str().unwrap()]);
    let a = &v["addons"][0];
    assert_eq!(a["result"], "execution-error", "{a}");
    assert_eq!(a["exit_code"], 127);
    let err = a["error"].as_str().unwrap();
    assert!(err.contains("exited with code 127") && err.contains("no-such-program-xyz"), "{err}");
    assert!(err.contains("preparing the rotation"), "more than the last line: {err}");
    let tail = a["stderr_tail"].to_string();
    assert!(!err.contains("Attempted to remove") && !tail.contains("Attempted to remove"), "{a}");
}

// ---------------------------------------------------------------------------------------------
// The hostile-addon kit: a probe (src/check/probe.c, static) that tries to get out.
// ---------------------------------------------------------------------------------------------

/// The probe, compiled once per test process.
fn probe_binary() -> PathBuf {
    static PROBE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PROBE
        .get_or_init(|| {
            let dir = std::env::temp_dir().join(format!("addon-kit-probe-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let out = dir.join("probe");
            let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/check/probe.c");
            let cc = std::process::Command::new("gcc")
                .args(["-static", "-O2", "-o"])
                .arg(&out)
                .arg(&src)
                .output()
                .expect("gcc (apt-get install gcc libc6-dev)");
            assert!(cc.status.success(), "compiling the probe: {}", String::from_utf8_lossy(&cc.stderr));
            out
        })
        .clone()
}

impl Target {
    /// An addon whose program is the static probe.
    fn probe_addon(&self, w: &World, name: &str, options: &str) -> PathBuf {
        let root = self.addon(w, name, options, "exit 99");
        std::fs::copy(probe_binary(), root.join("run.sh")).unwrap();
        if self.container() {
            std::fs::write(
                root.join("Dockerfile"),
                format!(
                    // A VOLUME, as images often declare: it must be bounded and gone with the run.
                    "FROM scratch\nLABEL test.marker={name}-{}\nCOPY run.sh /probe\nVOLUME /data\nENTRYPOINT [\"/probe\"]\n",
                    std::process::id()
                ),
            )
            .unwrap();
        }
        root
    }
}

/// The kit's host-side bait (shared with `addon runners check`), with the engine's config
/// among the files the addon must not read, as `--env` arguments.
fn bait_args(bait: &Bait, w: &World) -> Vec<String> {
    bait.env(Some(&w.config)).into_iter().flat_map(|(k, v)| ["--env".to_string(), format!("{k}={v}")]).collect()
}

/// What the probe found, judged for the target: every check must find nothing. A container
/// without a user namespace is uid 0 of the host by design; there it must hold no more than the
/// runner's minimal capabilities, with no_new_privs, and Docker's default seccomp profile lets a
/// process trace its own children inside the container (`addon runners check` judges alike).
fn judge_probe(t: Target, w: &World, stderr: &str) -> Vec<String> {
    let lines: Vec<String> =
        stderr.lines().filter_map(|l| l.split_once("kit ").map(|(_, r)| format!("kit {r}"))).collect();
    addon_executor::check::judge(&lines, &t.declared(w))
}

fn hostile_kit_finds_nothing(t: Target) {
    if !t.available() {
        return;
    }
    let w = t.world("");
    let bait = Bait::new(w.path(), marker(36_000, t)).unwrap();
    let addon = t.probe_addon(&w, "hostile", PURE);
    let mut args = vec![addon.display().to_string(), "--args".into(), "probe".into()];
    args.extend(bait_args(&bait, &w));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // The engine is started with a descriptor it did not open (as a job server or a wrapper
    // leaves them): a root-only file, open for writing.
    let leaked = std::fs::OpenOptions::new().append(true).open(&bait.secret_file).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&leaked);
    // SAFETY: clearing close-on-exec on a descriptor this test owns, so the engine inherits it.
    unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
    let (out, v) = w.run_env(&args, &[("SECRET_TOKEN", &bait.secret_value)]);
    drop(leaked);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(v["addons"][0]["result"], "success", "{t:?}: {v}\n{stderr}");
    let found = judge_probe(t, &w, &stderr);
    assert!(found.is_empty(), "{t:?}: the hostile addon got out: {found:#?}");
    let escaped = bait.escaped_writes();
    assert!(escaped.is_empty(), "{t:?}: writes landed outside the addon's directories: {escaped:?}");
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(!bait.udp_got(), "{t:?}: a pure addon reached the host over UDP");
}

fn fork_bomb_ends_as_limit(t: Target) {
    if !t.available() {
        return;
    }
    let w = t.world("");
    let addon = t.probe_addon(&w, "forkbomb", PURE);
    let (_, v) = w.run(&[addon.to_str().unwrap(), "--args", "forkbomb", "--pids", "64", "--timeout", "60s"]);
    let a = &v["addons"][0];
    assert_eq!(a["termination"], "limit", "{t:?}: {a}");
    assert_eq!(a["result"], "execution-error");
    assert!(a["error"].as_str().unwrap().contains("process limit"), "{a}");
    let host = std::process::Command::new("/bin/true").status().unwrap();
    assert!(host.success(), "the host can still start processes");
}

fn memory_hog_ends_as_oom(t: Target) {
    if !t.available() {
        return;
    }
    let w = t.world("");
    let addon = t.probe_addon(&w, "memhog", PURE);
    let (_, v) = w.run(&[addon.to_str().unwrap(), "--args", "memhog", "--memory", "64MiB"]);
    let a = &v["addons"][0];
    assert_eq!(a["termination"], "oom", "{t:?}: {a}");
    assert_eq!(a["result"], "execution-error");
    assert!(a["error"].as_str().unwrap().contains("OOM"), "{a}");
    assert_eq!(a["limits"]["memory"], 64 << 20);
}

/// Setuid and setgid files an addon leaves in its output, CACHE_DIR or HOME lose those bits (a
/// container's root, or nspawn's id-mapped root, makes them owned by the host's root).
fn leaves_no_setuid_files(t: Target) {
    if !t.available() {
        return;
    }
    let w = t.world("");
    let addon = t.probe_addon(&w, "setuider", PURE);
    let out_dir = w.path().join("out");
    let (out, v) = w.run(&[addon.to_str().unwrap(), "--args", "setuid", "--output-dir", out_dir.to_str().unwrap()]);
    assert_eq!(v["addons"][0]["result"], "success", "{t:?}: {v}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("made"), "the probe made setuid copies");
    let mut setuid = unsafe_entries(&out_dir, false, None);
    setuid.extend(unsafe_entries(&w.path().join("cache"), true, None));
    assert!(setuid.is_empty(), "{t:?}: setuid files left on the host: {setuid:?}");
}

fn double_fork_does_not_outlive_the_run(t: Target) {
    if !t.available() {
        return;
    }
    let w = t.world("");
    let marker = marker(37_000, t);
    let addon = t.probe_addon(&w, "doublefork", PURE);
    let (_, v) = w.run(&[addon.to_str().unwrap(), "--args", "doublefork", "--env", &format!("MARKER={marker}")]);
    assert_eq!(v["addons"][0]["result"], "success", "{t:?}: {v}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !t.leftovers(&w, &format!("sleep {marker}")).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let left = t.leftovers(&w, &format!("sleep {marker}"));
    assert!(left.is_empty(), "{t:?}: a double-forked grandchild outlived the run: {left:?}");
}

/// The unprivileged engine user of the kit: in the `docker` group, as Docspell tells
/// administrators to set up its job server (scripts/test-all creates it).
const KIT_USER: &str = "addon-kit";

fn kit_user() -> Option<(u32, u32)> {
    let out = std::process::Command::new("id").args(["-u", KIT_USER]).output().ok()?;
    let uid = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    let out = std::process::Command::new("id").args(["-g", KIT_USER]).output().ok()?;
    let gid = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    let groups = std::process::Command::new("id").args(["-nG", KIT_USER]).output().ok()?;
    String::from_utf8_lossy(&groups.stdout).split_whitespace().any(|g| g == "docker").then_some((uid, gid))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Who runs the engine in a kit test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    /// The test's own user (root in CI).
    Root,
    /// [`KIT_USER`], unprivileged, in group `docker`.
    KitUser,
}

/// The engine of a world, run as someone. As the kit user the engine's binary is a copy in the
/// world, and the world belongs to that user, as a job server's directories would.
struct Runs<'a> {
    w: &'a World,
    who: Who,
    bin: PathBuf,
    owner: Option<(u32, u32)>,
}

impl<'a> Runs<'a> {
    /// None when this engine cannot be had here (a failure under ADDON_TEST_REQUIRE_RUNTIMES).
    fn new(w: &'a World, who: Who) -> Option<Runs<'a>> {
        match who {
            Who::Root => Some(Runs { w, who, bin: PathBuf::from(env!("CARGO_BIN_EXE_addon")), owner: None }),
            Who::KitUser => {
                if !is_root() {
                    missing(&format!("acting as {KIT_USER} needs root"));
                    return None;
                }
                let Some(owner) = kit_user() else {
                    missing(&format!("user {KIT_USER} (in group docker) is missing; scripts/test-all creates it"));
                    return None;
                };
                let bin = w.path().join("addon");
                std::fs::copy(env!("CARGO_BIN_EXE_addon"), &bin).unwrap();
                let r = Runs { w, who, bin, owner: Some(owner) };
                r.own();
                Some(r)
            }
        }
    }

    /// Gives the world to the engine's user again (after the test added files).
    fn own(&self) {
        if let Some((uid, gid)) = self.owner {
            let ok = std::process::Command::new("chown")
                .arg("-R")
                .arg(format!("{uid}:{gid}"))
                .arg(self.w.path())
                .status()
                .unwrap();
            assert!(ok.success());
        }
    }

    /// The engine's user (uid, gid).
    fn user(&self) -> (u32, u32) {
        self.owner.unwrap_or((0, 0))
    }

    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Command {
        let mut cmd = match self.who {
            Who::Root => std::process::Command::new(&self.bin),
            Who::KitUser => {
                let mut c = std::process::Command::new("runuser");
                c.args(["-u", KIT_USER, "--"]).arg(&self.bin);
                c
            }
        };
        cmd.args(["run", "--json", "--config"]).arg(&self.w.config).args(args).current_dir(self.w.path());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> (std::process::Output, serde_json::Value) {
        let out = self.command(args, env).output().unwrap();
        let v = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{:?}: no JSON ({e}): {}", self.who, String::from_utf8_lossy(&out.stderr)));
        (out, v)
    }
}

/// Runs for `t` as `who`, or None when `t` is not for that user (then the engine must refuse
/// it, saying why: checked here) or cannot be had here.
fn runs_for<'a>(t: Target, w: &'a World, who: Who, addon: &std::path::Path) -> Option<Runs<'a>> {
    let runs = Runs::new(w, who)?;
    if who == Who::KitUser {
        if let Err(words) = t.as_kit_user() {
            let (_, v) = runs.run(&[addon.to_str().unwrap()], &[]);
            let a = &v["addons"][0];
            assert_eq!(a["result"], "execution-failed", "{t:?} as {KIT_USER} must be refused: {a}");
            let err = a["error"].as_str().unwrap_or_default().to_lowercase();
            assert!(
                words.iter().all(|w| err.contains(w)),
                "{t:?} as {KIT_USER}: the refusal must say why ({words:?}): {err}"
            );
            return None;
        }
    }
    Some(runs)
}

/// The kit with the engine as an unprivileged user in the `docker` group: the daemon's socket is
/// reachable by the engine, and must not be by the addon. A target that needs root it does not
/// have (nspawn without sudo, nix without its daemon, gVisor) must refuse and say why; the
/// others must run the probe and be judged like a root engine's.
fn hostile_kit_as_docker_group_user(t: Target) {
    if !t.available() {
        return;
    }
    let w = t.world("");
    let addon = t.probe_addon(&w, "hostile-user", PURE);
    let bait = Bait::new(w.path(), marker(36_000, t)).unwrap();
    let Some(runs) = runs_for(t, &w, Who::KitUser, &addon) else { return };
    runs.own();
    let mut args = vec![addon.display().to_string(), "--args".into(), "probe".into()];
    args.extend(bait_args(&bait, &w));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (out, v) = runs.run(&args, &[("SECRET_TOKEN", &bait.secret_value)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(v["addons"][0]["result"], "success", "{t:?} as {KIT_USER}: {v}\n{stderr}");
    let found = judge_probe(t, &w, &stderr);
    assert!(found.is_empty(), "{t:?} as {KIT_USER}: the hostile addon got out: {found:#?}");
    assert!(bait.escaped_writes().is_empty(), "{t:?} as {KIT_USER}: writes landed outside");
}

/// What must not be left on the host below `root` (see `check::unsafe_entries`).
fn unsafe_entries(root: &std::path::Path, links_allowed: bool, owner: Option<u32>) -> Vec<String> {
    addon_executor::check::unsafe_entries(root, links_allowed, owner).unwrap_or_else(|e| panic!("{e}"))
}

/// Findings 1 to 3 of the attack review. A run nests directories past PATH_MAX in its output,
/// CACHE_DIR and HOME with a setuid copy, a link to /etc/shadow and a fifo at the bottom: none
/// of that survives (and as the unprivileged engine, everything is its user's). Then a second run
/// of the same addon swaps a directory of the shared CACHE_DIR for a link to a host directory,
/// again and again, while this engine runs the addon three times more: the host directory's
/// files keep their owner and their setuid bits.
fn engine_walks_hold(t: Target, who: Who) {
    if !t.available() {
        return;
    }
    let w = t.world("");
    let addon = t.probe_addon(&w, "walker", PURE);
    let bait_dir = w.path().join("host-dir");
    std::fs::create_dir(&bait_dir).unwrap();
    let Some(runs) = runs_for(t, &w, who, &addon) else { return };
    let (uid, gid) = runs.user();
    let baits: Vec<PathBuf> = (0..20).map(|i| bait_dir.join(format!("setuid-{i}"))).collect();
    for b in &baits {
        std::fs::write(b, "#!/bin/sh\n").unwrap();
    }
    // The engine's user's own setuid files (a chown takes the bit: it is set after).
    runs.own();
    for b in &baits {
        std::os::unix::fs::chown(b, Some(uid), Some(gid)).unwrap();
        std::fs::set_permissions(b, std::os::unix::fs::PermissionsExt::from_mode(0o4755)).unwrap();
    }
    let out_dir = w.path().join("out");
    let (out, v) =
        runs.run(&[addon.to_str().unwrap(), "--args", "deepnest", "--output-dir", out_dir.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("OUTPUT_DIR: 1500 levels; setuid copy made"), "{t:?} {who:?}: the probe nested: {stderr}");
    let a = &v["addons"][0];
    assert!(a["result"] == "success" || a["result"] == "execution-failed", "{t:?} {who:?}: {a}");
    let owner = (who == Who::KitUser).then_some(uid);
    let mut bad = unsafe_entries(&out_dir, false, owner);
    bad.extend(unsafe_entries(&w.path().join("cache"), true, owner));
    bad.extend(unsafe_entries(&w.path().join("work"), true, owner));
    assert!(bad.is_empty(), "{t:?} {who:?}: left on the host: {bad:#?}");

    // The race: run B swaps, run A (three times) walks.
    let target = bait_dir.display().to_string();
    let mut b = runs
        .command(
            &[
                addon.to_str().unwrap(),
                "--args",
                "swaprace",
                "--env",
                &format!("RACE_TARGET={target}"),
                "--env",
                "RACE_SECONDS=6",
                "--timeout",
                "60s",
            ],
            &[],
        )
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = b.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).map_while(Result::ok) {
            if line.contains("kit-swaprace started") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let started = rx.recv_timeout(std::time::Duration::from_secs(120)).is_ok();
    for _ in 0..3 {
        if !started {
            break;
        }
        let (_, v) = runs.run(&[addon.to_str().unwrap(), "--args", "setuid"], &[]);
        assert!(v["addons"][0]["result"].is_string(), "{v}");
    }
    b.wait().unwrap();
    let b_said = reader.join().unwrap();
    assert!(started, "{t:?} {who:?}: run B never started swapping: {b_said}");
    assert!(b_said.contains("kit-swaprace swaps="), "{t:?} {who:?}: {b_said}");
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    for bait in &baits {
        let m = std::fs::metadata(bait).unwrap();
        assert_eq!(
            (m.uid(), m.permissions().mode() & 0o7777),
            (uid, 0o4755),
            "{t:?} {who:?}: {} was changed through the swapped link",
            bait.display()
        );
    }
    let mut bad = unsafe_entries(&w.path().join("cache"), true, owner);
    bad.retain(|b| !b.contains("race/"));
    assert!(bad.is_empty(), "{t:?} {who:?}: left on the host: {bad:#?}");
}

/// An honest addon that makes private directories (`mktemp -d`, mode 0700, as whoever the image
/// runs as, root in a container) in TMPDIR and CACHE_DIR is measured and succeeds, whoever runs
/// the engine: an unprivileged engine cannot read them itself.
fn private_directories_are_measured(t: Target, who: Who) {
    if !t.available() {
        return;
    }
    let w = t.world("limits: {output-size: 64MiB}\n");
    let script = "d=$(mktemp -d) && echo x > \"$d/f\" && mkdir -p \"$CACHE_DIR/p\" && chmod 700 \"$CACHE_DIR/p\" && echo y > \"$CACHE_DIR/p/f\" && echo '{}'";
    let addon = t.addon(&w, "private", PURE, script);
    let Some(runs) = runs_for(t, &w, who, &addon) else { return };
    runs.own();
    for _ in 0..2 {
        let (out, v) = runs.run(&[addon.to_str().unwrap()], &[]);
        assert_eq!(v["addons"][0]["result"], "success", "{t:?} {who:?}: {v}\n{}", String::from_utf8_lossy(&out.stderr));
    }
}

/// The last progress the probe reported (`<what>=N` MiB) in a run's stderr.
fn reported_mib(stderr: &str, what: &str) -> Option<i64> {
    stderr.lines().rev().find_map(|l| l.split_once(what).and_then(|(_, r)| r.trim().split(' ').next()?.parse().ok()))
}

/// Findings 6, 7 and 9, and the disk fill: what an addon writes is bounded near its limits
/// wherever it writes (its directories, files it holds open after unlinking them, a tmpfs, a
/// container's own file system), and inodes are bounded as well as bytes.
fn fills_are_bounded(t: Target, who: Who) {
    if !t.available() {
        return;
    }
    const LIMIT_MIB: i64 = 64;
    // What may pass the limit before the engine sees it and stops the addon: it writes a few GB
    // a second into the page cache, and limits are checked every 50 ms.
    const SLACK_MIB: i64 = 512;
    let w = t.world(&format!("limits: {{output-size: {LIMIT_MIB}MiB, output-entries: 20000, memory: 512MiB}}\n"));
    let addon = t.probe_addon(&w, "filler", PURE);
    let Some(runs) = runs_for(t, &w, who, &addon) else { return };
    let run = |mode: &str| {
        let out_dir = w.path().join(format!("out-{mode}"));
        let (out, v) = runs.run(
            &[
                addon.to_str().unwrap(),
                "--args",
                mode,
                "--output-dir",
                out_dir.to_str().unwrap(),
                "--timeout",
                "120s",
                "--env",
                &format!("TMPFS_BOUND_MIB={LIMIT_MIB}"),
            ],
            &[],
        );
        (String::from_utf8_lossy(&out.stderr).into_owned(), v)
    };
    for mode in ["diskfill", "unlinkfill"] {
        let (stderr, v) = run(mode);
        let a = &v["addons"][0];
        assert_eq!(a["termination"], "limit", "{t:?} {who:?} {mode}: {a}");
        let wrote =
            reported_mib(&stderr, "kit-written=").unwrap_or_else(|| panic!("{t:?} {mode}: no progress: {stderr}"));
        assert!(
            wrote <= LIMIT_MIB + SLACK_MIB,
            "{t:?} {who:?} {mode}: {wrote} MiB written under a {LIMIT_MIB} MiB limit"
        );
        eprintln!("{t:?} {who:?}: {mode} stopped at {wrote} MiB (limit {LIMIT_MIB} MiB)");
    }
    // Empty files: no bytes, but inodes.
    let (stderr, v) = run("inodeflood");
    let a = &v["addons"][0];
    assert_eq!(a["termination"], "limit", "{t:?} {who:?} inodeflood: {a}");
    assert!(a["error"].as_str().unwrap_or_default().contains("output-entries"), "{a}");
    let made = reported_mib(&stderr, "kit-inodeflood made=").unwrap_or(0);
    assert!(made <= 20_000 + 200_000, "{t:?} {who:?}: {made} entries made under a limit of 20000");
    eprintln!("{t:?} {who:?}: inodeflood stopped after {made}+ entries (limit 20000)");
    // Private tmpfs mounts (/tmp, /var/tmp, /dev/shm): each bounded, or the run stopped.
    let (stderr, v) = run("tmpfill");
    let a = &v["addons"][0];
    let lines: Vec<String> =
        stderr.lines().filter_map(|l| l.split_once("kit ").map(|(_, r)| format!("kit {r}"))).collect();
    let over: Vec<&String> = lines.iter().filter(|l| l.starts_with("kit tmpfs-") && l.contains("found=yes")).collect();
    assert!(over.is_empty(), "{t:?} {who:?}: a tmpfs took more than the limit: {over:?}");
    let all_reported = ["tmpfs-shm", "tmpfs-tmp", "tmpfs-var-tmp"]
        .iter()
        .all(|c| lines.iter().any(|l| l.starts_with(&format!("kit {c} "))));
    assert!(
        all_reported || a["termination"] == "limit",
        "{t:?} {who:?}: tmpfill neither bounded nor stopped: {a}\n{stderr}"
    );
    // The container's own file system (its writable layer, an image VOLUME).
    let (stderr, v) = run("rootfill");
    let a = &v["addons"][0];
    let wrote = reported_mib(&stderr, "kit-fill /kit-fill=").unwrap_or(0);
    assert!(wrote <= LIMIT_MIB + SLACK_MIB, "{t:?} {who:?}: {wrote} MiB into its root: {a}");
    if t.container() {
        // Stopped at the limit, or held to it by the file system (oci's overlay is a tmpfs of
        // the output size).
        assert!(a["termination"] == "limit" || wrote <= LIMIT_MIB + 8, "{t:?} {who:?} rootfill: {a}");
    }
    let volume = reported_mib(&stderr, "kit-fill /data/kit-fill=").unwrap_or(0);
    assert!(volume <= LIMIT_MIB + SLACK_MIB, "{t:?} {who:?}: {volume} MiB into a VOLUME");
}

macro_rules! conformance {
    ($($name:ident => $runner:literal in $sandbox:literal),* $(,)?) => {$(
        mod $name {
            use super::*;
            const T: Target = Target { runner: $runner, sandbox: $sandbox };
            #[test]
            fn runtime_contract() { contract(T); }
            #[test]
            fn network_isolation() { network(T); }
            #[test]
            fn timeout_kills_the_whole_tree() { timeout_kills_everything(T); }
            #[test]
            fn leftovers_die_with_the_addon() { exit_leftovers_are_killed(T); }
            #[test]
            fn killed_engine_kills_the_sandbox() { engine_killed_takes_the_sandbox_along(T); }
            #[test]
            fn failure_names_the_real_cause() { super::failure_names_the_real_cause(T); }
            #[test]
            fn hostile_kit_finds_nothing() { super::hostile_kit_finds_nothing(T); }
            #[test]
            fn fork_bomb_ends_as_limit() { super::fork_bomb_ends_as_limit(T); }
            #[test]
            fn memory_hog_ends_as_oom() { super::memory_hog_ends_as_oom(T); }
            #[test]
            fn double_fork_does_not_outlive_the_run() { super::double_fork_does_not_outlive_the_run(T); }
            #[test]
            fn leaves_no_setuid_files() { super::leaves_no_setuid_files(T); }
            #[test]
            fn hostile_kit_as_docker_group_user() { super::hostile_kit_as_docker_group_user(T); }
            #[test]
            fn engine_walks_hold() { super::engine_walks_hold(T, Who::Root); }
            #[test]
            fn engine_walks_hold_as_docker_group_user() { super::engine_walks_hold(T, Who::KitUser); }
            #[test]
            fn fills_are_bounded() { super::fills_are_bounded(T, Who::Root); }
            #[test]
            fn private_directories_are_measured() { super::private_directories_are_measured(T, Who::Root); }
            #[test]
            fn private_directories_are_measured_as_docker_group_user() { super::private_directories_are_measured(T, Who::KitUser); }
            #[test]
            fn fills_are_bounded_as_docker_group_user() { super::fills_are_bounded(T, Who::KitUser); }
        }
    )*};
}

conformance! {
    trivial_bwrap => "trivial" in "bwrap",
    trivial_netns => "trivial" in "netns",
    trivial_nspawn => "trivial" in "nspawn",
    nix_bwrap => "nix-flake" in "bwrap",
    nix_netns => "nix-flake" in "netns",
    nix_nspawn => "nix-flake" in "nspawn",
    docker => "docker" in "docker",
    docker_plugin => "docker-plugin" in "docker",
    oci => "oci" in "oci",
    oci_runc => "oci" in "runc",
    gvisor_plugin => "gvisor" in "gvisor",
    gvisor_nix_plugin => "gvisor-nix" in "gvisor",
}

/// The kit is not blind: on the bare host (`sandbox: none`, an explicit choice that isolates
/// nothing) it finds what it looks for.
#[test]
fn the_kit_sees_through_no_sandbox() {
    if !is_root() {
        missing("the bare host's secrets are root's: this test needs root");
        return;
    }
    let t = Target { runner: "trivial", sandbox: "none" };
    let w = t.world("");
    let bait = Bait::new(w.path(), marker(36_000, t)).unwrap();
    let addon = t.probe_addon(&w, "seeing", IMPURE);
    let mut args = vec![addon.display().to_string(), "--args".into(), "probe".into()];
    args.extend(bait_args(&bait, &w));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (out, v) = w.run_env(&args, &[("SECRET_TOKEN", &bait.secret_value)]);
    assert_eq!(v["addons"][0]["result"], "success", "{v}");
    let found = judge_probe(t, &w, &String::from_utf8_lossy(&out.stderr)).join("\n");
    for check in [
        "shadow:",
        "secret-file:",
        "engine-config:",
        "capabilities:",
        "host-root:",
        "host-loopback-tcp:",
        "abstract-unix:",
    ] {
        assert!(found.contains(check), "the probe should find {check} on the bare host; it found:\n{found}");
    }
    let escaped = bait.escaped_writes();
    assert!(!escaped.is_empty(), "the probe writes outside on the bare host");
}
