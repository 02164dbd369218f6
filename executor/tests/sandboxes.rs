//! Sandbox-specific behaviour beyond the conformance suite (tests/conformance.rs): the engine as
//! an unprivileged user, and the default working directory shared by users of one host.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// Prints the network interfaces the addon sees.
const NET: &str = r#"
ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\n' ' ')
echo "ifaces=$ifaces" >&2
echo '{}'
"#;

/// Sets the mode of `path`.
fn open(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A world (`sandbox`) whose folder has `mode`, with a copy of the `addon` binary and the addon
/// `name` running `script`, both of which any user may read and run: `(world, binary, addon)`.
fn world_for_others(sandbox: &str, mode: u32, name: &str, script: &str) -> (World, PathBuf, PathBuf) {
    let w = World::new(sandbox, "");
    open(w.path(), mode);
    let bin = w.path().join("addon");
    std::fs::copy(env!("CARGO_BIN_EXE_addon"), &bin).unwrap();
    open(&bin, 0o755);
    let addon = w.addon(name, PURE, script);
    for p in [w.path().join("addons-src"), addon.clone()] {
        open(&p, 0o755);
    }
    open(&addon.join("docspell-addon.yml"), 0o644);
    (w, bin, addon)
}

/// The engine as an unprivileged user: netns then needs a user namespace, and bwrap runs
/// without privileges. Run as root, this test drops to `nobody` with runuser.
#[test]
fn unprivileged_engine_isolates_too() {
    if !require_root("this test runs the engine as another, unprivileged user: it needs root") {
        return;
    }
    let (w, bin, addon) = world_for_others("netns", 0o777, "unpriv", NET);
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

/// A job server (root here) and an addon author (nobody) on one host both run with the default
/// working directory: each gets a private one. A directory of that name made by someone else is
/// refused with the setting to change, never used.
#[test]
fn the_default_working_directory_is_private_to_each_user() {
    if !require_root("this test acts as two users: it needs root") {
        return;
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (w, bin, addon) = world_for_others("auto", 0o755, "shared", "echo '{}'");
    let tmp = w.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    open(&tmp, 0o1777);
    let run_as = |user: &str| {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", user, "--"]).arg(&bin).args(["run", "--json"]).arg(&addon);
        c.env("TMPDIR", &tmp).env("XDG_CACHE_HOME", tmp.join(format!("cache-{user}"))).env_remove("ADDON_CONFIG");
        c.current_dir(w.path()).output().unwrap()
    };
    for user in ["root", "nobody"] {
        let out = run_as(user);
        assert_eq!(out.status.code(), Some(0), "{user}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let root_dir = tmp.join("addon-work-0");
    let meta = std::fs::metadata(&root_dir).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o700, "created private");
    let nobody_dir = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("addon-work-") && e.path() != root_dir)
        .expect("nobody's own working directory")
        .path();
    assert_ne!(std::fs::metadata(&nobody_dir).unwrap().uid(), 0);
    // Someone else (root) planted nobody's default directory: refused, with the setting to change.
    std::fs::remove_dir_all(&nobody_dir).unwrap();
    std::fs::create_dir(&nobody_dir).unwrap();
    open(&nobody_dir, 0o777);
    let out = run_as("nobody");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("working-dir") && err.contains("belongs to uid 0"), "{err}");
}

/// A job server started under `UMask=0077` (systemd services often are): the directories and
/// files a root engine makes for the addon's root (netns builds the whole root, bwrap's /etc is
/// laid out by the engine) are still readable by the addon's unprivileged identity. netns did
/// not start at all under umask 077 ("cannot create namespaces ... Permission denied").
#[test]
fn a_strict_umask_does_not_shut_the_addon_out_of_its_root() {
    let script = "test -r /etc/passwd && test -x /etc && test -r /etc/ld.so.cache || exit 3\n\
                  id -un >&2\necho '{}'\n";
    for sandbox in ["netns", "bwrap"] {
        if !require(sandbox) {
            continue;
        }
        let w = World::new(sandbox, "");
        let addon = w.addon("umask", PURE, script);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg("umask 077; exec \"$@\"")
            .arg("sh")
            .arg(env!("CARGO_BIN_EXE_addon"))
            .args(["run", "--json", "--config"])
            .arg(&w.config)
            .arg(&addon)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{sandbox}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
        assert_eq!(v["addons"][0]["result"], "success", "{sandbox}: {v}\n{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(v["addons"][0]["sandbox"], sandbox, "{v}");
    }
}
