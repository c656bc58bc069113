//! The [`Catalog`] of names a job may use (checkpoints, LoRAs, samplers, schedules), filled
//! from models.toml and the pipeline's sampler table; plain data the validator reads.

use crate::models::ModelsConfig;
use sdxl_pipeline::sampling::{sampler_names, scheduler_names};
use serde::{Deserialize, Serialize};

/// One LoRA to apply: a catalog name and its scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSpec {
    /// Name as listed in the catalog (or, from the `render` CLI, a file path).
    pub name: String,
    /// Merge scale (−4..=4) of the UNet, and of the text encoders unless `te_scale` is set.
    pub scale: f64,
    /// Text-encoder scale when it differs (`<lora:NAME:TE:UNET>` prompt tags, SPEC §5a).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub te_scale: Option<f64>,
}

/// The names a job may use; plain data filled from models.toml and the pipeline.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    /// Checkpoint names (models.toml `[[checkpoints]]`).
    pub checkpoints: Vec<String>,
    /// The checkpoint used when a job names none.
    pub default_checkpoint: Option<String>,
    /// LoRA names with their default scales (models.toml `[[loras]]`).
    pub loras: Vec<LoraSpec>,
    /// LoRAs applied when a job sends no `loras` field.
    pub default_loras: Vec<LoraSpec>,
    /// File stems of the LoRAs, each with its catalog name: `<lora:STEM:W>` prompt tags may use
    /// either (SPEC §5a).
    #[serde(default)]
    pub lora_stems: Vec<(String, String)>,
    /// Textual-inversion embedding names (models.toml `[[embeddings]]`).
    #[serde(default)]
    pub embeddings: Vec<String>,
    /// A1111 sampler names that work (`GET /sdapi/v1/samplers`).
    pub samplers: Vec<String>,
    /// Schedule types accepted in the `scheduler` field (lower case).
    pub schedulers: Vec<String>,
    /// Pixel budgets checked at validation.
    pub budgets: Budgets,
    /// A result bucket is configured for this frontend, so `"upload": true` is accepted (set by
    /// the frontend that owns the uploader; the A1111 routes and `local` never upload).
    #[serde(default)]
    pub uploads_enabled: bool,
    /// The models.toml `[vae]` override's file name, if any (`GET /sdapi/v1/sd-vae`).
    #[serde(default)]
    pub vae: Option<String>,
}

/// Env var: most output pixels of one image.
pub const MAX_PIXELS_ENV: &str = "SDXL_MAX_PIXELS";
/// Env var: most output pixels of a whole job (all images).
pub const MAX_BATCH_PIXELS_ENV: &str = "SDXL_MAX_BATCH_PIXELS";

/// Pixel budgets (SPEC §12): a job over them is refused at validation, before any work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budgets {
    /// Most pixels of one output image (default 2048×2048).
    pub max_pixels: u64,
    /// Most pixels summed over all output images of a job (default 8 × 1024²).
    pub max_batch_pixels: u64,
}

impl Default for Budgets {
    fn default() -> Self {
        Self {
            max_pixels: 2048 * 2048,
            max_batch_pixels: 8 * 1024 * 1024,
        }
    }
}

impl Budgets {
    /// The defaults, overridden by `SDXL_MAX_PIXELS` / `SDXL_MAX_BATCH_PIXELS`.
    pub fn from_env() -> Result<Self, crate::error::WorkerError> {
        let read = |name: &str, default: u64| match std::env::var(name) {
            Err(_) => Ok(default),
            Ok(v) => v.trim().parse::<u64>().map_err(|_| {
                crate::error::WorkerError::InvalidInput(format!(
                    "{name} must be a whole number of pixels, got {v:?}"
                ))
            }),
        };
        let d = Self::default();
        Ok(Self {
            max_pixels: read(MAX_PIXELS_ENV, d.max_pixels)?,
            max_batch_pixels: read(MAX_BATCH_PIXELS_ENV, d.max_batch_pixels)?,
        })
    }
}

impl Catalog {
    /// The names jobs may use with the models of `config`.
    pub fn from_models(config: &ModelsConfig) -> Self {
        let loras: Vec<LoraSpec> = config
            .loras
            .iter()
            .map(|l| LoraSpec {
                name: l.name.clone(),
                scale: l.scale,
                te_scale: None,
            })
            .collect();
        let lora_stems = config
            .loras
            .iter()
            .filter_map(|l| {
                let stem = std::path::Path::new(&l.filename).file_stem()?;
                Some((stem.to_string_lossy().into_owned(), l.name.clone()))
            })
            .collect();
        Self {
            checkpoints: config.checkpoints.iter().map(|c| c.name.clone()).collect(),
            default_checkpoint: Some(config.default_checkpoint().name.clone()),
            default_loras: loras.clone(),
            loras,
            vae: config.vae.as_ref().map(|v| v.filename.clone()),
            lora_stems,
            embeddings: config.embeddings.iter().map(|e| e.name.clone()).collect(),
            ..Self::pipeline_only()
        }
    }

    /// The sampler and schedule names the pipeline serves, with no models (renders by path).
    pub fn pipeline_only() -> Self {
        Self {
            samplers: sampler_names().into_iter().map(|s| s.name).collect(),
            schedulers: scheduler_names().into_iter().map(|s| s.name).collect(),
            ..Self::default()
        }
    }

    /// This catalog with `uploads_enabled` set.
    pub fn with_uploads(mut self, enabled: bool) -> Self {
        self.uploads_enabled = enabled;
        self
    }

    /// The checkpoint a job without `checkpoint` uses.
    pub fn effective_default_checkpoint(&self) -> Option<&str> {
        self.default_checkpoint
            .as_deref()
            .or_else(|| self.checkpoints.first().map(String::as_str))
    }
}
