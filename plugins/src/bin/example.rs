//! `addon-runner-example`: trivial addons through the engine's trivial runner, out of process;
//! the example of PLUGINS.md and the test plugin for failure handling.

fn main() {
    addon_runner_protocol::main(addon_runner_plugins::example::ExamplePlugin)
}
