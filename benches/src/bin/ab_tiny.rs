//! A/B helper: wall and CPU time (all threads, from /proc/self/stat) of the tiny fixture model on
//! CPU in f32 — one UNet call (CFG batch 2), one VAE decode and a 6-step Euler txt2img — at a
//! latent side given as the first argument (default 32 = 256² images). Uses only API that
//! predates issue 17, so the same file builds against the old and the new pipeline for
//! alternating-pair comparisons (CPU time is steadier than wall time on a shared machine).

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use sdxl_pipeline::checkpoint::{Checkpoint, ModelSource};
use sdxl_pipeline::pipeline::{LoadOptions, SdxlModel, Txt2ImgRequest};

fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // Fields 14 and 15 (utime, stime) are the 12th and 13th after the `)` of the name.
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / 100.0
}

fn measure(name: &str, n: usize, mut f: impl FnMut()) {
    f();
    let (t, c) = (Instant::now(), cpu_secs());
    for _ in 0..n {
        f();
    }
    let per = |v: f64| v * 1000.0 / n as f64;
    println!(
        "{name}: wall {:.1} ms, cpu {:.1} ms (n={n})",
        per(t.elapsed().as_secs_f64()),
        per(cpu_secs() - c)
    );
}

fn main() {
    let side: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(32);
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures");
    let ckpt = Arc::new(
        Checkpoint::open(&ModelSource::SingleFile {
            path: fx.join("tiny-sdxl-single-file.safetensors"),
            config_dir: Some(fx.join("tiny-sdxl")),
        })
        .expect("checkpoint"),
    );
    let dev = Device::Cpu;
    let unet = ckpt.load_unet(DType::F32, &dev).expect("unet");
    let vae = ckpt.load_vae(DType::F32, &dev).expect("vae");
    let cfg = &ckpt.configs().unet;
    let ctx_dim = cfg.cross_attention_dim;
    let pooled_dim = cfg.projection_class_embeddings_input_dim.unwrap_or(2816)
        - 6 * cfg.addition_time_embed_dim.unwrap_or(256);
    let x = Tensor::randn(0f32, 1.0, (2, 4, side, side), &dev).unwrap();
    let ctx = Tensor::randn(0f32, 1.0, (2, 77, ctx_dim), &dev).unwrap();
    let pooled = Tensor::randn(0f32, 1.0, (2, pooled_dim), &dev).unwrap();
    let s = (side * 8) as f32;
    let ids = Tensor::new(&[[s, s, 0.0, 0.0, s, s], [s, s, 0.0, 0.0, s, s]], &dev).unwrap();
    measure(
        &format!("unet call {side}x{side} latent, batch 2"),
        10,
        || {
            unet.forward(&x, 500.0, &ctx, &pooled, &ids).expect("unet");
        },
    );
    let z = Tensor::randn(0f32, 1.0, (1, 4, side, side), &dev).unwrap();
    measure(&format!("vae decode {0}x{0}", side * 8), 3, || {
        vae.decode(&z).expect("decode");
    });
    let model = SdxlModel::load(ckpt.clone(), LoadOptions::default()).expect("model");
    let req = Txt2ImgRequest {
        prompt: "a lighthouse at dusk".into(),
        negative_prompt: Some("blurry".into()),
        steps: 6,
        width: (side * 8) as u32,
        height: (side * 8) as u32,
        sampler_name: "Euler".into(),
        ..Default::default()
    };
    let cancel = AtomicBool::new(false);
    let mut denoise = 0.0;
    let mut runs = 0;
    measure(&format!("txt2img {0}x{0} Euler 6 CFG", side * 8), 3, || {
        let out = model.txt2img(&req, &mut |_| {}, &cancel).expect("txt2img");
        denoise += out.timings.denoise_ms;
        runs += 1;
    });
    println!(
        "  denoise phase: {:.1} ms/step",
        denoise / runs as f64 / 6.0
    );
}
