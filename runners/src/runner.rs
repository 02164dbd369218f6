//! The runner boundary: one trait with a lifecycle split into steps (probe, cache key, build,
//! start, stop, release, reap) over plain, serialisable specs, so that a runner can live in this
//! process or in another one (see the `addon-runner-protocol` crate). The engine keeps the cache,
//! the locks and the timeouts; a runner builds what it is asked, starts a run and streams its
//! events (stdout, stderr, then the exit).
//!
//! The trait and its types live in the `addon-runner-api` crate (which plugins depend on without
//! this crate's runtimes) and are re-exported here at their old paths.

pub use addon_runner_api::runner::*;
pub use addon_runner_api::{Artifact, ArtifactData, ArtifactDataError};
