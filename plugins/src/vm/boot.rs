//! What every VM boots: the host's kernel, uncompressed once (a compressed kernel costs about 3 s
//! more per boot under TCG, decompressing itself in emulation), and a small initramfs (the
//! host's static busybox, the virtio, 9p and virtio-net modules of that kernel in dependency
//! order, and the guest's init). Both are made once per kernel, busybox and init, in a
//! directory named after their digest, under a lock, and renamed into place whole.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::Digest;

/// The guest's init.
pub const INIT: &str = include_str!("init.sh");

/// The modules the guest needs (and their dependencies, found in `modules.dep`).
const MODULES: [&str; 4] = ["virtio_mmio", "9pnet_virtio", "9p", "virtio_net"];

/// A kernel and initramfs ready to boot.
#[derive(Debug, Clone)]
pub struct Boot {
    /// Their directory (readable by the sandbox's user).
    pub dir: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The kernel's release (`6.1.0-57-amd64`).
    pub release: String,
}

/// Why no boot files could be made.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("no kernel: {0}")]
    NoKernel(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the kernel {}: {why}", kernel.display())]
    Kernel { kernel: PathBuf, why: String },
    #[error("module {name}: {why}")]
    Module { name: String, why: String },
    #[error("the state directory {}: {why}", dir.display())]
    NotOwn { dir: PathBuf, why: String },
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> BootError + '_ {
    move |source| BootError::Io { path: path.to_path_buf(), source }
}

/// The kernel to boot: `configured`, or the newest `/boot/vmlinuz-*` (by version order).
pub fn find_kernel(configured: Option<&Path>) -> Result<(PathBuf, String), BootError> {
    if let Some(k) = configured {
        let release = k
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("vmlinuz-"))
            .map(str::to_string)
            .ok_or_else(|| BootError::NoKernel(format!("{}: not named vmlinuz-RELEASE", k.display())))?;
        return Ok((k.to_path_buf(), release));
    }
    let mut found: Vec<(Vec<u64>, String, PathBuf)> = Vec::new();
    for e in fs_err::read_dir("/boot").map_err(|e| BootError::NoKernel(e.to_string()))?.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(release) = name.strip_prefix("vmlinuz-") {
            let order = release.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
            found.push((order, release.to_string(), e.path()));
        }
    }
    found.sort();
    found.pop().map(|(_, release, path)| (path, release)).ok_or_else(|| {
        BootError::NoKernel(
            "no /boot/vmlinuz-* (apt-get install --no-install-recommends linux-image-amd64; the cloud kernel has no 9p)"
                .into(),
        )
    })
}

/// Makes (once) and returns the boot files for `kernel` under `state`.
pub fn prepare(state: &Path, kernel: &Path, release: &str, busybox: &Path) -> Result<Boot, BootError> {
    let modules_dir = Path::new("/lib/modules").join(release);
    let modules = module_order(&modules_dir)?;
    let mut h = sha2::Sha256::new();
    for part in [kernel, busybox] {
        h.update(fs_err::read(part).map_err(io(part))?);
    }
    h.update(INIT.as_bytes());
    for (name, path) in &modules {
        h.update(name.as_bytes());
        h.update(fs_err::read(path).map_err(io(path))?);
    }
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    let key = hex::encode(&h.finalize()[..12]);
    own_dir(state)?;
    let root = state.join("boot");
    own_dir(&root)?;
    let dir = root.join(&key);
    let boot =
        Boot { kernel: dir.join("vmlinux"), initrd: dir.join("initrd"), dir: dir.clone(), release: release.into() };
    if dir.join("ready").exists() {
        return Ok(boot);
    }
    // One maker at a time; the others find it made.
    let lock_path = root.join(".lock");
    let lock =
        fs_err::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io(&lock_path))?;
    // SAFETY: flock on a descriptor we hold; released when it closes.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(lock.file()), libc::LOCK_EX) } != 0 {
        return Err(io(&lock_path)(std::io::Error::last_os_error()));
    }
    if dir.join("ready").exists() {
        return Ok(boot);
    }
    let tmp = root.join(format!(".{key}.{}", std::process::id()));
    let _ = fs_err::remove_dir_all(&tmp);
    fs_err::create_dir_all(&tmp).map_err(io(&tmp))?;
    extract_kernel(kernel, &tmp.join("vmlinux"))?;
    write_initrd(&tmp.join("initrd"), busybox, &modules)?;
    fs_err::write(tmp.join("ready"), release).map_err(io(&tmp))?;
    open_to_all(&tmp);
    let _ = fs_err::remove_dir_all(&dir);
    fs_err::rename(&tmp, &dir).map_err(io(&dir))?;
    Ok(boot)
}

/// Makes `dir` (mode 0755: the sandbox's user passes through it to the files bound from it)
/// when missing and checks that it is this user's own: a directory, not a link, owned by the
/// effective user, writable by nobody else. What is in it is trusted (a
/// kernel and initramfs every run boots, the program that runs in the sandbox), so another
/// local user must not have been able to put it there.
pub fn own_dir(dir: &Path) -> Result<(), BootError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    if let Some(parent) = dir.parent() {
        fs_err::create_dir_all(parent).map_err(io(parent))?;
    }
    match std::fs::DirBuilder::new().mode(0o755).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(dir)(e)),
    }
    let m = fs_err::symlink_metadata(dir).map_err(io(dir))?;
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if !m.is_dir() || m.uid() != me || m.mode() & 0o022 != 0 {
        let kind = if m.file_type().is_symlink() {
            "link"
        } else if m.is_dir() {
            "directory"
        } else {
            "file"
        };
        return Err(BootError::NotOwn {
            dir: dir.to_path_buf(),
            why: format!(
                "a {kind} owned by uid {} with mode {:o}; it must be a directory of uid {me} that nobody else may write",
                m.uid(),
                m.mode() & 0o7777
            ),
        });
    }
    if m.mode() & 0o055 != 0o055 {
        use std::os::unix::fs::PermissionsExt;
        let mode = (m.mode() | 0o755) & 0o7755;
        fs_err::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(io(dir))?;
    }
    Ok(())
}

/// A copy of this program in `state/helper/<its identity>/`, a directory holding it alone: it
/// runs in the sandbox (QEMU's helper) and is shared read-only with the guest (where it installs
/// the seccomp filter), which must see nothing else beside it.
pub fn helper_copy(state: &Path) -> Result<PathBuf, BootError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let exe = std::env::current_exe().map_err(io(Path::new("/proc/self/exe")))?;
    let m = fs_err::metadata(&exe).map_err(io(&exe))?;
    let mut h = sha2::Sha256::new();
    let when = m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128;
    h.update(format!("{}|{}|{}|{}|{when}", exe.display(), m.dev(), m.ino(), m.size()).as_bytes());
    let key = hex::encode(&h.finalize()[..12]);
    own_dir(state)?;
    let root = state.join("helper");
    own_dir(&root)?;
    let dir = root.join(&key);
    let name = exe.file_name().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("addon-runner-vm"));
    let copy = dir.join(&name);
    if dir.join(".ready").exists() {
        return Ok(copy);
    }
    // A name of its own for each maker: the runs of one plugin process (threads) and of
    // others may make it at once (a name by pid alone let one thread's clean-up remove another's
    // copy half made).
    let tmp = tempfile::Builder::new().prefix(&format!(".{key}.")).tempdir_in(&root).map_err(io(&root))?;
    fs_err::copy(&exe, tmp.path().join(&name)).map_err(io(tmp.path()))?;
    open_to_all(tmp.path());
    fs_err::set_permissions(tmp.path().join(&name), std::fs::Permissions::from_mode(0o755)).map_err(io(tmp.path()))?;
    fs_err::write(tmp.path().join(".ready"), b"").map_err(io(tmp.path()))?;
    let tmp = tmp.keep();
    if let Err(e) = fs_err::rename(&tmp, &dir) {
        // Another maker was first.
        let _ = fs_err::remove_dir_all(&tmp);
        if !dir.join(".ready").exists() {
            return Err(io(&dir)(e));
        }
    }
    Ok(copy)
}

/// Readable by the sandbox's user (QEMU runs as the addon's identity): a made directory and
/// its files.
fn open_to_all(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = if p.is_dir() { 0o755 } else { 0o644 };
    let _ = fs_err::set_permissions(p, std::fs::Permissions::from_mode(mode));
    if p.is_dir() {
        if let Ok(entries) = fs_err::read_dir(p) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_file()) {
                    let _ = fs_err::set_permissions(e.path(), std::fs::Permissions::from_mode(0o644));
                }
            }
        }
    }
}

/// The modules to load, in order (dependencies first), as (name, file); modules built into the
/// kernel are left out.
pub fn module_order(modules_dir: &Path) -> Result<Vec<(String, PathBuf)>, BootError> {
    let dep_file = modules_dir.join("modules.dep");
    let deps = fs_err::read_to_string(&dep_file).map_err(io(&dep_file))?;
    let builtin = fs_err::read_to_string(modules_dir.join("modules.builtin")).unwrap_or_default();
    let name_of = |path: &str| -> String {
        let file = path.rsplit('/').next().unwrap_or(path);
        file.split(".ko").next().unwrap_or(file).replace('-', "_")
    };
    let table: std::collections::HashMap<String, (String, Vec<String>)> = deps
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, d)| (name_of(m), (m.trim().to_string(), d.split_whitespace().map(str::to_string).collect())))
        .collect();
    let builtins: std::collections::HashSet<String> = builtin.lines().map(name_of).collect();
    let mut order = Vec::new();
    let mut seen = std::collections::HashSet::new();
    fn visit(
        name: &str,
        table: &std::collections::HashMap<String, (String, Vec<String>)>,
        name_of: &dyn Fn(&str) -> String,
        seen: &mut std::collections::HashSet<String>,
        order: &mut Vec<(String, String)>,
    ) -> bool {
        if !seen.insert(name.to_string()) {
            return true;
        }
        let Some((path, deps)) = table.get(name) else { return false };
        // modules.dep lists every dependency, the deepest last.
        for d in deps.iter().rev() {
            visit(&name_of(d), table, name_of, seen, order);
        }
        order.push((name.to_string(), path.clone()));
        true
    }
    for m in MODULES {
        if builtins.contains(m) {
            continue;
        }
        if !visit(m, &table, &name_of, &mut seen, &mut order) {
            return Err(BootError::Module {
                name: m.into(),
                why: format!("neither in {} nor built in", dep_file.display()),
            });
        }
    }
    Ok(order.into_iter().map(|(n, p)| (n, modules_dir.join(p))).collect())
}

/// The uncompressed kernel (an ELF image QEMU boots through PVH) out of a bzImage: the first
/// compressed stream in it that decompresses to an ELF file.
fn extract_kernel(kernel: &Path, to: &Path) -> Result<(), BootError> {
    let data = fs_err::read(kernel).map_err(io(kernel))?;
    if data.starts_with(b"\x7fELF") {
        return fs_err::write(to, &data).map_err(io(to));
    }
    let formats: [(&[u8], &str, &[&str]); 3] = [
        (b"\xfd7zXZ\x00", "xz", &["-dc", "--single-stream"]),
        (b"\x28\xb5\x2f\xfd", "zstd", &["-dc"]),
        (b"\x1f\x8b\x08", "gzip", &["-dc"]),
    ];
    let mut tried = Vec::new();
    for (magic, tool, args) in formats {
        let Some(at) = data.windows(magic.len()).position(|w| w == magic) else { continue };
        let mut child = match std::process::Command::new(tool)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                tried.push(format!("{tool}: {e}"));
                continue;
            }
        };
        let mut input = child.stdin.take().expect("piped");
        let stream = data[at..].to_vec();
        let feeder = std::thread::spawn(move || {
            let _ = input.write_all(&stream);
        });
        let mut out = Vec::new();
        let _ = child.stdout.take().expect("piped").read_to_end(&mut out);
        let _ = child.wait();
        let _ = feeder.join();
        if out.starts_with(b"\x7fELF") {
            return fs_err::write(to, &out).map_err(io(to));
        }
        tried.push(format!("a {tool} stream at byte {at} is not an ELF kernel"));
    }
    Err(BootError::Kernel {
        kernel: kernel.to_path_buf(),
        why: if tried.is_empty() { "no compressed kernel found in it".into() } else { tried.join("; ") },
    })
}

/// The initramfs: busybox, the modules, their order and the init.
fn write_initrd(to: &Path, busybox: &Path, modules: &[(String, PathBuf)]) -> Result<(), BootError> {
    let mut entries: Vec<(String, u32, Vec<u8>)> = Vec::new();
    for d in ["bin", "lib", "lib/modules", "proc", "sys", "dev", "root", "io"] {
        entries.push((d.into(), 0o040755, Vec::new()));
    }
    entries.push(("init".into(), 0o100755, INIT.as_bytes().to_vec()));
    entries.push(("bin/busybox".into(), 0o100755, fs_err::read(busybox).map_err(io(busybox))?));
    let mut list = String::new();
    for (name, path) in modules {
        entries.push((format!("lib/modules/{name}.ko"), 0o100644, fs_err::read(path).map_err(io(path))?));
        list.push_str(name);
        list.push('\n');
    }
    entries.push(("modules".into(), 0o100644, list.into_bytes()));
    let file = fs_err::File::create(to).map_err(io(to))?;
    let mut w = std::io::BufWriter::new(file);
    for (n, (name, mode, data)) in entries.iter().enumerate() {
        let builder = cpio::newc::Builder::new(name).mode(*mode).ino(n as u32 + 1).nlink(1).uid(0).gid(0);
        let mut fp = builder.write(w, data.len() as u32);
        fp.write_all(data).map_err(io(to))?;
        w = fp.finish().map_err(io(to))?;
    }
    let w = cpio::newc::trailer(w).map_err(io(to))?;
    w.into_inner().map_err(|e| io(to)(e.into_error()))?.sync_all().map_err(io(to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_making_the_helper_copy_at_once_all_get_it_whole() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        let size = std::fs::metadata(std::env::current_exe().unwrap()).unwrap().len();
        // Four makers, each copying this test program (about 60 MB).
        let made: Vec<_> = (0..4)
            .map(|_| {
                let state = state.clone();
                std::thread::spawn(move || helper_copy(&state))
            })
            .collect();
        for t in made {
            let copy = t.join().unwrap().unwrap_or_else(|e| panic!("a run could not have the helper: {e}"));
            assert_eq!(std::fs::metadata(&copy).unwrap().len(), size, "{}", copy.display());
        }
        let left: Vec<_> = std::fs::read_dir(state.join("helper")).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left.len(), 1, "one copy, no half-made ones left: {left:?}");
    }

    #[test]
    fn modules_come_after_their_dependencies_and_built_ins_are_left_out() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("modules.dep"),
            "kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/fscache/fscache.ko kernel/fs/netfs/netfs.ko\n\
             kernel/fs/netfs/netfs.ko:\nkernel/fs/fscache/fscache.ko: kernel/fs/netfs/netfs.ko\n\
             kernel/net/9p/9pnet.ko:\n\
             kernel/net/9p/9pnet_virtio.ko: kernel/net/9p/9pnet.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/drivers/virtio/virtio.ko:\nkernel/drivers/virtio/virtio_ring.ko:\n\
             kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\nkernel/net/core/failover.ko:\n",
        )
        .unwrap();
        std::fs::write(d.path().join("modules.builtin"), "kernel/drivers/virtio/virtio_mmio.ko\n").unwrap();
        let names: Vec<String> = module_order(d.path()).unwrap().into_iter().map(|(n, _)| n).collect();
        let at = |m: &str| names.iter().position(|n| n == m).unwrap_or_else(|| panic!("{m} in {names:?}"));
        assert!(!names.contains(&"virtio_mmio".to_string()), "built in: {names:?}");
        assert!(at("virtio_ring") < at("9pnet_virtio") && at("virtio") < at("9pnet_virtio"), "{names:?}");
        assert!(at("netfs") < at("fscache") && at("fscache") < at("9p") && at("9pnet") < at("9p"), "{names:?}");
        assert!(at("failover") < at("net_failover") && at("net_failover") < at("virtio_net"), "{names:?}");
        assert_eq!(names.len(), 10, "each once: {names:?}");
    }

    #[test]
    fn the_state_directory_must_be_the_users_own() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        own_dir(&state).unwrap();
        assert_eq!(std::fs::metadata(&state).unwrap().permissions().mode() & 0o022, 0, "made closed to writers");
        // A link (to a directory another user could have prepared) is refused.
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&state, &link).unwrap();
        let e = own_dir(&link).unwrap_err().to_string();
        assert!(e.contains("a link"), "{e}");
        // So is a directory others may write.
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = own_dir(&state).unwrap_err().to_string();
        assert!(e.contains("mode 777"), "{e}");
        // And one of another owner.
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).unwrap();
        // SAFETY: chown of a directory this test made.
        let path = std::ffi::CString::new(state.as_os_str().as_encoded_bytes()).unwrap();
        if unsafe { libc::geteuid() } == 0 && unsafe { libc::chown(path.as_ptr(), 65534, 65534) } == 0 {
            let e = own_dir(&state).unwrap_err().to_string();
            assert!(e.contains("owned by uid 65534"), "{e}");
        }
    }

    #[test]
    fn a_missing_module_is_named() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("modules.dep"), "kernel/net/9p/9pnet.ko:\n").unwrap();
        let e = module_order(d.path()).unwrap_err().to_string();
        assert!(e.contains("virtio_mmio"), "{e}");
    }
}
