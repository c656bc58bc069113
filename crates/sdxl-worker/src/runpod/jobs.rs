//! Running one taken job: validation, the handler on a blocking thread, and the ordered outbox
//! (progress posts strictly before exactly one final post).

use super::{Cancels, InProgress, RunpodClient, Shutdown, HARD_STOP_MARGIN};
use crate::error::WorkerError;
use crate::handler::{self, CancelFlag, JobHandler};
use crate::protocol::{self, JobOutput};
use crate::{delivery, job, logging};
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Shared state of the loop that every job needs.
pub(super) struct JobContext {
    pub client: RunpodClient,
    pub handler: Arc<dyn JobHandler>,
    pub in_progress: InProgress,
    pub cancels: Cancels,
    pub next_seq: Arc<AtomicU64>,
    pub shutdown: Shutdown,
}

/// Messages to a job's outbox.
enum Outgoing {
    Progress(Value),
    Final(String),
}

/// Processes one job object from a take reply; returns once its final post is done. `false`
/// when the object has no job id and so could not be answered.
pub(super) async fn process(ctx: &JobContext, job_obj: Value) -> bool {
    let Some(id) = job_obj
        .get("id")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        tracing::error!(
            "RunPod sent a job without a string `id`; it cannot be answered: {}",
            logging::cut_middle(&job_obj.to_string(), 300)
        );
        return false;
    };
    let seq = ctx.next_seq.fetch_add(1, Ordering::SeqCst);
    if let Ok(mut m) = ctx.in_progress.lock() {
        m.insert(seq, id.clone());
    }
    logging::set_request_id(Some(&id));
    tracing::info!(request_id = %id, "Started.");
    let cancel = CancelFlag::new();
    if let Ok(mut m) = ctx.cancels.lock() {
        m.insert(id.clone(), cancel.clone());
    }

    let (tx, rx) = mpsc::unbounded_channel();
    let outbox = tokio::spawn(outbox(
        ctx.client.clone(),
        id.clone(),
        rx,
        ctx.shutdown.clone(),
    ));
    let result = tokio::select! {
        r = run(ctx, &id, &job_obj, tx.clone(), cancel.clone()) => r,
        _ = hard_stop(&ctx.shutdown) => Err(WorkerError::Cancelled(
            "the worker is shutting down and the job did not stop within the grace period".into(),
        )),
    };

    if cancel.is_cancelled() && !ctx.shutdown.grace_is_over() {
        tracing::info!(request_id = %id, "job stopped by RunPod; no result is posted");
    } else {
        let cfg = ctx.client.config();
        if let Err(e) = &result {
            tracing::error!(request_id = %id, "job failed: {e}");
        }
        let mut text = protocol::result_body_text(&result, cfg.refresh_worker);
        if text.len() > cfg.max_result_bytes {
            let e = WorkerError::ResultTooLarge {
                size: text.len(),
                cap: cfg.max_result_bytes,
            };
            tracing::error!(request_id = %id, "{e}");
            text = protocol::result_body_text(&Err(e), cfg.refresh_worker);
        }
        let _ = tx.send(Outgoing::Final(text));
    }
    drop(tx);
    let _ = outbox.await;

    if let Ok(mut m) = ctx.cancels.lock() {
        m.remove(&id);
    }
    if let Ok(mut m) = ctx.in_progress.lock() {
        m.remove(&seq);
    }
    tracing::info!(request_id = %id, "Finished.");
    logging::set_request_id(None);
    true
}

async fn run(
    ctx: &JobContext,
    id: &str,
    job_obj: &Value,
    tx: mpsc::UnboundedSender<Outgoing>,
    cancel: CancelFlag,
) -> Result<JobOutput, WorkerError> {
    let input = match job_obj.get("input") {
        None | Some(Value::Null) => {
            return Err(WorkerError::InvalidInput(
                "the job has no `input` object (expected {\"input\": {...}})".into(),
            ))
        }
        Some(input) => input,
    };
    // Validate on the async side: an invalid job never reaches the GPU thread.
    let cfg = ctx.client.config();
    let (uploader, cap) = (cfg.uploader.clone(), cfg.max_result_bytes);
    let catalog = ctx
        .handler
        .catalog()
        .clone()
        .with_uploads(uploader.is_some());
    let validated = job::validate(input, &catalog)?;
    let handler = ctx.handler.clone();
    let id = id.to_string();
    let joined = tokio::task::spawn_blocking(move || {
        let progress = move |step: u32, total: u32| {
            let _ = tx.send(Outgoing::Progress(
                serde_json::json!({"step": step, "total": total}),
            ));
        };
        handler::run_validated(handler.as_ref(), &validated, &progress, &cancel).and_then(|out| {
            delivery::finish_output(&validated, out, &id, uploader.as_deref(), Some(cap))
        })
    })
    .await;
    joined.unwrap_or_else(|e| Err(WorkerError::Internal(format!("the job thread failed: {e}"))))
}

/// Resolves `HARD_STOP_MARGIN` after the shutdown grace period is over.
async fn hard_stop(shutdown: &Shutdown) {
    shutdown.wait_grace_over().await;
    tokio::time::sleep(HARD_STOP_MARGIN).await;
}

/// Posts a job's messages in order: progress (coalesced to the latest when posts lag), then
/// exactly one final body. Nothing is posted after the final body. During a shutdown, retrying
/// the final post stops at the hard stop.
async fn outbox(
    client: RunpodClient,
    id: String,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    shutdown: Shutdown,
) {
    while let Some(msg) = rx.recv().await {
        let mut latest_progress = None;
        let mut final_body = None;
        match msg {
            Outgoing::Progress(p) => latest_progress = Some(p),
            Outgoing::Final(b) => final_body = Some(b),
        }
        while final_body.is_none() {
            match rx.try_recv() {
                Ok(Outgoing::Progress(p)) => latest_progress = Some(p),
                Ok(Outgoing::Final(b)) => final_body = Some(b),
                Err(_) => break,
            }
        }
        if let Some(body) = final_body {
            tokio::select! {
                _ = client.post_final(&id, body) => {}
                _ = async { shutdown.wait().await; hard_stop(&shutdown).await } => {
                    tracing::error!(request_id = %id, "shutting down: gave up posting the result");
                }
            }
            return;
        }
        if let Some(p) = latest_progress {
            client.post_progress(&id, &p).await;
        }
    }
}
