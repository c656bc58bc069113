//! Euler (k-diffusion `sample_euler`, no churn).

use candle_core::Tensor;

use super::{add_scaled, step_count, to_d, Denoiser, NoiseSource, Sampler};
use crate::Result;

/// First-order Euler steps: x ← x + d·(σ_{i+1} − σ_i).
#[derive(Debug, Clone, Copy, Default)]
pub struct Euler;

impl Sampler for Euler {
    fn sample(
        &self,
        model: &mut dyn Denoiser,
        mut x: Tensor,
        sigmas: &[f64],
        _noise: &mut dyn NoiseSource,
        on_step: &mut dyn FnMut(usize, usize) -> Result<()>,
    ) -> Result<Tensor> {
        let n = step_count(sigmas);
        for (i, w) in sigmas.windows(2).enumerate() {
            let (s, s_next) = (w[0], w[1]);
            let denoised = model.denoise(&x, s)?;
            let d = to_d(&x, s, &denoised)?;
            x = add_scaled(&x, s_next - s, &d)?;
            on_step(i, n)?;
        }
        Ok(x)
    }
}
