//! A1111 `GET|POST /sdapi/v1/options`: every option a client sets is stored and returned (A1111's
//! own API tests round-trip `send_seed`); `sd_model_checkpoint` selects the default checkpoint,
//! and the options the job schema honours as `override_settings` (`CLIP_stop_at_last_layers`,
//! ...) apply to later A1111 jobs that do not override them. An image-changing option this
//! worker cannot honour is refused like the same `override_settings` key (SPEC §3).

use super::error::{parse_json_body, ApiError};
use super::state::ApiState;
use crate::job::{self, refusals, HONOURED_OVERRIDES};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// A1111 options this worker reports before any client sets them, at the values it renders
/// with (A1111's names and defaults, except the clip skip, SPEC §3).
fn known_options() -> Map<String, Value> {
    let v = json!({
        "CLIP_stop_at_last_layers": sdxl_pipeline::pipeline::DEFAULT_CLIP_SKIP,
        "sd_vae": "Automatic",
        "emphasis": "Original",
        "eta_ancestral": 1.0,
        "eta_ddim": 0.0,
        "s_churn": 0.0,
        "s_tmin": 0.0,
        "s_tmax": 0.0,
        "s_noise": 1.0,
        "samples_format": "png",
        "jpeg_quality": job::DEFAULT_JPEG_QUALITY,
        "send_seed": true,
        "send_size": true,
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// `GET /sdapi/v1/options`: the known options, overridden by the stored ones, and the current
/// checkpoint.
pub async fn get_options(State(state): State<Arc<ApiState>>) -> Json<Value> {
    let mut options = known_options();
    options.extend(state.stored_options());
    let current = state.selected_checkpoint().or_else(|| {
        state
            .handler
            .catalog()
            .effective_default_checkpoint()
            .map(str::to_string)
    });
    options.insert("sd_model_checkpoint".into(), json!(current));
    Json(Value::Object(options))
}

/// `POST /sdapi/v1/options`: validates the options as `override_settings` of a job (unknown
/// checkpoint, out-of-range clip skip, refused options fail and store nothing), then stores
/// them all. Replies `null` as A1111 does.
pub async fn set_options(
    State(state): State<Arc<ApiState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = parse_json_body(body)?;
    let Some(obj) = body.as_object() else {
        return Err(ApiError::invalid(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the body must be a JSON object",
        ));
    };
    let probe = json!({"prompt": "", "override_settings": obj});
    job::validate(&probe, state.handler.catalog()).map_err(|e| ApiError::from_job(&e))?;
    if let Some(v) = obj.get("sd_model_checkpoint").filter(|v| !v.is_null()) {
        let name =
            job::checkpoint_name(v, state.handler.catalog()).map_err(|e| ApiError::from_job(&e))?;
        tracing::info!("default checkpoint switched to {name:?}");
        state.select_checkpoint(name);
    }
    let mut stored = obj.clone();
    stored.remove("sd_model_checkpoint");
    state.store_options(&stored);
    Ok(Json(Value::Null))
}

/// True for options that reach jobs as `override_settings` (honoured or refused ones).
fn applies_to_jobs(key: &str) -> bool {
    key != "sd_model_checkpoint"
        && (HONOURED_OVERRIDES.iter().any(|(k, _)| *k == key)
            || refusals::covers(&format!("override_settings.{key}")))
}

/// An A1111 request with the stored options it does not override added to its
/// `override_settings` (A1111 renders with the global options unless a request overrides them).
pub fn with_stored_options(state: &ApiState, mut body: Map<String, Value>) -> Map<String, Value> {
    let stored: Vec<(String, Value)> = state
        .stored_options()
        .into_iter()
        .filter(|(k, _)| applies_to_jobs(k))
        .collect();
    if stored.is_empty() {
        return body;
    }
    let slot = body
        .entry("override_settings")
        .or_insert_with(|| Value::Object(Map::new()));
    if slot.is_null() {
        *slot = Value::Object(Map::new());
    }
    if let Some(settings) = slot.as_object_mut() {
        for (k, v) in stored {
            settings.entry(k).or_insert(v);
        }
    }
    body
}
