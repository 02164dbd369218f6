//! The trivial runner: run the descriptor's `exec` from the unpacked addon, in the sandbox.

use std::os::unix::fs::PermissionsExt;

use addon_descriptors::{normalise_relative, RunnerKind};

use crate::runner::{run_sandboxed, Availability, CacheUse, Capabilities, Launch, Runner, RunnerError, RunnerOutcome};

#[derive(Debug, Clone, Copy, Default)]
pub struct TrivialRunner;

#[async_trait::async_trait]
impl Runner for TrivialRunner {
    fn kind(&self) -> RunnerKind {
        RunnerKind::Trivial
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            isolates_network: false,
            isolates_filesystem: false,
            builds: false,
            needs_daemon: false,
            uses_sandbox: true,
        }
    }

    async fn probe(&self) -> Availability {
        Availability {
            available: true,
            version: None,
            detail: "runs the addon's `exec` directly (in the sandbox)".into(),
        }
    }

    async fn run(&self, launch: &Launch) -> Result<RunnerOutcome, RunnerError> {
        let setup = |message: String| RunnerError::Setup { runner: RunnerKind::Trivial, message };
        let exec = launch
            .descriptor
            .trivial_exec()
            .ok_or_else(|| setup(format!("{} has no runner.trivial.exec", launch.label())))?;
        let rel = normalise_relative(exec).map_err(|why| setup(format!("exec `{exec}` {why}")))?;
        let program = launch.addon_dir.join(rel);
        // Docspell makes the program executable; zips from elsewhere often lose the bit.
        let meta = fs_err::metadata(&program).map_err(|e| setup(e.to_string()))?;
        let mode = meta.permissions().mode();
        if mode & 0o111 != 0o111 {
            fs_err::set_permissions(&program, std::fs::Permissions::from_mode(mode | 0o555))
                .map_err(|e| setup(e.to_string()))?;
        }
        let supervised = run_sandboxed(RunnerKind::Trivial, launch, &program, &[]).await?;
        Ok(RunnerOutcome {
            supervised,
            sandbox: launch.sandbox.name().to_string(),
            cache: CacheUse::None,
            build: std::time::Duration::ZERO,
        })
    }
}
