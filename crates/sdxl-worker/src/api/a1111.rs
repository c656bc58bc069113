//! The AUTOMATIC1111 API: `txt2img` (same queue as RunPod jobs), `sd-models`, `progress`,
//! `samplers`, `loras`; `options` is in `a1111_options`, the other list routes in
//! `a1111_lists`, interrupt/skip/refresh/png-info in `a1111_control`.

use super::error::{parse_json_body, ApiError};
use super::guard::CancelOnDrop;
use super::runpod_routes::with_selected_checkpoint;
use super::state::{ApiState, JobState};
use crate::error::WorkerError;
use crate::job::{self, ValidatedJob};
use crate::protocol::JobOutput;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;

type Reply = Result<Json<Value>, ApiError>;

/// Longest a `txt2img` request waits for its image.
const TXT2IMG_WAIT: Duration = Duration::from_secs(3600);

/// A1111 request fields that are another job field under an older name (filled in only when
/// the job field is absent). Every other A1111 field is already a job-schema field (the
/// validator honours `override_settings` and warns about what it ignores).
const A1111_RENAMED: &[(&str, &str)] = &[("sampler_index", "sampler_name")];

/// Job fields whose default differs on the A1111 routes (SPEC §2: A1111 concatenates long
/// prompts).
const A1111_DEFAULTS: &[(&str, &str)] = &[("prompt_mode", "concat")];

/// Maps an A1111 request onto the job schema with [`A1111_RENAMED`] and [`A1111_DEFAULTS`].
pub fn a1111_to_input(mut body: Map<String, Value>) -> Map<String, Value> {
    for (old, new) in A1111_RENAMED {
        if let Some(v) = body.remove(*old) {
            if body.get(*new).is_none_or(Value::is_null) {
                body.insert((*new).to_string(), v);
            }
        }
    }
    for (field, default) in A1111_DEFAULTS {
        if body.get(*field).is_none_or(Value::is_null) {
            body.insert((*field).to_string(), Value::from(*default));
        }
    }
    body
}

/// `POST /sdapi/v1/txt2img` → `{"images", "parameters", "info": "<JSON string>"}`.
pub async fn txt2img(
    State(state): State<Arc<ApiState>>,
    body: Result<Bytes, BytesRejection>,
) -> Reply {
    let body = parse_json_body(body)?;
    let Value::Object(obj) = body else {
        return Err(ApiError::invalid(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the body must be a JSON object",
        ));
    };
    generate(state, obj).await
}

/// One A1111 generation request (txt2img or img2img, already a JSON object) through the queue.
pub(super) async fn generate(state: Arc<ApiState>, obj: Map<String, Value>) -> Reply {
    if state.config.uploader.is_some() && obj.get("upload") == Some(&Value::Bool(true)) {
        // With a bucket, "no bucket configured" (the validator's word) would mislead.
        return Err(ApiError::invalid(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid input: `upload` is not available on the A1111 routes (their replies carry \
             the images); use /run or /runsync",
        ));
    }
    let obj = super::a1111_options::with_stored_options(&state, obj);
    let input = with_selected_checkpoint(&state, Value::Object(a1111_to_input(obj)));
    let validated =
        job::validate(&input, state.handler.catalog()).map_err(|e| ApiError::from_job(&e))?;
    let id = state
        .enqueue(validated.clone(), false)
        .map_err(|e| ApiError::from_job(&e))?;
    // A client that goes away while waiting cancels its job (SPEC §12).
    let guard = CancelOnDrop::new(state.clone(), id.clone());
    let finished = state.wait_final(&id, TXT2IMG_WAIT).await;
    guard.disarm();
    match finished {
        Some(JobState::Completed(out)) => Ok(Json(a1111_reply(&validated, &out))),
        Some(JobState::Failed(e)) => Err(ApiError::from_job(&e)),
        Some(JobState::Cancelled) => Err(ApiError::from_job(&WorkerError::Cancelled(
            "the job was cancelled".into(),
        ))),
        _ => Err(ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "TIMEOUT",
            "the job did not finish in time",
        )),
    }
}

/// Builds A1111's reply; `info` is a JSON string like A1111's `Processed.js()`.
pub fn a1111_reply(job: &ValidatedJob, out: &JobOutput) -> Value {
    let r = &job.request;
    let seeds = job.seeds();
    let infotexts = &out.infotexts;
    let negative = r.negative_prompt.clone().unwrap_or_default();
    let info = json!({
        "prompt": r.prompt,
        "all_prompts": vec![r.prompt.clone(); seeds.len()],
        "negative_prompt": negative,
        "all_negative_prompts": vec![negative.clone(); seeds.len()],
        "seed": r.seed,
        "all_seeds": seeds,
        "subseed": r.variation.subseed,
        "all_subseeds": job.subseeds(),
        "subseed_strength": r.variation.subseed_strength,
        "width": r.width,
        "height": r.height,
        "sampler_name": crate::runtime::SamplerLabels::of(job)
            .map_or_else(|_| r.sampler_name.clone(), |l| l.sampler),
        "cfg_scale": r.cfg_scale,
        "steps": r.steps,
        "batch_size": r.batch_size,
        "restore_faces": false,
        "face_restoration_model": null,
        "sd_model_name": job.checkpoint,
        "sd_model_hash": null,
        "sd_vae_name": null,
        "sd_vae_hash": null,
        "seed_resize_from_w": resize_or_off(r.variation.seed_resize_from_w),
        "seed_resize_from_h": resize_or_off(r.variation.seed_resize_from_h),
        "denoising_strength": job
            .img2img
            .as_ref()
            .map(|p| p.denoising_strength)
            .or(job.hires.as_ref().map(|h| h.denoising_strength))
            .unwrap_or(0.0),
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": [],
        "job_timestamp": "",
        "clip_skip": r.clip_skip,
        "is_using_inpainting_conditioning": out.inpainting_conditioning,
        "version": format!("sdxl-worker {}", env!("CARGO_PKG_VERSION")),
        "warnings": out.warnings,
        "timings": out.timings,
    });
    json!({
        "images": out.images,
        "parameters": out.parameters,
        "info": info.to_string(),
    })
}

/// A1111 reports an unset `seed_resize_from_w/h` as -1.
fn resize_or_off(v: u32) -> i64 {
    if v == 0 {
        -1
    } else {
        i64::from(v)
    }
}

/// `GET /sdapi/v1/sd-models`.
pub async fn sd_models(State(state): State<Arc<ApiState>>) -> Json<Value> {
    let list: Vec<Value> = state
        .handler
        .catalog()
        .checkpoints
        .iter()
        .map(|n| json!({"title": n, "model_name": n, "hash": null, "sha256": null, "filename": n, "config": null}))
        .collect();
    Json(Value::Array(list))
}

/// `GET /sdapi/v1/progress`.
pub async fn progress(State(state): State<Arc<ApiState>>) -> Json<Value> {
    let (_, _, in_progress, in_queue) = state.counts();
    let cur = state.current();
    let (fraction, step, total, job) = match &cur {
        Some(c) if c.total > 0 => (
            f64::from(c.step) / f64::from(c.total),
            c.step,
            c.total,
            c.id.clone(),
        ),
        Some(c) => (0.0, c.step, c.total, c.id.clone()),
        None => (0.0, 0, 0, String::new()),
    };
    Json(json!({
        "progress": fraction,
        "eta_relative": 0.0,
        "state": {
            "skipped": false,
            "interrupted": false,
            "stopping_generation": false,
            "job": job,
            "job_count": in_progress + in_queue,
            "job_timestamp": "",
            "job_no": 0,
            "sampling_step": step,
            "sampling_steps": total,
        },
        "current_image": null,
        "textinfo": null,
    }))
}

/// `GET /sdapi/v1/samplers`.
pub async fn samplers(State(state): State<Arc<ApiState>>) -> Json<Value> {
    let list: Vec<Value> = state
        .handler
        .catalog()
        .samplers
        .iter()
        .map(|n| json!({"name": n, "aliases": [], "options": {}}))
        .collect();
    Json(Value::Array(list))
}

/// `GET /sdapi/v1/embeddings`: A1111's `EmbeddingsResponse` for the loaded model's embeddings.
pub async fn embeddings(State(state): State<Arc<ApiState>>) -> Json<Value> {
    Json(crate::runtime::embeddings::a1111_reply(
        &state.handler.embeddings(),
    ))
}

/// `GET /sdapi/v1/loras`.
pub async fn loras(State(state): State<Arc<ApiState>>) -> Json<Value> {
    let list: Vec<Value> = state
        .handler
        .catalog()
        .loras
        .iter()
        .map(|l| json!({"name": l.name, "alias": l.name, "path": l.name, "metadata": {}, "default_scale": l.scale}))
        .collect();
    Json(Value::Array(list))
}
