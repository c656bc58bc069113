//! Every tensor of a LoRA file is used or reported; bad files are typed errors, never panics.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use sdxl_pipeline::checkpoint::{Checkpoint, Component};
use sdxl_pipeline::lora::{LoraSet, LoraSpec};
use sdxl_pipeline::PipelineError;

mod model_support;
use model_support::{single_checkpoint, FIXTURES};
const MODULE: &str = "lora_unet_middle_block_1_proj_in";
const PARAM: &str = "mid_block.attentions.0.proj_in.weight";

fn ckpt() -> Checkpoint {
    single_checkpoint()
}

fn proj_in_shape(ckpt: &Checkpoint) -> (usize, usize) {
    let (_, s) = ckpt
        .parameter_names(Component::Unet)
        .into_iter()
        .find(|(n, _)| n == PARAM)
        .unwrap();
    (s[0], s[1])
}

fn randn(shape: &[usize]) -> Tensor {
    Tensor::randn(0f32, 0.1, shape, &Device::Cpu).unwrap()
}

/// A valid rank-2 module for `mid_block.attentions.0.proj_in`.
fn good_module(ckpt: &Checkpoint) -> HashMap<String, Tensor> {
    let (out, inp) = proj_in_shape(ckpt);
    HashMap::from([
        (format!("{MODULE}.lora_down.weight"), randn(&[2, inp])),
        (format!("{MODULE}.lora_up.weight"), randn(&[out, 2])),
        (
            format!("{MODULE}.alpha"),
            Tensor::new(1f32, &Device::Cpu).unwrap(),
        ),
    ])
}

fn write(dir: &Path, name: &str, tensors: &HashMap<String, Tensor>) -> LoraSpec {
    let path = dir.join(format!("{name}.safetensors"));
    candle_core::safetensors::save(tensors, &path).unwrap();
    LoraSpec {
        path,
        name: name.into(),
        scale: 1.0,
    }
}

fn err_text(spec: LoraSpec, ckpt: &Checkpoint) -> (PipelineError, String) {
    let e = LoraSet::load(&[spec], ckpt).unwrap_err();
    let s = e.to_string();
    (e, s)
}

#[test]
fn unmatched_and_unknown_keys_are_reported_as_warnings() {
    let ckpt = ckpt();
    let dir = tempfile::tempdir().unwrap();
    let mut t = good_module(&ckpt);
    t.insert(
        "lora_unet_no_such_block_proj.lora_down.weight".into(),
        randn(&[2, 4]),
    );
    t.insert(
        "lora_unet_no_such_block_proj.lora_up.weight".into(),
        randn(&[4, 2]),
    );
    t.insert(format!("{MODULE}.diff_b"), randn(&[4]));
    t.insert("weird_tensor".into(), randn(&[3]));
    let (set, warnings) = LoraSet::load(&[write(dir.path(), "partial", &t)], &ckpt).unwrap();
    assert_eq!(set.deltas(Component::Unet).len(), 1);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    for k in [
        "lora_unet_no_such_block_proj.lora_down.weight",
        "lora_unet_no_such_block_proj.lora_up.weight",
        "lora_unet_middle_block_1_proj_in.diff_b",
        "weird_tensor",
        "`partial`",
    ] {
        assert!(warnings[0].contains(k), "{k} missing from {warnings:?}");
    }
}

#[test]
fn kohya_te_lora_without_out_proj_is_applied() {
    // diffusers drops q/k/v of such a text-encoder LoRA (README "Known diffusers quirks"); we don't.
    let ckpt = ckpt();
    let dir = tempfile::tempdir().unwrap();
    let (_, s) = ckpt
        .parameter_names(Component::TextEncoder)
        .into_iter()
        .find(|(n, _)| n == "text_model.encoder.layers.0.self_attn.q_proj.weight")
        .unwrap();
    let m = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj";
    let t = HashMap::from([
        (format!("{m}.lora_down.weight"), randn(&[2, s[1]])),
        (format!("{m}.lora_up.weight"), randn(&[s[0], 2])),
    ]);
    let (set, warnings) = LoraSet::load(&[write(dir.path(), "te", &t)], &ckpt).unwrap();
    assert!(warnings.is_empty());
    assert!(set
        .deltas(Component::TextEncoder)
        .contains("text_model.encoder.layers.0.self_attn.q_proj.weight"));
}

#[test]
fn a_lora_matching_nothing_is_an_error() {
    let ckpt = ckpt();
    let dir = tempfile::tempdir().unwrap();
    let t = HashMap::from([
        (
            "lora_unet_nothing.lora_down.weight".to_string(),
            randn(&[2, 4]),
        ),
        (
            "lora_unet_nothing.lora_up.weight".to_string(),
            randn(&[4, 2]),
        ),
    ]);
    let (e, s) = err_text(write(dir.path(), "nothing", &t), &ckpt);
    assert!(matches!(e, PipelineError::ModelInvalid { .. }), "{e:?}");
    assert!(
        s.contains("matches no weight") && s.contains("`nothing`"),
        "{s}"
    );
}

#[test]
fn shape_mismatch_names_lora_key_and_shapes() {
    let ckpt = ckpt();
    let dir = tempfile::tempdir().unwrap();
    let (out, inp) = proj_in_shape(&ckpt);
    let t = HashMap::from([
        (format!("{MODULE}.lora_down.weight"), randn(&[2, inp + 3])),
        (format!("{MODULE}.lora_up.weight"), randn(&[out, 2])),
    ]);
    let (e, s) = err_text(write(dir.path(), "wide", &t), &ckpt);
    assert!(matches!(e, PipelineError::TensorInvalid { .. }), "{e:?}");
    assert!(s.contains("`wide`") && s.contains(MODULE), "{s}");
    assert!(
        s.contains(&format!("[{out}, {}]", inp + 3)) && s.contains(&format!("[{out}, {inp}]")),
        "{s}"
    );
}

#[test]
fn sd1_lora_is_refused() {
    let ckpt = ckpt();
    let dir = tempfile::tempdir().unwrap();
    let mut t = good_module(&ckpt);
    t.insert(
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight".into(),
        randn(&[2, 768]),
    );
    t.insert(
        "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight".into(),
        randn(&[3072, 2]),
    );
    let (e, s) = err_text(write(dir.path(), "sd15", &t), &ckpt);
    assert!(matches!(e, PipelineError::ModelInvalid { .. }), "{e:?}");
    assert!(s.contains("SD1.x") && s.contains("`sd15`"), "{s}");
}

type Edit = dyn Fn(&mut HashMap<String, Tensor>);

#[test]
fn malformed_modules_are_errors() {
    let ckpt = ckpt();
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Box<Edit>, &str)> = vec![
        (
            "no_down",
            Box::new(|t| {
                t.remove(&format!("{MODULE}.lora_down.weight"));
            }),
            "partner",
        ),
        (
            "no_up",
            Box::new(|t| {
                t.remove(&format!("{MODULE}.lora_up.weight"));
            }),
            "partner",
        ),
        (
            "alpha_vec",
            Box::new(|t| {
                t.insert(format!("{MODULE}.alpha"), randn(&[2]));
            }),
            "scalar",
        ),
        (
            "nan",
            Box::new(|t| {
                let (out, _) = (t[&format!("{MODULE}.lora_up.weight")].dim(0).unwrap(), 0);
                let mut v = vec![0f32; out * 2];
                v[1] = f32::NAN;
                t.insert(
                    format!("{MODULE}.lora_up.weight"),
                    Tensor::from_vec(v, (out, 2), &Device::Cpu).unwrap(),
                );
            }),
            "NaN",
        ),
        (
            "inf_alpha",
            Box::new(|t| {
                t.insert(
                    format!("{MODULE}.alpha"),
                    Tensor::new(f32::INFINITY, &Device::Cpu).unwrap(),
                );
            }),
            "NaN or Inf",
        ),
        (
            "bad_rank",
            Box::new(|t| {
                let up = t[&format!("{MODULE}.lora_up.weight")].dim(0).unwrap();
                t.insert(format!("{MODULE}.lora_up.weight"), randn(&[up, 3]));
            }),
            "factor shapes",
        ),
    ];
    for (name, edit, needle) in cases {
        let mut t = good_module(&ckpt);
        edit(&mut t);
        let (_, s) = err_text(write(dir.path(), name, &t), &ckpt);
        assert!(s.contains(needle) && s.contains(name), "{name}: {s}");
    }
}

#[test]
fn non_safetensors_files_are_errors() {
    let ckpt = ckpt();
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        ("html", b"<html><body>404</body></html>".to_vec()),
        ("empty", Vec::new()),
        ("truncated", {
            let mut b = std::fs::read(format!("{FIXTURES}/tiny-lora-kohya.safetensors")).unwrap();
            b.truncate(b.len() / 2);
            b
        }),
    ] {
        let path: PathBuf = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let spec = LoraSpec {
            path,
            name: name.into(),
            scale: 1.0,
        };
        let e = LoraSet::load(&[spec], &ckpt).unwrap_err();
        assert!(
            matches!(e, PipelineError::ModelInvalid { .. }),
            "{name}: {e:?}"
        );
    }
    let missing = LoraSpec {
        path: dir.path().join("absent"),
        name: "absent".into(),
        scale: 1.0,
    };
    assert!(matches!(
        LoraSet::load(&[missing], &ckpt),
        Err(PipelineError::Io { .. })
    ));
}
