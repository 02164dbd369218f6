//! Runners and sandboxes: how to build and start one addon in one runtime, and nothing about
//! choosing between them (the executor does that from the declared [`Capabilities`]).
//!
//! Every runner, built in or a plugin, is a [`Runner`] made by a [`Factory`] of the registry.
//! Adding a built-in runner is one new module and one line in [`builtin_factories`].
//!
//! The trait and the types of its signatures (specs, events, errors, [`Limits`], [`LogSink`],
//! [`SandboxKind`], [`Mounts`]) belong to the `addon-runner-api` crate and are re-exported here
//! at their old paths. A plugin depends on that crate and on `addon-runner-protocol`'s SDK, not
//! on this one, unless it reuses a runner or sandbox of the engine (as `addon-runner-example`
//! reuses the trivial runner).

pub mod build_failure;
#[cfg(feature = "docker")]
pub mod docker;
pub mod host;
pub mod limits;
pub mod lines;
#[cfg(feature = "nix")]
pub mod nix;
pub mod oci;
pub mod probe;
pub mod process;
pub mod procfs;
pub mod runner;
pub mod sandbox;
pub mod trivial;

use std::sync::Arc;

use addon_descriptors::Section;

pub use limits::{Breach, Enforcement, Limits, Usage};
pub use probe::{Probe, ProbeCache};
pub use process::{Ending, LogSink, LogStream, NoiseFilter, Supervised};
pub use runner::{
    AddonRef, Artifact, ArtifactData, Availability, BuildSpec, CacheUse, Capabilities, Exit, ExitKind, RunDirs,
    RunEvent, Runner, RunnerError, RunnerInfo, StartSpec, Started,
};
pub use sandbox::{Isolation, Mounts, Sandbox, SandboxError, SandboxKind, SandboxSettings, Sandboxes};

/// Settings of the built-in runners that have any.
#[derive(Debug, Clone)]
pub struct Settings {
    #[cfg(feature = "docker")]
    pub docker: docker::DockerSettings,
    #[cfg(feature = "nix")]
    pub nix: nix::NixSettings,
    pub oci: oci::OciSettings,
}

/// What a factory makes a runner from: the engine's sandboxes and probe cache, and settings.
#[derive(Debug, Clone)]
pub struct RunnerContext {
    pub sandboxes: Arc<Sandboxes>,
    pub probes: Arc<ProbeCache>,
    pub settings: Settings,
}

/// A runner's constructor.
pub type MakeRunner = fn(&RunnerContext) -> Arc<dyn Runner>;

/// Makes one kind of runner.
#[derive(Clone, Copy)]
pub struct Factory {
    /// The runner's name in `runner:` and `--runner`.
    pub name: &'static str,
    /// The descriptor sections it serves.
    pub serves: &'static [Section],
    /// None when the runner is not compiled into this engine.
    pub make: Option<MakeRunner>,
}

impl std::fmt::Debug for Factory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Factory").field("name", &self.name).field("built", &self.make.is_some()).finish()
    }
}

/// The built-in runners, compiled in or not (a configuration may name one that is not; it is
/// then reported as not built into this engine).
pub fn builtin_factories() -> Vec<Factory> {
    vec![
        Factory {
            name: "docker",
            serves: &[Section::Docker],
            #[cfg(feature = "docker")]
            make: Some(|ctx| Arc::new(docker::DockerRunner::new(ctx.settings.docker.clone()))),
            #[cfg(not(feature = "docker"))]
            make: None,
        },
        Factory {
            name: "nix-flake",
            serves: &[Section::Nix],
            #[cfg(feature = "nix")]
            make: Some(|ctx| {
                Arc::new(nix::NixRunner::new(ctx.settings.nix.clone(), ctx.probes.clone(), ctx.sandboxes.clone()))
            }),
            #[cfg(not(feature = "nix"))]
            make: None,
        },
        Factory {
            name: "oci",
            serves: &[Section::Docker],
            make: Some(|ctx| {
                Arc::new(oci::OciRunner::new(ctx.settings.oci.clone(), ctx.probes.clone(), ctx.sandboxes.clone()))
            }),
        },
        Factory {
            name: "trivial",
            serves: &[Section::Trivial],
            make: Some(|ctx| Arc::new(trivial::TrivialRunner::new(ctx.sandboxes.clone()))),
        },
    ]
}
