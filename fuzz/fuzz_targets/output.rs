//! Parsing and checking addon output never panics; what parses round-trips through JSON.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(out) = addon_descriptors::AddonOutput::from_stdout(data) {
        let _ = out.check(None);
        let json = serde_json::to_vec(&out).unwrap();
        let again = addon_descriptors::AddonOutput::from_stdout(&json).unwrap();
        assert_eq!(again, out);
    }
});
