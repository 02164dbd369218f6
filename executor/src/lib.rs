//! The addon executor: resolves an addon to a runner, prepares its run directory, runs it under
//! supervision and collects a typed report. Job servers link this crate; the `addon` command is a
//! thin layer over it.

pub mod config;
pub mod fetch;
pub mod source;
pub mod validate;

pub use config::Config;
pub mod engine;
pub mod report;
pub mod resolve;

pub use engine::{Engine, EngineError, Event, RunRequest};
pub use report::{AddonResult, RunReport};
pub use tokio_util::sync::CancellationToken;
