//! For an engine that is not root: what a container wrote into the run's bound directories
//! belongs to whoever the image runs as (often the host's root, with setuid bits if it liked),
//! and the engine can neither take it back, defuse it nor remove it. After every such run a
//! second, tiny container does it: from an empty image of the engine's own, it runs the
//! engine's helper (`addon __settle`, the same walk by descriptors the engine uses) as the
//! container's root with only the capabilities to change owners and modes, and gives every
//! entry to the engine's user, without setuid or setgid bits, file capabilities or special
//! files.
//!
//! The helper's program and libraries come from the host, bound read-only; nothing of the
//! addon's image is in that container (its `/etc/ld.so.preload` or `ENV LD_PRELOAD` would
//! otherwise run the addon's code as root), and it has no network.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{CreateImageOptions, LogsOptions, RemoveContainerOptions};
use bollard::Docker;
use futures_util::StreamExt;

use super::DockerError;

/// The engine's empty image the helper runs in.
pub const IMAGE: &str = "addon-engine-settle:2";

/// The command of the `addon` binary that does the work (see the executor's main).
pub const COMMAND: &str = "__settle";

/// The command of the `addon` binary that watches a container's files held open after unlinking
/// (see [`watch`]).
pub const WATCH_COMMAND: &str = "__watch-unlinked";

/// The command of the `addon` binary that only waits, as the init of the container holding an
/// egress run's network namespace (see [`hold_network`]).
pub const HOLD_COMMAND: &str = "__hold-network";

/// The command of the `addon` binary that gives a holder's network namespace its egress
/// network from a container, for an engine that is not root (see [`egress_agent`]).
pub const AGENT_COMMAND: &str = "__egress-agent";

/// The line the agent prints once the network is up.
pub const AGENT_READY: &str = "egress-ready";

/// One directory to settle: where it is bound in the helper's container, and whether links are
/// kept (in `CACHE_DIR`, not in the output).
#[derive(Debug, Clone)]
pub struct Tree {
    pub host: PathBuf,
    pub keep_symlinks: bool,
}

/// The helper's program and the files the dynamic loader needs for it, as host paths:
/// `(loader, libraries)`. Read from `ldd` once per helper.
pub fn runtime_files(helper: &Path) -> Result<(PathBuf, Vec<PathBuf>), DockerError> {
    let out = std::process::Command::new("ldd")
        .arg(helper)
        .output()
        .map_err(|source| DockerError::Ldd { helper: helper.to_path_buf(), source })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut loader = None;
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some((_, rest)) = line.split_once("=>") {
            if let Some(p) = rest.split_whitespace().next().filter(|p| p.starts_with('/')) {
                libs.push(PathBuf::from(p));
            }
        } else if let Some(p) = line.split_whitespace().next().filter(|p| p.starts_with('/')) {
            loader = Some(PathBuf::from(p));
        }
    }
    let loader =
        loader.ok_or_else(|| DockerError::NoLoader { helper: helper.to_path_buf(), said: text.to_string() })?;
    Ok((loader, libs))
}

/// A container of the engine's empty image running the helper `cmd` as root with only `caps`,
/// without network, new privileges or a writable root, and with none of any image's
/// environment that could load code into it.
fn helper_body(
    cmd: Vec<String>,
    binds: Vec<String>,
    labels: HashMap<String, String>,
    caps: &[&str],
    memory: i64,
) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(IMAGE.to_string()),
        entrypoint: Some(cmd),
        user: Some("0:0".into()),
        labels: Some(labels),
        env: Some(vec!["LD_PRELOAD=".into(), "LD_LIBRARY_PATH=".into()]),
        network_disabled: Some(true),
        host_config: Some(HostConfig {
            binds: Some(binds),
            network_mode: Some("none".into()),
            readonly_rootfs: Some(true),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: Some(caps.iter().map(|c| c.to_string()).collect()),
            memory: Some(memory),
            pids_limit: Some(16),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates and starts a helper container (`doing`: what creating and starting it are called in
/// errors); removes it when it does not start.
async fn create_and_start(
    docker: &Docker,
    body: ContainerCreateBody,
    doing: [&'static str; 2],
) -> Result<String, DockerError> {
    let created = docker
        .create_container(None::<bollard::query_parameters::CreateContainerOptions>, body)
        .await
        .map_err(|source| DockerError::Helper { doing: doing[0], source })?;
    let id = created.id;
    if let Err(source) = docker.start_container(&id, None::<bollard::query_parameters::StartContainerOptions>).await {
        remove_helper(docker, &id).await;
        return Err(DockerError::Helper { doing: doing[1], source });
    }
    Ok(id)
}

/// Removes a helper container, with its anonymous volumes, whatever its state.
pub(super) async fn remove_helper(docker: &Docker, id: &str) {
    let rm = RemoveContainerOptions { force: true, v: true, ..Default::default() };
    let _ = docker.remove_container(id, Some(rm)).await;
}

/// Makes the engine's empty image once (`docker import` of a tar with the mount points).
async fn ensure_image(docker: &Docker) -> Result<(), DockerError> {
    if docker.inspect_image(IMAGE).await.is_ok() {
        return Ok(());
    }
    let mut b = tar::Builder::new(Vec::new());
    // tmp/, etc/ and run/: the mount points slirp4netns's own sandbox uses in the network agent.
    for dir in ["mnt/", ".addon/", ".addon/lib/", "tmp/", "etc/", "run/"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, dir, std::io::empty()).map_err(DockerError::PackImage)?;
    }
    let rootfs = b.into_inner().map_err(DockerError::PackImage)?;
    let (repo, tag) = IMAGE.split_once(':').unwrap_or((IMAGE, "latest"));
    let opts = CreateImageOptions {
        from_src: Some("-".into()),
        repo: Some(repo.into()),
        tag: Some(tag.into()),
        changes: vec![format!("LABEL {}=true", super::LABEL_MANAGED)],
        ..Default::default()
    };
    let mut stream = docker.create_image(Some(opts), Some(bollard::body_full(bytes::Bytes::from(rootfs))), None);
    while let Some(step) = stream.next().await {
        step.map_err(|source| DockerError::MakeImage { source })?;
    }
    Ok(())
}

/// The helper's binds and the command line that starts it with the host's loader.
fn helper_binds(helper: &Path, command: &str) -> Result<(Vec<String>, Vec<String>), DockerError> {
    let (loader, libs) = runtime_files(helper)?;
    let mut binds =
        vec![format!("{}:/.addon/ld.so:ro", loader.display()), format!("{}:/.addon/addon:ro", helper.display())];
    for lib in &libs {
        let name = lib.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        binds.push(format!("{}:/.addon/lib/{name}:ro", lib.display()));
    }
    let cmd = ["/.addon/ld.so", "--library-path", "/.addon/lib", "/.addon/addon", command]
        .iter()
        .map(|s| s.to_string())
        .collect();
    Ok((binds, cmd))
}

/// A watcher for a container that is about to start (an engine that is not root can neither
/// read what the container's users make in the run's directories nor the container's
/// `/proc/PID/fd`): from the engine's empty image, as root that may read and search anything
/// (and nothing else), it is the init of a PID namespace the container then joins. It measures
/// the run's directories and the files the namespace's processes hold open or mapped after
/// unlinking them, reports the growth, and kills the namespace's processes itself past the
/// limits. Removing it ends the namespace and whatever the addon left running in it.
pub struct Watcher {
    pub id: String,
    pub report: Report,
}

/// What a [`Watcher`] last said, and when.
#[derive(Clone)]
pub struct Report {
    grown: std::sync::Arc<std::sync::atomic::AtomicU64>,
    entries: std::sync::Arc<std::sync::atomic::AtomicU64>,
    error: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    /// Milliseconds since `since` of the last report (`u64::MAX` once the watcher is gone).
    last: std::sync::Arc<std::sync::atomic::AtomicU64>,
    since: std::time::Instant,
}

impl Report {
    /// The most the run's directories grew, with unlinked files, at once (bytes). Past the
    /// limit the watcher kills, and the files go with the processes: the peak is what counts.
    pub fn bytes(&self) -> u64 {
        self.grown.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The most entries the run's directories gained.
    pub fn entries(&self) -> u64 {
        self.entries.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Why the watcher can no longer be trusted (its walk failed, it is gone, or silent for
    /// three seconds), if so.
    pub fn stale(&self) -> Option<String> {
        if let Some(e) = self.error.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Some(format!("the watcher could not measure the run's directories: {e}"));
        }
        let last = self.last.load(std::sync::atomic::Ordering::Relaxed);
        if last == u64::MAX {
            return Some("the watcher of its directories and unlinked files stopped".into());
        }
        let now = self.since.elapsed().as_millis() as u64;
        (now.saturating_sub(last) > 3000)
            .then(|| "the watcher of its directories and unlinked files went silent".into())
    }
}

impl Watcher {
    pub async fn remove(self, docker: &Docker) {
        remove_helper(docker, &self.id).await;
    }
}

/// Starts a [`Watcher`] over the run's directories `dirs`; past `limits` it kills the
/// namespace's processes itself.
pub async fn watch(
    docker: &Docker,
    helper: &Path,
    dirs: &[PathBuf],
    limits: &crate::limits::Limits,
    labels: HashMap<String, String>,
) -> Result<Watcher, DockerError> {
    ensure_image(docker).await?;
    let (mut binds, mut cmd) = helper_binds(helper, WATCH_COMMAND)?;
    let arg = |l: Option<u64>| l.map_or_else(|| "-".to_string(), |v| v.to_string());
    cmd.push(arg(limits.output_size));
    cmd.push(arg(limits.output_entries));
    for (n, d) in dirs.iter().enumerate() {
        binds.push(format!("{}:/mnt/{n}:ro", d.display()));
        cmd.push(format!("/mnt/{n}"));
    }
    // SYS_PTRACE and DAC_READ_SEARCH to read the container's processes' descriptors and the
    // run's directories whoever owns them (capabilities the addon does not hold, so it cannot
    // trace the watcher; as its namespace's init the watcher takes no signal it did not ask
    // for); KILL to stop the image's user, whoever it is, past the limits; SYS_ADMIN is not
    // given, so files kept only mapped are not seen here.
    let body = helper_body(cmd, binds, labels, &["SYS_PTRACE", "DAC_READ_SEARCH", "KILL"], 256 << 20);
    let created = docker
        .create_container(None::<bollard::query_parameters::CreateContainerOptions>, body)
        .await
        .map_err(|source| DockerError::Helper { doing: "creating the watching container", source })?;
    let id = created.id;
    let fail = |doing: &'static str, source: bollard::errors::Error| {
        let id = &id;
        async move {
            let rm = RemoveContainerOptions { force: true, ..Default::default() };
            let _ = docker.remove_container(id, Some(rm)).await;
            Err(DockerError::Helper { doing, source })
        }
    };
    let attach = bollard::query_parameters::AttachContainerOptions {
        stdout: true,
        stderr: true,
        stream: true,
        logs: false,
        ..Default::default()
    };
    let mut output = match docker.attach_container(&id, Some(attach)).await {
        Ok(a) => a.output,
        Err(e) => return fail("attaching to the watching container", e).await,
    };
    if let Err(e) = docker.start_container(&id, None::<bollard::query_parameters::StartContainerOptions>).await {
        return fail("starting the watching container", e).await;
    }
    let report = Report {
        grown: Default::default(),
        entries: Default::default(),
        error: Default::default(),
        last: Default::default(),
        since: std::time::Instant::now(),
    };
    let r = report.clone();
    tokio::spawn(async move {
        let mut partial = String::new();
        while let Some(Ok(chunk)) = output.next().await {
            partial.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            while let Some(pos) = partial.find('\n') {
                let line: String = partial.drain(..=pos).collect();
                let line = line.trim();
                if let Some(e) = line.strip_prefix("error=") {
                    *r.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                }
                let field = |k: &str| line.split(' ').find_map(|w| w.strip_prefix(k)?.parse::<u64>().ok());
                if let (Some(g), Some(e)) = (field("grown="), field("entries=")) {
                    r.grown.fetch_max(g, std::sync::atomic::Ordering::Relaxed);
                    r.entries.fetch_max(e, std::sync::atomic::Ordering::Relaxed);
                    r.last.store(r.since.elapsed().as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        r.last.store(u64::MAX, std::sync::atomic::Ordering::Relaxed);
    });
    Ok(Watcher { id, report })
}

/// A started container of the engine's image that holds a network namespace (only `lo`) for an
/// addon's container to join (`network_mode: container:ID`): its process id, for the engine to
/// give that namespace its egress network before the addon's container starts.
pub struct Holder {
    pub id: String,
    pub pid: i32,
}

/// Starts a [`Holder`] with `helper` (the `addon` binary): no capabilities, nothing writable.
pub async fn hold_network(
    docker: &Docker,
    helper: &Path,
    labels: HashMap<String, String>,
) -> Result<Holder, DockerError> {
    ensure_image(docker).await?;
    let (binds, cmd) = helper_binds(helper, HOLD_COMMAND)?;
    let mut body = helper_body(cmd, binds, labels, &[], 16 << 20);
    body.network_disabled = None;
    // What joins it (an image build's RUN steps) resolves names through the engine's resolver.
    if let Some(hc) = body.host_config.as_mut() {
        hc.dns = Some(vec![crate::egress::RESOLVER.to_string()]);
    }
    let id = create_and_start(docker, body, ["creating the network's container", "starting the network's container"])
        .await?;
    let inspected = docker.inspect_container(&id, None::<bollard::query_parameters::InspectContainerOptions>).await;
    let pid = match inspected {
        Ok(i) => i.state.and_then(|s| s.pid).unwrap_or(0) as i32,
        Err(source) => {
            remove_helper(docker, &id).await;
            return Err(DockerError::Helper { doing: "inspecting the network's container", source });
        }
    };
    if pid <= 0 {
        remove_helper(docker, &id).await;
        return Err(DockerError::Helper {
            doing: "finding the network's container's process",
            source: bollard::errors::Error::DockerResponseServerError {
                status_code: 500,
                message: "the container has no process".into(),
            },
        });
    }
    Ok(Holder { id, pid })
}

/// Settles `trees` for the engine's user (`owner`) with `helper` (the `addon` binary).
pub async fn run(
    docker: &Docker,
    helper: &Path,
    owner: (u32, u32),
    trees: &[Tree],
    labels: HashMap<String, String>,
) -> Result<(), DockerError> {
    ensure_image(docker).await?;
    let (mut binds, mut cmd) = helper_binds(helper, COMMAND)?;
    cmd.push(format!("{}:{}", owner.0, owner.1));
    for (n, t) in trees.iter().enumerate() {
        let inside = format!("/mnt/{n}");
        binds.push(format!("{}:{inside}", t.host.display()));
        cmd.push(format!("{inside}:{}", if t.keep_symlinks { "keep-links" } else { "files-only" }));
    }
    // To give entries to the engine's user, take bits off files it does not own, read and enter
    // directories whatever their modes, remove special files and file capabilities.
    let caps = ["CHOWN", "FOWNER", "DAC_OVERRIDE", "DAC_READ_SEARCH", "SETFCAP"];
    let body = helper_body(cmd, binds, labels, &caps, 256 << 20);
    let id =
        create_and_start(docker, body, ["creating the settling container", "starting the settling container"]).await?;
    let result = async {
        let waited = tokio::time::timeout(
            Duration::from_secs(600),
            docker.wait_container(&id, None::<bollard::query_parameters::WaitContainerOptions>).next(),
        )
        .await;
        let code = match waited {
            Ok(Some(Ok(r))) => r.status_code,
            Ok(Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. }))) => code,
            Ok(_) => -1,
            Err(_) => return Err(DockerError::SettleTimeout),
        };
        if code == 0 {
            return Ok(());
        }
        let mut said = String::new();
        let opts = LogsOptions { stdout: true, stderr: true, ..Default::default() };
        let mut logs = docker.logs(&id, Some(opts));
        while let Some(Ok(chunk)) = logs.next().await {
            said.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
        Err(DockerError::SettleFailed { code, said: said.trim().to_string() })
    }
    .await;
    remove_helper(docker, &id).await;
    result
}

/// A started network agent (see [`egress_agent`]).
pub struct Agent {
    pub id: String,
}

/// For an engine that is not root, which cannot enter a holder container's network namespace
/// (the daemon's root owns it): a container of the engine's image that does it. It joins the
/// holder's PID namespace (its PID 1 is the holder) and the host's network (its slirp4netns
/// makes the holder's connections as sockets there, as a root engine's does; its DNS forwarder
/// listens on the host's loopback and asks `egress.resolvers`), with CAP_SYS_ADMIN and
/// CAP_NET_ADMIN to enter the holder's namespace and load the filter, and the host's slirp4netns
/// and nft bound in read-only with their libraries. It prints [`AGENT_READY`] once the network
/// is up; on SIGTERM it prints what the network refused and ends (see [`stop_agent`]).
pub async fn egress_agent(
    docker: &Docker,
    helper: &Path,
    holder: &str,
    egress: &crate::egress::Egress,
    labels: HashMap<String, String>,
) -> Result<Agent, DockerError> {
    ensure_image(docker).await?;
    let tools = crate::egress::tools().map_err(|e| DockerError::Agent(e.to_string()))?;
    let (mut binds, mut cmd) = helper_binds(helper, AGENT_COMMAND)?;
    let mut egress = egress.clone();
    if egress.resolvers.is_empty() {
        egress.resolvers = crate::egress::host_resolvers();
    }
    cmd.push(serde_json::to_string(&egress).map_err(|e| DockerError::Agent(e.to_string()))?);
    let mut seen = std::collections::BTreeSet::new();
    for tool in [&tools.slirp4netns, &tools.nft] {
        let (loader, libs) = runtime_files(tool)?;
        for file in std::iter::once(tool.clone()).chain(std::iter::once(loader)).chain(libs) {
            // Where the tool and its loader expect them: at their host paths.
            let real = fs_err::canonicalize(&file).unwrap_or_else(|_| file.clone());
            for (src, at) in [(&real, &file), (&real, &real)] {
                if seen.insert(at.clone()) {
                    binds.push(format!("{}:{}:ro", src.display(), at.display()));
                }
            }
        }
    }
    // Entering the holder's namespace and loading the filter (SYS_ADMIN, NET_ADMIN), and what
    // slirp4netns's own sandbox needs to shed them (SETPCAP to drop its bounding set; it keeps
    // NET_BIND_SERVICE) once its device is open.
    let caps = ["SYS_ADMIN", "NET_ADMIN", "SETPCAP", "NET_BIND_SERVICE"];
    let mut body = helper_body(cmd, binds, labels, &caps, 128 << 20);
    body.network_disabled = None;
    body.env = Some(vec![
        "LD_PRELOAD=".into(),
        "LD_LIBRARY_PATH=".into(),
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
    ]);
    if let Some(hc) = body.host_config.as_mut() {
        // slirp4netns's sandbox pivots into an empty root, which Docker's default system-call
        // profile refuses; it installs its own filter (--enable-seccomp) after that.
        hc.security_opt = Some(vec!["no-new-privileges:true".into(), "seccomp=unconfined".into()]);
        // It makes /run a slave mount, which needs one there.
        hc.tmpfs = Some(HashMap::from([("/run".to_string(), "size=64k,mode=0755".to_string())]));
        hc.network_mode = Some("host".into());
        hc.pid_mode = Some(format!("container:{holder}"));
        hc.pids_limit = Some(64);
        hc.devices = Some(vec![bollard::models::DeviceMapping {
            path_on_host: Some("/dev/net/tun".into()),
            path_in_container: Some("/dev/net/tun".into()),
            cgroup_permissions: Some("rwm".into()),
        }]);
    }
    let id = create_and_start(
        docker,
        body,
        ["creating the network's agent container", "starting the network's agent container"],
    )
    .await?;
    let ready = async {
        let opts = LogsOptions { stdout: true, stderr: true, follow: true, ..Default::default() };
        let mut logs = docker.logs(&id, Some(opts));
        let mut said = String::new();
        while let Some(chunk) = logs.next().await {
            let Ok(chunk) = chunk else { break };
            said.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
            if said.lines().any(|l| l.trim() == AGENT_READY) {
                return Ok(());
            }
        }
        Err(DockerError::Agent(format!("it ended before the network was up: {}", said.trim())))
    };
    match tokio::time::timeout(Duration::from_secs(30), ready).await {
        Ok(Ok(())) => Ok(Agent { id }),
        other => {
            remove_helper(docker, &id).await;
            Err(match other {
                Ok(Err(e)) => e,
                _ => DockerError::Agent("the network was not up within 30 s".into()),
            })
        }
    }
}

/// Stops an agent (SIGTERM: it reads the filter's counters and ends) and removes it; returns
/// what its network saw.
pub async fn stop_agent(docker: &Docker, agent: Agent) -> crate::egress::EgressUse {
    let id = agent.id;
    let opts = bollard::query_parameters::KillContainerOptions { signal: "TERM".into() };
    let _ = docker.kill_container(&id, Some(opts)).await;
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        docker.wait_container(&id, None::<bollard::query_parameters::WaitContainerOptions>).next(),
    )
    .await;
    let mut said = String::new();
    let mut logs = docker.logs(&id, Some(LogsOptions { stdout: true, stderr: true, ..Default::default() }));
    while let Some(Ok(chunk)) = logs.next().await {
        said.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
    }
    remove_helper(docker, &id).await;
    let field = |k: &str| said.split_whitespace().find_map(|w| w.strip_prefix(k)?.parse::<u64>().ok()).unwrap_or(0);
    crate::egress::EgressUse { refused: field("refused="), dns_queries: field("dns-queries=") }
}
