//! Noise generation for an SDXL latent and per-step sampler overhead (no UNet: the denoiser is a
//! trivial tensor op, so the numbers are the sampler's own tensor arithmetic).

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use sdxl_pipeline::noise::{TorchGenerator, TorchNoiseSource};
use sdxl_pipeline::sampling::{
    resolve_sampler, sigmas_for, Denoiser, ModelSchedule, NoNoise, NoiseSource,
};
use sdxl_pipeline::Result;

const SHAPE: [usize; 4] = [1, 4, 128, 128];

struct Shrink;
impl Denoiser for Shrink {
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        Ok(x.affine(1.0 / (1.0 + sigma * sigma), 0.0)?)
    }
}

fn noise(c: &mut Criterion) {
    c.bench_function("randn 1x4x128x128 (torch-exact)", |b| {
        b.iter(|| TorchGenerator::new(42).randn(&SHAPE))
    });
}

fn sampler_steps(c: &mut Criterion) {
    let schedule = ModelSchedule::sdxl();
    let x0 = TorchGenerator::new(42)
        .randn_tensor(&SHAPE, &Device::Cpu)
        .unwrap();
    for name in ["Euler", "Euler a", "DPM++ 2M Karras", "DPM++ 2M SDE", "LMS"] {
        let choice = resolve_sampler(name, None).unwrap();
        let sigmas = sigmas_for(&choice, &schedule, 25).unwrap();
        c.bench_function(&format!("{name}: 25 steps, 1x4x128x128, no UNet"), |b| {
            b.iter(|| {
                let mut ns: Box<dyn NoiseSource> = if choice.uses_noise {
                    Box::new(TorchNoiseSource::new(1, &SHAPE, &Device::Cpu))
                } else {
                    Box::new(NoNoise)
                };
                choice
                    .sampler
                    .sample(
                        &mut Shrink,
                        x0.clone(),
                        &sigmas,
                        ns.as_mut(),
                        &mut |_, _| Ok(()),
                    )
                    .unwrap()
            })
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = noise, sampler_steps
}
criterion_main!(benches);
