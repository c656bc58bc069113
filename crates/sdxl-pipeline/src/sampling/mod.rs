//! Samplers with A1111 / k-diffusion semantics (SPEC §6), independent of the UNet.
//!
//! Every sampler works in sigma space on VE latents (x = x₀ + σ·n) and sees the model only through
//! [`Denoiser`] (the CFG-combined D(x; σ)). Stochastic samplers draw their noise from a
//! [`NoiseSource`]. [`schedule`] builds the sigma lists, [`prediction`] has the model-output
//! wrappers the glue uses to implement `Denoiser`, and [`names`] maps A1111 names to samplers.
//! Adding a sampler = one file implementing [`Sampler`] + one row in [`names`].

use candle_core::Tensor;

use crate::Result;

pub mod ddim;
pub mod dpm2;
pub mod dpmpp_2m;
pub mod dpmpp_2m_sde;
pub mod dpmpp_3m_sde;
pub mod dpmpp_sde;
pub mod euler;
pub mod euler_ancestral;
pub mod extra_params;
pub mod heun;
pub mod lms;
pub mod names;
pub mod plms;
pub mod prediction;
pub mod schedule;
pub mod unipc;

pub use extra_params::SamplerParams;
pub use names::{
    resolve_sampler, resolve_sampler_with, sampler_names, scheduler_names, sigmas_for, InitNoise,
    SamplerChoice, SamplerInfo,
};
pub use prediction::{c_in, denoised_from_output, Prediction};
pub use schedule::{ModelSchedule, ScheduleKind};

/// D(x; σ): the CFG-combined denoised prediction for VE-space latents x at noise level σ.
pub trait Denoiser {
    /// Returns D for latents `x` (VE space, same shape as the result) at noise level `sigma`.
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor>;
}

/// One standard-normal draw of the latent shape per call (SPEC §7: a second `TorchGenerator`
/// seeded with the same seed).
pub trait NoiseSource {
    /// The next N(0, I) tensor of the latent shape (f32).
    fn next_noise(&mut self) -> Result<Tensor>;
}

/// A sampler: integrates from `sigmas[0]` down to the last sigma.
pub trait Sampler: Send + Sync {
    /// `x` is the initial latent (already noise × the [`InitNoise`] factor); `on_step(i, n)` is
    /// called after each of the n steps and may return `Err(PipelineError::Cancelled)` to stop.
    /// Returns the latent the VAE decodes.
    fn sample(
        &self,
        model: &mut dyn Denoiser,
        x: Tensor,
        sigmas: &[f64],
        noise: &mut dyn NoiseSource,
        on_step: &mut dyn FnMut(usize, usize) -> Result<()>,
    ) -> Result<Tensor>;
}

/// k-diffusion `to_d`: the ODE derivative (x − D)/σ.
pub(crate) fn to_d(x: &Tensor, sigma: f64, denoised: &Tensor) -> Result<Tensor> {
    Ok(((x - denoised)? / sigma)?)
}

/// a·x + b·y.
pub(crate) fn lin(a: f64, x: &Tensor, b: f64, y: &Tensor) -> Result<Tensor> {
    Ok((x.affine(a, 0.0)? + y.affine(b, 0.0)?)?)
}

/// x + b·y.
pub(crate) fn add_scaled(x: &Tensor, b: f64, y: &Tensor) -> Result<Tensor> {
    Ok((x + y.affine(b, 0.0)?)?)
}

/// k-diffusion `get_ancestral_step`: (σ_down, σ_up) for a step σ_from → σ_to with churn η.
pub fn ancestral_step(sigma_from: f64, sigma_to: f64, eta: f64) -> (f64, f64) {
    if eta == 0.0 {
        return (sigma_to, 0.0);
    }
    let up = (eta
        * (sigma_to * sigma_to * (sigma_from * sigma_from - sigma_to * sigma_to)
            / (sigma_from * sigma_from))
            .sqrt())
    .min(sigma_to);
    let down = (sigma_to * sigma_to - up * up).sqrt();
    (down, up)
}

/// Number of steps of a sigma list (one fewer than its length), 0 for lists shorter than 2.
pub(crate) fn step_count(sigmas: &[f64]) -> usize {
    sigmas.len().saturating_sub(1)
}

/// The noise draw scaled to the latent's dtype and added: x + s·n.
pub(crate) fn add_noise(x: &Tensor, noise: &mut dyn NoiseSource, scale: f64) -> Result<Tensor> {
    let n = noise.next_noise()?.to_dtype(x.dtype())?;
    add_scaled(x, scale, &n)
}

/// k-diffusion's churn at the start of an Euler/Heun/DPM2 step: draws ε (every step while churn
/// is on, as k-diffusion does), and for γ > 0 moves x to σ̂ = σ·(1+γ) with ε·s_noise·√(σ̂²−σ²).
/// Returns the latent and σ̂.
pub(crate) fn churn_step(
    churn: &extra_params::Churn,
    x: Tensor,
    sigma: f64,
    len: usize,
    noise: &mut dyn NoiseSource,
) -> Result<(Tensor, f64)> {
    if !churn.active() {
        return Ok((x, sigma));
    }
    let eps = noise.next_noise()?.to_dtype(x.dtype())?;
    let gamma = churn.gamma(sigma, len);
    if gamma > 0.0 {
        let s_hat = sigma * (gamma + 1.0);
        let scale = churn.s_noise * (s_hat * s_hat - sigma * sigma).sqrt();
        return Ok((add_scaled(&x, scale, &eps)?, s_hat));
    }
    Ok((x, sigma))
}

/// A [`NoiseSource`] for deterministic samplers: any draw is a bug, reported as an error.
pub struct NoNoise;

impl NoiseSource for NoNoise {
    fn next_noise(&mut self) -> Result<Tensor> {
        Err(crate::PipelineError::Internal(
            "this sampler does not draw noise".into(),
        ))
    }
}
