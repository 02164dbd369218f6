//! Runner plugins shipped with the engine, built on the SDK of `addon-runner-protocol`:
//! `addon-runner-docker` (the built-in docker runner, served out of process) and
//! `addon-runner-gvisor` (trivial addons under gVisor's `runsc`) and `addon-runner-vm`
//! (trivial addons in a QEMU micro VM).

pub mod docker;
pub mod example;
pub mod gvisor;
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
