//! A1111's per-sampler extra parameters (`eta`, `s_churn`, `s_tmin`, `s_tmax`, `s_noise`), passed
//! exactly where A1111 1.10 passes them (`sd_samplers_common.Sampler.initialize` with
//! `sd_samplers_kdiffusion.sampler_extra_params` and the `eta` in each function's signature):
//!
//! | sampler | receives |
//! |---|---|
//! | Euler, Heun, DPM2 | `s_churn`, `s_tmin`, `s_tmax`, `s_noise` |
//! | Euler a | `eta` (not `s_noise`: `sample_euler_ancestral` is not in `sampler_extra_params`) |
//! | DPM++ SDE, DPM++ 2M SDE (Heun), DPM++ 3M SDE | `eta`, `s_noise` |
//! | DDIM (timestep sampler) | `eta` (default from `eta_ddim`, 0) |
//! | LMS, DPM++ 2M, PLMS, UniPC | nothing |
//!
//! `eta` left unset takes the `eta_ancestral` option (default 1) on k-diffusion samplers and the
//! `eta_ddim` option (default 0) on DDIM, as A1111's `p.eta if p.eta is not None else
//! opts.<eta_option_field>`. `s_tmax = 0` means infinity (A1111's `or float('inf')`).

use crate::output::format_number;

/// A1111's default `eta` of k-diffusion samplers (`eta_ancestral`).
pub const DEFAULT_ETA_ANCESTRAL: f64 = 1.0;
/// A1111's default `eta` of the DDIM timestep sampler (`eta_ddim`).
pub const DEFAULT_ETA_DDIM: f64 = 0.0;
/// k-diffusion's default `s_noise`.
pub const DEFAULT_S_NOISE: f64 = 1.0;

/// The request's sampler parameters (SPEC §3), before they are matched to a sampler.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct SamplerParams {
    /// Explicit `eta`; `None` ⇒ the sampler family's option (`eta_ancestral` / `eta_ddim`).
    pub eta: Option<f64>,
    /// The `eta_ancestral` option (A1111 `override_settings`); `None` ⇒ 1.
    pub eta_ancestral: Option<f64>,
    /// The `eta_ddim` option (A1111 `override_settings`); `None` ⇒ 0.
    pub eta_ddim: Option<f64>,
    /// Churn of Euler/Heun/DPM2 (k-diffusion `s_churn`), default 0.
    pub s_churn: f64,
    /// Lowest σ that gets churn, default 0.
    pub s_tmin: f64,
    /// Highest σ that gets churn; 0 ⇒ infinity (the default).
    pub s_tmax: f64,
    /// Noise multiplier (k-diffusion `s_noise`), default 1.
    pub s_noise: f64,
}

impl Default for SamplerParams {
    fn default() -> Self {
        Self {
            eta: None,
            eta_ancestral: None,
            eta_ddim: None,
            s_churn: 0.0,
            s_tmin: 0.0,
            s_tmax: 0.0,
            s_noise: DEFAULT_S_NOISE,
        }
    }
}

/// Which extra parameters a sampler function takes (A1111's `sampler_extra_params` + signature).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Takes {
    /// Nothing (LMS, DPM++ 2M, PLMS, UniPC).
    Nothing,
    /// `s_churn`, `s_tmin`, `s_tmax`, `s_noise` (Euler, Heun, DPM2).
    Churn,
    /// `eta` only (Euler a).
    EtaOnly,
    /// `eta` and `s_noise` (the SDE samplers).
    EtaNoise,
    /// `eta` with the `eta_ddim` default (DDIM).
    EtaDdim,
}

/// Churn settings of k-diffusion's Euler/Heun/DPM2 (`gamma = min(s_churn/(len(sigmas)-1), √2−1)`
/// for `s_tmin ≤ σ_i ≤ s_tmax`, noise × `s_noise`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Churn {
    /// `s_churn` (0 ⇒ no churn and no noise draws).
    pub s_churn: f64,
    /// `s_tmin`.
    pub s_tmin: f64,
    /// `s_tmax` (infinity when the request said 0).
    pub s_tmax: f64,
    /// `s_noise`.
    pub s_noise: f64,
}

impl Default for Churn {
    fn default() -> Self {
        Self {
            s_churn: 0.0,
            s_tmin: 0.0,
            s_tmax: f64::INFINITY,
            s_noise: DEFAULT_S_NOISE,
        }
    }
}

impl Churn {
    /// k-diffusion's γ for step i of a list of `len` sigmas at σ_i.
    pub fn gamma(&self, sigma: f64, len: usize) -> f64 {
        if self.s_churn > 0.0 && self.s_tmin <= sigma && sigma <= self.s_tmax {
            (self.s_churn / (len.saturating_sub(1).max(1)) as f64).min(2f64.sqrt() - 1.0)
        } else {
            0.0
        }
    }

    /// Whether the sampler draws the per-step churn noise (k-diffusion draws it every step;
    /// with `s_churn = 0` it is never used, so we skip the draws).
    pub fn active(&self) -> bool {
        self.s_churn > 0.0
    }
}

/// The parameters one sampler actually receives, and the infotext pairs A1111 writes for them.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Effective {
    /// `eta` for samplers that take one.
    pub eta: f64,
    /// `s_noise` for samplers that take it (1 otherwise).
    pub s_noise: f64,
    /// Churn settings (default for samplers that do not take them).
    pub churn: Churn,
    /// `Eta`, `Eta DDIM`, `Sigma churn`, ... with their values, when not the default.
    pub infotext: Vec<(String, String)>,
}

impl SamplerParams {
    /// What a sampler that takes `takes` receives.
    pub(crate) fn effective(&self, takes: Takes) -> Effective {
        let mut infotext = Vec::new();
        let mut out = Effective {
            eta: DEFAULT_ETA_ANCESTRAL,
            s_noise: DEFAULT_S_NOISE,
            churn: Churn::default(),
            infotext: Vec::new(),
        };
        match takes {
            Takes::Nothing => {}
            Takes::EtaOnly | Takes::EtaNoise => {
                out.eta = self
                    .eta
                    .or(self.eta_ancestral)
                    .unwrap_or(DEFAULT_ETA_ANCESTRAL);
                if out.eta != DEFAULT_ETA_ANCESTRAL {
                    infotext.push(("Eta".to_string(), format_number(out.eta)));
                }
                if takes == Takes::EtaNoise {
                    out.s_noise = self.s_noise;
                    push_if(&mut infotext, "Sigma noise", self.s_noise, DEFAULT_S_NOISE);
                }
            }
            Takes::EtaDdim => {
                out.eta = self.eta.or(self.eta_ddim).unwrap_or(DEFAULT_ETA_DDIM);
                push_if(&mut infotext, "Eta DDIM", out.eta, DEFAULT_ETA_DDIM);
            }
            Takes::Churn => {
                let s_tmax = if self.s_tmax == 0.0 {
                    f64::INFINITY
                } else {
                    self.s_tmax
                };
                out.churn = Churn {
                    s_churn: self.s_churn,
                    s_tmin: self.s_tmin,
                    s_tmax,
                    s_noise: self.s_noise,
                };
                push_if(&mut infotext, "Sigma churn", self.s_churn, 0.0);
                push_if(&mut infotext, "Sigma tmin", self.s_tmin, 0.0);
                push_if(&mut infotext, "Sigma tmax", s_tmax, f64::INFINITY);
                push_if(&mut infotext, "Sigma noise", self.s_noise, DEFAULT_S_NOISE);
            }
        }
        out.infotext = infotext;
        out
    }
}

fn push_if(list: &mut Vec<(String, String)>, key: &str, value: f64, default: f64) {
    if value != default {
        list.push((key.to_string(), format_number(value)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_defaults_follow_the_sampler_family() {
        let p = SamplerParams::default();
        assert_eq!(p.effective(Takes::EtaOnly).eta, 1.0);
        assert_eq!(p.effective(Takes::EtaDdim).eta, 0.0);
        let p = SamplerParams {
            eta_ancestral: Some(0.3),
            eta_ddim: Some(0.7),
            ..SamplerParams::default()
        };
        assert_eq!(p.effective(Takes::EtaNoise).eta, 0.3);
        assert_eq!(p.effective(Takes::EtaDdim).eta, 0.7);
        let p = SamplerParams {
            eta: Some(0.5),
            ..p
        };
        assert_eq!(p.effective(Takes::EtaNoise).eta, 0.5);
        assert_eq!(p.effective(Takes::EtaDdim).eta, 0.5);
        assert_eq!(
            p.effective(Takes::EtaDdim).infotext,
            vec![("Eta DDIM".to_string(), "0.5".to_string())]
        );
    }

    #[test]
    fn euler_a_gets_no_s_noise_and_euler_no_eta() {
        let p = SamplerParams {
            eta: Some(0.5),
            s_noise: 0.9,
            s_churn: 1.0,
            ..SamplerParams::default()
        };
        let ea = p.effective(Takes::EtaOnly);
        assert_eq!((ea.eta, ea.s_noise), (0.5, 1.0));
        let e = p.effective(Takes::Churn);
        assert_eq!(e.eta, 1.0);
        assert_eq!(e.churn.s_noise, 0.9);
        assert_eq!(e.churn.s_tmax, f64::INFINITY);
        assert_eq!(p.effective(Takes::Nothing).infotext, vec![]);
    }
}
