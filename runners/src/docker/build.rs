//! Images: building an addon's Dockerfile with the daemon (its context packed by the walk that
//! follows nothing, its sources checked first) and what the cache records of an image.

use super::*;

/// What a docker image cache entry records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DockerImageMeta {
    /// The tag it was built under.
    pub image: String,
    /// The image id (what runs and what prune removes).
    pub id: String,
    /// Its size in the daemon's storage.
    pub size: u64,
}

impl addon_cache::EntryData for DockerImageMeta {
    fn external_size(&self) -> u64 {
        self.size
    }
}

/// `text` without the terminal colour sequences (`ESC [ ... m`) the daemon wraps a step's
/// stderr in.
pub(super) fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("\u{1b}[") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after.find(|c: char| !(c.is_ascii_digit() || c == ';')) {
            Some(j) if after[j..].starts_with('m') => rest = &after[j + 1..],
            _ => {
                out.push_str("\u{1b}[");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The Dockerfile's text (for what the build takes from outside its context); None when it
/// cannot be read (the daemon then says why).
pub(super) fn dockerfile_text(addon_dir: &Path, dockerfile: &str) -> Option<String> {
    let rel = normalise_relative(dockerfile).ok()?;
    match addon_tree::read_beneath(addon_dir, Path::new(&rel), 1 << 20) {
        Ok(Some(bytes)) => Some(String::from_utf8_lossy(&bytes).into_owned()),
        _ => None,
    }
}

/// Image names must be lowercase `[a-z0-9._-]`.
pub(super) fn image_tag(name: &str, short_digest: &str) -> String {
    let clean: String = name
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' })
        .collect();
    format!("addon-{}:{short_digest}", clean.trim_matches(|c: char| !c.is_ascii_alphanumeric()))
}

/// The network of a build's RUN steps.
pub(super) struct BuildNet {
    /// The daemon's network mode (`none`, `host`, `container:ID`, a network's name); None: the
    /// daemon's default.
    pub mode: Option<String>,
    /// Why the build has no network, when that is not `network.build: none`.
    pub offline_why: Option<String>,
}

#[allow(clippy::too_many_arguments)] // one build, all of its inputs
pub(super) async fn build(
    docker: &Docker,
    addon_dir: &Path,
    dockerfile: &str,
    tag: &str,
    digest: &str,
    label: &str,
    timeout: Duration,
    network: &BuildNet,
    log: &crate::process::LogSink,
) -> Result<DockerImageMeta, BuildFailed> {
    let offline = network.mode.as_deref() == Some("none");
    let text = dockerfile_text(addon_dir, dockerfile).unwrap_or_default();
    // The daemon fetches an `ADD <URL>` itself, on the host's own network: refused, as are
    // images named other than by a plain reference.
    crate::oci::dockerfile::check_sources(&text).map_err(|e| format!("{dockerfile}: {e}"))?;
    let bases = &crate::oci::dockerfile::base_images(&text);
    if offline && network.offline_why.is_none() {
        // The daemon pulls a missing base image whatever the build's network: not when builds
        // have none.
        for base in bases.iter().filter(|b| addon_descriptors::image_reference(b).is_ok()) {
            if docker.inspect_image(base).await.is_err() {
                return Err(format!(
                    "base image {base} is not among the Docker daemon's images and is not pulled: builds have \
                     no network (network.build: none); load it with `docker load` or `docker pull` where there is one"
                )
                .into());
            }
        }
    }
    let context = tar_dir(addon_dir).map_err(|e| format!("packing the build context {}: {e}", addon_dir.display()))?;
    let labels = HashMap::from([
        (LABEL_MANAGED.to_string(), "true".to_string()),
        (LABEL_DIGEST.to_string(), digest.to_string()),
        (LABEL_ADDON.to_string(), label.to_string()),
    ]);
    let opts = BuildImageOptions {
        dockerfile: dockerfile.to_string(),
        t: Some(tag.to_string()),
        rm: true,
        forcerm: true,
        labels: Some(labels),
        networkmode: network.mode.clone(),
        ..Default::default()
    };
    let context = bytes::Bytes::from(context);
    let mut tail = crate::lines::Tail::default();
    let mut step = String::new();
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut attempts = 0;
    let result = loop {
        attempts += 1;
        step.clear();
        let run = stream_build(docker, opts.clone(), context.clone(), &mut step, &mut tail, log);
        let result = match tokio::time::timeout_at(deadline, run).await {
            Ok(r) => r,
            Err(_) => Err(format!("did not finish within {timeout:?} (setting docker-runner.build-timeout)")),
        };
        match result {
            Err(e) if lost_a_cached_image(&e) && attempts <= CACHE_LOSSES_RETRIED => log(
                LogStream::Stderr,
                &format!(
                    "build: {e}: an image the build took from the daemon's cache was removed meanwhile (another \
                     engine's prune, or `docker image prune`); building again"
                ),
            ),
            result => break result,
        }
    };
    if let Err(e) = result {
        let at = if step.is_empty() { String::new() } else { format!(" at `{step}`") };
        let log = tail.to_vec();
        let note = match crate::build_failure::lack(&format!("{e}\n{}", log.join("\n")), bases) {
            Some(crate::build_failure::Lack::BaseImage) => format!(
                " (base image {} is not among the Docker daemon's images and could not be pulled; load it with \
                 `docker load` or `docker pull` where there is a network)",
                bases.join(", ")
            ),
            Some(crate::build_failure::Lack::Network) if offline => match &network.offline_why {
                Some(why) => format!(" ({why})"),
                None => " (builds have no network here: network.build: none; `egress` or `host` lets RUN steps \
                          fetch what they need)"
                    .to_string(),
            },
            _ => String::new(),
        };
        return Err(BuildFailed::with_log(format!("docker build{at}: {e}{note}"), log));
    }
    let inspect = docker.inspect_image(tag).await.map_err(|e| format!("built image {tag} cannot be inspected: {e}"))?;
    tracing::info!(addon = %label, "built image {tag} in {:?}", started.elapsed());
    Ok(DockerImageMeta {
        image: tag.to_string(),
        id: inspect.id.unwrap_or_else(|| tag.to_string()),
        size: inspect.size.unwrap_or(0).max(0) as u64,
    })
}

/// How many times a build that lost an image of the daemon's cache under it is started again.
const CACHE_LOSSES_RETRIED: usize = 2;

/// Whether a build failed because an image it took from the daemon's build cache was removed
/// while it ran. The classic builder reuses the images of earlier builds' steps; removing an
/// image (an engine's prune, `docker rmi`, `docker image prune`) removes its untagged parents
/// that have no other child, and a build that has just taken one of them from the cache, but not
/// yet made a child of it, then fails with "unable to find image" or "unknown parent image ID"
/// (seen when two engines of one host build and prune side by side). Building again makes the
/// lost steps anew.
pub(super) fn lost_a_cached_image(error: &str) -> bool {
    let error = error.to_ascii_lowercase();
    ["unable to find image \"sha256:", "no such image: sha256:", "unknown parent image id sha256:"]
        .iter()
        .any(|lost| error.contains(lost))
}

/// One build through the daemon's stream: its step lines are logged and kept in `tail`, the
/// step it is at in `step`.
async fn stream_build(
    docker: &Docker,
    opts: BuildImageOptions,
    context: bytes::Bytes,
    step: &mut String,
    tail: &mut crate::lines::Tail,
    log: &crate::process::LogSink,
) -> Result<(), String> {
    let mut stream = docker.build_image(opts, None, Some(bollard::body_full(context)));
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| e.to_string())?;
        if let Some(text) = info.stream.as_deref() {
            let text = without_colours(text);
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                if line.starts_with("Step ") || line.starts_with("STEP ") {
                    *step = line.to_string();
                }
                // The engine shows them (a progress line on a terminal) and keeps them.
                log(LogStream::Stderr, &format!("build: {line}"));
                tail.push(line);
            }
        }
        if let Some(err) = info.error_detail.and_then(|d| d.message) {
            return Err(err);
        }
    }
    Ok(())
}

/// The build context: the addon's files, read by the walk that follows nothing; a symlink that
/// leads out of the context is refused (the builder would copy what it points to).
pub(super) fn tar_dir(dir: &Path) -> Result<Vec<u8>, addon_tree::TreeError> {
    addon_tree::pack_tar(dir, Vec::new(), addon_tree::Links::Inside).map(|(tar, _)| tar)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_are_taken_out_of_build_lines() {
        assert_eq!(without_colours("\u{1b}[91mwget: failed\n\u{1b}[0m"), "wget: failed\n");
        assert_eq!(without_colours("a \u{1b}[1;31mb\u{1b}[0m c \u{1b}[x"), "a b c \u{1b}[x");
    }

    #[test]
    fn a_build_that_lost_a_cached_image_is_told_from_other_failures() {
        // As the daemon (20.10) said it when another engine's prune took a cached step's image.
        assert!(lost_a_cached_image(
            "unable to find image \"sha256:17ec850768013631ee3a228c99a53c58cc1a83503f019933142cc4fdbfdfe0fe\""
        ));
        assert!(lost_a_cached_image("Error response from daemon: No such image: sha256:17ec8507680136"));
        assert!(lost_a_cached_image(
            "failed to export image: failed to set parent sha256:dafdb3c3c9af40f78f9b5eeee16a5a7dffc3e72778aaca205f82f46aed738488: \
             unknown parent image ID sha256:dafdb3c3c9af40f78f9b5eeee16a5a7dffc3e72778aaca205f82f46aed738488"
        ));
        assert!(!lost_a_cached_image("pull access denied for nosuch, repository does not exist"));
        assert!(!lost_a_cached_image("unable to find image \"debian:bookworm\" locally"));
        assert!(!lost_a_cached_image("The command '/bin/sh -c false' returned a non-zero code: 1"));
    }
}
