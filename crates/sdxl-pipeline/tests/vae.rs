//! VAE parity with diffusers 0.42.1 on the tiny SDXL VAE (`tests/fixtures/expected/vae.safetensors`)
//! and the fp16-safe decode retry.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use sdxl_pipeline::checkpoint::{Checkpoint, Component};
use sdxl_pipeline::vae::{decode_checked, AutoencoderKl};
use sdxl_pipeline::PipelineError;

mod model_support;
use model_support::{dir_checkpoint, load_floats, rel_err};

/// Relative tolerance (max abs error / max abs expected) in f32; measured ≤ 2.3e-6 (brief: 1e-4).
const TOL: f32 = 2e-5;

/// The float tensors of the fixture (it also holds a BOOL flag candle cannot load).
fn expected() -> HashMap<String, Tensor> {
    load_floats("expected/vae.safetensors")
}

fn checkpoint() -> Checkpoint {
    dir_checkpoint()
}

#[test]
fn decode_f32_matches_diffusers() {
    let e = expected();
    let ckpt = checkpoint();
    assert_eq!(ckpt.configs().vae.scaling_factor, 0.13025);
    let vae = ckpt.load_vae(DType::F32, &Device::Cpu).unwrap();
    let z = (&e["input.latents"] / ckpt.configs().vae.scaling_factor).unwrap();
    assert!(rel_err(&z, &e["decode_input"]) < 1e-7);
    let r = rel_err(&vae.decode(&z).unwrap(), &e["decode_fp32"]);
    eprintln!("decode f32 rel {r:e}");
    assert!(r < TOL, "decode rel err {r}");
}

#[test]
fn decode_f16_close_to_diffusers_f16() {
    let e = expected();
    let vae = checkpoint().load_vae(DType::F16, &Device::Cpu).unwrap();
    let out = vae.decode(&e["decode_input"]).unwrap();
    assert_eq!(out.dtype(), DType::F16);
    // Both are fp16 computations with different kernels: compare against diffusers' fp16 output at
    // the scale of their fp16-vs-fp32 difference (4.8e-3 absolute, README §6).
    let r = rel_err(&out, &e["decode_fp16"]);
    eprintln!("decode f16 rel {r:e}");
    assert!(r < 5e-3, "decode f16 rel err {r}");
}

#[test]
fn encode_matches_diffusers() {
    let e = expected();
    let vae = checkpoint().load_vae(DType::F32, &Device::Cpu).unwrap();
    let (mean, std) = vae.encode(&e["input.image"]).unwrap();
    let (rm, rs) = (
        rel_err(&mean, &e["encode_mean"]),
        rel_err(&std, &e["encode_std"]),
    );
    eprintln!("encode mean rel {rm:e}, std rel {rs:e}");
    assert!(rm < TOL && rs < TOL, "encode rel err mean {rm} std {rs}");
}

/// The tiny VAE with `decoder.conv_out.bias` set to 1e5, which is +inf in f16 (max 65504) but finite in f32.
fn poisoned_vae(dtype: DType) -> AutoencoderKl {
    let ckpt = checkpoint();
    let cfg = ckpt.configs().vae.clone();
    let vb = ckpt
        .var_builder(Component::Vae, DType::F32, &Device::Cpu)
        .unwrap();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (name, _) in ckpt.parameter_names(Component::Vae) {
        let t = vb.get_unchecked(&name).unwrap();
        tensors.insert(name, t);
    }
    let bias = Tensor::full(1e5f32, 3, &Device::Cpu).unwrap();
    tensors.insert("decoder.conv_out.bias".into(), bias);
    let tensors = tensors
        .into_iter()
        .map(|(k, v)| (k, v.to_dtype(dtype).unwrap()))
        .collect();
    let vb = candle_nn::VarBuilder::from_tensors(tensors, dtype, &Device::Cpu);
    AutoencoderKl::new(vb, &cfg).unwrap()
}

#[test]
fn decode_checked_retries_in_f32_after_fp16_overflow() {
    let e = expected();
    let vae16 = poisoned_vae(DType::F16);
    assert!(!sdxl_pipeline::vae::is_finite(&vae16.decode(&e["decode_input"]).unwrap()).unwrap());
    let mut reloaded = false;
    let out = decode_checked(&vae16, &e["decode_input"], || {
        reloaded = true;
        Ok(poisoned_vae(DType::F32))
    })
    .unwrap();
    assert!(reloaded);
    assert_eq!(out.dtype(), DType::F32);
    assert!(sdxl_pipeline::vae::is_finite(&out).unwrap());
    // The retry really decoded with the f32 weights: output = clean decode + 1e5 on conv_out bias.
    let shifted = (&e["decode_fp32"] + 1e5).unwrap();
    assert!(rel_err(&out, &shifted) < 1e-6);
}

#[test]
fn decode_checked_reports_non_finite() {
    let e = expected();
    let vae = checkpoint().load_vae(DType::F32, &Device::Cpu).unwrap();
    // NaN latents: error at once, no reload.
    let nan = (&e["decode_input"] * f64::NAN).unwrap();
    let err = decode_checked(&vae, &nan, || panic!("must not reload")).unwrap_err();
    assert!(matches!(err, PipelineError::NonFinite(_)), "{err}");
    // f16 overflow and an f32 reload that overflows too (1e39 is inf in f32): a clear error.
    let vae16 = poisoned_vae(DType::F16);
    let err = decode_checked(&vae16, &e["decode_input"], || Ok(poisoned_inf_f32())).unwrap_err();
    assert!(matches!(err, PipelineError::NonFinite(_)), "{err}");
}

fn poisoned_inf_f32() -> AutoencoderKl {
    let ckpt = checkpoint();
    let cfg = ckpt.configs().vae.clone();
    let vb = ckpt
        .var_builder(Component::Vae, DType::F32, &Device::Cpu)
        .unwrap();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (name, _) in ckpt.parameter_names(Component::Vae) {
        tensors.insert(name.clone(), vb.get_unchecked(&name).unwrap());
    }
    tensors.insert(
        "decoder.conv_out.bias".into(),
        Tensor::full(f32::INFINITY, 3, &Device::Cpu).unwrap(),
    );
    AutoencoderKl::new(
        candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu),
        &cfg,
    )
    .unwrap()
}
