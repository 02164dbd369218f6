//! Runner plugins shipped with the engine, built on the SDK of `addon-runner-protocol`:
//! `addon-runner-docker` (the built-in docker runner, served out of process) and
//! `addon-runner-gvisor` (trivial addons under gVisor's `runsc`) and `addon-runner-vm`
//! (trivial addons in a QEMU micro VM) and `addon-runner-swarm` (docker addons as Docker Swarm
//! jobs, with their task helper `addon-swarm-task`).

pub mod docker;
pub mod example;
pub mod gvisor;
pub mod swarm;
pub mod vm;

use addon_runner_protocol::FieldError;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// Reads a plugin's configuration (null: the defaults); errors name the field.
pub fn parse_config<T: DeserializeOwned + Default>(config: &serde_json::Value) -> Result<T, Vec<FieldError>> {
    if config.is_null() {
        return Ok(T::default());
    }
    serde_path_to_error::deserialize(config).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { String::new() } else { field };
        vec![FieldError::new(field, e.inner().to_string())]
    })
}

/// `build-timeout: 15m` in a plugin's configuration, as a human duration (serde `with`).
pub mod human_duration {
    use super::Duration;
    use serde::Deserialize;

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("`{s}`: {e}")))
    }
}

/// Default build timeout of the shipped plugins (as the built-in runners').
pub const DEFAULT_BUILD_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// `nix:` of a plugin's configuration (the gVisor and VM plugins build nix addons as the
/// nix-flake runner does): `nix-binary`, `build-timeout`, `extra-args`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct PluginNix {
    pub nix_binary: String,
    #[serde(with = "crate::human_duration")]
    pub build_timeout: Duration,
    /// More `nix build` arguments (`--offline`, `--option NAME VALUE`).
    pub extra_args: Vec<String>,
}

impl Default for PluginNix {
    fn default() -> Self {
        PluginNix { nix_binary: "nix".into(), build_timeout: DEFAULT_BUILD_TIMEOUT, extra_args: Vec::new() }
    }
}

impl PluginNix {
    /// The nix-flake runner's builder with these settings; builds get an egress network where
    /// the plugin can make one (root), as under the engine's default `network.build: egress`.
    pub fn runner(
        &self,
        probes: std::sync::Arc<addon_runners::ProbeCache>,
        sandboxes: std::sync::Arc<addon_runners::Sandboxes>,
    ) -> addon_runners::nix::NixRunner {
        addon_runners::nix::NixRunner::new(
            addon_runners::nix::NixSettings {
                nix_binary: self.nix_binary.clone(),
                build_timeout: self.build_timeout,
                extra_args: self.extra_args.clone(),
                ..addon_runners::nix::NixSettings::default()
            },
            probes,
            sandboxes,
        )
    }
}

/// A runner's probe that found it unusable, saying why.
pub fn unavailable(detail: impl Into<String>) -> addon_runner_api::Availability {
    addon_runner_api::Availability { available: false, version: None, detail: detail.into() }
}
