//! The addon executor: resolves an addon to a runner, prepares its run directory, runs it under
//! supervision and collects a typed report. Job servers link this crate; the `addon` command is a
//! thin layer over it.
//!
//! ```no_run
//! use addon_executor::{CancellationToken, Config, Engine, Event, RunRequest};
//!
//! # async fn job() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = Engine::new(Config::load("/etc/addon/config.yml".as_ref())?);
//! // Bounded: log lines the receiver falls behind on are dropped and counted, never buffered
//! // without end. Started/Finished events wait for room, so keep receiving until the channel closes.
//! let (events, mut rx) = tokio::sync::mpsc::channel(1024);
//! let cancel = CancellationToken::new(); // cancel() stops every addon of the run
//! let request = RunRequest {
//!     sources: vec!["https://example.org/rotate-pdf-addon.zip".into()],
//!     user_input: r#"{"degree": "90"}"#.into(),
//!     item: Some("/var/lib/joex/item-42".into()),
//!     ..Default::default()
//! };
//! let run = tokio::spawn(async move { engine.run(request, Some(events), cancel).await });
//! while let Some(event) = rx.recv().await {
//!     if let Event::Log { addon, line, .. } = event {
//!         println!("[{addon}] {line}");
//!     }
//! }
//! let report = run.await??;
//! for addon in &report.addons {
//!     println!("{}: {}", addon.name, addon.result.as_str());
//! }
//! // report.output: the merged Docspell output to apply; report.output_dir: its files.
//! # Ok(()) }
//! ```

pub mod check;
pub mod config;
pub mod fetch;
pub mod source;
pub mod validate;

pub use config::Config;
pub mod build_log;
pub mod engine;
pub mod identity;
pub mod network;
pub mod plugins;
pub mod reference;
pub mod render;
pub mod report;
pub mod resolve;
mod settle;

pub use engine::{Engine, EngineError, Event, RunRequest};
pub use report::{AddonResult, RunReport};
pub use tokio_util::sync::CancellationToken;
