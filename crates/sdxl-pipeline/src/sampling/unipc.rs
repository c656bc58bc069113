//! UniPC as A1111 runs it (`sd_samplers_timesteps_impl.unipc` on its `uni_pc` module): data
//! prediction (`predict_x0`), variant B(h) = h ("bh1"), multistep order 3, lower order at the end,
//! no corrector after the last step, no final denoise. Zhao et al. 2023, "UniPC".
//!
//! A1111 works in continuous VP time on `NoiseScheduleVP('discrete', ᾱ)`: log α(t) is the
//! piecewise-linear interpolation of ½·log ᾱ over t = (k+1)/1000, the grid is `time_uniform`
//! (`linspace(1, 1/1000, steps + 1)`, steps = the number of A1111 timesteps) and the model sees
//! t·1000 − 1. [`super::schedule::time_uniform_sigmas`] turns that grid into VE sigmas (σ = σ_vp/α), so the sampler
//! itself needs only the sigma list: λ = −ln σ, α = 1/√(1+σ²), σ_vp = σ·α, and the data prediction
//! is the denoiser's D at x_ve = x_vp/α. Like DDIM it starts from x_vp = noise
//! ([`super::InitNoise::VpUnit`]) and returns the VP latent at the last grid point.

use std::collections::VecDeque;

use candle_core::Tensor;

use super::{Denoiser, NoiseSource, Sampler};
use crate::{PipelineError, Result};

/// A1111's default UniPC order (`uni_pc_order`).
pub const DEFAULT_ORDER: usize = 3;

/// UniPC-bh1 multistep sampler with A1111's defaults.
#[derive(Debug, Clone, Copy)]
pub struct UniPc {
    /// Multistep order (A1111 default 3); clamped to the number of steps.
    pub order: usize,
    /// Use lower orders for the last steps (A1111 default true).
    pub lower_order_final: bool,
}

impl Default for UniPc {
    fn default() -> Self {
        Self {
            order: DEFAULT_ORDER,
            lower_order_final: true,
        }
    }
}

/// Grid quantities of one sigma.
#[derive(Clone, Copy)]
struct Point {
    sigma: f64,
    lambda: f64,
    alpha: f64,
    sigma_vp: f64,
}

impl Point {
    fn new(sigma: f64) -> Result<Self> {
        if !(sigma.is_finite() && sigma > 0.0) {
            return Err(PipelineError::Internal(format!(
                "UniPC needs positive finite sigmas, got {sigma}"
            )));
        }
        let alpha = 1.0 / (1.0 + sigma * sigma).sqrt();
        Ok(Self {
            sigma,
            lambda: -sigma.ln(),
            alpha,
            sigma_vp: sigma * alpha,
        })
    }
}

/// The data prediction x̂₀ for VP latents at a grid point.
fn data_prediction(model: &mut dyn Denoiser, x_vp: &Tensor, p: Point) -> Result<Tensor> {
    model.denoise(&x_vp.affine(1.0 / p.alpha, 0.0)?, p.sigma)
}

/// Solves the small dense system `a·x = b` by Gaussian elimination with partial pivoting.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Result<Vec<f64>> {
    let n = b.len();
    let singular = || PipelineError::Internal("UniPC: singular coefficient system".into());
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .ok_or_else(singular)?;
        if a[pivot][col].abs() < 1e-300 {
            return Err(singular());
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        let pivot_row = a[col].clone();
        for row in col + 1..n {
            let f = a[row][col] / pivot_row[col];
            for (v, p) in a[row].iter_mut().zip(&pivot_row).skip(col) {
                *v -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - s) / a[row][row];
    }
    Ok(x)
}

/// Σ cᵢ·tᵢ, or `None` for no terms.
fn weighted_sum(coeffs: &[f64], terms: &[Tensor]) -> Result<Option<Tensor>> {
    let mut acc: Option<Tensor> = None;
    for (c, t) in coeffs.iter().zip(terms) {
        let term = t.affine(*c, 0.0)?;
        acc = Some(match acc {
            None => term,
            Some(a) => (a + term)?,
        });
    }
    Ok(acc)
}

/// One multistep UniPC-bh1 update from the newest history point to `t`; with `corrector` it also
/// evaluates the model at the predicted point and returns that output.
fn update(
    model: &mut dyn Denoiser,
    x: &Tensor,
    history: &VecDeque<(Point, Tensor)>,
    t: Point,
    order: usize,
    corrector: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let (p0, m0) = history
        .back()
        .ok_or_else(|| PipelineError::Internal("UniPC: empty history".into()))?;
    let h = t.lambda - p0.lambda;
    let mut rks = Vec::with_capacity(order);
    let mut d1s = Vec::with_capacity(order);
    for (pi, mi) in history.iter().rev().skip(1).take(order.saturating_sub(1)) {
        let rk = (pi.lambda - p0.lambda) / h;
        rks.push(rk);
        d1s.push(((mi - m0)? / rk)?);
    }
    rks.push(1.0);

    let hh = -h;
    let h_phi_1 = hh.exp_m1();
    let b_h = hh;
    let mut h_phi_k = h_phi_1 / hh - 1.0;
    let mut factorial = 1.0;
    let mut r = Vec::with_capacity(order);
    let mut b = Vec::with_capacity(order);
    for i in 1..=order {
        r.push(
            rks.iter()
                .map(|rk| rk.powi(i as i32 - 1))
                .collect::<Vec<_>>(),
        );
        b.push(h_phi_k * factorial / b_h);
        factorial *= (i + 1) as f64;
        h_phi_k = h_phi_k / hh - 1.0 / factorial;
    }

    let x_base = (x.affine(t.sigma_vp / p0.sigma_vp, 0.0)? - m0.affine(t.alpha * h_phi_1, 0.0)?)?;
    let pred_res = if d1s.is_empty() {
        None
    } else {
        let rhos_p = if order == 2 {
            vec![0.5]
        } else {
            let k = order - 1;
            let sub: Vec<Vec<f64>> = r.iter().take(k).map(|row| row[..k].to_vec()).collect();
            solve(sub, b[..k].to_vec())?
        };
        weighted_sum(&rhos_p, &d1s)?
    };
    let x_pred = match &pred_res {
        Some(p) => (&x_base - p.affine(t.alpha * b_h, 0.0)?)?,
        None => x_base.clone(),
    };
    if !corrector {
        return Ok((x_pred, None));
    }
    let rhos_c = if order == 1 { vec![0.5] } else { solve(r, b)? };
    let model_t = data_prediction(model, &x_pred, t)?;
    let rho_last = rhos_c.last().copied().unwrap_or(0.5);
    let mut corr = (&model_t - m0)?.affine(rho_last, 0.0)?;
    if let Some(c) = weighted_sum(&rhos_c[..rhos_c.len() - 1], &d1s)? {
        corr = (corr + c)?;
    }
    let x_t = (x_base - corr.affine(t.alpha * b_h, 0.0)?)?;
    Ok((x_t, Some(model_t)))
}

impl Sampler for UniPc {
    fn sample(
        &self,
        model: &mut dyn Denoiser,
        x: Tensor,
        sigmas: &[f64],
        _noise: &mut dyn NoiseSource,
        on_step: &mut dyn FnMut(usize, usize) -> Result<()>,
    ) -> Result<Tensor> {
        let points = sigmas
            .iter()
            .map(|&s| Point::new(s))
            .collect::<Result<Vec<_>>>()?;
        let Some(&first) = points.first() else {
            return Ok(x);
        };
        let steps = points.len() - 1;
        let mut x = x.affine(first.alpha, 0.0)?;
        if steps == 0 {
            return Ok(x);
        }
        let order = self.order.clamp(1, steps);
        let mut history = VecDeque::with_capacity(order);
        history.push_back((first, data_prediction(model, &x, first)?));
        for (step, &t) in points.iter().enumerate().skip(1) {
            let step_order = if step < order {
                step
            } else if self.lower_order_final {
                order.min(steps + 1 - step)
            } else {
                order
            };
            let corrector = step < steps;
            let (x_next, model_t) = update(model, &x, &history, t, step_order, corrector)?;
            x = x_next;
            on_step(step - 1, steps)?;
            if step < steps {
                let m = match model_t {
                    Some(m) => m,
                    None => data_prediction(model, &x, t)?,
                };
                if history.len() == order {
                    history.pop_front();
                }
                history.push_back((t, m));
            }
        }
        Ok(x)
    }
}
