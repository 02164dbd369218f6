//! The descriptor parser never panics, and every diagnostic has a sane position.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let parsed = addon_descriptors::parse_descriptor(text, None);
    let lines = addon_descriptors::diagnostic::yaml_lines(text).count().max(1) + 1;
    for d in &parsed.diagnostics {
        if let Some(l) = d.line {
            assert!(l >= 1 && l <= lines, "line {l} outside the text ({lines} lines): {d:?}");
        }
        let _ = d.render("fuzz.yml", Some(text), false);
    }
    if parsed.is_valid() {
        let d = parsed.descriptor.unwrap();
        assert!(!d.meta.name.is_empty() && !d.meta.name.contains('/'));
        let _ = d.runners();
    }
});
