//! The egress network of an unprivileged engine's Dockerfile builds.
//!
//! Rootless, buildah runs its RUN steps in a user namespace it makes itself (through
//! newuidmap), so a network namespace of the engine's cannot be joined: its owner is another
//! user namespace. Instead the whole build runs under `buildah unshare`, and inside it, first, a
//! small holder makes a network namespace there (owned by buildah's user namespace, which the
//! engine's user owns and so may enter), reports its pid and waits. The engine gives that
//! namespace the egress network as it does a sandbox's (filter, resolver, slirp4netns), says
//! go, and the build runs with `--network=ns:/proc/HOLDER/ns/net`. RUN steps get no
//! CAP_NET_ADMIN (buildah's default capabilities), so they cannot change the filter.
//!
//! Lifetimes: the holder reads a pipe whose writing end only the engine holds, until the build
//! ends; an engine that lets go of it (the build timed out or was cancelled, or the engine died)
//! ends the holder and stops the build (buildah, which `buildah unshare` would leave behind
//! when killed itself). Without the go-ahead (the engine failed or died before it), the build
//! does not start.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

/// buildah's `--network` in the build's arguments, replaced inside the user namespace with the
/// holder's namespace (its pid is known only there).
pub(super) const PLACEHOLDER: &str = "--network=ns:HOLDER";

/// Run by `buildah unshare` as `sh -c SCRIPT sh BUILDAH ARGS...`, with descriptor 7 the
/// engine's info pipe, 8 its go-ahead and 9 its hold. The build's arguments are positional
/// parameters, never part of the script's text.
const SCRIPT: &str = r#"unshare --net -- sh -c 'printf "{\"child-pid\": %s}" $$ >&7; exec cat <&9 >/dev/null 2>&1 7>&- 8<&- 9<&-' &
h=$!
exec 7>&-
read -r go <&8 || exit 97
exec 8<&-
[ "$go" = go ] || exit 97
for a do
  shift
  [ "$a" = --network=ns:HOLDER ] && a="--network=ns:/proc/$h/ns/net"
  set -- "$@" "$a"
done
"$@" 9<&- &
b=$!
{ cat <&9; kill "$b"; } >/dev/null 2>&1 &
w=$!
exec 9<&-
wait "$b"
rc=$?
kill "$h" "$w" 2>/dev/null
exit $rc
"#;

/// The engine's ends of the three pipes.
pub(super) struct Gate {
    info: OwnedFd,
    go: OwnedFd,
    hold: OwnedFd,
}

/// Why the build got no egress network.
#[derive(Debug)]
pub(super) enum GateError {
    /// The holder never reported (the build failed to start, most likely: its own error says
    /// more).
    NoReport(std::io::Error),
    /// Making the network failed.
    Network(String),
}

/// Makes `cmd` (buildah with its storage settings) run the build of `buildah` inside its user
/// namespace behind the gate; the build's own arguments follow (with [`PLACEHOLDER`]).
pub(super) fn wrap(cmd: &mut tokio::process::Command, buildah: &Path, storage: &[String]) -> std::io::Result<Gate> {
    let (info, info_child) = crate::sandbox::pipe()?;
    let (go_child, go) = crate::sandbox::pipe()?;
    let (hold_child, hold) = crate::sandbox::pipe()?;
    cmd.args(["unshare", "--", "/bin/sh", "-c", SCRIPT, "sh"]).arg(buildah).args(storage).arg("build");
    let fds = [info_child, go_child, hold_child];
    // SAFETY: only fcntl/dup2 between fork and exec, on descriptors the closure owns.
    unsafe {
        cmd.pre_exec(move || {
            // Out of the way first (any of them may already be 7, 8 or 9), then into place;
            // dup2's copies are not closed on exec.
            let mut high = [0; 3];
            for (h, fd) in high.iter_mut().zip(&fds) {
                *h = libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10);
                if *h < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (h, at) in high.iter().zip([7, 8, 9]) {
                if libc::dup2(*h, at) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(Gate { info, go, hold })
}

/// Waits for the holder, gives its namespace the egress network and lets the build go.
/// Returns the network and the hold, to keep until the build ends.
pub(super) async fn open(
    gate: Gate,
    egress: crate::egress::Egress,
    within: Duration,
) -> Result<(crate::egress::EgressNet, OwnedFd), GateError> {
    let done = tokio::task::spawn_blocking(move || {
        let Gate { info, go, hold } = gate;
        let pid = crate::sandbox::read_child_pid(&info, within).map_err(GateError::NoReport)?;
        let net =
            crate::egress::EgressNet::attach(pid, &egress, true).map_err(|e| GateError::Network(e.to_string()))?;
        std::io::Write::write_all(&mut std::fs::File::from(go), b"go\n")
            .map_err(|e| GateError::Network(format!("letting the build go: {e}")))?;
        Ok((net, hold))
    });
    done.await.map_err(|e| GateError::Network(e.to_string()))?
}
