//! The per-run OCI bundle: the image's configuration as a container needs it (user, command,
//! environment), and the runtime configuration (`config.json`) of one run. Pure functions of
//! their inputs, so the decisions are tested without a runtime.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::json;

/// What a container takes from its image's configuration (the `config` object of an OCI image
/// configuration, as `docker inspect` shows it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ImageConfig {
    #[serde(rename = "Entrypoint", deserialize_with = "null_as_default")]
    pub entrypoint: Vec<String>,
    #[serde(rename = "Cmd", deserialize_with = "null_as_default")]
    pub cmd: Vec<String>,
    #[serde(rename = "Env", deserialize_with = "null_as_default")]
    pub env: Vec<String>,
    #[serde(rename = "WorkingDir", deserialize_with = "null_as_default")]
    pub working_dir: String,
    #[serde(rename = "User", deserialize_with = "null_as_default")]
    pub user: String,
}

/// What a container cannot take from its image's configuration.
#[derive(Debug, thiserror::Error)]
pub enum ImageConfigError {
    #[error("the image configuration: {0}")]
    Parse(#[source] serde_json::Error),
    #[error("the image has no ENTRYPOINT or CMD and the addon passes no arguments: nothing to run")]
    NothingToRun,
}

/// An image's `User` that its `/etc/passwd` and `/etc/group` do not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("unable to find user {name}: no matching entries in passwd file")]
    NoSuchUser { name: String },
    #[error("user {name}: bad uid `{uid}` in passwd")]
    BadUid { name: String, uid: String },
    #[error("unable to find group {name}: no matching entries in group file")]
    NoSuchGroup { name: String },
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl ImageConfig {
    /// The `config` object of an OCI image configuration blob (absent: an image without one).
    pub fn from_image_json(blob: &[u8]) -> Result<ImageConfig, ImageConfigError> {
        #[derive(Deserialize)]
        struct Blob {
            #[serde(default, deserialize_with = "null_as_default")]
            config: ImageConfig,
        }
        serde_json::from_slice::<Blob>(blob).map(|b| b.config).map_err(ImageConfigError::Parse)
    }

    /// The process to start, as Docker starts it: the entrypoint, then the run's arguments, or
    /// the image's `Cmd` when there are none.
    pub fn argv(&self, args: &[String]) -> Result<Vec<String>, ImageConfigError> {
        let tail = if args.is_empty() { &self.cmd } else { args };
        let argv: Vec<String> = self.entrypoint.iter().chain(tail).cloned().collect();
        if argv.is_empty() {
            return Err(ImageConfigError::NothingToRun);
        }
        Ok(argv)
    }

    /// The container's environment: the image's, overridden by the run's (`PATH` stays the
    /// image's), and `HOME` from the user's account when neither sets it (as Docker does).
    pub fn env(&self, run: &[(String, String)], home: &str) -> Vec<String> {
        let mut env: Vec<(String, String)> =
            self.env.iter().filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))).collect();
        for (k, v) in run.iter().filter(|(k, _)| k != "PATH") {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        if !env.iter().any(|(k, _)| k == "PATH") {
            env.push(("PATH".into(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()));
        }
        if !env.iter().any(|(k, _)| k == "HOME") {
            env.push(("HOME".into(), home.to_string()));
        }
        env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
    }
}

/// Who the container's process is, inside its user namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub home: String,
}

/// Resolves an image's `User` (`name`, `uid`, `name:group`, `uid:gid`; empty is root) against
/// the root filesystem's `/etc/passwd` and `/etc/group`, as Docker does. Names that are not
/// there are an error; numbers need no entry.
pub fn resolve_user(rootfs: &Path, spec: &str) -> Result<User, UserError> {
    let passwd = read_small(&rootfs.join("etc/passwd"));
    let group = read_small(&rootfs.join("etc/group"));
    resolve_user_in(&passwd, &group, spec)
}

/// Reads at most 1 MiB of an image's `etc/NAME`, and nothing through a symlink (an image's
/// `/etc` or `/etc/passwd` may be a link to anywhere on the host): `etc` must be a directory
/// and the file a regular file, both opened without following links.
fn read_small(path: &Path) -> String {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let (Some(etc), Some(name)) = (path.parent(), path.file_name()) else { return String::new() };
    let nofollow = |p: &Path, dir: bool| {
        let mut o = std::fs::OpenOptions::new();
        o.read(true).custom_flags(libc::O_NOFOLLOW | if dir { libc::O_DIRECTORY } else { 0 });
        o.open(p)
    };
    let Ok(dir) = nofollow(etc, true) else { return String::new() };
    // The file, relative to the directory just opened (no second lookup of `etc`).
    let at = format!("/proc/self/fd/{}/{}", std::os::fd::AsRawFd::as_raw_fd(&dir), name.to_string_lossy());
    let Ok(f) = nofollow(Path::new(&at), false) else { return String::new() };
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return String::new();
    }
    let mut text = String::new();
    let _ = f.take(1 << 20).read_to_string(&mut text);
    text
}

pub fn resolve_user_in(passwd: &str, group: &str, spec: &str) -> Result<User, UserError> {
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let accounts: Vec<Vec<&str>> =
        passwd.lines().map(|l| l.split(':').collect::<Vec<_>>()).filter(|f| f.len() >= 7).collect();
    let groups: Vec<Vec<&str>> =
        group.lines().map(|l| l.split(':').collect::<Vec<_>>()).filter(|f| f.len() >= 4).collect();
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    let entry = match user_part.parse::<u32>() {
        Ok(uid) => accounts.iter().find(|f| f[2].parse() == Ok(uid)),
        Err(_) => Some(
            accounts
                .iter()
                .find(|f| f[0] == user_part)
                .ok_or_else(|| UserError::NoSuchUser { name: user_part.to_string() })?,
        ),
    };
    let uid = match (user_part.parse::<u32>(), entry) {
        (Ok(uid), _) => uid,
        (Err(_), Some(f)) => {
            f[2].parse().map_err(|_| UserError::BadUid { name: user_part.to_string(), uid: f[2].to_string() })?
        }
        (Err(_), None) => unreachable!("a name without an entry is an error above"),
    };
    let gid = match group_part {
        Some(g) if !g.is_empty() => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| UserError::NoSuchGroup { name: g.to_string() })?,
        },
        _ => entry.and_then(|f| f[3].parse().ok()).unwrap_or(0),
    };
    // As Docker: the account's home, else `/` (an image without /etc/passwd has no /root).
    let home = entry.map(|f| f[5].to_string()).filter(|h| !h.is_empty()).unwrap_or_else(|| "/".into());
    let name = entry.map(|f| f[0]);
    let mut additional_gids: Vec<u32> = match (group_part, name) {
        (None, Some(name)) => groups
            .iter()
            .filter(|f| f[3].split(',').any(|m| m == name))
            .filter_map(|f| f[2].parse().ok())
            .filter(|g| *g != gid)
            .collect(),
        _ => Vec::new(),
    };
    additional_gids.sort_unstable();
    additional_gids.dedup();
    Ok(User { uid, gid, additional_gids, home })
}

/// The capabilities a container keeps (as the docker runner's, inside the container's user
/// namespace): enough for the image's root to write its directories and switch to its users.
pub const CAPABILITIES: [&str; 6] =
    ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_SETGID", "CAP_SETUID"];

/// Where the run's writable directories are bound.
pub struct Binds<'a> {
    pub work: &'a Path,
    pub output: &'a Path,
    pub cache: &'a Path,
    /// A hosts file for `/etc/hosts`.
    pub hosts: &'a Path,
}

/// One run's `config.json`.
pub struct RunConfig<'a> {
    /// The merged root (absolute, or relative to the bundle).
    pub root: &'a Path,
    pub argv: &'a [String],
    pub env: &'a [String],
    pub user: &'a User,
    pub binds: Binds<'a>,
    pub network: Net<'a>,
    /// `containerID:hostID:size` mappings of a user namespace the runtime makes; None when the
    /// runtime already runs in one (an engine that is not root).
    pub id_map: Option<(u32, u32)>,
    /// Resource limits the runtime sets as rlimits (name, value).
    pub rlimits: &'a [(&'static str, u64)],
    /// A control group below the runtime's own (root only); the envelope around the runtime
    /// holds the run's limits.
    pub cgroup: Option<&'a str>,
}

/// The network of a run's container.
#[derive(Debug, Clone, Copy)]
pub enum Net<'a> {
    /// A namespace of its own with only `lo`.
    None,
    /// The host's.
    Host,
    /// The namespace at this path (an egress network), with this `/etc/resolv.conf`.
    Join { netns: &'a Path, resolv: &'a Path },
    /// The runtime's own (an egress network the engine gave it), with this `/etc/resolv.conf`.
    Runtime { resolv: &'a Path },
}

/// The runtime configuration of one run.
pub fn config_json(c: &RunConfig<'_>) -> serde_json::Value {
    let bind = |src: &Path, dst: &str, ro: bool| {
        json!({"destination": dst, "type": "bind", "source": src,
               "options": ["rbind", if ro { "ro" } else { "rw" }, "nosuid", "nodev"]})
    };
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        bind(c.binds.work, "/mnt/work", false),
        bind(c.binds.output, "/mnt/output", false),
        bind(c.binds.cache, "/mnt/cache", false),
        bind(c.binds.hosts, "/etc/hosts", true),
    ];
    match c.network {
        Net::Host if Path::new("/etc/resolv.conf").exists() => {
            mounts.push(bind(Path::new("/etc/resolv.conf"), "/etc/resolv.conf", true));
        }
        Net::Join { resolv, .. } | Net::Runtime { resolv } => mounts.push(bind(resolv, "/etc/resolv.conf", true)),
        _ => {}
    }
    let mut namespaces =
        vec![json!({"type": "pid"}), json!({"type": "ipc"}), json!({"type": "uts"}), json!({"type": "mount"})];
    match c.network {
        Net::None => namespaces.push(json!({"type": "network"})),
        Net::Join { netns, .. } => namespaces.push(json!({"type": "network", "path": netns})),
        Net::Host | Net::Runtime { .. } => {}
    }
    let mut linux = json!({
        "namespaces": namespaces,
        "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                        "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                        "/sys/firmware"],
        "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        "seccomp": crate::sandbox::seccomp::oci_profile(),
    });
    if let Some((base, size)) = c.id_map {
        linux["namespaces"].as_array_mut().expect("array").push(json!({"type": "user"}));
        linux["uidMappings"] = json!([{"containerID": 0, "hostID": base, "size": size}]);
        linux["gidMappings"] = json!([{"containerID": 0, "hostID": base, "size": size}]);
    }
    if let Some(cg) = c.cgroup {
        linux["cgroupsPath"] = json!(cg);
    }
    let mut rlimits = vec![
        // As Docker gives its containers, within what the engine itself may give.
        json!({"type": "RLIMIT_NOFILE", "hard": nofile(), "soft": nofile()}),
        json!({"type": "RLIMIT_CORE", "hard": 0, "soft": 0}),
    ];
    for (name, value) in c.rlimits {
        rlimits.push(json!({"type": name, "hard": value, "soft": value}));
    }
    let caps: Vec<&str> = CAPABILITIES.to_vec();
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": c.user.uid, "gid": c.user.gid, "additionalGids": c.user.additional_gids},
            "args": c.argv,
            "env": c.env,
            "cwd": "/mnt/work",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps, "inheritable": [], "ambient": []},
            "noNewPrivileges": true,
            "rlimits": rlimits,
        },
        "root": {"path": c.root, "readonly": false},
        "hostname": "addon",
        "mounts": mounts,
        "linux": linux,
    })
}

/// Open files a container may have: Docker's 1048576, or the engine's own hard limit if lower
/// (a runtime cannot raise it).
fn nofile() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given.
    let hard = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 { lim.rlim_max } else { 1024 };
    hard.min(1_048_576)
}

/// The rlimit names of the envelope's limits.
pub fn rlimit_name(resource: libc::__rlimit_resource_t) -> Option<&'static str> {
    match resource {
        libc::RLIMIT_FSIZE => Some("RLIMIT_FSIZE"),
        libc::RLIMIT_AS => Some("RLIMIT_AS"),
        libc::RLIMIT_NPROC => Some("RLIMIT_NPROC"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/sh\nguile:x:1000:1000::/home/guile:/bin/sh\nnohome:x:1001:1001:::/bin/sh\n";
    const GROUP: &str = "root:x:0:\nguile:x:1000:\nstaff:x:50:guile,other\n";

    #[test]
    fn users_resolve_as_docker_does() {
        let u = resolve_user_in(PASSWD, GROUP, "").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
        let u = resolve_user_in(PASSWD, GROUP, "guile").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str(), u.additional_gids.clone()), (1000, 1000, "/home/guile", vec![50]));
        let u = resolve_user_in(PASSWD, GROUP, "1000:staff").unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids.len()), (1000, 50, 0));
        let u = resolve_user_in(PASSWD, GROUP, "4242:4343").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4242, 4343, "/"));
        let u = resolve_user_in(PASSWD, GROUP, "nohome").unwrap();
        assert_eq!(u.home, "/");
        let e = resolve_user_in(PASSWD, GROUP, "nobody").unwrap_err();
        assert_eq!(e, UserError::NoSuchUser { name: "nobody".into() });
        assert!(e.to_string().contains("unable to find user nobody"), "{e}");
        let e = resolve_user_in(PASSWD, GROUP, "guile:wheel").unwrap_err();
        assert!(e.to_string().contains("group wheel"), "{e}");
        // No passwd at all (FROM scratch): numbers and root work, HOME is `/`.
        let u = resolve_user_in("", "", "").unwrap();
        assert_eq!((u.uid, u.home.as_str()), (0, "/"));
        assert!(resolve_user_in("", "", "app").is_err());
    }

    #[test]
    fn an_images_etc_is_not_followed_out_of_its_root() {
        let d = tempfile::tempdir().unwrap();
        let host = d.path().join("host-etc");
        fs_err::create_dir_all(&host).unwrap();
        fs_err::write(host.join("passwd"), "bob:x:1234:1234::/HOST-FILE:/bin/sh\n").unwrap();
        let img = d.path().join("rootfs");
        fs_err::create_dir_all(&img).unwrap();
        std::os::unix::fs::symlink(&host, img.join("etc")).unwrap();
        assert_eq!(resolve_user(&img, "1234").unwrap().home, "/");
        // And a link at the file itself.
        let img2 = d.path().join("rootfs2");
        fs_err::create_dir_all(img2.join("etc")).unwrap();
        std::os::unix::fs::symlink(host.join("passwd"), img2.join("etc/passwd")).unwrap();
        assert_eq!(resolve_user(&img2, "1234").unwrap().home, "/");
        let img3 = d.path().join("rootfs3");
        fs_err::create_dir_all(img3.join("etc")).unwrap();
        fs_err::write(img3.join("etc/passwd"), "bob:x:1234:1234::/home/bob:/bin/sh\n").unwrap();
        assert_eq!(resolve_user(&img3, "1234").unwrap().home, "/home/bob");
    }

    #[test]
    fn command_and_environment_follow_docker() {
        let img = ImageConfig {
            entrypoint: vec!["/bin/sh".into(), "/run.sh".into()],
            cmd: vec!["default".into()],
            env: vec!["PATH=/bin".into(), "LANG=C.UTF-8".into(), "HOME=/home/img".into()],
            ..ImageConfig::default()
        };
        assert_eq!(img.argv(&[]).unwrap(), ["/bin/sh", "/run.sh", "default"]);
        assert_eq!(img.argv(&["a".into()]).unwrap(), ["/bin/sh", "/run.sh", "a"]);
        assert!(ImageConfig::default().argv(&[]).is_err());
        let env = img
            .env(&[("PATH".into(), "/host".into()), ("LANG".into(), "de".into()), ("X".into(), "1".into())], "/root");
        assert_eq!(env, ["PATH=/bin", "HOME=/home/img", "LANG=de", "X=1"]);
        let bare = ImageConfig::default().env(&[], "/root");
        assert!(bare.contains(&"HOME=/root".to_string()) && bare.iter().any(|e| e.starts_with("PATH=/usr")));
    }

    #[test]
    fn image_configuration_with_nulls_parses() {
        let c =
            ImageConfig::from_image_json(br#"{"config": {"Entrypoint": null, "Cmd": ["x"], "Env": null}}"#).unwrap();
        assert_eq!(c.cmd, ["x"]);
        assert!(c.entrypoint.is_empty());
        assert_eq!(ImageConfig::from_image_json(b"{}").unwrap(), ImageConfig::default());
        assert!(ImageConfig::from_image_json(b"[").is_err());
    }

    #[test]
    fn pure_runs_get_their_own_network_namespace_and_the_filter() {
        let user = User { uid: 0, gid: 0, additional_gids: vec![], home: "/root".into() };
        let p = Path::new("/x");
        let mk = |network| {
            config_json(&RunConfig {
                root: Path::new("fs/root"),
                argv: &["/bin/true".to_string()],
                env: &[],
                user: &user,
                binds: Binds { work: p, output: p, cache: p, hosts: p },
                network,
                id_map: Some((2_147_200_000, 65536)),
                rlimits: &[("RLIMIT_FSIZE", 10)],
                cgroup: Some("addon"),
            })
        };
        let pure = mk(Net::None);
        let ns: Vec<&str> =
            pure["linux"]["namespaces"].as_array().unwrap().iter().map(|n| n["type"].as_str().unwrap()).collect();
        assert!(ns.contains(&"network") && ns.contains(&"user"), "{ns:?}");
        assert_eq!(pure["linux"]["uidMappings"][0]["hostID"], 2_147_200_000u32);
        assert_eq!(pure["process"]["noNewPrivileges"], true);
        assert!(pure["linux"]["seccomp"]["syscalls"][0]["names"].as_array().unwrap().iter().any(|n| n == "mount"));
        let net = mk(Net::Host);
        assert!(!net["linux"]["namespaces"].as_array().unwrap().iter().any(|n| n["type"] == "network"));
        // An egress run joins the namespace the engine made, with the engine's resolver.
        let joined = mk(Net::Join { netns: Path::new("/proc/7/ns/net"), resolv: Path::new("/b/resolv.conf") });
        let ns = joined["linux"]["namespaces"].as_array().unwrap();
        assert!(ns.iter().any(|n| n["type"] == "network" && n["path"] == "/proc/7/ns/net"), "{ns:?}");
        let mounts = joined["mounts"].as_array().unwrap();
        assert!(mounts.iter().any(|m| m["destination"] == "/etc/resolv.conf" && m["source"] == "/b/resolv.conf"));
    }
}
