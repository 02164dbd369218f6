//! Runner plugins from the configuration's `plugins:` block: each becomes a runner slot like a
//! built-in, served by [`addon_runner_protocol::PluginRunner`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use addon_descriptors::Section;
use addon_runner_protocol::{ClientTls, Endpoint, PluginRunner, PluginSettings};

use crate::config::{Config, PluginConfig};
use crate::resolve::RunnerSlot;

/// How long a plugin's start, handshake or call may take by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a plugin's build may take unless `build-timeout` says otherwise.
pub const DEFAULT_BUILD_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// One slot per configured plugin.
pub fn slots(config: &Config) -> Vec<RunnerSlot> {
    config
        .plugins
        .iter()
        .map(|(name, p)| {
            let serves: Vec<Section> = p.serves.iter().filter_map(|s| Section::parse(s)).collect();
            let runner = PluginRunner::new(settings(name, p, serves.clone()));
            RunnerSlot { name: name.clone(), serves, runner: Some(Arc::new(runner)), builtin: false, missing: None }
        })
        .collect()
}

/// The client settings of plugin `name`.
pub fn settings(name: &str, p: &PluginConfig, serves: Vec<Section>) -> PluginSettings {
    let endpoint = match (&p.command, &p.address) {
        (Some(argv), _) => {
            let mut argv = argv.clone();
            if let Some(program) = argv.first_mut() {
                *program = locate(program).display().to_string();
            }
            Endpoint::Command(argv)
        }
        (None, Some(url)) => Endpoint::Address {
            url: url.clone(),
            tls: p.tls.as_ref().map(|t| ClientTls {
                ca: t.ca.clone(),
                cert: t.cert.clone(),
                key: t.key.clone(),
                domain: t.domain.clone(),
            }),
        },
        (None, None) => Endpoint::Command(Vec::new()),
    };
    PluginSettings {
        name: name.to_string(),
        serves,
        endpoint,
        config: p.config.clone(),
        timeout: p.timeout.map(|t| t.0).unwrap_or(DEFAULT_TIMEOUT),
        build_timeout: p.build_timeout.map(|t| t.0).unwrap_or(DEFAULT_BUILD_TIMEOUT),
    }
}

/// A bare program name is looked up in PATH, then beside the `addon` binary (where the plugins
/// shipped with the engine are built and installed).
fn locate(program: &str) -> PathBuf {
    if program.contains('/') {
        return PathBuf::from(program);
    }
    if let Ok(p) = which::which(program) {
        return p;
    }
    let beside = std::env::current_exe().ok().and_then(|e| e.parent().map(|d| d.join(program)));
    match beside {
        Some(p) if p.is_file() => p,
        _ => Path::new(program).to_path_buf(),
    }
}
