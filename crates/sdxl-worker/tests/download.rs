//! Downloader and model cache against a scripted HTTP/1.1 server on 127.0.0.1 that records every
//! request. No internet, no timing assertions; backoff delays are shrunk to milliseconds.

use sdxl_worker::cache::ModelCache;
use sdxl_worker::download::{ApiKey, DownloadError, DownloadOptions, DownloadProgress, FileLock};
use sdxl_worker::models::{AuthKind, LoraEntry, Source};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

// ---------------------------------------------------------------- scripted server

#[derive(Debug, Clone)]
struct Recorded {
    path: String,
    headers: HashMap<String, String>,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

#[derive(Debug, Clone, Default)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Announce the full Content-Length but close the connection after this many body bytes.
    cut_after: Option<usize>,
    /// Send no Content-Length (body ends when the connection closes).
    no_length: bool,
    /// Wait before answering.
    delay: Option<Duration>,
}

impl Reply {
    fn ok(body: &[u8]) -> Reply {
        Reply {
            status: 200,
            headers: vec![("Content-Type".into(), "application/octet-stream".into())],
            body: body.to_vec(),
            ..Reply::default()
        }
    }
    fn status(status: u16) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type".into(), "text/plain".into())],
            body: format!("status {status}").into_bytes(),
            ..Reply::default()
        }
    }
    fn with_header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.into(), v.into()));
        self
    }
    fn redirect(location: &str) -> Reply {
        Reply::status(302).with_header("Location", location)
    }
    /// 206 for a `Range: bytes=N-` or `bytes=N-M` request (or 200 when there is none).
    fn ranged(req: &Recorded, body: &[u8]) -> Reply {
        let Some((start, end)) = req
            .header("range")
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split_once('-'))
            .and_then(|(a, b)| {
                let start = a.parse::<usize>().ok()?;
                let end = match b {
                    "" => body.len() - 1,
                    b => b.parse::<usize>().ok()?.min(body.len() - 1),
                };
                Some((start, end))
            })
        else {
            return Reply::ok(body);
        };
        Reply {
            status: 206,
            headers: vec![
                ("Content-Type".into(), "application/octet-stream".into()),
                (
                    "Content-Range".into(),
                    format!("bytes {start}-{end}/{}", body.len()),
                ),
            ],
            body: body[start..=end].to_vec(),
            ..Reply::default()
        }
    }
}

type Script = Arc<dyn Fn(usize, &Recorded) -> Reply + Send + Sync>;

struct Server {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

impl Server {
    async fn start(script: impl Fn(usize, &Recorded) -> Reply + Send + Sync + 'static) -> Server {
        Self::start_on("127.0.0.1:0", script).await
    }

    async fn start_on(
        bind: &str,
        script: impl Fn(usize, &Recorded) -> Reply + Send + Sync + 'static,
    ) -> Server {
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script: Script = Arc::new(script);
        let counter = Arc::new(AtomicUsize::new(0));
        let reqs = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let (script, reqs, counter) = (script.clone(), reqs.clone(), counter.clone());
                tokio::spawn(async move {
                    let (rd, mut wr) = sock.into_split();
                    let mut rd = BufReader::new(rd);
                    let mut line = String::new();
                    if rd.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                    let mut headers = HashMap::new();
                    loop {
                        let mut h = String::new();
                        if rd.read_line(&mut h).await.unwrap_or(0) == 0 || h.trim().is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':') {
                            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                        }
                    }
                    let rec = Recorded { path, headers };
                    let n = counter.fetch_add(1, Ordering::SeqCst);
                    reqs.lock().unwrap().push(rec.clone());
                    let reply = script(n, &rec);
                    if let Some(d) = reply.delay {
                        tokio::time::sleep(d).await;
                    }
                    let mut head = format!("HTTP/1.1 {} X\r\nConnection: close\r\n", reply.status);
                    for (k, v) in &reply.headers {
                        head.push_str(&format!("{k}: {v}\r\n"));
                    }
                    if !reply.no_length {
                        head.push_str(&format!("Content-Length: {}\r\n", reply.body.len()));
                    }
                    head.push_str("\r\n");
                    let _ = wr.write_all(head.as_bytes()).await;
                    let body = match reply.cut_after {
                        Some(n) => &reply.body[..n],
                        None => &reply.body[..],
                    };
                    let _ = wr.write_all(body).await;
                    let _ = wr.flush().await;
                    let _ = wr.shutdown().await;
                });
            }
        });
        Server { addr, requests }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------- helpers

/// A valid safetensors file with one F32 tensor of `n` elements (values 0..n).
fn safetensors_bytes(n: usize) -> Vec<u8> {
    let header = format!(
        r#"{{"w":{{"dtype":"F32","shape":[{n}],"data_offsets":[0,{}]}}}}"#,
        4 * n
    );
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    for i in 0..n {
        out.extend_from_slice(&(i as f32).to_le_bytes());
    }
    out
}

fn sha_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn fast_opts() -> DownloadOptions {
    DownloadOptions {
        max_retries: 3,
        backoff_base: Duration::from_millis(1),
        backoff_max: Duration::from_millis(5),
        retry_after_cap: Duration::from_millis(10),
        connect_timeout: Duration::from_secs(10),
        read_timeout: Duration::from_secs(20),
        ..DownloadOptions::default()
    }
}

fn entry(url: &str) -> LoraEntry {
    LoraEntry {
        name: "Test LoRA".into(),
        source: Source::Url(url.into()),
        filename: "test.safetensors".into(),
        sha256: None,
        scale: 1.0,
        auth: None,
    }
}

#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl DownloadProgress for Recorder {
    fn started(&self, _: &str, total: Option<u64>, from: u64) {
        self.0
            .lock()
            .unwrap()
            .push(format!("started {total:?} {from}"));
    }
    fn advanced(&self, _: &str, _: u64, _: Option<u64>) {}
    fn finished(&self, _: &str, _: &Path, bytes: u64) {
        self.0.lock().unwrap().push(format!("finished {bytes}"));
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    cache: ModelCache,
}

fn fixture(opts: DownloadOptions) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let cache = ModelCache::with_options(dir.path().join("cache"), opts).unwrap();
    Fixture { dir, cache }
}

impl Fixture {
    fn dest(&self) -> PathBuf {
        self.dir.path().join("cache/test.safetensors")
    }
    fn part(&self) -> PathBuf {
        self.dir.path().join("cache/test.safetensors.part")
    }
    async fn get(&self, e: &LoraEntry) -> Result<PathBuf, DownloadError> {
        self.cache.ensure(e, &Recorder::default()).await
    }
}

const BODY_FLOATS: usize = 64 * 1024; // 256 KiB: several TCP reads, cut mid-stream

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn plain_download_is_verified_and_renamed() {
    let body = safetensors_bytes(BODY_FLOATS);
    let b = body.clone();
    let srv = Server::start(move |_, _| Reply::ok(&b)).await;
    let fx = fixture(fast_opts());
    let mut e = entry(&srv.url("/m.safetensors"));
    e.sha256 = Some(sha_hex(&body));
    let rec = Recorder::default();
    let path = fx.cache.ensure(&e, &rec).await.unwrap();
    assert_eq!(path, fx.dest());
    assert_eq!(std::fs::read(&path).unwrap(), body);
    assert!(!fx.part().exists());
    let side =
        std::fs::read_to_string(fx.dir.path().join("cache/test.safetensors.sha256")).unwrap();
    // `<sha256> <size> <mtime ns> <inode>`, written atomically.
    let fields: Vec<&str> = side.split_whitespace().collect();
    assert_eq!(fields.len(), 4, "{side}");
    assert_eq!(fields[0], sha_hex(&body));
    assert_eq!(fields[1], body.len().to_string());
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fields[3],
        std::fs::metadata(&path).unwrap().ino().to_string()
    );
    assert_eq!(
        *rec.0.lock().unwrap(),
        vec![
            format!("started Some({}) 0", body.len()),
            format!("finished {}", body.len())
        ]
    );
    // Second call: served from the cache, no new request.
    fx.get(&e).await.unwrap();
    assert_eq!(srv.requests().len(), 1);
    assert!(srv.requests()[0].header("range").is_none());
}

#[tokio::test]
async fn broken_connection_resumes_with_range() {
    let body = safetensors_bytes(BODY_FLOATS);
    let cut = 100_003;
    let b = body.clone();
    let srv = Server::start(move |n, req| match n {
        0 => Reply {
            cut_after: Some(cut),
            ..Reply::ok(&b)
        },
        _ => Reply::ranged(req, &b),
    })
    .await;
    let fx = fixture(fast_opts());
    let mut e = entry(&srv.url("/m"));
    e.sha256 = Some(sha_hex(&body));
    let path = fx.get(&e).await.unwrap();
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].header("range"), None);
    assert_eq!(
        reqs[1].header("range"),
        Some(format!("bytes={cut}-").as_str())
    );
    assert_eq!(std::fs::read(path).unwrap(), body);
    assert!(!fx.part().exists());
}

#[tokio::test]
async fn leftover_part_file_without_a_record_of_its_origin_starts_over() {
    // Resuming a `.part` left by another run needs its recorded URL, ETag and size (see
    // tests/shared_cache.rs); bytes of unknown origin are discarded.
    let body = safetensors_bytes(BODY_FLOATS);
    let b = body.clone();
    let srv = Server::start(move |_, req| Reply::ranged(req, &b)).await;
    let fx = fixture(fast_opts());
    std::fs::create_dir_all(fx.part().parent().unwrap()).unwrap();
    std::fs::write(fx.part(), &body[..5000]).unwrap();
    let mut e = entry(&srv.url("/m"));
    e.sha256 = Some(sha_hex(&body));
    let path = fx.get(&e).await.unwrap();
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].header("range"), None);
    assert_eq!(std::fs::read(path).unwrap(), body);
}

#[tokio::test]
async fn server_ignoring_range_restarts_from_zero() {
    let body = safetensors_bytes(BODY_FLOATS);
    let b = body.clone();
    let srv = Server::start(move |n, _| Reply {
        cut_after: (n == 0).then_some(70_000),
        ..Reply::ok(&b)
    })
    .await;
    let fx = fixture(fast_opts());
    let mut e = entry(&srv.url("/m"));
    e.sha256 = Some(sha_hex(&body));
    let path = fx.get(&e).await.unwrap();
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].header("range"), Some("bytes=70000-"));
    assert_eq!(std::fs::read(path).unwrap(), body, "no duplicated prefix");
}

#[tokio::test]
async fn wrong_sha256_is_rejected_and_cleaned_up() {
    let body = safetensors_bytes(1000);
    let b = body.clone();
    let srv = Server::start(move |_, _| Reply::ok(&b)).await;
    let fx = fixture(fast_opts());
    let mut e = entry(&srv.url("/m"));
    e.sha256 = Some("0".repeat(64));
    let err = fx.get(&e).await.unwrap_err();
    assert!(matches!(err, DownloadError::ShaMismatch { .. }), "{err:?}");
    assert_eq!(err.code().as_str(), "MODEL_INVALID");
    assert!(err.to_string().contains(&sha_hex(&body)), "{err}");
    assert!(!fx.part().exists());
    assert!(!fx.dest().exists());
}

#[tokio::test]
async fn unauthorized_without_key_then_success_with_key() {
    let body = safetensors_bytes(1000);
    let b = body.clone();
    let srv = Server::start(move |_, req| match req.header("authorization") {
        Some("Bearer sekrit-key-123") => Reply::ok(&b),
        _ => Reply::status(401),
    })
    .await;
    let mut e = entry(&srv.url("/m"));
    e.auth = Some(AuthKind::Civitai);

    let fx = fixture(fast_opts());
    let err = fx.get(&e).await.unwrap_err();
    assert!(
        matches!(err, DownloadError::Unauthorized { status: 401, .. }),
        "{err:?}"
    );
    assert_eq!(err.code().as_str(), "MODEL_DOWNLOAD_FAILED");
    assert!(err.to_string().contains("set CIVITAI_API_KEY"), "{err}");
    assert_eq!(srv.requests().len(), 1, "401 is not retried");
    assert!(!fx.dest().exists());
    assert!(!fx.part().exists(), "no empty .part left behind");

    let fx = fixture(DownloadOptions {
        civitai_key: ApiKey::new("sekrit-key-123"),
        ..fast_opts()
    });
    let path = fx.get(&e).await.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), body);
    assert_eq!(srv.requests().len(), 2);
}

#[tokio::test]
async fn key_is_not_sent_to_hosts_other_than_civitai_without_auth() {
    let body = safetensors_bytes(10);
    let b = body.clone();
    let srv = Server::start(move |_, _| Reply::ok(&b)).await;
    let fx = fixture(DownloadOptions {
        civitai_key: ApiKey::new("sekrit-key-123"),
        ..fast_opts()
    });
    fx.get(&entry(&srv.url("/m"))).await.unwrap();
    assert_eq!(srv.requests()[0].header("authorization"), None);
}

#[tokio::test]
async fn status_404_fails_at_once() {
    let srv = Server::start(|_, _| Reply::status(404)).await;
    let fx = fixture(fast_opts());
    let err = fx.get(&entry(&srv.url("/m"))).await.unwrap_err();
    assert!(
        matches!(err, DownloadError::HttpStatus { status: 404, .. }),
        "{err:?}"
    );
    assert_eq!(srv.requests().len(), 1);
}

#[tokio::test]
async fn too_many_requests_then_ok() {
    let body = safetensors_bytes(1000);
    let b = body.clone();
    // Retry-After: 3600 is capped by retry_after_cap (10 ms) so the test stays fast.
    let srv = Server::start(move |n, _| match n {
        0 => Reply::status(429).with_header("Retry-After", "3600"),
        _ => Reply::ok(&b),
    })
    .await;
    let fx = fixture(fast_opts());
    let path = fx.get(&entry(&srv.url("/m"))).await.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), body);
    assert_eq!(srv.requests().len(), 2);
}

#[tokio::test]
async fn server_errors_twice_then_ok() {
    let body = safetensors_bytes(1000);
    let b = body.clone();
    let srv = Server::start(move |n, _| match n {
        0 | 1 => Reply::status(500),
        _ => Reply::ok(&b),
    })
    .await;
    let fx = fixture(fast_opts());
    let path = fx.get(&entry(&srv.url("/m"))).await.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), body);
    assert_eq!(srv.requests().len(), 3);
}

#[tokio::test]
async fn retries_are_bounded() {
    let srv = Server::start(|_, _| Reply::status(503)).await;
    let fx = fixture(fast_opts());
    let err = fx.get(&entry(&srv.url("/m"))).await.unwrap_err();
    assert!(
        matches!(err, DownloadError::RetriesExhausted { attempts: 4, .. }),
        "{err:?}"
    );
    assert_eq!(srv.requests().len(), 4, "1 attempt + max_retries (3)");
}

#[tokio::test]
async fn html_body_with_status_200_is_rejected() {
    let srv = Server::start(|_, _| Reply {
        status: 200,
        headers: vec![("Content-Type".into(), "text/html; charset=utf-8".into())],
        body: b"<!DOCTYPE html><html><body>Please log in</body></html>".to_vec(),
        ..Reply::default()
    })
    .await;
    let fx = fixture(fast_opts());
    let err = fx.get(&entry(&srv.url("/m"))).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, DownloadError::NotAModel { .. }), "{err:?}");
    assert!(
        msg.contains("an HTML page") && msg.contains("Please log in"),
        "{msg}"
    );
    assert!(msg.contains("CIVITAI_API_KEY"), "{msg}");
    assert!(!fx.dest().exists());
    assert_eq!(srv.requests().len(), 1);
}

#[tokio::test]
async fn json_body_served_as_binary_is_rejected() {
    let srv =
        Server::start(|_, _| Reply::ok(br#"{"error":"Unauthorized","message":"token expired"}"#))
            .await;
    let fx = fixture(fast_opts());
    let err = fx.get(&entry(&srv.url("/m"))).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("a JSON message") && msg.contains("token expired"),
        "{msg}"
    );
    assert!(!fx.dest().exists());
}

#[tokio::test]
async fn redirect_to_another_path_keeps_the_key_on_the_same_host() {
    let body = safetensors_bytes(1000);
    let b = body.clone();
    let srv = Server::start(move |_, req| match req.path.as_str() {
        "/api/download/models/1" => Reply::redirect("/files/real.safetensors"),
        _ => Reply::ok(&b),
    })
    .await;
    let fx = fixture(DownloadOptions {
        civitai_key: ApiKey::new("sekrit-key-123"),
        ..fast_opts()
    });
    let mut e = entry(&srv.url("/api/download/models/1"));
    e.auth = Some(AuthKind::Civitai);
    let path = fx.get(&e).await.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), body);
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].path, "/files/real.safetensors");
    for r in &reqs {
        assert_eq!(r.header("authorization"), Some("Bearer sekrit-key-123"));
    }
}

#[tokio::test]
async fn redirect_to_another_host_does_not_forward_the_key() {
    let body = safetensors_bytes(1000);
    let b = body.clone();
    let storage = Server::start(move |_, _| Reply::ok(&b)).await;
    let target = storage.url("/bucket/obj?X-Amz-Signature=abc");
    let origin = Server::start(move |_, _| Reply::redirect(&target)).await;
    let fx = fixture(DownloadOptions {
        civitai_key: ApiKey::new("sekrit-key-123"),
        ..fast_opts()
    });
    let mut e = entry(&origin.url("/api/download/models/1"));
    e.auth = Some(AuthKind::Civitai);
    let path = fx.get(&e).await.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), body);
    assert_eq!(
        origin.requests()[0].header("authorization"),
        Some("Bearer sekrit-key-123")
    );
    let s = storage.requests();
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].path, "/bucket/obj?X-Amz-Signature=abc");
    assert_eq!(
        s[0].header("authorization"),
        None,
        "key crossed to another host"
    );
}

#[tokio::test]
async fn concurrent_requests_share_one_transfer() {
    let body = safetensors_bytes(BODY_FLOATS);
    let b = body.clone();
    let srv = Server::start(move |_, _| Reply {
        delay: Some(Duration::from_millis(200)),
        ..Reply::ok(&b)
    })
    .await;
    let fx = fixture(fast_opts());
    let e = entry(&srv.url("/m"));
    let (r1, r2, r3) = tokio::join!(fx.get(&e), fx.get(&e), fx.get(&e));
    let (p1, p2, p3) = (r1.unwrap(), r2.unwrap(), r3.unwrap());
    assert_eq!(p1, p2);
    assert_eq!(p2, p3);
    assert_eq!(srv.requests().len(), 1);
    assert_eq!(std::fs::read(p1).unwrap(), body);
    assert!(!fx.dir.path().join("cache/test.safetensors.lock").exists());
}

#[tokio::test]
async fn announced_size_over_the_cap_is_refused() {
    let body = safetensors_bytes(1000);
    let b = body.clone();
    let srv = Server::start(move |_, _| Reply::ok(&b)).await;
    let fx = fixture(DownloadOptions {
        max_bytes: 2000,
        ..fast_opts()
    });
    let err = fx.get(&entry(&srv.url("/m"))).await.unwrap_err();
    assert!(
        matches!(
            err,
            DownloadError::TooLarge {
                size: 4000..,
                cap: 2000,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!fx.part().exists() && !fx.dest().exists());
}

#[tokio::test]
async fn unannounced_stream_over_the_cap_is_cut() {
    let body = safetensors_bytes(BODY_FLOATS);
    let b = body.clone();
    let srv = Server::start(move |_, _| Reply {
        no_length: true,
        ..Reply::ok(&b)
    })
    .await;
    let fx = fixture(DownloadOptions {
        max_bytes: 50_000,
        ..fast_opts()
    });
    let err = fx.get(&entry(&srv.url("/m"))).await.unwrap_err();
    assert!(
        matches!(err, DownloadError::TooLarge { cap: 50_000, .. }),
        "{err:?}"
    );
    assert!(!fx.part().exists() && !fx.dest().exists());
    assert_eq!(srv.requests().len(), 1);
}

#[tokio::test]
async fn cached_file_that_is_not_safetensors_is_moved_aside_and_refetched() {
    let body = safetensors_bytes(1000);
    let b = body.clone();
    let srv = Server::start(move |_, _| Reply::ok(&b)).await;
    let fx = fixture(fast_opts());
    std::fs::create_dir_all(fx.dest().parent().unwrap()).unwrap();
    std::fs::write(fx.dest(), b"this is not a model").unwrap();
    let e = entry(&srv.url("/m"));
    let err = fx.get(&e).await.unwrap_err();
    assert_eq!(err.code().as_str(), "MODEL_INVALID");
    let msg = err.to_string();
    assert!(
        msg.contains("test.safetensors") && msg.contains("moved aside"),
        "{msg}"
    );
    assert!(fx
        .dir
        .path()
        .join("cache/test.safetensors.invalid")
        .exists());
    assert_eq!(srv.requests().len(), 0);
    // The next request downloads a good copy.
    let path = fx.get(&e).await.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), body);
    assert_eq!(srv.requests().len(), 1);
}

#[tokio::test]
async fn truncated_tensor_data_is_rejected_after_download() {
    // Header promises 4000 data bytes, file carries 400: offsets run past the end.
    let mut body = safetensors_bytes(1000);
    body.truncate(body.len() - 3600);
    let b = body.clone();
    let srv = Server::start(move |_, _| Reply::ok(&b)).await;
    let fx = fixture(fast_opts());
    let err = fx.get(&entry(&srv.url("/m"))).await.unwrap_err();
    assert_eq!(err.code().as_str(), "MODEL_INVALID");
    assert!(err.to_string().contains("tensor \"w\""), "{err}");
    assert!(!fx.part().exists() && !fx.dest().exists());
}

#[tokio::test]
async fn local_path_entries_are_checked_but_never_moved() {
    let fx = fixture(fast_opts());
    let good = fx.dir.path().join("good.safetensors");
    std::fs::write(&good, safetensors_bytes(10)).unwrap();
    let bad = fx.dir.path().join("bad.safetensors");
    std::fs::write(&bad, b"garbage!garbage!").unwrap();
    let mut e = entry("http://unused.invalid/");
    e.source = Source::Path(good.clone());
    assert_eq!(fx.get(&e).await.unwrap(), good);
    e.source = Source::Path(bad.clone());
    let err = fx.get(&e).await.unwrap_err();
    assert_eq!(err.code().as_str(), "MODEL_INVALID");
    assert!(bad.exists());
    e.source = Source::Path(fx.dir.path().join("missing.safetensors"));
    assert_eq!(
        fx.get(&e).await.unwrap_err().code().as_str(),
        "MODEL_INVALID"
    );
}

#[tokio::test]
async fn leftover_lock_file_from_a_dead_process_does_not_block() {
    // A dead holder's flock is gone with it; the file itself means nothing.
    let body = safetensors_bytes(1000);
    let b = body.clone();
    let srv = Server::start(move |_, _| Reply::ok(&b)).await;
    let fx = fixture(fast_opts());
    let lock = fx.dir.path().join("cache/test.safetensors.lock");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    std::fs::write(&lock, "pid 1").unwrap();
    let path = fx.get(&entry(&srv.url("/m"))).await.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), body);
    assert!(!lock.exists());
}

#[tokio::test]
async fn waits_for_another_process_holding_the_lock_and_uses_its_file() {
    let body = safetensors_bytes(1000);
    let srv = Server::start(|_, _| Reply::status(500)).await;
    let fx = fixture(fast_opts());
    let lock = fx.dir.path().join("cache/test.safetensors.lock");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    // The "other process" (an flock on its own open file, as another process would hold):
    // finishes the file, then releases the lock.
    let held = FileLock::acquire(&lock, Duration::from_millis(10))
        .await
        .unwrap();
    let (dest, b) = (fx.dest(), body.clone());
    let other = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        std::fs::write(&dest, &b).unwrap();
        drop(held);
    });
    let path = fx.get(&entry(&srv.url("/m"))).await.unwrap();
    other.await.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), body);
    assert_eq!(srv.requests().len(), 0, "no second transfer");
    assert!(!lock.exists());
}

#[tokio::test]
async fn cached_file_changed_in_place_is_reverified_and_refetched() {
    let body = safetensors_bytes(1000);
    let b = body.clone();
    let srv = Server::start(move |_, _| Reply::ok(&b)).await;
    let fx = fixture(fast_opts());
    let mut e = entry(&srv.url("/m"));
    e.sha256 = Some(sha_hex(&body));
    let path = fx.get(&e).await.unwrap();
    // Same size, one tensor byte flipped, written in place (same inode).
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start(body.len() as u64 - 3)).unwrap();
        f.write_all(&[body[body.len() - 3] ^ 0xFF]).unwrap();
    }
    assert_eq!(std::fs::metadata(&path).unwrap().len(), body.len() as u64);
    let err = fx.get(&e).await.unwrap_err();
    assert!(matches!(err, DownloadError::ShaMismatch { .. }), "{err:?}");
    assert_eq!(err.code().as_str(), "MODEL_INVALID");
    assert_eq!(srv.requests().len(), 1);
    // Moved aside; the next use downloads a good copy.
    let path = fx.get(&e).await.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), body);
    assert_eq!(srv.requests().len(), 2);
}

#[tokio::test]
async fn sha256_of_a_local_path_source_is_verified() {
    let fx = fixture(fast_opts());
    let body = safetensors_bytes(10);
    let file = fx.dir.path().join("local.safetensors");
    std::fs::write(&file, &body).unwrap();
    let mut e = entry("http://unused.invalid/");
    e.source = Source::Path(file.clone());
    e.sha256 = Some("0".repeat(64));
    let err = fx.get(&e).await.unwrap_err();
    assert!(matches!(err, DownloadError::ShaMismatch { .. }), "{err:?}");
    assert_eq!(err.code().as_str(), "MODEL_INVALID");
    let msg = err.to_string();
    assert!(
        msg.contains("local.safetensors") && msg.contains(&sha_hex(&body)),
        "{msg}"
    );
    assert!(file.exists(), "the operator's file is never moved");
    e.sha256 = Some(sha_hex(&body));
    assert_eq!(fx.get(&e).await.unwrap(), file);
    // The verified hash is recorded in the cache dir, not next to the operator's file.
    assert!(!fx.dir.path().join("local.safetensors.sha256").exists());
    assert!(fx.dir.path().join("cache/.verified").is_dir());
    // Changed in place (same size): the record no longer applies.
    let mut changed = body.clone();
    let last = changed.len() - 1;
    changed[last] ^= 1;
    std::fs::write(&file, &changed).unwrap();
    assert_eq!(
        fx.get(&e).await.unwrap_err().code().as_str(),
        "MODEL_INVALID"
    );
    // A directory cannot be hashed: a sha256 for one is refused.
    let dir = fx.dir.path().join("diffusers");
    std::fs::create_dir_all(&dir).unwrap();
    e.source = Source::Path(dir);
    let err = fx.get(&e).await.unwrap_err();
    assert!(err.to_string().contains("directory"), "{err}");
}

#[tokio::test]
async fn hugging_face_source_goes_through_hf_hub() {
    // The only test that sets env vars in this binary; hf-hub reads HF_ENDPOINT via our builder.
    let body = safetensors_bytes(1000);
    let b = body.clone();
    let srv = Server::start(move |_, req| {
        Reply::ranged(req, &b)
            .with_header("ETag", "\"abc123\"")
            .with_header("X-Repo-Commit", "0123456789abcdef0123456789abcdef01234567")
    })
    .await;
    std::env::remove_var("HF_HOME");
    std::env::set_var("HF_ENDPOINT", srv.url(""));
    let fx = fixture(fast_opts());
    let mut e = entry("http://unused.invalid/");
    e.source = Source::HuggingFace {
        repo: "madebyollin/sdxl-vae-fp16-fix".into(),
        path: None,
    };
    let path = fx.get(&e).await.unwrap();
    // sha256 is checked for hf: sources too.
    e.sha256 = Some("0".repeat(64));
    let err = fx.get(&e).await.unwrap_err();
    assert!(matches!(err, DownloadError::ShaMismatch { .. }), "{err:?}");
    e.sha256 = Some(sha_hex(&body));
    assert_eq!(fx.get(&e).await.unwrap(), path);
    std::env::remove_var("HF_ENDPOINT");
    assert_eq!(std::fs::read(&path).unwrap(), body);
    assert!(
        path.starts_with(fx.dir.path().join("cache/huggingface/hub")),
        "{path:?}"
    );
    assert!(srv.requests().iter().all(|r| r.path
        == "/madebyollin/sdxl-vae-fp16-fix/resolve/main/diffusion_pytorch_model.safetensors"));
}

// ---------------------------------------------------------------- secrets

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn api_key_never_appears_in_logs_or_errors() {
    const KEY: &str = "sekrit-key-123";
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(captured.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let body = safetensors_bytes(BODY_FLOATS);
    let b = body.clone();
    // Other host: the body breaks once, then answers 403 — every path that logs or errors.
    let storage = Server::start(move |n, _| match n {
        0 => Reply {
            cut_after: Some(10_000),
            ..Reply::ok(&b)
        },
        _ => Reply::status(403),
    })
    .await;
    let target = storage.url(&format!("/obj?token={KEY}"));
    let origin = Server::start(move |n, _| match n {
        0 => Reply::status(500),
        _ => Reply::redirect(&target),
    })
    .await;
    let fx = fixture(DownloadOptions {
        civitai_key: ApiKey::new(KEY),
        ..fast_opts()
    });
    let mut e = entry(&origin.url(&format!("/api/download/models/1?token={KEY}")));
    e.auth = Some(AuthKind::Civitai);
    let err = fx.get(&e).await.unwrap_err();
    // The key did go where it belongs, so the check below is not vacuous.
    assert_eq!(
        origin.requests()[0].header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("download interrupted"),
        "logs were captured: {logs}"
    );
    for text in [logs.as_str(), &err.to_string(), &format!("{err:?}")] {
        assert!(!text.contains(KEY), "key leaked into: {text}");
    }
    assert!(err.to_string().contains("token=***"), "{err}");
    assert!(format!("{:?}", fx.cache).contains("ApiKey(***)"));
}

#[tokio::test]
async fn fetch_all_continues_past_failures_and_counts_them() {
    let body = safetensors_bytes(1000);
    let b = body.clone();
    let srv = Server::start(move |_, req| match req.path.as_str() {
        "/good" => Reply::ok(&b),
        _ => Reply::status(404),
    })
    .await;
    let toml = format!(
        "[[checkpoints]]\nname = \"missing\"\nurl = \"{}\"\n[[loras]]\nname = \"good\"\nurl = \"{}\"\n",
        srv.url("/missing"),
        srv.url("/good")
    );
    let fx = fixture(fast_opts());
    let cfg = sdxl_worker::models::ModelsConfig::from_toml_str(&toml, Path::new("m.toml")).unwrap();
    let failures = sdxl_worker::fetch::fetch_all(&cfg, &fx.cache).await;
    assert_eq!(failures, 1);
    let good = fx.dir.path().join("cache/good.safetensors");
    assert_eq!(std::fs::read(good).unwrap(), body);
    assert_eq!(srv.requests().len(), 2);
}

/// models.toml `[[embeddings]]` entries download like LoRAs — by `fetch` and, on first use, when
/// the model runtime loads a checkpoint — and their verified sha256 is known afterwards (for the
/// infotext's `TI hashes`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedding_entries_download_and_load_with_the_model() {
    use candle_core::{DType, Device, Tensor};
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.safetensors");
    // The tiny fixture model's text encoders are 32 (CLIP-L) and 48 (bigG) wide.
    let tensors: HashMap<String, Tensor> = [
        (
            "clip_l".to_string(),
            Tensor::ones((2, 32), DType::F32, &Device::Cpu).unwrap(),
        ),
        (
            "clip_g".to_string(),
            Tensor::ones((2, 48), DType::F32, &Device::Cpu).unwrap(),
        ),
    ]
    .into_iter()
    .collect();
    candle_core::safetensors::save(&tensors, &src).unwrap();
    let body = std::fs::read(&src).unwrap();
    let b = body.clone();
    let srv = Server::start(move |_, _| Reply::ok(&b)).await;
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let toml = |cache: &Path| {
        format!(
            "cache_dir = \"{}\"\n[[checkpoints]]\nname = \"Tiny\"\npath = \"{}\"\nconfig = \"{}\"\n\
             [[embeddings]]\nname = \"dlEmb\"\nurl = \"{}\"\n",
            cache.display(),
            fx.join("tiny-sdxl-single-file.safetensors").display(),
            fx.join("tiny-sdxl").display(),
            srv.url("/emb.safetensors")
        )
    };

    // `sdxl-worker fetch`.
    let cache_dir = dir.path().join("cache");
    let cfg =
        sdxl_worker::models::ModelsConfig::from_toml_str(&toml(&cache_dir), Path::new("m.toml"))
            .unwrap();
    let cache = ModelCache::with_options(cache_dir.clone(), fast_opts()).unwrap();
    assert_eq!(sdxl_worker::fetch::fetch_all(&cfg, &cache).await, 0);
    let path = cache_dir.join("dlemb.safetensors");
    assert_eq!(std::fs::read(&path).unwrap(), body);
    assert_eq!(
        cache.known_sha256(&cfg.embeddings[0], &path),
        Some(sha_hex(&body))
    );

    // The model runtime, with an empty cache: downloaded when the checkpoint loads.
    let cache2 = dir.path().join("cache2");
    let cfg2 =
        sdxl_worker::models::ModelsConfig::from_toml_str(&toml(&cache2), Path::new("m.toml"))
            .unwrap();
    let infos = tokio::task::spawn_blocking(move || {
        let rt =
            sdxl_worker::runtime::ModelRuntime::new(Some(cfg2), Device::Cpu, DType::F32).unwrap();
        rt.preload().expect("preload");
        rt.embeddings()
    })
    .await
    .unwrap();
    assert_eq!(
        infos,
        vec![sdxl_worker::runtime::EmbeddingInfo {
            name: "dlEmb".into(),
            vectors: 2,
            shape: 80,
            sha256: Some(sha_hex(&body)),
        }]
    );
    assert_eq!(srv.requests().len(), 2);
    assert_eq!(
        std::fs::read(cache2.join("dlemb.safetensors")).unwrap(),
        body
    );
}
