//! The job-handler contract shared by every mode (RunPod loop, local API, one-shot): the
//! [`JobHandler`] trait, the success/failure types of SPEC §4, the error codes, the [`Catalog`] of
//! names a job may use, and [`execute`], which validates a raw `input` and runs it safely.

mod model;
mod stub;

pub use model::{catalog_from, pipeline_catalog, source_for, ModelHandler};
pub use stub::StubHandler;

use crate::job::{self, ValidatedJob};
use sdxl_pipeline::ErrorKind;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Test-only: set to `1` to make the binary serve jobs with [`StubHandler`] instead of models.
pub const STUB_HANDLER_ENV: &str = "SDXL_WORKER_STUB_HANDLER";
/// Test-only: milliseconds the stub handler sleeps per step (default 0).
pub const STUB_STEP_MS_ENV: &str = "SDXL_WORKER_STUB_STEP_MS";

/// The error codes of SPEC §4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The job input is malformed, out of range or names something unknown.
    InvalidInput,
    /// The job names a checkpoint or LoRA the worker does not serve.
    UnknownModel,
    /// A model could not be downloaded.
    ModelDownloadFailed,
    /// A model file is not a usable SDXL model / LoRA.
    ModelInvalid,
    /// The device ran out of memory.
    OutOfMemory,
    /// The job was cancelled.
    Cancelled,
    /// The result exceeds the size cap.
    ResultTooLarge,
    /// Anything else.
    Internal,
}

impl ErrorCode {
    /// The wire name, e.g. `INVALID_INPUT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidInput => "INVALID_INPUT",
            Self::UnknownModel => "UNKNOWN_MODEL",
            Self::ModelDownloadFailed => "MODEL_DOWNLOAD_FAILED",
            Self::ModelInvalid => "MODEL_INVALID",
            Self::OutOfMemory => "OUT_OF_MEMORY",
            Self::Cancelled => "CANCELLED",
            Self::ResultTooLarge => "RESULT_TOO_LARGE",
            Self::Internal => "INTERNAL",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<ErrorKind> for ErrorCode {
    fn from(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::InvalidInput => Self::InvalidInput,
            ErrorKind::ModelInvalid => Self::ModelInvalid,
            ErrorKind::OutOfMemory => Self::OutOfMemory,
            ErrorKind::Cancelled => Self::Cancelled,
            ErrorKind::Internal => Self::Internal,
        }
    }
}

/// A failed job: `{"error": message, "code": CODE}` (SPEC §4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct JobError {
    /// Human-readable message (always a string on the wire).
    #[serde(rename = "error")]
    pub message: String,
    /// Machine-readable code.
    pub code: ErrorCode,
}

impl JobError {
    /// Builds an error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Shorthand for `INVALID_INPUT`.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidInput, message)
    }

    /// Shorthand for `INTERNAL`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}

impl From<sdxl_pipeline::PipelineError> for JobError {
    fn from(e: sdxl_pipeline::PipelineError) -> Self {
        Self::new(e.kind().into(), e.to_string())
    }
}

/// Wall-clock phases of one job in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub load_ms: u64,
    pub encode_ms: u64,
    pub denoise_ms: u64,
    pub decode_ms: u64,
    pub total_ms: u64,
}

/// A successful job (SPEC §4), posted as `{"output": <this>}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobOutput {
    /// Bare base64 images (no `data:` prefix), in batch order.
    pub images: Vec<String>,
    /// Every effective parameter, seeds as a list (see [`ValidatedJob::parameters`]).
    pub parameters: serde_json::Value,
    /// A1111 infotext of the first image.
    pub info: String,
    /// Things the user should know (ignored fields, unmatched LoRA keys, prompt fallbacks).
    pub warnings: Vec<String>,
    /// Phase timings.
    pub timings: Timings,
}

/// One LoRA to apply: a catalog name and its scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSpec {
    /// Name as listed in the catalog.
    pub name: String,
    /// Merge scale (−4..=4).
    pub scale: f64,
}

/// The names a job may use; plain data filled from models.toml and the pipeline.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    /// Checkpoint names (models.toml `[[checkpoints]]`).
    pub checkpoints: Vec<String>,
    /// The checkpoint used when a job names none.
    pub default_checkpoint: Option<String>,
    /// LoRA names with their default scales (models.toml `[[loras]]` and cached files).
    pub loras: Vec<LoraSpec>,
    /// LoRAs applied when a job sends no `loras` field.
    pub default_loras: Vec<LoraSpec>,
    /// A1111 sampler names that work (`GET /sdapi/v1/samplers`).
    pub samplers: Vec<String>,
    /// Schedule types accepted in the `scheduler` field (lower case).
    pub schedulers: Vec<String>,
}

/// Sampler names of SPEC §6.
pub const SPEC_SAMPLERS: &[&str] = &[
    "Euler",
    "Euler a",
    "Heun",
    "DPM2",
    "DPM++ 2M",
    "DPM++ 2M Karras",
    "DPM++ 2M SDE",
    "DPM++ 2M SDE Karras",
    "DPM++ SDE Karras",
    "DDIM",
    "UniPC",
    "LMS",
];

/// Schedule types of A1111 ≥ 1.9 that SPEC §3 names.
pub const SPEC_SCHEDULERS: &[&str] = &["automatic", "karras", "normal", "exponential"];

impl Catalog {
    /// The checkpoint a job without `checkpoint` uses.
    pub fn effective_default_checkpoint(&self) -> Option<&str> {
        self.default_checkpoint
            .as_deref()
            .or_else(|| self.checkpoints.first().map(String::as_str))
    }
}

/// A cancellation flag shared between the protocol side and the running job.
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    /// A fresh, un-cancelled flag.
    pub fn new() -> Self {
        Self::default()
    }
    /// Requests cancellation; the job stops at its next step boundary.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// True once [`CancelFlag::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    /// The underlying flag, as the pipeline polls it between denoising steps.
    pub fn as_atomic(&self) -> &AtomicBool {
        &self.0
    }
}

/// Runs validated jobs. Implementations do the GPU work; they are called on a blocking thread.
pub trait JobHandler: Send + Sync + 'static {
    /// Runs one validated job; reports progress `(step, total)` and polls `cancel` between steps
    /// (returning a `CANCELLED` error when it is set).
    fn handle(
        &self,
        job: &ValidatedJob,
        progress: &dyn Fn(u32, u32),
        cancel: &CancelFlag,
    ) -> Result<JobOutput, JobError>;

    /// Names the validator accepts (checkpoints, LoRAs, samplers).
    fn catalog(&self) -> &Catalog;
}

/// Validates a raw `input` object against the handler's catalog and runs it, turning a panic in
/// the handler into an `INTERNAL` error. Validation warnings come first in the output's warnings.
pub fn execute(
    handler: &dyn JobHandler,
    input: &serde_json::Value,
    progress: &dyn Fn(u32, u32),
    cancel: &CancelFlag,
) -> Result<JobOutput, JobError> {
    let job = job::validate(input, handler.catalog())?;
    run_validated(handler, &job, progress, cancel)
}

/// Runs an already validated job (see [`execute`]).
pub fn run_validated(
    handler: &dyn JobHandler,
    job: &ValidatedJob,
    progress: &dyn Fn(u32, u32),
    cancel: &CancelFlag,
) -> Result<JobOutput, JobError> {
    let result = catch_unwind(AssertUnwindSafe(|| handler.handle(job, progress, cancel)));
    match result {
        Ok(Ok(mut out)) => {
            let mut warnings = job.warnings.clone();
            warnings.append(&mut out.warnings);
            out.warnings = warnings;
            Ok(out)
        }
        Ok(Err(e)) => Err(e),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            tracing::error!(panic = %what, "job handler panicked");
            Err(JobError::internal(format!(
                "the job handler failed: {what}"
            )))
        }
    }
}

/// Builds the handler the binary serves jobs with. With `SDXL_WORKER_STUB_HANDLER=1` (test-only)
/// it is the [`StubHandler`]; the model-backed handler is wired in by the models/pipeline side.
pub fn load_handler(models_toml: Option<&Path>) -> anyhow::Result<Arc<dyn JobHandler>> {
    if std::env::var(STUB_HANDLER_ENV).as_deref() == Ok("1") {
        let step_ms = std::env::var(STUB_STEP_MS_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        tracing::warn!("serving jobs with the test-only stub handler ({STUB_HANDLER_ENV}=1)");
        return Ok(Arc::new(StubHandler {
            step_delay: std::time::Duration::from_millis(step_ms),
            ..StubHandler::default()
        }));
    }
    let config = crate::models::ModelsConfig::load(models_toml)?;
    let (device, dtype) = device_from_env()?;
    let handler = ModelHandler::new(config, device, dtype)?;
    if let Err(e) = handler.preload() {
        tracing::error!(
            code = e.code.as_str(),
            "could not load the default checkpoint: {}",
            e.message
        );
    }
    Ok(Arc::new(handler))
}

/// Env `SDXL_DEVICE` (`cpu`, `cuda`, `cuda:N`; default: CUDA when this build and machine have it)
/// and `SDXL_DTYPE` (`f32`, `f16`, `bf16`; default f16 on CUDA, f32 on CPU).
pub fn device_from_env() -> anyhow::Result<(candle_core::Device, candle_core::DType)> {
    let device = match std::env::var("SDXL_DEVICE") {
        Ok(spec) => sdxl_pipeline::device::parse_device(&spec)?,
        Err(_) if candle_core::utils::cuda_is_available() => {
            sdxl_pipeline::device::parse_device("cuda")?
        }
        Err(_) => candle_core::Device::Cpu,
    };
    let dtype = match std::env::var("SDXL_DTYPE") {
        Ok(spec) => sdxl_pipeline::device::parse_dtype(&spec)?,
        Err(_) if device.is_cuda() => candle_core::DType::F16,
        Err(_) => candle_core::DType::F32,
    };
    Ok((device, dtype))
}

/// The JSON body a finished job is reported with (SPEC §4): `{"output": <JobOutput>}` on
/// success, `{"error": "<message>", "output": {"code": "<CODE>"}}` on failure (`error` is always
/// a string, so RunPod marks the job FAILED).
pub fn result_body(result: &Result<JobOutput, JobError>) -> serde_json::Value {
    match result {
        Ok(out) => serde_json::json!({ "output": out }),
        Err(e) => error_body(e),
    }
}

/// The failure body of [`result_body`].
pub fn error_body(e: &JobError) -> serde_json::Value {
    serde_json::json!({ "error": e.message, "output": { "code": e.code } })
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
        error: &'a str,
        output: CodeOnly,
        #[serde(rename = "stopPod", skip_serializing_if = "std::ops::Not::not")]
        stop_pod: bool,
    },
}

/// [`result_body`] serialized straight to text (no intermediate `Value`, so multi-megabyte
/// base64 images are copied once); `stop_pod` adds `"stopPod": true` (runpod `refresh_worker`).
pub fn result_body_text(result: &Result<JobOutput, JobError>, stop_pod: bool) -> String {
    let (body, estimate) = match result {
        Ok(output) => (
            WireBody::Success { output, stop_pod },
            output.images.iter().map(String::len).sum::<usize>() + 4096,
        ),
        Err(e) => (
            WireBody::Failure {
                error: &e.message,
                output: CodeOnly { code: e.code },
                stop_pod,
            },
            e.message.len() + 256,
        ),
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
