//! Download tunables (limits, retry schedule, timeouts) and the CivitAI API key.

use std::fmt;
use std::time::Duration;

/// Env var holding the CivitAI API key.
pub const CIVITAI_API_KEY_ENV: &str = "CIVITAI_API_KEY";
/// Env var overriding the download size cap.
pub const MAX_DOWNLOAD_BYTES_ENV: &str = "SDXL_MAX_DOWNLOAD_BYTES";

/// A secret that never prints: `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key; `None` when empty.
    pub fn new(key: impl Into<String>) -> Option<Self> {
        let key = key.into().trim().to_string();
        (!key.is_empty()).then_some(ApiKey(key))
    }

    /// The raw key, for the `Authorization` header only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(***)")
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How downloads behave. `Default` is production; tests shrink the delays.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// Refuse downloads larger than this many bytes.
    pub max_bytes: u64,
    /// Retries after the first attempt on 429/5xx/timeouts/connection errors (consecutive
    /// failures; an attempt that made progress resets the count).
    pub max_retries: u32,
    /// First backoff delay; doubles per consecutive failure.
    pub backoff_base: Duration,
    /// Largest backoff delay.
    pub backoff_max: Duration,
    /// Largest `Retry-After` honoured.
    pub retry_after_cap: Duration,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Longest silence while reading headers or body.
    pub read_timeout: Duration,
    /// Most redirects followed.
    pub max_redirects: u32,
    /// Minimum interval between progress log events.
    pub progress_interval: Duration,
    /// `CIVITAI_API_KEY`.
    pub civitai_key: Option<ApiKey>,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            max_bytes: 20 * 1024 * 1024 * 1024,
            max_retries: 6,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            retry_after_cap: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(20),
            read_timeout: Duration::from_secs(60),
            max_redirects: 10,
            progress_interval: Duration::from_secs(2),
            civitai_key: None,
        }
    }
}

impl DownloadOptions {
    /// Defaults plus `CIVITAI_API_KEY` and `SDXL_MAX_DOWNLOAD_BYTES` from the environment.
    pub fn from_env() -> Self {
        let mut o = DownloadOptions {
            civitai_key: std::env::var(CIVITAI_API_KEY_ENV)
                .ok()
                .and_then(ApiKey::new),
            ..Self::default()
        };
        if let Ok(v) = std::env::var(MAX_DOWNLOAD_BYTES_ENV) {
            match v.trim().parse::<u64>() {
                Ok(n) if n > 0 => o.max_bytes = n,
                _ => tracing::warn!(
                    value = %v,
                    "{MAX_DOWNLOAD_BYTES_ENV} is not a positive integer; using the default cap"
                ),
            }
        }
        o
    }

    /// Backoff before retry number `failures` (1-based), honouring `Retry-After` up to the cap.
    pub fn backoff(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(ra) = retry_after {
            return ra.min(self.retry_after_cap);
        }
        let shift = failures.saturating_sub(1).min(30);
        self.backoff_base
            .saturating_mul(1u32 << shift)
            .min(self.backoff_max)
    }
}
