//! `addon validate` and `addon schema` through the real binary: JSON Lines, exit codes, human
//! output with the offending line and a caret.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};

fn addon(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_addon"))
        .args(args)
        .env_remove("ADDON_CONFIG")
        .env("NO_COLOR", "1")
        .output()
        .unwrap()
}

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../descriptors/tests/fixtures/docspell")
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8(out.stdout.clone()).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn real_descriptors_as_json_lines() {
    let dir = fixtures();
    let files: Vec<String> =
        ["rotate-pdf-addon.yml", "audio-files-addon.yml", "docspell-testfixture-minimal-addon.yml"]
            .iter()
            .map(|f| dir.join(f).display().to_string())
            .collect();
    let mut args = vec!["validate", "--json"];
    args.extend(files.iter().map(String::as_str));
    let out = addon(&args);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["runners"], serde_json::json!(["docker", "nix-flake", "trivial"]));
    assert_eq!(lines[0]["pure"], true);
    assert_eq!(lines[1]["runners"], serde_json::json!(["nix-flake", "trivial"]));
    assert_eq!(lines[1]["pure"], false);
    assert_eq!(lines[1]["networking"], true);
    assert_eq!(lines[2]["meta"]["name"], "minimal-addon");
    for l in &lines {
        assert_eq!(l["valid"], true);
        assert!(l["digest"].as_str().unwrap().starts_with("sha256:"));
        assert_eq!(l["collect_output"], true);
        assert!(l["diagnostics"].as_array().unwrap().is_empty());
    }
}

#[test]
fn invalid_descriptor_exit_1_with_field_and_position() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("docspell-addon.yml"),
        "meta:\n  name: hello\n  version: \"1\"\nrunner:\n  trivial:\n    enable: true\n    exec: missing.sh\n",
    )
    .unwrap();
    let out = addon(&["validate", "--json", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let v = &json_lines(&out)[0];
    assert_eq!(v["valid"], false);
    let d = &v["diagnostics"][0];
    assert_eq!(d["severity"], "error");
    assert_eq!(d["field"], "runner.trivial.exec");
    assert_eq!(d["line"], 7);
    assert_eq!(d["column"], 11);

    // Human output shows the line with a caret under the column.
    let out = addon(&["validate", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap().replace(dir.path().to_str().unwrap(), "[DIR]");
    insta::assert_snapshot!(stderr, @r"
    error: runner.trivial.exec: `missing.sh` does not exist in the addon
      --> [DIR]/docspell-addon.yml:7:11
      |
    7 |     exec: missing.sh
      |           ^
    invalid: hello 1 ([DIR]): 1 error(s), 0 warning(s)
    ");
}

#[test]
fn unreadable_source_exit_2_hostile_zip_exit_1() {
    let out = addon(&["validate", "--json", "/nonexistent/addon"]);
    assert_eq!(out.status.code(), Some(2));
    let v = &json_lines(&out)[0];
    assert_eq!(v["valid"], false);
    assert!(v.get("digest").is_none());
    assert!(v["error"].as_str().unwrap().contains("/nonexistent/addon"));

    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("evil.zip");
    let mut w = zip::ZipWriter::new(std::fs::File::create(&zip).unwrap());
    w.start_file("../../evil.sh", zip::write::SimpleFileOptions::default()).unwrap();
    w.write_all(b"x").unwrap();
    w.finish().unwrap();
    let out = addon(&["validate", "--json", zip.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let v = &json_lines(&out)[0];
    assert!(v["error"].as_str().unwrap().contains("../../evil.sh"), "{v}");
    assert!(!dir.path().parent().unwrap().join("evil.sh").exists());
}

#[test]
fn url_sources_are_downloaded() {
    // A one-shot HTTP server on loopback serving a wrapped addon zip.
    let dir = tempfile::tempdir().unwrap();
    let zip = dir.path().join("a.zip");
    let mut w = zip::ZipWriter::new(std::fs::File::create(&zip).unwrap());
    let o = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
    w.start_file("hello-main/docspell-addon.yml", o).unwrap();
    w.write_all(b"meta: {name: u, version: \"1\"}\nrunner: {trivial: {enable: true, exec: run.sh}}\n").unwrap();
    w.start_file("hello-main/run.sh", o).unwrap();
    w.write_all(b"#!/bin/sh\n").unwrap();
    w.finish().unwrap();
    let body = std::fs::read(&zip).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = std::io::Read::read(&mut s, &mut buf);
        write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).unwrap();
        s.write_all(&body).unwrap();
    });
    let url = format!("http://127.0.0.1:{port}/hello.zip");
    let out = addon(&["validate", "--json", &url]);
    server.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v = &json_lines(&out)[0];
    assert_eq!(v["meta"]["name"], "u");
    assert_eq!(v["source"], url);
}

#[test]
fn schemas_are_json_schemas() {
    for which in ["descriptor", "output", "config"] {
        let out = addon(&["schema", which, "--json"]);
        assert_eq!(out.status.code(), Some(0));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(v["$schema"].as_str().unwrap().contains("json-schema.org"), "{which}");
        assert!(v["properties"].is_object(), "{which}");
    }
    let out = addon(&["schema", "nothing"]);
    assert_eq!(out.status.code(), Some(2));
}

/// The schema `addon schema WHICH` prints, compiled.
fn schema(which: &str) -> jsonschema::Validator {
    let out = addon(&["schema", which, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    jsonschema::validator_for(&v).unwrap_or_else(|e| panic!("the {which} schema is not a valid JSON Schema: {e}"))
}

fn yaml(text: &str) -> serde_json::Value {
    serde_yaml::from_str(text).unwrap()
}

fn errors(v: &jsonschema::Validator, doc: &serde_json::Value) -> Vec<String> {
    v.iter_errors(doc).map(|e| format!("{} at {}", e, e.instance_path())).collect()
}

/// What editors and tools check against the schemas is what the engine accepts: every real
/// descriptor, a full addon output, and the configuration example of docs/configuration.md pass; documents the engine
/// refuses do not.
#[test]
fn schemas_accept_what_the_engine_accepts_and_refuse_what_it_refuses() {
    let descriptor = schema("descriptor");
    let mut seen = 0;
    for e in std::fs::read_dir(fixtures()).unwrap() {
        let path = e.unwrap().path();
        let doc = yaml(&std::fs::read_to_string(&path).unwrap());
        assert_eq!(errors(&descriptor, &doc), Vec::<String>::new(), "{}", path.display());
        // The engine accepts it too.
        assert_eq!(addon(&["validate", path.to_str().unwrap()]).status.code(), Some(0), "{}", path.display());
        seen += 1;
    }
    assert!(seen >= 6, "the real descriptors are there: {seen}");
    for bad in [
        "runner: {trivial: {enable: true, exec: run.sh}}\n", // no meta
        "meta: {name: x, version: \"1\"}\nrunner: {trivial: {enable: yes-please}}\n", // not a boolean
        "meta: {name: x, version: \"1\"}\noptions: {networking: maybe}\n",
    ] {
        assert!(!errors(&descriptor, &yaml(bad)).is_empty(), "the schema should refuse: {bad}");
    }

    let output = schema("output");
    let full = serde_json::json!({
        "commands": [
            {"command": "item-update", "itemId": "id-1", "actions": [{"action": "add-tags", "tags": ["x"]}]},
            {"command": "attachment-update", "itemId": "id-1", "attachId": "a-1",
             "actions": [{"action": "set-extracted-text", "text": "t"}]}
        ],
        "files": [{"itemId": "id-1", "textFiles": {"a.pdf": "a.txt"}, "pdfFiles": {}, "newFiles": []}],
        "newItems": [{"metadata": {"direction": "incoming"}, "files": ["new.pdf"]}]
    });
    assert_eq!(errors(&output, &full), Vec::<String>::new());
    addon_descriptors::AddonOutput::from_stdout(full.to_string().as_bytes()).expect("the engine reads it too");
    assert_eq!(errors(&output, &serde_json::json!({})), Vec::<String>::new(), "every part is optional");
    for bad in [serde_json::json!({"files": "a.pdf"}), serde_json::json!({"newItems": {}}), serde_json::json!([])] {
        assert!(!errors(&output, &bad).is_empty(), "the schema should refuse: {bad}");
    }

    let config = schema("config");
    let reference =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md")).unwrap();
    let example = reference
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/configuration.md has a configuration example");
    let doc = yaml(example);
    assert_eq!(errors(&config, &doc), Vec::<String>::new(), "docs/configuration.md's example:\n{example}");
    // And the reference leaves no setting out: every key of the schema (and of its sections
    // that the example writes out) is in the example.
    let schema_json: serde_json::Value =
        serde_json::from_slice(&addon(&["schema", "config", "--json"]).stdout).unwrap();
    let resolve = |v: &serde_json::Value| -> serde_json::Value {
        let mut v = v.clone();
        for _ in 0..4 {
            let r = v.get("$ref").or_else(|| v.get("allOf").and_then(|a| a.get(0)).and_then(|a| a.get("$ref")));
            let Some(name) = r.and_then(|r| r.as_str()).and_then(|r| r.strip_prefix("#/$defs/")) else { break };
            v = schema_json["$defs"][name].clone();
        }
        v
    };
    let mut missing = Vec::new();
    for (key, prop) in schema_json["properties"].as_object().unwrap() {
        let Some(written) = doc.get(key) else {
            missing.push(key.clone());
            continue;
        };
        if let (Some(props), Some(written)) = (resolve(prop)["properties"].as_object().cloned(), written.as_object()) {
            if key == "plugins" || key == "addon-limits" || key == "env" || key == "addons" {
                continue; // maps by name, not sections
            }
            missing.extend(props.keys().filter(|k| !written.contains_key(*k)).map(|k| format!("{key}.{k}")));
        }
    }
    assert!(missing.is_empty(), "settings docs/configuration.md does not show: {missing:?}");
    for bad in ["no-such-key: 1\n", "fail-fast: sometimes\n", "limits: {memory: [1]}\n"] {
        assert!(!errors(&config, &yaml(bad)).is_empty(), "the schema should refuse: {bad}");
    }
}
