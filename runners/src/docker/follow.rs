//! Following a container: its streams attached before it starts, its end, and what it used.

use super::*;

/// Follows a started container to its end: its output as events, its limits watched (output
/// size on the mounts, processes from the runtime's statistics), and how it ended. Should the
/// attached stream break, the output is read again in full from the logs after the exit: a run is
/// never judged on a stream that may be cut.
pub(super) async fn follow(
    docker: &Docker,
    id: &str,
    mut output: OutputStream,
    tx: &mpsc::Sender<RunEvent>,
    limits: Limits,
    envelope: Result<Envelope, crate::limits::EnvelopeError>,
    unlinked: Option<settle::Report>,
) -> Exit {
    let held_open = || unlinked.as_ref().map_or(0, settle::Report::bytes);
    let mut layer_bytes = 0u64;
    // A run that cannot be measured does not go on unmeasured: it is stopped at once.
    let (mut envelope, unmeasured) = match envelope {
        Ok(e) => (Some(e), None),
        Err(e) => {
            let _ = docker.stop_container(id, Some(StopContainerOptions { t: Some(0), ..Default::default() })).await;
            (None, Some(crate::limits::Breach::Unmeasurable(e.to_string()).to_string()))
        }
    };
    // Files the container's processes hold open after unlinking them count too.
    let inspected = docker.inspect_container(id, None::<bollard::query_parameters::InspectContainerOptions>).await.ok();
    // The daemon names the container's init by its pid in the daemon's PID namespace: only when
    // that pid here is a process of this container (an engine in a container of its own sees
    // other processes under those numbers) is it used, and only through a handle opened now and
    // checked after (a pid reused meanwhile is not the container's).
    let init = inspected
        .as_ref()
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.pid)
        .filter(|p| *p > 0)
        .map(|p| p as i32)
        .filter(|p| of_container(*p, id));
    let init_fd = init
        .filter(|_| crate::sandbox::is_root())
        .and_then(crate::procfs::PidFd::open)
        .filter(|_| init.is_some_and(|p| of_container(p, id)));
    if let (Some(env), Some(pid)) = (envelope.as_mut(), init) {
        env.set_root_pid(pid);
    } else if init.is_none() {
        tracing::debug!("container {id}: its processes are not visible here; files they unlink are not counted");
    }
    // The container's writable layer (its root, /tmp, the image's HOME): a root engine walks
    // its upper directory like the run's own; otherwise the daemon measures it (`SizeRw`).
    let upper = inspected
        .and_then(|c| c.graph_driver)
        .and_then(|g| g.data.get("UpperDir").cloned())
        .map(std::path::PathBuf::from)
        .filter(|p| crate::sandbox::is_root() && p.is_dir());
    let ask_daemon = upper.is_none();
    // Counted from nothing: a new container's layer starts empty, and what the addon wrote
    // before this look (a fast fill, a slow engine) is the addon's too.
    if let (Some(env), Some(upper)) = (envelope.as_mut(), upper) {
        env.watch_from_empty(upper);
    }
    let mut sampled = Sampled::default();
    // The runtime streams statistics about once a second; the limits are checked more often.
    let mut stats = docker.stats(id, Some(bollard::query_parameters::StatsOptions { stream: true, one_shot: false }));
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut broken = None;
    let mut breach = unmeasured;
    let mut sent_stdout = 0u64;
    // The daemon's measure of the writable layer, asked beside the loop (the daemon walks the
    // layer to answer, and the checks must not wait for it): at most every 100 ms and a tenth
    // of the time.
    let layer = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let asking = (ask_daemon && limits.output_size.is_some()).then(|| {
        let (docker, id, layer) = (docker.clone(), id.to_string(), layer.clone());
        tokio::spawn(async move {
            loop {
                let asked = tokio::time::Instant::now();
                let opts = bollard::query_parameters::InspectContainerOptions { size: true };
                match docker.inspect_container(&id, Some(opts)).await {
                    Ok(c) => layer.store(c.size_rw.unwrap_or(0).max(0) as u64, std::sync::atomic::Ordering::Relaxed),
                    Err(_) => return,
                }
                tokio::time::sleep((asked.elapsed() * 10).max(Duration::from_millis(100))).await;
            }
        })
    });
    loop {
        tokio::select! {
            item = output.next() => match item {
                None => break,
                Some(Ok(chunk)) => {
                    let event = match chunk {
                        bollard::container::LogOutput::StdOut { message } | bollard::container::LogOutput::Console { message } => {
                            sent_stdout += message.len() as u64;
                            RunEvent::Stdout(message.to_vec())
                        }
                        bollard::container::LogOutput::StdErr { message } => RunEvent::Stderr(message.to_vec()),
                        bollard::container::LogOutput::StdIn { .. } => continue,
                    };
                    if tx.send(event).await.is_err() {
                        break;
                    }
                }
                Some(Err(e)) => {
                    broken = Some(e.to_string());
                    break;
                }
            },
            Some(Ok(s)) = stats.next() => sampled.take(s),
            _ = tick.tick(), if breach.is_none() => {
                layer_bytes = layer_bytes.max(layer.load(std::sync::atomic::Ordering::Relaxed));
                if let Some(env) = envelope.as_mut() {
                    env.set_written_elsewhere(layer_bytes + held_open());
            env.set_entries_elsewhere(unlinked.as_ref().map_or(0, settle::Report::entries));
                    env.set_entries_elsewhere(unlinked.as_ref().map_or(0, settle::Report::entries));
                }
                // A watcher that stopped reporting measures nothing: the run is stopped.
                let blind = unlinked.as_ref().and_then(settle::Report::stale).map(|why| crate::limits::Breach::Unmeasurable(why).to_string());
                let b = blind.or_else(|| envelope.as_mut().and_then(|e| e.check()).map(|b| b.to_string())).or_else(|| sampled.pids_breach(limits.pids));
                if let Some(why) = b {
                    // A breached limit gets no grace: the addon would go on filling the disk or
                    // forking.
                    // A root engine kills the container's init itself (its PID namespace goes with
                    // it) rather than wait for the daemon's round trip.
                    if let Some(fd) = &init_fd {
                        fd.kill();
                    }
                    let _ = docker.stop_container(id, Some(StopContainerOptions { t: Some(0), ..Default::default() })).await;
                    breach = Some(why);
                }
            }
        }
    }
    if let Some(task) = asking {
        task.abort();
    }
    // A limit passed just before the end (a fill faster than the checks) is still why it ended:
    // one last look at the layer and the directories.
    if breach.is_none() {
        if let Some(env) = envelope.as_mut() {
            if ask_daemon {
                let opts = bollard::query_parameters::InspectContainerOptions { size: true };
                if let Ok(rw) = docker.inspect_container(id, Some(opts)).await.map(|c| c.size_rw.unwrap_or(0)) {
                    layer_bytes = rw.max(0) as u64;
                }
            }
            env.set_written_elsewhere(layer_bytes + held_open());
            env.set_entries_elsewhere(unlinked.as_ref().map_or(0, settle::Report::entries));
            breach = env.check_now().map(|b| b.to_string());
        }
    }
    let code = match docker.wait_container(id, None::<bollard::query_parameters::WaitContainerOptions>).next().await {
        Some(Ok(r)) => r.status_code,
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
        _ => -1,
    };
    if let Some(why) = broken {
        tracing::warn!("the attached output stream of container {id} broke ({why}); reading its logs in full");
        let opts = LogsOptions { follow: false, stdout: true, stderr: true, ..Default::default() };
        let mut logs = docker.logs(id, Some(opts));
        let mut seen = 0u64;
        while let Some(Ok(chunk)) = logs.next().await {
            // What the attached stream already delivered is not sent twice.
            if let bollard::container::LogOutput::StdOut { message } = chunk {
                let len = message.len() as u64;
                if seen + len > sent_stdout {
                    let skip = sent_stdout.saturating_sub(seen) as usize;
                    let _ = tx.send(RunEvent::Stdout(message[skip.min(message.len())..].to_vec())).await;
                }
                seen += len;
            }
        }
    }
    // The kernel's OOM killer ended it when the runtime says so (read before removal).
    let oom = docker
        .inspect_container(id, None::<bollard::query_parameters::InspectContainerOptions>)
        .await
        .ok()
        .and_then(|c| c.state)
        .and_then(|s| s.oom_killed)
        .unwrap_or(false);
    let kind = match breach {
        Some(why) => ExitKind::Limit(why),
        None => ExitKind::Code(code as i32),
    };
    Exit { kind, usage: sampled.usage(oom) }
}

/// Whether process `pid` (in this PID namespace) belongs to container `id`: its control group
/// names the container.
pub(super) fn of_container(pid: i32, id: &str) -> bool {
    fs_err::read_to_string(format!("/proc/{pid}/cgroup")).is_ok_and(|c| !id.is_empty() && c.contains(id))
}

/// What the runtime's statistics said while the container ran (a container's statistics are
/// gone once it exits, so a very short run has none).
#[derive(Debug, Default)]
pub(super) struct Sampled {
    peak_memory: Option<u64>,
    cpu_ns: Option<u64>,
    pids: Option<u64>,
}

impl Sampled {
    fn take(&mut self, stats: bollard::models::ContainerStatsResponse) {
        if let Some(m) = stats.memory_stats {
            let now = m.max_usage.or(m.usage);
            if now.is_some_and(|n| n > 0) {
                self.peak_memory = self.peak_memory.max(now);
            }
        }
        if let Some(total) = stats.cpu_stats.and_then(|c| c.cpu_usage).and_then(|u| u.total_usage).filter(|t| *t > 0) {
            self.cpu_ns = Some(total);
        }
        self.pids = stats.pids_stats.and_then(|p| p.current);
    }

    /// A fork bomb holds the process count at its limit: stop it there.
    fn pids_breach(&self, limit: Option<u64>) -> Option<String> {
        let (Some(now), Some(max)) = (self.pids, limit) else { return None };
        (now >= max).then(|| crate::limits::Breach::Pids(max).to_string())
    }

    fn usage(&self, oom: bool) -> crate::limits::Usage {
        crate::limits::Usage {
            peak_memory_bytes: self.peak_memory,
            cpu_ms: self.cpu_ns.map(|ns| ns / 1_000_000),
            oom_kills: u64::from(oom),
            pids_refused: 0,
            ..Default::default()
        }
    }
}
