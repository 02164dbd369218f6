//! A tree as a tar stream (a build context, the run's directories for a runner that does not
//! share the host's file system), read by the walk: every file is read through the descriptor of
//! the entry that was checked, so a file swapped for a link to a host file while the tree is
//! packed is an error, never the host file's content in the archive.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::walk::{walk, Event, Kind};
use crate::{TreeError, Visit};

/// What a packed archive may hold besides files and directories.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Symlinks are packed as they are.
    Keep,
    /// Symlinks are packed when their target stays inside the tree (relative, never above the
    /// root); one that leaves it is an error (a build context must not reach the host).
    Inside,
}

/// What [`pack_tar`] left out: fifos, sockets and devices (they cannot cross).
#[derive(Debug, Clone, Default)]
pub struct Packed {
    pub left_out: Vec<PathBuf>,
}

/// Writes a tar of `dir`'s content to `out`: directories, regular files (modes without setuid
/// and setgid bits, modification times) and symlinks as `links` says. The end-of-archive blocks
/// are written; `out` is returned for the caller to flush.
pub fn pack_tar<W: Write>(dir: &Path, out: W, links: Links) -> Result<(W, Packed), TreeError> {
    let mut tar = tar::Builder::new(out);
    tar.mode(tar::HeaderMode::Complete);
    let mut packed = Packed::default();
    let root = match links {
        Links::Inside => Some(
            rustix::fs::open(
                dir,
                rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| TreeError::new(dir, ".".into(), "opening", e.into()))?,
        ),
        Links::Keep => None,
    };
    walk(dir, false, |n| {
        if n.depth == 0 || n.event == Event::Leave {
            return Ok(Visit::Continue);
        }
        let rel = n.rel_path();
        let mut h = tar::Header::new_gnu();
        h.set_mtime(n.stat.mtime.0.max(0) as u64);
        h.set_mode(n.stat.perm & 0o1777);
        h.set_uid(u64::from(n.stat.uid));
        h.set_gid(u64::from(n.stat.gid));
        let io = |e: std::io::Error| n.err("packing", e);
        match n.stat.kind {
            Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                tar.append_data(&mut h, &rel, std::io::empty()).map_err(io)?;
            }
            Kind::File => {
                let f = n.open_read()?;
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(n.stat.size);
                // Exactly the size seen: a file that grows meanwhile cannot break the stream.
                let mut body = std::io::Read::take(f, n.stat.size);
                tar.append_data(&mut h, &rel, &mut body).map_err(io)?;
            }
            Kind::Symlink => {
                let target = n.read_link()?;
                if root.as_ref().is_some_and(|r| !stays_inside(r, &rel)) {
                    return Err(n.err(
                        "packing",
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidData,
                            format!("the symlink points outside the tree (to `{}`)", Path::new(&target).display()),
                        ),
                    ));
                }
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                tar.append_link(&mut h, &rel, &target).map_err(io)?;
            }
            _ => packed.left_out.push(rel),
        }
        Ok(Visit::Continue)
    })?;
    let out = tar.into_inner().map_err(|e| TreeError::new(dir, ".".into(), "finishing the archive", e))?;
    Ok((out, packed))
}

/// Checks that every symlink in the tree at `dir` resolves inside it (see [`Links::Inside`]),
/// without reading any file: a build context handed to a builder by path.
pub fn links_stay_inside(dir: &Path) -> Result<(), TreeError> {
    use rustix::fs::{Mode, OFlags};
    let root = rustix::fs::open(dir, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| TreeError::new(dir, ".".into(), "opening", e.into()))?;
    walk(dir, false, |n| {
        if n.stat.kind == Kind::Symlink && !stays_inside(&root, &n.rel_path()) {
            let target = n.read_link()?;
            return Err(n.err(
                "checking",
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("the symlink points outside the tree (to `{}`)", Path::new(&target).display()),
                ),
            ));
        }
        Ok(Visit::Continue)
    })
}

/// Whether the link at `rel` resolves inside the tree at `root`, as the kernel resolves it (links
/// it passes through included): one that leaves, is absolute, loops or cannot be checked is not.
/// A link to something missing inside the tree is inside.
fn stays_inside(root: &std::os::fd::OwnedFd, rel: &Path) -> bool {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    use rustix::io::Errno;
    match rustix::fs::openat2(root, rel, OFlags::PATH | OFlags::CLOEXEC, Mode::empty(), ResolveFlags::BENEATH) {
        Ok(_) | Err(Errno::NOENT) | Err(Errno::NOTDIR) => true,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(dir: &Path) -> Result<Vec<u8>, TreeError> {
        pack_tar(dir, Vec::new(), Links::Inside).map(|(v, _)| v)
    }

    #[test]
    fn a_context_with_a_link_that_leaves_it_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let ctx = t.path().join("ctx");
        std::fs::create_dir_all(ctx.join("d/e")).unwrap();
        std::fs::write(ctx.join("d/e/f"), "f").unwrap();
        let link = |target: &str, at: &str| std::os::unix::fs::symlink(target, ctx.join(at)).unwrap();
        link("e/f", "d/ok");
        link("../d", "d/e/up");
        link("missing", "d/dangling");
        assert!(archive(&ctx).is_ok(), "links inside the tree pack");
        // `d/x` resolves to the root; `x/..` then leaves the tree, though it reads as inside.
        link("..", "d/x");
        link("x/..", "d/w");
        let e = archive(&ctx).unwrap_err().to_string();
        assert!(e.contains("d/w") && e.contains("outside the tree"), "{e}");
        std::fs::remove_file(ctx.join("d/w")).unwrap();
        link("/etc/passwd", "abs");
        assert!(archive(&ctx).unwrap_err().to_string().contains("abs"));
        std::fs::remove_file(ctx.join("abs")).unwrap();
        link("../../outside", "d/out");
        assert!(archive(&ctx).unwrap_err().to_string().contains("d/out"));
        assert!(links_stay_inside(&ctx).unwrap_err().to_string().contains("d/out"));
        // Kept as they are when asked.
        assert!(pack_tar(&ctx, Vec::new(), Links::Keep).is_ok());
    }
}
