//! The swarm plugin (`addon-runner-swarm`) on the single-node swarm and the registries
//! scripts/test-all starts (`docker swarm init --advertise-addr 127.0.0.1`; Debian's
//! docker-registry on 127.0.0.1:5000 without authentication and on 127.0.0.1:5001 with htpasswd
//! authentication, the user and password in /var/tmp/addon-test-registry/). The conformance
//! checks and the hostile kit run through it in conformance.rs; here: many runs at once leave
//! nothing behind, a killed engine's services are reaped, a second engine with an empty cache
//! finds the image in the registry, registry authentication, and the errors of a daemon that is
//! no swarm manager and of a registry that is not there.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// The registry with authentication, and its credentials (scripts/test-all writes them).
const AUTH_REGISTRY: &str = "127.0.0.1:5001";
const AUTH_DIR: &str = "/var/tmp/addon-test-registry";

/// A world whose only runner is the swarm plugin with `config` (YAML flow mapping), or None
/// (after [`missing`]) where it is not available.
fn swarm_world(config: &str) -> Option<World> {
    let w = World::new("auto", "runner: [swarm]\n");
    w.add_plugin("swarm", "addon-runner-swarm", "docker", &format!("    config: {config}\n"));
    require_plugin(&w, "swarm").then_some(w)
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Services, containers, volumes and networks of the daemon.
fn daemon_things() -> BTreeSet<String> {
    let mut all = BTreeSet::new();
    for (kind, args) in [
        ("service", &["service", "ls", "-q"][..]),
        ("container", &["ps", "-aq"][..]),
        ("volume", &["volume", "ls", "-q"][..]),
        ("network", &["network", "ls", "-q"][..]),
    ] {
        all.extend(docker(args).lines().map(|l| format!("{kind} {l}")));
    }
    all
}

/// What the swarm plugin made and left: services and containers with its label.
fn swarm_leftovers(addon: &str) -> Vec<String> {
    let label = format!("label=org.addon-engine.swarm.addon={addon}");
    let mut left: Vec<String> =
        docker(&["service", "ls", "-q", "--filter", &label]).lines().map(|l| format!("service {l}")).collect();
    left.extend(docker(&["ps", "-aq", "--filter", &label]).lines().map(|l| format!("container {l}")));
    left
}

/// Waits (up to `secs`) until `f` holds.
fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..secs * 4 {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    f()
}

/// Twenty runs at once, through one engine: all succeed with their own output, the image is
/// built once, and no service, container, volume or network is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_runs_all_pass_and_leave_nothing() {
    use addon_executor::{CancellationToken, Config, Engine, RunRequest};
    let Some(w) = swarm_world("{}") else { return };
    let marker = format!("swarm-twenty-{}", std::process::id());
    let addon = w.docker_addon(
        "swarm-twenty",
        PURE,
        "#!/bin/sh\ncat arguments/user-input > $OUTPUT_DIR/n.txt\nprintf '{\"files\":[]}'\n",
        &marker,
    );
    // The VOLUME of many real images: it must not become an anonymous volume left behind.
    edit(&addon.join("Dockerfile"), "COPY run.sh /run.sh", "COPY run.sh /run.sh\nVOLUME /data");
    let before = daemon_things();
    let engine = std::sync::Arc::new(Engine::new(Config::load(&w.config).unwrap()));
    let mut runs = Vec::new();
    for i in 0..20 {
        let (engine, addon) = (engine.clone(), addon.clone());
        let out = w.path().join(format!("out-{i}"));
        runs.push(tokio::spawn(async move {
            let req = RunRequest {
                sources: vec![addon.display().to_string()],
                user_input: format!("run-{i}"),
                output_dir: Some(out.clone()),
                ..Default::default()
            };
            (i, out, engine.run(req, None, CancellationToken::new()).await)
        }));
    }
    let mut misses = 0;
    for r in runs {
        let (i, out, report) = r.await.unwrap();
        let report = report.unwrap_or_else(|e| panic!("run {i}: {e}"));
        let a = &report.addons[0];
        assert!(report.success, "run {i}: {:?} {:?}", a.result, a.error);
        assert_eq!(a.sandbox.as_deref(), Some("swarm"));
        misses += usize::from(a.cache == addon_runners::CacheUse::Miss);
        let n = std::fs::read_to_string(out.join("n.txt")).unwrap_or_else(|e| panic!("run {i}: n.txt: {e}"));
        assert_eq!(n.trim(), format!("run-{i}"), "run {i} got its own input and output");
    }
    assert_eq!(misses, 1, "one build for twenty runs");
    drop(engine);
    assert!(
        eventually(20, || swarm_leftovers("swarm-twenty-1.0").is_empty()),
        "{:?}",
        swarm_leftovers("swarm-twenty-1.0")
    );
    // Tests run side by side: what another engine made (labelled with another addon) is not
    // this one's, and what another test makes and removes comes and goes.
    let left = || -> Vec<String> {
        daemon_things()
            .difference(&before)
            .filter(|thing| !of_another_addon(thing, "swarm-twenty-1.0"))
            .cloned()
            .collect()
    };
    assert!(eventually(20, || left().is_empty()), "left behind: {:?}", left());
}

/// Whether `thing` ("service ID", "container ID", ...) carries the engine's labels naming an
/// addon other than `addon`.
fn of_another_addon(thing: &str, addon: &str) -> bool {
    let Some((kind, id)) = thing.split_once(' ') else { return false };
    let labels = match kind {
        "service" => docker(&["service", "inspect", "-f", "{{json .Spec.Labels}}", id]),
        "container" => docker(&["inspect", "-f", "{{json .Config.Labels}}", id]),
        "volume" => docker(&["volume", "inspect", "-f", "{{json .Labels}}", id]),
        _ => docker(&["network", "inspect", "-f", "{{json .Labels}}", id]),
    };
    labels.contains("org.addon-engine") && !labels.contains(&format!("\"{addon}\""))
}

/// An engine killed with its plugin (SIGKILL, both: nothing of them can clean up) leaves its
/// service running; the next engine's plugin removes it, and its task's container, when it
/// first looks at the swarm.
#[test]
fn a_killed_engines_services_are_reaped_by_the_next() {
    let Some(w) = swarm_world("{}") else { return };
    let marker = format!("swarm-reap-{}", std::process::id());
    let addon = w.docker_addon("swarm-reap", PURE, "#!/bin/sh\necho started >&2\nsleep 600\n", &marker);
    let mut engine = w.spawn_until(&addon, "started");
    let label = "label=org.addon-engine.swarm.addon=swarm-reap-1.0";
    let services = docker(&["service", "ls", "-q", "--filter", label]);
    assert_eq!(services.lines().count(), 1, "the run's service: {services}");
    // The plugin is the engine's child: kill both at once.
    let plugins = Command::new("pgrep").args(["-P", &engine.id().to_string()]).output().unwrap();
    engine.kill().unwrap();
    for pid in String::from_utf8_lossy(&plugins.stdout).lines() {
        let _ = Command::new("kill").args(["-9", pid]).status();
    }
    let _ = engine.wait();
    std::thread::sleep(Duration::from_secs(1));
    // Nothing of this engine removed it; another engine's plugin of this host may have reaped
    // it already (tests run side by side, and every swarm probe reaps).
    let left = docker(&["service", "ls", "-q", "--filter", label]).lines().count();
    assert!(left <= 1, "one service: {left}");
    if left == 0 {
        eprintln!("another engine of this host reaped it first");
    }
    let v = w.cli_json(&["runners", "check", "swarm", "--only", "available"]);
    assert_eq!(v["checks"][0]["status"], "pass", "{v}");
    assert!(
        eventually(20, || swarm_leftovers("swarm-reap-1.0").is_empty()),
        "the next engine reaped the service and its container: {:?}",
        swarm_leftovers("swarm-reap-1.0")
    );
    assert!(processes_with("sleep 600").is_empty(), "the addon's process is gone");
}

/// The authenticating registry's plugin configuration, or None (after [`missing`]).
fn auth_config() -> Option<String> {
    let password = Path::new(AUTH_DIR).join("password");
    let user = std::fs::read_to_string(Path::new(AUTH_DIR).join("user")).unwrap_or_default();
    if user.trim().is_empty() || !password.exists() {
        missing(&format!(
            "the authenticating test registry's credentials in {AUTH_DIR} (scripts/test-all writes them)"
        ));
        return None;
    }
    Some(format!(
        "{{registry: \"{AUTH_REGISTRY}\", registry-username: {}, registry-password-file: {}}}",
        user.trim(),
        password.display()
    ))
}

/// Two engines on two hosts share a registry that asks for a password: the second, with an
/// empty cache, finds the image there and does not build. With an open registry it builds: a tag
/// there may have been pushed by anyone who reaches it (an addon with the host's network).
#[test]
fn a_second_engine_with_an_empty_cache_does_not_build_again() {
    let Some(auth) = auth_config() else { return };
    let Some(first) = swarm_world(&auth) else { return };
    let marker = format!("swarm-once-{}", std::process::id());
    let addon = first.docker_addon("swarm-once", PURE, "#!/bin/sh\nprintf '{}'\n", &marker);
    let (out, v) = first.run(&[addon.to_str().unwrap()]);
    assert_eq!(v["addons"][0]["result"], "success", "{v} {}", String::from_utf8_lossy(&out.stderr));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("Step 1/"), "the first engine built: {log}");
    assert!(log.contains(&format!("pushed {AUTH_REGISTRY}/")), "and pushed: {log}");
    let second = swarm_world(&auth).unwrap();
    let (out, v) = second.run(&[addon.to_str().unwrap()]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(v["addons"][0]["result"], "success", "{v} {log}");
    assert!(!log.contains("Step 1/"), "the second engine did not build: {log}");
    assert!(log.contains("is in the registry already"), "it says where the image came from: {log}");

    let open = swarm_world("{}").unwrap();
    let (out, _) = open.run(&[addon.to_str().unwrap()]);
    let log = String::from_utf8_lossy(&out.stderr);
    let open_again = swarm_world("{}").unwrap();
    let (out2, v) = open_again.run(&[addon.to_str().unwrap()]);
    let log2 = String::from_utf8_lossy(&out2.stderr);
    assert_eq!(v["addons"][0]["result"], "success", "{v} {log2}");
    assert!(log.contains("pushed 127.0.0.1:5000/") && log2.contains("pushed 127.0.0.1:5000/"), "{log2}");
    assert!(!log2.contains("is in the registry already"), "an open registry's tag is not trusted: {log2}");
}

/// The registry that asks for a password: a plugin given it pushes and runs; one given a wrong
/// one fails the build and says the registry refused it.
#[test]
fn a_registry_with_authentication() {
    let Some(auth) = auth_config() else { return };
    let Some(w) = swarm_world(&auth) else { return };
    let user = std::fs::read_to_string(Path::new(AUTH_DIR).join("user")).unwrap_or_default();
    let user = user.trim();
    let marker = format!("swarm-auth-{}", std::process::id());
    let addon = w.docker_addon("swarm-auth", PURE, "#!/bin/sh\nprintf '{}'\n", &marker);
    let (out, v) = w.run(&[addon.to_str().unwrap()]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(v["addons"][0]["result"], "success", "{v} {log}");
    assert!(log.contains(&format!("pushed {AUTH_REGISTRY}/")), "{log}");

    let wrong = w.path().join("wrong-password");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let bad = World::new("auto", "runner: [swarm]\n");
    bad.add_plugin(
        "swarm",
        "addon-runner-swarm",
        "docker",
        &format!(
            "    config: {{registry: \"{AUTH_REGISTRY}\", registry-username: {user}, registry-password-file: {}}}\n",
            wrong.display()
        ),
    );
    let other = bad.docker_addon("swarm-auth-bad", PURE, "#!/bin/sh\nprintf '{}'\n", &format!("{marker}-bad"));
    let a = bad.run_execution_failed(&[other.to_str().unwrap()]);
    let err = a.error.to_lowercase();
    assert!(err.contains("push") && err.contains(AUTH_REGISTRY), "the error names the push and the registry: {err}");
    assert!(err.contains("unauthorized") || err.contains("authentication"), "and why: {err}");
}

/// A registry nobody serves: the plugin is unavailable and says which registry and what to do.
#[test]
fn an_unreachable_registry_is_said_plainly() {
    if !require_docker() {
        return;
    }
    let w = World::new("auto", "runner: [swarm]\n");
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    w.add_plugin("swarm", "addon-runner-swarm", "docker", &format!("    config: {{registry: \"127.0.0.1:{port}\"}}\n"));
    let v = w.cli_json(&["runners", "check", "swarm", "--only", "available"]);
    let detail = v["checks"][0]["detail"].as_str().unwrap_or_default().to_string();
    assert_ne!(v["checks"][0]["status"], "pass", "{v}");
    assert!(detail.contains(&format!("registry 127.0.0.1:{port} cannot be reached")), "{detail}");
    assert!(detail.contains("set registry"), "it says what to do: {detail}");
}

/// A Docker daemon that is no swarm manager (a second daemon, started here on a socket of its
/// own and in a network namespace of its own, in no swarm): the plugin is unavailable and says
/// how to make one; the host's daemon keeps its bridge.
#[test]
fn a_daemon_that_is_no_swarm_manager_is_said_plainly() {
    if !require_root("a second Docker daemon needs root") || !require_docker() {
        return;
    }
    let dir = tempfile::Builder::new().prefix("addon-dockerd-").tempdir_in("/var/tmp").unwrap();
    let sock = dir.path().join("docker.sock");
    // In a network namespace of its own: a second daemon in the host's would take the host
    // daemon's docker0 bridge away (seen: `--bridge none` removed it).
    let mut daemon = Command::new("unshare")
        .args(["--net", "--", "dockerd"])
        .arg("--host")
        .arg(format!("unix://{}", sock.display()))
        .arg("--data-root")
        .arg(dir.path().join("data"))
        .arg("--exec-root")
        .arg(dir.path().join("exec"))
        .arg("--pidfile")
        .arg(dir.path().join("dockerd.pid"))
        .args(["--bridge", "none", "--iptables=false", "--ip-masq=false"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("dockerd.log")).unwrap())
        .spawn()
        .unwrap();
    let up = eventually(30, || {
        Command::new("docker")
            .arg("--host")
            .arg(format!("unix://{}", sock.display()))
            .arg("info")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let w = World::new("auto", "runner: [swarm]\n");
    w.add_plugin(
        "swarm",
        "addon-runner-swarm",
        "docker",
        &format!("    config: {{host: \"unix://{}\"}}\n", sock.display()),
    );
    let v = up.then(|| w.cli_json(&["runners", "check", "swarm", "--only", "available"]));
    // (unshare execs dockerd: the child is the daemon.)
    let _ = Command::new("kill").arg(daemon.id().to_string()).status();
    let _ = daemon.wait();
    let bridge = Command::new("ip").args(["link", "show", "docker0"]).output().unwrap();
    assert!(bridge.status.success(), "the host daemon's docker0 bridge is still there");
    assert!(
        up,
        "the second daemon did not start: {}",
        std::fs::read_to_string(dir.path().join("dockerd.log")).unwrap_or_default()
    );
    let v = v.unwrap();
    let detail = v["checks"][0]["detail"].as_str().unwrap_or_default().to_string();
    assert_ne!(v["checks"][0]["status"], "pass", "{v}");
    assert!(detail.contains("is not a swarm manager") && detail.contains("inactive"), "{detail}");
    assert!(detail.contains("docker swarm init"), "it says how: {detail}");
}

/// An image that asks the dynamic loader to preload its own library, through `LD_PRELOAD` in
/// its environment and through its `/etc/ld.so.preload`: the helper (which starts through a
/// loader, with capabilities the addon never gets) loads neither. The library, were it loaded,
/// would leave a file in the run's output.
#[test]
fn an_image_cannot_preload_a_library_into_the_helper() {
    let Some(w) = swarm_world("{}") else { return };
    let marker = format!("swarm-preload-{}", std::process::id());
    let addon = w.docker_addon("swarm-preload", PURE, "#!/bin/sh\nprintf '{}'\n", &marker);
    std::fs::write(
        addon.join("evil.c"),
        "#include <fcntl.h>\n#include <unistd.h>\n__attribute__((constructor)) static void evil(void) {\n\
         int f = open(\"/mnt/output/hijacked\", O_WRONLY | O_CREAT, 0644);\n\
         if (f >= 0) { write(f, \"helper\\n\", 7); close(f); }\n}\n",
    )
    .unwrap();
    let built = Command::new("gcc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(addon.join("evil.so"))
        .arg(addon.join("evil.c"))
        .status()
        .unwrap();
    assert!(built.success(), "gcc");
    std::fs::write(addon.join("ld.so.preload"), "/evil.so\n").unwrap();
    edit(
        &addon.join("Dockerfile"),
        "COPY run.sh /run.sh",
        "COPY run.sh /run.sh\nCOPY evil.so /evil.so\nCOPY ld.so.preload /etc/ld.so.preload\nENV LD_PRELOAD=/evil.so",
    );
    let out_dir = w.path().join("out");
    let (out, v) = w.run(&["--output-dir", out_dir.to_str().unwrap(), addon.to_str().unwrap()]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(v["addons"][0]["result"], "success", "{v} {log}");
    assert!(!out_dir.join("hijacked").exists(), "the image's library ran in the helper");
}

/// An `image:` addon (no Dockerfile) is mirrored: the image the manager's daemon has is given
/// the helper and pushed, and the run pulls it by digest like a built one.
#[test]
fn an_image_addon_is_mirrored_to_the_registry() {
    let Some(w) = swarm_world("{}") else { return };
    let marker = format!("swarm-image-{}", std::process::id());
    let src = w.docker_addon("swarm-image-src", PURE, "#!/bin/sh\necho image-addon >&2\nprintf '{}'\n", &marker);
    let tag = format!("addon-test-swarm-image:{}", std::process::id());
    docker_build(&tag, &src);
    let addon = w.addon_dir(
        "swarm-image",
        &format!("meta:\n  name: swarm-image\n  version: \"1.0\"\nrunner:\n  docker:\n    enable: true\n    image: {tag}\n{PURE}"),
    );
    let (out, v) = w.run(&[addon.to_str().unwrap()]);
    let log = String::from_utf8_lossy(&out.stderr);
    let _ = Command::new("docker").args(["rmi", "-f", &tag]).output();
    assert_eq!(v["addons"][0]["result"], "success", "{v} {log}");
    assert!(log.contains(&format!("mirroring {tag} to 127.0.0.1:5000")), "{log}");
    assert!(log.contains("pushed 127.0.0.1:5000/addon-engine/swarm-image@sha256:"), "{log}");
    assert!(log.contains("image-addon"), "the image's own program ran: {log}");
}

/// An image with a user of its own (`USER app`, named in its /etc/passwd), as real images are:
/// the addon runs as that user with no capabilities and no new privileges, HOME is the user's
/// home as Docker gives it, and it writes its output, CACHE_DIR and TMPDIR.
#[test]
fn an_image_with_a_user_of_its_own_runs_as_that_user() {
    let Some(w) = swarm_world("{}") else { return };
    let marker = format!("swarm-user-{}", std::process::id());
    let script = "#!/bin/sh\nexec 3>&1 1>&2\nid\necho home=$HOME\ngrep -E 'CapEff|NoNewPrivs' /proc/self/status\n\
                  echo hi > $OUTPUT_DIR/out.txt && echo c > $CACHE_DIR/c.txt && touch $TMPDIR/t && echo wrote-all\n\
                  printf '{\"files\":[]}' >&3\n";
    let addon = w.docker_addon("swarm-user", PURE, script, &marker);
    std::fs::write(addon.join("passwd"), "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n")
        .unwrap();
    std::fs::write(addon.join("group"), "root:x:0:\napp:x:1000:\n").unwrap();
    edit(
        &addon.join("Dockerfile"),
        "COPY run.sh /run.sh",
        "COPY run.sh /run.sh\nCOPY passwd /etc/passwd\nCOPY group /etc/group\nUSER app",
    );
    let out_dir = w.path().join("out");
    let (out, v) = w.run(&["--output-dir", out_dir.to_str().unwrap(), addon.to_str().unwrap()]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(v["addons"][0]["result"], "success", "{v} {log}");
    assert!(log.contains("uid=1000(app) gid=1000(app)"), "{log}");
    assert!(log.contains("home=/home/app"), "{log}");
    assert!(log.contains("CapEff:\t0000000000000000") && log.contains("NoNewPrivs:\t1"), "{log}");
    assert!(log.contains("wrote-all"), "{log}");
    assert_eq!(std::fs::read_to_string(out_dir.join("out.txt")).unwrap(), "hi\n");
}
