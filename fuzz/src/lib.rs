//! Helpers shared by the fuzz targets, and the parsers of other crates they fuzz.
//!
//! Three small modules are compiled here from their own source files rather than through their
//! crates, which would bring the whole gRPC stack and the runners' sandboxing into every fuzz
//! build: the Dockerfile grammar of the oci runner, the plugin handshake line and the CopyIn/
//! CopyOut tar streams. They are the project's code as it is, not copies. Should one of them
//! start to use its crate's other items (`crate::...`), this build fails: depend on its crate
//! then (`addon-runners` with `default-features = false`, `addon-runner-protocol`), at the cost
//! of a longer build.

/// `addon_runners::oci::dockerfile`.
#[path = "../../runners/src/oci/dockerfile.rs"]
pub mod dockerfile;

/// `addon_runner_protocol::handshake`.
#[path = "../../protocol/src/handshake.rs"]
pub mod handshake;

/// `addon_runner_protocol::copy`.
#[path = "../../protocol/src/copy.rs"]
pub mod copy;

/// `addon_runner_protocol::PROTOCOL_VERSION`, the version the engine's client checks the
/// handshake against (protocol/src/lib.rs).
pub const PROTOCOL_VERSION: u32 = 1;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

static MADE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

extern "C" fn remove_fixtures() {
    if let Ok(made) = MADE.lock() {
        for dir in made.iter() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A directory made once per process by `build` in a fresh temporary directory (under
/// `$TMPDIR`), for targets that read a tree but never write to it. libFuzzer leaves through
/// `exit`, which drops no statics; the directory is removed by an `atexit` handler then (a crash
/// leaves it, in scripts/fuzz's own TMPDIR, which the script removes).
pub fn fixture(cell: &'static OnceLock<PathBuf>, build: fn(&Path)) -> &'static Path {
    cell.get_or_init(|| {
        let dir =
            tempfile::Builder::new().prefix("addon-fuzz-fixture-").tempdir().expect("a temporary directory").keep();
        build(&dir);
        let mut made = MADE.lock().unwrap();
        if made.is_empty() {
            // SAFETY: registers a plain extern "C" function without arguments.
            unsafe { libc::atexit(remove_fixtures) };
        }
        made.push(dir.clone());
        dir
    })
}

/// Every path under `root` (not `root` itself), without following symlinks.
pub fn walk(root: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                todo.push(path.clone());
            }
            out.push((path, meta));
        }
    }
    out
}

/// The names in directory `dir`, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}
