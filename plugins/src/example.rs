//! `addon-runner-example`: the smallest useful plugin, and the test plugin for engines' failure
//! handling. It serves trivial addons with the engine's own trivial runner (in the sandbox the
//! engine asks for), which is all a plugin needs: a [`Plugin`] that makes a [`Runner`].
//!
//! Its configuration can make it misbehave on purpose (`fault:`), so that an engine's handling of
//! plugins that crash or hang can be tested end to end, and can make it keep its own copies of
//! the run's directories (`copy: true`), exercising CopyIn/CopyOut as a remote backend would.

use std::sync::Arc;
use std::time::Duration;

use addon_descriptors::Section;
use addon_runner_api::{Availability, Capabilities, Runner, RunnerError, RunnerInfo, SandboxKind, StartSpec, Started};
use addon_runner_protocol::{FieldError, Plugin};
// The engine's trivial runner and sandboxes: the one thing here beyond the interface.
use addon_runners::sandbox::{SandboxSettings, Sandboxes};
use addon_runners::trivial::TrivialRunner;
use addon_runners::ProbeCache;
use serde::Deserialize;

/// `plugins.NAME.config` of the example plugin.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ExampleConfig {
    /// Misbehave: `crash-on-start` (the process exits during Start), `crash-during-run` (it
    /// exits once the run has started), `hang-on-probe` (Probe never answers),
    /// `hang-during-run` (after Start, neither events nor Stop ever answer), `lies-about-isolation`
    /// (it declares that it isolates the network and the filesystem but runs addons on the bare
    /// host: what `addon runners check` must catch).
    pub fault: Option<String>,
    /// Declare that it does not share the host filesystem: the engine copies the run's
    /// directories in and the output out.
    pub copy: bool,
}

const FAULTS: [&str; 5] =
    ["crash-on-start", "crash-during-run", "hang-on-probe", "hang-during-run", "lies-about-isolation"];

pub struct ExamplePlugin;

impl Plugin for ExamplePlugin {
    fn info(&self) -> RunnerInfo {
        ExampleRunner::new(ExampleConfig::default()).info()
    }

    fn configure(&self, config: &serde_json::Value) -> Result<Arc<dyn Runner>, Vec<FieldError>> {
        let c: ExampleConfig = crate::parse_config(config)?;
        if let Some(f) = &c.fault {
            if !FAULTS.contains(&f.as_str()) {
                return Err(vec![FieldError::new("fault", format!("`{f}` is not one of {}", FAULTS.join(", ")))]);
            }
        }
        Ok(Arc::new(ExampleRunner::new(c)))
    }
}

pub struct ExampleRunner {
    config: ExampleConfig,
    inner: TrivialRunner,
}

impl ExampleRunner {
    pub fn new(config: ExampleConfig) -> ExampleRunner {
        let sandboxes = Arc::new(Sandboxes::new(&SandboxSettings::default(), Arc::new(ProbeCache::default())));
        ExampleRunner { config, inner: TrivialRunner::new(sandboxes) }
    }

    fn fault(&self, f: &str) -> bool {
        self.config.fault.as_deref() == Some(f)
    }
}

#[async_trait::async_trait]
impl Runner for ExampleRunner {
    fn info(&self) -> RunnerInfo {
        let lies = self.fault("lies-about-isolation");
        RunnerInfo {
            name: "example".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            serves: vec![Section::Trivial],
            capabilities: Capabilities {
                isolates_network: lies,
                isolates_filesystem: lies,
                uses_sandbox: !lies,
                shares_host_filesystem: !self.config.copy,
                enforces_limits: true,
                measures_resources: true,
                ..Capabilities::default()
            },
        }
    }

    async fn probe(&self) -> Availability {
        if self.fault("hang-on-probe") {
            std::future::pending::<()>().await;
        }
        let mut a = self.inner.probe().await;
        a.detail = format!("the engine's trivial runner, out of process; {}", a.detail);
        a
    }

    async fn start(&self, mut spec: StartSpec) -> Result<Started, RunnerError> {
        if self.fault("lies-about-isolation") {
            spec.sandbox = Some(SandboxKind::None);
        }
        if self.fault("crash-on-start") {
            eprintln!("example plugin: crashing on start, as configured");
            std::process::exit(3);
        }
        let started = self.inner.start(spec).await?;
        if self.fault("crash-during-run") {
            tokio::spawn(async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                eprintln!("example plugin: crashing during the run, as configured");
                std::process::exit(3);
            });
        }
        if self.fault("hang-during-run") {
            // Keep the run going but never tell anyone anything again.
            let (_tx, rx) = tokio::sync::mpsc::channel(1);
            std::mem::forget(_tx);
            std::mem::forget(started.events);
            return Ok(Started { sandbox: started.sandbox, events: rx });
        }
        Ok(started)
    }

    async fn stop(&self, run_id: &str, grace: Duration) -> Result<(), RunnerError> {
        if self.fault("hang-during-run") {
            std::future::pending::<()>().await;
        }
        self.inner.stop(run_id, grace).await
    }
}
