//! The descriptor parser never panics; every diagnostic has a sane position and renders as
//! text that is safe for a terminal; a valid descriptor keeps what validation promises to every
//! accessor callers use (sections, exec, Dockerfile, image, purity), with and without the
//! addon's files at hand.
#![no_main]
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use addon_descriptors::{image_reference, normalise_relative, parse_descriptor, Descriptor, Parsed, Section, Trigger};
use libfuzzer_sys::fuzz_target;

/// An addon's files, read (never written) by the parser's file checks and auto-detection:
/// a program, a flake, a Dockerfile, and links that lead out of the addon.
fn addon_root() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    addon_fuzz::fixture(&ROOT, |root| {
        std::fs::create_dir(root.join("src")).unwrap();
        // The programs the seeds (real descriptors) name, so that they are valid with their files.
        for f in [
            "run.sh",
            "addon.sh",
            "hello.sh",
            "src/addon.sh",
            "src/addon.scm",
            "flake.nix",
            "Dockerfile",
            "src/Dockerfile.alt",
        ] {
            std::fs::write(root.join(f), b"x").unwrap();
        }
        std::os::unix::fs::symlink("/", root.join("out")).unwrap();
        std::os::unix::fs::symlink("..", root.join("up")).unwrap();
        std::os::unix::fs::symlink("run.sh", root.join("inside")).unwrap();
    })
}

fn check_diagnostics(text: &str, parsed: &Parsed) {
    let lines = addon_descriptors::diagnostic::yaml_lines(text).count().max(1) + 1;
    for d in &parsed.diagnostics {
        if let Some(l) = d.line {
            assert!(l >= 1 && l <= lines, "line {l} outside the text ({lines} lines): {d:?}");
            assert!(d.column.is_some_and(|c| c >= 1), "a line without a column: {d:?}");
        }
        let plain = d.render("docspell-addon.yml", Some(text), false);
        // What a descriptor says cannot move the cursor or set a title: no control character
        // but the line breaks of the rendering itself and tabs.
        assert!(
            !plain.chars().any(|c| (c.is_control() && c != '\n' && c != '\t') || ('\u{80}'..='\u{9f}').contains(&c)),
            "control characters in {plain:?}"
        );
        // Headline, location and, with a line, the source line framed by its gutter.
        let n = plain.lines().count();
        assert!(n == 2 || n == 5, "{n} lines rendered: {plain:?}");
        let _ = d.render("docspell-addon.yml", Some(text), true);
        let _ = d.render("docspell-addon.yml", None, false);
    }
    // Reading order: positioned problems first, by line and column.
    let keys: Vec<_> = parsed.diagnostics.iter().map(|d| (d.line.is_none(), d.line, d.column)).collect();
    assert!(keys.windows(2).all(|w| w[0] <= w[1]), "diagnostics out of order: {keys:?}");
}

/// What validation promises about a valid descriptor, through the accessors callers use.
fn check_valid(d: &Descriptor, root: Option<&Path>) {
    for v in [&d.meta.name, &d.meta.version] {
        assert!(!v.trim().is_empty() && v.len() <= 200, "{v:?}");
        assert!(!v.chars().any(|c| c.is_whitespace() || c.is_control() || c == '/' || c == '\\'), "{v:?}");
        assert!(v != "." && v != "..");
    }
    assert_eq!(d.id(), format!("{}-{}", d.meta.name, d.meta.version));
    assert_eq!(d.pure(), !d.networking() && d.collect_output());
    let mut triggers = d.triggers.clone();
    triggers.sort();
    triggers.dedup();
    assert_eq!(triggers.len(), d.triggers.len(), "a trigger twice: {:?}", d.triggers);
    for t in &d.triggers {
        assert_eq!(Trigger::parse(t.as_str()), Some(*t));
    }
    let sections = d.sections();
    assert!(sections.windows(2).all(|w| w[0] < w[1]), "{sections:?}");
    for s in Section::ALL {
        assert_eq!(d.enables(s), sections.contains(&s));
        assert_eq!(Section::parse(s.as_str()), Some(s));
        assert!(!s.builtin_runner().is_empty());
    }
    if root.is_some() {
        assert!(!sections.is_empty(), "valid with the addon's files but no runner");
    }
    if let Some(exec) = d.trivial_exec() {
        assert!(d.enables(Section::Trivial));
        let rel = normalise_relative(exec).unwrap_or_else(|why| panic!("exec `{exec}` {why}"));
        if let Some(root) = root {
            // The program is a file of the addon, also through links.
            let real = root.join(&rel).canonicalize().unwrap();
            assert!(real.starts_with(root.canonicalize().unwrap()) && real.is_file(), "{exec} -> {real:?}");
        }
    } else {
        assert!(!d.enables(Section::Trivial), "trivial enabled without a program");
    }
    if let Some(image) = d.docker_image() {
        image_reference(image).unwrap_or_else(|why| panic!("image accepted: {why}"));
    }
    if d.runner.docker.as_ref().is_some_and(|r| r.build.is_some()) {
        normalise_relative(d.dockerfile()).unwrap_or_else(|why| panic!("build `{}` accepted: {why}", d.dockerfile()));
    }
    if let Some(root) = root {
        if d.enables(Section::Docker) && d.docker_image().is_none() {
            assert!(root.join(normalise_relative(d.dockerfile()).unwrap()).is_file());
        }
        if d.enables(Section::Nix) {
            assert!(root.join("flake.nix").is_file());
        }
    }
    // The model is plain data: it round-trips through JSON (the schema's form).
    let json = serde_json::to_string(d).unwrap();
    let again: Descriptor = serde_json::from_str(&json).unwrap();
    assert_eq!(&again, d);
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let alone = parse_descriptor(text, None);
    check_diagnostics(text, &alone);
    if alone.is_valid() {
        check_valid(alone.descriptor.as_ref().unwrap(), None);
    }
    let root = addon_root();
    let with_files = parse_descriptor(text, Some(root));
    check_diagnostics(text, &with_files);
    if with_files.is_valid() {
        check_valid(with_files.descriptor.as_ref().unwrap(), Some(root));
        // The files only add checks: what passes with them passes without them.
        assert!(alone.is_valid(), "valid only with the addon's files: {:?}", alone.diagnostics);
    }
    assert_eq!(alone.descriptor.is_some(), with_files.descriptor.is_some());
});
