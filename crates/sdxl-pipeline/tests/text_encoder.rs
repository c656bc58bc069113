//! Both tiny text encoders vs transformers (expected/text_encoders.safetensors), f32 on CPU.

mod text_support;

use candle_core::{DType, Device, Tensor};
use sdxl_pipeline::text_encoder::ClipTextEncoder;
use sdxl_pipeline::{ErrorKind, PipelineError};
use text_support::{
    assert_close, encoder_from_file, fixture, load, tiny_config, tiny_encoder, ATOL, RTOL,
};

fn ids(key: &str) -> Tensor {
    load("expected/token_ids.safetensors")[key]
        .to_dtype(DType::U32)
        .unwrap()
}

#[test]
fn te1_penultimate_hidden_states_match_transformers() {
    let te1 = tiny_encoder("text_encoder", DType::F32);
    assert_eq!(te1.projection_dim(), None);
    let out = te1.forward(&ids("tokenizer.input_ids"), 2).unwrap();
    assert!(out.pooled.is_none());
    let want =
        &load("expected/text_encoders.safetensors")["text_encoder.penultimate_hidden_states"];
    assert_close("te1 hidden_states[-2]", &out.hidden, want, ATOL, RTOL);
    // clip_skip 1 means the same penultimate layer (bit-identical to clip_skip 2)
    let one = te1.forward(&ids("tokenizer.input_ids"), 1).unwrap();
    assert_close("te1 clip_skip 1 vs 2", &one.hidden, &out.hidden, 0.0, 0.0);
}

#[test]
fn te2_penultimate_hidden_states_and_text_embeds_match_transformers() {
    let te2 = tiny_encoder("text_encoder_2", DType::F32);
    assert_eq!(te2.projection_dim(), Some(32));
    let out = te2.forward(&ids("tokenizer_2.input_ids"), 2).unwrap();
    let expected = load("expected/text_encoders.safetensors");
    assert_close(
        "te2 hidden_states[-2]",
        &out.hidden,
        &expected["text_encoder_2.penultimate_hidden_states"],
        ATOL,
        RTOL,
    );
    assert_close(
        "te2 text_embeds",
        &out.pooled.unwrap(),
        &expected["text_encoder_2.text_embeds"],
        ATOL,
        RTOL,
    );
}

#[test]
fn clip_skip_beyond_the_hidden_states_is_invalid_input() {
    let te1 = tiny_encoder("text_encoder", DType::F32);
    let ids = ids("tokenizer.input_ids").narrow(0, 0, 1).unwrap();
    // 5 layers => hidden_states[-6] (the embeddings) is the deepest one
    assert!(te1.forward(&ids, 6).is_ok());
    let err = te1.forward(&ids, 7).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
}

#[test]
fn half_precision_weights_stay_close_to_f32() {
    let ids1 = ids("tokenizer.input_ids").narrow(0, 0, 4).unwrap();
    let ids2 = ids("tokenizer_2.input_ids").narrow(0, 0, 4).unwrap();
    let expected = load("expected/text_encoders.safetensors");
    let want1 = expected["text_encoder.penultimate_hidden_states"]
        .narrow(0, 0, 4)
        .unwrap();
    let want2 = expected["text_encoder_2.text_embeds"]
        .narrow(0, 0, 4)
        .unwrap();
    // f16 keeps ~3 decimal digits per op, bf16 ~2: loose bounds that still catch a wrong layer.
    for (dtype, tol) in [(DType::F16, 2e-2), (DType::BF16, 1e-1)] {
        let te1 = tiny_encoder("text_encoder", dtype);
        let te2 = tiny_encoder("text_encoder_2", dtype);
        let h = te1.forward(&ids1, 2).unwrap().hidden;
        assert_eq!(h.dtype(), dtype);
        assert_close(&format!("te1 {dtype:?}"), &h, &want1, tol, tol);
        let p = te2.forward(&ids2, 2).unwrap().pooled.unwrap();
        assert_close(&format!("te2 pooled {dtype:?}"), &p, &want2, tol, tol);
    }
}

/// Rewrites the TE1 file with `edit` applied to its tensors and tries to build the encoder.
fn build_edited(
    edit: impl FnOnce(&mut std::collections::HashMap<String, Tensor>),
) -> PipelineError {
    let mut tensors = candle_core::safetensors::load(
        fixture("tiny-sdxl/text_encoder/model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    edit(&mut tensors);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    encoder_from_file(&path, &tiny_config("text_encoder"), DType::F32).unwrap_err()
}

#[test]
fn missing_tensor_error_names_it() {
    let name = "text_model.encoder.layers.3.mlp.fc1.weight";
    let err = build_edited(|t| {
        t.remove(name);
    });
    assert_eq!(err.kind(), ErrorKind::ModelInvalid);
    assert!(err.to_string().contains(name), "{err}");
}

#[test]
fn misshaped_tensor_error_names_it() {
    let name = "text_model.encoder.layers.2.self_attn.k_proj.weight";
    let err = build_edited(|t| {
        t.insert(
            name.into(),
            Tensor::zeros((32, 31), DType::F16, &Device::Cpu).unwrap(),
        );
    });
    assert_eq!(err.kind(), ErrorKind::ModelInvalid);
    let msg = err.to_string();
    assert!(msg.contains(name) && msg.contains("shape"), "{msg}");
}

#[test]
fn misshaped_text_projection_error_names_it() {
    let mut tensors = candle_core::safetensors::load(
        fixture("tiny-sdxl/text_encoder_2/model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let w = tensors["text_projection.weight"]
        .t()
        .unwrap()
        .contiguous()
        .unwrap();
    tensors.insert("text_projection.weight".into(), w);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let err = encoder_from_file(&path, &tiny_config("text_encoder_2"), DType::F32).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ModelInvalid);
    assert!(err.to_string().contains("text_projection.weight"), "{err}");
}

#[test]
fn layer_from_end_follows_spec() {
    assert_eq!(ClipTextEncoder::layer_from_end(1), 2);
    assert_eq!(ClipTextEncoder::layer_from_end(2), 2);
    assert_eq!(ClipTextEncoder::layer_from_end(3), 3);
}
