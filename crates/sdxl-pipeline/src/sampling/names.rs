//! A1111 sampler and scheduler names (A1111 1.10 semantics, research §4.2): legacy names such as
//! "DPM++ 2M Karras" and the split form (`sampler_name` + `scheduler`) resolve to the same choice.

use std::collections::BTreeMap;

use super::ddim::Ddim;
use super::dpm2::Dpm2;
use super::dpmpp_2m::DpmPp2M;
use super::dpmpp_2m_sde::{DpmPp2MSde, SolverType};
use super::dpmpp_3m_sde::DpmPp3MSde;
use super::dpmpp_sde::DpmPpSde;
use super::euler::Euler;
use super::euler_ancestral::EulerAncestral;
use super::extra_params::{SamplerParams, Takes};
use super::heun::Heun;
use super::lms::Lms;
use super::plms::Plms;
use super::schedule::{ModelSchedule, ScheduleKind};
use super::unipc::UniPc;
use super::Sampler;
use crate::{PipelineError, Result};

/// How the initial latent is made from a standard-normal draw n of the latent shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitNoise {
    /// k-diffusion samplers: x = n·σ₀ (A1111 `KDiffusionSampler.sample`).
    SigmaMax,
    /// A1111 timestep samplers (DDIM): x_vp = n, i.e. x = n·√(1+σ₀²) in VE space.
    VpUnit,
}

impl InitNoise {
    /// The factor applied to the noise, given the first sigma of the list.
    pub fn factor(self, sigma0: f64) -> f64 {
        match self {
            Self::SigmaMax => sigma0,
            Self::VpUnit => (1.0 + sigma0 * sigma0).sqrt(),
        }
    }
}

/// A resolved sampler request.
pub struct SamplerChoice {
    /// The sampler.
    pub sampler: Box<dyn Sampler>,
    /// The sigma list kind it runs on.
    pub schedule: ScheduleKind,
    /// Build n+1 sigmas and drop the second-to-last (A1111 `discard_next_to_last_sigma`).
    pub discard_next_to_last_sigma: bool,
    /// Whether the sampler draws from a `NoiseSource`.
    pub uses_noise: bool,
    /// A1111 sampler name for the infotext, e.g. "DPM++ 2M".
    pub infotext_sampler: String,
    /// A1111 schedule label for the infotext, e.g. "Karras".
    pub infotext_schedule: String,
    /// How to scale the initial noise.
    pub init_noise: InitNoise,
    /// A1111 `second_order`: prompt schedules are built on twice the steps (SPEC §5a).
    pub second_order: bool,
    /// Infotext pairs of the sampler parameters A1111 writes when they are not the default
    /// (`Eta`, `Eta DDIM`, `Sigma churn`, `Sigma tmin`, `Sigma tmax`, `Sigma noise`).
    pub extra_infotext: Vec<(String, String)>,
}

/// What `GET /sdapi/v1/samplers` lists for one sampler.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SamplerInfo {
    /// A1111 name.
    pub name: String,
    /// Accepted aliases.
    pub aliases: Vec<String>,
    /// A1111-style options (e.g. `scheduler`, `second_order`, `brownian_noise`).
    pub options: BTreeMap<String, String>,
}

/// What `GET /sdapi/v1/schedulers` lists for one scheduler.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SchedulerInfo {
    /// Machine name (`karras`).
    pub name: String,
    /// Display label (`Karras`).
    pub label: String,
    /// Accepted aliases.
    pub aliases: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Euler,
    EulerA,
    Lms,
    Heun,
    Dpm2,
    DpmPp2M,
    DpmPpSde,
    DpmPp2MSde,
    DpmPp2MSdeHeun,
    DpmPp3MSde,
    Ddim,
    Plms,
    UniPc,
}

struct Row {
    name: &'static str,
    aliases: &'static [&'static str],
    kind: Kind,
    default_schedule: Sched,
    discard: bool,
    noise: bool,
    second_order: bool,
}

const SAMPLERS: &[Row] = &[
    Row {
        name: "DPM++ 2M",
        aliases: &["k_dpmpp_2m"],
        kind: Kind::DpmPp2M,
        default_schedule: Sched::Karras,
        discard: false,
        noise: false,
        second_order: false,
    },
    Row {
        name: "DPM++ SDE",
        aliases: &["k_dpmpp_sde"],
        kind: Kind::DpmPpSde,
        default_schedule: Sched::Karras,
        discard: false,
        noise: true,
        second_order: true,
    },
    Row {
        name: "DPM++ 2M SDE",
        aliases: &["k_dpmpp_2m_sde"],
        kind: Kind::DpmPp2MSde,
        default_schedule: Sched::Exponential,
        discard: false,
        noise: true,
        second_order: false,
    },
    Row {
        name: "DPM++ 2M SDE Heun",
        aliases: &["k_dpmpp_2m_sde_heun"],
        kind: Kind::DpmPp2MSdeHeun,
        default_schedule: Sched::Exponential,
        discard: false,
        noise: true,
        second_order: false,
    },
    Row {
        name: "DPM++ 3M SDE",
        aliases: &["k_dpmpp_3m_sde"],
        kind: Kind::DpmPp3MSde,
        default_schedule: Sched::Exponential,
        discard: true,
        noise: true,
        second_order: false,
    },
    Row {
        name: "Euler a",
        aliases: &["k_euler_a", "k_euler_ancestral"],
        kind: Kind::EulerA,
        default_schedule: Sched::Uniform,
        discard: false,
        noise: true,
        second_order: false,
    },
    Row {
        name: "Euler",
        aliases: &["k_euler"],
        kind: Kind::Euler,
        default_schedule: Sched::Uniform,
        discard: false,
        noise: false,
        second_order: false,
    },
    Row {
        name: "LMS",
        aliases: &["k_lms"],
        kind: Kind::Lms,
        default_schedule: Sched::Uniform,
        discard: false,
        noise: false,
        second_order: false,
    },
    Row {
        name: "Heun",
        aliases: &["k_heun"],
        kind: Kind::Heun,
        default_schedule: Sched::Uniform,
        discard: false,
        noise: false,
        second_order: true,
    },
    Row {
        name: "DPM2",
        aliases: &["k_dpm_2"],
        kind: Kind::Dpm2,
        default_schedule: Sched::Karras,
        discard: true,
        noise: false,
        second_order: true,
    },
    Row {
        name: "DDIM",
        aliases: &["ddim"],
        kind: Kind::Ddim,
        default_schedule: Sched::Automatic,
        discard: false,
        noise: false,
        second_order: false,
    },
    Row {
        name: "PLMS",
        aliases: &["plms"],
        kind: Kind::Plms,
        default_schedule: Sched::Automatic,
        discard: false,
        noise: false,
        second_order: false,
    },
    Row {
        name: "UniPC",
        aliases: &["unipc"],
        kind: Kind::UniPc,
        default_schedule: Sched::Automatic,
        discard: false,
        noise: false,
        second_order: false,
    },
];

/// User-facing schedulers (A1111 `sd_schedulers`); `Normal` yields the same list as `Uniform`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Sched {
    Automatic,
    Uniform,
    Karras,
    Exponential,
    SgmUniform,
    Normal,
}

struct SchedRow {
    sched: Sched,
    name: &'static str,
    label: &'static str,
    aliases: &'static [&'static str],
}

const SCHEDULERS: &[SchedRow] = &[
    SchedRow {
        sched: Sched::Automatic,
        name: "automatic",
        label: "Automatic",
        aliases: &[],
    },
    SchedRow {
        sched: Sched::Uniform,
        name: "uniform",
        label: "Uniform",
        aliases: &[],
    },
    SchedRow {
        sched: Sched::Karras,
        name: "karras",
        label: "Karras",
        aliases: &[],
    },
    SchedRow {
        sched: Sched::Exponential,
        name: "exponential",
        label: "Exponential",
        aliases: &[],
    },
    SchedRow {
        sched: Sched::SgmUniform,
        name: "sgm_uniform",
        label: "SGM Uniform",
        aliases: &["SGMUniform"],
    },
    SchedRow {
        sched: Sched::Normal,
        name: "normal",
        label: "Normal",
        aliases: &[],
    },
];

fn sched_row(s: Sched) -> &'static SchedRow {
    SCHEDULERS
        .iter()
        .find(|r| r.sched == s)
        .unwrap_or(&SCHEDULERS[0])
}

fn find_scheduler(name: &str) -> Option<Sched> {
    let n = name.trim().to_ascii_lowercase();
    SCHEDULERS
        .iter()
        .find(|r| {
            r.name == n
                || r.label.to_ascii_lowercase() == n
                || r.aliases.iter().any(|a| a.to_ascii_lowercase() == n)
        })
        .map(|r| r.sched)
}

fn find_sampler(name: &str) -> Option<&'static Row> {
    let n = name.trim().to_ascii_lowercase();
    SAMPLERS.iter().find(|r| {
        r.name.to_ascii_lowercase() == n || r.aliases.iter().any(|a| a.to_ascii_lowercase() == n)
    })
}

/// Splits a legacy name like "DPM++ 2M Karras" into ("DPM++ 2M", Karras) (A1111
/// `get_sampler_and_scheduler`); names without a scheduler suffix come back unchanged.
fn split_legacy(name: &str) -> (String, Option<Sched>) {
    let trimmed = name.trim();
    let lower = trimmed.to_ascii_lowercase();
    for r in SCHEDULERS {
        let options = std::iter::once(r.label)
            .chain(std::iter::once(r.name))
            .chain(r.aliases.iter().copied());
        for opt in options {
            let suffix = format!(" {}", opt.to_ascii_lowercase());
            if lower.ends_with(&suffix) {
                let base = &trimmed[..trimmed.len() - suffix.len()];
                // Only split when the rest is a known sampler ("DPM++ 2M SDE Heun" stays whole).
                if find_sampler(base).is_some() {
                    return (base.to_string(), Some(r.sched));
                }
            }
        }
    }
    (trimmed.to_string(), None)
}

/// Which A1111 extra parameters a sampler function receives (see [`super::extra_params`]).
fn takes(kind: Kind) -> Takes {
    match kind {
        Kind::Euler | Kind::Heun | Kind::Dpm2 => Takes::Churn,
        Kind::EulerA => Takes::EtaOnly,
        Kind::DpmPpSde | Kind::DpmPp2MSde | Kind::DpmPp2MSdeHeun | Kind::DpmPp3MSde => {
            Takes::EtaNoise
        }
        Kind::Ddim => Takes::EtaDdim,
        Kind::Lms | Kind::DpmPp2M | Kind::Plms | Kind::UniPc => Takes::Nothing,
    }
}

/// The sampler with the parameters it receives, and their infotext pairs.
fn build(kind: Kind, params: &SamplerParams) -> (Box<dyn Sampler>, Vec<(String, String)>) {
    let p = params.effective(takes(kind));
    let (eta, s_noise, churn) = (p.eta, p.s_noise, p.churn);
    let sampler: Box<dyn Sampler> = match kind {
        Kind::Euler => Box::new(Euler { churn }),
        Kind::EulerA => Box::new(EulerAncestral { eta }),
        Kind::Lms => Box::new(Lms::default()),
        Kind::Heun => Box::new(Heun { churn }),
        Kind::Dpm2 => Box::new(Dpm2 { churn }),
        Kind::DpmPp2M => Box::new(DpmPp2M),
        Kind::DpmPpSde => Box::new(DpmPpSde {
            eta,
            s_noise,
            ..DpmPpSde::default()
        }),
        Kind::DpmPp2MSde => Box::new(DpmPp2MSde {
            eta,
            s_noise,
            ..DpmPp2MSde::default()
        }),
        Kind::DpmPp2MSdeHeun => Box::new(DpmPp2MSde {
            eta,
            s_noise,
            solver: SolverType::Heun,
        }),
        Kind::DpmPp3MSde => Box::new(DpmPp3MSde { eta, s_noise }),
        Kind::Ddim => Box::new(Ddim { eta }),
        Kind::Plms => Box::new(Plms),
        Kind::UniPc => Box::new(UniPc::default()),
    };
    (sampler, p.infotext)
}

/// Whether the sampler draws from its `NoiseSource` with these parameters (ancestral/SDE
/// samplers with η > 0, churn, DDIM with η > 0).
fn draws_noise(kind: Kind, row_noise: bool, params: &SamplerParams) -> bool {
    let p = params.effective(takes(kind));
    row_noise || p.churn.active() || (kind == Kind::Ddim && p.eta != 0.0)
}

fn schedule_kind(s: Sched) -> ScheduleKind {
    match s {
        Sched::Karras => ScheduleKind::Karras,
        Sched::Exponential => ScheduleKind::Exponential,
        Sched::SgmUniform => ScheduleKind::SgmUniform,
        Sched::Automatic | Sched::Uniform | Sched::Normal => ScheduleKind::Uniform,
    }
}

fn valid_sampler_list() -> String {
    SAMPLERS
        .iter()
        .map(|r| r.name)
        .collect::<Vec<_>>()
        .join(", ")
}

fn valid_scheduler_list() -> String {
    SCHEDULERS
        .iter()
        .map(|r| r.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The fixed schedule of A1111's timestep samplers (DDIM, PLMS, UniPC), which ignore the
/// scheduler.
fn timestep_schedule(kind: Kind) -> Option<ScheduleKind> {
    match kind {
        Kind::Ddim | Kind::Plms => Some(ScheduleKind::Timesteps),
        Kind::UniPc => Some(ScheduleKind::UniPcTimeUniform),
        _ => None,
    }
}

/// Resolves an A1111 sampler name (legacy "X Karras" form or bare) and an optional scheduler
/// (`karras`, `exponential`, `normal`, `uniform`, `sgm_uniform`, `automatic`; case-insensitive).
/// DDIM, PLMS and UniPC ignore the scheduler, as in A1111. The sampler gets A1111's default
/// extra parameters ([`resolve_sampler_with`] takes a request's).
pub fn resolve_sampler(name: &str, scheduler: Option<&str>) -> Result<SamplerChoice> {
    resolve_sampler_with(name, scheduler, &SamplerParams::default())
}

/// [`resolve_sampler`] with the request's `eta`/`s_*` parameters, passed where A1111 1.10 passes
/// them (see [`super::extra_params`]).
pub fn resolve_sampler_with(
    name: &str,
    scheduler: Option<&str>,
    params: &SamplerParams,
) -> Result<SamplerChoice> {
    let explicit = match scheduler.map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(find_scheduler(s).ok_or_else(|| {
            PipelineError::InvalidInput(format!(
                "unknown scheduler `{s}`; valid: {}",
                valid_scheduler_list()
            ))
        })?),
    };
    let (base, suffix) = split_legacy(name);
    let row = find_sampler(&base).ok_or_else(|| {
        PipelineError::InvalidInput(format!(
            "unknown sampler `{}`; valid: {} (optionally followed by a schedule: Karras, Exponential, Uniform, SGM Uniform, Normal)",
            name.trim(),
            valid_sampler_list()
        ))
    })?;
    let requested = match (explicit.filter(|s| *s != Sched::Automatic), suffix) {
        (Some(e), Some(s)) if e != s && s != Sched::Automatic => {
            return Err(PipelineError::InvalidInput(format!(
                "sampler `{}` names schedule `{}` but scheduler is `{}`",
                name.trim(),
                sched_row(s).label,
                sched_row(e).label
            )))
        }
        (Some(e), _) => e,
        (None, Some(s)) => s,
        (None, None) => Sched::Automatic,
    };
    let (sampler, extra_infotext) = build(row.kind, params);
    let uses_noise = draws_noise(row.kind, row.noise, params);
    if let Some(schedule) = timestep_schedule(row.kind) {
        return Ok(SamplerChoice {
            sampler,
            schedule,
            discard_next_to_last_sigma: false,
            uses_noise,
            infotext_sampler: row.name.to_string(),
            infotext_schedule: sched_row(Sched::Automatic).label.to_string(),
            init_noise: InitNoise::VpUnit,
            second_order: row.second_order,
            extra_infotext,
        });
    }
    let effective = if requested == Sched::Automatic {
        row.default_schedule
    } else {
        requested
    };
    Ok(SamplerChoice {
        sampler,
        schedule: schedule_kind(effective),
        discard_next_to_last_sigma: row.discard,
        uses_noise,
        infotext_sampler: row.name.to_string(),
        infotext_schedule: sched_row(effective).label.to_string(),
        init_noise: InitNoise::SigmaMax,
        second_order: row.second_order,
        extra_infotext,
    })
}

/// Every sampler that works, for `GET /sdapi/v1/samplers`.
pub fn sampler_names() -> Vec<SamplerInfo> {
    SAMPLERS
        .iter()
        .map(|r| {
            let mut options = BTreeMap::new();
            if r.default_schedule != Sched::Automatic {
                options.insert(
                    "scheduler".into(),
                    sched_row(r.default_schedule).name.into(),
                );
            }
            if r.discard {
                options.insert("discard_next_to_last_sigma".into(), "True".into());
            }
            if r.second_order {
                options.insert("second_order".into(), "True".into());
            }
            if r.noise && r.kind != Kind::EulerA {
                options.insert("brownian_noise".into(), "True".into());
            }
            if r.kind == Kind::DpmPp2MSdeHeun {
                options.insert("solver_type".into(), "heun".into());
            }
            SamplerInfo {
                name: r.name.into(),
                aliases: r.aliases.iter().map(|a| a.to_string()).collect(),
                options,
            }
        })
        .collect()
}

/// Every scheduler that works, for `GET /sdapi/v1/schedulers`.
pub fn scheduler_names() -> Vec<SchedulerInfo> {
    SCHEDULERS
        .iter()
        .map(|r| SchedulerInfo {
            name: r.name.into(),
            label: r.label.into(),
            aliases: r.aliases.iter().map(|a| a.to_string()).collect(),
        })
        .collect()
}

/// The sigma list for `steps` steps of this choice on the model's schedule.
pub fn sigmas_for(
    choice: &SamplerChoice,
    schedule: &ModelSchedule,
    steps: usize,
) -> Result<Vec<f64>> {
    schedule.sigma_list(choice.schedule, steps, choice.discard_next_to_last_sigma)
}
