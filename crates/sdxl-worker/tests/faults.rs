//! Faults the worker survives (SPEC §12), driven through the real model handler on the tiny
//! fixture model: panics inside a job, junk take replies, a result-post outage, pixel budgets,
//! and signals (SIGTERM idle, mid-job, past the grace period, twice, mid-download) on the built
//! binary.

mod tiny_runtime;
use tiny_runtime::{fixtures, tiny_models_text, tiny_runtime};

mod common;

use common::{job, wait_until, FakeRunpod, Reply};
use sdxl_worker::catalog::Budgets;
use sdxl_worker::error::ErrorCode;
use sdxl_worker::handler::{self, CancelFlag, JobHandler};
use sdxl_worker::runpod::{serve, RunpodConfig, Shutdown};
use sdxl_worker::runtime::TEST_PANIC_PROMPT;
use serde_json::{json, Value};
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sdxl-worker");

fn small(prompt: &str) -> Value {
    json!({"prompt": prompt, "steps": 2, "width": 64, "height": 64, "seed": 5,
        "sampler_name": "Euler"})
}

#[test]
fn a_panic_mid_job_is_internal_and_the_model_reloads_clean() {
    let cache = tempfile::tempdir().unwrap();
    let runtime = tiny_runtime(cache.path(), "");
    runtime.preload().unwrap();
    assert_eq!(runtime.loads(), 1);
    let run = |input: &Value| handler::execute(&runtime, input, &|_, _| {}, &CancelFlag::new());
    let before = run(&small("a cat")).unwrap();
    let e = run(&small(TEST_PANIC_PROMPT)).unwrap_err();
    assert_eq!(e.code(), ErrorCode::Internal, "{e}");
    assert!(e.message().contains("panic"), "{e}");
    // The next job works, on a model loaded again from scratch (not the one the panic left).
    let after = run(&small("a cat")).unwrap();
    assert_eq!(runtime.loads(), 2, "the model was reloaded once");
    assert_eq!(
        before.images, after.images,
        "the reloaded model renders the same image"
    );
    run(&small("a dog")).unwrap();
    assert_eq!(runtime.loads(), 2, "no reload without a panic");
}

#[test]
fn pixel_budgets_refuse_jobs_before_any_work() {
    let cache = tempfile::tempdir().unwrap();
    let runtime = tiny_runtime(cache.path(), "").with_budgets(Budgets {
        max_pixels: 96 * 96,
        max_batch_pixels: 3 * 64 * 64,
    });
    let run = |input: Value| handler::execute(&runtime, &input, &|_, _| {}, &CancelFlag::new());
    let e = run(json!({"prompt": "x", "width": 128, "height": 128, "steps": 2})).unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidInput);
    assert!(e.message().contains("SDXL_MAX_PIXELS"), "{e}");
    let e = run(json!({"prompt": "x", "width": 64, "height": 64, "batch_size": 4, "steps": 2}))
        .unwrap_err();
    assert!(e.message().contains("SDXL_MAX_BATCH_PIXELS"), "{e}");
    assert_eq!(runtime.loads(), 0, "nothing was loaded for refused jobs");
    let ok = run(json!({"prompt": "x", "width": 64, "height": 64, "batch_size": 3, "steps": 2}));
    assert_eq!(ok.unwrap().images.len(), 3);
    // The defaults: one 2048² image is fine, eight of them are not.
    let default_catalog = sdxl_worker::catalog::Catalog::pipeline_only();
    let v = |input: Value| sdxl_worker::job::validate(&input, &default_catalog);
    assert!(v(json!({"prompt": "x", "width": 2048, "height": 2048})).is_ok());
    let e = v(json!({"prompt": "x", "width": 2048, "height": 2048, "batch_size": 8})).unwrap_err();
    assert!(e.message().contains("SDXL_MAX_BATCH_PIXELS"), "{e}");
}

fn start(
    cfg: RunpodConfig,
    handler: Arc<dyn JobHandler>,
) -> (Shutdown, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let shutdown = Shutdown::new();
    let task = tokio::spawn(serve(cfg, handler, shutdown.clone()));
    (shutdown, task)
}

async fn tiny_handler() -> (tempfile::TempDir, Arc<dyn JobHandler>) {
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().to_path_buf();
    let runtime = tokio::task::spawn_blocking(move || {
        let r = tiny_runtime(&dir, "");
        r.preload().unwrap();
        r
    })
    .await
    .unwrap();
    (cache, Arc::new(runtime))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_take_replies_wait_like_no_job() {
    let fake = FakeRunpod::start().await;
    for junk in [
        Reply::json(json!([])),
        Reply::json(json!({})),
        Reply::json(json!([{"no": "id"}])),
        Reply::json(json!({"input": {"prompt": "no id"}})),
        Reply::raw(200, "application/json", "[1, 2"),
        Reply::raw(200, "text/html", "<html>busy</html>"),
    ] {
        fake.push_take(junk);
    }
    // After the junk, "[]" forever: the loop must keep pausing between takes.
    fake.script.lock().unwrap().take_default = Some(Reply::json(json!([])));
    let (_cache, handler) = tiny_handler().await;
    let mut cfg = fake.config("");
    cfg.min_take_interval = Duration::from_millis(200);
    let (sd, task) = start(cfg, handler);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let takes = fake.takes().len();
    assert!(takes <= 25, "{takes} takes in 3 s: a hot loop");
    assert!(takes >= 6, "{takes} takes in 3 s");
    // A real job after all that still runs.
    fake.script.lock().unwrap().take_default = None;
    fake.push_take(Reply::json(job("after-junk", small("a cat"))));
    assert!(
        wait_until(Duration::from_secs(60), || !fake
            .finals_for("after-junk")
            .is_empty())
        .await
    );
    sd.trigger();
    task.await.unwrap().unwrap();
    let body = fake.finals_for("after-junk")[0].json();
    assert!(body["output"]["images"].is_array(), "{body}");
}

/// RunPod's result endpoint is down for a minute: the rendered result is retried with backoff
/// and posted once it is back (not thrown away after seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_post_outage_of_a_minute_is_survived() {
    let fake = FakeRunpod::start().await;
    let (_cache, handler) = tiny_handler().await;
    let mut cfg = fake.config("");
    cfg.result_retry_initial = Duration::from_secs(1);
    cfg.result_retry_max_delay = Duration::from_secs(15);
    cfg.result_retry_budget = Duration::from_secs(300);
    let outage_end = Instant::now() + Duration::from_secs(60);
    fake.script.lock().unwrap().done_outage_until = Some(outage_end);
    fake.push_take(Reply::json(job("outage", small("a cat"))));
    let (sd, task) = start(cfg, handler);
    assert!(
        wait_until(Duration::from_secs(150), || {
            fake.finals_for("outage").iter().any(|r| r.at >= outage_end)
        })
        .await,
        "the result was not posted after the outage"
    );
    sd.trigger();
    task.await.unwrap().unwrap();
    let finals = fake.finals_for("outage");
    assert!(finals.len() >= 4, "{} attempts", finals.len());
    assert!(finals.len() <= 20, "{} attempts: no backoff", finals.len());
    let last = finals.last().unwrap();
    assert!(last.json()["output"]["images"].is_array());
    assert!(
        finals.iter().all(|f| f.body == last.body),
        "the same result every time"
    );
}

// ---- signals on the built binary, real model handler ----

fn real_worker(dir: &Path, fake: &FakeRunpod) -> Command {
    let toml = dir.join("models.toml");
    std::fs::write(&toml, tiny_models_text(&dir.join("cache"), "")).unwrap();
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("RUNPOD_") || k.starts_with("SDXL_") {
            c.env_remove(k);
        }
    }
    c.env(
        "RUNPOD_WEBHOOK_GET_JOB",
        format!("{}/v2/ep1/job-take/$ID?gpu=T", fake.base),
    )
    .env(
        "RUNPOD_WEBHOOK_POST_OUTPUT",
        format!("{}/v2/ep1/job-done/$RUNPOD_POD_ID/$ID?gpu=T", fake.base),
    )
    .env("RUNPOD_POD_ID", "podX")
    .env("RUNPOD_AI_API_KEY", "KEY")
    .env("SDXL_MODELS_TOML", &toml)
    .env("SDXL_DEVICE", "cpu")
    .current_dir(dir)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    c
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

async fn wait_exit(child: &mut std::process::Child, timeout: Duration) -> Option<i32> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_idle_exits_zero_with_the_model_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRunpod::start().await;
    fake.script.lock().unwrap().take_default =
        Some(Reply::status(204).after(Duration::from_secs(60)));
    let mut child = real_worker(dir.path(), &fake).spawn().unwrap();
    assert!(wait_until(Duration::from_secs(60), || !fake.takes().is_empty()).await);
    let t0 = Instant::now();
    signal(child.id(), "-TERM");
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(20)).await,
        Some(0)
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_job_posts_the_result_then_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRunpod::start().await;
    let input = json!({"prompt": "a cat", "steps": 40, "width": 64, "height": 64, "seed": 1,
        "sampler_name": "Euler"});
    fake.push_take(Reply::json(job("mid", input)));
    let mut child = real_worker(dir.path(), &fake)
        .env("SDXL_SHUTDOWN_GRACE_S", "60")
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || fake
            .dones()
            .iter()
            .any(|r| r.is_progress()))
        .await,
        "the job started"
    );
    signal(child.id(), "-TERM");
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(90)).await,
        Some(0)
    );
    let finals = fake.finals_for("mid");
    assert_eq!(finals.len(), 1);
    assert!(
        finals[0].json()["output"]["images"].is_array(),
        "{}",
        finals[0].body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_grace_period_the_job_is_posted_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRunpod::start().await;
    let input = json!({"prompt": "a cat", "steps": 150, "batch_size": 8, "width": 64,
        "height": 64, "seed": 1, "sampler_name": "Euler"});
    fake.push_take(Reply::json(job("long", input)));
    let mut child = real_worker(dir.path(), &fake)
        .env("SDXL_SHUTDOWN_GRACE_S", "1")
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || fake
            .dones()
            .iter()
            .any(|r| r.is_progress()))
        .await
    );
    let t0 = Instant::now();
    signal(child.id(), "-TERM");
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(30)).await,
        Some(0)
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    let finals = fake.finals_for("long");
    assert_eq!(finals.len(), 1);
    assert_eq!(
        finals[0].json()["output"]["code"],
        "CANCELLED",
        "{}",
        finals[0].body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRunpod::start().await;
    let input = json!({"prompt": "a cat", "steps": 150, "batch_size": 8, "width": 64,
        "height": 64, "seed": 1, "sampler_name": "Euler"});
    fake.push_take(Reply::json(job("twice", input)));
    let mut child = real_worker(dir.path(), &fake).spawn().unwrap();
    assert!(
        wait_until(Duration::from_secs(60), || fake
            .dones()
            .iter()
            .any(|r| r.is_progress()))
        .await
    );
    signal(child.id(), "-TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    signal(child.id(), "-TERM");
    let code = wait_exit(&mut child, Duration::from_secs(10)).await;
    assert_eq!(code, Some(sdxl_worker::signals::SECOND_SIGNAL_EXIT_CODE));
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
}

/// A server that answers the model download with headers and the start of a safetensors file,
/// then stalls.
async fn stalling_model_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let head = "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: 100000000\r\n\r\n";
                let _ = sock.write_all(head.as_bytes()).await;
                // A plausible safetensors start (header length + JSON), then nothing more.
                let header = format!("{:<120}", r#"{"__metadata__":{}}"#);
                let _ = sock.write_all(&(header.len() as u64).to_le_bytes()).await;
                let _ = sock.write_all(header.as_bytes()).await;
                tokio::time::sleep(Duration::from_secs(300)).await;
            });
        }
    });
    format!("http://{addr}/model.safetensors")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_download_exits_zero_without_taking_a_job() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRunpod::start().await;
    let url = stalling_model_server().await;
    let toml = dir.path().join("stall.toml");
    let mut f = std::fs::File::create(&toml).unwrap();
    writeln!(
        f,
        "cache_dir = \"{}\"\n\n[[checkpoints]]\nname = \"Remote\"\nurl = \"{url}\"\nfilename = \"remote.safetensors\"\nconfig = \"{}\"",
        dir.path().join("cache").display(),
        fixtures().join("tiny-sdxl").display()
    )
    .unwrap();
    let mut child = real_worker(dir.path(), &fake)
        .env("SDXL_MODELS_TOML", &toml)
        .spawn()
        .unwrap();
    // Wait until the download has started (the partial file exists).
    let cache = dir.path().join("cache");
    let started = wait_until(Duration::from_secs(30), || {
        std::fs::read_dir(&cache)
            .map(|d| d.count() > 0)
            .unwrap_or(false)
    })
    .await;
    assert!(started, "the download did not start");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    signal(child.id(), "-TERM");
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(20)).await,
        Some(0)
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert!(fake.takes().is_empty(), "no job is taken while stopping");
}

/// The local API on the real model stops on SIGTERM like the RunPod loop: a request still
/// waiting for a long job gets the grace period, then the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_local_api_within_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("models.toml");
    std::fs::write(&toml, tiny_models_text(&dir.path().join("cache"), "")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("RUNPOD_") || k.starts_with("SDXL_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .args(["api", "--port", &port.to_string()])
        .env("SDXL_MODELS_TOML", &toml)
        .env("SDXL_DEVICE", "cpu")
        .env("SDXL_SHUTDOWN_GRACE_S", "2")
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    assert!(
        wait_until(Duration::from_secs(60), || std::net::TcpStream::connect((
            "127.0.0.1",
            port
        ))
        .is_ok())
        .await
    );
    let long = json!({"input": {"prompt": "a cat", "steps": 150, "batch_size": 8, "width": 64,
        "height": 64, "seed": 1, "sampler_name": "Euler"}});
    let client = reqwest::Client::new();
    let url = format!("{base}/runsync?wait=300000");
    let waiting = tokio::spawn(async move { client.post(url).json(&long).send().await });
    let progress = reqwest::Client::new();
    let started = wait_until(Duration::from_secs(30), || {
        let p = progress.clone();
        let u = format!("{base}/sdapi/v1/progress");
        std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(async { p.get(u).send().await.ok()?.json::<Value>().await.ok() })
        })
        .join()
        .ok()
        .flatten()
        .is_some_and(|v| v["state"]["sampling_step"].as_u64().unwrap_or(0) > 0)
    })
    .await;
    assert!(started, "the job did not start");
    let t0 = Instant::now();
    signal(child.id(), "-TERM");
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(20)).await,
        Some(0)
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    waiting.abort();
}
