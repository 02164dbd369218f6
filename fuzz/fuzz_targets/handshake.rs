//! The plugin handshake line (`CORE|VERSION|NETWORK|ADDRESS|grpc`, protocol/src/handshake.rs)
//! as the engine's client reads it from a plugin's stdout: the first line, lossily decoded
//! (client.rs `next_line_capped`, private), then `handshake::parse`. Never panics; what is
//! accepted names our versions and an address, and prints back as a line that parses the same.
#![no_main]
use addon_fuzz::handshake::{self, CORE_PROTOCOL_VERSION};
use addon_fuzz::PROTOCOL_VERSION;
use libfuzzer_sys::fuzz_target;

fn judge(line: &str) {
    match handshake::parse(line, PROTOCOL_VERSION) {
        Ok(h) => {
            assert_eq!((h.core_version, h.protocol_version), (CORE_PROTOCOL_VERSION, PROTOCOL_VERSION));
            assert!(!h.address.is_empty() && !h.address.contains('|'), "{h:?}");
            let printed = h.to_string();
            assert_eq!(handshake::parse(&printed, PROTOCOL_VERSION).as_ref(), Ok(&h), "{printed:?}");
            // Another protocol version is refused, naming it.
            let other = PROTOCOL_VERSION.wrapping_add(1);
            assert!(matches!(handshake::parse(line, other), Err(handshake::HandshakeError::ProtocolVersion { .. })));
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let first = data.split(|b| *b == b'\n').next().unwrap_or_default();
    judge(&String::from_utf8_lossy(first));
    judge(&String::from_utf8_lossy(data));
});
