//! A1111's sampler extra parameters (`eta`, `s_churn`, `s_tmin`, `s_tmax`, `s_noise`, passed where
//! A1111 1.10's `Sampler.initialize` passes them) and A1111's timestep DDIM (η > 0) and PLMS, in
//! f64 on the scalar toy model D(x, σ) = x/(1+σ²) with noise_i = 0.5·(−1)^i, against k-diffusion
//! 0.1.1.post1 and Python ports of `sd_samplers_timesteps_impl`
//! (`scripts/fixtures/make_seed_sampler_fixtures.py`, `tests/fixtures/seeds/toy_samplers.safetensors`).
//! The samplers are built by name through `resolve_sampler_with`, so the name table's routing of
//! the parameters is what is tested. Bar: |Δ| ≤ 1e-9 and the same number of noise draws.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use sdxl_pipeline::sampling::{resolve_sampler_with, Denoiser, NoiseSource, SamplerParams};
use sdxl_pipeline::Result;

fn load() -> HashMap<String, Tensor> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/seeds/toy_samplers.safetensors"
    );
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

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

fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_dtype(candle_core::DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

fn params(eta: Option<f64>, s_churn: f64, s_tmin: f64, s_tmax: f64, s_noise: f64) -> SamplerParams {
    SamplerParams {
        eta,
        s_churn,
        s_tmin,
        s_tmax,
        s_noise,
        ..SamplerParams::default()
    }
}

/// (fixture case, A1111 sampler name, sigma list, request parameters, initial x factor)
fn cases() -> Vec<(&'static str, &'static str, &'static str, SamplerParams)> {
    vec![
        (
            "euler_churn",
            "Euler",
            "karras10",
            params(None, 2.0, 0.3, 5.0, 0.9),
        ),
        (
            "heun_churn",
            "Heun",
            "karras10",
            params(None, 1.0, 0.0, 0.0, 1.1),
        ),
        (
            "dpm2_churn",
            "DPM2",
            "karras10",
            params(None, 3.0, 0.5, 0.0, 1.0),
        ),
        // s_noise is not passed to Euler a (A1111), so 0.5 must not change it
        (
            "euler_a_eta",
            "Euler a",
            "karras10",
            params(Some(0.5), 0.0, 0.0, 0.0, 0.5),
        ),
        (
            "dpmpp_2m_sde_eta",
            "DPM++ 2M SDE",
            "karras10",
            params(Some(0.6), 0.0, 0.0, 0.0, 0.8),
        ),
        (
            "dpmpp_sde_eta",
            "DPM++ SDE",
            "karras10",
            params(Some(0.4), 0.0, 0.0, 0.0, 1.2),
        ),
        (
            "dpmpp_3m_sde_eta",
            "DPM++ 3M SDE",
            "karras10",
            params(Some(0.3), 0.0, 0.0, 0.0, 0.7),
        ),
        (
            "ddim_eta",
            "DDIM",
            "timesteps8",
            params(Some(0.5), 0.0, 0.0, 0.0, 1.0),
        ),
        ("plms", "PLMS", "timesteps8", SamplerParams::default()),
    ]
}

#[test]
fn extra_parameters_match_k_diffusion_and_a1111_timestep_samplers() {
    let t = load();
    for (case, name, list, p) in cases() {
        let sigmas = f64s(&t[&format!("{list}.sigmas")]);
        let choice = resolve_sampler_with(name, None, &p).unwrap();
        // k-diffusion cases start from x = σ₀; the timestep cases from x_vp = 1
        let x0 = if list == "timesteps8" {
            choice.init_noise.factor(sigmas[0])
        } else {
            sigmas[0]
        };
        let x = Tensor::new(&[x0], &Device::Cpu).unwrap();
        let mut noise = AltNoise(0);
        let out = choice
            .sampler
            .sample(&mut Toy, x, &sigmas, &mut noise, &mut |_, _| Ok(()))
            .unwrap();
        let ours = f64s(&out)[0];
        let want = f64s(&t[&format!("{case}.final")])[0];
        eprintln!(
            "{case}: ours {ours} want {want} |Δ| {:e}",
            (ours - want).abs()
        );
        assert!((ours - want).abs() <= 1e-9, "{case}: {ours} vs {want}");
        if let Some(d) = t.get(&format!("{case}.draws")) {
            let draws = d.to_vec1::<i64>().unwrap()[0] as usize;
            // k-diffusion draws churn noise every step; with churn off we skip the unused draws
            assert_eq!(noise.0, draws, "{case}: noise draws");
        }
    }
}
