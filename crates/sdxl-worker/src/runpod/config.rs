//! Configuration of the production loop from the `RUNPOD_*` environment (runpod.md §1), with
//! every interval and timeout adjustable so tests run in seconds.

use crate::upload::BlockingUploader;
use anyhow::Context as _;
use reqwest::Url;
use std::sync::Arc;
use std::time::Duration;

/// Default cap on the serialized result body (SPEC §4): 9 MB, below RunPod's 10 MB `/run` limit.
pub const DEFAULT_MAX_RESULT_BYTES: usize = 9_000_000;
/// Value sent as `runpod_version` in heartbeats (the runpod SDK version whose protocol we speak).
pub const RUNPOD_PROTOCOL_VERSION: &str = "1.12.0";

/// Everything the loop needs to talk to RunPod.
#[derive(Debug, Clone)]
pub struct RunpodConfig {
    /// Take URL with placeholders replaced (`job_in_progress` is appended per request).
    pub take_url: String,
    /// Result URL template: `$RUNPOD_POD_ID` replaced; `$ID` is replaced by the job id per post.
    pub output_url_template: String,
    /// Heartbeat URL (placeholders replaced); `None` disables pings.
    pub ping_url: Option<String>,
    /// Stop-channel URL (`/job-take/` → `/job-stop/`); `None` when the take URL has no `/job-take/`.
    pub stop_url: Option<String>,
    /// Sent verbatim as `Authorization` (no `Bearer`).
    pub api_key: String,
    /// This worker's id (`RUNPOD_POD_ID`).
    pub worker_id: String,
    /// `runpod_version` query value of heartbeats.
    pub runpod_version: String,
    /// Heartbeat period.
    pub ping_interval: Duration,
    /// Client timeout of the take and stop long-polls (90 s).
    pub take_timeout: Duration,
    /// Wait after a 429 from the take or stop endpoint (5 s).
    pub too_many_requests_wait: Duration,
    /// First wait after a failed take; doubles up to `backoff_max`, reset by any good reply.
    pub backoff_initial: Duration,
    /// Longest wait between failed takes.
    pub backoff_max: Duration,
    /// A take that answers "no job" faster than this is followed by a pause (no hot loop).
    pub min_take_interval: Duration,
    /// First wait before retrying a final result post (5xx and connection errors); doubles per
    /// attempt up to `result_retry_max_delay`, with jitter (each wait is 50–100 % of the step).
    pub result_retry_initial: Duration,
    /// Longest wait between result-post attempts.
    pub result_retry_max_delay: Duration,
    /// How long a final result keeps being retried (`SDXL_RESULT_RETRY_S`, 300 s).
    pub result_retry_budget: Duration,
    /// After SIGTERM, how long the running job may take before it is cancelled and posted as
    /// `CANCELLED` (`SDXL_SHUTDOWN_GRACE_S`, 20 s).
    pub shutdown_grace: Duration,
    /// Timeout of one result/progress post.
    pub post_timeout: Duration,
    /// Largest serialized result body; bigger results become `RESULT_TOO_LARGE` errors.
    pub max_result_bytes: usize,
    /// Wait after a stop-channel error or an empty stop list.
    pub stop_error_wait: Duration,
    /// Wait after the stop channel answered 404/405 (not supported here).
    pub stop_unsupported_wait: Duration,
    /// Add `"stopPod": true` to every result and exit after the first job (`SDXL_REFRESH_WORKER`).
    pub refresh_worker: bool,
    /// The result bucket (`BUCKET_*`, SPEC §4): results go there when a job asks or when they
    /// would exceed `max_result_bytes`. `None`: no bucket.
    pub uploader: Option<Arc<BlockingUploader>>,
}

impl RunpodConfig {
    /// Production defaults around the given URLs (already substituted).
    pub fn new(take_url: String, output_url_template: String, worker_id: String) -> Self {
        let stop_url = stop_url_for(&take_url);
        Self {
            take_url,
            output_url_template,
            ping_url: None,
            stop_url,
            api_key: String::new(),
            worker_id,
            runpod_version: RUNPOD_PROTOCOL_VERSION.to_string(),
            ping_interval: Duration::from_secs(10),
            take_timeout: Duration::from_secs(90),
            too_many_requests_wait: Duration::from_secs(5),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            min_take_interval: Duration::from_millis(500),
            result_retry_initial: Duration::from_secs(1),
            result_retry_max_delay: Duration::from_secs(30),
            result_retry_budget: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(20),
            post_timeout: Duration::from_secs(120),
            max_result_bytes: DEFAULT_MAX_RESULT_BYTES,
            stop_error_wait: Duration::from_secs(1),
            stop_unsupported_wait: Duration::from_secs(300),
            refresh_worker: false,
            uploader: None,
        }
    }

    /// Reads the process environment.
    pub fn from_env() -> anyhow::Result<Self> {
        let mut cfg = Self::from_vars(|k| std::env::var(k).ok())?;
        cfg.uploader = crate::delivery::uploader_from_env()?;
        Ok(cfg)
    }

    /// Reads configuration through `get` (the environment in production, a map in tests).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let worker_id = get("RUNPOD_POD_ID").filter(|s| !s.is_empty());
        let pod_known = worker_id.is_some();
        let worker_id =
            worker_id.unwrap_or_else(|| format!("local-{:08x}", crate::ids::random_seed()));
        let take = get("RUNPOD_WEBHOOK_GET_JOB").context("RUNPOD_WEBHOOK_GET_JOB is not set")?;
        let output =
            get("RUNPOD_WEBHOOK_POST_OUTPUT").context("RUNPOD_WEBHOOK_POST_OUTPUT is not set")?;
        let take_url = substitute_worker(&take, &worker_id);
        Url::parse(&take_url)
            .with_context(|| format!("RUNPOD_WEBHOOK_GET_JOB is not a URL: {take_url}"))?;
        let output_url_template = output.replace("$RUNPOD_POD_ID", &worker_id);
        Url::parse(&output_url_template.replace("$ID", "x"))
            .with_context(|| format!("RUNPOD_WEBHOOK_POST_OUTPUT is not a URL: {output}"))?;
        let mut cfg = Self::new(take_url, output_url_template, worker_id.clone());
        cfg.api_key = get("RUNPOD_AI_API_KEY").unwrap_or_default();
        cfg.ping_url = get("RUNPOD_WEBHOOK_PING")
            .filter(|p| !p.is_empty() && p != "PING_NOT_SET")
            .filter(|_| pod_known && !cfg.api_key.is_empty())
            .map(|p| substitute_worker(&p, &worker_id))
            .filter(|p| Url::parse(p).is_ok());
        if let Some(ms) = get("RUNPOD_PING_INTERVAL").and_then(|v| v.trim().parse::<u64>().ok()) {
            cfg.ping_interval = Duration::from_millis(ms.max(1000));
        }
        if let Some(bytes) = get("SDXL_MAX_RESULT_BYTES") {
            cfg.max_result_bytes = bytes
                .trim()
                .parse()
                .with_context(|| format!("SDXL_MAX_RESULT_BYTES is not a byte count: {bytes}"))?;
        }
        if let Some(ms) = get("SDXL_TAKE_TIMEOUT_MS").and_then(|v| v.trim().parse::<u64>().ok()) {
            cfg.take_timeout = Duration::from_millis(ms.max(100));
        }
        if let Some(s) = get("SDXL_RESULT_RETRY_S") {
            cfg.result_retry_budget = seconds("SDXL_RESULT_RETRY_S", &s)?;
        }
        if let Some(s) = get("SDXL_SHUTDOWN_GRACE_S") {
            cfg.shutdown_grace = seconds("SDXL_SHUTDOWN_GRACE_S", &s)?;
        }
        cfg.refresh_worker = get("SDXL_REFRESH_WORKER").is_some_and(|v| {
            matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes")
        });
        Ok(cfg)
    }

    /// The take URL of one request (`job_in_progress` appended).
    pub fn take_request_url(&self, job_in_progress: bool) -> Option<Url> {
        let mut url = Url::parse(&self.take_url).ok()?;
        url.query_pairs_mut()
            .append_pair("job_in_progress", if job_in_progress { "1" } else { "0" });
        Some(url)
    }

    /// The result URL of a job (`$ID` replaced verbatim, `isStream=false` appended).
    pub fn output_url(&self, job_id: &str) -> Option<Url> {
        let mut url = Url::parse(&self.output_url_template.replace("$ID", job_id)).ok()?;
        url.query_pairs_mut().append_pair("isStream", "false");
        Some(url)
    }

    /// The heartbeat URL listing the in-progress job ids.
    pub fn ping_request_url(&self, job_ids: &[String]) -> Option<Url> {
        let mut url = Url::parse(self.ping_url.as_deref()?).ok()?;
        {
            let mut q = url.query_pairs_mut();
            if !job_ids.is_empty() {
                q.append_pair("job_id", &job_ids.join(","));
            }
            q.append_pair("runpod_version", &self.runpod_version);
        }
        Some(url)
    }
}

/// A whole number of seconds from an environment variable.
fn seconds(name: &str, value: &str) -> anyhow::Result<Duration> {
    value
        .trim()
        .parse::<u64>()
        .map(Duration::from_secs)
        .with_context(|| format!("{name} is not a whole number of seconds: {value}"))
}

/// Replaces both `$RUNPOD_POD_ID` and `$ID` with the worker id (take, ping and stop templates).
pub fn substitute_worker(template: &str, worker_id: &str) -> String {
    template
        .replace("$RUNPOD_POD_ID", worker_id)
        .replace("$ID", worker_id)
}

/// The stop-channel URL of a take URL, if it has a `/job-take/` segment.
pub fn stop_url_for(take_url: &str) -> Option<String> {
    take_url
        .contains("/job-take/")
        .then(|| take_url.replacen("/job-take/", "/job-stop/", 1))
}
