//! Textual-inversion embeddings, worker side (SPEC §5a, §9): models.toml `[[embeddings]]`,
//! loading them with the checkpoint on the real model runtime (tiny fixture), `GET
//! /sdapi/v1/embeddings` in A1111's reply shape, and the `TI hashes` / `Lora hashes` infotext
//! fields. (Matching embedding names in prompts is the prompt encoder's job and not tested here.)

mod tiny_runtime;
use tiny_runtime::{fixtures, tiny_runtime};

use candle_core::{Device, Tensor};
use sdxl_worker::api::{self, ApiConfig};
use sdxl_worker::catalog::Catalog;
use sdxl_worker::error::ErrorCode;
use sdxl_worker::handler::{self, CancelFlag, JobHandler};
use sdxl_worker::job::validate;
use sdxl_worker::models::{ModelsConfig, Source};
use sdxl_worker::runtime::embeddings::{a1111_reply, ti_hashes};
use sdxl_worker::runtime::{
    infotext_with, lora_hashes, EmbeddingInfo, Location, NetworkHashes, ResolvedLora, SamplerLabels,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Writes an SDXL embedding file with `n` vectors of widths `wl` (clip_l) and `wg` (clip_g).
fn write_embedding(path: &Path, n: usize, wl: usize, wg: usize) -> String {
    let t = |w: usize, base: f32| {
        let data: Vec<f32> = (0..n * w).map(|i| base + i as f32 * 1e-3).collect();
        Tensor::from_vec(data, (n, w), &Device::Cpu).unwrap()
    };
    let tensors: HashMap<String, Tensor> = [
        ("clip_l".to_string(), t(wl, 0.1)),
        ("clip_g".to_string(), t(wg, -0.2)),
    ]
    .into_iter()
    .collect();
    candle_core::safetensors::save(&tensors, path).unwrap();
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

#[test]
fn models_toml_embeddings_table() {
    let text = r#"
[[checkpoints]]
name = "Base"
url = "https://example.com/base.safetensors"

[[embeddings]]
name = "negativeXL"
url = "https://civitai.com/api/download/models/134583"
filename = "negativeXL_D.safetensors"
sha256 = "ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789"

[[embeddings]]
name = "myStyle"
path = "emb/my_style.safetensors"
auth = "none"
"#;
    let cfg = ModelsConfig::from_toml_str(text, Path::new("/etc/sdxl/models.toml")).unwrap();
    assert_eq!(cfg.embeddings.len(), 2);
    let e = &cfg.embeddings[0];
    assert_eq!(e.name, "negativeXL");
    assert_eq!(e.filename, "negativeXL_D.safetensors");
    assert_eq!(
        e.sha256.as_deref(),
        Some("abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789")
    );
    assert_eq!(
        cfg.embeddings[1].source,
        Source::Path(PathBuf::from("/etc/sdxl/emb/my_style.safetensors"))
    );
    assert_eq!(cfg.embeddings[1].filename, "my_style.safetensors");
    assert_eq!(
        Catalog::from_models(&cfg).embeddings,
        ["negativeXL", "myStyle"]
    );
    // `fetch` covers them.
    let names: Vec<&str> = sdxl_worker::fetch::all_entries(&cfg)
        .iter()
        .map(|e| e.name())
        .collect();
    assert_eq!(names, ["Base", "negativeXL", "myStyle"]);

    let bad = |extra: &str| {
        let t = format!(
            "[[checkpoints]]\nname = \"B\"\nurl = \"https://e.com/b.safetensors\"\n{extra}"
        );
        ModelsConfig::from_toml_str(&t, Path::new("m.toml"))
            .expect_err(extra)
            .to_string()
    };
    let e = bad("[[embeddings]]\nname = \"x\"\npath = \"/x.safetensors\"\nscale = 1.0\n");
    assert!(e.contains("scale"), "{e}");
    let e = bad("[[embeddings]]\nname = \"x\"\npath = \"/a.safetensors\"\n[[embeddings]]\nname = \"x\"\npath = \"/b.safetensors\"\n");
    assert!(e.contains("duplicate"), "{e}");
    let e = bad(
        "[[embeddings]]\nname = \"x\"\nurl = \"https://e.com/x\"\nfilename = \"b.safetensors\"\n",
    );
    assert!(e.contains("already used"), "{e}");
    let e = bad("[[embeddings]]\npath = \"/a.safetensors\"\n");
    assert!(e.contains("name"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_load_with_the_model_and_are_listed_like_a1111() {
    let dir = tempfile::tempdir().unwrap();
    let emb = dir.path().join("my_emb.safetensors");
    // The tiny model's text encoders are 32 (CLIP-L) and 48 (bigG) wide.
    let sha = write_embedding(&emb, 3, 32, 48);
    let extra = format!(
        "[[embeddings]]\nname = \"myEmb\"\npath = \"{}\"\nsha256 = \"{sha}\"\n",
        emb.display()
    );
    let cache = dir.path().join("cache");
    let rt = tokio::task::spawn_blocking(move || {
        let rt = tiny_runtime(&cache, &extra);
        assert!(rt.embeddings().is_empty(), "nothing before the model loads");
        rt.preload().expect("preload");
        rt
    })
    .await
    .unwrap();
    assert_eq!(
        rt.embeddings(),
        vec![EmbeddingInfo {
            name: "myEmb".into(),
            vectors: 3,
            shape: 80,
            sha256: Some(sha.clone()),
        }]
    );
    let rt = Arc::new(rt);
    let base = start_api(rt.clone()).await;
    let reply: Value = reqwest::get(format!("{base}/sdapi/v1/embeddings"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        reply,
        json!({
            "loaded": {"myEmb": {"step": null, "sd_checkpoint": null, "sd_checkpoint_name": null,
                                  "shape": 80, "vectors": 3}},
            "skipped": {}
        })
    );
    // A job renders with the embeddings installed (whether the prompt uses them is the prompt
    // encoder's business).
    let input = json!({"prompt": "a cat, myEmb", "steps": 1, "width": 64, "height": 64,
                       "seed": 1, "sampler_name": "Euler"});
    let out = tokio::task::spawn_blocking(move || {
        handler::execute(rt.as_ref(), &input, &|_, _| {}, &CancelFlag::new())
    })
    .await
    .unwrap()
    .expect("render");
    assert_eq!(out.images.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_embedding_is_model_invalid_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    // Not an embedding at all (a LoRA file), and an embedding for real SDXL widths (768/1280),
    // which do not fit the tiny model's encoders.
    let lora = fixtures().join("tiny-lora-kohya.safetensors");
    let wide = dir.path().join("wide_emb.safetensors");
    write_embedding(&wide, 1, 768, 1280);
    for (file, needle) in [
        (lora, "tiny-lora-kohya.safetensors"),
        (wide, "wide_emb.safetensors"),
    ] {
        let extra = format!(
            "[[embeddings]]\nname = \"bad\"\npath = \"{}\"\n",
            file.display()
        );
        let cache = dir.path().join("cache");
        let e = tokio::task::spawn_blocking(move || {
            tiny_runtime(&cache, &extra)
                .preload()
                .expect_err("bad embedding")
        })
        .await
        .unwrap();
        assert_eq!(e.code(), ErrorCode::ModelInvalid, "{e}");
        assert!(e.to_string().contains(needle), "{e}");
        assert!(e.to_string().contains("\"bad\""), "{e}");
    }
}

async fn start_api(handler: Arc<dyn JobHandler>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(api::serve(
        listener,
        handler,
        ApiConfig::default(),
        std::future::pending(),
    ));
    base
}

#[test]
fn a1111_reply_shape_without_embeddings() {
    assert_eq!(a1111_reply(&[]), json!({"loaded": {}, "skipped": {}}));
}

fn info(name: &str, sha: Option<&str>) -> EmbeddingInfo {
    EmbeddingInfo {
        name: name.into(),
        vectors: 1,
        shape: 2048,
        sha256: sha.map(str::to_string),
    }
}

/// `TI hashes` as A1111's `sd_hijack_clip` writes it: `name: shorthash` (12 hex digits) for the
/// embeddings the prompts used (here `used_embeddings` filled by hand), `:`/`,` removed from
/// names, unknown hashes left out, each once.
#[test]
fn ti_hashes_in_the_infotext() {
    let infos = [
        info(
            "negativeXL",
            Some("0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef"),
        ),
        info("no:hash", None),
        info(
            "a,b:c",
            Some("fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"),
        ),
    ];
    let used: Vec<String> = ["negativeXL", "no:hash", "a,b:c", "negativeXL"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let ti = ti_hashes(&used, &infos);
    assert_eq!(
        ti,
        vec![
            ("negativeXL".to_string(), "0123456789ab".to_string()),
            ("abc".to_string(), "fedcba987654".to_string()),
        ]
    );
    let catalog = sdxl_worker::handler::stub_catalog();
    let job = validate(
        &json!({"prompt": "a cat, negativeXL <lora:Pixel Art XL:0.5:0.25>", "seed": 1,
                "sampler_name": "Euler", "loras": [{"name": "Detail Tweaker XL", "scale": 1}]}),
        &catalog,
    )
    .unwrap();
    let resolved = |name: &str, scale: f64, te: Option<f64>| ResolvedLora {
        label: name.into(),
        location: Location::Entry(name.into()),
        scale,
        te_scale: te,
    };
    let loras = [
        resolved("Detail Tweaker XL", 1.0, None),
        resolved("Pixel Art XL", 0.25, Some(0.5)),
    ];
    let lora = lora_hashes(
        &job,
        &loras,
        &[
            None,
            Some("aa11bb22cc33dd44ee55ff66aa11bb22cc33dd44ee55ff66aa11bb22cc33dd44".into()),
        ],
    );
    assert_eq!(
        lora,
        vec![("Pixel Art XL".to_string(), "aa11bb22cc33".to_string())]
    );
    let labels = SamplerLabels::of(&job).unwrap();
    let text = infotext_with(&job, &labels, 0, &NetworkHashes { lora, ti });
    let (prompt, params) = text.split_once('\n').unwrap();
    assert_eq!(prompt, "a cat, negativeXL <lora:Pixel Art XL:0.5:0.25>");
    assert!(
        params.contains(
            ", Loras: \"Detail Tweaker XL:1, Pixel Art XL:0.5:0.25\", \
             Lora hashes: \"Pixel Art XL: aa11bb22cc33\", \
             TI hashes: \"negativeXL: 0123456789ab, abc: fedcba987654\", Version: "
        ),
        "{params}"
    );
    // Without known hashes there are no hash fields.
    let plain = infotext_with(&job, &labels, 0, &NetworkHashes::default());
    assert!(!plain.contains("hashes"), "{plain}");
}
