//! Job bookkeeping of the local API: the store of jobs by id, the single background runner that
//! executes them one at a time, and result expiry.

use crate::catalog::Catalog;
use crate::delivery;
use crate::error::{ErrorCode, WorkerError};
use crate::handler::{self, CancelFlag, JobHandler};
use crate::job::ValidatedJob;
use crate::protocol::JobOutput;
use crate::upload::{BlockingUploader, Secret};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// Tunables of the local API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// How long finished results stay readable (30 min).
    pub result_ttl: Duration,
    /// Largest accepted request body (42 MiB: one 30 MB init image in base64, SPEC §13).
    pub body_limit: usize,
    /// `/runsync` wait when the request gives no `?wait=` (90 s).
    pub default_runsync_wait: Duration,
    /// Longest `/runsync` wait a request may ask for (5 min).
    pub max_runsync_wait: Duration,
    /// Most jobs waiting in the queue; more are answered 429.
    pub max_queued: usize,
    /// Largest result body of a RunPod-route job (`SDXL_MAX_RESULT_BYTES`, SPEC §4); the A1111
    /// routes have no cap.
    pub max_result_bytes: usize,
    /// The result bucket of the RunPod routes (`BUCKET_*`); `None`: no bucket.
    pub uploader: Option<Arc<BlockingUploader>>,
    /// Bearer token every route but `/health` requires (`SDXL_API_TOKEN`); `None`: open.
    pub api_token: Option<Secret>,
    /// Most job records kept; beyond it the oldest finished ones are dropped (1000).
    pub max_records: usize,
    /// Most bytes of stored results (serialized outputs and errors); beyond it the oldest
    /// finished records are dropped (512 MiB).
    pub max_record_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            result_ttl: Duration::from_secs(30 * 60),
            body_limit: 42 << 20,
            default_runsync_wait: Duration::from_secs(90),
            max_runsync_wait: Duration::from_secs(300),
            max_queued: 1000,
            max_result_bytes: crate::runpod::config::DEFAULT_MAX_RESULT_BYTES,
            uploader: None,
            api_token: None,
            max_records: 1000,
            max_record_bytes: 512 << 20,
        }
    }
}

/// Where a job is.
#[derive(Debug, Clone, PartialEq)]
pub enum JobState {
    /// Waiting for the runner.
    InQueue,
    /// Running; the latest progress payload, if any.
    InProgress(Option<Value>),
    /// Done.
    Completed(Box<JobOutput>),
    /// Failed (including validation failures).
    Failed(WorkerError),
    /// Cancelled through `/cancel/{id}`.
    Cancelled,
}

impl JobState {
    /// True for the terminal states.
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Completed(_) | Self::Failed(_) | Self::Cancelled)
    }

    /// The RunPod status word.
    pub fn status_word(&self) -> &'static str {
        match self {
            Self::InQueue => "IN_QUEUE",
            Self::InProgress(_) => "IN_PROGRESS",
            Self::Completed(_) => "COMPLETED",
            Self::Failed(_) => "FAILED",
            Self::Cancelled => "CANCELLED",
        }
    }
}

struct JobRecord {
    state: watch::Sender<JobState>,
    cancel: CancelFlag,
    created: Instant,
    started: Option<Instant>,
    finished: Option<Instant>,
    /// Stored size of the final state (0 until final).
    bytes: usize,
}

/// Progress of the running job, for `/sdapi/v1/progress`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CurrentProgress {
    /// Job id.
    pub id: String,
    /// Steps done.
    pub step: u32,
    /// Steps in total.
    pub total: u32,
}

struct Queued {
    id: String,
    job: ValidatedJob,
    /// A RunPod-route job: its result goes through `delivery::finish_output` (cap, upload).
    runpod_route: bool,
}

/// Shared state of the API server.
pub struct ApiState {
    /// The handler jobs run on.
    pub handler: Arc<dyn JobHandler>,
    /// Tunables.
    pub config: ApiConfig,
    jobs: Mutex<HashMap<String, JobRecord>>,
    queue: mpsc::UnboundedSender<Queued>,
    current: Mutex<Option<CurrentProgress>>,
    checkpoint: Mutex<Option<String>>,
    /// Options set through `POST /sdapi/v1/options` (every key a client sends).
    options: Mutex<serde_json::Map<String, Value>>,
}

/// Bytes counted for a finished record besides its output or error text.
const RECORD_BASE_BYTES: usize = 256;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ApiState {
    /// Creates the state and starts the background runner (needs a tokio runtime).
    pub fn start(handler: Arc<dyn JobHandler>, config: ApiConfig) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(Self {
            handler,
            config,
            jobs: Mutex::default(),
            queue: tx,
            current: Mutex::default(),
            checkpoint: Mutex::default(),
            options: Mutex::default(),
        });
        tokio::spawn(runner(Arc::downgrade(&state), rx));
        state
    }

    /// The checkpoint chosen through `/sdapi/v1/options` (default for jobs naming none).
    pub fn selected_checkpoint(&self) -> Option<String> {
        lock(&self.checkpoint).clone()
    }

    /// Selects the checkpoint for jobs naming none.
    pub fn select_checkpoint(&self, name: String) {
        *lock(&self.checkpoint) = Some(name);
    }

    /// The options stored through `POST /sdapi/v1/options`.
    pub fn stored_options(&self) -> serde_json::Map<String, Value> {
        lock(&self.options).clone()
    }

    /// Stores options (a later value of a key replaces the earlier one).
    pub fn store_options(&self, options: &serde_json::Map<String, Value>) {
        let mut stored = lock(&self.options);
        for (k, v) in options {
            stored.insert(k.clone(), v.clone());
        }
    }

    /// A1111 `/interrupt` (`skip_only` false) or `/skip` (true) for the running job; false
    /// when no job runs.
    pub fn interrupt_current(&self, skip_only: bool) -> bool {
        let Some(current) = self.current() else {
            return false;
        };
        let jobs = lock(&self.jobs);
        let Some(r) = jobs.get(&current.id) else {
            return false;
        };
        if skip_only {
            r.cancel.skip();
        } else {
            r.cancel.interrupt();
        }
        true
    }

    /// Progress of the running job.
    pub fn current(&self) -> Option<CurrentProgress> {
        lock(&self.current).clone()
    }

    fn expire(&self, jobs: &mut HashMap<String, JobRecord>) {
        self.evict(jobs);
    }

    /// Drops finished records past the TTL, then the oldest finished ones while the store holds
    /// more than `max_records` records or `max_record_bytes` bytes (never the newest finished
    /// record, whose client may be about to read it, nor a queued or running job).
    fn evict(&self, jobs: &mut HashMap<String, JobRecord>) {
        let ttl = self.config.result_ttl;
        jobs.retain(|_, r| r.finished.is_none_or(|f| f.elapsed() < ttl));
        let mut bytes: usize = jobs.values().map(|r| r.bytes).sum();
        let mut count = jobs.len();
        if count <= self.config.max_records && bytes <= self.config.max_record_bytes {
            return;
        }
        let mut finished: Vec<(Instant, String, usize)> = jobs
            .iter()
            .filter_map(|(id, r)| r.finished.map(|f| (f, id.clone(), r.bytes)))
            .collect();
        finished.sort_unstable_by_key(|(f, _, _)| *f);
        finished.pop(); // the newest stays
        for (_, id, size) in finished {
            if count <= self.config.max_records && bytes <= self.config.max_record_bytes {
                break;
            }
            jobs.remove(&id);
            count -= 1;
            bytes = bytes.saturating_sub(size);
        }
    }

    /// Records a job that failed before it could be queued (validation); returns its id.
    pub fn record_failed(&self, error: WorkerError) -> String {
        let id = crate::ids::new_job_id();
        let now = Instant::now();
        let mut jobs = lock(&self.jobs);
        self.expire(&mut jobs);
        jobs.insert(
            id.clone(),
            JobRecord {
                state: watch::channel(JobState::Failed(error)).0,
                cancel: CancelFlag::new(),
                created: now,
                started: None,
                finished: Some(now),
                bytes: RECORD_BASE_BYTES,
            },
        );
        id
    }

    /// The catalog RunPod-route jobs validate against (uploads enabled with a bucket).
    pub fn runpod_catalog(&self) -> Catalog {
        self.handler
            .catalog()
            .clone()
            .with_uploads(self.config.uploader.is_some())
    }

    /// Queues a validated job; `QUEUE_FULL` when the queue is full. A `runpod_route` job's
    /// result is capped and may be uploaded (SPEC §4); an A1111 job's is returned as is.
    pub fn enqueue(&self, job: ValidatedJob, runpod_route: bool) -> Result<String, WorkerError> {
        let id = crate::ids::new_job_id();
        let mut jobs = lock(&self.jobs);
        self.expire(&mut jobs);
        let queued = jobs
            .values()
            .filter(|r| *r.state.borrow() == JobState::InQueue)
            .count();
        if queued >= self.config.max_queued {
            return Err(WorkerError::QueueFull { queued });
        }
        jobs.insert(
            id.clone(),
            JobRecord {
                state: watch::channel(JobState::InQueue).0,
                cancel: CancelFlag::new(),
                created: Instant::now(),
                started: None,
                finished: None,
                bytes: 0,
            },
        );
        drop(jobs);
        self.queue
            .send(Queued {
                id: id.clone(),
                job,
                runpod_route,
            })
            .map_err(|_| WorkerError::Internal("the job runner has stopped".into()))?;
        Ok(id)
    }

    /// The state of a job, or `None` when unknown or expired.
    pub fn state(&self, id: &str) -> Option<JobState> {
        let mut jobs = lock(&self.jobs);
        self.expire(&mut jobs);
        jobs.get(id).map(|r| r.state.borrow().clone())
    }

    /// The RunPod status object of a job: `{id, status, output?, error?, delayTime, executionTime}`.
    pub fn status_json(&self, id: &str) -> Option<Value> {
        let mut jobs = lock(&self.jobs);
        self.expire(&mut jobs);
        let r = jobs.get(id)?;
        let state = r.state.borrow().clone();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let delay = r
            .started
            .map_or_else(|| r.created.elapsed(), |s| s - r.created);
        let exec = match (r.started, r.finished) {
            (Some(s), Some(f)) => f - s,
            (Some(s), None) => s.elapsed(),
            _ => Duration::ZERO,
        };
        let mut v = json!({
            "id": id,
            "status": state.status_word(),
            "delayTime": ms(delay),
            "executionTime": ms(exec),
            "workerId": "local",
        });
        if let Some(obj) = v.as_object_mut() {
            match state {
                JobState::InProgress(Some(p)) => {
                    obj.insert("output".into(), p);
                }
                JobState::Completed(out) => {
                    obj.insert("output".into(), json!(out));
                }
                JobState::Failed(e) => {
                    obj.insert("error".into(), json!(e.message()));
                    obj.insert("output".into(), json!({"code": e.code()}));
                }
                _ => {}
            }
        }
        Some(v)
    }

    /// Waits until the job is final or `timeout` passes; returns the last state seen.
    pub async fn wait_final(&self, id: &str, timeout: Duration) -> Option<JobState> {
        let mut rx = {
            let jobs = lock(&self.jobs);
            jobs.get(id)?.state.subscribe()
        };
        let waited = tokio::time::timeout(timeout, rx.wait_for(JobState::is_final))
            .await
            .ok()
            .and_then(Result::ok)
            .map(|s| s.clone());
        waited.or_else(|| Some(rx.borrow().clone()))
    }

    /// Cancels a queued or running job; returns its new status word.
    pub fn cancel(&self, id: &str) -> Option<&'static str> {
        let jobs = lock(&self.jobs);
        let r = jobs.get(id)?;
        let state = r.state.borrow().clone();
        if state.is_final() {
            return Some(state.status_word());
        }
        r.cancel.cancel();
        if state == JobState::InQueue {
            r.state.send_replace(JobState::Cancelled);
        }
        Some("CANCELLED")
    }

    /// Counts for `/health`: (completed, failed, in progress, in queue).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let mut jobs = lock(&self.jobs);
        self.expire(&mut jobs);
        let mut c = (0, 0, 0, 0);
        for r in jobs.values() {
            match &*r.state.borrow() {
                JobState::Completed(_) => c.0 += 1,
                JobState::Failed(_) | JobState::Cancelled => c.1 += 1,
                JobState::InProgress(_) => c.2 += 1,
                JobState::InQueue => c.3 += 1,
            }
        }
        c
    }

    fn set_state(&self, id: &str, state: JobState) {
        let mut jobs = lock(&self.jobs);
        let Some(r) = jobs.get_mut(id) else { return };
        let finished = state.is_final();
        if finished {
            r.finished = Some(Instant::now());
            r.bytes = RECORD_BASE_BYTES
                + match &state {
                    JobState::Completed(out) => delivery::serialized_len(out),
                    JobState::Failed(e) => e.message().len(),
                    _ => 0,
                };
        } else if matches!(state, JobState::InProgress(None)) {
            r.started = Some(Instant::now());
        }
        r.state.send_replace(state);
        if finished {
            self.evict(&mut jobs);
        }
    }

    fn take_for_run(&self, id: &str) -> Option<CancelFlag> {
        let jobs = lock(&self.jobs);
        let r = jobs.get(id)?;
        let queued = *r.state.borrow() == JobState::InQueue;
        queued.then(|| r.cancel.clone())
    }
}

/// Runs queued jobs one at a time on a blocking thread.
async fn runner(state: std::sync::Weak<ApiState>, mut rx: mpsc::UnboundedReceiver<Queued>) {
    while let Some(Queued {
        id,
        job,
        runpod_route,
    }) = rx.recv().await
    {
        let Some(st) = state.upgrade() else { return };
        let Some(cancel) = st.take_for_run(&id) else {
            continue; // cancelled or expired while queued
        };
        st.set_state(&id, JobState::InProgress(None));
        *lock(&st.current) = Some(CurrentProgress {
            id: id.clone(),
            step: 0,
            total: job.request.steps,
        });
        let st2 = st.clone();
        let id2 = id.clone();
        let result = tokio::task::spawn_blocking(move || {
            let progress = |step: u32, total: u32| {
                *lock(&st2.current) = Some(CurrentProgress {
                    id: id2.clone(),
                    step,
                    total,
                });
                st2.set_state(
                    &id2,
                    JobState::InProgress(Some(json!({"step": step, "total": total}))),
                );
            };
            let out = handler::run_validated(st2.handler.as_ref(), &job, &progress, &cancel)?;
            if !runpod_route {
                return Ok(out);
            }
            let cap = Some(st2.config.max_result_bytes);
            delivery::finish_output(&job, out, &id2, st2.config.uploader.as_deref(), cap)
        })
        .await
        .unwrap_or_else(|e| Err(WorkerError::Internal(format!("the job thread failed: {e}"))));
        *lock(&st.current) = None;
        let final_state = match result {
            Ok(out) => JobState::Completed(Box::new(out)),
            Err(e) if e.code() == ErrorCode::Cancelled => JobState::Cancelled,
            Err(e) => JobState::Failed(e),
        };
        st.set_state(&id, final_state);
    }
}
