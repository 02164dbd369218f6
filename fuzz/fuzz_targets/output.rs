//! Parsing and checking addon output never panics; what parses round-trips through JSON; a
//! check against an output directory accepts only files that are regular files of it, reached
//! through no symlink.
#![no_main]
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use addon_descriptors::{normalise_relative, AddonOutput};
use libfuzzer_sys::fuzz_target;

/// An output directory as an addon leaves it: files, a directory, and links (to a file, to a
/// directory, out of it). Read, never written.
fn output_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    addon_fuzz::fixture(&DIR, |dir| {
        std::fs::create_dir(dir.join("sub")).unwrap();
        for f in ["a.txt", "b.pdf", "sub/c.pdf", "sub/d.png"] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        std::os::unix::fs::symlink("a.txt", dir.join("flink")).unwrap();
        std::os::unix::fs::symlink("sub", dir.join("dlink")).unwrap();
        std::os::unix::fs::symlink("/etc", dir.join("out")).unwrap();
        std::os::unix::fs::symlink("..", dir.join("up")).unwrap();
    })
}

/// Every file path the output names.
fn files(out: &AddonOutput) -> Vec<&str> {
    let mut v = Vec::new();
    for f in &out.files {
        for map in [&f.text_files, &f.pdf_files, &f.preview_images] {
            v.extend(map.values().map(String::as_str));
        }
        v.extend(f.new_files.iter().map(|n| n.file.as_str()));
    }
    for item in &out.new_items {
        v.extend(item.files.iter().map(String::as_str));
    }
    v
}

fuzz_target!(|data: &[u8]| {
    let Ok(out) = AddonOutput::from_stdout(data) else { return };
    let alone = out.check(None);
    let json = serde_json::to_vec(&out).unwrap();
    let again = AddonOutput::from_stdout(&json).unwrap();
    assert_eq!(again, out);
    if alone.is_ok() {
        for f in files(&out) {
            normalise_relative(f).unwrap_or_else(|why| panic!("file `{f}` accepted: {why}"));
        }
    }
    let dir = output_dir();
    if out.check(Some(dir)).is_ok() {
        assert!(alone.is_ok(), "accepted with the directory only: {alone:?}");
        for f in files(&out) {
            let rel = normalise_relative(f).unwrap();
            let mut at = dir.to_path_buf();
            let parts: Vec<_> = rel.components().collect();
            for (i, part) in parts.iter().enumerate() {
                at.push(part);
                let m = std::fs::symlink_metadata(&at).unwrap();
                let last = i + 1 == parts.len();
                assert!(
                    if last { m.is_file() } else { m.is_dir() },
                    "`{f}` accepted: {} is a {:?}",
                    at.display(),
                    m.file_type()
                );
            }
        }
    }
    // Outputs of several addons are joined in run order.
    let mut both = out.clone();
    both.extend(out.clone());
    assert_eq!(both.is_empty(), out.is_empty());
    assert_eq!(both.check(None).is_ok(), alone.is_ok());
    assert_eq!(both.commands.len(), 2 * out.commands.len());
});
