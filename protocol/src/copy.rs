//! Directory copies as tar streams, for plugins that do not share the host filesystem (CopyIn,
//! CopyOut). Unpacking treats the stream as hostile: only regular files and directories (and, when
//! allowed, symlinks) at plain relative paths, never through a symlink, never over an existing
//! file, no setuid/setgid bits, and at most a given number of bytes.

use std::fs;
use std::io::{self, Write};
use std::path::Path;

pub use addon_tree::{replace_content, UnpackPolicy};

use tokio::sync::mpsc;

/// Size of the pieces a tar stream is sent in.
pub const CHUNK: usize = 256 * 1024;

/// Writes a tar of `dir`'s content (not following symlinks) to `out` in chunks: directories,
/// regular files and symlinks; sockets, fifos and devices are left out (they cannot cross, and
/// an addon's HOME often holds an agent's socket). Runs in a blocking thread. A missing `dir` is
/// an error, never an empty archive: the receiver would take that for an emptied directory.
pub fn pack(dir: &Path, out: mpsc::Sender<Vec<u8>>) -> io::Result<()> {
    if !fs::symlink_metadata(dir)?.is_dir() {
        return Err(bad(format!("{} is not a directory", dir.display())));
    }
    let writer = ChunkWriter { buf: Vec::with_capacity(CHUNK), out };
    // Read by the walk that acts on checked descriptors: a concurrent run of the same addon
    // cannot swap a file of its CACHE_DIR for a link to a host file while it is packed.
    let (mut writer, packed) = addon_tree::pack_tar(dir, writer, addon_tree::Links::Keep)
        .map_err(|e| io::Error::new(e.kind(), e.to_string()))?;
    for p in packed.left_out {
        tracing::debug!("not copying {} (neither file, directory nor symlink)", p.display());
    }
    writer.flush()
}

struct ChunkWriter {
    buf: Vec<u8>,
    out: mpsc::Sender<Vec<u8>>,
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.out.blocking_send(chunk).map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the receiver went away"))
    }
}

/// Unpacks a tar stream into `dest` (see [`addon_tree::unpack_tar`]); returns the bytes of file
/// content. What was left out is logged.
pub fn unpack(reader: impl std::io::Read, dest: &Path, policy: UnpackPolicy) -> io::Result<u64> {
    let done = addon_tree::unpack_tar(reader, dest, policy)?;
    for what in done.left_out {
        tracing::warn!("left out {what} (only files and directories are copied)");
    }
    Ok(done.bytes)
}

fn bad(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_mode(p: &Path, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        fs_err::set_permissions(p, std::fs::Permissions::from_mode(mode))
    }

    fn tar_of(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_entry_type(tar::EntryType::Regular);
        // set_path refuses `..`; write the name bytes directly to test hostile streams.
        let name = &mut h.as_old_mut().name;
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    }

    fn symlink(b: &mut tar::Builder<Vec<u8>>, path: &str, to: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, path, to).unwrap();
    }

    const STRICT: UnpackPolicy = UnpackPolicy { symlinks: false, max_bytes: Some(1000), owners: false };

    #[test]
    fn a_directory_round_trips() {
        let src = tempfile::tempdir().unwrap();
        fs::create_dir_all(src.path().join("a/b")).unwrap();
        fs::write(src.path().join("a/b/f"), b"hello").unwrap();
        set_mode(&src.path().join("a/b/f"), 0o755).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let dir = src.path().to_path_buf();
        let t = std::thread::spawn(move || pack(&dir, tx));
        let mut bytes = Vec::new();
        while let Some(c) = rx.blocking_recv() {
            bytes.extend(c);
        }
        t.join().unwrap().unwrap();
        let dest = tempfile::tempdir().unwrap();
        assert_eq!(unpack(&bytes[..], dest.path(), STRICT).unwrap(), 5);
        assert_eq!(fs::read(dest.path().join("a/b/f")).unwrap(), b"hello");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(dest.path().join("a/b/f")).unwrap().permissions().mode() & 0o777, 0o755);
    }

    fn packed(dir: &Path) -> io::Result<Vec<u8>> {
        let (tx, mut rx) = mpsc::channel(4);
        let dir = dir.to_path_buf();
        let t = std::thread::spawn(move || pack(&dir, tx));
        let mut bytes = Vec::new();
        while let Some(c) = rx.blocking_recv() {
            bytes.extend(c);
        }
        t.join().unwrap().map(|()| bytes)
    }

    /// A stream cut at an entry's boundary, or an empty one, reads like a whole archive to the
    /// tar crate; it must not be taken for a directory that lost its files.
    #[test]
    fn a_cut_or_empty_stream_is_refused() {
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("a"), vec![0u8; 600]).unwrap();
        fs::write(src.path().join("b"), b"bee").unwrap();
        let bytes = packed(src.path()).unwrap();
        let lax = UnpackPolicy { symlinks: false, max_bytes: None, owners: false };
        // Header + two blocks of `a`: cut right after the first entry.
        let cut = &bytes[..512 * 3];
        let e = unpack(cut, tempfile::tempdir().unwrap().path(), lax).unwrap_err();
        assert!(e.to_string().contains("cut short"), "{e}");
        let e = unpack(&b""[..], tempfile::tempdir().unwrap().path(), lax).unwrap_err();
        assert!(e.to_string().contains("empty"), "{e}");
        assert_eq!(unpack(&bytes[..], tempfile::tempdir().unwrap().path(), lax).unwrap(), 603);
    }

    /// Sockets and fifos (an agent's socket in HOME) are left out; the rest still crosses. A
    /// missing directory is an error, not an empty archive.
    #[test]
    fn pack_leaves_out_what_cannot_cross_and_refuses_a_missing_directory() {
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("kept"), b"k").unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(src.path().join("agent.sock")).unwrap();
        let fifo = std::ffi::CString::new(src.path().join("fifo").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let bytes = packed(src.path()).unwrap();
        let dest = tempfile::tempdir().unwrap();
        unpack(&bytes[..], dest.path(), STRICT).unwrap();
        assert_eq!(fs::read(dest.path().join("kept")).unwrap(), b"k");
        assert!(!dest.path().join("agent.sock").exists() && !dest.path().join("fifo").exists());
        assert!(packed(&src.path().join("missing")).is_err());
    }

    #[test]
    fn replace_content_swaps_in_one_step() {
        let root = tempfile::tempdir().unwrap();
        let (dir, fresh) = (root.path().join("dir"), root.path().join("fresh"));
        fs::create_dir_all(dir.join("old")).unwrap();
        fs::create_dir_all(&fresh).unwrap();
        fs::write(fresh.join("new"), b"n").unwrap();
        replace_content(&dir, &fresh).unwrap();
        assert!(dir.join("new").is_file() && !dir.join("old").exists());
        assert!(fresh.join("old").is_dir(), "the old content is left at `fresh` for the caller");
        let absent = root.path().join("absent");
        replace_content(&absent, &fresh).unwrap();
        assert!(absent.join("old").is_dir() && fresh.is_dir());
    }

    #[test]
    fn hostile_streams_write_nothing_outside() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("d");
        for (what, t) in [
            ("dotdot", tar_of(|b| file(b, "../escape", b"x", 0o644))),
            ("absolute", tar_of(|b| file(b, "/tmp/escape-abs", b"x", 0o644))),
            (
                "through a symlink",
                tar_of(|b| {
                    symlink(b, "l", root.path().to_str().unwrap());
                    file(b, "l/escape", b"x", 0o644)
                }),
            ),
            ("too big", tar_of(|b| file(b, "big", &[0u8; 2000], 0o644))),
            (
                "twice",
                tar_of(|b| {
                    file(b, "f", b"1", 0o644);
                    file(b, "f", b"2", 0o644)
                }),
            ),
        ] {
            let policy = UnpackPolicy { symlinks: what == "through a symlink", ..STRICT };
            assert!(unpack(&t[..], &dest, policy).is_err(), "{what} was accepted");
            assert!(!root.path().join("escape").exists(), "{what}");
            let _ = fs::remove_dir_all(&dest);
        }
        assert!(!Path::new("/tmp/escape-abs").exists());
    }

    #[test]
    fn setuid_bits_and_symlinks_do_not_arrive() {
        let dest = tempfile::tempdir().unwrap();
        let t = tar_of(|b| {
            file(b, "suid", b"x", 0o4755);
            symlink(b, "link", "/etc/shadow");
        });
        unpack(&t[..], dest.path(), STRICT).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(dest.path().join("suid")).unwrap().permissions().mode() & 0o7777, 0o755);
        assert!(fs::symlink_metadata(dest.path().join("link")).is_err());
    }
}
