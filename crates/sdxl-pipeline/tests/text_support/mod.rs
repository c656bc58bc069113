//! Helpers shared by the tokenizer, text-encoder and prompt tests (fixture loading, comparisons).
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use sdxl_pipeline::text_encoder::{ClipTextConfig, ClipTextEncoder};

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");

/// Absolute tolerance of the f32 parity checks (README of the reference data: noise floor 1e-6).
pub const ATOL: f32 = 1e-5;
/// Relative tolerance of the f32 parity checks.
pub const RTOL: f32 = 1e-4;

pub fn fixture(rel: &str) -> String {
    format!("{FIXTURES}/{rel}")
}

/// All tensors of a safetensors file, on the CPU.
pub fn load(rel: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(rel), &Device::Cpu).unwrap()
}

/// The `__metadata__` entry `key` of a safetensors file.
pub fn metadata(rel: &str, key: &str) -> String {
    let bytes = std::fs::read(fixture(rel)).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    meta.metadata().as_ref().unwrap()[key].clone()
}

/// The 15 prompts of `expected/token_ids.safetensors` in row order.
pub fn token_id_prompts() -> Vec<String> {
    serde_json::from_str(&metadata("expected/token_ids.safetensors", "prompts_json")).unwrap()
}

/// Rows of an integer tensor as u32 ids.
pub fn id_rows(t: &Tensor) -> Vec<Vec<u32>> {
    t.to_dtype(DType::I64)
        .unwrap()
        .to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(|x| u32::try_from(x).unwrap()).collect())
        .collect()
}

/// Config of a tiny-SDXL text encoder, parsed from its `config.json`.
pub fn tiny_config(component: &str) -> ClipTextConfig {
    let text =
        std::fs::read_to_string(fixture(&format!("tiny-sdxl/{component}/config.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A tiny-SDXL text encoder (`text_encoder` or `text_encoder_2`) with weights cast to `dtype`.
pub fn tiny_encoder(component: &str, dtype: DType) -> ClipTextEncoder {
    let path = fixture(&format!("tiny-sdxl/{component}/model.safetensors"));
    encoder_from_file(Path::new(&path), &tiny_config(component), dtype).unwrap()
}

pub fn encoder_from_file(
    path: &Path,
    cfg: &ClipTextConfig,
    dtype: DType,
) -> sdxl_pipeline::Result<ClipTextEncoder> {
    // SAFETY: the fixture files are not modified while mapped.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[path], dtype, &Device::Cpu)? };
    ClipTextEncoder::new(vb, cfg)
}

/// Asserts `|got - want| <= atol + rtol·|want|` elementwise (f32) and returns
/// (max abs error, max abs error / max |want|).
pub fn assert_close(name: &str, got: &Tensor, want: &Tensor, atol: f32, rtol: f32) -> (f32, f32) {
    assert_eq!(got.dims(), want.dims(), "{name}: shape");
    let g: Vec<f32> = got
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let w: Vec<f32> = want
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let mut max_abs = 0f32;
    let mut max_ref = 0f32;
    for (i, (a, b)) in g.iter().zip(&w).enumerate() {
        let d = (a - b).abs();
        assert!(d.is_finite(), "{name}: non-finite at {i}: {a} vs {b}");
        assert!(
            d <= atol + rtol * b.abs(),
            "{name}: element {i}: got {a}, want {b} (|d| = {d})"
        );
        max_abs = max_abs.max(d);
        max_ref = max_ref.max(b.abs());
    }
    let rel = if max_ref > 0.0 {
        max_abs / max_ref
    } else {
        max_abs
    };
    println!("{name}: max abs err {max_abs:.3e}, max abs err / max |ref| {rel:.3e}");
    (max_abs, rel)
}
