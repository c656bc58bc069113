//! LoCon (3×3, CP mid, 1×1 + `scale`), LoHa (linear, flattened conv, CP `hada_t1/t2`), LoKr
//! (factored, full, `lokr_t2`), DoRA, diffusers/PEFT (alpha from `lora_adapter_metadata`) and old
//! diffusers keys vs float64 merges from `scripts/fixtures/make_lora_fixtures.py`.

use std::collections::{BTreeSet, HashMap};

use candle_core::{DType, Device, Tensor};
use sdxl_pipeline::checkpoint::{Checkpoint, Component, ModelSource};
use sdxl_pipeline::lora::{LoraSet, LoraSpec};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");
/// The multiplier the expected merges were computed with.
const MULT: f64 = 0.8;

fn component(name: &str) -> Component {
    match name {
        "unet" => Component::Unet,
        "text_encoder" => Component::TextEncoder,
        "text_encoder_2" => Component::TextEncoder2,
        other => panic!("unknown component {other}"),
    }
}

fn check(fixture: &str) {
    let ckpt = Checkpoint::open(&ModelSource::SingleFile {
        path: format!("{FIXTURES}/tiny-sdxl-single-file.safetensors").into(),
        config_dir: Some(format!("{FIXTURES}/tiny-sdxl").into()),
    })
    .unwrap();
    let expected: HashMap<String, Tensor> = candle_core::safetensors::load(
        format!("{FIXTURES}/lora/expected_merged.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let spec = LoraSpec {
        path: format!("{FIXTURES}/lora/{fixture}.safetensors").into(),
        name: fixture.into(),
        scale: MULT,
        te_scale: None,
    };
    let (set, warnings) = LoraSet::load(&[spec], &ckpt).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let mut want_keys = BTreeSet::new();
    for (key, want) in &expected {
        let mut parts = key.splitn(3, '/');
        let (Some(f), Some(c), Some(param)) = (parts.next(), parts.next(), parts.next()) else {
            panic!("bad key {key}")
        };
        if f != fixture {
            continue;
        }
        let c = component(c);
        want_keys.insert((c.dir_name(), param.to_string()));
        let vb = ckpt
            .var_builder_with_deltas(c, DType::F32, &Device::Cpu, set.deltas(c))
            .unwrap();
        let got = vb.get(want.dims(), param).unwrap();
        let m = |t: Tensor| {
            t.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let r = m((&got - want).unwrap()) / m(want.clone());
        eprintln!("{fixture} {param}: rel err {r:e}");
        assert!(r < 1e-5, "{fixture} {param}: rel err {r}");
    }
    let got_keys: BTreeSet<(&str, String)> = [
        Component::Unet,
        Component::TextEncoder,
        Component::TextEncoder2,
    ]
    .into_iter()
    .flat_map(|c| {
        set.deltas(c)
            .names()
            .into_iter()
            .map(|k| (c.dir_name(), k))
            .collect::<Vec<_>>()
    })
    .collect();
    assert_eq!(got_keys, want_keys);
}

#[test]
fn locon_conv_cp_and_explicit_scale() {
    check("locon");
}

#[test]
fn loha_linear_conv_and_cp() {
    check("loha");
}

#[test]
fn lokr_factored_full_and_t2() {
    check("lokr");
}

#[test]
fn dora_weight_decomposition() {
    check("dora");
}

#[test]
fn peft_keys_with_metadata_alpha() {
    check("peft");
}

#[test]
fn old_diffusers_processor_and_te_keys() {
    check("old_diffusers");
}
