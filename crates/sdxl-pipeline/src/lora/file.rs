//! Reading one LoRA file: a validated safetensors file whose tensors are all converted to f32 on
//! the CPU (LoRAs are small) and checked for NaN/Inf, plus its string metadata.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensors};

use crate::{PipelineError, Result};

/// The tensors (f32, CPU) and `__metadata__` of one LoRA file.
pub(crate) struct LoraFile {
    pub tensors: BTreeMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

fn invalid(path: &Path, reason: String) -> PipelineError {
    PipelineError::ModelInvalid {
        path: path.to_path_buf(),
        reason,
    }
}

pub(crate) fn candle_dtype(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::BF16,
        Dtype::F32 => DType::F32,
        Dtype::F64 => DType::F64,
        _ => return None,
    })
}

impl LoraFile {
    /// Reads and validates `path`. Anything that is not a safetensors file of float tensors with
    /// finite values is [`PipelineError::ModelInvalid`] naming the file (and tensor).
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| PipelineError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| invalid(path, format!("not a valid safetensors LoRA file: {e}")))?;
        let (_, meta) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| invalid(path, format!("not a valid safetensors LoRA file: {e}")))?;
        let metadata = meta.metadata().clone().unwrap_or_default();
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let bad = |reason: String| PipelineError::TensorInvalid {
                path: path.to_path_buf(),
                tensor: name.clone(),
                reason,
            };
            let dtype = candle_dtype(view.dtype())
                .ok_or_else(|| bad(format!("dtype {:?} is not a float dtype", view.dtype())))?;
            let t = Tensor::from_raw_buffer(view.data(), dtype, view.shape(), &Device::Cpu)
                .and_then(|t| t.to_dtype(DType::F32))
                .map_err(|e| bad(e.to_string()))?;
            let values = t
                .flatten_all()
                .and_then(|f| f.to_vec1::<f32>())
                .map_err(|e| bad(e.to_string()))?;
            if values.iter().any(|v| !v.is_finite()) {
                return Err(bad("contains NaN or Inf values".into()));
            }
            tensors.insert(name, t);
        }
        if tensors.is_empty() {
            return Err(invalid(path, "the LoRA file holds no tensors".into()));
        }
        Ok(Self { tensors, metadata })
    }
}
