//! The worker's one error type, [`WorkerError`], and the wire codes of SPEC §4 ([`ErrorCode`]).
//!
//! Every failure a client can see is a `WorkerError`; its [`WorkerError::code`] is decided by the
//! variant, never by parsing a string. Pipeline, download and models.toml errors convert into it
//! with `From` (the download and models modules implement theirs next to their error types).

use serde::{Deserialize, Serialize};
use std::fmt;

/// The error codes of SPEC §4 (plus `QUEUE_FULL`, which only the local API answers with).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The job input is malformed, out of range or names something unknown.
    InvalidInput,
    /// The job names a checkpoint or LoRA the worker does not serve.
    UnknownModel,
    /// A model could not be downloaded.
    ModelDownloadFailed,
    /// A model file (or its config) is not a usable SDXL model / LoRA.
    ModelInvalid,
    /// The device ran out of memory.
    OutOfMemory,
    /// The job was cancelled.
    Cancelled,
    /// The result exceeds the size cap.
    ResultTooLarge,
    /// Uploading the result to the bucket failed.
    UploadFailed,
    /// The local API's queue is full.
    QueueFull,
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
            Self::UploadFailed => "UPLOAD_FAILED",
            Self::QueueFull => "QUEUE_FULL",
            Self::Internal => "INTERNAL",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a job (or a request of the local API) failed. Each variant carries the human message
/// sent to the client; the variant alone decides the code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerError {
    /// The input is malformed, out of range or names something unknown (`INVALID_INPUT`).
    #[error("{0}")]
    InvalidInput(String),
    /// The job names a model the worker does not serve (`UNKNOWN_MODEL`).
    #[error("{0}")]
    UnknownModel(String),
    /// A model could not be downloaded (`MODEL_DOWNLOAD_FAILED`).
    #[error("{0}")]
    ModelDownloadFailed(String),
    /// A model file or its configuration is unusable (`MODEL_INVALID`).
    #[error("{0}")]
    ModelInvalid(String),
    /// The device ran out of memory (`OUT_OF_MEMORY`).
    #[error("{0}")]
    OutOfMemory(String),
    /// The job was cancelled (`CANCELLED`).
    #[error("{0}")]
    Cancelled(String),
    /// The result is over the size cap (`RESULT_TOO_LARGE`).
    #[error("the result is {size} bytes, over the cap of {cap} bytes (SDXL_MAX_RESULT_BYTES); ask for fewer images, smaller sizes or output_format \"jpeg\"")]
    ResultTooLarge {
        /// Size of the result body in bytes.
        size: usize,
        /// The cap in bytes.
        cap: usize,
    },
    /// The result could not be uploaded (`UPLOAD_FAILED`).
    #[error("{0}")]
    UploadFailed(String),
    /// The local API's queue is full (`QUEUE_FULL`).
    #[error("the queue is full ({queued} jobs waiting)")]
    QueueFull {
        /// Jobs waiting when the request came.
        queued: usize,
    },
    /// Anything else (`INTERNAL`).
    #[error("{0}")]
    Internal(String),
}

impl WorkerError {
    /// The SPEC §4 code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidInput(_) => ErrorCode::InvalidInput,
            Self::UnknownModel(_) => ErrorCode::UnknownModel,
            Self::ModelDownloadFailed(_) => ErrorCode::ModelDownloadFailed,
            Self::ModelInvalid(_) => ErrorCode::ModelInvalid,
            Self::OutOfMemory(_) => ErrorCode::OutOfMemory,
            Self::Cancelled(_) => ErrorCode::Cancelled,
            Self::ResultTooLarge { .. } => ErrorCode::ResultTooLarge,
            Self::UploadFailed(_) => ErrorCode::UploadFailed,
            Self::QueueFull { .. } => ErrorCode::QueueFull,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The human message (what `Display` prints).
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// `CANCELLED` with the usual message.
    pub fn cancelled() -> Self {
        Self::Cancelled("job cancelled".into())
    }

    /// The error a wire body with this code and message stands for (used when a code arrives
    /// as data, e.g. the stub handler's configured failure).
    pub fn from_code(code: ErrorCode, message: impl Into<String>) -> Self {
        let m = message.into();
        match code {
            ErrorCode::InvalidInput => Self::InvalidInput(m),
            ErrorCode::UnknownModel => Self::UnknownModel(m),
            ErrorCode::ModelDownloadFailed => Self::ModelDownloadFailed(m),
            ErrorCode::ModelInvalid => Self::ModelInvalid(m),
            ErrorCode::OutOfMemory => Self::OutOfMemory(m),
            ErrorCode::Cancelled => Self::Cancelled(m),
            ErrorCode::UploadFailed => Self::UploadFailed(m),
            ErrorCode::ResultTooLarge | ErrorCode::QueueFull | ErrorCode::Internal => {
                Self::Internal(m)
            }
        }
    }
}

/// The wire shape of a failure: `{"error": "<message>", "code": "<CODE>"}`.
impl Serialize for WorkerError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("WorkerError", 2)?;
        st.serialize_field("error", &self.message())?;
        st.serialize_field("code", &self.code())?;
        st.end()
    }
}

impl From<sdxl_pipeline::PipelineError> for WorkerError {
    fn from(e: sdxl_pipeline::PipelineError) -> Self {
        use sdxl_pipeline::ErrorKind;
        let m = e.to_string();
        match e.kind() {
            ErrorKind::InvalidInput => Self::InvalidInput(m),
            ErrorKind::ModelInvalid => Self::ModelInvalid(m),
            ErrorKind::OutOfMemory => Self::OutOfMemory(m),
            ErrorKind::Cancelled => Self::Cancelled("job cancelled".into()),
            ErrorKind::Internal => Self::Internal(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_variants_and_serialize_as_spec_names() {
        let e = WorkerError::QueueFull { queued: 3 };
        assert_eq!(e.code(), ErrorCode::QueueFull);
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"error": "the queue is full (3 jobs waiting)", "code": "QUEUE_FULL"})
        );
        for code in [
            ErrorCode::InvalidInput,
            ErrorCode::UnknownModel,
            ErrorCode::ModelDownloadFailed,
            ErrorCode::ModelInvalid,
            ErrorCode::OutOfMemory,
            ErrorCode::Cancelled,
            ErrorCode::UploadFailed,
        ] {
            assert_eq!(WorkerError::from_code(code, "x").code(), code);
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                serde_json::json!(code.as_str())
            );
        }
    }

    #[test]
    fn pipeline_config_errors_are_not_the_clients_fault() {
        let e = sdxl_pipeline::PipelineError::Config {
            path: "unet/config.json".into(),
            reason: "bad".into(),
        };
        assert_eq!(WorkerError::from(e).code(), ErrorCode::ModelInvalid);
    }
}
