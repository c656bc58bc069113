//! Sinusoidal timestep embedding (diffusers `get_timestep_embedding`, computed in f32) and the
//! two-layer `TimestepEmbedding` MLP.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};

/// diffusers `Timesteps`: `[cos | sin]` (with `flip_sin_to_cos`) of `t · exp(-ln(10⁴)·i/(half − shift))`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timesteps {
    pub dim: usize,
    pub flip_sin_to_cos: bool,
    pub shift: f64,
}

impl Timesteps {
    /// `t` [N] in f32 → [N, dim] in f32 (the caller casts to the model dtype).
    pub fn forward(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        let half = self.dim / 2;
        let t = t.to_dtype(DType::F32)?;
        let exponent = (Tensor::arange(0u32, half as u32, t.device())?.to_dtype(DType::F32)?
            * (-(10000f64.ln())))?;
        let freqs = (exponent / (half as f64 - self.shift))?.exp()?;
        let args = t.unsqueeze(1)?.broadcast_mul(&freqs.unsqueeze(0)?)?;
        let (sin, cos) = (args.sin()?, args.cos()?);
        if self.flip_sin_to_cos {
            Tensor::cat(&[cos, sin], 1)
        } else {
            Tensor::cat(&[sin, cos], 1)
        }
    }

    /// The same timestep for each of `batch` rows, as an f32 tensor on `device`.
    pub fn constant(batch: usize, t: f64, device: &Device) -> candle_core::Result<Tensor> {
        Tensor::full(t as f32, batch, device)
    }
}

/// diffusers `TimestepEmbedding`: `linear_1`, SiLU, `linear_2`.
#[derive(Debug)]
pub(crate) struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn new(vb: VarBuilder, inp: usize, out: usize) -> candle_core::Result<Self> {
        Ok(Self {
            linear_1: candle_nn::linear(inp, out, vb.pp("linear_1"))?,
            linear_2: candle_nn::linear(out, out, vb.pp("linear_2"))?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.linear_2
            .forward(&candle_nn::ops::silu(&self.linear_1.forward(x)?)?)
    }
}
