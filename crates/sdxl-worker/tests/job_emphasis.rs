//! The `emphasis` job field, A1111's `override_settings.emphasis`, and the `Emphasis` infotext
//! key (SPEC §3, §5a).

use sdxl_pipeline::prompt::Emphasis;
use sdxl_worker::error::WorkerError;
use sdxl_worker::handler::StubHandler;
use sdxl_worker::job::{validate, ValidatedJob};
use sdxl_worker::runtime::{infotext, SamplerLabels};
use serde_json::{json, Value};

fn check(input: Value) -> Result<ValidatedJob, WorkerError> {
    validate(&input, &StubHandler::default().catalog)
}

fn info(j: &ValidatedJob) -> String {
    infotext(j, &SamplerLabels::of(j).unwrap(), 0)
}

#[test]
fn emphasis_field_and_override_are_read_and_must_agree() {
    let j = check(json!({"prompt": "a"})).unwrap();
    assert_eq!(j.request.emphasis, Emphasis::Original);
    for (v, want) in [
        ("original", Emphasis::Original),
        ("no_norm", Emphasis::NoNorm),
        ("ignore", Emphasis::Ignore),
        ("none", Emphasis::None),
    ] {
        let j = check(json!({"prompt": "a", "emphasis": v})).unwrap();
        assert_eq!(j.request.emphasis, want);
        assert_eq!(j.parameters()["emphasis"], v);
    }
    for (v, want) in [
        ("Original", Emphasis::Original),
        ("No norm", Emphasis::NoNorm),
        ("Ignore", Emphasis::Ignore),
        ("None", Emphasis::None),
    ] {
        let j = check(json!({"prompt": "a", "override_settings": {"emphasis": v}})).unwrap();
        assert_eq!(j.request.emphasis, want);
        assert!(j.warnings.is_empty(), "{:?}", j.warnings);
    }
    let j = check(
        json!({"prompt": "a", "emphasis": "no_norm", "override_settings": {"emphasis": "No norm"}}),
    )
    .unwrap();
    assert_eq!(j.request.emphasis, Emphasis::NoNorm);
    for bad in [
        json!({"prompt": "a", "emphasis": "strong"}),
        json!({"prompt": "a", "emphasis": 1}),
        json!({"prompt": "a", "emphasis": "none", "override_settings": {"emphasis": "Original"}}),
    ] {
        let e = check(bad.clone()).unwrap_err();
        assert!(matches!(e, WorkerError::InvalidInput(_)), "{bad}: {e:?}");
        assert!(e.to_string().contains("emphasis"), "{e}");
    }
}

#[test]
fn infotext_keeps_the_prompt_and_names_a_non_default_emphasis_like_a1111() {
    let prompt = "a (cat:1.2) [on:under:0.5] a mat BREAK x";
    let j =
        check(json!({"prompt": prompt, "seed": 1, "loras": [], "emphasis": "no_norm"})).unwrap();
    let text = info(&j);
    assert!(text.starts_with(&format!("{prompt}\n")), "{text}");
    assert!(text.contains("Emphasis: No norm"), "{text}");
    // Original (default) is never written, nor a mode when no schedule text has `(` or `[`.
    let j = check(json!({"prompt": prompt, "seed": 1, "loras": []})).unwrap();
    assert!(!info(&j).contains("Emphasis"));
    let j = check(json!({"prompt": "[a:b:3] c", "seed": 1, "loras": [], "emphasis": "ignore"}))
        .unwrap();
    assert!(!info(&j).contains("Emphasis"), "{}", info(&j));
    let j = check(json!({"prompt": "c", "negative_prompt": "[x]", "seed": 1, "loras": [], "emphasis": "none"}))
        .unwrap();
    assert!(info(&j).contains("Emphasis: None"), "{}", info(&j));
}
