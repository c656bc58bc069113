//! DPM++ 3M SDE (k-diffusion `sample_dpmpp_3m_sde`, η = 1); i.i.d. noise instead of the Brownian
//! tree (same distribution, SPEC §6).

use candle_core::Tensor;

use super::{add_noise, add_scaled, lin, step_count, Denoiser, NoiseSource, Sampler};
use crate::Result;

/// DPM-Solver++(3M) SDE.
#[derive(Debug, Clone, Copy)]
pub struct DpmPp3MSde {
    /// Stochasticity η (default 1).
    pub eta: f64,
    /// Noise multiplier (default 1).
    pub s_noise: f64,
}

impl Default for DpmPp3MSde {
    fn default() -> Self {
        Self {
            eta: 1.0,
            s_noise: 1.0,
        }
    }
}

impl Sampler for DpmPp3MSde {
    fn sample(
        &self,
        model: &mut dyn Denoiser,
        mut x: Tensor,
        sigmas: &[f64],
        noise: &mut dyn NoiseSource,
        on_step: &mut dyn FnMut(usize, usize) -> Result<()>,
    ) -> Result<Tensor> {
        let n = step_count(sigmas);
        let (mut d_1, mut d_2): (Option<Tensor>, Option<Tensor>) = (None, None);
        let (mut h_1, mut h_2): (Option<f64>, Option<f64>) = (None, None);
        let mut h_prev: Option<f64> = None;
        for (i, w) in sigmas.windows(2).enumerate() {
            let (s, s_next) = (w[0], w[1]);
            let denoised = model.denoise(&x, s)?;
            if s_next == 0.0 {
                x = denoised.clone();
            } else {
                let h = s.ln() - s_next.ln();
                let h_eta = h * (self.eta + 1.0);
                x = lin((-h_eta).exp(), &x, -(-h_eta).exp_m1(), &denoised)?;
                let phi_2 = (-h_eta).exp_m1() / h_eta + 1.0;
                match (&d_1, &d_2, h_1, h_2) {
                    (Some(dn1), Some(dn2), Some(h1), Some(h2)) => {
                        let (r0, r1) = (h1 / h, h2 / h);
                        let d1_0 = ((&denoised - dn1)? / r0)?;
                        let d1_1 = ((dn1 - dn2)? / r1)?;
                        let diff = (&d1_0 - &d1_1)?;
                        let d1 = add_scaled(&d1_0, r0 / (r0 + r1), &diff)?;
                        let d2 = (diff / (r0 + r1))?;
                        let phi_3 = phi_2 / h_eta - 0.5;
                        x = add_scaled(&x, phi_2, &d1)?;
                        x = add_scaled(&x, -phi_3, &d2)?;
                    }
                    (Some(dn1), _, Some(h1), _) => {
                        let r = h1 / h;
                        let d = ((&denoised - dn1)? / r)?;
                        x = add_scaled(&x, phi_2, &d)?;
                    }
                    _ => {}
                }
                if self.eta != 0.0 {
                    let scale = s_next * (-(-2.0 * h * self.eta).exp_m1()).sqrt() * self.s_noise;
                    x = add_noise(&x, noise, scale)?;
                }
                h_prev = Some(h);
            }
            // k-diffusion keeps the previous h on the final (denoising) step.
            d_2 = d_1.take();
            d_1 = Some(denoised);
            h_2 = h_1;
            h_1 = h_prev;
            on_step(i, n)?;
        }
        Ok(x)
    }
}
