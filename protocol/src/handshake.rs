//! The launch handshake, compatible with HashiCorp go-plugin: the engine sets a magic cookie in
//! the plugin's environment; the plugin prints one line, `CORE|APP|NETWORK|ADDRESS|PROTOCOL`.

use std::fmt;

/// The magic cookie's variable and value. A plugin started without it is being run by hand.
pub const MAGIC_COOKIE_KEY: &str = "ADDON_RUNNER_PLUGIN";
pub const MAGIC_COOKIE_VALUE: &str = "8c5bcbd1-addon-runner";
/// go-plugin's core protocol version.
pub const CORE_PROTOCOL_VERSION: u32 = 1;

/// Where the plugin listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    Unix,
    Tcp,
}

/// A parsed handshake line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    pub core_version: u32,
    pub protocol_version: u32,
    pub network: Network,
    pub address: String,
}

impl fmt::Display for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let network = match self.network {
            Network::Unix => "unix",
            Network::Tcp => "tcp",
        };
        write!(f, "{}|{}|{network}|{}|grpc", self.core_version, self.protocol_version, self.address)
    }
}

/// Why a handshake line was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("its handshake line `{0}` is not CORE|VERSION|NETWORK|ADDRESS|grpc (is it a runner plugin?)")]
    Malformed(String),
    #[error("it speaks go-plugin core protocol {theirs}; this engine speaks {ours}")]
    CoreVersion { theirs: String, ours: u32 },
    #[error("it speaks runner protocol version {theirs}; this engine speaks version {ours}")]
    ProtocolVersion { theirs: String, ours: u32 },
    #[error("it offers `{0}`; this engine speaks grpc only")]
    NotGrpc(String),
    #[error("it listens on network `{0}`; unix and tcp are supported")]
    Network(String),
}

/// Parses the plugin's handshake line, checking the versions against ours.
pub fn parse(line: &str, ours: u32) -> Result<Handshake, HandshakeError> {
    let line = line.trim();
    let parts: Vec<&str> = line.split('|').collect();
    if parts.len() < 4 {
        return Err(HandshakeError::Malformed(line.chars().take(200).collect()));
    }
    if parts[0].parse::<u32>().ok() != Some(CORE_PROTOCOL_VERSION) {
        return Err(HandshakeError::CoreVersion { theirs: parts[0].to_string(), ours: CORE_PROTOCOL_VERSION });
    }
    // go-plugin lets the app version be a list negotiated through PLUGIN_PROTOCOL_VERSIONS; the
    // plugin answers with the one it chose.
    let protocol_version = match parts[1].parse::<u32>() {
        Ok(v) if v == ours => v,
        _ => return Err(HandshakeError::ProtocolVersion { theirs: parts[1].to_string(), ours }),
    };
    let network = match parts[2] {
        "unix" => Network::Unix,
        "tcp" => Network::Tcp,
        other => return Err(HandshakeError::Network(other.to_string())),
    };
    let protocol = parts.get(4).copied().unwrap_or("netrpc");
    if protocol != "grpc" {
        return Err(HandshakeError::NotGrpc(protocol.to_string()));
    }
    if parts[3].is_empty() {
        return Err(HandshakeError::Malformed(line.to_string()));
    }
    Ok(Handshake { core_version: CORE_PROTOCOL_VERSION, protocol_version, network, address: parts[3].to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_plugin_lines_parse_and_other_versions_are_named() {
        let h = parse("1|1|unix|/tmp/plugin123|grpc\n", 1).unwrap();
        assert_eq!(h.address, "/tmp/plugin123");
        assert_eq!(h.to_string(), "1|1|unix|/tmp/plugin123|grpc");
        assert_eq!(parse("1|1|tcp|127.0.0.1:1234|grpc|CERT", 1).unwrap().network, Network::Tcp);
        let e = parse("1|2|unix|/tmp/p|grpc", 1).unwrap_err();
        assert_eq!(e.to_string(), "it speaks runner protocol version 2; this engine speaks version 1");
        assert!(matches!(parse("2|1|unix|/p|grpc", 1), Err(HandshakeError::CoreVersion { .. })));
        assert!(matches!(parse("1|1|unix|/p|netrpc", 1), Err(HandshakeError::NotGrpc(_))));
        assert!(matches!(parse("1|1|unix|/p", 1), Err(HandshakeError::NotGrpc(_))));
        assert!(matches!(parse("hello world", 1), Err(HandshakeError::Malformed(_))));
    }
}
