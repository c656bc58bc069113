//! A1111 routes that act rather than list: `POST /sdapi/v1/interrupt` and `/skip` (the running
//! job stops at its next denoiser call and its waiting request gets what A1111 returns then —
//! the current latent decoded; `/skip` ends only the current image of a batch),
//! `/refresh-checkpoints` and `/refresh-loras`, and `/png-info`.

use super::error::{parse_json_body, ApiError};
use super::state::ApiState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;

/// Largest `/png-info` body: a 30 MB image as base64 plus JSON (the other routes keep the
/// configured, smaller limit).
pub const PNG_INFO_BODY_LIMIT: usize = 41 << 20;

/// `POST /sdapi/v1/interrupt`: `{}` (A1111), whether or not a job was running.
pub async fn interrupt(State(state): State<Arc<ApiState>>) -> Json<Value> {
    if state.interrupt_current(false) {
        tracing::info!("interrupt requested for the running job");
    }
    Json(json!({}))
}

/// `POST /sdapi/v1/skip`: `null` (A1111).
pub async fn skip(State(state): State<Arc<ApiState>>) -> Json<Value> {
    if state.interrupt_current(true) {
        tracing::info!("skip requested for the running job's current image");
    }
    Json(Value::Null)
}

/// `POST /sdapi/v1/refresh-checkpoints` and `/refresh-loras`: `null` (A1111). The lists come
/// from models.toml, which is read at start-up, so there is nothing to rescan.
pub async fn refresh() -> Json<Value> {
    Json(Value::Null)
}

/// `POST /sdapi/v1/png-info` `{"image": "<base64 or data: URI>"}` →
/// `{"info", "items", "parameters"}` (A1111 `pnginfoapi`).
pub async fn png_info(
    State(_state): State<Arc<ApiState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = parse_json_body(body)?;
    let Some(image) = body.get("image").and_then(Value::as_str) else {
        return Err(ApiError::invalid(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid input: `image` (a base64 string or data: URI) is required",
        ));
    };
    let image = image.to_string();
    // Decoding a large image is CPU work: off the async threads.
    let reply = tokio::task::spawn_blocking(move || {
        let bytes = crate::png_info::decode_image_field(&image)?;
        crate::png_info::png_info_reply(&bytes)
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            format!("png-info failed: {e}"),
        )
    })?
    .map_err(|e| ApiError::from_job(&e))?;
    Ok(Json(reply))
}
