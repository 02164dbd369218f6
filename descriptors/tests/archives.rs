//! Hostile archives are refused, write nothing outside the target, and good ones unpack with
//! their mode bits; equal content gives equal digests.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use addon_descriptors::{digest_dir, extract_zip, load, ArchiveError, Limits};
use zip::write::SimpleFileOptions;

enum E<'a> {
    File(&'a str, &'a [u8], u32),
    Dir(&'a str),
    Link(&'a str, &'a str),
}

fn make_zip(path: &Path, entries: &[E<'_>]) {
    let mut w = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    for e in entries {
        match e {
            E::File(name, data, mode) => {
                let o = SimpleFileOptions::default().unix_permissions(*mode);
                w.start_file(*name, o).unwrap();
                w.write_all(data).unwrap();
            }
            E::Dir(name) => w.add_directory(*name, SimpleFileOptions::default()).unwrap(),
            E::Link(name, target) => w.add_symlink(*name, *target, SimpleFileOptions::default()).unwrap(),
        }
    }
    w.finish().unwrap();
}

const DESC: &[u8] = b"meta:\n  name: z\n  version: \"1\"\nrunner:\n  trivial:\n    enable: true\n    exec: run.sh\n";

/// Lists everything below `dir` (relative paths), to prove nothing was written.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = walkdir(dir);
    v.sort();
    v
}

fn walkdir(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        out.push(e.path().display().to_string());
        if e.file_type().unwrap().is_dir() {
            out.extend(walkdir(&e.path()));
        }
    }
    out
}

fn refused(entries: &[E<'_>], needle: &str) {
    let work = tempfile::tempdir().unwrap();
    let zip = work.path().join("a.zip");
    make_zip(&zip, entries);
    let before = listing(work.path());
    let target = work.path().join("out/addon");
    let err = extract_zip(&zip, &target, Limits::default()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(needle), "error should name `{needle}`: {msg}");
    assert!(!target.exists());
    let after: Vec<String> = listing(work.path()).into_iter().filter(|p| !p.ends_with("/out")).collect();
    assert_eq!(before, after, "nothing may be left behind");
    // Where each entry would have landed had its name been followed (`out/evil` for
    // `../evil`, `/tmp/evil-absolute` for an absolute name): nothing is there.
    for e in entries {
        let (E::File(name, ..) | E::Dir(name) | E::Link(name, _)) = e;
        let landed = lexical(&target.join(name));
        if !landed.starts_with(&target) {
            assert!(std::fs::symlink_metadata(&landed).is_err(), "{} was written outside", landed.display());
        }
    }
}

/// `path` with `.` and `..` taken away without asking the file system.
fn lexical(path: &Path) -> std::path::PathBuf {
    let mut out = std::path::PathBuf::new();
    for c in path.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[test]
fn zip_slip_is_refused() {
    refused(&[E::File("docspell-addon.yml", DESC, 0o644), E::File("../evil", b"x", 0o644)], "../evil");
    refused(&[E::File("a/../../evil", b"x", 0o644)], "a/../../evil");
}

#[test]
fn absolute_paths_are_refused() {
    refused(&[E::File("/tmp/evil-absolute", b"x", 0o644)], "/tmp/evil-absolute");
}

#[test]
fn escaping_symlinks_are_refused() {
    refused(&[E::File("docspell-addon.yml", DESC, 0o644), E::Link("etc", "../../../etc")], "etc");
    refused(&[E::Link("abs", "/etc/passwd")], "abs");
    // A link that looks inside lexically but escapes through another link.
    refused(&[E::Link("s", "."), E::Link("up", "s/..")], "up");
    // Writing through a link of the archive.
    refused(&[E::Link("d", "sub"), E::Dir("sub/"), E::File("d/x", b"x", 0o644)], "d/x");
    // Inside the archive's root, but not inside the addon once its single top folder is
    // unwrapped (the attack review read /etc/shadow as the descriptor this way).
    refused(&[E::Dir("top/"), E::Link("top/docspell-addon.yml", "../etc/shadow")], "docspell-addon.yml");
    refused(
        &[
            E::Dir("t0/"),
            E::Dir("t0/t1/"),
            E::File("t0/t1/docspell-addon.yml", DESC, 0o644),
            E::Link("t0/t1/etc", "../../etc"),
        ],
        "etc",
    );
}

#[test]
fn a_two_gib_bomb_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let zip = work.path().join("bomb.zip");
    {
        let mut w = zip::ZipWriter::new(std::fs::File::create(&zip).unwrap());
        let o = SimpleFileOptions::default().compression_level(Some(1)).large_file(true);
        w.start_file("docspell-addon.yml", SimpleFileOptions::default()).unwrap();
        w.write_all(DESC).unwrap();
        w.start_file("bomb.bin", o).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..2048 {
            w.write_all(&zeros).unwrap();
        }
        w.finish().unwrap();
    }
    assert!(std::fs::metadata(&zip).unwrap().len() < 50 << 20, "the bomb is small on disk");
    let target = work.path().join("addon");
    let err = extract_zip(&zip, &target, Limits::default()).unwrap_err();
    assert!(matches!(err, ArchiveError::TooLarge { .. }), "{err}");
    assert!(!target.exists());
    assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 1, "only the zip remains");
    // Too many entries.
    let many = work.path().join("many.zip");
    let names: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
    make_zip(&many, &names.iter().map(|n| E::File(n, b"", 0o644)).collect::<Vec<_>>());
    let err = extract_zip(&many, &work.path().join("m"), Limits { max_size: 1 << 20, max_entries: 10 }).unwrap_err();
    assert!(matches!(err, ArchiveError::TooManyEntries { .. }), "{err}");
}

#[test]
fn lying_headers_do_not_help() {
    // A small limit and an entry that inflates past it: counted while inflating.
    let work = tempfile::tempdir().unwrap();
    let zip = work.path().join("a.zip");
    make_zip(&zip, &[E::File("big", &vec![7u8; 4 << 20], 0o644)]);
    // Make both headers claim 10 bytes unpacked.
    let mut bytes = std::fs::read(&zip).unwrap();
    for (sig, off) in [(b"PK\x03\x04", 22usize), (b"PK\x01\x02", 24usize)] {
        let at = bytes.windows(4).position(|w| w == sig).unwrap();
        bytes[at + off..at + off + 4].copy_from_slice(&10u32.to_le_bytes());
    }
    std::fs::write(&zip, bytes).unwrap();
    let err = extract_zip(&zip, &work.path().join("t"), Limits { max_size: 1 << 20, max_entries: 10 }).unwrap_err();
    assert!(err.to_string().contains("big"), "{err}");
    assert!(!work.path().join("t").exists());
}

#[test]
fn wrapped_zip_unwraps_keeps_modes_and_digests_like_the_directory() {
    let work = tempfile::tempdir().unwrap();
    // The same addon as a directory...
    let dir = work.path().join("dir");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("docspell-addon.yml"), DESC).unwrap();
    std::fs::write(dir.join("run.sh"), b"#!/bin/sh\necho {}\n").unwrap();
    std::fs::set_permissions(dir.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("src/lib.sh"), b"x=1\n").unwrap();
    std::os::unix::fs::symlink("src/lib.sh", dir.join("lib.sh")).unwrap();
    // ...and as a GitHub-style zip, wrapped twice, entries in another order.
    let zip = work.path().join("a.zip");
    make_zip(
        &zip,
        &[
            E::Dir("repo-1.0/"),
            E::Dir("repo-1.0/inner/"),
            E::File("repo-1.0/inner/src/lib.sh", b"x=1\n", 0o644),
            E::Link("repo-1.0/inner/lib.sh", "src/lib.sh"),
            E::File("repo-1.0/inner/run.sh", b"#!/bin/sh\necho {}\n", 0o755),
            E::File("repo-1.0/inner/docspell-addon.yml", DESC, 0o644),
        ],
    );
    let from_zip = load(&zip, Limits::default(), Some(work.path())).unwrap();
    assert!(from_zip.parsed.is_valid(), "{:#?}", from_zip.parsed.diagnostics);
    let root = from_zip.root.clone().unwrap();
    let mode = std::fs::metadata(root.join("run.sh")).unwrap().permissions().mode();
    assert_eq!(mode & 0o111, 0o111, "exec bits kept");
    let from_dir = load(&dir, Limits::default(), None).unwrap();
    assert_eq!(from_zip.digest, from_dir.digest);
    assert_eq!(digest_dir(&root).unwrap(), digest_dir(&dir).unwrap());
}

/// Rewrites the mode the central directory records for every entry whose name ends in `suffix`.
fn set_mode(bytes: &mut [u8], suffix: &str, mode: u32) {
    let mut at = 0;
    while let Some(p) = bytes[at..].windows(4).position(|w| w == b"PK\x01\x02") {
        let h = at + p;
        let name_len = u16::from_le_bytes([bytes[h + 28], bytes[h + 29]]) as usize;
        let name = String::from_utf8_lossy(&bytes[h + 46..h + 46 + name_len]).into_owned();
        if name.ends_with(suffix) {
            bytes[h + 5] = 3; // made on Unix, so the mode is read
            bytes[h + 38..h + 42].copy_from_slice(&(mode << 16).to_le_bytes());
        }
        at = h + 4;
    }
}

#[test]
fn special_modes_unpack_as_plain_files_and_duplicates_are_refused() {
    // The attack review left zips with device, fifo and setuid entries untried: whatever mode an
    // entry claims, it is written as a plain file without setuid, setgid or sticky bits.
    let work = tempfile::tempdir().unwrap();
    let zip = work.path().join("a.zip");
    make_zip(
        &zip,
        &[
            E::File("docspell-addon.yml", DESC, 0o644),
            E::File("suid", b"x", 0o755),
            E::File("chr", b"x", 0o644),
            E::File("fifo", b"x", 0o644),
            E::File("README", b"upper", 0o644),
            E::File("readme", b"lower", 0o644),
        ],
    );
    let mut bytes = std::fs::read(&zip).unwrap();
    set_mode(&mut bytes, "suid", 0o107755);
    set_mode(&mut bytes, "chr", 0o020666);
    set_mode(&mut bytes, "fifo", 0o010666);
    std::fs::write(&zip, bytes).unwrap();
    let target = work.path().join("addon");
    extract_zip(&zip, &target, Limits::default()).unwrap();
    for name in ["suid", "chr", "fifo"] {
        let m = std::fs::symlink_metadata(target.join(name)).unwrap();
        assert!(m.file_type().is_file(), "{name} is a plain file");
        assert_eq!(m.permissions().mode() & 0o7000, 0, "{name}: no setuid, setgid or sticky bit");
    }
    // Names differing in case are different files here, as on the sandbox's filesystem.
    assert_eq!(std::fs::read(target.join("README")).unwrap(), b"upper");
    assert_eq!(std::fs::read(target.join("readme")).unwrap(), b"lower");
    // The same name twice is ambiguous (which one did the author mean?) and refused.
    // The writer will not make such a zip; the second name is patched into place.
    let dup = work.path().join("dup.zip");
    make_zip(
        &dup,
        &[E::File("docspell-addon.yml", DESC, 0o644), E::File("dupA", b"1", 0o644), E::File("dupB", b"2", 0o644)],
    );
    let mut bytes = std::fs::read(&dup).unwrap();
    while let Some(p) = bytes.windows(4).position(|w| w == b"dupB") {
        bytes[p + 3] = b'A';
    }
    std::fs::write(&dup, bytes).unwrap();
    let err = extract_zip(&dup, &work.path().join("d"), Limits::default()).unwrap_err();
    assert!(err.to_string().contains("more than once"), "{err}");
    assert!(!work.path().join("d").exists());
}
