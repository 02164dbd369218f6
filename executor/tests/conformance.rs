//! The shared conformance suite: the same runtime contract, network isolation and cleanup checks
//! against every runner in every sandbox it can use (trivial and nix-flake in bwrap, netns and
//! nspawn; docker). A new sandbox or runner gets all of them by adding one line at the bottom.

mod common;

use std::path::PathBuf;

use common::*;

/// Where an addon runs: a runner, and for host runners the sandbox.
#[derive(Debug, Clone, Copy)]
struct Target {
    runner: &'static str,
    sandbox: &'static str,
}

impl Target {
    /// Skips (or fails in CI) when the runtime is missing.
    fn available(&self) -> bool {
        match self.runner {
            "docker" => require_docker(),
            "nix-flake" => require_nix() && require(self.sandbox),
            _ => require(self.sandbox),
        }
    }

    fn world(&self, extra: &str) -> World {
        let runner = match self.runner {
            "nix-flake" => nix_config(""),
            r => format!("runner: [{r}]\n"),
        };
        World::new(if self.runner == "docker" { "auto" } else { self.sandbox }, &format!("{runner}{extra}"))
    }

    /// The sandbox the result names.
    fn sandbox_name(&self) -> &'static str {
        if self.runner == "docker" {
            "docker"
        } else {
            self.sandbox
        }
    }

    /// An addon for this runner running `script` (POSIX sh; busybox's inside docker), with
    /// `args: [--flag, second]`.
    fn addon(&self, w: &World, name: &str, options: &str, script: &str) -> PathBuf {
        let marker = format!("{name}-{}-{}", self.sandbox_name(), std::process::id());
        let root = match self.runner {
            "docker" => w.docker_addon(name, options, &format!("#!/bin/sh\n{script}\n"), &marker),
            "nix-flake" => w.nix_addon(name, options, script, &marker),
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
    assert_eq!(a["cache"], if t.runner == "trivial" { "none" } else { "miss" });
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
    if t.runner == "docker" {
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
    assert_eq!(v["addons"][0]["cache"], if t.runner == "trivial" { "none" } else { "hit" });
    let m = stderr_map(&out);
    assert_eq!(m["cache_runs"], "2");
    assert_eq!(m["home_runs"], if t.runner == "docker" { "1" } else { "2" }, "{t:?}");
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
    let left = processes_with(&format!("sleep {marker}"));
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
    let left = processes_with(&format!("sleep {marker}"));
    assert!(left.is_empty(), "{t:?}: a background process outlived its addon: {left:?}");
}

fn engine_killed_takes_the_sandbox_along(t: Target) {
    if t.runner == "docker" {
        return; // the daemon keeps the container; the next engine reaps it (tests/docker.rs)
    }
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
    while processes_with(&format!("sleep {marker}")).len() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(!processes_with(&format!("sleep {marker}")).is_empty(), "the addon should be running");
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !processes_with(&format!("sleep {marker}")).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let left = processes_with(&format!("sleep {marker}"));
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
}
