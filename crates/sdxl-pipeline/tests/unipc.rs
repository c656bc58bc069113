//! UniPC vs a Python port of A1111's UniPC (bh1, order 3, time_uniform), fixtures from
//! scripts/fixtures/make_unipc_fixtures.py (`tests/fixtures/sampling/unipc.safetensors`):
//! * grid: our VE sigmas of the continuous-time grid vs A1111's float32 schedule — relative 1e-5;
//! * toy: the scalar model D(x, σ) = x/(1+σ²) in f64 from x_vp = 1 — relative 1e-9;
//! * replay: every recorded call of the tiny SDXL UNet run (CFG 7, 1×4×8×8, 6 steps) is replayed;
//!   incoming x and σ must match the recording (1e-5) and the final VP latents too (1e-5).

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use sdxl_pipeline::sampling::schedule::time_uniform_sigmas;
use sdxl_pipeline::sampling::unipc::UniPc;
use sdxl_pipeline::sampling::{
    resolve_sampler, sampler_names, sigmas_for, Denoiser, InitNoise, ModelSchedule, NoNoise,
    Sampler, ScheduleKind,
};
use sdxl_pipeline::Result;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/sampling/unipc.safetensors"
);

fn load() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(FIXTURE, &Device::Cpu).unwrap()
}

mod sampling_support;
use sampling_support::{f64s, max_abs_diff};

fn split(t: &Tensor) -> Vec<Tensor> {
    (0..t.dim(0).unwrap()).map(|i| t.get(i).unwrap()).collect()
}

#[test]
fn grid_matches_a1111_noise_schedule_vp() {
    let t = load();
    let s = ModelSchedule::sdxl();
    // A1111 runs len(get_timesteps(n)) UniPC steps: 1, 7 (1000//6 = 166 → 7 timesteps), 10, 25
    for (n, points) in [(1, 2), (6, 8), (10, 11), (25, 26)] {
        let want = f64s(&t[&format!("grid.n{n}")]);
        let ours = time_uniform_sigmas(&s, n).unwrap();
        assert_eq!(ours.len(), points, "n = {n}");
        assert_eq!(want.len(), points, "n = {n}");
        for (i, (a, b)) in ours.iter().zip(&want).enumerate() {
            assert!((a - b).abs() <= 1e-5 * b, "n = {n}, point {i}: {a} vs {b}");
        }
    }
}

struct Toy;
impl Denoiser for Toy {
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        Ok(x.affine(1.0 / (1.0 + sigma * sigma), 0.0)?)
    }
}

#[test]
fn toy_matches_reference_in_f64() {
    let t = load();
    let sigmas = f64s(&t["toy.sigmas"]);
    let want = f64s(&t["toy.final"])[0];
    // x_vp = 1 ⇒ x_ve = √(1+σ₀²)
    let x = Tensor::new(&[InitNoise::VpUnit.factor(sigmas[0])], &Device::Cpu).unwrap();
    let mut steps = Vec::new();
    let out = UniPc::default()
        .sample(&mut Toy, x, &sigmas, &mut NoNoise, &mut |i, n| {
            steps.push((i, n));
            Ok(())
        })
        .unwrap();
    let got = f64s(&out)[0];
    assert!((got - want).abs() <= 1e-9 * want.abs(), "{got} vs {want}");
    let n = sigmas.len() - 1;
    assert_eq!(steps, (0..n).map(|i| (i, n)).collect::<Vec<_>>());
}

struct Replay {
    xs: Vec<Tensor>,
    sigmas: Vec<f64>,
    denoised: Vec<Tensor>,
    k: usize,
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
        assert!(dx <= 1e-5, "call {k}: |x − recorded x| = {dx:e}");
        self.k += 1;
        Ok(self.denoised[k].clone())
    }
}

#[test]
fn replay_matches_a1111_unipc_on_the_tiny_unet() {
    let t = load();
    let sigmas = f64s(&t["replay.sigmas"]);
    let mut model = Replay {
        xs: split(&t["replay.x"]),
        sigmas: f64s(&t["replay.sigma"]),
        denoised: split(&t["replay.denoised"]),
        k: 0,
    };
    // the glue's initial latent: TorchGenerator(2024) noise × √(1+σ₀²)
    let noise = sdxl_pipeline::noise::TorchGenerator::new(2024)
        .randn_tensor(&[1, 4, 8, 8], &Device::Cpu)
        .unwrap();
    let x0 = noise
        .affine(InitNoise::VpUnit.factor(sigmas[0]), 0.0)
        .unwrap();
    let out = UniPc::default()
        .sample(&mut model, x0, &sigmas, &mut NoNoise, &mut |_, _| Ok(()))
        .unwrap();
    // one call per grid point except the last (7 for 6 requested steps)
    assert_eq!(model.k, sigmas.len() - 1);
    assert_eq!(model.k, model.xs.len());
    let diff = max_abs_diff(&out, &t["replay.final"]);
    assert!(diff <= 1e-5, "unipc: final latents differ by {diff:e}");
}

#[test]
fn unipc_resolves_like_a1111() {
    let s = ModelSchedule::sdxl();
    for (name, sched) in [
        ("UniPC", None),
        ("unipc", Some("karras")),
        ("UniPC", Some("")),
    ] {
        let c = resolve_sampler(name, sched).unwrap();
        assert_eq!(c.infotext_sampler, "UniPC");
        assert_eq!(c.infotext_schedule, "Automatic");
        assert_eq!(c.schedule, ScheduleKind::UniPcTimeUniform);
        assert_eq!(c.init_noise, InitNoise::VpUnit);
        assert!(!c.uses_noise);
        assert_eq!(sigmas_for(&c, &s, 6).unwrap().len(), 8);
    }
    assert!(sampler_names().iter().any(|i| i.name == "UniPC"));
}
