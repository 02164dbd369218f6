//! Runners and sandboxes: how to build and start one addon in one runtime, and nothing about
//! choosing between them (the executor does that from the declared [`Capabilities`]).
//!
//! Every runner, built in or a plugin, is a [`Runner`] made by a [`Factory`] of the registry.
//! Adding a built-in runner is one new module and one line in [`builtin_factories`]; its
//! settings are its own type, read from its section of the configuration ([`settings`]).
//!
//! The trait and the types of its signatures (specs, events, errors, [`Limits`], [`LogSink`],
//! [`SandboxKind`], [`Mounts`]) belong to the `addon-runner-api` crate and are re-exported here
//! at their old paths. A plugin depends on that crate and on `addon-runner-protocol`'s SDK, not
//! on this one, unless it reuses a runner or sandbox of the engine (as `addon-runner-example`
//! reuses the trivial runner).

pub mod build_failure;
#[cfg(feature = "docker")]
pub mod docker;
pub mod egress;
pub mod follow;
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
pub mod settings;
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
pub use settings::{BuildNetwork, ComponentSettings, ConfigSection, Sections};

/// What a factory makes a runner from: the engine's sandboxes and probe cache, the
/// configuration's sections (where a runner finds its own settings), and what is the engine's.
#[derive(Debug, Clone)]
pub struct RunnerContext {
    pub sandboxes: Arc<Sandboxes>,
    pub probes: Arc<ProbeCache>,
    pub sections: Sections,
    /// What builds reach (`network.build`).
    pub build_network: BuildNetwork,
    /// The resolvers an egress network's DNS forwarder asks (`network.resolvers`; empty: the
    /// host's).
    pub resolvers: Vec<std::net::SocketAddr>,
    /// The engine's `addon` binary, for helpers that run inside a sandbox or container.
    pub helper: Option<std::path::PathBuf>,
}

impl RunnerContext {
    /// The network a build gets under `network.build: egress` (None under `host` or `none`):
    /// the internet and the engine's resolver, never the host, its loopback or its network.
    /// No `network.allow`: that names what an addon's run may reach, not its build.
    pub fn build_egress(&self) -> Option<egress::Egress> {
        (self.build_network == BuildNetwork::Egress)
            .then(|| egress::Egress { allow: Vec::new(), resolvers: self.resolvers.clone() })
    }
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
    /// Its section of the engine configuration (`docker-runner`), when it has settings. A
    /// runner not compiled in keeps its key, so that its configuration still reads.
    pub config_key: Option<&'static str>,
    /// How that section reads; None when the runner is not compiled into this engine.
    pub settings: Option<ConfigSection>,
    /// None when the runner is not compiled into this engine.
    pub make: Option<MakeRunner>,
}

impl std::fmt::Debug for Factory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Factory").field("name", &self.name).field("built", &self.make.is_some()).finish()
    }
}

/// The sections of the configuration that runners and sandboxes own, with the keys of those
/// not compiled into this engine (read as anything, and unused).
pub fn config_sections() -> (Vec<ConfigSection>, Vec<&'static str>) {
    let runners = builtin_factories();
    let sandboxes = sandbox::builtin_sandboxes();
    let sections: Vec<ConfigSection> =
        runners.iter().filter_map(|f| f.settings).chain(sandboxes.iter().filter_map(|s| s.settings)).collect();
    let absent =
        runners.iter().filter_map(|f| f.config_key).filter(|k| !sections.iter().any(|s| s.key == *k)).collect();
    (sections, absent)
}

/// One registry line: a runner always compiled in (with its settings type, or `-` for none), or
/// one behind a cargo feature (without the feature: only its name and configuration key, so
/// that a configuration naming it still reads and says it is not built in).
macro_rules! factory {
    ($name:expr, $serves:expr, -, $make:expr) => {
        Factory { name: $name, serves: $serves, config_key: None, settings: None, make: Some($make) }
    };
    ($name:expr, $serves:expr, $settings:ty, $make:expr) => {
        Factory {
            name: $name,
            serves: $serves,
            config_key: Some(<$settings as ComponentSettings>::KEY),
            settings: Some(ConfigSection::of::<$settings>()),
            make: Some($make),
        }
    };
    (feature $feature:literal, $name:expr, $serves:expr, $key:expr, $settings:ty, $make:expr) => {
        Factory {
            name: $name,
            serves: $serves,
            config_key: Some($key),
            #[cfg(feature = $feature)]
            settings: Some(ConfigSection::of::<$settings>()),
            #[cfg(not(feature = $feature))]
            settings: None,
            #[cfg(feature = $feature)]
            make: Some($make),
            #[cfg(not(feature = $feature))]
            make: None,
        }
    };
}

/// The built-in runners, compiled in or not (a configuration may name one that is not; it is
/// then reported as not built into this engine). One line each.
pub fn builtin_factories() -> Vec<Factory> {
    vec![
        factory!(feature "docker", "docker", &[Section::Docker], "docker-runner", docker::DockerSettings, |ctx| {
            Arc::new(docker::DockerRunner::new(docker::DockerSettings::from_context(ctx)))
        }),
        factory!(feature "nix", "nix-flake", &[Section::Nix], "nix-runner", nix::NixSettings, |ctx| {
            let settings = nix::NixSettings::from_context(ctx);
            Arc::new(nix::NixRunner::new(settings, ctx.probes.clone(), ctx.sandboxes.clone()))
        }),
        factory!("oci", &[Section::Docker], oci::OciSettings, |ctx| {
            let settings = oci::OciSettings::from_context(ctx);
            Arc::new(oci::OciRunner::new(settings, ctx.probes.clone(), ctx.sandboxes.clone()))
        }),
        factory!("trivial", &[Section::Trivial], -, |ctx| Arc::new(trivial::TrivialRunner::new(ctx.sandboxes.clone()))),
    ]
}
