//! The helper that runs inside the engine's host sandbox (bwrap or netns, as the addon's
//! identity, in the run's control group): it writes what the guest runs, starts QEMU on the
//! sandbox's own view (`/usr` and `/etc` read-only, the run's directories at `/mnt`), passes the
//! guest's output on as it comes and exits with the addon's exit code.
//!
//! The guest writes the addon's stdout and stderr into files of a private share (`io`, in the
//! sandbox's bounded `/tmp`): a 9p write returns once QEMU wrote the host file, so nothing is
//! lost when the guest powers off (a virtio console would drop what QEMU had not read yet).

use std::ffi::OsString;
use std::io::{Read, Seek, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The first argument of this program that makes it the helper.
pub const COMMAND: &str = "vm-exec";

/// Where the helper keeps the guest's share and QEMU's own output, inside the sandbox.
const IO: &str = "/tmp/.addon-vm-io";
const CONSOLE: &str = "/tmp/.addon-vm-console";
const QEMU_LOG: &str = "/tmp/.addon-vm-qemu.log";

/// Exit code when the VM ended without the addon's status (it crashed, or QEMU failed).
pub const NO_STATUS: i32 = 125;

/// What the plugin tells the helper (one JSON argument).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub qemu: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// `tcg` or `kvm`.
    pub accel: String,
    pub guest_mib: u64,
    pub cpus: u32,
    /// A network device (QEMU's user-mode network, inside the sandbox's network namespace).
    pub net: bool,
    /// The addon's own bounds inside the guest (its control group there).
    pub pids: Option<u64>,
    pub memory: Option<u64>,
    /// The host's TSC rate: microvm's guest otherwise calibrates against the PIT, which hung
    /// at boot in about one run in eight under TCG.
    pub tsc_khz: Option<u64>,
    /// The addon's working directory.
    pub cwd: PathBuf,
    /// A word only this run knows, that marks the helper's own report line on stderr.
    pub nonce: String,
    /// The run's directory on the host (named here so that the run's processes name it).
    pub run_dir: PathBuf,
    /// The mount options of the guest's `/tmp`, `/var/tmp` and `/dev/shm`, as the host
    /// sandbox bounds its own ([`TmpfsBound::options`](addon_runners::sandbox::view::TmpfsBound::options)).
    pub tmpfs: String,
    /// This program, as the sandbox sees it. Its directory is shared read-only with the guest
    /// (in the sandbox it holds this program alone, or is the host's read-only /usr/bin), where
    /// it installs the engine's seccomp filter before the addon starts: the guest's kernel is
    /// the next wall, and the filter keeps the addon off its least audited parts.
    pub helper: PathBuf,
    /// `/nix/store` shared read-only (a nix addon's program is there).
    #[serde(default)]
    pub nix_store: bool,
    pub extra_args: Vec<String>,
}

/// The report line's start (followed by the nonce).
pub const REPORT: &str = "addon-vm-report";

/// How the guest said the addon ended.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Status {
    pub code: i32,
    pub oom: u64,
    pub pids: u64,
}

/// Reads `code=N oom=N pids=N` (its first line).
pub fn parse_status(text: &str) -> Option<Status> {
    let mut s = Status::default();
    let mut code = None;
    for word in text.lines().next().unwrap_or("").split_whitespace() {
        let (k, v) = word.split_once('=')?;
        match k {
            "code" => code = v.parse().ok(),
            "oom" => s.oom = v.parse().unwrap_or(0),
            "pids" => s.pids = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    s.code = code?;
    Some(s)
}

/// `'text'` for a POSIX shell.
fn quote(text: &[u8]) -> Vec<u8> {
    let mut q = vec![b'\''];
    for &b in text {
        if b == b'\'' {
            q.extend_from_slice(b"'\\''");
        } else {
            q.push(b);
        }
    }
    q.push(b'\'');
    q
}

/// The guest's `/io/run`: the settings the init reads and the function that starts the addon,
/// as uid `uid`, with exactly `env`, in `cwd`. The addon's environment is set only after the
/// drop: chroot and setpriv run as the guest's root with none at all (a `LD_PRELOAD` or
/// `LD_LIBRARY_PATH` there would run the addon's code as that root).
pub fn run_script(plan: &Plan, uid: u32, gid: u32, env: &[(OsString, OsString)], argv: &[OsString]) -> Vec<u8> {
    let mut s = Vec::new();
    let opt = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_default();
    s.extend_from_slice(
        format!(
            "addon_uid={uid}\naddon_pids='{}'\naddon_memory='{}'\naddon_net={}\naddon_nix={}\naddon_tmpfs='{}'\n\
             addon_start() {{\n  exec /bin/env -i /bin/chroot /root /usr/bin/setpriv --reuid={uid} --regid={gid} \
             --clear-groups --no-new-privs --inh-caps=-all --bounding-set=-all -- /usr/bin/env -i",
            opt(plan.pids),
            opt(plan.memory),
            u8::from(plan.net),
            u8::from(plan.nix_store),
            plan.tmpfs.chars().filter(|c| c.is_ascii_alphanumeric() || ",=_".contains(*c)).collect::<String>()
        )
        .as_bytes(),
    );
    for (k, v) in env {
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        s.push(b' ');
        s.extend(quote(&kv));
    }
    s.push(b' ');
    let mut helper = b"/.addon-helper/".to_vec();
    helper.extend_from_slice(plan.helper.file_name().unwrap_or_default().as_bytes());
    s.extend(quote(&helper));
    s.extend_from_slice(
        format!(
            " {} /bin/sh -c 'cd \"$0\" && unset OLDPWD && exec \"$@\"'",
            addon_runners::sandbox::seccomp::HELPER_COMMAND
        )
        .as_bytes(),
    );
    s.push(b' ');
    s.extend(quote(plan.cwd.as_os_str().as_bytes()));
    for a in argv {
        s.push(b' ');
        s.extend(quote(a.as_bytes()));
    }
    s.extend_from_slice(b"\n}\n");
    s
}

/// Where QEMU finds what it shares with the guest, and where the guest's console goes.
#[derive(Debug, Clone)]
pub struct Shares {
    pub usr: PathBuf,
    pub etc: PathBuf,
    pub work: PathBuf,
    pub output: PathBuf,
    pub cache: PathBuf,
    pub home: PathBuf,
    pub io: PathBuf,
    pub console: PathBuf,
}

impl Shares {
    /// As the host sandbox shows them to the helper.
    pub fn in_sandbox() -> Shares {
        Shares {
            usr: "/usr".into(),
            etc: "/etc".into(),
            work: "/mnt/work".into(),
            output: "/mnt/output".into(),
            cache: "/mnt/cache".into(),
            home: "/mnt/home".into(),
            io: IO.into(),
            console: CONSOLE.into(),
        }
    }
}

/// QEMU's command line for `plan`, sharing `shares`.
pub fn qemu_args(plan: &Plan, shares: &Shares) -> Vec<String> {
    let mut a: Vec<String> = vec!["-machine".into(), "microvm".into()];
    if plan.accel == "kvm" {
        a.extend(["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()]);
    } else {
        // A bounded translation cache: TCG's default is 1 GiB, held by QEMU itself.
        a.extend(["-accel".into(), "tcg,thread=multi,tb-size=64".into(), "-cpu".into(), "max".into()]);
    }
    a.extend([
        "-m".into(),
        format!("{}M", plan.guest_mib),
        "-smp".into(),
        plan.cpus.to_string(),
        "-nodefaults".into(),
        "-no-user-config".into(),
        "-nographic".into(),
        "-no-reboot".into(),
        // QEMU's own system-call filter on top of the sandbox's: no new processes, no
        // privilege changes, no obsolete calls, no scheduler or resource control.
        "-sandbox".into(),
        "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny".into(),
        "-kernel".into(),
        plan.kernel.display().to_string(),
        "-initrd".into(),
        plan.initrd.display().to_string(),
        "-append".into(),
        format!(
            "console=ttyS0 quiet loglevel=3 panic=-1 rdinit=/init{}",
            plan.tsc_khz.map(|k| format!(" tsc_early_khz={k}")).unwrap_or_default()
        ),
        "-serial".into(),
        format!("file:{}", shares.console.display()),
    ]);
    let list: [(&str, &Path, bool); 8] = [
        ("usr", &shares.usr, true),
        ("etc", &shares.etc, true),
        ("work", &shares.work, false),
        ("output", &shares.output, false),
        ("cache", &shares.cache, false),
        ("home", &shares.home, false),
        ("io", &shares.io, false),
        ("helper", plan.helper.parent().unwrap_or(Path::new("/")), true),
    ];
    let nix = plan.nix_store.then(|| ("nix", Path::new("/nix/store"), true));
    for (tag, path, ro) in list.into_iter().chain(nix) {
        a.push("-fsdev".into());
        a.push(format!(
            "local,id={tag},path={},security_model=none,multidevs=remap{}",
            path.display(),
            if ro { ",readonly=on" } else { "" }
        ));
        a.push("-device".into());
        a.push(format!("virtio-9p-device,fsdev={tag},mount_tag={tag}"));
    }
    if plan.net {
        a.extend(["-netdev".into(), "user,id=n0".into(), "-device".into(), "virtio-net-device,netdev=n0".into()]);
    }
    a.extend(plan.extra_args.iter().cloned());
    a
}

/// The helper: `vm-exec PLAN-JSON -- PROGRAM ARGS...`. Returns its exit code.
pub fn main(args: &[OsString]) -> i32 {
    let fail = |why: String| -> i32 {
        eprintln!("vm: {why}");
        NO_STATUS
    };
    let Some(plan) = args.first() else { return fail("no plan".into()) };
    let plan: Plan = match serde_json::from_slice(plan.as_bytes()) {
        Ok(p) => p,
        Err(e) => return fail(format!("the plan: {e}")),
    };
    let argv: Vec<OsString> = args.iter().skip(1).skip_while(|a| a.as_bytes() != b"--").skip(1).cloned().collect();
    if argv.is_empty() {
        return fail("no program".into());
    }
    let io = Path::new(IO);
    if let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(io) {
        return fail(format!("{IO}: {e}"));
    }
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let script = run_script(&plan, uid, gid, &env, &argv);
    // The status has its room before the addon can fill the sandbox's /tmp (the init writes
    // it in place).
    let room = vec![b' '; 256];
    for (name, data) in [("run", script.as_slice()), ("stdout", b"".as_slice()), ("stderr", b""), ("status", &room)] {
        if let Err(e) = std::fs::write(io.join(name), data) {
            return fail(format!("{IO}/{name}: {e}"));
        }
    }
    let log = match std::fs::File::create(QEMU_LOG) {
        Ok(f) => f,
        Err(e) => return fail(format!("{QEMU_LOG}: {e}")),
    };
    let mut qemu = match std::process::Command::new(&plan.qemu)
        .args(qemu_args(&plan, &Shares::in_sandbox()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot start {}: {e}", plan.qemu.display())),
    };
    let mut out = Follow::new(io.join("stdout"));
    let mut err = Follow::new(io.join("stderr"));
    // A stop with grace: the plugin sends this helper SIGTERM; the guest's init, told through
    // the share, sends it on to the addon's processes (QEMU itself would quit at once).
    // SAFETY: the handler only stores to an atomic.
    unsafe { libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t) };
    let mut told = false;
    let ended = loop {
        out.pass(&mut std::io::stdout());
        err.pass(&mut std::io::stderr());
        if !told && TERM.load(std::sync::atomic::Ordering::SeqCst) {
            told = std::fs::write(io.join("stop"), b"").is_ok();
        }
        match qemu.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return fail(format!("waiting for QEMU: {e}")),
        }
    };
    out.pass(&mut std::io::stdout());
    err.pass(&mut std::io::stderr());
    let _ = std::io::stdout().flush();
    let status_text = std::fs::read_to_string(io.join("status")).unwrap_or_default();
    match parse_status(&status_text) {
        Some(s) => {
            if s.oom > 0 || s.pids > 0 {
                // On a line of its own, whatever the addon's last stderr line lacked.
                let start = if err.ended_line { "" } else { "\n" };
                eprintln!("{start}{REPORT} {} oom={} pids={}", plan.nonce, s.oom, s.pids);
            }
            s.code
        }
        None => {
            let tail = |p: &str| {
                let t = std::fs::read_to_string(p).unwrap_or_default();
                let lines: Vec<&str> = t.lines().filter(|l| !l.trim().is_empty()).collect();
                lines[lines.len().saturating_sub(8)..].join(" | ")
            };
            fail(format!(
                "the virtual machine ended without the addon's exit status (QEMU {ended}){}; QEMU said: {}; the guest's console: {}",
                status_text.trim_start().strip_prefix("init-failed").map(|w| format!(", its init failed:{}", w.trim_end())).unwrap_or_default(),
                tail(QEMU_LOG),
                tail(CONSOLE)
            ))
        }
    }
}

/// Set when this helper is asked to stop.
static TERM: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_term(_: libc::c_int) {
    TERM.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// A file the guest appends to, passed on from where it was last read; what was passed on is
/// freed (the sandbox's `/tmp` holds only what is on its way).
struct Follow {
    path: PathBuf,
    at: u64,
    /// Whether what was passed on ended a line.
    ended_line: bool,
}

impl Follow {
    fn new(path: PathBuf) -> Follow {
        Follow { path, at: 0, ended_line: true }
    }

    fn pass(&mut self, to: &mut dyn Write) {
        let Ok(mut f) = std::fs::OpenOptions::new().read(true).write(true).open(&self.path) else { return };
        if f.seek(std::io::SeekFrom::Start(self.at)).is_err() {
            return;
        }
        let from = self.at;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match f.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    self.at += n as u64;
                    self.ended_line = buf[n - 1] == b'\n';
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.flush();
        if self.at > from {
            use std::os::fd::AsRawFd;
            // SAFETY: fallocate on a descriptor we hold; the range was read and passed on.
            unsafe {
                libc::fallocate(
                    f.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    0,
                    self.at as libc::off_t,
                )
            };
        }
    }
}

use std::os::unix::fs::DirBuilderExt;

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan {
            qemu: "qemu-system-x86_64".into(),
            kernel: "/k".into(),
            initrd: "/i".into(),
            accel: "tcg".into(),
            guest_mib: 256,
            cpus: 1,
            net: false,
            pids: Some(64),
            memory: None,
            tsc_khz: Some(2_600_000),
            cwd: "/mnt/work".into(),
            nonce: "n".into(),
            run_dir: "/w/run-1".into(),
            tmpfs: "mode=1777,size=1048576".into(),
            helper: "/opt/x/addon-runner-vm".into(),
            nix_store: false,
            extra_args: vec![],
        }
    }

    #[test]
    fn the_run_script_quotes_every_word() {
        let env = vec![("A".into(), "it's $HOME".into())];
        let argv = vec!["/mnt/work/x".into(), "a b".into(), "'".into()];
        let s = String::from_utf8(run_script(&plan(), 7, 8, &env, &argv)).unwrap();
        assert!(s.contains("addon_pids='64'\naddon_memory=''\naddon_net=0\n"), "{s}");
        assert!(s.contains("exec /bin/env -i /bin/chroot /root /usr/bin/setpriv"), "{s}");
        assert!(s.contains("--bounding-set=-all -- /usr/bin/env -i 'A=it'\\''s $HOME' '/.addon-helper/"), "{s}");
        assert!(s.contains("addon_tmpfs='mode=1777,size=1048576'\n"), "{s}");
        assert!(s.contains(" '/.addon-helper/addon-runner-vm' __sandbox-exec /bin/sh"), "{s}");
        assert!(s.contains("--reuid=7 --regid=8"), "{s}");
        assert!(s.ends_with(" '/mnt/work' '/mnt/work/x' 'a b' ''\\'''\n}\n"), "{s}");
    }

    #[test]
    fn a_pure_vm_has_no_network_device_and_the_shares_are_as_the_sandbox_sees_them() {
        let a = qemu_args(&plan(), &Shares::in_sandbox()).join(" ");
        assert!(!a.contains("netdev"), "{a}");
        assert!(a.contains("path=/usr,security_model=none,multidevs=remap,readonly=on"), "{a}");
        assert!(a.contains("path=/mnt/output,security_model=none,multidevs=remap -device"), "{a}");
        assert!(a.contains("tsc_early_khz=2600000"), "{a}");
        let mut p = plan();
        p.net = true;
        assert!(qemu_args(&p, &Shares::in_sandbox()).join(" ").contains("-netdev user,id=n0"));
    }

    #[test]
    fn the_status_is_read_or_refused() {
        assert_eq!(parse_status("code=3 oom=1 pids=0\n"), Some(Status { code: 3, oom: 1, pids: 0 }));
        assert_eq!(parse_status("init-failed cannot mount /usr"), None);
        assert_eq!(parse_status(""), None);
        assert_eq!(parse_status(&" ".repeat(256)), None, "the room the helper keeps, unwritten");
        assert_eq!(parse_status("code=0 oom=0 pids=0\n        "), Some(Status::default()));
    }
}
