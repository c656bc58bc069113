//! models.toml parsing: the shipped file, precise error messages, env overrides.

use sdxl_worker::models::{AuthKind, ModelsConfig, ModelsError, Prediction, Source};
use std::path::{Path, PathBuf};

const ORIGIN: &str = "/etc/sdxl/models.toml";

fn parse(text: &str) -> Result<ModelsConfig, ModelsError> {
    ModelsConfig::from_toml_str(text, Path::new(ORIGIN))
}

fn err(text: &str) -> String {
    match parse(text) {
        Ok(cfg) => panic!("expected an error, got {cfg:?}"),
        Err(e) => e.to_string(),
    }
}

const ONE: &str = r#"
[[checkpoints]]
name = "A"
url = "https://civitai.com/api/download/models/1"
"#;

#[test]
fn shipped_models_toml_matches_spec() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../models.toml");
    let text = std::fs::read_to_string(path).unwrap();
    let cfg = ModelsConfig::from_toml_str(&text, Path::new(path)).unwrap();
    let ck = cfg.default_checkpoint();
    assert_eq!(ck.name, "Jib Mix Illustrious Realistic");
    assert!(ck.default);
    assert_eq!(
        ck.source,
        Source::Url("https://civitai.com/api/download/models/1590699".into())
    );
    assert_eq!(ck.filename, "jib_mix_illustrious_realistic_v2.safetensors");
    assert_eq!(ck.sha256, None, "empty sha256 means: not checked");
    assert_eq!(ck.prediction, Prediction::Epsilon);
    assert_eq!(cfg.loras.len(), 1);
    let lora = cfg.lora("Detail Tweaker XL").unwrap();
    assert_eq!(
        lora.source,
        Source::Url("https://civitai.com/api/download/models/135867".into())
    );
    assert_eq!(lora.scale, 1.5);
    // The fp16-fix VAE is the shipped default (SPEC §11: f16 models decode in f16).
    let shipped_vae = cfg
        .vae
        .as_ref()
        .expect("the shipped models.toml names a VAE");
    assert_eq!(
        shipped_vae.source,
        Source::HuggingFace {
            repo: "madebyollin/sdxl-vae-fp16-fix".into(),
            path: None
        }
    );
    assert_eq!(shipped_vae.filename, "diffusion_pytorch_model.safetensors");
    assert!(shipped_vae.fp16_safe);
    // The commented examples must themselves be valid when uncommented.
    let uncommented: String = text
        .lines()
        .map(|l| {
            let t = l.trim_start();
            if t.starts_with("# [")
                || t.starts_with("# name")
                || t.starts_with("# url")
                || t.starts_with("# path")
                || t.starts_with("# filename")
                || t.starts_with("# scale")
                || t.starts_with("# auth")
                || t.starts_with("# source")
                || t.starts_with("# fp16_safe")
            {
                t.trim_start_matches("# ").to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let full = ModelsConfig::from_toml_str(&uncommented, Path::new(path)).unwrap();
    assert_eq!(full.checkpoints.len(), 2);
    assert_eq!(
        full.checkpoint("My local model").unwrap().source,
        Source::Path(PathBuf::from("/models/my_model.safetensors"))
    );
    assert_eq!(full.loras.len(), 3);
    assert_eq!(full.embeddings.len(), 1);
    assert_eq!(full.embeddings[0].name, "negativeXL_D");
    assert_eq!(
        full.lora("Mirrored LoRA").unwrap().auth,
        Some(AuthKind::Civitai)
    );
    let vae = full.vae.unwrap();
    assert_eq!(
        vae.source,
        Source::HuggingFace {
            repo: "madebyollin/sdxl-vae-fp16-fix".into(),
            path: None
        }
    );
    assert_eq!(vae.filename, "diffusion_pytorch_model.safetensors");
    assert!(vae.fp16_safe);
}

#[test]
fn vae_fp16_safe_defaults_to_true_and_belongs_to_the_vae_only() {
    let with_vae = |extra: &str| format!("{ONE}\n[vae]\nsource = \"hf:o/r\"\n{extra}");
    assert!(parse(&with_vae("")).unwrap().vae.unwrap().fp16_safe);
    assert!(
        !parse(&with_vae("fp16_safe = false"))
            .unwrap()
            .vae
            .unwrap()
            .fp16_safe
    );
    let e = err(&format!("{ONE}fp16_safe = true\n"));
    assert_eq!(
        e,
        r#"/etc/sdxl/models.toml: checkpoints[0] "A": unknown key(s) here: fp16_safe"#
    );
    let e = err(&with_vae("fp16_safe = \"yes\""));
    assert!(e.contains("invalid type"), "{e}");
}

#[test]
fn single_checkpoint_is_the_default_and_fields_default_sensibly() {
    let cfg = parse(ONE).unwrap();
    let ck = cfg.default_checkpoint();
    assert_eq!(ck.name, "A");
    assert!(ck.default);
    assert_eq!(ck.filename, "a.safetensors");
    assert_eq!(ck.prediction, Prediction::Epsilon);
    assert!(cfg.checkpoint("B").is_none());
    let e = cfg.require_checkpoint("B").unwrap_err();
    assert_eq!(e.code().as_str(), "UNKNOWN_MODEL");
    assert_eq!(e.to_string(), r#"unknown checkpoint "B"; known: A"#);
    assert_eq!(
        cfg.require_lora("x").unwrap_err().code().as_str(),
        "UNKNOWN_MODEL"
    );
}

#[test]
fn relative_paths_resolve_against_the_file() {
    let cfg = parse(
        r#"
cache_dir = "cache"
[[checkpoints]]
name = "local"
path = "models/x.safetensors"
config = "cfgdir"
prediction = "v_prediction"
sha256 = "ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789"
"#,
    )
    .unwrap();
    assert_eq!(cfg.cache_dir, PathBuf::from("/etc/sdxl/cache"));
    let ck = &cfg.checkpoints[0];
    assert_eq!(
        ck.source,
        Source::Path("/etc/sdxl/models/x.safetensors".into())
    );
    assert_eq!(ck.config, Some(PathBuf::from("/etc/sdxl/cfgdir")));
    assert_eq!(ck.prediction, Prediction::VPrediction);
    assert_eq!(
        ck.sha256.as_deref(),
        Some("abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789")
    );
}

#[test]
fn missing_name_names_the_entry() {
    let e = err(r#"
[[checkpoints]]
name = "A"
url = "https://x.example/a"
[[loras]]
url = "https://x.example/l"
"#);
    assert_eq!(e, "/etc/sdxl/models.toml: loras[0]: missing `name`");
}

#[test]
fn duplicate_names_are_rejected() {
    let e = err(r#"
[[checkpoints]]
name = "A"
default = true
url = "https://x.example/a"
[[checkpoints]]
name = "A"
url = "https://x.example/b"
"#);
    assert_eq!(
        e,
        r#"/etc/sdxl/models.toml: checkpoints[1] "A": duplicate name "A"; names in [[checkpoints]] must be unique"#
    );
}

#[test]
fn two_defaults_and_no_default_are_rejected() {
    let two = err(r#"
[[checkpoints]]
name = "A"
default = true
url = "https://x.example/a"
[[checkpoints]]
name = "B"
default = true
url = "https://x.example/b"
"#);
    assert_eq!(
        two,
        "/etc/sdxl/models.toml: checkpoints: 2 checkpoints have `default = true` (A, B); mark exactly one"
    );
    let none = err(r#"
[[checkpoints]]
name = "A"
url = "https://x.example/a"
[[checkpoints]]
name = "B"
url = "https://x.example/b"
"#);
    assert_eq!(
        none,
        "/etc/sdxl/models.toml: checkpoints: no checkpoint has `default = true`; mark exactly one"
    );
    let empty = err("cache_dir = \"/x\"\n");
    assert!(empty.contains("no [[checkpoints]] entry"), "{empty}");
}

#[test]
fn bad_urls_are_rejected() {
    let e = err(r#"
[[checkpoints]]
name = "A"
url = "ftp://x.example/a"
"#);
    assert_eq!(
        e,
        r#"/etc/sdxl/models.toml: checkpoints[0] "A": bad url: scheme "ftp" is not http or https"#
    );
    let e = err(r#"
[[checkpoints]]
name = "A"
url = "not a url"
"#);
    assert!(
        e.starts_with(r#"/etc/sdxl/models.toml: checkpoints[0] "A": bad url: "#),
        "{e}"
    );
}

#[test]
fn url_and_path_together_are_rejected() {
    let e = err(r#"
[[checkpoints]]
name = "A"
url = "https://x.example/a"
path = "/m/a.safetensors"
"#);
    assert_eq!(
        e,
        r#"/etc/sdxl/models.toml: checkpoints[0] "A": gives both url and path; use exactly one of `url`, `path` or `source`"#
    );
    let e = err("[[checkpoints]]\nname = \"A\"\n");
    assert!(e.ends_with("needs one of `url`, `path` or `source`"), "{e}");
}

#[test]
fn unknown_keys_are_rejected_with_their_line() {
    let e = err(r#"
[[checkpoints]]
name = "A"
url = "https://x.example/a"
scheduler = "karras"
"#);
    assert!(e.starts_with("/etc/sdxl/models.toml: "), "{e}");
    assert!(e.contains("unknown field `scheduler`"), "{e}");
    assert!(e.contains("line 5"), "{e}");
    let e = err(r#"
[[checkpoints]]
name = "A"
url = "https://x.example/a"
[[loras]]
name = "L"
url = "https://x.example/l"
default = true
"#);
    assert_eq!(
        e,
        r#"/etc/sdxl/models.toml: loras[0] "L": unknown key(s) here: default"#
    );
}

#[test]
fn filenames_cannot_escape_the_cache_dir() {
    for bad in [
        "../x.safetensors",
        "a/b.safetensors",
        "x.safetensors.part",
        "..",
    ] {
        let e = err(&format!(
            "[[checkpoints]]\nname = \"A\"\nurl = \"https://x.example/a\"\nfilename = \"{bad}\"\n"
        ));
        assert!(e.contains("must be a plain file name"), "{bad}: {e}");
    }
}

#[test]
fn two_downloads_cannot_share_a_cache_file() {
    let e = err(r#"
[[checkpoints]]
name = "A"
url = "https://x.example/a"
filename = "same.safetensors"
[[loras]]
name = "L"
url = "https://x.example/l"
filename = "same.safetensors"
"#);
    assert_eq!(
        e,
        r#"/etc/sdxl/models.toml: loras[0] "L": filename "same.safetensors" is already used by checkpoints[0] "A"; each download needs its own file name"#
    );
}

#[test]
fn sha256_and_hf_sources_are_validated() {
    let e = err("[[checkpoints]]\nname = \"A\"\nurl = \"https://x.example/a\"\nsha256 = \"abc\"\n");
    assert!(e.contains(r#"sha256 "abc" is not 64 hex digits"#), "{e}");
    let e = err("[[checkpoints]]\nname = \"A\"\nsource = \"hf:justone\"\n");
    assert!(e.contains("expected hf:owner/repo"), "{e}");
    let cfg = parse(
        "[[checkpoints]]\nname = \"A\"\nsource = \"hf:stabilityai/sdxl-base/sd_xl_base_1.0.safetensors\"\n",
    )
    .unwrap();
    assert_eq!(
        cfg.checkpoints[0].source,
        Source::HuggingFace {
            repo: "stabilityai/sdxl-base".into(),
            path: Some("sd_xl_base_1.0.safetensors".into())
        }
    );
    assert_eq!(cfg.checkpoints[0].filename, "sd_xl_base_1.0.safetensors");
}

#[test]
fn load_reads_env_overrides() {
    // The only test in this binary that touches the environment.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.toml");
    std::fs::write(&file, ONE).unwrap();
    let missing = ModelsConfig::load(Some(&dir.path().join("nope.toml"))).unwrap_err();
    assert!(
        missing.to_string().starts_with(&format!(
            "{}: cannot read",
            dir.path().join("nope.toml").display()
        )),
        "{missing}"
    );
    std::env::set_var("SDXL_MODELS_TOML", &file);
    std::env::set_var("SDXL_CACHE_DIR", dir.path().join("c"));
    let cfg = ModelsConfig::load(None).unwrap();
    std::env::remove_var("SDXL_MODELS_TOML");
    std::env::remove_var("SDXL_CACHE_DIR");
    assert_eq!(cfg.cache_dir, dir.path().join("c"));
    assert_eq!(cfg.origin, file);
}
