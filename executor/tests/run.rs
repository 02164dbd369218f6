//! `addon run` results: decoding and execution errors, policy, fail-fast, merge order, archives,
//! filesystem isolation, and the library API with events and cancellation.

mod common;

use std::io::Write;

use common::*;

fn sandbox() -> &'static str {
    if require("bwrap") {
        "bwrap"
    } else {
        "netns"
    }
}

#[test]
fn bad_json_is_a_decoding_error_and_files_are_set_aside() {
    let w = World::new(sandbox(), "");
    let addon = w.addon("bad", PURE, "echo partial > \"$OUTPUT_DIR/p.txt\"\necho 'this is not json'");
    let out_dir = w.path().join("out");
    let (out, v) = w.run(&[addon.to_str().unwrap(), "--output-dir", out_dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let a = &v["addons"][0];
    assert_eq!(a["result"], "decoding-error");
    assert_eq!(a["exit_code"], 0);
    assert!(a["error"].as_str().unwrap().contains("not a valid addon output"), "{a}");
    assert_eq!(v["success"], false);
    assert!(!out_dir.join("p.txt").exists(), "a failed addon's files must not look like output");
    let rejected = a["rejected_files"].as_str().unwrap();
    assert!(std::path::Path::new(rejected).join("p.txt").exists());
    // A file named in the output must exist in OUTPUT_DIR.
    let addon = w.addon("ghost", PURE, r#"echo '{"newItems": [{"files": ["missing.pdf"]}]}'"#);
    let (_, v) = w.run(&[addon.to_str().unwrap()]);
    assert_eq!(v["addons"][0]["result"], "decoding-error");
    assert!(v["addons"][0]["error"].as_str().unwrap().contains("missing.pdf"));
}

#[test]
fn non_zero_exit_is_an_execution_error() {
    let w = World::new(sandbox(), "");
    let addon = w.addon("fails", PURE, "echo 'something broke' >&2\nexit 3");
    let (code, a) = w.run_first(&[addon.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert_eq!(a.result, "execution-error");
    assert_eq!(a["exit_code"], 3);
    assert!(a.error.contains("something broke"), "{a}");
    assert_eq!(a["output"], serde_json::Value::Null);
}

#[test]
fn impure_addons_are_refused_by_policy() {
    let w = World::new(sandbox(), "allow-impure: false\n");
    let marker = w.path().join("ran");
    let addon = w.addon("impure", IMPURE, &format!("touch {}\necho '{{}}'", marker.display()));
    let a = w.run_execution_failed(&[addon.to_str().unwrap()]);
    assert!(a.error.contains("allow-impure"), "{a}");
    assert_eq!(a["runner"], serde_json::Value::Null);
    assert!(!marker.exists(), "nothing may run");
}

#[test]
fn fail_fast_skips_and_no_fail_fast_runs_the_rest() {
    let w = World::new(sandbox(), "");
    let bad = w.addon("first", PURE, "exit 1");
    let good = w.addon("second", PURE, "echo '{}'");
    let (_, v) = w.run(&[bad.to_str().unwrap(), good.to_str().unwrap()]);
    assert_eq!(v["addons"][0]["result"], "execution-error");
    assert_eq!(v["addons"][1]["result"], "skipped");
    assert_eq!(v["addons"][1]["name"], "second");
    let (_, v) = w.run(&[bad.to_str().unwrap(), good.to_str().unwrap(), "--no-fail-fast"]);
    assert_eq!(v["addons"][1]["result"], "success");
    assert_eq!(v["success"], false);
}

#[test]
fn outputs_merge_in_run_order() {
    let w = World::new(sandbox(), "");
    let tag = |t: &str| {
        format!(
            r#"echo "{t}" > "$OUTPUT_DIR/{t}.txt"
echo '{{"commands": [{{"command": "item-update", "itemId": "i1", "actions": [{{"action": "add-tags", "tags": ["{t}"]}}]}}], "newItems": [{{"files": ["{t}.txt"]}}]}}'"#
        )
    };
    let a = w.addon("a", PURE, &tag("alpha"));
    let b = w.addon("b", PURE, &tag("beta"));
    let c = w.addon("c", PURE, &tag("gamma"));
    let out_dir = w.path().join("out");
    let (out, v) = w.run(&[
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        c.to_str().unwrap(),
        "--output-dir",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{v}");
    let tags: Vec<&str> = v["output"]["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["actions"][0]["tags"][0].as_str().unwrap())
        .collect();
    assert_eq!(tags, ["alpha", "beta", "gamma"]);
    for t in ["alpha", "beta", "gamma"] {
        assert!(out_dir.join(format!("{t}.txt")).exists());
    }
    assert_eq!(v["addons"][1]["output"]["commands"][0]["actions"][0]["tags"][0], "beta");
}

fn zip_dir(dir: &std::path::Path, zip: &std::path::Path, prefix: &str) {
    use std::os::unix::fs::PermissionsExt;
    let mut w = zip::ZipWriter::new(std::fs::File::create(zip).unwrap());
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let mode = e.metadata().unwrap().permissions().mode();
        let o = zip::write::SimpleFileOptions::default().unix_permissions(mode);
        w.start_file(format!("{prefix}{}", e.file_name().to_string_lossy()), o).unwrap();
        w.write_all(&std::fs::read(e.path()).unwrap()).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn zips_wrapped_in_a_top_folder_run_and_hostile_zips_do_not() {
    let w = World::new(sandbox(), "");
    let addon = w.addon("zipped", PURE, "echo '{}'");
    let zip = w.path().join("zipped.zip");
    zip_dir(&addon, &zip, "zipped-main/");
    let (out, v) = w.run(&[zip.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{v}");
    assert_eq!(v["addons"][0]["name"], "zipped");
    // The unpacked archive is a cache entry: a second run does not unpack again.
    let entry_dir = |w: &World| {
        let ls = std::process::Command::new(env!("CARGO_BIN_EXE_addon"))
            .args(["cache", "ls", "--json", "--config", w.config.to_str().unwrap()])
            .output()
            .unwrap();
        let ls: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
        ls["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "archive")
            .map(|e| e["key"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let first = entry_dir(&w);
    assert_eq!(first.len(), 1);
    let marker = w.path().join("cache/archives-v1").join(&first[0]).join("content/addon/marker");
    std::fs::write(&marker, "kept").unwrap();
    let (_, v) = w.run(&[zip.to_str().unwrap()]);
    assert_eq!(v["addons"][0]["result"], "success");
    assert_eq!(entry_dir(&w), first);
    assert!(marker.exists(), "the entry was reused, not unpacked again");

    let evil = w.path().join("evil.zip");
    let mut z = zip::ZipWriter::new(std::fs::File::create(&evil).unwrap());
    z.start_file("../../escaped.txt", zip::write::SimpleFileOptions::default()).unwrap();
    z.write_all(b"x").unwrap();
    z.finish().unwrap();
    let (out, v) = w.run(&[evil.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(v["addons"][0]["result"], "execution-failed");
    assert!(v["addons"][0]["error"].as_str().unwrap().contains("../../escaped.txt"));
    assert!(!w.path().join("escaped.txt").exists() && !w.path().parent().unwrap().join("escaped.txt").exists());
}

#[test]
fn missing_sources_and_bad_flags_exit_2() {
    let w = World::new(sandbox(), "");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_addon"))
        .args(["run", "--json", "--config", w.config.to_str().unwrap(), "/no/such/addon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/no/such/addon"));
    let addon = w.addon("x", PURE, "echo '{}'");
    for bad in [["--timeout", "soon"], ["--env", "NOEQUALS"], ["--runner", "podman"]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_addon"))
            .args(["run", "--config", w.config.to_str().unwrap(), addon.to_str().unwrap(), bad[0], bad[1]])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(bad[1]),
            "{bad:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::write(&w.config, "sandbox: bwrap\nrun-timout: 5m\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_addon"))
        .args(["run", "--config", w.config.to_str().unwrap(), addon.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("run-timout") && err.contains("line 2") && err.contains("config.yml"), "{err}");
}

#[test]
fn bwrap_keeps_the_addon_inside_its_directories() {
    keeps_inside("bwrap");
}

#[test]
fn nspawn_keeps_the_addon_inside_its_directories() {
    keeps_inside("nspawn");
}

fn keeps_inside(sandbox: &str) {
    if !require(sandbox) {
        return;
    }
    let w = World::new(sandbox, "");
    let outside = w.path().join("outside.txt");
    // Host paths the addon can see (bound read-only into the sandbox): writes there must fail
    // with a read-only error, and nothing may change on the host. A path the sandbox does not
    // have at all would prove nothing.
    let script = format!(
        "if echo x > {o}; then echo wrote=outside >&2; fi\n\
         for f in /usr/addon-evil /etc/alternatives/addon-evil /etc/addon-evil; do\n\
           if [ -d \"$(dirname $f)\" ]; then echo \"seen=$(dirname $f)\" >&2; fi\n\
           if err=$(: 2>&1 > $f); then echo \"wrote=$f\" >&2; else echo \"refused=$f: $err\" >&2; fi\n\
         done\necho '{{}}'",
        o = outside.display()
    );
    let addon = w.addon("escaper", PURE, &script);
    let (out, v) = w.run(&[addon.to_str().unwrap()]);
    assert_eq!(v["addons"][0]["result"], "success", "{v}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!outside.exists(), "{sandbox}: wrote a file of the host's");
    for f in ["/usr/addon-evil", "/etc/alternatives/addon-evil", "/etc/addon-evil"] {
        assert!(!std::path::Path::new(f).exists(), "{sandbox}: {f} landed on the host");
    }
    // /usr is the host's, visible and read-only in every sandbox.
    assert!(stderr.contains("seen=/usr"), "{sandbox}: /usr is visible: {stderr}");
    assert!(!stderr.contains("wrote=/usr/addon-evil"), "{sandbox}: /usr is writable: {stderr}");
    assert!(
        stderr.lines().any(|l| l.contains("refused=/usr/addon-evil") && l.contains("Read-only file system")),
        "{sandbox}: a write to the host's /usr must fail as read-only: {stderr}"
    );
    if sandbox == "bwrap" && std::path::Path::new("/etc/alternatives").is_dir() {
        assert!(
            stderr.lines().any(|l| l.contains("refused=/etc/alternatives/addon-evil") && l.contains("Read-only")),
            "{stderr}"
        );
    }
}

/// What an addon prints is shown to people, never obeyed by their terminal: the human summary
/// and the log escape control characters (the attack review set the window title and cleared
/// the screen through the summary).
#[test]
fn an_addon_cannot_drive_the_terminal() {
    if !require(sandbox()) {
        return;
    }
    let w = World::new(sandbox(), "");
    let addon = w.addon("tty", PURE, "printf '\\033]0;kit-title\\007\\033[2J\\033[31mred\\233\\r\\n' >&2\nexit 1");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_addon"))
        .args(["run", "--config", w.config.to_str().unwrap(), addon.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let all: Vec<u8> = out.stdout.iter().chain(out.stderr.iter()).copied().collect();
    let text = String::from_utf8_lossy(&all);
    assert!(text.contains("kit-title"), "the addon's stderr is shown: {text}");
    for bad in [0x1bu8, 0x07, 0x0d] {
        assert!(!all.contains(&bad), "byte {bad:#04x} reached the terminal: {text:?}");
    }
    assert!(!text.contains('\u{9b}'), "a C1 control reached the terminal: {text:?}");
    assert!(text.contains("\\x1b]0;kit-title\\x07"), "shown escaped: {text}");
}

#[test]
fn an_unusable_sandbox_is_execution_failed_never_a_downgrade() {
    // nspawn configured but unusable (its binary is missing): refuse, never run elsewhere.
    let w = World::new("nspawn", "nspawn: {nspawn-binary: /nonexistent/systemd-nspawn}\n");
    let marker = w.path().join("ran");
    let addon = w.addon("careful", PURE, &format!("touch {}\necho '{{}}'", marker.display()));
    let a = w.run_execution_failed(&[addon.to_str().unwrap()]);
    assert!(a.error.contains("nspawn"), "{a}");
    assert!(!marker.exists());
    // An explicit `sandbox: none` runs on the bare host and says so.
    let w = World::new("none", "");
    let addon = w.addon("bare", PURE, "echo '{}'");
    let (_, v) = w.run(&[addon.to_str().unwrap()]);
    assert_eq!(v["addons"][0]["result"], "success");
    assert_eq!(v["addons"][0]["sandbox"], "none");
}

#[test]
fn invalid_descriptors_do_not_run() {
    let w = World::new(sandbox(), "");
    let addon = w.addon("broken", PURE, "echo '{}'");
    std::fs::write(
        addon.join("docspell-addon.yml"),
        "meta:\n  name: broken\n  version: \"1\"\nrunner:\n  trivial:\n    enable: true\n    exec: nope.sh\n",
    )
    .unwrap();
    let a = w.run_execution_failed(&[addon.to_str().unwrap()]);
    assert!(a.error.contains("runner.trivial.exec"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_api_streams_events_and_cancels() {
    use addon_executor::{CancellationToken, Config, Engine, Event, RunRequest};
    let w = World::new(sandbox(), "");
    let marker = format!("{}", 33_000 + std::process::id() % 1000);
    let addon = w.addon("slow", PURE, &format!("echo starting >&2\nexec sleep {marker}"));
    let config = Config::load(&w.config).unwrap();
    let engine = Engine::new(config);
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let cancel = CancellationToken::new();
    let req = RunRequest { sources: vec![addon.display().to_string()], ..Default::default() };
    let stopper = cancel.clone();
    let run = tokio::spawn(async move { engine.run(req, Some(tx), cancel).await });
    let mut saw_log = false;
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Log { line, .. } if line == "starting" => {
                saw_log = true;
                stopper.cancel();
            }
            Event::Finished { result, .. } => {
                assert_eq!(result, addon_executor::AddonResult::ExecutionFailed);
            }
            _ => {}
        }
    }
    let report = run.await.unwrap().unwrap();
    assert!(saw_log);
    assert!(report.addons[0].error.as_deref().unwrap().contains("cancelled"));
    assert!(processes_with(&format!("sleep {marker}")).is_empty());
}

#[test]
fn stdout_is_capped() {
    let w = World::new(sandbox(), "max-stdout: 64KiB\n");
    let addon = w.addon("chatty", PURE, "yes '{\"commands\": []}' | head -c 10000000");
    let (_, a) = w.run_first(&[addon.to_str().unwrap()]);
    assert_eq!(a.result, "decoding-error", "{a}");
    assert!(a.error.contains("max-stdout"), "{a}");
}

/// A zip's unpacked content is digested once, when it enters the cache; the digest is recorded in
/// the entry, and later runs of the same zip take it from there instead of walking 200 MB again.
#[test]
fn a_cached_archive_is_not_digested_again() {
    let w = World::new(sandbox(), "");
    let addon = w.addon("bigzip", PURE, "echo '{}'");
    let big = addon.join("model.bin");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(200 << 20).unwrap();
    let zip = w.path().join("bigzip.zip");
    zip_dir(&addon, &zip, "");
    std::fs::remove_dir_all(&addon).unwrap();
    let t = std::time::Instant::now();
    let (_, v) = w.run(&[zip.to_str().unwrap()]);
    let first = t.elapsed();
    assert_eq!(v["addons"][0]["result"], "success", "{v}");
    let digest = v["addons"][0]["digest"].as_str().unwrap().to_string();
    let bucket = w.path().join("cache/archives-v1");
    let entry = std::fs::read_dir(&bucket)
        .unwrap()
        .flatten()
        .find(|e| e.path().join("entry.json").exists())
        .expect("an archive entry")
        .path();
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(entry.join("entry.json")).unwrap()).unwrap();
    assert_eq!(meta["data"]["digest"], digest.as_str(), "the entry records the digest");
    // Change the unpacked content behind the engine's back: a run that walked it would report
    // another digest; one that trusts its record reports the recorded one.
    std::fs::OpenOptions::new()
        .append(true)
        .open(entry.join("content/addon/model.bin"))
        .unwrap()
        .write_all(b"x")
        .unwrap();
    let t = std::time::Instant::now();
    let (_, v) = w.run(&[zip.to_str().unwrap()]);
    let second = t.elapsed();
    assert_eq!(v["addons"][0]["result"], "success", "{v}");
    assert_eq!(v["addons"][0]["digest"], digest.as_str(), "the second run must not digest the content again");
    eprintln!("200 MB zip: first run {first:?} (unpack + digest), second run {second:?}");
}

/// Log events go through the caller's bounded channel: an addon that prints without end cannot
/// grow the engine's memory through a receiver that falls behind. Lines that find the channel
/// full are dropped and counted; the run and its result are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_event_receiver_drops_log_lines_and_counts_them() {
    use addon_executor::{CancellationToken, Config, Engine, Event, RunRequest};
    let w = World::new(sandbox(), "");
    let addon =
        w.addon("loud", PURE, "i=0; while [ $i -lt 20000 ]; do echo \"line $i\" >&2; i=$((i+1)); done\necho '{}'");
    let engine = Engine::new(Config::load(&w.config).unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let req = RunRequest { sources: vec![addon.display().to_string()], ..Default::default() };
    let run = tokio::spawn(async move { engine.run(req, Some(tx), CancellationToken::new()).await });
    // A receiver that looks away for a while, then reads everything.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let mut logs = 0;
    let mut finished = false;
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Log { .. } => logs += 1,
            Event::Finished { .. } => finished = true,
            _ => {}
        }
    }
    let report = run.await.unwrap().unwrap();
    let a = &report.addons[0];
    assert_eq!(a.result, addon_executor::AddonResult::Success, "{a:?}");
    assert!(finished);
    assert!(a.log_lines_dropped > 0, "the channel of 16 could not hold 20000 lines");
    assert_eq!(logs as u64 + a.log_lines_dropped, 20000, "every line was either delivered or counted");
}

/// An addon that leaves symlinks in its output (to a host secret, or a directory pointing out)
/// does not get them into the output directory, and cannot name files behind them.
#[test]
fn symlinks_never_leave_an_addons_output() {
    let w = World::new(sandbox(), "");
    let script = "ln -s /etc/shadow \"$OUTPUT_DIR/secret.txt\"\nln -s /etc \"$OUTPUT_DIR/etc\"\necho ok > \"$OUTPUT_DIR/real.txt\"\necho '{\"newItems\": [{\"files\": [\"real.txt\"]}]}'";
    let addon = w.addon("linker", PURE, script);
    let out_dir = w.path().join("out");
    let (_, v) = w.run(&[addon.to_str().unwrap(), "--output-dir", out_dir.to_str().unwrap()]);
    assert_eq!(v["addons"][0]["result"], "success", "{v}");
    assert!(out_dir.join("real.txt").is_file());
    for link in ["secret.txt", "etc"] {
        assert!(std::fs::symlink_metadata(out_dir.join(link)).is_err(), "{link} must not reach the output");
    }
    let script = "ln -s /etc \"$OUTPUT_DIR/sub\"\necho '{\"newItems\": [{\"files\": [\"sub/hostname\"]}]}'";
    let addon = w.addon("linker2", PURE, script);
    let (_, v) = w.run(&[addon.to_str().unwrap()]);
    assert_eq!(v["addons"][0]["result"], "decoding-error", "{v}");
}

/// A long-lived engine remembers the digests of addon directories it read, and still sees every
/// change: the same content in place with its old timestamps back is a new digest and a new run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_lived_engine_sees_a_changed_addon_directory() {
    use addon_executor::{CancellationToken, Config, Engine, RunRequest};
    let w = World::new(sandbox(), "");
    let addon = w.addon("changing", PURE, "echo '{\"files\": [], \"commands\": []}'");
    let run_sh = addon.join("run.sh");
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options().write(true).open(&run_sh).unwrap().set_modified(old).unwrap();
    // Settled, as a job server's installed addons are.
    tokio::time::sleep(addon_descriptors::DigestCache::SETTLE + std::time::Duration::from_millis(200)).await;
    let engine = Engine::new(Config::load(&w.config).unwrap());
    let run = || async {
        let req = RunRequest { sources: vec![addon.display().to_string()], ..Default::default() };
        let report = engine.run(req, None, CancellationToken::new()).await.unwrap();
        let a = &report.addons[0];
        assert_eq!(a.result, addon_executor::AddonResult::Success, "{a:?}");
        (a.digest.clone(), report.output)
    };
    let (first, _) = run().await;
    let (second, _) = run().await;
    assert_eq!(first, second);
    assert_eq!(first, Some(addon_descriptors::digest_dir(&addon).unwrap().to_string()));
    // Same length, same mtime: only the content (and the ctime the kernel keeps) differ.
    let before = std::fs::read_to_string(&run_sh).unwrap();
    let after = before.replace("\"commands\": []", "\"commands\":[] ");
    assert_eq!((before.len(), before != after), (after.len(), true));
    std::fs::write(&run_sh, after).unwrap();
    std::fs::File::options().write(true).open(&run_sh).unwrap().set_modified(old).unwrap();
    let (third, _) = run().await;
    assert_ne!(third, first, "a changed file is a new digest");
    assert_eq!(third, Some(addon_descriptors::digest_dir(&addon).unwrap().to_string()));
}

/// Finding 8 of the attack review: a different addon that declares the same `meta.name` gets
/// none of that name's settings and none of its data; the honest addon keeps both across runs
/// and a version upgrade; an administrator's pin decides which addon the name means.
#[test]
fn a_name_is_not_an_identity() {
    if !require(sandbox()) {
        return;
    }
    let extra =
        "env:\n  shared-name:\n    API_TOKEN: admin-secret\naddon-limits:\n  shared-name:\n    memory: 768MiB\n";
    let w = World::new(sandbox(), extra);
    let script = |who: &str| {
        format!(
            "echo \"token=${{API_TOKEN-unset}}\" >&2\necho \"cache=$(cat $CACHE_DIR/owner 2>/dev/null || echo none)\" >&2\necho \"home=$(cat $HOME/owner 2>/dev/null || echo none)\" >&2\necho {who} > $CACHE_DIR/owner\necho {who} > $HOME/owner\necho '{{}}'"
        )
    };
    let honest = w.addon("shared-name", PURE, &script("honest"));
    // The squatter lives elsewhere and claims the same name.
    let squatter = w.path().join("elsewhere/shared-name");
    std::fs::create_dir_all(squatter.parent().unwrap()).unwrap();
    let copied = std::process::Command::new("cp").arg("-a").arg(&honest).arg(&squatter).status().unwrap();
    assert!(copied.success());
    std::fs::write(squatter.join("run.sh"), format!("#!/bin/sh\n{}\n", script("squatter"))).unwrap();
    let field = |out: &std::process::Output, k: &str| stderr_map(out).get(k).cloned().unwrap_or_default();

    let (out, v) = w.run(&[honest.to_str().unwrap()]);
    assert_eq!(v["addons"][0]["result"], "success", "{v}");
    assert_eq!(field(&out, "token"), "admin-secret");
    assert_eq!(v["addons"][0]["limits"]["memory"], 768 << 20);
    let honest_identity = v["addons"][0]["identity"].clone();

    let (out, v) = w.run(&[squatter.to_str().unwrap()]);
    let a = &v["addons"][0];
    assert_eq!(a["result"], "success", "{v}");
    assert_eq!(field(&out, "token"), "unset", "the administrator's secret went to a squatter");
    assert_eq!(field(&out, "cache"), "none", "the squatter read the honest addon's CACHE_DIR");
    assert_eq!(field(&out, "home"), "none", "the squatter read the honest addon's HOME");
    assert_eq!(a["limits"]["memory"], 1 << 30, "the name's addon-limits went to a squatter");
    assert_eq!(honest_identity["settings"], true);
    assert_eq!(a["identity"]["settings"], false);
    assert!(a["identity"]["note"].as_str().unwrap_or_default().contains("belongs to the addon from"), "{a}");

    // The honest addon's data was not overwritten, and survives an upgrade in place.
    let yml = honest.join("docspell-addon.yml");
    std::fs::write(&yml, std::fs::read_to_string(&yml).unwrap().replace("version: \"1.0\"", "version: \"1.1\""))
        .unwrap();
    let (out, v) = w.run(&[honest.to_str().unwrap()]);
    assert_eq!(v["addons"][0]["version"], "1.1", "{v}");
    assert_eq!(field(&out, "cache"), "honest", "the upgrade kept its CACHE_DIR, untouched by the squatter");
    assert_eq!(field(&out, "token"), "admin-secret");

    // The administrator pins the name to the other directory: now that one is the addon.
    let pinned = format!("{extra}addons:\n  shared-name:\n    origins: [{}]\n", squatter.parent().unwrap().display());
    let w2 = World::new(sandbox(), &pinned);
    let (out, v) = w2.run(&[squatter.to_str().unwrap()]);
    assert_eq!(field(&out, "token"), "admin-secret", "{v}");
    let (out, v) = w2.run(&[honest.to_str().unwrap()]);
    assert_eq!(field(&out, "token"), "unset", "{v}");
    assert!(v["addons"][0]["identity"]["note"].as_str().unwrap_or_default().contains("pins this name"), "{v}");
}

/// What a run leaves in the working directory (its run directory, the sandbox's scratch root,
/// the sources' scratch) is gone: behind `addon run` once it exits, behind the library once the
/// engine settles or is dropped. The addon leaves a deep tree and a symlink to fill the walk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_leave_nothing_in_the_working_directory() {
    use addon_executor::{CancellationToken, Config, Engine, RunRequest};
    let w = World::new(sandbox(), "");
    let script =
        "d=$PWD; for i in $(seq 40); do d=$d/deep; done; mkdir -p $d && ln -s / $d/up && echo x > $d/f\necho '{}'";
    let addon = w.addon("litter", PURE, script);
    let work = w.path().join("work");
    // The default output directories (output-<id>) are the caller's; nothing else may be left.
    let left = || -> Vec<String> {
        let names = std::fs::read_dir(&work).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned());
        names.filter(|n| !n.starts_with("output-")).collect()
    };
    let (out, v) = w.run(&[addon.to_str().unwrap()]);
    assert_eq!(v["addons"][0]["result"], "success", "{v}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(left(), Vec::<String>::new(), "after `addon run`");

    let engine = Engine::new(Config::load(&w.config).unwrap());
    for n in 0..3 {
        let req = RunRequest {
            sources: vec![addon.display().to_string()],
            output_dir: Some(w.path().join(format!("lib-out-{n}"))),
            ..Default::default()
        };
        let report = engine.run(req, None, CancellationToken::new()).await.unwrap();
        assert!(report.success, "{report:?}");
    }
    engine.settle();
    assert_eq!(left(), Vec::<String>::new(), "after the library's runs, settled");
    let req = RunRequest { sources: vec![addon.display().to_string()], ..Default::default() };
    let report = engine.run(req, None, CancellationToken::new()).await.unwrap();
    assert!(report.success, "{report:?}");
    drop(engine);
    assert_eq!(left(), Vec::<String>::new(), "after the engine is dropped");
}
