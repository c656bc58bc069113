//! Heun (k-diffusion `sample_heun`, with A1111's churn parameters): 2 model calls per step,
//! Euler on the last.

use candle_core::Tensor;

use super::extra_params::Churn;
use super::{add_scaled, churn_step, step_count, to_d, Denoiser, NoiseSource, Sampler};
use crate::Result;

/// Euler predictor to σ_{i+1}, corrector with the mean of both slopes (from σ̂_i after churn).
#[derive(Debug, Clone, Copy, Default)]
pub struct Heun {
    /// Churn settings (default: none).
    pub churn: Churn,
}

impl Sampler for Heun {
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
            let dt = s_next - s_hat;
            if s_next == 0.0 {
                x = add_scaled(&x, dt, &d)?;
            } else {
                let x2 = add_scaled(&x, dt, &d)?;
                let denoised2 = model.denoise(&x2, s_next)?;
                let d2 = to_d(&x2, s_next, &denoised2)?;
                let d_prime = ((d + d2)? * 0.5)?;
                x = add_scaled(&x, dt, &d_prime)?;
            }
            on_step(i, n)?;
        }
        Ok(x)
    }
}
