//! `addon-runner-gvisor`: trivial addons under gVisor (`runsc`).

fn main() {
    addon_runner_protocol::main(addon_runner_plugins::gvisor::GvisorPlugin)
}
