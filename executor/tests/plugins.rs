//! Runner plugins beyond the conformance suite: what happens when a plugin crashes, hangs, speaks
//! another protocol version or is missing; a standalone plugin shared by two engines; an engine
//! killed during a plugin run (then Reap); cancellation; the copy path of plugins that do not
//! share the host filesystem. The test plugin is `addon-runner-example` with its `fault:` setting.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// A world whose runner list is `runners` and with the example plugin called `example`.
fn example_world(runners: &str, entry: &str) -> World {
    let w = World::new("bwrap", &format!("runner: [{runners}]\n"));
    w.add_plugin("example", "addon-runner-example", "trivial", entry);
    w
}

/// [`example_world`] where bwrap is available (None: skipped).
fn bwrap_example_world(runners: &str, entry: &str) -> Option<World> {
    require("bwrap").then(|| example_world(runners, entry))
}

fn runners_json(w: &World) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_addon"))
        .args(["runners", "--json", "--config", w.config.to_str().unwrap()])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}

fn runner<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["runners"].as_array().unwrap().iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("{name}: {v}"))
}

/// The detail of runner `name` in `w`'s `addon runners --json`, which must say it is unavailable.
fn unavailable_detail(w: &World, name: &str) -> String {
    let r = runner(&runners_json(w), name).clone();
    assert_eq!(r["available"], false, "{r}");
    r["detail"].as_str().unwrap().to_string()
}

/// An addon script that on its first run says `started` and sleeps `marker` seconds (a process
/// to look for), and on later runs prints `{}`.
fn sleeps_on_first_run(marker: &str) -> String {
    format!(
        "if [ ! -f \"$CACHE_DIR/once\" ]; then touch \"$CACHE_DIR/once\"; echo started >&2; exec sleep {marker}; fi\necho '{{}}'"
    )
}

/// Waits until no `sleep marker` process (an addon's) is left.
fn wait_until_gone(what: &str, marker: &str) {
    wait_until(what, Duration::from_secs(5), || processes_with(&format!("sleep {marker}")).is_empty());
}

/// Pids of the processes whose parent is `parent` and whose command line contains `needle`.
fn children_with(parent: u32, needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        let ppid: u32 =
            stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)).and_then(|p| p.parse().ok()).unwrap_or(0);
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if ppid == parent && String::from_utf8_lossy(&cmd).contains(needle) {
            out.push(pid);
        }
    }
    out
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_example_plugin_runs_an_addon() {
    let Some(w) = bwrap_example_world("example", "") else { return };
    let addon = w.addon("hello", PURE, "echo \"hello $*\" > \"$OUTPUT_DIR/hello.txt\"\necho '{}'");
    let out_dir = w.path().join("out");
    let (out, v) = w.run(&[addon.to_str().unwrap(), "--output-dir", out_dir.to_str().unwrap()]);
    let a = &v["addons"][0];
    assert_eq!(a["result"], "success", "{v}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(a["runner"], "example", "a plugin's run is reported under its configured name");
    assert_eq!(a["sandbox"], "bwrap");
    let r = runner(&runners_json(&w), "example").clone();
    assert_eq!(r["builtin"], false);
    assert_eq!(r["serves"], serde_json::json!(["trivial"]));
    assert!(r["detail"].as_str().unwrap().contains("plugin example"), "{r}");
}

/// A plugin that keeps its own copies of the run's directories (a remote backend): the engine
/// copies the run directory, CACHE_DIR and HOME in, and the output, CACHE_DIR and HOME back.
#[test]
fn a_plugin_without_the_host_filesystem_gets_copies_in_and_out() {
    let Some(w) = bwrap_example_world("example", "    config: {copy: true}\n") else { return };
    let script = r#"
n=$(cat "$CACHE_DIR/n" 2>/dev/null || echo 0); n=$((n+1)); echo $n > "$CACHE_DIR/n"
echo "home_prev=$(cat "$HOME/seen" 2>/dev/null || echo none)" >&2
echo "$n" > "$HOME/seen"
[ -p "$HOME/agent.fifo" ] || mkfifo "$HOME/agent.fifo"
mkdir -p "$OUTPUT_DIR/sub" && cat arguments/user-input > "$OUTPUT_DIR/sub/input.txt"
echo "run=$n" >&2
echo '{}'"#;
    let addon = w.addon("copier", PURE, script);
    for n in 1..=2 {
        let out_dir = w.path().join(format!("out{n}"));
        let (out, v) =
            w.run(&[addon.to_str().unwrap(), "--args", "payload", "--output-dir", out_dir.to_str().unwrap()]);
        assert_eq!(v["addons"][0]["result"], "success", "{v}\n{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(stderr_map(&out)["run"], n.to_string(), "CACHE_DIR came back from the plugin");
        // A fifo (like an agent's socket) in HOME cannot cross; the rest of HOME still does.
        let prev = if n == 1 { "none".to_string() } else { (n - 1).to_string() };
        assert_eq!(stderr_map(&out)["home_prev"], prev, "HOME came back from the plugin");
        assert_eq!(std::fs::read_to_string(out_dir.join("sub/input.txt")).unwrap(), "payload");
    }
}

/// The error of the first attempt of `v`'s addon, which must have failed on plugin `plugin` and
/// then (a pure addon) fallen through to the next runner, `trivial`, and succeeded.
fn fell_through_after(v: &serde_json::Value, plugin: &str) -> String {
    let a = &v["addons"][0];
    let first = &a["attempts"][0];
    assert_eq!(first["runner"], plugin, "{v}");
    assert_eq!(first["result"], "execution-failed", "{v}");
    assert_eq!(a["result"], "success", "a pure addon falls through to the next runner: {v}");
    assert_eq!(a["runner"], "trivial");
    first["error"].as_str().unwrap().to_string()
}

/// SIGKILL to the plugin while an addon runs: that attempt is execution-failed naming the
/// plugin and its stderr; the addon's processes die with it; a pure addon falls through to the
/// next runner; the next run starts the plugin again.
#[test]
fn a_plugin_killed_mid_run_fails_that_run_and_is_started_again() {
    let Some(w) = bwrap_example_world("example, trivial", "") else { return };
    let marker = format!("{}", 41_000 + std::process::id() % 1000);
    let addon = w.addon("victim", PURE, &sleeps_on_first_run(&marker));
    let mut engine = std::process::Command::new(env!("CARGO_BIN_EXE_addon"))
        .args(["run", "--json", "--config", w.config.to_str().unwrap(), addon.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = engine.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("started") {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    rx.recv_timeout(Duration::from_secs(30)).expect("the addon started");
    let plugins = children_with(engine.id(), "addon-runner-example");
    assert_eq!(plugins.len(), 1, "one plugin process per engine");
    // SAFETY: a plain signal to a test-owned process.
    unsafe { libc::kill(plugins[0], libc::SIGKILL) };
    let out = engine.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let err = fell_through_after(&v, "example");
    assert!(err.contains("example") && err.contains("died (killed by signal 9)"), "{err}");
    assert!(err.contains("runner plugin example"), "the plugin's stderr tail is quoted: {err}");
    wait_until_gone("the killed plugin's addon to die", &marker);
    // The next engine starts the plugin afresh.
    let (_, v) = w.run(&[addon.to_str().unwrap(), "--runner", "example"]);
    assert_eq!(v["addons"][0]["result"], "success", "{v}");
}

/// A plugin that crashes in Start: execution-failed naming it, with its last words.
#[test]
fn a_plugin_that_crashes_on_start_is_named_with_its_stderr() {
    let Some(w) = bwrap_example_world("example", "    config: {fault: crash-on-start}\n") else { return };
    let addon = w.addon("crashy", PURE, "echo '{}'");
    let (_, a) = w.run_first(&[addon.to_str().unwrap()]);
    assert_eq!(a.result, "execution-failed", "{a}");
    assert!(a.error.contains("example") && a.error.contains("crashing on start, as configured"), "{}", a.error);
}

/// A plugin whose run stops answering (no events, Stop hangs): at the run's timeout the engine
/// asks it to stop, gives up after the plugin's timeout, kills it (and with it the addon), and
/// the run ends as a failure naming the plugin. Nothing is left.
#[test]
fn a_plugin_that_hangs_mid_run_is_killed_and_named() {
    let Some(w) = bwrap_example_world("example", "    timeout: 1s\n    config: {fault: hang-during-run}\n") else {
        return;
    };
    let marker = format!("{}", 42_000 + std::process::id() % 1000);
    let addon = w.addon("hung", PURE, &format!("exec sleep {marker}"));
    let t = Instant::now();
    let (_, a) = w.run_first(&[addon.to_str().unwrap(), "--timeout", "2s"]);
    assert_eq!(a.result, "execution-failed", "{a}");
    let err = &a.error;
    assert!(err.contains("example") && err.contains("the engine killed it: asked to stop run"), "{err}");
    assert!(err.contains("did not answer within 2s"), "kill-grace 1s + the plugin's timeout 1s: {err}");
    assert!(t.elapsed() < Duration::from_secs(30), "the engine did not wait forever");
    wait_until_gone("the hung plugin's addon to die", &marker);
}

/// A plugin that never answers a call is unavailable with the reason, within its timeout.
#[test]
fn a_plugin_that_never_answers_is_unavailable_with_the_reason() {
    let w = example_world("example", "    timeout: 1s\n    config: {fault: hang-on-probe}\n");
    let t = Instant::now();
    let detail = unavailable_detail(&w, "example");
    assert!(t.elapsed() < Duration::from_secs(20));
    assert!(detail.contains("did not answer within 1s"), "{detail}");
    let addon = w.addon("unanswered", PURE, "echo '{}'");
    let (code, a) = w.run_first(&[addon.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(a.error.contains("no runner can run") && a.error.contains("did not answer"), "{}", a.error);
}

/// A plugin of another protocol version is refused, with both versions named.
#[test]
fn a_plugin_of_another_protocol_version_is_refused() {
    let w = World::new("bwrap", "runner: [future]\n");
    let program = plugin_binary("addon-runner-example");
    let config = std::fs::read_to_string(&w.config).unwrap()
        + &format!(
            "plugins:\n  future:\n    command: [{}, --announce-protocol-version, '2']\n    serves: [trivial]\n",
            program.display()
        );
    std::fs::write(&w.config, config).unwrap();
    let detail = unavailable_detail(&w, "future");
    assert!(detail.contains("protocol version 2") && detail.contains("version 1"), "{detail}");
}

/// A configured plugin whose program is missing is explained, in `runners` and in a run.
#[test]
fn a_missing_plugin_program_is_explained() {
    let w = World::new(
        "bwrap",
        "runner: [ghost]\nplugins:\n  ghost:\n    command: [/nonexistent/addon-runner-ghost]\n    serves: [trivial]\n",
    );
    let detail = unavailable_detail(&w, "ghost");
    assert!(detail.contains("/nonexistent/addon-runner-ghost") && detail.contains("No such file"), "{detail}");
    let addon = w.addon("ghostly", PURE, "echo '{}'");
    let (_, a) = w.run_first(&[addon.to_str().unwrap()]);
    assert!(a.error.contains("ghost") && a.error.contains("No such file"), "{}", a.error);
}

/// A bad plugin configuration is refused by the plugin, naming the field.
#[test]
fn a_plugin_checks_its_own_configuration() {
    let w = example_world("example", "    config: {fault: sometimes}\n");
    let detail = unavailable_detail(&w, "example");
    assert!(detail.contains("plugins.example.config.fault") && detail.contains("sometimes"), "{detail}");
}

/// One standalone plugin server, two engines at once: both runs succeed and the server lives on.
#[test]
fn two_engines_share_one_standalone_plugin() {
    if !require("bwrap") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("example.sock");
    let mut server = standalone_example(&socket);
    // Different configurations at once: each engine's calls go to a runner of its own
    // configuration (the second keeps its own copies of the run's directories).
    let entry = format!("plugins:\n  shared:\n    address: unix://{}\n    serves: [trivial]\n", socket.display());
    let worlds: Vec<World> = ["{}", "{copy: true}"]
        .iter()
        .map(|c| World::new("bwrap", &format!("runner: [shared]\n{entry}    config: {c}\n")))
        .collect();
    let handles: Vec<_> = worlds
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let addon = w.addon(
                &format!("sharer{i}"),
                PURE,
                "sleep 1\necho \"ran=$$\" >&2\necho out > \"$OUTPUT_DIR/out.txt\"\necho '{\"files\": []}'",
            );
            let config = w.config.clone();
            std::thread::spawn(move || {
                std::process::Command::new(env!("CARGO_BIN_EXE_addon"))
                    .args(["run", "--json", "--config", config.to_str().unwrap(), addon.to_str().unwrap()])
                    .output()
                    .unwrap()
            })
        })
        .collect();
    for h in handles {
        let out = h.join().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["addons"][0]["result"], "success", "{v}\n{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(v["addons"][0]["runner"], "shared");
        let out_dir = v["output_dir"].as_str().unwrap();
        assert_eq!(std::fs::read_to_string(format!("{out_dir}/out.txt")).unwrap(), "out\n", "{v}");
    }
    assert!(server.0.try_wait().unwrap().is_none(), "a standalone plugin outlives its engines");
    // SAFETY: a plain signal to a test-owned process.
    unsafe { libc::kill(server.0.id() as i32, libc::SIGTERM) };
    let status = server.0.wait().unwrap();
    assert!(status.success(), "SIGTERM is a clean exit: {status:?}");
}

/// The library's cancellation reaches a plugin's run: Stop is called, the addon dies.
#[tokio::test]
async fn cancelling_a_plugin_run_stops_it() {
    use addon_executor::{CancellationToken, Config, Engine, Event, RunRequest};
    let Some(w) = bwrap_example_world("example", "") else { return };
    let marker = format!("{}", 43_000 + std::process::id() % 1000);
    let addon = w.addon("cancelled", PURE, &format!("echo starting >&2\nexec sleep {marker}"));
    let engine = Engine::new(Config::load(&w.config).unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let cancel = CancellationToken::new();
    let stopper = cancel.clone();
    let req = RunRequest { sources: vec![addon.display().to_string()], ..Default::default() };
    let run = tokio::spawn(async move { engine.run(req, Some(tx), cancel).await });
    while let Some(ev) = rx.recv().await {
        if let Event::Log { line, .. } = ev {
            if line == "starting" {
                stopper.cancel();
            }
        }
    }
    let report = run.await.unwrap().unwrap();
    let a = &report.addons[0];
    assert_eq!(a.runner.as_deref(), Some("example"));
    assert!(a.error.as_deref().unwrap_or_default().contains("cancelled"), "{:?}", a.error);
    assert!(processes_with(&format!("sleep {marker}")).is_empty());
}

/// The engine is killed while a plugin's container runs. The plugin (told by SIGTERM, its parent
/// having died) stops it; and when the plugin was killed too, the next engine to start the
/// plugin has it Reap what was left.
#[test]
fn an_engine_killed_during_a_plugin_run_leaves_nothing() {
    if !require_docker() {
        return;
    }
    for kill_plugin_too in [false, true] {
        let w = World::new("auto", "runner: [docker-plugin]\n");
        w.add_plugin("docker-plugin", "addon-runner-docker", "docker", "");
        let name = format!("orphaned{}", u8::from(kill_plugin_too));
        let marker = format!("{name}-{}", std::process::id());
        let addon = w.docker_addon(&name, PURE, "#!/bin/sh\necho started >&2\nexec sleep 600\n", &marker);
        let mut engine = w.spawn_until(&addon, "started");
        let plugins = children_with(engine.id(), "addon-runner-docker");
        assert_eq!(plugins.len(), 1);
        let label = format!("{name}-1.0");
        assert_eq!(containers_of(&label).len(), 1, "the container runs");
        if kill_plugin_too {
            // SAFETY: plain signals to test-owned processes.
            unsafe { libc::kill(plugins[0], libc::SIGKILL) };
            wait_until("the plugin to die", Duration::from_secs(5), || {
                !std::path::Path::new(&format!("/proc/{}/cmdline", plugins[0])).exists()
                    || std::fs::read(format!("/proc/{}/cmdline", plugins[0])).unwrap_or_default().is_empty()
            });
        }
        engine.kill().unwrap();
        engine.wait().unwrap();
        if kill_plugin_too {
            assert_eq!(containers_of(&label).len(), 1, "with both dead, the container is left for Reap");
            // The next engine that starts the plugin has it reap the leftovers.
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_addon"))
                .args(["runners", "--config", w.config.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(out.status.success());
        }
        wait_until("the container to be removed", Duration::from_secs(20), || containers_of(&label).is_empty());
    }
}

/// A world with the Python plugin (tests/fixtures/python-plugin/plugin.py, grpcio from PyPI) as
/// `py`, its stubs generated from our proto here, as a Python author would. None without
/// Python's grpc (a failure in CI, where test-all installs it).
fn python_world(runners: &str, config: &str) -> Option<World> {
    let python = std::process::Command::new("python3")
        .args(["-c", "import sys, grpc, grpc_tools, grpc_health; print(sys.executable)"])
        .output();
    let python = match python {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        other => {
            missing(&format!(
                "the Python plugin needs python3 with grpcio, grpcio-tools and grpcio-health-checking: {other:?}"
            ));
            return None;
        }
    };
    let w = World::new("bwrap", &format!("runner: [{runners}]\n"));
    let stubs = w.path().join("stubs");
    std::fs::create_dir_all(&stubs).unwrap();
    let proto = concat!(env!("CARGO_MANIFEST_DIR"), "/../protocol/proto");
    let out = std::process::Command::new(&python)
        .args(["-m", "grpc_tools.protoc", "-I", proto])
        .arg(format!("--python_out={}", stubs.display()))
        .arg(format!("--grpc_python_out={}", stubs.display()))
        .arg("addon/runner/v1/runner.proto")
        .output()
        .unwrap();
    assert!(out.status.success(), "generating the stubs: {}", String::from_utf8_lossy(&out.stderr));
    let plugin = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/python-plugin/plugin.py");
    let mut c = std::fs::read_to_string(&w.config).unwrap();
    c.push_str(&format!(
        "plugins:\n  py:\n    command: [{python}, {plugin}, {}]\n    serves: [trivial]\n    timeout: 20s\n    config: {config}\n",
        stubs.display()
    ));
    std::fs::write(&w.config, c).unwrap();
    Some(w)
}

/// What a plugin in another language must show of its run of a pure addon that prints its uid
/// and network interfaces: success through `runner`, in `sandbox`, the JSON output (without a
/// newline) whole, and the addon as an unprivileged user seeing only lo.
fn assert_ran_pure(out: &std::process::Output, v: &serde_json::Value, runner: &str, sandbox: &str) {
    let a = &v["addons"][0];
    assert_eq!(a["result"], "success", "{v}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(a["runner"], runner);
    assert_eq!(a["sandbox"], sandbox);
    assert_eq!(a["output"]["files"][0]["itemId"], "item-1", "the JSON without a newline arrived: {v}");
    let m = stderr_map(out);
    assert_eq!(m.get("uid").map(String::as_str), Some("65534"), "{m:?}");
    assert_eq!(m.get("ifaces").map(String::as_str), Some("lo,"), "a pure addon sees only lo: {m:?}");
}

/// The protocol is language-neutral: a plugin written in Python with grpcio, from stubs made
/// from our proto, runs an addon in its own bwrap sandbox, without root and without network.
#[test]
fn a_plugin_written_in_python_runs_an_addon() {
    let Some(w) = python_world("py", "{}") else { return };
    let script = "echo \"uid=$(id -u)\" >&2\n\
        echo \"ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ,)\" >&2\n\
        echo \"hello $*\" > \"$OUTPUT_DIR/hello.txt\"\n\
        printf '%s' '{\"files\": [{\"itemId\": \"item-1\", \"textFiles\": {\"att-1\": \"hello.txt\"}}]}'";
    let addon = w.addon("pyhello", PURE, script);
    let out_dir = w.path().join("out");
    let (out, v) = w.run(&[addon.to_str().unwrap(), "--output-dir", out_dir.to_str().unwrap()]);
    assert_ran_pure(&out, &v, "py", "python-bwrap");
    let hello = std::fs::read_to_string(out_dir.join("hello.txt")).unwrap();
    assert_eq!(hello, "hello --flag second arguments/user-input\n");
    let r = runner(&runners_json(&w), "py").clone();
    assert_eq!(r["available"], true, "{r}");
    assert!(r["detail"].as_str().unwrap().contains("from Python"), "{r}");
}

/// A Python plugin that dies during a run: the run fails naming the plugin and quoting its
/// stderr, the addon dies with it, and a pure addon falls through to the next runner.
#[test]
fn a_python_plugin_that_crashes_mid_run_is_named_with_its_stderr() {
    let Some(w) = python_world("py, trivial", "{crash-during-run: true}") else { return };
    let marker = format!("{}", 44_000 + std::process::id() % 1000);
    // The plugin dies when the addon first says something: after it marked its first run.
    let addon = w.addon("pycrash", PURE, &sleeps_on_first_run(&marker));
    let (_, v) = w.run(&[addon.to_str().unwrap()]);
    let err = fell_through_after(&v, "py");
    assert!(err.contains("py") && err.contains("exit"), "{err}");
    assert!(err.contains("crashing during the run, as configured"), "the plugin's stderr tail is quoted: {err}");
    wait_until_gone("the crashed plugin's addon to die", &marker);
}

/// `addon runners check NAME --json` with its exit code.
fn runners_check(w: &World, args: &[&str]) -> (i32, serde_json::Value, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_addon"))
        .args(["runners", "check", "--config", w.config.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let v = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), v, format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
}

fn check_status<'a>(v: &'a serde_json::Value, name: &str) -> &'a str {
    v["checks"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("{name}: {v}"))
        ["status"]
        .as_str()
        .unwrap()
}

/// Every check of the kit ran and passed: an empty or shortened list would pass an `all` test.
fn assert_every_check_passed(v: &serde_json::Value) {
    let all_checks = addon_executor::check::CHECKS.len() as u64;
    assert_eq!((v["passed"].as_u64(), v["failed"].as_u64()), (Some(all_checks), Some(0)), "{v}");
    let checks = v["checks"].as_array().unwrap();
    assert_eq!(checks.len() as u64, all_checks, "{v}");
    assert!(checks.iter().all(|c| c["status"] == "pass" && c["passed"] == true), "{v}");
}

/// A plugin author's test plan as a command: every check passes for an honest plugin.
#[test]
fn runners_check_passes_an_honest_plugin() {
    let Some(w) = bwrap_example_world("trivial", "") else { return };
    let (code, v, all) = runners_check(&w, &["example", "--json"]);
    assert_eq!(code, 0, "{all}");
    assert_every_check_passed(&v);
    assert_eq!(v["runner"], "example");
    assert_eq!(v["section"], "trivial");
    assert!(v["checks"].as_array().unwrap().iter().all(|c| c["detail"].is_string()), "{v}");
}

/// A plugin's declared isolation is not taken on trust: one that claims to isolate the network
/// and the filesystem but runs addons on the bare host fails the kit, by name, and the command
/// exits 1.
#[test]
fn runners_check_catches_a_plugin_that_lies_about_isolation() {
    let w = example_world("trivial", "    config: {fault: lies-about-isolation}\n");
    let (code, v, all) =
        runners_check(&w, &["example", "--json", "--only", "network-isolation", "--only", "hostile-kit"]);
    assert_eq!(code, 1, "{all}");
    assert_eq!((v["passed"].as_u64(), v["failed"].as_u64()), (Some(1), Some(2)), "{v}");
    assert_eq!(check_status(&v, "available"), "pass");
    assert_eq!(check_status(&v, "network-isolation"), "fail", "{v}");
    assert_eq!(check_status(&v, "hostile-kit"), "fail", "{v}");
    let detail = v["checks"].as_array().unwrap().iter().find(|c| c["name"] == "network-isolation").unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(detail.contains("host-loopback-tcp"), "the detail names what got out: {detail}");
    // Without --json: one line per check, then the verdict.
    let (code, _, text) = runners_check(&w, &["example", "--only", "network-isolation"]);
    assert_eq!(code, 1);
    assert!(text.contains("FAIL network-isolation"), "{text}");
    assert!(text.contains("example: 1 of 2 checks did not pass"), "{text}");
}

/// The gVisor plugin, a real backend, through the same command.
#[test]
fn runners_check_passes_the_gvisor_plugin() {
    let w = World::new("bwrap", "runner: [trivial]\n");
    w.add_plugin("gvisor", "addon-runner-gvisor", "trivial", "");
    if !require_plugin(&w, "gvisor") {
        return;
    }
    let (code, v, all) = runners_check(&w, &["gvisor", "--json"]);
    assert_eq!(code, 0, "{all}");
    assert_every_check_passed(&v);
}

/// Mistakes in the command are named.
#[test]
fn runners_check_explains_unknown_names() {
    let w = example_world("trivial", "");
    let (code, _, all) = runners_check(&w, &["no-such-runner"]);
    assert_eq!(code, 2, "{all}");
    assert!(all.contains("no runner `no-such-runner`") && all.contains("example"), "{all}");
    let (code, _, all) = runners_check(&w, &["trivial", "--only", "speed"]);
    assert_eq!(code, 2, "{all}");
    assert!(all.contains("--only speed: no such check"), "{all}");
}

/// A plugin first needed on a blocking thread (builds call runners from one) must not die when
/// that thread retires (tokio's blocking threads end after 10 s idle, and the parent-death signal
/// follows the thread that forked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_started_from_a_blocking_thread_outlives_it() {
    use addon_executor::{CancellationToken, Config, Engine, RunRequest};
    let Some(w) = bwrap_example_world("example", "") else { return };
    let engine = std::sync::Arc::new(Engine::new(Config::load(&w.config).unwrap()));
    let runner = engine.runner("example").unwrap();
    let handle = tokio::runtime::Handle::current();
    let probe = tokio::task::spawn_blocking(move || handle.block_on(runner.probe())).await.unwrap();
    assert!(probe.available, "{}", probe.detail);
    let me = std::process::id();
    let plugins = children_with(me, "addon-runner-example");
    assert_eq!(plugins.len(), 1, "the plugin started");
    tokio::time::sleep(Duration::from_secs(13)).await;
    assert_eq!(children_with(me, "addon-runner-example"), plugins, "the same plugin process is still there");
    let addon = w.addon("later", PURE, "echo '{}'");
    let req = RunRequest { sources: vec![addon.display().to_string()], ..Default::default() };
    let report = engine.run(req, None, CancellationToken::new()).await.unwrap();
    assert!(report.success, "{:?}", report.addons[0].error);
}

/// A standalone plugin over TCP with mutual TLS, as a plugin inside a cluster would be reached:
/// an engine with the CA and a client certificate runs addons through it; one without a client
/// certificate is refused by the server and says so; the plugin refuses to listen beyond
/// loopback without client certificates.
#[test]
fn a_standalone_plugin_over_mutual_tls() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    if !require("bwrap") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names).unwrap().signed_by(&key, &ca, &ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(vec!["localhost".into()]);
    let (client_cert, client_key) = leaf(vec!["engine".into()]);
    let ca_pem = write("ca.pem", ca.pem());
    let (server_cert, server_key) = (write("server.pem", server_cert), write("server.key", server_key));
    let (client_cert, client_key) = (write("client.pem", client_cert), write("client.key", client_key));

    let refused = std::process::Command::new(plugin_binary("addon-runner-example"))
        .args(["--listen", "0.0.0.0:0", "--tls-cert", server_cert.to_str().unwrap(), "--tls-key"])
        .arg(&server_key)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--tls-client-ca"), "{refused:?}");

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _server = KillOnDrop(
        std::process::Command::new(plugin_binary("addon-runner-example"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--tls-cert")
            .arg(&server_cert)
            .arg("--tls-key")
            .arg(&server_key)
            .arg("--tls-client-ca")
            .arg(&ca_pem)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("the TLS plugin server", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let entry = |client: &str| {
        format!(
            "runner: [remote]\nplugins:\n  remote:\n    address: https://localhost:{port}\n    serves: [trivial]\n    \
             tls: {{ca: {}{client}}}\n",
            ca_pem.display()
        )
    };
    let w = World::new("bwrap", &entry(&format!(", cert: {}, key: {}", client_cert.display(), client_key.display())));
    let addon = w.addon("over-tls", PURE, "echo '{}'");
    let (out, v) = w.run(&[addon.to_str().unwrap()]);
    assert_eq!(v["addons"][0]["result"], "success", "{v}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(v["addons"][0]["runner"], "remote");

    let anonymous = World::new("bwrap", &entry(""));
    let r = runner(&runners_json(&anonymous), "remote").clone();
    assert_eq!(r["available"], false, "no client certificate, no service: {r}");
    let detail = r["detail"].as_str().unwrap();
    // With TLS 1.3 the server judges the client's certificate after the client's side of the
    // handshake is done: the client sees the server's alert, or only the connection ending
    // (closed, broken pipe), depending on timing.
    let named = detail.contains("CertificateRequired") || detail.contains("connection");
    assert!(detail.contains("remote") && named, "the cause is named: {r}");
}

/// The example plugin as a standalone server on unix socket `socket`, once it listens.
fn standalone_example(socket: &Path) -> KillOnDrop {
    let child = std::process::Command::new(plugin_binary("addon-runner-example"))
        .arg("--listen")
        .arg(format!("unix://{}", socket.display()))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let server = KillOnDrop(child);
    wait_until("the plugin server's socket", Duration::from_secs(10), || socket.exists());
    server
}

/// A child process killed when the test ends, passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the Go plugin test needs from Debian: Go, HashiCorp go-plugin, grpc-go, the protobuf
/// runtime and the code generators (test-all installs them).
fn go_toolchain() -> Option<PathBuf> {
    let ok = ["go", "protoc", "protoc-gen-go-grpc"].iter().all(|p| which(p).is_some())
        && Path::new("/usr/share/gocode/src/github.com/hashicorp/go-plugin").is_dir()
        && Path::new("/usr/share/gocode/src/google.golang.org/protobuf/cmd/protoc-gen-go").is_dir();
    if !ok {
        let msg = "the Go plugin test needs golang-go, golang-github-hashicorp-go-plugin-dev, golang-google-grpc-dev, \
                   golang-google-protobuf-dev, golang-github-golang-protobuf-1-5-dev, protoc-gen-go-grpc and protobuf-compiler";
        missing(msg);
        return None;
    }
    which("go")
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(program)).find(|p| p.is_file())
}

/// go-plugin compatibility, for real: a plugin written in Go and served with HashiCorp
/// go-plugin's `plugin.Serve` as is (Debian's go-plugin 1.0.1 and grpc-go), its stubs generated
/// from our proto here, runs an addon in its own bwrap sandbox. It leaves out the optional calls.
#[test]
fn a_plugin_served_with_hashicorp_go_plugin_runs_an_addon() {
    if !require("bwrap") {
        return;
    }
    let Some(go) = go_toolchain() else { return };
    let work = tempfile::tempdir().unwrap();
    let gopath = work.path().join("gopath");
    let pb = gopath.join("src/addonrunner/pb");
    let main = gopath.join("src/addonrunner/plugin");
    let gobin = work.path().join("bin");
    for d in [&pb, &main, &gobin] {
        std::fs::create_dir_all(d).unwrap();
    }
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-cache");
    let go_env = |c: &mut std::process::Command| {
        c.env("GO111MODULE", "off")
            .env("GOPATH", format!("{}:/usr/share/gocode", gopath.display()))
            .env("GOCACHE", &cache)
            .env("GOFLAGS", "")
            .env("GOBIN", &gobin);
    };
    let run = |c: &mut std::process::Command, what: &str| {
        let out = c.output().unwrap();
        assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    };
    // protoc-gen-go from Debian's source of google.golang.org/protobuf.
    let mut c = std::process::Command::new(&go);
    c.args(["install", "google.golang.org/protobuf/cmd/protoc-gen-go"]);
    go_env(&mut c);
    run(&mut c, "building protoc-gen-go");
    let proto = concat!(env!("CARGO_MANIFEST_DIR"), "/../protocol/proto");
    let map = "Maddon/runner/v1/runner.proto=addonrunner/pb";
    let mut c = std::process::Command::new("protoc");
    c.env("PATH", format!("{}:{}", gobin.display(), std::env::var("PATH").unwrap_or_default()))
        .args(["-I", proto])
        .arg(format!("--go_out={}", pb.display()))
        .arg(format!("--go_opt=paths=source_relative,{map}"))
        .arg(format!("--go-grpc_out={}", pb.display()))
        .arg(format!("--go-grpc_opt=paths=source_relative,{map}"))
        .arg("addon/runner/v1/runner.proto");
    run(&mut c, "generating the Go stubs");
    for f in ["runner.pb.go", "runner_grpc.pb.go"] {
        std::fs::rename(pb.join("addon/runner/v1").join(f), pb.join(f)).unwrap();
    }
    let fixture = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/go-plugin"));
    for f in ["main.go", "errors.go"] {
        std::fs::copy(fixture.join(f), main.join(f)).unwrap();
    }
    let binary = work.path().join("addon-runner-go");
    let mut c = std::process::Command::new(&go);
    c.current_dir(&main).args(["build", "-o"]).arg(&binary).arg(".");
    go_env(&mut c);
    run(&mut c, "building the Go plugin");

    let w = World::new("bwrap", "runner: [go]\n");
    let mut config = std::fs::read_to_string(&w.config).unwrap();
    config.push_str(&format!("plugins:\n  go:\n    command: [{}]\n    serves: [trivial]\n", binary.display()));
    std::fs::write(&w.config, config).unwrap();
    let script = "echo \"uid=$(id -u)\" >&2\n\
        echo \"ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | tr '\\n' ,)\" >&2\n\
        echo hi > \"$OUTPUT_DIR/hi.txt\"\n\
        printf '%s' '{\"files\": [{\"itemId\": \"item-1\", \"textFiles\": {\"att-1\": \"hi.txt\"}}]}'";
    let addon = w.addon("gohello", PURE, script);
    let (out, v) = w.run(&[addon.to_str().unwrap()]);
    assert_ran_pure(&out, &v, "go", "go-bwrap");
}

/// A standalone plugin that restarts behind the same address loses its configurations: the
/// engine's first call (the probe) is answered "not configured", the engine configures it again
/// and asks again, and runs go on without a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_standalone_plugin_is_configured_again() {
    use addon_executor::{CancellationToken, Config, Engine, RunRequest};
    if !require("bwrap") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("example.sock");
    let server = standalone_example(&socket);
    let entry = format!(
        "runner: [shared]\nplugins:\n  shared:\n    address: unix://{}\n    serves: [trivial]\n    config: {{copy: true}}\n",
        socket.display()
    );
    let w = World::new("bwrap", &entry);
    let addon = w.addon("survivor", PURE, "echo '{}'");
    let engine = Engine::new(Config::load(&w.config).unwrap());
    let run = || async {
        let req = RunRequest { sources: vec![addon.display().to_string()], ..Default::default() };
        engine.run(req, None, CancellationToken::new()).await.unwrap()
    };
    assert!(run().await.success);
    // SIGKILL leaves the socket file; it goes here so that the new one can be waited for.
    drop(server);
    std::fs::remove_file(&socket).unwrap();
    let _server = standalone_example(&socket);
    let mut results = Vec::new();
    for _ in 0..3 {
        let r = run().await;
        results.push((r.success, r.addons[0].error.clone()));
    }
    assert!(results.iter().all(|(ok, _)| *ok), "runs go on after the restart: {results:?}");
}
