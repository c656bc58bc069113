//! `<lora:...>` prompt tags (SPEC §5a): A1111 1.10's `extra_networks.parse_prompt` and the Lora
//! extension's multipliers, the combination with the `loras` field and models.toml defaults,
//! and the error codes for unknown names and other extra networks.

use sdxl_worker::catalog::{Catalog, LoraSpec};
use sdxl_worker::error::ErrorCode;
use sdxl_worker::job::{validate, ValidatedJob, MAX_LORAS};
use sdxl_worker::models::ModelsConfig;
use sdxl_worker::prompt_tags::{encoded_prompt, parse_prompt, python_float};
use serde_json::{json, Value};
use std::path::Path;

const MODELS: &str = r#"
[[checkpoints]]
name = "Base"
url = "https://example.com/base.safetensors"

[[loras]]
name = "Detail Tweaker XL"
url = "https://civitai.com/api/download/models/135867"
filename = "detail_tweaker_xl.safetensors"
scale = 1.5

[[loras]]
name = "Pixel Art"
path = "/models/pixel-art-xl.safetensors"
scale = 0.7

[[loras]]
name = "My style"
url = "https://example.com/s.safetensors"
filename = "My Style v2.safetensors"
"#;

fn catalog() -> Catalog {
    let cfg = ModelsConfig::from_toml_str(MODELS, Path::new("/m/models.toml")).expect("toml");
    Catalog::from_models(&cfg)
}

fn ok(input: Value) -> ValidatedJob {
    validate(&input, &catalog()).unwrap_or_else(|e| panic!("{input} rejected: {e}"))
}

fn err(input: Value) -> (ErrorCode, String) {
    match validate(&input, &catalog()) {
        Ok(j) => panic!("{input} accepted: {:?}", j.loras),
        Err(e) => (e.code(), e.to_string()),
    }
}

fn spec(name: &str, scale: f64, te: Option<f64>) -> LoraSpec {
    LoraSpec {
        name: name.into(),
        scale,
        te_scale: te,
    }
}

fn items(prompt: &str) -> Vec<(String, Vec<String>)> {
    parse_prompt(prompt)
        .1
        .into_iter()
        .map(|t| (t.kind, t.items))
        .collect()
}

// ------------------------------------------------------------------ A1111's regex

#[test]
fn a1111_docstring_example() {
    // modules/extra_networks.py ExtraNetwork.activate docstring.
    let p = "1girl, <hypernet:agm:1.1> <extrasupernet:master:12:13:14> <hypernet:ray>";
    let (text, _) = parse_prompt(p);
    assert_eq!(text, "1girl,   ");
    assert_eq!(
        items(p),
        vec![
            (
                "hypernet".to_string(),
                vec!["agm".to_string(), "1.1".into()]
            ),
            (
                "extrasupernet".to_string(),
                vec!["master".to_string(), "12".into(), "13".into(), "14".into()]
            ),
            ("hypernet".to_string(), vec!["ray".to_string()]),
        ]
    );
}

#[test]
fn tags_are_replaced_by_nothing() {
    assert_eq!(
        parse_prompt("a <lora:x:0.5> b").0,
        "a  b",
        "re.sub(..., '') keeps both spaces"
    );
    assert_eq!(parse_prompt("<lora:x>tail").0, "tail");
    assert_eq!(parse_prompt("<<lora:x:1>>").0, "<>");
    assert_eq!(parse_prompt("no tags at all").0, "no tags at all");
}

#[test]
fn what_the_regex_does_not_match_stays_text() {
    for p in [
        "<lora:>",        // [^>]+ needs one character
        "< lora:x:1>",    // \w+ must follow '<'
        "<lora x:1>",     // \w+ then ':'
        "<:x:1>",         // empty kind
        "<lora:x:1",      // no closing '>'
        "a > b < c",      // plain brackets
        "(emphasis:1.2)", // A1111 emphasis is not a tag
        "[from:to:0.5]",
        "<lo-ra:x>", // '-' is not \w
    ] {
        let (text, tags) = parse_prompt(p);
        assert_eq!(text, p, "{p}");
        assert!(tags.is_empty(), "{p}");
    }
}

#[test]
fn weird_input_follows_the_regex() {
    // [^>]+ runs over '<' and newlines up to the first '>'.
    assert_eq!(
        items("<lora:a<lora:b:1>"),
        vec![(
            "lora".to_string(),
            vec!["a<lora".to_string(), "b".into(), "1".into()]
        )]
    );
    assert_eq!(
        items("<lora:x\n:1>"),
        vec![("lora".to_string(), vec!["x\n".to_string(), "1".into()])]
    );
    // Python 3's \w is Unicode.
    assert_eq!(items("<лора_1:x>")[0].0, "лора_1");
    // A backslash does not escape a tag (A1111's regex ignores it); it stays in the text.
    assert_eq!(parse_prompt(r"a \<lora:x:1> b").0, r"a \ b");
    assert_eq!(parse_prompt(r"a \(b\) <lora:x:1>").0, r"a \(b\) ");
    // Multi-byte text around tags survives.
    assert_eq!(parse_prompt("日本<lora:x:1>語").0, "日本語");
}

#[test]
fn python_float_rules() {
    assert_eq!(python_float(" 0.8 "), Some(0.8));
    assert_eq!(python_float("1e-1"), Some(0.1));
    assert_eq!(python_float("+.5"), Some(0.5));
    assert_eq!(python_float("1_0"), Some(10.0));
    assert_eq!(python_float("1__0"), None);
    assert_eq!(python_float("_1"), None);
    assert_eq!(python_float(""), None);
    assert_eq!(python_float("abc"), None);
    assert!(python_float("nan").is_some_and(f64::is_nan));
}

// ------------------------------------------------------------------ the job's LoRA set

#[test]
fn a_tag_adds_a_lora_with_weight_default_one() {
    let j = ok(json!({"prompt": "a cat <lora:Pixel Art>", "loras": []}));
    assert_eq!(j.loras, vec![spec("Pixel Art", 1.0, None)]);
    // The request keeps the prompt as written (infotext); the encoders get it without tags.
    assert_eq!(j.request.prompt, "a cat <lora:Pixel Art>");
    assert_eq!(encoded_prompt(&j.request.prompt), "a cat ");
}

#[test]
fn tags_add_to_the_models_toml_defaults_and_replace_scales() {
    // No `loras` field: the defaults (every models.toml LoRA), then the tags.
    let j = ok(json!({"prompt": "x <lora:Detail Tweaker XL:0.25>"}));
    assert_eq!(
        j.loras,
        vec![
            spec("Detail Tweaker XL", 0.25, None),
            spec("Pixel Art", 0.7, None),
            spec("My style", 1.0, None),
        ]
    );
    // A `loras` field replaces the defaults; tags replace a listed LoRA's scale or append.
    let j = ok(json!({
        "prompt": "x <lora:Pixel Art:-1> <lora:My style:0.5:1.5>",
        "loras": [{"name": "Pixel Art", "scale": 2.0}]
    }));
    assert_eq!(
        j.loras,
        vec![
            spec("Pixel Art", -1.0, None),
            spec("My style", 1.5, Some(0.5))
        ]
    );
    assert_eq!(
        j.parameters()["loras"],
        json!([{"name": "Pixel Art", "scale": -1.0}, {"name": "My style", "scale": 1.5, "te_scale": 0.5}])
    );
}

#[test]
fn the_last_tag_for_a_lora_wins_and_many_tags_are_fine() {
    let mut prompt = String::from("x");
    for i in 0..200 {
        prompt.push_str(&format!(" <lora:Pixel Art:{}>", f64::from(i % 8) / 4.0));
    }
    prompt.push_str(" <lora:Pixel Art:0.3>");
    let j = ok(json!({"prompt": prompt, "loras": []}));
    assert_eq!(j.loras, vec![spec("Pixel Art", 0.3, None)]);
    assert_eq!(j.lora_tags.len(), 201);
}

#[test]
fn file_stems_and_case_resolve_to_catalog_names() {
    let j = ok(json!({
        "prompt": "<lora:detail_tweaker_xl:0.5> <lora:pixel-art-xl:0.5> <lora:My Style v2> <lora:PIXEL ART:0.1>",
        "loras": []
    }));
    assert_eq!(
        j.loras,
        vec![
            spec("Detail Tweaker XL", 0.5, None),
            spec("Pixel Art", 0.1, None),
            spec("My style", 1.0, None)
        ]
    );
    // The names as written are kept for `Lora hashes`.
    let written: Vec<&str> = j.lora_tags.iter().map(|t| t.written.as_str()).collect();
    assert_eq!(
        written,
        [
            "detail_tweaker_xl",
            "pixel-art-xl",
            "My Style v2",
            "PIXEL ART"
        ]
    );
}

#[test]
fn te_and_unet_weights_follow_the_lora_extension() {
    let cases: &[(&str, f64, Option<f64>)] = &[
        ("<lora:Pixel Art:0.8>", 0.8, None),
        ("<lora:Pixel Art:0.8:0.8>", 0.8, None),
        ("<lora:Pixel Art:0.2:1.4>", 1.4, Some(0.2)),
        ("<lora:Pixel Art:te=0.5:unet=1>", 1.0, Some(0.5)),
        ("<lora:Pixel Art:0.7:unet=0.2>", 0.2, Some(0.7)),
        ("<lora:Pixel Art:unet=0.2>", 0.2, Some(1.0)),
        ("<lora:Pixel Art:te=0.3>", 0.3, None), // unet defaults to te
        ("<lora:Pixel Art:0.1:te=0.9>", 0.9, None), // te= wins over positional
    ];
    for (tag, unet, te) in cases {
        let j = ok(json!({"prompt": format!("a {tag}"), "loras": []}));
        assert_eq!(j.loras, vec![spec("Pixel Art", *unet, *te)], "{tag}");
    }
}

#[test]
fn unknown_names_are_unknown_model() {
    let (code, msg) = err(json!({"prompt": "a <lora:Nope:0.5>"}));
    assert_eq!(code, ErrorCode::UnknownModel);
    assert!(
        msg.contains("\"Nope\"") && msg.contains("Detail Tweaker XL"),
        "{msg}"
    );
    // Spaces inside the tag are part of the name, as in A1111.
    let (code, _) = err(json!({"prompt": "a <lora: Pixel Art :0.5>"}));
    assert_eq!(code, ErrorCode::UnknownModel);
    // A path is never a name.
    let (code, _) = err(json!({"prompt": "<lora:/models/pixel-art-xl.safetensors:1>"}));
    assert_eq!(code, ErrorCode::UnknownModel);
}

#[test]
fn other_extra_networks_and_unsupported_arguments_are_invalid_input() {
    for (prompt, needle) in [
        ("a <hypernet:agm:1.1>", "hypernet"),
        ("a <lyco:x:1>", "lyco"),
        ("a <lora:Pixel Art:0.3:0.6:8>", "fourth argument"),
        ("a <lora:Pixel Art:1:dyn=8>", "dyn"),
        ("a <lora:Pixel Art:1:lbw=OUTD>", "lbw"),
        ("a <lora:Pixel Art:abc>", "weight"),
        ("a <lora:Pixel Art:nan>", "weight"),
        ("a <lora:Pixel Art:4.5>", "weight"),
        ("a <lora:Pixel Art:1:inf>", "UNet weight"),
        ("a <lora:Pixel Art:te=x>", "te"),
        ("a <lora::1>", "unknown LoRA"),
    ] {
        let (code, msg) = err(json!({"prompt": prompt}));
        let expect = if needle == "unknown LoRA" {
            ErrorCode::UnknownModel
        } else {
            ErrorCode::InvalidInput
        };
        assert_eq!(code, expect, "{prompt}: {msg}");
        assert!(msg.contains(needle), "{prompt}: {msg}");
    }
    // An unknown name next to a syntax problem: INVALID_INPUT, both listed.
    let (code, msg) = err(json!({"prompt": "<lora:Nope> <hypernet:x>"}));
    assert_eq!(code, ErrorCode::InvalidInput);
    assert!(msg.contains("2 problems"), "{msg}");
}

#[test]
fn too_many_loras_after_tags_is_refused() {
    let toml = (0..=MAX_LORAS)
        .map(|i| format!("[[loras]]\nname = \"L{i}\"\npath = \"/l/{i}.safetensors\"\n"))
        .collect::<String>();
    let cfg = ModelsConfig::from_toml_str(
        &format!("[[checkpoints]]\nname = \"B\"\npath = \"/b.safetensors\"\n{toml}"),
        Path::new("/m.toml"),
    )
    .expect("toml");
    let catalog = Catalog::from_models(&cfg);
    let prompt: String = (0..=MAX_LORAS).map(|i| format!("<lora:L{i}>")).collect();
    let e = validate(&json!({"prompt": prompt, "loras": []}), &catalog).expect_err("too many");
    assert_eq!(e.code(), ErrorCode::InvalidInput);
    assert!(e.to_string().contains("at most 16"), "{e}");
}

#[test]
fn tags_in_the_negative_prompt_are_text_with_a_warning() {
    let j = ok(json!({"prompt": "a", "negative_prompt": "ugly <lora:Pixel Art:1>", "loras": []}));
    assert!(j.loras.is_empty());
    assert_eq!(
        j.request.negative_prompt.as_deref(),
        Some("ugly <lora:Pixel Art:1>")
    );
    assert!(
        j.warnings.iter().any(|w| w.contains("negative_prompt")),
        "{:?}",
        j.warnings
    );
    // An unknown name there is not an error (A1111 never parses it).
    ok(json!({"prompt": "a", "negative_prompt": "<lora:Nope:1> <hypernet:x>"}));
}
