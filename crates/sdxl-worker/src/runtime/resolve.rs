//! Model references and what they resolve to: a checkpoint reference (models.toml name or, from
//! the CLI, a path) becomes one [`ResolvedCheckpoint`] — source, config dir, VAE override and
//! prediction type — and each LoRA reference a [`ResolvedLora`]. Resolving downloads nothing.

use std::path::{Path, PathBuf};

use sdxl_pipeline::checkpoint::{ModelSource, VaeOverride};
use sdxl_pipeline::sampling::Prediction;

use crate::error::WorkerError;
use crate::models::{self, ModelsConfig};

/// Where a model file comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A models.toml entry of this name (downloaded into the cache on first use).
    Entry(String),
    /// A local file or diffusers directory given on the command line.
    Path(PathBuf),
}

/// Which VAE decodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaeChoice {
    /// The checkpoint's own.
    Own,
    /// models.toml's `[vae]` (fetched on first use).
    ModelsToml,
    /// A standalone file (`render --vae`).
    File(VaeOverride),
}

/// A checkpoint reference resolved once: everything needed to fetch, open and load it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedCheckpoint {
    /// The name shown in infotexts and `parameters` (models.toml name or file stem).
    pub label: String,
    /// Where the weights are.
    pub location: Location,
    /// A diffusers directory whose configs describe a single file.
    pub config_dir: Option<PathBuf>,
    /// The VAE that decodes.
    pub vae: VaeChoice,
    /// ε- or v-prediction.
    pub prediction: Prediction,
}

/// A LoRA reference resolved once.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedLora {
    /// The name shown in infotexts and `parameters`.
    pub label: String,
    /// Where the file is.
    pub location: Location,
    /// Merge scale (the UNet's, and the text encoders' unless `te_scale` is set).
    pub scale: f64,
    /// Text-encoder scale when it differs (`<lora:NAME:TE:UNET>`).
    pub te_scale: Option<f64>,
}

impl ResolvedLora {
    /// This LoRA with a separate text-encoder scale (`None` ⇒ `scale`).
    pub fn with_te_scale(mut self, te_scale: Option<f64>) -> Self {
        self.te_scale = te_scale;
        self
    }
}

/// How the CLI may widen what a reference can name (jobs never get paths).
#[derive(Debug, Clone, Default)]
pub struct CliOverrides {
    /// Accept paths as well as models.toml names.
    pub allow_paths: bool,
    /// `--config DIR` for a single-file checkpoint.
    pub config_dir: Option<PathBuf>,
    /// `--vae FILE`.
    pub vae: Option<VaeOverride>,
}

/// Resolves a checkpoint reference (`None` ⇒ the models.toml default).
pub fn checkpoint(
    config: Option<&ModelsConfig>,
    reference: Option<&str>,
    cli: &CliOverrides,
) -> Result<ResolvedCheckpoint, WorkerError> {
    let entry = match (config, reference) {
        (Some(c), Some(r)) => c.checkpoint(r),
        (Some(c), None) => Some(c.default_checkpoint()),
        (None, _) => None,
    };
    if let Some(entry) = entry {
        return Ok(ResolvedCheckpoint {
            label: entry.name.clone(),
            location: Location::Entry(entry.name.clone()),
            config_dir: cli.config_dir.clone().or_else(|| entry.config.clone()),
            vae: match &cli.vae {
                Some(v) => VaeChoice::File(v.clone()),
                None if config.is_some_and(|c| c.vae.is_some()) => VaeChoice::ModelsToml,
                None => VaeChoice::Own,
            },
            prediction: prediction_of(entry.prediction),
        });
    }
    let Some(reference) = reference else {
        return Err(WorkerError::UnknownModel(
            "no checkpoint given and no models.toml to take a default from".into(),
        ));
    };
    let path = Path::new(reference);
    if !cli.allow_paths || !path.exists() {
        let known = config
            .map(|c| {
                c.checkpoints
                    .iter()
                    .map(|e| e.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let what = if cli.allow_paths {
            "is neither a models.toml checkpoint nor an existing file or directory"
        } else {
            "is not a checkpoint of models.toml"
        };
        return Err(WorkerError::UnknownModel(format!(
            "checkpoint {reference:?} {what}; known: {known}"
        )));
    }
    Ok(ResolvedCheckpoint {
        label: file_label(path, reference),
        location: Location::Path(path.to_path_buf()),
        config_dir: cli.config_dir.clone(),
        // models.toml's defaults belong to models.toml's checkpoints.
        vae: cli.vae.clone().map_or(VaeChoice::Own, VaeChoice::File),
        prediction: Prediction::Epsilon,
    })
}

/// Resolves a LoRA reference; `scale` `None` ⇒ the models.toml default (1 for a path).
pub fn lora(
    config: Option<&ModelsConfig>,
    reference: &str,
    scale: Option<f64>,
    allow_paths: bool,
) -> Result<ResolvedLora, WorkerError> {
    if let Some(entry) = config.and_then(|c| c.lora(reference)) {
        return Ok(ResolvedLora {
            label: entry.name.clone(),
            location: Location::Entry(entry.name.clone()),
            scale: scale.unwrap_or(entry.scale),
            te_scale: None,
        });
    }
    let path = Path::new(reference);
    if allow_paths && path.is_file() {
        return Ok(ResolvedLora {
            label: file_label(path, reference),
            location: Location::Path(path.to_path_buf()),
            scale: scale.unwrap_or(1.0),
            te_scale: None,
        });
    }
    let what = if allow_paths {
        "is neither a models.toml LoRA nor an existing file"
    } else {
        "is not a LoRA of models.toml"
    };
    Err(WorkerError::UnknownModel(format!(
        "LoRA {reference:?} {what}"
    )))
}

/// A single file (with an optional diffusers config dir) or a diffusers directory.
pub fn model_source(path: &Path, config_dir: Option<&Path>) -> ModelSource {
    if path.is_dir() {
        ModelSource::DiffusersDir(path.to_path_buf())
    } else {
        ModelSource::SingleFile {
            path: path.to_path_buf(),
            config_dir: config_dir.map(Path::to_path_buf),
        }
    }
}

fn prediction_of(p: models::Prediction) -> Prediction {
    match p {
        models::Prediction::Epsilon => Prediction::Epsilon,
        models::Prediction::VPrediction => Prediction::V,
    }
}

fn file_label(path: &Path, fallback: &str) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| fallback.to_string())
}
