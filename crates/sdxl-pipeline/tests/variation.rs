//! A1111's variation seeds and seed resize (`create_random_tensors`) against a Python port run
//! with torch's CPU generator (`scripts/fixtures/make_seed_sampler_fixtures.py`,
//! `tests/fixtures/seeds/variation.safetensors`). Cases without a slerp must match bit for bit;
//! the slerp (torch computes it in f32, we in f64) within 4e-6.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use sdxl_pipeline::noise::VariationSeed;

fn load() -> HashMap<String, Tensor> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/seeds/variation.safetensors"
    );
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

const CASES: &[&str] = &[
    "plain",
    "strength",
    "strength_full",
    "same_seed_lerp",
    "resize_larger",
    "resize_smaller",
    "resize_mixed",
    "resize_odd",
    "resize_tiny",
    "big_seed",
];

#[test]
fn noise_matches_a1111_create_random_tensors() {
    let t = load();
    assert_eq!(t.len(), 2 * CASES.len(), "every fixture case is tested");
    for case in CASES {
        let meta = t[&format!("{case}.meta")].to_vec1::<i64>().unwrap();
        let want = t[&format!("{case}.noise")]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let v = VariationSeed {
            subseed: meta[1] as u64,
            subseed_strength: meta[2] as f64 / 1e6,
            seed_resize_from_w: meta[3] as u32,
            seed_resize_from_h: meta[4] as u32,
        };
        let ours = v.noise(
            meta[0] as u64,
            meta[1] as u64,
            [4, meta[5] as usize, meta[6] as usize],
        );
        assert_eq!(ours.len(), want.len(), "{case}: size");
        let max = ours
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let tol = if v.varies() { 4e-6 } else { 0.0 };
        eprintln!("{case}: max |Δ| {max:e}");
        assert!(max <= tol, "{case}: max |Δ| {max:e} > {tol:e}");
    }
}

#[test]
fn infotext_pairs_are_a1111_s() {
    let v = VariationSeed {
        subseed: 5,
        subseed_strength: 0.35,
        seed_resize_from_w: 640,
        seed_resize_from_h: 512,
    };
    let got: Vec<String> = v
        .infotext(6)
        .into_iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    assert_eq!(
        got,
        [
            "Variation seed: 6",
            "Variation seed strength: 0.35",
            "Seed resize from: 640x512"
        ]
    );
    assert!(VariationSeed::default().infotext(0).is_empty());
}
