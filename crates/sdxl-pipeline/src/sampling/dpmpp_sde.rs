//! DPM++ SDE (k-diffusion `sample_dpmpp_sde`, η = 1, r = ½): two model calls per step, two noise
//! draws per step (the reference's Brownian-tree draws are correlated; ours are i.i.d., SPEC §6).

use candle_core::Tensor;

use super::{
    add_noise, add_scaled, ancestral_step, lin, step_count, to_d, Denoiser, NoiseSource, Sampler,
};
use crate::Result;

/// DPM-Solver++ (stochastic, singlestep second order).
#[derive(Debug, Clone, Copy)]
pub struct DpmPpSde {
    /// Stochasticity η (default 1).
    pub eta: f64,
    /// Noise multiplier (default 1).
    pub s_noise: f64,
    /// Position of the intermediate point in λ (default ½).
    pub r: f64,
}

impl Default for DpmPpSde {
    fn default() -> Self {
        Self {
            eta: 1.0,
            s_noise: 1.0,
            r: 0.5,
        }
    }
}

impl Sampler for DpmPpSde {
    fn sample(
        &self,
        model: &mut dyn Denoiser,
        mut x: Tensor,
        sigmas: &[f64],
        noise: &mut dyn NoiseSource,
        on_step: &mut dyn FnMut(usize, usize) -> Result<()>,
    ) -> Result<Tensor> {
        let n = step_count(sigmas);
        let sigma_fn = |t: f64| (-t).exp();
        let t_fn = |s: f64| -s.ln();
        for (i, w) in sigmas.windows(2).enumerate() {
            let (s, s_next) = (w[0], w[1]);
            let denoised = model.denoise(&x, s)?;
            if s_next == 0.0 {
                let d = to_d(&x, s, &denoised)?;
                x = add_scaled(&x, s_next - s, &d)?;
            } else {
                let (t, t_next) = (t_fn(s), t_fn(s_next));
                let h = t_next - t;
                let s_mid_t = t + h * self.r;
                let fac = 1.0 / (2.0 * self.r);
                // Step 1
                let (sd, su) = ancestral_step(sigma_fn(t), sigma_fn(s_mid_t), self.eta);
                let s_ = t_fn(sd);
                let x2 = lin(
                    sigma_fn(s_) / sigma_fn(t),
                    &x,
                    -(t - s_).exp_m1(),
                    &denoised,
                )?;
                let x2 = add_noise(&x2, noise, self.s_noise * su)?;
                let denoised2 = model.denoise(&x2, sigma_fn(s_mid_t))?;
                // Step 2
                let (sd, su) = ancestral_step(sigma_fn(t), sigma_fn(t_next), self.eta);
                let t_next_ = t_fn(sd);
                let dd = lin(1.0 - fac, &denoised, fac, &denoised2)?;
                x = lin(
                    sigma_fn(t_next_) / sigma_fn(t),
                    &x,
                    -(t - t_next_).exp_m1(),
                    &dd,
                )?;
                x = add_noise(&x, noise, self.s_noise * su)?;
            }
            on_step(i, n)?;
        }
        Ok(x)
    }
}
