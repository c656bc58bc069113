//! The built binary: one-shot mode (runpod.md §13 case 17), SIGTERM handling and JSON log lines
//! of the production loop (cases 16, 19), using the test-only stub handler
//! (`SDXL_WORKER_STUB_HANDLER=1`).

mod common;

use common::{job, wait_until, FakeRunpod, Reply};
use serde_json::{json, Value};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sdxl-worker");

fn worker() -> Command {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("RUNPOD_") || k.starts_with("SDXL_") {
            c.env_remove(k);
        }
    }
    c.env("SDXL_WORKER_STUB_HANDLER", "1");
    c
}

#[test]
fn one_shot_runs_test_input_json_from_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let sample = concat!(env!("CARGO_MANIFEST_DIR"), "/../../test_input.json");
    std::fs::copy(sample, dir.path().join("test_input.json")).unwrap();
    let out = worker().current_dir(dir.path()).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &v["output"]["parameters"];
    assert!(p["prompt"]
        .as_str()
        .unwrap()
        .contains("astronaut riding a horse"));
    assert_eq!(
        (
            p["steps"].as_u64(),
            p["cfg_scale"].as_f64(),
            p["seed"].as_u64()
        ),
        (Some(25), Some(7.0), Some(42))
    );
    assert_eq!(p["sampler_name"], "DPM++ 2M Karras");
    assert_eq!(
        (p["width"].as_u64(), p["height"].as_u64()),
        (Some(1024), Some(1024))
    );
    assert!(p["negative_prompt"].is_string());

    // --test_input wins over the file; an invalid job exits 1 with a JSON error on stdout.
    let out = worker()
        .current_dir(dir.path())
        .args(["--test_input", r#"{"input": {"prompt": "x", "steps": 0}}"#])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["output"]["code"], "INVALID_INPUT");
    assert!(v["error"].as_str().unwrap().contains("`steps`"));

    for bad in [r#"{"foo": 1}"#, "not json", r#"{"input": null}"#] {
        let out = worker()
            .current_dir(dir.path())
            .args(["--test_input", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{bad}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["output"]["code"], "INVALID_INPUT", "{bad}");
    }

    let empty = tempfile::tempdir().unwrap();
    let out = worker().current_dir(empty.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "missing test_input.json");
}

fn production_env(c: &mut Command, fake: &FakeRunpod) {
    c.env(
        "RUNPOD_WEBHOOK_GET_JOB",
        format!("{}/v2/ep1/job-take/$ID?gpu=T", fake.base),
    )
    .env(
        "RUNPOD_WEBHOOK_POST_OUTPUT",
        format!("{}/v2/ep1/job-done/$RUNPOD_POD_ID/$ID?gpu=T", fake.base),
    )
    .env(
        "RUNPOD_WEBHOOK_PING",
        format!("{}/v2/ep1/ping/$RUNPOD_POD_ID?gpu=T", fake.base),
    )
    .env("RUNPOD_POD_ID", "podX")
    .env("RUNPOD_AI_API_KEY", "KEY")
    .env("RUNPOD_ENDPOINT_ID", "ep1")
    .env("RUNPOD_PING_INTERVAL", "1000")
    .env("SDXL_WORKER_STUB_STEP_MS", "100")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
}

fn sigterm(pid: u32) {
    let ok = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

async fn wait_exit(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_job_finishes_posts_and_exits_zero_with_json_logs() {
    let fake = FakeRunpod::start().await;
    fake.push_take(Reply::json(job("j1", json!({"prompt": "x", "steps": 20}))));
    let mut cmd = worker();
    production_env(&mut cmd, &fake);
    let mut child = cmd.spawn().unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || fake
            .dones()
            .iter()
            .any(|r| r.is_progress()))
        .await,
        "job started"
    );
    sigterm(child.id());
    let status = wait_exit(&mut child, Duration::from_secs(30))
        .await
        .expect("worker exits");
    assert_eq!(status.code(), Some(0));
    let finals = fake.finals_for("j1");
    assert_eq!(finals.len(), 1);
    assert!(finals[0].json()["output"]["images"].is_array());
    assert_eq!(fake.takes()[0].path, "/v2/ep1/job-take/podX");
    assert!(fake.pings().iter().all(|p| p.path == "/v2/ep1/ping/podX"));

    let mut stdout = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not a JSON log line: {l}")))
        .collect();
    assert!(!lines.is_empty());
    for l in &lines {
        assert!(
            l["message"].is_string() && l["level"].is_string() && l.get("requestId").is_some(),
            "{l}"
        );
    }
    assert!(lines
        .iter()
        .any(|l| l["requestId"] == "j1" && l["message"] == "Started."));
    assert!(lines
        .iter()
        .any(|l| l["requestId"] == "j1" && l["message"] == "Finished."));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_while_idle_in_a_long_poll_exits_quickly() {
    let fake = FakeRunpod::start().await;
    fake.script.lock().unwrap().take_default =
        Some(Reply::status(204).after(Duration::from_secs(60)));
    let mut cmd = worker();
    production_env(&mut cmd, &fake);
    let mut child = cmd.spawn().unwrap();
    assert!(wait_until(Duration::from_secs(30), || !fake.takes().is_empty()).await);
    let t0 = Instant::now();
    sigterm(child.id());
    let status = wait_exit(&mut child, Duration::from_secs(20))
        .await
        .expect("worker exits");
    assert_eq!(status.code(), Some(0));
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert!(fake.dones().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_local_api() {
    // A free port: bind, read it, release it for the worker.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = worker()
        .args(["api", "--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let health = format!("http://127.0.0.1:{port}/health");
    let up = wait_until(Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    assert!(up, "the API did not start listening");
    let reply = reqwest::get(&health).await.unwrap();
    assert!(reply.status().is_success());
    sigterm(child.id());
    let status = wait_exit(&mut child, Duration::from_secs(20)).await;
    if status.is_none() {
        let _ = child.kill();
    }
    assert_eq!(status.expect("the API exits on SIGTERM").code(), Some(0));
}
