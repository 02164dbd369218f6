//! A build's log, as the engine shows and keeps it, whichever runner builds (docker, oci, nix,
//! plugins): every line the builder prints arrives here (`build: ...`).
//!
//! - On a terminal, unless debug logging is on (`-v`), the build is one progress line (the
//!   builder's current step, or its last line, and the time it has taken) in place of the log,
//!   since a first build can take minutes; elsewhere (job servers, CI, `-v`) every line is logged
//!   as it comes.
//! - The whole log is kept (its last [`KEEP_LINES`] lines): when the build fails, it is written to
//!   `<cache-dir>/build-logs-v1/<runner>-<addon>.log` and the error names that file, since the
//!   error itself carries only the last lines.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use addon_runners::{LogSink, LogStream};

/// How many lines of a build's log are kept for the file written when it fails, at most
/// [`KEEP_BYTES`] in all and each cut to [`LINE_BYTES`]: a build prints what the addon's code
/// prints, and none of it may take the engine's memory or disk.
pub const KEEP_LINES: usize = 20_000;
pub const KEEP_BYTES: usize = 8 << 20;
pub const LINE_BYTES: usize = 4096;

/// Where failed builds' logs go, below the cache directory.
pub const DIR: &str = "build-logs-v1";

/// One build's log.
pub struct BuildLog {
    /// The kept lines and their bytes.
    lines: Mutex<(VecDeque<String>, usize)>,
    /// What the progress line says before the step (None: no progress line, every line logged).
    prefix: Option<String>,
    /// Made at the first line: a cache hit shows none.
    bar: std::sync::OnceLock<indicatif::ProgressBar>,
}

impl BuildLog {
    /// The log of `runner` building `label`; a progress line when stderr is a terminal and debug
    /// logging is off.
    pub fn new(runner: &str, label: &str) -> Arc<BuildLog> {
        let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let prefix = (terminal && !tracing::enabled!(tracing::Level::DEBUG))
            .then(|| addon_descriptors::for_terminal(&format!("building {label} ({runner})")).to_string());
        Arc::new(BuildLog { lines: Mutex::new((VecDeque::new(), 0)), prefix, bar: std::sync::OnceLock::new() })
    }

    fn bar(&self, prefix: &str) -> &indicatif::ProgressBar {
        self.bar.get_or_init(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {prefix}: {wide_msg} {elapsed}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.set_prefix(prefix.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        })
    }

    /// A sink that keeps every line, and shows it (or the step it is at) before passing it on to
    /// `inner` when no progress line stands in for it.
    pub fn sink(self: &Arc<Self>, inner: LogSink) -> LogSink {
        let me = self.clone();
        Arc::new(move |stream: LogStream, line: &str| {
            let text = line.strip_prefix("build: ").unwrap_or(line);
            {
                let mut kept = me.lines.lock().unwrap_or_else(|e| e.into_inner());
                let (lines, bytes) = &mut *kept;
                let mut cut = LINE_BYTES.min(text.len());
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                let line = if cut < text.len() { format!("{} [cut]", &text[..cut]) } else { text.to_string() };
                *bytes += line.len();
                lines.push_back(line);
                while lines.len() > KEEP_LINES || *bytes > KEEP_BYTES {
                    *bytes -= lines.pop_front().map_or(0, |l| l.len());
                }
            }
            match &me.prefix {
                Some(prefix) => {
                    let bar = me.bar(prefix);
                    if let Some(step) = step_of(text) {
                        bar.set_message(addon_descriptors::for_terminal(step).to_string());
                    } else if !text.trim().is_empty() {
                        // Between steps, the builder's last line (an apt-get, a nix fetch).
                        let short: String = text.chars().take(200).collect();
                        bar.set_message(addon_descriptors::for_terminal(&short).to_string());
                    }
                    tracing::debug!("build: {text}");
                }
                None => inner(stream, line),
            }
        })
    }

    /// Clears the progress line (the build is over).
    pub fn finish(&self) {
        if let Some(bar) = self.bar.get() {
            bar.finish_and_clear();
        }
    }

    /// Writes the kept log to `<cache_dir>/build-logs-v1/<runner>-<label>-<digest>.log` (replacing
    /// an earlier one of the same build); returns the file, or None when there is nothing to write
    /// or it could not be written.
    pub fn save(&self, cache_dir: &Path, runner: &str, label: &str, digest: &str) -> Option<PathBuf> {
        let kept = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        let lines = &kept.0;
        if lines.is_empty() {
            return None;
        }
        let dir = cache_dir.join(DIR);
        fs_err::create_dir_all(&dir).ok()?;
        // The label is cut, never the digest: two addons whose names share a long beginning
        // keep logs of their own.
        let file = dir.join(format!("{}-{}-{}.log", file_safe(runner), file_safe(label), file_safe(digest)));
        let mut text = String::new();
        for l in lines.iter() {
            text.push_str(l);
            text.push('\n');
        }
        // Written beside and renamed over: a reader never sees half a log, and a link planted
        // at the name is replaced, not followed.
        let tmp = tempfile::NamedTempFile::new_in(&dir).ok()?;
        fs_err::write(tmp.path(), text).ok()?;
        tmp.persist(&file).ok()?;
        Some(file)
    }
}

impl Drop for BuildLog {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The step a builder announces in `line`: docker's `Step 2/5 : RUN ...`, buildah's
/// `STEP 2/5: RUN ...`, nix's `building '/nix/store/...drv'...`.
fn step_of(line: &str) -> Option<&str> {
    let l = line.trim_start();
    (l.starts_with("Step ") || l.starts_with("STEP ") || l.starts_with("building '")).then_some(l)
}

/// `name` with only `[A-Za-z0-9._-]` (others as `_`), for a file name.
fn file_safe(name: &str) -> String {
    let s: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).take(80).collect();
    s.trim_start_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_every_line_and_saves_it_under_a_safe_name() {
        let log = BuildLog::new("oci", "../evil/1.0");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let sink = log.sink(Arc::new(move |_, l: &str| s2.lock().unwrap().push(l.to_string())));
        for i in 0..(KEEP_LINES + 5) {
            sink(LogStream::Stderr, &format!("build: line {i}"));
        }
        let d = tempfile::tempdir().unwrap();
        let file = log.save(d.path(), "oci", "../evil/1.0", "abc123").unwrap();
        assert_eq!(file, d.path().join(DIR).join("oci-_evil_1.0-abc123.log"));
        let long = log.save(d.path(), "oci", &"a".repeat(300), "abc123").unwrap();
        assert!(long.to_string_lossy().ends_with(&format!("-{}-abc123.log", "a".repeat(80))), "{long:?}");
        let text = fs_err::read_to_string(&file).unwrap();
        assert_eq!(text.lines().count(), KEEP_LINES);
        assert!(text.starts_with("line 5\n") && text.ends_with(&format!("line {}\n", KEEP_LINES + 4)));
        // Not a terminal here: every line went on to the run's log too.
        assert_eq!(seen.lock().unwrap().len(), KEEP_LINES + 5);
    }

    #[test]
    fn long_lines_are_cut_and_the_whole_is_bounded() {
        let log = BuildLog::new("docker", "big-1.0");
        let sink = log.sink(Arc::new(|_, _: &str| {}));
        let long = "é".repeat(LINE_BYTES);
        for _ in 0..(2 * KEEP_BYTES / LINE_BYTES) {
            sink(LogStream::Stderr, &long);
        }
        let (lines, bytes) = &*log.lines.lock().unwrap();
        assert!(*bytes <= KEEP_BYTES && *bytes == lines.iter().map(String::len).sum::<usize>());
        assert!(lines.iter().all(|l| l.len() <= LINE_BYTES + " [cut]".len() && l.ends_with(" [cut]")));
    }

    #[test]
    fn steps_are_what_builders_announce() {
        assert_eq!(step_of("Step 2/5 : RUN make"), Some("Step 2/5 : RUN make"));
        assert_eq!(step_of("STEP 1/3: FROM debian"), Some("STEP 1/3: FROM debian"));
        assert_eq!(step_of("building '/nix/store/abc-x.drv'..."), Some("building '/nix/store/abc-x.drv'..."));
        assert_eq!(step_of("Get:1 http://deb.debian.org"), None);
    }
}
