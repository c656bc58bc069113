//! The production RunPod serverless loop (SPEC §2, research runpod.md §1–§7 and §12): take jobs
//! by long-poll, run them on a blocking thread, post progress and exactly one final result
//! through one ordered outbox per job, heartbeat on its own thread, honour the stop channel and
//! SIGTERM.

pub mod client;
pub mod config;
pub mod heartbeat;
mod jobs;

pub use client::{RunpodClient, TakeReply};
pub use config::RunpodConfig;

use crate::handler::{self, CancelFlag, JobHandler};
use crate::logging;
use heartbeat::Heartbeat;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Ids of taken-but-unfinished jobs, in take order, shared with the heartbeat thread.
pub type InProgress = Arc<Mutex<BTreeMap<u64, String>>>;

/// Cancel flags of running jobs by id, shared with the stop channel.
type Cancels = Arc<Mutex<HashMap<String, CancelFlag>>>;

/// The ids currently in progress, in take order.
pub fn in_progress_ids(in_progress: &InProgress) -> Vec<String> {
    in_progress
        .lock()
        .map(|m| m.values().cloned().collect())
        .unwrap_or_default()
}

/// How long a job may still run after the grace period before the loop stops waiting for it
/// (a job stuck where it cannot see its cancel flag, e.g. in a download).
pub const HARD_STOP_MARGIN: Duration = Duration::from_secs(5);

/// Requests a graceful stop: the pending take is abandoned, a running job finishes and is posted;
/// once the grace period is over the job is cancelled and posted as `CANCELLED`.
#[derive(Debug, Clone)]
pub struct Shutdown {
    stop: Arc<watch::Sender<bool>>,
    grace_over: Arc<watch::Sender<bool>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self {
            stop: Arc::new(watch::channel(false).0),
            grace_over: Arc::new(watch::channel(false).0),
        }
    }
}

impl Shutdown {
    /// A handle that has not been triggered.
    pub fn new() -> Self {
        Self::default()
    }
    /// Triggers the shutdown.
    pub fn trigger(&self) {
        self.stop.send_replace(true);
    }
    /// True once triggered.
    pub fn is_triggered(&self) -> bool {
        *self.stop.borrow()
    }
    /// Resolves once triggered.
    pub async fn wait(&self) {
        let mut rx = self.stop.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }
    /// Marks the grace period as over (running jobs are being cancelled).
    pub fn end_grace(&self) {
        self.grace_over.send_replace(true);
    }
    /// True once the grace period is over.
    pub fn grace_is_over(&self) -> bool {
        *self.grace_over.borrow()
    }
    /// Resolves once the grace period is over.
    pub async fn wait_grace_over(&self) {
        let mut rx = self.grace_over.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }
}

/// The production RunPod serverless loop (configured from the RUNPOD_* environment).
pub fn run_serve(models_toml: Option<&Path>) -> anyhow::Result<ExitCode> {
    logging::init_runpod();
    let cfg = RunpodConfig::from_env()?;
    tracing::info!(
        "--- Starting sdxl-worker {} (RunPod protocol {}) ---",
        env!("CARGO_PKG_VERSION"),
        cfg.runpod_version
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let shutdown = Shutdown::new();
    let models_toml = models_toml.map(Path::to_path_buf);
    let served = runtime.block_on(async {
        // Signals are handled from the start: a SIGTERM while models load (or download) stops
        // the worker cleanly before it takes any job.
        spawn_signal_listener(shutdown.clone());
        // Models load before the first take and the first ping.
        let load =
            tokio::task::spawn_blocking(move || handler::load_handler(models_toml.as_deref()));
        let handler = tokio::select! {
            loaded = load => loaded??,
            _ = shutdown.wait() => {
                tracing::info!("stopped while loading models; no job was taken");
                return Ok(());
            }
        };
        serve(cfg, handler, shutdown).await
    });
    // A job or load thread stuck past the grace period (e.g. in a download) must not hold the
    // exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    served?;
    tracing::info!("worker stopped");
    Ok(ExitCode::SUCCESS)
}

fn spawn_signal_listener(shutdown: Shutdown) {
    tokio::spawn(async move {
        crate::signals::termination().await;
        shutdown.trigger();
    });
}

/// Runs the loop until `shutdown` is triggered (or after one job with `refresh_worker`).
/// Call from a multi-threaded tokio runtime; the handler runs on blocking threads.
pub async fn serve(
    cfg: RunpodConfig,
    handler: Arc<dyn JobHandler>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let client = RunpodClient::new(cfg.clone())?;
    let in_progress: InProgress = Arc::default();
    let cancels: Cancels = Arc::default();
    let heartbeat = Heartbeat::start(cfg.clone(), in_progress.clone())?;
    let stop_task = cfg.stop_url.clone().map(|url| {
        tokio::spawn(stop_loop(
            client.clone(),
            url,
            cancels.clone(),
            shutdown.clone(),
        ))
    });
    let grace_task = tokio::spawn(end_grace_after(
        shutdown.clone(),
        cfg.shutdown_grace,
        cancels.clone(),
    ));
    let ctx = jobs::JobContext {
        client: client.clone(),
        handler,
        in_progress,
        cancels,
        next_seq: Arc::default(),
        shutdown: shutdown.clone(),
    };
    let mut backoff = cfg.backoff_initial;
    'outer: while !shutdown.is_triggered() {
        let started = Instant::now();
        let reply = tokio::select! {
            r = client.take() => r,
            _ = shutdown.wait() => break,
        };
        let wait = match reply {
            TakeReply::Jobs(list) => {
                backoff = cfg.backoff_initial;
                let mut answered = 0;
                for job in list {
                    if jobs::process(&ctx, job).await {
                        answered += 1;
                    }
                    if cfg.refresh_worker {
                        tracing::info!("refresh_worker is set: exiting after this job");
                        break 'outer;
                    }
                }
                if answered == 0 {
                    // Only junk without a job id: wait like "no job" (never a hot loop).
                    cfg.min_take_interval.saturating_sub(started.elapsed())
                } else {
                    Duration::ZERO
                }
            }
            TakeReply::NoJob => {
                backoff = cfg.backoff_initial;
                cfg.min_take_interval.saturating_sub(started.elapsed())
            }
            TakeReply::TooManyRequests => {
                tracing::info!(
                    "take answered 429; waiting {:?}",
                    cfg.too_many_requests_wait
                );
                cfg.too_many_requests_wait
            }
            TakeReply::Failed(why) => {
                let wait = backoff;
                tracing::warn!("failed to get a job: {why}; retrying in {wait:?}");
                backoff = (backoff * 2).min(cfg.backoff_max);
                wait
            }
        };
        if !wait.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait() => break,
            }
        }
    }
    if let Some(t) = stop_task {
        t.abort();
    }
    grace_task.abort();
    if let Some(h) = heartbeat {
        tokio::task::spawn_blocking(move || h.stop()).await?;
    }
    Ok(())
}

/// Once a shutdown is triggered, waits `grace`, then ends the grace period and cancels every
/// running job (each is then posted as `CANCELLED`).
async fn end_grace_after(shutdown: Shutdown, grace: Duration, cancels: Cancels) {
    shutdown.wait().await;
    tokio::time::sleep(grace).await;
    tracing::warn!("the shutdown grace period of {grace:?} is over: cancelling the running job");
    shutdown.end_grace();
    if let Ok(map) = cancels.lock() {
        for flag in map.values() {
            flag.cancel();
        }
    }
}

/// Long-polls the stop channel and cancels running jobs it names.
async fn stop_loop(client: RunpodClient, url: String, cancels: Cancels, shutdown: Shutdown) {
    use client::StopReply;
    let cfg = client.config().clone();
    let mut unsupported_logged = false;
    while !shutdown.is_triggered() {
        let started = Instant::now();
        let wait = match client.poll_stop(&url).await {
            StopReply::Stop(ids) => {
                if let Ok(map) = cancels.lock() {
                    for id in &ids {
                        if let Some(flag) = map.get(id) {
                            tracing::info!(request_id = %id, "stop requested by RunPod; cancelling");
                            flag.cancel();
                        }
                    }
                }
                Duration::ZERO
            }
            StopReply::Nothing => cfg.min_take_interval.saturating_sub(started.elapsed()),
            StopReply::TooManyRequests => cfg.too_many_requests_wait,
            StopReply::Unsupported => {
                if !unsupported_logged {
                    tracing::info!("the stop channel is not served here; polling it rarely");
                    unsupported_logged = true;
                }
                cfg.stop_unsupported_wait
            }
            StopReply::Failed(why) => {
                tracing::debug!("stop channel poll failed: {why}");
                cfg.stop_error_wait
            }
        };
        if !wait.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait() => break,
            }
        }
    }
}
