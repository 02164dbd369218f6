//! The nix-flake runner against the real nix (offline flakes without inputs), beyond the
//! conformance suite: GC protection while the cache entry lives, failing flakes, build timeouts.

mod common;

use std::process::Command;

use common::*;

fn store_path_of(w: &World) -> String {
    let bucket = w.path().join("cache/artifacts-v1");
    let entry = std::fs::read_dir(&bucket)
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir() && !e.file_name().to_string_lossy().starts_with('.'))
        .unwrap();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(entry.path().join("entry.json")).unwrap()).unwrap();
    meta["data"]["reference"].as_str().unwrap().to_string()
}

#[test]
fn a_cached_build_is_protected_from_the_garbage_collector_until_pruned() {
    let Some(w) = nix_world("") else { return };
    let addon = w.nix_addon("nixgc", PURE, "echo '{}'", &format!("gc-{}", std::process::id()));
    let (out, v) = w.run(&[addon.to_str().unwrap()]);
    assert_eq!(v["addons"][0]["result"], "success", "{v}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("the first program of"), "says which program");
    // Deleting the path fails while its entry lives (it is a GC root)... (Deleting one path, not
    // collecting garbage, so that parallel tests' fresh builds are not touched.)
    let path = store_path_of(&w);
    let del = Command::new("nix-store").args(["--delete", &path]).output().unwrap();
    assert!(!del.status.success(), "{path} must be protected while cached");
    assert!(std::path::Path::new(&path).exists());
    // ...and succeeds once the entry is pruned.
    assert!(w.cli(&["cache", "prune", "--max-size", "0"]).status.success());
    let del = Command::new("nix-store").args(["--delete", &path]).output().unwrap();
    assert!(del.status.success(), "after prune the path is no longer rooted: {}", String::from_utf8_lossy(&del.stderr));
    assert!(!std::path::Path::new(&path).exists());
}

#[test]
fn a_failing_flake_is_execution_failed_and_nothing_is_cached() {
    let Some(w) = nix_world("") else { return };
    let addon =
        w.nix_addon_building("nixbad", &format!("bad-{}", std::process::id()), "echo build-went-wrong >&2; exit 3");
    let a = w.run_execution_failed(&[addon.to_str().unwrap()]);
    assert!(a.error.contains("nix build failed") && a.error.contains("build-went-wrong"), "{}", a.error);
    assert!(
        !w.path().join("cache/artifacts-v1").exists()
            || std::fs::read_dir(w.path().join("cache/artifacts-v1"))
                .unwrap()
                .flatten()
                .all(|e| !e.path().join("entry.json").exists())
    );
}

#[test]
fn a_build_over_build_timeout_is_stopped_with_everything_it_started() {
    let Some(w) = nix_world("build-timeout: 3s, ") else { return };
    let sleep = format!("{}", 600_000 + std::process::id() % 100_000);
    let addon = w.nix_addon_building(
        "nixslow",
        &format!("slow-{}", std::process::id()),
        &format!("/bin/busybox sleep {sleep}"),
    );
    let started = std::time::Instant::now();
    let a = w.run_execution_failed(&[addon.to_str().unwrap()]);
    let took = started.elapsed();
    assert!(a.error.contains("timed out") && a.error.contains("nix-runner.build-timeout"), "{}", a.error);
    assert!(took < std::time::Duration::from_secs(60), "stopped at its timeout, not after the build: {took:?}");
    let left = processes_with(&format!("sleep {sleep}"));
    assert!(left.is_empty(), "the build outlived its timeout: {left:?}");
    assert!(processes_with(&addon.display().to_string()).is_empty(), "no nix process is left");
}

#[test]
fn a_flake_utils_shaped_flake_with_only_default_package_runs() {
    let Some(w) = nix_world("") else { return };
    let addon = w.nix_addon("rotatepdf", PURE, "printf '{\"files\":[]}'", "x");
    std::fs::write(
        addon.join("flake.nix"),
        flake_utils_flake("rotatepdf", "run.sh", &format!("fu-{}", std::process::id())),
    )
    .unwrap();
    let (out, v) = w.run(&[addon.to_str().unwrap()]);
    let a = &v["addons"][0];
    assert_eq!(a["result"], "success", "{v}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(a["runner"], "nix-flake", "{a}");
}

fn addon_cmd(w: &World, args: &[&str]) -> (std::process::Output, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_addon"))
        .args(args)
        .args(["--json", "--config", w.config.to_str().unwrap()])
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out, v)
}

#[test]
fn a_flake_nix_cannot_build_is_passed_over_by_plan_and_its_failed_build_is_remembered() {
    let Some(w) = nix_world("") else { return };
    // Only a named package: `nix build` with no attribute builds nothing from it.
    let addon = w.nix_addon("named", PURE, "printf '{}'", "x");
    let flake = flake_utils_flake("named", "run.sh", &format!("named-{}", std::process::id()));
    std::fs::write(addon.join("flake.nix"), flake.replace("defaultPackage = eachSystem addon;", "")).unwrap();
    let src = addon.to_str().unwrap();
    let (out, plan) = addon_cmd(&w, &["plan", src]);
    assert_eq!(out.status.code(), Some(1), "{plan}");
    let nix = &plan["candidates"][0];
    let why = nix["cannot_build"].as_str().unwrap_or_default();
    assert!(why.contains("defaultPackage.x86_64-linux") && why.contains("packages.x86_64-linux.named"), "{plan}");
    assert!(
        plan["selected"].is_null() && plan["reason"].as_str().unwrap().contains("no runner can build it"),
        "{plan}"
    );
    // validate warns about it, and the descriptor stays valid.
    let (out, v) = addon_cmd(&w, &["validate", src]);
    assert_eq!(out.status.code(), Some(0), "{v}");
    let warned = v["diagnostics"].as_array().unwrap().iter().any(|d| {
        d["severity"] == "warning" && d["message"].as_str().unwrap_or("").contains("defaultPackage.x86_64-linux")
    });
    assert!(warned, "{v}");

    // The run tries the build once; the next run does not build it again.
    let (_, v) = w.run(&[src]);
    let first = v["addons"][0]["error"].as_str().unwrap_or_default().to_string();
    assert_eq!(v["addons"][0]["result"], "execution-failed", "{v}");
    assert!(!first.contains("not tried again"), "{first}");
    let (_, v) = w.run(&[src]);
    let again = v["addons"][0]["error"].as_str().unwrap_or_default();
    assert!(again.contains("not tried again") && again.contains("remember-failed-builds"), "{again}");
    let (_, ls) = addon_cmd(&w, &["cache", "ls"]);
    assert!(ls["entries"].as_array().unwrap().iter().any(|e| e["kind"] == "failed-build"), "{ls}");
    // Forgotten on request: the next run builds (and fails) again.
    let (out, _) = addon_cmd(&w, &["cache", "prune", "--failed-builds"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, v) = w.run(&[src]);
    assert!(!v["addons"][0]["error"].as_str().unwrap_or_default().contains("not tried again"), "{v}");
}
