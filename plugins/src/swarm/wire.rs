//! The wire between the swarm plugin and a task's helper (`addon-swarm-task`): one TCP
//! connection per run, opened by the helper, in frames of `[kind: u8][length: u32 BE][payload]`.
//!
//! ```text
//! helper -> plugin   Hello(token)
//! plugin -> helper   Spec(JSON), then Data/End for each input tree (work, cache) in order
//! helper -> plugin   Stdout/Stderr as the addon writes, Exit(JSON), then Data/End for each
//!                    output tree (output, cache) in order, then Done
//! plugin -> helper   Stop(grace ms) at any time after the inputs; Ack once it kept the outputs
//! either way         Error(text) ends the run
//! ```
//!
//! Every tree is a tar stream whose `End` carries the SHA-256 of its bytes: the receiver keeps
//! nothing of a tree whose digest differs or that was cut, and the plugin applies the outputs
//! only once all of them arrived whole.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const HELLO: u8 = 1;
pub const SPEC: u8 = 2;
pub const DATA: u8 = 3;
pub const END: u8 = 4;
pub const STDOUT: u8 = 5;
pub const STDERR: u8 = 6;
pub const EXIT: u8 = 7;
pub const DONE: u8 = 8;
pub const ERROR: u8 = 9;
pub const STOP: u8 = 10;
pub const ACK: u8 = 11;

/// The largest frame either side accepts (a tar piece is 256 KiB).
pub const MAX_FRAME: usize = 1 << 20;

/// The environment variables that tell the helper where the plugin is and which run it is.
pub const ENV_ENDPOINT: &str = "ADDON_SWARM_ENDPOINT";
pub const ENV_TOKEN: &str = "ADDON_SWARM_TOKEN";

/// What the helper runs, sent in `Spec`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TaskSpec {
    /// The image's entrypoint and the run's arguments.
    pub argv: Vec<String>,
    /// The addon's whole environment (the image's, then the run's).
    pub env: Vec<(String, String)>,
    /// The image's user (`name`, `uid`, `name:group`, `uid:gid`); empty: root.
    pub user: String,
    pub workdir: String,
    /// Give the addon a network namespace of its own with only `lo`.
    pub isolate_network: bool,
    /// RLIMIT_FSIZE of the addon, and the bytes it may add to its directories (watched).
    pub max_file_size: Option<u64>,
    /// Entries it may add to its directories (watched).
    #[serde(default)]
    pub max_entries: Option<u64>,
    /// Its process limit (the service's, less the helper's own): for the message when a fork
    /// is refused.
    #[serde(default)]
    pub pids: Option<u64>,
    /// The trees the plugin sends, in order (container paths).
    pub inputs: Vec<String>,
    /// The trees the helper sends back after the run, in order.
    pub outputs: Vec<String>,
}

/// How the addon ended, sent in `Exit`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct TaskExit {
    /// Exit code, or 128 + the signal that ended it.
    pub code: i32,
    /// Processes the kernel's OOM killer ended in the task.
    pub oom_kills: u64,
    pub peak_memory_bytes: Option<u64>,
    pub cpu_ms: Option<u64>,
    /// Forks the process limit refused.
    pub pids_refused: u64,
    /// The limit the helper stopped the addon at, as the engine says it.
    #[serde(default)]
    pub breach: Option<String>,
}

/// Writes one frame.
pub fn write_frame(w: &mut impl Write, kind: u8, payload: &[u8]) -> io::Result<()> {
    let mut head = [0u8; 5];
    head[0] = kind;
    head[1..].copy_from_slice(&(payload.len() as u32).to_be_bytes());
    w.write_all(&head)?;
    w.write_all(payload)
}

/// Reads one frame; None at a clean end of stream before a frame began.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head[..1]) {
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        other => other?,
    }
    r.read_exact(&mut head[1..])?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_FRAME {
        return Err(invalid(format!("a frame of {len} bytes (at most {MAX_FRAME})")));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok(Some((head[0], payload)))
}

pub fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// A tree's tar bytes written as `Data` frames, hashed as they go; `finish` sends `End`.
pub struct TreeWriter<'a, W: Write> {
    pub out: &'a mut W,
    buf: Vec<u8>,
    hash: Sha256,
    pub bytes: u64,
}

impl<'a, W: Write> TreeWriter<'a, W> {
    pub fn new(out: &'a mut W) -> Self {
        TreeWriter { out, buf: Vec::with_capacity(256 * 1024), hash: Sha256::new(), bytes: 0 }
    }

    /// Sends what is buffered and `End` with the digest.
    pub fn finish(mut self) -> io::Result<String> {
        self.flush()?;
        let digest = hex::encode(self.hash.finalize());
        write_frame(self.out, END, digest.as_bytes())?;
        self.out.flush()?;
        Ok(digest)
    }
}

impl<W: Write> Write for TreeWriter<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.hash.update(data);
        self.bytes += data.len() as u64;
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 256 * 1024 {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            write_frame(self.out, DATA, &self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }
}

/// A tree's tar bytes read from `Data` frames up to its `End`, hashed as they come.
pub struct TreeReader<'a, R: Read> {
    input: &'a mut R,
    chunk: Vec<u8>,
    at: usize,
    hash: Sha256,
    /// The digest `End` announced, once it came.
    pub announced: Option<String>,
}

impl<'a, R: Read> TreeReader<'a, R> {
    pub fn new(input: &'a mut R) -> Self {
        TreeReader { input, chunk: Vec::new(), at: 0, hash: Sha256::new(), announced: None }
    }

    /// Reads to the tree's `End` (what the unpacker left unread), then checks the digest.
    pub fn finish(mut self) -> io::Result<()> {
        let mut sink = [0u8; 64 * 1024];
        while self.read(&mut sink)? > 0 {}
        let got = hex::encode(self.hash.finalize());
        match self.announced {
            Some(want) if want == got => Ok(()),
            Some(want) => Err(invalid(format!("the tree arrived with digest {got}, not the {want} it was sent with"))),
            None => Err(invalid("the tree's stream ended before its end mark".into())),
        }
    }
}

impl<R: Read> Read for TreeReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            if self.announced.is_some() {
                return Ok(0);
            }
            match read_frame(self.input)? {
                Some((DATA, payload)) => {
                    self.hash.update(&payload);
                    self.chunk = payload;
                    self.at = 0;
                }
                Some((END, digest)) => {
                    self.announced = Some(String::from_utf8_lossy(&digest).into_owned());
                }
                Some((ERROR, text)) => {
                    return Err(io::Error::other(String::from_utf8_lossy(&text).into_owned()));
                }
                Some((kind, _)) => return Err(invalid(format!("frame {kind} inside a tree"))),
                None => {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the connection was cut inside a tree"))
                }
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// A random one-run token (hex of 32 bytes from the kernel).
pub fn token() -> io::Result<String> {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(hex::encode(b))
}

/// Compares two tokens in time independent of where they differ.
pub fn same_token(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = TreeWriter::new(&mut out);
        w.write_all(data).unwrap();
        w.finish().unwrap();
        out
    }

    #[test]
    fn a_tree_round_trips_with_its_digest() {
        let data = vec![7u8; 600 * 1024];
        let wire = tree(&data);
        let mut input = &wire[..];
        let mut r = TreeReader::new(&mut input);
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        r.finish().unwrap();
        assert_eq!(got, data);
    }

    #[test]
    fn a_changed_byte_fails_the_digest() {
        let mut wire = tree(b"hello world");
        wire[6] ^= 1; // inside the first Data frame's payload
        let mut input = &wire[..];
        let r = TreeReader::new(&mut input);
        let e = r.finish().unwrap_err();
        assert!(e.to_string().contains("digest"), "{e}");
    }

    #[test]
    fn a_cut_tree_is_an_error_not_a_short_tree() {
        let wire = tree(&[1u8; 1000]);
        let cut = &wire[..wire.len() - 70]; // the End frame is 69 bytes
        let mut input = cut;
        let e = TreeReader::new(&mut input).finish().unwrap_err();
        assert!(e.to_string().contains("cut") || e.kind() == io::ErrorKind::UnexpectedEof, "{e}");
    }

    #[test]
    fn an_oversized_frame_is_refused() {
        let mut wire = vec![DATA];
        wire.extend_from_slice(&(u32::MAX).to_be_bytes());
        let e = read_frame(&mut &wire[..]).unwrap_err();
        assert!(e.to_string().contains("at most"), "{e}");
    }

    #[test]
    fn tokens_compare() {
        assert!(same_token(b"abc", b"abc"));
        assert!(!same_token(b"abc", b"abd"));
        assert!(!same_token(b"abc", b"ab"));
        assert_eq!(token().unwrap().len(), 64);
    }
}
