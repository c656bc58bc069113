//! `<lora:...>` prompt tags on the real model runtime (tiny fixture): a tag renders exactly like
//! the same LoRA sent in the `loras` field (with the tag-free prompt), sets switch in place
//! between jobs, and the reply carries the prompt as written plus `Lora hashes`.

mod tiny_runtime;
use tiny_runtime::{fixtures, tiny_runtime};

use base64::Engine as _;
use sdxl_worker::handler::{self, CancelFlag};
use sdxl_worker::protocol::JobOutput;
use sdxl_worker::runtime::ModelRuntime;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::Path;

/// The tiny runtime with the kohya fixture LoRA as "Tiny Kohya".
fn runtime(cache: &Path) -> ModelRuntime {
    let lora = fixtures().join("tiny-lora-kohya.safetensors");
    let sha = hex::encode(Sha256::digest(std::fs::read(&lora).unwrap()));
    let extra = format!(
        "[[loras]]\nname = \"Tiny Kohya\"\npath = \"{}\"\nsha256 = \"{sha}\"\nscale = 1.0\n",
        lora.display()
    );
    tiny_runtime(cache, &extra)
}

fn run(rt: &ModelRuntime, input: Value) -> JobOutput {
    handler::execute(rt, &input, &|_, _| {}, &CancelFlag::new())
        .unwrap_or_else(|e| panic!("{input}: {e}"))
}

fn pixels(out: &JobOutput) -> Vec<u8> {
    let png = base64::engine::general_purpose::STANDARD
        .decode(&out.images[0])
        .unwrap();
    image::load_from_memory(&png).unwrap().to_rgb8().into_raw()
}

fn job(prompt: &str, loras: Value) -> Value {
    json!({"prompt": prompt, "negative_prompt": "blurry", "steps": 2, "width": 64, "height": 64,
           "seed": 5, "sampler_name": "Euler", "cfg_scale": 5, "loras": loras})
}

#[test]
fn a_tag_renders_like_the_loras_field_and_switches_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let rt = runtime(dir.path());
    let tagged = run(&rt, job("a cat, <lora:tiny-lora-kohya:0.8>", json!([])));
    let field = run(
        &rt,
        job("a cat, ", json!([{"name": "Tiny Kohya", "scale": 0.8}])),
    );
    assert_eq!(pixels(&tagged), pixels(&field), "tag vs `loras` field");
    let base = run(&rt, job("a cat, ", json!([])));
    assert_ne!(pixels(&base), pixels(&field), "the LoRA changes the image");
    // A split tag is another set; going back restores the first set's image exactly.
    let split = run(&rt, job("a cat, <lora:Tiny Kohya:1.5:0.8>", json!([])));
    assert_ne!(pixels(&split), pixels(&field), "te weight 1.5 vs 0.8");
    let again = run(&rt, job("a cat, <lora:tiny-lora-kohya:0.8>", json!([])));
    assert_eq!(pixels(&again), pixels(&tagged), "switching back");
    assert_eq!(
        rt.loads(),
        1,
        "LoRA sets switch without reloading the checkpoint"
    );

    // The reply: the prompt as written, the effective LoRA set, A1111's `Lora hashes`.
    assert!(
        tagged
            .info
            .starts_with("a cat, <lora:tiny-lora-kohya:0.8>\n"),
        "{}",
        tagged.info
    );
    assert!(
        tagged
            .info
            .contains("Lora hashes: \"tiny-lora-kohya: 0b46d5849fdd\""),
        "{}",
        tagged.info
    );
    assert_eq!(
        split.parameters["loras"],
        json!([{"name": "Tiny Kohya", "scale": 0.8, "te_scale": 1.5}])
    );
    assert_eq!(
        split.parameters["prompt"],
        "a cat, <lora:Tiny Kohya:1.5:0.8>"
    );
    assert!(
        split
            .info
            .contains("Lora hashes: \"Tiny Kohya: 0b46d5849fdd\""),
        "{}",
        split.info
    );
}
