//! The built-in docker runner served out of process: the same runner, the same configuration
//! keys as the engine's `docker-runner:` section.

use std::sync::Arc;
use std::time::Duration;

use addon_runner_protocol::{FieldError, Plugin};
use addon_runners::docker::{DockerRunner, DockerSettings};
use addon_runners::{Runner, RunnerInfo};
use serde::Deserialize;

/// `plugins.NAME.config` of the docker plugin.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct DockerPluginConfig {
    /// Docker API address; null: `DOCKER_HOST`, else the local socket.
    pub host: Option<String>,
    /// How long an image build may take (`15m`).
    #[serde(with = "crate::human_duration")]
    pub build_timeout: Duration,
    /// User inside the container: null keeps the image's; `engine`; or `uid:gid`.
    pub user: Option<String>,
    /// Network of image builds (`none` to cut it); null: the daemon's default.
    pub build_network: Option<String>,
}

impl Default for DockerPluginConfig {
    fn default() -> Self {
        DockerPluginConfig { host: None, build_timeout: crate::DEFAULT_BUILD_TIMEOUT, user: None, build_network: None }
    }
}

pub struct DockerPlugin;

impl Plugin for DockerPlugin {
    fn info(&self) -> RunnerInfo {
        DockerRunner::new(settings(&DockerPluginConfig::default())).info()
    }

    fn configure(&self, config: &serde_json::Value) -> Result<Arc<dyn Runner>, Vec<FieldError>> {
        let c: DockerPluginConfig = crate::parse_config(config)?;
        Ok(Arc::new(DockerRunner::new(settings(&c))))
    }
}

fn settings(c: &DockerPluginConfig) -> DockerSettings {
    DockerSettings {
        host: c.host.clone(),
        build_timeout: c.build_timeout,
        user: c.user.clone(),
        build_network: c.build_network.clone(),
        // Unless the plugin's configuration names a network: builds get an egress network, as
        // the engine's own docker runner gives them under the default `network.build: egress`.
        build_egress: c.build_network.is_none().then(Default::default),
        // The `addon` binary beside this plugin's program (they are built and installed together).
        helper: std::env::current_exe().ok().map(|p| p.with_file_name("addon")).filter(|p| p.is_file()),
    }
}
