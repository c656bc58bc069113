//! The HTTP side of the protocol: taking jobs, posting progress and results (with retries and
//! the 4xx fallback), stop-channel polls. Wire details follow runpod.md §2–§5 and §12.

use super::config::RunpodConfig;
use crate::error::ErrorCode;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;

/// Timeout of one progress post.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(10);

/// What one take request yielded.
#[derive(Debug)]
pub enum TakeReply {
    /// One or more job objects (a JSON object, or each element of a JSON array).
    Jobs(Vec<Value>),
    /// 204 or 400: nothing to do.
    NoJob,
    /// 429: wait before the next take.
    TooManyRequests,
    /// Anything else (transport error, other status, unusable body): back off.
    Failed(String),
}

/// Outcome of posting one body.
#[derive(Debug, PartialEq, Eq)]
pub enum PostOutcome {
    /// 2xx.
    Accepted,
    /// 4xx: the body was rejected; retrying the same body is pointless.
    Rejected(u16),
    /// 5xx or a transport error: worth retrying.
    Retryable(String),
}

/// A RunPod HTTP client bound to one worker configuration.
#[derive(Debug, Clone)]
pub struct RunpodClient {
    http: reqwest::Client,
    cfg: std::sync::Arc<RunpodConfig>,
}

/// The `User-Agent` of every request.
pub fn user_agent() -> String {
    format!(
        "sdxl-worker/{} ({}; {})",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

impl RunpodClient {
    /// Builds the client (raw `Authorization` header, our `User-Agent`).
    pub fn new(cfg: std::sync::Arc<RunpodConfig>) -> anyhow::Result<Self> {
        let mut headers = HeaderMap::new();
        if !cfg.api_key.is_empty() {
            let mut v = HeaderValue::from_str(&cfg.api_key)
                .map_err(|_| anyhow::anyhow!("RUNPOD_AI_API_KEY is not a valid header value"))?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(user_agent())
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self { http, cfg })
    }

    /// The configuration.
    pub fn config(&self) -> &RunpodConfig {
        &self.cfg
    }

    /// One long-poll GET (take or stop channel) with the take timeout.
    async fn long_poll(&self, url: reqwest::Url) -> Polled {
        let reply = self
            .http
            .get(url)
            .header(CONTENT_TYPE, "application/json")
            .timeout(self.cfg.take_timeout)
            .send()
            .await;
        let resp = match reply {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return Polled::TimedOut,
            Err(e) => return Polled::Failed(format!("request failed: {e}")),
        };
        let status = resp.status();
        if status == StatusCode::NO_CONTENT || !status.is_success() {
            return Polled::Status(status);
        }
        match resp.bytes().await {
            Ok(b) => Polled::Body(b.to_vec()),
            Err(e) if e.is_timeout() => Polled::TimedOut,
            Err(e) => Polled::Failed(format!("reading the reply failed: {e}")),
        }
    }

    /// One long-poll take request.
    pub async fn take(&self) -> TakeReply {
        let Some(url) = self.cfg.take_request_url(false) else {
            return TakeReply::Failed("take URL is invalid".into());
        };
        match self.long_poll(url).await {
            Polled::TimedOut => TakeReply::NoJob,
            Polled::Failed(why) => TakeReply::Failed(format!("take {why}")),
            Polled::Status(StatusCode::NO_CONTENT | StatusCode::BAD_REQUEST) => TakeReply::NoJob,
            Polled::Status(StatusCode::TOO_MANY_REQUESTS) => TakeReply::TooManyRequests,
            Polled::Status(s) => TakeReply::Failed(format!("take answered HTTP {s}")),
            Polled::Body(body) => parse_take_body(&body),
        }
    }

    /// Posts a progress update (one attempt; failures are only logged).
    pub async fn post_progress(&self, job_id: &str, output: &Value) {
        let body = serde_json::json!({"status": "IN_PROGRESS", "output": output}).to_string();
        // Short timeout: a stuck progress post must not hold back the final result for long.
        let timeout = self.cfg.post_timeout.min(PROGRESS_TIMEOUT);
        match self.post(job_id, body, timeout).await {
            PostOutcome::Accepted => {}
            other => {
                tracing::warn!(request_id = %job_id, "progress update not accepted: {other:?}")
            }
        }
    }

    /// Posts the final body, retrying 5xx/transport errors with exponential backoff and jitter
    /// for up to `result_retry_budget`; a 4xx is followed by one short error post. Returns
    /// whether the original body was accepted.
    pub async fn post_final(&self, job_id: &str, body: String) -> bool {
        let started = std::time::Instant::now();
        let mut step = self.cfg.result_retry_initial;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match self.post(job_id, body.clone(), self.cfg.post_timeout).await {
                PostOutcome::Accepted => return true,
                PostOutcome::Rejected(status) => {
                    tracing::error!(request_id = %job_id, "RunPod rejected the result (HTTP {status}); sending a short error instead");
                    let code = if status == 400 || status == 413 {
                        ErrorCode::ResultTooLarge
                    } else {
                        ErrorCode::Internal
                    };
                    let fallback = serde_json::json!({
                        "error": format!("result rejected by RunPod (HTTP {status}), likely over the size limit"),
                        "output": {"code": code},
                    });
                    if self
                        .post(job_id, fallback.to_string(), self.cfg.post_timeout)
                        .await
                        != PostOutcome::Accepted
                    {
                        tracing::error!(request_id = %job_id, "the short error result was not accepted either");
                    }
                    return false;
                }
                PostOutcome::Retryable(why) => {
                    let wait = jittered(step);
                    if started.elapsed() + wait > self.cfg.result_retry_budget {
                        tracing::error!(request_id = %job_id, "giving up posting the result after {attempt} attempts over {:?}: {why}", started.elapsed());
                        return false;
                    }
                    tracing::warn!(request_id = %job_id, "posting the result failed ({why}), attempt {attempt}; retrying in {wait:?}");
                    tokio::time::sleep(wait).await;
                    step = (step * 2).min(self.cfg.result_retry_max_delay);
                }
            }
        }
    }

    async fn post(&self, job_id: &str, body: String, timeout: Duration) -> PostOutcome {
        let Some(url) = self.cfg.output_url(job_id) else {
            return PostOutcome::Rejected(0);
        };
        let Ok(request_id) = HeaderValue::from_str(job_id) else {
            return PostOutcome::Rejected(0);
        };
        let reply = self
            .http
            .post(url)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header("X-Request-ID", request_id)
            .timeout(timeout)
            .body(body)
            .send()
            .await;
        match reply {
            Ok(r) if r.status().is_success() => PostOutcome::Accepted,
            Ok(r) if r.status().is_server_error() => {
                PostOutcome::Retryable(format!("HTTP {}", r.status()))
            }
            Ok(r) => PostOutcome::Rejected(r.status().as_u16()),
            Err(e) => PostOutcome::Retryable(e.to_string()),
        }
    }

    /// One stop-channel long-poll.
    pub async fn poll_stop(&self, url: &str) -> StopReply {
        let Ok(url) = reqwest::Url::parse(url) else {
            return StopReply::Failed("stop URL is invalid".into());
        };
        match self.long_poll(url).await {
            Polled::TimedOut | Polled::Status(StatusCode::NO_CONTENT) => StopReply::Nothing,
            Polled::Failed(why) => StopReply::Failed(why),
            Polled::Status(StatusCode::TOO_MANY_REQUESTS) => StopReply::TooManyRequests,
            Polled::Status(StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED) => {
                StopReply::Unsupported
            }
            Polled::Status(s) => StopReply::Failed(format!("HTTP {s}")),
            Polled::Body(body) => parse_stop_body(&body),
        }
    }
}

/// A wait of 50–100 % of `step` (jitter keeps many workers from retrying in lockstep).
fn jittered(step: Duration) -> Duration {
    let fraction = 0.5 + 0.5 * (crate::ids::random_seed() as f64 / f64::from(u32::MAX));
    step.mul_f64(fraction.min(1.0))
}

/// What one long-poll GET yielded.
enum Polled {
    /// The request or the body timed out (a long poll that ended empty).
    TimedOut,
    /// 204 or a non-success status.
    Status(StatusCode),
    /// A 2xx body.
    Body(Vec<u8>),
    /// A transport error.
    Failed(String),
}

/// Parses a 200 take body: a job object or a list of them.
pub fn parse_take_body(body: &[u8]) -> TakeReply {
    if body.iter().all(u8::is_ascii_whitespace) {
        return TakeReply::Failed("take answered 200 with an empty body".into());
    }
    match serde_json::from_slice::<Value>(body) {
        // `[]` and `{}` carry no job: wait as for 204 (never a hot loop).
        Ok(Value::Array(jobs)) if jobs.is_empty() => TakeReply::NoJob,
        Ok(Value::Object(o)) if o.is_empty() => TakeReply::NoJob,
        Ok(Value::Array(jobs)) => TakeReply::Jobs(jobs),
        Ok(job @ Value::Object(_)) => TakeReply::Jobs(vec![job]),
        Ok(other) => TakeReply::Failed(format!(
            "take answered 200 with JSON that is not a job: {}",
            crate::job::describe(&other)
        )),
        Err(e) => TakeReply::Failed(format!("take answered 200 with invalid JSON: {e}")),
    }
}

/// What one stop-channel poll yielded.
#[derive(Debug, PartialEq, Eq)]
pub enum StopReply {
    /// Job ids to stop (non-string entries already dropped).
    Stop(Vec<String>),
    /// 204, timeout or an empty list.
    Nothing,
    /// 429.
    TooManyRequests,
    /// 404/405: the platform does not serve the stop channel.
    Unsupported,
    /// Anything else.
    Failed(String),
}

/// Parses `{"jobsToStop": [ids]}`.
pub fn parse_stop_body(body: &[u8]) -> StopReply {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return StopReply::Failed("stop channel answered invalid JSON".into());
    };
    let Some(list) = v.get("jobsToStop").and_then(Value::as_array) else {
        return StopReply::Nothing;
    };
    let mut ids = Vec::new();
    for item in list {
        match item.as_str() {
            Some(id) => ids.push(id.to_string()),
            None => tracing::warn!("ignoring a non-string job id in jobsToStop: {item}"),
        }
    }
    if ids.is_empty() {
        StopReply::Nothing
    } else {
        StopReply::Stop(ids)
    }
}
