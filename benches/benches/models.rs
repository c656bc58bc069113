//! Criterion bench: one UNet call (CFG batch 2) and one VAE decode of the tiny fixture model on
//! CPU in f32, with the inputs of `tests/fixtures/expected/{unet,vae}.safetensors`.

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use sdxl_pipeline::checkpoint::{Checkpoint, ModelSource};
use std::collections::HashMap;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

/// The named tensors of an expected-output fixture (loaded one by one: the files also hold
/// tensors of dtypes candle does not read, such as BOOL).
fn tensors(file: &str, names: &[&str]) -> HashMap<String, Tensor> {
    // SAFETY: the fixture file is read-only test data that nothing modifies while mapped.
    let st = unsafe {
        candle_core::safetensors::MmapedSafetensors::new(format!("{FIXTURES}/expected/{file}"))
    }
    .expect("fixture");
    names
        .iter()
        .map(|n| (n.to_string(), st.load(n, &Device::Cpu).expect(n)))
        .collect()
}

fn models(c: &mut Criterion) {
    let ckpt = Checkpoint::open(&ModelSource::SingleFile {
        path: format!("{FIXTURES}/tiny-sdxl-single-file.safetensors").into(),
        config_dir: Some(format!("{FIXTURES}/tiny-sdxl").into()),
    })
    .expect("checkpoint");
    let unet = ckpt.load_unet(DType::F32, &Device::Cpu).expect("unet");
    let vae = ckpt.load_vae(DType::F32, &Device::Cpu).expect("vae");
    let u = tensors(
        "unet.safetensors",
        &[
            "input.sample",
            "input.encoder_hidden_states",
            "input.text_embeds",
            "input.time_ids",
        ],
    );
    let v = tensors("vae.safetensors", &["decode_input"]);
    let get = |m: &HashMap<String, Tensor>, k: &str| m.get(k).expect(k).clone();
    let (x, ctx, pooled, ids) = (
        get(&u, "input.sample"),
        get(&u, "input.encoder_hidden_states"),
        get(&u, "input.text_embeds"),
        get(&u, "input.time_ids"),
    );
    c.bench_function("tiny_unet_step_cfg_batch2_8x8", |b| {
        b.iter(|| unet.forward(&x, 500.0, &ctx, &pooled, &ids).expect("unet"))
    });
    let z = get(&v, "decode_input");
    c.bench_function("tiny_vae_decode_64x64", |b| {
        b.iter(|| vae.decode(&z).expect("decode"))
    });
}

criterion_group!(benches, models);
criterion_main!(benches);
