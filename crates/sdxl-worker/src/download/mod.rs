//! Downloading model files over HTTP(S): resumable streaming into `<file>.part` by the holder of
//! an OS file lock (`flock`), size and sha256
//! verification, retries with backoff, manual redirects that never carry `CIVITAI_API_KEY` to
//! another host, and safetensors sanity checks (SPEC §9, §12).

mod error;
mod http;
mod lock;
mod options;
mod progress;
mod redact;
mod verify;

pub use error::DownloadError;
pub(crate) use http::write_atomic;
pub use http::{DownloadRequest, Downloaded, Downloader};
pub use lock::FileLock;
pub use options::{ApiKey, DownloadOptions, CIVITAI_API_KEY_ENV, MAX_DOWNLOAD_BYTES_ENV};
pub use progress::{DownloadProgress, NoProgress, TracingProgress};
pub use redact::{redact_url, sends_key};
pub use verify::{check_safetensors, sha256_file, SafetensorsProblem};
