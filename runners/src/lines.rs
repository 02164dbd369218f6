//! Reading a program's output as lines with bounded memory, and keeping the last of them: the
//! one way every supervised process (addon runs, builds, tools, plugins) is read.

use std::collections::VecDeque;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// Longest line read at once: a longer one (a binary blob without newlines) comes in pieces of
/// this size, so that no line can take the engine's memory and nothing of it is lost.
pub const MAX_LINE: u64 = 64 * 1024;

/// Lines of stderr kept for error messages.
pub const STDERR_TAIL_LINES: usize = 20;

/// The next line of `r` without its line end, at most [`MAX_LINE`] bytes (the rest of a longer
/// line comes with the following calls); None at the end of the stream or on a read error.
pub async fn next_line(r: &mut (impl AsyncBufRead + Unpin)) -> Option<String> {
    let mut line = Vec::new();
    match r.take(MAX_LINE).read_until(b'\n', &mut line).await {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(String::from_utf8_lossy(&line).trim_end_matches(['\n', '\r']).to_string()),
    }
}

/// Removes and returns the complete lines at the front of `buf` (bytes, so that a character
/// split between two chunks stays whole), without their line ends. Lines are capped at
/// [`MAX_LINE`], so a binary blob cannot grow memory: a longer one comes in pieces.
pub fn drain_lines(buf: &mut Vec<u8>) -> Vec<String> {
    let max = MAX_LINE as usize;
    let mut out = Vec::new();
    while let Some(pos) = buf.iter().position(|b| *b == b'\n').or((buf.len() > max).then_some(max - 1)) {
        let line: Vec<u8> = buf.drain(..=pos).collect();
        out.push(String::from_utf8_lossy(&line).trim_end_matches(['\n', '\r']).to_string());
    }
    out
}

/// The last lines of a stream, at most a fixed number.
#[derive(Debug, Clone)]
pub struct Tail {
    lines: VecDeque<String>,
    keep: usize,
}

impl Default for Tail {
    /// A tail of [`STDERR_TAIL_LINES`].
    fn default() -> Tail {
        Tail::new(STDERR_TAIL_LINES)
    }
}

impl Tail {
    pub fn new(keep: usize) -> Tail {
        Tail { lines: VecDeque::with_capacity(keep), keep }
    }

    pub fn push(&mut self, line: impl Into<String>) {
        if self.keep == 0 {
            return;
        }
        if self.lines.len() == self.keep {
            self.lines.pop_front();
        }
        self.lines.push_back(line.into());
    }

    /// The last line with more than blanks in it.
    pub fn last_non_empty(&self) -> Option<&str> {
        self.lines.iter().rev().map(String::as_str).find(|l| !l.trim().is_empty())
    }

    pub fn to_vec(&self) -> Vec<String> {
        self.lines.iter().cloned().collect()
    }

    pub fn into_vec(self) -> Vec<String> {
        self.lines.into()
    }
}

/// The exit code of a process as a shell reports it: its own, or 128 + the signal that ended it.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_become_whole_lines_and_blobs_come_in_pieces() {
        let mut buf = b"one\r\ntw".to_vec();
        buf.extend_from_slice(&"é".as_bytes()[..1]);
        assert_eq!(drain_lines(&mut buf), ["one"]);
        buf.extend_from_slice(&"é".as_bytes()[1..]);
        buf.extend_from_slice(b"o\n");
        assert_eq!(drain_lines(&mut buf), ["twéo"], "a character split between chunks stays whole");
        assert!(buf.is_empty());
        let mut blob = vec![b'x'; MAX_LINE as usize * 2 + 10];
        let pieces = drain_lines(&mut blob);
        assert_eq!(pieces.len(), 2);
        assert!(pieces.iter().all(|p| p.len() == MAX_LINE as usize));
        assert_eq!(blob.len(), 10, "the rest waits for its line end");
    }

    #[test]
    fn a_tail_keeps_the_last_lines() {
        let mut t = Tail::new(2);
        for l in ["a", "b", "", "c", "  "] {
            t.push(l);
        }
        assert_eq!(t.to_vec(), ["c", "  "]);
        assert_eq!(t.last_non_empty(), Some("c"));
        assert!(Tail::new(0).to_vec().is_empty());
    }

    #[tokio::test]
    async fn a_long_line_comes_in_bounded_pieces_and_nothing_is_lost() {
        let long = "x".repeat(MAX_LINE as usize + 10);
        let text = format!("first\r\n{long}\nlast");
        let mut r = tokio::io::BufReader::new(text.as_bytes());
        let mut got = Vec::new();
        while let Some(l) = next_line(&mut r).await {
            assert!(l.len() as u64 <= MAX_LINE);
            got.push(l);
        }
        assert_eq!(got.len(), 4, "{:?}", got.iter().map(String::len).collect::<Vec<_>>());
        assert_eq!(got[0], "first");
        assert_eq!(got[1].len() + got[2].len(), long.len());
        assert_eq!(got[3], "last");
    }
}
