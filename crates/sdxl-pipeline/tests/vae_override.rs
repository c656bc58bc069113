//! The models.toml `[vae]` override (SPEC §8): a standalone VAE file in diffusers or original
//! layout replaces the checkpoint's VAE; an fp16-safe one lets f16 models decode in f16.
//! Override files are written at test time from the tiny fixtures.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use sdxl_pipeline::checkpoint::{Checkpoint, Component, ModelSource, VaeOverride};
use sdxl_pipeline::pipeline::{LoadOptions, SdxlModel};
use sdxl_pipeline::PipelineError;

mod model_support;
use model_support::{
    dir_source, fixture, load_floats, max_abs_diff, rel_err, single_source, tiny_dir, tiny_single,
};

/// Relative tolerance of the f32 decode against diffusers (as tests/vae.rs).
const TOL: f32 = 2e-5;

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("sdxl-vae-override-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn save(tensors: &HashMap<String, Tensor>, path: &Path) -> PathBuf {
    candle_core::safetensors::save(tensors, path).unwrap();
    path.to_path_buf()
}

/// The diffusers-layout VAE of the tiny model.
fn diffusers_vae() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        tiny_dir().join("vae/diffusion_pytorch_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

/// The original-layout VAE of the tiny single file, keys without `first_stage_model.`.
fn original_vae() -> HashMap<String, Tensor> {
    let all = candle_core::safetensors::load(tiny_single(), &Device::Cpu).unwrap();
    all.into_iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("first_stage_model.")
                .map(|k| (k.to_string(), v))
        })
        .collect()
}

fn open(source: &ModelSource, path: &Path, fp16_safe: bool) -> sdxl_pipeline::Result<Checkpoint> {
    Checkpoint::open_with_vae(
        source,
        Some(&VaeOverride {
            path: path.to_path_buf(),
            fp16_safe,
        }),
    )
}

/// Every VAE parameter of `ckpt`, by diffusers name, in f32.
fn vae_params(ckpt: &Checkpoint) -> HashMap<String, Tensor> {
    let vb = ckpt
        .var_builder(Component::Vae, DType::F32, &Device::Cpu)
        .unwrap();
    ckpt.parameter_names(Component::Vae)
        .into_iter()
        .map(|(n, shape)| {
            let t = vb.get(shape.as_slice(), &n).unwrap();
            (n, t)
        })
        .collect()
}

#[test]
fn diffusers_layout_override_serves_its_own_weights() {
    let d = scratch("diffusers");
    // Doubled weights, so the override is told apart from the checkpoint's VAE.
    let doubled: HashMap<String, Tensor> = diffusers_vae()
        .into_iter()
        .map(|(k, v)| (k, (v * 2.0).unwrap()))
        .collect();
    let path = save(&doubled, &d.join("vae.safetensors"));
    let base = vae_params(&Checkpoint::open(&single_source()).unwrap());
    for source in [single_source(), dir_source()] {
        let ckpt = open(&source, &path, true).unwrap();
        let params = vae_params(&ckpt);
        assert_eq!(params.len(), base.len());
        for (name, t) in &params {
            let want = (&base[name] * 2.0).unwrap();
            assert_eq!(max_abs_diff(t, &want), 0.0, "{name}");
        }
        // The other components still come from the checkpoint.
        assert!(!ckpt.parameter_names(Component::Unet).is_empty());
    }
}

#[test]
fn old_diffusers_attention_names_are_accepted() {
    let d = scratch("old-names");
    let renamed: HashMap<String, Tensor> = diffusers_vae()
        .into_iter()
        .map(|(k, v)| {
            let k = k
                .replace(".to_q.", ".query.")
                .replace(".to_k.", ".key.")
                .replace(".to_v.", ".value.")
                .replace(".to_out.0.", ".proj_attn.");
            (k, v)
        })
        .collect();
    assert!(renamed.keys().any(|k| k.contains(".query.")));
    let path = save(&renamed, &d.join("vae-old.safetensors"));
    let params = vae_params(&open(&dir_source(), &path, true).unwrap());
    let base = vae_params(&Checkpoint::open(&dir_source()).unwrap());
    assert_eq!(params.len(), base.len());
    for (name, t) in &params {
        assert_eq!(max_abs_diff(t, &base[name]), 0.0, "{name}");
    }
}

#[test]
fn original_layout_override_decodes_like_diffusers() {
    let d = scratch("original");
    let plain = save(&original_vae(), &d.join("sdxl_vae.safetensors"));
    let prefixed: HashMap<String, Tensor> = original_vae()
        .into_iter()
        .map(|(k, v)| (format!("first_stage_model.{k}"), v))
        .collect();
    let prefixed = save(&prefixed, &d.join("sdxl_vae_prefixed.safetensors"));
    let expected = load_floats("expected/vae.safetensors");
    let (latents, want) = (&expected["input.latents"], &expected["decode_fp32"]);
    for path in [plain, prefixed] {
        // On the diffusers dir, whose own VAE uses the diffusers layout.
        let ckpt = open(&dir_source(), &path, false).unwrap();
        let vae = ckpt.load_vae(DType::F32, &Device::Cpu).unwrap();
        let z = (latents / ckpt.configs().vae.scaling_factor).unwrap();
        let rel = rel_err(&vae.decode(&z).unwrap(), want);
        assert!(rel < TOL, "{}: decode rel err {rel}", path.display());
    }
}

#[test]
fn fp16_safe_override_keeps_f16_models_decoding_in_f16() {
    let d = scratch("fp16");
    let path = save(&diffusers_vae(), &d.join("vae.safetensors"));
    let load = |vae: Option<bool>| {
        let ckpt = match vae {
            Some(fp16_safe) => open(&dir_source(), &path, fp16_safe).unwrap(),
            None => Checkpoint::open(&dir_source()).unwrap(),
        };
        let options = LoadOptions {
            dtype: DType::F16,
            ..LoadOptions::default()
        };
        SdxlModel::load(Arc::new(ckpt), options).unwrap()
    };
    // The tiny VAE config says force_upcast (as SDXL's does): f16 models decode in f32 ...
    assert_eq!(load(None).vae_dtype(), DType::F32);
    assert_eq!(load(Some(false)).vae_dtype(), DType::F32);
    // ... unless the override is declared fp16-safe.
    let model = load(Some(true));
    assert_eq!(model.vae_dtype(), DType::F16);
    // Decoding in f16 gives the f32 image within f16 rounding (±2 of 255 per channel).
    let latents = Tensor::randn(0f32, 1.0, (1, 4, 8, 8), &Device::Cpu).unwrap();
    let f16 = model.decode(&latents).unwrap();
    let f32 = load(None).decode(&latents).unwrap();
    let worst = f16
        .pixels
        .iter()
        .zip(&f32.pixels)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    assert!(worst <= 2, "f16 decode differs from f32 by {worst}/255");
}

#[test]
fn unusable_override_files_are_model_errors_naming_the_file() {
    let d = scratch("bad");
    // Not a VAE: a LoRA file.
    let lora = fixture("tiny-lora-kohya.safetensors");
    match open(&dir_source(), &lora, true).unwrap_err() {
        PipelineError::ModelInvalid { path, reason } => {
            assert_eq!(path, lora);
            assert!(reason.contains("not a VAE file"), "{reason}");
        }
        e => panic!("expected ModelInvalid, got {e}"),
    }
    // Not safetensors at all.
    let html = d.join("vae.safetensors");
    std::fs::write(&html, b"<!DOCTYPE html><html>login</html>").unwrap();
    let e = open(&dir_source(), &html, true).unwrap_err();
    assert!(matches!(e, PipelineError::ModelInvalid { .. }), "{e}");
    // A VAE file missing a tensor: the load names the override file and the tensor.
    let mut t = diffusers_vae();
    t.remove("decoder.conv_out.weight").unwrap();
    let partial = save(&t, &d.join("partial.safetensors"));
    let ckpt = open(&dir_source(), &partial, true).unwrap();
    let e = ckpt
        .load_vae(DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("decoder.conv_out.weight"), "{e}");
    assert!(e.contains("partial.safetensors"), "{e}");
}
