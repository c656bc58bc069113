//! Criterion bench: denoising steps per second of `SdxlModel::txt2img` on the tiny fixture model
//! (f32, CPU, 96×64, CFG 6.5 ⇒ one batch-2 UNet call per model evaluation).
//! `denoise/*` times only the sampler loop (`Timings::denoise_ms`), so its throughput is steps/s;
//! `txt2img/*` times the whole call (prompt encoding + sampling + VAE decode).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sdxl_pipeline::checkpoint::{Checkpoint, ModelSource};
use sdxl_pipeline::pipeline::{LoadOptions, SdxlModel, Txt2ImgRequest};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

fn model() -> SdxlModel {
    let source = ModelSource::SingleFile {
        path: format!("{FIXTURES}/tiny-sdxl-single-file.safetensors").into(),
        config_dir: Some(format!("{FIXTURES}/tiny-sdxl").into()),
    };
    let ckpt = Arc::new(Checkpoint::open(&source).unwrap());
    SdxlModel::load(ckpt, LoadOptions::default()).unwrap()
}

fn request(sampler: &str, steps: u32) -> Txt2ImgRequest {
    Txt2ImgRequest {
        prompt: "a photo of an astronaut riding a horse on mars, highly detailed".into(),
        negative_prompt: Some("blurry, low quality, watermark".into()),
        steps,
        cfg_scale: 6.5,
        width: 96,
        height: 64,
        sampler_name: sampler.into(),
        seed: 42,
        ..Txt2ImgRequest::default()
    }
}

fn render(c: &mut Criterion) {
    let model = model();
    let cancel = AtomicBool::new(false);
    let cases = [
        ("euler_6", "Euler", 6),
        ("dpmpp_2m_karras_6", "DPM++ 2M Karras", 6),
        ("unipc_6", "UniPC", 6),
    ];
    let mut g = c.benchmark_group("denoise");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    for (name, sampler, steps) in cases {
        let req = request(sampler, steps);
        g.throughput(Throughput::Elements(u64::from(steps)));
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let out = model.txt2img(&req, &mut |_| {}, &cancel).unwrap();
                    total += Duration::from_secs_f64(out.timings.denoise_ms / 1000.0);
                }
                total
            })
        });
    }
    g.finish();
    let mut g = c.benchmark_group("txt2img");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    let req = request("Euler", 6);
    g.throughput(Throughput::Elements(6));
    g.bench_function("euler_6", |b| {
        b.iter(|| model.txt2img(&req, &mut |_| {}, &cancel).unwrap())
    });
    g.finish();
}

criterion_group!(benches, render);
criterion_main!(benches);
