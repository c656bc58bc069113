//! Switching the LoRA set of a loaded model in place: the weights the backend handed to the model
//! are kept as handles (clones sharing storage); a switch rewrites every parameter touched by the
//! old or the new set with base (re-read from the mmap) + new delta, so the base is restored
//! exactly (no subtraction drift) and the rest of the checkpoint is not read again.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::{ComponentDeltas, LoraSet};
use crate::checkpoint::{Checkpoint, Component};
use crate::{PipelineError, Result};

/// What a call to [`LiveWeights::switch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchOutcome {
    /// The set's key equals the applied one: nothing to do.
    Unchanged,
    /// This many parameters were rewritten in place.
    Rewritten(usize),
}

/// The weights of one loaded component and the LoRA set merged into them.
pub struct LiveWeights {
    component: Component,
    dtype: DType,
    device: Device,
    handles: HashMap<String, Tensor>,
    applied: Arc<ComponentDeltas>,
    key: String,
}

impl std::fmt::Debug for LiveWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveWeights")
            .field("component", &self.component)
            .field("handles", &self.handles.len())
            .field("key", &self.key)
            .finish()
    }
}

impl LiveWeights {
    /// Builds `component` with `set` merged (via `build`, e.g. `|vb| SdxlUNet::new(vb, cfg)`) and
    /// keeps handles of its weights for later [`Self::switch`]es.
    ///
    /// Switching works only for models that keep the tensors they get from the VarBuilder (or
    /// views of them); a model that copies a weight at construction (`contiguous()` after a
    /// transpose, a dtype cast) would not see the rewrite: rebuild such a component instead.
    pub fn load<T>(
        ckpt: &Checkpoint,
        component: Component,
        dtype: DType,
        device: &Device,
        set: &LoraSet,
        build: impl FnOnce(VarBuilder<'static>) -> Result<T>,
    ) -> Result<(T, Self)> {
        let applied = set.deltas(component);
        let (model, handles) =
            ckpt.build_recording(component, dtype, device, applied.clone(), build)?;
        Ok((
            model,
            Self {
                component,
                dtype,
                device: device.clone(),
                handles,
                applied,
                key: set.key(),
            },
        ))
    }

    /// The cache key of the applied set.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Makes the model's weights equal to base + `set`'s deltas. Same key ⇒ no work.
    pub fn switch(&mut self, ckpt: &Checkpoint, set: &LoraSet) -> Result<SwitchOutcome> {
        if set.key() == self.key {
            return Ok(SwitchOutcome::Unchanged);
        }
        let new = set.deltas(self.component);
        let touched: BTreeSet<String> = self
            .applied
            .names()
            .into_iter()
            .chain(new.names())
            .collect();
        let vb =
            ckpt.var_builder_with_deltas(self.component, self.dtype, &self.device, new.clone())?;
        for name in &touched {
            let Some(handle) = self.handles.get(name) else {
                return Err(PipelineError::InvalidInput(format!(
                    "LoRA switch: the loaded {} never requested `{name}`",
                    self.component.dir_name()
                )));
            };
            let fresh = vb.get(handle.dims(), name)?;
            handle.slice_set(&fresh, 0, 0)?;
        }
        let n = touched.len();
        self.applied = new;
        self.key = set.key();
        Ok(SwitchOutcome::Rewritten(n))
    }
}
