//! Schedules vs k-diffusion / A1111 (fixtures: scripts/fixtures/make_sampling_fixtures.py, torch f32).

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use sdxl_pipeline::sampling::schedule::timesteps;
use sdxl_pipeline::sampling::{ModelSchedule, ScheduleKind};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/sampling/schedules.safetensors"
);

fn fixtures() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(FIXTURE, &Device::Cpu).unwrap()
}

fn vals(t: &HashMap<String, Tensor>, key: &str) -> Vec<f64> {
    t[key]
        .to_dtype(candle_core::DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

fn assert_rel(ours: &[f64], theirs: &[f64], tol: f64, what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: length");
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        let err = (a - b).abs() / b.abs().max(1e-12);
        assert!(
            err <= tol || (a == b),
            "{what}[{i}]: ours {a} ref {b} rel {err:e}"
        );
    }
}

#[test]
fn sigma_table_matches_diffusers_alphas_cumprod() {
    let t = fixtures();
    let s = ModelSchedule::sdxl();
    assert_rel(s.sigmas(), &vals(&t, "sigmas_table"), 1e-6, "sigma table");
    let acp: Vec<f64> = s.alphas_cumprod().iter().map(|&a| f64::from(a)).collect();
    assert_rel(&acp, &vals(&t, "alphas_cumprod"), 1e-6, "alphas_cumprod");
    // research §8.1 closed form (f64 ᾱ; ours is f32 ᾱ like diffusers, ~1e-6 relative apart)
    assert!((s.sigma_min() - 0.029_167_158_2).abs() / 0.0291 < 2e-5);
    assert!((s.sigma_max() - 14.614_641_229_3).abs() / 14.6 < 1e-6);
}

#[test]
fn sigma_lists_match_k_diffusion_and_a1111() {
    let t = fixtures();
    let s = ModelSchedule::sdxl();
    for n in [4usize, 8, 25] {
        for (name, kind, discard) in [
            ("uniform", ScheduleKind::Uniform, false),
            ("karras", ScheduleKind::Karras, false),
            ("exponential", ScheduleKind::Exponential, false),
            ("sgm_uniform", ScheduleKind::SgmUniform, false),
            ("karras_discard", ScheduleKind::Karras, true),
            ("exponential_discard", ScheduleKind::Exponential, true),
        ] {
            let ours = s.sigma_list(kind, n, discard).unwrap();
            assert_eq!(*ours.last().unwrap(), 0.0);
            assert_rel(
                &ours,
                &vals(&t, &format!("{name}.n{n}")),
                1e-6,
                &format!("{name} n={n}"),
            );
        }
    }
}

/// research/sdxl-formats.md §8.1 (f64 ᾱ; ours uses f32 ᾱ like diffusers: ≤ 5e-6 relative).
#[test]
fn research_closed_form_lists() {
    let s = ModelSchedule::sdxl();
    let uniform10 = [
        14.614641, 7.839883, 4.609174, 2.918307, 1.950161, 1.344928, 0.932358, 0.624977, 0.368658,
        0.029167, 0.0,
    ];
    let karras10 = [
        14.614641, 9.102928, 5.478392, 3.168603, 1.749417, 0.914072, 0.446918, 0.201398, 0.081910,
        0.029167, 0.0,
    ];
    let exp10 = [
        14.614641, 7.324870, 3.671231, 1.840024, 0.922222, 0.462218, 0.231664, 0.116110, 0.058195,
        0.029167, 0.0,
    ];
    for (kind, want) in [
        (ScheduleKind::Uniform, uniform10),
        (ScheduleKind::Karras, karras10),
        (ScheduleKind::Exponential, exp10),
    ] {
        let ours = s.sigma_list(kind, 10, false).unwrap();
        for (a, b) in ours.iter().zip(want) {
            // the research lists are f64 closed-form values printed to 6 decimals
            assert!((a - b).abs() <= 5e-6 * b.max(1.0), "{kind:?}: {a} vs {b}");
        }
    }
}

#[test]
fn sigma_to_t_and_back_match_discrete_schedule() {
    let t = fixtures();
    let s = ModelSchedule::sdxl();
    // f32 interpolation in torch near t = 999 has ~1e-4 absolute resolution.
    for n in [4usize, 8, 25] {
        let sig = vals(&t, &format!("karras.n{n}"));
        let want = vals(&t, &format!("karras.n{n}.t"));
        for (sv, w) in sig.iter().zip(&want) {
            let ours = s.sigma_to_t(*sv);
            assert!((ours - w).abs() < 2e-4, "t({sv}) = {ours}, ref {w}");
        }
    }
    for (sv, w) in vals(&t, "probe.sigma").iter().zip(vals(&t, "probe.t")) {
        let ours = s.sigma_to_t(*sv);
        assert!((ours - w).abs() < 2e-4, "t({sv}) = {ours}, ref {w}");
    }
    for (tv, w) in vals(&t, "probe_t.t").iter().zip(vals(&t, "probe_t.sigma")) {
        let ours = s.t_to_sigma(*tv);
        assert!((ours - w).abs() / w < 1e-6, "sigma({tv}) = {ours}, ref {w}");
    }
    // research §8.1: Karras n=20 fractional timesteps
    let k20 = s.sigma_list(ScheduleKind::Karras, 20, false).unwrap();
    let want = [999.000, 961.733, 921.042, 876.314, 826.790, 771.552];
    for (sv, w) in k20.iter().zip(want) {
        assert!((s.sigma_to_t(*sv) - w).abs() < 1e-3);
    }
}

#[test]
fn a1111_timesteps_and_their_sigmas() {
    assert_eq!(timesteps(4, 1000).unwrap(), vec![1, 251, 501, 751]);
    // 1000 // 6 = 166 gives 7 timesteps, as A1111's range() does
    assert_eq!(
        timesteps(6, 1000).unwrap(),
        vec![1, 167, 333, 499, 665, 831, 997]
    );
    assert!(timesteps(0, 1000).is_err());
    let s = ModelSchedule::sdxl();
    let sig = s.sigma_list(ScheduleKind::Timesteps, 4, false).unwrap();
    assert_eq!(sig.len(), 4);
    assert_eq!(sig[0], s.sigmas()[751]);
    assert_eq!(sig[3], s.sigmas()[1]);
}
