//! The shapes a client sees (SPEC §4): a successful job's [`JobOutput`] with its [`Timings`], and
//! the result bodies posted to RunPod / answered by the local API for success and failure.

use crate::error::{ErrorCode, WorkerError};
use serde::{Deserialize, Serialize};

/// Wall-clock phases of one job in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Downloading/loading the checkpoint and merging LoRAs.
    pub load_ms: u64,
    /// Prompt encoding.
    pub encode_ms: u64,
    /// The sampler loops.
    pub denoise_ms: u64,
    /// VAE decoding and image encoding.
    pub decode_ms: u64,
    /// The whole job.
    pub total_ms: u64,
}

/// A successful job (SPEC §4), posted as `{"output": <this>}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobOutput {
    /// Bare base64 images (no `data:` prefix), in batch order. Empty, and then not serialized,
    /// when the images were uploaded (SPEC §4: `image_urls` and no `images` key).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
    /// Presigned GET URLs of the uploaded images, in batch order (only when uploaded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_urls: Option<Vec<String>>,
    /// Every effective parameter, seeds as a list (see `ValidatedJob::parameters`).
    pub parameters: serde_json::Value,
    /// A1111 infotext of the first image.
    pub info: String,
    /// A1111 infotext of every image, in batch order (not part of the RunPod output).
    #[serde(skip)]
    pub infotexts: Vec<String>,
    /// Things the user should know (ignored fields, unmatched LoRA keys, prompt fallbacks).
    pub warnings: Vec<String>,
    /// Phase timings.
    pub timings: Timings,
    /// A1111's `is_using_inpainting_conditioning` (not part of the RunPod output).
    #[serde(skip)]
    pub inpainting_conditioning: bool,
}

/// The JSON body a finished job is reported with (SPEC §4): `{"output": <JobOutput>}` on
/// success, `{"error": "<message>", "output": {"code": "<CODE>"}}` on failure (`error` is always
/// a string, so RunPod marks the job FAILED).
pub fn result_body(result: &Result<JobOutput, WorkerError>) -> serde_json::Value {
    match result {
        Ok(out) => serde_json::json!({ "output": out }),
        Err(e) => error_body(e),
    }
}

/// The failure body of [`result_body`].
pub fn error_body(e: &WorkerError) -> serde_json::Value {
    serde_json::json!({ "error": e.message(), "output": { "code": e.code() } })
}

#[derive(Serialize)]
struct CodeOnly {
    code: ErrorCode,
}

#[derive(Serialize)]
#[serde(untagged)]
enum WireBody<'a> {
    Success {
        output: &'a JobOutput,
        #[serde(rename = "stopPod", skip_serializing_if = "std::ops::Not::not")]
        stop_pod: bool,
    },
    Failure {
        error: String,
        output: CodeOnly,
        #[serde(rename = "stopPod", skip_serializing_if = "std::ops::Not::not")]
        stop_pod: bool,
    },
}

/// [`result_body`] serialized straight to text (no intermediate `Value`, so multi-megabyte
/// base64 images are copied once); `stop_pod` adds `"stopPod": true` (runpod `refresh_worker`).
pub fn result_body_text(result: &Result<JobOutput, WorkerError>, stop_pod: bool) -> String {
    let (body, estimate) = match result {
        Ok(output) => (
            WireBody::Success { output, stop_pod },
            output.images.iter().map(String::len).sum::<usize>() + 4096,
        ),
        Err(e) => {
            let error = e.message();
            let len = error.len();
            (
                WireBody::Failure {
                    error,
                    output: CodeOnly { code: e.code() },
                    stop_pod,
                },
                len + 256,
            )
        }
    };
    let mut buf = Vec::with_capacity(estimate);
    match serde_json::to_writer(&mut buf, &body) {
        Ok(()) => String::from_utf8(buf).unwrap_or_default(),
        Err(e) => format!(
            "{{\"error\":{},\"output\":{{\"code\":\"INTERNAL\"}}}}",
            serde_json::Value::String(format!("cannot serialize the result: {e}"))
        ),
    }
}
