//! A1111 prompt syntax (SPEC §5a) vs the Python port of A1111 1.10
//! (`scripts/fixtures/make_prompt_syntax_fixtures.py`, fixtures in `tests/fixtures/prompt_syntax/`):
//! schedules (lark's own parse) and `parse_prompt_attention` on a corpus of prompts, and the
//! encodings (emphasis modes, BREAK, prompt editing, alternation, textual-inversion embeddings,
//! both prompt modes) of the tiny text encoders in f32, at the tolerance of the other prompt tests.

mod text_support;

use std::path::Path;
use std::sync::OnceLock;

use candle_core::DType;
use sdxl_pipeline::embedding::TextualInversion;
use sdxl_pipeline::prompt::{
    entry_index, parse_prompt_attention, prompt_schedule, prompt_schedule_hires, schedule_steps,
    Emphasis, PromptEncoder, PromptMode, PromptOptions,
};
use serde_json::Value;
use text_support::{assert_close, fixture, load, metadata, tiny_encoder, ATOL, RTOL};

fn encoder() -> &'static PromptEncoder {
    static ENCODER: OnceLock<PromptEncoder> = OnceLock::new();
    ENCODER.get_or_init(|| {
        let mut enc = PromptEncoder::new(
            tiny_encoder("text_encoder", DType::F32),
            tiny_encoder("text_encoder_2", DType::F32),
        )
        .unwrap();
        let path = fixture("prompt_syntax/tinyemb.safetensors");
        let emb = TextualInversion::load(Path::new(&path), "tinyemb").unwrap();
        enc.set_embeddings(vec![emb]).unwrap();
        enc
    })
}

#[test]
fn schedules_and_emphasis_segments_match_a1111_on_a_corpus() {
    let text = std::fs::read_to_string(fixture("prompt_syntax/schedules.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.len() > 300);
    let mut scheduled = 0;
    for case in cases {
        let prompt = case["prompt"].as_str().unwrap();
        let steps = case["steps"].as_u64().unwrap() as usize;
        let want = case["schedule"].as_array().unwrap();
        let got = prompt_schedule(prompt, steps);
        let got_pairs: Vec<(u64, &str)> = got
            .iter()
            .map(|e| (e.end_at_step as u64, e.text.as_str()))
            .collect();
        let want_pairs: Vec<(u64, &str)> = want
            .iter()
            .map(|e| {
                (
                    e["end_at_step"].as_u64().unwrap(),
                    e["text"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got_pairs, want_pairs,
            "schedule of {prompt:?} at {steps} steps"
        );
        if got.len() > 1 {
            scheduled += 1;
        }
        for e in want {
            let text = e["text"].as_str().unwrap();
            let parsed = parse_prompt_attention(text);
            match e["parsed"].as_array() {
                None => assert!(parsed.is_err(), "{text:?} should not parse"),
                Some(segs) => {
                    let got: Vec<(String, f64)> = parsed
                        .unwrap()
                        .into_iter()
                        .map(|s| (s.text, s.weight))
                        .collect();
                    let want: Vec<(String, f64)> = segs
                        .iter()
                        .map(|s| (s[0].as_str().unwrap().to_string(), s[1].as_f64().unwrap()))
                        .collect();
                    // serde_json's float parsing may be 1 ulp off; the unit tests compare the
                    // doctest weights exactly.
                    let same = got.len() == want.len()
                        && got.iter().zip(&want).all(|(g, w)| {
                            g.0 == w.0 && (g.1 - w.1).abs() <= 4.0 * f64::EPSILON * w.1.abs()
                        });
                    assert!(
                        same,
                        "parse_prompt_attention({text:?}): {got:?} vs {want:?}"
                    );
                }
            }
        }
    }
    assert!(
        scheduled > 40,
        "too few scheduled prompts in the corpus: {scheduled}"
    );
}

#[test]
fn encodings_match_the_a1111_port() {
    let enc = encoder();
    let rel = "prompt_syntax/encodings.safetensors";
    let want = load(rel);
    let cases: Value = serde_json::from_str(&metadata(rel, "cases_json")).unwrap();
    let mut worst = (0f32, String::new());
    for (name, case) in cases.as_object().unwrap() {
        let opts = PromptOptions {
            mode: PromptMode::parse(case["mode"].as_str().unwrap()).unwrap(),
            clip_skip: 2,
            emphasis: Emphasis::parse(case["emphasis"].as_str().unwrap()).unwrap(),
            steps: case["steps"].as_u64().unwrap() as usize,
            hires_base_steps: None,
        };
        let negative = case["negative"].as_str();
        let got = enc
            .scheduled_conditioning(case["prompt"].as_str().unwrap(), negative, opts)
            .unwrap();
        let used: Vec<String> = case["used_embeddings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
        assert_eq!(got.used_embeddings, used, "{name}: used embeddings");
        for (tag, sched) in [("cond", &got.cond), ("uncond", &got.uncond)] {
            let key = format!("{name}.{tag}.entries");
            let Some(entries) = want.get(&key) else {
                assert!(negative.is_none());
                continue;
            };
            let entries: Vec<Vec<i64>> = entries.to_vec2().unwrap();
            let got_entries: Vec<Vec<i64>> = sched
                .entries
                .iter()
                .map(|&(end, i)| vec![end as i64, i as i64])
                .collect();
            assert_eq!(got_entries, entries, "{key}");
            for (i, e) in sched.encodings.iter().enumerate() {
                for (part, t) in [("context", &e.context), ("pooled", &e.pooled)] {
                    let k = format!("{name}.{tag}.{i}.{part}");
                    let (err, _) = assert_close(&k, t, &want[&k], ATOL, RTOL);
                    if err > worst.0 {
                        worst = (err, k);
                    }
                }
            }
        }
    }
    eprintln!("max abs error {} at {}", worst.0, worst.1);
}

/// The schedule entries the CFG denoiser uses call by call in the reference renders
/// (`renders/syntax_cases.txt`): A1111's `total_steps` (Heun: twice the steps) and
/// `reconstruct_cond_batch` with the call counter.
#[test]
fn render_call_schedule_matches_a1111() {
    let text = std::fs::read_to_string(fixture("prompt_syntax/render_calls.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    for (name, case) in v.as_object().unwrap() {
        let sampler = case["sampler"].as_str().unwrap();
        let steps = case["steps"].as_u64().unwrap() as usize;
        let choice = sdxl_pipeline::sampling::resolve_sampler(sampler, None).unwrap();
        let total = schedule_steps(steps, choice.second_order);
        assert_eq!(
            total as u64,
            case["schedule_steps"].as_u64().unwrap(),
            "{name}"
        );
        let cond = prompt_schedule(case["prompt"].as_str().unwrap(), total);
        let uncond = prompt_schedule(case["negative"].as_str().unwrap(), total);
        let got: Vec<(usize, usize)> = (0..case["calls"].as_array().unwrap().len())
            .map(|call| (entry_index(&cond, call), entry_index(&uncond, call)))
            .collect();
        let want: Vec<(usize, usize)> = case["calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c[0].as_u64().unwrap() as usize,
                    c[1].as_u64().unwrap() as usize,
                )
            })
            .collect();
        assert_eq!(got, want, "{name}");
    }
}

/// The hires pass's schedules (A1111 `get_learned_conditioning_prompt_schedules(prompts,
/// firstpass_steps, hires_steps)`: editing continues the first pass's timeline), from the same
/// lark port as `schedules.json`.
#[test]
fn hires_schedules_continue_the_first_pass_like_a1111() {
    let text = std::fs::read_to_string(fixture("prompt_syntax/hires_schedules.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.len() > 200);
    let mut differs_from_plain = 0;
    for case in cases {
        let prompt = case["prompt"].as_str().unwrap();
        let base = case["base_steps"].as_u64().unwrap() as usize;
        let hires = case["hires_steps"].as_u64().unwrap() as usize;
        let want: Vec<(usize, &str)> = case["schedule"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["end_at_step"].as_u64().unwrap() as usize,
                    e["text"].as_str().unwrap(),
                )
            })
            .collect();
        let got = prompt_schedule_hires(prompt, base, hires);
        let got: Vec<(usize, &str)> = got
            .iter()
            .map(|e| (e.end_at_step, e.text.as_str()))
            .collect();
        assert_eq!(got, want, "{prompt:?} base {base} hires {hires}");
        let plain = prompt_schedule(prompt, hires);
        if plain
            .iter()
            .map(|e| (e.end_at_step, e.text.as_str()))
            .collect::<Vec<_>>()
            != want
        {
            differs_from_plain += 1;
        }
    }
    // The offsets matter on this corpus (the test fails if they are dropped).
    assert!(differs_from_plain > 20, "{differs_from_plain}");
}
