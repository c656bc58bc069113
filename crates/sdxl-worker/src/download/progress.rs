//! Download progress reporting: a small trait so the worker logs, the CLI draws a bar and tests
//! record.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Receives progress of one download.
pub trait DownloadProgress: Send + Sync {
    /// A transfer starts (or resumes at `resumed_from` bytes); `total` when the server says.
    fn started(&self, name: &str, total: Option<u64>, resumed_from: u64);
    /// `downloaded` bytes of the file are now on disk.
    fn advanced(&self, name: &str, downloaded: u64, total: Option<u64>);
    /// The file is verified and in place.
    fn finished(&self, name: &str, path: &Path, bytes: u64);
}

/// Ignores progress.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl DownloadProgress for NoProgress {
    fn started(&self, _: &str, _: Option<u64>, _: u64) {}
    fn advanced(&self, _: &str, _: u64, _: Option<u64>) {}
    fn finished(&self, _: &str, _: &Path, _: u64) {}
}

/// Logs `tracing` events with bytes and rate, at most once per interval.
#[derive(Debug)]
pub struct TracingProgress {
    interval: Duration,
    state: Mutex<Option<(Instant, Instant, u64)>>,
}

impl TracingProgress {
    /// Logs at most every `interval` (the worker uses 2 s).
    pub fn new(interval: Duration) -> Self {
        TracingProgress {
            interval,
            state: Mutex::new(None),
        }
    }
}

impl Default for TracingProgress {
    fn default() -> Self {
        Self::new(Duration::from_secs(2))
    }
}

impl DownloadProgress for TracingProgress {
    fn started(&self, name: &str, total: Option<u64>, resumed_from: u64) {
        let now = Instant::now();
        if let Ok(mut s) = self.state.lock() {
            *s = Some((now, now, resumed_from));
        }
        tracing::info!(model = name, total_bytes = ?total, resumed_from, "download started");
    }

    fn advanced(&self, name: &str, downloaded: u64, total: Option<u64>) {
        let Ok(mut guard) = self.state.lock() else {
            return;
        };
        let now = Instant::now();
        let (start, last, from) = guard.unwrap_or((now, now, 0));
        if now.duration_since(last) < self.interval {
            return;
        }
        *guard = Some((start, now, from));
        let secs = now.duration_since(start).as_secs_f64().max(1e-3);
        let rate_mib_s = downloaded.saturating_sub(from) as f64 / secs / (1024.0 * 1024.0);
        let percent = total
            .filter(|t| *t > 0)
            .map(|t| (downloaded as f64 * 100.0 / t as f64).round());
        tracing::info!(
            model = name,
            downloaded_bytes = downloaded,
            total_bytes = ?total,
            percent = ?percent,
            rate_mib_s = format_args!("{rate_mib_s:.1}"),
            "downloading"
        );
    }

    fn finished(&self, name: &str, path: &Path, bytes: u64) {
        let elapsed = self
            .state
            .lock()
            .ok()
            .and_then(|s| s.map(|(start, _, _)| start.elapsed()));
        tracing::info!(model = name, path = %path.display(), bytes, elapsed = ?elapsed, "download finished");
    }
}
