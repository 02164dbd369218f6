//! `addon`: validate, plan and run Docspell addons. A thin layer over the `addon-executor` library.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use addon_descriptors::schema;
use addon_executor::config::{self, Config};
use addon_executor::render::{Human, Render, Style};
use addon_executor::validate::ValidationReport;
use addon_executor::{CancellationToken, Engine, RunRequest};
use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

/// Exit codes of every command (SPEC "Command line").
const EXIT_JUDGED: u8 = 1;
const EXIT_TROUBLE: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "addon",
    version,
    about = "Validate, plan and run Docspell addons with pluggable runners (docker, oci, nix-flake, trivial, plugins)",
    long_about = "Validate, plan and run Docspell addons with pluggable runners: docker, oci (docker addons without a \
daemon), nix-flake and trivial (in a sandbox: bwrap, netns or nspawn), and plugins such as gvisor. \
`addon runners` shows which work here; `runner:` in the configuration orders them.\n\n\
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
    /// Run addons in order as one run: they share the output directory and the user input.
    #[command(
        after_help = "Exit codes: 0 every addon succeeded; 1 an addon failed or was refused; 2 the run could not start (bad source, config, usage).\n\nExamples:\n  addon run ./hello --args 'Ada'\n  addon run a.zip b.zip --timeout 30s --output-dir out --json\n  addon run ./my-addon --item ./fixtures/item --env TOKEN=abc --runner trivial"
    )]
    Run(Box<RunArgs>),
    /// Explain runner resolution for an addon without running anything.
    Plan {
        #[arg(value_name = "SOURCE")]
        source: String,
        /// Replaces the configured runner order (repeatable).
        #[arg(long = "runner", value_name = "NAME")]
        runners: Vec<String>,
    },
    /// Probe this host: which runners and sandboxes work here, their versions, and why not.
    /// `addon runners check NAME` holds one runner or plugin to the conformance checks.
    Runners {
        #[command(subcommand)]
        action: Option<RunnersCommand>,
    },
    /// Inspect and prune the artifact cache (built images, unpacked archives, CACHE_DIR data).
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Print a JSON Schema, for editors and tools.
    Schema {
        #[arg(value_enum)]
        which: SchemaKind,
        /// The configuration's reference in Markdown instead (a table of every key, its type,
        /// default and meaning; docs/configuration-reference.md is this).
        #[arg(long)]
        markdown: bool,
    },
}

#[derive(Debug, Subcommand)]
enum CacheCommand {
    /// List entries, least recently used first.
    Ls,
    /// Remove least recently used entries until the limits hold; entries in use are kept.
    #[command(
        after_help = "Examples:\n  addon cache prune --max-size 10GiB\n  addon cache prune --older-than 30d\n  addon cache prune --max-size 0   # everything not in use\n  addon cache prune --failed-builds   # build again what failed recently"
    )]
    Prune {
        /// Keep at most this much (bytes, or 500MB, 10GiB).
        #[arg(long, value_name = "BYTES", value_parser = config::parse_size)]
        max_size: Option<u64>,
        /// Remove entries not used for this long (30d, 12h).
        #[arg(long, value_name = "DURATION", value_parser = config::parse_duration)]
        older_than: Option<std::time::Duration>,
        /// Forget every remembered failed build (see `remember-failed-builds`) and its saved
        /// log (build-logs-v1/), so the next run builds again.
        #[arg(long)]
        failed_builds: bool,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Addon directories, zip files or URLs, run in this order.
    #[arg(required = true, value_name = "SOURCE")]
    sources: Vec<String>,
    /// Replaces the configured runner order for this run (repeatable: docker, oci, nix-flake,
    /// trivial, or a plugin's name).
    #[arg(long = "runner", value_name = "NAME")]
    runners: Vec<String>,
    /// Content of the user-input file handed to every addon (default: empty).
    #[arg(long, value_name = "TEXT", conflicts_with = "args_file")]
    args: Option<String>,
    /// Read the user input from FILE.
    #[arg(long, value_name = "FILE")]
    args_file: Option<PathBuf>,
    /// Extra environment for the addons (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    env: Vec<(String, String)>,
    /// Copy file or directory SRC into the run directory at relative path DEST (repeatable).
    #[arg(long = "input", value_name = "DEST=SRC", value_parser = parse_key_value)]
    inputs: Vec<(String, String)>,
    /// Where the addon of SOURCE comes from, as the job server knows it (repeatable): decides
    /// which addon its name means, and so which CACHE_DIR, HOME, env and addon-limits it gets.
    /// Default: the URL without its file name, or the directory's or zip's path.
    #[arg(long = "origin", value_name = "SOURCE=ORIGIN", value_parser = parse_key_value)]
    origins: Vec<(String, String)>,
    /// A Docspell item fixture, laid out as item/ with the ITEM_* variables set.
    #[arg(long, value_name = "DIR")]
    item: Option<PathBuf>,
    /// Where the addons' output files end up (default: a new directory, reported).
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,
    /// Per-addon run timeout (500ms, 30s, 15m); overrides run-timeout.
    #[arg(long, value_name = "DURATION", value_parser = config::parse_duration)]
    timeout: Option<std::time::Duration>,
    /// Skip the remaining addons after a failure (overrides fail-fast).
    #[arg(long, overrides_with = "no_fail_fast")]
    fail_fast: bool,
    /// Run every addon even after a failure.
    #[arg(long, overrides_with = "fail_fast")]
    no_fail_fast: bool,
    /// Keep the run directories for debugging (their paths are logged).
    #[arg(long)]
    keep_work: bool,
    /// Memory limit for each addon of this run (512MiB, 2GiB); overrides limits.memory.
    #[arg(long, value_name = "SIZE", value_parser = config::parse_size)]
    memory: Option<u64>,
    /// Most processes and threads for each addon at once; overrides limits.pids.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pids: Option<u64>,
    /// CPUs' worth of time for each addon (1, 0.5, 2); overrides limits.cpus.
    #[arg(long, value_name = "N", value_parser = parse_cpus)]
    cpus: Option<f64>,
}

fn parse_cpus(s: &str) -> anyhow::Result<f64> {
    match s.trim().parse::<f64>() {
        Ok(c) if c > 0.0 && c.is_finite() => Ok(c),
        _ => anyhow::bail!("`{s}` is not a positive number of CPUs (1, 0.5, 2)"),
    }
}

fn parse_key_value(s: &str) -> anyhow::Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => anyhow::bail!("`{s}` is not KEY=VALUE"),
    }
}

fn parse_runners(names: &[String], config: &Config) -> anyhow::Result<Option<Vec<String>>> {
    if names.is_empty() {
        return Ok(None);
    }
    let split: Vec<String> =
        names.iter().flat_map(|n| n.split(',')).map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    config::parse_runner_names(&split, &config.runner_names()).map(Some).map_err(|e| anyhow::anyhow!("--runner: {e}"))
}

#[derive(Debug, Subcommand)]
enum RunnersCommand {
    /// Run the conformance checks and the hostile-addon kit against runner (or plugin) NAME as
    /// configured: real addons through the engine with only that runner, in a private working
    /// and cache directory. Prints pass/fail per check; exits 1 when any check did not pass.
    ///
    /// Checks: available, contract (directories, environment, arguments, item, inputs, output
    /// files and JSON, CACHE_DIR and HOME, no second build), failure-cause, timeout, leftovers,
    /// engine-death, network-isolation, hostile-kit (daemon sockets, host secrets, inherited
    /// descriptors, writes outside, privileges, kernel interfaces), fork-bomb, memory-hog,
    /// double-fork, setuid-files, disk-fill, unlinked-fill, nested-trees, cache-race,
    /// inode-flood, tmpfs-fill, container-fill, private-directories. The kit's probe is compiled
    /// with `gcc -static` (apt-get install gcc libc6-dev); without it those checks are skipped,
    /// which is not a pass. With ADDON_CHECK_SECRET set, the engine's environment is bait too.
    Check {
        /// The runner's name (`trivial`, `docker`, `nix-flake`, or a plugin of `plugins:`).
        name: String,
        /// Run only these checks (repeatable).
        #[arg(long = "only", value_name = "CHECK")]
        only: Vec<String>,
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
    // Inside an nspawn container, before the addon: install the engine's seccomp filter, then
    // become the addon (see addon_runners::sandbox::nspawn). Not a user-facing command.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if argv.get(1).is_some_and(|a| a == addon_runners::sandbox::nspawn::HELPER_COMMAND) {
        return sandbox_exec(&argv[2..]);
    }
    #[cfg(feature = "docker")]
    if argv.get(1).is_some_and(|a| a == addon_runners::docker::SETTLE_COMMAND) {
        return settle_trees(&argv[2..]);
    }
    #[cfg(feature = "docker")]
    if argv.get(1).is_some_and(|a| a == addon_runners::docker::WATCH_COMMAND) {
        return watch_unlinked(&argv[2..]);
    }
    // The docker runner's network holder: the init of a container whose network namespace an
    // addon's container joins, given its egress network by the engine. It only waits.
    #[cfg(feature = "docker")]
    if argv.get(1).is_some_and(|a| a == addon_runners::docker::HOLD_COMMAND) {
        loop {
            // SAFETY: pause(2) has no preconditions; it returns on a signal, and then waits again.
            unsafe { libc::pause() };
        }
    }
    #[cfg(feature = "docker")]
    if argv.get(1).is_some_and(|a| a == addon_runners::docker::AGENT_COMMAND) {
        return egress_agent(&argv[2..]);
    }
    let cli = Cli::parse();
    // `runners check` reports per check; the engine's own messages about its deliberately
    // failing addons would only bury that (-v shows them).
    let quiet = matches!(cli.command, Command::Runners { action: Some(_) });
    init_logging(if quiet && cli.verbose == 0 { None } else { Some(cli.verbose) });
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {}", addon_descriptors::for_terminal(&format!("{e:#}")));
            ExitCode::from(EXIT_TROUBLE)
        }
    }
}

/// `addon __egress-agent EGRESS_JSON`, in the docker runner's network agent container (see
/// addon_runners::docker, `egress_agent`): gives the network namespace of PID 1 (the holder
/// container's init, whose PID namespace the agent joins) the egress network, says
/// `egress-ready`, and on SIGTERM says what the network refused and ends.
#[cfg(feature = "docker")]
fn egress_agent(args: &[std::ffi::OsString]) -> ExitCode {
    let egress: Option<addon_runners::egress::Egress> =
        args.first().and_then(|a| serde_json::from_str(&a.to_string_lossy()).ok());
    let Some(egress) = egress else {
        eprintln!("usage: addon {} EGRESS_JSON", addon_runners::docker::AGENT_COMMAND);
        return ExitCode::from(EXIT_TROUBLE);
    };
    // SIGTERM is waited for, not handled: blocked before any thread starts (they inherit it).
    // SAFETY: signal-set calls on a local set.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let net = match addon_runners::egress::EgressNet::attach(1, &egress, false) {
        Ok(net) => net,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_TROUBLE);
        }
    };
    println!("{}", addon_runners::docker::AGENT_READY);
    let _ = std::io::Write::flush(&mut std::io::stdout());
    let mut sig = 0;
    // SAFETY: sigwait on the set blocked above.
    unsafe { libc::sigwait(&set, &mut sig) };
    let used = net.finish();
    println!("refused={} dns-queries={}", used.refused, used.dns_queries);
    ExitCode::SUCCESS
}

/// `addon __sandbox-exec PROGRAM ARGS...`: filter, then exec. Returns only on failure.
fn sandbox_exec(rest: &[std::ffi::OsString]) -> ExitCode {
    ExitCode::from(addon_runners::sandbox::seccomp::exec_filtered(rest))
}

/// `addon __settle UID:GID DIR:keep-links|files-only...`, inside the docker runner's settling
/// container (see addon_runners::docker): every entry given to UID:GID, made safe. Exit 1 when
/// a tree could not be settled (each is tried).
#[cfg(feature = "docker")]
fn settle_trees(args: &[std::ffi::OsString]) -> ExitCode {
    let args: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let owner =
        args.first().and_then(|o| o.split_once(':')).and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)));
    let Some(owner) = owner else {
        eprintln!("usage: addon {} UID:GID DIR:keep-links|files-only...", addon_runners::docker::SETTLE_COMMAND);
        return ExitCode::from(EXIT_TROUBLE);
    };
    let mut failed = false;
    for tree in &args[1..] {
        let (dir, how) = tree.rsplit_once(':').unwrap_or((tree, "files-only"));
        let how = addon_tree::Sanitize { owner: Some(owner), keep_symlinks: how == "keep-links", dirs_writable: false };
        match addon_tree::sanitize(std::path::Path::new(dir), &how) {
            Ok(s) => {
                eprintln!("{dir}: {} entries given, {} defused, {} removed", s.chowned, s.defused, s.removed_count)
            }
            Err(e) => {
                eprintln!("{}", addon_descriptors::for_terminal(&e.to_string()));
                failed = true;
            }
        }
    }
    ExitCode::from(if failed { EXIT_JUDGED } else { 0 })
}

/// `addon __watch-unlinked BYTES|- ENTRIES|- DIR...`, the init of the PID namespace a docker
/// container joins (see addon_runners::docker::settle): it measures the run's directories
/// (bound read-only at DIR..., readable to it whoever owns them) and the files the namespace's
/// processes hold open or mapped after unlinking them, and says every 50 ms (less often while
/// the trees are large) `grown=B entries=E`, the growth since it started (before the addon
/// did). Past BYTES or ENTRIES it kills them all at once. A walk that fails says `error=...`.
#[cfg(feature = "docker")]
fn watch_unlinked(args: &[std::ffi::OsString]) -> ExitCode {
    // Not traceable, not readable through /proc by the container's processes.
    // SAFETY: prctl with constant arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    let limit = |i: usize| args.get(i).and_then(|a| a.to_str()?.parse::<u64>().ok());
    let (max_bytes, max_entries) = (limit(0), limit(1));
    let dirs: Vec<PathBuf> = args.iter().skip(2).map(PathBuf::from).collect();
    let measure = || {
        dirs.iter().try_fold(addon_tree::Measure::default(), |sum, d| {
            Ok::<_, addon_tree::TreeError>(sum + addon_tree::measure(d)?)
        })
    };
    let say = |line: String| {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
    };
    let base = match measure() {
        Ok(m) => m,
        Err(e) => {
            say(format!("error={}", e.to_string().replace('\n', " ")));
            return ExitCode::from(EXIT_JUDGED);
        }
    };
    loop {
        let started = std::time::Instant::now();
        let line = match measure() {
            Ok(now) => {
                let unlinked = addon_runners::limits::unlinked_open_size(&addon_runners::limits::other_processes());
                let grown = now.bytes.saturating_sub(base.bytes) + unlinked;
                let entries = now.entries.saturating_sub(base.entries);
                if max_bytes.is_some_and(|m| grown > m) || max_entries.is_some_and(|m| entries > m) {
                    // SAFETY: kill(2); from a PID namespace's init, -1 is every other process in it.
                    unsafe { libc::kill(-1, libc::SIGKILL) };
                }
                format!("grown={grown} entries={entries}")
            }
            Err(e) => format!("error={}", e.to_string().replace('\n', " ")),
        };
        if !say(line) {
            return ExitCode::SUCCESS;
        }
        let pause =
            (started.elapsed() * 10).clamp(std::time::Duration::from_millis(50), std::time::Duration::from_millis(500));
        std::thread::sleep(pause);
    }
}

/// `verbose` None: errors only.
fn init_logging(verbose: Option<u8>) {
    let default = match verbose {
        None => "error",
        Some(0) => "warn,addon=info,addon_executor=info,addon_runners=info",
        // The HTTP of the plugin protocol and of the Docker API is for -vv.
        Some(1) => "debug,h2=info,hyper=info,hyper_util=info,tower=info,tonic=info,bollard=info",
        Some(_) => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    // ADDON_LOG_SPANS=1: each phase of a run (open, prepare, build, run, collect, cleanup) says
    // when it ends and how long it took, with time since the engine started.
    if std::env::var_os("ADDON_LOG_SPANS").is_some_and(|v| v == "1") {
        fmt.with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
            .with_timer(tracing_subscriber::fmt::time::uptime())
            .with_ansi(false)
            .init();
    } else {
        fmt.without_time().with_ansi(color_stderr()).init();
    }
}

fn color_stderr() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    let how = (cli.json, Style { verbose: cli.verbose > 0 });
    match cli.command {
        Command::Validate { sources } => {
            let config = Config::discover(cli.config.as_deref())?;
            validate(&sources, &config, cli.json)
        }
        Command::Run(args) => {
            let config = Config::discover(cli.config.as_deref())?;
            run_addons(*args, config, cli.json)
        }
        Command::Plan { source, runners } => {
            let config = Config::discover(cli.config.as_deref())?;
            let runners = parse_runners(&runners, &config)?;
            let engine = Engine::new(config);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let plan = rt.block_on(engine.plan(&source, runners.as_deref()))?;
            emit(&plan, how)?;
            Ok(if plan.selected.is_some() { 0 } else { EXIT_JUDGED })
        }
        Command::Runners { action: Some(RunnersCommand::Check { name, only }) } => {
            let config = Config::discover(cli.config.as_deref())?;
            // The file it came from (as `Config::discover` finds it), which the kit's probe must
            // not read.
            let config_path = cli
                .config
                .clone()
                .or_else(|| std::env::var_os("ADDON_CONFIG").filter(|v| !v.is_empty()).map(std::path::PathBuf::from));
            for o in &only {
                anyhow::ensure!(
                    addon_executor::check::CHECKS.contains(&o.as_str()),
                    "--only {o}: no such check; checks are {}",
                    addon_executor::check::CHECKS.join(", ")
                );
            }
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            let report = rt
                .block_on(addon_executor::check::run(addon_executor::check::Setup {
                    config: &config,
                    config_path: config_path.as_deref(),
                    name: &name,
                    only: &only,
                }))
                .map_err(anyhow::Error::msg)?;
            emit(&report, how)?;
            Ok(if report.all_passed() { 0 } else { EXIT_JUDGED })
        }
        Command::Runners { action: None } => {
            let config = Config::discover(cli.config.as_deref())?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let report = rt.block_on(Engine::new(config).probe());
            emit(&report, how)?;
            Ok(0)
        }
        Command::Cache(cmd) => {
            let config = Config::discover(cli.config.as_deref())?;
            let engine = Engine::new(config);
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            match cmd {
                CacheCommand::Ls => emit(&engine.cache_ls()?, how)?,
                CacheCommand::Prune { max_size, older_than, failed_builds } => {
                    anyhow::ensure!(
                        max_size.is_some() || older_than.is_some() || failed_builds,
                        "cache prune: give --max-size, --older-than and/or --failed-builds"
                    );
                    emit(&rt.block_on(engine.cache_prune(max_size, older_than, failed_builds))?, how)?
                }
            }
            Ok(0)
        }
        Command::Schema { which: SchemaKind::Config, markdown: true } => {
            print!("{}", addon_executor::reference::markdown(&config::config_schema()));
            Ok(0)
        }
        Command::Schema { markdown: true, .. } => {
            anyhow::bail!("--markdown makes the configuration's reference: `addon schema config --markdown`")
        }
        Command::Schema { which, markdown: false } => {
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

/// A report on stdout: JSON with `--json`, else as people read it.
fn emit<R: Render + serde::Serialize>(report: &R, (json, style): (bool, Style)) -> anyhow::Result<()> {
    if json {
        return print_json(report, false);
    }
    report.render_to(std::io::stdout().lock(), style).context("writing to stdout")
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
        let (report, text) = match addon_executor::source::open(src, config, scratch.path(), None, None) {
            Ok(addon) => {
                #[allow(unused_mut)] // without the nix feature nothing more is checked
                let mut report = ValidationReport::from_addon(src, &addon);
                #[cfg(feature = "nix")]
                report.check_flake(&addon, &config.components.get::<addon_runners::nix::NixSettings>().nix_binary);
                (report, Some(addon.descriptor_text.clone()))
            }
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
                let runners: Vec<&str> = report.runners.clone();
                let purity = if report.pure { "pure" } else { "impure" };
                let _ = writeln!(
                    Human(&mut err),
                    "valid: {what} ({src}): runners {}; {purity}; {} warning(s); {}",
                    if runners.is_empty() { "none".to_string() } else { runners.join(", ") },
                    warnings,
                    report.digest.as_deref().unwrap_or("-")
                );
            } else {
                let _ = writeln!(Human(&mut err), "invalid: {what} ({src}): {errors} error(s), {warnings} warning(s)");
            }
        }
    }
    Ok(code)
}

fn run_addons(args: RunArgs, config: Config, json: bool) -> anyhow::Result<u8> {
    let user_input = match (&args.args, &args.args_file) {
        (Some(text), _) => text.clone(),
        (None, Some(file)) => fs_err::read_to_string(file).context("--args-file")?,
        (None, None) => String::new(),
    };
    let fail_fast = if args.fail_fast {
        Some(true)
    } else if args.no_fail_fast {
        Some(false)
    } else {
        None
    };
    let request = RunRequest {
        sources: args.sources,
        runners: parse_runners(&args.runners, &config)?,
        user_input,
        env: args.env,
        inputs: args.inputs.into_iter().map(|(d, s)| (d, PathBuf::from(s))).collect(),
        origins: args.origins,
        item: args.item,
        output_dir: args.output_dir,
        timeout: args.timeout,
        fail_fast,
        keep_work: args.keep_work,
        limits: config::LimitsOverride {
            memory: args.memory.map(config::ByteSize),
            pids: args.pids,
            cpus: args.cpus,
            output_size: None,
            output_entries: None,
        },
    };
    for (_, src) in &request.inputs {
        anyhow::ensure!(src.exists(), "--input: {} does not exist", src.display());
    }
    // One thread is plenty: the engine waits on its addons and does little work of its own.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let engine = Engine::new(config);
    let report = rt.block_on(async {
        let cancel = CancellationToken::new();
        let on_signal = cancel.clone();
        tokio::spawn(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
            }
            tracing::warn!("cancelling the run: stopping the addons");
            on_signal.cancel();
        });
        engine.run(request, None, cancel).await
    })?;
    if json {
        print_json(&report, false)?;
    } else {
        report.render_to(std::io::stderr().lock(), Style::default())?;
        print_json(&report.output, true)?;
    }
    Ok(if report.success { 0 } else { EXIT_JUDGED })
}
