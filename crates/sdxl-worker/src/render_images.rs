//! `render --init-image FILE` / `--mask FILE`: the file becomes the job's `init_images` / `mask`
//! (base64), so it is validated and decoded exactly like an image a RunPod job sends.

use std::path::Path;

use anyhow::Context;
use base64::Engine as _;
use serde_json::{json, Value};

/// `[<base64 of the file>]`.
pub fn init_images_from_file(path: &Path) -> anyhow::Result<Value> {
    let bytes = std::fs::read(path).with_context(|| format!("--init-image {}", path.display()))?;
    Ok(json!([
        base64::engine::general_purpose::STANDARD.encode(bytes)
    ]))
}

/// `"<base64 of the file>"` (the job's `mask`).
pub fn mask_from_file(path: &Path) -> anyhow::Result<Value> {
    let bytes = std::fs::read(path).with_context(|| format!("--mask {}", path.display()))?;
    Ok(Value::String(
        base64::engine::general_purpose::STANDARD.encode(bytes),
    ))
}
