//! Local addon sources: a directory, a zip file, or a descriptor file alone.
//!
//! Loading finds the descriptor, unpacks archives safely (see [`crate::archive`]), computes the
//! content digest and validates. Downloading URLs is the executor's job; it hands the file here.

use std::io;
use std::path::{Path, PathBuf};

use fs_err as fs;

use crate::archive::{self, ArchiveError, Limits};
use crate::diagnostic::Diagnostic;
use crate::digest::{digest_dir, ContentDigest};
use crate::model::{Descriptor, DESCRIPTOR_FILES};
use crate::parse::{parse_descriptor, Parsed};

/// Descriptors larger than this are refused unread.
const MAX_DESCRIPTOR_BYTES: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("addon source {path} does not exist")]
    NotFound { path: PathBuf },
    #[error("addon source {path} is neither a directory, a .zip file nor a docspell-addon.(json|yaml|yml) file")]
    Unsupported { path: PathBuf },
    #[error("addon {path} has no descriptor: expected one of {}", DESCRIPTOR_FILES.join(", "))]
    NoDescriptor { path: PathBuf },
    #[error("descriptor {path} is larger than {MAX_DESCRIPTOR_BYTES} bytes")]
    DescriptorTooLarge { path: PathBuf },
    #[error("descriptor {path} is not UTF-8 text")]
    NotText { path: PathBuf },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    #[error("cannot read addon source: {0}")]
    Io(#[from] io::Error),
}

impl SourceError {
    /// True when the source was read and judged bad (exit 1), false when it could not be read
    /// at all (exit 2).
    pub fn is_judgement(&self) -> bool {
        match self {
            SourceError::NoDescriptor { .. } | SourceError::DescriptorTooLarge { .. } | SourceError::NotText { .. } => {
                true
            }
            SourceError::Archive(e) => !matches!(e, ArchiveError::Io(_)),
            _ => false,
        }
    }
}

/// What a local source path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    Dir(PathBuf),
    Zip(PathBuf),
    DescriptorFile(PathBuf),
}

impl SourceKind {
    pub fn classify(path: &Path) -> Result<SourceKind, SourceError> {
        let meta = fs_err::metadata(path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => SourceError::NotFound { path: path.to_path_buf() },
            _ => SourceError::Io(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        })?;
        if meta.is_dir() {
            return Ok(SourceKind::Dir(path.to_path_buf()));
        }
        let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
        if name.ends_with(".zip") || is_zip_magic(path) {
            Ok(SourceKind::Zip(path.to_path_buf()))
        } else if DESCRIPTOR_FILES.contains(&name.as_str())
            || name.ends_with(".yml")
            || name.ends_with(".yaml")
            || name.ends_with(".json")
        {
            Ok(SourceKind::DescriptorFile(path.to_path_buf()))
        } else {
            Err(SourceError::Unsupported { path: path.to_path_buf() })
        }
    }
}

fn is_zip_magic(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && magic == *b"PK\x03\x04"
}

/// An addon read from a source: its files (when there are any), descriptor and digest.
#[derive(Debug)]
pub struct LoadedAddon {
    /// The unpacked addon's root; None when only a descriptor file was given.
    pub root: Option<PathBuf>,
    pub descriptor_path: PathBuf,
    pub descriptor_text: String,
    pub parsed: Parsed,
    /// Digest of the addon's content; for a descriptor alone, of that file.
    pub digest: ContentDigest,
    /// Keeps the unpacked files alive (a temp dir, a locked cache entry) while the addon is used.
    _keep: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl LoadedAddon {
    /// The validated descriptor, when it is valid.
    pub fn descriptor(&self) -> Option<&Descriptor> {
        self.parsed.is_valid().then_some(self.parsed.descriptor.as_ref()).flatten()
    }

    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.parsed.diagnostics
    }
}

/// Loads and validates a local source. Archives are unpacked into a temporary directory under
/// `scratch` (default: the system temp dir) that lives as long as the returned value.
pub fn load(path: &Path, limits: Limits, scratch: Option<&Path>) -> Result<LoadedAddon, SourceError> {
    match SourceKind::classify(path)? {
        SourceKind::Dir(dir) => load_dir(&dir, None),
        SourceKind::Zip(zip) => {
            let tmp = match scratch {
                Some(s) => {
                    fs::create_dir_all(s)?;
                    tempfile::Builder::new().prefix("addon-zip-").tempdir_in(s)?
                }
                None => tempfile::Builder::new().prefix("addon-zip-").tempdir()?,
            };
            let root = archive::extract_zip(&zip, &tmp.path().join("addon"), limits)?;
            load_dir(&root, Some(Box::new(tmp)))
        }
        SourceKind::DescriptorFile(file) => {
            let text = read_descriptor(&file)?;
            let parsed = parse_descriptor(&text, None);
            let digest = digest_bytes(text.as_bytes());
            Ok(LoadedAddon { root: None, descriptor_path: file, descriptor_text: text, parsed, digest, _keep: None })
        }
    }
}

/// Loads an unpacked addon directory.
pub fn load_dir(root: &Path, keep: Option<Box<dyn std::any::Any + Send + Sync>>) -> Result<LoadedAddon, SourceError> {
    load_dir_with_digest(root, None, keep)
}

/// Loads an unpacked addon whose digest is already known (an unpacked archive in the cache
/// records it), skipping the walk over its content.
pub fn load_dir_with_digest(
    root: &Path,
    digest: Option<ContentDigest>,
    keep: Option<Box<dyn std::any::Any + Send + Sync>>,
) -> Result<LoadedAddon, SourceError> {
    match digest {
        Some(d) => load_dir_digested_by(root, |_| Ok(d), keep),
        None => load_dir_digested_by(root, digest_dir, keep),
    }
}

/// Loads an unpacked addon whose content digest `digest` computes (once the descriptor is
/// found): a [`crate::DigestCache`] of a long-lived engine, for one.
pub fn load_dir_digested_by(
    root: &Path,
    digest: impl FnOnce(&Path) -> std::io::Result<ContentDigest>,
    keep: Option<Box<dyn std::any::Any + Send + Sync>>,
) -> Result<LoadedAddon, SourceError> {
    // Read below the addon's root only (a descriptor that is a link out of it, as an archive
    // could make one, is an error, never a host file), and never more than the limit, whatever
    // the file's size says.
    let mut found = None;
    for name in DESCRIPTOR_FILES {
        let read = addon_tree::read_beneath(root, Path::new(name), MAX_DESCRIPTOR_BYTES);
        match read {
            Ok(None) => continue,
            Ok(Some(bytes)) => {
                found = Some((root.join(name), bytes));
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::FileTooLarge => {
                return Err(SourceError::DescriptorTooLarge { path: root.join(name) })
            }
            Err(e) => return Err(SourceError::Io(std::io::Error::new(e.kind(), e.to_string()))),
        }
    }
    let (descriptor_path, bytes) = found.ok_or_else(|| SourceError::NoDescriptor { path: root.to_path_buf() })?;
    let text = String::from_utf8(bytes).map_err(|_| SourceError::NotText { path: descriptor_path.clone() })?;
    let parsed = parse_descriptor(&text, Some(root));
    let digest = digest(root)?;
    Ok(LoadedAddon {
        root: Some(root.to_path_buf()),
        descriptor_path,
        descriptor_text: text,
        parsed,
        digest,
        _keep: keep,
    })
}

/// A descriptor file given alone (`addon validate FILE`): at most the limit is read, whatever
/// its size says.
fn read_descriptor(path: &Path) -> Result<String, SourceError> {
    use std::io::Read;
    let len = fs::metadata(path)?.len();
    if len > MAX_DESCRIPTOR_BYTES {
        return Err(SourceError::DescriptorTooLarge { path: path.to_path_buf() });
    }
    let mut bytes = Vec::new();
    fs::File::open(path)?.take(MAX_DESCRIPTOR_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_DESCRIPTOR_BYTES {
        return Err(SourceError::DescriptorTooLarge { path: path.to_path_buf() });
    }
    String::from_utf8(bytes).map_err(|_| SourceError::NotText { path: path.to_path_buf() })
}

fn digest_bytes(bytes: &[u8]) -> ContentDigest {
    use sha2::{Digest, Sha256};
    ContentDigest::parse(&format!("sha256:{}", hex::encode(Sha256::digest(bytes)))).expect("a sha256 is a digest")
}
