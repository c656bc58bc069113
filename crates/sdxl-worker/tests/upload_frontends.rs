//! Result upload wired into the frontends (SPEC §4, issue 16), on the REAL model handler (the
//! tiny fixture model) against a real S3 server (`s3s-fs`, `s3_support`): the RunPod loop
//! (`runpod::serve` with the fake RunPod server) and the local API's RunPod and A1111 routes.

mod tiny_runtime;
use tiny_runtime::{fixtures, tiny_runtime};

mod common;
#[path = "s3_support/mod.rs"]
mod s3_support;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use common::{job, wait_until, FakeRunpod, Reply};
use s3_support::{S3Server, KEY_ID, SECRET};
use sdxl_worker::api::{self, ApiConfig};
use sdxl_worker::handler::JobHandler;
use sdxl_worker::runpod::{serve, RunpodConfig, Shutdown};
use sdxl_worker::upload::{BlockingUploader, BucketConfig, RetryPolicy, Uploader};
use serde_json::{json, Value};
use tokio::task::JoinHandle;
use tracing_subscriber::EnvFilter;

const LONG: Duration = Duration::from_secs(120);

/// A small real job; `extra` fields are added.
/// The real model handler on the tiny fixture checkpoint.
fn tiny_handler(cache: &Path) -> Arc<dyn JobHandler> {
    Arc::new(tiny_runtime(cache, ""))
}

fn input(extra: Value) -> Value {
    let mut v = json!({"prompt": "a red cube", "steps": 2, "width": 64, "height": 64,
        "seed": 5, "sampler_name": "Euler"});
    for (k, x) in extra.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

/// An uploader for the test server with millisecond backoffs (2 retries, the SPEC minimum).
fn uploader(server: &S3Server, secret: &str) -> Arc<BlockingUploader> {
    captured_logs();
    let policy = RetryPolicy {
        retries: 2,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(50),
        request_timeout: Duration::from_secs(5),
    };
    let config = BucketConfig::new(&server.path_style_endpoint(), KEY_ID, secret).unwrap();
    let up = Uploader::with_policy(config, policy).unwrap();
    Arc::new(BlockingUploader::new(up).unwrap())
}

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

/// Every log line of this test binary at TRACE level, except the S3 test server's.
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

fn start(cfg: RunpodConfig, handler: Arc<dyn JobHandler>) -> (Shutdown, JoinHandle<()>) {
    let shutdown = Shutdown::new();
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { serve(cfg, handler, shutdown).await.unwrap() }
    });
    (shutdown, task)
}

async fn stop(shutdown: Shutdown, task: JoinHandle<()>) {
    shutdown.trigger();
    tokio::time::timeout(LONG, task).await.unwrap().unwrap();
}

/// Runs `jobs` (id, input) through one `serve` and returns each final body in order.
async fn serve_jobs(
    cfg_of: impl FnOnce(&FakeRunpod) -> RunpodConfig,
    handler: Arc<dyn JobHandler>,
    jobs: &[(&str, Value)],
) -> Vec<(String, Value)> {
    let fake = FakeRunpod::start().await;
    for (id, inp) in jobs {
        fake.push_take(Reply::json(job(id, inp.clone())));
    }
    let (sd, task) = start(cfg_of(&fake), handler);
    let all_done = wait_until(LONG, || {
        jobs.iter().all(|(id, _)| fake.finals_for(id).len() == 1)
    })
    .await;
    stop(sd, task).await;
    assert!(all_done, "not every job got a final post");
    jobs.iter()
        .map(|(id, _)| {
            let f = fake.finals_for(id);
            (f[0].body.clone(), f[0].json())
        })
        .collect()
}

async fn get(url: &str) -> (u16, Option<String>, Vec<u8>) {
    let resp = reqwest::get(url).await.unwrap();
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_string());
    (status, ct, resp.bytes().await.unwrap().to_vec())
}

fn b64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().expect("a base64 string"))
        .unwrap()
}

fn warnings(output: &Value) -> String {
    output["warnings"].to_string()
}

/// `serve` with a bucket: `"upload": true` uploads (warning "upload requested"), a plain job
/// stays inline, a non-boolean `upload` is INVALID_INPUT, and with a small cap a plain job is
/// uploaded automatically (warning naming the size and the cap). The presigned URL serves
/// exactly the PNG the inline job returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_uploads_on_request_and_over_the_cap() {
    let server = S3Server::start();
    let up = uploader(&server, SECRET);
    let cache = tempfile::tempdir().unwrap();
    let handler = tiny_handler(cache.path());

    let up1 = up.clone();
    let finals = serve_jobs(
        move |fake| {
            let mut cfg = fake.config("");
            cfg.uploader = Some(up1);
            cfg
        },
        handler.clone(),
        &[
            ("plain", input(json!({}))),
            ("asked", input(json!({"upload": true}))),
            ("coerced", input(json!({"upload": 1}))),
        ],
    )
    .await;
    let plain = &finals[0].1["output"];
    assert_eq!(plain["images"].as_array().unwrap().len(), 1, "{plain}");
    assert!(plain.get("image_urls").is_none(), "{plain}");
    let png = b64(&plain["images"][0]);

    let (asked_text, asked) = &finals[1];
    let out = &asked["output"];
    assert!(out.get("images").is_none(), "no images key: {out}");
    assert!(!asked_text.contains("\"images\""), "{asked_text}");
    let urls = out["image_urls"].as_array().unwrap();
    assert_eq!(urls.len(), 1, "{out}");
    assert!(warnings(out).contains("upload requested"), "{out}");
    assert!(out["info"].as_str().unwrap().contains("Seed: 5"), "{out}");
    let (status, ct, body) = get(urls[0].as_str().unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(ct.as_deref(), Some("image/png"));
    assert!(
        body == png,
        "the presigned URL serves other bytes than the inline job"
    );
    assert!(!asked_text.contains(SECRET));

    let coerced = &finals[2].1;
    assert_eq!(coerced["output"]["code"], "INVALID_INPUT", "{coerced}");
    assert!(
        coerced["error"].as_str().unwrap().contains("boolean"),
        "{coerced}"
    );

    // A small cap: a plain job (batch of 2) is uploaded automatically.
    let up2 = up.clone();
    let finals = serve_jobs(
        move |fake| {
            let mut cfg = fake.config("");
            cfg.uploader = Some(up2);
            cfg.max_result_bytes = 2000;
            cfg
        },
        handler,
        &[("big", input(json!({"batch_size": 2})))],
    )
    .await;
    let (text, big) = &finals[0];
    let out = &big["output"];
    assert!(out.get("images").is_none(), "{out}");
    let urls = out["image_urls"].as_array().unwrap();
    assert_eq!(urls.len(), 2, "{out}");
    let w = warnings(out);
    assert!(
        w.contains("over the cap of 2000") && w.contains("SDXL_MAX_RESULT_BYTES"),
        "{w}"
    );
    assert!(text.len() < 9_000_000);
    let (_, _, first) = get(urls[0].as_str().unwrap()).await;
    assert!(
        first == png,
        "image 0 of the batch is the single job's image"
    );
    let (status, _, second) = get(urls[1].as_str().unwrap()).await;
    assert_eq!(status, 200);
    assert!(second.starts_with(b"\x89PNG") && second != png);
    assert_eq!(
        server.keys(),
        ["asked/0.png", "big/0.png", "big/1.png"],
        "one object per image at <job id>/<i>.png"
    );
}

/// Wrong credentials: the job fails with UPLOAD_FAILED after the retries; the secret is in no
/// reply and no log line; the next job works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_wrong_credentials_fails_with_upload_failed_and_no_secret() {
    let wrong = "WRONG-frontend-secret-5f4e3d2c";
    let server = S3Server::start();
    let up = uploader(&server, wrong);
    let logs = captured_logs();
    let cache = tempfile::tempdir().unwrap();
    let finals = serve_jobs(
        move |fake| {
            let mut cfg = fake.config("");
            cfg.uploader = Some(up);
            cfg
        },
        tiny_handler(cache.path()),
        &[
            ("denied", input(json!({"upload": true}))),
            ("after", input(json!({}))),
        ],
    )
    .await;
    let (text, denied) = &finals[0];
    assert_eq!(denied["output"]["code"], "UPLOAD_FAILED", "{denied}");
    let message = denied["error"].as_str().unwrap();
    assert!(message.contains("denied/0.png"), "{message}");
    assert!(!text.contains(wrong), "{text}");
    assert_eq!(finals[1].1["output"]["images"].as_array().unwrap().len(), 1);
    let log_text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(
        log_text.contains("upload failed"),
        "the failure is logged: {log_text}"
    );
    assert!(!log_text.contains(wrong), "the secret is in the logs");
    assert!(server.keys().is_empty());
}

/// No bucket: `"upload": true` is INVALID_INPUT ("no bucket configured"); an oversized result
/// is RESULT_TOO_LARGE as before; a normal job is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_a_bucket_is_unchanged() {
    let cache = tempfile::tempdir().unwrap();
    let finals = serve_jobs(
        |fake| {
            let mut cfg = fake.config("");
            cfg.max_result_bytes = 2000;
            cfg
        },
        tiny_handler(cache.path()),
        &[
            ("asked", input(json!({"upload": true}))),
            ("big", input(json!({}))),
            ("off", input(json!({"upload": false, "width": 64}))),
        ],
    )
    .await;
    let asked = &finals[0].1;
    assert_eq!(asked["output"]["code"], "INVALID_INPUT", "{asked}");
    assert!(asked["error"]
        .as_str()
        .unwrap()
        .contains("no bucket configured"));
    assert_eq!(finals[1].1["output"]["code"], "RESULT_TOO_LARGE");
    assert_eq!(finals[2].1["output"]["code"], "RESULT_TOO_LARGE");
}

async fn start_api(handler: Arc<dyn JobHandler>, config: ApiConfig) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(api::serve(
        listener,
        handler,
        config,
        std::future::pending(),
    ));
    base
}

async fn post(client: &reqwest::Client, url: String, body: &Value) -> (u16, Value) {
    let resp = client.post(url).json(body).send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// The local API: `/runsync` and `/run` upload (on request, and over the cap, which applies to
/// the RunPod routes); the A1111 route has no cap and never uploads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_api_runpod_routes_upload_and_a1111_routes_do_not() {
    let server = S3Server::start();
    let cache = tempfile::tempdir().unwrap();
    let config = ApiConfig {
        uploader: Some(uploader(&server, SECRET)),
        max_result_bytes: 2000,
        ..ApiConfig::default()
    };
    let base = start_api(tiny_handler(cache.path()), config).await;
    let client = reqwest::Client::new();

    let (status, reply) = post(
        &client,
        format!("{base}/runsync"),
        &json!({"input": input(json!({"upload": true}))}),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["status"], "COMPLETED", "{reply}");
    let out = &reply["output"];
    assert!(out.get("images").is_none(), "{out}");
    assert!(warnings(out).contains("upload requested"), "{out}");
    let url = out["image_urls"][0].as_str().unwrap().to_string();
    let id = reply["id"].as_str().unwrap();
    assert!(url.contains(&format!("/{id}/0.png?")), "{url}");

    // `/run` + `/status`: over the 2000-byte cap, uploaded automatically.
    let (_, queued) = post(
        &client,
        format!("{base}/run"),
        &json!({"input": input(json!({"seed": 6}))}),
    )
    .await;
    let run_id = queued["id"].as_str().unwrap().to_string();
    let mut done = Value::Null;
    for _ in 0..600 {
        done = client
            .get(format!("{base}/status/{run_id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if done["status"] == "COMPLETED" || done["status"] == "FAILED" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(done["status"], "COMPLETED", "{done}");
    assert!(done["output"].get("images").is_none(), "{done}");
    assert!(warnings(&done["output"]).contains("over the cap of 2000"));
    assert_eq!(done["output"]["image_urls"].as_array().unwrap().len(), 1);

    // The A1111 route: no cap, images inline; the same PNG the URL serves.
    let a1111 = input(json!({"prompt_mode": "blend"}));
    let (status, reply) = post(&client, format!("{base}/sdapi/v1/txt2img"), &a1111).await;
    assert_eq!(status, 200, "{reply}");
    let png = b64(&reply["images"][0]);
    let (status, ct, body) = get(&url).await;
    assert_eq!((status, ct.as_deref()), (200, Some("image/png")));
    assert!(body == png, "the uploaded PNG differs from the inline one");
    let (status, reply) = post(
        &client,
        format!("{base}/sdapi/v1/txt2img"),
        &input(json!({"upload": true})),
    )
    .await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(reply["code"], "INVALID_INPUT");
    assert!(
        reply["error"].as_str().unwrap().contains("A1111 routes"),
        "{reply}"
    );
}

/// The local API without a bucket: `"upload": true` fails validation; the RunPod routes' cap
/// gives RESULT_TOO_LARGE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_api_without_a_bucket() {
    let cache = tempfile::tempdir().unwrap();
    let config = ApiConfig {
        max_result_bytes: 2000,
        ..ApiConfig::default()
    };
    let base = start_api(tiny_handler(cache.path()), config).await;
    let client = reqwest::Client::new();
    let (_, reply) = post(
        &client,
        format!("{base}/runsync"),
        &json!({"input": input(json!({"upload": true}))}),
    )
    .await;
    assert_eq!(reply["status"], "FAILED", "{reply}");
    assert_eq!(reply["output"]["code"], "INVALID_INPUT");
    assert!(reply["error"]
        .as_str()
        .unwrap()
        .contains("no bucket configured"));
    let (_, reply) = post(
        &client,
        format!("{base}/runsync"),
        &json!({"input": input(json!({}))}),
    )
    .await;
    assert_eq!(reply["status"], "FAILED", "{reply}");
    assert_eq!(reply["output"]["code"], "RESULT_TOO_LARGE");
}

/// `render --upload` uploads and prints one presigned URL per image instead of writing files;
/// without a bucket it is refused ("no bucket configured").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn render_upload_prints_urls() {
    let server = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let fx = fixtures();
    let (cwd, endpoint) = (dir.path().to_path_buf(), server.path_style_endpoint());
    let render = move |bucket: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sdxl-worker"));
        cmd.env_remove("SDXL_MODELS_TOML")
            .env_remove("BUCKET_ENDPOINT_URL")
            .current_dir(&cwd)
            .args(["render", "--upload", "--prompt", "a cat", "--steps", "1"])
            .args(["--width", "64", "--height", "64", "--batch-size", "2"])
            .arg("--checkpoint")
            .arg(fx.join("tiny-sdxl-single-file.safetensors"))
            .arg("--config")
            .arg(fx.join("tiny-sdxl"));
        if bucket {
            cmd.env("BUCKET_ENDPOINT_URL", &endpoint)
                .env("BUCKET_ACCESS_KEY_ID", KEY_ID)
                .env("BUCKET_SECRET_ACCESS_KEY", SECRET);
        }
        cmd.output().unwrap()
    };
    let out = tokio::task::spawn_blocking({
        let render = render.clone();
        move || render(true)
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let urls: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.starts_with("http://"))
        .collect();
    assert_eq!(urls.len(), 2, "{stdout}");
    for url in &urls {
        let (status, ct, body) = get(url).await;
        assert_eq!((status, ct.as_deref()), (200, Some("image/png")));
        assert!(body.starts_with(b"\x89PNG"));
    }
    assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET));
    assert!(!dir.path().join("out-0.png").exists(), "no local files");
    assert_eq!(server.keys().len(), 2);

    let out = tokio::task::spawn_blocking(move || render(false))
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no bucket configured"), "{stderr}");
}
