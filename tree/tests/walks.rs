//! The walks against trees an attacker shaped: deeper than PATH_MAX, links to host files, fifos,
//! sockets, devices, unreadable directories, and a directory swapped for a symlink to a host
//! directory while the walk runs.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use addon_tree::{copy_tree, measure, merge_into, remove_tree, sanitize, Sanitize};
use rustix::fs::{Mode, OFlags};

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Makes `levels` nested directories `d` below `root` by descriptors (their path is far longer
/// than PATH_MAX), and returns the descriptor of the deepest.
fn deep(root: &Path, levels: usize) -> OwnedFd {
    let mut fd = rustix::fs::open(root, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    for _ in 0..levels {
        rustix::fs::mkdirat(&fd, c"d", Mode::from_raw_mode(0o755)).unwrap();
        fd = rustix::fs::openat(&fd, c"d", OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW, Mode::empty())
            .unwrap();
    }
    fd
}

/// What an attacker leaves at the bottom of a deep tree: a setuid file, a link to a host
/// file, a fifo.
fn plant(fd: &OwnedFd) {
    let f = rustix::fs::openat(fd, c"suid", OFlags::WRONLY | OFlags::CREATE, Mode::from_raw_mode(0o755)).unwrap();
    rustix::io::write(&f, b"#!/bin/sh\n").unwrap();
    rustix::fs::fchmod(&f, Mode::from_raw_mode(0o6755)).unwrap();
    rustix::fs::symlinkat(c"/etc/shadow", fd, c"shadow").unwrap();
    rustix::fs::mknodat(fd, c"fifo", rustix::fs::FileType::Fifo, Mode::from_raw_mode(0o644), 0).unwrap();
}

#[test]
fn a_tree_deeper_than_path_max_is_walked_whole() {
    let dir = tempfile::tempdir().unwrap();
    // 5,000 bytes of "d/": past PATH_MAX (4096), and deeper than the 1,024 descriptors a process
    // may hold under the usual soft limit, so there a walk holding one per level would fail.
    let levels = 2500;
    let bottom = deep(dir.path(), levels);
    plant(&bottom);
    drop(bottom);
    let m = measure(dir.path()).unwrap();
    assert_eq!(m.entries, levels as u64 + 3, "every entry counted");
    let s = sanitize(dir.path(), &Sanitize { owner: None, keep_symlinks: false, dirs_writable: false }).unwrap();
    assert_eq!(s.defused, 1, "the setuid file at the bottom lost its bits");
    assert_eq!(s.removed_count, 2, "the link and the fifo are gone: {:?}", s.removed);
    assert!(s.removed[0].contains("...("), "a deep path is shortened in messages: {}", s.removed[0]);
    // Look at the bottom again, by descriptors.
    let mut fd = rustix::fs::open(dir.path(), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    for _ in 0..levels {
        fd = rustix::fs::openat(&fd, c"d", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    }
    let st = rustix::fs::statat(&fd, c"suid", rustix::fs::AtFlags::empty()).unwrap();
    assert_eq!(st.st_mode & 0o7777, 0o755);
    assert!(rustix::fs::statat(&fd, c"shadow", rustix::fs::AtFlags::SYMLINK_NOFOLLOW).is_err());
    remove_tree(dir.path()).unwrap();
    assert!(!dir.path().exists(), "removed whole");
}

#[test]
fn a_copy_of_a_deep_tree_is_whole_and_keeps_links_as_links() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let bottom = deep(&src, 600);
    rustix::fs::symlinkat(c"../d", &bottom, c"up").unwrap();
    let f = rustix::fs::openat(&bottom, c"file", OFlags::WRONLY | OFlags::CREATE, Mode::from_raw_mode(0o4751)).unwrap();
    rustix::io::write(&f, b"content").unwrap();
    rustix::fs::fchmod(&f, Mode::from_raw_mode(0o4751)).unwrap();
    drop((f, bottom));
    std::fs::write(src.join("top.txt"), "top").unwrap();
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    std::fs::File::options().write(true).open(src.join("top.txt")).unwrap().set_modified(old).unwrap();
    let dst = dir.path().join("dst");
    assert_eq!(copy_tree(&src, &dst).unwrap(), 0);
    assert_eq!(measure(&dst).unwrap().entries, measure(&src).unwrap().entries);
    assert_eq!(std::fs::metadata(dst.join("top.txt")).unwrap().modified().unwrap(), old, "times kept");
    let mut fd = rustix::fs::open(&dst, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    for _ in 0..600 {
        fd = rustix::fs::openat(&fd, c"d", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    }
    let st = rustix::fs::statat(&fd, c"file", rustix::fs::AtFlags::empty()).unwrap();
    assert_eq!(st.st_mode & 0o7777, 0o751, "mode kept, setuid bit not");
    let link = rustix::fs::readlinkat(&fd, c"up", Vec::new()).unwrap();
    assert_eq!(link.as_bytes(), b"../d");
    remove_tree(&dst).unwrap();
    remove_tree(&src).unwrap();
}

#[test]
fn links_are_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let host_file = outside.join("host-binary");
    std::fs::write(&host_file, "host").unwrap();
    std::fs::set_permissions(&host_file, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    std::os::unix::fs::symlink(&outside, tree.join("dirlink")).unwrap();
    std::os::unix::fs::symlink(&host_file, tree.join("filelink")).unwrap();
    let (uid, gid) = addon_tree::current_owner();
    let owner = if is_root() { Some((4242, 4242)) } else { Some((uid, gid)) };
    let s = sanitize(&tree, &Sanitize { owner, keep_symlinks: true, dirs_writable: false }).unwrap();
    assert_eq!(s.removed_count, 0);
    let m = std::fs::metadata(&host_file).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o4755, "the link's target keeps its bits");
    assert_eq!(m.uid(), uid, "the link's target keeps its owner");
    if is_root() {
        assert_eq!(std::fs::symlink_metadata(tree.join("filelink")).unwrap().uid(), 4242, "the link itself is given");
    }
    sanitize(&tree, &Sanitize { owner: None, keep_symlinks: false, dirs_writable: false }).unwrap();
    assert!(std::fs::symlink_metadata(tree.join("dirlink")).is_err());
    assert!(host_file.exists() && outside.exists(), "removing a link removes only the link");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1);
}

#[test]
fn fifos_sockets_and_devices_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path();
    rustix::fs::mknodat(rustix::fs::CWD, t.join("fifo"), rustix::fs::FileType::Fifo, Mode::from_raw_mode(0o644), 0)
        .unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(t.join("sock")).unwrap();
    let mut expected = 2;
    if is_root() {
        // /dev/null's numbers; any device node would do.
        rustix::fs::mknodat(
            rustix::fs::CWD,
            t.join("null"),
            rustix::fs::FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            rustix::fs::makedev(1, 3),
        )
        .unwrap();
        expected += 1;
    }
    std::fs::write(t.join("kept"), "kept").unwrap();
    let s = sanitize(t, &Sanitize::default()).unwrap();
    assert_eq!(s.removed_count, expected, "{:?}", s.removed);
    let left: Vec<_> = std::fs::read_dir(t).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("kept")]);
}

#[test]
fn unreadable_directories_are_walked_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let hidden = dir.path().join("hidden");
    std::fs::create_dir_all(hidden.join("inner")).unwrap();
    std::fs::write(hidden.join("inner/suid"), "x").unwrap();
    std::fs::set_permissions(hidden.join("inner/suid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::set_permissions(hidden.join("inner"), std::fs::Permissions::from_mode(0o000)).unwrap();
    std::fs::set_permissions(&hidden, std::fs::Permissions::from_mode(0o000)).unwrap();
    let s = sanitize(dir.path(), &Sanitize::default()).unwrap();
    assert_eq!(s.defused, 1, "the file in the unreadable directory was reached");
    assert_eq!(measure(dir.path()).unwrap().entries, 3);
    std::fs::set_permissions(&hidden, std::fs::Permissions::from_mode(0o500)).unwrap();
    remove_tree(&hidden).unwrap();
    assert!(!hidden.exists());
}

#[test]
fn removing_a_link_or_a_missing_path_touches_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep"), "k").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    remove_tree(&link).unwrap();
    assert!(target.join("keep").exists());
    remove_tree(&dir.path().join("missing")).unwrap();
}

#[test]
fn merging_moves_files_and_replaces_what_is_in_the_way() {
    let dir = tempfile::tempdir().unwrap();
    let (from, to) = (dir.path().join("from"), dir.path().join("to"));
    std::fs::create_dir_all(from.join("sub/deeper")).unwrap();
    std::fs::write(from.join("sub/deeper/a"), "new").unwrap();
    std::fs::write(from.join("b"), "new b").unwrap();
    std::fs::create_dir(from.join("was-file")).unwrap();
    std::fs::write(from.join("was-dir"), "now a file").unwrap();
    std::fs::create_dir_all(to.join("sub")).unwrap();
    std::fs::write(to.join("sub/old"), "old").unwrap();
    std::fs::write(to.join("b"), "old b").unwrap();
    std::fs::write(to.join("was-file"), "x").unwrap();
    std::fs::create_dir_all(to.join("was-dir/inner")).unwrap();
    // A link in the output where a directory arrives is replaced, not entered.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::create_dir(from.join("linked")).unwrap();
    std::fs::write(from.join("linked/f"), "f").unwrap();
    std::os::unix::fs::symlink(&elsewhere, to.join("linked")).unwrap();
    merge_into(&from, &to).unwrap();
    assert_eq!(std::fs::read_to_string(to.join("sub/deeper/a")).unwrap(), "new");
    assert_eq!(std::fs::read_to_string(to.join("sub/old")).unwrap(), "old");
    assert_eq!(std::fs::read_to_string(to.join("b")).unwrap(), "new b");
    assert!(to.join("was-file").is_dir());
    assert_eq!(std::fs::read_to_string(to.join("was-dir")).unwrap(), "now a file");
    assert!(std::fs::symlink_metadata(to.join("linked")).unwrap().is_dir());
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0, "nothing went through the link");
}

/// Run B of the same addon swaps a directory of the shared CACHE_DIR for a symlink to a host
/// directory, again and again, while this engine's walks (the chown before a run, the clean-up
/// after it) go over the tree. The host directory's files keep their owner and their bits.
#[test]
fn a_directory_swapped_for_a_link_during_the_walk_leads_nowhere() {
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("host-etc");
    std::fs::create_dir(&host).unwrap();
    let bins: Vec<PathBuf> = (0..50).map(|i| host.join(format!("bin{i}"))).collect();
    for b in &bins {
        std::fs::write(b, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(b, std::fs::Permissions::from_mode(0o4755)).unwrap();
    }
    let cache = dir.path().join("cache");
    let sub = cache.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    for i in 0..50 {
        std::fs::write(sub.join(format!("f{i}")), "x").unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, cache, host) = (stop.clone(), cache.clone(), host.clone());
        std::thread::spawn(move || {
            let (real, link, tmp) = (cache.join("sub"), cache.join("link"), cache.join("real"));
            let _ = std::os::unix::fs::symlink(&host, &link);
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // sub <-> link, atomically, as `mv` would.
                let a = CString::new(real.as_os_str().as_encoded_bytes()).unwrap();
                let b = CString::new(link.as_os_str().as_encoded_bytes()).unwrap();
                if rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    &a,
                    rustix::fs::CWD,
                    &b,
                    rustix::fs::RenameFlags::EXCHANGE,
                )
                .is_ok()
                {
                    swaps += 1;
                }
                let _ = &tmp;
            }
            swaps
        })
    };
    let owner = if is_root() { (2_147_000_000, 2_147_000_000) } else { addon_tree::current_owner() };
    let mut walks = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while std::time::Instant::now() < deadline {
        // Errors (the tree changed) are fine here; reaching the host is not.
        let _ = sanitize(&cache, &Sanitize { owner: Some(owner), keep_symlinks: true, dirs_writable: false });
        let _ = measure(&cache);
        walks += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps > 100 && walks > 10, "the race ran: {swaps} swaps, {walks} walks");
    let (uid, _) = addon_tree::current_owner();
    for b in &bins {
        let m = std::fs::metadata(b).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o4755, "{}: bits taken through the link", b.display());
        assert_eq!(m.uid(), uid, "{}: owner changed through the link", b.display());
    }
}

/// A file capability (here CAP_NET_RAW, permitted and effective) is a privilege like a setuid
/// bit: it goes. Setting one needs root.
#[test]
fn file_capabilities_are_removed() {
    if !is_root() {
        eprintln!("file capabilities can only be set by root; the walk's handling is covered as root in CI");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("ping");
    std::fs::write(&f, "x").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
    // struct vfs_cap_data, revision 2: magic_etc (with the effective bit), then permitted and
    // inheritable, low and high words.
    let mut cap = Vec::new();
    for word in [0x0200_0001u32, 1 << 13, 0, 0, 0] {
        cap.extend_from_slice(&word.to_le_bytes());
    }
    rustix::fs::setxattr(&f, c"security.capability", &cap, rustix::fs::XattrFlags::empty()).unwrap();
    let s = sanitize(dir.path(), &Sanitize::default()).unwrap();
    assert_eq!(s.defused, 1);
    let mut buf = [0u8; 64];
    assert!(rustix::fs::getxattr(&f, c"security.capability", &mut buf[..]).is_err(), "the capability is gone");
}

/// A trivial addon's program is made executable through the addon's own tree only: a program
/// that is a link to a host file is refused, and the host file keeps its mode.
#[test]
fn a_program_linked_to_a_host_file_is_not_made_executable() {
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("shadow");
    std::fs::write(&host, "secret").unwrap();
    std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o640)).unwrap();
    let addon = dir.path().join("addon");
    std::fs::create_dir_all(addon.join("bin")).unwrap();
    std::os::unix::fs::symlink(&host, addon.join("run.sh")).unwrap();
    std::os::unix::fs::symlink("../../shadow", addon.join("bin/up")).unwrap();
    std::fs::write(addon.join("bin/real"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(addon.join("bin/real"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::symlink("bin/real", addon.join("inside")).unwrap();
    for rel in ["run.sh", "bin/up", "../shadow"] {
        assert!(addon_tree::make_executable(&addon, Path::new(rel)).is_err(), "{rel}");
    }
    assert_eq!(std::fs::metadata(&host).unwrap().permissions().mode() & 0o7777, 0o640, "the host file is untouched");
    assert_eq!(addon_tree::make_executable(&addon, Path::new("inside")).unwrap(), 0o755, "a link inside is fine");
}

#[test]
fn a_tar_of_a_tree_deeper_than_path_max_unpacks_whole_and_defused() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    // 2,500 levels: past PATH_MAX, and past the descriptors a process may hold (1,024).
    let levels = 2500;
    let bottom = deep(&src, levels);
    let f = rustix::fs::openat(&bottom, c"suid", OFlags::WRONLY | OFlags::CREATE, Mode::from_raw_mode(0o755)).unwrap();
    rustix::io::write(&f, b"#!/bin/sh\n").unwrap();
    rustix::fs::fchmod(&f, Mode::from_raw_mode(0o6755)).unwrap();
    rustix::fs::symlinkat(c"/etc", &bottom, c"etc").unwrap();
    drop((f, bottom));
    std::fs::write(src.join("top.txt"), "top").unwrap();
    let (tar, _) = addon_tree::pack_tar(&src, Vec::new(), addon_tree::Links::Keep).unwrap();
    let dst = dir.path().join("dst");
    let policy = addon_tree::UnpackPolicy { symlinks: true, max_bytes: None, owners: false };
    let done = addon_tree::unpack_tar(&tar[..], &dst, policy).unwrap();
    assert_eq!(done.bytes, 13);
    assert_eq!(measure(&dst).unwrap().entries, measure(&src).unwrap().entries, "every entry arrived");
    let mut fd = rustix::fs::open(&dst, OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    for _ in 0..levels {
        fd = rustix::fs::openat(&fd, c"d", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    }
    let st = rustix::fs::statat(&fd, c"suid", rustix::fs::AtFlags::empty()).unwrap();
    assert_eq!(st.st_mode & 0o7777, 0o755, "the setuid and setgid bits did not come along");
    assert_eq!(rustix::fs::readlinkat(&fd, c"etc", Vec::new()).unwrap().as_bytes(), b"/etc", "a link, as a link");
    // A later entry below that link is refused, not written into /etc.
    let mut evil = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    evil.append_link(&mut h, "a", "/tmp").unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    evil.append_data(&mut h, "a/escaped", &b"x"[..]).unwrap();
    let e = addon_tree::unpack_tar(&evil.into_inner().unwrap()[..], &dir.path().join("evil"), policy).unwrap_err();
    assert!(e.to_string().contains("through a symlink"), "{e}");
    assert!(!Path::new("/tmp/escaped").exists());
    remove_tree(&dst).unwrap();
    remove_tree(&src).unwrap();
}
