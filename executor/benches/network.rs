//! The egress network's cost (`network.impure: egress`, slirp4netns behind the filter) against
//! the same addon with `network.impure: host`, in the same run:
//!
//! - a run that makes one HTTP connection to the test host (median of runs, interleaved);
//! - the throughput of a 100 MB download from the test host, measured inside the addon, and by
//!   the same program on the host with no sandbox at all.
//!
//! The test host is a network namespace this benchmark makes (198.51.100.0/24, which this machine
//! does not route), joined by a veth pair: no packet leaves the machine. Needs root, bwrap,
//! slirp4netns, nft and busybox.
//!
//! `cargo bench -p addon-executor --bench network` (BENCH_RUNS to change the number of runs,
//! BENCH_SANDBOXES=bwrap,netns to pick sandboxes).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::median;

const NS: &str = "addon-bench-net";
const HOST_IP: &str = "198.51.100.249";
const WEB_IP: &str = "198.51.100.250";
const SIZE: u64 = 100 << 20;

/// The test host: a namespace with a web server holding `small` and `big` (100 MB).
struct TestHost {
    server: Child,
}

impl TestHost {
    fn start(www: &Path) -> TestHost {
        let _ = Command::new("ip").args(["netns", "del", NS]).stderr(std::process::Stdio::null()).status();
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("ip");
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        ip(&["netns", "add", NS]);
        ip(&["link", "add", "adbenchh", "type", "veth", "peer", "name", "adbenchn", "netns", NS]);
        ip(&["addr", "add", &format!("{HOST_IP}/30"), "dev", "adbenchh"]);
        ip(&["link", "set", "adbenchh", "up"]);
        ip(&["-n", NS, "addr", "add", &format!("{WEB_IP}/30"), "dev", "adbenchn"]);
        ip(&["-n", NS, "link", "set", "adbenchn", "up"]);
        ip(&["-n", NS, "link", "set", "lo", "up"]);
        std::fs::write(www.join("small"), "ok").expect("write");
        let big = std::fs::File::create(www.join("big")).expect("create");
        big.set_len(SIZE).expect("size");
        let server = Command::new("ip")
            .args(["netns", "exec", NS, "/bin/busybox", "httpd", "-f", "-p", &format!("{WEB_IP}:8080"), "-h"])
            .arg(www)
            .spawn()
            .expect("httpd");
        for _ in 0..100 {
            if std::net::TcpStream::connect((WEB_IP, 8080)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        TestHost { server }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("ip").args(["netns", "del", NS]).status();
    }
}

/// A python3 program fetching `path` from the test host: it writes `seconds bytes` to `out`.
fn fetcher(path: &str) -> String {
    format!(
        r#"#!/usr/bin/env python3
import os, socket, sys, time
out = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("arguments") else os.path.join(os.environ["OUTPUT_DIR"], "rate.txt")
started = time.monotonic()
s = socket.create_connection(("{WEB_IP}", 8080), timeout=30)
s.sendall(b"GET /{path} HTTP/1.0\r\n\r\n")
got = 0
while True:
    chunk = s.recv(1 << 20)
    if not chunk:
        break
    got += len(chunk)
took = time.monotonic() - started
with open(out, "w") as f:
    f.write(f"{{took}} {{got}}")
print("{{}}")
"#
    )
}

fn addon(dir: &Path, name: &str, script: &str) -> PathBuf {
    let a = dir.join(name);
    std::fs::create_dir_all(&a).expect("mkdir");
    std::fs::write(
        a.join("docspell-addon.yml"),
        format!("meta: {{name: {name}, version: \"1\"}}\nrunner: {{trivial: {{enable: true, exec: run.py}}}}\noptions: {{networking: true, collectOutput: true}}\n"),
    )
    .expect("write");
    std::fs::write(a.join("run.py"), script).expect("write");
    std::fs::set_permissions(a.join("run.py"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    a
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("network benchmark: needs root (the test host is a network namespace)");
        return;
    }
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let www = dir.path().join("www");
    std::fs::create_dir(&www).expect("mkdir");
    let _host = TestHost::start(&www);
    let one = addon(dir.path(), "one-connection", &fetcher("small"));
    let download = addon(dir.path(), "download", &fetcher("big"));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let picked = std::env::var("BENCH_SANDBOXES").unwrap_or_else(|_| "bwrap,netns".into());
    println!("network benchmark: an impure addon under network.impure egress against host, in the same run");
    // The same program on the host, with no sandbox: the path's own throughput.
    let bare = dir.path().join("bare.txt");
    let rate = |text: &str| {
        let mut it = text.split_whitespace().map(|x| x.parse::<f64>().unwrap_or(0.0));
        let (secs, bytes) = (it.next().unwrap_or(1.0), it.next().unwrap_or(0.0));
        assert!(bytes as u64 >= SIZE, "the whole file arrived: {bytes} bytes");
        bytes / secs / 1e6
    };
    let mut bare_rates: Vec<f64> = (0..3)
        .map(|_| {
            let ok = Command::new("python3")
                .arg(download.join("run.py"))
                .arg(&bare)
                .stdout(std::process::Stdio::null())
                .status()
                .expect("python3");
            assert!(ok.success());
            rate(&std::fs::read_to_string(&bare).expect("bare"))
        })
        .collect();
    bare_rates.sort_by(|a, b| a.total_cmp(b));
    let bare_rate = bare_rates[1];
    println!("  bare host program (no sandbox, median of 3): 100 MB at {bare_rate:.0} MB/s");
    for sandbox in picked.split(',') {
        let engine = |policy: &str| {
            let config = dir.path().join(format!("{sandbox}-{policy}.yml"));
            std::fs::write(
                &config,
                format!(
                    "sandbox: {sandbox}\nworking-dir: {}\ncache-dir: {}\nnetwork: {{impure: {policy}}}\n",
                    dir.path().join(format!("work-{sandbox}")).display(),
                    dir.path().join(format!("cache-{sandbox}")).display()
                ),
            )
            .expect("config");
            addon_executor::Engine::new(addon_executor::Config::load(&config).expect("config"))
        };
        let (egress, host) = (engine("egress"), engine("host"));
        let run = |e: &addon_executor::Engine, a: &Path, n: usize| -> (Duration, PathBuf) {
            let out = dir.path().join(format!("out-{sandbox}-{n}-{}", a.file_name().unwrap().to_string_lossy()));
            let request = addon_executor::RunRequest {
                sources: vec![a.display().to_string()],
                output_dir: Some(out.clone()),
                ..Default::default()
            };
            let started = Instant::now();
            let report = rt.block_on(e.run(request, None, addon_executor::CancellationToken::new())).expect("run");
            let took = started.elapsed();
            assert!(report.success, "{report:?}");
            e.settle();
            (took, out)
        };
        run(&egress, &one, 0);
        run(&host, &one, 0);
        let (mut e, mut h) = (Vec::new(), Vec::new());
        for n in 1..=runs {
            e.push(run(&egress, &one, 2 * n).0);
            h.push(run(&host, &one, 2 * n + 1).0);
        }
        let (e, h) = (median(e), median(h));
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "  {sandbox:<6} one connection: egress {:>6.2} ms, host {:>6.2} ms ({:.2}x)",
            ms(e),
            ms(h),
            ms(e) / ms(h)
        );
        let mut rates = Vec::new();
        for (name, engine) in [("egress", &egress), ("host", &host)] {
            let mut best = Vec::new();
            for n in 0..3 {
                let (_, out) = run(engine, &download, 1000 + n);
                best.push(rate(&std::fs::read_to_string(out.join("rate.txt")).expect("rate")));
            }
            best.sort_by(|a, b| a.total_cmp(b));
            rates.push((name, best[1]));
        }
        println!(
            "  {sandbox:<6} 100 MB download (median of 3): egress {:.0} MB/s, host {:.0} MB/s ({:.2}x of host, {:.2}x of bare)",
            rates[0].1,
            rates[1].1,
            rates[0].1 / rates[1].1,
            rates[0].1 / bare_rate
        );
    }
}
