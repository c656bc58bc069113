//! Switching the LoRA set of a loaded model in place: A → B → A and base → A → base give
//! bit-identical weights and outputs to fresh loads.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use sdxl_pipeline::checkpoint::{Checkpoint, Component};
use sdxl_pipeline::lora::{LiveWeights, LoraSet, LoraSpec, SwitchOutcome};
use sdxl_pipeline::unet::SdxlUNet;

mod model_support;
use model_support::{single_checkpoint, FIXTURES};

fn ckpt() -> Checkpoint {
    single_checkpoint()
}

fn set(ckpt: &Checkpoint, specs: &[(&str, f64)]) -> LoraSet {
    let specs: Vec<LoraSpec> = specs
        .iter()
        .map(|(f, s)| LoraSpec {
            path: PathBuf::from(format!("{FIXTURES}/{f}")),
            name: f.to_string(),
            scale: *s,
            te_scale: None,
        })
        .collect();
    LoraSet::load(&specs, ckpt).unwrap().0
}

const A: &str = "tiny-lora-kohya.safetensors";
const B: &str = "tiny-lora-b-diffusers-names.safetensors";

fn unet_out(unet: &SdxlUNet) -> Tensor {
    let e = candle_core::safetensors::load(
        format!("{FIXTURES}/expected/unet.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    unet.forward(
        &e["input.sample"],
        500.0,
        &e["input.encoder_hidden_states"],
        &e["input.text_embeds"],
        &e["input.time_ids"],
    )
    .unwrap()
}

fn fresh_unet_out(ckpt: &Checkpoint, set: &LoraSet) -> Tensor {
    let vb = ckpt
        .var_builder_with_deltas(
            Component::Unet,
            DType::F32,
            &Device::Cpu,
            set.deltas(Component::Unet),
        )
        .unwrap();
    unet_out(&SdxlUNet::new(vb, &ckpt.configs().unet).unwrap())
}

fn bits_equal(a: &Tensor, b: &Tensor) -> bool {
    let a: Vec<u32> = a
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect();
    let b: Vec<u32> = b
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect();
    a == b
}

#[test]
fn unet_switch_a_b_a_and_base_match_fresh_loads_bitwise() {
    let ckpt = ckpt();
    let (base, a, b) = (
        LoraSet::empty(),
        set(&ckpt, &[(A, 1.5)]),
        set(&ckpt, &[(B, 0.7)]),
    );
    let (unet, mut live) =
        LiveWeights::load(&ckpt, Component::Unet, DType::F32, &Device::Cpu, &a, |vb| {
            SdxlUNet::new(vb, &ckpt.configs().unet)
        })
        .unwrap();
    let want_a = fresh_unet_out(&ckpt, &a);
    assert!(bits_equal(&unet_out(&unet), &want_a));
    assert_eq!(live.switch(&ckpt, &a).unwrap(), SwitchOutcome::Unchanged);

    let n = live.switch(&ckpt, &b).unwrap();
    assert!(
        matches!(n, SwitchOutcome::Rewritten(k) if k >= a.deltas(Component::Unet).len()),
        "{n:?}"
    );
    let got_b = unet_out(&unet);
    assert!(
        !bits_equal(&got_b, &want_a),
        "the switch did not reach the model's weights"
    );
    assert!(
        bits_equal(&got_b, &fresh_unet_out(&ckpt, &b)),
        "A→B differs from a fresh B"
    );

    live.switch(&ckpt, &a).unwrap();
    assert!(
        bits_equal(&unet_out(&unet), &want_a),
        "A→B→A differs from a fresh A"
    );

    live.switch(&ckpt, &base).unwrap();
    assert!(
        bits_equal(&unet_out(&unet), &fresh_unet_out(&ckpt, &base)),
        "→base differs"
    );
}

#[test]
fn f16_weights_are_restored_bit_identically() {
    // A "model" that keeps every tensor it gets, in f16: the handles are its weights.
    let ckpt = ckpt();
    let names = ckpt.parameter_names(Component::Unet);
    let build =
        |vb: candle_nn::VarBuilder<'static>| -> sdxl_pipeline::Result<Vec<(String, Tensor)>> {
            names
                .iter()
                .map(|(n, s)| Ok((n.clone(), vb.get(s.as_slice(), n)?)))
                .collect()
        };
    let (base, a, ab) = (
        LoraSet::empty(),
        set(&ckpt, &[(A, 1.5)]),
        set(&ckpt, &[(A, 1.5), (B, 0.7)]),
    );
    let (model, mut live) = LiveWeights::load(
        &ckpt,
        Component::Unet,
        DType::F16,
        &Device::Cpu,
        &base,
        build,
    )
    .unwrap();
    let fresh = |s: &LoraSet| {
        let vb = ckpt
            .var_builder_with_deltas(
                Component::Unet,
                DType::F16,
                &Device::Cpu,
                s.deltas(Component::Unet),
            )
            .unwrap();
        build(vb).unwrap()
    };
    let same = |want: &[(String, Tensor)]| {
        model.iter().zip(want).all(|((_, x), (_, y))| {
            bits_equal(
                &x.to_dtype(DType::F32).unwrap(),
                &y.to_dtype(DType::F32).unwrap(),
            )
        })
    };
    for s in [&a, &ab, &a, &base, &ab, &base] {
        live.switch(&ckpt, s).unwrap();
        assert!(same(&fresh(s)), "after switching to `{}`", s.key());
    }
    assert!(!same(&fresh(&a)));
}

#[test]
fn every_copy_a_model_requested_is_rewritten() {
    let ckpt = ckpt();
    let a = set(&ckpt, &[(A, 1.5)]);
    let name = "mid_block.attentions.0.proj_in.weight";
    let shape = ckpt
        .parameter_names(Component::Unet)
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap()
        .1;
    let build = |vb: candle_nn::VarBuilder<'static>| -> sdxl_pipeline::Result<[Tensor; 2]> {
        Ok([
            vb.get(shape.as_slice(), name)?,
            vb.get(shape.as_slice(), name)?,
        ])
    };
    let (model, mut live) = LiveWeights::load(
        &ckpt,
        Component::Unet,
        DType::F32,
        &Device::Cpu,
        &LoraSet::empty(),
        build,
    )
    .unwrap();
    assert_eq!(live.key(), Some(""));
    live.switch(&ckpt, &a).unwrap();
    assert_eq!(live.key(), Some(a.key().as_str()));
    let vb = ckpt
        .var_builder_with_deltas(
            Component::Unet,
            DType::F32,
            &Device::Cpu,
            a.deltas(Component::Unet),
        )
        .unwrap();
    let want = vb.get(shape.as_slice(), name).unwrap();
    assert!(model.iter().all(|t| bits_equal(t, &want)));
}
