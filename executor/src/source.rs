//! Turning a SOURCE argument (directory, zip, URL, descriptor file) into a loaded addon.

use std::path::Path;

use addon_descriptors::{source, LoadedAddon, SourceError};

use crate::config::Config;
use crate::fetch::{self, FetchError};

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
}

impl OpenError {
    /// True when the addon was read and judged bad (exit 1); false when it could not be read (2).
    pub fn is_judgement(&self) -> bool {
        match self {
            OpenError::Source(e) => e.is_judgement(),
            OpenError::Fetch(FetchError::TooLarge { .. }) => true,
            OpenError::Fetch(_) => false,
        }
    }
}

/// Opens a source. Archives (downloaded or local) are unpacked below `scratch`.
pub fn open(source: &str, config: &Config, scratch: &Path) -> Result<LoadedAddon, OpenError> {
    let limits = config.archive.limits();
    if fetch::is_url(source) {
        let file = fetch::download(source, scratch, config.archive.download_timeout.0, limits.max_size)?;
        return Ok(source::load(file.path(), limits, Some(scratch))?);
    }
    Ok(source::load(Path::new(source), limits, Some(scratch))?)
}
