//! Network policy (SPEC "Network and purity", `network:`): an impure addon under the default
//! `network.impure: egress` reaches the "internet" and names through the engine's resolver, and
//! nothing of the host: not its loopback, not its own addresses, not link-local, not a private
//! LAN service, unless `network.allow` names it; `network.impure: host` gives the host's network;
//! a pure addon reaches nothing. As root and as an unprivileged engine.
//!
//! No packet leaves this machine: the "internet" is a test host in a network namespace of the
//! test's own (198.51.100.0/24, which this machine does not route), the "LAN service" sits at a
//! private address in the same namespace, and the host's listeners are on its loopback and on
//! all its addresses.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// A listener on the host answering any HTTP request with `body`.
fn host_listener(bind: &str, body: &'static str) -> u16 {
    let l = TcpListener::bind(bind).unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
            let _ = write!(s, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        }
    });
    port
}

/// A DNS server on the host's loopback (the resolver the engine's forwarder asks, through
/// `network.resolvers`) answering A queries for `names`; other names and types get no answer.
fn dns_server(names: Vec<(&'static str, Ipv4Addr)>) -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let at = s.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let q = &buf[..n];
            if n < 17 {
                continue;
            }
            // The question's name, label by label.
            let (mut i, mut labels) = (12, Vec::new());
            while i < n && q[i] != 0 {
                let len = q[i] as usize;
                labels.push(String::from_utf8_lossy(&q[i + 1..(i + 1 + len).min(n)]).to_lowercase());
                i += 1 + len;
            }
            let end = i + 5; // the zero byte, type, class
            if end > n {
                continue;
            }
            let qtype = u16::from_be_bytes([q[i + 1], q[i + 2]]);
            let name = labels.join(".");
            let answer = names.iter().find(|(k, _)| *k == name).map(|(_, a)| *a).filter(|_| qtype == 1);
            let mut r = q[..2].to_vec();
            r.extend_from_slice(&[0x81, 0x80, 0, 1, 0, u8::from(answer.is_some()), 0, 0, 0, 0]);
            r.extend_from_slice(&q[12..end]);
            if let Some(a) = answer {
                r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                r.extend_from_slice(&a.octets());
            }
            let _ = s.send_to(&r, from);
        }
    });
    at
}

/// The addon: tries each `(label, host, port)` over TCP with an HTTP request and prints
/// `label=ok:<body>` or `label=refused:<why>` to stderr.
fn prober(targets: &[(&str, String, u16)]) -> String {
    let list: Vec<String> = targets.iter().map(|(l, h, p)| format!("(\"{l}\", \"{h}\", {p})")).collect();
    format!(
        r#"#!/usr/bin/env python3
import socket, sys
for label, host, port in [{}]:
    try:
        s = socket.create_connection((host, port), timeout=4)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        body = s.recv(4096).split(b"\r\n\r\n", 1)[-1].decode(errors="replace").strip()
        print(f"{{label}}=ok:{{body}}", file=sys.stderr)
    except Exception as e:
        print(f"{{label}}=refused:{{e}}", file=sys.stderr)
print("{{}}")
"#,
        list.join(", ")
    )
}

/// [`prober`], then a name asked over DNS over TCP from the egress network's resolver
/// (10.0.2.3 inside the addon's namespace; only for runs that have an egress network: on the
/// host's own network that address may be this machine's real upstream resolver).
fn prober_with_dns_over_tcp(targets: &[(&str, String, u16)]) -> String {
    prober(targets).replace("print(\"{}\")\n", &format!("{}print(\"{{}}\")\n", DNS_OVER_TCP))
}

const DNS_OVER_TCP: &str = r#"# A name over DNS over TCP, through the engine's resolver (a truncated answer is retried so).
try:
    import struct
    q = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in "internet.test".split(".")) + b"\0" + struct.pack("!HH", 1, 1)
    s = socket.create_connection(("10.0.2.3", 53), timeout=4)
    s.sendall(struct.pack("!H", len(q)) + q)
    n = struct.unpack("!H", s.recv(2))[0]
    data = b""
    while len(data) < n:
        more = s.recv(n - len(data))
        if not more:
            raise OSError("the answer was cut")
        data += more
    print("dns-tcp=ok:" + ".".join(str(b) for b in data[-4:]), file=sys.stderr)
except Exception as e:
    print(f"dns-tcp=refused:{e}", file=sys.stderr)
"#;

/// The test's network: the "internet" web host (with a LAN service in a private range in its
/// namespace), listeners on the host, and a DNS server naming them.
struct Net {
    web: WebHost,
    web_ip: String,
    host_ip: String,
    lan_ip: String,
    loopback_port: u16,
    all_port: u16,
    dns: SocketAddr,
}

impl Net {
    fn new(slot: u8, www: &Path) -> Option<Net> {
        std::fs::write(www.join("index.html"), "internet").unwrap();
        let web = WebHost::start(slot, www)?;
        let web_ip = web.addr.split(':').next().unwrap().to_string();
        let host_ip = format!("198.51.100.{}", 4 * slot + 1);
        let lan_ip = format!("10.213.{slot}.2");
        web.serve_private(&lan_ip, www);
        let loopback_port = host_listener("127.0.0.1:0", "host-loopback");
        let all_port = host_listener("0.0.0.0:0", "host-address");
        let dns = dns_server(vec![
            ("internet.test", web_ip.parse().unwrap()),
            ("lan.test", lan_ip.parse().unwrap()),
            ("rebind.test", host_ip.parse().unwrap()),
            ("metadata.test", "169.254.169.254".parse().unwrap()),
        ]);
        Some(Net { web, web_ip, host_ip, lan_ip, loopback_port, all_port, dns })
    }

    /// Everything an addon may try.
    fn targets(&self) -> Vec<(&'static str, String, u16)> {
        let mut t = vec![
            ("internet", self.web_ip.clone(), 8080),
            ("internet-name", "internet.test".to_string(), 8080),
            ("lan", self.lan_ip.clone(), 8080),
            ("lan-name", "lan.test".to_string(), 8080),
            ("host-loopback-alias", "10.0.2.2".to_string(), self.loopback_port),
            ("host-loopback", "127.0.0.1".to_string(), self.loopback_port),
            ("host-veth", self.host_ip.clone(), self.all_port),
            ("rebound-name", "rebind.test".to_string(), self.all_port),
            ("metadata", "169.254.169.254".to_string(), 80),
            ("metadata-name", "metadata.test".to_string(), 80),
            ("docker-bridge", "172.17.0.1".to_string(), self.all_port),
            ("host-v6-loopback", "::1".to_string(), self.loopback_port),
        ];
        // Every other address of the host (its LAN address, its public one).
        for a in addon_runners::egress::host_addresses() {
            if let IpAddr::V4(v4) = a {
                if !v4.is_loopback() && v4.to_string() != self.host_ip {
                    t.push(("host-address", v4.to_string(), self.all_port));
                }
            }
        }
        t
    }

    fn config(&self, extra: &str) -> String {
        format!("network:\n  resolvers: [\"{}\"]\n{extra}", self.dns)
    }
}

/// `label=...` lines the prober printed (several `host-address` lines join with `;`).
fn results(out: &std::process::Output) -> std::collections::BTreeMap<String, String> {
    let mut m = std::collections::BTreeMap::<String, String>::new();
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        let line = line.split_once("] ").map(|(_, rest)| rest).unwrap_or(line);
        if let Some((k, v)) = line.split_once('=') {
            if v.starts_with("ok:") || v.starts_with("refused:") {
                m.entry(k.trim().to_string()).and_modify(|e| *e = format!("{e};{v}")).or_insert_with(|| v.to_string());
            }
        }
    }
    m
}

fn reached(m: &std::collections::BTreeMap<String, String>, label: &str) -> bool {
    let v = m.get(label).unwrap_or_else(|| panic!("no result for {label}: {m:?}"));
    v.split(';').any(|r| r.starts_with("ok:"))
}

/// The addon, readable and runnable by any user (an unprivileged engine copies it).
fn addon(w: &World, name: &str, options: &str, script: &str) -> PathBuf {
    let dir = w.addon_dir(
        name,
        &format!(
            "meta: {{name: {name}, version: \"1\"}}\nrunner: {{trivial: {{enable: true, exec: run.py}}}}\n{options}"
        ),
    );
    std::fs::write(dir.join("run.py"), script).unwrap();
    chmod(&dir.join("run.py"), 0o755);
    for p in [w.path().join("addons-src"), dir.clone()] {
        chmod(&p, 0o755);
    }
    chmod(&dir.join("docspell-addon.yml"), 0o644);
    dir
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Runs `addon` through `addon run --json` with `config` appended to the world's, as root or
/// (with `user`) as that unprivileged user.
fn run(w: &World, config: &str, addon: &Path, user: Option<&str>) -> (std::process::Output, serde_json::Value) {
    let path = w.path().join(format!("config-{}.yml", user.unwrap_or("root")));
    let base = std::fs::read_to_string(&w.config).unwrap();
    let base = match user {
        // Its own working and cache directories.
        Some(u) => base.replace("/work\n", &format!("/work-{u}\n")).replace("/cache\n", &format!("/cache-{u}\n")),
        None => base,
    };
    std::fs::write(&path, format!("{base}{config}")).unwrap();
    chmod(&path, 0o644);
    let mut c = match user {
        Some(u) => {
            let bin = w.path().join("addon");
            if !bin.exists() {
                std::fs::copy(env!("CARGO_BIN_EXE_addon"), &bin).unwrap();
                chmod(&bin, 0o755);
            }
            let mut c = Command::new("runuser");
            c.args(["-u", u, "--"]).arg(bin);
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_addon")),
    };
    let out = c.arg("--config").arg(&path).args(["run", "--json"]).arg(addon).current_dir(w.path()).output().unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out, v)
}

const IMPURE_PY: &str = "options:\n  networking: true\n  collectOutput: true\n";
const PURE_PY: &str = "options:\n  networking: false\n  collectOutput: true\n";

/// Everything but the internet is refused, by address and by name.
fn assert_only_the_internet(m: &std::collections::BTreeMap<String, String>, who: &str) {
    assert!(reached(m, "internet"), "{who}: the internet is reachable: {m:?}");
    assert!(reached(m, "internet-name"), "{who}: by name, through the engine's resolver: {m:?}");
    for label in [
        "lan",
        "lan-name",
        "host-loopback-alias",
        "host-loopback",
        "host-veth",
        "rebound-name",
        "metadata",
        "metadata-name",
        "docker-bridge",
        "host-v6-loopback",
    ] {
        assert!(!reached(m, label), "{who}: {label} must be refused: {m:?}");
    }
    if m.contains_key("host-address") {
        assert!(!reached(m, "host-address"), "{who}: the host's own addresses are refused: {m:?}");
    }
}

#[test]
fn egress_reaches_the_internet_and_nothing_of_the_host_bwrap() {
    policy_holds("bwrap", 11);
}

#[test]
fn egress_reaches_the_internet_and_nothing_of_the_host_netns() {
    policy_holds("netns", 13);
}

/// nspawn (root only): the container's own network namespace gets the network while the addon
/// waits at the engine's gate.
#[test]
fn egress_reaches_the_internet_and_nothing_of_the_host_nspawn() {
    policy_holds_for("nspawn", 20, &[None]);
}

/// The whole policy with `sandbox`, as root and as an unprivileged engine.
fn policy_holds(sandbox: &str, slot: u8) {
    policy_holds_for(sandbox, slot, &[None, Some("nobody")]);
}

fn policy_holds_for(sandbox: &str, slot: u8, users: &[Option<&str>]) {
    if !require(sandbox) || !require_root("the test's internet is a network namespace: it needs root") {
        return;
    }
    let w = World::new(sandbox, "");
    // The unprivileged engine makes its own working and cache directories here.
    chmod(w.path(), 0o777);
    let www = w.path().join("www");
    std::fs::create_dir(&www).unwrap();
    chmod(&www, 0o755);
    let Some(net) = Net::new(slot, &www) else { return };
    let prober_addon = addon(&w, "prober", IMPURE_PY, &prober(&net.targets()));
    let tcp_prober = addon(&w, "tcp-prober", IMPURE_PY, &prober_with_dns_over_tcp(&net.targets()));
    for &user in users {
        let who = user.unwrap_or("root");
        // The default policy (with a name asked over DNS over TCP too).
        let (out, v) = run(&w, &net.config(""), &tcp_prober, user);
        let a = &v["addons"][0];
        assert_eq!(a["result"], "success", "{who}: {v}\n{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(a["network"]["policy"], "egress", "{who}: {a}");
        let m = results(&out);
        assert_only_the_internet(&m, who);
        assert_eq!(m.get("dns-tcp"), Some(&format!("ok:{}", net.web_ip)), "{who}: DNS over TCP: {m:?}");
        assert!(a["network"]["refused_packets"].as_u64().unwrap() > 0, "{who}: refusals are counted: {a}");
        assert!(a["network"]["dns_queries"].as_u64().unwrap() > 0, "{who}: {a}");

        // network.allow: exactly the named LAN destination, and nothing else.
        let allow = format!("  allow:\n    prober: [\"{}:8080\"]\n", net.lan_ip);
        let (out, v) = run(&w, &net.config(&allow), &prober_addon, user);
        assert_eq!(v["addons"][0]["network"]["allowed"][0], format!("{}:8080", net.lan_ip), "{who}: {v}");
        let m = results(&out);
        assert!(reached(&m, "lan") && reached(&m, "lan-name"), "{who}: the allowed LAN service: {m:?}");
        for label in ["host-loopback-alias", "host-veth", "metadata", "rebound-name"] {
            assert!(!reached(&m, label), "{who}: {label} stays refused with an allow: {m:?}");
        }

        // A broad allow (the whole of 10/8 and 172.16/12) opens the LAN, never the host: not its
        // loopback behind the user-mode network's 10.0.2.2, not the host's resolver at 10.0.2.3,
        // not the host's own addresses in those ranges (the attack review's first finding).
        let broad = "  allow:\n    prober: [\"10.0.0.0/8:*\", \"172.16.0.0/12:*\"]\n";
        let (out, _) = run(&w, &net.config(broad), &prober_addon, user);
        let m = results(&out);
        assert!(reached(&m, "lan"), "{who}: the LAN under a broad allow: {m:?}");
        for label in ["host-loopback-alias", "host-veth", "docker-bridge", "metadata"] {
            assert!(!reached(&m, label), "{who}: {label} stays refused under a broad allow: {m:?}");
        }

        // A pure addon reaches nothing, whatever the policy.
        let pure = addon(&w, "pure-prober", PURE_PY, &prober(&net.targets()));
        let (out, v) = run(&w, &net.config(""), &pure, user);
        assert_eq!(v["addons"][0]["network"]["policy"], "none", "{who}: {v}");
        let m = results(&out);
        assert!(!reached(&m, "internet"), "{who}: a pure addon has no network: {m:?}");

        // network.impure: host is Docspell's behaviour: the host's loopback too.
        let (out, v) = run(&w, &net.config("  impure: host\n"), &prober_addon, user);
        assert_eq!(v["addons"][0]["network"]["policy"], "host", "{who}: {v}");
        let m = results(&out);
        assert!(reached(&m, "internet") && reached(&m, "host-loopback"), "{who}: host network: {m:?}");
    }
    drop(net.web);
}

/// A bwrap world, readable by anyone, with the test's network (slot `slot`) serving its `www`.
fn bwrap_world_with_net(slot: u8) -> Option<(World, Net)> {
    let w = World::new("bwrap", "");
    chmod(w.path(), 0o755);
    let www = w.path().join("www");
    std::fs::create_dir(&www).unwrap();
    chmod(&www, 0o755);
    let net = Net::new(slot, &www)?;
    Some((w, net))
}

/// Another addon declaring the allowed addon's name gets none of its allowed destinations.
#[test]
fn an_allow_belongs_to_the_addon_meant() {
    if !require("bwrap") || !require_root("the test's internet is a network namespace: it needs root") {
        return;
    }
    let Some((w, net)) = bwrap_world_with_net(12) else { return };
    let honest = addon(&w, "caller", IMPURE_PY, &prober(&net.targets()));
    let pin = format!("addons:\n  caller: {{origins: [\"{}\"]}}\n", honest.display());
    let allow = format!("  allow:\n    caller: [\"{}:8080\"]\n", net.lan_ip);
    let config = format!("{pin}{}", net.config(&allow));
    let (out, _) = run(&w, &config, &honest, None);
    assert!(
        reached(&results(&out), "lan"),
        "the addon the administrator meant: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let squatter = w.path().join("elsewhere/caller");
    std::fs::create_dir_all(squatter.parent().unwrap()).unwrap();
    let copied = Command::new("cp").arg("-a").arg(&honest).arg(&squatter).status().unwrap();
    assert!(copied.success());
    let (out, v) = run(&w, &config, &squatter, None);
    assert!(v["addons"][0]["network"].get("allowed").is_none(), "{v}");
    assert!(!reached(&results(&out), "lan"), "a squatter on the name: {}", String::from_utf8_lossy(&out.stderr));
    assert!(reached(&results(&out), "internet"));
}

/// The egress network lasts as long as the run: a run that waits longer than the engine's idle
/// worker threads live (which started the network) still reaches the internet at its end.
#[test]
fn a_long_run_keeps_its_egress_network() {
    if !require("bwrap") || !require_root("the test's internet is a network namespace: it needs root") {
        return;
    }
    let Some((w, net)) = bwrap_world_with_net(14) else { return };
    let script = prober(&[("internet", net.web_ip.clone(), 8080)]).replacen(
        "import socket, sys",
        "import socket, sys, time\ntime.sleep(15)",
        1,
    );
    let late = addon(&w, "late", IMPURE_PY, &script);
    let (out, v) = run(&w, &net.config(""), &late, None);
    assert_eq!(v["addons"][0]["result"], "success", "{v}");
    assert!(reached(&results(&out), "internet"), "after 15 s: {}", String::from_utf8_lossy(&out.stderr));
}

/// A busybox prober for images: `label=ok:<last line>` or `label=refused:<why>` per target (by
/// address: the static busybox resolves no names itself), and the engine's resolver asked for
/// `internet.test` (`resolved=<address>`).
fn nc_prober(targets: &[(&str, String, u16)]) -> String {
    let mut s = String::new();
    for (label, host, port) in targets {
        s.push_str(&format!(
            "r=$(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 4 {host} {port} 2>&1 | tail -1)\ncase \"$r\" in *\"can't\"*|\"\") echo \"{label}=refused:$r\" >&2 ;; *) echo \"{label}=ok:$r\" >&2 ;; esac\n"
        ));
    }
    s.push_str("echo \"resolved=$(nslookup internet.test 2>/dev/null | grep -A1 'Name:' | grep Address | head -1)\" >&2\necho '{}'\n");
    s
}

/// Docker addons get the same egress network (a holder container's namespace, given the network
/// by the engine, which the addon's container joins): as root, and as an unprivileged engine in
/// group docker (through an agent container, since it cannot enter the holder's namespace).
#[test]
fn docker_egress_reaches_the_internet_and_nothing_of_the_host() {
    if !require_docker() || !require_root("the test's internet is a network namespace: it needs root") {
        return;
    }
    if !require_user(KIT_USER) {
        return;
    }
    container_egress("docker", 15, &[None, Some(KIT_USER)]);
}

/// So do oci addons: as root, a network namespace the engine makes and gives the network, which
/// the runtime's container joins by path; for an unprivileged engine (a user with no daemon),
/// the runtime's own, made in the engine's user namespace and given the network while the
/// runtime waits, which the container shares.
#[test]
fn oci_egress_reaches_the_internet_and_nothing_of_the_host() {
    if !require_oci() || !require_root("the test's internet is a network namespace: it needs root") {
        return;
    }
    if !require_user(ROOTLESS) {
        return;
    }
    container_egress("oci", 16, &[None, Some(ROOTLESS)]);
}

/// Whether the user `name` exists (scripts/test-all creates the tests' users).
fn require_user(name: &str) -> bool {
    Command::new("id").arg(name).output().unwrap().status.success()
        || missing(&format!("user {name} is missing; scripts/test-all creates it"))
}

/// An unprivileged user in group docker, as Docspell's job servers run (scripts/test-all creates it).
const KIT_USER: &str = "addon-kit";

/// The oci runner's user without a daemon (scripts/test-all creates it with subordinate ids).
const ROOTLESS: &str = "addon-rootless";

fn container_egress(runner: &str, slot: u8, users: &[Option<&str>]) {
    let w = World::new("auto", &format!("runner: [{runner}]\n"));
    // An unprivileged engine makes its own working and cache directories here.
    chmod(w.path(), 0o777);
    let www = w.path().join("www");
    std::fs::create_dir(&www).unwrap();
    chmod(&www, 0o755);
    let Some(net) = Net::new(slot, &www) else { return };
    // By address: names are checked through the resolver line.
    let targets: Vec<(&str, String, u16)> =
        net.targets().into_iter().filter(|(_, h, _)| h.parse::<IpAddr>().is_ok() && !h.contains(':')).collect();
    let marker = format!("egress-{runner}-{}", std::process::id());
    let addon = w.docker_addon("cegress", IMPURE_PY, &nc_prober(&targets), &marker);
    for p in [w.path().join("addons-src"), addon.clone()] {
        chmod(&p, 0o755);
    }
    for &user in users {
        let who = format!("{runner} as {}", user.unwrap_or("root"));
        let (out, v) = run(&w, &net.config(""), &addon, user);
        let a = &v["addons"][0];
        assert_eq!(a["result"], "success", "{who}: {v}\n{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(a["runner"], runner, "{a}");
        assert_eq!(a["network"]["policy"], "egress", "{a}");
        let m = results(&out);
        assert!(reached(&m, "internet"), "{who}: the internet: {m:?}");
        for label in ["lan", "host-loopback-alias", "host-veth", "metadata", "docker-bridge"] {
            assert!(!reached(&m, label), "{who}: {label} must be refused: {m:?}");
        }
        if m.contains_key("host-address") {
            assert!(!reached(&m, "host-address"), "{who}: the host's own addresses: {m:?}");
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let answered = [format!("resolved=Address: {}", net.web_ip), format!("resolved=Address 1: {}", net.web_ip)];
        assert!(answered.iter().any(|a| stderr.contains(a.as_str())), "{who}: the engine's resolver answers: {stderr}");
        assert!(a["network"]["refused_packets"].as_u64().unwrap() > 0, "{a}");
        if runner == "docker" {
            assert!(containers_of("cegress-1.0").is_empty(), "no container is left, the holder's neither");
        }
    }
}

/// Builds are not the run: under the default `network.build: egress` a Dockerfile's RUN steps,
/// on docker and on oci, reach the internet and names through the engine's resolver, and
/// nothing of the host or its network (its addresses, its loopback behind the user-mode
/// network's gateway, Docker's bridge, the LAN, the metadata address). The steps' results are
/// kept in the image and printed by the (pure) addon.
#[test]
fn docker_and_oci_builds_reach_the_internet_and_nothing_of_the_host() {
    if !require_docker() || !require_oci() || !require_root("the test's internet is a network namespace: it needs root")
    {
        return;
    }
    let www = tempfile::tempdir().unwrap();
    chmod(www.path(), 0o755);
    let Some(net) = Net::new(17, www.path()) else { return };
    let targets: Vec<(&str, String, u16)> =
        net.targets().into_iter().filter(|(_, h, _)| h.parse::<IpAddr>().is_ok() && !h.contains(':')).collect();
    let mut engines = vec![("docker", None), ("oci", None)];
    if require_user(KIT_USER) && require_user(ROOTLESS) {
        engines.extend([("docker", Some(KIT_USER)), ("oci", Some(ROOTLESS))]);
    }
    for (runner, user) in engines {
        let w = World::new("auto", &format!("runner: [{runner}]\n"));
        // An unprivileged engine makes its own working and cache directories here.
        chmod(w.path(), if user.is_some() { 0o777 } else { 0o755 });
        let marker = format!("build-egress-{runner}-{}-{}", user.unwrap_or("root"), std::process::id());
        let addon = w.docker_addon("bprobe", PURE, "cat /probe >&2\necho '{}'\n", &marker);
        std::fs::write(addon.join("probe.sh"), nc_prober(&targets)).unwrap();
        edit(
            &addon.join("Dockerfile"),
            "ENV PATH=/bin",
            // A step cannot change its network (no CAP_NET_ADMIN where the filter is); the
            // build log shows the step's text, so the word looked for is written otherwise there.
            "ENV PATH=/bin\nCOPY probe.sh /probe.sh\nRUN sh /probe.sh 2>/probe\n\
             RUN if ip addr add 10.9.9.9/32 dev lo; then echo netadmin=granted; else echo netadmin=ref\"\"used; fi >>/probe",
        );
        for p in [w.path().join("addons-src"), addon.clone(), addon.join("probe.sh")] {
            chmod(&p, 0o755);
        }
        let who = format!("{runner} as {}", user.unwrap_or("root"));
        let (out, v) = run(&w, &net.config(""), &addon, user);
        let a = &v["addons"][0];
        assert_eq!(a["result"], "success", "{who}: {v}\n{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(a["runner"], runner, "{a}");
        let m = results(&out);
        assert!(reached(&m, "internet"), "{who}: a build reaches the internet: {m:?}");
        for label in ["lan", "host-loopback-alias", "host-veth", "metadata", "docker-bridge"] {
            assert!(!reached(&m, label), "{who}: a build must not reach {label}: {m:?}");
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let answered = [format!("resolved=Address: {}", net.web_ip), format!("resolved=Address 1: {}", net.web_ip)];
        assert!(
            answered.iter().any(|a| stderr.contains(a.as_str())),
            "{who}: a build resolves through the engine's resolver: {stderr}"
        );
        assert!(stderr.contains("the build's egress network refused"), "{who}: the build log counts: {stderr}");
        assert!(stderr.contains("netadmin=refused"), "{who}: a step may not change its network: {stderr}");
        if runner == "docker" {
            assert!(containers_of("bprobe-1.0").is_empty(), "no holder container is left");
        }
    }
}

/// An unprivileged engine's oci build runs behind a gate in buildah's own user namespace (a
/// holder, the build, a watcher): when the build times out, nothing of it is left running,
/// though `buildah unshare` itself leaves its children behind when killed.
#[test]
fn a_rootless_oci_build_that_times_out_leaves_nothing_running() {
    if !require_oci() || !require_user(ROOTLESS) {
        return;
    }
    let w = World::new("auto", "runner: [oci]\noci-runner: {build-timeout: 8s}\n");
    chmod(w.path(), 0o777);
    let marker = format!("slow-build-{}", std::process::id());
    let addon = w.docker_addon("bslow", PURE, "echo '{}'\n", &marker);
    // A number nothing else sleeps for, to find the step's process by.
    let nap = 7_000_000 + std::process::id() % 1_000_000;
    edit(&addon.join("Dockerfile"), "ENV PATH=/bin", &format!("ENV PATH=/bin\nRUN sleep {nap}"));
    for p in [w.path().join("addons-src"), addon.clone()] {
        chmod(&p, 0o755);
    }
    let (out, v) = run(&w, "", &addon, Some(ROOTLESS));
    let a = &v["addons"][0];
    assert_ne!(a["result"], "success", "{v}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(v.to_string().contains("did not finish within"), "the build timed out: {v}");
    let left = || -> Vec<String> {
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&format!("sleep {nap}")) || cmd.contains("bslow-1.0") {
                found.push(format!("{}: {cmd}", e.file_name().to_string_lossy()));
            }
        }
        found
    };
    // Stopping takes the build a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !left().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(left().is_empty(), "left running: {:?}", left());
}

/// A flake's fetches (a fixed-output derivation, which nix fetches in its own network namespace)
/// reach the internet under `network.build: egress`, and not the host or its network: a fetch
/// from the LAN or from the host fails the build.
#[test]
fn nix_builds_fetch_from_the_internet_and_not_from_the_host() {
    if !require_root("the test's internet is a network namespace: it needs root") {
        return;
    }
    let www = tempfile::tempdir().unwrap();
    chmod(www.path(), 0o755);
    let pid = std::process::id();
    let tool = format!("#!/bin/sh\necho fetched-{pid} >&2\necho '{{}}'\n");
    std::fs::write(www.path().join("tool"), &tool).unwrap();
    let Some(net) = Net::new(18, www.path()) else { return };
    let hash = {
        use sha2::Digest;
        let d = sha2::Sha256::digest(tool.as_bytes());
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let flake = |url: &str, marker: &str| {
        format!(
            r#"{{
  outputs = {{ self }}:
    let
      system = "x86_64-linux";
      fetched = derivation {{
        name = "tool-{marker}";
        system = "builtin";
        builder = "builtin:fetchurl";
        url = "{url}";
        executable = false;
        unpack = false;
        outputHashMode = "flat";
        outputHashAlgo = "sha256";
        outputHash = "{hash}";
      }};
      addon = derivation {{
        name = "fetching-{marker}";
        inherit system;
        builder = "/bin/busybox";
        args = [ "sh" "-c" "/bin/busybox mkdir -p $out/bin && /bin/busybox cp ${{fetched}} $out/bin/fetching && /bin/busybox chmod 555 $out/bin/fetching" ];
      }};
    in {{ packages.${{system}}.default = addon; }};
}}
"#
        )
    };
    let Some(w) = nix_world("") else { return };
    let cases = [
        ("internet", format!("http://{}:8080/tool", net.web_ip), true),
        ("internet-name", "http://internet.test:8080/tool".to_string(), true),
        ("lan", format!("http://{}:8080/tool", net.lan_ip), false),
        ("host", format!("http://{}:{}/tool", net.host_ip, net.all_port), false),
    ];
    for (label, url, reachable) in cases {
        // Each its own fixed output (nix would reuse a fetched one): the marker is in the name.
        let marker = format!("{label}-{pid}");
        let addon = w.nix_addon("fetching", PURE, "echo '{}'", &marker);
        std::fs::write(addon.join("flake.nix"), flake(&url, &marker)).unwrap();
        let (out, v) = run(&w, &net.config("remember-failed-builds: 0s\n"), &addon, None);
        let a = &v["addons"][0];
        let stderr = String::from_utf8_lossy(&out.stderr);
        if reachable {
            assert_eq!(a["result"], "success", "{label}: {v}\n{stderr}");
            assert!(stderr.contains(&format!("fetched-{pid}")), "{label}: {stderr}");
        } else {
            assert_eq!(a["result"], "execution-failed", "{label}: a build must not fetch from {url}: {v}\n{stderr}");
            assert!(a["error"].as_str().unwrap_or_default().contains("nix build failed"), "{label}: {a}");
        }
    }
    // The same fetch from the LAN builds under `network.build: host`: the refusal above is the
    // policy's.
    let marker = format!("lan-host-{pid}");
    let addon = w.nix_addon("fetching", PURE, "echo '{}'", &marker);
    std::fs::write(addon.join("flake.nix"), flake(&format!("http://{}:8080/tool", net.lan_ip), &marker)).unwrap();
    let (out, v) = run(&w, &net.config("  build: host\n"), &addon, None);
    assert_eq!(v["addons"][0]["result"], "success", "{v}\n{}", String::from_utf8_lossy(&out.stderr));
}

/// An egress network leaves the host's mounts alone. slirp4netns's own sandbox (1.2.0) made
/// only its new root mount private before detaching the old root, and its unmounts propagated
/// to the host: every mount below a shared mount point vanished there (`ip netns` namespaces,
/// running containers' root file systems under /var/lib/docker; on a systemd host, where
/// everything is shared, far more). A shared mount point with a mount below it, then an egress
/// run on each sandbox that gives one: the mount is still there.
#[test]
fn an_egress_run_leaves_the_hosts_mounts_alone() {
    if !require_root("making a shared mount point needs root") || !require("bwrap") || !require("netns") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    let below = shared.join("below");
    std::fs::create_dir(&shared).unwrap();
    let sh = |cmd: &str| {
        let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
        assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    };
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-R").arg(&self.0).status();
        }
    }
    let s = shared.display();
    sh(&format!("mount --bind {s} {s} && mount --make-shared {s}"));
    let _undo = Unmount(shared.clone());
    std::fs::create_dir(&below).unwrap();
    sh(&format!("mount -t tmpfs -o size=1m below {}", below.display()));
    let mounted = || {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        info.lines().any(|l| l.split(' ').nth(4) == Some(below.to_str().unwrap()))
    };
    assert!(mounted());
    for sandbox in ["bwrap", "netns"] {
        let w = World::new(sandbox, "");
        let a = addon(&w, "mounts", IMPURE_PY, "#!/bin/sh\necho '{}'\n");
        let (out, v) = run(&w, "", &a, None);
        let r = &v["addons"][0];
        assert_eq!(r["result"], "success", "{sandbox}: {v}\n{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(r["network"]["policy"], "egress", "{sandbox}: {r}");
        assert!(mounted(), "{sandbox}: the egress run unmounted {} on the host", below.display());
    }
}

/// The gVisor plugin gives the same egress network: gVisor passes the addon's socket calls to
/// the kernel in a network namespace the plugin holds (runsc --network=host there), where the
/// filter sees them (gVisor's own network stack would send frames past it); `network.allow`
/// opens exactly what it names.
#[test]
fn gvisor_egress_reaches_the_internet_and_nothing_of_the_host() {
    plugin_egress("gvisor", "addon-runner-gvisor", 19);
}

/// The VM plugin: QEMU runs in the engine's bwrap sandbox, given the egress network like any
/// sandboxed addon, and its user-mode network carries the guest's connections into it; the
/// guest's resolver (QEMU's, 10.0.2.3) forwards to the sandbox's, the engine's.
#[test]
fn vm_egress_reaches_the_internet_and_nothing_of_the_host() {
    plugin_egress("vm", "addon-runner-vm", 22);
}

/// The whole policy through plugin `runner` (its program `program`), serving trivial addons.
fn plugin_egress(runner: &str, program: &str, slot: u8) {
    if !require_root("the test's internet is a network namespace: it needs root") {
        return;
    }
    let w = World::new("auto", &format!("runner: [{runner}]\n"));
    w.add_plugin(runner, program, "trivial", "");
    if !require_plugin(&w, runner) {
        return;
    }
    chmod(w.path(), 0o755);
    let www = w.path().join("www");
    std::fs::create_dir(&www).unwrap();
    chmod(&www, 0o755);
    let Some(net) = Net::new(slot, &www) else { return };
    let prober_addon = addon(&w, "prober", IMPURE_PY, &prober(&net.targets()));
    let (out, v) = run(&w, &net.config(""), &prober_addon, None);
    let a = &v["addons"][0];
    assert_eq!(a["result"], "success", "{v}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(a["runner"], runner, "{a}");
    assert_eq!(a["network"]["policy"], "egress", "{a}");
    assert_only_the_internet(&results(&out), runner);
    assert!(a["network"]["refused_packets"].as_u64().unwrap() > 0, "refusals are counted: {a}");
    assert!(a["network"]["dns_queries"].as_u64().unwrap() > 0, "{a}");
    let allow = format!("  allow:\n    prober: [\"{}:8080\"]\n", net.lan_ip);
    let (out, _) = run(&w, &net.config(&allow), &prober_addon, None);
    let m = results(&out);
    assert!(reached(&m, "lan") && reached(&m, "lan-name"), "{runner}: the allowed LAN service: {m:?}");
    for label in ["host-loopback-alias", "host-veth", "metadata"] {
        assert!(!reached(&m, label), "{runner}: {label} stays refused with an allow: {m:?}");
    }
}

/// A Dockerfile's RUN steps keep Docker's default capabilities, CAP_NET_RAW among them: frames
/// a step makes itself go out through a packet socket, below the namespace's IP firewall, to
/// slirp4netns, which would connect them to the host's loopback (behind 10.0.2.2). The filter
/// on the device stops them: a raw SYN to a listener on the host's loopback never arrives.
#[test]
fn raw_frames_from_a_docker_build_do_not_reach_the_host() {
    if !require_docker() || !require_root("a listener and a build as root") {
        return;
    }
    let w = World::new("auto", "runner: [docker]\n");
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let counted = hits.clone();
    std::thread::spawn(move || {
        for _ in l.incoming().flatten() {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let marker = format!("rawsyn-{}", std::process::id());
    let addon = w.docker_addon("rawsyn", PURE, "echo '{}'", &marker);
    let cc = Command::new("gcc")
        .args(["-static", "-O1", "-o"])
        .arg(addon.join("rawsyn"))
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rawsyn.c"))
        .output()
        .expect("gcc (scripts/test-all installs it)");
    assert!(cc.status.success(), "{}", String::from_utf8_lossy(&cc.stderr));
    edit(
        &addon.join("Dockerfile"),
        "ENV PATH=/bin",
        &format!("ENV PATH=/bin\nCOPY rawsyn /rawsyn\nRUN /rawsyn tap0 10.0.2.100 10.0.2.2 {port} > /rawsyn.out 2>&1; cat /rawsyn.out; true"),
    );
    let (out, v) = run(&w, "", &addon, None);
    assert_eq!(v["addons"][0]["result"], "success", "{v}\n{}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a raw SYN from a build reached the host's loopback:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An engine killed with SIGKILL cannot unbind the network namespaces it bound on files (oci
/// as root: the container joins one by path); the next engine that binds one unbinds them.
#[test]
fn namespaces_a_killed_engine_left_bound_are_unbound_by_the_next() {
    if !require_oci() || !require_root("oci egress as root") {
        return;
    }
    let w = World::new("auto", "runner: [oci]\n");
    let marker = format!("killed-{}", std::process::id());
    let slow = w.docker_addon("slowegress", IMPURE_PY, "echo started >&2\nsleep 60\necho '{}'\n", &marker);
    let bound_by = |pid: u32| {
        let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        table.lines().filter(|l| l.contains(&format!("/addon-netns-{pid}-")) && l.contains(" - nsfs ")).count()
    };
    let mut engine = w.spawn_until(&slow, "started");
    let pid = engine.id();
    assert_eq!(bound_by(pid), 1, "the running engine holds one namespace");
    engine.kill().unwrap();
    engine.wait().unwrap();
    assert_eq!(bound_by(pid), 1, "a SIGKILLed engine cannot unbind it");
    let quick = w.docker_addon("quickegress", IMPURE_PY, "echo '{}'\n", &format!("{marker}-next"));
    let (out, v) = run(&w, "", &quick, None);
    assert_eq!(v["addons"][0]["result"], "success", "{v}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(bound_by(pid), 0, "the next engine unbound what the killed one left");
}

/// A docker build cancelled mid-way (the library's cancellation) leaves no holder container
/// behind, nor the agent of an unprivileged engine.
#[tokio::test]
async fn a_cancelled_docker_build_leaves_no_holder() {
    use addon_executor::{CancellationToken, Config, Engine, Event, RunRequest};
    if !require_docker() || !require_root("egress for builds as root") {
        return;
    }
    let w = World::new("auto", "runner: [docker]\n");
    let marker = format!("cancelbuild-{}", std::process::id());
    let addon = w.docker_addon_building("cancelbuild", &marker, "RUN echo building-now && sleep 30");
    // The engine finds its helper (the holder's init) as `addon` in PATH.
    let bin = Path::new(env!("CARGO_BIN_EXE_addon")).parent().unwrap().to_path_buf();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    std::env::set_var("PATH", path);
    let engine = Engine::new(Config::load(&w.config).unwrap());
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let cancel = CancellationToken::new();
    let stopper = cancel.clone();
    let req = RunRequest { sources: vec![addon.display().to_string()], ..Default::default() };
    let run = tokio::spawn(async move { engine.run(req, Some(tx), cancel).await });
    let mut seen = false;
    while let Some(ev) = rx.recv().await {
        if let Event::Log { line, .. } = ev {
            if line.contains("building-now") && !line.contains("RUN") {
                seen = true;
                assert!(!containers_of("cancelbuild-1.0").is_empty(), "the build's holder runs");
                stopper.cancel();
            }
        }
    }
    assert!(seen, "the build started");
    let _ = run.await.unwrap();
    // The removal runs in the background: give it a moment.
    for _ in 0..100 {
        if containers_of("cancelbuild-1.0").is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(containers_of("cancelbuild-1.0").is_empty(), "the holder is gone: {:?}", containers_of("cancelbuild-1.0"));
}
