//! Test helpers: a scripted fake RunPod job server that records every request.
#![allow(dead_code)]

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request the fake server received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub body: String,
    pub at: Instant,
}

impl Recorded {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    }
    pub fn is_progress(&self) -> bool {
        self.json().get("status").and_then(|s| s.as_str()) == Some("IN_PROGRESS")
    }
}

/// A scripted reply.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub content_type: Option<&'static str>,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            content_type: None,
            body: String::new(),
            delay: Duration::ZERO,
        }
    }
    pub fn json(body: serde_json::Value) -> Self {
        Self {
            status: 200,
            content_type: Some("application/json"),
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }
    pub fn raw(status: u16, content_type: &'static str, body: &str) -> Self {
        Self {
            status,
            content_type: Some(content_type),
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

#[derive(Default)]
pub struct Script {
    pub take: VecDeque<Reply>,
    pub done: VecDeque<Reply>,
    pub stop: VecDeque<Reply>,
    /// Reply when the take script is exhausted (default: 204 after 100 ms, a short long-poll).
    pub take_default: Option<Reply>,
    /// Reply when the stop script is exhausted (default: 204 after 200 ms).
    pub stop_default: Option<Reply>,
    /// Until this instant, every final post is answered 503 (a result-post outage).
    pub done_outage_until: Option<Instant>,
}

/// The fake server.
pub struct FakeRunpod {
    pub base: String,
    pub log: Arc<Mutex<Vec<Recorded>>>,
    pub script: Arc<Mutex<Script>>,
}

pub fn job(id: &str, input: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"id": id, "input": input, "webhook": null, "extra": 5})
}

pub fn small_input() -> serde_json::Value {
    serde_json::json!({"prompt": "a cat", "steps": 3, "seed": 1})
}

impl FakeRunpod {
    pub async fn start() -> Self {
        let log = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(Script::default()));
        let (l2, s2) = (log.clone(), script.clone());
        let app = Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let (log, script) = (l2.clone(), s2.clone());
                async move { handle(log, script, method, uri, headers, body).await }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            base: format!("http://{addr}"),
            log,
            script,
        }
    }

    pub fn push_take(&self, r: Reply) {
        self.script.lock().unwrap().take.push_back(r);
    }
    pub fn push_done(&self, r: Reply) {
        self.script.lock().unwrap().done.push_back(r);
    }
    pub fn push_stop(&self, r: Reply) {
        self.script.lock().unwrap().stop.push_back(r);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }
    pub fn takes(&self) -> Vec<Recorded> {
        self.of("/job-take/")
    }
    pub fn dones(&self) -> Vec<Recorded> {
        self.of("/job-done/")
    }
    pub fn finals(&self) -> Vec<Recorded> {
        self.dones()
            .into_iter()
            .filter(|r| !r.is_progress())
            .collect()
    }
    pub fn finals_for(&self, id: &str) -> Vec<Recorded> {
        self.finals()
            .into_iter()
            .filter(|r| r.path.ends_with(&format!("/{id}")))
            .collect()
    }
    pub fn pings(&self) -> Vec<Recorded> {
        self.of("/ping/")
    }
    pub fn stops(&self) -> Vec<Recorded> {
        self.of("/job-stop/")
    }
    fn of(&self, part: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.contains(part))
            .collect()
    }

    /// A test configuration with intervals scaled down to keep tests short.
    pub fn config(&self, take_query: &str) -> sdxl_worker::runpod::RunpodConfig {
        let mut cfg = sdxl_worker::runpod::RunpodConfig::new(
            format!("{}/v2/ep1/job-take/pod1{take_query}", self.base),
            format!("{}/v2/ep1/job-done/pod1/$ID{take_query}", self.base),
            "pod1".into(),
        );
        cfg.api_key = "rpa_KEY".into();
        cfg.ping_url = Some(format!("{}/v2/ep1/ping/pod1{take_query}", self.base));
        cfg.ping_interval = Duration::from_millis(300);
        cfg.take_timeout = Duration::from_secs(3);
        cfg.too_many_requests_wait = Duration::from_secs(1);
        cfg.backoff_initial = Duration::from_millis(200);
        cfg.backoff_max = Duration::from_millis(800);
        cfg.min_take_interval = Duration::from_millis(100);
        cfg.result_retry_initial = Duration::from_millis(600);
        cfg.result_retry_budget = Duration::from_secs(20);
        cfg.shutdown_grace = Duration::from_secs(5);
        cfg.post_timeout = Duration::from_secs(10);
        cfg.stop_error_wait = Duration::from_millis(200);
        cfg.stop_unsupported_wait = Duration::from_secs(60);
        cfg
    }
}

async fn handle(
    log: Arc<Mutex<Vec<Recorded>>>,
    script: Arc<Mutex<Script>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let body_for_log = body.clone();
    log.lock().unwrap().push(Recorded {
        method,
        path: path.clone(),
        query: uri.query().unwrap_or_default().to_string(),
        headers,
        body: String::from_utf8_lossy(&body_for_log).into_owned(),
        at: Instant::now(),
    });
    let reply = {
        let mut s = script.lock().unwrap();
        if path.contains("/job-take/") {
            s.take
                .pop_front()
                .or_else(|| s.take_default.clone())
                .unwrap_or_else(|| Reply::status(204).after(Duration::from_millis(100)))
        } else if path.contains("/job-done/") {
            // Scripted replies apply to final posts only; progress posts are always accepted.
            let progress = String::from_utf8_lossy(&body).contains("\"IN_PROGRESS\"");
            if progress {
                Reply::status(200)
            } else if s.done_outage_until.is_some_and(|t| Instant::now() < t) {
                Reply::status(503)
            } else {
                s.done.pop_front().unwrap_or_else(|| Reply::status(200))
            }
        } else if path.contains("/job-stop/") {
            s.stop
                .pop_front()
                .or_else(|| s.stop_default.clone())
                .unwrap_or_else(|| Reply::status(204).after(Duration::from_millis(200)))
        } else {
            Reply::status(200)
        }
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let status = StatusCode::from_u16(reply.status).unwrap();
    let mut resp = (status, reply.body).into_response();
    if let Some(ct) = reply.content_type {
        resp.headers_mut()
            .insert("content-type", ct.parse().unwrap());
    } else {
        resp.headers_mut().remove("content-type");
    }
    resp
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}
