//! Walks over directory trees that an addon could have written: its output, `CACHE_DIR`, `HOME`,
//! work directory, a build context, an unpacked archive. This crate is the only code of the engine
//! that walks such trees; everything else calls it.
//!
//! An addon writes these trees while it runs, and a second run of the same addon may write them
//! while this process walks them (it can swap a directory for a symlink to `/etc` between two
//! system calls). So every walk here:
//! - goes by directory descriptors, opening each entry by its single name relative to its parent's
//!   descriptor (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV`), never
//!   by path: there is no path-length limit, and a directory nested 100,000 levels deep is walked
//!   like any other;
//! - never follows a symlink and never crosses a mount point (one is an error);
//! - acts on the inode it checked: a change of owner, mode or extended attribute goes through a
//!   descriptor of the entry whose type and identity were verified, never through its name;
//! - holds a bounded number of descriptors however deep the tree (ancestors beyond the budget are
//!   closed and reopened through `..`, checked against the device and inode seen on the way
//!   down: a tree moved under the walk is an error, not a walk somewhere else);
//! - fails on an error instead of skipping the entry: callers treat a failed walk as a failed
//!   run. Only an entry that vanished between listing and opening is passed over (it is gone).
//!
//! What it must never do: follow a link, cross a mount, act on a path that was not verified, or
//! stop early and report success.

mod ops;
mod tar;
mod untar;
mod walk;

pub use ops::{
    copy_tree, make_executable, measure, merge_into, read_beneath, remove_tree, sanitize, Measure, Sanitize, Sanitized,
};
pub use tar::{links_stay_inside, pack_tar, Links, Packed};
pub use untar::{replace_content, unpack_tar, UnpackPolicy, Unpacked};
pub use walk::{display_path, walk, Event, Kind, Node, Stat, Visit};

use std::path::{Path, PathBuf};

/// An error of a walk, naming the entry (relative to the walk's root; shortened in the middle
/// when very deep) and what was being done.
#[derive(Debug, thiserror::Error)]
#[error("{root}: {at}: {what}: {source}")]
pub struct TreeError {
    /// The walk's root.
    pub root: PathBuf,
    /// The entry, relative to the root (`.` for the root itself).
    pub at: String,
    pub what: &'static str,
    #[source]
    pub source: std::io::Error,
}

impl TreeError {
    pub(crate) fn new(root: &Path, at: String, what: &'static str, source: std::io::Error) -> TreeError {
        TreeError { root: root.to_path_buf(), at, what, source }
    }

    /// The underlying error kind.
    pub fn kind(&self) -> std::io::ErrorKind {
        self.source.kind()
    }

    /// The entry went away (removed, or replaced by a rename) while the walk was at it: another
    /// process changed the tree, and there is nothing left to act on.
    pub fn vanished(&self) -> bool {
        self.kind() == std::io::ErrorKind::NotFound || self.source.raw_os_error() == Some(libc::ESTALE)
    }
}

/// The current process's effective user and group.
pub fn current_owner() -> (u32, u32) {
    (rustix::process::geteuid().as_raw(), rustix::process::getegid().as_raw())
}
