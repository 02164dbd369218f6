//! The Dockerfile grammar of the oci runner (runners/src/oci/dockerfile.rs) never panics, and
//! its checks agree with the instructions it reads: `check` refuses exactly the `RUN` options
//! (and, for a builder that reads heredocs, the heredocs) of every reading; `check_sources`
//! passes only files whose images are plain references and that `ADD` no URL.
#![no_main]
use addon_fuzz::dockerfile::{self, Instruction};
use libfuzzer_sys::fuzz_target;

fn is_run(i: &Instruction) -> bool {
    i.keyword == "RUN" || i.keyword == "ONBUILD RUN"
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let lines = text.split('\n').count();
    let read = dockerfile::instructions(text);
    let strict = dockerfile::check(text, false, "buildah version 1.28.2");
    let lax = dockerfile::check(text, true, "buildah version 1.39.0");
    let sources = dockerfile::check_sources(text);
    let bases = dockerfile::base_images(text);
    match &read {
        Err(_) => {
            // A file whose directives cannot be read is refused by every check.
            assert!(strict.is_err() && lax.is_err() && sources.is_err() && bases.is_empty());
        }
        Ok(all) => {
            for i in all {
                assert!(i.line >= 1 && i.line <= lines, "line {} of {lines}: {i:?}", i.line);
                assert!(!i.keyword.is_empty() && i.keyword == i.keyword.to_ascii_uppercase(), "{i:?}");
                assert!(i.flags.iter().all(|f| f.starts_with("--")), "{i:?}");
                assert!(i.args.iter().all(|a| !a.is_empty() && !a.contains(char::is_whitespace)), "{i:?}");
            }
            let any_option = all.iter().any(|i| is_run(i) && !i.flags.is_empty());
            assert_eq!(strict.is_ok(), !any_option, "check without mounts: {strict:?} for {all:?}");
            let refused = all
                .iter()
                .any(|i| is_run(i) && (i.heredoc || i.flags.iter().any(|f| f.split('=').next() != Some("--mount"))));
            assert_eq!(lax.is_ok(), !refused, "check with mounts: {lax:?} for {all:?}");
            if sources.is_ok() {
                for i in all {
                    let keyword = i.keyword.strip_prefix("ONBUILD ").unwrap_or(&i.keyword);
                    if keyword == "ADD" {
                        for a in &i.args {
                            let a = a.trim_matches(|c| c == '[' || c == ']' || c == ',' || c == '"');
                            assert!(!a.contains("://") && !a.starts_with("git@"), "ADD {a} passed");
                        }
                    }
                }
            }
        }
    }
    if sources.is_ok() {
        for b in &bases {
            addon_descriptors::image_reference(b).unwrap_or_else(|why| panic!("base image passed: {why}"));
        }
    }
    let mut unique = bases.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), bases.len(), "{bases:?}");
    // `buildah version` output, whatever it holds.
    if let Some((a, b, c)) = dockerfile::parse_version(text) {
        assert_eq!(dockerfile::parse_version(&format!("Version:  {a}.{b}.{c}\n")), Some((a, b, c)));
    }
});
