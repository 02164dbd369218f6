//! Getting an addon's image: from a local store or a registry as the settings allow, or built
//! from its Dockerfile with buildah (RUN steps in their own range of ids, the build's network as
//! `network.build` says), with failures explained by what was missing.

use super::*;

impl OciRunner {
    /// Gets the image of `spec` into an OCI layout at `layout`; returns where it came from.
    pub(super) async fn fetch(
        &self,
        spec: &BuildSpec,
        layout: &Path,
        runtime: &Runtime,
        log: &LogSink,
    ) -> Result<String, BuildFailed> {
        let s = &self.inner.settings;
        let timeout = s.build_timeout;
        if let Some(reference) = spec.descriptor.docker_image() {
            // A reference and nothing else reaches skopeo: `containers-storage:` would read a
            // leading `[driver@root+runroot:options]` as a store to open as root (and run its
            // mount program), `docker-daemon:` other forms.
            addon_descriptors::image_reference(reference).map_err(OciError::Image)?;
            let skopeo = self.tool(&s.skopeo, "copies `image:` references")?;
            let mut sources = Vec::new();
            match s.image_store {
                ImageStore::Docker => sources.push(format!("docker-daemon:{}", image::with_tag(reference))),
                ImageStore::Podman => sources.push(format!("containers-storage:{reference}")),
                ImageStore::None => {}
            }
            let offline = s.build_network == "none";
            let may_pull = !offline
                && match s.pull {
                    Pull::Missing => true,
                    Pull::IfNetworking => spec.descriptor.networking(),
                    Pull::Never => false,
                };
            if may_pull {
                sources.push(format!("docker://{reference}"));
            }
            if sources.is_empty() {
                return Err(format!(
                    "image {reference} is in no local store (oci-runner.image-store: none) and {} (oci-runner.pull)",
                    if offline {
                        "builds have no network (network.build: none)"
                    } else if s.pull == Pull::Never {
                        "pulling is off"
                    } else {
                        "a pure addon's image is not pulled (oci-runner.pull: if-networking)"
                    }
                )
                .into());
            }
            let mut failures = Vec::new();
            for source in &sources {
                let mut cmd = tool_command(&skopeo);
                cmd.args(["copy", "--quiet", source]).arg(image::layout_ref(layout));
                match image::run_tool(cmd, &format!("skopeo copy {source}"), log, timeout).await {
                    Ok(()) => return Ok(source.clone()),
                    Err(e) => failures.push(e.message),
                }
                let _ = fs_err::remove_dir_all(layout);
            }
            let pull_note = if may_pull {
                ""
            } else if offline {
                " (not pulled: builds have no network, network.build: none)"
            } else if s.pull == Pull::Never {
                " (not pulled: oci-runner.pull: never)"
            } else {
                " (not pulled: a pure addon's image is not, with oci-runner.pull: if-networking)"
            };
            return Err(format!("image {reference} was found nowhere{pull_note}: {}", failures.join("; ")).into());
        }
        let buildah = self.tool(&s.buildah, "builds Dockerfile addons")?;
        let dockerfile = spec.descriptor.dockerfile().to_string();
        let rel = normalise_relative(&dockerfile).map_err(|why| format!("runner.docker.build `{dockerfile}` {why}"))?;
        let path = spec.addon_dir.join(&rel);
        // Nothing in the context may lead out of it (a `COPY` or a `RUN --mount` through a link,
        // or the Dockerfile itself).
        addon_tree::links_stay_inside(&spec.addon_dir).map_err(OciError::Context)?;
        let text = addon_tree::read_beneath(&spec.addon_dir, Path::new(&rel), 1 << 20)
            .map_err(|source| OciError::ReadDockerfile { file: dockerfile.clone(), source })?
            .ok_or_else(|| format!("{dockerfile}: no such file in the addon"))?;
        // The Dockerfile is the addon's code: read as buildah reads it, before buildah does.
        let version = crate::sandbox::version_of(&buildah).unwrap_or_default();
        let mount_safe = dockerfile::parse_version(&version).is_some_and(|v| v >= dockerfile::BUILDAH_MOUNT_FIXED);
        let builder = if version.is_empty() { "buildah".to_string() } else { version.clone() };
        // Text, and nothing a builder could read another way (a stray byte 0x85 is a space to it).
        let text = String::from_utf8(text).map_err(|_| format!("{dockerfile}: is not UTF-8 text"))?;
        let refused = |source| OciError::Dockerfile { file: dockerfile.clone(), source };
        dockerfile::check(&text, mount_safe, &builder).map_err(refused)?;
        dockerfile::check_sources(&text).map_err(refused)?;
        let tag = format!("localhost/addon-oci-{}:{}", spec.addon.short_digest(), std::process::id());
        // Builds are not the run: every build reaches what `network.build` says (a real
        // Dockerfile installs packages), whatever the addon's `networking`. A base image found in
        // a local store is used before any registry; one is pulled only with a build network and
        // `oci-runner.pull` not `never`.
        let mut held = None;
        // An unprivileged engine's build: behind a gate in buildah's own user namespace.
        let mut rootless_egress = false;
        let (network, offline_why) = match s.build_network.as_str() {
            // RUN steps join a network namespace given the egress network, and resolve through
            // the engine's resolver: one of the engine's (root), or one made inside buildah's
            // user namespace (see `build_net`).
            "egress" => match self.gives_egress() {
                Ok(()) if !is_root() => {
                    rootless_egress = true;
                    (build_net::PLACEHOLDER.trim_start_matches("--network=").to_string(), String::new())
                }
                Ok(()) => {
                    let (e, dir) = (s.build_egress.clone().unwrap_or_default(), self.state_dir());
                    fs_err::create_dir_all(&dir).map_err(|e| format!("{e}"))?;
                    let net = tokio::task::spawn_blocking(move || crate::egress::EgressNet::hold(&e, &dir))
                        .await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| format!("the build's egress network: {e}"))?;
                    let at = net.path().map(Path::to_path_buf).unwrap_or_default();
                    held = Some(net);
                    (format!("ns:{}", at.display()), String::new())
                }
                Err(why) => (
                    "none".to_string(),
                    format!(
                        "network.build: egress, and {why} (buildah's own networks reach the host); \
                         network.build: host gives RUN steps the host's network"
                    ),
                ),
            },
            // buildah 1.28 gives a rootless build no network of its own (its CNI bridge needs
            // root, its slirp4netns fails here): no network rather than the host's own.
            "private" if !is_root() => (
                "none".to_string(),
                "an unprivileged engine's builds get no network of their own here (buildah's private network \
                 needs root); network.build: host gives RUN steps the host's network"
                    .to_string(),
            ),
            "none" => (
                "none".to_string(),
                "network.build: none; `egress` or `host` lets RUN steps fetch what they need".to_string(),
            ),
            n => (n.to_string(), String::new()),
        };
        let offline_why = offline_why.as_str();
        // Base images are fetched by buildah itself, not by a RUN step.
        let online = s.build_network != "none"
            && match s.pull {
                Pull::Missing => true,
                Pull::IfNetworking => spec.descriptor.networking(),
                Pull::Never => false,
            };
        // Rootless, buildah's storage is the engine's own (a job server's account may have no
        // home); as root, the system's (shared with podman, so its base images are found).
        let storage: Vec<String> = if is_root() {
            Vec::new()
        } else {
            let state = self.state_dir();
            vec![
                format!("--root={}", state.join("storage").display()),
                format!("--runroot={}", state.join("runroot").display()),
            ]
        };
        // A job server's account may have no home, where buildah keeps its locks and settings.
        let home = std::env::var_os("HOME").map(PathBuf::from).filter(|h| writable_dir(h));
        let own_home = (!is_root() && home.is_none()).then(|| self.state_dir().join("home"));
        if let Some(h) = &own_home {
            fs_err::create_dir_all(h).map_err(OciError::io(h))?;
        }
        let buildah_cmd = || {
            let mut c = tool_command(&buildah);
            c.args(&storage);
            if let Some(h) = &own_home {
                c.env("HOME", h);
            }
            c
        };
        let build_runtime = build_runtime(runtime)?;
        let bases = dockerfile::base_images(&text);
        if s.image_store == ImageStore::Docker {
            // The Docker daemon's images serve as base images: copied into buildah's storage once.
            // A reference and nothing else reaches buildah (a word like `-q` or a transport
            // prefix is the addon's text, not a name): buildah reads FROM itself and says what
            // is wrong with it.
            for base in bases.iter().filter(|b| addon_descriptors::image_reference(b).is_ok()) {
                let mut inspect = buildah_cmd();
                inspect.args(["inspect", "--type", "image", "--format", "{{.FromImageID}}", "--", base]);
                let quiet: LogSink = std::sync::Arc::new(|_, _| {});
                if image::run_tool(inspect, "buildah inspect", &quiet, Duration::from_secs(60)).await.is_ok() {
                    continue;
                }
                let mut pull = buildah_cmd();
                pull.args(["pull", "--quiet", "--"]).arg(format!("docker-daemon:{}", image::with_tag(base)));
                if let Err(e) = image::run_tool(pull, "buildah pull", log, timeout).await {
                    let why = e.message;
                    log(
                        crate::process::LogStream::Stderr,
                        &format!("build: base image {base} is not taken from the Docker daemon: {why}"),
                    );
                }
            }
        }
        let mut cmd = buildah_cmd();
        let gate = if rootless_egress {
            Some(
                build_net::wrap(&mut cmd, &buildah, &storage)
                    .map_err(|e| format!("the build's egress network: {e}"))?,
            )
        } else {
            cmd.arg("build");
            None
        };
        cmd.arg(format!("--runtime={}", build_runtime.display()))
            .arg("--isolation=oci")
            .arg(format!("--network={network}"))
            // `false`: pulled only when not present (`true` asks the registry even then).
            .arg(if online { "--pull=false" } else { "--pull=never" })
            .arg("--layers=false")
            .arg(format!("--label=org.addon-engine.addon={}", spec.addon.label()));
        if let Some((base, size)) = self.id_map() {
            // As root, RUN steps run in a user namespace of their own range of host ids (above
            // the containers'), never as the host's root.
            // Its layer keeps those host ids: squashed into one layer (base image included), they
            // are moved back to the containers' range when unpacked.
            let map = format!("0:{}:{size}", base + size);
            cmd.arg(format!("--userns-uid-map={map}")).arg(format!("--userns-gid-map={map}")).arg("--squash");
        }
        if held.is_some() || gate.is_some() {
            cmd.arg(format!("--dns={}", crate::egress::RESOLVER));
            // In their user namespace, RUN steps may not mount a sysfs for a network namespace
            // that namespace does not own (the engine's): an empty, read-only /sys instead (with
            // the mount point of the cgroup file system the runtime mounts).
            cmd.arg(format!("--volume={}:/sys:ro", self.empty_sys().map_err(|e| e.to_string())?.display()));
        }
        cmd.arg("-f").arg(&path).arg("-t").arg(&tag).arg(&spec.addon_dir);
        let built = match gate {
            None => image::run_tool(cmd, "buildah build", log, timeout).await,
            Some(gate) => {
                let egress = s.build_egress.clone().unwrap_or_default();
                let within = timeout.min(Duration::from_secs(60));
                let (built, opened) = tokio::join!(
                    image::run_tool(cmd, "buildah build", log, timeout),
                    build_net::open(gate, egress, within)
                );
                match opened {
                    // The hold is let go now that the build has ended, and the holder with it.
                    Ok((net, _hold)) => {
                        held = Some(net);
                        built
                    }
                    // The build's own failure says more.
                    Err(build_net::GateError::NoReport(_)) if built.is_err() => built,
                    Err(build_net::GateError::NoReport(e)) => Err(format!("the build's egress network: {e}").into()),
                    Err(build_net::GateError::Network(why)) => {
                        Err(format!("the build's egress network could not be made: {why}").into())
                    }
                }
            }
        };
        if let Some(net) = held {
            let used = tokio::task::spawn_blocking(move || net.finish()).await.unwrap_or_default();
            if used.refused > 0 {
                log(
                    crate::process::LogStream::Stderr,
                    &format!(
                        "build: the build's egress network refused {} packets (to the host, its network or \
                         addresses never reachable)",
                        used.refused
                    ),
                );
            }
        }
        built.map_err(|e| explain_build_failure(e, &bases, offline_why, online, s))?;
        let mut push = buildah_cmd();
        push.args(["push", "--quiet", &tag]).arg(image::layout_ref(layout));
        let pushed = image::run_tool(push, "buildah push", log, timeout).await;
        // The image lives on in the engine's cache only.
        let mut rmi = buildah_cmd();
        rmi.args(["rmi", "--force", &tag]);
        let _ = image::run_tool(rmi, "buildah rmi", log, Duration::from_secs(60)).await;
        pushed.map(|()| format!("Dockerfile {dockerfile} (buildah)"))
    }
}

/// A failed `buildah build` that failed for want of a base image or of network says so, and
/// names the setting that changes it.
pub(super) fn explain_build_failure(
    mut error: BuildFailed,
    bases: &[String],
    offline_why: &str,
    online: bool,
    s: &OciSettings,
) -> BuildFailed {
    use crate::build_failure::{lack, Lack};
    let store = match s.image_store {
        ImageStore::None => {
            "no local image store is read (oci-runner.image-store: none; `docker` or `podman` reads one)"
        }
        ImageStore::Docker => "not in the Docker daemon's images (oci-runner.image-store: docker)",
        ImageStore::Podman => "not in podman's images (oci-runner.image-store: podman)",
    };
    let note = match lack(&format!("{}\n{}", error.message, error.log_tail.join("\n")), bases) {
        Some(Lack::BaseImage) => {
            let pulled = if online {
                "and no registry gave it"
            } else if s.build_network == "none" {
                "and not pulled: builds have no network (network.build: none)"
            } else if s.pull == Pull::Never {
                "and not pulled (oci-runner.pull: never)"
            } else {
                "and not pulled for a pure addon (oci-runner.pull: if-networking)"
            };
            format!(" (base image {} not found: {store}, {pulled})", bases.join(", "))
        }
        Some(Lack::Network) if !offline_why.is_empty() => format!(" (RUN steps have no network here: {offline_why})"),
        Some(Lack::NetworkSetup) => " (buildah could not make the build's own network: network.build: egress needs the \
             CNI plugins and a network configuration, as podman installs them (apt-get install containernetworking-plugins \
             podman); network.build: host gives builds the host's network instead)"
            .to_string(),
        _ => return error,
    };
    error.message.push_str(&note);
    error
}

/// The runtime buildah runs a Dockerfile's RUN steps with: the run's, except crun on a hybrid
/// cgroup host. Runs cover the v2 hierarchy from crun (see [`hybrid_v2_mount`]); buildah's
/// containers ask crun for groups of their own, which it would make in that hierarchy, so
/// builds there use runc.
pub(super) fn build_runtime(runtime: &Runtime) -> Result<PathBuf, OciError> {
    if runtime.name != "crun" || hybrid_v2_mount().is_none() {
        return Ok(runtime.path.clone());
    }
    which::which("runc").map_err(|_| OciError::NoBuildRuntime)
}
