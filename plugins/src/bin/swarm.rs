//! `addon-runner-swarm`: docker addons as Docker Swarm `replicated-job` services.

fn main() {
    addon_runner_protocol::main(addon_runner_plugins::swarm::SwarmPlugin)
}
