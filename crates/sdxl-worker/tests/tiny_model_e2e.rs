//! End to end with the tiny fixture model: models.toml → model-backed handler → local API
//! `runsync` → base64 PNG whose `parameters` chunk carries the A1111 infotext.

mod tiny_runtime;
use tiny_runtime::{fixtures, tiny_models_toml};

use sdxl_worker::api::{self, ApiConfig};
use sdxl_worker::handler::JobHandler;
use sdxl_worker::runtime::ModelRuntime;
use serde_json::{json, Value};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runsync_returns_png_with_infotext() {
    let cache = tempfile::tempdir().unwrap();
    let config = tiny_models_toml(cache.path(), "");
    let handler = tokio::task::spawn_blocking(move || {
        let h = ModelRuntime::new(
            Some(config),
            candle_core::Device::Cpu,
            candle_core::DType::F32,
        )
        .expect("handler");
        h.preload().expect("preload");
        h
    })
    .await
    .unwrap();
    let handler: Arc<dyn JobHandler> = Arc::new(handler);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(api::serve(
        listener,
        handler,
        ApiConfig::default(),
        std::future::pending(),
    ));

    let job = json!({"input": {
        "prompt": "a photo of an astronaut riding a horse on mars",
        "negative_prompt": "blurry",
        "steps": 3, "cfg_scale": 6.5, "width": 96, "height": 64, "seed": 42,
        "sampler_name": "DPM++ 2M Karras", "batch_size": 2
    }});
    let reply: Value = reqwest::Client::new()
        .post(format!("{base}/runsync"))
        .json(&job)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reply["status"], "COMPLETED", "{reply}");
    let output = &reply["output"];
    let images = output["images"].as_array().expect("images");
    assert_eq!(images.len(), 2);
    assert_eq!(output["parameters"]["seeds"], json!([42, 43]));
    for (i, b64) in images.iter().enumerate() {
        use base64::Engine as _;
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .expect("bare base64");
        let info = sdxl_pipeline::output::read_png_parameters(&png)
            .unwrap()
            .expect("parameters chunk");
        assert!(info.starts_with("a photo of an astronaut riding a horse on mars\nNegative prompt: blurry\nSteps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5,"), "{info}");
        assert!(info.contains(&format!("Seed: {}", 42 + i)), "{info}");
        assert!(info.contains("Size: 96x64, Model: Tiny SDXL"), "{info}");
        let img = image::load_from_memory(&png).unwrap();
        assert_eq!((img.width(), img.height()), (96, 64));
    }
    let t = &output["timings"];
    assert!(t["total_ms"].as_u64().is_some() && t["denoise_ms"].as_u64().is_some());
}

/// Default LoRAs from models.toml are merged; a job with `"loras": []` gets the base weights
/// back exactly, and the default set again gives bit-identical images (in-place switching).
#[test]
fn lora_sets_switch_between_jobs() {
    use sdxl_worker::handler::{execute, CancelFlag};
    let cache = tempfile::tempdir().unwrap();
    let lora = fixtures().join("tiny-lora-kohya.safetensors");
    let extra = format!(
        "[[loras]]\nname = \"Tiny LoRA A\"\npath = \"{}\"\nscale = 1.5\n",
        lora.display()
    );
    let config = tiny_models_toml(cache.path(), &extra);
    let handler = ModelRuntime::new(
        Some(config),
        candle_core::Device::Cpu,
        candle_core::DType::F32,
    )
    .unwrap();
    handler
        .preload()
        .expect("preload merges the default LoRA set");
    let run = |input: Value| {
        let out = execute(&handler, &input, &|_, _| {}, &CancelFlag::new()).expect("job");
        (out.images[0].clone(), out.info, out.parameters)
    };
    let base = json!({"prompt": "a red apple", "steps": 2, "width": 64, "height": 64, "seed": 5, "sampler_name": "Euler"});
    let mut no_lora = base.clone();
    no_lora["loras"] = json!([]);

    let (with_a, info_a, params_a) = run(base.clone());
    assert_eq!(
        params_a["loras"],
        json!([{"name": "Tiny LoRA A", "scale": 1.5}])
    );
    assert!(info_a.contains("Tiny LoRA A"), "{info_a}");
    let (plain, _, params_plain) = run(no_lora.clone());
    assert_eq!(params_plain["loras"], json!([]));
    assert_ne!(with_a, plain, "the LoRA must change the image");
    let (with_a_again, _, _) = run(base);
    assert_eq!(
        with_a, with_a_again,
        "switching back must restore the merged weights exactly"
    );
    let (plain_again, _, _) = run(no_lora);
    assert_eq!(
        plain, plain_again,
        "switching to no LoRA must restore the base exactly"
    );
}

/// models.toml's `[vae]` replaces the checkpoint's VAE for jobs: a VAE whose decoder output conv
/// is zeroed decodes every latent to 0, i.e. the uniform grey 128 after `x/2 + 0.5`.
#[test]
fn vae_override_from_models_toml_is_used_by_jobs() {
    use sdxl_worker::handler::{execute, CancelFlag};
    let cache = tempfile::tempdir().unwrap();
    let fx = fixtures();
    let mut vae = candle_core::safetensors::load(
        fx.join("tiny-sdxl/vae/diffusion_pytorch_model.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    for name in ["decoder.conv_out.weight", "decoder.conv_out.bias"] {
        let t = vae.get(name).expect(name).zeros_like().unwrap();
        vae.insert(name.to_string(), t);
    }
    let vae_path = cache.path().join("grey-vae.safetensors");
    candle_core::safetensors::save(&vae, &vae_path).unwrap();
    let extra = format!("[vae]\npath = \"{}\"\n", vae_path.display());
    let config = tiny_models_toml(cache.path(), &extra);
    let handler = ModelRuntime::new(
        Some(config),
        candle_core::Device::Cpu,
        candle_core::DType::F32,
    )
    .unwrap();
    let input = json!({"prompt": "a red apple", "steps": 2, "width": 64, "height": 64, "seed": 5});
    let out = execute(&handler, &input, &|_, _| {}, &CancelFlag::new()).expect("job");
    use base64::Engine as _;
    let png = base64::engine::general_purpose::STANDARD
        .decode(&out.images[0])
        .unwrap();
    let img = image::load_from_memory(&png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (64, 64));
    assert!(
        img.pixels().all(|p| p.0 == [128, 128, 128]),
        "the override VAE was not used"
    );
}
