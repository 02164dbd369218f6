//! The real Docspell descriptors validate with the right runners and purity, and a descriptor
//! broken in each checked way is rejected with an error on that field.

use std::path::Path;

use addon_descriptors::{load, parse_descriptor, Limits, Section, Severity};

fn fixture(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/docspell").join(name)).unwrap()
}

use Section::{Docker, Nix as NixFlake, Trivial};

#[test]
fn real_descriptors_validate() {
    let cases: [(&str, &[Section], bool); 6] = [
        ("audio-files-addon.yml", &[NixFlake, Trivial], false),
        ("docspell-addon-example.yml", &[Docker], true),
        ("docspell-testfixture-dummy-addon.yml", &[Docker, NixFlake, Trivial], false),
        ("docspell-testfixture-minimal-addon.yml", &[Trivial], true),
        ("docspell-testfixture-single-file.yml", &[Docker], true),
        ("rotate-pdf-addon.yml", &[Docker, NixFlake, Trivial], true),
    ];
    for (file, runners, pure) in cases {
        let parsed = parse_descriptor(&fixture(file), None);
        assert!(parsed.is_valid(), "{file}: {:#?}", parsed.diagnostics);
        let errors: Vec<_> = parsed.diagnostics.iter().filter(|d| d.severity == Severity::Error).collect();
        assert!(errors.is_empty(), "{file}: {errors:?}");
        let d = parsed.descriptor.unwrap();
        assert_eq!(d.sections(), runners, "{file}");
        assert_eq!(d.pure(), pure, "{file}");
    }
}

#[test]
fn the_json_form_validates_too() {
    let text = r#"{"meta": {"name": "j", "version": "1.0"}, "triggers": ["scheduled"],
        "runner": {"trivial": {"enable": true, "exec": "run.sh"}}, "options": {"networking": false, "collectOutput": true}}"#;
    let p = parse_descriptor(text, None);
    assert!(p.is_valid(), "{:?}", p.diagnostics);
    assert!(p.descriptor.unwrap().pure());
}

/// Parses `text` and returns the error diagnostic on `field`, failing when there is none.
fn error_on(text: &str, field: &str, root: Option<&Path>) -> addon_descriptors::Diagnostic {
    let p = parse_descriptor(text, root);
    assert!(!p.is_valid(), "expected invalid:\n{text}");
    p.diagnostics
        .iter()
        .find(|d| d.severity == Severity::Error && d.field.as_deref() == Some(field))
        .cloned()
        .unwrap_or_else(|| panic!("no error on {field}: {:#?}", p.diagnostics))
}

const GOOD_RUNNER: &str = "runner:\n  trivial:\n    enable: true\n    exec: run.sh\n";

#[test]
fn each_broken_field_is_an_error_on_that_field() {
    let cases: Vec<(String, &str, Option<usize>)> = vec![
        (format!("meta:\n  version: \"1\"\n{GOOD_RUNNER}"), "meta.name", Some(1)),
        (format!("meta:\n  name: x\n{GOOD_RUNNER}"), "meta.version", Some(1)),
        (format!("meta:\n  name: \"\"\n  version: \"1\"\n{GOOD_RUNNER}"), "meta.name", Some(2)),
        (format!("meta:\n  name: \"  \"\n  version: \"1\"\n{GOOD_RUNNER}"), "meta.name", Some(2)),
        (format!("meta:\n  name: my addon\n  version: \"1\"\n{GOOD_RUNNER}"), "meta.name", Some(2)),
        (format!("meta:\n  name: a/b\n  version: \"1\"\n{GOOD_RUNNER}"), "meta.name", Some(2)),
        (format!("meta:\n  name: x\n  version: \"1 2\"\n{GOOD_RUNNER}"), "meta.version", Some(3)),
        (format!("meta:\n  name: x\n  version: \"..\"\n{GOOD_RUNNER}"), "meta.version", Some(3)),
        (
            format!("meta:\n  name: x\n  version: \"1\"\ntriggers:\n  - scheduled\n  - on-upload\n{GOOD_RUNNER}"),
            "triggers[1]",
            Some(6),
        ),
        (format!("meta:\n  name: x\n  version: \"1\"\nargs: \"--fast\"\n{GOOD_RUNNER}"), "args", Some(4)),
        (format!("meta:\n  name: x\n  version: \"1\"\nargs:\n  - a\n  - {{k: v}}\n{GOOD_RUNNER}"), "args[1]", Some(6)),
        (
            "meta:\n  name: x\n  version: \"1\"\nrunner:\n  trivial:\n    enable: \"sure\"\n    exec: run.sh\n".into(),
            "runner.trivial.enable",
            Some(6),
        ),
        ("meta:\n  name: x\n  version: \"1\"\nrunner:\n  nix:\n    enable: 1\n".into(), "runner.nix.enable", Some(6)),
        // An image reference and nothing else: skopeo reads `[driver@root+runroot:options]` as a
        // store to open as root (the attack review ran its own program as root this way).
        (
            "meta:\n  name: x\n  version: \"1\"\nrunner:\n  docker:\n    enable: true\n    image: \"[overlay@/tmp/s+/tmp/r:overlay.mount_program=/tmp/p]x:1\"\n".into(),
            "runner.docker.image",
            Some(7),
        ),
        (
            "meta:\n  name: x\n  version: \"1\"\nrunner:\n  docker:\n    enable: true\n    image: docker-daemon:busybox:latest\n".into(),
            "runner.docker.image",
            Some(7),
        ),
        (
            "meta:\n  name: x\n  version: \"1\"\nrunner:\n  trivial:\n    enable: true\n".into(),
            "runner.trivial.exec",
            Some(5),
        ),
        (
            "meta:\n  name: x\n  version: \"1\"\nrunner:\n  trivial:\n    enable: true\n    exec: /bin/sh\n".into(),
            "runner.trivial.exec",
            Some(7),
        ),
        (
            "meta:\n  name: x\n  version: \"1\"\nrunner:\n  trivial:\n    enable: true\n    exec: src/../../x.sh\n"
                .into(),
            "runner.trivial.exec",
            Some(7),
        ),
    ];
    for (text, field, line) in cases {
        let d = error_on(&text, field, None);
        assert_eq!(d.line, line, "line of {field} in\n{text}\n{d:?}");
        assert!(d.column.is_some_and(|c| c >= 1));
        assert!(!d.message.is_empty());
    }
}

#[test]
fn syntax_errors_point_at_the_line() {
    let p = parse_descriptor("meta:\n  name: x\n  version: [1\nrunner: {}\n", None);
    assert!(!p.is_valid());
    let d = &p.diagnostics[0];
    assert_eq!(d.severity, Severity::Error);
    assert_eq!(d.field, None);
    assert!(d.line.is_some() && d.message.contains("YAML syntax"), "{d:?}");
    let p = parse_descriptor("", None);
    assert!(!p.is_valid());
    let p = parse_descriptor("- a\n- b\n", None);
    assert!(!p.is_valid());
}

#[test]
fn all_problems_are_reported_at_once() {
    let text =
        "meta:\n  name: a b\n  version: \"\"\ntriggers: [nope]\nargs: [1]\nrunner:\n  trivial:\n    enable: true\n";
    let p = parse_descriptor(text, None);
    let errors = p.diagnostics.iter().filter(|d| d.severity == Severity::Error).count();
    assert!(errors >= 5, "{:#?}", p.diagnostics);
}

#[test]
fn warnings_do_not_invalidate() {
    let text = "meta:\n  name: x\n  version: 2.10\n  author: me\nrunner:\n  trivial:\n    enable: yes\n    exec: run.sh\noptions:\n  networking: false\n";
    let p = parse_descriptor(text, None);
    assert!(p.is_valid(), "{:#?}", p.diagnostics);
    let fields: Vec<_> = p.diagnostics.iter().map(|d| (d.severity, d.field.clone().unwrap_or_default())).collect();
    for f in ["meta.version", "meta.author", "runner.trivial.enable", "options.collectOutput"] {
        assert!(fields.iter().any(|(s, x)| *s == Severity::Warning && x == f), "no warning on {f}: {fields:?}");
    }
    let d = p.descriptor.unwrap();
    assert_eq!(d.meta.version, "2.10", "the source text of a numeric version is kept");
    assert!(d.pure());
}

fn addon_dir(descriptor: &str, files: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("docspell-addon.yml"), descriptor).unwrap();
    for f in files {
        let p = dir.path().join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "#!/bin/sh\n").unwrap();
    }
    dir
}

#[test]
fn file_checks_when_files_are_at_hand() {
    let meta = "meta:\n  name: x\n  version: \"1\"\n";
    // exec must exist and be a file.
    let dir = addon_dir(&format!("{meta}{GOOD_RUNNER}"), &[]);
    let d = error_on(
        &std::fs::read_to_string(dir.path().join("docspell-addon.yml")).unwrap(),
        "runner.trivial.exec",
        Some(dir.path()),
    );
    assert!(d.message.contains("does not exist"), "{d:?}");
    let dir = addon_dir(&format!("{meta}{GOOD_RUNNER}"), &["run.sh/inner"]);
    let d = error_on(&format!("{meta}{GOOD_RUNNER}"), "runner.trivial.exec", Some(dir.path()));
    assert!(d.message.contains("not a file"), "{d:?}");
    // docker without image needs a Dockerfile; nix needs flake.nix.
    let docker = format!("{meta}runner:\n  docker:\n    enable: true\n");
    let dir = addon_dir(&docker, &[]);
    error_on(&docker, "runner.docker", Some(dir.path()));
    let nix = format!("{meta}runner:\n  nix:\n    enable: true\n");
    let dir = addon_dir(&nix, &[]);
    error_on(&nix, "runner.nix.enable", Some(dir.path()));
    // no runner at all, with the files at hand, is an error.
    let none = format!("{meta}runner:\n  trivial:\n    enable: false\n    exec: run.sh\n");
    let dir = addon_dir(&none, &["run.sh"]);
    error_on(&none, "runner", Some(dir.path()));
}

#[test]
fn auto_detection_as_docspell_does() {
    let meta = "meta:\n  name: x\n  version: \"1\"\n";
    let dir = addon_dir(meta, &["flake.nix", "Dockerfile"]);
    let a = load(dir.path(), Limits::default(), None).unwrap();
    assert!(a.parsed.is_valid(), "{:#?}", a.parsed.diagnostics);
    assert_eq!(a.parsed.descriptor.unwrap().sections(), vec![Docker, NixFlake]);
    // An explicit `enable: false` wins over the file.
    let text = format!("{meta}runner:\n  nix:\n    enable: false\n");
    let dir = addon_dir(&text, &["flake.nix", "Dockerfile"]);
    let a = load(dir.path(), Limits::default(), None).unwrap();
    assert_eq!(a.parsed.descriptor.unwrap().sections(), vec![Docker]);
}

/// Inputs the fuzzer found; each once produced a position outside the text.
#[test]
fn fuzz_regressions_keep_positions_inside_the_text() {
    for text in ["!1", "meta:\r  name: x\r\r\rtexecers:\n  - a\n", "meta: {name: x, version: \"1\"}\r\r\rfoo: 1\n"] {
        let p = parse_descriptor(text, None);
        let lines = addon_descriptors::diagnostic::yaml_lines(text).count().max(1);
        for d in &p.diagnostics {
            if let Some(l) = d.line {
                assert!(l >= 1 && l <= lines + 1, "{text:?}: {d:?}");
                let shown = d.render("f.yml", Some(text), false);
                assert!(!shown.is_empty());
            }
        }
    }
}
