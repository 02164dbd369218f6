//! Runners and sandboxes: how to build and start one addon in one runtime, and nothing about
//! choosing between them (the executor does that from the declared [`Capabilities`]).
//!
//! Adding a runner is one new module implementing [`Runner`] and one line in [`registry`].

pub mod process;
pub mod runner;
pub mod sandbox;
pub mod trivial;

pub use process::{Ending, LogSink, LogStream, Supervised, Supervision};
pub use runner::{Availability, CacheUse, Capabilities, Launch, Runner, RunnerError, RunnerOutcome};
pub use sandbox::{Isolation, Mounts, Probe, SandboxError, SandboxKind};

/// Every runner compiled into this engine.
pub fn registry() -> Vec<Box<dyn Runner>> {
    vec![Box::new(trivial::TrivialRunner)]
}
