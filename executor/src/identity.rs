//! Which addon a name means. An addon is its `meta.name` *and* where it comes from (its
//! origin): a different addon that declares the same name is not given that name's settings
//! (`env`, `addon-limits`, `network.allow`) nor its CACHE_DIR and HOME (SPEC "Engine configuration").
//!
//! - The origin of a run's addon is what the job server says (`RunRequest::origins`, `--origin`),
//!   else where it was read from: for a URL its location without the file name (so that
//!   `.../tags/v1.0.zip` and `.../tags/v1.1.zip` are the same addon, as an upgrade is), for a
//!   directory or zip its canonical path (an addon updated in place stays itself).
//! - An administrator pins a name (`addons: {NAME: {origins, digests}}`): then only addons from
//!   those origins (prefixes) or with those digests are that name, and they share one CACHE_DIR
//!   across origins and versions.
//! - An unpinned name belongs to the first origin that runs under it (recorded in the cache
//!   directory, `names-v1/`): trust on first use, as SSH does with host keys. Another origin
//!   still runs, with its own CACHE_DIR and HOME and none of the name's settings, and the run
//!   says so.
//!
//! What it must never do: give a name's settings or data to an addon the administrator did not
//! mean, or lose an honest addon's data across runs and version upgrades.

use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::Digest;

use crate::config::Config;

/// Who one run's addon is, and whether the name's settings are its.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// Where it comes from.
    pub origin: String,
    /// The administrator pinned its name (`addons:`) and it matched.
    pub pinned: bool,
    /// It gets its name's `env`, `addon-limits` and `network.allow`.
    pub settings: bool,
    /// Why it does not (or what to do about it), for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// What its CACHE_DIR and HOME are kept by (the cache keys' `identity` part).
    #[serde(skip)]
    pub key: String,
}

/// The origin of `source` (as given to `addon run`), or `declared` when the job server says.
pub fn origin_of(source: &str, declared: Option<&str>) -> String {
    if let Some(d) = declared {
        // Said by the job server; dot segments resolved all the same (a pin compares prefixes).
        return if crate::fetch::is_url(d) {
            url_origin(&format!("{}/x", d.trim_end_matches('/')))
        } else if d.starts_with('/') {
            without_dot_segments(d)
        } else {
            d.to_string()
        };
    }
    if crate::fetch::is_url(source) {
        return url_origin(source);
    }
    fs_err::canonicalize(source).map(|p| p.display().to_string()).unwrap_or_else(|_| source.to_string())
}

/// `scheme://host[:port]/path/` of a URL: without user info, query, fragment and the last path
/// segment (the archive's file name, which changes with each version).
fn url_origin(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.split('#').next().unwrap_or("");
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let host = authority.rsplit('@').next().unwrap_or(authority).to_lowercase();
    // Slashes and dots a server decodes are decoded first: `/honest/..%2fevil%2fx.zip` is
    // `/evil/x.zip` to it.
    let path = without_dot_segments(&decode_separators(path));
    match query {
        // A query names the resource (`/download?addon=x`): the whole location is the origin.
        Some(q) => format!("{}://{host}{path}?{q}", scheme.to_lowercase()),
        None => {
            let dir = &path[..path.rfind('/').map_or(1, |i| i + 1)];
            format!("{}://{host}{dir}", scheme.to_lowercase())
        }
    }
}

/// `%2f`, `%5c` (slashes) and `%2e` (dots) decoded, as servers do before they resolve a path.
fn decode_separators(path: &str) -> String {
    let mut out = path.to_string();
    for (enc, dec) in [("%2f", "/"), ("%2F", "/"), ("%5c", "/"), ("%5C", "/"), ("%2e", "."), ("%2E", ".")] {
        out = out.replace(enc, dec);
    }
    out
}

/// A URL path or a path with `.` and `..` segments (also percent-encoded) resolved, as a server
/// or the file system would: `/docspell/../evil/` is `/evil/`, never inside `/docspell/`.
fn without_dot_segments(path: &str) -> String {
    let decoded = decode_separators(path);
    let mut out: Vec<&str> = Vec::new();
    let trailing = decoded.ends_with('/');
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut p = format!("/{}", out.join("/"));
    if trailing && p != "/" {
        p.push('/');
    }
    p
}

/// Whether `origin` is within `prefix` (a URL prefix, or a directory and what is below it).
fn within(origin: &str, prefix: &str) -> bool {
    if crate::fetch::is_url(prefix) {
        // `https://github.com/docspell` covers `.../docspell/x`, not `.../docspell-evil/x`.
        return origin
            .strip_prefix(prefix)
            .is_some_and(|rest| prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'));
    }
    let (o, p) = (without_dot_segments(origin), without_dot_segments(prefix));
    Path::new(&o).starts_with(Path::new(&p))
}

/// Decides who the addon `name` from `origin` with `digest` is. `record`: remember the first
/// origin of an unpinned name (a run does; `plan` only looks).
pub fn resolve(config: &Config, name: &str, origin: &str, digest: &str, record: bool) -> Identity {
    if let Some(pin) = config.addons.get(name) {
        let matched = pin.origins.iter().any(|p| within(origin, p)) || pin.digests.iter().any(|d| d == digest);
        return if matched {
            Identity { origin: origin.into(), pinned: true, settings: true, note: None, key: "pinned".into() }
        } else {
            Identity {
                origin: origin.into(),
                pinned: false,
                settings: false,
                note: Some(format!(
                    "`addons.{name}` pins this name to other origins or digests: this addon runs with none of the \
                     name's settings and a CACHE_DIR and HOME of its own"
                )),
                key: format!("origin:{origin}"),
            }
        };
    }
    let first = first_origin(config, name, origin, record);
    match first {
        // Who owns the name cannot be told (the record cannot be read or written): the name's
        // settings go to nobody.
        Err(why) => Identity {
            origin: origin.into(),
            pinned: false,
            settings: false,
            note: Some(format!(
                "which addon the name {name} means cannot be told ({why}): this one runs with none of the name's \
                 settings; pin the name under `addons:`"
            )),
            key: format!("origin:{origin}"),
        },
        Ok(Some(first)) if first != origin => Identity {
            origin: origin.into(),
            pinned: false,
            settings: false,
            note: Some(format!(
                "the name {name} belongs to the addon from {first} (the first to run under it): this one runs with \
                 none of the name's settings (env, addon-limits, network.allow) and a CACHE_DIR and HOME of its own; pin the name \
                 under `addons:` to choose"
            )),
            key: format!("origin:{origin}"),
        },
        _ => Identity {
            origin: origin.into(),
            pinned: false,
            settings: true,
            note: None,
            key: format!("origin:{origin}"),
        },
    }
}

/// The record of who owns a name cannot be read or written.
#[derive(Debug, thiserror::Error)]
enum RecordError {
    #[error("{} is empty", .0.display())]
    Empty(PathBuf),
    /// fs-err's error names the path.
    #[error("{0}")]
    Read(std::io::Error),
    #[error("recording the name in {}: {source}", .dir.display())]
    Write { dir: PathBuf, source: std::io::Error },
    #[error("the record vanished")]
    Vanished,
}

/// The first origin recorded for `name` (recording `origin` when none is and `record`; None
/// when none is and not `record`). An error when the record cannot be read or written.
fn first_origin(config: &Config, name: &str, origin: &str, record: bool) -> Result<Option<String>, RecordError> {
    use std::io::Write;
    let dir = config.cache_dir.join("names-v1");
    let name_hash = hex::encode(sha2::Sha256::digest(name.as_bytes()));
    let file = dir.join(format!("{name_hash}.txt"));
    let read = |file: &Path| -> Result<Option<String>, RecordError> {
        match fs_err::read_to_string(file) {
            Ok(text) => match text.lines().next().filter(|l| !l.is_empty()) {
                Some(first) => Ok(Some(first.to_string())),
                None => Err(RecordError::Empty(file.to_path_buf())),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RecordError::Read(e)),
        }
    };
    if let Some(first) = read(&file)? {
        return Ok(Some(first));
    }
    if !record {
        return Ok(None);
    }
    let write = |source| RecordError::Write { dir: dir.clone(), source };
    std::fs::create_dir_all(&dir).map_err(write)?;
    // The first writer wins: a file made whole (and synced) under a name of its own, then linked
    // into place only if no other engine was first.
    let tmp = dir.join(format!(".{name_hash}.{}.{:?}", std::process::id(), std::thread::current().id()));
    let made = std::fs::File::create(&tmp).and_then(|mut f| {
        writeln!(f, "{origin}\n{name}")?;
        f.sync_all()
    });
    let linked = made.and_then(|()| std::fs::hard_link(&tmp, &file));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(Some(origin.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(&file)?.map(Some).ok_or(RecordError::Vanished),
        Err(e) => Err(write(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_origins_leave_out_the_file_and_what_is_not_the_place() {
        assert_eq!(
            url_origin("https://github.com/docspell/rotate-pdf-addon/archive/refs/tags/v0.2.0.zip"),
            "https://github.com/docspell/rotate-pdf-addon/archive/refs/tags/"
        );
        assert_eq!(url_origin("HTTPS://user:pw@Example.org:8080/a/b.zip#f"), "https://example.org:8080/a/");
        assert_eq!(url_origin("https://h/dl?f=a.zip"), "https://h/dl?f=a.zip", "a query names the resource");
        assert_eq!(url_origin("http://h/honest/..%2fevil%2fx.zip"), "http://h/evil/");
        assert_eq!(url_origin("http://host"), "http://host/");
        assert_eq!(url_origin("https://github.com/docspell/../evil/a.zip"), "https://github.com/evil/");
        assert_eq!(url_origin("https://github.com/docspell/%2e%2e/evil/a.zip"), "https://github.com/evil/");
        assert_eq!(without_dot_segments("/srv/addons/../evil"), "/srv/evil");
    }

    #[test]
    fn dot_segments_do_not_pass_a_pin() {
        let d = tempfile::tempdir().unwrap();
        let mut c = config(d.path());
        c.addons.insert(
            "a".into(),
            crate::config::AddonPin {
                origins: vec!["https://github.com/docspell/".into(), "/srv/addons".into()],
                digests: vec![],
            },
        );
        let sneaky = origin_of("https://github.com/docspell/../evil/a.zip", None);
        assert!(!resolve(&c, "a", &sneaky, "sha256:1", true).settings, "{sneaky}");
        let declared = origin_of("x", Some("/srv/addons/../evil"));
        assert!(!resolve(&c, "a", &declared, "sha256:1", true).settings, "{declared}");
        assert!(resolve(&c, "a", &origin_of("x", Some("/srv/addons/a")), "sha256:1", true).settings);
        let upper = origin_of("HTTPS://GitHub.com/docspell/a/v1.zip", None);
        assert!(resolve(&c, "a", &upper, "sha256:1", true).settings, "{upper}");
    }

    #[test]
    fn an_unreadable_record_gives_the_settings_to_nobody() {
        let d = tempfile::tempdir().unwrap();
        let c = config(d.path());
        fs_err::create_dir_all(d.path().join("names-v1")).unwrap();
        let file = d.path().join("names-v1").join(format!("{}.txt", hex::encode(sha2::Sha256::digest(b"a"))));
        fs_err::write(&file, "").unwrap();
        let who = resolve(&c, "a", "/srv/a", "sha256:1", true);
        assert!(!who.settings && who.note.unwrap().contains("cannot be told"));
    }

    fn config(dir: &Path) -> Config {
        Config { cache_dir: dir.to_path_buf(), ..Config::default() }
    }

    #[test]
    fn the_first_origin_owns_an_unpinned_name() {
        let d = tempfile::tempdir().unwrap();
        let c = config(d.path());
        assert!(resolve(&c, "a", "/srv/a", "sha256:1", false).settings, "before any run, nobody owns it");
        let honest = resolve(&c, "a", "/srv/a", "sha256:1", true);
        assert!(honest.settings && honest.note.is_none());
        let again = resolve(&c, "a", "/srv/a", "sha256:2", true);
        assert!(again.settings, "a new version from the same origin is the same addon");
        assert_eq!(again.key, honest.key, "and keeps its CACHE_DIR");
        let squatter = resolve(&c, "a", "/tmp/evil", "sha256:1", true);
        assert!(!squatter.settings && squatter.note.as_deref().unwrap().contains("/srv/a"));
        assert_ne!(squatter.key, honest.key, "a CACHE_DIR of its own");
    }

    #[test]
    fn a_pin_decides() {
        let d = tempfile::tempdir().unwrap();
        let mut c = config(d.path());
        c.addons.insert(
            "a".into(),
            crate::config::AddonPin {
                origins: vec!["/srv/addons".into(), "https://github.com/docspell/".into()],
                digests: vec!["sha256:9".into()],
            },
        );
        let v1 = resolve(&c, "a", "/srv/addons/a-1.0", "sha256:1", true);
        let v2 = resolve(&c, "a", "https://github.com/docspell/a/archive/", "sha256:2", true);
        let by_digest = resolve(&c, "a", "/anywhere", "sha256:9", true);
        assert!(v1.settings && v2.settings && by_digest.settings);
        assert_eq!(v1.key, v2.key, "pinned versions share their data");
        let other = resolve(&c, "a", "/srv/addons-evil/a", "sha256:3", true);
        assert!(!other.settings, "a prefix is a directory, not a string");
        assert!(!resolve(&c, "a", "https://github.com/docspell-evil/a/", "sha256:3", true).settings);
        c.addons.get_mut("a").unwrap().origins = vec!["https://github.com/docspell".into()];
        assert!(!resolve(&c, "a", "https://github.com/docspell-evil/a/", "sha256:3", true).settings);
        assert!(resolve(&c, "a", "https://github.com/docspell/a/", "sha256:3", true).settings);
    }
}
