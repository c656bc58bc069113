//! Typed download/cache errors with their SPEC §4 codes. Messages never contain the API key or
//! query-string values of URLs.

use crate::error::{ErrorCode, WorkerError};
use std::path::PathBuf;

/// Why a model could not be made available.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// 401/403: the server wants (other) credentials.
    #[error("{name}: {url} answered HTTP {status}: {hint}")]
    Unauthorized {
        /// Entry name.
        name: String,
        /// Redacted URL.
        url: String,
        /// 401 or 403.
        status: u16,
        /// What to do about it.
        hint: String,
    },
    /// 404 or another non-retryable HTTP status.
    #[error("{name}: {url} answered HTTP {status}{hint}")]
    HttpStatus {
        /// Entry name.
        name: String,
        /// Redacted URL.
        url: String,
        /// The status.
        status: u16,
        /// Extra explanation (starts with "; " when present).
        hint: String,
    },
    /// The server sent HTML/JSON/text where a model was expected.
    #[error("{name}: {url} returned {what} instead of a model file ({snippet:?}); {fix}")]
    NotAModel {
        /// Entry name.
        name: String,
        /// Redacted URL.
        url: String,
        /// e.g. `an HTML page`.
        what: String,
        /// First bytes of the body, redacted.
        snippet: String,
        /// What to fix.
        fix: String,
    },
    /// Retries ran out on 429/5xx/timeouts/connection errors.
    #[error("{name}: giving up on {url} after {attempts} attempts: {last}")]
    RetriesExhausted {
        /// Entry name.
        name: String,
        /// Redacted URL.
        url: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// Announced or streamed size is over the cap.
    #[error("{name}: download is {size} bytes, over the cap of {cap} bytes (env SDXL_MAX_DOWNLOAD_BYTES)")]
    TooLarge {
        /// Entry name.
        name: String,
        /// Size seen so far or announced.
        size: u64,
        /// The cap.
        cap: u64,
    },
    /// Downloaded size differs from the announced size.
    #[error("{name}: size mismatch: got {got} bytes, server announced {expected}")]
    SizeMismatch {
        /// Entry name.
        name: String,
        /// Bytes received.
        got: u64,
        /// Bytes announced.
        expected: u64,
    },
    /// The file's sha256 is not the one in models.toml.
    #[error("{name}: sha256 mismatch for {file}: expected {expected}, got {got}; the download was discarded")]
    ShaMismatch {
        /// Entry name.
        name: String,
        /// The file checked.
        file: PathBuf,
        /// From models.toml.
        expected: String,
        /// Computed.
        got: String,
    },
    /// The file is not a valid safetensors file (or a local path is missing).
    #[error("{name}: {file} is not a usable model file: {problem}")]
    Invalid {
        /// Entry name.
        name: String,
        /// The offending file.
        file: PathBuf,
        /// What is wrong (first bad tensor when known).
        problem: String,
    },
    /// Too many redirects or a redirect without a usable Location.
    #[error("{name}: bad redirect from {url}: {problem}")]
    Redirect {
        /// Entry name.
        name: String,
        /// Redacted URL.
        url: String,
        /// What went wrong.
        problem: String,
    },
    /// Hugging Face Hub download failed.
    #[error("{name}: Hugging Face download of {repo}/{path} failed: {message}")]
    HuggingFace {
        /// Entry name.
        name: String,
        /// `owner/repo`.
        repo: String,
        /// File in the repo.
        path: String,
        /// hf-hub's message.
        message: String,
    },
    /// Local I/O (cache dir, part file, lock file).
    #[error("{name}: {what} {file}: {source}")]
    Io {
        /// Entry name.
        name: String,
        /// What was being done.
        what: &'static str,
        /// The path involved.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

impl DownloadError {
    /// The SPEC §4 error code: `MODEL_INVALID` for files that are there but unusable,
    /// `MODEL_DOWNLOAD_FAILED` for everything that went wrong getting them.
    pub fn code(&self) -> ErrorCode {
        match self {
            DownloadError::Invalid { .. } | DownloadError::ShaMismatch { .. } => {
                ErrorCode::ModelInvalid
            }
            _ => ErrorCode::ModelDownloadFailed,
        }
    }

    pub(crate) fn io(
        name: &str,
        what: &'static str,
        file: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let name = name.to_string();
        let file = file.to_path_buf();
        move |source| DownloadError::Io {
            name,
            what,
            file,
            source,
        }
    }
}

impl From<DownloadError> for WorkerError {
    fn from(e: DownloadError) -> Self {
        match e.code() {
            ErrorCode::ModelInvalid => WorkerError::ModelInvalid(e.to_string()),
            _ => WorkerError::ModelDownloadFailed(e.to_string()),
        }
    }
}
