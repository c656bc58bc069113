//! RunPod-compatible routes: `/run` queues and answers at once, `/runsync` waits up to `?wait=`
//! ms, `/status/{id}` (GET or POST) reports, `/cancel/{id}`, `/health`.

use super::error::{parse_json_body, ApiError};
use super::guard::CancelOnDrop;
use super::state::ApiState;
use crate::job;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

type Reply = Result<Json<Value>, ApiError>;

/// Validates a RunPod request body and queues (or records the failure of) its job; returns the id.
fn submit(state: &ApiState, body: Result<Bytes, BytesRejection>) -> Result<String, ApiError> {
    let body = parse_json_body(body)?;
    let Some(obj) = body.as_object() else {
        return Err(ApiError::invalid(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the body must be a JSON object {\"input\": {...}}",
        ));
    };
    let input = match obj.get("input") {
        Some(v @ Value::Object(_)) => v.clone(),
        Some(other) => {
            return Err(ApiError::invalid(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "`input` must be a JSON object, got {}",
                    job::describe(other)
                ),
            ))
        }
        None => {
            return Err(ApiError::invalid(
                StatusCode::UNPROCESSABLE_ENTITY,
                "the body has no `input` object (expected {\"input\": {...}})",
            ))
        }
    };
    let input = with_selected_checkpoint(state, input);
    match job::validate(&input, &state.runpod_catalog()) {
        Ok(validated) => state
            .enqueue(validated, true)
            .map_err(|e| ApiError::from_job(&e)),
        Err(e) => Ok(state.record_failed(e)),
    }
}

/// Adds the checkpoint chosen through `/sdapi/v1/options` to an input that names none (neither
/// `checkpoint` nor `override_settings.sd_model_checkpoint`).
pub(super) fn with_selected_checkpoint(state: &ApiState, mut input: Value) -> Value {
    if let (Some(obj), Some(ckpt)) = (input.as_object_mut(), state.selected_checkpoint()) {
        let overridden = obj
            .get("override_settings")
            .and_then(|o| o.get("sd_model_checkpoint"))
            .is_some_and(|v| !v.is_null());
        if !overridden && obj.get("checkpoint").is_none_or(Value::is_null) {
            obj.insert("checkpoint".into(), Value::String(ckpt));
        }
    }
    input
}

fn status_reply(state: &ApiState, id: &str) -> Reply {
    state.status_json(id).map(Json).ok_or_else(|| {
        ApiError::not_found(format!(
            "Job ID not found: {id} (results are kept for 30 minutes)"
        ))
    })
}

/// `POST /run`: queue and answer `{"id", "status": "IN_QUEUE"}` at once.
pub async fn run(State(state): State<Arc<ApiState>>, body: Result<Bytes, BytesRejection>) -> Reply {
    let id = submit(&state, body)?;
    let mut reply = status_reply(&state, &id)?;
    if let Some(obj) = reply.0.as_object_mut() {
        // Like the platform: only id and status (plus the error of a job that failed validation).
        obj.retain(|k, _| matches!(k.as_str(), "id" | "status" | "error" | "output"));
        if obj.get("status") != Some(&json!("FAILED")) {
            obj.remove("output");
        }
    }
    Ok(reply)
}

/// `POST /runsync[?wait=ms]`: queue, wait up to `wait` (default 90 s), answer the status.
pub async fn runsync(
    State(state): State<Arc<ApiState>>,
    Query(query): Query<HashMap<String, String>>,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    let wait = match query.get("wait") {
        None => state.config.default_runsync_wait,
        Some(w) => match w.trim().parse::<u64>() {
            Ok(ms) => Duration::from_millis(ms).min(state.config.max_runsync_wait),
            Err(_) => {
                return Err(ApiError::invalid(
                    StatusCode::BAD_REQUEST,
                    format!("`wait` must be a number of milliseconds, got {w:?}"),
                ))
            }
        },
    };
    let id = submit(&state, body)?;
    // A client that goes away while waiting cancels its job (SPEC §12).
    let guard = CancelOnDrop::new(state.clone(), id.clone());
    state.wait_final(&id, wait).await;
    guard.disarm();
    status_reply(&state, &id)
}

/// `GET|POST /status/{id}`.
pub async fn status(
    State(state): State<Arc<ApiState>>,
    Path(params): Path<HashMap<String, String>>,
) -> Reply {
    let id = params.get("id").map(String::as_str).unwrap_or_default();
    status_reply(&state, id)
}

/// `POST /cancel/{id}`.
pub async fn cancel(
    State(state): State<Arc<ApiState>>,
    Path(params): Path<HashMap<String, String>>,
) -> Reply {
    let id = params.get("id").map(String::as_str).unwrap_or_default();
    let status = state
        .cancel(id)
        .ok_or_else(|| ApiError::not_found(format!("Job ID not found: {id}")))?;
    Ok(Json(json!({"id": id, "status": status})))
}

/// `GET /health`.
pub async fn health(State(state): State<Arc<ApiState>>) -> Json<Value> {
    let (completed, failed, in_progress, in_queue) = state.counts();
    let running = usize::from(state.current().is_some());
    Json(json!({
        "jobs": {"completed": completed, "failed": failed, "inProgress": in_progress, "inQueue": in_queue, "retried": 0},
        "workers": {"idle": 1 - running, "running": running},
    }))
}
