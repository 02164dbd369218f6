//! An image's `VOLUME`s. Docker gives each container an anonymous volume per `VOLUME` path,
//! kept under the daemon's storage after the container, and not counted by any limit of ours.
//! Instead the engine binds a directory of the run's own in its place, filled first with what
//! the image holds there (as Docker fills a new volume): it is counted by `output-size` and
//! `output-entries`, made safe and removed with the run like the other run directories.

use std::path::{Path, PathBuf};

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{DownloadFromContainerOptions, RemoveContainerOptions};
use bollard::Docker;
use futures_util::StreamExt;

use super::DockerError;

/// The `VOLUME` paths of `image` that the run's own mounts do not already cover.
pub async fn of(docker: &Docker, image: &str) -> Result<Vec<String>, DockerError> {
    let inspected = docker
        .inspect_image(image)
        .await
        .map_err(|source| DockerError::Inspect { image: image.to_string(), source })?;
    let declared: Vec<String> =
        inspected.config.and_then(|c| c.volumes).map(|v| v.into_iter().collect()).unwrap_or_default();
    // Every VOLUME becomes a directory of the run but those the run binds there already (a
    // path is read as the daemon cleans it: `/mnt/../x` is `/x`).
    let mut paths: Vec<String> = declared
        .iter()
        .map(|p| clean(p))
        .filter(|p| p != "/" && !["/mnt/work", "/mnt/output", "/mnt/cache"].contains(&p.as_str()))
        .collect();
    paths.sort();
    paths.dedup();
    Ok(paths)
}

/// The user `image` runs as (its `USER`; empty for root).
pub async fn user_of(docker: &Docker, image: &str) -> Result<String, DockerError> {
    let inspected = docker
        .inspect_image(image)
        .await
        .map_err(|source| DockerError::Inspect { image: image.to_string(), source })?;
    Ok(inspected.config.and_then(|c| c.user).unwrap_or_default())
}

/// The text of a small regular file of container `id` (`/etc/passwd`), at most 1 MiB; empty
/// when it is missing, not a regular file or larger.
pub async fn small_file(docker: &Docker, id: &str, path: &str) -> String {
    use std::io::Read;
    let mut tar = Vec::new();
    let mut stream = docker.download_from_container(id, Some(DownloadFromContainerOptions { path: path.into() }));
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else { return String::new() };
        tar.extend_from_slice(&chunk);
        if tar.len() > 2 << 20 {
            return String::new();
        }
    }
    let mut archive = tar::Archive::new(&tar[..]);
    let Ok(mut entries) = archive.entries() else { return String::new() };
    let Some(Ok(mut entry)) = entries.next() else { return String::new() };
    if entry.header().entry_type() != tar::EntryType::Regular {
        return String::new();
    }
    let mut text = String::new();
    let _ = (&mut entry).take(1 << 20).read_to_string(&mut text);
    text
}

/// An absolute path with `.`, `..` and repeated slashes resolved.
fn clean(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

/// For each of `paths`, a directory below `dir` holding what `image` has at that path, to bind
/// in its place. `max_bytes` bounds what is copied out of the image.
pub async fn fill(
    docker: &Docker,
    image: &str,
    paths: &[String],
    dir: &Path,
    labels: std::collections::HashMap<String, String>,
    max_bytes: Option<u64>,
) -> Result<Vec<(PathBuf, String)>, DockerError> {
    // A container that never starts: Docker copies the image's content into its volumes at
    // creation, and the archive API reads it from there.
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        labels: Some(labels),
        network_disabled: Some(true),
        ..Default::default()
    };
    let created = docker
        .create_container(None::<bollard::query_parameters::CreateContainerOptions>, body)
        .await
        .map_err(|source| DockerError::VolumesOf { image: image.to_string(), source })?;
    let result = copy_out(docker, &created.id, paths, dir, max_bytes).await;
    let rm = RemoveContainerOptions { force: true, v: true, ..Default::default() };
    if let Err(e) = docker.remove_container(&created.id, Some(rm)).await {
        tracing::warn!("removing container {}: {e}", created.id);
    }
    result
}

async fn copy_out(
    docker: &Docker,
    id: &str,
    paths: &[String],
    dir: &Path,
    max_bytes: Option<u64>,
) -> Result<Vec<(PathBuf, String)>, DockerError> {
    let mut out = Vec::new();
    for (n, path) in paths.iter().enumerate() {
        let mut tar = Vec::new();
        let opts = DownloadFromContainerOptions { path: path.clone() };
        let mut stream = docker.download_from_container(id, Some(opts));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| DockerError::ReadVolume { path: path.clone(), source })?;
            tar.extend_from_slice(&chunk);
            if max_bytes.is_some_and(|m| tar.len() as u64 > m.saturating_add(1 << 20)) {
                return Err(DockerError::VolumeTooLarge { path: path.clone() });
            }
        }
        let into = dir.join(format!("volume-{n}"));
        let raw = into.join("raw");
        // As root, the image's owners are kept (a `USER postgres` image writes its volume).
        let policy = addon_tree::UnpackPolicy { symlinks: true, max_bytes, owners: crate::sandbox::is_root() };
        addon_tree::unpack_tar(&tar[..], &raw, policy)
            .map_err(|source| DockerError::UnpackVolume { path: path.clone(), source })?;
        // The archive holds the path itself, under its own name. Only a real directory is bound:
        // a link there (an image can make `/data` a link to any host path) would be resolved on
        // the host by the daemon. In its place, the run gets an empty directory.
        let name = Path::new(path).file_name().map(|n| n.to_os_string()).unwrap_or_default();
        let host = into.join("content");
        let unpacked = raw.join(&name);
        let real_dir = fs_err::symlink_metadata(&unpacked).is_ok_and(|m| m.is_dir());
        let made = if real_dir { fs_err::rename(&unpacked, &host) } else { fs_err::create_dir(&host) };
        made.map_err(|source| DockerError::Io { path: host.clone(), source })?;
        addon_tree::remove_tree(&raw)?;
        out.push((host, path.clone()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn volume_paths_are_read_as_the_daemon_cleans_them() {
        assert_eq!(super::clean("/mnt/../fill"), "/fill");
        assert_eq!(super::clean("/data/"), "/data");
        assert_eq!(super::clean("//a/./b/../c"), "/a/c");
        assert_eq!(super::clean("/.."), "/");
    }
}
