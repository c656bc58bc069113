//! Checkpoint loading: SDXL single files (original/LDM layout, optionally with a diffusers config
//! dir) and diffusers-layout directories, memory-mapped, served to the models under diffusers /
//! transformers parameter names through a custom `SimpleBackend`.

mod backend;
mod configs;
mod header;
mod host_alloc;
mod in_channels;
mod merge;
mod names;
mod upcast;
mod vae_file;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

pub use configs::SdxlConfigs;
pub use header::{SafetensorsFile, StoredDtype, TensorEntry};
pub use names::{Transform, TE1_PREFIX, TE2_PREFIX, UNET_PREFIX, VAE_PREFIX};

use crate::unet::SdxlUNet;
use crate::vae::AutoencoderKl;
use crate::{PipelineError, Result};
pub(crate) use backend::rows_of as backend_rows_of;
use backend::ComponentBackend;
pub use backend::{DeltaSource, WeightHandles};
use names::NameMap;
pub use vae_file::VaeLayout;

/// Where the weights come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// One `.safetensors` file in the original SDXL layout; `config_dir` is a diffusers directory
    /// whose `*/config.json` describe the architecture (default: SDXL base).
    SingleFile {
        path: PathBuf,
        config_dir: Option<PathBuf>,
    },
    /// A diffusers directory (`unet/`, `vae/`, `text_encoder/`, `text_encoder_2/`).
    DiffusersDir(PathBuf),
}

/// A standalone VAE that replaces the checkpoint's own (models.toml `[vae]`, SPEC §8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaeOverride {
    /// The `.safetensors` file (diffusers or original layout).
    pub path: PathBuf,
    /// The VAE does not overflow in fp16 (e.g. `madebyollin/sdxl-vae-fp16-fix`): an f16 model
    /// then decodes in f16 instead of upcasting to f32. A non-finite decode still retries in f32.
    pub fp16_safe: bool,
}

/// One of the four SDXL models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Component {
    Unet,
    Vae,
    TextEncoder,
    TextEncoder2,
}

impl Component {
    /// All four, in a fixed order.
    pub const ALL: [Component; 4] = [Self::Unet, Self::Vae, Self::TextEncoder, Self::TextEncoder2];

    /// The diffusers subfolder name.
    pub fn dir_name(self) -> &'static str {
        match self {
            Self::Unet => "unet",
            Self::Vae => "vae",
            Self::TextEncoder => "text_encoder",
            Self::TextEncoder2 => "text_encoder_2",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Unet => 0,
            Self::Vae => 1,
            Self::TextEncoder => 2,
            Self::TextEncoder2 => 3,
        }
    }
}

/// An opened, validated checkpoint (headers parsed, files mapped, no weights read yet).
pub struct Checkpoint {
    files: Arc<Vec<SafetensorsFile>>,
    maps: [Arc<NameMap>; 4],
    configs: SdxlConfigs,
    single_file: bool,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field(
                "files",
                &self.files.iter().map(|x| x.path()).collect::<Vec<_>>(),
            )
            .field("single_file", &self.single_file)
            .finish()
    }
}

impl Checkpoint {
    /// Opens `source`: reads configs, maps every weight file and validates its header. A file that
    /// is not safetensors is [`PipelineError::ModelInvalid`] naming it.
    pub fn open(source: &ModelSource) -> Result<Self> {
        Self::open_with_vae(source, None)
    }

    /// [`Self::open`], with the VAE taken from `vae` instead of the checkpoint when given. The
    /// override keeps the checkpoint's VAE architecture config; its `force_upcast` becomes
    /// `!vae.fp16_safe`.
    pub fn open_with_vae(source: &ModelSource, vae: Option<&VaeOverride>) -> Result<Self> {
        let (mut files, mut maps, mut configs, single_file) = match source {
            ModelSource::SingleFile { path, config_dir } => {
                let configs = match config_dir {
                    Some(dir) => SdxlConfigs::from_dir(dir)?,
                    None => SdxlConfigs::sdxl_base(),
                };
                let file = SafetensorsFile::open(path)?;
                let maps =
                    names::single_file_maps(file.tensors().iter(), 0, &configs.unet, &configs.vae);
                if maps[0].is_empty() {
                    return Err(PipelineError::ModelInvalid {
                        path: path.clone(),
                        reason: format!(
                            "no SDXL UNet tensors (`{UNET_PREFIX}…`): not an SDXL single-file checkpoint"
                        ),
                    });
                }
                (vec![file], maps, configs, true)
            }
            ModelSource::DiffusersDir(dir) => {
                let configs = SdxlConfigs::from_dir(dir)?;
                let mut files = Vec::new();
                let mut maps: [NameMap; 4] = Default::default();
                for c in Component::ALL {
                    for path in weight_files(&dir.join(c.dir_name()))? {
                        let file = SafetensorsFile::open(&path)?;
                        let text = matches!(c, Component::TextEncoder | Component::TextEncoder2);
                        names::diffusers_file_map(
                            &mut maps[c.index()],
                            file.tensors().iter(),
                            files.len(),
                            text,
                        );
                        files.push(file);
                    }
                }
                (files, maps, configs, false)
            }
        };
        // The UNet's input channels come from its `conv_in` weight (4, or 9 for inpainting
        // checkpoints), not from the config (SPEC §13).
        configs.unet.in_channels =
            in_channels::unet_in_channels(&maps[Component::Unet.index()], &files)?;
        if let Some(vae) = vae {
            let file = SafetensorsFile::open(&vae.path)?;
            let levels = configs.vae.block_out_channels.len();
            let (map, layout) = vae_file::vae_file_map(file.tensors().iter(), files.len(), levels)
                .map_err(|reason| PipelineError::ModelInvalid {
                    path: vae.path.clone(),
                    reason,
                })?;
            tracing::info!(path = %vae.path.display(), ?layout, fp16_safe = vae.fp16_safe, "VAE override");
            files.push(file);
            maps[Component::Vae.index()] = map;
            configs.vae.force_upcast = !vae.fp16_safe;
        }
        Ok(Self {
            files: Arc::new(files),
            maps: maps.map(Arc::new),
            configs,
            single_file,
        })
    }

    /// The architecture configs.
    pub fn configs(&self) -> &SdxlConfigs {
        &self.configs
    }

    /// Whether the UNet takes 9 input channels (an SDXL inpainting checkpoint: latent, mask and
    /// masked-image latent; detected from the `conv_in` weight).
    pub fn is_inpainting(&self) -> bool {
        self.configs.unet.in_channels == in_channels::INPAINT_IN_CHANNELS
    }

    /// Every parameter the checkpoint holds for `component`: diffusers name and shape, sorted.
    pub fn parameter_names(&self, component: Component) -> Vec<(String, Vec<usize>)> {
        self.maps[component.index()]
            .iter()
            .map(|(n, s)| (n.clone(), s.shape.clone()))
            .collect()
    }

    /// The stored key of a parameter (for a single file, the original-layout key, e.g.
    /// `model.diffusion_model.input_blocks.4.1.proj_in.weight`; for fused OpenCLIP q/k/v the
    /// `attn.in_proj_weight` key).
    pub fn original_name(&self, component: Component, diffusers_name: &str) -> Option<String> {
        self.maps[component.index()]
            .get(diffusers_name)
            .map(|s| s.key.clone())
    }

    /// The original-layout (LDM) UNet name of a diffusers UNet parameter, without the
    /// `model.diffusion_model.` prefix, for any checkpoint layout (LoRA key tables need it).
    pub fn unet_ldm_name(&self, diffusers_name: &str) -> Option<String> {
        if self.single_file {
            if let Some(key) = self.original_name(Component::Unet, diffusers_name) {
                return key.strip_prefix(UNET_PREFIX).map(String::from);
            }
        }
        let pmap = names::unet_prefix_map(&self.configs.unet);
        names::unet_diffusers_to_ldm(diffusers_name, &pmap)
    }

    /// How the stored tensor becomes the parameter (q/k/v row block, transpose, ...).
    pub fn transform(&self, component: Component, diffusers_name: &str) -> Option<Transform> {
        self.maps[component.index()]
            .get(diffusers_name)
            .map(|s| s.transform)
    }

    /// A VarBuilder that serves diffusers/transformers names of `component` (for text encoders:
    /// `text_model.…` and `text_projection.weight`), casting to `dtype` on `device`.
    pub fn var_builder(
        &self,
        component: Component,
        dtype: DType,
        device: &Device,
    ) -> Result<VarBuilder<'static>> {
        Ok(self.backend_vb(component, dtype, device, None).0)
    }

    /// Like [`Self::build`] with LoRA `deltas`, also returning handles (clones sharing storage)
    /// of every tensor handed to `build`, keyed by diffusers name: what LoRA switching rewrites.
    pub fn build_recording<T>(
        &self,
        component: Component,
        dtype: DType,
        device: &Device,
        deltas: Arc<dyn DeltaSource>,
        build: impl FnOnce(VarBuilder<'static>) -> Result<T>,
    ) -> Result<(T, WeightHandles)> {
        let handles = Arc::new(Mutex::new(HashMap::new()));
        let last_error = Arc::new(Mutex::new(None));
        let backend = ComponentBackend {
            files: self.files.clone(),
            map: self.maps[component.index()].clone(),
            deltas: Some(deltas),
            last_error: last_error.clone(),
            handles: Some(handles.clone()),
        };
        let vb = VarBuilder::from_backend(Box::new(backend), dtype, device.clone());
        let model = build(vb).map_err(|e| {
            let typed = last_error.lock().ok().and_then(|mut s| s.take());
            typed.unwrap_or(e)
        })?;
        let handles = handles
            .lock()
            .map(|mut h| std::mem::take(&mut *h))
            .unwrap_or_default();
        Ok((model, handles))
    }

    /// [`Self::var_builder`] whose tensors get `deltas` (diffusers name → f32 tensor of the
    /// parameter's shape) added in f32 before the cast: the hook for LoRA merging.
    pub fn var_builder_with_deltas(
        &self,
        component: Component,
        dtype: DType,
        device: &Device,
        deltas: Arc<dyn DeltaSource>,
    ) -> Result<VarBuilder<'static>> {
        Ok(self.backend_vb(component, dtype, device, Some(deltas)).0)
    }

    fn backend_vb(
        &self,
        component: Component,
        dtype: DType,
        device: &Device,
        deltas: Option<Arc<dyn DeltaSource>>,
    ) -> (VarBuilder<'static>, Arc<Mutex<Option<PipelineError>>>) {
        let last_error = Arc::new(Mutex::new(None));
        let backend = ComponentBackend {
            files: self.files.clone(),
            map: self.maps[component.index()].clone(),
            deltas,
            last_error: last_error.clone(),
            handles: None,
        };
        (
            VarBuilder::from_backend(Box::new(backend), dtype, device.clone()),
            last_error,
        )
    }

    /// Builds a model of `component` with `build`; a failure caused by a missing or unusable
    /// tensor is returned as that tensor's [`PipelineError::TensorInvalid`].
    pub fn build<T>(
        &self,
        component: Component,
        dtype: DType,
        device: &Device,
        build: impl FnOnce(VarBuilder<'static>) -> Result<T>,
    ) -> Result<T> {
        if self.maps[component.index()].is_empty() {
            return Err(PipelineError::ModelInvalid {
                path: self.first_path(),
                reason: format!("the checkpoint has no {} weights", component.dir_name()),
            });
        }
        let (vb, last_error) = self.backend_vb(component, dtype, device, None);
        build(vb).map_err(|e| {
            let typed = last_error.lock().ok().and_then(|mut s| s.take());
            typed.unwrap_or(e)
        })
    }

    /// Loads the UNet in `dtype` on `device`.
    pub fn load_unet(&self, dtype: DType, device: &Device) -> Result<SdxlUNet> {
        self.build(Component::Unet, dtype, device, |vb| {
            SdxlUNet::new(vb, &self.configs.unet)
        })
    }

    /// Loads the VAE in `dtype` on `device`.
    pub fn load_vae(&self, dtype: DType, device: &Device) -> Result<AutoencoderKl> {
        self.build(Component::Vae, dtype, device, |vb| {
            AutoencoderKl::new(vb, &self.configs.vae)
        })
    }

    fn first_path(&self) -> PathBuf {
        self.files
            .first()
            .map(|f| f.path().to_path_buf())
            .unwrap_or_default()
    }
}

/// The safetensors files of one diffusers component folder: the plain file, else the `.fp16`
/// variant, else the shards listed in a `*.safetensors.index.json`.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let stems = ["diffusion_pytorch_model", "model"];
    for suffix in [".safetensors", ".fp16.safetensors"] {
        for stem in stems {
            let p = dir.join(format!("{stem}{suffix}"));
            if p.is_file() {
                return Ok(vec![p]);
            }
        }
    }
    for suffix in [".safetensors.index.json", ".safetensors.index.fp16.json"] {
        for stem in stems {
            let p = dir.join(format!("{stem}{suffix}"));
            if p.is_file() {
                return shard_files(dir, &p);
            }
        }
    }
    Err(PipelineError::ModelInvalid {
        path: dir.to_path_buf(),
        reason: "no safetensors weights (diffusion_pytorch_model.safetensors / model.safetensors)"
            .into(),
    })
}

fn shard_files(dir: &Path, index: &Path) -> Result<Vec<PathBuf>> {
    let bad = |reason: String| PipelineError::ModelInvalid {
        path: index.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(index).map_err(|source| PipelineError::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| bad("no weight_map".into()))?;
    let mut shards: Vec<String> = map
        .values()
        .filter_map(|s| s.as_str().map(String::from))
        .collect();
    shards.sort();
    shards.dedup();
    shards
        .into_iter()
        .map(|s| {
            if s.contains('/') || s.contains('\\') || s.starts_with('.') {
                Err(bad(format!("shard name {s:?} leaves the folder")))
            } else {
                Ok(dir.join(s))
            }
        })
        .collect()
}
