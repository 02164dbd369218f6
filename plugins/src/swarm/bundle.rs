//! The task helper as it goes into an addon's image: `addon-swarm-task` (installed beside this
//! plugin's program) with the dynamic loader and the libraries it was linked against, copied
//! from this host, under `/.addon-swarm/`. The task starts it through that loader
//! (`/.addon-swarm/ld.so --library-path /.addon-swarm/lib ...`), so it runs in any image of the
//! same architecture, with or without a C library of its own; the addon's program, started by
//! exec, uses its image's own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bollard::Docker;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

pub const HELPER_NAME: &str = "addon-swarm-task";

/// The image label naming the helper's directory.
pub const LABEL_HELPER_DIR: &str = "org.addon-engine.swarm.helper-dir";

/// A directory for the helper no earlier layer of the image can have made: a layer adds files to
/// a directory and never takes away what lower layers put there (a `glibc-hwcaps/` of their own
/// libraries, which the loader would prefer to the helper's).
pub fn helper_dir() -> std::io::Result<String> {
    Ok(format!("/.addon-swarm-{}", &super::wire::token()?[..24]))
}

#[derive(Debug, Clone)]
pub struct Bundle {
    pub helper: PathBuf,
    pub loader: PathBuf,
    pub libs: Vec<PathBuf>,
    /// SHA-256 of all of it: part of the cache key (a new helper makes new images).
    pub digest: String,
}

impl Bundle {
    /// The helper beside this program, and what it needs (read once).
    pub fn find() -> Result<Bundle, String> {
        static FOUND: OnceLock<Result<Bundle, String>> = OnceLock::new();
        FOUND
            .get_or_init(|| {
                let exe = std::env::current_exe().map_err(|e| format!("this program's path: {e}"))?;
                let helper = exe.with_file_name(HELPER_NAME);
                if !helper.is_file() {
                    return Err(format!(
                        "the task helper {} is missing (it is built and installed with addon-runner-swarm)",
                        helper.display()
                    ));
                }
                Bundle::of(&helper)
            })
            .clone()
    }

    /// `helper` and the loader and libraries `ldd` names for it.
    pub fn of(helper: &Path) -> Result<Bundle, String> {
        // What the docker runner's own helper containers are given, read the same way.
        let (loader, libs) = addon_runners::docker::runtime_files(helper).map_err(|e| e.to_string())?;
        let mut h = Sha256::new();
        for p in
            std::iter::once(helper).chain(std::iter::once(loader.as_path())).chain(libs.iter().map(PathBuf::as_path))
        {
            let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
            // Names and content, not where this host keeps them: another engine's copy of the
            // same helper makes the same images.
            h.update(p.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
            h.update(Sha256::digest(&bytes));
        }
        Ok(Bundle { helper: helper.to_path_buf(), loader, libs, digest: hex::encode(h.finalize()) })
    }

    /// The task's command: the helper in `dir` through its own loader, which reads no library
    /// cache of the image and finds every library in `dir/lib`.
    pub fn command(dir: &str) -> Vec<String> {
        vec![
            format!("{dir}/ld.so"),
            "--inhibit-cache".into(),
            "--library-path".into(),
            format!("{dir}/lib"),
            format!("{dir}/{HELPER_NAME}"),
        ]
    }

    /// A build context: a Dockerfile that adds the bundle to `base`, and the bundle.
    fn context(&self, base: &str, helper_dir: &str) -> std::io::Result<Vec<u8>> {
        let mut tar = tar::Builder::new(Vec::new());
        let dir = helper_dir.trim_start_matches('/');
        // The base's `org.addon-engine.managed=true` (the docker runner's image label) would make
        // the task containers look like the docker runner's own.
        let dockerfile = format!(
            "FROM {base}\nCOPY {dir} {helper_dir}\nLABEL {LABEL_HELPER_DIR}={helper_dir} org.addon-engine.managed=swarm\n"
        );
        add(&mut tar, "Dockerfile", dockerfile.as_bytes(), 0o644)?;
        add(&mut tar, &format!("{dir}/{HELPER_NAME}"), &std::fs::read(&self.helper)?, 0o755)?;
        add(&mut tar, &format!("{dir}/ld.so"), &std::fs::read(&self.loader)?, 0o755)?;
        for lib in &self.libs {
            let name = lib.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            add(&mut tar, &format!("{dir}/lib/{name}"), &std::fs::read(lib)?, 0o755)?;
        }
        tar.into_inner()
    }
}

fn add(tar: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, path, data)
}

/// Builds `repo:tag` from `base` with the bundle added, and returns it.
pub async fn layer(
    docker: &Docker,
    base: &str,
    bundle: &Bundle,
    repo: &str,
    tag: &str,
    labels: &HashMap<String, String>,
) -> Result<String, String> {
    // The classic builder takes a base by name: the base is tagged for the build.
    let base_tag = format!("{tag}-base");
    let tag_opts = bollard::query_parameters::TagImageOptions { repo: Some(repo.into()), tag: Some(base_tag.clone()) };
    docker.tag_image(base, Some(tag_opts)).await.map_err(|e| format!("tagging {base}: {e}"))?;
    let based = format!("{repo}:{base_tag}");
    let dir = helper_dir().map_err(|e| format!("naming the helper's directory: {e}"))?;
    let context = bundle.context(&based, &dir).map_err(|e| format!("packing the task helper: {e}"))?;
    let target = format!("{repo}:{tag}");
    let opts = bollard::query_parameters::BuildImageOptions {
        dockerfile: "Dockerfile".into(),
        t: Some(target.clone()),
        rm: true,
        forcerm: true,
        labels: Some(labels.clone()),
        networkmode: Some("none".into()),
        ..Default::default()
    };
    let mut stream = docker.build_image(opts, None, Some(bollard::body_full(context.into())));
    let mut failed = None;
    while let Some(step) = stream.next().await {
        match step {
            Ok(info) => {
                if let Some(e) = info.error_detail.and_then(|d| d.message) {
                    failed = Some(e);
                }
            }
            Err(e) => failed = Some(e.to_string()),
        }
    }
    let untag = bollard::query_parameters::RemoveImageOptions { noprune: true, ..Default::default() };
    let _ = docker.remove_image(&based, Some(untag), None).await;
    match failed {
        Some(e) => Err(format!("adding the task helper to {base}: {e}")),
        None => Ok(target),
    }
}
