//! Criterion bench: opening and loading the tiny SDXL fixture (single file + config dir, and the
//! diffusers dir) as f32 on CPU. The full-size measurement is the `load_fullsize` bench binary.

use candle_core::{DType, Device};
use criterion::{criterion_group, criterion_main, Criterion};
use sdxl_pipeline::checkpoint::{Checkpoint, ModelSource};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

fn sources() -> [(&'static str, ModelSource); 2] {
    [
        (
            "single_file",
            ModelSource::SingleFile {
                path: format!("{FIXTURES}/tiny-sdxl-single-file.safetensors").into(),
                config_dir: Some(format!("{FIXTURES}/tiny-sdxl").into()),
            },
        ),
        (
            "diffusers_dir",
            ModelSource::DiffusersDir(format!("{FIXTURES}/tiny-sdxl").into()),
        ),
    ]
}

fn load(c: &mut Criterion) {
    for (name, source) in sources() {
        c.bench_function(&format!("tiny_open/{name}"), |b| {
            b.iter(|| Checkpoint::open(&source).unwrap())
        });
        let ckpt = Checkpoint::open(&source).unwrap();
        c.bench_function(&format!("tiny_load_unet_vae_f32/{name}"), |b| {
            b.iter(|| {
                let u = ckpt.load_unet(DType::F32, &Device::Cpu).unwrap();
                let v = ckpt.load_vae(DType::F32, &Device::Cpu).unwrap();
                (u, v)
            })
        });
    }
}

criterion_group!(benches, load);
criterion_main!(benches);
