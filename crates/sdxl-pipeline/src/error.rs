//! The one error type of the pipeline crate, with a coarse [`ErrorKind`] that the worker maps to
//! the job error codes of SPEC §4.

use std::path::PathBuf;

/// Result alias used throughout the pipeline crate.
pub type Result<T, E = PipelineError> = std::result::Result<T, E>;

/// What a client can do about an error (mapped once to the SPEC's error codes by the worker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request itself is wrong (`INVALID_INPUT`).
    InvalidInput,
    /// A model file or config is unusable (`MODEL_INVALID`).
    ModelInvalid,
    /// The device ran out of memory (`OUT_OF_MEMORY`).
    OutOfMemory,
    /// The job was cancelled between steps (`CANCELLED`).
    Cancelled,
    /// Anything else (`INTERNAL`).
    Internal,
}

/// Errors of the pipeline crate. Every variant that concerns a file names it.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The request has a value the pipeline cannot honour.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A model file is unreadable or is not what it claims to be.
    #[error("model file {}: {reason}", path.display())]
    ModelInvalid { path: PathBuf, reason: String },
    /// A tensor in a model file is missing, mis-shaped or of an unusable dtype.
    #[error("model file {}: tensor `{tensor}`: {reason}", path.display())]
    TensorInvalid {
        path: PathBuf,
        tensor: String,
        reason: String,
    },
    /// A model configuration (config.json) is missing or malformed.
    #[error("model config {}: {reason}", path.display())]
    Config { path: PathBuf, reason: String },
    /// A model's architecture description (config.json or the built-in SDXL config) describes
    /// something this crate cannot build.
    #[error("model config: {0}")]
    InvalidConfig(String),
    /// A broken invariant inside the pipeline (a bug, never the client's fault).
    #[error("internal error: {0}")]
    Internal(String),
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The device ran out of memory.
    #[error("out of memory: {0}")]
    OutOfMemory(String),
    /// The job was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// A1111 `/interrupt` or `/skip` stopped the sampler (handled inside the render loop,
    /// which decodes the last latent instead; see [`crate::interrupt`]).
    #[error("interrupted")]
    Interrupted,
    /// A computation produced NaN/Inf where a finite value was needed.
    #[error("numerical failure: {0}")]
    NonFinite(String),
    /// Encoding an output image failed.
    #[error("image encoding: {0}")]
    Image(String),
    /// An I/O error on a named file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A tensor operation failed (the message carries candle's, without its backtrace).
    #[error("tensor operation: {}", candle_message(.0))]
    Candle(candle_core::Error),
    /// A weight reached through a `VarBuilder` (whose file is not known here) is missing or
    /// mis-shaped; `tensor` is its full name.
    #[error("tensor `{tensor}`: {reason}")]
    WeightInvalid { tensor: String, reason: String },
}

impl PipelineError {
    /// The coarse class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidInput(_) => ErrorKind::InvalidInput,
            Self::ModelInvalid { .. }
            | Self::TensorInvalid { .. }
            | Self::WeightInvalid { .. }
            | Self::Config { .. }
            | Self::InvalidConfig(_) => ErrorKind::ModelInvalid,
            Self::OutOfMemory(_) => ErrorKind::OutOfMemory,
            Self::Cancelled | Self::Interrupted => ErrorKind::Cancelled,
            Self::Candle(e) if is_oom_message(&candle_message(e)) => ErrorKind::OutOfMemory,
            _ => ErrorKind::Internal,
        }
    }
}

impl From<candle_core::Error> for PipelineError {
    fn from(e: candle_core::Error) -> Self {
        Self::Candle(e)
    }
}

/// The message of a candle error without the backtraces candle attaches when `RUST_BACKTRACE`
/// is set (they must not reach job error messages).
pub fn candle_message(e: &candle_core::Error) -> String {
    use candle_core::Error as E;
    match e {
        E::WithBacktrace { inner, .. } => candle_message(inner),
        E::Context { inner, context } => format!("{context}: {}", candle_message(inner)),
        E::WithPath { inner, path } => format!("{}: {}", path.display(), candle_message(inner)),
        other => other.to_string(),
    }
}

/// True when an error message from a backend (CUDA, allocator) reports exhausted memory.
pub fn is_oom_message(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    m.contains("out of memory")
        || m.contains("out_of_memory")
        || m.contains("cuda_error_out_of_memory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candle_backtraces_stay_out_of_messages() {
        let inner = candle_core::Error::Msg("unsupported dtype BF16 for op matmul".into());
        let with_bt = candle_core::Error::WithBacktrace {
            inner: Box::new(inner),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        let nested = with_bt.context("conv2d");
        let msg = PipelineError::from(nested).to_string();
        assert_eq!(
            msg,
            "tensor operation: conv2d: unsupported dtype BF16 for op matmul"
        );
        let oom = candle_core::Error::WithBacktrace {
            inner: Box::new(candle_core::Error::Msg("CUDA_ERROR_OUT_OF_MEMORY".into())),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        assert_eq!(PipelineError::from(oom).kind(), ErrorKind::OutOfMemory);
    }
}
