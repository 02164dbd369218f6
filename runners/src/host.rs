//! Runs of host programs in a sandbox, shared by the runners that start one (trivial,
//! nix-flake, and plugins built on them): the sandbox check, the run's directories given to the
//! addon's identity, the resource envelope, the process with its output streamed as events, the
//! limit watch, and `stop` (SIGTERM to the tree, grace, SIGKILL).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, BufReader};
use tokio::sync::mpsc;

use crate::limits::Envelope;
use crate::procfs::kill_tree;
use crate::runner::{Exit, ExitKind, RunEvent, RunnerError, StartSpec, Started};
use crate::sandbox::{Isolation, SandboxKind, Sandboxes, Spec};

/// How many events may wait for the engine before the addon's writes block.
const EVENT_BUFFER: usize = 64;
/// How often the envelope is asked about limits.
const WATCH_EVERY: Duration = Duration::from_millis(50);

/// The host runs of one runner, by run id, so that `stop` finds them.
#[derive(Debug, Default)]
pub struct HostRuns {
    pids: Mutex<HashMap<String, i32>>,
}

impl HostRuns {
    /// The pid of a run's sandbox process, while it runs.
    pub fn pid(&self, run_id: &str) -> Option<i32> {
        self.pids.lock().unwrap_or_else(|e| e.into_inner()).get(run_id).copied()
    }

    /// Forgets a run whose start failed after its process was spawned (the process dies with
    /// its handle).
    pub fn forget(&self, run_id: &str) {
        self.pids.lock().unwrap_or_else(|e| e.into_inner()).remove(run_id);
    }

    /// SIGTERM to everything below the run's sandbox process, then after `grace` SIGKILL to all.
    pub fn stop(&self, run_id: &str, grace: Duration) {
        let Some(pid) = self.pids.lock().unwrap_or_else(|e| e.into_inner()).get(run_id).copied() else {
            return; // already ended
        };
        if grace.is_zero() {
            kill_tree(pid, libc::SIGKILL, true);
            return;
        }
        // The sandbox process itself (a shim or bwrap) is spared the SIGTERM: its death would
        // take the namespace down at once and leave the addon no grace.
        kill_tree(pid, libc::SIGTERM, false);
        let runs = self.pids.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let run_id = run_id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if runs.get(&run_id) == Some(&pid) && fs_err::metadata(format!("/proc/{pid}")).is_ok() {
                kill_tree(pid, libc::SIGKILL, true);
            }
        });
    }
}

/// Starts `program` for `spec` in the engine's sandbox and streams its events.
///
/// What blocks (the walk that gives the run's directories to the addon's identity, making the
/// control groups, building the sandbox's root, the move into the groups, which waits for an
/// RCU grace period on cgroup v1) runs on the blocking pool, so that runs started at once do not
/// queue on the async workers. The sandbox itself is forked here, on an async worker: its
/// parent must be a thread that lives as long as the engine (`PR_SET_PDEATHSIG` follows the
/// thread, and the blocking pool's threads end when idle).
pub async fn start(
    runner: &'static str,
    sandboxes: Arc<Sandboxes>,
    runs: Arc<HostRuns>,
    spec: StartSpec,
    program: PathBuf,
    extra_ro: Vec<PathBuf>,
) -> Result<Started, RunnerError> {
    let lost = |e: tokio::task::JoinError| RunnerError::setup(runner, format!("preparing the sandbox: {e}"));
    let (spec, prepared) = tokio::task::spawn_blocking(move || {
        let prepared = prepare(runner, &sandboxes, &spec, &program, &extra_ro);
        (spec, prepared)
    })
    .await
    .map_err(lost)?;
    let Prepared { sandbox, mut envelope, launch, program } = prepared?;
    let own = sandbox.clone();
    let noise: crate::NoiseFilter = Arc::new(move |line: &str| own.is_own_message(line));
    let egress = match &spec.network {
        crate::egress::Network::Egress(e) if launch.handoff.is_some() => Some(e.clone()),
        crate::egress::Network::Egress(_) => {
            return Err(RunnerError::setup(
                runner,
                format!("sandbox {} started no handoff for the egress network", sandbox.name()),
            ));
        }
        _ => None,
    };
    let spawned = spawn(runner, &runs, &spec, launch.cmd, &program, &mut envelope, noise)?;
    let mut network = None;
    if let Some(handoff) = launch.handoff {
        // Into the run's control groups (and its egress network up) while the sandbox sets
        // itself up; then it goes on.
        let pid = spawned.pid;
        let moved = tokio::task::spawn_blocking(move || {
            handoff.complete_with(pid, |inner| match &egress {
                Some(e) => crate::egress::EgressNet::attach(inner, e, !crate::sandbox::is_root())
                    .map(Some)
                    .map_err(std::io::Error::other),
                None => Ok(None),
            })
        })
        .await
        .map_err(lost)?;
        match moved {
            Ok(net) => network = net,
            Err(e) => {
                runs.pids.lock().unwrap_or_else(|e| e.into_inner()).remove(&spec.run_id);
                return Err(RunnerError::setup(
                    runner,
                    format!("moving the sandbox into the run's control group or giving it its network: {e}"),
                ));
            }
        }
    }
    let events = spawned.watch(&runs, &spec, envelope, network);
    Ok(Started { sandbox: sandbox.name().to_string(), events })
}

/// A run ready to be spawned: its sandbox, its envelope and the sandbox's command.
struct Prepared {
    sandbox: Arc<dyn crate::sandbox::Sandbox>,
    envelope: Envelope,
    launch: crate::sandbox::Launch,
    program: String,
}

/// The blocking part of [`start`]: the run's directories given to the addon's identity, the
/// envelope made, the sandbox's command built.
fn prepare(
    runner: &str,
    sandboxes: &Sandboxes,
    spec: &StartSpec,
    program: &Path,
    extra_ro: &[PathBuf],
) -> Result<Prepared, RunnerError> {
    let sandbox = sandboxes.get(spec.sandbox.unwrap_or(SandboxKind::None));
    let mounts = spec.mounts();
    let iso = Isolation { network: spec.network.kind() };
    sandbox.check(iso).map_err(|e| RunnerError::sandbox(runner, &e))?;
    if let Some(owner) = sandbox.owner() {
        let dirs = [&mounts.work, &mounts.output, &mounts.cache, &mounts.home].map(PathBuf::as_path);
        crate::sandbox::claim(&dirs, owner).map_err(|e| {
            RunnerError::setup(runner, format!("giving the run's directories to uid {}: {e}", owner.uid))
        })?;
    }
    let envelope = envelope_for(runner, spec, &sandboxes.enforcement())?;
    let (cgroups, rlimits) = (envelope.cgroup_procs(), envelope.rlimits());
    let env = spec.env_in(&sandbox.view(&mounts), false);
    let launch = sandbox
        .launch(&Spec {
            program,
            args: &spec.args,
            env: &env,
            mounts: &mounts,
            extra_ro,
            iso,
            scratch: &spec.dirs.scratch,
            cgroups: &cgroups,
            rlimits: &rlimits,
            tmpfs: crate::sandbox::view::TmpfsBound::of(&spec.limits),
        })
        .map_err(|e| RunnerError::sandbox(runner, &e))?;
    tracing::debug!(addon = %spec.addon.label(), sandbox = sandbox.name(), program = %program.display(), "starting");
    Ok(Prepared { sandbox, envelope, launch, program: program.display().to_string() })
}

/// The resource envelope of a run: a control group (or rlimits), watched while it runs.
pub fn envelope_for(
    runner: &str,
    spec: &StartSpec,
    enforcement: &crate::limits::Enforcement,
) -> Result<Envelope, RunnerError> {
    let mounts = spec.mounts();
    let watched = vec![mounts.work.clone(), mounts.output.clone(), mounts.cache.clone(), mounts.home.clone()];
    let envelope = Envelope::new(&spec.run_id, spec.limits, enforcement, watched)
        .map_err(|e| RunnerError::setup(runner, e.to_string()))?;
    if !envelope.measures() {
        tracing::debug!(addon = %spec.addon.label(), "resource usage is not measured: {}", enforcement.describe());
    }
    Ok(envelope)
}

/// A spawned run whose output is being read; [`Spawned::watch`] follows it to its end.
pub struct Spawned {
    events: mpsc::Receiver<RunEvent>,
    tx: mpsc::Sender<RunEvent>,
    child: tokio::process::Child,
    pid: i32,
    readers: [tokio::task::JoinHandle<()>; 2],
}

impl Spawned {
    /// The spawned process's pid (the sandbox's outer process).
    pub fn pid(&self) -> i32 {
        self.pid
    }
}

/// Spawns a prepared command (which joins `envelope` before exec, see
/// [`crate::sandbox::ns::NsPlan::join_cgroups`]) for run `spec` and streams its output as events;
/// stderr lines `noise` recognises are logged, not passed on.
pub fn spawn(
    runner: &str,
    runs: &Arc<HostRuns>,
    spec: &StartSpec,
    mut cmd: tokio::process::Command,
    program: &str,
    envelope: &mut Envelope,
    noise: crate::NoiseFilter,
) -> Result<Spawned, RunnerError> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| RunnerError::Spawn {
        runner: runner.to_string(),
        program: program.to_string(),
        detail: e.to_string(),
    })?;
    let pid = child.id().map(|p| p as i32).unwrap_or(0);
    envelope.set_root_pid(pid);
    runs.pids.lock().unwrap_or_else(|e| e.into_inner()).insert(spec.run_id.clone(), pid);
    let (tx, rx) = mpsc::channel(EVENT_BUFFER);
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let out_tx = tx.clone();
    let out_task = tokio::spawn(async move {
        let mut reader = BufReader::new(stdout);
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out_tx.send(RunEvent::Stdout(buf[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    let err_tx = tx.clone();
    let err_task = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr);
        while let Some(text) = crate::lines::next_line(&mut lines).await {
            if noise(&text) {
                tracing::debug!("sandbox: {text}");
                continue;
            }
            if err_tx.send(RunEvent::Stderr(format!("{text}\n").into_bytes())).await.is_err() {
                break;
            }
        }
    });
    Ok(Spawned { events: rx, tx, child, pid, readers: [out_task, err_task] })
}

impl Spawned {
    /// Waits for the process while asking the envelope about limits (a breach kills the tree
    /// without grace); sends `Exited` with the usage once its output is read out. Returns the
    /// run's events.
    pub fn watch(
        self,
        runs: &Arc<HostRuns>,
        spec: &StartSpec,
        mut envelope: Envelope,
        network: Option<crate::egress::EgressNet>,
    ) -> mpsc::Receiver<RunEvent> {
        let Spawned { events, tx, mut child, pid, readers } = self;
        let runs = runs.clone();
        let run_id = spec.run_id.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(WATCH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut breach = None;
            let status = loop {
                tokio::select! {
                    status = child.wait() => break status,
                    _ = tick.tick(), if breach.is_none() => {
                        if let Some(b) = envelope.check() {
                            // A breached limit gets no grace: the addon would go on filling the disk
                            // or forking.
                            kill_tree(pid, libc::SIGKILL, true);
                            breach = Some(b.to_string());
                        }
                    }
                }
            };
            // A limit hit just before the end (a refused fork the program died of) is still why
            // it ended.
            if breach.is_none() {
                breach = envelope.check_now().map(|b| b.to_string());
            }
            // After the sandbox process ends, its PID namespace is gone: nothing is left running,
            // and the pipes close once every holder is dead.
            for r in readers {
                let _ = r.await;
            }
            runs.pids.lock().unwrap_or_else(|e| e.into_inner()).remove(&run_id);
            let usage = tokio::task::spawn_blocking(move || {
                let mut usage = envelope.finish();
                if let Some(net) = network {
                    let seen = net.finish();
                    usage.network_refused = Some(seen.refused);
                    usage.dns_queries = Some(seen.dns_queries);
                }
                usage
            })
            .await
            .unwrap_or_default();
            let kind = match breach {
                Some(why) => ExitKind::Limit(why),
                None => ExitKind::Code(status.map(crate::lines::exit_code).unwrap_or(-1)),
            };
            let _ = tx.send(RunEvent::Exited(Exit { kind, usage })).await;
        });
        events
    }
}

/// A container id naming this process (pid and start time) and the run, so that a later reap
/// knows whether its owner is gone.
pub fn container_id(run: &str) -> String {
    let pid = std::process::id() as i32;
    let start = crate::procfs::process_start(pid).unwrap_or_default();
    let safe: String =
        run.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).take(40).collect();
    format!("addon-{pid}-{start}-{safe}")
}

/// Whether the process that made container `id` (see [`container_id`]) is gone.
pub fn orphaned(id: &str) -> bool {
    let mut parts = id.trim_start_matches("addon-").splitn(3, '-');
    let (Some(pid), Some(start)) = (parts.next().and_then(|p| p.parse::<i32>().ok()), parts.next()) else {
        return false; // not ours
    };
    crate::procfs::process_start(pid).as_deref() != Some(start)
}
