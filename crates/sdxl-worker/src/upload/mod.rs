//! Result upload to an S3-compatible bucket (SPEC §4 "Result upload"): the bucket settings from
//! `BUCKET_*` env vars, one object per image at `<job id>/<i>.<ext>` with its `Content-Type`,
//! retries with backoff, and presigned (SigV4) GET URLs. Signing and the S3 protocol come from the
//! `object_store` crate; credentials never appear in `Debug`/`Display` output, errors or logs.
//!
//! This module is a building block: it knows nothing about jobs beyond their id. The handler
//! decides when to upload and maps [`UploadError`] to the job error code `UPLOAD_FAILED`.

mod client;
mod config;
mod error;
mod key;

pub use client::{BlockingUploader, RetryPolicy, UploadItem, Uploader};
pub use config::{
    AddressingStyle, BucketConfig, Secret, BUCKET_ACCESS_KEY_ID_ENV, BUCKET_ENDPOINT_URL_ENV,
    BUCKET_REGION_ENV, BUCKET_SECRET_ACCESS_KEY_ENV, BUCKET_URL_EXPIRY_S_ENV, DEFAULT_REGION,
    MAX_URL_EXPIRY,
};
pub use error::UploadError;
pub use key::{check_job_id, object_key};
