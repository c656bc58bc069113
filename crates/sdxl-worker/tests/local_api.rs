//! The local HTTP API: RunPod routes (plain and under /v2/{endpoint}), the A1111 subset, queueing.
#![recursion_limit = "256"]

use sdxl_worker::api::{self, ApiConfig};
use sdxl_worker::handler::{JobHandler, StubHandler};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn start(handler: StubHandler, config: ApiConfig) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let h: Arc<dyn JobHandler> = Arc::new(handler);
    tokio::spawn(api::serve(listener, h, config, std::future::pending()));
    format!("http://{addr}")
}

fn slow(ms: u64) -> StubHandler {
    StubHandler {
        step_delay: Duration::from_millis(ms),
        ..StubHandler::default()
    }
}

async fn post(url: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn get(url: &str) -> (u16, Value) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn poll_final(base: &str, id: &str) -> Value {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v) = get(&format!("{base}/status/{id}")).await;
        if ["COMPLETED", "FAILED", "CANCELLED"].contains(&v["status"].as_str().unwrap())
            || Instant::now() > end
        {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runsync_completes_and_fails_with_runpod_shapes() {
    let base = start(StubHandler::default(), ApiConfig::default()).await;
    let (s, v) = post(
        &format!("{base}/runsync"),
        json!({"input": {"prompt": "a cat", "steps": 2, "seed": 3}}),
    )
    .await;
    assert_eq!(s, 200);
    assert!(v["id"].as_str().unwrap().starts_with("test-"));
    assert_eq!(v["status"], "COMPLETED");
    assert_eq!(v["output"]["parameters"]["seeds"], json!([3]));
    assert_eq!(v["output"]["images"].as_array().unwrap().len(), 1);
    assert!(v["delayTime"].is_u64() && v["executionTime"].is_u64());

    let (s, v) = post(
        &format!("{base}/runsync"),
        json!({"input": {"prompt": "x", "steps": 0}}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(v["status"], "FAILED");
    assert!(v["error"].as_str().unwrap().contains("`steps`"));
    assert_eq!(v["output"]["code"], "INVALID_INPUT");

    let (s, v) = post(
        &format!("{base}/runsync"),
        json!({"prompt": "no input wrapper"}),
    )
    .await;
    assert_eq!(s, 422);
    assert_eq!(v["code"], "INVALID_INPUT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_queues_and_status_reports_progress_then_the_result() {
    let base = start(slow(100), ApiConfig::default()).await;
    let t0 = Instant::now();
    let (s, v) = post(
        &format!("{base}/run"),
        json!({"input": {"prompt": "x", "steps": 10}}),
    )
    .await;
    assert_eq!(s, 200);
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "/run answers at once"
    );
    assert_eq!(v["status"], "IN_QUEUE");
    let id = v["id"].as_str().unwrap().to_string();
    let mut saw_progress = false;
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        let (_, v) = get(&format!("{base}/status/{id}")).await;
        if v["status"] == "IN_PROGRESS" && v["output"]["total"] == 10 {
            saw_progress = true;
        }
        if v["status"] == "COMPLETED" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    assert!(saw_progress);
    // The result stays readable (GET and POST, plain and /v2 routes).
    for _ in 0..2 {
        let r = reqwest::Client::new()
            .post(format!("{base}/status/{id}"))
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["status"], "COMPLETED");
        let (_, v) = get(&format!("{base}/v2/my-endpoint/status/{id}")).await;
        assert_eq!(v["status"], "COMPLETED");
    }
    let (s, v) = get(&format!("{base}/status/test-unknown")).await;
    assert_eq!(s, 404);
    assert!(v["error"].as_str().unwrap().contains("not found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runsync_wait_returns_the_current_status_when_the_job_is_slow() {
    let base = start(slow(200), ApiConfig::default()).await;
    let (_, v) = post(
        &format!("{base}/v2/ep/runsync?wait=300"),
        json!({"input": {"prompt": "x", "steps": 20}}),
    )
    .await;
    assert!(
        v["status"] == "IN_PROGRESS" || v["status"] == "IN_QUEUE",
        "{v}"
    );
    let (s, v) = post(
        &format!("{base}/runsync?wait=abc"),
        json!({"input": {"prompt": "x"}}),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(v["code"], "INVALID_INPUT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_one_at_a_time_and_health_counts_them() {
    let base = start(slow(60), ApiConfig::default()).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (_, v) = post(
            &format!("{base}/v2/ep/run"),
            json!({"input": {"prompt": "x", "steps": 4}}),
        )
        .await;
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, h) = get(&format!("{base}/health")).await;
        assert!(h["jobs"]["inProgress"].as_u64().unwrap() <= 1, "{h}");
        assert!(h["workers"]["running"].as_u64().unwrap() <= 1);
        if h["jobs"]["completed"] == 3 || Instant::now() > end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    for id in &ids {
        assert_eq!(poll_final(&base, id).await["status"], "COMPLETED");
    }
    let (_, h) = get(&format!("{base}/v2/ep/health")).await;
    assert_eq!(h["jobs"]["completed"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_expire_after_the_ttl() {
    let cfg = ApiConfig {
        result_ttl: Duration::from_millis(400),
        ..ApiConfig::default()
    };
    let base = start(StubHandler::default(), cfg).await;
    let (_, v) = post(
        &format!("{base}/runsync"),
        json!({"input": {"prompt": "x", "steps": 1}}),
    )
    .await;
    let id = v["id"].as_str().unwrap();
    assert_eq!(
        get(&format!("{base}/status/{id}")).await.1["status"],
        "COMPLETED"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(get(&format!("{base}/status/{id}")).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_jobs_can_be_cancelled() {
    let base = start(slow(100), ApiConfig::default()).await;
    let (_, a) = post(
        &format!("{base}/run"),
        json!({"input": {"prompt": "x", "steps": 10}}),
    )
    .await;
    let (_, b) = post(
        &format!("{base}/run"),
        json!({"input": {"prompt": "x", "steps": 10}}),
    )
    .await;
    let (a, b) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    let (_, v) = post(&format!("{base}/cancel/{b}"), json!({})).await;
    assert_eq!(v["status"], "CANCELLED");
    let (_, v) = post(&format!("{base}/cancel/{a}"), json!({})).await;
    assert_eq!(v["status"], "CANCELLED");
    assert_eq!(poll_final(&base, a).await["status"], "CANCELLED");
    assert_eq!(poll_final(&base, b).await["status"], "CANCELLED");
}

/// What A1111's `/sdapi/v1/txt2img` docs list, including fields this worker ignores.
fn a1111_full_request() -> Value {
    json!({
        "prompt": "a photo of an astronaut riding a horse", "negative_prompt": "blurry",
        "styles": [], "seed": 1234, "subseed": -1, "subseed_strength": 0, "seed_resize_from_h": -1,
        "seed_resize_from_w": -1, "sampler_name": "Euler a", "scheduler": "Automatic", "batch_size": 2,
        "n_iter": 1, "steps": 3, "cfg_scale": 6.5, "width": 512, "height": 768, "restore_faces": false,
        "tiling": false, "do_not_save_samples": false, "do_not_save_grid": false, "eta": 0,
        "denoising_strength": 0, "s_min_uncond": 0, "s_churn": 0, "s_tmax": 0, "s_tmin": 0, "s_noise": 1,
        "override_settings": {}, "override_settings_restore_afterwards": true, "refiner_checkpoint": null,
        "refiner_switch_at": 0, "disable_extra_networks": false, "firstpass_image": null, "comments": {},
        "enable_hr": false, "firstphase_width": 0, "firstphase_height": 0, "hr_scale": 2,
        "hr_upscaler": "Latent", "hr_second_pass_steps": 0, "hr_resize_x": 0, "hr_resize_y": 0,
        "hr_checkpoint_name": null, "hr_sampler_name": null, "hr_scheduler": null, "hr_prompt": "",
        "hr_negative_prompt": "", "force_task_id": null, "sampler_index": "Euler", "script_name": null,
        "script_args": [], "send_images": true, "save_images": false, "alwayson_scripts": {}, "infotext": null
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a1111_txt2img_accepts_a_full_client_request() {
    use base64::Engine as _;
    let base = start(StubHandler::default(), ApiConfig::default()).await;
    let (s, v) = post(&format!("{base}/sdapi/v1/txt2img"), a1111_full_request()).await;
    assert_eq!(s, 200, "{v}");
    let images = v["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    let png = base64::engine::general_purpose::STANDARD
        .decode(images[0].as_str().unwrap())
        .unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let info: Value = serde_json::from_str(v["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["all_seeds"], json!([1234, 1235]));
    assert_eq!(info["seed"], 1234);
    assert_eq!(
        info["sampler_name"], "Euler a",
        "sampler_name wins over sampler_index"
    );
    assert_eq!(
        (info["width"].as_u64(), info["height"].as_u64()),
        (Some(512), Some(768))
    );
    assert_eq!(info["cfg_scale"], 6.5);
    let infotexts = info["infotexts"].as_array().unwrap();
    assert!(infotexts[1].as_str().unwrap().contains("Seed: 1235"));
    assert!(info["warnings"][0]
        .as_str()
        .unwrap()
        .contains("force_task_id"));
    assert_eq!(v["parameters"]["steps"], 3);

    let (s, v) = post(
        &format!("{base}/sdapi/v1/txt2img"),
        json!({"prompt": "x", "steps": 999}),
    )
    .await;
    assert_eq!(s, 422);
    assert_eq!(v["code"], "INVALID_INPUT");
    assert!(v["detail"].as_str().unwrap().contains("`steps`"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a1111_info_routes_and_checkpoint_switching() {
    let base = start(slow(50), ApiConfig::default()).await;
    let (_, models) = get(&format!("{base}/sdapi/v1/sd-models")).await;
    assert_eq!(models[0]["title"], "Stub XL");
    assert_eq!(models.as_array().unwrap().len(), 2);
    let (_, samplers) = get(&format!("{base}/sdapi/v1/samplers")).await;
    let names: Vec<&str> = samplers
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    // A1111 ≥ 1.9 lists samplers without schedules (those are `scheduler` values).
    assert!(
        names.contains(&"DPM++ 2M") && names.contains(&"Euler a"),
        "{names:?}"
    );
    let (_, loras) = get(&format!("{base}/sdapi/v1/loras")).await;
    assert_eq!(loras[0]["name"], "Detail Tweaker XL");
    assert_eq!(
        get(&format!("{base}/sdapi/v1/options")).await.1["sd_model_checkpoint"],
        "Stub XL"
    );

    let (s, _) = post(
        &format!("{base}/sdapi/v1/options"),
        json!({"sd_model_checkpoint": "other xl", "foo": 1}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(
        get(&format!("{base}/sdapi/v1/options")).await.1["sd_model_checkpoint"],
        "Other XL"
    );
    let (s, v) = post(
        &format!("{base}/sdapi/v1/options"),
        json!({"sd_model_checkpoint": "Nope"}),
    )
    .await;
    assert_eq!((s, v["code"].as_str()), (422, Some("UNKNOWN_MODEL")));

    // Jobs naming no checkpoint now use the selected one; progress shows a running job.
    let b2 = base.clone();
    let job = tokio::spawn(async move {
        post(
            &format!("{b2}/sdapi/v1/txt2img"),
            json!({"prompt": "x", "steps": 20}),
        )
        .await
    });
    let mut seen = false;
    for _ in 0..100 {
        let (_, p) = get(&format!("{base}/sdapi/v1/progress")).await;
        if p["state"]["sampling_steps"] == 20 && p["progress"].as_f64().unwrap() > 0.0 {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(seen, "progress reports the running job");
    let (_, v) = job.await.unwrap();
    let info: Value = serde_json::from_str(v["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["sd_model_name"], "Other XL");
    let (_, p) = get(&format!("{base}/sdapi/v1/progress")).await;
    assert_eq!(p["progress"], 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_answer_json() {
    let base = start(StubHandler::default(), ApiConfig::default()).await;
    let (s, v) = get(&format!("{base}/nope")).await;
    assert_eq!((s, v["code"].as_str()), (404, Some("NOT_FOUND")));
    let (s, v) = get(&format!("{base}/run")).await;
    assert_eq!((s, v["code"].as_str()), (405, Some("METHOD_NOT_ALLOWED")));
}
