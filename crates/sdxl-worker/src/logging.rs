//! Logging setup. With `RUNPOD_ENDPOINT_ID` set (production) every log line on stdout is one JSON
//! object `{"requestId": <job id or null>, "message": "...", "level": "INFO"}` as the RunPod
//! console expects (runpod.md §7); otherwise human-readable lines go to stderr.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Mutex;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::EnvFilter;

/// Longest message logged in full; longer ones are cut in the middle like the runpod SDK does.
pub const MAX_MESSAGE_CHARS: usize = 4096;

static CURRENT_REQUEST: Mutex<Option<String>> = Mutex::new(None);

/// Sets (or clears) the job id attached to JSON log lines that do not name one themselves.
pub fn set_request_id(id: Option<&str>) {
    if let Ok(mut cur) = CURRENT_REQUEST.lock() {
        *cur = id.map(str::to_string);
    }
}

fn env_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Human-readable logs on stderr (one-shot mode, local API, CLI). Safe to call twice.
pub fn init_stderr() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(env_filter())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Logging for the production loop: JSON lines on stdout when `RUNPOD_ENDPOINT_ID` is set.
pub fn init_runpod() {
    if std::env::var_os("RUNPOD_ENDPOINT_ID").is_some() {
        let _ = tracing_subscriber::registry()
            .with(RunpodJsonLayer.with_filter(env_filter()))
            .try_init();
    } else {
        init_stderr();
    }
}

/// A layer writing each event as a RunPod JSON log line on stdout.
pub struct RunpodJsonLayer;

impl<S: Subscriber> Layer<S> for RunpodJsonLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let line = json_line(event);
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
    }
}

/// Renders one event as `{"requestId","message","level"}`.
pub fn json_line(event: &Event<'_>) -> String {
    let mut v = FieldCollector::default();
    event.record(&mut v);
    let request_id = v.request_id.or_else(|| {
        CURRENT_REQUEST
            .lock()
            .ok()
            .and_then(|cur| cur.as_ref().cloned())
    });
    let level = match *event.metadata().level() {
        Level::ERROR => "ERROR",
        Level::WARN => "WARN",
        Level::INFO => "INFO",
        Level::DEBUG => "DEBUG",
        Level::TRACE => "TRACE",
    };
    let mut message = v.message;
    if !v.extra.is_empty() {
        message.push_str(" |");
        message.push_str(&v.extra);
    }
    serde_json::json!({
        "requestId": request_id,
        "message": cut_middle(&message, MAX_MESSAGE_CHARS),
        "level": level,
    })
    .to_string()
}

/// Cuts an over-long message in the middle: `head...TRUNCATED n CHARACTERS...tail`.
pub fn cut_middle(s: &str, max_chars: usize) -> String {
    let n = s.chars().count();
    if n <= max_chars {
        return s.to_string();
    }
    let keep = max_chars / 2;
    let head: String = s.chars().take(keep).collect();
    let tail: String = s.chars().skip(n - keep).collect();
    format!("{head}...TRUNCATED {} CHARACTERS...{tail}", n - 2 * keep)
}

#[derive(Default)]
struct FieldCollector {
    message: String,
    request_id: Option<String>,
    extra: String,
}

impl Visit for FieldCollector {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_string(),
            "request_id" => self.request_id = Some(value.to_string()),
            name => {
                let _ = write!(self.extra, " {name}={value}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "request_id" => {
                self.request_id = Some(format!("{value:?}").trim_matches('"').to_string())
            }
            name => {
                let _ = write!(self.extra, " {name}={value:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::cut_middle;

    #[test]
    fn long_messages_are_cut_in_the_middle() {
        assert_eq!(cut_middle("short", 10), "short");
        let s = "a".repeat(10) + &"b".repeat(10);
        assert_eq!(
            cut_middle(&s, 10),
            "aaaaa...TRUNCATED 10 CHARACTERS...bbbbb"
        );
    }
}
