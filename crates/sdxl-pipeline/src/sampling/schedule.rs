//! The discrete SDXL noise schedule and the sigma lists built from it (research §4.1–4.2).
//!
//! ᾱ is computed in f32 like diffusers (`torch.linspace(√β₀, √β₁, 1000)²`, cumulative product), σ =
//! √((1−ᾱ)/ᾱ) in f32 like k-diffusion's `DiscreteSchedule`; everything derived from the table is then
//! computed in f64.

use crate::{PipelineError, Result};

/// Number of training timesteps of SD/SDXL.
pub const TRAIN_STEPS: usize = 1000;

/// The model's discrete sigma table with k-diffusion's `DiscreteSchedule` conversions.
#[derive(Debug, Clone)]
pub struct ModelSchedule {
    alphas_cumprod: Vec<f32>,
    sigmas: Vec<f64>,
    log_sigmas: Vec<f64>,
}

/// Which sigma list to build (A1111 "Schedule type").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleKind {
    /// `DiscreteSchedule.get_sigmas(n)`: t linear from 999 to 0 (A1111 "Uniform"; "Normal" gives the same list).
    Uniform,
    /// Karras et al. (ρ = 7) between the table's σ_min and σ_max.
    Karras,
    /// Log-linear from σ_max to σ_min.
    Exponential,
    /// A1111 `sgm_uniform`: n+1 t's from t(σ_max) to t(σ_min), the last dropped.
    SgmUniform,
    /// A1111 timestep samplers (DDIM): σ at t = `range(0, 1000, 1000//n) + 1`, descending, no trailing 0.
    Timesteps,
    /// A1111 UniPC: its `time_uniform` continuous-time grid as VE sigmas, no trailing 0
    /// ([`time_uniform_sigmas`]).
    UniPcTimeUniform,
}

impl ModelSchedule {
    /// The SDXL (= SD 1.x) schedule: scaled-linear β from 0.00085 to 0.012 over 1000 steps.
    pub fn sdxl() -> Self {
        Self::scaled_linear(0.00085, 0.012, TRAIN_STEPS)
    }

    /// A scaled-linear schedule (β = linspace(√start, √end, n)²), computed in f32 as diffusers does.
    pub fn scaled_linear(beta_start: f64, beta_end: f64, n: usize) -> Self {
        let betas: Vec<f32> = linspace_f32(beta_start.sqrt() as f32, beta_end.sqrt() as f32, n)
            .into_iter()
            .map(|b| b * b)
            .collect();
        let mut acp = Vec::with_capacity(n);
        // torch.cumprod on f32 accumulates in f64 and rounds each output.
        let mut prod = 1.0f64;
        for b in betas {
            prod *= f64::from(1.0 - b);
            acp.push(prod as f32);
        }
        Self::from_alphas_cumprod(acp)
    }

    /// A schedule from ᾱ (f32, as stored by diffusers/A1111).
    pub fn from_alphas_cumprod(alphas_cumprod: Vec<f32>) -> Self {
        let sigmas: Vec<f64> = alphas_cumprod
            .iter()
            .map(|&a| f64::from(((1.0 - a) / a).sqrt()))
            .collect();
        let log_sigmas = sigmas.iter().map(|s| f64::from((*s as f32).ln())).collect();
        Self {
            alphas_cumprod,
            sigmas,
            log_sigmas,
        }
    }

    /// σ of every training timestep (ascending in t).
    pub fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// ᾱ of every training timestep.
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// σ at t = 0.
    pub fn sigma_min(&self) -> f64 {
        self.sigmas.first().copied().unwrap_or(0.0)
    }

    /// σ at the last training timestep.
    pub fn sigma_max(&self) -> f64 {
        self.sigmas.last().copied().unwrap_or(0.0)
    }

    fn last_t(&self) -> usize {
        self.sigmas.len().saturating_sub(1)
    }

    /// Fractional model timestep of σ by linear interpolation in log σ (`DiscreteSchedule.sigma_to_t`,
    /// quantize = False), clamped to [0, 999].
    pub fn sigma_to_t(&self, sigma: f64) -> f64 {
        let ls = &self.log_sigmas;
        if ls.len() < 2 {
            return 0.0;
        }
        let log_sigma = sigma.ln();
        // low_idx = last index whose log σ is ≤ log_sigma, clamped to len − 2.
        let count = ls.iter().filter(|&&l| log_sigma - l >= 0.0).count();
        let low = count.saturating_sub(1).min(ls.len() - 2);
        let (lo, hi) = (ls[low], ls[low + 1]);
        let w = ((lo - log_sigma) / (lo - hi)).clamp(0.0, 1.0);
        (1.0 - w) * low as f64 + w * (low + 1) as f64
    }

    /// σ at a fractional timestep (log-linear, `DiscreteSchedule.t_to_sigma`), t clamped to [0, 999].
    pub fn t_to_sigma(&self, t: f64) -> f64 {
        let ls = &self.log_sigmas;
        if ls.is_empty() {
            return 0.0;
        }
        let t = t.clamp(0.0, self.last_t() as f64);
        let low = t.floor() as usize;
        let high = (t.ceil() as usize).min(ls.len() - 1);
        let w = t - t.floor();
        ((1.0 - w) * ls[low] + w * ls[high]).exp()
    }

    /// The sigma list for `n` steps (ending in 0 except for [`ScheduleKind::Timesteps`]);
    /// `discard_next_to_last` builds n+1 and drops the second-to-last sigma (A1111 DPM2, 3M SDE).
    pub fn sigma_list(
        &self,
        kind: ScheduleKind,
        n: usize,
        discard_next_to_last: bool,
    ) -> Result<Vec<f64>> {
        if n == 0 {
            return Err(PipelineError::InvalidInput(
                "steps must be at least 1".into(),
            ));
        }
        let m = if discard_next_to_last { n + 1 } else { n };
        let (smin, smax) = (self.sigma_min(), self.sigma_max());
        let mut s: Vec<f64> = match kind {
            ScheduleKind::Uniform => linspace(self.last_t() as f64, 0.0, m)
                .into_iter()
                .map(|t| self.t_to_sigma(t))
                .collect(),
            ScheduleKind::Karras => karras(m, smin, smax, 7.0),
            ScheduleKind::Exponential => linspace(smax.ln(), smin.ln(), m)
                .into_iter()
                .map(f64::exp)
                .collect(),
            ScheduleKind::SgmUniform => {
                let mut ts = linspace(self.sigma_to_t(smax), self.sigma_to_t(smin), m + 1);
                ts.pop();
                ts.into_iter().map(|t| self.t_to_sigma(t)).collect()
            }
            ScheduleKind::Timesteps => {
                return Ok(timesteps(n, TRAIN_STEPS)?
                    .iter()
                    .rev()
                    .map(|&t| self.sigmas.get(t).copied().unwrap_or(0.0))
                    .collect())
            }
            ScheduleKind::UniPcTimeUniform => {
                return time_uniform_sigmas(self, n);
            }
        };
        s.push(0.0);
        if discard_next_to_last && s.len() >= 3 {
            s.remove(s.len() - 2);
        }
        Ok(s)
    }
}

/// A1111 `get_timesteps`: `clip(range(0, train, train // n) + 1, 0, train − 1)` (ascending).
pub fn timesteps(n: usize, train_steps: usize) -> Result<Vec<usize>> {
    if n == 0 || n > train_steps {
        return Err(PipelineError::InvalidInput(format!(
            "steps must be in 1..={train_steps}"
        )));
    }
    let stride = train_steps / n;
    Ok((0..train_steps)
        .step_by(stride)
        .map(|t| (t + 1).min(train_steps - 1))
        .collect())
}

/// k-diffusion `get_sigmas_karras` without the appended 0.
pub fn karras(n: usize, sigma_min: f64, sigma_max: f64, rho: f64) -> Vec<f64> {
    let min_inv = sigma_min.powf(1.0 / rho);
    let max_inv = sigma_max.powf(1.0 / rho);
    linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// n points from a to b inclusive (a single point is `a`).
pub fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    match n {
        0 => Vec::new(),
        1 => vec![a],
        _ => {
            let step = (b - a) / (n - 1) as f64;
            (0..n).map(|i| a + step * i as f64).collect()
        }
    }
}

/// `torch.linspace` in f32: the first half counts up from `a`, the second half down from `b`.
fn linspace_f32(a: f32, b: f32, n: usize) -> Vec<f32> {
    if n < 2 {
        return vec![a; n];
    }
    let step = (b - a) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                a + step * i as f32
            } else {
                b - step * (n - 1 - i) as f32
            }
        })
        .collect()
}

/// The VE sigmas of A1111's UniPC grid for `n` requested steps: `steps + 1` points where steps is
/// the length of A1111's `get_timesteps(n)` (e.g. 7 for n = 6), descending, no trailing 0.
pub fn time_uniform_sigmas(schedule: &ModelSchedule, n: usize) -> Result<Vec<f64>> {
    let steps = timesteps(n, TRAIN_STEPS)?.len();
    let log_alpha: Vec<f64> = schedule
        .alphas_cumprod()
        .iter()
        .map(|&a| 0.5 * f64::from(a).ln())
        .collect();
    if log_alpha.len() < 2 {
        return Err(PipelineError::Internal(
            "noise schedule has fewer than 2 timesteps".into(),
        ));
    }
    let total = log_alpha.len() as f64;
    let (t_end, t_start) = (1.0 / total, 1.0);
    (0..=steps)
        .map(|i| {
            let t = t_start + (t_end - t_start) * i as f64 / steps as f64;
            let la = interpolate(&log_alpha, t * total - 1.0);
            let sigma_vp = (1.0 - (2.0 * la).exp()).sqrt();
            Ok(sigma_vp / la.exp())
        })
        .collect()
}

/// Linear interpolation of `ys` at fractional index `pos` (extrapolating with the end segments).
fn interpolate(ys: &[f64], pos: f64) -> f64 {
    let last = ys.len() - 2;
    let k = (pos.floor().max(0.0) as usize).min(last);
    let w = pos - k as f64;
    ys[k] + w * (ys[k + 1] - ys[k])
}
