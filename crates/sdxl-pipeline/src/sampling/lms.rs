//! LMS (k-diffusion `sample_lms`, order 4): linear multistep on the derivatives d = (x − D)/σ.

use std::collections::VecDeque;

use candle_core::Tensor;

use super::{add_scaled, step_count, to_d, Denoiser, NoiseSource, Sampler};
use crate::Result;

/// Linear multistep: x ← x + Σ_j c_j·d_{i−j}, with c_j the integral over [σ_i, σ_{i+1}] of the
/// Lagrange basis polynomial of σ_{i−j} on the last `order` sigmas.
#[derive(Debug, Clone, Copy)]
pub struct Lms {
    /// Maximum order (A1111: 4).
    pub order: usize,
}

impl Default for Lms {
    fn default() -> Self {
        Self { order: 4 }
    }
}

/// 4-point Gauss–Legendre nodes and weights on [−1, 1]; exact for polynomials of degree ≤ 7 (the
/// Lagrange basis of order ≤ 4 has degree ≤ 3), where scipy's adaptive quad is exact to rounding.
const GL_NODES: [f64; 4] = [
    -0.861_136_311_594_052_6,
    -0.339_981_043_584_856_3,
    0.339_981_043_584_856_3,
    0.861_136_311_594_052_6,
];
const GL_WEIGHTS: [f64; 4] = [
    0.347_854_845_137_453_9,
    0.652_145_154_862_546_1,
    0.652_145_154_862_546_1,
    0.347_854_845_137_453_9,
];

/// k-diffusion `linear_multistep_coeff(order, sigmas, i, j)`; requires `order − 1 ≤ i` and
/// `i + 1 < sigmas.len()`.
pub fn lms_coefficient(order: usize, sigmas: &[f64], i: usize, j: usize) -> f64 {
    let basis = |tau: f64| {
        (0..order)
            .filter(|&k| k != j)
            .map(|k| (tau - sigmas[i - k]) / (sigmas[i - j] - sigmas[i - k]))
            .product::<f64>()
    };
    let (a, b) = (sigmas[i], sigmas[i + 1]);
    let (half, mid) = (0.5 * (b - a), 0.5 * (a + b));
    GL_NODES
        .iter()
        .zip(GL_WEIGHTS)
        .map(|(&node, weight)| weight * basis(mid + half * node))
        .sum::<f64>()
        * half
}

impl Sampler for Lms {
    fn sample(
        &self,
        model: &mut dyn Denoiser,
        mut x: Tensor,
        sigmas: &[f64],
        _noise: &mut dyn NoiseSource,
        on_step: &mut dyn FnMut(usize, usize) -> Result<()>,
    ) -> Result<Tensor> {
        let n = step_count(sigmas);
        let order = self.order.max(1);
        let mut ds: VecDeque<Tensor> = VecDeque::with_capacity(order + 1);
        for i in 0..n {
            let s = sigmas[i];
            let denoised = model.denoise(&x, s)?;
            ds.push_back(to_d(&x, s, &denoised)?);
            if ds.len() > order {
                ds.pop_front();
            }
            let cur_order = (i + 1).min(order);
            // ds is oldest-first; coefficient j pairs with d_{i−j} (newest first).
            for (j, d) in ds.iter().rev().enumerate().take(cur_order) {
                let c = lms_coefficient(cur_order, sigmas, i, j);
                x = add_scaled(&x, c, d)?;
            }
            on_step(i, n)?;
        }
        Ok(x)
    }
}
