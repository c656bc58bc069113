//! `POST /sdapi/v1/img2img` (A1111 `StableDiffusionImg2ImgProcessingAPI`): the txt2img request
//! shape plus `init_images` (required), `denoising_strength`, `resize_mode`, ...; same queue,
//! reply `{images, parameters, info}`; with `mask` it inpaints (SPEC §13).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde_json::Value;

use super::a1111::generate;
use super::error::{parse_json_body, ApiError};
use super::state::ApiState;

/// A1111 txt2img-only fields that an img2img request may carry (clients reuse one payload):
/// A1111's img2img API has no hires fix, so they are dropped before validation.
const TXT2IMG_ONLY: &[&str] = &[
    "enable_hr",
    "hr_scale",
    "hr_resize_x",
    "hr_resize_y",
    "hr_upscaler",
    "hr_second_pass_steps",
    "hr_sampler_name",
    "hr_scheduler",
    "hr_prompt",
    "hr_negative_prompt",
    "hr_checkpoint_name",
    "firstphase_width",
    "firstphase_height",
];

/// `POST /sdapi/v1/img2img` → `{"images", "parameters", "info": "<JSON string>"}`.
pub async fn img2img(
    State(state): State<Arc<ApiState>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let body = parse_json_body(body)?;
    let Value::Object(mut obj) = body else {
        return Err(ApiError::invalid(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the body must be a JSON object",
        ));
    };
    let has_image = obj
        .get("init_images")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    if !has_image {
        return Err(ApiError::invalid(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid input: `init_images` is required (a non-empty array of base64 images)",
        ));
    }
    for f in TXT2IMG_ONLY {
        obj.remove(*f);
    }
    obj.remove("init_image");
    generate(state, obj).await
}
