//! The VM plugin's own walls, beyond the conformance suite (which holds it to the contract and
//! the hostile kit like every runner): QEMU runs unprivileged and without capabilities, and what
//! the guest writes through its shares is written on the host as that unprivileged identity.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `(pid, uid, CapEff)` of every process whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<(u32, u32, String, String)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmd =
            String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).unwrap_or_default()).replace('\0', " ");
        if !cmd.contains(needle) {
            continue;
        }
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        let field = |k: &str| status.lines().find(|l| l.starts_with(k)).unwrap_or("").to_string();
        let uid = field("Uid:").split_whitespace().nth(2).and_then(|u| u.parse().ok()).unwrap_or(u32::MAX);
        found.push((pid, uid, field("CapEff:"), cmd));
    }
    found
}

fn files_named(root: &Path, name: &str, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            files_named(&p, name, found);
        } else if e.file_name() == name {
            found.push(p);
        }
    }
}

#[test]
fn qemu_runs_unprivileged_and_the_guest_writes_as_that_identity() {
    if !require_root("the run's processes are looked at as root") {
        return;
    }
    let Some(w) = vm_world() else {
        return;
    };
    let marker = format!("vm-walls-{}", std::process::id());
    let addon = w.addon(
        "vmwalls",
        "options:\n  networking: false\n  collectOutput: true\n",
        &format!("echo written > \"$OUTPUT_DIR/{marker}\"\nsleep 4\necho '{{}}'\n"),
    );
    let path = w.path().to_path_buf();
    let world = path.display().to_string();
    let watcher = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            let mut files = Vec::new();
            files_named(&path, &marker, &mut files);
            // The helper's command line names the run's directory (in this world); QEMU is its child.
            let helpers: Vec<_> =
                processes_with(" vm-exec ").into_iter().filter(|(.., cmd)| cmd.contains(&world)).collect();
            let qemus: Vec<_> = processes_with("qemu-system")
                .into_iter()
                .filter(|(pid, ..)| {
                    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                    let ppid: u32 = stat
                        .rsplit(')')
                        .next()
                        .and_then(|r| r.split_whitespace().nth(1))
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(0);
                    helpers.iter().any(|(h, ..)| *h == ppid)
                })
                .collect();
            if let (Some(file), false) = (files.first(), qemus.is_empty()) {
                use std::os::unix::fs::MetadataExt;
                let owner = std::fs::metadata(file).unwrap().uid();
                return Some((owner, qemus));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    });
    let (out, v) = w.run(&[addon.to_str().unwrap()]);
    assert_eq!(v["addons"][0]["result"], "success", "{v}\n{}", String::from_utf8_lossy(&out.stderr));
    let (owner, qemus) = watcher.join().unwrap().expect("the run's file and QEMU were seen while it ran");
    assert_ne!(owner, 0, "the guest's write through 9p is the host's root's");
    for (pid, uid, caps, cmd) in &qemus {
        assert_ne!(*uid, 0, "QEMU {pid} runs as root: {cmd}");
        assert_eq!(caps.split_whitespace().nth(1), Some("0000000000000000"), "QEMU {pid} has capabilities: {caps}");
        assert_eq!(*uid, owner, "QEMU writes the shares as itself");
    }
}

/// The addon's environment is its own only once it is no longer the guest's root: a dynamic
/// linker variable (here `LD_DEBUG`, harmless; `LD_PRELOAD` would run the addon's code) must not
/// reach chroot or setpriv, which run as the guest's root.
#[test]
fn the_addons_environment_never_reaches_the_guests_root() {
    let Some(w) = vm_world() else {
        return;
    };
    let addon = w.addon("vmenv", "options:\n  networking: false\n  collectOutput: true\n", "echo '{}'\n");
    let (out, v) = w.run(&[addon.to_str().unwrap(), "--env", "LD_DEBUG=libs"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(v["addons"][0]["result"], "success", "{v}\n{stderr}");
    assert!(stderr.contains("calling init"), "the variable reaches the addon's own programs: {stderr}");
    // The dynamic linker names the program it starts ("initialize program: /usr/bin/setpriv");
    // chroot is busybox's, static.
    assert!(!stderr.contains("/usr/bin/setpriv"), "setpriv ran with it: {stderr}");
}

/// A stop with grace reaches the addon in the guest as SIGTERM (the helper tells the guest's
/// init through its share; QEMU itself would quit at once): an addon that traps it gets to say
/// so before the run ends as a timeout.
#[test]
fn a_timeout_gives_the_addon_in_the_guest_its_sigterm() {
    let Some(w) = vm_world() else {
        return;
    };
    let addon = w.addon(
        "vmterm",
        "options:\n  networking: false\n  collectOutput: true\n",
        "trap 'echo got-sigterm >&2; exit 0' TERM\necho started >&2\nsleep 1000 &\nwait\n",
    );
    let (out, v) = w.run(&[addon.to_str().unwrap(), "--timeout", "15s"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(v["addons"][0]["result"], "timeout", "{v}\n{stderr}");
    assert!(stderr.contains("started"), "{stderr}");
    assert!(stderr.contains("got-sigterm"), "the addon's trap ran: {stderr}");
}
