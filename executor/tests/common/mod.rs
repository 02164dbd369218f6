//! Helpers shared by the executor's integration tests: addons made on the fly, a private engine
//! configuration per test, the `addon` binary, and the runtime gate.
#![allow(dead_code)] // each test file uses a different part

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Something a test needs is not on this host (`what` says what, and how to get it): a failure
/// with ADDON_TEST_REQUIRE_RUNTIMES=1 (as in CI), else a skip. Returns false, for `if !ok`.
pub fn missing(what: &str) -> bool {
    if std::env::var("ADDON_TEST_REQUIRE_RUNTIMES").is_ok_and(|v| v == "1") {
        panic!("{what} (ADDON_TEST_REQUIRE_RUNTIMES=1 makes this a failure)");
    }
    eprintln!("SKIPPED: {what}");
    false
}

/// What `addon runners --json` says about `name` in `section` ("runners" or "sandboxes").
/// Skips (or, with ADDON_TEST_REQUIRE_RUNTIMES=1 as in CI, fails) when it is not available.
fn gate(section: &str, name: &str) -> bool {
    let out = Command::new(env!("CARGO_BIN_EXE_addon")).args(["runners", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ok = v[section].as_array().unwrap().iter().any(|s| s["name"] == name && s["available"] == true);
    ok || missing(&format!("{name} is not available on this host: {v}"))
}

/// Gate for a sandbox (bwrap, netns, nspawn).
pub fn require(sandbox: &str) -> bool {
    gate("sandboxes", sandbox)
}

/// Gate for the Docker daemon.
pub fn require_docker() -> bool {
    gate("runners", "docker")
}

/// Gate for the daemonless `oci` runner (an OCI runtime, umoci, buildah, skopeo).
pub fn require_oci() -> bool {
    gate("runners", "oci")
}

/// The OCI runtime the `oci` runner picked here (`runc` or `crun`: what results name as sandbox).
pub fn oci_runtime() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_addon")).args(["runners", "--json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let oci = v["runners"].as_array().unwrap().iter().find(|r| r["name"] == "oci").cloned().unwrap_or_default();
    oci["version"].as_str().unwrap_or("").split(' ').next().unwrap_or("").to_string()
}

/// Gate for a plugin configured in `w`.
pub fn require_plugin(w: &World, name: &str) -> bool {
    let out = Command::new(env!("CARGO_BIN_EXE_addon"))
        .args(["runners", "--json", "--config", w.config.to_str().unwrap()])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let ok = v["runners"].as_array().is_some_and(|a| a.iter().any(|r| r["name"] == name && r["available"] == true));
    ok || missing(&format!("plugin {name} is not available on this host: {v} {}", String::from_utf8_lossy(&out.stderr)))
}

/// A world whose only runner is the vm plugin (`runner: [vm]`, serving `trivial`), or None
/// (after [`missing`]) where the plugin is not available.
pub fn vm_world() -> Option<World> {
    let w = World::new("auto", "runner: [vm]\n");
    w.add_plugin("vm", "addon-runner-vm", "trivial", "");
    require_plugin(&w, "vm").then_some(w)
}

/// What results name as the sandbox of the vm plugin here: `vm-kvm`, or `vm-tcg` (software
/// emulation) where KVM does not boot a guest.
pub fn vm_sandbox(w: &World) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_addon"))
        .args(["runners", "--json", "--config", w.config.to_str().unwrap()])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let vm = v["runners"].as_array().and_then(|a| a.iter().find(|r| r["name"] == "vm").cloned()).unwrap_or_default();
    if vm["detail"].as_str().unwrap_or_default().contains("TCG") { "vm-tcg" } else { "vm-kvm" }.to_string()
}

/// A plugin program built beside the `addon` binary.
pub fn plugin_binary(program: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_addon")).with_file_name(program);
    assert!(p.is_file(), "{} is missing (cargo build --bins builds it)", p.display());
    p
}

/// Gate for nix with flakes.
pub fn require_nix() -> bool {
    gate("runners", "nix-flake")
}

/// The `key=value` lines an addon printed on stderr (as logged `[addon] key=value`).
pub fn stderr_map(out: &Output) -> std::collections::BTreeMap<String, String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| l.split_once("] ").map(|(_, rest)| rest))
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

/// A test's private world: working dir, cache dir, config file.
pub struct World {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl World {
    /// A new world; `ADDON_TEST_KEEP=1` keeps its directory for a look afterwards.
    pub fn new(sandbox: &str, extra: &str) -> World {
        let mut dir = tempfile::Builder::new().prefix("addon-test-").tempdir().unwrap();
        if std::env::var("ADDON_TEST_KEEP").is_ok_and(|v| v == "1") {
            dir.disable_cleanup(true);
            eprintln!("keeping {}", dir.path().display());
        }
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "sandbox: {sandbox}\nworking-dir: {}\ncache-dir: {}\nkill-grace: 1s\n{extra}",
                dir.path().join("work").display(),
                dir.path().join("cache").display()
            ),
        )
        .unwrap();
        World { dir, config }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Registers plugin `name` (the program `program`, copied into the world so that any user
    /// of the world can start it) serving `section`, with `extra` YAML lines of its entry.
    pub fn add_plugin(&self, name: &str, program: &str, section: &str, extra: &str) {
        let copy = self.path().join(program);
        if !copy.exists() {
            std::fs::copy(plugin_binary(program), &copy).unwrap();
        }
        // The swarm plugin puts its task helper, installed beside it, into the images it runs.
        if program == "addon-runner-swarm" && !self.path().join("addon-swarm-task").exists() {
            std::fs::copy(plugin_binary("addon-swarm-task"), self.path().join("addon-swarm-task")).unwrap();
        }
        let mut config = std::fs::read_to_string(&self.config).unwrap();
        if !config.contains("\nplugins:\n") {
            config.push_str("plugins:\n");
        }
        config.push_str(&format!("  {name}:\n    command: [{}]\n    serves: [{section}]\n{extra}", copy.display()));
        std::fs::write(&self.config, config).unwrap();
    }

    /// Writes an addon with a descriptor and a shell script `run.sh`.
    /// A new addon folder `addons-src/<dir>` holding `descriptor` as its docspell-addon.yml.
    pub fn addon_dir(&self, dir: &str, descriptor: &str) -> PathBuf {
        let root = self.path().join("addons-src").join(dir);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("docspell-addon.yml"), descriptor).unwrap();
        root
    }

    pub fn addon(&self, name: &str, options: &str, script: &str) -> PathBuf {
        let root = self.addon_dir(
            name,
            &format!(
                "meta:\n  name: {name}\n  version: \"1.0\"\nargs: [--flag, second]\nrunner:\n  trivial:\n    enable: true\n    exec: run.sh\n{options}"
            ),
        );
        let run = root.join("run.sh");
        std::fs::write(&run, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
        root
    }

    /// Writes a docker addon: a FROM-scratch image with the host's static busybox and `run.sh` as
    /// entrypoint. `marker` goes into the Dockerfile so each test builds its own image.
    pub fn docker_addon(&self, name: &str, options: &str, script: &str, marker: &str) -> PathBuf {
        let root = self.addon_dir(
            name,
            &format!("meta:\n  name: {name}\n  version: \"1.0\"\nargs: [--flag]\nrunner:\n  docker:\n    enable: true\n{options}"),
        );
        std::fs::copy("/bin/busybox", root.join("busybox")).expect("static busybox at /bin/busybox (busybox-static)");
        std::fs::write(
            root.join("Dockerfile"),
            format!("FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nENV PATH=/bin\nLABEL test.marker={marker}\nCOPY run.sh /run.sh\nENTRYPOINT [\"/bin/sh\", \"/run.sh\"]\n"),
        )
        .unwrap();
        std::fs::write(root.join("run.sh"), script).unwrap();
        root
    }

    /// A docker addon (pure, printing `{}`) whose image build first runs `step`, a Dockerfile line.
    pub fn docker_addon_building(&self, name: &str, marker: &str, step: &str) -> PathBuf {
        let addon = self.docker_addon(name, PURE, "echo '{}'", marker);
        edit(&addon.join("Dockerfile"), "ENV PATH=/bin", &format!("ENV PATH=/bin\n{step}"));
        addon
    }

    /// Starts `addon run` on `addon` in the background and returns once the addon has printed a
    /// stderr line containing `needle` (the rest of stderr is drained).
    pub fn spawn_until(&self, addon: &Path, needle: &str) -> std::process::Child {
        let mut child = Command::new(env!("CARGO_BIN_EXE_addon"))
            .args(["run", "--config", self.config.to_str().unwrap(), addon.to_str().unwrap()])
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while std::io::BufRead::read_line(&mut stderr, &mut line).unwrap() > 0 && !line.contains(needle) {
            line.clear();
        }
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        child
    }

    /// `addon ARGS --config <this world's>`, run to its end.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_addon")).args(args).arg("--config").arg(&self.config).output().unwrap()
    }

    /// `addon ARGS --json --config <this world's>`: its JSON, which it must print.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_addon"))
            .args(args)
            .arg("--json")
            .arg("--config")
            .arg(&self.config)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("addon {args:?}: no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)))
    }

    /// Runs `addon run --json` with this world's config.
    pub fn run(&self, args: &[&str]) -> (Output, serde_json::Value) {
        self.run_env(args, &[])
    }

    /// Runs `addon run --json` with this world's config: the command's exit code and what the
    /// report says of its first addon.
    pub fn run_first(&self, args: &[&str]) -> (Option<i32>, FirstAddon) {
        let (out, v) = self.run(args);
        (out.status.code(), FirstAddon::of(&v["addons"][0]))
    }

    /// [`World::run_first`] of a run that must exit 1 with its first addon `execution-failed`:
    /// that addon.
    pub fn run_execution_failed(&self, args: &[&str]) -> FirstAddon {
        let (code, a) = self.run_first(args);
        assert_eq!(code, Some(1), "{a}");
        assert_eq!(a.result, "execution-failed", "{a}");
        a
    }

    /// A directory of this world standing for one of the host's, holding `file` with the text
    /// `host secret`: what an addon must neither read nor write.
    pub fn host_dir_with_secret(&self, file: &str) -> PathBuf {
        let host = self.path().join("host-dir");
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join(file), "host secret").unwrap();
        host
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> (Output, serde_json::Value) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_addon"));
        cmd.arg("run").arg("--json").arg("--config").arg(&self.config).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "no JSON on stdout ({e}): {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out, v)
    }
}

/// An addon's entry in a run's report: its `result` and `error` as text ("" when it has none),
/// the other fields by index (`a["runner"]`); `{a}` prints the whole entry.
pub struct FirstAddon {
    pub result: String,
    pub error: String,
    pub entry: serde_json::Value,
}

impl FirstAddon {
    pub fn of(entry: &serde_json::Value) -> FirstAddon {
        let text = |field: &str| entry[field].as_str().unwrap_or_default().to_string();
        FirstAddon { result: text("result"), error: text("error"), entry: entry.clone() }
    }
}

impl std::ops::Index<&str> for FirstAddon {
    type Output = serde_json::Value;
    fn index(&self, field: &str) -> &serde_json::Value {
        &self.entry[field]
    }
}

impl std::fmt::Display for FirstAddon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.entry.fmt(f)
    }
}

/// Whether this test runs as root; else a skip (a failure in CI) saying `why` it needs root.
pub fn require_root(why: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    (unsafe { libc::geteuid() } == 0) || missing(why)
}

/// A world whose runner is nix-flake, `settings` as in [`nix_config`] (None: skipped, no nix).
pub fn nix_world(settings: &str) -> Option<World> {
    require_nix().then(|| World::new("auto", &nix_config(settings)))
}

/// The config of a nix test: `settings` are more `nix-runner` keys (`"build-timeout: 3s, "`).
/// Test flakes build offline with the host's static busybox as builder: Nix's build sandbox (on by
/// default once its build users exist) must be given that one file.
pub fn nix_config(settings: &str) -> String {
    format!(
        "runner: [nix-flake]\nnix-runner: {{{settings}extra-args: [--offline, --option, extra-sandbox-paths, /bin/busybox]}}\n"
    )
}

pub const PURE: &str = "options:\n  networking: false\n  collectOutput: true\n";
pub const IMPURE: &str = "options:\n  networking: true\n  collectOutput: true\n";

/// Processes whose command line contains `marker`.
pub fn processes_with(marker: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(marker) && !cmd.contains("cargo") {
                out.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
    }
    out
}

impl World {
    /// Writes a nix-flake addon whose default package installs `script` as `bin/run`, built
    /// offline with the host's static busybox as builder. `marker` makes its store path unique.
    pub fn nix_addon(&self, name: &str, options: &str, script: &str, marker: &str) -> PathBuf {
        let root = self.addon_dir(
            name,
            &format!("meta:\n  name: {name}\n  version: \"1.0\"\nargs: [--flag]\nrunner:\n  nix:\n    enable: true\n{options}"),
        );
        std::fs::write(root.join("run.sh"), format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::write(root.join("flake.nix"), addon_executor::check::run_sh_flake(name, marker)).unwrap();
        root
    }

    /// A nix addon (pure, printing `{}`) whose build first runs `step`, a shell command.
    pub fn nix_addon_building(&self, name: &str, marker: &str, step: &str) -> PathBuf {
        let addon = self.nix_addon(name, PURE, "echo '{}'", marker);
        edit(&addon.join("flake.nix"), "/bin/busybox mkdir", &format!("{step}; /bin/busybox mkdir"));
        addon
    }
}

/// Replaces `from` with `to` in the file `path` (an addon's Dockerfile or flake), which must
/// hold it.
pub fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} does not hold {from:?}", path.display());
    std::fs::write(path, text.replace(from, to)).unwrap();
}

/// Builds the image `tag` of the build context `dir` in the Docker daemon (`docker build -q`),
/// with the classic builder the engine's builds use (whose cache of steps they share).
pub fn docker_build(tag: &str, dir: &Path) {
    let out =
        Command::new("docker").env("DOCKER_BUILDKIT", "0").args(["build", "-q", "-t", tag]).arg(dir).output().unwrap();
    assert!(out.status.success(), "building {tag}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Containers (any state) labelled with this addon label, from the docker CLI.
pub fn containers_of(addon_label: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-a", "-q", "--filter", &format!("label=org.addon-engine.addon={addon_label}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// The Guile test addon (tests/fixtures/guile-addon), copied into this world. With `docker`, its
/// image's root filesystem is assembled from the host's guile and busybox (no registry here).
impl World {
    pub fn guile_addon(&self, docker: bool) -> PathBuf {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/guile-addon");
        let root = self.path().join("addons-src/guile-test");
        std::fs::create_dir_all(root.parent().unwrap()).unwrap();
        let ok = Command::new("cp").arg("-a").arg(&src).arg(&root).status().unwrap();
        assert!(ok.success());
        if docker {
            host_rootfs(
                &root.join("rootfs"),
                &["/usr/bin/busybox", "/usr/bin/guile"],
                &[
                    "/usr/lib/x86_64-linux-gnu/guile/3.0",
                    "/usr/share/guile/3.0",
                    // glibc loads iconv modules for Guile's port encodings.
                    "/usr/lib/x86_64-linux-gnu/gconv",
                ],
            );
        }
        root
    }
}

/// Copies host programs (with the libraries `ldd` names and every symlink on the way, so
/// `/usr/bin/guile -> /etc/alternatives/guile -> ...` stays as it is) and whole directories into
/// `root`, keeping the host's merged-/usr links.
pub fn host_rootfs(root: &Path, programs: &[&str], dirs: &[&str]) {
    std::fs::create_dir_all(root.join("usr")).unwrap();
    for top in ["bin", "lib", "lib64", "sbin"] {
        if let Ok(target) = std::fs::read_link(Path::new("/").join(top)) {
            std::os::unix::fs::symlink(target, root.join(top)).unwrap();
        }
    }
    let mut paths: Vec<PathBuf> = programs.iter().map(PathBuf::from).collect();
    for p in programs {
        let real = std::fs::canonicalize(p).unwrap();
        let out = Command::new("ldd").arg(&real).output().unwrap();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let lib = line.split("=>").last().unwrap_or("").trim().split(' ').next().unwrap_or("");
            if lib.starts_with('/') {
                paths.push(PathBuf::from(lib));
            }
        }
    }
    paths.extend(dirs.iter().map(PathBuf::from));
    for p in paths {
        copy_with_links(&p, root);
    }
}

/// Copies `path` into `root` at the same place, following (and recreating, relative to `root`)
/// symlinks hop by hop.
fn copy_with_links(path: &Path, root: &Path) {
    let mut p = path.to_path_buf();
    for _ in 0..16 {
        let parent = std::fs::canonicalize(p.parent().unwrap()).unwrap();
        let at = parent.join(p.file_name().unwrap());
        let dest = root.join(at.strip_prefix("/").unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        match std::fs::read_link(&at) {
            Ok(target) => {
                if std::fs::symlink_metadata(&dest).is_err() {
                    // Relative within the root, as it resolves in the image: a build context may
                    // hold no link that leads out of it.
                    let inside = if target.is_absolute() {
                        let depth = at.strip_prefix("/").unwrap().components().count() - 1;
                        let up: PathBuf = std::iter::repeat_n("..", depth).collect();
                        up.join(target.strip_prefix("/").unwrap())
                    } else {
                        target.clone()
                    };
                    std::os::unix::fs::symlink(&inside, &dest).unwrap();
                }
                p = if target.is_absolute() { target } else { parent.join(target) };
            }
            Err(_) => {
                // Directories merge into what earlier copies made of them.
                let (from, to) = if at.is_dir() {
                    std::fs::create_dir_all(&dest).unwrap();
                    (at.join("."), dest)
                } else {
                    (at, dest)
                };
                let ok = Command::new("cp").arg("-a").arg(&from).arg(&to).status().unwrap();
                assert!(ok.success(), "copying {}", from.display());
                return;
            }
        }
    }
    panic!("too many symlinks from {}", path.display());
}

/// A web server on a test host of its own: a network namespace this test makes, joined to the
/// host by a veth pair on 198.51.100.<4·slot>/30 (a documentation range this machine does not
/// route; each test picks its own slot). Serves `dir` at `http://198.51.100.<4·slot+2>:8080/`.
/// Gone (server, namespace, veth) when dropped.
pub struct WebHost {
    ns: String,
    server: std::process::Child,
    /// Servers at the namespace's other addresses ([`WebHost::serve_private`]).
    more: std::sync::Mutex<Vec<std::process::Child>>,
    /// `198.51.100.<4·slot+2>:8080`.
    pub addr: String,
}

impl WebHost {
    /// None (after [`missing`]) when this host cannot make one (not root, no `ip`).
    pub fn start(slot: u8, dir: &Path) -> Option<WebHost> {
        assert!(slot > 0 && slot < 64, "slot {slot}: 1..63");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || which::which("ip").is_err() {
            missing("a test host in a network namespace needs root and ip (iproute2)");
            return None;
        }
        let ns = format!("addon-t{slot}-{}", std::process::id());
        let (outer, inner) = (format!("adt{slot}h{}", std::process::id() % 10000), format!("adt{slot}n"));
        let (host_ip, web_ip) = (format!("198.51.100.{}", 4 * slot + 1), format!("198.51.100.{}", 4 * slot + 2));
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        ip(&["netns", "add", &ns]);
        // Gone again should a later step fail (the panic unwinds through it).
        struct Undo(String);
        impl Drop for Undo {
            fn drop(&mut self) {
                if !self.0.is_empty() {
                    let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
                }
            }
        }
        let mut undo = Undo(ns.clone());
        ip(&["link", "add", &outer, "type", "veth", "peer", "name", &inner, "netns", &ns]);
        ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &outer]);
        ip(&["link", "set", &outer, "up"]);
        ip(&["-n", &ns, "addr", "add", &format!("{web_ip}/30"), "dev", &inner]);
        ip(&["-n", &ns, "link", "set", &inner, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        let addr = format!("{web_ip}:8080");
        let server = Command::new("ip")
            .args(["netns", "exec", &ns, "/bin/busybox", "httpd", "-f", "-p", &addr, "-h"])
            .arg(dir)
            .spawn()
            .unwrap();
        undo.0.clear();
        let host = WebHost { ns, server, more: Default::default(), addr };
        for _ in 0..100 {
            if std::net::TcpStream::connect(&host.addr).is_ok() {
                return Some(host);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("the test web server at {} did not start", host.addr);
    }
}

impl WebHost {
    /// Serves `dir` at `ip:8080` too, an address of the test host's namespace that the host
    /// reaches through it (a "LAN service" in a private range).
    pub fn serve_private(&self, ip: &str, dir: &Path) {
        let web_ip = self.addr.split(':').next().unwrap();
        let ip_cmd = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().unwrap();
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        ip_cmd(&["-n", &self.ns, "addr", "add", &format!("{ip}/32"), "dev", "lo"]);
        // The route goes with the veth pair when the namespace goes.
        ip_cmd(&["route", "add", &format!("{ip}/32"), "via", web_ip]);
        let addr = format!("{ip}:8080");
        let server = Command::new("ip")
            .args(["netns", "exec", &self.ns, "/bin/busybox", "httpd", "-f", "-p", &addr, "-h"])
            .arg(dir)
            .spawn()
            .unwrap();
        self.more.lock().unwrap().push(server);
        for _ in 0..100 {
            if std::net::TcpStream::connect(&addr).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("the test LAN service at {addr} did not start");
    }
}

impl Drop for WebHost {
    fn drop(&mut self) {
        let more = std::mem::take(&mut *self.more.lock().unwrap_or_else(|e| e.into_inner()));
        for mut server in
            std::iter::once(std::mem::replace(&mut self.server, Command::new("true").spawn().unwrap())).chain(more)
        {
            let _ = server.kill();
            let _ = server.wait();
        }
        // The veth pair goes with the namespace.
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// A Debian-like base image in the Docker daemon (`addon-test-debian:bookworm`: the host's static
/// busybox with its applets, `/usr/local/bin` on PATH), for Dockerfiles written as published
/// addons write theirs (`FROM debian:bookworm-slim`), built here since no image can be pulled.
pub fn debian_like_base(w: &World) -> &'static str {
    const TAG: &str = "addon-test-debian:bookworm";
    let dir = w.path().join("debian-like-base");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy("/bin/busybox", dir.join("busybox")).expect("static busybox at /bin/busybox (busybox-static)");
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         RUN mkdir -p /usr/local/bin /etc /tmp /root && echo 'root:x:0:0:root:/root:/bin/sh' > /etc/passwd\n\
         ENV PATH=/usr/local/bin:/usr/bin:/bin\n",
    )
    .unwrap();
    docker_build(TAG, &dir);
    TAG
}

/// A flake in flake-utils' shape with no inputs: `defaultPackage.<system>` and
/// `packages.<system>.<name>`, no `packages.<system>.default`; the package is `src` installed as
/// `bin/<name>`.
pub fn flake_utils_flake(name: &str, src: &str, marker: &str) -> String {
    format!(
        r#"{{
  description = "{name}, packaged as flake-utils' eachDefaultSystem does it";
  outputs = {{ self }}:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      eachSystem = f: builtins.listToAttrs (map (system: {{ name = system; value = f system; }}) systems);
      addon = system: derivation {{
        name = "{name}-{marker}";
        inherit system;
        builder = "/bin/busybox";
        args = [ "sh" "-c" "/bin/busybox mkdir -p $out/bin && /bin/busybox cp ${{./{src}}} $out/bin/{name} && /bin/busybox chmod 555 $out/bin/{name}" ];
      }};
    in {{
      packages = eachSystem (system: {{ {name} = addon system; }});
      defaultPackage = eachSystem addon;
    }};
}}
"#
    )
}
