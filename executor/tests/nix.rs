//! The nix-flake runner against the real nix (offline flakes without inputs): build once, run
//! with the contract in every sandbox, failed builds, and GC protection while the entry lives.
//! One test on purpose: it runs the store's garbage collector, which must not race other builds.

mod common;

use std::process::Command;

use common::*;

const CONTRACT: &str = r#"
echo "args=$*" >&2
echo "cwd=$(pwd)" >&2
echo "ADDON_DIR=$ADDON_DIR" >&2
echo "SECRET=${SECRET_TOKEN-unset}" >&2
echo "ifaces=$(tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sort | tr '\n' ' ')" >&2
echo "prog=$0" >&2
echo nix > "$OUTPUT_DIR/nix.txt"
echo '{"newItems": [{"files": ["nix.txt"]}]}'
"#;

fn store_path_of(w: &World) -> String {
    let bucket = w.path().join("cache/nix-v1");
    let entry = std::fs::read_dir(&bucket)
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir() && !e.file_name().to_string_lossy().starts_with('.'))
        .unwrap();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(entry.path().join("entry.json")).unwrap()).unwrap();
    meta["data"]["out"].as_str().unwrap().to_string()
}

#[test]
fn nix_flake_runner() {
    if !require_nix() {
        return;
    }
    let marker = format!("m{}", std::process::id());
    for sandbox in ["bwrap", "netns", "nspawn"] {
        if !require(sandbox) {
            continue;
        }
        let w = World::new(sandbox, NIX_CONFIG);
        let addon = w.nix_addon("nixa", PURE, CONTRACT, &format!("{marker}-{sandbox}"));
        let (out, v) = w.run_env(&[addon.to_str().unwrap()], &[("SECRET_TOKEN", "hunter2")]);
        assert_eq!(out.status.code(), Some(0), "{sandbox}: {v}\n{}", String::from_utf8_lossy(&out.stderr));
        let a = &v["addons"][0];
        assert_eq!(a["runner"], "nix-flake");
        assert_eq!(a["sandbox"], sandbox);
        assert_eq!(a["cache"], "miss");
        let m = stderr_map(&out);
        assert_eq!(m["args"], "--flag arguments/user-input", "{sandbox}");
        assert_eq!(m["SECRET"], "unset");
        assert_eq!(m["ifaces"].trim(), "lo", "{sandbox}: pure means loopback only");
        assert!(m["prog"].starts_with("/nix/store/") && m["prog"].ends_with("/bin/run"), "{m:?}");
        assert!(m["ADDON_DIR"].ends_with("/addons/nixa-1.0"));
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(stderr.contains("the first program of"), "says which program: {stderr}");
        assert!(
            std::fs::read_to_string(std::path::Path::new(v["output_dir"].as_str().unwrap()).join("nix.txt")).is_ok()
        );

        // Second run: a hit, and nix is not called.
        let (out, v) = w.run(&[addon.to_str().unwrap()]);
        assert_eq!(v["addons"][0]["cache"], "hit", "{v}");
        assert!(!String::from_utf8_lossy(&out.stderr).contains("nix: "), "no nix build on a hit");

        if sandbox == "bwrap" {
            // The store path survives the garbage collector while its entry lives...
            let path = store_path_of(&w);
            let gc = Command::new("nix-collect-garbage").output().unwrap();
            assert!(gc.status.success(), "{}", String::from_utf8_lossy(&gc.stderr));
            assert!(std::path::Path::new(&path).exists(), "{path} must survive GC while cached");
            // ...and is collectable once the entry is pruned.
            let pr = Command::new(env!("CARGO_BIN_EXE_addon"))
                .args(["cache", "prune", "--max-size", "0", "--config", w.config.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(pr.status.success());
            let del = Command::new("nix-store").args(["--delete", &path]).output().unwrap();
            assert!(
                del.status.success(),
                "after prune the path is no longer rooted: {}",
                String::from_utf8_lossy(&del.stderr)
            );
            assert!(!std::path::Path::new(&path).exists());
        }
    }

    // A failing flake is execution-failed with the log's tail, and nothing is cached.
    let w = World::new("auto", NIX_CONFIG);
    let addon = w.nix_addon("nixbad", PURE, "echo '{}'", &format!("{marker}-bad"));
    let flake = std::fs::read_to_string(addon.join("flake.nix")).unwrap();
    std::fs::write(
        addon.join("flake.nix"),
        flake.replace("/bin/busybox mkdir", "echo build-went-wrong >&2; exit 3; /bin/busybox mkdir"),
    )
    .unwrap();
    let (out, v) = w.run(&[addon.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let a = &v["addons"][0];
    assert_eq!(a["result"], "execution-failed", "{a}");
    let err = a["error"].as_str().unwrap();
    assert!(err.contains("nix build failed") && err.contains("build-went-wrong"), "{err}");
    assert!(
        !w.path().join("cache/nix-v1").exists()
            || std::fs::read_dir(w.path().join("cache/nix-v1"))
                .unwrap()
                .flatten()
                .all(|e| !e.path().join("entry.json").exists())
    );
}
