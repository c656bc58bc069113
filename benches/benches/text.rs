//! Text conditioning: tokenizing + chunking a ~300-token prompt, and encoding a 77-token prompt
//! with the tiny SDXL text encoders (f32, CPU).

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use criterion::{criterion_group, criterion_main, Criterion};
use sdxl_pipeline::prompt::{PromptEncoder, PromptMode, PromptTokenizer};
use sdxl_pipeline::text_encoder::{ClipActivation, ClipTextConfig, ClipTextEncoder};

const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny-sdxl");

const PHRASE: &str =
    "masterpiece, best quality, an intricate oil painting of a sprawling medieval \
    harbor town at golden hour, dozens of wooden sailing ships with patched canvas sails, seagulls \
    circling above crooked timber houses, merchants selling fish, spices, silk and copper pots";

fn prompt_of_about(tokens: usize, tok: &PromptTokenizer) -> String {
    let words: Vec<&str> = PHRASE.split(' ').collect();
    let mut text = String::new();
    for word in words.iter().cycle() {
        if tok.clip_l().content_ids(&text).unwrap().len() >= tokens {
            break;
        }
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(word);
    }
    text
}

/// The tiny text encoders' configs (`tests/fixtures/tiny-sdxl/text_encoder*/config.json`).
fn tiny_config(component: &str) -> ClipTextConfig {
    let (hidden, inter, act, proj) = match component {
        "text_encoder" => (32, 37, ClipActivation::QuickGelu, None),
        _ => (48, 53, ClipActivation::Gelu, Some(32)),
    };
    ClipTextConfig {
        vocab_size: 49408,
        hidden_size: hidden,
        intermediate_size: inter,
        num_hidden_layers: 5,
        num_attention_heads: 4,
        max_position_embeddings: 77,
        hidden_act: act,
        layer_norm_eps: 1e-5,
        projection_dim: proj,
    }
}

fn tiny_encoder(component: &str) -> ClipTextEncoder {
    let cfg = tiny_config(component);
    let path = format!("{TINY}/{component}/model.safetensors");
    // SAFETY: the fixture file is not modified while mapped.
    let vb =
        unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, &Device::Cpu) }.unwrap();
    ClipTextEncoder::new(vb, &cfg).unwrap()
}

fn bench_text(c: &mut Criterion) {
    let tok = PromptTokenizer::new().unwrap();
    let long = prompt_of_about(300, &tok);
    let n = tok.clip_l().content_ids(&long).unwrap().len();
    eprintln!("long prompt: {n} tokens");
    c.bench_function("tokenize_chunk_300_tokens_blend", |b| {
        b.iter(|| {
            tok.chunk(std::hint::black_box(&long), PromptMode::Blend)
                .unwrap()
        })
    });
    c.bench_function("tokenize_chunk_300_tokens_concat", |b| {
        b.iter(|| {
            tok.chunk(std::hint::black_box(&long), PromptMode::Concat)
                .unwrap()
        })
    });

    let enc =
        PromptEncoder::new(tiny_encoder("text_encoder"), tiny_encoder("text_encoder_2")).unwrap();
    let short = "a photo of an astronaut riding a horse on mars, (red hair:1.2), highly detailed";
    c.bench_function("encode_77_tokens_tiny_f32", |b| {
        b.iter(|| {
            enc.encode(std::hint::black_box(short), PromptMode::Blend, 2)
                .unwrap()
        })
    });
}

criterion_group!(benches, bench_text);
criterion_main!(benches);
