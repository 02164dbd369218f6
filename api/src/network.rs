//! What network a run gets (SPEC "Network and purity"): none, the host's own, or a network of its
//! own with outbound access to public addresses only ("egress"), with the destinations beyond
//! that which the administrator allowed for the addon.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// The kind of a run's network, without its details (what a sandbox builds from).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetKind {
    /// Only a loopback interface of its own: a pure addon (`networking: false`).
    None,
    /// The host's own network namespace (`network.impure: host`, Docspell's behaviour).
    Host,
    /// A network of its own: outbound TCP and UDP to public addresses, DNS through the engine's
    /// resolver, never the host, link-local or private ranges (`network.impure: egress`).
    Egress,
}

impl NetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NetKind::None => "none",
            NetKind::Host => "host",
            NetKind::Egress => "egress",
        }
    }

    /// Whether the addon has any network beyond its own loopback.
    pub fn any(self) -> bool {
        self != NetKind::None
    }
}

impl std::fmt::Display for NetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A run's network with what egress needs to know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "kebab-case")]
pub enum Network {
    None,
    Host,
    Egress(Egress),
}

impl Network {
    pub fn kind(&self) -> NetKind {
        match self {
            Network::None => NetKind::None,
            Network::Host => NetKind::Host,
            Network::Egress(_) => NetKind::Egress,
        }
    }

    /// Whether the addon has any network beyond its own loopback.
    pub fn any(&self) -> bool {
        self.kind().any()
    }
}

/// What an egress network lets through besides public addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Egress {
    /// Destinations the administrator allowed for this addon (`network.allow`), names already
    /// resolved when the run started.
    pub allow: Vec<Destination>,
    /// The resolvers the engine's DNS forwarder asks for the addon (the host's by default).
    pub resolvers: Vec<SocketAddr>,
}

/// An allowed destination: an address or network, on one port or on all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Destination {
    pub addr: IpAddr,
    /// Prefix length (32 or 128 for one address).
    pub prefix: u8,
    /// One port, or every port.
    pub port: Option<u16>,
}

impl Destination {
    /// `ADDR/PREFIX:PORT` or `ADDR/PREFIX:*`, as the plugin protocol carries it.
    pub fn to_pb(&self) -> String {
        let port = self.port.map(|p| p.to_string()).unwrap_or_else(|| "*".into());
        format!("{}/{}:{port}", self.addr, self.prefix)
    }

    /// The inverse of [`Destination::to_pb`].
    pub fn from_pb(text: &str) -> Option<Destination> {
        let (net, port) = text.rsplit_once(':')?;
        let (addr, prefix) = net.split_once('/')?;
        let addr: IpAddr = addr.parse().ok()?;
        let prefix: u8 = prefix.parse().ok()?;
        if prefix > if addr.is_ipv4() { 32 } else { 128 } {
            return None;
        }
        let port = if port == "*" { None } else { Some(port.parse().ok()?) };
        Some(Destination { addr, prefix, port })
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let full = if self.addr.is_ipv4() { 32 } else { 128 };
        match (self.addr, self.prefix == full) {
            (IpAddr::V6(a), true) => write!(f, "[{a}]")?,
            (a, true) => write!(f, "{a}")?,
            (a, false) => write!(f, "{a}/{}", self.prefix)?,
        }
        match self.port {
            Some(p) => write!(f, ":{p}"),
            None => f.write_str(":*"),
        }
    }
}

/// IPv4 networks an egress network never reaches (unless allowed): "this" network, private
/// ranges, shared address space (carrier NAT), loopback, link-local (cloud metadata),
/// multicast and reserved.
pub const REFUSED_V4: [&str; 8] = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/3",
];

/// IPv6 networks an egress network never reaches (unless allowed): unspecified and loopback,
/// IPv4-mapped, unique local, link-local and multicast.
pub const REFUSED_V6: [&str; 5] = ["::/127", "::ffff:0:0/96", "fc00::/7", "fe80::/10", "ff00::/8"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_read_as_written() {
        let d = |addr: &str, prefix, port| Destination { addr: addr.parse().unwrap(), prefix, port };
        assert_eq!(d("10.1.2.3", 32, Some(7880)).to_string(), "10.1.2.3:7880");
        assert_eq!(d("10.0.0.0", 8, None).to_string(), "10.0.0.0/8:*");
        assert_eq!(d("fd00::1", 128, Some(443)).to_string(), "[fd00::1]:443");
    }

    #[test]
    fn destinations_cross_the_protocol_unchanged() {
        for text in ["10.1.2.3/32:7880", "10.0.0.0/8:*", "fd00::1/128:443"] {
            assert_eq!(Destination::from_pb(text).unwrap().to_pb(), text);
        }
        for bad in ["10.1.2.3:80", "10.0.0.0/33:1", "x/8:1", "10.0.0.0/8:http"] {
            assert_eq!(Destination::from_pb(bad), None, "{bad}");
        }
    }

    #[test]
    fn network_serializes_with_its_policy() {
        let egress = Network::Egress(Egress::default());
        let json = serde_json::to_string(&egress).unwrap();
        assert!(json.contains("\"policy\":\"egress\""), "{json}");
        assert_eq!(serde_json::from_str::<Network>(&json).unwrap(), egress);
        assert!(!Network::None.any() && Network::Host.any() && egress.any());
    }
}
