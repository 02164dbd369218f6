//! Runners and sandboxes: how to build and start one addon in one runtime, and nothing about
//! choosing between them (the executor does that from the declared [`Capabilities`]).
//!
//! Adding a runner is one new module implementing [`Runner`] and one line in [`registry`].

#[cfg(feature = "docker")]
pub mod docker;
pub mod limits;
#[cfg(feature = "nix")]
pub mod nix;
pub mod probe;
pub mod process;
pub mod runner;
pub mod sandbox;
pub mod trivial;

pub use limits::{Breach, Enforcement, Limits, Usage};
pub use probe::{Probe, ProbeCache};
pub use process::{Ending, LogSink, LogStream, NoiseFilter, Supervised, Supervision};
pub use runner::{Availability, CacheUse, Capabilities, Launch, Runner, RunnerError, RunnerOutcome};
pub use sandbox::{Isolation, Mounts, Sandbox, SandboxError, SandboxKind, SandboxSettings, Sandboxes};

/// Settings of the runners that have any.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Remembered probe results, shared by the engine's runners and sandboxes.
    pub probes: std::sync::Arc<ProbeCache>,
    #[cfg(feature = "docker")]
    pub docker: docker::DockerSettings,
    #[cfg(feature = "nix")]
    pub nix: nix::NixSettings,
}

/// Every runner compiled into this engine.
pub fn registry(settings: &Settings) -> Vec<Box<dyn Runner>> {
    let _ = settings;
    vec![
        #[cfg(feature = "docker")]
        Box::new(docker::DockerRunner::new(settings.docker.clone())),
        #[cfg(feature = "nix")]
        Box::new(nix::NixRunner::new(settings.nix.clone(), settings.probes.clone())),
        Box::new(trivial::TrivialRunner),
    ]
}
