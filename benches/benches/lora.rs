//! Criterion bench: LoRA merge and switch cost on full-size SDXL layer shapes (CPU).
//!
//! A synthetic single-file checkpoint holds, in fp16, the real shapes of two transformer blocks of
//! the 640-wide level (`input_blocks.4.1`) and two of the 1280-wide level (`input_blocks.7.1`),
//! with `proj_in`/`proj_out` (92 M parameters, 184 MB): every attention q/k/v/out (attn2 k/v read
//! the 2048-wide context), `ff.net.0.proj` (GEGLU, 8·W×W) and `ff.net.2`. Two rank-32 kohya LoRAs
//! (A, B; alpha 16) target all 44 of these linears. Throughput is in bytes of fp16 target weights;
//! a full SDXL kohya LoRA (UNet attention/ff/proj + both text encoders, ≈1052 modules) touches
//! ≈2.9 G parameters ≈ 5.8 GB fp16, i.e. ≈31.5× this set: divide GB/s into 5.8 GB to extrapolate.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sdxl_pipeline::checkpoint::{Checkpoint, Component, ModelSource};
use sdxl_pipeline::lora::{LiveWeights, LoraSet, LoraSpec};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");
const RANK: usize = 32;
const CONTEXT: usize = 2048;

/// (LDM module path without `model.diffusion_model.`, out, in) of every benchmarked linear.
fn modules() -> Vec<(String, usize, usize)> {
    let mut m = Vec::new();
    for (block, width) in [("input_blocks.4.1", 640), ("input_blocks.7.1", 1280)] {
        m.push((format!("{block}.proj_in"), width, width));
        m.push((format!("{block}.proj_out"), width, width));
        for t in 0..2 {
            let p = format!("{block}.transformer_blocks.{t}");
            for a in ["attn1", "attn2"] {
                let kv_in = if a == "attn2" { CONTEXT } else { width };
                m.push((format!("{p}.{a}.to_q"), width, width));
                m.push((format!("{p}.{a}.to_k"), width, kv_in));
                m.push((format!("{p}.{a}.to_v"), width, kv_in));
                m.push((format!("{p}.{a}.to_out.0"), width, width));
            }
            m.push((format!("{p}.ff.net.0.proj"), 8 * width, width));
            m.push((format!("{p}.ff.net.2"), width, 4 * width));
        }
    }
    m
}

fn randn(shape: &[usize], std: f64) -> Tensor {
    Tensor::randn(0f32, std as f32, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(DType::F16)
        .unwrap()
}

fn write_checkpoint(path: &Path) -> usize {
    let mut t = HashMap::new();
    let mut bytes = 0;
    for (m, out, inp) in modules() {
        t.insert(
            format!("model.diffusion_model.{m}.weight"),
            randn(&[out, inp], 0.02),
        );
        bytes += out * inp * 2;
    }
    candle_core::safetensors::save(&t, path).unwrap();
    bytes
}

fn write_lora(path: &Path) {
    let mut t = HashMap::new();
    for (m, out, inp) in modules() {
        let k = format!("lora_unet_{}", m.replace('.', "_"));
        t.insert(format!("{k}.lora_down.weight"), randn(&[RANK, inp], 0.02));
        t.insert(format!("{k}.lora_up.weight"), randn(&[out, RANK], 0.02));
        t.insert(
            format!("{k}.alpha"),
            Tensor::new(16f32, &Device::Cpu)
                .unwrap()
                .to_dtype(DType::F16)
                .unwrap(),
        );
    }
    candle_core::safetensors::save(&t, path).unwrap();
}

fn lora(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let ckpt_path = dir.path().join("layers.safetensors");
    let target_bytes = write_checkpoint(&ckpt_path);
    let spec = |name: &str| {
        let path = dir.path().join(format!("{name}.safetensors"));
        write_lora(&path);
        LoraSpec {
            path,
            name: name.into(),
            scale: 1.0,
            te_scale: None,
        }
    };
    let (a, b) = (spec("a"), spec("b"));
    let ckpt = Checkpoint::open(&ModelSource::SingleFile {
        path: ckpt_path,
        config_dir: Some(format!("{FIXTURES}/sdxl-base-config").into()),
    })
    .unwrap();
    let names = ckpt.parameter_names(Component::Unet);
    assert_eq!(names.len(), modules().len());

    let mut g = c.benchmark_group("lora_rank32_fullsize_layers");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(target_bytes as u64));
    g.bench_function("parse_and_compute_deltas", |bch| {
        bch.iter(|| LoraSet::load(std::slice::from_ref(&a), &ckpt).unwrap())
    });
    let (set_a, _) = LoraSet::load(std::slice::from_ref(&a), &ckpt).unwrap();
    let (set_b, _) = LoraSet::load(std::slice::from_ref(&b), &ckpt).unwrap();
    let build = |vb: candle_nn::VarBuilder<'static>| -> sdxl_pipeline::Result<Vec<Tensor>> {
        names
            .iter()
            .map(|(n, s)| Ok(vb.get(s.as_slice(), n)?))
            .collect()
    };
    g.bench_function("materialise_deltas_f32", |bch| {
        let d = set_a.deltas(Component::Unet);
        bch.iter(|| {
            names
                .iter()
                .map(|(n, _)| d.get(n).unwrap())
                .collect::<Vec<_>>()
        })
    });
    g.bench_function("load_f16_base", |bch| {
        bch.iter(|| {
            let vb = ckpt
                .var_builder(Component::Unet, DType::F16, &Device::Cpu)
                .unwrap();
            build(vb).unwrap()
        })
    });
    g.bench_function("load_f16_with_merged_deltas", |bch| {
        bch.iter(|| {
            let vb = ckpt
                .var_builder_with_deltas(
                    Component::Unet,
                    DType::F16,
                    &Device::Cpu,
                    set_a.deltas(Component::Unet),
                )
                .unwrap();
            build(vb).unwrap()
        })
    });
    let (_model, mut live) = LiveWeights::load(
        &ckpt,
        Component::Unet,
        DType::F16,
        &Device::Cpu,
        &set_a,
        build,
    )
    .unwrap();
    let mut to_b = true;
    g.bench_function("switch_in_place_a_b", |bch| {
        bch.iter(|| {
            let s = if to_b { &set_b } else { &set_a };
            to_b = !to_b;
            live.switch(&ckpt, s).unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, lora);
criterion_main!(benches);
