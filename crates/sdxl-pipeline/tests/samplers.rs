//! Samplers vs k-diffusion 0.1.1.post1 (and a Python port of A1111's DDIM), fixtures from
//! scripts/fixtures/make_sampling_fixtures.py:
//! * toy: the scalar model D(x, σ) = x/(1+σ²) in f64, noise_i = 0.5·(−1)^i — |Δ| ≤ 1e-9;
//! * replay: every recorded denoiser call of the tiny SDXL UNet run (CFG 7, 1×4×8×8) is replayed;
//!   incoming x and σ must match the recording (1e-5) and the final latents must match (1e-5).

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use sdxl_pipeline::noise::TorchGenerator;
use sdxl_pipeline::sampling::ddim::Ddim;
use sdxl_pipeline::sampling::dpm2::Dpm2;
use sdxl_pipeline::sampling::dpmpp_2m::DpmPp2M;
use sdxl_pipeline::sampling::dpmpp_2m_sde::{DpmPp2MSde, SolverType};
use sdxl_pipeline::sampling::dpmpp_3m_sde::DpmPp3MSde;
use sdxl_pipeline::sampling::dpmpp_sde::DpmPpSde;
use sdxl_pipeline::sampling::euler::Euler;
use sdxl_pipeline::sampling::euler_ancestral::EulerAncestral;
use sdxl_pipeline::sampling::heun::Heun;
use sdxl_pipeline::sampling::lms::Lms;
use sdxl_pipeline::sampling::{
    resolve_sampler, sampler_names, sigmas_for, Denoiser, InitNoise, ModelSchedule, NoNoise,
    NoiseSource, Sampler, ScheduleKind,
};
use sdxl_pipeline::{PipelineError, Result};

const DIR: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/sampling/"
);

fn load(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(format!("{DIR}{name}"), &Device::Cpu).unwrap()
}

mod sampling_support;
use sampling_support::{f64s, max_abs_diff};

fn no_op(_: usize, _: usize) -> Result<()> {
    Ok(())
}

// ---------------------------------------------------------------- toy model

struct Toy;
impl Denoiser for Toy {
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        Ok(x.affine(1.0 / (1.0 + sigma * sigma), 0.0)?)
    }
}

struct AltNoise(usize);
impl NoiseSource for AltNoise {
    fn next_noise(&mut self) -> Result<Tensor> {
        let v = if self.0 % 2 == 0 { 0.5 } else { -0.5 };
        self.0 += 1;
        Ok(Tensor::new(&[v], &Device::Cpu)?)
    }
}

fn run_toy(sampler: &dyn Sampler, sigmas: &[f64]) -> f64 {
    let x = Tensor::new(&[sigmas[0]], &Device::Cpu).unwrap();
    let out = sampler
        .sample(&mut Toy, x, sigmas, &mut AltNoise(0), &mut no_op)
        .unwrap();
    f64s(&out)[0]
}

fn samplers() -> Vec<(&'static str, Box<dyn Sampler>)> {
    vec![
        ("euler", Box::new(Euler::default())),
        ("euler_a", Box::new(EulerAncestral::default())),
        ("heun", Box::new(Heun::default())),
        ("dpm2", Box::new(Dpm2::default())),
        ("lms", Box::new(Lms::default())),
        ("dpmpp_2m", Box::new(DpmPp2M)),
        ("dpmpp_2m_sde", Box::new(DpmPp2MSde::default())),
        ("dpmpp_sde", Box::new(DpmPpSde::default())),
        ("dpmpp_3m_sde", Box::new(DpmPp3MSde::default())),
    ]
}

#[test]
fn toy_model_matches_k_diffusion_in_f64() {
    let t = load("toy.safetensors");
    for list in ["karras10", "uniform20"] {
        let sigmas = f64s(&t[&format!("{list}.sigmas")]);
        let heun: Box<dyn Sampler> = Box::new(DpmPp2MSde {
            solver: SolverType::Heun,
            ..DpmPp2MSde::default()
        });
        for (name, sampler) in samplers().into_iter().chain([("dpmpp_2m_sde_heun", heun)]) {
            let ours = run_toy(sampler.as_ref(), &sigmas);
            let want = f64s(&t[&format!("{list}.{name}")])[0];
            assert!(
                (ours - want).abs() < 1e-9,
                "{list} {name}: ours {ours} k-diffusion {want}"
            );
        }
    }
}

#[test]
fn toy_model_matches_research_known_answers() {
    // research/sdxl-formats.md §8.3 (independent f64 transcription, cross-checked with diffusers)
    let s = ModelSchedule::sdxl();
    let uni20 = s.sigma_list(ScheduleKind::Uniform, 20, false).unwrap();
    let kar20 = s.sigma_list(ScheduleKind::Karras, 20, false).unwrap();
    let uni10 = s.sigma_list(ScheduleKind::Uniform, 10, false).unwrap();
    let cases: [(&str, &dyn Sampler, &[f64], f64); 7] = [
        ("Euler uniform 20", &Euler::default(), &uni20, 0.929123228),
        ("Euler Karras 20", &Euler::default(), &kar20, 0.920723446),
        ("Heun uniform 10", &Heun::default(), &uni10, 1.023422810),
        ("DPM++ 2M uniform 20", &DpmPp2M, &uni20, 1.057144703),
        ("DPM++ 2M Karras 20", &DpmPp2M, &kar20, 1.009599591),
        (
            "Euler a uniform 20",
            &EulerAncestral { eta: 1.0 },
            &uni20,
            0.060908889,
        ),
        (
            "DPM++ 2M SDE Karras 20",
            &DpmPp2MSde::default(),
            &kar20,
            0.082016659,
        ),
    ];
    for (what, sampler, sigmas, want) in cases {
        let ours = run_toy(sampler, sigmas);
        assert!((ours - want).abs() < 2e-6, "{what}: {ours} vs {want}");
    }
    let eta0 = DpmPp2MSde {
        eta: 0.0,
        ..DpmPp2MSde::default()
    };
    assert!((run_toy(&eta0, &kar20) - 1.009599591).abs() < 2e-6);
}

// ---------------------------------------------------------------- replay

struct Replay {
    xs: Vec<Tensor>,
    sigmas: Vec<f64>,
    denoised: Vec<Tensor>,
    k: usize,
    tol: f64,
}

impl Denoiser for Replay {
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        let k = self.k;
        assert!(k < self.xs.len(), "more model calls than recorded ({k})");
        let want_sigma = self.sigmas[k];
        assert!(
            (sigma - want_sigma).abs() <= 1e-5 * want_sigma.max(1.0),
            "call {k}: sigma {sigma} vs recorded {want_sigma}"
        );
        let dx = max_abs_diff(x, &self.xs[k]);
        assert!(dx <= self.tol, "call {k}: |x − recorded x| = {dx:e}");
        self.k += 1;
        Ok(self.denoised[k].clone())
    }
}

struct ReplayNoise {
    draws: Vec<Tensor>,
    k: usize,
}

impl NoiseSource for ReplayNoise {
    fn next_noise(&mut self) -> Result<Tensor> {
        let n = self
            .draws
            .get(self.k)
            .cloned()
            .expect("more noise draws than recorded");
        self.k += 1;
        Ok(n)
    }
}

fn split(t: &Tensor) -> Vec<Tensor> {
    (0..t.dim(0).unwrap()).map(|i| t.get(i).unwrap()).collect()
}

fn replay(t: &HashMap<String, Tensor>, name: &str, sampler: &dyn Sampler) {
    let p = |k: &str| format!("{name}.{k}");
    let sigmas = f64s(&t[&p("sigmas")]);
    let mut model = Replay {
        xs: split(&t[&p("x")]),
        sigmas: f64s(&t[&p("sigma")]),
        denoised: split(&t[&p("denoised")]),
        k: 0,
        tol: 1e-5,
    };
    let draws = t.get(&p("noise")).map(split).unwrap_or_default();
    let n_draws = draws.len();
    // the recorded noise is what TorchGenerator(seed) must produce, draw after draw
    let mut gen = TorchGenerator::new(2024);
    for (i, d) in draws.iter().enumerate() {
        let ours = gen.randn(&[1, 4, 8, 8]);
        let theirs = d.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(
            ours.iter()
                .zip(&theirs)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name}: noise draw {i}"
        );
    }
    let mut noise = ReplayNoise { draws, k: 0 };
    let x0 = t[&p("x_init")].clone();
    let mut steps = Vec::new();
    let out = sampler
        .sample(&mut model, x0, &sigmas, &mut noise, &mut |i, n| {
            steps.push((i, n));
            Ok(())
        })
        .unwrap();
    assert_eq!(model.k, model.xs.len(), "{name}: model calls");
    assert_eq!(noise.k, n_draws, "{name}: noise draws");
    assert_eq!(steps.len(), sigmas.len() - 1, "{name}: on_step calls");
    let diff = max_abs_diff(&out, &t[&p("final")]);
    assert!(diff <= 1e-5, "{name}: final latents differ by {diff:e}");
}

#[test]
fn replay_matches_k_diffusion_on_the_tiny_unet() {
    let t = load("replay.safetensors");
    // initial latent = TorchGenerator(seed) noise × σ₀
    let noise = TorchGenerator::new(2024).randn(&[1, 4, 8, 8]);
    let want = t["init_noise"]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert!(noise
        .iter()
        .zip(&want)
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    for (name, sampler) in samplers() {
        replay(&t, name, sampler.as_ref());
    }
}

#[test]
fn replay_matches_a1111_ddim() {
    let t = load("replay.safetensors");
    let sigmas = f64s(&t["ddim.sigmas"]);
    let mut model = Replay {
        xs: split(&t["ddim.x"]),
        sigmas: f64s(&t["ddim.sigma"]),
        denoised: split(&t["ddim.denoised"]),
        k: 0,
        tol: 1e-5,
    };
    let noise = t["init_noise"].clone();
    let x0 = noise
        .affine(InitNoise::VpUnit.factor(sigmas[0]), 0.0)
        .unwrap();
    let out = Ddim::default()
        .sample(&mut model, x0, &sigmas, &mut NoNoise, &mut no_op)
        .unwrap();
    assert_eq!(model.k, sigmas.len() - 1);
    let diff = max_abs_diff(&out, &t["ddim.final"]);
    assert!(diff <= 1e-5, "ddim: final latents differ by {diff:e}");
    // the schedule helper gives the same timestep sigmas
    let ours = ModelSchedule::sdxl()
        .sigma_list(ScheduleKind::Timesteps, 6, false)
        .unwrap();
    for (a, b) in ours.iter().zip(&sigmas) {
        assert!((a - b).abs() <= 1e-6 * b);
    }
}

#[test]
fn on_step_can_cancel() {
    let sigmas = [14.6, 5.0, 1.0, 0.0];
    let x = Tensor::new(&[1.0f64], &Device::Cpu).unwrap();
    let mut calls = 0;
    let r = Euler::default().sample(&mut Toy, x, &sigmas, &mut NoNoise, &mut |i, _| {
        calls += 1;
        if i == 1 {
            Err(PipelineError::Cancelled)
        } else {
            Ok(())
        }
    });
    assert!(matches!(r, Err(PipelineError::Cancelled)));
    assert_eq!(calls, 2);
}

// ---------------------------------------------------------------- names

#[test]
fn legacy_and_split_names_resolve_alike() {
    let s = ModelSchedule::sdxl();
    let cases = [
        (
            "DPM++ 2M Karras",
            None,
            "DPM++ 2M",
            "Karras",
            ScheduleKind::Karras,
        ),
        (
            "DPM++ 2M",
            Some("karras"),
            "DPM++ 2M",
            "Karras",
            ScheduleKind::Karras,
        ),
        ("DPM++ 2M", None, "DPM++ 2M", "Karras", ScheduleKind::Karras),
        (
            "dpm++ 2m",
            Some("Exponential"),
            "DPM++ 2M",
            "Exponential",
            ScheduleKind::Exponential,
        ),
        ("Euler a", None, "Euler a", "Uniform", ScheduleKind::Uniform),
        (
            "k_euler_a",
            Some("automatic"),
            "Euler a",
            "Uniform",
            ScheduleKind::Uniform,
        ),
        (
            "Euler",
            Some("normal"),
            "Euler",
            "Normal",
            ScheduleKind::Uniform,
        ),
        (
            "Euler",
            Some("sgm_uniform"),
            "Euler",
            "SGM Uniform",
            ScheduleKind::SgmUniform,
        ),
        (
            "Euler SGM Uniform",
            None,
            "Euler",
            "SGM Uniform",
            ScheduleKind::SgmUniform,
        ),
        (
            "DPM++ 2M SDE Karras",
            None,
            "DPM++ 2M SDE",
            "Karras",
            ScheduleKind::Karras,
        ),
        (
            "DPM++ 2M SDE",
            None,
            "DPM++ 2M SDE",
            "Exponential",
            ScheduleKind::Exponential,
        ),
        (
            "DPM++ 2M SDE Heun",
            None,
            "DPM++ 2M SDE Heun",
            "Exponential",
            ScheduleKind::Exponential,
        ),
        (
            "DPM++ SDE Karras",
            None,
            "DPM++ SDE",
            "Karras",
            ScheduleKind::Karras,
        ),
        (
            "DPM++ 3M SDE Exponential",
            None,
            "DPM++ 3M SDE",
            "Exponential",
            ScheduleKind::Exponential,
        ),
        ("LMS Karras", None, "LMS", "Karras", ScheduleKind::Karras),
        ("Heun", Some(""), "Heun", "Uniform", ScheduleKind::Uniform),
        ("DPM2", None, "DPM2", "Karras", ScheduleKind::Karras),
        (
            "DDIM",
            Some("karras"),
            "DDIM",
            "Automatic",
            ScheduleKind::Timesteps,
        ),
    ];
    for (name, sched, want_name, want_sched, kind) in cases {
        let c = resolve_sampler(name, sched).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(c.infotext_sampler, want_name, "{name}");
        assert_eq!(c.infotext_schedule, want_sched, "{name} / {sched:?}");
        assert_eq!(c.schedule, kind, "{name}");
        let sig = sigmas_for(&c, &s, 8).unwrap();
        if kind == ScheduleKind::Timesteps {
            assert_eq!(sig.len(), 8);
            assert_eq!(c.init_noise, InitNoise::VpUnit);
        } else {
            assert_eq!(sig.len(), 9, "{name}: discard keeps n+1 sigmas");
            assert_eq!(c.init_noise, InitNoise::SigmaMax);
        }
    }
    let dpm2 = resolve_sampler("DPM2", None).unwrap();
    assert!(dpm2.discard_next_to_last_sigma && !dpm2.uses_noise);
    assert!(resolve_sampler("Euler a", None).unwrap().uses_noise);
    assert!(resolve_sampler("DPM++ SDE", None).unwrap().uses_noise);
}

#[test]
fn bad_names_list_the_valid_ones() {
    for (name, sched) in [
        ("Euler b", None),
        ("DPM++ 2M", Some("cosine")),
        ("DPM++ 2M Karras", Some("exponential")),
    ] {
        match resolve_sampler(name, sched) {
            Err(PipelineError::InvalidInput(msg)) => {
                assert!(
                    msg.contains("Euler") || msg.contains("karras") || msg.contains("Karras"),
                    "{msg}"
                )
            }
            Err(e) => panic!("{name}: wrong error {e}"),
            Ok(_) => panic!("{name}: accepted"),
        }
    }
}

#[test]
fn sampler_list_is_exactly_what_resolves() {
    let list = sampler_names();
    assert!(list.len() >= 11);
    for info in &list {
        assert_eq!(
            resolve_sampler(&info.name, None).unwrap().infotext_sampler,
            info.name
        );
        for a in &info.aliases {
            assert_eq!(
                resolve_sampler(a, None).unwrap().infotext_sampler,
                info.name
            );
        }
    }
}
