//! Addons written the way published Docspell addons are written (not copies of them), each run on
//! every runner its sections allow:
//! - rotate-pdf-shaped: Guile with guile-json, qpdf and pdftotext on a Docspell item; nix
//!   (flake-utils' shape: `defaultPackage.<system>` only), docker and trivial sections; pure; its
//!   JSON without a trailing newline; the second run warm (no compilation);
//! - audio-files-shaped: a shell addon with nix and trivial sections that calls a web service
//!   while it runs (impure), here a test host in a network namespace;
//! - a Dockerfile on a Debian-like base whose `RUN` step fetches from the network while it builds;
//! - the example addon's program shape (Python with its C modules) as a trivial addon.
//!
//! (The example-shaped `image:` addon that runs as a non-root `USER` is in oci.rs.)

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// One test per runner: `each_runner! { f; name => (args...), ... }` calls `f(args...)`.
macro_rules! each_runner {
    ($f:ident; $($name:ident => ($($arg:expr),*),)*) => {$(
        #[test]
        fn $name() {
            $f($($arg),*);
        }
    )*};
}

const COMPILING: &str = ";;; compiling";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The engine configuration for `runner` (a built-in, the gVisor plugin as `gvisor` serving
/// trivial and `gvisor-nix` serving nix, or the VM plugin as `vm` and `vm-nix`), or None (after [`missing`]) when it is not here.
fn world_for(runner: &str, sandbox: &str) -> Option<World> {
    let ready = match runner {
        "trivial" => require(sandbox),
        "docker" => require_docker(),
        "oci" => require_oci(),
        "nix-flake" => require_nix(),
        _ => true,
    };
    if !ready {
        return None;
    }
    let config = match runner {
        "nix-flake" => nix_config(""),
        r => format!("runner: [{r}]\n"),
    };
    let w = World::new(sandbox, &config);
    match runner {
        "gvisor" => w.add_plugin("gvisor", "addon-runner-gvisor", "trivial", ""),
        "vm" => w.add_plugin("vm", "addon-runner-vm", "trivial", ""),
        "vm-nix" => w.add_plugin(
            "vm-nix",
            "addon-runner-vm",
            "nix",
            "    config: {nix: {extra-args: [--offline, --option, extra-sandbox-paths, /bin/busybox]}}\n",
        ),
        "gvisor-nix" => w.add_plugin(
            "gvisor-nix",
            "addon-runner-gvisor",
            "nix",
            "    config: {nix: {extra-args: [--offline, --option, extra-sandbox-paths, /bin/busybox]}}\n",
        ),
        _ => {}
    }
    if (runner.starts_with("gvisor") || runner.starts_with("vm"))
        && (!require_plugin(&w, runner) || (runner.ends_with("-nix") && !require_nix()))
    {
        return None;
    }
    Some(w)
}

/// The rotate-pdf-shaped addon (tests/fixtures/rotate-addon with nix, docker and trivial
/// sections), copied into `w`. The image (`image`: its root assembled from the host's busybox,
/// guile with guile-json, qpdf and pdftotext, since nothing can be pulled here) installs the
/// program and runs it once while building, so its compiled code is in the image's HOME.
fn rotate_shaped(w: &World, marker: &str, image: bool) -> PathBuf {
    let root = w.path().join("addons-src/rotate-test");
    std::fs::create_dir_all(root.parent().unwrap()).unwrap();
    let ok = std::process::Command::new("cp").arg("-a").arg(fixtures().join("rotate-addon")).arg(&root).status();
    assert!(ok.unwrap().success());
    std::fs::write(
        root.join("docspell-addon.yml"),
        "meta:\n  name: rotate-test\n  version: \"0.1\"\n  description: Rotates the item's PDFs.\n\
         triggers:\n  - existing-item\nrunner:\n  nix:\n    enable: true\n  docker:\n    enable: true\n\
         \x20 trivial:\n    enable: true\n    exec: src/addon.scm\n\
         options:\n  networking: false\n  collectOutput: true\n",
    )
    .unwrap();
    std::fs::write(root.join("flake.nix"), flake_utils_flake("rotate-test", "src/addon.scm", marker)).unwrap();
    std::fs::write(
        root.join("Dockerfile"),
        format!(
            "FROM scratch\nCOPY rootfs/ /\nRUN [\"/usr/bin/busybox\", \"--install\", \"-s\", \"/usr/bin\"]\n\
             ENV PATH=/usr/bin HOME=/root\nLABEL test.marker={marker}\nCOPY src/addon.scm /opt/addon/addon.scm\n\
             RUN mkdir -p /tmp /root && (/opt/addon/addon.scm /none 2>/dev/null; true)\n\
             ENTRYPOINT [\"/opt/addon/addon.scm\"]\n"
        ),
    )
    .unwrap();
    if image {
        host_rootfs(
            &root.join("rootfs"),
            &["/usr/bin/busybox", "/usr/bin/guile", "/usr/bin/qpdf", "/usr/bin/pdftotext"],
            &[
                "/usr/lib/x86_64-linux-gnu/guile/3.0",
                "/usr/share/guile/3.0",
                "/usr/share/guile/site/3.0",
                "/usr/lib/x86_64-linux-gnu/gconv",
            ],
        );
    }
    root
}

/// Two runs of the rotate-pdf-shaped addon on an item through `runner`: both rotate the PDF and
/// extract its text; the second starts warm.
fn rotate_on(runner: &str, sandbox: &str) {
    let Some(w) = world_for(runner, sandbox) else { return };
    let marker = format!("rotate-{runner}-{sandbox}-{}", std::process::id());
    let addon = rotate_shaped(&w, &marker, matches!(runner, "docker" | "oci"));
    let item = fixtures().join("rotate-item");
    let out_dir = w.path().join("out");
    let args = [
        addon.to_str().unwrap(),
        "--item",
        item.to_str().unwrap(),
        "--args",
        r#"{"degree": "90"}"#,
        "--output-dir",
        out_dir.to_str().unwrap(),
    ];
    for run in 1..=2 {
        let (out, v) = w.run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let a = &v["addons"][0];
        assert_eq!(a["result"], "success", "{runner}/{sandbox} run {run}: {v}\n{stderr}");
        assert_eq!(a["runner"], runner, "{a}");
        assert_eq!(a["output"]["files"][0]["itemId"], "item-7");
        assert_eq!(a["output"]["files"][0]["pdfFiles"]["att-1"], "att-1.pdf");
        let text = std::fs::read_to_string(out_dir.join("att-1.txt")).unwrap();
        assert!(text.contains("Hello from a Docspell item"), "{text}");
        let info = std::process::Command::new("pdfinfo").arg(out_dir.join("att-1.pdf")).output().unwrap();
        assert!(String::from_utf8_lossy(&info.stdout).contains("Page rot:        90"), "the PDF is rotated");
        let compiled: Vec<&str> = stderr.lines().filter(|l| l.contains(COMPILING) && !l.contains("build:")).collect();
        if run == 2 || matches!(runner, "docker" | "oci") {
            assert!(compiled.is_empty(), "{runner}/{sandbox} run {run} must start warm: {compiled:?}");
        }
    }
}

each_runner! {rotate_on;
    rotate_pdf_shaped_on_trivial_in_bwrap => ("trivial", "bwrap"),
    rotate_pdf_shaped_on_trivial_in_netns => ("trivial", "netns"),
    rotate_pdf_shaped_on_trivial_in_nspawn => ("trivial", "nspawn"),
    rotate_pdf_shaped_on_gvisor => ("gvisor", "auto"),
    rotate_pdf_shaped_on_docker => ("docker", "auto"),
    rotate_pdf_shaped_on_oci => ("oci", "auto"),
    rotate_pdf_shaped_on_nix_flake => ("nix-flake", "auto"),
    rotate_pdf_shaped_on_gvisor_nix => ("gvisor-nix", "auto"),
    rotate_pdf_shaped_on_vm => ("vm", "auto"),
    rotate_pdf_shaped_on_vm_nix => ("vm-nix", "auto"),
}

/// The audio-files-shaped addon: nix and trivial sections, impure (it calls a web service while
/// it runs, here `http://<web>/transcript`), a shell program writing a file into its output
/// directory and its JSON without a trailing newline.
fn audio_shaped(w: &World, web: &WebHost, marker: &str) -> PathBuf {
    let root = w.path().join("addons-src/audio-test");
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::write(
        root.join("docspell-addon.yml"),
        "meta:\n  name: audio-test\n  version: \"0.2\"\ntriggers:\n  - final-process-item\n\
         runner:\n  nix:\n    enable: true\n  trivial:\n    enable: true\n    exec: src/addon.sh\n\
         options:\n  networking: true\n  collectOutput: true\n",
    )
    .unwrap();
    // Its HTTP client is Guile's (web client): busybox wget fails about half its reads through
    // gVisor's host network (runsc 20221219's hostinet returns EAGAIN to a blocking read; seen
    // with a bare `runsc run` as well).
    let script = format!(
        "#!/bin/sh\nset -e\n# {marker}\n\
         guile -c '(use-modules (web client) (ice-9 binary-ports)) \
         (call-with-values (lambda () (http-get \"http://{}/transcript\" #:decode-body? #f)) \
         (lambda (r body) (call-with-output-file (string-append (getenv \"OUTPUT_DIR\") \"/transcript.txt\") \
         (lambda (p) (put-bytevector p body)))))'\n\
         echo \"fetched=$(wc -c < \"$OUTPUT_DIR/transcript.txt\")\" >&2\n\
         printf '{{\"files\":[{{\"itemId\":\"item-7\",\"textFiles\":{{\"att-1\":\"transcript.txt\"}}}}]}}'\n",
        web.addr
    );
    let path = root.join("src/addon.sh");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(root.join("flake.nix"), flake_utils_flake("audio-test", "src/addon.sh", marker)).unwrap();
    root
}

fn audio_on(runner: &str, sandbox: &str, slot: u8) {
    let Some(w) = world_for(runner, sandbox) else { return };
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("transcript"), "the words spoken in the recording").unwrap();
    let Some(web) = WebHost::start(slot, www.path()) else { return };
    let addon = audio_shaped(&w, &web, &format!("audio-{runner}-{sandbox}-{}", std::process::id()));
    let out_dir = w.path().join("out");
    let (out, v) = w.run(&[addon.to_str().unwrap(), "--output-dir", out_dir.to_str().unwrap()]);
    let a = &v["addons"][0];
    assert_eq!(a["result"], "success", "{runner}/{sandbox}: {v}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(a["runner"], runner, "{a}");
    assert_eq!(a["pure"], false, "{a}");
    assert_eq!(a["output"]["files"][0]["textFiles"]["att-1"], "transcript.txt");
    let text = std::fs::read_to_string(out_dir.join("transcript.txt")).unwrap();
    assert_eq!(text, "the words spoken in the recording");
}

each_runner! {audio_on;
    audio_files_shaped_on_trivial_in_bwrap => ("trivial", "bwrap", 2),
    audio_files_shaped_on_trivial_in_netns => ("trivial", "netns", 3),
    audio_files_shaped_on_trivial_in_nspawn => ("trivial", "nspawn", 4),
    audio_files_shaped_on_gvisor => ("gvisor", "auto", 5),
    audio_files_shaped_on_nix_flake => ("nix-flake", "auto", 6),
    audio_files_shaped_on_gvisor_nix => ("gvisor-nix", "auto", 7),
    audio_files_shaped_on_vm => ("vm", "auto", 8),
}

/// A pure addon whose Dockerfile starts from a Debian-like base in the Docker daemon and whose
/// `RUN` step downloads its tool (from a test host in a network namespace): `marker` makes each
/// build its own.
fn fetching_addon(w: &World, web: &WebHost, base: &str, marker: &str) -> std::path::PathBuf {
    let root = w.addon_dir(
        marker,
        &format!("meta:\n  name: fetching\n  version: \"1.0\"\nrunner:\n  docker:\n    enable: true\n{PURE}"),
    );
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
        // The error carries the last lines; the whole log is kept in a file it names.
        let log = err.split("(the whole build log: ").nth(1).and_then(|r| r.split(')').next()).expect(err);
        let text = std::fs::read_to_string(log).unwrap();
        assert!(text.contains("wget") && text.contains(&web.addr), "{runner}: {log}: {text}");
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

/// The example addon's program shape (Python, as tiborrr/docspell-addon-example writes it) as a
/// trivial addon: Debian's python3 and its C modules, the user's input read from the file named
/// by the last argument, a file written into OUTPUT_DIR, the JSON printed without a newline.
fn python_on(runner: &str, sandbox: &str) {
    if !Path::new("/usr/bin/python3").is_file() {
        missing("the Python addon runs Debian's /usr/bin/python3 (apt-get install python3)");
        return;
    }
    let Some(w) = world_for(runner, sandbox) else { return };
    let root = w.path().join("addons-src/python-test");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(
        root.join("docspell-addon.yml"),
        "meta:\n  name: python-test\n  version: \"0.3\"\nrunner:\n  trivial:\n    enable: true\n    exec: addon.py\n\
         options:\n  networking: false\n  collectOutput: true\n",
    )
    .unwrap();
    let program = root.join("addon.py");
    std::fs::write(
        &program,
        "#!/usr/bin/python3\nimport json, os, sys, pathlib, hashlib\n\
         user = json.loads(pathlib.Path(sys.argv[-1]).read_text())\n\
         out = pathlib.Path(os.environ['OUTPUT_DIR'])\n\
         (out / 'summary.txt').write_text('hello ' + user['name'] + ' ' + hashlib.sha256(b'x').hexdigest()[:8])\n\
         print('python', sys.version.split()[0], file=sys.stderr)\n\
         sys.stdout.write(json.dumps({'newItems': [{'metadata': {'tags': ['python']}, 'files': ['summary.txt']}]}))\n",
    )
    .unwrap();
    std::fs::set_permissions(&program, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out_dir = w.path().join("out");
    let (out, v) =
        w.run(&[root.to_str().unwrap(), "--args", r#"{"name": "Ada"}"#, "--output-dir", out_dir.to_str().unwrap()]);
    let a = &v["addons"][0];
    assert_eq!(a["result"], "success", "{runner}/{sandbox}: {v}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(a["runner"], runner, "{a}");
    assert_eq!(a["output"]["newItems"][0]["metadata"]["tags"][0], "python", "{a}");
    assert_eq!(std::fs::read_to_string(out_dir.join("summary.txt")).unwrap(), "hello Ada 2d711642");
}

each_runner! {python_on;
    python_addon_on_trivial_in_bwrap => ("trivial", "bwrap"),
    python_addon_on_trivial_in_netns => ("trivial", "netns"),
    python_addon_on_trivial_in_nspawn => ("trivial", "nspawn"),
    python_addon_on_gvisor => ("gvisor", "auto"),
    python_addon_on_vm => ("vm", "auto"),
}
