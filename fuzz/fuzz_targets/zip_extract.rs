//! Zip extraction never panics and never writes outside its target: a refused archive leaves
//! nothing; an accepted one leaves only the target, whose links all stay inside it.
#![no_main]
use addon_descriptors::{extract_zip, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let work = tempfile::tempdir().unwrap();
    let zip = work.path().join("in.zip");
    std::fs::write(&zip, data).unwrap();
    let inside = work.path().join("box");
    std::fs::create_dir(&inside).unwrap();
    let target = inside.join("addon");
    let limits = Limits { max_size: 8 << 20, max_entries: 1000 };
    let result = extract_zip(&zip, &target, limits);
    // Nothing beside the zip and the box in the work dir; nothing in the box but the target.
    assert_eq!(addon_fuzz::names(work.path()), ["box", "in.zip"]);
    let inner = addon_fuzz::names(&inside);
    match result {
        Ok(at) => {
            assert_eq!(at, target);
            assert_eq!(inner, ["addon"]);
            let base = target.canonicalize().unwrap();
            for (path, meta) in addon_fuzz::walk(&target) {
                let ft = meta.file_type();
                if ft.is_symlink() {
                    let to = std::fs::read_link(&path).unwrap();
                    assert!(to.is_relative(), "{} -> {}", path.display(), to.display());
                    // Where the kernel takes it, when it leads anywhere, is inside.
                    if let Ok(real) = path.canonicalize() {
                        assert!(real.starts_with(&base), "{} leads to {}", path.display(), real.display());
                    }
                } else if ft.is_file() {
                    use std::os::unix::fs::PermissionsExt;
                    let mode = meta.permissions().mode();
                    assert_eq!(mode & 0o600, 0o600, "{} is {mode:o}: the engine cannot clean it up", path.display());
                    assert_eq!(mode & 0o7000, 0, "{} is {mode:o}", path.display());
                } else {
                    assert!(ft.is_dir(), "{} is a {ft:?}", path.display());
                }
            }
        }
        Err(_) => assert!(inner.is_empty(), "a refused archive left {inner:?}"),
    }
});
