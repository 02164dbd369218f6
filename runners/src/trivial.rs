//! The trivial runner: run the descriptor's `exec` from the unpacked addon, in the sandbox.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use addon_descriptors::{normalise_relative, Section};

use crate::host::HostRuns;
use crate::runner::{Availability, Capabilities, Runner, RunnerError, RunnerInfo, StartSpec, Started};
use crate::sandbox::Sandboxes;

pub const NAME: &str = "trivial";

#[derive(Debug)]
pub struct TrivialRunner {
    sandboxes: Arc<Sandboxes>,
    runs: Arc<HostRuns>,
}

impl TrivialRunner {
    pub fn new(sandboxes: Arc<Sandboxes>) -> TrivialRunner {
        TrivialRunner { sandboxes, runs: Arc::default() }
    }
}

#[async_trait::async_trait]
impl Runner for TrivialRunner {
    fn info(&self) -> RunnerInfo {
        RunnerInfo::shipped(NAME, &[Section::Trivial], Capabilities { uses_sandbox: true, ..Capabilities::SHIPPED })
    }

    async fn probe(&self) -> Availability {
        Availability {
            available: true,
            version: None,
            detail: "runs the addon's `exec` directly (in the sandbox)".into(),
        }
    }

    async fn start(&self, spec: StartSpec) -> Result<Started, RunnerError> {
        let setup = |message: String| RunnerError::setup(NAME, message);
        let exec = spec
            .descriptor
            .trivial_exec()
            .ok_or_else(|| setup(format!("{} has no runner.trivial.exec", spec.addon.label())))?;
        let rel = normalise_relative(exec).map_err(|why| setup(format!("exec `{exec}` {why}")))?;
        let program = spec.dirs.addon.join(&rel);
        // Docspell makes the program executable; zips from elsewhere often lose the bit. Only
        // inside the addon: a program that is a link to a host file is refused, not chmodded.
        addon_tree::make_executable(&spec.dirs.addon, Path::new(&rel)).map_err(|e| setup(e.to_string()))?;
        crate::host::start(NAME, self.sandboxes.clone(), self.runs.clone(), spec, program, Vec::new()).await
    }

    async fn stop(&self, run_id: &str, grace: Duration) -> Result<(), RunnerError> {
        self.runs.stop(run_id, grace);
        Ok(())
    }
}
