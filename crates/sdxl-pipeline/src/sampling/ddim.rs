//! DDIM, η = 0, as A1111's timestep sampler (`sd_samplers_timesteps_impl.ddim`).
//!
//! A1111 walks the timesteps `range(0, 1000, 1000//n) + 1` from the top down to t = 1 in VP space
//! (x_vp = x_ve·√ᾱ), making n − 1 model calls, and decodes the VP latent at the last timestep. With
//! ε̂ = (x_ve − D)/σ the η = 0 update `x_vp ← √ᾱ_prev·x̂₀ + √(1−ᾱ_prev)·ε̂` is, in VE space,
//! x_ve ← D + σ_prev·ε̂ — an Euler step between consecutive timestep sigmas. The sigma list is the
//! timestep sigmas, descending, without a trailing 0; the initial latent is the noise in VP space
//! (noise·√(1+σ₀²) in VE, [`super::InitNoise::VpUnit`]); the result is the VP latent x_ve/√(1+σ_last²).

use candle_core::Tensor;

use super::{add_scaled, c_in, step_count, to_d, Denoiser, NoiseSource, Sampler};
use crate::Result;

/// Deterministic DDIM on A1111's timestep grid.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ddim;

impl Sampler for Ddim {
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
            let (s, s_prev) = (w[0], w[1]);
            let denoised = model.denoise(&x, s)?;
            let eps = to_d(&x, s, &denoised)?;
            x = add_scaled(&denoised, s_prev, &eps)?;
            on_step(i, n)?;
        }
        let last = sigmas.last().copied().unwrap_or(0.0);
        Ok(x.affine(c_in(last), 0.0)?)
    }
}
