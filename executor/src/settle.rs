//! What the engine keeps of an addon's run, made safe first: its output (only files and
//! directories, owned by the engine's user), its `CACHE_DIR` and `HOME` (no setuid or setgid
//! bits, no file capabilities, no fifos, sockets or devices), its work directory when asked to
//! keep it. Every walk goes through `addon_tree`, by descriptors; a walk that fails is never
//! skipped: the tree is removed instead, and the run fails saying why.
//!
//! What it must never do: keep a tree whose walk did not finish, or follow anything in it.

use std::path::Path;

use addon_tree::{Sanitize, Sanitized};

/// A tree the engine would keep could not be made safe: `what` names it for the addon's
/// report (`its output`, `its CACHE_DIR`); the walk's error names the entry.
#[derive(Debug, thiserror::Error)]
#[error("{what} could not be made safe to keep ({source}); {}", match removal {
    None => "it was removed".to_string(),
    Some(r) => format!("removing it failed too: {r}"),
})]
pub(crate) struct Unsafe {
    pub what: String,
    #[source]
    pub source: addon_tree::TreeError,
    /// Why removing the tree failed too (None: it was removed).
    pub removal: Option<Box<addon_tree::TreeError>>,
}

/// Who the engine's user is, to take files back: `None` when the engine is root (root controls
/// whatever owner a file has, and `CACHE_DIR` and `HOME` stay with the sandbox's identity).
fn engine_owner() -> Option<(u32, u32)> {
    let me = addon_tree::current_owner();
    (me.0 != 0).then_some(me)
}

/// The output of one addon (its staging folder): only files and directories, all owned by the
/// engine's user, nothing privileged. On error the folder is removed.
pub(crate) fn output(staging: &Path) -> Result<Sanitized, Unsafe> {
    let how = Sanitize { owner: Some(addon_tree::current_owner()), keep_symlinks: false, dirs_writable: true };
    or_remove(staging, addon_tree::sanitize(staging, &how), "its output")
}

/// A tree the addon keeps between runs (`CACHE_DIR`, `HOME`): links stay (a virtualenv has
/// them), nothing privileged or special does; an unprivileged engine must own every entry. On
/// error the tree is emptied: the next run starts without it.
pub(crate) fn kept(dir: &Path, what: &str) -> Result<Sanitized, Unsafe> {
    let how = Sanitize { owner: engine_owner(), keep_symlinks: true, dirs_writable: false };
    let r = addon_tree::sanitize(dir, &how);
    let out = or_remove(dir, r, what);
    if out.is_err() {
        // The entry itself stays (it is the cache's); a new, empty content folder takes its place.
        let _ = fs_err::create_dir_all(dir);
    }
    out
}

/// A work directory kept for debugging (`--keep-work`).
pub(crate) fn kept_work(work: &Path) -> Result<Sanitized, Unsafe> {
    let how = Sanitize { owner: Some(addon_tree::current_owner()), keep_symlinks: true, dirs_writable: false };
    or_remove(work, addon_tree::sanitize(work, &how), "its work directory")
}

fn or_remove(dir: &Path, r: Result<Sanitized, addon_tree::TreeError>, what: &str) -> Result<Sanitized, Unsafe> {
    match r {
        Ok(s) => Ok(s),
        Err(source) => {
            Err(Unsafe { what: what.to_string(), source, removal: addon_tree::remove_tree(dir).err().map(Box::new) })
        }
    }
}

/// Removes a tree the run is done with, logging a failure loudly (a tree that cannot be removed
/// stays where the engine's user alone can reach it).
pub(crate) fn remove(dir: &Path) {
    if let Err(e) = addon_tree::remove_tree(dir) {
        tracing::error!("could not remove {}: {e}", dir.display());
    }
}

/// Whether a directory holds anything.
pub(crate) fn has_entries(dir: &Path) -> bool {
    fs_err::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(false)
}
