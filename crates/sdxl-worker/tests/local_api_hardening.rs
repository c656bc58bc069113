//! Local API hardening (SPEC §12, issue 13): the optional bearer token with the exact request
//! shapes of the runpod SDK's `Endpoint` client and A1111's `webuiapi`, JSON content types,
//! capped job records, and a client that disconnects cancelling its job.

mod tiny_runtime;
use tiny_runtime::tiny_runtime;

use sdxl_worker::api::{self, ApiConfig};
use sdxl_worker::handler::{JobHandler, StubHandler};
use sdxl_worker::upload::Secret;
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOKEN: &str = "api-token-4c3b2a19";

/// The real model handler on the tiny fixture checkpoint.
fn tiny_handler(cache: &Path) -> Arc<dyn JobHandler> {
    Arc::new(tiny_runtime(cache, ""))
}

fn slow_stub(step_ms: u64) -> Arc<dyn JobHandler> {
    Arc::new(StubHandler {
        step_delay: Duration::from_millis(step_ms),
        ..StubHandler::default()
    })
}

async fn start(handler: Arc<dyn JobHandler>, config: ApiConfig) -> String {
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

async fn reply(resp: reqwest::Response) -> (u16, String, Value) {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, text, json)
}

fn tiny_input() -> Value {
    json!({"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 3,
        "sampler_name": "Euler"})
}

/// With `SDXL_API_TOKEN`: every route but `/health` answers 401 JSON without it; the runpod
/// SDK's requests (`Content-Type: application/json`, `Authorization: Bearer <key>`) and
/// `webuiapi`'s (`session.auth = (user, password)`, i.e. HTTP Basic, `json=`) work; the real
/// model renders behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_guards_every_route_but_health() {
    let cache = tempfile::tempdir().unwrap();
    let config = ApiConfig {
        api_token: Some(Secret::new(TOKEN)),
        ..ApiConfig::default()
    };
    let base = start(tiny_handler(cache.path()), config).await;
    let client = reqwest::Client::new();
    let mut replies = String::new();

    for path in ["/health", "/v2/ep1/health"] {
        let (status, text, _) =
            reply(client.get(format!("{base}{path}")).send().await.unwrap()).await;
        assert_eq!(status, 200, "{path}: {text}");
    }
    let denied = [
        client
            .post(format!("{base}/runsync"))
            .json(&json!({"input": tiny_input()})),
        client
            .post(format!("{base}/v2/ep1/run"))
            .bearer_auth("wrong-token")
            .json(&json!({"input": tiny_input()})),
        client.get(format!("{base}/status/nope")),
        client.get(format!("{base}/sdapi/v1/sd-models")),
        client
            .post(format!("{base}/sdapi/v1/txt2img"))
            .basic_auth("user", Some("wrong"))
            .json(&tiny_input()),
        client.get(format!("{base}/no-such-route")),
    ];
    for req in denied {
        let resp = req.send().await.unwrap();
        assert_eq!(
            resp.headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap()),
            Some("Bearer")
        );
        let (status, text, body) = reply(resp).await;
        assert_eq!(status, 401, "{text}");
        assert_eq!(body["code"], "UNAUTHORIZED", "{text}");
        assert!(body["error"].is_string(), "{text}");
        replies.push_str(&text);
    }

    // The runpod SDK's `Endpoint(...).run_sync(...)` / `.status()` requests, header for header.
    let sdk = |req: reqwest::RequestBuilder| {
        req.header("Content-Type", "application/json")
            .header("Authorization", format!("Bearer {TOKEN}"))
    };
    let body = serde_json::to_vec(&json!({"input": tiny_input()})).unwrap();
    let (status, text, done) = reply(
        sdk(client.post(format!("{base}/v2/ep1/runsync")))
            .body(body)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(done["status"], "COMPLETED", "{text}");
    assert_eq!(done["output"]["images"].as_array().unwrap().len(), 1);
    let id = done["id"].as_str().unwrap();
    let (status, _, st) = reply(
        sdk(client.get(format!("{base}/v2/ep1/status/{id}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, st["status"].as_str()), (200, Some("COMPLETED")));
    // The SDK's `cancel()` posts `json=None` (no body) with the same headers.
    let (status, text, _) = reply(
        sdk(client.post(format!("{base}/v2/ep1/cancel/{id}")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{text}");

    // webuiapi: `WebUIApi(username=..., password=<token>)` ⇒ HTTP Basic, `session.post(json=)`.
    let (status, text, a1111) = reply(
        client
            .post(format!("{base}/sdapi/v1/txt2img"))
            .basic_auth("webui", Some(TOKEN))
            .json(&tiny_input())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(a1111["images"].as_array().unwrap().len(), 1);
    let (status, _, _) = reply(
        client
            .get(format!("{base}/sdapi/v1/sd-models"))
            .basic_auth("webui", Some(TOKEN))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert!(!replies.contains(TOKEN), "a reply echoes the token");
}

/// POSTs with a body need `Content-Type: application/json` (parameters and any case allowed);
/// bodiless POSTs (`/cancel`, `/status`) need none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_bodies_must_be_declared_json() {
    let base = start(slow_stub(0), ApiConfig::default()).await;
    let client = reqwest::Client::new();
    let body = json!({"input": {"prompt": "x", "steps": 1}}).to_string();
    for (ct, want) in [
        (None, 415),
        (Some("text/plain"), 415),
        (Some("application/x-www-form-urlencoded"), 415),
        (Some("application/jsonx"), 415),
        (Some("application/json"), 200),
        (Some("application/json; charset=utf-8"), 200),
        (Some("Application/JSON"), 200),
    ] {
        for path in [
            "/runsync",
            "/v2/ep/run",
            "/sdapi/v1/txt2img",
            "/sdapi/v1/options",
        ] {
            let body = if path.starts_with("/sdapi") {
                json!({"prompt": "x", "steps": 1}).to_string()
            } else {
                body.clone()
            };
            let mut req = client.post(format!("{base}{path}")).body(body);
            if let Some(ct) = ct {
                req = req.header("content-type", ct);
            }
            let (status, text, reply) = reply(req.send().await.unwrap()).await;
            assert_eq!(status, want, "{path} with {ct:?}: {text}");
            if want == 415 {
                assert_eq!(reply["code"], "UNSUPPORTED_MEDIA_TYPE", "{text}");
                assert!(reply["error"]
                    .as_str()
                    .unwrap()
                    .contains("application/json"));
            }
        }
    }
    let (status, text, _) = reply(
        client
            .post(format!("{base}/status/unknown-id"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        status, 404,
        "a bodiless POST is not refused for its type: {text}"
    );
}

async fn runsync(client: &reqwest::Client, base: &str) -> String {
    let (status, text, body) = reply(
        client
            .post(format!("{base}/runsync"))
            .json(&json!({"input": {"prompt": "x", "steps": 1}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("COMPLETED")),
        "{text}"
    );
    body["id"].as_str().unwrap().to_string()
}

async fn status_code(client: &reqwest::Client, base: &str, id: &str) -> u16 {
    client
        .get(format!("{base}/status/{id}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Job records are capped in count and in bytes: the oldest finished ones go first, the
/// newest result stays readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_records_are_capped_in_count_and_bytes() {
    let client = reqwest::Client::new();
    let base = start(
        slow_stub(0),
        ApiConfig {
            max_records: 3,
            ..ApiConfig::default()
        },
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(runsync(&client, &base).await);
    }
    let mut found = Vec::new();
    for id in &ids {
        found.push(status_code(&client, &base, id).await);
    }
    assert_eq!(found, [404, 404, 200, 200, 200]);

    // Byte cap below one result: only the newest finished record is kept.
    let base = start(
        slow_stub(0),
        ApiConfig {
            max_record_bytes: 1000,
            ..ApiConfig::default()
        },
    )
    .await;
    let first = runsync(&client, &base).await;
    let second = runsync(&client, &base).await;
    assert_eq!(status_code(&client, &base, &first).await, 404);
    assert_eq!(status_code(&client, &base, &second).await, 200);
}

async fn health(client: &reqwest::Client, base: &str) -> Value {
    client
        .get(format!("{base}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A client that disconnects from `/runsync` or `/sdapi/v1/txt2img` cancels its queued job; a
/// `/runsync` that answers at its `?wait=` limit leaves the job queued (real model handler).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_cancels_its_job() {
    let cache = tempfile::tempdir().unwrap();
    let base = start(tiny_handler(cache.path()), ApiConfig::default()).await;
    let client = reqwest::Client::new();
    // A long job on the real model keeps the runner busy so the next ones stay queued (it is
    // cancelled below, long before it would finish).
    let (_, _, long) = reply(
        client
            .post(format!("{base}/run"))
            .json(
                &json!({"input": {"prompt": "long", "steps": 150, "width": 1024,
                "height": 1024, "batch_size": 4, "sampler_name": "Euler"}}),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    let long_id = long["id"].as_str().unwrap().to_string();

    // Answered at the wait limit: the job stays queued.
    let (_, _, kept) = reply(
        client
            .post(format!("{base}/runsync?wait=100"))
            .json(&json!({"input": {"prompt": "kept", "steps": 1, "width": 64, "height": 64}}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(kept["status"], "IN_QUEUE", "{kept}");
    let kept_id = kept["id"].as_str().unwrap().to_string();

    // Two clients that give up after 300 ms (the connection is closed).
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let e = impatient
        .post(format!("{base}/runsync"))
        .json(&json!({"input": {"prompt": "gone", "steps": 1, "width": 64, "height": 64}}))
        .send()
        .await
        .unwrap_err();
    assert!(e.is_timeout(), "{e}");
    let e = impatient
        .post(format!("{base}/sdapi/v1/txt2img"))
        .json(&json!({"prompt": "gone too", "steps": 1, "width": 64, "height": 64}))
        .send()
        .await
        .unwrap_err();
    assert!(e.is_timeout(), "{e}");

    // Both are cancelled while the long job still runs; the kept job is still queued.
    let started = Instant::now();
    loop {
        let h = health(&client, &base).await;
        if h["jobs"]["failed"] == 2 {
            assert_eq!(h["jobs"]["inQueue"], 1, "{h}");
            assert_eq!(h["jobs"]["inProgress"], 1, "{h}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "not cancelled: {h}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, _, st) = reply(
        client
            .get(format!("{base}/status/{kept_id}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(st["status"], "IN_QUEUE", "{st}");
    client
        .post(format!("{base}/cancel/{long_id}"))
        .send()
        .await
        .unwrap();
    // The kept job then runs and completes.
    let started = Instant::now();
    loop {
        let (_, _, st) = reply(
            client
                .get(format!("{base}/status/{kept_id}"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        if st["status"] == "COMPLETED" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "{st}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `api --host 0.0.0.0` without `SDXL_API_TOKEN` logs a WARN line naming the variable;
/// loopback or a token: no warning.
#[test]
fn non_loopback_without_a_token_warns() {
    let addr = |s: &str| s.parse::<std::net::SocketAddr>().unwrap();
    assert!(api::exposure_warning(&addr("127.0.0.1:8000"), false).is_none());
    assert!(api::exposure_warning(&addr("[::1]:8000"), false).is_none());
    assert!(api::exposure_warning(&addr("0.0.0.0:8000"), true).is_none());
    let w = api::exposure_warning(&addr("0.0.0.0:8000"), false).unwrap();
    assert!(w.contains("SDXL_API_TOKEN"), "{w}");

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sdxl-worker"))
        .args(["api", "--host", "0.0.0.0", "--port", "0"])
        .env("SDXL_WORKER_STUB_HANDLER", "1")
        .env_remove("SDXL_API_TOKEN")
        .env_remove("BUCKET_ENDPOINT_URL")
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    for line in std::io::BufReader::new(stderr).lines() {
        let line = line.unwrap();
        let done = line.contains("listening");
        seen.push(line);
        if done {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let text = seen.join("\n");
    assert!(
        seen.iter()
            .any(|l| l.contains("WARN") && l.contains("SDXL_API_TOKEN")),
        "{text}"
    );
}
