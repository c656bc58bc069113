//! The heartbeat (runpod.md §4): a dedicated OS thread with its own runtime, so GPU work can never
//! delay it, pinging `RUNPOD_WEBHOOK_PING` with the in-progress job ids.

use super::client::user_agent;
use super::config::RunpodConfig;
use super::InProgress;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A running heartbeat; stops (and joins) on [`Heartbeat::stop`] or drop.
pub struct Heartbeat {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Heartbeat {
    /// Starts pinging if the configuration has a ping URL; `None` otherwise.
    pub fn start(cfg: Arc<RunpodConfig>, in_progress: InProgress) -> anyhow::Result<Option<Self>> {
        if cfg.ping_url.is_none() {
            tracing::info!(
                "no heartbeat: RUNPOD_WEBHOOK_PING, RUNPOD_AI_API_KEY or RUNPOD_POD_ID is not set"
            );
            return Ok(None);
        }
        let mut headers = HeaderMap::new();
        let mut key = HeaderValue::from_str(&cfg.api_key)?;
        key.set_sensitive(true);
        headers.insert(AUTHORIZATION, key);
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .user_agent(user_agent())
            .build()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("runpod-heartbeat".into())
            .spawn(move || runtime.block_on(ping_loop(cfg, in_progress, http, stop_flag)))?;
        Ok(Some(Self {
            stop,
            thread: Some(thread),
        }))
    }

    /// Stops the thread after its current ping.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.shutdown();
    }
}

async fn ping_loop(
    cfg: Arc<RunpodConfig>,
    in_progress: InProgress,
    http: reqwest::Client,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        let ids = super::in_progress_ids(&in_progress);
        if let Some(url) = cfg.ping_request_url(&ids) {
            let reply = http.get(url).timeout(cfg.ping_interval * 2).send().await;
            match reply {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => tracing::warn!("heartbeat answered HTTP {}", r.status()),
                Err(e) => tracing::warn!("heartbeat failed: {e}"),
            }
        }
        let until = Instant::now() + cfg.ping_interval;
        while !stop.load(Ordering::SeqCst) && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
