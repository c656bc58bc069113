//! TorchGenerator vs torch 2.15 `torch.randn(generator=torch.Generator("cpu").manual_seed(seed))`
//! (fixtures: scripts/fixtures/make_sampling_fixtures.py). Bit-exact comparisons (==).

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use sdxl_pipeline::noise::{TorchGenerator, TorchNoiseSource};
use sdxl_pipeline::sampling::NoiseSource;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/sampling/noise.safetensors"
);
const SEEDS: [u64; 6] = [0, 1, 42, 2024, (1 << 32) + 5, (1 << 53) - 1];

fn fixtures() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(FIXTURE, &Device::Cpu).unwrap()
}

fn f32s(t: &HashMap<String, Tensor>, key: &str) -> Vec<f32> {
    t[key].flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn assert_bits_eq(ours: &[f32], theirs: &[f32], what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: length");
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert_eq!(a.to_bits(), b.to_bits(), "{what}[{i}]: ours {a} torch {b}");
    }
}

#[test]
fn small_and_blocked_sizes_match_torch_bit_for_bit() {
    let t = fixtures();
    for seed in SEEDS {
        for n in [1usize, 7, 15, 16, 17, 33] {
            let ours = TorchGenerator::new(seed).randn(&[n]);
            assert_bits_eq(
                &ours,
                &f32s(&t, &format!("seed{seed}.n{n}")),
                &format!("seed {seed} n {n}"),
            );
        }
    }
}

#[test]
fn full_size_sdxl_latent_matches_torch() {
    let t = fixtures();
    for seed in SEEDS {
        let ours = TorchGenerator::new(seed).randn(&[1, 4, 128, 128]);
        let idx = t[&format!("big.seed{seed}.idx")].to_vec1::<i64>().unwrap();
        let vals = f32s(&t, &format!("big.seed{seed}.vals"));
        let picked: Vec<f32> = idx.iter().map(|&i| ours[i as usize]).collect();
        assert_bits_eq(&picked, &vals, &format!("seed {seed} sampled"));
        let max = ours.iter().copied().fold(f32::MIN, f32::max);
        let min = ours.iter().copied().fold(f32::MAX, f32::min);
        assert_eq!(
            max.to_bits(),
            f32s(&t, &format!("big.seed{seed}.max"))[0].to_bits()
        );
        assert_eq!(
            min.to_bits(),
            f32s(&t, &format!("big.seed{seed}.min"))[0].to_bits()
        );
        // f64 sums of identical values in the same order are identical; torch's sum order may differ,
        // so allow only summation rounding.
        let sum: f64 = ours.iter().map(|&v| f64::from(v)).sum();
        let abs_sum: f64 = ours.iter().map(|&v| f64::from(v).abs()).sum();
        let want_sum = t[&format!("big.seed{seed}.sum")]
            .to_scalar::<f64>()
            .unwrap();
        let want_abs = t[&format!("big.seed{seed}.abs_sum")]
            .to_scalar::<f64>()
            .unwrap();
        assert!(
            (sum - want_sum).abs() < 1e-9,
            "seed {seed}: sum {sum} vs {want_sum}"
        );
        assert!(
            (abs_sum - want_abs).abs() < 1e-8,
            "seed {seed}: |sum| {abs_sum} vs {want_abs}"
        );
    }
}

#[test]
fn consecutive_draws_continue_the_stream_like_torch() {
    let t = fixtures();
    let mut g = TorchGenerator::new(42);
    let shapes: [&[usize]; 7] = [&[1, 4, 8, 8], &[3], &[1], &[1], &[17], &[5], &[1, 4, 8, 8]];
    for (k, shape) in shapes.iter().enumerate() {
        let ours = g.randn(shape);
        assert_bits_eq(&ours, &f32s(&t, &format!("seq.{k}")), &format!("draw {k}"));
    }
}

#[test]
fn tensor_helper_and_noise_source_return_the_same_stream() {
    let t = fixtures();
    let mut src = TorchNoiseSource::new(42, &[1, 4, 8, 8], &Device::Cpu);
    let first = src.next_noise().unwrap();
    assert_eq!(first.dims(), &[1, 4, 8, 8]);
    let v = first.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_bits_eq(&v, &f32s(&t, "seq.0"), "noise source draw 0");
    let direct = TorchGenerator::new(42)
        .randn_tensor(&[1, 4, 8, 8], &Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_bits_eq(&direct, &v, "randn_tensor");
}
