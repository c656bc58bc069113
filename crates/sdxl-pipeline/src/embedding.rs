//! SDXL textual-inversion embeddings (SPEC §5a): a safetensors file with `clip_l` `[n, 768]` and
//! `clip_g` `[n, 1280]` (widths follow the loaded text encoders), whose n vectors replace the
//! tokens that spell the embedding's name in each encoder's input embeddings.
//!
//! This module only reads and validates files; matching names in prompts and injecting the
//! vectors is the prompt encoder's job.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use safetensors::SafeTensors;

use crate::lora::file::candle_dtype;
use crate::{PipelineError, Result};

/// The most vectors one embedding may hold (A1111 embeddings have 1–75).
pub const MAX_VECTORS: usize = 75;

/// One textual-inversion embedding: its prompt name and its vectors for both text encoders (f32, CPU).
#[derive(Debug, Clone)]
pub struct TextualInversion {
    name: String,
    clip_l: Tensor,
    clip_g: Tensor,
}

impl TextualInversion {
    /// Reads `path` as an SDXL embedding called `name` (the word that triggers it in prompts).
    /// Anything else — not safetensors, no `clip_l`/`clip_g`, mismatched vector counts, non-float
    /// or non-finite values — is [`PipelineError::ModelInvalid`]/`TensorInvalid` naming the file.
    pub fn load(path: &Path, name: &str) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| PipelineError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(&bytes, path, name)
    }

    /// [`Self::load`] from bytes already in memory (`path` only names the file in errors).
    pub fn from_bytes(bytes: &[u8], path: &Path, name: &str) -> Result<Self> {
        let invalid = |reason: String| PipelineError::ModelInvalid {
            path: path.to_path_buf(),
            reason,
        };
        if name.trim().is_empty() {
            return Err(invalid("an embedding needs a non-empty name".into()));
        }
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| invalid(format!("not a valid safetensors embedding file: {e}")))?;
        let read = |key: &str| -> Result<Tensor> {
            let bad = |reason: String| PipelineError::TensorInvalid {
                path: path.to_path_buf(),
                tensor: key.to_string(),
                reason,
            };
            let view = st.tensor(key).map_err(|_| {
                invalid(format!(
                    "not an SDXL embedding: tensor `{key}` is missing (SDXL embeddings hold \
                     `clip_l` and `clip_g`)"
                ))
            })?;
            let dtype = candle_dtype(view.dtype())
                .ok_or_else(|| bad(format!("dtype {:?} is not a float dtype", view.dtype())))?;
            if view.shape().len() != 2 || view.shape()[0] == 0 || view.shape()[0] > MAX_VECTORS {
                return Err(bad(format!(
                    "shape {:?} is not [n, width] with 1 ≤ n ≤ {MAX_VECTORS}",
                    view.shape()
                )));
            }
            let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)
                .and_then(|t| t.to_dtype(DType::F32))
                .map_err(|e| bad(e.to_string()))?;
            let finite = t
                .flatten_all()
                .and_then(|f| f.to_vec1::<f32>())
                .map_err(|e| bad(e.to_string()))?
                .iter()
                .all(|v| v.is_finite());
            if !finite {
                return Err(bad("contains NaN or Inf values".into()));
            }
            Ok(t)
        };
        let (clip_l, clip_g) = (read("clip_l")?, read("clip_g")?);
        if clip_l.dim(0)? != clip_g.dim(0)? {
            return Err(invalid(format!(
                "`clip_l` has {} vectors but `clip_g` has {}",
                clip_l.dim(0)?,
                clip_g.dim(0)?
            )));
        }
        Ok(Self {
            name: name.to_string(),
            clip_l,
            clip_g,
        })
    }

    /// The name that triggers the embedding in a prompt.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of vectors (tokens) the embedding stands for.
    pub fn vectors(&self) -> usize {
        self.clip_l.dims()[0]
    }

    /// Vectors for text encoder 1 (CLIP ViT-L): `[n, width_l]`, f32 on the CPU.
    pub fn clip_l(&self) -> &Tensor {
        &self.clip_l
    }

    /// Vectors for text encoder 2 (OpenCLIP bigG): `[n, width_g]`, f32 on the CPU.
    pub fn clip_g(&self) -> &Tensor {
        &self.clip_g
    }
}
