//! Euler (k-diffusion `sample_euler`, with A1111's `s_churn`/`s_tmin`/`s_tmax`/`s_noise`).

use candle_core::Tensor;

use super::extra_params::Churn;
use super::{add_scaled, churn_step, step_count, to_d, Denoiser, NoiseSource, Sampler};
use crate::Result;

/// First-order Euler steps: x ← x + d·(σ_{i+1} − σ̂_i), σ̂_i = σ_i·(1 + γ) after churn noise.
#[derive(Debug, Clone, Copy, Default)]
pub struct Euler {
    /// Churn settings (default: none).
    pub churn: Churn,
}

impl Sampler for Euler {
    fn sample(
        &self,
        model: &mut dyn Denoiser,
        mut x: Tensor,
        sigmas: &[f64],
        noise: &mut dyn NoiseSource,
        on_step: &mut dyn FnMut(usize, usize) -> Result<()>,
    ) -> Result<Tensor> {
        let n = step_count(sigmas);
        for (i, w) in sigmas.windows(2).enumerate() {
            let (s, s_next) = (w[0], w[1]);
            let (churned, s_hat) = churn_step(&self.churn, x, s, sigmas.len(), noise)?;
            x = churned;
            let denoised = model.denoise(&x, s_hat)?;
            let d = to_d(&x, s_hat, &denoised)?;
            x = add_scaled(&x, s_next - s_hat, &d)?;
            on_step(i, n)?;
        }
        Ok(x)
    }
}
