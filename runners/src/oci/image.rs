//! Getting an addon's image once: built from its Dockerfile with buildah (no daemon; rootless
//! when the engine is not root), or copied with skopeo from a local image store or a registry,
//! into an OCI image layout; then unpacked with umoci (layers in order, whiteouts applied, no
//! path outside the root filesystem) into the engine's cache entry, with the image's
//! configuration kept beside it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::bundle::{ImageConfig, ImageConfigError};
use crate::process::{LogSink, ToolFailure};
use crate::runner::BuildFailed;

/// The tag images get in the OCI layout.
const LAYOUT_TAG: &str = "addon";

/// Where a cache entry keeps the unpacked image: `<content>/image` (mode 0700, so that no host
/// user reaches the image's setuid files), holding `rootfs/`.
pub fn rootfs_of(content: &Path) -> PathBuf {
    content.join("image").join("rootfs")
}

/// Runs one tool to its end (see [`crate::process::run_tool`]), its output lines going to the
/// build log; on failure the error names the tool and carries the last lines.
pub async fn run_tool(
    cmd: tokio::process::Command,
    what: &str,
    log: &LogSink,
    timeout: Duration,
) -> Result<(), BuildFailed> {
    match crate::process::run_tool(cmd, "build: ", log, timeout, None).await {
        Ok(_) => Ok(()),
        Err(ToolFailure::Start(e)) => Err(format!("{what}: cannot start: {e}").into()),
        Err(ToolFailure::Exit { code, tail }) => {
            let last = tail.last_non_empty().unwrap_or_default().to_string();
            Err(BuildFailed::with_log(format!("{what} failed (exit code {code}): {last}"), tail.into_vec()))
        }
        Err(ToolFailure::TimedOut { tail }) => Err(BuildFailed::with_log(
            format!("{what} did not finish within {}", crate::process::human_secs(timeout)),
            tail.into_vec(),
        )),
        Err(ToolFailure::TooMuchOutput(_)) => Err(format!("{what}: printed too much").into()),
    }
}

/// A `docker://`-style reference with a tag (`busybox` is `busybox:latest`), as skopeo's
/// `docker-daemon:` transport wants it.
pub fn with_tag(image: &str) -> String {
    let name = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || name.contains(':') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

/// The destination of a copy into the layout.
pub fn layout_ref(layout: &Path) -> String {
    format!("oci:{}:{LAYOUT_TAG}", layout.display())
}

/// Why the image of an OCI layout could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("the image layout names a blob `{digest}`: not a sha256 digest")]
    NotSha256 { digest: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: {size} bytes is too large for a manifest or configuration", path.display())]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{} lists no image", index.display())]
    NoImage { index: PathBuf },
    #[error("the image manifest: {0}")]
    Manifest(#[source] serde_json::Error),
    #[error("the image manifest names no configuration (an index of several platforms?)")]
    NoConfig,
    #[error(transparent)]
    Config(#[from] ImageConfigError),
}

/// A blob of an OCI layout, by digest; only `sha256:` digests of 64 hex digits (a digest names a
/// file: nothing else may).
fn blob(layout: &Path, digest: &str) -> Result<Vec<u8>, LayoutError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .ok_or_else(|| LayoutError::NotSha256 { digest: digest.to_string() })?;
    let path = layout.join("blobs/sha256").join(hex);
    let io = |source| LayoutError::Io { path: path.clone(), source };
    let meta = fs_err::metadata(&path).map_err(io)?;
    if meta.len() > 16 << 20 {
        return Err(LayoutError::TooLarge { size: meta.len(), path });
    }
    fs_err::read(&path).map_err(io)
}

/// The image in `layout` (tagged [`LAYOUT_TAG`]): its configuration digest (the image id) and
/// its configuration.
pub fn read_layout(layout: &Path) -> Result<(String, ImageConfig), LayoutError> {
    let index_path = layout.join("index.json");
    let text = fs_err::read(&index_path).map_err(|source| LayoutError::Io { path: index_path.clone(), source })?;
    let index: serde_json::Value =
        serde_json::from_slice(&text).map_err(|source| LayoutError::Json { path: index_path.clone(), source })?;
    let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
    let chosen = manifests
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == LAYOUT_TAG)
        .or(manifests.first())
        .ok_or(LayoutError::NoImage { index: index_path })?;
    let digest = chosen["digest"].as_str().unwrap_or_default();
    let manifest: serde_json::Value = serde_json::from_slice(&blob(layout, digest)?).map_err(LayoutError::Manifest)?;
    let config_digest = manifest["config"]["digest"].as_str().ok_or(LayoutError::NoConfig)?;
    let config = ImageConfig::from_image_json(&blob(layout, config_digest)?)?;
    Ok((config_digest.to_string(), config))
}

/// How the ids in an image's layers become host ids when it is unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdShift {
    /// The first id in the layers (0, or where a build's user namespace put the image's root).
    pub from: u32,
    /// The host id it becomes.
    pub to: u32,
    pub size: u32,
}

/// Unpacks the image of `layout` into `content` (see [`rootfs_of`]): as the engine's own files
/// when rootless (`shift` None), else with the layers' ids moved as `shift` says (the image's
/// root is not the host's).
pub async fn unpack(
    umoci: &Path,
    layout: &Path,
    content: &Path,
    shift: Option<IdShift>,
    log: &LogSink,
    timeout: Duration,
) -> Result<(), BuildFailed> {
    use std::os::unix::fs::PermissionsExt;
    let image = content.join("image");
    fs_err::create_dir_all(&image).map_err(|e| format!("{}: {e}", image.display()))?;
    fs_err::set_permissions(&image, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("{}: {e}", image.display()))?;
    let bundle = image.join("unpacked");
    let mut cmd = tokio::process::Command::new(umoci);
    cmd.arg("unpack");
    match shift {
        Some(IdShift { from, to, size }) => {
            // umoci wants the image's root mapped too, even when no file is its.
            let mut maps = vec![format!("0:{to}:{size}")];
            if from != 0 {
                maps.push(format!("{from}:{to}:{size}"));
            }
            for m in maps {
                cmd.arg(format!("--uid-map={m}")).arg(format!("--gid-map={m}"));
            }
        }
        None => {
            cmd.arg("--rootless");
        }
    }
    cmd.arg("--image").arg(format!("{}:{LAYOUT_TAG}", layout.display())).arg(&bundle);
    // umoci makes what the layers do not name (the root itself, when no layer has `./`) with the
    // process's umask: under a job server's `UMask=0077` the image's root would be 0700, and an
    // image's non-root USER could not enter `/`. The image's modes, not the engine's umask.
    // SAFETY: umask is async-signal-safe and touches nothing else of the child.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        });
    }
    run_tool(cmd, "umoci unpack", log, timeout).await?;
    let rootfs = rootfs_of(content);
    fs_err::rename(bundle.join("rootfs"), &rootfs).map_err(|e| format!("{}: {e}", rootfs.display()))?;
    // umoci's own records (the runtime configuration it proposes, an mtree of every file) are not
    // needed: the engine writes each run's configuration.
    let _ = fs_err::remove_dir_all(&bundle);
    if shift.is_none() {
        // Directories an image keeps read-only (0555) would keep `addon cache prune`, which runs
        // as the engine's user, from removing the entry.
        owner_writable_dirs(&rootfs).map_err(|e| format!("{}: {e}", rootfs.display()))?;
    }
    make_mountpoints(&rootfs, shift.map(|s| s.to));
    Ok(())
}

/// Makes the mount points every run binds (`/mnt/work`, `/mnt/output`, `/mnt/cache`,
/// `/etc/hosts`) in the cached root once, so that the runtime need not create them in each run's
/// overlay. Only below real directories: where the image has a link on the way, nothing is made
/// here (the runtime then makes them inside the root, resolving links there).
fn make_mountpoints(rootfs: &Path, owner: Option<u32>) {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let real_dir = |p: &Path| fs_err::symlink_metadata(p).is_ok_and(|m| m.is_dir());
    let absent = |p: &Path| fs_err::symlink_metadata(p).is_err();
    // Every user of the image enters them and reads /etc/hosts, whatever the engine's umask.
    let own = |p: &Path| {
        let mode = if real_dir(p) { 0o755 } else { 0o644 };
        let _ = fs_err::set_permissions(p, std::fs::Permissions::from_mode(mode));
        if let Some(id) = owner {
            let _ = std::os::unix::fs::lchown(p, Some(id), Some(id));
        }
    };
    let mkdir = |p: &Path| std::fs::DirBuilder::new().mode(0o755).create(p).is_ok();
    let mnt = rootfs.join("mnt");
    if absent(&mnt) && mkdir(&mnt) {
        own(&mnt);
    }
    if real_dir(&mnt) {
        for sub in ["work", "output", "cache"] {
            let p = mnt.join(sub);
            if absent(&p) && mkdir(&p) {
                own(&p);
            }
        }
    }
    let etc = rootfs.join("etc");
    if absent(&etc) && mkdir(&etc) {
        own(&etc);
    }
    let hosts = etc.join("hosts");
    if real_dir(&etc) && absent(&hosts) {
        use std::os::unix::fs::OpenOptionsExt;
        let made = std::fs::OpenOptions::new().write(true).create_new(true).custom_flags(libc::O_NOFOLLOW).open(&hosts);
        if made.is_ok() {
            own(&hosts);
        }
    }
}

/// Gives the owner `rwx` on every directory of the unpacked image (by the walk that follows
/// nothing: the image's content is the addon's).
fn owner_writable_dirs(root: &Path) -> Result<(), addon_tree::TreeError> {
    addon_tree::walk(root, true, |n| {
        if n.event == addon_tree::Event::Enter && n.stat.perm & 0o700 != 0o700 {
            n.chmod(n.stat.perm | 0o700)?;
        }
        Ok(addon_tree::Visit::Continue)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_made_only_below_real_directories() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        fs_err::create_dir_all(&outside).unwrap();
        let root = d.path().join("rootfs");
        fs_err::create_dir_all(&root).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("mnt")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("etc")).unwrap();
        make_mountpoints(&root, None);
        assert_eq!(fs_err::read_dir(&outside).unwrap().count(), 0, "nothing made through the image's links");
        let plain = d.path().join("plain");
        fs_err::create_dir_all(&plain).unwrap();
        make_mountpoints(&plain, None);
        for p in ["mnt/work", "mnt/output", "mnt/cache"] {
            assert!(plain.join(p).is_dir(), "{p}");
        }
        assert!(plain.join("etc/hosts").is_file());
    }

    #[test]
    fn references_get_a_tag() {
        assert_eq!(with_tag("busybox"), "busybox:latest");
        assert_eq!(with_tag("localhost:5000/a/b"), "localhost:5000/a/b:latest");
        assert_eq!(with_tag("docspell/addon:1.2"), "docspell/addon:1.2");
        assert_eq!(with_tag("x@sha256:abc"), "x@sha256:abc");
    }

    #[test]
    fn layouts_name_only_sha256_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let l = dir.path();
        fs_err::create_dir_all(l.join("blobs/sha256")).unwrap();
        let evil = r#"{"manifests": [{"digest": "sha256:../../../etc/passwd"}]}"#;
        fs_err::write(l.join("index.json"), evil).unwrap();
        let e = read_layout(l).unwrap_err();
        assert!(matches!(e, LayoutError::NotSha256 { .. }), "{e}");
        assert!(e.to_string().contains("not a sha256 digest"), "{e}");
        let config = br#"{"config": {"Entrypoint": ["/run"], "User": "app"}}"#;
        let hex = |b: &[u8]| {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(b))
        };
        let c = hex(config);
        fs_err::write(l.join("blobs/sha256").join(&c), config).unwrap();
        let manifest = format!(r#"{{"config": {{"digest": "sha256:{c}"}}, "layers": []}}"#);
        let m = hex(manifest.as_bytes());
        fs_err::write(l.join("blobs/sha256").join(&m), &manifest).unwrap();
        let index = format!(
            r#"{{"manifests": [{{"digest": "sha256:{m}", "annotations": {{"org.opencontainers.image.ref.name": "addon"}}}}]}}"#
        );
        fs_err::write(l.join("index.json"), index).unwrap();
        let (id, cfg) = read_layout(l).unwrap();
        assert_eq!(id, format!("sha256:{c}"));
        assert_eq!((cfg.entrypoint, cfg.user.as_str()), (vec!["/run".to_string()], "app"));
    }
}
