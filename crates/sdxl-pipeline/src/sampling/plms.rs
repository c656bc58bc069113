//! PLMS as A1111's timestep sampler (`sd_samplers_timesteps_impl.plms`).
//!
//! Same timestep grid and VP/VE conventions as [`super::ddim`]: with ε̂ = (x_ve − D)/σ the η = 0
//! DDIM update from σ to σ_prev is x_ve ← x_ve + (σ_prev − σ)·ε̂′. PLMS replaces ε̂′ by a
//! pseudo linear multistep combination of the current and up to three previous ε̂: the first step
//! is a pseudo improved Euler (one extra model call at σ_prev, ε̂′ = (ε̂ + ε̂_next)/2), then
//! Adams–Bashforth of order 2, 3 and 4 (`(3ε − ε₋₁)/2`, `(23ε − 16ε₋₁ + 5ε₋₂)/12`,
//! `(55ε − 59ε₋₁ + 37ε₋₂ − 9ε₋₃)/24`). n − 1 steps make n model calls; the result is the VP
//! latent.

use candle_core::Tensor;

use super::{add_scaled, c_in, step_count, to_d, Denoiser, NoiseSource, Sampler};
use crate::Result;

/// PLMS on A1111's timestep grid (deterministic).
#[derive(Debug, Clone, Copy, Default)]
pub struct Plms;

/// Σ wᵢ·tᵢ.
fn combine(terms: &[(f64, &Tensor)]) -> Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for (w, t) in terms {
        let scaled = t.affine(*w, 0.0)?;
        acc = Some(match acc {
            None => scaled,
            Some(a) => (a + scaled)?,
        });
    }
    acc.ok_or_else(|| crate::PipelineError::Internal("empty PLMS combination".into()))
}

impl Sampler for Plms {
    fn sample(
        &self,
        model: &mut dyn Denoiser,
        mut x: Tensor,
        sigmas: &[f64],
        _noise: &mut dyn NoiseSource,
        on_step: &mut dyn FnMut(usize, usize) -> Result<()>,
    ) -> Result<Tensor> {
        let n = step_count(sigmas);
        let mut old_eps: Vec<Tensor> = Vec::new();
        for (i, w) in sigmas.windows(2).enumerate() {
            let (s, s_prev) = (w[0], w[1]);
            let denoised = model.denoise(&x, s)?;
            let e_t = to_d(&x, s, &denoised)?;
            let e_prime = match old_eps.as_slice() {
                [] => {
                    let x_prev = add_scaled(&x, s_prev - s, &e_t)?;
                    let denoised_next = model.denoise(&x_prev, s_prev)?;
                    let e_next = to_d(&x_prev, s_prev, &denoised_next)?;
                    combine(&[(0.5, &e_t), (0.5, &e_next)])?
                }
                [e1] => combine(&[(1.5, &e_t), (-0.5, e1)])?,
                [e2, e1] => combine(&[(23.0 / 12.0, &e_t), (-16.0 / 12.0, e1), (5.0 / 12.0, e2)])?,
                [.., e3, e2, e1] => combine(&[
                    (55.0 / 24.0, &e_t),
                    (-59.0 / 24.0, e1),
                    (37.0 / 24.0, e2),
                    (-9.0 / 24.0, e3),
                ])?,
            };
            x = add_scaled(&x, s_prev - s, &e_prime)?;
            old_eps.push(e_t);
            if old_eps.len() > 3 {
                old_eps.remove(0);
            }
            on_step(i, n)?;
        }
        let last = sigmas.last().copied().unwrap_or(0.0);
        Ok(x.affine(c_in(last), 0.0)?)
    }
}
