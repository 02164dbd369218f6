//! `addon-runner-vm`: trivial addons in a QEMU micro VM, behind a kernel of their own.

fn main() {
    // Inside the host sandbox, this same program starts QEMU and passes the guest's output on.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // In the guest, it installs the engine's seccomp filter and becomes the addon.
    if argv.get(1).is_some_and(|a| a == addon_runners::sandbox::seccomp::HELPER_COMMAND) {
        std::process::exit(addon_runners::sandbox::seccomp::exec_filtered(&argv[2..]).into());
    }
    if argv.get(1).is_some_and(|a| a == addon_runner_plugins::vm::exec::COMMAND) {
        std::process::exit(addon_runner_plugins::vm::exec::main(&argv[2..]));
    }
    addon_runner_protocol::main(addon_runner_plugins::vm::VmPlugin)
}
