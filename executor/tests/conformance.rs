//! The shared conformance suite: every check of `addon runners check` (written once, in
//! `addon_executor::check`: what addon each runs and what it asserts) against every runner in
//! every sandbox it can use (trivial and nix-flake in bwrap, netns and nspawn; docker; oci; the
//! docker and gVisor plugins), as root and as the unprivileged kit user. This file only drives
//! them: one test per check (or group of checks) and target, each `addon runners check NAME
//! --only CHECK...` against the target's configuration; every check must pass (a skip fails
//! under ADDON_TEST_REQUIRE_RUNTIMES=1), and a failure names the check and the target.
//! A new sandbox or runner gets all of them by adding one line at the bottom.

mod common;

use addon_executor::check::Bait;

use std::path::PathBuf;

use common::*;

/// Where an addon runs: a runner (built in, or a plugin program registered under its name), the
/// sandbox its results name, the configuration it takes, and what a refusal to the kit user
/// must say. Its section and nature come from what the runner declares (`addon runners --json`).
#[derive(Debug, Clone, Copy)]
struct Target {
    runner: &'static str,
    /// One of the engine's sandboxes (configured as `sandbox:`) for a runner that uses them,
    /// else the runner's own; `auto` where the runner picks one (it names it first in its
    /// version).
    sandbox: &'static str,
    /// The plugin program serving this runner and the section it serves, when it is a plugin.
    plugin: Option<(&'static str, &'static str)>,
    /// More configuration (YAML lines).
    config: &'static str,
    /// Empty when the kit user (unprivileged, in group `docker`) may run this target; else the
    /// words the engine's refusal must say.
    refused_as_kit_user: &'static [&'static str],
}

/// A built-in runner in `sandbox`.
const fn runner(runner: &'static str, sandbox: &'static str) -> Target {
    Target { runner, sandbox, plugin: None, config: "", refused_as_kit_user: &[] }
}

/// Plugin `runner`, the program `program` serving `section`, in its own `sandbox`.
const fn plugin(runner: &'static str, program: &'static str, section: &'static str, sandbox: &'static str) -> Target {
    Target { runner, sandbox, plugin: Some((program, section)), config: "", refused_as_kit_user: &[] }
}

impl Target {
    const fn with(self, config: &'static str) -> Target {
        Target { config, ..self }
    }

    const fn refused_as_kit_user(self, words: &'static [&'static str]) -> Target {
        Target { refused_as_kit_user: words, ..self }
    }

    /// The target's world: `runner: [NAME]`, its configuration, the sandbox when it is one of
    /// the engine's, and the plugin registered.
    fn world(&self) -> World {
        let sandbox = if engine_sandboxes().iter().any(|s| s == self.sandbox) { self.sandbox } else { "auto" };
        let w = World::new(sandbox, &format!("runner: [{}]\n{}", self.runner, self.config));
        if let Some((program, section)) = self.plugin {
            // Nix builds offline, with the static busybox the test flakes build with.
            let config = match section {
                "nix" => "    config: {nix: {extra-args: [--offline, --option, extra-sandbox-paths, /bin/busybox]}}\n",
                _ => "",
            };
            w.add_plugin(self.runner, program, section, config);
        }
        w
    }

    /// What the runner declares (`addon runners --json`: name, serves, capabilities, builtin).
    fn declared(&self, w: &World) -> serde_json::Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_addon"))
            .args(["runners", "--json", "--config", w.config.to_str().unwrap()])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let r = v["runners"].as_array().and_then(|a| a.iter().find(|r| r["name"] == self.runner).cloned());
        r.unwrap_or_else(|| panic!("{self:?}: `addon runners --json` does not list it: {v}"))
    }

    /// The descriptor section the runner serves (the first of the sections the checks know).
    fn section(&self, w: &World) -> String {
        let serves = self.declared(w)["serves"].clone();
        let serves: Vec<String> = serde_json::from_value(serves).unwrap_or_default();
        ["trivial", "docker", "nix"].into_iter().find(|s| serves.iter().any(|x| x == s)).unwrap_or("trivial").into()
    }

    /// The sandbox the results must name.
    fn sandbox_name(&self, w: &World) -> String {
        if self.sandbox == "vm" {
            // `vm-kvm`, or `vm-tcg` where KVM does not boot a guest.
            vm_sandbox(w)
        } else if self.sandbox == "auto" {
            let version = self.declared(w)["version"].as_str().unwrap_or_default().to_string();
            version.split(' ').next().unwrap_or_default().to_string()
        } else {
            self.sandbox.to_string()
        }
    }

    /// A plain addon for this runner.
    fn addon(&self, w: &World, name: &str) -> PathBuf {
        let marker = format!("{name}-{}-{}", self.sandbox, std::process::id());
        let script = "echo '{}'";
        match self.section(w).as_str() {
            "docker" => w.docker_addon(name, PURE, &format!("#!/bin/sh\n{script}\n"), &marker),
            "nix" => w.nix_addon(name, PURE, script, &marker),
            _ => w.addon(name, PURE, script),
        }
    }
}

/// The engine's sandboxes (`addon runners --json`).
fn engine_sandboxes() -> Vec<String> {
    static NAMES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    NAMES
        .get_or_init(|| {
            let out =
                std::process::Command::new(env!("CARGO_BIN_EXE_addon")).args(["runners", "--json"]).output().unwrap();
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            v["sandboxes"].as_array().unwrap().iter().filter_map(|s| s["name"].as_str().map(str::to_string)).collect()
        })
        .clone()
}

/// Runs `checks` against `t` with the engine as `who` (one `addon runners check`): each must
/// pass, and a failure names the check and the target. A target the kit user may not run must
/// be refused, saying why.
fn conform(t: Target, who: Who, checks: &[&str]) {
    if engine_sandboxes().iter().any(|s| s == t.sandbox) && !require(t.sandbox) {
        return;
    }
    let w = t.world();
    let Some(runs) = Runs::new(&w, who) else { return };
    if who == Who::KitUser && !t.refused_as_kit_user.is_empty() {
        let addon = t.addon(&w, "refused");
        runs.own();
        let (_, v) = runs.engine(&["run", "--json", addon.to_str().unwrap()], &[]);
        let a = &v["addons"][0];
        assert_eq!(a["result"], "execution-failed", "{t:?} as {KIT_USER} must be refused: {a}");
        let err = a["error"].as_str().unwrap_or_default().to_lowercase();
        let words = t.refused_as_kit_user;
        assert!(
            words.iter().all(|w| err.contains(w)),
            "{t:?} as {KIT_USER}: the refusal must say why ({words:?}): {err}"
        );
        return;
    }
    runs.own();
    let mut args = vec!["runners", "check", "--json", t.runner];
    args.extend(checks.iter().flat_map(|c| ["--only", c]));
    // The engine's environment holds a secret: the addon must see it nowhere.
    let secret = format!("conformance-secret-{}", std::process::id());
    let (out, v) = runs.engine(&args, &[(addon_executor::check::SECRET_ENV, &secret)]);
    let said = || format!("{v:#}\n{}", String::from_utf8_lossy(&out.stderr));
    let result = |name: &str| {
        let c = v["checks"].as_array().and_then(|a| a.iter().find(|c| c["name"] == name).cloned());
        c.unwrap_or_else(|| panic!("{t:?} {who:?}: no `{name}` in the report: {}", said()))
    };
    let available = result("available");
    if available["status"] != "pass" {
        missing(&format!("{t:?}: {} is not available here: {}", t.runner, available["detail"]));
        return;
    }
    let mut failed = Vec::new();
    for check in checks {
        let c = result(check);
        match c["status"].as_str() {
            Some("pass") => eprintln!("{t:?} {who:?}: {check}: {}", c["detail"]),
            Some("skip") => {
                missing(&format!("{t:?} {who:?}: {check} skipped: {}", c["detail"]));
            }
            _ => failed.push(format!("{check} failed: {}", c["detail"])),
        }
    }
    assert!(failed.is_empty(), "{t:?} as {who:?}:\n{}\n{}", failed.join("\n"), said());
    if checks.contains(&"contract") {
        assert_eq!(v["sandbox"], t.sandbox_name(&w), "{t:?}: the sandbox the results name");
    }
    let skipped = v["skipped"].as_u64().unwrap_or_default();
    assert_eq!(out.status.code(), Some(if skipped == 0 { 0 } else { 1 }), "{t:?} {who:?}: {}", said());
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

/// Who runs the engine.
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
                Some(Runs { w, who, bin, owner: Some(owner) })
            }
        }
    }

    /// Gives the world to the engine's user (after the test added files).
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

    /// `addon ARGS --config <world>` as this engine's user, with its JSON.
    fn engine(&self, args: &[&str], env: &[(&str, &str)]) -> (std::process::Output, serde_json::Value) {
        let mut cmd = match self.who {
            Who::Root => std::process::Command::new(&self.bin),
            Who::KitUser => {
                let mut c = std::process::Command::new("runuser");
                c.args(["-u", KIT_USER, "--"]).arg(&self.bin);
                c
            }
        };
        cmd.args(args).arg("--config").arg(&self.w.config).current_dir(self.w.path());
        cmd.envs(env.iter().copied());
        let out = cmd.output().unwrap();
        let v = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{:?}: no JSON ({e}): {}", self.who, String::from_utf8_lossy(&out.stderr)));
        (out, v)
    }
}

/// The fills: what an addon writes is bounded near its limits wherever it writes (its
/// directories, files it holds open after unlinking them, a tmpfs, a container's own file
/// system), and inodes are bounded as well as bytes.
const FILLS: &[&str] = &["disk-fill", "unlinked-fill", "inode-flood", "tmpfs-fill", "container-fill"];

/// The engine's walks over what addons wrote: nesting past PATH_MAX leaves nothing unsafe, and a
/// run swapping CACHE_DIR for a link to a host directory changes nothing there.
const WALKS: &[&str] = &["nested-trees", "cache-race"];

/// One test a row, `name: who, checks;`: `checks` against the module's target `T` as `who`.
macro_rules! checks {
    ($($test:ident: $who:ident, $checks:expr;)*) => {$(
        #[test]
        fn $test() { conform(T, Who::$who, $checks); }
    )*};
}

/// One module per target, one test per check or group of checks (`_as_docker_group_user`: the
/// engine as the kit user, where the suite holds that user to them).
macro_rules! conformance {
    ($($name:ident => $target:expr),* $(,)?) => {$(
        mod $name {
            use super::*;
            const T: Target = $target;
            checks! {
                runtime_contract: Root, &["contract"];
                failure_names_the_real_cause: Root, &["failure-cause"];
                timeout_kills_the_whole_tree: Root, &["timeout"];
                leftovers_die_with_the_addon: Root, &["leftovers"];
                killed_engine_kills_the_sandbox: Root, &["engine-death"];
                network_isolation: Root, &["network-isolation"];
                hostile_kit_finds_nothing: Root, &["hostile-kit"];
                hostile_kit_as_docker_group_user: KitUser, &["hostile-kit"];
                fork_bomb_ends_as_limit: Root, &["fork-bomb"];
                memory_hog_ends_as_oom: Root, &["memory-hog"];
                double_fork_does_not_outlive_the_run: Root, &["double-fork"];
                leaves_no_setuid_files: Root, &["setuid-files"];
                engine_walks_hold: Root, WALKS;
                engine_walks_hold_as_docker_group_user: KitUser, WALKS;
                private_directories_are_measured: Root, &["private-directories"];
                private_directories_are_measured_as_docker_group_user: KitUser, &["private-directories"];
                fills_are_bounded: Root, FILLS;
                fills_are_bounded_as_docker_group_user: KitUser, FILLS;
            }
        }
    )*};
}

/// Nix builds offline with the host's static busybox (see `nix_config`).
const NIX: &str = "nix-runner: {extra-args: [--offline, --option, extra-sandbox-paths, /bin/busybox]}\n";

conformance! {
    trivial_bwrap => runner("trivial", "bwrap"),
    trivial_netns => runner("trivial", "netns"),
    // nspawn needs root (or sudo, which the kit user has not).
    trivial_nspawn => runner("trivial", "nspawn").refused_as_kit_user(&["nspawn"]),
    // Nix without its daemon builds as root only (the build users); asked first.
    nix_bwrap => runner("nix-flake", "bwrap").with(NIX).refused_as_kit_user(&["nix"]),
    nix_netns => runner("nix-flake", "netns").with(NIX).refused_as_kit_user(&["nix"]),
    nix_nspawn => runner("nix-flake", "nspawn").with(NIX).refused_as_kit_user(&["nix"]),
    docker => runner("docker", "docker"),
    docker_plugin => plugin("docker-plugin", "addon-runner-docker", "docker", "docker"),
    // The `oci` runner with the runtime `auto` picks, and with one named.
    oci => runner("oci", "auto"),
    oci_runc => runner("oci", "runc").with("oci-runner: {runtime: runc}\n"),
    // runsc needs root.
    gvisor_plugin => plugin("gvisor", "addon-runner-gvisor", "trivial", "gvisor").refused_as_kit_user(&["gvisor", "root"]),
    gvisor_nix_plugin => plugin("gvisor-nix", "addon-runner-gvisor", "nix", "gvisor").refused_as_kit_user(&["nix"]),
    // QEMU runs in the engine's bwrap sandbox, as the addon's identity; the guest is the addon's own.
    vm_plugin => plugin("vm", "addon-runner-vm", "trivial", "vm"),
    // Docker addons as swarm jobs, on the single-node swarm and registry scripts/test-all starts.
    swarm_plugin => plugin("swarm", "addon-runner-swarm", "docker", "swarm"),
}

/// The kit is not blind: on the bare host (`sandbox: none`, an explicit choice that isolates
/// nothing) it finds what it looks for.
#[test]
fn the_kit_sees_through_no_sandbox() {
    if !is_root() {
        missing("the bare host's secrets are root's: this test needs root");
        return;
    }
    // The bare host gives no egress network: the impure probe runs with the host's.
    let w = World::new("none", "runner: [trivial]\nnetwork: {impure: host}\n");
    let bait = Bait::new(w.path(), format!("{}", 36_000 + std::process::id() % 1000)).unwrap();
    let addon = w.addon("seeing", IMPURE, "exit 99");
    let probe = addon_executor::check::build_probe(w.path()).unwrap_or_else(|e| panic!("{e}"));
    std::fs::copy(probe, addon.join("run.sh")).unwrap();
    let mut args = vec![addon.display().to_string(), "--args".into(), "probe".into()];
    args.extend(bait.env(Some(&w.config)).into_iter().flat_map(|(k, v)| ["--env".to_string(), format!("{k}={v}")]));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (out, v) = w.run_env(&args, &[("SECRET_TOKEN", &bait.secret_value)]);
    assert_eq!(v["addons"][0]["result"], "success", "{v}");
    let lines: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| l.split_once("kit ").map(|(_, r)| format!("kit {r}")))
        .collect();
    let found = addon_executor::check::judge(&lines, &Default::default()).join("\n");
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
