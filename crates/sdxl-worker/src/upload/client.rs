//! The uploader: one `PUT` per image with retries and backoff, then one presigned GET URL each.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::client::{HttpClient, HttpConnector};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{
    Attribute, Attributes, ClientOptions, ObjectStore, PutOptions, PutPayload, RetryConfig,
};
use reqwest::Url;
use sdxl_pipeline::output::ImageFormat;

use super::config::{AddressingStyle, BucketConfig};
use super::key::{check_job_id, object_key};
use super::UploadError;

/// One encoded image to upload: its bytes, the key's file extension and its `Content-Type`.
#[derive(Clone, PartialEq, Eq)]
pub struct UploadItem {
    bytes: Vec<u8>,
    extension: String,
    content_type: String,
}

impl UploadItem {
    /// An item from explicit parts; checked when uploaded (extension: 1 to 8 ASCII letters or
    /// digits; content type: `type/subtype`).
    pub fn new(
        bytes: Vec<u8>,
        extension: impl Into<String>,
        content_type: impl Into<String>,
    ) -> Self {
        UploadItem {
            bytes,
            extension: extension.into(),
            content_type: content_type.into(),
        }
    }

    /// An image encoded by `sdxl_pipeline::output` in `format`: extension from
    /// [`ImageFormat::extension`] (`png`, `jpg`, `webp`), content type `image/png`, `image/jpeg`
    /// or `image/webp`.
    pub fn from_format(bytes: Vec<u8>, format: ImageFormat) -> Self {
        let content_type = match format {
            ImageFormat::Png => "image/png",
            ImageFormat::Jpeg { .. } => "image/jpeg",
            ImageFormat::WebP => "image/webp",
        };
        Self::new(bytes, format.extension(), content_type)
    }

    /// The encoded bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The extension used in the object key (no dot).
    pub fn extension(&self) -> &str {
        &self.extension
    }

    /// The `Content-Type` stored with the object (and served with the presigned URL).
    pub fn content_type(&self) -> &str {
        &self.content_type
    }

    fn check(&self, index: usize) -> Result<(), UploadError> {
        let ext_ok = (1..=8).contains(&self.extension.len())
            && self.extension.bytes().all(|b| b.is_ascii_alphanumeric());
        if !ext_ok {
            return Err(UploadError::InvalidItem {
                index,
                reason: format!(
                    "extension {:?} is not 1 to 8 ASCII letters or digits",
                    self.extension
                ),
            });
        }
        let ct = &self.content_type;
        let ct_ok = ct.len() <= 128
            && ct
                .split_once('/')
                .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty())
            && ct.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
        if !ct_ok {
            return Err(UploadError::InvalidItem {
                index,
                reason: format!("content type {ct:?} is not type/subtype"),
            });
        }
        Ok(())
    }
}

impl fmt::Debug for UploadItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UploadItem")
            .field("bytes", &format_args!("<{} bytes>", self.bytes.len()))
            .field("extension", &self.extension)
            .field("content_type", &self.content_type)
            .finish()
    }
}

/// How often and how patiently a failed `PUT` is retried. Every failure is retried (a wrong
/// secret or a missing bucket too: SPEC §4 asks for at least two retries before `UPLOAD_FAILED`);
/// the wait doubles from `initial_backoff` up to `max_backoff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (at least 2 in production).
    pub retries: u32,
    /// Wait before the first retry.
    pub initial_backoff: Duration,
    /// Longest wait between two attempts.
    pub max_backoff: Duration,
    /// Time limit of one request (connect + send + answer).
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    /// 3 retries after 0.5 s, 1 s, 2 s; 120 s per request (a 20 MB image on a slow uplink).
    fn default() -> Self {
        RetryPolicy {
            retries: 3,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            request_timeout: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// Uploads a job's images to the configured bucket and presigns their GET URLs. Cheap to clone
/// (the HTTP client and its connection pool are shared). `Debug` shows the configuration without
/// credentials.
#[derive(Clone)]
pub struct Uploader {
    store: Arc<AmazonS3>,
    config: BucketConfig,
    policy: RetryPolicy,
}

impl fmt::Debug for Uploader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Uploader")
            .field("config", &self.config)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Uploader {
    /// An uploader for `config` with the default [`RetryPolicy`]. Makes no request.
    pub fn new(config: BucketConfig) -> Result<Self, UploadError> {
        Self::with_policy(config, RetryPolicy::default())
    }

    /// An uploader with an explicit retry policy (tests use millisecond backoffs).
    pub fn with_policy(config: BucketConfig, policy: RetryPolicy) -> Result<Self, UploadError> {
        Self::build(config, policy, None)
    }

    /// Test hook, not for production: like [`with_policy`](Self::with_policy) but every request
    /// to the endpoint's host goes to `addr` (a DNS override), so tests can serve a
    /// virtual-hosted endpoint such as `http://<bucket>.s3.test:<port>` on loopback.
    #[doc(hidden)]
    pub fn with_policy_resolving_to(
        config: BucketConfig,
        policy: RetryPolicy,
        addr: SocketAddr,
    ) -> Result<Self, UploadError> {
        Self::build(config, policy, Some(addr))
    }

    fn build(
        config: BucketConfig,
        policy: RetryPolicy,
        resolve_to: Option<SocketAddr>,
    ) -> Result<Self, UploadError> {
        let client_options = ClientOptions::new()
            .with_allow_http(config.is_http())
            .with_connect_timeout(Duration::from_secs(10).min(policy.request_timeout))
            .with_timeout(policy.request_timeout);
        // Retries are ours (every error, counted, logged without credentials); the client's own
        // retry loop is off so attempts are not multiplied.
        let no_retries = RetryConfig {
            max_retries: 0,
            ..RetryConfig::default()
        };
        let mut builder = AmazonS3Builder::new()
            .with_endpoint(config.service_endpoint())
            .with_virtual_hosted_style_request(config.style() == AddressingStyle::VirtualHosted)
            .with_bucket_name(config.bucket())
            .with_region(config.region())
            .with_access_key_id(config.access_key_id().expose())
            .with_secret_access_key(config.secret_access_key().expose())
            .with_client_options(client_options)
            .with_retry(no_retries);
        if let Some(addr) = resolve_to {
            let host = Url::parse(config.service_endpoint())
                .ok()
                .and_then(|u| u.host_str().map(str::to_string))
                .unwrap_or_default();
            builder = builder.with_http_connector(ResolvingConnector { host, addr, policy });
        }
        let store = builder
            .build()
            .map_err(|e| UploadError::Client(scrub(&e.to_string(), &config)))?;
        Ok(Uploader {
            store: Arc::new(store),
            config,
            policy,
        })
    }

    /// The bucket configuration.
    pub fn config(&self) -> &BucketConfig {
        &self.config
    }

    /// Uploads `images[i]` to `<job id>/<i>.<ext>` with its content type, retrying each `PUT`
    /// per the [`RetryPolicy`], and returns one presigned GET URL per image, in order, valid for
    /// the configured expiry. The job id and every item are checked before anything is sent. On
    /// an error, objects already uploaded for this job stay in the bucket.
    pub async fn upload_images(
        &self,
        job_id: &str,
        images: &[UploadItem],
    ) -> Result<Vec<String>, UploadError> {
        check_job_id(job_id)?;
        for (i, item) in images.iter().enumerate() {
            item.check(i)?;
        }
        let mut urls = Vec::with_capacity(images.len());
        for (i, item) in images.iter().enumerate() {
            let key = object_key(job_id, i, item.extension())?;
            let path = Path::from(key.as_str());
            self.put_with_retries(&key, &path, item).await?;
            let url = self
                .store
                .signed_url(reqwest::Method::GET, &path, self.config.url_expiry())
                .await
                .map_err(|e| UploadError::Presign {
                    key: key.clone(),
                    message: scrub(&e.to_string(), &self.config),
                })?;
            urls.push(url.to_string());
        }
        tracing::info!(
            job_id,
            bucket = self.config.bucket(),
            images = images.len(),
            "uploaded the results"
        );
        Ok(urls)
    }

    async fn put_with_retries(
        &self,
        key: &str,
        path: &Path,
        item: &UploadItem,
    ) -> Result<(), UploadError> {
        let payload = PutPayload::from(item.bytes.clone());
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, item.content_type.clone().into());
        let attempts = self.policy.retries.saturating_add(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let opts = PutOptions {
                attributes: attributes.clone(),
                ..PutOptions::default()
            };
            match self.store.put_opts(path, payload.clone(), opts).await {
                Ok(_) => {
                    tracing::debug!(key, bytes = item.bytes.len(), attempt, "uploaded");
                    return Ok(());
                }
                Err(e) => {
                    let message = scrub(&e.to_string(), &self.config);
                    if attempt >= attempts {
                        tracing::warn!(key, attempt, error = %message, "upload failed, giving up");
                        return Err(UploadError::Put {
                            bucket: self.config.bucket().to_string(),
                            key: key.to_string(),
                            attempts,
                            message,
                        });
                    }
                    let wait = self.policy.backoff(attempt);
                    tracing::warn!(
                        key,
                        attempt,
                        retry_in_ms = wait.as_millis() as u64,
                        error = %message,
                        "upload failed, retrying"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

/// The test hook's HTTP client: reqwest with a fixed address for one host.
#[derive(Debug)]
struct ResolvingConnector {
    host: String,
    addr: SocketAddr,
    policy: RetryPolicy,
}

impl HttpConnector for ResolvingConnector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        let client = reqwest::Client::builder()
            .resolve(&self.host, self.addr)
            .timeout(self.policy.request_timeout)
            .build()
            .map_err(|e| object_store::Error::Generic {
                store: "S3",
                source: Box::new(e),
            })?;
        Ok(HttpClient::new(client))
    }
}

/// [`Uploader`] for synchronous callers (the handler's blocking thread, the CLI), like
/// `store::ModelStore`: owns a one-thread tokio runtime that drives the HTTP client (so its
/// connection pool stays valid between calls) and runs each upload from a scoped thread, so it can
/// be called — and dropped — from any thread, including a blocking or async thread of another
/// runtime (the calling thread blocks until the upload is done).
pub struct BlockingUploader {
    runtime: Option<tokio::runtime::Runtime>,
    inner: Uploader,
}

impl fmt::Debug for BlockingUploader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingUploader")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl BlockingUploader {
    /// Wraps an uploader with its own runtime (one worker thread, `sdxl-upload`).
    pub fn new(inner: Uploader) -> Result<Self, UploadError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sdxl-upload")
            .enable_all()
            .build()
            .map_err(|e| UploadError::Runtime(e.to_string()))?;
        Ok(BlockingUploader {
            runtime: Some(runtime),
            inner,
        })
    }

    /// The wrapped uploader.
    pub fn uploader(&self) -> &Uploader {
        &self.inner
    }

    /// [`Uploader::upload_images`], blocking until done.
    pub fn upload_images(
        &self,
        job_id: &str,
        images: &[UploadItem],
    ) -> Result<Vec<String>, UploadError> {
        let Some(runtime) = &self.runtime else {
            return Err(UploadError::Runtime(
                "the upload runtime is shut down".into(),
            ));
        };
        let fut = self.inner.upload_images(job_id, images);
        std::thread::scope(|s| {
            s.spawn(|| runtime.block_on(fut))
                .join()
                .unwrap_or_else(|_| Err(UploadError::Runtime("the upload thread panicked".into())))
        })
    }
}

impl Drop for BlockingUploader {
    /// Shuts the runtime down without blocking (a plain drop panics inside an async context).
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Removes the access key id and the secret from a message (defence in depth: S3 error bodies
/// can quote the key id, and no code path should ever see the secret in one).
fn scrub(message: &str, config: &BucketConfig) -> String {
    let mut out = message.to_string();
    for secret in [config.secret_access_key(), config.access_key_id()] {
        let value = secret.expose();
        if !value.is_empty() {
            out = out.replace(value, "<redacted>");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            retries: 6,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(3),
            request_timeout: Duration::from_secs(1),
        };
        let waits: Vec<u128> = (1..=5).map(|r| p.backoff(r).as_millis()).collect();
        assert_eq!(waits, [500, 1000, 2000, 3000, 3000]);
        assert!(RetryPolicy::default().retries >= 2);
    }

    #[test]
    fn scrub_removes_both_credentials() {
        let config =
            BucketConfig::new("https://b.s3.amazonaws.com", "AKIAKEYID", "s3cr3t").unwrap();
        assert_eq!(
            scrub("id AKIAKEYID secret s3cr3t", &config),
            "id <redacted> secret <redacted>"
        );
    }

    #[test]
    fn items_are_checked() {
        assert!(UploadItem::from_format(vec![1], ImageFormat::Png)
            .check(0)
            .is_ok());
        let bad_ext = UploadItem::new(vec![1], "p/ng", "image/png");
        assert!(matches!(
            bad_ext.check(2),
            Err(UploadError::InvalidItem { index: 2, .. })
        ));
        let bad_type = UploadItem::new(vec![1], "png", "png");
        assert!(bad_type.check(0).is_err());
        let jpeg = UploadItem::from_format(vec![1], ImageFormat::Jpeg { quality: 90 });
        assert_eq!(
            (jpeg.extension(), jpeg.content_type()),
            ("jpg", "image/jpeg")
        );
        assert_eq!(format!("{jpeg:?}").matches("bytes>").count(), 1);
    }
}
