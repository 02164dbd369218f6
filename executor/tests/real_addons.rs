//! Addons written the way published Docspell addons are: an interpreter (Guile) reached through
//! Debian's `/etc/alternatives`, compiling into a cache under HOME on its first run, printing its
//! JSON without a trailing newline. Run under every sandbox and through docker; the second run
//! must be warm (no compilation). The rotate-pdf-shaped addon runs on every runner in
//! published.rs.

mod common;

use common::*;

const COMPILING: &str = ";;; compiling";

fn check_output(v: &serde_json::Value, name: &str) {
    let a = &v["addons"][0];
    assert_eq!(a["result"], "success", "{v}");
    assert_eq!(a["output"]["newItems"][0]["metadata"]["tags"][0], "guile", "{a}");
    assert_eq!(a["output"]["newItems"][0]["files"][0], "greeting.txt");
    let out = std::path::Path::new(v["output_dir"].as_str().unwrap());
    assert_eq!(std::fs::read_to_string(out.join("greeting.txt")).unwrap(), format!("hello, {name}\n"));
}

fn guile_in(sandbox: &str) {
    if !require(sandbox) {
        return;
    }
    guile_with(World::new(sandbox, "runner: [trivial]\n"), sandbox);
}

/// The Guile addon run three times in `w`, whose results name `sandbox`.
fn guile_with(w: World, sandbox: &str) {
    let addon = w.guile_addon(false);
    let (out, v) = w.run(&[addon.to_str().unwrap(), "--args", "Ada"]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    check_output(&v, "Ada");
    assert_eq!(v["addons"][0]["sandbox"], sandbox);
    assert!(stderr.contains(COMPILING), "the first run compiles into HOME: {stderr}");
    assert!(stderr.contains("HOME=/mnt/home"), "{stderr}");
    // The second run finds the compiled code: same HOME, same source path, source not newer.
    let (out, v) = w.run(&[addon.to_str().unwrap(), "--args", "Grace"]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    check_output(&v, "Grace");
    assert!(!stderr.contains(COMPILING), "the second run must be warm: {stderr}");
    // A new version is new code: its own HOME, compiled again.
    let yml = addon.join("docspell-addon.yml");
    std::fs::write(&yml, std::fs::read_to_string(&yml).unwrap().replace("version: \"1.0\"", "version: \"1.1\""))
        .unwrap();
    let (out, v) = w.run(&[addon.to_str().unwrap(), "--args", "Lin"]);
    check_output(&v, "Lin");
    assert!(String::from_utf8_lossy(&out.stderr).contains(COMPILING));
}

/// In a VM (the vm plugin): the guest runs the host's Guile over 9p, compiles into the kept
/// HOME once, and the second run is warm.
#[test]
fn guile_addon_in_a_vm() {
    let Some(w) = vm_world() else {
        return;
    };
    let sandbox = vm_sandbox(&w);
    guile_with(w, &sandbox);
}

#[test]
fn guile_addon_in_bwrap() {
    guile_in("bwrap");
}

#[test]
fn guile_addon_in_netns() {
    guile_in("netns");
}

#[test]
fn guile_addon_in_nspawn() {
    guile_in("nspawn");
}

#[test]
fn guile_addon_in_docker_keeps_the_images_home() {
    if !require_docker() {
        return;
    }
    let w = World::new("auto", "runner: [docker]\n");
    let addon = w.guile_addon(true);
    let (out, v) = w.run(&[addon.to_str().unwrap(), "--args", "Ada"]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    check_output(&v, "Ada");
    assert_eq!(v["addons"][0]["runner"], "docker");
    assert_eq!(v["addons"][0]["cache"], "miss");
    assert!(stderr.contains("HOME=/root"), "the image's HOME is kept: {stderr}");
    // The image compiled the program while it was built: even the first run is warm.
    let runs: Vec<&str> = stderr.lines().filter(|l| l.contains(COMPILING) && !l.contains("build:")).collect();
    assert!(runs.is_empty(), "no compilation at run time: {runs:?}");
    let (out, v) = w.run(&[addon.to_str().unwrap(), "--args", "Grace"]);
    check_output(&v, "Grace");
    assert_eq!(v["addons"][0]["cache"], "hit");
    assert!(!String::from_utf8_lossy(&out.stderr).contains(COMPILING));
}
