//! `addon`: validate, plan and run Docspell addons. A thin layer over the `addon-executor` library.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use addon_descriptors::schema;
use addon_executor::config::{self, Config};
use addon_executor::validate::ValidationReport;
use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

/// Exit codes of every command (SPEC "Command line").
const EXIT_JUDGED: u8 = 1;
const EXIT_TROUBLE: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "addon",
    version,
    about = "Validate, plan and run Docspell addons with pluggable runners (docker, nix-flake, trivial)",
    long_about = "Validate, plan and run Docspell addons with pluggable runners (docker, nix-flake, trivial).\n\n\
A SOURCE is an addon directory, a .zip file, an http(s):// URL of a zip, or (for `validate`) a \
docspell-addon.yml file alone.\n\n\
Exit codes: 0 everything succeeded; 1 the addon or descriptor was judged and failed; \
2 the command could not do its job (usage, config, I/O, missing runtime).",
    after_help = "Examples:\n  addon validate ./my-addon\n  addon run ./my-addon --args '{\"degree\": 90}'\n  addon plan ./my-addon --json\n  addon schema descriptor > docspell-addon.schema.json"
)]
struct Cli {
    /// Print only JSON on stdout (JSON Lines where a command reports on several things); human
    /// messages go to stderr.
    #[arg(long, global = true)]
    json: bool,

    /// Engine configuration file (YAML); default: $ADDON_CONFIG, else built-in defaults.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    /// More log output on stderr (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check descriptors: fields, types, files, runners; prints the digest and purity.
    #[command(
        after_help = "Exit codes: 0 all valid (warnings allowed); 1 an error was found; 2 a source could not be read."
    )]
    Validate {
        /// Addon directories, zip files, URLs or descriptor files.
        #[arg(required = true, value_name = "SOURCE")]
        sources: Vec<String>,
    },
    /// Print a JSON Schema, for editors and tools.
    Schema {
        #[arg(value_enum)]
        which: SchemaKind,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SchemaKind {
    /// The descriptor (docspell-addon.yml).
    Descriptor,
    /// The addon output (stdout of an addon that collects output).
    Output,
    /// The engine configuration.
    Config,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_TROUBLE)
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn,addon=info,addon_executor=info,addon_runners=info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .with_ansi(color_stderr())
        .init();
}

fn color_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Validate { sources } => {
            let config = Config::discover(cli.config.as_deref())?;
            validate(&sources, &config, cli.json)
        }
        Command::Schema { which } => {
            let value = match which {
                SchemaKind::Descriptor => schema::descriptor_schema(),
                SchemaKind::Output => schema::output_schema(),
                SchemaKind::Config => config::config_schema(),
            };
            print_json(&value, !cli.json)?;
            Ok(0)
        }
    }
}

fn print_json(value: &impl serde::Serialize, pretty: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if pretty {
        serde_json::to_writer_pretty(&mut out, value)?;
    } else {
        serde_json::to_writer(&mut out, value)?;
    }
    writeln!(out).context("writing to stdout")?;
    Ok(())
}

fn validate(sources: &[String], config: &Config, json: bool) -> anyhow::Result<u8> {
    let scratch =
        tempfile::Builder::new().prefix("addon-validate-").tempdir().context("creating a temporary directory")?;
    let color = color_stderr();
    let mut code = 0u8;
    for src in sources {
        let (report, text) = match addon_executor::source::open(src, config, scratch.path()) {
            Ok(addon) => (ValidationReport::from_addon(src, &addon), Some(addon.descriptor_text.clone())),
            Err(e) => (ValidationReport::from_error(src, &e), None),
        };
        if report.unreadable {
            code = EXIT_TROUBLE;
        } else if !report.valid && code == 0 {
            code = EXIT_JUDGED;
        }
        let file = report.descriptor.clone().unwrap_or_else(|| src.clone());
        let mut err = std::io::stderr().lock();
        if json {
            print_json(&report, false)?;
        } else {
            for d in &report.diagnostics {
                let _ = write!(err, "{}", d.render(&file, text.as_deref(), color));
            }
        }
        if !json {
            let errors = report.diagnostics.iter().filter(|d| d.is_error()).count();
            let warnings = report.diagnostics.len() - errors;
            let what = report.meta.as_ref().map(|m| format!("{} {}", m.name, m.version)).unwrap_or_else(|| src.clone());
            if report.valid {
                let runners: Vec<&str> = report.runners.iter().map(|r| r.as_str()).collect();
                let purity = if report.pure { "pure" } else { "impure" };
                let _ = writeln!(
                    err,
                    "valid: {what} ({src}): runners {}; {purity}; {} warning(s); {}",
                    if runners.is_empty() { "none".to_string() } else { runners.join(", ") },
                    warnings,
                    report.digest.as_deref().unwrap_or("-")
                );
            } else {
                let _ = writeln!(err, "invalid: {what} ({src}): {errors} error(s), {warnings} warning(s)");
            }
        }
    }
    Ok(code)
}
