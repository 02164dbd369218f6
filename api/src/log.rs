//! The log callback a build or run writes the addon's lines to.

use std::sync::Arc;

/// Receives the addon's log lines (stderr, and stdout when it is not collected).
pub type LogSink = Arc<dyn Fn(LogStream, &str) + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}
