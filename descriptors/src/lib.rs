//! The Docspell addon format, and nothing about processes.
//!
//! - [`model`]: the descriptor as typed data, with the derived properties (runners, purity).
//! - [`parse`]: reading a descriptor with compiler-style [`diagnostic`]s.
//! - [`output`]: the output format an addon prints, and its checks.
//! - [`archive`], [`source`]: safe unpacking of zips and loading of addon sources.
//! - [`digest`]: the content digest every cache key starts from.

pub mod archive;
pub mod diagnostic;
pub mod digest;
pub mod model;
pub mod output;
pub mod parse;
pub mod schema;
pub mod source;

pub use archive::{extract_zip, ArchiveError, Limits};
pub use diagnostic::{for_terminal, Diagnostic, Pos, Severity};
pub use digest::{digest_dir, ContentDigest, DigestCache};
pub use model::{Descriptor, Options, Section, Trigger, DESCRIPTOR_FILES};
pub use output::{AddonOutput, OutputError};
pub use parse::{
    image_reference, normalise_relative, parse_descriptor, ImageReferenceError, ImageReferenceProblem, Parsed,
};
pub use source::{load, load_dir, LoadedAddon, SourceError, SourceKind};
