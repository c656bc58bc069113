//! End to end (SPEC §13 "Inpainting"): `sdxl-worker render --init-image … --mask …` runs on the tiny
//! fixture model reproduce `tests/fixtures/inpaint/*.png`, made by
//! `scripts/fixtures/make_inpaint_renders.py` (a Python port of A1111 1.10's inpainting — mask
//! invert/blur with OpenCV, "only masked" crop, `masking.fill`, the rounded bicubic latent mask,
//! latent noise / nothing, the CFG denoiser's blend, the overlay — with real Pillow 9.5 and cv2,
//! on the sampling code of `make_img2img_renders.py`). Each line of
//! `tests/fixtures/inpaint/cases.txt` is the command line of one case (shell-quoted).
//!
//! Bar: the render parity bar of `render_cases.rs` — PSNR ≥ 60 dB and max |Δ| ≤ 2/255.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// Splits a line quoted by Python's `shlex.quote` (single quotes, `'"'"'` for a quote).
fn split_shell(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let (mut in_word, mut quoted) = (false, false);
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' if !quoted => {
                quoted = true;
                in_word = true;
            }
            '\'' => quoted = false,
            '"' if !quoted => {
                for n in chars.by_ref() {
                    if n == '"' {
                        break;
                    }
                    cur.push(n);
                }
                in_word = true;
            }
            ' ' if !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

fn rgb(path: &Path) -> (u32, u32, Vec<u8>) {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    (img.width(), img.height(), img.into_raw())
}

fn psnr_and_max(a: &[u8], b: &[u8]) -> (f64, u8) {
    let mut se = 0f64;
    let mut max = 0u8;
    for (x, y) in a.iter().zip(b) {
        let d = x.abs_diff(*y);
        max = max.max(d);
        se += f64::from(d) * f64::from(d);
    }
    let mse = se / a.len() as f64;
    let psnr = if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    };
    (psnr, max)
}

fn cases() -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(fixtures().join("inpaint/cases.txt")).expect("cases.txt");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut words = split_shell(l);
            let name = words.remove(0);
            (name, words)
        })
        .collect()
}

/// Runs one case; returns (PSNR, max |Δ|) against its reference.
fn run_case(name: &str, words: &[String], out_dir: &Path) -> (f64, u8) {
    let fx = fixtures();
    let args: Vec<String> = words
        .iter()
        .map(|w| {
            if let Some(rest) = w.strip_prefix("data/renders/") {
                out_dir.join(rest).to_string_lossy().into_owned()
            } else if let Some(rest) = w.strip_prefix("data/") {
                fx.join(rest).to_string_lossy().into_owned()
            } else {
                w.clone()
            }
        })
        .collect();
    let output = Command::new(env!("CARGO_BIN_EXE_sdxl-worker"))
        .args(&args)
        .env_remove("SDXL_MODELS_TOML")
        .current_dir(out_dir)
        .output()
        .expect("run sdxl-worker");
    assert!(
        output.status.success(),
        "{name}: render failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (w1, h1, reference) = rgb(&fx.join(format!("inpaint/{name}.png")));
    let (w2, h2, ours) = rgb(&out_dir.join(format!("{name}.png")));
    assert_eq!((w1, h1), (w2, h2), "{name}: size");
    psnr_and_max(&reference, &ours)
}

fn check(names: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let all = cases();
    for want in names {
        let (name, words) = all
            .iter()
            .find(|(n, _)| n == want)
            .unwrap_or_else(|| panic!("case {want} not in cases.txt"));
        let (psnr, max) = run_case(name, words, dir.path());
        eprintln!("{name}: PSNR {psnr:.2} dB, max |Δ| {max}");
        assert!(
            psnr >= 60.0 && max <= 2,
            "{name}: PSNR {psnr:.2} dB, max |Δ| {max}"
        );
    }
}

#[test]
fn shell_splitting_undoes_shlex_quote() {
    assert_eq!(
        split_shell("render --prompt 'a b, c' --x 'it'\"'\"'s' --steps 6"),
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
