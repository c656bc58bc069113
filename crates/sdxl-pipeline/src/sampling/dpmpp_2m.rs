//! DPM++ 2M (k-diffusion `sample_dpmpp_2m`).

use candle_core::Tensor;

use super::{lin, step_count, Denoiser, NoiseSource, Sampler};
use crate::Result;

/// DPM-Solver++(2M): multistep second order in λ = −ln σ; first order on the first and last step.
#[derive(Debug, Clone, Copy, Default)]
pub struct DpmPp2M;

impl Sampler for DpmPp2M {
    fn sample(
        &self,
        model: &mut dyn Denoiser,
        mut x: Tensor,
        sigmas: &[f64],
        _noise: &mut dyn NoiseSource,
        on_step: &mut dyn FnMut(usize, usize) -> Result<()>,
    ) -> Result<Tensor> {
        let n = step_count(sigmas);
        let mut old: Option<(Tensor, f64)> = None; // (D_{i−1}, σ_{i−1})
        for (i, w) in sigmas.windows(2).enumerate() {
            let (s, s_next) = (w[0], w[1]);
            let denoised = model.denoise(&x, s)?;
            let (t, t_next) = (-s.ln(), -s_next.ln());
            let h = t_next - t;
            let ratio = s_next / s;
            let coef = -(-h).exp_m1();
            x = match (&old, s_next == 0.0) {
                (Some((old_d, s_prev)), false) => {
                    let h_last = t + s_prev.ln();
                    let r = h_last / h;
                    let dd = lin(1.0 + 1.0 / (2.0 * r), &denoised, -1.0 / (2.0 * r), old_d)?;
                    lin(ratio, &x, coef, &dd)?
                }
                _ => lin(ratio, &x, coef, &denoised)?,
            };
            old = Some((denoised, s));
            on_step(i, n)?;
        }
        Ok(x)
    }
}
