//! The runner plugin protocol, `addon.runner.v1` (gRPC; `proto/addon/runner/v1/runner.proto` is
//! the contract): the engine's client for plugins (`client::PluginRunner`, a
//! [`addon_runner_api::Runner`] like any built-in; feature `client`), and the SDK for writing a
//! plugin in Rust (`server`: implement `server::Plugin`, call `main`; feature `server`).
//!
//! Both features are on by default. The SDK depends on the runner interface (`addon-runner-api`)
//! and not on the engine's runners (`addon-runners`, with its control groups, seccomp and Docker
//! client), which only the client needs: a plugin depends on this crate with
//! `default-features = false, features = ["server"]`, and on `addon-runner-api`.
//!
//! ```no_run
//! use std::sync::Arc;
//! use addon_runner_protocol::server::{FieldError, Plugin};
//! use addon_runner_api::{Runner, RunnerInfo};
//!
//! struct MyPlugin;
//!
//! impl Plugin for MyPlugin {
//!     fn info(&self) -> RunnerInfo {
//!         todo!("name, version, served sections, capabilities")
//!     }
//!     fn configure(&self, config: &serde_json::Value) -> Result<Arc<dyn Runner>, Vec<FieldError>> {
//!         todo!("check `config`, make the runner")
//!     }
//! }
//!
//! fn main() {
//!     addon_runner_protocol::main(MyPlugin)
//! }
//! ```

#[cfg(feature = "client")]
pub mod client;
pub mod convert;
pub mod copy;
pub mod handshake;
#[cfg(feature = "server")]
pub mod server;

/// The generated protocol types and services.
pub mod pb {
    #![allow(clippy::all, missing_docs, rust_2018_idioms)]
    tonic::include_proto!("addon.runner.v1");
}

/// The protocol version this crate speaks (the second field of the handshake line).
pub const PROTOCOL_VERSION: u32 = 1;

/// The gRPC metadata header in which an engine names its configuration (the sha256 of its
/// `config:` as JSON), on Configure and every later call.
pub const CONFIG_DIGEST_HEADER: &str = "addon-config-digest";

/// How a call naming an unknown configuration is answered (FAILED_PRECONDITION); the engine
/// configures the plugin again.
pub const UNCONFIGURED: &str = "not configured";

/// The proto file, for tools that generate stubs from the running engine's contract.
pub const PROTO: &str = include_str!("../proto/addon/runner/v1/runner.proto");

#[cfg(feature = "client")]
pub use client::{ClientTls, Endpoint, PluginRunner, PluginSettings};
#[cfg(feature = "server")]
pub use server::{FieldError, Plugin};

/// Command line of a plugin built with the SDK.
#[cfg(feature = "server")]
#[derive(Debug, clap::Parser)]
#[command(
    about = "An addon runner plugin. An addon engine starts it (configure it under `plugins:`), or it serves \
             engines as a standalone server with --listen.",
    version
)]
struct Args {
    /// Serve standalone at `unix:///PATH` or `HOST:PORT` instead of being started by an engine.
    #[arg(long, value_name = "ADDRESS")]
    listen: Option<String>,
    /// PEM certificate for TLS (standalone, TCP).
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM key of --tls-cert.
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    tls_key: Option<std::path::PathBuf>,
    /// PEM CA that client certificates must be signed by (mutual TLS).
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    tls_client_ca: Option<std::path::PathBuf>,
    /// Claim this protocol version (for testing how engines refuse other versions).
    #[arg(long, hide = true, value_name = "N")]
    announce_protocol_version: Option<u32>,
}

/// Runs a plugin: parses its command line, logs to stderr (`RUST_LOG`), serves until SIGTERM.
#[cfg(feature = "server")]
pub fn main(plugin: impl Plugin) -> ! {
    use clap::Parser;
    let args = Args::parse();
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let listen = args.listen.map(|address| server::Listen {
        address,
        tls: args.tls_cert.map(|cert| server::ServerTls {
            cert,
            key: args.tls_key.unwrap_or_default(),
            client_ca: args.tls_client_ca,
        }),
    });
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1)
        }
    };
    match rt.block_on(server::serve(plugin, listen, args.announce_protocol_version)) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1)
        }
    }
}
