//! `addon-swarm-task`: the entrypoint of a swarm task (see `addon_runner_plugins::swarm::task`).

fn main() {
    std::process::exit(addon_runner_plugins::swarm::task::main())
}
