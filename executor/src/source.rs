//! Turning a SOURCE argument (directory, zip, URL, descriptor file) into a loaded addon.

use std::path::Path;

use addon_cache::{Cache, Key, Kind};
use addon_descriptors::{archive, source, ContentDigest, DigestCache, LoadedAddon, SourceError, SourceKind};

use crate::config::Config;
use crate::fetch::{self, FetchError};

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The archive was refused while unpacking into the cache.
    #[error("{0}")]
    Archive(String),
    #[error("cache: {0}")]
    Cache(String),
}

impl OpenError {
    /// True when the addon was read and judged bad (exit 1); false when it could not be read (2).
    pub fn is_judgement(&self) -> bool {
        match self {
            OpenError::Source(e) => e.is_judgement(),
            OpenError::Fetch(FetchError::TooLarge { .. }) => true,
            OpenError::Fetch(_) => false,
            OpenError::Archive(_) => true,
            OpenError::Cache(_) => false,
        }
    }
}

/// Opens a source. Archives (downloaded or local) are unpacked below `scratch`, or, with a
/// cache, into a cache entry keyed by the archive's sha256 so the same zip is unpacked once.
/// Directories are digested through `digests` when given (an unchanged directory is not read
/// again).
pub fn open(
    source: &str,
    config: &Config,
    scratch: &Path,
    cache: Option<&Cache>,
    digests: Option<&DigestCache>,
) -> Result<LoadedAddon, OpenError> {
    let limits = config.archive.limits();
    let downloaded;
    let path = if fetch::is_url(source) {
        downloaded = fetch::download(source, scratch, config.archive.download_timeout.0, limits.max_size)?;
        downloaded.path()
    } else {
        Path::new(source)
    };
    match (cache, SourceKind::classify(path)?) {
        (Some(cache), SourceKind::Zip(zip)) => {
            let sha = file_sha256(&zip).map_err(SourceError::Io)?;
            let key = Key::new(Kind::Archive)
                .with("zip-sha256", sha)
                .with("max-size", limits.max_size.to_string())
                .with("max-entries", limits.max_entries.to_string());
            let label = zip.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            let entry = cache
                .get_or_build(
                    &key,
                    &label,
                    |_: &ArchiveMeta, c| c.join("addon").is_dir(),
                    |content| {
                        let root =
                            archive::extract_zip(&zip, &content.join("addon"), limits).map_err(|e| e.to_string())?;
                        // Recorded, so that a later run of the same zip does not walk its content.
                        let digest = addon_descriptors::digest_dir(&root).map_err(|e| e.to_string())?;
                        Ok(ArchiveMeta { digest: digest.to_string() })
                    },
                )
                .map_err(|e| match e {
                    addon_cache::GetError::Build { error, .. } | addon_cache::GetError::Remembered { error, .. } => {
                        OpenError::Archive(error)
                    }
                    other => OpenError::Cache(other.to_string()),
                })?;
            let root = entry.content().join("addon");
            let digest = ContentDigest::parse(&entry.data().digest);
            if digest.is_none() {
                tracing::warn!(
                    "cache entry {} records no valid digest; digesting the addon again",
                    entry.path.display()
                );
            }
            Ok(source::load_dir_with_digest(&root, digest, Some(Box::new(entry)))?)
        }
        (_, SourceKind::Dir(dir)) => match digests {
            Some(digests) => Ok(source::load_dir_digested_by(&dir, |root| digests.digest(root), None)?),
            None => Ok(source::load_dir(&dir, None)?),
        },
        _ => Ok(source::load(path, limits, Some(scratch))?),
    }
}

/// What an unpacked-archive cache entry records.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ArchiveMeta {
    /// The content digest of the unpacked addon (`sha256:...`).
    pub digest: String,
}

impl addon_cache::EntryData for ArchiveMeta {}

fn file_sha256(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f = fs_err::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}
