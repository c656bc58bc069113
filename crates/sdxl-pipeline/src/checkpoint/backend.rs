//! The `SimpleBackend` that serves one component's diffusers names from the mapped file(s).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;

use super::header::SafetensorsFile;
use super::merge;
use super::names::{NameMap, Source, Transform};
use crate::PipelineError;

/// Supplies the f32 delta of a parameter on demand (a LoRA set keeps low-rank factors and
/// materialises one parameter's delta only while that parameter is being loaded).
pub trait DeltaSource: Send + Sync {
    /// The delta for diffusers parameter `name` (shape of the parameter), or `None`; computed
    /// on `device` where possible (the backend moves it there anyway).
    fn delta(&self, name: &str, device: &Device) -> candle_core::Result<Option<Tensor>>;

    /// True when `name` has a delta.
    fn has_delta(&self, name: &str) -> bool;

    /// Rows `[from, to)` of the delta of `name` on the CPU, as f32 `[to − from, cols]` (the
    /// parameter flattened after its first dimension), formed without the rest of the delta
    /// where possible: the CPU merge works block by block so the full-size f32 delta never
    /// exists. `None` when `name` has no delta.
    fn delta_rows(&self, name: &str, from: usize, to: usize)
        -> candle_core::Result<Option<Tensor>>;
}

impl DeltaSource for HashMap<String, Tensor> {
    fn delta(&self, name: &str, _device: &Device) -> candle_core::Result<Option<Tensor>> {
        Ok(self.get(name).cloned())
    }

    fn has_delta(&self, name: &str) -> bool {
        self.contains_key(name)
    }

    fn delta_rows(
        &self,
        name: &str,
        from: usize,
        to: usize,
    ) -> candle_core::Result<Option<Tensor>> {
        self.get(name).map(|d| rows_of(d, from, to)).transpose()
    }
}

/// Rows `[from, to)` of `t` flattened to `[rows, cols]`, as f32.
pub(crate) fn rows_of(t: &Tensor, from: usize, to: usize) -> candle_core::Result<Tensor> {
    let rows = t.dim(0)?;
    t.reshape((rows, t.elem_count() / rows.max(1)))?
        .narrow(0, from, to.saturating_sub(from))?
        .to_dtype(DType::F32)
}

/// Tensors handed to a model, by diffusers name (clones sharing storage).
pub type WeightHandles = HashMap<String, Vec<Tensor>>;

/// Serves parameters of one component: read from the mmap, transformed (q/k/v split, transpose,
/// 1×1 squeeze), plus an optional f32 delta (LoRA), then cast to the requested dtype.
pub struct ComponentBackend {
    pub(crate) files: Arc<Vec<SafetensorsFile>>,
    pub(crate) map: Arc<NameMap>,
    /// f32 deltas by diffusers name, added before the dtype cast (for LoRA merges).
    pub(crate) deltas: Option<Arc<dyn DeltaSource>>,
    /// The first typed error a `get` produced, so loaders can return it instead of candle's text.
    pub(crate) last_error: Arc<Mutex<Option<PipelineError>>>,
    /// When set, every tensor handed out is also recorded here by name (a cheap clone sharing
    /// its storage; several if the model asked twice), so LoRA switching can rewrite a loaded
    /// model's weights in place.
    pub(crate) handles: Option<Arc<Mutex<WeightHandles>>>,
}

impl ComponentBackend {
    fn fail(&self, err: PipelineError) -> candle_core::Error {
        let msg = err.to_string();
        if let Ok(mut slot) = self.last_error.lock() {
            if slot.is_none() {
                *slot = Some(err);
            }
        }
        candle_core::Error::Msg(msg)
    }

    fn invalid(&self, src: Option<&Source>, name: &str, reason: String) -> candle_core::Error {
        let (path, tensor) = match src.and_then(|s| self.files.get(s.file).map(|f| (f, s))) {
            Some((f, s)) => (f.path().to_path_buf(), s.key.clone()),
            // A missing tensor: name the component's (first) file.
            None => (
                self.map
                    .values()
                    .next()
                    .and_then(|s| self.files.get(s.file))
                    .or_else(|| self.files.first())
                    .map(|f| f.path().to_path_buf())
                    .unwrap_or_default(),
                name.to_string(),
            ),
        };
        self.fail(PipelineError::TensorInvalid {
            path,
            tensor,
            reason,
        })
    }

    fn load(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let Some(src) = self.map.get(name) else {
            return Err(self.invalid(None, name, format!("missing (needed as `{name}`)")));
        };
        let file = self
            .files
            .get(src.file)
            .ok_or_else(|| self.invalid(Some(src), name, "file index out of range".into()))?;
        let entry = file
            .entry(&src.key)
            .ok_or_else(|| self.invalid(Some(src), name, "missing from the header".into()))?;
        let Some(stored) = entry.dtype.float() else {
            return Err(self.invalid(
                Some(src),
                name,
                format!("dtype {} is not a float dtype", entry.dtype),
            ));
        };
        let bytes = entry.end - entry.start;
        // A read failure (I/O error, file shorter than its header) is a typed error naming the
        // file, so loaders report it as such.
        let io = |e: candle_core::Error| match e {
            candle_core::Error::Io(source) => self.fail(PipelineError::Io {
                path: file.path().to_path_buf(),
                source,
            }),
            e => e,
        };
        let t = match src.transform {
            Transform::Rows { part, parts } => {
                let block = bytes / parts;
                file.load_bytes(
                    entry,
                    stored,
                    (part * block, (part + 1) * block),
                    &src.shape,
                    dev,
                )
                .map_err(io)?
            }
            Transform::Identity => file
                .load_bytes(entry, stored, (0, bytes), &src.shape, dev)
                .map_err(io)?,
            Transform::Squeeze1x1 => file
                .load_bytes(entry, stored, (0, bytes), &src.shape, dev)
                .map_err(io)?,
            Transform::Transpose => file
                .load_bytes(entry, stored, (0, bytes), &entry.shape, dev)
                .map_err(io)?
                .t()?
                .contiguous()?,
        };
        let deltas = self.deltas.as_ref().filter(|d| d.has_delta(name));
        if let (Some(d), true) = (deltas, dev.is_cpu()) {
            let rows = |from, to| d.delta_rows(name, from, to);
            if let Some(merged) = merge::fused_add_cast_blocked(&t, dtype, &rows)? {
                return Ok(self.record(name, merged));
            }
        }
        let delta = match deltas {
            Some(d) => d.delta(name, dev)?,
            None => None,
        };
        let t = match delta {
            Some(delta) => {
                let delta = delta.to_dtype(DType::F32)?.to_device(dev)?;
                (t.to_dtype(DType::F32)? + delta)?.to_dtype(dtype)?
            }
            None if dtype == DType::F32 => match super::upcast::f16_to_f32(&t)? {
                Some(up) => up,
                None => t.to_dtype(dtype)?,
            },
            None => t.to_dtype(dtype)?,
        };
        Ok(self.record(name, t))
    }

    /// Keeps a handle of `t` when recording (LoRA switching rewrites through it); returns `t`.
    fn record(&self, name: &str, t: Tensor) -> Tensor {
        if let Some(handles) = &self.handles {
            if let Ok(mut h) = handles.lock() {
                h.entry(name.to_string()).or_default().push(t.clone());
            }
        }
        t
    }
}

impl SimpleBackend for ComponentBackend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        if let Some(src) = self.map.get(name) {
            if src.shape.as_slice() != s.dims() {
                return Err(self.invalid(
                    Some(src),
                    name,
                    format!(
                        "shape {:?} but the model needs {:?} for `{name}`",
                        src.shape,
                        s.dims()
                    ),
                ));
            }
        }
        self.load(name, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }
}
