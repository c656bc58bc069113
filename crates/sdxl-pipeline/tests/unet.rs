//! UNet parity with diffusers 0.42.1 on the tiny SDXL (`tests/fixtures/expected/unet.safetensors`).

use candle_core::{DType, Device, Tensor};
use sdxl_pipeline::unet::SdxlUNet;

mod model_support;
use model_support::{dir_checkpoint, load_floats, rel_err, FIXTURES};

/// Relative tolerance (max abs error / max abs expected) in f32. The brief asks for 1e-4; we measure
/// ≤ 2.1e-6 and use 1e-5 because 1e-4 would not catch the tanh-GELU mistake (4.9e-5 on `out`).
const TOL: f32 = 1e-5;

fn expected() -> std::collections::HashMap<String, Tensor> {
    load_floats("expected/unet.safetensors")
}

fn tiny_unet(dtype: DType) -> SdxlUNet {
    dir_checkpoint().load_unet(dtype, &Device::Cpu).unwrap()
}

#[test]
fn unet_f32_matches_diffusers() {
    let e = expected();
    let unet = tiny_unet(DType::F32);
    let t = e["input.timestep"].to_scalar::<f32>().unwrap() as f64;
    let (out, trace) = unet
        .forward_with_intermediates(
            &e["input.sample"],
            t,
            &e["input.encoder_hidden_states"],
            &e["input.text_embeds"],
            &e["input.time_ids"],
        )
        .unwrap();
    for (name, t) in &trace {
        let r = rel_err(t, &e[&format!("debug.{name}")]);
        eprintln!("{name}: rel {r:e}");
        assert!(r < TOL, "{name}: rel err {r}");
    }
    assert_eq!(trace.len(), 9);
    let r = rel_err(&out, &e["out"]);
    eprintln!("out: rel {r:e}");
    assert!(r < TOL, "out: rel err {r}");
}

fn inputs(e: &std::collections::HashMap<String, Tensor>, dtype: DType) -> [Tensor; 4] {
    [
        "input.sample",
        "input.encoder_hidden_states",
        "input.text_embeds",
        "input.time_ids",
    ]
    .map(|k| e[k].to_dtype(dtype).unwrap())
}

#[test]
fn unet_f16_runs_close_to_f32() {
    let e = expected();
    // BF16 runs on CUDA only: candle 0.11's CPU backend has no BF16 matmul.
    let dtype = DType::F16;
    let unet = tiny_unet(dtype);
    let [x, ctx, te, ids] = inputs(&e, dtype);
    let out = unet.forward(&x, 500.0, &ctx, &te, &ids).unwrap();
    assert_eq!(out.dtype(), dtype);
    let r = rel_err(&out, &e["out"]);
    eprintln!("{dtype:?}: rel {r:e}");
    assert!(r < 1e-2, "{dtype:?}: rel err {r}");
}

#[test]
fn unet_accepts_concatenated_prompts_and_fractional_timesteps() {
    let e = expected();
    let unet = tiny_unet(DType::F32);
    let [x, ctx, te, ids] = inputs(&e, DType::F32);
    // Context of 154 tokens (two 77-token chunks, the second another prompt's): runs and differs
    // from the 77-token result.
    let ctx2 = Tensor::cat(&[&ctx, &ctx.flip(&[0]).unwrap()], 1).unwrap();
    let out2 = unet.forward(&x, 500.0, &ctx2, &te, &ids).unwrap();
    assert_eq!(out2.dims(), &[2, 4, 8, 8]);
    assert!(rel_err(&out2, &e["out"]) > 1e-4);
    // Fractional timestep: strictly between the neighbours' outputs in at least some elements.
    let a = unet.forward(&x, 500.0, &ctx, &te, &ids).unwrap();
    let b = unet.forward(&x, 500.5, &ctx, &te, &ids).unwrap();
    assert!(rel_err(&a, &b) > 1e-6);
    // Wrong widths are input errors, not panics.
    // f32 inputs to an f16 model are cast: the output is f16.
    let half = tiny_unet(DType::F16);
    assert_eq!(
        half.forward(&x, 500.0, &ctx, &te, &ids).unwrap().dtype(),
        DType::F16
    );
    let bad = unet.forward(&x, 500.0, &ctx.narrow(2, 0, 79).unwrap(), &te, &ids);
    assert!(bad.is_err());
}

/// Every UNet call of diffusers' 4-step Euler and DPM++ 2M Karras pipelines (timesteps 999…0,
/// batch [uncond, cond], 64×64 micro-conditioning) from `expected/pipelines.safetensors`.
#[test]
fn unet_matches_every_step_of_the_diffusers_pipelines() {
    let dir = format!("{FIXTURES}/expected");
    let p = candle_core::safetensors::load(format!("{dir}/pipelines.safetensors"), &Device::Cpu)
        .unwrap();
    let te =
        candle_core::safetensors::load(format!("{dir}/text_encoders.safetensors"), &Device::Cpu)
            .unwrap();
    let cat = |a: &str, b: &str| Tensor::cat(&[&te[a], &te[b]], 0).unwrap();
    let ctx = cat(
        "encode_prompt.negative_prompt_embeds",
        "encode_prompt.prompt_embeds",
    );
    let pooled = cat(
        "encode_prompt.negative_pooled_prompt_embeds",
        "encode_prompt.pooled_prompt_embeds",
    );
    let ids = Tensor::new(
        &[[64f32, 64., 0., 0., 64., 64.], [64., 64., 0., 0., 64., 64.]],
        &Device::Cpu,
    )
    .unwrap();
    let unet = tiny_unet(DType::F32);
    for run in ["euler.steps4", "dpmpp_2m_karras.steps4"] {
        let ts = p[&format!("{run}.timestep_per_step")]
            .to_vec1::<f32>()
            .unwrap();
        let inputs = &p[&format!("{run}.unet_input_per_step")];
        let outputs = &p[&format!("{run}.unet_output_per_step")];
        for (i, t) in ts.iter().enumerate() {
            let x = inputs.get(i).unwrap();
            let out = unet.forward(&x, *t as f64, &ctx, &pooled, &ids).unwrap();
            let r = rel_err(&out, &outputs.get(i).unwrap());
            eprintln!("{run} step {i} (t={t}): rel {r:e}");
            assert!(r < TOL, "{run} step {i}: rel err {r}");
        }
    }
}
