//! `addon-runner-docker`: the docker runner as a plugin.

fn main() {
    addon_runner_protocol::main(addon_runner_plugins::docker::DockerPlugin)
}
