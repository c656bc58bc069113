//! The A1111 list routes that describe what this worker has (SPEC §2/§13), in A1111 1.10's
//! reply shapes (`modules/api/models.py`): `schedulers`, `sd-vae`, `upscalers`,
//! `latent-upscale-modes`, `cmd-flags`, `scripts`, and the empty lists `prompt-styles`,
//! `hypernetworks`, `face-restorers`, `realesrgan-models`.

use super::state::ApiState;
use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;

/// A1111 1.10's `default_rho` and `need_inner_model` of the schedulers the pipeline serves
/// (`modules/sd_schedulers.py`); the names and labels come from the pipeline's table.
const SCHEDULER_EXTRAS: &[(&str, f64, bool)] = &[
    ("automatic", -1.0, false),
    ("uniform", -1.0, true),
    ("karras", 7.0, false),
    ("exponential", -1.0, false),
    ("polyexponential", 1.0, false),
    ("sgm_uniform", -1.0, true),
    ("kl_optimal", -1.0, false),
    ("align_your_steps", -1.0, false),
    ("simple", -1.0, true),
    ("normal", -1.0, true),
    ("ddim", -1.0, true),
    ("beta", -1.0, true),
];

/// The pixel upscalers of SPEC §13 (A1111's built-in `None`, `Lanczos`, `Nearest`; `scale` is
/// A1111's `UpscalerData` default).
pub const UPSCALERS: &[&str] = &["None", "Lanczos", "Nearest"];

/// The latent upscale modes of SPEC §13 (A1111 `shared.latent_upscale_modes`).
pub const LATENT_UPSCALE_MODES: &[&str] = &[
    "Latent",
    "Latent (antialiased)",
    "Latent (bicubic)",
    "Latent (bicubic antialiased)",
    "Latent (nearest)",
    "Latent (nearest-exact)",
];

/// `GET /sdapi/v1/schedulers`: `[{name, label, aliases, default_rho, need_inner_model}]`.
pub async fn schedulers() -> Json<Value> {
    let list: Vec<Value> = sdxl_pipeline::sampling::scheduler_names()
        .into_iter()
        .map(|s| {
            let (rho, inner) = SCHEDULER_EXTRAS
                .iter()
                .find(|(n, _, _)| *n == s.name)
                .map_or((-1.0, false), |(_, r, i)| (*r, *i));
            let aliases = (!s.aliases.is_empty()).then_some(s.aliases);
            json!({"name": s.name, "label": s.label, "aliases": aliases,
                   "default_rho": rho, "need_inner_model": inner})
        })
        .collect();
    Json(Value::Array(list))
}

/// `GET /sdapi/v1/sd-vae`: the models.toml `[vae]` override, `[{model_name, filename}]`.
pub async fn sd_vae(State(state): State<Arc<ApiState>>) -> Json<Value> {
    let list: Vec<Value> = state
        .handler
        .catalog()
        .vae
        .iter()
        .map(|f| json!({"model_name": f, "filename": f}))
        .collect();
    Json(Value::Array(list))
}

/// `GET /sdapi/v1/upscalers`: `[{name, model_name, model_path, model_url, scale}]`.
pub async fn upscalers() -> Json<Value> {
    let list: Vec<Value> = UPSCALERS
        .iter()
        .map(|n| json!({"name": n, "model_name": null, "model_path": null, "model_url": null, "scale": 4}))
        .collect();
    Json(Value::Array(list))
}

/// `GET /sdapi/v1/latent-upscale-modes`: `[{name}]`.
pub async fn latent_upscale_modes() -> Json<Value> {
    let list: Vec<Value> = LATENT_UPSCALE_MODES
        .iter()
        .map(|n| json!({"name": n}))
        .collect();
    Json(Value::Array(list))
}

/// `GET /sdapi/v1/cmd-flags`: the A1111 command-line flags that describe this server (API
/// only, no web UI; directories are models.toml's business, so none is named).
pub async fn cmd_flags(State(state): State<Arc<ApiState>>) -> Json<Value> {
    Json(json!({
        "api": true,
        "nowebui": true,
        "api_auth": null,
        "api_log": false,
        "api_server_stop": false,
        "ckpt": null,
        "ckpt_dir": null,
        "vae_dir": null,
        "lora_dir": null,
        "embeddings_dir": null,
        "hypernetwork_dir": null,
        "data_dir": null,
        "no_half": false,
        "no_half_vae": false,
        "lowvram": false,
        "medvram": false,
        "xformers": false,
        "skip_version_check": true,
        "bearer_token_required": state.config.api_token.is_some(),
    }))
}

/// `GET /sdapi/v1/scripts`: no scripts run here.
pub async fn scripts() -> Json<Value> {
    Json(json!({"txt2img": [], "img2img": []}))
}

/// `GET /sdapi/v1/prompt-styles`, `/hypernetworks`, `/face-restorers`,
/// `/realesrgan-models`: this worker has none.
pub async fn empty_list() -> Json<Value> {
    Json(json!([]))
}
