//! The one error type of the upload module. Messages are built from already-scrubbed text: no
//! variant holds a credential or an error value that could print one.

/// Why the bucket could not be configured or an upload did not complete. The job handler maps
/// every variant raised during a job to the code `UPLOAD_FAILED`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UploadError {
    /// `BUCKET_*` env vars (or explicit values) are incomplete or invalid; the message names the
    /// variable and what is wrong, never a credential value.
    #[error("bucket configuration: {0}")]
    Config(String),
    /// The job id cannot be used as the first segment of an object key.
    #[error(
        "job id {0:?} cannot be used in an object key (allowed: 1 to 128 ASCII letters, digits, \
         '.', '_', '-'; not only dots)"
    )]
    InvalidJobId(String),
    /// An [`UploadItem`](super::UploadItem) has an unusable extension or content type.
    #[error("upload item {index}: {reason}")]
    InvalidItem {
        /// Position of the item in the batch.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The S3 client could not be created from the configuration.
    #[error("could not create the S3 client: {0}")]
    Client(String),
    /// A `PUT` failed on every attempt.
    #[error("uploading {key} to bucket {bucket} failed after {attempts} attempts: {message}")]
    Put {
        /// Bucket name.
        bucket: String,
        /// Object key.
        key: String,
        /// Attempts made (1 + retries).
        attempts: u32,
        /// The last attempt's error, credentials removed.
        message: String,
    },
    /// Presigning the GET URL of an uploaded object failed.
    #[error("presigning the URL of {key} failed: {message}")]
    Presign {
        /// Object key.
        key: String,
        /// The error, credentials removed.
        message: String,
    },
    /// The blocking wrapper could not start its runtime.
    #[error("upload runtime: {0}")]
    Runtime(String),
}
