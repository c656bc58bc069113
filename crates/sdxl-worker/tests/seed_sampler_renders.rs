//! End to end: `sdxl-worker render` on the tiny fixture model reproduces the reference renders of
//! `tests/fixtures/renders/seed_sampler_cases.txt` (`scripts/fixtures/make_seed_sampler_fixtures.py`:
//! A1111's `create_random_tensors` and all_seeds rules, k-diffusion samplers with the extra
//! parameters A1111 1.10 passes, A1111's DDIM η > 0 and PLMS; noise from torch CPU generators).
//! Each line is the exact command line of the reference; a case with several images
//! (`n_iter`) is compared image by image (`<name>-<i>.png`).
//!
//! Bar: the one of `render_cases.rs` — PSNR ≥ 60 dB and max |Δ| ≤ 2/255 per image.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// Splits a line written by bash `printf %q` (backslash escapes, no quotes) into words.
fn split_q(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars();
    let mut in_word = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                    in_word = true;
                }
            }
            ' ' if in_word => {
                words.push(std::mem::take(&mut cur));
                in_word = false;
            }
            ' ' => {}
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
    let file = fixtures().join("renders/seed_sampler_cases.txt");
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file:?}: {e}"));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut words = split_q(l);
            let name = words.remove(0);
            (name, words)
        })
        .collect()
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
fn check(want: &str) {
    let all = cases();
    let (name, words) = all
        .iter()
        .find(|(n, _)| n == want)
        .unwrap_or_else(|| panic!("no case {want}"));
    let dir = tempfile::tempdir().expect("tempdir");
    let fx = fixtures();
    let args: Vec<String> = words
        .iter()
        .map(|w| {
            if let Some(rest) = w.strip_prefix("data/renders/") {
                dir.path().join(rest).to_string_lossy().into_owned()
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
        .current_dir(dir.path())
        .output()
        .expect("run sdxl-worker");
    assert!(
        output.status.success(),
        "{name}: render failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let refs = reference_names(name);
    assert!(!refs.is_empty(), "{name}: no reference PNG");
    let mut ours: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".png"))
        .collect();
    ours.sort();
    assert_eq!(ours, refs, "{name}: rendered files");
    for file in &refs {
        let (w1, h1, reference) = rgb(&fx.join("renders").join(file));
        let (w2, h2, mine) = rgb(&dir.path().join(file));
        assert_eq!((w1, h1), (w2, h2), "{file}: size");
        let (psnr, max) = psnr_and_max(&reference, &mine);
        eprintln!("{file}: PSNR {psnr:.2} dB, max |Δ| {max}");
        assert!(
            psnr >= 60.0 && max <= 2,
            "{file}: PSNR {psnr:.2} dB, max |Δ| {max}"
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
