//! The system-call filter of every host sandbox, in the spirit of Docker's default profile: the
//! calls that reach into the kernel's most privileged or least audited corners are refused with
//! `EPERM` (mounting, tracing other processes, the kernel keyring, eBPF, perf events,
//! userfaultfd, io_uring, kernel modules, kexec, reboot, clock and swap control, namespaces),
//! `clone` with a namespace flag is refused, and `clone3` (whose flags a filter cannot read)
//! answers `ENOSYS`, so the C library falls back to `clone`.
//!
//! The programs are compiled with `seccompiler` (rust-vmm) into classic BPF: bwrap loads them
//! from memory files (`--add-seccomp-fd`), the engine's own sandbox installs them before exec.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

/// Refused outright (name and number).
const DENIED: &[(&str, i64)] = &[
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("pidfd_getfd", libc::SYS_pidfd_getfd),
    ("kcmp", libc::SYS_kcmp),
    ("keyctl", libc::SYS_keyctl),
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("reboot", libc::SYS_reboot),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("acct", libc::SYS_acct),
    ("quotactl", libc::SYS_quotactl),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("syslog", libc::SYS_syslog),
    ("iopl", libc::SYS_iopl),
    ("ioperm", libc::SYS_ioperm),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("vhangup", libc::SYS_vhangup),
    ("uselib", libc::SYS_uselib),
];

/// Namespace flags `clone` may not carry.
const NAMESPACE_FLAGS: [i32; 7] = [
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWCGROUP,
];

/// The x32 ABI reaches the same calls under these numbers; refused too, where a kernel has it.
const X32: i64 = 0x4000_0000;

/// The compiled filters, applied in this order.
#[derive(Debug)]
pub struct Filters {
    /// `EPERM` for [`DENIED`] and namespace-creating `clone`.
    pub deny: BpfProgram,
    /// `ENOSYS` for `clone3`.
    pub no_clone3: BpfProgram,
}

/// The filter could not be compiled (a rule seccompiler refuses for this architecture). Shared,
/// as the filters are compiled once per process.
#[derive(Debug, Clone, thiserror::Error)]
#[error("compiling the seccomp filter: {0}")]
pub struct SeccompError(#[source] std::sync::Arc<seccompiler::BackendError>);

/// The filters, compiled once per process (they depend on nothing but this file).
pub fn filters() -> Result<&'static Filters, SeccompError> {
    static FILTERS: OnceLock<Result<Filters, SeccompError>> = OnceLock::new();
    FILTERS.get_or_init(compile).as_ref().map_err(Clone::clone)
}

fn compile() -> Result<Filters, SeccompError> {
    let err = |e: seccompiler::BackendError| SeccompError(std::sync::Arc::new(e));
    let mut deny: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (_, nr) in DENIED {
        deny.insert(*nr, Vec::new());
        deny.insert(nr | X32, Vec::new());
    }
    let mut clone_rules = Vec::new();
    for flag in NAMESPACE_FLAGS {
        let flag = flag as u64;
        let cond =
            SeccompCondition::new(0, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(flag), flag).map_err(err)?;
        clone_rules.push(SeccompRule::new(vec![cond]).map_err(err)?);
    }
    deny.insert(libc::SYS_clone, clone_rules.clone());
    deny.insert(libc::SYS_clone | X32, clone_rules);
    // Raw and packet sockets (sandboxes without CAP_NET_RAW refuse them already; gVisor's
    // network stack did not check).
    let packet =
        SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, libc::AF_PACKET as u64).map_err(err)?;
    let raw = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(0xf), libc::SOCK_RAW as u64)
        .map_err(err)?;
    let socket_rules = vec![SeccompRule::new(vec![packet]).map_err(err)?, SeccompRule::new(vec![raw]).map_err(err)?];
    deny.insert(libc::SYS_socket, socket_rules.clone());
    deny.insert(libc::SYS_socket | X32, socket_rules);
    let program = |rules, action| -> Result<BpfProgram, SeccompError> {
        let f = SeccompFilter::new(rules, SeccompAction::Allow, action, arch()).map_err(err)?;
        BpfProgram::try_from(f).map_err(err)
    };
    let nosys = BTreeMap::from([(libc::SYS_clone3, Vec::new()), (libc::SYS_clone3 | X32, Vec::new())]);
    Ok(Filters {
        deny: program(deny, SeccompAction::Errno(libc::EPERM as u32))?,
        no_clone3: program(nosys, SeccompAction::Errno(libc::ENOSYS as u32))?,
    })
}

/// The same filter as an OCI runtime profile (`linux.seccomp` of a bundle's config.json), for
/// runtimes that compile it themselves (runc, crun): the same calls refused with `EPERM`,
/// `clone` with a namespace flag refused, `clone3` answering `ENOSYS`, raw and packet sockets
/// refused.
pub fn oci_profile() -> serde_json::Value {
    use serde_json::json;
    let eperm = libc::EPERM;
    let mut syscalls = vec![json!({
        "names": DENIED.iter().map(|(name, _)| *name).collect::<Vec<_>>(),
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": eperm,
    })];
    // Conditions of one entry must all hold: one entry per flag.
    for flag in NAMESPACE_FLAGS {
        syscalls.push(json!({
            "names": ["clone"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": eperm,
            "args": [{"index": 0, "value": flag as u64, "valueTwo": flag as u64, "op": "SCMP_CMP_MASKED_EQ"}],
        }));
    }
    syscalls.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOSYS}));
    syscalls.push(json!({
        "names": ["socket"],
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": eperm,
        "args": [{"index": 0, "value": libc::AF_PACKET as u64, "op": "SCMP_CMP_EQ"}],
    }));
    syscalls.push(json!({
        "names": ["socket"],
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": eperm,
        "args": [{"index": 1, "value": 0xf, "valueTwo": libc::SOCK_RAW as u64, "op": "SCMP_CMP_MASKED_EQ"}],
    }));
    #[cfg(target_arch = "aarch64")]
    let architectures = ["SCMP_ARCH_AARCH64"];
    #[cfg(not(target_arch = "aarch64"))]
    let architectures = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"];
    json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": architectures, "syscalls": syscalls})
}

fn arch() -> TargetArch {
    #[cfg(target_arch = "aarch64")]
    return TargetArch::aarch64;
    #[cfg(not(target_arch = "aarch64"))]
    TargetArch::x86_64
}

/// A program as the bytes bwrap reads from `--add-seccomp-fd` (struct sock_filter, native endian).
pub fn to_bytes(program: &BpfProgram) -> Vec<u8> {
    let mut out = Vec::with_capacity(program.len() * 8);
    for f in program {
        out.extend_from_slice(&f.code.to_ne_bytes());
        out.push(f.jt);
        out.push(f.jf);
        out.extend_from_slice(&f.k.to_ne_bytes());
    }
    out
}

/// Installs the filters on the calling thread (and `no_new_privs`). Async-signal-safe: meant for
/// the child between fork and exec.
pub fn install(filters: &Filters) -> std::io::Result<()> {
    for p in [&filters.deny, &filters.no_clone3] {
        seccompiler::apply_filter(p).map_err(|e| std::io::Error::other(e.to_string()))?;
    }
    Ok(())
}

/// The helper command sandboxes run the addon through when they cannot install the filter
/// themselves (nspawn, gVisor): `PROGRAM __sandbox-exec ADDON_PROGRAM ARGS...`.
pub const HELPER_COMMAND: &str = "__sandbox-exec";

/// `__sandbox-exec --gate SOCKET PROGRAM...`: wait at the gate first (see
/// `nspawn::Nspawn::launch`).
pub const GATE_FLAG: &str = "--gate";

/// Connects to the gate's socket and waits for the engine's go-ahead (one byte `x`); anything
/// else (the socket closed: the engine failed or died) is an error.
fn wait_at_gate(gate: &std::path::Path) -> std::io::Result<()> {
    use std::io::Read;
    let mut stream = std::os::unix::net::UnixStream::connect(gate)?;
    let mut go = [0u8; 1];
    stream.read_exact(&mut go)?;
    if go[0] != b'x' {
        return Err(std::io::Error::other("an unexpected answer"));
    }
    Ok(())
}

/// The helper's body: installs the filters, then execs `rest[0]` with the rest as arguments.
/// Returns only on failure, with the exit code to use (127 not found, 126 not executable).
pub fn exec_filtered(rest: &[std::ffi::OsString]) -> u8 {
    use std::os::unix::process::CommandExt;
    let rest = match rest.split_first() {
        Some((flag, tail)) if flag == GATE_FLAG => {
            let Some((gate, tail)) = tail.split_first() else {
                eprintln!("{HELPER_COMMAND}: {GATE_FLAG} needs a path");
                return 127;
            };
            if let Err(e) = wait_at_gate(std::path::Path::new(gate)) {
                eprintln!("the engine did not give this run its network ({e}); not starting the addon");
                return 125;
            }
            tail
        }
        _ => rest,
    };
    let Some((program, args)) = rest.split_first() else {
        eprintln!("{HELPER_COMMAND}: no program given");
        return 127;
    };
    if let Err(e) = filters().map_err(std::io::Error::other).and_then(install) {
        eprintln!("cannot install the seccomp filter, not starting {}: {e}", program.to_string_lossy());
        return 127;
    }
    let e = std::process::Command::new(program).args(args).exec();
    eprintln!("cannot start {}: {e}", program.to_string_lossy());
    if e.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_compile_and_serialise() {
        let f = filters().unwrap();
        assert!(f.deny.len() > DENIED.len(), "one jump per call at least");
        assert_eq!(to_bytes(&f.no_clone3).len(), f.no_clone3.len() * 8);
    }

    #[test]
    fn a_filtered_child_cannot_mount_trace_or_make_namespaces() {
        // Fork a child, install the filters there, and report what it could do.
        // SAFETY: the child only makes raw system calls and exits with _exit.
        unsafe {
            let f = filters().unwrap();
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                if install(f).is_err() {
                    libc::_exit(10);
                }
                let mut code = 0;
                if libc::unshare(libc::CLONE_NEWUSER) == 0 || *libc::__errno_location() != libc::EPERM {
                    code |= 1;
                }
                let r = libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0);
                if r >= 0 || *libc::__errno_location() != libc::EPERM {
                    code |= 2;
                }
                if libc::syscall(libc::SYS_clone3, 0, 0) >= 0 || *libc::__errno_location() != libc::ENOSYS {
                    code |= 4;
                }
                let flags = (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong;
                let r = libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0);
                if r == 0 {
                    libc::_exit(0);
                }
                if r > 0 || *libc::__errno_location() != libc::EPERM {
                    code |= 8;
                }
                libc::_exit(code);
            }
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
            assert!(libc::WIFEXITED(status), "{status}");
            assert_eq!(libc::WEXITSTATUS(status), 0, "bitmask of what was not refused");
        }
    }
}
