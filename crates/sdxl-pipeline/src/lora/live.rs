//! Switching the LoRA set of a loaded model in place: the weights the backend handed to the model
//! are kept as handles (clones sharing storage); a switch rewrites every parameter touched by the
//! old or the new set with base (re-read from the mmap) + new delta, so the base is restored
//! exactly (no subtraction drift) and the rest of the checkpoint is not read again.

use std::collections::BTreeSet;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;

use super::LoraSet;
use crate::checkpoint::{Checkpoint, Component, WeightHandles};
use crate::Result;

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
    handles: WeightHandles,
    /// Parameters that may differ from base (after a failed switch: every one it touched).
    applied: BTreeSet<String>,
    /// Key of the applied set; `None` after a failed switch (the next one redoes everything).
    key: Option<String>,
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
        let deltas = set.deltas(component);
        let applied = deltas.names().into_iter().collect();
        let (model, handles) = ckpt.build_recording(component, dtype, device, deltas, build)?;
        Ok((
            model,
            Self {
                component,
                dtype,
                device: device.clone(),
                handles,
                applied,
                key: Some(set.key()),
            },
        ))
    }

    /// The cache key of the applied set (`None` after a failed switch).
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// Makes the model's weights equal to base + `set`'s deltas. Same key ⇒ no work.
    pub fn switch(&mut self, ckpt: &Checkpoint, set: &LoraSet) -> Result<SwitchOutcome> {
        if self.key.as_deref() == Some(set.key().as_str()) {
            return Ok(SwitchOutcome::Unchanged);
        }
        let new = set.deltas(self.component);
        let touched: BTreeSet<String> = self.applied.iter().cloned().chain(new.names()).collect();
        // Until every write succeeded, any touched parameter may differ from base.
        self.key = None;
        self.applied = touched.clone();
        let vb =
            ckpt.var_builder_with_deltas(self.component, self.dtype, &self.device, new.clone())?;
        for name in &touched {
            // A parameter the model never requested does not affect it.
            let Some(handles) = self.handles.get(name) else {
                tracing::debug!(name, "LoRA switch: parameter not used by the loaded model");
                continue;
            };
            for handle in handles {
                let fresh = vb.get(handle.dims(), name)?;
                handle.slice_set(&fresh, 0, 0)?;
            }
        }
        let n = touched.len();
        self.applied = new.names().into_iter().collect();
        self.key = Some(set.key());
        Ok(SwitchOutcome::Rewritten(n))
    }
}
