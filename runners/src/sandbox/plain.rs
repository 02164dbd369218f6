//! `none`: the bare host, chosen explicitly by the administrator. The addon still gets a PID
//! namespace of its own (and a user namespace when the engine is not root), so that nothing it
//! starts outlives the run; it sees the host filesystem and network, at the run's host paths.

use tokio::process::Command;

use super::ns::NsPlan;
use super::{Mounts, Probe, Sandbox, SandboxKind, Spec};

#[derive(Debug)]
pub struct Plain;

impl Sandbox for Plain {
    fn kind(&self) -> SandboxKind {
        SandboxKind::None
    }

    fn probe(&self) -> Probe {
        Probe::ok("none", "bare host; no isolation", None)
    }

    fn view(&self, host: &Mounts) -> Mounts {
        host.clone()
    }

    fn build(&self, spec: &Spec<'_>) -> Command {
        let Spec { program, args, env, mounts, cgroups, rlimits, .. } = *spec;
        let mut c = Command::new(program);
        c.args(args).current_dir(&mounts.work).env_clear().envs(env.iter().map(|(k, v)| (k, v)));
        NsPlan::pid_only().join_cgroups(cgroups).with_rlimits(rlimits).install(&mut c);
        c
    }
}
