//! `addon-runner-gvisor`: trivial addons under gVisor (`runsc`).

fn main() {
    // Inside the sandbox, this same program installs the seccomp filter and becomes the addon.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == addon_runners::sandbox::seccomp::HELPER_COMMAND) {
        std::process::exit(addon_runners::sandbox::seccomp::exec_filtered(&argv[2..]).into());
    }
    addon_runner_protocol::main(addon_runner_plugins::gvisor::GvisorPlugin)
}
