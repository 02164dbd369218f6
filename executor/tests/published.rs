//! Addons written the way published Docspell addons are written (not copies of them), each run on
//! every runner its sections allow: a Dockerfile on a Debian-like base whose `RUN` step fetches
//! from the network while it builds.

mod common;

use common::*;

const PURE: &str = "options:\n  networking: false\n  collectOutput: true\n";

/// A pure addon whose Dockerfile starts from a Debian-like base in the Docker daemon and whose
/// `RUN` step downloads its tool (from a test host in a network namespace): `marker` makes each
/// build its own.
fn fetching_addon(w: &World, web: &WebHost, base: &str, marker: &str) -> std::path::PathBuf {
    let root = w.path().join("addons-src").join(marker);
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(
        root.join("docspell-addon.yml"),
        format!("meta:\n  name: fetching\n  version: \"1.0\"\nrunner:\n  docker:\n    enable: true\n{PURE}"),
    )
    .unwrap();
    std::fs::write(
        root.join("Dockerfile"),
        format!(
            "FROM {base}\nLABEL test.marker={marker}\n\
             RUN wget -q -O /usr/local/bin/tool http://{}/tool && chmod 755 /usr/local/bin/tool\n\
             ENTRYPOINT [\"/usr/local/bin/tool\"]\n",
            web.addr
        ),
    )
    .unwrap();
    root
}

/// Builds are not the run: a pure addon's Dockerfile reaches what `network.build` says (by
/// default, the network), its base image comes from a local store before any registry, and a
/// build that fails for want of either names the setting that changes it. On docker and on oci.
#[test]
fn a_dockerfile_that_fetches_while_it_builds_builds_on_docker_and_oci() {
    if !require_docker() || !require_oci() {
        return;
    }
    let www = tempfile::tempdir().unwrap();
    // The downloaded tool: prints its output without a trailing newline.
    std::fs::write(
        www.path().join("tool"),
        "#!/bin/sh\necho fetched=yes >&2\nprintf '{\"commands\":[{\"command\":\"item-update\",\"itemId\":\"i1\",\"actions\":[{\"action\":\"add-tags\",\"tags\":[\"fetched\"]}]}]}'",
    )
    .unwrap();
    let Some(web) = WebHost::start(1, www.path()) else { return };
    let pid = std::process::id();
    // The base image is in the Docker daemon only: oci copies it from there.
    let _ = std::process::Command::new("buildah").args(["rmi", "addon-test-debian:bookworm"]).output();
    for runner in ["docker", "oci"] {
        let extra = format!("runner: [{runner}]\noci-runner: {{image-store: docker}}\nremember-failed-builds: 0s\n");
        let w = World::new("auto", &extra);
        let base = debian_like_base(&w);
        let addon = fetching_addon(&w, &web, base, &format!("fetch-{runner}-{pid}"));
        let (out, v) = w.run(&[addon.to_str().unwrap()]);
        let a = &v["addons"][0];
        assert_eq!(a["result"], "success", "{runner}: {a}\n{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(a["runner"], runner);
        assert_eq!(stderr_map(&out).get("fetched").map(String::as_str), Some("yes"), "{runner}");
        assert_eq!(a["output"]["commands"][0]["actions"][0]["tags"][0], "fetched", "{runner}: {a}");

        // With no build network, the same build fails, and says which setting gives it one.
        let w = World::new("auto", &format!("{extra}network: {{build: none}}\n"));
        let addon = fetching_addon(&w, &web, base, &format!("offline-{runner}-{pid}"));
        let (_, v) = w.run(&[addon.to_str().unwrap()]);
        let a = &v["addons"][0];
        assert_eq!(a["result"], "execution-failed", "{runner}: {a}");
        let err = a["error"].as_str().unwrap_or_default();
        assert!(err.contains("network.build: none") && err.contains("RUN"), "{runner}: {err}");
    }
    // oci reading no local store: the base image is found nowhere, and the error says where it
    // could have come from.
    let w = World::new("auto", "runner: [oci]\nremember-failed-builds: 0s\n");
    let base = debian_like_base(&w);
    let _ = std::process::Command::new("buildah").args(["rmi", base]).output();
    let addon = fetching_addon(&w, &web, base, &format!("nostore-{pid}"));
    let (_, v) = w.run(&[addon.to_str().unwrap()]);
    let err = v["addons"][0]["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains(&format!("base image {base} not found")) && err.contains("oci-runner.image-store"), "{err}");
}
