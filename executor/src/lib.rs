//! The addon executor: resolves an addon to a runner, prepares its run directory, runs it under
//! supervision and collects a typed report. Job servers link this crate; the `addon` command is a
//! thin layer over it.

pub mod config;
pub mod fetch;
pub mod source;
pub mod validate;

pub use config::Config;
