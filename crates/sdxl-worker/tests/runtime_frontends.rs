//! The model runtime behind every frontend: infotext names as A1111 writes them (whatever
//! spelling the job used), the A1111 route's `concat` default, and pipeline config failures that
//! are the operator's problem, not the client's — all on the real model handler (tiny fixture).

mod tiny_runtime;
use tiny_runtime::{fixtures, tiny_runtime};

use base64::Engine as _;
use sdxl_pipeline::output::read_png_parameters;
use sdxl_worker::api::{self, ApiConfig};
use sdxl_worker::catalog::Catalog;
use sdxl_worker::error::ErrorCode;
use sdxl_worker::handler::{self, CancelFlag, JobHandler, StubHandler};
use serde_json::{json, Value};
use std::sync::Arc;

/// The `Sampler` and `Schedule type` fields of an infotext.
fn sampler_fields(info: &str) -> (String, String) {
    let field = |key: &str| {
        info.split(", ")
            .find_map(|kv| kv.strip_prefix(key))
            .unwrap_or_default()
            .to_string()
    };
    (field("Sampler: "), field("Schedule type: "))
}

/// A1111 1.10's sampler names for every spelling the job schema accepts (canonical names,
/// the `k_*` aliases of `sd_samplers_kdiffusion.py`, legacy names with a schedule suffix).
const A1111_SAMPLER_NAMES: &[(&str, &str)] = &[
    ("DPM++ 2M", "DPM++ 2M"),
    ("k_dpmpp_2m", "DPM++ 2M"),
    ("DPM++ SDE", "DPM++ SDE"),
    ("k_dpmpp_sde", "DPM++ SDE"),
    ("DPM++ 2M SDE", "DPM++ 2M SDE"),
    ("k_dpmpp_2m_sde", "DPM++ 2M SDE"),
    ("DPM++ 2M SDE Heun", "DPM++ 2M SDE Heun"),
    ("k_dpmpp_2m_sde_heun", "DPM++ 2M SDE Heun"),
    ("DPM++ 3M SDE", "DPM++ 3M SDE"),
    ("k_dpmpp_3m_sde", "DPM++ 3M SDE"),
    ("Euler a", "Euler a"),
    ("k_euler_a", "Euler a"),
    ("k_euler_ancestral", "Euler a"),
    ("Euler", "Euler"),
    ("k_euler", "Euler"),
    ("LMS", "LMS"),
    ("k_lms", "LMS"),
    ("Heun", "Heun"),
    ("k_heun", "Heun"),
    ("DPM2", "DPM2"),
    ("k_dpm_2", "DPM2"),
    ("DDIM", "DDIM"),
    ("ddim", "DDIM"),
    ("PLMS", "PLMS"),
    ("plms", "PLMS"),
    ("UniPC", "UniPC"),
    ("unipc", "UniPC"),
];

/// A1111's labels (`sd_schedulers.py`) for the `scheduler` names the job schema accepts.
const A1111_SCHEDULE_LABELS: &[(&str, &str)] = &[
    ("uniform", "Uniform"),
    ("karras", "Karras"),
    ("exponential", "Exponential"),
    ("sgm_uniform", "SGM Uniform"),
    ("normal", "Normal"),
];

fn stub_info(input: Value) -> String {
    handler::execute(
        &StubHandler::default(),
        &input,
        &|_, _| {},
        &CancelFlag::new(),
    )
    .unwrap_or_else(|e| panic!("{input}: {e}"))
    .info
}

#[test]
fn infotext_names_every_sampler_spelling_as_a1111() {
    // Every sampler spelling the schema accepts has an entry in the A1111 table above.
    let catalog = Catalog::pipeline_only();
    let mut accepted: Vec<String> = catalog.samplers.clone();
    for info in sdxl_pipeline::sampling::sampler_names() {
        accepted.extend(info.aliases);
    }
    for name in &accepted {
        let (_, expected) = A1111_SAMPLER_NAMES
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("sampler spelling {name:?} has no A1111 name in the table"));
        let info = stub_info(json!({"prompt": "p", "steps": 2, "sampler_name": name}));
        assert_eq!(sampler_fields(&info).0, *expected, "{name}: {info}");
    }
    for (name, expected) in A1111_SAMPLER_NAMES {
        let info = stub_info(json!({"prompt": "p", "steps": 2, "sampler_name": name}));
        assert_eq!(sampler_fields(&info).0, *expected, "{name}: {info}");
    }
    // Legacy names carry their schedule.
    for (legacy, sampler, schedule) in [
        ("DPM++ 2M Karras", "DPM++ 2M", "Karras"),
        ("DPM++ SDE Karras", "DPM++ SDE", "Karras"),
        ("DPM++ 2M SDE Karras", "DPM++ 2M SDE", "Karras"),
        ("Euler Exponential", "Euler", "Exponential"),
    ] {
        let info = stub_info(json!({"prompt": "p", "steps": 2, "sampler_name": legacy}));
        assert_eq!(
            sampler_fields(&info),
            (sampler.to_string(), schedule.to_string()),
            "{legacy}: {info}"
        );
    }
}

#[test]
fn infotext_names_every_schedule_as_a1111() {
    let catalog = Catalog::pipeline_only();
    for name in &catalog.schedulers {
        if name == "automatic" {
            continue;
        }
        assert!(
            A1111_SCHEDULE_LABELS.iter().any(|(n, _)| n == name),
            "scheduler {name:?} has no A1111 label in the table"
        );
    }
    for (name, label) in A1111_SCHEDULE_LABELS {
        for sampler in ["Euler", "k_dpmpp_2m", "DPM++ 2M SDE"] {
            let info = stub_info(
                json!({"prompt": "p", "steps": 2, "sampler_name": sampler, "scheduler": name}),
            );
            assert_eq!(
                sampler_fields(&info).1,
                *label,
                "{sampler} + {name}: {info}"
            );
        }
    }
}

/// The real handler writes the names the pipeline resolved, in the response and in each PNG.
#[test]
fn model_runtime_infotext_uses_resolved_names() {
    let cache = tempfile::tempdir().unwrap();
    let runtime = tiny_runtime(cache.path(), "");
    for (sampler, scheduler, expected) in [
        (
            "k_dpmpp_2m",
            Some("sgm_uniform"),
            ("DPM++ 2M", "SGM Uniform"),
        ),
        ("k_euler_a", None, ("Euler a", "Uniform")),
    ] {
        let mut input = json!({"prompt": "a cat", "steps": 2, "width": 64, "height": 64,
            "seed": 3, "sampler_name": sampler, "batch_size": 2});
        if let Some(s) = scheduler {
            input["scheduler"] = json!(s);
        }
        let out = handler::execute(&runtime, &input, &|_, _| {}, &CancelFlag::new()).unwrap();
        let want = (expected.0.to_string(), expected.1.to_string());
        assert_eq!(sampler_fields(&out.info), want, "{}", out.info);
        let png = base64::engine::general_purpose::STANDARD
            .decode(&out.images[1])
            .unwrap();
        let text = read_png_parameters(&png).unwrap().unwrap();
        assert_eq!(sampler_fields(&text), want, "{text}");
        assert!(text.contains("Seed: 4,"), "{text}");
    }
}

/// A checkpoint whose config dir describes an impossible UNet fails with `MODEL_INVALID` (the
/// operator's problem, not `INVALID_INPUT`), and the next job on a good checkpoint works.
#[test]
fn broken_config_dir_is_model_invalid_and_the_next_job_works() {
    let cache = tempfile::tempdir().unwrap();
    let broken = cache.path().join("broken-config");
    for part in ["text_encoder", "text_encoder_2", "unet", "vae", "scheduler"] {
        let from = fixtures().join("tiny-sdxl").join(part);
        let to = broken.join(part);
        std::fs::create_dir_all(&to).unwrap();
        for f in std::fs::read_dir(&from).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "json") {
                std::fs::copy(&f, to.join(f.file_name().unwrap())).unwrap();
            }
        }
    }
    let unet_cfg = broken.join("unet/config.json");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&unet_cfg).unwrap()).unwrap();
    cfg["attention_head_dim"] = json!([2, 4, 8]); // three entries for two levels
    std::fs::write(&unet_cfg, cfg.to_string()).unwrap();
    let extra = format!(
        "[[checkpoints]]\nname = \"Broken\"\npath = \"{}\"\nconfig = \"{}\"\n",
        fixtures()
            .join("tiny-sdxl-single-file.safetensors")
            .display(),
        broken.display()
    );
    let runtime = tiny_runtime(cache.path(), &extra);
    let job = |ckpt: &str| {
        json!({"prompt": "a cat", "steps": 2, "width": 64, "height": 64, "seed": 1,
            "sampler_name": "Euler", "checkpoint": ckpt})
    };
    let e = handler::execute(&runtime, &job("Broken"), &|_, _| {}, &CancelFlag::new()).unwrap_err();
    assert!(
        matches!(e.code(), ErrorCode::ModelInvalid | ErrorCode::Internal),
        "{:?}: {e}",
        e.code()
    );
    assert!(e.message().contains("unet"), "{e}");
    let out = handler::execute(&runtime, &job("Tiny SDXL"), &|_, _| {}, &CancelFlag::new())
        .expect("the next job works");
    assert_eq!(out.images.len(), 1);
}

async fn start_api(handler: Arc<dyn JobHandler>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(api::serve(
        listener,
        handler,
        ApiConfig::default(),
        std::future::pending(),
    ));
    base
}

fn decoded_pixels(b64: &Value) -> Vec<u8> {
    let png = base64::engine::general_purpose::STANDARD
        .decode(b64.as_str().expect("base64 string"))
        .unwrap();
    image::load_from_memory(&png).unwrap().to_rgb8().into_raw()
}

/// `/sdapi/v1/txt2img` concatenates long prompts (A1111), pixel for pixel what a RunPod job with
/// `prompt_mode: "concat"` renders — and not what the RunPod default (`blend`) renders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a1111_long_prompt_is_concat_like_a_runpod_job() {
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().to_path_buf();
    let runtime = tokio::task::spawn_blocking(move || tiny_runtime(&dir, ""))
        .await
        .unwrap();
    let base = start_api(Arc::new(runtime)).await;
    let long_prompt = (0..40)
        .map(|i| format!("word{i} red, blue"))
        .collect::<Vec<_>>()
        .join(" ");
    let fields = json!({"prompt": long_prompt, "negative_prompt": "blurry", "steps": 2,
        "width": 64, "height": 64, "seed": 11, "sampler_name": "Euler", "cfg_scale": 5});
    let client = reqwest::Client::new();
    let a1111: Value = client
        .post(format!("{base}/sdapi/v1/txt2img"))
        .json(&fields)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let runpod = |mode: Option<&str>| {
        let mut input = fields.clone();
        if let Some(m) = mode {
            input["prompt_mode"] = json!(m);
        }
        let client = client.clone();
        let url = format!("{base}/runsync");
        async move {
            let reply: Value = client
                .post(url)
                .json(&json!({"input": input}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(reply["status"], "COMPLETED", "{reply}");
            reply
        }
    };
    let concat = runpod(Some("concat")).await;
    let blend = runpod(None).await;
    let a1111_px = decoded_pixels(&a1111["images"][0]);
    assert_eq!(
        a1111["parameters"]["prompt_mode"], "concat",
        "{}",
        a1111["parameters"]
    );
    assert_eq!(
        a1111_px,
        decoded_pixels(&concat["output"]["images"][0]),
        "A1111 route differs from a concat RunPod job"
    );
    assert_ne!(
        a1111_px,
        decoded_pixels(&blend["output"]["images"][0]),
        "concat and blend render the same image: the test cannot tell them apart"
    );
}

/// `render --checkpoint FILE` with an explicitly named models.toml that does not parse is an
/// error naming the file (never a render that silently drops models.toml).
#[test]
fn render_with_a_broken_explicit_models_toml_fails() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("models.toml");
    std::fs::write(&broken, "[[checkpoints]]\nname = 3\n").unwrap();
    let fx = fixtures();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sdxl-worker"))
        .env_remove("SDXL_MODELS_TOML")
        .current_dir(dir.path())
        .arg("--models-toml")
        .arg(&broken)
        .args([
            "render", "--prompt", "a cat", "--steps", "1", "--width", "64",
        ])
        .args(["--height", "64", "--checkpoint"])
        .arg(fx.join("tiny-sdxl-single-file.safetensors"))
        .arg("--config")
        .arg(fx.join("tiny-sdxl"))
        .arg("--out")
        .arg(dir.path().join("out.png"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("models.toml"), "{stderr}");
    assert!(!dir.path().join("out.png").exists());
}
