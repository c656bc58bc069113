//! The tiny fixture model as the worker serves it: a models.toml naming
//! `tests/fixtures/tiny-sdxl-single-file.safetensors` (the only, hence default, checkpoint) and a
//! CPU f32 [`ModelRuntime`] over it — the real model handler every fault/API/protocol test drives.
#![allow(dead_code)]

use sdxl_worker::models::ModelsConfig;
use sdxl_worker::runtime::ModelRuntime;
use std::path::{Path, PathBuf};

/// `tests/fixtures` of the workspace.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// models.toml text serving the tiny checkpoint from `cache`, followed by `extra` TOML.
pub fn tiny_models_text(cache: &Path, extra: &str) -> String {
    let fx = fixtures();
    format!(
        r#"
cache_dir = "{cache}"

[[checkpoints]]
name = "Tiny SDXL"
default = true
path = "{file}"
config = "{config}"
{extra}
"#,
        cache = cache.display(),
        file = fx.join("tiny-sdxl-single-file.safetensors").display(),
        config = fx.join("tiny-sdxl").display(),
    )
}

/// [`tiny_models_text`] parsed.
pub fn tiny_models_toml(cache: &Path, extra: &str) -> ModelsConfig {
    ModelsConfig::from_toml_str(&tiny_models_text(cache, extra), &cache.join("models.toml"))
        .expect("models.toml")
}

/// A CPU f32 runtime over [`tiny_models_toml`].
pub fn tiny_runtime(cache: &Path, extra: &str) -> ModelRuntime {
    ModelRuntime::new(
        Some(tiny_models_toml(cache, extra)),
        candle_core::Device::Cpu,
        candle_core::DType::F32,
    )
    .expect("runtime")
}
