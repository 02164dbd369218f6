//! CopyIn/CopyOut tar streams (`addon_runner_protocol::copy::unpack`, which is
//! `addon_tree::unpack_tar`) treated as hostile: never a panic, nothing written outside the
//! destination, only files, directories and (when the policy allows) symlinks in it, no
//! setuid/setgid bits, never more bytes than the policy allows.
//!
//! The first byte picks the policy: bit 0 symlinks (the plugin side's policy), bit 1 a limit
//! of 1000 bytes (the engine side bounds what it takes back).
#![no_main]
use std::os::unix::fs::PermissionsExt;

use addon_fuzz::copy::{unpack, UnpackPolicy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, stream)) = data.split_first() else { return };
    let policy = UnpackPolicy {
        symlinks: pick & 1 != 0,
        max_bytes: (pick & 2 != 0).then_some(1000),
        // Owners need root and change nothing but the owner; left out so the target behaves the
        // same for every user.
        owners: false,
    };
    // Directories the stream names get the owner's rwx; those made on the way get the umask's
    // mode: a usual one, whatever the shell that started the fuzzer had.
    static UMASK: std::sync::Once = std::sync::Once::new();
    // SAFETY: umask only sets the process's file mode creation mask.
    UMASK.call_once(|| unsafe {
        libc::umask(0o022);
    });
    let work = tempfile::tempdir().unwrap();
    // The destination two levels down: `..` or a link to the parent lands in a directory
    // that must stay as it was.
    let dest = work.path().join("a").join("b").join("dest");
    let result = unpack(stream, &dest, policy);
    assert_eq!(addon_fuzz::names(work.path()), ["a"]);
    assert_eq!(addon_fuzz::names(&work.path().join("a")), ["b"]);
    assert_eq!(addon_fuzz::names(&work.path().join("a/b")), ["dest"]);
    // A setgid directory passes its bit to the directories made in it: not the stream's doing.
    let inherited = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o2000;
    let mut content = 0u64;
    for (path, meta) in addon_fuzz::walk(&dest) {
        let ft = meta.file_type();
        let mode = meta.permissions().mode();
        if ft.is_symlink() {
            assert!(policy.symlinks, "a symlink arrived against the policy: {}", path.display());
        } else if ft.is_file() {
            assert_eq!(mode & 0o7000, 0, "{} arrived with mode {mode:o}", path.display());
            content += meta.len();
        } else {
            assert!(ft.is_dir(), "{} is a {ft:?}", path.display());
            assert_eq!(mode & 0o700, 0o700, "{} is {mode:o}", path.display());
            assert_eq!(mode & 0o7000 & !inherited, 0, "{} arrived with mode {mode:o}", path.display());
        }
    }
    if let Some(max) = policy.max_bytes {
        assert!(content <= max, "{content} bytes written, the limit is {max}");
    }
    if let Ok(bytes) = result {
        assert_eq!(bytes, content, "unpack counted {bytes} bytes, wrote {content}");
    }
});
