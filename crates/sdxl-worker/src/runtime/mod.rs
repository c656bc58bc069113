//! The model runtime behind every frontend (RunPod handler, local API, `render`).
//!
//! A model reference resolves once ([`resolve`]) to a source, VAE and prediction type; the
//! runtime ensures the files are in the cache, opens and loads the checkpoint on its device and
//! dtype, switches LoRA sets in place, and renders a validated job into encoded images with
//! their infotext ([`Rendered`]). Frontends only translate their inputs and outputs.

pub mod embeddings;
pub mod output;
pub mod resolve;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use candle_core::{DType, Device};
use sdxl_pipeline::checkpoint::{Checkpoint, VaeOverride};
use sdxl_pipeline::lora::{self, LoraSet};
use sdxl_pipeline::pipeline::{LoadOptions, SdxlModel, StepProgress};

use crate::catalog::{Catalog, LoraSpec};
use crate::error::WorkerError;
use crate::job::ValidatedJob;
use crate::models::ModelsConfig;
use crate::protocol::Timings;
use crate::store::ModelStore;
pub use embeddings::EmbeddingInfo;
pub use output::{infotext, infotext_with, NetworkHashes, Rendered, RenderedImage, SamplerLabels};
pub use resolve::{CliOverrides, Location, ResolvedCheckpoint, ResolvedLora, VaeChoice};

/// What one render uses: a resolved checkpoint and LoRA set.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderPlan {
    /// The checkpoint.
    pub checkpoint: ResolvedCheckpoint,
    /// The LoRAs, in order.
    pub loras: Vec<ResolvedLora>,
}

/// Device and weight dtype: explicit choices, else CUDA + f16 when this build and machine have
/// CUDA, else CPU + f32.
pub fn choose_device(device: Option<&str>, dtype: Option<&str>) -> anyhow::Result<(Device, DType)> {
    let device = match device {
        Some(spec) => sdxl_pipeline::device::parse_device(spec)?,
        None if candle_core::utils::cuda_is_available() => {
            sdxl_pipeline::device::parse_device("cuda")?
        }
        None => Device::Cpu,
    };
    let dtype = match dtype {
        Some(spec) => sdxl_pipeline::device::parse_dtype(spec)?,
        None if device.is_cuda() => DType::F16,
        None => DType::F32,
    };
    Ok((device, dtype))
}

/// Test-only (debug builds): a job whose prompt is exactly this panics after its first
/// denoising step, with the model lock held (the fault tests of SPEC §12). Release builds do not
/// have it.
#[cfg(debug_assertions)]
pub const TEST_PANIC_PROMPT: &str = "__sdxl_worker_test_panic__";

/// Env `SDXL_DEVICE` (`cpu`, `cuda`, `cuda:N`) and `SDXL_DTYPE` (`f32`, `f16`, `bf16`), with the
/// defaults of [`choose_device`].
pub fn device_from_env() -> anyhow::Result<(Device, DType)> {
    let device = std::env::var("SDXL_DEVICE").ok();
    let dtype = std::env::var("SDXL_DTYPE").ok();
    choose_device(device.as_deref(), dtype.as_deref())
}

/// The loaded model and what it was loaded from.
struct Loaded {
    checkpoint: ResolvedCheckpoint,
    model: SdxlModel,
    /// Warnings of the merged LoRA set (repeated with every job that uses it).
    lora_warnings: Vec<String>,
    /// The models.toml embeddings given to this model.
    embeddings: Vec<EmbeddingInfo>,
}

/// Loads models on one device and renders jobs with them; keeps the last model in memory.
pub struct ModelRuntime {
    store: Option<ModelStore>,
    catalog: Catalog,
    device: Device,
    dtype: DType,
    loaded: Mutex<Option<Loaded>>,
    loads: AtomicU64,
    /// The embeddings of the loaded model, readable without waiting for a running job.
    embedding_infos: Mutex<Vec<EmbeddingInfo>>,
}

impl ModelRuntime {
    /// A runtime for the models of `config` (or, with `None`, for models given by path only) on
    /// `device` with weights in `dtype`. Nothing is loaded until [`Self::preload`] or a render.
    pub fn new(
        config: Option<ModelsConfig>,
        device: Device,
        dtype: DType,
    ) -> Result<Self, WorkerError> {
        let catalog = config
            .as_ref()
            .map_or_else(Catalog::pipeline_only, Catalog::from_models);
        let store = config.map(ModelStore::new).transpose()?;
        Ok(Self {
            store,
            catalog,
            device,
            dtype,
            loaded: Mutex::new(None),
            loads: AtomicU64::new(0),
            embedding_infos: Mutex::new(Vec::new()),
        })
    }

    /// How many times a checkpoint was loaded (a job after a panic reloads it).
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    /// The runtime with these pixel budgets for the jobs it validates.
    pub fn with_budgets(mut self, budgets: crate::catalog::Budgets) -> Self {
        self.catalog.budgets = budgets;
        self
    }

    /// The names jobs may use.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// models.toml, when the runtime has one.
    pub fn config(&self) -> Option<&ModelsConfig> {
        self.store.as_ref().map(ModelStore::config)
    }

    /// Resolves a checkpoint reference (`None` ⇒ the default); `cli` widens it for `render`.
    pub fn resolve_checkpoint(
        &self,
        reference: Option<&str>,
        cli: &CliOverrides,
    ) -> Result<ResolvedCheckpoint, WorkerError> {
        resolve::checkpoint(self.config(), reference, cli)
    }

    /// Resolves a LoRA reference (`scale` `None` ⇒ its default scale).
    pub fn resolve_lora(
        &self,
        reference: &str,
        scale: Option<f64>,
        allow_paths: bool,
    ) -> Result<ResolvedLora, WorkerError> {
        resolve::lora(self.config(), reference, scale, allow_paths)
    }

    /// The embeddings of the loaded model (empty before the first load); `GET
    /// /sdapi/v1/embeddings`.
    pub fn embeddings(&self) -> Vec<EmbeddingInfo> {
        match self.embedding_infos.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The plan of a validated job: its catalog checkpoint and LoRAs (names only, no paths).
    pub fn plan_for(&self, job: &ValidatedJob) -> Result<RenderPlan, WorkerError> {
        let checkpoint =
            self.resolve_checkpoint(job.checkpoint.as_deref(), &CliOverrides::default())?;
        let loras = job
            .loras
            .iter()
            .map(|l| {
                self.resolve_lora(&l.name, Some(l.scale), false)
                    .map(|r| r.with_te_scale(l.te_scale))
            })
            .collect::<Result<_, _>>()?;
        Ok(RenderPlan { checkpoint, loras })
    }

    /// Fetches and loads the default checkpoint with the default LoRA set merged, so the first
    /// job does not pay for it.
    pub fn preload(&self) -> Result<(), WorkerError> {
        let checkpoint = self.resolve_checkpoint(None, &CliOverrides::default())?;
        let loras = self
            .catalog
            .default_loras
            .iter()
            .map(|l| self.resolve_lora(&l.name, Some(l.scale), false))
            .collect::<Result<Vec<_>, _>>()?;
        let mut slot = self.lock_loaded();
        self.ensure_loaded(&mut slot, &checkpoint)?;
        let loaded = slot
            .as_mut()
            .ok_or_else(|| WorkerError::Internal("model slot empty after loading".into()))?;
        self.merge_loras(loaded, &loras).map(|_| ())
    }

    /// Renders `job` with `plan`: loads the checkpoint and LoRA set when they differ from the
    /// loaded ones, runs the pipeline, and encodes every image with its infotext. `cancel` is a
    /// bare cancel flag or a full `RenderControl` (A1111 interrupt/skip).
    pub fn render<'c>(
        &self,
        job: &ValidatedJob,
        plan: &RenderPlan,
        progress: &dyn Fn(u32, u32),
        cancel: impl Into<sdxl_pipeline::interrupt::RenderControl<'c>>,
    ) -> Result<Rendered, WorkerError> {
        let started = Instant::now();
        let mut slot = self.lock_loaded();
        let mut load_ms = self.ensure_loaded(&mut slot, &plan.checkpoint)?;
        let loaded = slot
            .as_mut()
            .ok_or_else(|| WorkerError::Internal("model slot empty after loading".into()))?;
        let lora_started = Instant::now();
        let lora_shas = self.merge_loras(loaded, &plan.loras)?;
        load_ms += ms(lora_started);
        // The text encoders see the prompt without its `<lora:...>` tags (SPEC §5a); the
        // infotext keeps them.
        let mut request = job.request.clone();
        request.prompt = crate::prompt_tags::encoded_prompt(&request.prompt);
        let mut on_step = |p: StepProgress| {
            #[cfg(debug_assertions)]
            if job.request.prompt == TEST_PANIC_PROMPT {
                panic!("test-only panic hook (debug builds)");
            }
            progress(p.done, p.total)
        };
        // img2img and the hires fix watch the cancel flag only (A1111 interrupt/skip apply to
        // txt2img).
        let control: sdxl_pipeline::interrupt::RenderControl<'c> = cancel.into();
        let out = match (&job.img2img, &job.hires) {
            (Some(p), _) => loaded
                .model
                .img2img(&request, p, &mut on_step, control.cancel)?,
            (None, Some(h)) => {
                loaded
                    .model
                    .txt2img_hires(&request, h, &mut on_step, control.cancel)?
            }
            (None, None) => loaded.model.txt2img(&request, &mut on_step, control)?,
        };
        let inpainting_conditioning = loaded
            .model
            .uses_inpainting_conditioning(job.img2img.is_some(), job.hires.as_ref());
        let labels = SamplerLabels {
            sampler: out.sampler.clone(),
            schedule: out.schedule_type.clone(),
            extra: out.sampler_infotext.clone(),
        };
        let encode_started = Instant::now();
        let hashes = NetworkHashes {
            lora: lora_hashes(job, &plan.loras, &lora_shas),
            ti: embeddings::ti_hashes(&out.used_embeddings, &loaded.embeddings),
        };
        let images = output::encode_all(job, &labels, &out.images, &out.seeds, &hashes)?;
        let mut warnings = loaded.lora_warnings.clone();
        warnings.extend(out.warnings);
        Ok(Rendered {
            images,
            warnings,
            inpainting_conditioning,
            timings: Timings {
                load_ms,
                encode_ms: out.timings.encode_ms as u64,
                denoise_ms: out.timings.denoise_ms as u64,
                decode_ms: out.timings.decode_ms as u64 + ms(encode_started),
                total_ms: ms(started),
            },
        })
    }

    /// The model slot. A job that panicked while holding it may have left the model half
    /// switched: the model is then dropped and loaded again by the next job.
    fn lock_loaded(&self) -> MutexGuard<'_, Option<Loaded>> {
        match self.loaded.lock() {
            Ok(guard) => guard,
            Err(poisoned) => {
                tracing::warn!("a previous job panicked while using the model; reloading it");
                let mut guard = poisoned.into_inner();
                *guard = None;
                self.loaded.clear_poison();
                guard
            }
        }
    }

    /// Makes `checkpoint` the loaded model (fetching and loading it when another one, or none,
    /// is loaded). Returns the time spent in milliseconds.
    fn ensure_loaded(
        &self,
        slot: &mut Option<Loaded>,
        checkpoint: &ResolvedCheckpoint,
    ) -> Result<u64, WorkerError> {
        if slot.as_ref().is_some_and(|m| &m.checkpoint == checkpoint) {
            return Ok(0);
        }
        let started = Instant::now();
        let path = match &checkpoint.location {
            Location::Path(p) => p.clone(),
            Location::Entry(name) => {
                let store = self.store_for(name)?;
                store.fetch(store.config().require_checkpoint(name)?, None)?
            }
        };
        let vae = self.vae_file(&checkpoint.vae)?;
        // Free the previous model before loading the next one (device memory).
        *slot = None;
        let source = resolve::model_source(&path, checkpoint.config_dir.as_deref());
        let opened = Arc::new(Checkpoint::open_with_vae(&source, vae.as_ref())?);
        let options = LoadOptions {
            dtype: self.dtype,
            device: self.device.clone(),
            prediction: checkpoint.prediction,
        };
        let mut model = SdxlModel::load(opened, options)?;
        let infos = match &self.store {
            Some(store) => {
                let (list, infos) = embeddings::load_all(store)?;
                embeddings::install(&mut model, list, store)?;
                infos
            }
            None => Vec::new(),
        };
        match self.embedding_infos.lock() {
            Ok(mut g) => *g = infos.clone(),
            Err(poisoned) => *poisoned.into_inner() = infos.clone(),
        }
        self.loads.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            checkpoint = %checkpoint.label,
            ms = ms(started),
            "model loaded"
        );
        *slot = Some(Loaded {
            checkpoint: checkpoint.clone(),
            model,
            lora_warnings: Vec::new(),
            embeddings: infos,
        });
        Ok(ms(started))
    }

    /// Makes `loras` the merged set of `loaded` (fetching LoRA files on first use). The same set
    /// as before costs nothing; another set rewrites only the touched weights. Returns each
    /// LoRA's sha256 where known (models.toml or the cache's verified-hash record).
    fn merge_loras(
        &self,
        loaded: &mut Loaded,
        loras: &[ResolvedLora],
    ) -> Result<Vec<Option<String>>, WorkerError> {
        let mut specs = Vec::with_capacity(loras.len());
        let mut shas = Vec::with_capacity(loras.len());
        for l in loras {
            let (path, sha) = match &l.location {
                Location::Path(p) => (p.clone(), None),
                Location::Entry(name) => {
                    let store = self.store_for(name)?;
                    let entry = store.config().require_lora(name)?;
                    let path = store.fetch(entry, None)?;
                    let sha = store.known_sha256(entry, &path);
                    (path, sha)
                }
            };
            shas.push(sha);
            specs.push(lora::LoraSpec {
                path,
                name: l.label.clone(),
                scale: l.scale,
                te_scale: l.te_scale,
            });
        }
        let key = LoraSet::key_of(&specs);
        if loaded.model.lora_key() == Some(key.as_str()) {
            return Ok(shas);
        }
        let (set, warnings) = LoraSet::load(&specs, loaded.model.checkpoint())?;
        let rewritten = loaded.model.set_loras(&set)?;
        tracing::info!(loras = %key, rewritten, "LoRA set merged");
        loaded.lora_warnings = warnings;
        Ok(shas)
    }

    /// The store that serves models.toml entry `name`.
    fn store_for(&self, name: &str) -> Result<&ModelStore, WorkerError> {
        self.store
            .as_ref()
            .ok_or_else(|| WorkerError::UnknownModel(format!("{name:?}: no models.toml")))
    }

    /// The standalone VAE to decode with, fetched on first use.
    fn vae_file(&self, choice: &VaeChoice) -> Result<Option<VaeOverride>, WorkerError> {
        match choice {
            VaeChoice::Own => Ok(None),
            VaeChoice::File(v) => Ok(Some(v.clone())),
            VaeChoice::ModelsToml => match &self.store {
                Some(store) => Ok(store.vae_override()?),
                None => Ok(None),
            },
        }
    }
}

/// The job's LoRAs as resolved labels and scales (what `parameters` and the infotext show).
pub fn lora_specs(loras: &[ResolvedLora]) -> Vec<LoraSpec> {
    loras
        .iter()
        .map(|l| LoraSpec {
            name: l.label.clone(),
            scale: l.scale,
            te_scale: l.te_scale,
        })
        .collect()
}

/// `Lora hashes` of a render (A1111's Lora extension): for each LoRA whose sha256 is known, the
/// name its prompt tag used (else its catalog name) without `:`/`,`, and the shorthash; each
/// alias once.
pub fn lora_hashes(
    job: &ValidatedJob,
    loras: &[ResolvedLora],
    shas: &[Option<String>],
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (l, sha) in loras.iter().zip(shas) {
        let Some(sha) = sha else { continue };
        let written = job
            .lora_tags
            .iter()
            .rev()
            .find(|t| t.name == l.label)
            .map_or(l.label.as_str(), |t| t.written.as_str());
        let alias = output::hash_alias(written);
        if !out.iter().any(|(a, _)| *a == alias) {
            out.push((alias, output::shorthash(sha)));
        }
    }
    out
}

/// Loads models.toml for `render`: a file that does not exist is fine when the checkpoint is a
/// path; one that exists but does not parse is always an error.
pub fn models_for_cli(
    models_toml: Option<&Path>,
    checkpoint_is_path: bool,
) -> Result<Option<ModelsConfig>, WorkerError> {
    let explicit = models_toml.is_some();
    let candidate = models_toml
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(crate::models::DEFAULT_MODELS_TOML));
    if !explicit && !candidate.exists() && checkpoint_is_path {
        return Ok(None);
    }
    Ok(Some(ModelsConfig::load(Some(&candidate))?))
}

fn ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}
