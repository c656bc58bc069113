//! End to end: `sdxl-worker render` on the tiny fixture model reproduces the reference renders of
//! `tests/fixtures/renders/seed_sampler_cases.txt` (`scripts/fixtures/make_seed_sampler_fixtures.py`:
//! A1111's `create_random_tensors` and all_seeds rules, k-diffusion samplers with the extra
//! parameters A1111 1.10 passes, A1111's DDIM η > 0 and PLMS; noise from torch CPU generators).
//! Each line is the exact command line of the reference; a case with several images
//! (`n_iter`) is compared image by image (`<name>-<i>.png`).
//!
//! Bar: the one of `render_cases.rs` — PSNR ≥ 60 dB and max |Δ| ≤ 2/255 per image.

mod render_support;

use render_support::{assert_render_matches, case_args, fixtures, read_cases, run_render, Quoting};

fn cases() -> Vec<(String, Vec<String>)> {
    read_cases("renders/seed_sampler_cases.txt", Quoting::PrintfQ)
}

/// The reference PNG names of a case: `<name>.png`, or `<name>-0.png`, `<name>-1.png`, ...
fn reference_names(name: &str) -> Vec<String> {
    let dir = fixtures().join("renders");
    if dir.join(format!("{name}.png")).exists() {
        return vec![format!("{name}.png")];
    }
    (0..)
        .map(|i| format!("{name}-{i}.png"))
        .take_while(|f| dir.join(f).exists())
        .collect()
}

/// Renders one case and checks every image against its reference.
fn check(name: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    run_render(name, case_args(&cases(), name), dir.path());
    let refs = reference_names(name);
    assert!(!refs.is_empty(), "{name}: no reference PNG");
    let mut ours: Vec<String> = std::fs::read_dir(dir.path())
        .expect("read output dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".png"))
        .collect();
    ours.sort();
    assert_eq!(ours, refs, "{name}: rendered files");
    for file in &refs {
        assert_render_matches(
            file,
            &fixtures().join("renders").join(file),
            &dir.path().join(file),
        );
    }
}

#[test]
fn every_case_is_covered() {
    let names: Vec<String> = cases().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "var_strength",
            "var_resize",
            "iter2",
            "var_iter",
            "euler_a_eta",
            "ddim_eta",
            "euler_churn",
            "heun_churn",
            "sde_eta",
            "plms"
        ]
    );
}

#[test]
fn variation_seed_strength() {
    check("var_strength");
}

#[test]
fn variation_seed_with_seed_resize() {
    check("var_resize");
}

#[test]
fn n_iter_renders_every_batch_with_seed_plus_j() {
    check("iter2");
}

#[test]
fn n_iter_with_a_variation_keeps_the_seed_and_steps_the_subseed() {
    check("var_iter");
}

#[test]
fn eta_on_euler_a() {
    check("euler_a_eta");
}

#[test]
fn eta_on_ddim() {
    check("ddim_eta");
}

#[test]
fn churn_on_euler() {
    check("euler_churn");
}

#[test]
fn churn_on_heun() {
    check("heun_churn");
}

#[test]
fn eta_and_s_noise_on_dpmpp_2m_sde() {
    check("sde_eta");
}

#[test]
fn plms() {
    check("plms");
}
