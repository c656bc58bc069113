//! LoRA merge parity with diffusers 0.42.1 `load_lora_weights` + `fuse_lora` on the tiny SDXL
//! (`tests/fixtures/expected/lora_*.safetensors`, README §5 of the reference data).

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use sdxl_pipeline::checkpoint::{Checkpoint, Component, ModelSource, Transform};
use sdxl_pipeline::lora::{LoraSet, LoraSpec};
use sdxl_pipeline::unet::SdxlUNet;

mod model_support;
use model_support::{rel_err, single_checkpoint as ckpt, FIXTURES};

fn spec(file: &str, name: &str, scale: f64) -> LoraSpec {
    LoraSpec {
        path: PathBuf::from(format!("{FIXTURES}/{file}")),
        name: name.into(),
        scale,
        te_scale: None,
    }
}

fn lora_a(scale: f64) -> LoraSpec {
    spec("tiny-lora-kohya.safetensors", "A", scale)
}
fn lora_b(scale: f64) -> LoraSpec {
    spec("tiny-lora-b-diffusers-names.safetensors", "B", scale)
}

fn load(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(format!("{FIXTURES}/expected/{name}"), &Device::Cpu).unwrap()
}

/// For every expected single-file tensor, compares the merged parameter(s) it holds
/// (OpenCLIP `in_proj_weight` = q/k/v row blocks). Returns how many parameters were compared.
fn check_merged(ckpt: &Checkpoint, set: &LoraSet, expected: &HashMap<String, Tensor>) -> usize {
    let mut compared = 0;
    for c in [
        Component::Unet,
        Component::TextEncoder,
        Component::TextEncoder2,
    ] {
        let vb = ckpt
            .var_builder_with_deltas(c, DType::F32, &Device::Cpu, set.deltas(c))
            .unwrap();
        for (name, shape) in ckpt.parameter_names(c) {
            let key = ckpt.original_name(c, &name).unwrap();
            let Some(want) = expected.get(&key) else {
                continue;
            };
            let want = match ckpt.transform(c, &name).unwrap() {
                Transform::Rows { part, parts } => {
                    let n = want.dim(0).unwrap() / parts;
                    want.narrow(0, part * n, n).unwrap()
                }
                _ => want.reshape(shape.as_slice()).unwrap(),
            };
            let got = vb.get(shape.as_slice(), &name).unwrap();
            let r = rel_err(&got, &want);
            assert!(r < 1e-5, "{c:?} {name}: rel err {r}");
            compared += 1;
        }
    }
    compared
}

fn touched(set: &LoraSet) -> BTreeSet<(String, String)> {
    [
        Component::Unet,
        Component::TextEncoder,
        Component::TextEncoder2,
    ]
    .into_iter()
    .flat_map(|c| {
        set.deltas(c)
            .names()
            .into_iter()
            .map(|k| (c.dir_name().to_string(), k))
            .collect::<Vec<_>>()
    })
    .collect()
}

#[test]
fn kohya_lora_a_at_1_5_matches_diffusers_fuse_lora() {
    let ckpt = ckpt();
    let (set, warnings) = LoraSet::load(&[lora_a(1.5)], &ckpt).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    // README §5: diffusers changes exactly the 204 LoRA targets.
    assert_eq!(touched(&set).len(), 204);
    let expected = load("lora_A_scale1.5_changed.safetensors");
    assert_eq!(expected.len(), 194);
    assert_eq!(check_merged(&ckpt, &set, &expected), 204);
}

#[test]
fn lora_a_plus_b_matches_diffusers_set_adapters() {
    let ckpt = ckpt();
    let (set, warnings) = LoraSet::load(&[lora_a(1.5), lora_b(0.7)], &ckpt).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(touched(&set).len(), 205);
    let by_b = load("lora_A1.5_B0.7_changed_by_B.safetensors");
    let mut expected = load("lora_A_scale1.5_changed.safetensors");
    expected.extend(by_b);
    // Every touched parameter is compared: 204 from A plus the one B-only conv.
    assert_eq!(check_merged(&ckpt, &set, &expected), 205);
}

fn unet_out(ckpt: &Checkpoint, set: &LoraSet) -> Tensor {
    let e = load("unet.safetensors");
    let vb = ckpt
        .var_builder_with_deltas(
            Component::Unet,
            DType::F32,
            &Device::Cpu,
            set.deltas(Component::Unet),
        )
        .unwrap();
    let unet = SdxlUNet::new(vb, &ckpt.configs().unet).unwrap();
    let t = e["input.timestep"].to_scalar::<f32>().unwrap() as f64;
    unet.forward(
        &e["input.sample"],
        t,
        &e["input.encoder_hidden_states"],
        &e["input.text_embeds"],
        &e["input.time_ids"],
    )
    .unwrap()
}

#[test]
fn unet_outputs_with_loras_match_diffusers() {
    let ckpt = ckpt();
    let outs = load("lora_outputs.safetensors");
    let (a, _) = LoraSet::load(&[lora_a(1.5)], &ckpt).unwrap();
    let r = rel_err(&unet_out(&ckpt, &a), &outs["A1.5.unet.out"]);
    eprintln!("A1.5 unet out rel err {r:e}");
    assert!(r < 1e-4, "A1.5: {r}");
    let (ab, _) = LoraSet::load(&[lora_a(1.5), lora_b(0.7)], &ckpt).unwrap();
    let r = rel_err(&unet_out(&ckpt, &ab), &outs["A1.5_B0.7.unet.out"]);
    eprintln!("A1.5_B0.7 unet out rel err {r:e}");
    assert!(r < 1e-4, "A1.5_B0.7: {r}");
}

#[test]
fn diffusers_dir_checkpoint_resolves_ldm_kohya_names_identically() {
    // kohya SDXL names are LDM names: a diffusers-layout checkpoint must still resolve them.
    let single = ckpt();
    let dir = Checkpoint::open(&ModelSource::DiffusersDir(
        format!("{FIXTURES}/tiny-sdxl").into(),
    ))
    .unwrap();
    let specs = [lora_a(1.5), lora_b(0.7)];
    let (s1, w1) = LoraSet::load(&specs, &single).unwrap();
    let (s2, w2) = LoraSet::load(&specs, &dir).unwrap();
    assert!(w1.is_empty() && w2.is_empty(), "{w1:?} {w2:?}");
    assert_eq!(touched(&s1), touched(&s2));
    for (c, name) in touched(&s2) {
        let c = [
            Component::Unet,
            Component::TextEncoder,
            Component::TextEncoder2,
        ]
        .into_iter()
        .find(|x| x.dir_name() == c)
        .unwrap();
        let a = s1.deltas(c).get(&name).unwrap().unwrap();
        let b = s2.deltas(c).get(&name).unwrap().unwrap();
        assert_eq!(rel_err(&a, &b), 0.0, "{name}");
    }
}

/// `te_scale` (A1111's `te_multiplier`, `<lora:NAME:TE:UNET>`) scales the text-encoder modules
/// and `scale` the UNet's: each component's deltas equal those of a plain set at its multiplier,
/// and the cache key tells the sets apart.
#[test]
fn text_encoder_scale_applies_to_text_encoders_only() {
    let ckpt = ckpt();
    let split = LoraSpec {
        te_scale: Some(1.6),
        ..lora_a(0.4)
    };
    let (set, _) = LoraSet::load(std::slice::from_ref(&split), &ckpt).unwrap();
    let (te_like, _) = LoraSet::load(&[lora_a(1.6)], &ckpt).unwrap();
    let (unet_like, _) = LoraSet::load(&[lora_a(0.4)], &ckpt).unwrap();
    for (c, reference) in [
        (Component::Unet, &unet_like),
        (Component::TextEncoder, &te_like),
        (Component::TextEncoder2, &te_like),
    ] {
        let (got, want) = (set.deltas(c), reference.deltas(c));
        assert!(!got.is_empty(), "{c:?}: the fixture LoRA touches it");
        assert_eq!(got.names(), want.names(), "{c:?}");
        for name in got.names() {
            let g = got.get(&name).unwrap().unwrap();
            let w = want.get(&name).unwrap().unwrap();
            assert!(rel_err(&g, &w) < 1e-6, "{c:?} {name}");
        }
    }
    assert_ne!(set.key(), unet_like.key());
    assert_eq!(
        LoraSet::key_of(&[LoraSpec {
            te_scale: None,
            ..split
        }]),
        unet_like.key()
    );
}
