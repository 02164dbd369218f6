//! How a job server uses the engine: one run request in, log events streamed out, a typed report
//! back, cancellable at any time (here: on Ctrl-C).
//!
//! `cargo run -p addon-executor --example job_server -- examples/hello`

use addon_executor::{AddonResult, CancellationToken, Config, Engine, Event, RunRequest};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let sources: Vec<String> = std::env::args().skip(1).collect();
    if sources.is_empty() {
        eprintln!("usage: job_server SOURCE...");
        std::process::exit(2);
    }
    let engine = Engine::new(Config::discover(None)?);
    let request = RunRequest { sources, user_input: "job server".into(), ..Default::default() };
    let (events, mut rx) = tokio::sync::mpsc::channel(1024);
    let cancel = CancellationToken::new();
    let on_ctrl_c = cancel.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        on_ctrl_c.cancel();
    });
    let run = tokio::spawn(async move { engine.run(request, Some(events), cancel).await });
    while let Some(event) = rx.recv().await {
        match event {
            Event::Started { addon, runner, sandbox } => {
                println!("{addon}: started with {runner} in {}", sandbox.as_deref().unwrap_or("its container"))
            }
            Event::Log { addon, line, .. } => println!("{addon}| {line}"),
            Event::Finished { addon, result } => println!("{addon}: {}", result.as_str()),
        }
    }
    let report = run.await??;
    // A job server applies `report.output` (commands, files in `report.output_dir`, new items)
    // only when every addon succeeded; a pure addon that failed can be retried later.
    for a in &report.addons {
        if a.result != AddonResult::Success {
            println!("{} failed: {}", a.name, a.error.as_deref().unwrap_or("-"));
        }
    }
    println!("{}", serde_json::to_string_pretty(&report.output)?);
    Ok(())
}
