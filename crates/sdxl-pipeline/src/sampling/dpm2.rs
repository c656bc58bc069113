//! DPM2 (k-diffusion `sample_dpm_2`, with A1111's churn parameters): midpoint in log σ, Euler on
//! the last step.

use candle_core::Tensor;

use super::extra_params::Churn;
use super::{add_scaled, churn_step, step_count, to_d, Denoiser, NoiseSource, Sampler};
use crate::Result;

/// DPM-Solver-2-style second-order steps (from σ̂_i after churn).
#[derive(Debug, Clone, Copy, Default)]
pub struct Dpm2 {
    /// Churn settings (default: none).
    pub churn: Churn,
}

impl Sampler for Dpm2 {
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
            if s_next == 0.0 {
                x = add_scaled(&x, s_next - s_hat, &d)?;
            } else {
                let s_mid = (0.5 * (s_hat.ln() + s_next.ln())).exp();
                let x2 = add_scaled(&x, s_mid - s_hat, &d)?;
                let denoised2 = model.denoise(&x2, s_mid)?;
                let d2 = to_d(&x2, s_mid, &denoised2)?;
                x = add_scaled(&x, s_next - s_hat, &d2)?;
            }
            on_step(i, n)?;
        }
        Ok(x)
    }
}
