//! The model-backed [`JobHandler`]: resolves the job's checkpoint and LoRAs through models.toml
//! (downloading on first use), keeps the last loaded model in memory, renders with the pipeline
//! and encodes the images with their infotext.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sdxl_pipeline::checkpoint::{Checkpoint, ModelSource};
use sdxl_pipeline::lora::{self, LoraSet};
use sdxl_pipeline::output::{encode_image, to_base64};
use sdxl_pipeline::pipeline::{LoadOptions, SdxlModel, StepProgress};
use sdxl_pipeline::sampling::{sampler_names, scheduler_names, Prediction};

use super::{CancelFlag, Catalog, ErrorCode, JobError, JobHandler, JobOutput, LoraSpec, Timings};
use crate::job::ValidatedJob;
use crate::models::{self, ModelsConfig};
use crate::store::ModelStore;

/// Serves jobs with real SDXL models on one device.
pub struct ModelHandler {
    store: ModelStore,
    catalog: Catalog,
    device: candle_core::Device,
    dtype: candle_core::DType,
    loaded: Mutex<Option<LoadedModel>>,
}

struct LoadedModel {
    checkpoint: String,
    model: SdxlModel,
    /// Warnings of the merged LoRA set (repeated with every job that uses it).
    lora_warnings: Vec<String>,
}

impl ModelHandler {
    /// A handler for the models of `config` on `device` with weights in `dtype`. Nothing is
    /// loaded until [`ModelHandler::preload`] or the first job.
    pub fn new(
        config: ModelsConfig,
        device: candle_core::Device,
        dtype: candle_core::DType,
    ) -> anyhow::Result<Self> {
        let catalog = catalog_from(&config);
        Ok(Self {
            store: ModelStore::new(config)?,
            catalog,
            device,
            dtype,
            loaded: Mutex::new(None),
        })
    }

    /// Fetches and loads the default checkpoint with the default LoRA set merged, so the first
    /// job does not pay for it (`load_handler` calls this before the first take and ping).
    pub fn preload(&self) -> Result<(), JobError> {
        let name = self
            .catalog
            .effective_default_checkpoint()
            .ok_or_else(|| JobError::new(ErrorCode::UnknownModel, "models.toml has no checkpoint"))?
            .to_string();
        let mut slot = self.lock_loaded()?;
        self.ensure_loaded(&mut slot, &name)?;
        // Merge the default LoRA set now too, so a job that uses it starts rendering at once.
        let loaded = slot
            .as_mut()
            .ok_or_else(|| JobError::internal("model slot empty after loading"))?;
        self.merge_loras(loaded, &self.catalog.default_loras)
    }

    fn lock_loaded(&self) -> Result<std::sync::MutexGuard<'_, Option<LoadedModel>>, JobError> {
        self.loaded
            .lock()
            .map_err(|_| JobError::internal("a previous job crashed while holding the model"))
    }

    /// Makes `name` the loaded checkpoint (downloading and loading it when another one, or none,
    /// is loaded). Returns the load time in milliseconds.
    fn ensure_loaded(&self, slot: &mut Option<LoadedModel>, name: &str) -> Result<u64, JobError> {
        if slot.as_ref().is_some_and(|m| m.checkpoint == name) {
            return Ok(0);
        }
        let started = Instant::now();
        let entry = self
            .store
            .config()
            .require_checkpoint(name)
            .map_err(|e| JobError::new(ErrorCode::UnknownModel, e.to_string()))?;
        let path = self
            .store
            .fetch(entry, None)
            .map_err(|e| JobError::new(code_of(e.code()), e.to_string()))?;
        let vae = self
            .store
            .vae_override()
            .map_err(|e| JobError::new(code_of(e.code()), e.to_string()))?;
        // Free the previous model before loading the next one (device memory).
        *slot = None;
        let source = source_for(&path, entry.config.as_deref());
        let checkpoint = Arc::new(Checkpoint::open_with_vae(&source, vae.as_ref())?);
        let options = LoadOptions {
            dtype: self.dtype,
            device: self.device.clone(),
            prediction: match entry.prediction {
                models::Prediction::Epsilon => Prediction::Epsilon,
                models::Prediction::VPrediction => Prediction::V,
            },
        };
        let model = SdxlModel::load(checkpoint, options)?;
        tracing::info!(
            checkpoint = name,
            ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        *slot = Some(LoadedModel {
            checkpoint: name.to_string(),
            model,
            lora_warnings: Vec::new(),
        });
        Ok(started.elapsed().as_millis() as u64)
    }
}

impl JobHandler for ModelHandler {
    fn handle(
        &self,
        job: &ValidatedJob,
        progress: &dyn Fn(u32, u32),
        cancel: &CancelFlag,
    ) -> Result<JobOutput, JobError> {
        let started = Instant::now();
        let name = job
            .checkpoint
            .clone()
            .or_else(|| {
                self.catalog
                    .effective_default_checkpoint()
                    .map(str::to_string)
            })
            .ok_or_else(|| JobError::new(ErrorCode::UnknownModel, "no checkpoint configured"))?;
        let mut slot = self.lock_loaded()?;
        let mut load_ms = self.ensure_loaded(&mut slot, &name)?;
        let loaded = slot
            .as_mut()
            .ok_or_else(|| JobError::internal("model slot empty after loading"))?;
        let lora_started = Instant::now();
        self.merge_loras(loaded, &job.loras)?;
        load_ms += lora_started.elapsed().as_millis() as u64;
        let mut warnings = loaded.lora_warnings.clone();
        let mut on_step = |p: StepProgress| progress(p.done, p.total);
        let out = loaded
            .model
            .txt2img(&job.request, &mut on_step, cancel.as_atomic())?;
        let encode_started = Instant::now();
        let mut images = Vec::with_capacity(out.images.len());
        let mut first_info = String::new();
        for (i, img) in out.images.iter().enumerate() {
            let info = job.infotext(i as u32);
            let bytes = encode_image(img, job.output_format, Some(&info))?;
            images.push(to_base64(&bytes));
            if i == 0 {
                first_info = info;
            }
        }
        let encode_out_ms = encode_started.elapsed().as_millis() as u64;
        warnings.extend(out.warnings);
        Ok(JobOutput {
            images,
            parameters: job.parameters(),
            info: first_info,
            warnings,
            timings: Timings {
                load_ms,
                encode_ms: out.timings.encode_ms as u64,
                denoise_ms: out.timings.denoise_ms as u64,
                decode_ms: out.timings.decode_ms as u64 + encode_out_ms,
                total_ms: started.elapsed().as_millis() as u64,
            },
        })
    }

    fn catalog(&self) -> &Catalog {
        &self.catalog
    }
}

impl ModelHandler {
    /// Makes `loras` the merged set of `loaded` (downloading LoRA files on first use). The same
    /// set as the previous job costs nothing; another set rewrites only the touched weights.
    fn merge_loras(&self, loaded: &mut LoadedModel, loras: &[LoraSpec]) -> Result<(), JobError> {
        let mut specs = Vec::with_capacity(loras.len());
        for l in loras {
            let entry = self
                .store
                .config()
                .require_lora(&l.name)
                .map_err(|e| JobError::new(ErrorCode::UnknownModel, e.to_string()))?;
            let path = self
                .store
                .fetch(entry, None)
                .map_err(|e| JobError::new(code_of(e.code()), e.to_string()))?;
            specs.push(lora::LoraSpec {
                path,
                name: l.name.clone(),
                scale: l.scale,
            });
        }
        let key = lora_key(&specs);
        if loaded.model.lora_key() == Some(key.as_str()) {
            return Ok(());
        }
        let (set, warnings) = LoraSet::load(&specs, loaded.model.checkpoint())?;
        let rewritten = loaded.model.set_loras(&set)?;
        tracing::info!(loras = %key, rewritten, "LoRA set merged");
        loaded.lora_warnings = warnings;
        Ok(())
    }
}

/// The identity `LoraSet::key` gives a set of specs (so a cache hit needs no file reading).
fn lora_key(specs: &[lora::LoraSpec]) -> String {
    LoraSet::key_of(specs)
}

/// A single file (with an optional diffusers config dir) or a diffusers directory.
pub fn source_for(path: &Path, config_dir: Option<&Path>) -> ModelSource {
    if path.is_dir() {
        ModelSource::DiffusersDir(path.to_path_buf())
    } else {
        ModelSource::SingleFile {
            path: path.to_path_buf(),
            config_dir: config_dir.map(Path::to_path_buf),
        }
    }
}

fn code_of(code: &str) -> ErrorCode {
    match code {
        "MODEL_INVALID" => ErrorCode::ModelInvalid,
        "UNKNOWN_MODEL" => ErrorCode::UnknownModel,
        _ => ErrorCode::ModelDownloadFailed,
    }
}

/// The names jobs may use, from models.toml and the pipeline's sampler table.
pub fn catalog_from(config: &ModelsConfig) -> Catalog {
    let loras: Vec<LoraSpec> = config
        .loras
        .iter()
        .map(|l| LoraSpec {
            name: l.name.clone(),
            scale: l.scale,
        })
        .collect();
    Catalog {
        checkpoints: config.checkpoints.iter().map(|c| c.name.clone()).collect(),
        default_checkpoint: Some(config.default_checkpoint().name.clone()),
        default_loras: loras.clone(),
        loras,
        ..pipeline_catalog()
    }
}

/// The sampler and schedule names the pipeline serves, with no models (for renders by path).
pub fn pipeline_catalog() -> Catalog {
    Catalog {
        samplers: sampler_names().into_iter().map(|s| s.name).collect(),
        schedulers: scheduler_names().into_iter().map(|s| s.name).collect(),
        ..Catalog::default()
    }
}
