//! Zip extraction never panics and never writes outside its target.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let work = tempfile::tempdir().unwrap();
    let zip = work.path().join("in.zip");
    std::fs::write(&zip, data).unwrap();
    let inside = work.path().join("box");
    std::fs::create_dir(&inside).unwrap();
    let target = inside.join("addon");
    let limits = addon_descriptors::Limits { max_size: 8 << 20, max_entries: 1000 };
    let result = addon_descriptors::extract_zip(&zip, &target, limits);
    // Nothing beside the zip and the box in the work dir; nothing in the box but the target.
    let outer: Vec<_> = std::fs::read_dir(work.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(outer.len(), 2, "{outer:?}");
    let inner: Vec<_> = std::fs::read_dir(&inside).unwrap().map(|e| e.unwrap().file_name()).collect();
    match result {
        Ok(_) => assert_eq!(inner, vec![std::ffi::OsString::from("addon")]),
        Err(_) => assert!(inner.is_empty(), "a refused archive left {inner:?}"),
    }
});
