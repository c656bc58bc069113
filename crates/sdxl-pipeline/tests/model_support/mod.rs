//! Helpers shared by the checkpoint, UNet, VAE and LoRA tests: the tiny fixture model in both
//! layouts, fixture loading and the error measures the parity tolerances are stated in.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use sdxl_pipeline::checkpoint::{Checkpoint, ModelSource};

pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");

/// A path under `tests/fixtures/`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(format!("{FIXTURES}/{rel}"))
}

/// The tiny SDXL in diffusers layout (also the config dir of the single file).
pub fn tiny_dir() -> PathBuf {
    fixture("tiny-sdxl")
}

/// The tiny SDXL as an original-layout (LDM) fp16 single file.
pub fn tiny_single() -> PathBuf {
    fixture("tiny-sdxl-single-file.safetensors")
}

/// The diffusers-layout source of the tiny SDXL.
pub fn dir_source() -> ModelSource {
    ModelSource::DiffusersDir(tiny_dir())
}

/// The single-file source of the tiny SDXL, configs from the diffusers dir.
pub fn single_source() -> ModelSource {
    ModelSource::SingleFile {
        path: tiny_single(),
        config_dir: Some(tiny_dir()),
    }
}

/// The tiny SDXL opened from its single file.
pub fn single_checkpoint() -> Checkpoint {
    Checkpoint::open(&single_source()).unwrap()
}

/// The tiny SDXL opened from its diffusers dir.
pub fn dir_checkpoint() -> Checkpoint {
    Checkpoint::open(&dir_source()).unwrap()
}

/// The float tensors of a fixture file (skipping flags stored as BOOL, which candle cannot load).
pub fn load_floats(rel: &str) -> HashMap<String, Tensor> {
    // SAFETY: fixture files are not modified while the tests run.
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(fixture(rel)).unwrap() };
    st.tensors()
        .into_iter()
        .filter(|(_, v)| v.dtype() != safetensors::Dtype::BOOL)
        .map(|(k, _)| (k.clone(), st.load(&k, &Device::Cpu).unwrap()))
        .collect()
}

/// max |t| in f32.
pub fn max_abs(t: &Tensor) -> f32 {
    t.to_dtype(DType::F32)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// max |a − b| in f32 (shapes must match).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    max_abs(&(a - b).unwrap())
}

/// max |a − b| / max |b|: the relative error the parity tolerances are stated in.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    max_abs_diff(a, b) / max_abs(b)
}
