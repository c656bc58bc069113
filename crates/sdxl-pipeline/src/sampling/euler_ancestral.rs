//! Euler a (k-diffusion `sample_euler_ancestral`, η = 1).

use candle_core::Tensor;

use super::{
    add_noise, add_scaled, ancestral_step, step_count, to_d, Denoiser, NoiseSource, Sampler,
};
use crate::Result;

/// Euler step to σ_down, then fresh noise × σ_up (no noise on the step to σ = 0).
#[derive(Debug, Clone, Copy)]
pub struct EulerAncestral {
    /// Ancestral churn η (A1111 default 1).
    pub eta: f64,
}

impl Default for EulerAncestral {
    fn default() -> Self {
        Self { eta: 1.0 }
    }
}

impl Sampler for EulerAncestral {
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
            let denoised = model.denoise(&x, s)?;
            let (down, up) = ancestral_step(s, s_next, self.eta);
            let d = to_d(&x, s, &denoised)?;
            x = add_scaled(&x, down - s, &d)?;
            if s_next > 0.0 {
                x = add_noise(&x, noise, up)?;
            }
            on_step(i, n)?;
        }
        Ok(x)
    }
}
