//! The deltas of one component, kept compact: a plain LoRA stays as its two low-rank factors
//! (MBs instead of GBs for a full SDXL LoRA) and a parameter's f32 delta is materialised only when
//! the checkpoint backend loads that parameter.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};

use crate::checkpoint::backend_rows_of as rows_of;
use crate::checkpoint::DeltaSource;

/// One LoRA's contribution to one parameter.
#[derive(Debug, Clone)]
pub(crate) enum Term {
    /// An already materialised f32 delta of the parameter's shape (LoHa, LoKr, CP, DoRA).
    Full(Tensor),
    /// `scale · up[out,r] · down[r,n]`, reshaped to the parameter's shape.
    LowRank {
        up: Tensor,
        down: Tensor,
        scale: f64,
    },
}

/// Parameter deltas of one component: diffusers name → (shape, terms of every LoRA).
#[derive(Debug, Clone, Default)]
pub struct ComponentDeltas {
    params: BTreeMap<String, (Vec<usize>, Vec<Term>)>,
}

impl ComponentDeltas {
    pub(crate) fn add(&mut self, param: String, shape: Vec<usize>, term: Term) {
        self.params
            .entry(param)
            .or_insert_with(|| (shape, Vec::new()))
            .1
            .push(term);
    }

    /// Names of the changed parameters, sorted.
    pub fn names(&self) -> Vec<String> {
        self.params.keys().cloned().collect()
    }

    /// Number of changed parameters.
    pub fn len(&self) -> usize {
        self.params.len()
    }

    /// True when no parameter changes.
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// True when `param` changes.
    pub fn contains(&self, param: &str) -> bool {
        self.params.contains_key(param)
    }

    /// The summed f32 delta of `param` on the CPU, or `None` if no LoRA touches it.
    pub fn get(&self, param: &str) -> candle_core::Result<Option<Tensor>> {
        self.get_on(param, &Device::Cpu)
    }

    /// [`Self::get`] computed on `device` (low-rank factors are moved there first, so the
    /// full-size product is formed on the GPU when loading to one).
    pub fn get_on(&self, param: &str, device: &Device) -> candle_core::Result<Option<Tensor>> {
        let Some((shape, terms)) = self.params.get(param) else {
            return Ok(None);
        };
        let mut sum: Option<Tensor> = None;
        for term in terms {
            let d = match term {
                Term::Full(t) => t.to_device(device)?,
                Term::LowRank { up, down, scale } => {
                    // Scaling the small factor saves a pass over the full-size product.
                    let up = (up.to_device(device)? * *scale)?;
                    up.matmul(&down.to_device(device)?)?
                        .reshape(shape.as_slice())?
                }
            };
            sum = Some(match sum {
                Some(s) => (s + d)?,
                None => d,
            });
        }
        match sum {
            Some(s) => Ok(Some(s)),
            None => Ok(Some(Tensor::zeros(
                shape.as_slice(),
                DType::F32,
                &Device::Cpu,
            )?)),
        }
    }
}

impl DeltaSource for ComponentDeltas {
    fn delta(&self, name: &str, device: &Device) -> candle_core::Result<Option<Tensor>> {
        self.get_on(name, device)
    }

    fn has_delta(&self, name: &str) -> bool {
        self.contains(name)
    }

    fn delta_rows(
        &self,
        name: &str,
        from: usize,
        to: usize,
    ) -> candle_core::Result<Option<Tensor>> {
        let Some((_, terms)) = self.params.get(name) else {
            return Ok(None);
        };
        let mut sum: Option<Tensor> = None;
        for term in terms {
            let d = match term {
                Term::Full(t) => rows_of(&t.to_device(&Device::Cpu)?, from, to)?,
                Term::LowRank { up, down, scale } => {
                    let up = (up.narrow(0, from, to - from)?.to_dtype(DType::F32)? * *scale)?;
                    up.matmul(&down.to_dtype(DType::F32)?)?
                }
            };
            sum = Some(match sum {
                Some(s) => (s + d)?,
                None => d,
            });
        }
        Ok(sum)
    }
}
