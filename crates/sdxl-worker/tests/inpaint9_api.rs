//! A 9-channel SDXL inpainting checkpoint behind the A1111 routes (SPEC §13): it is detected from
//! its weights (models.toml has no key for it), txt2img and img2img render as A1111 1.10 does
//! (the references of `tests/fixtures/inpaint9/`, `scripts/fixtures/make_inpaint9_renders.py`;
//! bar of `img2img_renders.rs`: PSNR ≥ 60 dB, max |Δ| ≤ 2), and the reply's
//! `is_using_inpainting_conditioning` is A1111's (false for SDXL txt2img, true for img2img).

mod render_support;

use base64::Engine as _;
use sdxl_worker::api::{self, ApiConfig};
use sdxl_worker::handler::JobHandler;
use sdxl_worker::models::ModelsConfig;
use sdxl_worker::runtime::ModelRuntime;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const P: &str = "a photo of an astronaut riding a horse on mars, highly detailed";
const NEG: &str = "blurry, low quality, watermark";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn inpaint_runtime(cache: &Path) -> ModelRuntime {
    let fx = fixtures();
    let text = format!(
        r#"
cache_dir = "{cache}"

[[checkpoints]]
name = "Tiny SDXL Inpainting"
default = true
path = "{file}"
config = "{config}"
"#,
        cache = cache.display(),
        file = fx
            .join("tiny-sdxl-inpaint-single-file.safetensors")
            .display(),
        config = fx.join("tiny-sdxl").display(),
    );
    let config =
        ModelsConfig::from_toml_str(&text, &cache.join("models.toml")).expect("models.toml");
    ModelRuntime::new(
        Some(config),
        candle_core::Device::Cpu,
        candle_core::DType::F32,
    )
    .expect("runtime")
}

async fn start_api() -> (String, tempfile::TempDir) {
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().to_path_buf();
    let runtime = tokio::task::spawn_blocking(move || inpaint_runtime(&dir))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/sdapi/v1", listener.local_addr().unwrap());
    let handler: Arc<dyn JobHandler> = Arc::new(runtime);
    tokio::spawn(api::serve(
        listener,
        handler,
        ApiConfig::default(),
        std::future::pending(),
    ));
    (base, cache)
}

async fn post(url: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// The first image of an A1111 reply against `tests/fixtures/inpaint9/<name>.png`.
fn check_image(reply: &Value, name: &str) {
    let b64 = reply["images"][0].as_str().expect("images[0]");
    let png = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let ours = image::load_from_memory(&png).unwrap().to_rgb8();
    let want = image::open(fixtures().join(format!("inpaint9/{name}.png")))
        .unwrap()
        .to_rgb8();
    assert_eq!(ours.dimensions(), want.dimensions(), "{name}: size");
    let (psnr, max) = render_support::psnr_and_max(want.as_raw(), ours.as_raw());
    eprintln!("{name} (A1111 route): PSNR {psnr:.2} dB, max |Δ| {max}");
    assert!(
        psnr >= render_support::MIN_PSNR_DB && max <= render_support::MAX_ABS_DELTA,
        "{name}: PSNR {psnr:.2} dB, max |Δ| {max}"
    );
}

fn info(reply: &Value) -> Value {
    serde_json::from_str(reply["info"].as_str().expect("info string")).expect("info JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inpainting_checkpoint_renders_as_a1111_on_the_a1111_routes() {
    let (base, _cache) = start_api().await;
    let common = json!({"prompt": P, "negative_prompt": NEG, "cfg_scale": 6.5, "width": 64,
                        "height": 64, "sampler_name": "Euler"});
    let mut t2i = common.clone();
    t2i["steps"] = json!(6);
    t2i["seed"] = json!(42);
    let (status, reply) = post(&format!("{base}/txt2img"), &t2i).await;
    assert_eq!(status, 200, "{reply}");
    check_image(&reply, "t2i_euler");
    assert_eq!(info(&reply)["is_using_inpainting_conditioning"], false);

    let init = std::fs::read(fixtures().join("inpaint9/init.png")).unwrap();
    let mut i2i = common.clone();
    i2i["steps"] = json!(6);
    i2i["seed"] = json!(5);
    i2i["denoising_strength"] = json!(0.5);
    i2i["init_images"] = json!([base64::engine::general_purpose::STANDARD.encode(init)]);
    let (status, reply) = post(&format!("{base}/img2img"), &i2i).await;
    assert_eq!(status, 200, "{reply}");
    check_image(&reply, "i2i_euler_05");
    assert_eq!(info(&reply)["is_using_inpainting_conditioning"], true);

    // Resize mode 3 cannot be conditioned (A1111 fails on it): refused, naming the field.
    i2i["resize_mode"] = json!(3);
    let (status, reply) = post(&format!("{base}/img2img"), &i2i).await;
    assert_eq!(status, 422, "{reply}");
    assert!(reply.to_string().contains("resize_mode"), "{reply}");
}
