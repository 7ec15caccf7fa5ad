//! raft-engine's warnings while it opens the log, held back from the
//! member's log output and said again by `LogStore::open` in the member's
//! words (a torn tail after an unclean stop is expected, not a warning).

use std::path::Path;

/// Where raft-engine warns while it opens the log (log records bridged
/// to tracing keep the module path as their target).
const OPEN_WARNINGS_TARGET: &str = "raft_engine::file_pipe_log::pipe_builder";

/// raft-engine's warnings while opening, kept for `LogStore::open` to say
/// again in the member's words.
pub(super) static OPEN_WARNINGS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Whether an event is one of raft-engine's warnings while it opens the
/// log (the member's log shows them through `LogStore::open` instead).
/// raft-engine logs with the `log` crate: the bridge's events carry the
/// module in their normalized metadata.
pub fn is_open_warning(event: &tracing::Event<'_>) -> bool {
    use tracing_log::NormalizeEvent as _;
    let normalized = event.normalized_metadata();
    let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
    meta.target() == OPEN_WARNINGS_TARGET && *meta.level() == tracing::Level::WARN
}

/// A filter for the member's log output: raft-engine's opening warnings
/// are left to `LogStore::open`.
#[derive(Debug)]
pub struct NotOpenWarnings;

impl<S> tracing_subscriber::layer::Filter<S> for NotOpenWarnings {
    fn enabled(
        &self,
        _: &tracing::Metadata<'_>,
        _: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        true
    }

    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        !is_open_warning(event)
    }
}

/// A tracing layer that keeps raft-engine's opening warnings.
#[derive(Debug)]
pub struct OpenWarnings;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for OpenWarnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if !is_open_warning(event) {
            return;
        }
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut m = Message(String::new());
        event.record(&mut m);
        OPEN_WARNINGS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(m.0);
    }
}

/// Says raft-engine's opening warnings again: a truncated last file is
/// the torn tail of an unclean stop (kill -9, power loss), expected, and
/// checked against the mark; anything else is passed on as it was.
pub(super) fn report_open_warnings(log_dir: &Path, warnings: Vec<String>, sound: bool) {
    for w in warnings {
        if sound && w.starts_with("Truncating log file due to broken") {
            tracing::info!(
                dir = %log_dir.display(),
                raft_engine = %w,
                "the raft log's last file ended in a torn write from an unclean stop (kill -9, a crash, a power loss): its unwritten tail was cut, as expected; nothing acknowledged was lost (checked against raft-log.mark)"
            );
        } else {
            tracing::warn!(dir = %log_dir.display(), "raft-engine: {w}");
        }
    }
}
