//! The shared conformance suite: the same runtime contract, network isolation and cleanup checks
//! against every sandbox. A new sandbox gets them by adding one line at the bottom.

mod common;

use common::*;

/// What the contract script prints: one `key=value` per line on stderr, the output JSON on stdout.
const CONTRACT: &str = r#"
echo "args=$*" >&2
echo "input=$(cat "$3")" >&2
echo "cwd=$(pwd)" >&2
for v in ADDON_DIR TMPDIR TMP_DIR OUTPUT_DIR CACHE_DIR HOME ITEM_DIR ITEM_DATA_JSON ITEM_ARGS_JSON ITEM_PDF_DIR ITEM_ORIGINAL_DIR ITEM_ORIGINAL_JSON ITEM_PDF_JSON FROM_CLI FROM_CONFIG SECRET_TOKEN; do
  eval "echo $v=\${$v-unset}" >&2
done
[ -d addons/contract-1.0 ] && echo "layout=ok" >&2
[ -f arguments/user-input ] && [ -d temp ] && echo "layout2=ok" >&2
[ -f item/item-data.json ] && echo "item=ok" >&2
[ -f in/data.txt ] && echo "input_file=$(cat in/data.txt)" >&2
touch "$HOME/.writable" && echo "home=writable" >&2
touch "$TMPDIR/x" && echo "tmp=writable" >&2
runs=$(cat "$CACHE_DIR/runs" 2>/dev/null || echo 0); runs=$((runs+1)); echo $runs > "$CACHE_DIR/runs"; echo "cache_runs=$runs" >&2
echo "result" > "$OUTPUT_DIR/result.txt"
echo '{"files": [{"itemId": "item-1", "textFiles": {"att-1": "result.txt"}}]}'
"#;

fn contract(sandbox: &str) {
    if !require(sandbox) {
        return;
    }
    let w = World::new(sandbox, "env:\n  contract:\n    FROM_CONFIG: configured\n");
    let addon = w.addon("contract", PURE, CONTRACT);
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
        "--item",
        item.to_str().unwrap(),
        "--input",
        &input_arg,
        "--output-dir",
        out_dir.to_str().unwrap(),
    ];
    let (out, v) = w.run_env(&args, &[("SECRET_TOKEN", "hunter2")]);
    assert_eq!(out.status.code(), Some(0), "{v}\n{}", String::from_utf8_lossy(&out.stderr));
    let a = &v["addons"][0];
    assert_eq!(a["result"], "success");
    assert_eq!(a["sandbox"], sandbox);
    assert_eq!(a["runner"], "trivial");
    assert_eq!(a["cache"], "none");
    assert_eq!(a["pure"], true);
    let m = stderr_map(&out);
    assert_eq!(m["args"], "--flag second arguments/user-input");
    assert_eq!(m["input"], "user text");
    assert!(m["ADDON_DIR"].ends_with("/addons/contract-1.0"), "{m:?}");
    assert_eq!(m["cwd"], m["ADDON_DIR"].trim_end_matches("/addons/contract-1.0"));
    assert_eq!(m["TMPDIR"], m["TMP_DIR"]);
    assert_eq!(m["FROM_CLI"], "cli");
    assert_eq!(m["FROM_CONFIG"], "configured");
    assert_eq!(m["SECRET_TOKEN"], "unset", "the engine's environment must not leak");
    assert_eq!(m["ITEM_DIR"], "item");
    assert_eq!(m["ITEM_DATA_JSON"], "item/item-data.json");
    assert_eq!(m["ITEM_PDF_JSON"], "item/pdf-files.json");
    for k in ["layout", "layout2", "item"] {
        assert_eq!(m.get(k).map(String::as_str), Some("ok"), "{k}: {m:?}");
    }
    assert_eq!(m["input_file"], "payload");
    assert_eq!(m["home"], "writable");
    assert_eq!(m["tmp"], "writable");
    assert_eq!(m["cache_runs"], "1");
    assert_eq!(std::fs::read_to_string(out_dir.join("result.txt")).unwrap(), "result\n");
    assert_eq!(v["output"]["files"][0]["textFiles"]["att-1"], "result.txt");
    assert_eq!(v["output_dir"], out_dir.canonicalize().unwrap().to_str().unwrap());
    // CACHE_DIR persists between runs of the same addon; run directories do not.
    let (out, _) = w.run(&[addon.to_str().unwrap()]);
    assert_eq!(stderr_map(&out)["cache_runs"], "2");
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

fn network(sandbox: &str) {
    if !require(sandbox) {
        return;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            drop(s);
        }
    });
    let w = World::new(sandbox, "");
    let pure = w.addon("pure", PURE, NET);
    let impure = w.addon("impure", IMPURE, NET);
    let port_env = format!("PORT={port}");
    let (out, v) = w.run(&[pure.to_str().unwrap(), "--env", &port_env]);
    assert_eq!(v["addons"][0]["result"], "success", "{v}");
    let m = stderr_map(&out);
    assert_eq!(m["ifaces"].trim(), "lo", "a pure addon sees only loopback: {m:?}");
    assert_eq!(m["reached"], "no", "a pure addon must not reach the host's 127.0.0.1");
    let (out, v) = w.run(&[impure.to_str().unwrap(), "--env", &port_env]);
    assert_eq!(v["addons"][0]["result"], "success", "{v}");
    assert_eq!(v["addons"][0]["pure"], false);
    let m = stderr_map(&out);
    assert_eq!(m["reached"], "yes", "an impure addon reaches the host: {m:?}");
}

fn timeout_kills_everything(sandbox: &str) {
    if !require(sandbox) {
        return;
    }
    let w = World::new(sandbox, "");
    let marker = marker(31_000, sandbox);
    let script = format!("trap '' TERM\n( setsid sh -c \"trap '' TERM; exec sleep {marker}\" & )\nsleep {marker}\n");
    let addon = w.addon("stubborn", PURE, &script);
    let (out, v) = w.run(&[addon.to_str().unwrap(), "--timeout", "2s"]);
    assert_eq!(out.status.code(), Some(1));
    let a = &v["addons"][0];
    assert_eq!(a["result"], "timeout", "{v}");
    assert!(a["error"].as_str().unwrap().contains("2s"), "{a}");
    let left = processes_with(&format!("sleep {marker}"));
    assert!(left.is_empty(), "processes outlived the run: {left:?}");
}

fn exit_leftovers_are_killed(sandbox: &str) {
    if !require(sandbox) {
        return;
    }
    let w = World::new(sandbox, "");
    let marker = marker(32_000, sandbox);
    let script = format!("( setsid sleep {marker} & )\necho '{{}}'\n");
    let addon = w.addon("leaver", PURE, &script);
    let (_, v) = w.run(&[addon.to_str().unwrap()]);
    assert_eq!(v["addons"][0]["result"], "success", "{v}");
    let left = processes_with(&format!("sleep {marker}"));
    assert!(left.is_empty(), "a background process outlived its addon: {left:?}");
}

/// A number for `sleep` that is unique per test, process and sandbox (tests run in parallel and
/// look for their own leftovers by command line).
fn marker(base: u32, sandbox: &str) -> String {
    format!("{}{}", base + std::process::id() % 1000, sandbox.bytes().map(u32::from).sum::<u32>())
}

fn engine_killed_takes_the_sandbox_along(sandbox: &str) {
    if !require(sandbox) {
        return;
    }
    let w = World::new(sandbox, "");
    let marker = marker(34_000, sandbox);
    let script = format!("( setsid sleep {marker} & )\necho started >&2\nexec sleep {marker}\n");
    let addon = w.addon("orphan", PURE, &script);
    // Wait until the addon runs, then kill the engine without warning.
    let mut child = w.spawn_until(&addon, "started");
    assert!(!processes_with(&format!("sleep {marker}")).is_empty(), "the addon should be running");
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !processes_with(&format!("sleep {marker}")).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let left = processes_with(&format!("sleep {marker}"));
    assert!(left.is_empty(), "the sandbox outlived the killed engine: {left:?}");
}

macro_rules! conformance {
    ($($sandbox:ident),*) => {$(
        mod $sandbox {
            #[test]
            fn runtime_contract() { super::contract(stringify!($sandbox)); }
            #[test]
            fn network_isolation() { super::network(stringify!($sandbox)); }
            #[test]
            fn timeout_kills_the_whole_tree() { super::timeout_kills_everything(stringify!($sandbox)); }
            #[test]
            fn leftovers_die_with_the_addon() { super::exit_leftovers_are_killed(stringify!($sandbox)); }
            #[test]
            fn killed_engine_kills_the_sandbox() { super::engine_killed_takes_the_sandbox_along(stringify!($sandbox)); }
        }
    )*};
}

conformance!(bwrap, netns, nspawn);

/// The engine as an unprivileged user: netns then needs a user namespace, and bwrap runs
/// without privileges. Run as root, this test drops to `nobody` with runuser.
#[test]
fn unprivileged_engine_isolates_too() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: not root, so the other tests already ran unprivileged");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let w = World::new("netns", "");
    let open =
        |p: &std::path::Path, mode: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    open(w.path(), 0o777);
    let bin = w.path().join("addon");
    std::fs::copy(env!("CARGO_BIN_EXE_addon"), &bin).unwrap();
    open(&bin, 0o755);
    let addon = w.addon("unpriv", PURE, NET);
    for p in [w.path().join("addons-src"), addon.clone()] {
        open(&p, 0o755);
    }
    open(&addon.join("docspell-addon.yml"), 0o644);
    for sandbox in ["netns", "bwrap"] {
        if !require(sandbox) {
            continue;
        }
        let config = w.path().join(format!("{sandbox}.yml"));
        std::fs::write(
            &config,
            format!(
                "sandbox: {sandbox}\nworking-dir: {}/work-{sandbox}\ncache-dir: {}/cache-{sandbox}\n",
                w.path().display(),
                w.path().display()
            ),
        )
        .unwrap();
        open(&config, 0o644);
        let out = std::process::Command::new("runuser")
            .args(["-u", "nobody", "--"])
            .arg(&bin)
            .args(["run", "--json", "--config"])
            .arg(&config)
            .arg(&addon)
            .args(["--env", "PORT=9"])
            .current_dir(w.path())
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{sandbox}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
        assert_eq!(v["addons"][0]["result"], "success", "{sandbox}: {v}");
        assert_eq!(v["addons"][0]["sandbox"], sandbox);
        let m = stderr_map(&out);
        assert_eq!(m["ifaces"].trim(), "lo", "{sandbox} as nobody: {m:?}");
    }
}
