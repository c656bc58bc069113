//! Result upload (SPEC §4) against a real S3 implementation (`s3s-fs`, started in-process by
//! `s3_support`): objects, keys, content types, presigned URLs fetched without credentials,
//! virtual-hosted and path-style endpoints, retries, and credentials kept out of errors and logs.

#[path = "s3_support/mod.rs"]
mod s3_support;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use s3_support::{S3Server, BUCKET, KEY_ID, SECRET};
use sdxl_pipeline::output::ImageFormat;
use sdxl_worker::upload::{
    BlockingUploader, BucketConfig, RetryPolicy, UploadError, UploadItem, Uploader,
    BUCKET_ENDPOINT_URL_ENV,
};
use tracing_subscriber::EnvFilter;

/// Millisecond backoffs so failure tests stay fast; 2 retries, the SPEC minimum.
fn fast_policy() -> RetryPolicy {
    RetryPolicy {
        retries: 2,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(50),
        request_timeout: Duration::from_secs(5),
    }
}

fn uploader(endpoint: &str, secret: &str) -> Uploader {
    captured_logs();
    let config = BucketConfig::new(endpoint, KEY_ID, secret).unwrap();
    Uploader::with_policy(config, fast_policy()).unwrap()
}

/// Deterministic bytes that start like a PNG and do not compress to nothing.
fn fake_image(len: usize, seed: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out.push(x as u8);
    }
    out
}

/// GETs a URL with a plain client (no credentials): status, content type, body.
async fn fetch(url: &str) -> (u16, Option<String>, Vec<u8>) {
    let resp = reqwest::get(url).await.unwrap();
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string());
    (status, content_type, resp.bytes().await.unwrap().to_vec())
}

fn query_param(url: &str, name: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).unwrap();
    url.query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

#[tokio::test]
async fn presigned_url_serves_the_exact_bytes_and_content_type() {
    let server = S3Server::start();
    let png = fake_image(300_000, 1);
    let urls = uploader(&server.path_style_endpoint(), SECRET)
        .upload_images(
            "job-1",
            &[UploadItem::from_format(png.clone(), ImageFormat::Png)],
        )
        .await
        .unwrap();
    assert_eq!(urls.len(), 1);
    let url = &urls[0];
    assert!(
        url.starts_with(&format!("http://{}/{BUCKET}/job-1/0.png?", server.addr())),
        "{url}"
    );
    assert_eq!(
        query_param(url, "X-Amz-Algorithm").as_deref(),
        Some("AWS4-HMAC-SHA256")
    );
    assert_eq!(query_param(url, "X-Amz-Expires").as_deref(), Some("604800"));
    assert!(!url.contains(SECRET));
    assert_eq!(
        server.object("job-1/0.png").as_deref(),
        Some(png.as_slice())
    );

    let (status, content_type, body) = fetch(url).await;
    assert_eq!(status, 200);
    assert_eq!(content_type.as_deref(), Some("image/png"));
    assert!(body == png, "presigned GET returned different bytes");
}

#[tokio::test]
async fn presigned_url_is_checked_by_the_server() {
    let server = S3Server::start();
    let urls = uploader(&server.path_style_endpoint(), SECRET)
        .upload_images(
            "job-sig",
            &[UploadItem::from_format(
                fake_image(1000, 2),
                ImageFormat::Png,
            )],
        )
        .await
        .unwrap();
    // A tampered signature and an unsigned URL are refused: the server really verifies SigV4.
    let url = &urls[0];
    let sig = query_param(url, "X-Amz-Signature").unwrap();
    let flipped = format!(
        "{}{}",
        &sig[..sig.len() - 1],
        if sig.ends_with('0') { '1' } else { '0' }
    );
    let (status, _, _) = fetch(&url.replace(&sig, &flipped)).await;
    assert_eq!(status, 403);
    let unsigned = url.split('?').next().unwrap();
    let (status, _, _) = fetch(unsigned).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn several_images_get_keys_job_index_extension() {
    let server = S3Server::start();
    let items = vec![
        UploadItem::from_format(fake_image(5000, 10), ImageFormat::Png),
        UploadItem::from_format(fake_image(6000, 11), ImageFormat::Jpeg { quality: 90 }),
        UploadItem::from_format(fake_image(7000, 12), ImageFormat::WebP),
        UploadItem::new(fake_image(8000, 13), "png", "image/png"),
    ];
    let urls = uploader(&server.path_style_endpoint(), SECRET)
        .upload_images("e3d2e250-ea81-4074-9838-1c52d006ddcb-u1", &items)
        .await
        .unwrap();
    let job = "e3d2e250-ea81-4074-9838-1c52d006ddcb-u1";
    let expected_keys = [
        format!("{job}/0.png"),
        format!("{job}/1.jpg"),
        format!("{job}/2.webp"),
        format!("{job}/3.png"),
    ];
    assert_eq!(server.keys(), expected_keys);
    assert_eq!(urls.len(), items.len());
    for ((url, item), key) in urls.iter().zip(&items).zip(&expected_keys) {
        assert!(url.contains(&format!("/{BUCKET}/{key}?")), "{url}");
        let (status, content_type, body) = fetch(url).await;
        assert_eq!(status, 200, "{key}");
        assert_eq!(content_type.as_deref(), Some(item.content_type()), "{key}");
        assert!(body == item.bytes(), "{key}: different bytes");
    }
}

#[tokio::test]
async fn virtual_hosted_endpoint_puts_the_bucket_in_the_host() {
    let server = S3Server::start_virtual_hosted();
    let endpoint = server.virtual_hosted_endpoint();
    let config = BucketConfig::new(&endpoint, KEY_ID, SECRET).unwrap();
    assert_eq!(config.bucket(), BUCKET);
    captured_logs();
    let up = Uploader::with_policy_resolving_to(config, fast_policy(), server.addr()).unwrap();
    let bytes = fake_image(20_000, 3);
    let urls = up
        .upload_images(
            "vh-job",
            &[UploadItem::from_format(bytes.clone(), ImageFormat::WebP)],
        )
        .await
        .unwrap();
    let url = &urls[0];
    assert!(
        url.starts_with(&format!("{endpoint}/vh-job/0.webp?")),
        "{url}"
    );
    assert_eq!(
        server.object("vh-job/0.webp").as_deref(),
        Some(bytes.as_slice())
    );

    // `<bucket>.s3.test` is not in DNS: resolve it for the plain GET as well.
    let host = format!("{BUCKET}.{}", s3_support::VIRTUAL_DOMAIN);
    let client = reqwest::Client::builder()
        .resolve(&host, server.addr())
        .build()
        .unwrap();
    let resp = client.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/webp");
    assert!(resp.bytes().await.unwrap() == bytes);
}

#[tokio::test]
async fn url_expiry_comes_from_the_config() {
    let server = S3Server::start();
    let config = BucketConfig::new(&server.path_style_endpoint(), KEY_ID, SECRET)
        .unwrap()
        .with_url_expiry(Duration::from_secs(90))
        .unwrap();
    captured_logs();
    let urls = Uploader::with_policy(config, fast_policy())
        .unwrap()
        .upload_images(
            "exp",
            &[UploadItem::from_format(vec![1, 2, 3], ImageFormat::Png)],
        )
        .await
        .unwrap();
    assert_eq!(
        query_param(&urls[0], "X-Amz-Expires").as_deref(),
        Some("90")
    );
    assert_eq!(fetch(&urls[0]).await.2, vec![1, 2, 3]);
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl LogBuffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Every log line of this test binary at TRACE level (ours, object_store's, reqwest's, hyper's),
/// except the test server's. One global subscriber installed by every test that uploads: a
/// per-test (thread-scoped) one would miss events whose callsite another thread cached as off.
fn captured_logs() -> &'static LogBuffer {
    static LOGS: OnceLock<LogBuffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = LogBuffer::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("trace,s3s=off,s3s_fs=off"))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        logs
    })
}

#[tokio::test]
async fn wrong_secret_fails_after_retries_and_never_shows_the_secret() {
    let server = S3Server::start();
    let wrong_secret = "WRONG-secret-9a8b7c6d5e";
    let logs = captured_logs();

    let up = uploader(&server.path_style_endpoint(), wrong_secret);
    let started = Instant::now();
    let err = up
        .upload_images(
            "job-denied",
            &[UploadItem::from_format(
                fake_image(4000, 4),
                ImageFormat::Png,
            )],
        )
        .await
        .unwrap_err();
    let elapsed = started.elapsed();

    let UploadError::Put { attempts, key, .. } = &err else {
        panic!("expected a Put error, got {err:?}")
    };
    assert_eq!(*attempts, 3, "1 attempt + 2 retries");
    assert_eq!(key, "job-denied/0.png");
    // What the operator needs: the status and the server's error code.
    let text = err.to_string();
    assert!(
        text.contains("403") && text.contains("SignatureDoesNotMatch"),
        "{text}"
    );
    // Two backoffs of 20 ms and 40 ms happened.
    assert!(elapsed >= Duration::from_millis(60), "{elapsed:?}");
    assert!(server.keys().is_empty());

    let logs = logs.text();
    let ours: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("key=\"job-denied/0.png\""))
        .collect();
    let retrying = ours
        .iter()
        .filter(|l| l.contains("upload failed, retrying"))
        .count();
    assert_eq!(retrying, 2, "{logs}");
    assert!(ours.iter().any(|l| l.contains("giving up")), "{logs}");
    let shown = [
        err.to_string(),
        format!("{err:?}"),
        format!("{up:?}"),
        format!("{:?}", up.config()),
        up.config().to_string(),
        logs,
    ];
    for text in &shown {
        assert!(!text.contains(wrong_secret), "secret leaked: {text}");
        assert!(!text.contains(SECRET), "server secret leaked: {text}");
        assert!(!text.contains(KEY_ID), "access key id leaked: {text}");
    }
}

#[tokio::test]
async fn unreachable_endpoint_fails_after_retries() {
    // Bind and drop: a loopback port with nothing listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = uploader(&format!("http://127.0.0.1:{port}/{BUCKET}"), SECRET)
        .upload_images(
            "job-x",
            &[UploadItem::from_format(vec![0; 10], ImageFormat::Png)],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, UploadError::Put { attempts: 3, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn bad_job_ids_and_items_are_refused_before_any_request() {
    let server = S3Server::start();
    let up = uploader(&server.path_style_endpoint(), SECRET);
    let png = UploadItem::from_format(vec![1], ImageFormat::Png);
    for id in ["", "..", "a/b", "../results", "job 1"] {
        let err = up
            .upload_images(id, std::slice::from_ref(&png))
            .await
            .unwrap_err();
        assert!(
            matches!(err, UploadError::InvalidJobId(_)),
            "{id:?}: {err:?}"
        );
    }
    let bad = UploadItem::new(vec![1], "../png", "image/png");
    let err = up.upload_images("ok", &[png, bad]).await.unwrap_err();
    assert!(
        matches!(err, UploadError::InvalidItem { index: 1, .. }),
        "{err:?}"
    );
    assert!(server.keys().is_empty(), "{:?}", server.keys());
}

#[test]
fn blocking_wrapper_uploads_from_a_plain_thread() {
    let server = S3Server::start();
    let up = BlockingUploader::new(uploader(&server.path_style_endpoint(), SECRET)).unwrap();
    for round in 0..2 {
        // Two calls on the same runtime: pooled connections stay usable.
        let job = format!("blocking-{round}");
        let bytes = fake_image(2048, round);
        let urls = up
            .upload_images(
                &job,
                &[UploadItem::from_format(bytes.clone(), ImageFormat::Png)],
            )
            .unwrap();
        assert_eq!(urls.len(), 1);
        assert_eq!(server.object(&format!("{job}/0.png")), Some(bytes));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_wrapper_works_inside_another_runtime() {
    // Where the handler calls it: a blocking thread of the worker's runtime, and (worst case) an
    // async task of it; the wrapper is also dropped there.
    let server = S3Server::start();
    let up =
        Arc::new(BlockingUploader::new(uploader(&server.path_style_endpoint(), SECRET)).unwrap());
    let bytes = fake_image(4096, 7);
    let (up2, bytes2) = (Arc::clone(&up), bytes.clone());
    let urls = tokio::task::spawn_blocking(move || {
        up2.upload_images(
            "from-blocking",
            &[UploadItem::from_format(bytes2, ImageFormat::Png)],
        )
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(fetch(&urls[0]).await.2, bytes);
    let urls = up
        .upload_images(
            "from-async",
            &[UploadItem::from_format(bytes.clone(), ImageFormat::Png)],
        )
        .unwrap();
    assert_eq!(fetch(&urls[0]).await.2, bytes);
    drop(up);
}

#[test]
fn env_without_a_bucket_endpoint_means_no_upload() {
    // The test process is started without BUCKET_* (CI, cargo test); `from_lookup` covers the
    // other combinations without touching the process environment.
    if std::env::var_os(BUCKET_ENDPOINT_URL_ENV).is_none() {
        assert_eq!(BucketConfig::from_env().unwrap(), None);
    }
    let partial = BucketConfig::from_lookup(|name| {
        (name == BUCKET_ENDPOINT_URL_ENV).then(|| "https://b.s3.amazonaws.com".to_string())
    })
    .unwrap_err();
    assert!(matches!(partial, UploadError::Config(_)));
    assert!(
        partial.to_string().contains("BUCKET_SECRET_ACCESS_KEY"),
        "{partial}"
    );
}

#[test]
fn config_debug_never_shows_credentials() {
    let config = BucketConfig::new("https://b.s3.amazonaws.com", KEY_ID, SECRET).unwrap();
    let text = format!("{config:?} {config:#?} {config}");
    assert!(!text.contains(SECRET) && !text.contains(KEY_ID), "{text}");
    assert!(text.contains("<redacted>"), "{text}");
}

#[test]
fn expiry_over_seven_days_is_refused() {
    let config = BucketConfig::new("https://b.s3.amazonaws.com", KEY_ID, SECRET).unwrap();
    let err = config
        .clone()
        .with_url_expiry(Duration::from_secs(7 * 24 * 3600 + 1))
        .unwrap_err();
    assert!(err.to_string().contains("604800"), "{err}");
    assert!(config.with_url_expiry(Duration::from_secs(604_800)).is_ok());
}
