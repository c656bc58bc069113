//! Checkpoint loading: single file (+ config dir) vs diffusers dir give identical tensors for every
//! parameter of all four components; bad files give typed errors naming file and tensor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use sdxl_pipeline::checkpoint::{Checkpoint, Component, ModelSource};
use sdxl_pipeline::PipelineError;

mod model_support;
use model_support::{max_abs_diff, tiny_dir, tiny_single, FIXTURES};
fn open_single(path: &Path) -> sdxl_pipeline::Result<Checkpoint> {
    Checkpoint::open(&ModelSource::SingleFile {
        path: path.to_path_buf(),
        config_dir: Some(tiny_dir()),
    })
}

#[test]
fn single_file_and_diffusers_dir_give_identical_tensors() {
    let dir = Checkpoint::open(&ModelSource::DiffusersDir(tiny_dir())).unwrap();
    let single = open_single(&tiny_single()).unwrap();
    assert_eq!(dir.configs(), single.configs());
    let mut total = 0;
    for c in Component::ALL {
        let names = dir.parameter_names(c);
        assert!(!names.is_empty(), "{c:?}");
        assert_eq!(
            names,
            single.parameter_names(c),
            "{c:?}: name/shape sets differ"
        );
        for dtype in [DType::F32, DType::F16] {
            let a = dir.var_builder(c, dtype, &Device::Cpu).unwrap();
            let b = single.var_builder(c, dtype, &Device::Cpu).unwrap();
            for (name, shape) in &names {
                let x = a.get(shape.as_slice(), name).unwrap();
                let y = b.get(shape.as_slice(), name).unwrap();
                assert_eq!(x.dtype(), dtype);
                let d = max_abs_diff(&x, &y);
                assert_eq!(d, 0.0, "{c:?} {name} differs by {d}");
            }
        }
        total += names.len();
    }
    // 841 parameters (README §4: all tensors of unet/vae/text_encoder/text_encoder_2).
    assert_eq!(total, 841);
}

#[test]
fn names_of_the_original_layout() {
    let single = open_single(&tiny_single()).unwrap();
    let cases = [
        (
            Component::Unet,
            "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight",
            "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1.to_q.weight",
        ),
        (
            Component::Unet,
            "up_blocks.0.upsamplers.0.conv.weight",
            "model.diffusion_model.output_blocks.2.2.conv.weight",
        ),
        (
            Component::Unet,
            "down_blocks.0.resnets.1.time_emb_proj.bias",
            "model.diffusion_model.input_blocks.2.0.emb_layers.1.bias",
        ),
        (
            Component::Unet,
            "add_embedding.linear_1.weight",
            "model.diffusion_model.label_emb.0.0.weight",
        ),
        (
            Component::Vae,
            "decoder.up_blocks.0.resnets.2.conv_shortcut.weight",
            "",
        ),
        (
            Component::Vae,
            "decoder.up_blocks.1.upsamplers.0.conv.weight",
            "first_stage_model.decoder.up.2.upsample.conv.weight",
        ),
        (
            Component::Vae,
            "encoder.mid_block.attentions.0.to_q.weight",
            "first_stage_model.encoder.mid.attn_1.q.weight",
        ),
        (
            Component::TextEncoder,
            "text_model.encoder.layers.3.self_attn.k_proj.weight",
            "conditioner.embedders.0.transformer.text_model.encoder.layers.3.self_attn.k_proj.weight",
        ),
        (
            Component::TextEncoder2,
            "text_model.encoder.layers.2.self_attn.v_proj.bias",
            "conditioner.embedders.1.model.transformer.resblocks.2.attn.in_proj_bias",
        ),
        (
            Component::TextEncoder2,
            "text_projection.weight",
            "conditioner.embedders.1.model.text_projection",
        ),
    ];
    for (c, diffusers, original) in cases {
        let got = single.original_name(c, diffusers);
        if original.is_empty() {
            assert_eq!(got, None, "{diffusers}");
        } else {
            assert_eq!(got.as_deref(), Some(original), "{diffusers}");
        }
    }
    // Position ids and logit_scale are buffers, not parameters.
    for c in [Component::TextEncoder, Component::TextEncoder2] {
        assert!(single
            .parameter_names(c)
            .iter()
            .all(|(n, _)| !n.contains("position_ids") && !n.contains("logit_scale")));
    }
}

#[test]
fn single_file_unet_reproduces_diffusers_output() {
    let e = candle_core::safetensors::load(
        format!("{FIXTURES}/expected/unet.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let unet = open_single(&tiny_single())
        .unwrap()
        .load_unet(DType::F32, &Device::Cpu)
        .unwrap();
    let out = unet
        .forward(
            &e["input.sample"],
            500.0,
            &e["input.encoder_hidden_states"],
            &e["input.text_embeds"],
            &e["input.time_ids"],
        )
        .unwrap();
    let d = (out - &e["out"]).unwrap().abs().unwrap().max_all().unwrap();
    assert!(d.to_scalar::<f32>().unwrap() < 1e-4);
}

// ------------------------------------------------------------------ bad files

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn expect_model_invalid(path: &Path) -> String {
    match open_single(path) {
        Err(e @ PipelineError::ModelInvalid { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            msg
        }
        other => panic!("{}: expected ModelInvalid, got {other:?}", path.display()),
    }
}

#[test]
fn non_safetensors_files_are_model_invalid() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    expect_model_invalid(&write(d, "empty.safetensors", b""));
    expect_model_invalid(&write(
        d,
        "page.safetensors",
        b"<!DOCTYPE html><html><body>Please log in to download this model</body></html>",
    ));
    expect_model_invalid(&write(d, "api.safetensors", br#"{"error":"not found"}"#));
    // Header length that points far past the end.
    let mut huge = (1u64 << 40).to_le_bytes().to_vec();
    huge.extend_from_slice(b"{}");
    expect_model_invalid(&write(d, "huge.safetensors", &huge));
    // A valid length but garbage JSON.
    let mut junk = 10u64.to_le_bytes().to_vec();
    junk.extend_from_slice(b"{not json}");
    expect_model_invalid(&write(d, "junk.safetensors", &junk));
    // Truncated download: data section cut in half.
    let full = std::fs::read(tiny_single()).unwrap();
    let msg = expect_model_invalid(&write(d, "cut.safetensors", &full[..full.len() / 2]));
    assert!(msg.contains("truncated"), "{msg}");
    // A file that is no SDXL checkpoint at all (valid safetensors without UNet keys).
    let mut other = HashMap::new();
    other.insert(
        "weight".to_string(),
        Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap(),
    );
    let p = d.join("other.safetensors");
    candle_core::safetensors::save(&other, &p).unwrap();
    expect_model_invalid(&p);
    // Missing file: an I/O error naming it.
    let missing = d.join("missing.safetensors");
    let err = open_single(&missing).unwrap_err();
    assert!(err.to_string().contains("missing.safetensors"), "{err}");
}

/// The tiny single file with `edit` applied to its tensors, written to `dir/name`.
fn edited_single_file(
    dir: &Path,
    name: &str,
    edit: impl FnOnce(&mut HashMap<String, Tensor>),
) -> PathBuf {
    let mut t = candle_core::safetensors::load(tiny_single(), &Device::Cpu).unwrap();
    edit(&mut t);
    let p = dir.join(name);
    candle_core::safetensors::save(&t, &p).unwrap();
    p
}

fn expect_tensor_invalid(err: PipelineError, path: &Path, tensor: &str, reason: &str) {
    match &err {
        PipelineError::TensorInvalid {
            path: p,
            tensor: t,
            reason: r,
        } => {
            assert_eq!(p, path);
            assert_eq!(t, tensor);
            assert!(r.contains(reason), "{err}");
        }
        other => panic!("expected TensorInvalid, got {other:?}"),
    }
}

#[test]
fn bad_tensors_are_tensor_invalid_naming_file_and_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let key = "model.diffusion_model.input_blocks.4.1.proj_in.weight";
    let vae_key = "first_stage_model.decoder.conv_in.weight";

    let p = edited_single_file(tmp.path(), "i64.safetensors", |t| {
        let w = t[key].to_dtype(DType::I64).unwrap();
        t.insert(key.into(), w);
    });
    let err = open_single(&p)
        .unwrap()
        .load_unet(DType::F16, &Device::Cpu)
        .unwrap_err();
    expect_tensor_invalid(err, &p, key, "I64");

    let p = edited_single_file(tmp.path(), "shape.safetensors", |t| {
        let w = t[key].narrow(0, 0, 8).unwrap();
        t.insert(key.into(), w);
    });
    let err = open_single(&p)
        .unwrap()
        .load_unet(DType::F32, &Device::Cpu)
        .unwrap_err();
    expect_tensor_invalid(err, &p, key, "shape");

    let p = edited_single_file(tmp.path(), "missing.safetensors", |t| {
        t.remove(vae_key);
    });
    let ckpt = open_single(&p).unwrap();
    let err = ckpt.load_vae(DType::F32, &Device::Cpu).unwrap_err();
    expect_tensor_invalid(err, &p, "decoder.conv_in.weight", "missing");
    // The UNet of the same file still loads: errors are per tensor, not per file.
    ckpt.load_unet(DType::F32, &Device::Cpu).unwrap();

    // No VAE at all in the file (some CivitAI files): a clear model error for the VAE.
    let p = edited_single_file(tmp.path(), "novae.safetensors", |t| {
        t.retain(|k, _| !k.starts_with("first_stage_model."));
    });
    let err = open_single(&p)
        .unwrap()
        .load_vae(DType::F32, &Device::Cpu)
        .unwrap_err();
    assert!(
        matches!(&err, PipelineError::ModelInvalid { reason, .. } if reason.contains("vae")),
        "{err}"
    );

    // Extra keys (EMA copies, denoiser sigmas) are ignored.
    let p = edited_single_file(tmp.path(), "extra.safetensors", |t| {
        let z = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        t.insert("model_ema.decay".into(), z.clone());
        t.insert("denoiser.sigmas".into(), z.clone());
        t.insert("model.diffusion_model.some_future_block.weight".into(), z);
    });
    open_single(&p)
        .unwrap()
        .load_unet(DType::F32, &Device::Cpu)
        .unwrap();
}

// ------------------------------------------------------------------ full SDXL key set

/// `tests/fixtures/checkpoint/sdxl-keys.txt` (scripts/fixtures/make_sdxl_keylist.py): the real SDXL
/// base single-file layout and the diffusers parameters of the four models.
struct KeyList {
    single: Vec<(String, String, Vec<usize>)>,
    params: HashMap<String, Vec<(String, Vec<usize>)>>,
}

fn parse_shape(s: &str) -> Vec<usize> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(|x| x.parse().unwrap())
        .collect()
}

fn key_list() -> KeyList {
    let text = std::fs::read_to_string(format!("{FIXTURES}/checkpoint/sdxl-keys.txt")).unwrap();
    let mut kl = KeyList {
        single: Vec::new(),
        params: HashMap::new(),
    };
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split(' ').collect();
        match f.as_slice() {
            ["S", key, dtype, shape] => {
                kl.single
                    .push((key.to_string(), dtype.to_string(), parse_shape(shape)))
            }
            ["S", key, dtype] => kl.single.push((key.to_string(), dtype.to_string(), vec![])),
            ["P", comp, name, shape] => kl
                .params
                .entry(comp.to_string())
                .or_default()
                .push((name.to_string(), parse_shape(shape))),
            ["P", comp, name] => kl
                .params
                .entry(comp.to_string())
                .or_default()
                .push((name.to_string(), vec![])),
            _ => panic!("bad line {line}"),
        }
    }
    kl
}

/// A header-only SDXL single file: real names, shapes and dtypes, a sparse (all-zero, unallocated)
/// data section of the full 6.9 GB size.
fn write_sparse_single_file(path: &Path, single: &[(String, String, Vec<usize>)]) -> u64 {
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for (key, dtype, shape) in single {
        let size = match dtype.as_str() {
            "F16" => 2,
            "F32" => 4,
            "I64" => 8,
            other => panic!("{other}"),
        };
        let bytes = shape.iter().product::<usize>() as u64 * size;
        header.insert(
            key.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let json = serde_json::to_vec(&header).unwrap();
    let mut bytes = (json.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&json);
    std::fs::write(path, &bytes).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_len(bytes.len() as u64 + offset).unwrap();
    offset
}

#[test]
fn full_sdxl_key_set_maps_to_every_diffusers_parameter() {
    let kl = key_list();
    assert_eq!(kl.single.len(), 2515);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("sdxl-header-only.safetensors");
    let data = write_sparse_single_file(&path, &kl.single);
    assert!(data > 6_900_000_000);
    let ckpt = Checkpoint::open(&ModelSource::SingleFile {
        path: path.clone(),
        config_dir: None,
    })
    .unwrap();
    let mut total = 0;
    for c in Component::ALL {
        let mut want = kl.params[c.dir_name()].clone();
        want.sort();
        let got = ckpt.parameter_names(c);
        let missing: Vec<_> = want.iter().filter(|w| !got.contains(w)).take(5).collect();
        let extra: Vec<_> = got.iter().filter(|g| !want.contains(g)).take(5).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{c:?}: missing {missing:?}, unexpected {extra:?}"
        );
        assert_eq!(got, want);
        total += got.len();
    }
    // 2515 file tensors − position_ids − logit_scale + 2 × 64 (each of the 32 layers' fused
    // in_proj weight and bias serves q, k and v) = 2641 parameters.
    assert_eq!(total, 2641);
    // The same configs come from the committed diffusers config dir of SDXL base.
    let with_dir = Checkpoint::open(&ModelSource::SingleFile {
        path,
        config_dir: Some(format!("{FIXTURES}/sdxl-base-config").into()),
    })
    .unwrap();
    assert_eq!(with_dir.configs(), ckpt.configs());
}

#[test]
fn deltas_are_added_in_f32_before_the_cast() {
    let ckpt = open_single(&tiny_single()).unwrap();
    let name = "text_model.encoder.layers.1.self_attn.k_proj.weight";
    let shape = ckpt
        .parameter_names(Component::TextEncoder2)
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap()
        .1;
    let delta = Tensor::full(0.25f32, shape.as_slice(), &Device::Cpu).unwrap();
    let deltas = std::sync::Arc::new(HashMap::from([(name.to_string(), delta)]));
    let plain = ckpt
        .var_builder(Component::TextEncoder2, DType::F32, &Device::Cpu)
        .unwrap();
    let merged = ckpt
        .var_builder_with_deltas(Component::TextEncoder2, DType::F32, &Device::Cpu, deltas)
        .unwrap();
    let a = plain.get(shape.as_slice(), name).unwrap();
    let b = merged.get(shape.as_slice(), name).unwrap();
    let d = (b - (a + 0.25).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
    // Other tensors are untouched.
    let q = "text_model.encoder.layers.1.self_attn.q_proj.weight";
    let d = (plain.get(shape.as_slice(), q).unwrap() - merged.get(shape.as_slice(), q).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0);
    assert_eq!(
        ckpt.transform(Component::TextEncoder2, q),
        Some(sdxl_pipeline::checkpoint::Transform::Rows { part: 0, parts: 3 })
    );
}

#[test]
fn missing_tensor_in_a_diffusers_dir_names_the_component_file() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tiny_dir();
    std::fs::copy(
        src.join("model_index.json"),
        tmp.path().join("model_index.json"),
    )
    .unwrap();
    for c in Component::ALL {
        let d = tmp.path().join(c.dir_name());
        std::fs::create_dir_all(&d).unwrap();
        for entry in std::fs::read_dir(src.join(c.dir_name())).unwrap() {
            let p = entry.unwrap().path();
            std::fs::copy(&p, d.join(p.file_name().unwrap())).unwrap();
        }
    }
    let vae_file = tmp.path().join("vae/diffusion_pytorch_model.safetensors");
    let mut t = candle_core::safetensors::load(&vae_file, &Device::Cpu).unwrap();
    t.remove("decoder.conv_out.bias");
    candle_core::safetensors::save(&t, &vae_file).unwrap();
    let ckpt = Checkpoint::open(&ModelSource::DiffusersDir(tmp.path().to_path_buf())).unwrap();
    let err = ckpt.load_vae(DType::F32, &Device::Cpu).unwrap_err();
    expect_tensor_invalid(err, &vae_file, "decoder.conv_out.bias", "missing");
    // A component folder whose weights are an HTML page: ModelInvalid naming that file.
    let te = tmp.path().join("text_encoder/model.safetensors");
    std::fs::write(&te, b"<html>rate limited</html>").unwrap();
    let err = Checkpoint::open(&ModelSource::DiffusersDir(tmp.path().to_path_buf())).unwrap_err();
    assert!(
        matches!(&err, PipelineError::ModelInvalid { path, .. } if path == &te),
        "{err}"
    );
}

#[test]
fn bf16_on_the_cpu_is_refused_before_loading() {
    use sdxl_pipeline::pipeline::{LoadOptions, SdxlModel};
    let options = LoadOptions {
        dtype: DType::BF16,
        ..LoadOptions::default()
    };
    let ckpt = std::sync::Arc::new(open_single(&tiny_single()).unwrap());
    match SdxlModel::load(ckpt, options) {
        Err(PipelineError::InvalidInput(m)) => assert!(m.contains("bf16"), "{m}"),
        Err(e) => panic!("expected InvalidInput, got {e}"),
        Ok(_) => panic!("bf16 on the CPU must be refused"),
    }
}

/// A model file that shrinks after it was opened (a network volume losing data): loading reads
/// with `pread` (on every device; a GPU gets the host buffer copied), so the short read is a
/// typed I/O error naming the file, not a SIGBUS from a mapped page.
#[cfg(target_os = "linux")]
#[test]
fn file_shrinking_after_open_is_a_typed_io_error() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("shrinks.safetensors");
    std::fs::copy(tiny_single(), &path).unwrap();
    let ckpt = open_single(&path).unwrap();
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let err = match ckpt.load_unet(DType::F32, &Device::Cpu) {
        Ok(_) => panic!("loaded a truncated file"),
        Err(e) => e,
    };
    match &err {
        PipelineError::Io { path: p, source } => {
            assert_eq!(p, &path);
            assert_eq!(source.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
        }
        other => panic!("not a typed I/O error: {other:?}"),
    }
}
