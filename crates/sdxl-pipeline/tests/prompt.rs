//! Prompt encoding vs Python references, f32 on CPU:
//! standard = diffusers `encode_prompt` (expected/text_encoders.safetensors);
//! blend / concat / clip_skip 3 / LCM repetition = `prompting.py` (tests/fixtures/prompt/, made by
//! scripts/fixtures/make_prompt_fixtures.py).

mod text_support;

use std::collections::HashMap;
use std::sync::OnceLock;

use candle_core::{DType, Tensor};
use sdxl_pipeline::prompt::{EncodingKind, PromptEncoder, PromptMode};
use text_support::{assert_close, id_rows, load, metadata, tiny_encoder, ATOL, RTOL};

const PIPE_PROMPT: &str =
    "a photo of an astronaut riding a horse on mars, (red hair:1.2), highly detailed";
const PIPE_NEGATIVE: &str = "blurry, low quality, watermark";

/// One encoder shared by all tests (building tokenizers and encoders is the slow part).
fn encoder() -> &'static PromptEncoder {
    static ENCODER: OnceLock<PromptEncoder> = OnceLock::new();
    ENCODER.get_or_init(|| {
        PromptEncoder::new(
            tiny_encoder("text_encoder", DType::F32),
            tiny_encoder("text_encoder_2", DType::F32),
        )
        .unwrap()
    })
}

fn fixture_prompts() -> HashMap<String, String> {
    serde_json::from_str(&metadata(
        "prompt/prompt_encodings.safetensors",
        "prompts_json",
    ))
    .unwrap()
}

/// diffusers' encoding of token_ids row `row` (standard, truncated at 75 tokens): context, pooled.
fn diffusers_row(row: usize) -> (Tensor, Tensor) {
    let e = load("expected/text_encoders.safetensors");
    let h1 = e["text_encoder.penultimate_hidden_states"]
        .narrow(0, row, 1)
        .unwrap();
    let h2 = e["text_encoder_2.penultimate_hidden_states"]
        .narrow(0, row, 1)
        .unwrap();
    let pooled = e["text_encoder_2.text_embeds"].narrow(0, row, 1).unwrap();
    (Tensor::cat(&[h1, h2], 2).unwrap(), pooled)
}

#[test]
fn metadata_strings_match_the_constants() {
    assert_eq!(
        metadata("expected/text_encoders.safetensors", "encode_prompt_prompt"),
        PIPE_PROMPT
    );
    assert_eq!(
        metadata(
            "expected/text_encoders.safetensors",
            "encode_prompt_negative"
        ),
        PIPE_NEGATIVE
    );
}

#[test]
fn standard_conditioning_matches_diffusers_encode_prompt() {
    let enc = encoder();
    let e = load("expected/text_encoders.safetensors");
    for mode in [PromptMode::Blend, PromptMode::Concat] {
        let c = enc
            .conditioning(PIPE_PROMPT, Some(PIPE_NEGATIVE), mode, 2)
            .unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_close(
            "prompt_embeds",
            &c.cond.context,
            &e["encode_prompt.prompt_embeds"],
            ATOL,
            RTOL,
        );
        assert_close(
            "pooled_prompt_embeds",
            &c.cond.pooled,
            &e["encode_prompt.pooled_prompt_embeds"],
            ATOL,
            RTOL,
        );
        assert_close(
            "negative_prompt_embeds",
            &c.uncond.context,
            &e["encode_prompt.negative_prompt_embeds"],
            ATOL,
            RTOL,
        );
        assert_close(
            "negative_pooled_prompt_embeds",
            &c.uncond.pooled,
            &e["encode_prompt.negative_pooled_prompt_embeds"],
            ATOL,
            RTOL,
        );
    }
}

#[test]
fn absent_or_empty_negative_is_zero_like_diffusers() {
    let enc = encoder();
    let e = load("expected/text_encoders.safetensors");
    for negative in [None, Some("")] {
        let c = enc
            .conditioning(PIPE_PROMPT, negative, PromptMode::Blend, 2)
            .unwrap();
        assert_close(
            "no_negative.negative_prompt_embeds",
            &c.uncond.context,
            &e["encode_prompt.no_negative.negative_prompt_embeds"],
            0.0,
            0.0,
        );
        assert_close(
            "no_negative.negative_pooled_prompt_embeds",
            &c.uncond.pooled,
            &e["encode_prompt.no_negative.negative_pooled_prompt_embeds"],
            0.0,
            0.0,
        );
    }
}

#[test]
fn empty_positive_prompt_is_encoded_normally() {
    let enc = encoder();
    let (got, warnings) = enc.encode("", PromptMode::Blend, 2).unwrap();
    assert!(warnings.is_empty());
    let (ctx, pooled) = diffusers_row(1); // row 1 of token_ids is ""
    assert_close("empty prompt context", &got.context, &ctx, ATOL, RTOL);
    assert_close("empty prompt pooled", &got.pooled, &pooled, ATOL, RTOL);
}

/// Checks `encode(prompt, mode, clip_skip)` and its chunk rows against fixture entry `name`.
fn check_case(name: &str, prompt_key: &str, mode: PromptMode, clip_skip: u32, kind: EncodingKind) {
    let enc = encoder();
    let fx = load("prompt/prompt_encodings.safetensors");
    let prompt = &fixture_prompts()[prompt_key];
    let chunked = enc.tokenizer().chunk(prompt, mode).unwrap();
    assert_eq!(chunked.kind, kind);
    assert_eq!(
        chunked.ids1,
        id_rows(&fx[&format!("{name}.ids1")]),
        "{name} ids1"
    );
    assert_eq!(
        chunked.ids2,
        id_rows(&fx[&format!("{name}.ids2")]),
        "{name} ids2"
    );
    let (got, warnings) = enc.encode(prompt, mode, clip_skip).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_close(
        &format!("{name}.context"),
        &got.context,
        &fx[&format!("{name}.context")],
        ATOL,
        RTOL,
    );
    assert_close(
        &format!("{name}.pooled"),
        &got.pooled,
        &fx[&format!("{name}.pooled")],
        ATOL,
        RTOL,
    );
}

#[test]
fn blend_long_prompt_matches_reference() {
    check_case(
        "blend.long.cs2",
        "long",
        PromptMode::Blend,
        2,
        EncodingKind::Blend,
    );
}

#[test]
fn blend_160_token_prompt_matches_reference() {
    check_case(
        "blend.mid.cs2",
        "mid",
        PromptMode::Blend,
        2,
        EncodingKind::Blend,
    );
}

#[test]
fn blend_clip_skip_3_matches_reference() {
    check_case(
        "blend.long.cs3",
        "long",
        PromptMode::Blend,
        3,
        EncodingKind::Blend,
    );
}

#[test]
fn concat_long_prompt_matches_reference() {
    check_case(
        "concat.long.cs2",
        "long",
        PromptMode::Concat,
        2,
        EncodingKind::Concat,
    );
}

#[test]
fn concat_conditioning_with_different_chunk_counts_repeats_to_lcm() {
    let enc = encoder();
    let fx = load("prompt/prompt_encodings.safetensors");
    let prompts = fixture_prompts();
    let c = enc
        .conditioning(
            &prompts["mid"],
            Some(&prompts["negative_short"]),
            PromptMode::Concat,
            3,
        )
        .unwrap();
    assert_eq!(c.cond.context.dims(), &[1, 231, 80]);
    let key = "conditioning.concat.mid_vs_short.cs3";
    for (tag, got) in [("cond", &c.cond), ("uncond", &c.uncond)] {
        assert_close(
            &format!("{key}.{tag}.context"),
            &got.context,
            &fx[&format!("{key}.{tag}.context")],
            ATOL,
            RTOL,
        );
        assert_close(
            &format!("{key}.{tag}.pooled"),
            &got.pooled,
            &fx[&format!("{key}.{tag}.pooled")],
            ATOL,
            RTOL,
        );
    }
}

#[test]
fn concat_without_negative_gives_zeros_of_the_prompt_length() {
    let enc = encoder();
    let prompt = &fixture_prompts()["long"];
    let c = enc
        .conditioning(prompt, None, PromptMode::Concat, 2)
        .unwrap();
    assert_eq!(c.cond.context.dims(), &[1, 231, 80]);
    assert_eq!(c.uncond.context.dims(), &[1, 231, 80]);
    let sum = c
        .uncond
        .context
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let psum = c
        .uncond
        .pooled
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!((sum, psum), (0.0, 0.0));
}

#[test]
fn concat_chunk_boundaries_follow_a1111_comma_backtrack() {
    let enc = encoder();
    let fx = load("prompt/concat_chunks.safetensors");
    let prompts: HashMap<String, String> = serde_json::from_str(&metadata(
        "prompt/concat_chunks.safetensors",
        "prompts_json",
    ))
    .unwrap();
    for key in ["long", "mid", "no_comma", "far_comma"] {
        let chunked = enc
            .tokenizer()
            .chunk(&prompts[key], PromptMode::Concat)
            .unwrap();
        assert_eq!(
            chunked.ids1,
            id_rows(&fx[&format!("{key}.ids1")]),
            "{key} ids1"
        );
        assert_eq!(
            chunked.ids2,
            id_rows(&fx[&format!("{key}.ids2")]),
            "{key} ids2"
        );
    }
    // the "mid" prompt really backtracks (first chunk shorter than 75)
    let lens = fx["mid.chunk_lens"].to_vec1::<i64>().unwrap();
    assert_eq!(lens, vec![69, 71, 23]);
}

#[test]
fn failing_long_prompt_falls_back_to_first_77_tokens_with_a_warning() {
    let enc = encoder().clone().with_max_chunks(2);
    let prompt = &fixture_prompts()["long"]; // 181 tokens = 3 chunks
    let (got, warnings) = enc.encode(prompt, PromptMode::Blend, 2).unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("first 75 tokens"), "{warnings:?}");
    // diffusers truncates the same prompt (token_ids row 8) to 77 tokens
    let (ctx, pooled) = diffusers_row(8);
    assert_close("fallback context", &got.context, &ctx, ATOL, RTOL);
    assert_close("fallback pooled", &got.pooled, &pooled, ATOL, RTOL);
}

#[test]
fn tokenizer_2_bang_tokens_keep_chunk_counts_aligned() {
    let enc = encoder();
    // tokenizer 1: 73 × cat, wow, `!!!!!!` (≤ 75 ids); tokenizer 2: every `!` is an id (> 75 ids).
    let prompt = format!("{} wow!!!!!!", vec!["cat"; 73].join(" "));
    let chunked = enc.tokenizer().chunk(&prompt, PromptMode::Blend).unwrap();
    assert_eq!(chunked.kind, EncodingKind::Standard);
    assert_eq!(chunked.warnings.len(), 1, "{:?}", chunked.warnings);
    assert_eq!((chunked.ids1.len(), chunked.ids2.len()), (1, 1));
    for mode in [PromptMode::Blend, PromptMode::Concat] {
        let prompt = format!("{} wow!!!!!!", vec!["cat"; 148].join(" "));
        let chunked = enc.tokenizer().chunk(&prompt, mode).unwrap();
        assert_eq!((chunked.ids1.len(), chunked.ids2.len()), (2, 2));
        assert_eq!(chunked.warnings.len(), 1, "{:?}", chunked.warnings);
        let (got, _) = enc.encode(&prompt, mode, 2).unwrap();
        assert_eq!(got.context.dims()[1] % 77, 0);
    }
}

#[test]
fn prompt_tokenizer_rows_match_hf_for_all_fixture_prompts() {
    let tok = sdxl_pipeline::prompt::PromptTokenizer::new().unwrap();
    let expected = load("expected/token_ids.safetensors");
    let want1 = id_rows(&expected["tokenizer.input_ids"]);
    let want2 = id_rows(&expected["tokenizer_2.input_ids"]);
    for (i, prompt) in text_support::token_id_prompts().iter().enumerate() {
        let rows = tok.truncated(prompt).unwrap();
        assert_eq!(rows.ids1, vec![want1[i].clone()], "row {i}: {prompt:?}");
        assert_eq!(rows.ids2, vec![want2[i].clone()], "row {i}: {prompt:?}");
    }
}
