//! The runner interface, and nothing runtime-specific: the [`Runner`] trait every runner
//! implements (the built-in ones in `addon-runners`, a plugin's behind `addon-runner-protocol`),
//! and the serialisable types of its signatures: what a runner is and can do ([`RunnerInfo`],
//! [`Capabilities`]), what it is asked ([`BuildSpec`], [`StartSpec`] with its [`Limits`] and
//! [`SandboxKind`]), and what it answers ([`Artifact`], [`Started`] and its [`RunEvent`]s, a
//! [`RunnerError`]).
//!
//! A plugin depends on this crate and the SDK, not on the engine's runners: this crate must
//! never depend on a runtime (no control groups, seccomp, container engines, processes).

pub mod artifact;
pub mod limits;
pub mod log;
pub mod network;
pub mod runner;
pub mod sandbox;

pub use artifact::{Artifact, ArtifactData, ArtifactDataError};
pub use limits::{Breach, Enforcement, Limits, Usage};
pub use log::{LogSink, LogStream};
pub use network::{Destination, Egress, NetKind, Network};
pub use runner::{
    AddonRef, Availability, BuildFailed, BuildSpec, CacheUse, Capabilities, Exit, ExitKind, RunDirs, RunEvent, Runner,
    RunnerError, RunnerInfo, StartSpec, Started, STOP_SLACK,
};
pub use sandbox::{Mounts, SandboxKind};
