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
        te_scale: None,
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
            te_scale: None,
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
        te_scale: None,
    };
    assert!(matches!(
        LoraSet::load(&[missing], &ckpt),
        Err(PipelineError::Io { .. })
    ));
}

// ---------------------------------------------------------------- budgets (SPEC §12)

/// Peak resident memory of this process so far (`VmHWM`), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// LoHa and LoKr "bombs": ~1 MB files whose factors, [65536,1]×[1,65536], multiply out to a
/// 16 GiB f32 delta. They must fail with a typed error naming the file and key before any
/// product is formed: fast, and with no memory to speak of.
#[test]
fn factor_bombs_fail_fast_without_allocating() {
    let ckpt = ckpt();
    let dir = tempfile::tempdir().unwrap();
    const BIG: usize = 65536;
    let loha = HashMap::from([
        (format!("{MODULE}.hada_w1_a"), randn(&[BIG, 1])),
        (format!("{MODULE}.hada_w1_b"), randn(&[1, BIG])),
        (format!("{MODULE}.hada_w2_a"), randn(&[BIG, 1])),
        (format!("{MODULE}.hada_w2_b"), randn(&[1, BIG])),
    ]);
    let lokr = HashMap::from([
        (format!("{MODULE}.lokr_w1_a"), randn(&[BIG, 1])),
        (format!("{MODULE}.lokr_w1_b"), randn(&[1, BIG])),
        (format!("{MODULE}.lokr_w2"), randn(&[1, 1])),
    ]);
    let lokr_w2 = HashMap::from([
        (format!("{MODULE}.lokr_w1"), randn(&[1, 1])),
        (format!("{MODULE}.lokr_w2_a"), randn(&[BIG, 1])),
        (format!("{MODULE}.lokr_w2_b"), randn(&[1, BIG])),
    ]);
    let dora = {
        let mut t = loha.clone();
        t.insert(format!("{MODULE}.dora_scale"), randn(&[1, BIG]));
        t
    };
    for (name, tensors) in [
        ("loha_bomb", loha),
        ("lokr_bomb", lokr),
        ("lokr_w2_bomb", lokr_w2),
        ("dora_bomb", dora),
    ] {
        let spec = write(dir.path(), name, &tensors);
        let on_disk = std::fs::metadata(&spec.path).unwrap().len();
        assert!(on_disk < 2 << 20, "{name}: {on_disk} bytes");
        let before = peak_rss();
        let t = std::time::Instant::now();
        let (e, s) = err_text(spec, &ckpt);
        let took = t.elapsed();
        let grew = peak_rss().saturating_sub(before);
        eprintln!("{name}: refused in {took:?}, peak RSS grew {grew} bytes: {s}");
        assert_eq!(
            e.kind(),
            sdxl_pipeline::ErrorKind::ModelInvalid,
            "{name}: {e:?}"
        );
        assert!(
            matches!(e, PipelineError::TensorInvalid { .. }),
            "{name}: {e:?}"
        );
        assert!(
            s.contains(&format!("{name}.safetensors")) && s.contains(MODULE),
            "{name}: names neither file nor key: {s}"
        );
        assert!(
            s.contains("65536, 65536") && s.contains("does not fit"),
            "{name}: {s}"
        );
        assert!(took < std::time::Duration::from_secs(5), "{name}: {took:?}");
        assert!(grew < 200 << 20, "{name}: peak RSS grew by {grew} bytes");
    }
}

/// A LoHa whose factors do compose to the target's shape, but whose CP core carries a huge
/// inner rank: its intermediate would dwarf the delta.
#[test]
fn oversized_intermediates_are_refused() {
    let ckpt = ckpt();
    let (out, inp) = proj_in_shape(&ckpt);
    let dir = tempfile::tempdir().unwrap();
    // The core is [1, rank, 1, 1]; each factor's intermediate is [out, rank] (formed twice),
    // far beyond the [out, inp] delta.
    let rank = 1 << 16;
    let mut t = HashMap::new();
    for w in ["w1", "w2"] {
        t.insert(format!("{MODULE}.hada_{w}_a"), randn(&[1, out]));
        t.insert(format!("{MODULE}.hada_{w}_b"), randn(&[rank, inp]));
    }
    t.insert(format!("{MODULE}.hada_t1"), randn(&[1, rank, 1, 1]));
    t.insert(format!("{MODULE}.hada_t2"), randn(&[1, rank, 1, 1]));
    let before = peak_rss();
    let (e, s) = err_text(write(dir.path(), "wide_core", &t), &ckpt);
    let grew = peak_rss().saturating_sub(before);
    assert_eq!(e.kind(), sdxl_pipeline::ErrorKind::ModelInvalid, "{e:?}");
    assert!(s.contains("intermediate") && s.contains(MODULE), "{s}");
    assert!(grew < 200 << 20, "peak RSS grew by {grew} bytes");
}

/// The summed delta memory of one set is capped; the error names the cap and its env var.
#[test]
fn lora_set_delta_memory_is_capped() {
    use sdxl_pipeline::lora::LoraBudget;
    let ckpt = ckpt();
    let (out, inp) = proj_in_shape(&ckpt);
    let dir = tempfile::tempdir().unwrap();
    let loha = HashMap::from([
        (format!("{MODULE}.hada_w1_a"), randn(&[out, 2])),
        (format!("{MODULE}.hada_w1_b"), randn(&[2, inp])),
        (format!("{MODULE}.hada_w2_a"), randn(&[out, 2])),
        (format!("{MODULE}.hada_w2_b"), randn(&[2, inp])),
    ]);
    let a = write(dir.path(), "loha_a", &loha);
    let b = write(dir.path(), "loha_b", &loha);
    let one = 4 * (out * inp) as u64; // one f32 delta
                                      // Room for both deltas and the transient factors of one: fine.
    let roomy = LoraBudget {
        max_delta_bytes: 5 * one,
    };
    LoraSet::load_with_budget(&[a.clone(), b.clone()], &ckpt, roomy).unwrap();
    // Room for one: the second LoRA is refused, naming it and the cap.
    let tight = LoraBudget {
        max_delta_bytes: 3 * one + one / 2,
    };
    LoraSet::load_with_budget(std::slice::from_ref(&a), &ckpt, tight).unwrap();
    let e = LoraSet::load_with_budget(&[a, b], &ckpt, tight).unwrap_err();
    let s = e.to_string();
    assert_eq!(e.kind(), sdxl_pipeline::ErrorKind::ModelInvalid, "{e:?}");
    assert!(
        s.contains("loha_b") && s.contains("SDXL_MAX_LORA_DELTA_BYTES") && s.contains(MODULE),
        "{s}"
    );
    // Plain LoRAs count their low-rank factors (their full products are formed in row blocks
    // during the merge and never held).
    let tiny = LoraBudget {
        max_delta_bytes: 16,
    };
    let e = LoraSet::load_with_budget(
        &[write(dir.path(), "plain", &good_module(&ckpt))],
        &ckpt,
        tiny,
    )
    .unwrap_err();
    assert!(e.to_string().contains("over the cap"), "{e}");
}
