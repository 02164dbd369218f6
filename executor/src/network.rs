//! The network an addon's run gets under the configuration's `network:` (SPEC "Network and
//! purity"): none for a pure addon; for an impure one, an egress network of its own (the
//! default) with the destinations `network.allow` names for it, or the host's.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use addon_descriptors::Descriptor;
use addon_runners::egress::{Destination, Egress, NetKind, Network};

use crate::config::{ImpureNetwork, NetworkConfig};

/// The kind of network `d` gets under `config` (what resolution checks runners against).
pub fn kind_for(d: &Descriptor, config: &NetworkConfig) -> NetKind {
    match (d.networking(), config.impure) {
        (false, _) => NetKind::None,
        (true, ImpureNetwork::Host) => NetKind::Host,
        (true, ImpureNetwork::Egress) => NetKind::Egress,
    }
}

/// The run's network, with `network.allow` of `name` when the addon is the one the
/// administrator meant (`settings`), names resolved now.
pub fn network_for(d: &Descriptor, config: &NetworkConfig, settings: bool) -> Result<Network, String> {
    Ok(match kind_for(d, config) {
        NetKind::None => Network::None,
        NetKind::Host => Network::Host,
        NetKind::Egress => {
            let mut allow = Vec::new();
            if settings {
                for entry in config.allow.get(&d.meta.name).into_iter().flatten() {
                    let parsed = Allow::parse(entry).map_err(|why| format!("network.allow: `{entry}`: {why}"))?;
                    allow.extend(parsed.resolve().map_err(|why| format!("network.allow: `{entry}`: {why}"))?);
                }
            }
            let resolvers = config.resolvers.iter().filter_map(|r| parse_resolver(r)).collect();
            Network::Egress(Egress { allow, resolvers })
        }
    })
}

/// `ADDRESS` or `ADDRESS:PORT` (`[IPV6]:PORT`) of a resolver; port 53 by default.
pub fn parse_resolver(text: &str) -> Option<SocketAddr> {
    text.parse::<SocketAddr>().ok().or_else(|| text.parse::<IpAddr>().ok().map(|a| SocketAddr::new(a, 53)))
}

/// One `network.allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allow {
    target: Target,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Net(IpAddr, u8),
    Name(String),
}

impl Allow {
    /// `HOST:PORT`, `ADDRESS:PORT`, `CIDR:PORT`, `[IPV6]:PORT`, `[IPV6/PREFIX]:PORT`; `*` for
    /// every port.
    pub fn parse(text: &str) -> Result<Allow, String> {
        let text = text.trim();
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            let (inner, after) = rest.split_once(']').ok_or("an IPv6 address in brackets has no `]`")?;
            (inner, after.strip_prefix(':').ok_or("give the port after the address: `[IPV6]:PORT` (`*` for all)")?)
        } else {
            text.rsplit_once(':').ok_or("give the port: `HOST:PORT`, `CIDR:PORT` (`*` for every port)")?
        };
        let port = match port {
            "*" => None,
            p => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("`{p}` is not a port (1-65535, or `*`)"))?,
            ),
        };
        if host.is_empty() {
            return Err("no host".into());
        }
        let target = match host.split_once('/') {
            Some((addr, prefix)) => {
                let addr: IpAddr = addr.parse().map_err(|_| format!("`{addr}` is not an IP address"))?;
                let max = if addr.is_ipv4() { 32 } else { 128 };
                let prefix: u8 = prefix
                    .parse()
                    .ok()
                    .filter(|p| *p <= max)
                    .ok_or_else(|| format!("`/{prefix}` is not a prefix length (0-{max})"))?;
                Target::Net(addr, prefix)
            }
            None => match host.parse::<IpAddr>() {
                Ok(a) if addon_runners::egress::never_allowed(a) => {
                    return Err(format!(
                        "`{a}` is the host's loopback or the addon's own network, which no addon may reach (a service on this host: give its LAN address)"
                    ))
                }
                Ok(a) => Target::Net(a, if a.is_ipv4() { 32 } else { 128 }),
                Err(_) if is_hostname(host) => Target::Name(host.to_ascii_lowercase()),
                Err(_) => return Err(format!("`{host}` is neither an IP address, a network nor a host name")),
            },
        };
        Ok(Allow { target, port })
    }

    /// The destinations it names now (a name: every address it resolves to).
    pub fn resolve(&self) -> Result<Vec<Destination>, String> {
        match &self.target {
            Target::Net(addr, prefix) => Ok(vec![Destination { addr: *addr, prefix: *prefix, port: self.port }]),
            Target::Name(name) => {
                let resolved: Vec<IpAddr> = (name.as_str(), self.port.unwrap_or(1))
                    .to_socket_addrs()
                    .map_err(|e| format!("`{name}` does not resolve: {e}"))?
                    .map(|a| a.ip())
                    .collect();
                // Whoever answers for the name does not decide what of the host the addon
                // reaches: never its loopback, its own addresses, link-local or multicast (an
                // administrator who means this host gives its address).
                let host = addon_runners::egress::host_addresses();
                let (addrs, dropped): (Vec<IpAddr>, Vec<IpAddr>) =
                    resolved.into_iter().partition(|a| !refused_for_a_name(*a, &host));
                if !dropped.is_empty() {
                    tracing::warn!(
                        "network.allow: `{name}` resolves to {} as well, which a name never opens (the host itself, loopback, link-local or multicast)",
                        dropped.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
                    );
                }
                if addrs.is_empty() {
                    return Err(format!("`{name}` resolves only to addresses a name never opens (the host itself, loopback, link-local or multicast)"));
                }
                let mut out: Vec<Destination> = addrs
                    .into_iter()
                    .map(|addr| Destination { addr, prefix: if addr.is_ipv4() { 32 } else { 128 }, port: self.port })
                    .collect();
                out.sort_by_key(|d| d.to_string());
                out.dedup();
                Ok(out)
            }
        }
    }
}

/// Whether a name's address is one that a name never opens (see [`Allow::resolve`]).
fn refused_for_a_name(a: IpAddr, host: &[IpAddr]) -> bool {
    let link_local_or_multicast = match a {
        IpAddr::V4(v) => v.is_link_local() || v.is_multicast() || v.is_broadcast(),
        IpAddr::V6(v) => (v.segments()[0] & 0xffc0) == 0xfe80 || v.is_multicast(),
    };
    addon_runners::egress::never_allowed(a) || link_local_or_multicast || host.contains(&a)
}

fn is_hostname(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_entries_parse_and_bad_ones_say_why() {
        let one = Allow::parse("10.1.2.3:7880").unwrap().resolve().unwrap();
        assert_eq!(one, vec![Destination { addr: "10.1.2.3".parse().unwrap(), prefix: 32, port: Some(7880) }]);
        let net = Allow::parse("10.0.0.0/8:*").unwrap().resolve().unwrap();
        assert_eq!(net[0].to_string(), "10.0.0.0/8:*");
        assert_eq!(Allow::parse("[fd00::1]:443").unwrap().resolve().unwrap()[0].to_string(), "[fd00::1]:443");
        assert_eq!(Allow::parse("docspell.lan:7880").unwrap().target, Target::Name("docspell.lan".into()));
        // A name that resolves to the host's loopback opens nothing; loopback and the addon's
        // own network cannot be named at all.
        let localhost = Allow::parse("localhost:80").unwrap().resolve().unwrap_err();
        assert!(localhost.contains("never opens"), "{localhost}");
        for literal in ["127.0.0.1:80", "10.0.2.2:53", "10.0.2.3:53", "0.0.0.0:80", "[::1]:80", "[::ffff:10.0.2.2]:80"]
        {
            let err = Allow::parse(literal).unwrap_err();
            assert!(err.contains("loopback"), "{literal}: {err}");
        }
        for (bad, why) in [
            ("10.1.2.3", "give the port"),
            ("10.1.2.3:http", "is not a port"),
            ("10.1.2.3:0", "is not a port"),
            ("10.0.0.0/40:1", "prefix length"),
            ("bad_name!:1", "neither an IP address"),
            ("[fd00::1:443", "no `]`"),
            (":80", "no host"),
        ] {
            let err = Allow::parse(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn resolvers_default_to_port_53() {
        assert_eq!(parse_resolver("198.51.100.53"), Some("198.51.100.53:53".parse().unwrap()));
        assert_eq!(parse_resolver("[fd00::53]:5353"), Some("[fd00::53]:5353".parse().unwrap()));
        assert_eq!(parse_resolver("dns.example"), None);
    }
}
