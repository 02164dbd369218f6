//! The egress network (`network.impure: egress`): an impure addon's network namespace gets a
//! user-mode network (slirp4netns: the addon's packets become ordinary sockets of a process on
//! the host, so nothing is routed or forwarded by the host's kernel and the host's firewall is
//! left alone) behind a packet filter inside the addon's own namespace, and a DNS resolver of
//! the engine's.
//!
//! The filter (nftables, loaded before the addon starts) lets out TCP and UDP to public
//! addresses and to what `network.allow` names for the addon; it refuses the host's own
//! addresses, loopback, link-local (cloud metadata), private and shared ranges, multicast, and
//! every other protocol. Nothing comes in. DNS queries to `10.0.2.3:53` are sent on to the
//! engine's forwarder (through slirp's alias of the host's loopback, `10.0.2.2`, which is open
//! for that port and nothing else), which asks the configured resolvers: the host's resolver may
//! itself sit at a private address the addon may not reach. The addon has no capability in its
//! namespace, so it cannot change the filter; a filter that does not load means no run.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub use addon_runner_api::network::{Destination, Egress, NetKind, Network, REFUSED_V4, REFUSED_V6};

/// The addon's side of the user-mode network (slirp4netns's defaults).
pub const GATEWAY: &str = "10.0.2.2";
/// The resolver address the addon is given (`/etc/resolv.conf`).
pub const RESOLVER: &str = "10.0.2.3";

/// The `/etc/resolv.conf` of a run or build on an egress network: the engine's resolver.
pub fn resolv_conf() -> String {
    format!("nameserver {RESOLVER}\noptions edns0\n")
}

/// Writes [`resolv_conf`] at `at`, readable by every user of the run.
pub fn write_resolv_conf(at: &Path) -> std::io::Result<()> {
    fs_err::write(at, resolv_conf())?;
    fs_err::set_permissions(at, std::os::unix::fs::PermissionsExt::from_mode(0o644))
}
/// Name of the nftables table in the addon's namespace.
const TABLE: &str = "addon_egress";
/// The open files of a run's slirp4netns (its sockets on the host for the addon's flows).
const SLIRP_MAX_FILES: libc::rlim_t = 1024;
/// How long the network may take to come up.
const READY_WITHIN: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    #[error("egress network: {0} not found (install {1}); `network.impure: host` gives impure addons the host's network instead")]
    Missing(&'static str, &'static str),
    #[error("egress network: {what}: {detail}")]
    Setup { what: &'static str, detail: String },
}

fn setup(what: &'static str) -> impl Fn(std::io::Error) -> EgressError {
    move |e| EgressError::Setup { what, detail: e.to_string() }
}

/// The programs egress needs.
#[derive(Debug, Clone)]
pub struct Tools {
    pub slirp4netns: PathBuf,
    pub nft: PathBuf,
}

/// slirp4netns and nft, looked for once per process.
pub fn tools() -> Result<&'static Tools, EgressError> {
    static TOOLS: OnceLock<Result<Tools, (&'static str, &'static str)>> = OnceLock::new();
    let found = TOOLS.get_or_init(|| {
        let find = |name: &str| {
            which::which(name).ok().or_else(|| {
                ["/usr/sbin", "/sbin", "/usr/bin"].iter().map(|d| PathBuf::from(d).join(name)).find(|p| p.exists())
            })
        };
        let slirp4netns = find("slirp4netns").ok_or(("slirp4netns", "slirp4netns"))?;
        let nft = find("nft").ok_or(("nft", "nftables"))?;
        Ok(Tools { slirp4netns, nft })
    });
    found.as_ref().map_err(|(what, package)| EgressError::Missing(what, package))
}

/// Whether this engine can make the user-mode network's device: slirp4netns opens
/// `/dev/net/tun` as the engine's user (a root engine always can).
pub fn tun_usable() -> Result<(), String> {
    let path = c"/dev/net/tun";
    // SAFETY: access(2) on a constant path.
    if unsafe { libc::access(path.as_ptr(), libc::R_OK | libc::W_OK) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    Err(format!(
        "an egress network needs /dev/net/tun readable and writable by the engine's user (uid {}), and it is not here ({err}); Debian makes it mode 0666, a root engine needs nothing",
        // SAFETY: getuid has no preconditions.
        unsafe { libc::getuid() }
    ))
}

/// For a runner that gives no egress network: whether the run gets the host's network (else
/// none), or the error that refuses an egress run (the engine does not send one: this is the
/// last guard against a silent downgrade to the host's network).
pub fn host_or_none(network: &Network, runner: &str) -> Result<bool, crate::RunnerError> {
    match network {
        Network::None => Ok(false),
        Network::Host => Ok(true),
        Network::Egress(_) => Err(crate::RunnerError::setup(
            runner,
            format!("the {runner} runner does not make egress networks yet: an impure addon runs on it only with `network.impure: host`"),
        )),
    }
}

/// Every address of this host's interfaces (an egress network never reaches the host itself).
pub fn host_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a list we free below; we only read it meanwhile.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return out;
    }
    let mut at = list;
    while !at.is_null() {
        // SAFETY: `at` is a node of the list getifaddrs made.
        let node = unsafe { &*at };
        if !node.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr of the family it says.
            match unsafe { (*node.ifa_addr).sa_family } as i32 {
                libc::AF_INET => {
                    // SAFETY: as above, an AF_INET address.
                    let a = unsafe { &*(node.ifa_addr as *const libc::sockaddr_in) };
                    out.push(IpAddr::from(u32::from_be(a.sin_addr.s_addr).to_be_bytes()));
                }
                libc::AF_INET6 => {
                    // SAFETY: as above, an AF_INET6 address.
                    let a = unsafe { &*(node.ifa_addr as *const libc::sockaddr_in6) };
                    out.push(IpAddr::from(a.sin6_addr.s6_addr));
                }
                _ => {}
            }
        }
        at = node.ifa_next;
    }
    // SAFETY: the list getifaddrs made, freed once.
    unsafe { libc::freeifaddrs(list) };
    out.sort();
    out.dedup();
    out
}

/// The resolvers of the host's /etc/resolv.conf (port 53).
pub fn host_resolvers() -> Vec<SocketAddr> {
    let text = fs_err::read_to_string("/etc/resolv.conf").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().split('%').next().and_then(|a| a.parse::<IpAddr>().ok()))
        .map(|a| SocketAddr::new(a, 53))
        .collect()
}

/// The user-mode network's own addresses (slirp4netns): `10.0.2.2` is the host's loopback and
/// `10.0.2.3` the host's resolver seen from the addon. Never reachable through `network.allow`:
/// only the engine's DNS forwarder is, through the filter's own redirect.
pub const SLIRP_NET: &str = "10.0.2.0/24";

/// Whether `addr` may never be named in `network.allow`: loopback, "this" network, unspecified,
/// or the user-mode network's own addresses (the host's loopback and resolver in disguise).
pub fn never_allowed(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => a.is_loopback() || a.is_unspecified() || a.octets()[0] == 0 || (a.octets()[..3] == [10, 0, 2]),
        IpAddr::V6(a) => {
            a.is_loopback() || a.is_unspecified() || a.to_ipv4_mapped().is_some_and(|m| never_allowed(IpAddr::V4(m)))
        }
    }
}

/// IPv4 destinations never reachable: the user-mode network's own, loopback, "this network".
const NEVER4: [&str; 3] = [SLIRP_NET, "127.0.0.0/8", "0.0.0.0/8"];

/// The host's addresses the filters refuse: all but those an allow entry names exactly
/// (loopback never).
fn refused_host_addresses<'a>(egress: &Egress, host: &'a [IpAddr]) -> Vec<&'a IpAddr> {
    let exact: Vec<IpAddr> =
        egress.allow.iter().filter(|d| d.prefix == if d.addr.is_ipv4() { 32 } else { 128 }).map(|d| d.addr).collect();
    host.iter().filter(|a| !exact.contains(a) || a.is_loopback()).collect()
}

/// The nftables ruleset loaded into the addon's namespace: DNS to the engine's forwarder at
/// `dns_port` on the host's loopback; then, before anything `network.allow` adds, the user-mode
/// network's own addresses and the host's own addresses (`host`) are refused, except a host
/// address that an allow entry names exactly (an administrator's explicit choice: a Docspell
/// server on this host); then `egress.allow`, then public addresses over TCP and UDP; the
/// refused ranges never.
pub fn ruleset(egress: &Egress, host: &[IpAddr], dns_port: u16) -> String {
    let host_refused = refused_host_addresses(egress, host);
    let list = |v4: bool, extra: &[&str]| -> String {
        let mut items: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        items.extend(host_refused.iter().filter(|a| a.is_ipv4() == v4).map(|a| a.to_string()));
        items.join(", ")
    };
    let never4 = list(true, &NEVER4);
    let never6 = list(false, &["::/127", "::ffff:0.0.0.0/104", "::ffff:10.0.2.0/120", "::ffff:127.0.0.0/104"]);
    let allow: String = egress
        .allow
        .iter()
        .filter(|d| !never_allowed(d.addr))
        .map(|d| {
            let family = if d.addr.is_ipv4() { "ip" } else { "ip6" };
            let port = d.port.map(|p| format!(" th dport {p}")).unwrap_or_default();
            format!(
                "    {family} daddr {}/{} meta l4proto {{ tcp, udp }}{port} counter name allowed accept\n",
                d.addr, d.prefix
            )
        })
        .collect();
    format!(
        "table inet {TABLE} {{
  counter refused {{ }}
  counter allowed {{ }}
  counter public {{ }}
  set never4 {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {never4} }} }}
  set never6 {{ type ipv6_addr; flags interval; auto-merge; elements = {{ {never6} }} }}
  set refused4 {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {v4} }} }}
  set refused6 {{ type ipv6_addr; flags interval; auto-merge; elements = {{ {v6} }} }}
  chain dns {{
    type nat hook output priority -100; policy accept;
    ip daddr {RESOLVER} meta l4proto {{ tcp, udp }} th dport 53 dnat ip to {GATEWAY}:{dns_port}
  }}
  chain out {{
    type filter hook output priority 0; policy drop;
    oif \"lo\" accept
    ct state established,related accept
    ip daddr {GATEWAY} meta l4proto {{ tcp, udp }} th dport {dns_port} ct status dnat accept
    ip daddr @never4 goto refuse
    ip6 daddr @never6 goto refuse
{allow}    ip daddr @refused4 goto refuse
    ip6 daddr @refused6 goto refuse
    meta l4proto {{ tcp, udp }} counter name public accept
    goto refuse
  }}
  chain refuse {{
    counter name refused
    meta l4proto tcp reject with tcp reset
    reject with icmpx type admin-prohibited
  }}
  chain in {{
    type filter hook input priority 0; policy drop;
    iif \"lo\" accept
    ct state established,related accept
  }}
}}
",
        v4 = REFUSED_V4.join(", "),
        v6 = REFUSED_V6.join(", "),
    )
}

/// The same destinations enforced again where every packet leaves the namespace: a netdev
/// `egress` chain on the user-mode network's device, loaded once slirp4netns made it. The
/// `inet` table above sees what goes through the IP stack; a process with CAP_NET_RAW in the
/// namespace (an image build's RUN step keeps Docker's default capabilities) could send frames
/// through a packet socket below it, straight to slirp4netns and so to the host's loopback or the
/// LAN. This chain sees those too. Stateless: ARP passes (slirp4netns answers it); every frame
/// that is not IPv4 is dropped (an egress network has no IPv6 route); IPv4 to the engine's DNS
/// forwarder passes, to the never-reachable addresses is dropped, to what `network.allow` names
/// passes, to refused ranges is dropped, TCP and UDP to the rest passes, other protocols drop.
pub fn device_ruleset(egress: &Egress, host: &[IpAddr], dns_port: u16) -> String {
    let mut never4: Vec<String> = NEVER4.iter().map(|s| s.to_string()).collect();
    never4.extend(refused_host_addresses(egress, host).iter().filter(|a| a.is_ipv4()).map(|a| a.to_string()));
    let allow: String = egress
        .allow
        .iter()
        .filter(|d| d.addr.is_ipv4() && !never_allowed(d.addr))
        .map(|d| {
            let port = d.port.map(|p| format!(" th dport {p}")).unwrap_or_default();
            format!("    ip daddr {}/{} ip protocol {{ tcp, udp }}{port} accept\n", d.addr, d.prefix)
        })
        .collect();
    format!(
        "table netdev {TABLE}_dev {{
  counter refused {{ }}
  set never4 {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {never4} }} }}
  set refused4 {{ type ipv4_addr; flags interval; auto-merge; elements = {{ {v4} }} }}
  chain tap {{
    type filter hook egress device \"{DEVICE}\" priority 0; policy drop;
    ether type arp accept
    ether type != ip drop
    ip daddr {GATEWAY} ip protocol {{ tcp, udp }} th dport {dns_port} accept
    ip daddr @never4 counter name refused drop
{allow}    ip daddr @refused4 counter name refused drop
    ip protocol {{ tcp, udp }} accept
    counter name refused drop
  }}
}}
",
        never4 = never4.join(", "),
        v4 = REFUSED_V4.join(", "),
    )
}

/// The user-mode network's device in the addon's namespace.
const DEVICE: &str = "tap0";

/// Makes CAP_NET_ADMIN (held in the current user namespace) inheritable and ambient, so that
/// the program exec'd next keeps it. Async-signal-safe.
fn keep_net_admin() -> std::io::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_NET_ADMIN: u32 = 12;
    let mut header = Header { version: VERSION_3, pid: 0 };
    let mut data = [Data::default(); 2];
    // SAFETY: capget/capset with a header and two data structs, as the version-3 ABI wants;
    // prctl with integer arguments.
    unsafe {
        if libc::syscall(libc::SYS_capget, &mut header as *mut Header, data.as_mut_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        data[0].inheritable |= 1 << CAP_NET_ADMIN;
        if libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE, CAP_NET_ADMIN as libc::c_ulong, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// What an egress network saw during a run (packets, not payloads).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EgressUse {
    /// Packets the filter refused (new connections and datagrams to refused destinations).
    pub refused: u64,
    /// DNS queries the forwarder answered.
    pub dns_queries: u64,
}

/// The namespaces of a run's process, held open so the filter's counters can be read after it
/// ended.
struct Namespaces {
    net: OwnedFd,
    /// The user namespace owning it, entered first when the engine is not root.
    user: Option<OwnedFd>,
}

impl Namespaces {
    fn of(pid: i32, join_user: bool) -> std::io::Result<Namespaces> {
        let net = OwnedFd::from(fs_err::File::open(format!("/proc/{pid}/ns/net"))?.into_parts().0);
        // Never the engine's own network namespace (the host's, as a rule): a wrong pid (one
        // reused, or a process that is not the sandbox's) must not get the filter, which drops
        // all but the loopback, loaded there.
        use std::os::unix::fs::MetadataExt;
        let inode = |f: &OwnedFd| -> std::io::Result<(u64, u64)> {
            let m = std::fs::File::from(f.try_clone()?).metadata()?;
            Ok((m.dev(), m.ino()))
        };
        let own = OwnedFd::from(fs_err::File::open("/proc/self/ns/net")?.into_parts().0);
        if inode(&net)? == inode(&own)? {
            return Err(std::io::Error::other(format!(
                "process {pid} is in the engine's own network namespace, not a sandbox's: refused"
            )));
        }
        // The user namespace that owns the network namespace (not the process's own, which a
        // sandbox may have nested below it).
        let user = if join_user {
            const NS_GET_USERNS: libc::c_ulong = 0xb701;
            // SAFETY: an ioctl on a namespace descriptor we own; it returns a new descriptor.
            let fd = unsafe { libc::ioctl(net.as_raw_fd(), NS_GET_USERNS) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: a fresh descriptor nobody else owns.
            Some(unsafe { OwnedFd::from_raw_fd(fd) })
        } else {
            None
        };
        Ok(Namespaces { net, user })
    }

    /// The network namespace bound on the file `at` (root: no user namespace to enter).
    fn at(at: &Path) -> std::io::Result<Namespaces> {
        let net = OwnedFd::from(fs_err::File::open(at)?.into_parts().0);
        Ok(Namespaces { net, user: None })
    }

    /// `nft` inside the namespace, reading `stdin`.
    fn nft(&self, args: &[&str], stdin: &str) -> Result<String, EgressError> {
        let tools = tools()?;
        let mut c = Command::new(&tools.nft);
        c.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).env_clear();
        let (net, user) = (self.net.as_raw_fd(), self.user.as_ref().map(|u| u.as_raw_fd()));
        // SAFETY: setns(2) on descriptors we hold open; async-signal-safe, no allocation.
        unsafe {
            c.pre_exec(move || {
                if let Some(user) = user {
                    if libc::setns(user, libc::CLONE_NEWUSER) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // Entering the namespace gives every capability in it, which exec drops for
                    // a user other than root: CAP_NET_ADMIN is kept across it as ambient.
                    keep_net_admin()?;
                }
                if libc::setns(net, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = c.spawn().map_err(setup("starting nft"))?;
        if let Some(mut input) = child.stdin.take() {
            input.write_all(stdin.as_bytes()).map_err(setup("writing the filter to nft"))?;
        }
        let out = child.wait_with_output().map_err(setup("running nft"))?;
        if !out.status.success() {
            return Err(EgressError::Setup {
                what: "loading the filter",
                detail: format!("nft {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// A run's egress network, up while this lives: slirp4netns stops when it is dropped (its exit
/// descriptor closes; if the engine dies, the kernel closes it), and so does the forwarder.
pub struct EgressNet {
    slirp: Child,
    exit: Option<OwnedFd>,
    ns: Namespaces,
    dns: DnsForwarder,
    /// The file the namespace is bound on, when the engine made it ([`EgressNet::hold`]).
    bound: Option<PathBuf>,
}

impl std::fmt::Debug for EgressNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressNet").field("slirp", &self.slirp.id()).field("dns", &self.dns.port).finish()
    }
}

impl EgressNet {
    /// Gives the network namespace of process `pid` (stopped before the addon runs) its egress
    /// network: the filter loaded, the forwarder listening, slirp4netns attached and the
    /// interface up. `join_user`: enter the process's user namespace first (an engine that is not
    /// root has its rights in the namespace there).
    pub fn attach(pid: i32, egress: &Egress, join_user: bool) -> Result<EgressNet, EgressError> {
        tools()?;
        if join_user {
            // The sandbox maps its user namespace's ids itself, after it reported its process:
            // until then, entering the namespace gives no identity in it.
            let deadline = std::time::Instant::now() + READY_WITHIN;
            while fs_err::read_to_string(format!("/proc/{pid}/uid_map")).map(|m| m.trim().is_empty()).unwrap_or(false) {
                if std::time::Instant::now() > deadline {
                    return Err(EgressError::Setup {
                        what: "the sandbox's user namespace",
                        detail: "its ids were never mapped".into(),
                    });
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let net_ns = Namespaces::of(pid, join_user).map_err(setup("opening the run's namespaces"))?;
        EgressNet::attach_to(net_ns, egress)
    }

    /// [`EgressNet::attach`] to namespaces already open.
    fn attach_to(net_ns: Namespaces, egress: &Egress) -> Result<EgressNet, EgressError> {
        let tools = tools()?;
        let resolvers = if egress.resolvers.is_empty() { host_resolvers() } else { egress.resolvers.clone() };
        let dns = DnsForwarder::start(resolvers).map_err(setup("starting the DNS forwarder"))?;
        let host = host_addresses();
        let rules = ruleset(egress, &host, dns.port);
        let device_rules = device_ruleset(egress, &host, dns.port);
        let (ready_r, ready_w) = crate::sandbox::pipe().map_err(setup("a pipe"))?;
        let (exit_r, exit_w) = crate::sandbox::pipe().map_err(setup("a pipe"))?;
        let mut c = Command::new(&tools.slirp4netns);
        // The namespaces by descriptor (3: ready, 4: exit, 5: net, 6: user): by pid, slirp4netns
        // would join the process's own user namespace, which may be one nested below the owner.
        c.args(["--configure", "--mtu=65520", "--disable-dns", "--ready-fd=3", "--exit-fd=4"]);
        if net_ns.user.is_some() {
            // Unprivileged: its own system-call filter still (its sandbox needs root).
            c.args(["--userns-path=/proc/self/fd/6", "--enable-seccomp"]);
        } else {
            // As root it drops its capabilities and the host's file system once the tap is open.
            c.args(["--enable-sandbox", "--enable-seccomp"]);
        }
        c.args(["--netns-type=path", "/proc/self/fd/5", "tap0"]);
        c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).env_clear();
        let (ready_fd, exit_fd) = (ready_w.as_raw_fd(), exit_r.as_raw_fd());
        let (net_fd, user_fd) = (net_ns.net.as_raw_fd(), net_ns.user.as_ref().map(|u| u.as_raw_fd()));
        let sandboxed = net_ns.user.is_none();
        // SAFETY: dup2 onto 3 to 6 of descriptors we hold (dup2 clears close-on-exec), unshare
        // and mount with static strings; async-signal-safe.
        unsafe {
            c.pre_exec(move || {
                if sandboxed {
                    // slirp4netns's sandbox (1.2.0) makes only its new root mount private, then
                    // detaches the old root: the mounts below a shared mount point (under
                    // /run/netns, /var/lib/docker, on systemd hosts nearly all) are peers of the
                    // host's, and their unmounting propagated to the host (`ip netns`
                    // namespaces and running containers' root file systems vanished). It starts
                    // in a mount namespace of its own, private all the way down.
                    if libc::unshare(libc::CLONE_NEWNS) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let private = libc::MS_REC | libc::MS_PRIVATE;
                    if libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), private, std::ptr::null()) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                let pairs = [(ready_fd, 3), (exit_fd, 4), (net_fd, 5), (user_fd.unwrap_or(-1), 6)];
                // Move every source out of 3..=6 first, so that no dup2 overwrites a later source.
                let mut moved = [0; 4];
                for (i, (from, _)) in pairs.iter().enumerate() {
                    moved[i] = if *from < 0 { -1 } else { libc::fcntl(*from, libc::F_DUPFD_CLOEXEC, 10) };
                    if *from >= 0 && moved[i] < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for (i, (_, to)) in pairs.iter().enumerate() {
                    if moved[i] >= 0 && libc::dup2(moved[i], *to) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // Each of the addon's connections and datagram flows is a socket of slirp4netns on
                // the host, outside the run's limits: at most this many at once.
                let files = libc::rlimit { rlim_cur: SLIRP_MAX_FILES, rlim_max: SLIRP_MAX_FILES };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &files) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // No parent-death signal: this runs on a pool thread that may end before the
                // run does. It ends when its exit descriptor closes: at the end of the run, or
                // when the engine dies.
                Ok(())
            });
        }
        let slirp = c.spawn().map_err(setup("starting slirp4netns"))?;
        drop((ready_w, exit_r));
        let mut net = EgressNet { slirp, exit: Some(exit_w), ns: net_ns, dns, bound: None };
        // The filter loads while slirp4netns sets up; the addon waits for both (a failure drops
        // the network and the run does not start).
        net.ns.nft(&["-f", "-"], &rules)?;
        if let Err(e) = wait_ready(&ready_r) {
            let _ = net.slirp.kill();
            let mut stderr = String::new();
            if let Some(mut s) = net.slirp.stderr.take() {
                let _ = s.read_to_string(&mut stderr);
            }
            let lines: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("WARNING")).collect();
            let last = if lines.is_empty() {
                "no message".to_string()
            } else {
                lines[lines.len().saturating_sub(3)..].join("; ")
            };
            return Err(EgressError::Setup { what: "slirp4netns", detail: format!("{e}; {last}") });
        }
        // Its device exists now: the same destinations, where every frame leaves.
        net.ns.nft(&["-f", "-"], &device_rules)?;
        Ok(net)
    }

    /// A network namespace of the engine's own (root only) with the egress network, for a
    /// runtime that joins a namespace by path ([`EgressNet::path`]): made by a thread that
    /// leaves at once, and bound on a file in `dir` (as `ip netns` does: a runtime in a PID
    /// namespace of its own could not see a holder's /proc entry), which keeps it; unbound when
    /// this goes. The file's name says which engine process bound it, so that what an engine
    /// killed with SIGKILL left bound is unbound by the next one ([`reap_bound`]).
    pub fn hold(egress: &Egress, dir: &Path) -> Result<EgressNet, EgressError> {
        reap_bound();
        static HELD: AtomicU64 = AtomicU64::new(0);
        let me = std::process::id() as i32;
        let start = crate::procfs::process_start(me).unwrap_or_default();
        let at = dir.join(format!("{BOUND_PREFIX}{me}-{start}-{}", HELD.fetch_add(1, Ordering::Relaxed)));
        let target = at.clone();
        let bound = std::thread::spawn(move || -> std::io::Result<()> {
            // SAFETY: unshare(2) of this thread's network namespace only; the thread ends here.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            fs_err::write(&target, b"")?;
            let (src, dst) = (cstr("/proc/thread-self/ns/net")?, cstr(&target.display().to_string())?);
            // SAFETY: mount(2) with valid C strings.
            if unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) }
                != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the thread making the namespace panicked")));
        let attached = bound
            .and_then(|()| Namespaces::at(&at))
            .map_err(setup("making the network namespace"))
            .and_then(|ns| EgressNet::attach_to(ns, egress));
        match attached {
            Ok(mut net) => {
                net.bound = Some(at);
                Ok(net)
            }
            Err(e) => {
                unbind(&at);
                Err(e)
            }
        }
    }

    /// The network namespace's path while this lives (for a runtime's configuration).
    pub fn path(&self) -> Option<&Path> {
        self.bound.as_deref()
    }

    /// Stops the network and reports what it saw.
    pub fn finish(self) -> EgressUse {
        let count = |family: &str, table: &str| -> u64 {
            self.ns
                .nft(&["list", "counter", family, table, "refused"], "")
                .ok()
                .and_then(|text| {
                    let at = text.find("packets ")? + "packets ".len();
                    text[at..].split_whitespace().next()?.parse().ok()
                })
                .unwrap_or(0)
        };
        let refused = count("inet", TABLE) + count("netdev", &format!("{TABLE}_dev"));
        EgressUse { refused, dns_queries: self.dns.queries.load(Ordering::Relaxed) }
    }
}

impl Drop for EgressNet {
    fn drop(&mut self) {
        self.exit.take();
        self.dns.stop.store(true, Ordering::Relaxed);
        if !matches!(self.slirp.try_wait(), Ok(Some(_))) {
            std::thread::sleep(Duration::from_millis(1));
            if !matches!(self.slirp.try_wait(), Ok(Some(_))) {
                let _ = self.slirp.kill();
                let _ = self.slirp.wait();
            }
        }
        if let Some(at) = self.bound.take() {
            unbind(&at);
        }
    }
}

/// The start of the name of a file a namespace is bound on: `addon-netns-PID-START-N`.
const BOUND_PREFIX: &str = "addon-netns-";

/// Unbinds, once per process, the namespaces that engine processes no longer alive left bound
/// (killed with SIGKILL, they could not unbind them): found in this mount namespace's mount
/// table by their file names (see [`EgressNet::hold`]).
fn reap_bound() {
    static DONE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        let Ok(table) = fs_err::read_to_string("/proc/self/mountinfo") else { return };
        for at in stale_bound(&table, |pid, start| crate::procfs::process_start(pid).as_deref() == Some(start)) {
            tracing::warn!("unbinding the network namespace {} left by a dead engine", at.display());
            unbind(&at);
        }
    });
}

/// The bound namespaces in a mount table (`/proc/self/mountinfo`) whose engine is not `alive`.
fn stale_bound(table: &str, alive: impl Fn(i32, &str) -> bool) -> Vec<PathBuf> {
    let mut stale = Vec::new();
    for line in table.lines() {
        let fstype = line.split(" - ").nth(1).and_then(|r| r.split(' ').next());
        let Some(point) = line.split(' ').nth(4).filter(|_| fstype == Some("nsfs")) else { continue };
        let path = PathBuf::from(unescape_mount_path(point));
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { continue };
        let Some(rest) = name.strip_prefix(BOUND_PREFIX) else { continue };
        let mut parts = rest.split('-');
        let (Some(pid), Some(start)) = (parts.next().and_then(|p| p.parse::<i32>().ok()), parts.next()) else {
            continue;
        };
        if !alive(pid, start) {
            stale.push(path);
        }
    }
    stale
}

/// A path as the mount table writes it (space, tab, newline and backslash as `\ooo`).
fn unescape_mount_path(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn cstr(s: &str) -> std::io::Result<std::ffi::CString> {
    std::ffi::CString::new(s).map_err(|_| std::io::Error::other("a path with a NUL byte"))
}

/// Unmounts and removes a namespace's file (see [`EgressNet::hold`]).
fn unbind(at: &Path) {
    if let Ok(c) = cstr(&at.display().to_string()) {
        // SAFETY: umount2(2) with a valid C string.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    let _ = fs_err::remove_file(at);
}

fn wait_ready(ready: &OwnedFd) -> std::io::Result<()> {
    let mut pfd = libc::pollfd { fd: ready.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: poll on one descriptor we own.
    let n = unsafe { libc::poll(&mut pfd, 1, READY_WITHIN.as_millis() as i32) };
    if n <= 0 {
        return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the network did not come up"));
    }
    let mut byte = [0u8; 1];
    // SAFETY: a dup of our descriptor, owned by the File and closed with it.
    let mut file = unsafe { std::fs::File::from_raw_fd(libc::dup(ready.as_raw_fd())) };
    match file.read(&mut byte) {
        Ok(1) if byte[0] == b'1' => Ok(()),
        _ => Err(std::io::Error::other("slirp4netns ended before the network was up")),
    }
}

/// The engine's DNS forwarder for one run: UDP on the host's loopback, each query sent on to
/// the resolvers in turn.
struct DnsForwarder {
    port: u16,
    stop: Arc<AtomicBool>,
    queries: Arc<AtomicU64>,
}

impl Drop for DnsForwarder {
    /// Its thread ends (within its read timeout) when the forwarder goes, on every path.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Queries answered at once; more are dropped (the resolver library retries).
const DNS_IN_FLIGHT: u64 = 32;

impl DnsForwarder {
    /// Listens on the host's loopback, UDP and TCP on one port (DNS over TCP: a resolver retries
    /// a truncated answer there).
    fn start(resolvers: Vec<SocketAddr>) -> std::io::Result<DnsForwarder> {
        let (socket, listener) = (0..16)
            .find_map(|_| {
                let socket = UdpSocket::bind("127.0.0.1:0").ok()?;
                let port = socket.local_addr().ok()?.port();
                let listener = std::net::TcpListener::bind(("127.0.0.1", port)).ok()?;
                Some((socket, listener))
            })
            .ok_or_else(|| std::io::Error::other("no port free for both UDP and TCP on the loopback"))?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        listener.set_nonblocking(true)?;
        let port = socket.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicU64::new(0));
        let in_flight = Arc::new(AtomicU64::new(0));
        let (flag, count, busy, upstream) = (stop.clone(), queries.clone(), in_flight.clone(), resolvers.clone());
        let socket = Arc::new(socket);
        std::thread::Builder::new().name("addon-dns".into()).spawn(move || {
            let mut buf = [0u8; 4096];
            while !flag.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else { continue };
                if n < 12 || busy.load(Ordering::Relaxed) >= DNS_IN_FLIGHT {
                    continue;
                }
                busy.fetch_add(1, Ordering::Relaxed);
                let (query, socket, resolvers, busy, count) =
                    (buf[..n].to_vec(), socket.clone(), upstream.clone(), busy.clone(), count.clone());
                std::thread::spawn(move || {
                    if let Some(answer) = ask(&query, &resolvers, false) {
                        count.fetch_add(1, Ordering::Relaxed);
                        let _ = socket.send_to(&answer, from);
                    }
                    busy.fetch_sub(1, Ordering::Relaxed);
                });
            }
        })?;
        let (flag, count) = (stop.clone(), queries.clone());
        std::thread::Builder::new().name("addon-dns-tcp".into()).spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let Ok((conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                if in_flight.load(Ordering::Relaxed) >= DNS_IN_FLIGHT {
                    continue; // closed: the resolver library tries again
                }
                in_flight.fetch_add(1, Ordering::Relaxed);
                let (resolvers, in_flight, count) = (resolvers.clone(), in_flight.clone(), count.clone());
                std::thread::spawn(move || {
                    serve_tcp(conn, &resolvers, &count);
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                });
            }
        })?;
        Ok(DnsForwarder { port, stop, queries })
    }
}

/// One DNS-over-TCP connection: length-prefixed queries, each answered from the resolvers (over
/// TCP when their UDP answer was truncated); at most 16 queries, 5 s idle.
fn serve_tcp(mut conn: std::net::TcpStream, resolvers: &[SocketAddr], count: &AtomicU64) {
    use std::io::{Read, Write};
    if conn.set_nonblocking(false).is_err() || conn.set_read_timeout(Some(Duration::from_secs(5))).is_err() {
        return;
    }
    for _ in 0..16 {
        let mut len = [0u8; 2];
        if conn.read_exact(&mut len).is_err() {
            return;
        }
        let mut query = vec![0u8; u16::from_be_bytes(len) as usize];
        if query.len() < 12 || conn.read_exact(&mut query).is_err() {
            return;
        }
        let Some(answer) = ask(&query, resolvers, true) else { return };
        count.fetch_add(1, Ordering::Relaxed);
        let mut framed = (answer.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&answer);
        if conn.write_all(&framed).is_err() {
            return;
        }
    }
}

/// Sends `query` to each resolver in turn until one answers with the query's id.
fn ask(query: &[u8], resolvers: &[SocketAddr], whole: bool) -> Option<Vec<u8>> {
    for r in resolvers {
        let bind: SocketAddr = if r.is_ipv4() { "0.0.0.0:0".parse().ok()? } else { "[::]:0".parse().ok()? };
        let Ok(s) = UdpSocket::bind(bind) else { continue };
        if s.set_read_timeout(Some(Duration::from_secs(2))).is_err() || s.connect(r).is_err() || s.send(query).is_err()
        {
            continue;
        }
        let mut buf = vec![0u8; 4096];
        if let Ok(n) = s.recv(&mut buf) {
            if n >= 12 && buf[..2] == query[..2] {
                buf.truncate(n);
                // Truncated (TC) and asked over TCP: the whole answer from the resolver over TCP.
                if whole && buf[2] & 0x02 != 0 {
                    if let Some(answer) = ask_tcp(query, r) {
                        return Some(answer);
                    }
                }
                return Some(buf);
            }
        }
    }
    None
}

/// `query` to the resolver `r` over TCP.
fn ask_tcp(query: &[u8], r: &SocketAddr) -> Option<Vec<u8>> {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect_timeout(r, Duration::from_secs(2)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    c.write_all(&framed).ok()?;
    let mut len = [0u8; 2];
    c.read_exact(&mut len).ok()?;
    let mut answer = vec![0u8; u16::from_be_bytes(len) as usize];
    c.read_exact(&mut answer).ok()?;
    (answer.len() >= 12 && answer[..2] == query[..2]).then_some(answer)
}

#[cfg(test)]
mod tests {

    #[test]
    fn namespaces_left_bound_by_dead_engines_are_found_and_no_others() {
        let table = "100 50 0:4 net:[4026532] /run/x/addon-netns-123-456-0 rw shared:1 - nsfs nsfs rw\n\
                     101 50 0:4 net:[4026533] /run/x/addon-netns-77-88-1 rw - nsfs nsfs rw\n\
                     102 50 0:4 net:[4026534] /run/with\\040space/addon-netns-9-10-2 rw - nsfs nsfs rw\n\
                     103 50 254:0 / /run/x/addon-netns-5-6-0 rw - ext4 /dev/vda rw\n\
                     104 50 0:4 net:[4026535] /run/netns/mine rw - nsfs nsfs rw\n";
        let stale = stale_bound(table, |pid, start| pid == 77 && start == "88");
        assert_eq!(
            stale,
            vec![PathBuf::from("/run/x/addon-netns-123-456-0"), PathBuf::from("/run/with space/addon-netns-9-10-2")]
        );
    }

    #[test]
    fn the_engines_own_network_namespace_never_gets_the_filter() {
        let err = Namespaces::of(std::process::id() as i32, false).err().expect("refused");
        assert!(err.to_string().contains("the engine's own network namespace"), "{err}");
    }

    use super::*;

    #[test]
    fn the_ruleset_refuses_the_host_and_private_ranges_and_allows_what_is_named() {
        let egress = Egress {
            allow: vec![Destination { addr: "10.1.2.3".parse().unwrap(), prefix: 32, port: Some(7880) }],
            resolvers: vec![],
        };
        let host: Vec<IpAddr> = vec!["192.0.2.2".parse().unwrap(), "fd00::2".parse().unwrap()];
        let rules = ruleset(&egress, &host, 5353);
        for range in REFUSED_V4.iter().chain(REFUSED_V6.iter()) {
            assert!(rules.contains(range), "{range} is not refused:\n{rules}");
        }
        assert!(rules.contains("192.0.2.2") && rules.contains("fd00::2"), "the host's addresses are refused");
        let allow = rules.find("ip daddr 10.1.2.3/32 meta l4proto { tcp, udp } th dport 7880").expect("allowed");
        assert!(allow < rules.find("ip daddr @refused4").unwrap(), "an allowed destination comes before the refusals");
        // The user-mode network's own addresses (the host's loopback and resolver in disguise)
        // and the host's addresses are refused before anything an allow opens.
        assert!(rules.find("ip daddr @never4").unwrap() < allow, "never comes first:\n{rules}");
        let never = &rules[rules.find("set never4").unwrap()..rules.find("set never6").unwrap()];
        assert!(
            never.contains("10.0.2.0/24") && never.contains("192.0.2.2") && never.contains("127.0.0.0/8"),
            "{never}"
        );
        // A broad allow does not open them; naming a host address exactly does.
        let broad = Egress {
            allow: vec![
                Destination { addr: "10.0.0.0".parse().unwrap(), prefix: 8, port: None },
                Destination { addr: "192.0.2.2".parse().unwrap(), prefix: 32, port: Some(7880) },
                Destination { addr: "10.0.2.2".parse().unwrap(), prefix: 32, port: None },
            ],
            resolvers: vec![],
        };
        let rules = ruleset(&broad, &host, 5353);
        let never = &rules[rules.find("set never4").unwrap()..rules.find("set never6").unwrap()];
        assert!(never.contains("10.0.2.0/24") && !never.contains("192.0.2.2"), "{never}");
        assert!(!rules.contains("daddr 10.0.2.2/32"), "the disguised loopback is never allowed:\n{rules}");
        assert!(rules.contains("dnat ip to 10.0.2.2:5353"));
        assert!(rules.contains("type filter hook output priority 0; policy drop;"));
        assert!(rules.contains("type filter hook input priority 0; policy drop;"));
    }

    #[test]
    fn host_addresses_include_loopback() {
        assert!(host_addresses().contains(&"127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn the_forwarder_answers_from_a_resolver() {
        let upstream = UdpSocket::bind("127.0.0.1:0").unwrap();
        let at = upstream.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            let (n, from) = upstream.recv_from(&mut buf).unwrap();
            let mut answer = buf[..n].to_vec();
            answer.extend_from_slice(b"answer");
            upstream.send_to(&answer, from).unwrap();
        });
        let dns = DnsForwarder::start(vec![at]).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        client.send_to(b"\x12\x34query-bytes!", ("127.0.0.1", dns.port)).unwrap();
        let mut buf = [0u8; 512];
        let n = client.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"\x12\x34query-bytes!answer");
        assert_eq!(dns.queries.load(Ordering::Relaxed), 1);
        dns.stop.store(true, Ordering::Relaxed);
    }
}
