//! The run step: start the addon on its runner and follow its events to the end
//! ([`addon_runners::follow`]), with the engine's timeout, cancellation, grace and stdout bound.

use super::*;

/// The log callback of one addon: every line goes to `tracing`; to the job server's event channel
/// when there is room, else it is counted in `dropped`.
pub(super) fn log_sink(label: &str, events: Option<Sender<Event>>, dropped: Arc<AtomicU64>) -> addon_runners::LogSink {
    let label = label.to_string();
    Arc::new(move |stream, line: &str| {
        // What the addon printed is shown to people, never obeyed by their terminal.
        tracing::info!(target: "addon", "[{}] {}", addon_descriptors::for_terminal(&label), addon_descriptors::for_terminal(line));
        if let Some(tx) = &events {
            let event = Event::Log { addon: label.clone(), stream, line: line.to_string() };
            if let Err(tokio::sync::mpsc::error::TrySendError::Full(_)) = tx.try_send(event) {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
}
