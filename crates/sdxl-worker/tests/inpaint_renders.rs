//! End to end (SPEC §13 "Inpainting"): `sdxl-worker render --init-image … --mask …` runs on the tiny
//! fixture model reproduce `tests/fixtures/inpaint/*.png`, made by
//! `scripts/fixtures/make_inpaint_renders.py` (a Python port of A1111 1.10's inpainting — mask
//! invert/blur with OpenCV, "only masked" crop, `masking.fill`, the rounded bicubic latent mask,
//! latent noise / nothing, the CFG denoiser's blend, the overlay — with real Pillow 9.5 and cv2,
//! on the sampling code of `make_img2img_renders.py`). Each line of
//! `tests/fixtures/inpaint/cases.txt` is the command line of one case (shell-quoted).
//!
//! Bar: the render parity bar of `render_cases.rs` — PSNR ≥ 60 dB and max |Δ| ≤ 2/255.

mod render_support;

use render_support::{assert_render_matches, case_args, fixtures, read_cases, run_render, Quoting};

fn cases() -> Vec<(String, Vec<String>)> {
    read_cases("inpaint/cases.txt", Quoting::Shlex)
}

fn check(names: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let all = cases();
    for name in names {
        run_render(name, case_args(&all, name), dir.path());
        assert_render_matches(
            name,
            &fixtures().join(format!("inpaint/{name}.png")),
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
            "ip_fill",
            "ip_original",
            "ip_latent_noise",
            "ip_latent_nothing",
            "ip_lms",
            "ip_invert",
            "ip_blur_xy",
            "ip_crop_mode",
            "ip_full_res",
            "ip_full_res_pad8",
            "ip_blank_full_res",
        ]
    );
}

#[test]
fn inpaint_fill_modes() {
    check(&[
        "ip_fill",
        "ip_original",
        "ip_latent_noise",
        "ip_latent_nothing",
    ]);
}

#[test]
fn inpaint_mask_invert_blur_and_resize_mode() {
    check(&["ip_invert", "ip_blur_xy", "ip_crop_mode", "ip_lms"]);
}

#[test]
fn inpaint_only_masked() {
    check(&["ip_full_res", "ip_full_res_pad8", "ip_blank_full_res"]);
}
