//! DDIM as A1111's timestep sampler (`sd_samplers_timesteps_impl.ddim`), η ≥ 0.
//!
//! A1111 walks the timesteps `range(0, 1000, 1000//n) + 1` from the top down to t = 1 in VP space
//! (x_vp = x_ve·√ᾱ), making n − 1 model calls, and decodes the VP latent at the last timestep. With
//! ε̂ = (x_ve − D)/σ the update is `x_vp ← √ᾱ_prev·x̂₀ + √(1−ᾱ_prev−σ_t²)·ε̂ + σ_t·z` with
//! σ_t = η·√((1−ᾱ_prev)/(1−ᾱ)·(1−ᾱ/ᾱ_prev)); in VE space (÷√ᾱ_prev, ᾱ = 1/(1+σ²)) that is
//! x_ve ← D + √(1−ᾱ_prev−σ_t²)/√ᾱ_prev·ε̂ + σ_t/√ᾱ_prev·z, which for η = 0 is D + σ_prev·ε̂ — an
//! Euler step between consecutive timestep sigmas. A1111 draws z every step (`randn_like`, its
//! per-image generator); we draw it from the ancestral [`NoiseSource`] (SPEC §7) and only when
//! η > 0 (with η = 0 the draw is multiplied by 0). The sigma list is the timestep sigmas,
//! descending, without a trailing 0; the initial latent is the noise in VP space (noise·√(1+σ₀²)
//! in VE, [`super::InitNoise::VpUnit`]); the result is the VP latent x_ve/√(1+σ_last²).

use candle_core::Tensor;

use super::{add_noise, add_scaled, c_in, lin, step_count, to_d, Denoiser, NoiseSource, Sampler};
use crate::Result;

/// DDIM on A1111's timestep grid.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ddim {
    /// η (A1111 `eta`, default `eta_ddim` = 0): 0 is deterministic DDIM.
    pub eta: f64,
}

impl Sampler for Ddim {
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
            let (s, s_prev) = (w[0], w[1]);
            let denoised = model.denoise(&x, s)?;
            let eps = to_d(&x, s, &denoised)?;
            if self.eta == 0.0 {
                x = add_scaled(&denoised, s_prev, &eps)?;
            } else {
                let a_t = 1.0 / (1.0 + s * s);
                let a_prev = 1.0 / (1.0 + s_prev * s_prev);
                let sigma_t =
                    self.eta * ((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)).sqrt();
                let dir = (1.0 - a_prev - sigma_t * sigma_t).max(0.0).sqrt() / a_prev.sqrt();
                x = lin(1.0, &denoised, dir, &eps)?;
                x = add_noise(&x, noise, sigma_t / a_prev.sqrt())?;
            }
            on_step(i, n)?;
        }
        let last = sigmas.last().copied().unwrap_or(0.0);
        Ok(x.affine(c_in(last), 0.0)?)
    }
}
