//! The production loop against a scripted fake RunPod server (runpod.md §13 cases 1–16).

mod common;

use common::{job, small_input, wait_until, FakeRunpod, Reply};
use sdxl_worker::error::WorkerError;
use sdxl_worker::handler::{JobHandler, StubHandler};
use sdxl_worker::runpod::{serve, RunpodConfig, Shutdown};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

const LONG: Duration = Duration::from_secs(15);

fn start(cfg: RunpodConfig, handler: StubHandler) -> (Shutdown, JoinHandle<anyhow::Result<()>>) {
    let shutdown = Shutdown::new();
    let h: Arc<dyn JobHandler> = Arc::new(handler);
    let task = tokio::spawn(serve(cfg, h, shutdown.clone()));
    (shutdown, task)
}

async fn stop(shutdown: Shutdown, task: JoinHandle<anyhow::Result<()>>) {
    shutdown.trigger();
    tokio::time::timeout(LONG, task)
        .await
        .expect("worker did not stop")
        .unwrap()
        .unwrap();
}

fn slow(step_ms: u64) -> StubHandler {
    StubHandler {
        step_delay: Duration::from_millis(step_ms),
        ..StubHandler::default()
    }
}

#[test]
fn env_placeholders_are_substituted_like_the_sdk_and_better() {
    let vars = |k: &str| -> Option<String> {
        match k {
            "RUNPOD_WEBHOOK_GET_JOB" => {
                Some("https://api.runpod.ai/v2/ep/job-take/$RUNPOD_POD_ID?gpu=NVIDIA+H100".into())
            }
            "RUNPOD_WEBHOOK_POST_OUTPUT" => Some(
                "https://api.runpod.ai/v2/ep/job-done/$RUNPOD_POD_ID/$ID?gpu=NVIDIA+H100".into(),
            ),
            "RUNPOD_WEBHOOK_PING" => Some("https://api.runpod.ai/v2/ep/ping/$ID".into()),
            "RUNPOD_POD_ID" => Some("pod9".into()),
            "RUNPOD_AI_API_KEY" => Some("k".into()),
            "RUNPOD_PING_INTERVAL" => Some("200".into()),
            "SDXL_MAX_RESULT_BYTES" => Some("1234".into()),
            _ => None,
        }
    };
    let cfg = RunpodConfig::from_vars(vars).unwrap();
    assert_eq!(
        cfg.take_request_url(false).unwrap().as_str(),
        "https://api.runpod.ai/v2/ep/job-take/pod9?gpu=NVIDIA+H100&job_in_progress=0"
    );
    assert_eq!(
        cfg.output_url("job-1").unwrap().as_str(),
        "https://api.runpod.ai/v2/ep/job-done/pod9/job-1?gpu=NVIDIA+H100&isStream=false"
    );
    assert_eq!(
        cfg.stop_url.as_deref(),
        Some("https://api.runpod.ai/v2/ep/job-stop/pod9?gpu=NVIDIA+H100")
    );
    assert_eq!(
        cfg.ping_request_url(&["a".into(), "b".into()])
            .unwrap()
            .as_str(),
        "https://api.runpod.ai/v2/ep/ping/pod9?job_id=a%2Cb&runpod_version=1.12.0"
    );
    assert_eq!(
        cfg.ping_interval,
        Duration::from_secs(1),
        "interval clamped to >= 1 s"
    );
    assert_eq!(cfg.max_result_bytes, 1234);

    // Without a query string the first parameter gets `?`.
    let cfg = RunpodConfig::from_vars(|k: &str| match k {
        "RUNPOD_WEBHOOK_GET_JOB" => Some("http://h/job-take/$ID".into()),
        "RUNPOD_WEBHOOK_POST_OUTPUT" => Some("http://h/job-done/$RUNPOD_POD_ID/$ID".into()),
        "RUNPOD_POD_ID" => Some("p".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!(
        cfg.take_request_url(false).unwrap().as_str(),
        "http://h/job-take/p?job_in_progress=0"
    );
    assert_eq!(
        cfg.output_url("j").unwrap().as_str(),
        "http://h/job-done/p/j?isStream=false"
    );
    assert!(cfg.ping_url.is_none(), "no ping without key");
    assert!(RunpodConfig::from_vars(|_| None).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_posts_one_result_with_sdk_headers() {
    let fake = FakeRunpod::start().await;
    fake.push_take(Reply::json(job(
        "j1",
        json!({"prompt": "ein Pferd 🐴 auf dem Mars", "steps": 3, "seed": 5}),
    )));
    let (sd, task) = start(fake.config("?gpu=H100"), StubHandler::default());
    assert!(wait_until(LONG, || !fake.finals_for("j1").is_empty()).await);
    stop(sd, task).await;

    let take = &fake.takes()[0];
    assert_eq!(take.path, "/v2/ep1/job-take/pod1");
    assert_eq!(take.query, "gpu=H100&job_in_progress=0");
    assert_eq!(take.header("authorization").as_deref(), Some("rpa_KEY"));
    let finals = fake.finals_for("j1");
    assert_eq!(finals.len(), 1);
    let f = &finals[0];
    assert_eq!(f.path, "/v2/ep1/job-done/pod1/j1");
    assert_eq!(f.query, "gpu=H100&isStream=false");
    assert_eq!(f.header("authorization").as_deref(), Some("rpa_KEY"));
    assert_eq!(f.header("x-request-id").as_deref(), Some("j1"));
    assert_eq!(
        f.header("content-type").as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    let body = f.json();
    let out = &body["output"];
    assert_eq!(out["images"].as_array().unwrap().len(), 1);
    assert_eq!(out["parameters"]["prompt"], "ein Pferd 🐴 auf dem Mars");
    assert_eq!(out["parameters"]["seeds"], json!([5]));
    assert!(out["info"].as_str().unwrap().contains("Seed: 5"));
    assert!(out["timings"]["total_ms"].is_u64());
    assert!(body.get("error").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_reply_processes_every_job() {
    let fake = FakeRunpod::start().await;
    fake.push_take(Reply::json(json!([
        job("a", small_input()),
        job("b", small_input())
    ])));
    let (sd, task) = start(fake.config(""), StubHandler::default());
    assert!(
        wait_until(LONG, || fake.finals_for("a").len() == 1
            && fake.finals_for("b").len() == 1)
        .await
    );
    stop(sd, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_job_replies_repoll_without_spinning() {
    let fake = FakeRunpod::start().await;
    fake.script.lock().unwrap().take_default = Some(Reply::status(204));
    for _ in 0..3 {
        fake.push_take(Reply::status(400));
    }
    let (sd, task) = start(fake.config(""), StubHandler::default());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let n = fake.takes().len();
    // Instant 204s: at most one take per min_take_interval (100 ms) plus slack.
    assert!((4..=20).contains(&n), "{n} takes in 1.5 s");
    assert!(fake.dones().is_empty());
    fake.script.lock().unwrap().take_default = None;
    fake.push_take(Reply::json(job("late", small_input())));
    assert!(wait_until(LONG, || fake.finals_for("late").len() == 1).await);
    stop(sd, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_requests_waits_before_the_next_take() {
    let fake = FakeRunpod::start().await;
    fake.push_take(Reply::status(429));
    let (sd, task) = start(fake.config(""), StubHandler::default());
    assert!(wait_until(LONG, || fake.takes().len() >= 2).await);
    stop(sd, task).await;
    let t = fake.takes();
    let gap = t[1].at - t[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "429 wait was {gap:?} (configured 1 s)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn take_errors_back_off_exponentially_and_hung_takes_time_out() {
    let fake = FakeRunpod::start().await;
    for _ in 0..3 {
        fake.push_take(Reply::status(500));
    }
    let mut cfg = fake.config("");
    cfg.take_timeout = Duration::from_secs(1);
    fake.push_take(Reply::status(204).after(Duration::from_secs(3))); // hangs past the client timeout
    fake.push_take(Reply::json(job("after", small_input())));
    let (sd, task) = start(cfg, StubHandler::default());
    assert!(wait_until(LONG, || fake.finals_for("after").len() == 1).await);
    stop(sd, task).await;
    let t = fake.takes();
    let g1 = t[1].at - t[0].at;
    let g2 = t[2].at - t[1].at;
    let g3 = t[3].at - t[2].at;
    assert!(g1 >= Duration::from_millis(190), "first backoff {g1:?}");
    assert!(g2 >= Duration::from_millis(390), "second backoff {g2:?}");
    assert!(g3 >= Duration::from_millis(790), "third backoff {g3:?}");
    let g4 = t[4].at - t[3].at;
    assert!(
        g4 < Duration::from_millis(2900),
        "hung take not abandoned at the 1 s timeout: {g4:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_takes_do_not_kill_the_worker() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut cfg = RunpodConfig::new(
        format!("http://127.0.0.1:{port}/v2/e/job-take/p"),
        format!("http://127.0.0.1:{port}/v2/e/job-done/p/$ID"),
        "p".into(),
    );
    cfg.backoff_initial = Duration::from_millis(50);
    cfg.backoff_max = Duration::from_millis(200);
    cfg.stop_error_wait = Duration::from_millis(100);
    let (sd, task) = start(cfg, StubHandler::default());
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!task.is_finished());
    stop(sd, task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_replies_never_crash_and_jobs_with_an_id_get_an_error() {
    let fake = FakeRunpod::start().await;
    fake.push_take(Reply::raw(200, "text/plain", "hello"));
    fake.push_take(Reply::raw(200, "application/json", ""));
    fake.push_take(Reply::raw(200, "application/json", "{not json"));
    fake.push_take(Reply::raw(200, "application/json", "42"));
    fake.push_take(Reply::json(json!({"input": {"prompt": "no id"}})));
    fake.push_take(Reply::json(
        json!({"id": 17, "input": {"prompt": "numeric id"}}),
    ));
    fake.push_take(Reply::json(json!({"id": "g1"})));
    fake.push_take(Reply::json(json!({"id": "g2", "input": null})));
    fake.push_take(Reply::json(json!({"id": "g3", "input": "a string"})));
    fake.push_take(Reply::json(json!([1, "x", null])));
    fake.push_take(Reply::json(job("ok", small_input())));
    let mut cfg = fake.config("");
    cfg.backoff_max = Duration::from_millis(200);
    let (sd, task) = start(cfg, StubHandler::default());
    assert!(wait_until(LONG, || fake.finals_for("ok").len() == 1).await);
    stop(sd, task).await;
    for id in ["g1", "g2", "g3"] {
        let f = fake.finals_for(id);
        assert_eq!(f.len(), 1, "{id}");
        let b = f[0].json();
        assert!(b["error"].is_string(), "{id}: {b}");
        assert_eq!(b["output"]["code"], "INVALID_INPUT");
    }
    assert_eq!(
        fake.finals().len(),
        4,
        "only jobs with a string id are answered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_errors_are_one_string_and_do_no_gpu_work() {
    let fake = FakeRunpod::start().await;
    fake.push_take(Reply::json(job(
        "bad",
        json!({"prompt": "x", "width": 1001, "steps": "7", "cfg_scale": true, "frobnicate": 1}),
    )));
    let (sd, task) = start(fake.config(""), slow(50));
    assert!(wait_until(LONG, || fake.finals_for("bad").len() == 1).await);
    stop(sd, task).await;
    let b = fake.finals_for("bad")[0].json();
    let msg = b["error"].as_str().unwrap();
    assert!(
        msg.contains("`width`") && msg.contains("`steps`") && msg.contains("`cfg_scale`"),
        "{msg}"
    );
    assert_eq!(b["output"]["code"], "INVALID_INPUT");
    assert!(
        fake.dones().iter().all(|r| !r.is_progress()),
        "no steps ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_failures_and_panics_become_error_posts_and_the_worker_goes_on() {
    let fake = FakeRunpod::start().await;
    fake.push_take(Reply::json(job("oom", small_input())));
    let (sd, task) = start(
        fake.config(""),
        StubHandler {
            fail_with: Some(WorkerError::OutOfMemory("CUDA out of memory".into())),
            ..StubHandler::default()
        },
    );
    assert!(wait_until(LONG, || fake.finals_for("oom").len() == 1).await);
    stop(sd, task).await;
    let b = fake.finals_for("oom")[0].json();
    assert_eq!(b["error"], "CUDA out of memory");
    assert_eq!(b["output"]["code"], "OUT_OF_MEMORY");

    let fake = FakeRunpod::start().await;
    fake.push_take(Reply::json(job("boom", small_input())));
    let (sd, task) = start(
        fake.config(""),
        StubHandler {
            panic: true,
            ..StubHandler::default()
        },
    );
    assert!(wait_until(LONG, || fake.finals_for("boom").len() == 1).await);
    fake.push_take(Reply::json(job("boom2", small_input())));
    assert!(wait_until(LONG, || fake.finals_for("boom2").len() == 1).await);
    stop(sd, task).await;
    let b = fake.finals_for("boom")[0].json();
    assert_eq!(b["output"]["code"], "INTERNAL");
    assert!(b["error"].as_str().unwrap().contains("panic"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_posts_retry_5xx_and_fall_back_once_on_4xx() {
    let fake = FakeRunpod::start().await;
    fake.push_take(Reply::json(job("r5", small_input())));
    fake.push_done(Reply::status(500));
    fake.push_done(Reply::status(503));
    let (sd, task) = start(fake.config(""), StubHandler::default());
    assert!(wait_until(LONG, || fake.finals_for("r5").len() == 3).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let f = fake.finals_for("r5");
    assert_eq!(f.len(), 3, "500, 503, then accepted");
    assert!(f[1].at - f[0].at >= Duration::from_millis(290));
    assert!(f[2].at - f[1].at >= Duration::from_millis(490));
    assert!(f.iter().all(|r| r.body == f[0].body));

    fake.push_done(Reply::status(400));
    fake.push_take(Reply::json(job("r4", small_input())));
    assert!(wait_until(LONG, || fake.finals_for("r4").len() == 2).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop(sd, task).await;
    let f = fake.finals_for("r4");
    assert_eq!(f.len(), 2, "no blind retry after 400, one fallback");
    assert!(f[0].json()["output"]["images"].is_array());
    let fallback = f[1].json();
    assert!(fallback["error"].as_str().unwrap().contains("HTTP 400"));
    assert_eq!(fallback["output"]["code"], "RESULT_TOO_LARGE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_results_become_result_too_large() {
    let fake = FakeRunpod::start().await;
    fake.push_take(Reply::json(job(
        "big",
        json!({"prompt": "x", "steps": 2, "batch_size": 8}),
    )));
    let mut cfg = fake.config("");
    cfg.max_result_bytes = 2000;
    let (sd, task) = start(cfg, StubHandler::default());
    assert!(wait_until(LONG, || fake.finals_for("big").len() == 1).await);
    stop(sd, task).await;
    let f = fake.finals_for("big");
    let b = f[0].json();
    assert_eq!(b["output"]["code"], "RESULT_TOO_LARGE");
    assert!(b["error"].as_str().unwrap().contains("2000"));
    assert!(f[0].body.len() < 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_posts_come_strictly_before_the_final_post() {
    let fake = FakeRunpod::start().await;
    fake.push_take(Reply::json(job("p1", json!({"prompt": "x", "steps": 8}))));
    let (sd, task) = start(fake.config("?gpu=A"), slow(60));
    assert!(wait_until(LONG, || fake.finals_for("p1").len() == 1).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop(sd, task).await;
    let dones: Vec<_> = fake
        .dones()
        .into_iter()
        .filter(|r| r.path.ends_with("/p1"))
        .collect();
    let last = dones.last().unwrap();
    assert!(!last.is_progress(), "the final post is the last post");
    let progress: Vec<_> = dones.iter().filter(|r| r.is_progress()).collect();
    assert!(!progress.is_empty());
    let mut prev = 0;
    for p in &progress {
        assert_eq!(p.query, "gpu=A&isStream=false");
        let out = &p.json()["output"];
        assert_eq!(out["total"], 8);
        let step = out["step"].as_u64().unwrap();
        assert!(step > prev, "progress in order");
        prev = step;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_worker_adds_stop_pod_and_exits_after_the_job() {
    let fake = FakeRunpod::start().await;
    fake.push_take(Reply::json(job("r", small_input())));
    let mut cfg = fake.config("");
    cfg.refresh_worker = true;
    let (_sd, task) = start(cfg, StubHandler::default());
    tokio::time::timeout(LONG, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let f = fake.finals_for("r");
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].json()["stopPod"], true);
    assert_eq!(fake.takes().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_lists_the_running_job_while_it_blocks_and_while_it_posts() {
    let fake = FakeRunpod::start().await;
    fake.push_take(Reply::json(job("hb", json!({"prompt": "x", "steps": 10}))));
    fake.push_done(Reply::status(200).after(Duration::from_millis(1200))); // slow final post
    let (sd, task) = start(fake.config("?gpu=H"), slow(150));
    assert!(wait_until(LONG, || fake.finals_for("hb").len() == 1).await);
    let final_at = fake.finals_for("hb")[0].at;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    stop(sd, task).await;
    let pings = fake.pings();
    assert!(pings
        .iter()
        .all(|p| p.query.contains("runpod_version=1.12.0") && p.query.starts_with("gpu=H&")));
    assert!(pings
        .iter()
        .all(|p| p.header("authorization").as_deref() == Some("rpa_KEY")));
    let with_job: Vec<_> = pings
        .iter()
        .filter(|p| p.query.contains("job_id=hb"))
        .collect();
    assert!(
        with_job.len() >= 3,
        "pings continue while the job blocks: {}",
        with_job.len()
    );
    assert!(
        with_job.iter().any(|p| p.at > final_at),
        "job listed while its result is posted"
    );
    let last = pings.last().unwrap();
    assert!(
        !last.query.contains("job_id"),
        "idle pings list no job: {}",
        last.query
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_channel_cancels_the_named_job_without_a_result() {
    let fake = FakeRunpod::start().await;
    fake.push_take(Reply::json(job("s1", json!({"prompt": "x", "steps": 50}))));
    let (sd, task) = start(fake.config("?gpu=H"), slow(100));
    // Stop only once the job is visibly running (robust on a loaded machine).
    assert!(wait_until(LONG, || fake.dones().iter().any(|r| r.is_progress())).await);
    fake.push_stop(Reply::json(json!({"jobsToStop": ["s1", 7]})));
    assert!(
        wait_until(LONG, || fake.takes().len() >= 2).await,
        "worker moved on after the stop"
    );
    fake.push_take(Reply::json(job("s2", small_input())));
    assert!(wait_until(LONG, || fake.finals_for("s2").len() == 1).await);
    stop(sd, task).await;
    assert!(
        fake.finals_for("s1").is_empty(),
        "a stopped job posts no result"
    );
    let stops = fake.stops();
    assert_eq!(stops[0].path, "/v2/ep1/job-stop/pod1");
    assert_eq!(stops[0].query, "gpu=H");
    let progress = fake
        .dones()
        .into_iter()
        .filter(|r| r.path.ends_with("/s1"))
        .count();
    assert!(progress < 50, "cancelled between steps");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_stop_channel_backs_off() {
    let fake = FakeRunpod::start().await;
    fake.script.lock().unwrap().stop_default = Some(Reply::status(404));
    let (sd, task) = start(fake.config(""), StubHandler::default());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop(sd, task).await;
    assert_eq!(fake.stops().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_idle_abandons_the_long_poll() {
    let fake = FakeRunpod::start().await;
    fake.push_take(Reply::status(204).after(Duration::from_secs(30)));
    let (sd, task) = start(fake.config(""), StubHandler::default());
    assert!(wait_until(LONG, || fake.takes().len() == 1).await);
    let t0 = std::time::Instant::now();
    stop(sd, task).await;
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_mid_job_finishes_and_posts_it() {
    let fake = FakeRunpod::start().await;
    fake.push_take(Reply::json(job("m", json!({"prompt": "x", "steps": 10}))));
    let (sd, task) = start(fake.config(""), slow(100));
    assert!(wait_until(LONG, || fake.dones().iter().any(|r| r.is_progress())).await);
    stop(sd, task).await;
    let f = fake.finals_for("m");
    assert_eq!(f.len(), 1);
    assert!(f[0].json()["output"]["images"].is_array());
    assert_eq!(fake.takes().len(), 1, "no take after the shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_posts_are_retried_after_transport_errors() {
    let fake = FakeRunpod::start().await;
    fake.push_take(Reply::json(job("t1", small_input())));
    // The first final post hangs past the client timeout (a transport error, unlike the SDK we retry).
    fake.push_done(Reply::status(200).after(Duration::from_secs(3)));
    let mut cfg = fake.config("");
    cfg.post_timeout = Duration::from_secs(1);
    let (sd, task) = start(cfg, StubHandler::default());
    assert!(wait_until(LONG, || fake.finals_for("t1").len() == 2).await);
    stop(sd, task).await;
    let f = fake.finals_for("t1");
    assert_eq!(f[0].body, f[1].body);
    assert!(
        f[1].at - f[0].at >= Duration::from_millis(1200),
        "timeout then the 300 ms retry delay"
    );
}
