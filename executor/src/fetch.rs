//! Downloading addon archives from http(s) URLs, with a timeout and a size limit.
//!
//! The body is streamed to a temporary file; the limit is counted on the bytes received, not
//! taken from `Content-Length`. Progress goes to stderr only when it is a terminal.

use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::time::Duration;

use fs_err as fs;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("download of {url} failed: {message}")]
    Http { url: String, message: String },
    #[error("download of {url} is larger than {limit} bytes (setting archive.max-size)")]
    TooLarge { url: String, limit: u64 },
    #[error("download of {url}: {source}")]
    Io { url: String, source: std::io::Error },
}

/// True for `http://` and `https://` sources.
pub fn is_url(source: &str) -> bool {
    let lower = source.to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// Downloads `url` into a new temporary file in `dir`. The file is removed when dropped.
pub fn download(
    url: &str,
    dir: &Path,
    timeout: Duration,
    max_size: u64,
) -> Result<tempfile::NamedTempFile, FetchError> {
    let io_err = |source| FetchError::Io { url: url.to_string(), source };
    fs::create_dir_all(dir).map_err(io_err)?;
    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(timeout)).http_status_as_error(true).build().into();
    let response = agent.get(url).call().map_err(|e| FetchError::Http {
        url: url.to_string(),
        message: match e {
            ureq::Error::Timeout(_) => {
                format!("timed out after {} (setting archive.download-timeout)", humanize(timeout))
            }
            other => other.to_string(),
        },
    })?;
    let declared: Option<u64> =
        response.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    if declared.is_some_and(|n| n > max_size) {
        return Err(FetchError::TooLarge { url: url.to_string(), limit: max_size });
    }
    let mut file = tempfile::Builder::new().prefix("download-").suffix(".zip").tempfile_in(dir).map_err(io_err)?;
    let progress = std::io::stderr().is_terminal().then(|| {
        let bar = match declared {
            Some(n) => indicatif::ProgressBar::new(n),
            None => indicatif::ProgressBar::new_spinner(),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(format!("downloading {url}"));
        bar
    });
    let mut reader = response.into_body().into_with_config().limit(max_size.saturating_add(1)).reader();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.to_string().contains("limit") => {
                return Err(FetchError::TooLarge { url: url.to_string(), limit: max_size });
            }
            Err(e) => return Err(FetchError::Http { url: url.to_string(), message: e.to_string() }),
        };
        total += n as u64;
        if total > max_size {
            return Err(FetchError::TooLarge { url: url.to_string(), limit: max_size });
        }
        file.write_all(&buf[..n]).map_err(io_err)?;
        if let Some(bar) = &progress {
            bar.set_position(total);
        }
    }
    if let Some(bar) = progress {
        bar.finish_and_clear();
    }
    file.flush().map_err(io_err)?;
    Ok(file)
}

fn humanize(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}
