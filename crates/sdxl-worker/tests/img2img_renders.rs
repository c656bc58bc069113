//! End to end (SPEC §13): `sdxl-worker render` img2img and hires-fix runs on the tiny fixture model
//! reproduce `tests/fixtures/img2img/*.png`, made by `scripts/fixtures/make_img2img_fixtures.py`
//! (a Python port of A1111 1.10's img2img / hires code driving the diffusers UNet and VAE through
//! the k-diffusion CFG denoiser of `reference/kdiffusion/refpipe.py`). Each line of
//! `tests/fixtures/img2img/cases.txt` is the command line of one case (shell-quoted).
//!
//! Bar: the render parity bar of `render_cases.rs` — PSNR ≥ 60 dB and max |Δ| ≤ 2/255 in f32.

mod render_support;

use render_support::{assert_render_matches, case_args, fixtures, read_cases, run_render, Quoting};

fn cases() -> Vec<(String, Vec<String>)> {
    read_cases("img2img/cases.txt", Quoting::Shlex)
}

fn check(names: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let all = cases();
    for name in names {
        run_render(name, case_args(&all, name), dir.path());
        assert_render_matches(
            name,
            &fixtures().join(format!("img2img/{name}.png")),
            &dir.path().join(format!("{name}.png")),
        );
    }
}

#[test]
fn shell_splitting_undoes_shlex_quote() {
    assert_eq!(
        render_support::split_shlex("render --prompt 'a b, c' --x 'it'\"'\"'s' --steps 6"),
        vec!["render", "--prompt", "a b, c", "--x", "it's", "--steps", "6"]
    );
}

#[test]
fn every_case_is_covered() {
    let names: Vec<String> = cases().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "i2i_euler_075",
            "i2i_euler_a_05",
            "i2i_dpmpp_2m_k_03",
            "i2i_crop_06",
            "i2i_fill_06",
            "i2i_latent_06",
            "i2i_noise_mult",
            "i2i_zero",
            "hr_latent",
            "hr_bicubic_aa",
            "hr_nearest_exact",
            "hr_lanczos",
            "hr_resize_xy",
        ]
    );
}

#[test]
fn img2img_strengths_and_samplers() {
    check(&[
        "i2i_euler_075",
        "i2i_euler_a_05",
        "i2i_dpmpp_2m_k_03",
        "i2i_noise_mult",
    ]);
}

#[test]
fn img2img_resize_modes_and_zero_strength() {
    check(&["i2i_crop_06", "i2i_fill_06", "i2i_latent_06", "i2i_zero"]);
}

#[test]
fn hires_latent_modes() {
    check(&["hr_latent", "hr_bicubic_aa", "hr_nearest_exact"]);
}

#[test]
fn hires_pixel_upscaler_and_resize_xy() {
    check(&["hr_lanczos", "hr_resize_xy"]);
}
