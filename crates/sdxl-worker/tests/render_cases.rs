//! End to end: `sdxl-worker render` on the tiny fixture model reproduces the reference renders
//! of `tests/fixtures/renders/cases.txt` (k-diffusion samplers driving the diffusers UNet, torch
//! CPU noise; `scripts/fixtures/reference/make_renders.sh`). Each line there is the exact command
//! line that produced the reference PNG; only the data paths are rewritten to the fixtures.
//!
//! Bar: PSNR ≥ 60 dB and max |Δ| ≤ 2/255 in f32 (an f64 re-render of the contract differs from
//! f32 by > 80 dB, so a correct implementation has a wide margin).
//!
//! `extra_cases.txt` (same format and bar) adds A1111's timestep samplers DDIM and UniPC, rendered
//! by `scripts/fixtures/make_timestep_renders.py` (Python ports of A1111's samplers on the same
//! reference pipeline).
//!
//! `lora_tag_cases.txt` (same format and bar) renders `<lora:NAME:W>` and `<lora:NAME:TE:UNET>`
//! prompt tags (SPEC §5a) through `lora/tags.models.toml`, against references made by
//! `scripts/fixtures/make_lora_tag_renders.py` (A1111's tag parse + diffusers per-component
//! LoRA weights).

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

/// Runs one case and returns (PSNR, max |Δ|) against its reference.
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
        // No models.toml unless the case names one: the checkpoint is given as a path.
        .env_remove("SDXL_MODELS_TOML")
        .env("SDXL_CACHE_DIR", out_dir.join("cache"))
        .current_dir(out_dir)
        .output()
        .expect("run sdxl-worker");
    assert!(
        output.status.success(),
        "{name}: render failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (w1, h1, reference) = rgb(&fx.join(format!("renders/{name}.png")));
    let (w2, h2, ours) = rgb(&out_dir.join(format!("{name}.png")));
    assert_eq!((w1, h1), (w2, h2), "{name}: size");
    psnr_and_max(&reference, &ours)
}

fn cases() -> Vec<(String, Vec<String>)> {
    cases_in("cases.txt")
}

/// The cases of one list file under `tests/fixtures/renders/`.
fn cases_in(file: &str) -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(fixtures().join("renders").join(file))
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut words = split_q(l);
            let name = words.remove(0);
            (name, words)
        })
        .collect()
}

fn check(names: &[&str]) {
    check_in("cases.txt", names)
}

fn check_in(file: &str, names: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let all = cases_in(file);
    for want in names {
        let (name, words) = all
            .iter()
            .find(|(n, _)| n == want)
            .unwrap_or_else(|| panic!("case {want} not in {file}"));
        let (psnr, max) = run_case(name, words, dir.path());
        eprintln!("{name}: PSNR {psnr:.2} dB, max |Δ| {max}");
        assert!(
            psnr >= 60.0 && max <= 2,
            "{name}: PSNR {psnr:.2} dB, max |Δ| {max}"
        );
    }
}

#[test]
fn q_splitting_undoes_printf_q() {
    assert_eq!(
        split_q(r"render --prompt a\ b\,\ c --steps 6"),
        vec!["render", "--prompt", "a b, c", "--steps", "6"]
    );
}

#[test]
fn every_case_is_covered() {
    let names: Vec<String> = cases().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "euler",
            "euler_a",
            "dpmpp_2m_k",
            "heun",
            "no_negative",
            "long_blend",
            "long_concat",
            "lora_a"
        ]
    );
}

#[test]
fn renders_k_diffusion_samplers() {
    check(&["euler", "euler_a", "dpmpp_2m_k", "heun"]);
}

#[test]
fn renders_prompt_modes_and_zero_negative() {
    check(&["no_negative", "long_blend", "long_concat"]);
}

#[test]
fn renders_with_a_kohya_lora() {
    check(&["lora_a"]);
}

#[test]
fn every_extra_case_is_covered() {
    let names: Vec<String> = cases_in("extra_cases.txt")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["ddim", "unipc"]);
}

/// Prompt editing and alternation (SPEC §5a): `syntax_cases.txt`, rendered by
/// `scripts/fixtures/make_prompt_syntax_renders.py` (A1111's `reconstruct_cond_batch` with the CFG
/// denoiser's call counter; Heun builds its schedules on twice the steps).
#[test]
fn renders_prompt_schedules() {
    check_in("syntax_cases.txt", &["sched_euler", "sched_heun"]);
}

#[test]
fn renders_a1111_timestep_samplers() {
    check_in("extra_cases.txt", &["ddim", "unipc"]);
}

#[test]
fn every_lora_tag_case_is_covered() {
    let names: Vec<String> = cases_in("lora_tag_cases.txt")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["lora_tag", "lora_tag_split"]);
}

/// `<lora:tiny-lora-kohya:0.8>` (file stem) and `<lora:Tiny Kohya:1.6:0.4>` (models.toml name,
/// text encoders 1.6, UNet 0.4) render like the references; the infotext keeps the prompt as
/// written and adds A1111's `Lora hashes` with the name the tag used.
#[test]
fn renders_lora_prompt_tags() {
    check_in("lora_tag_cases.txt", &["lora_tag", "lora_tag_split"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let all = cases_in("lora_tag_cases.txt");
    let (name, words) = &all[0];
    run_case(name, words, dir.path());
    let bytes = std::fs::read(dir.path().join("lora_tag.png")).expect("png");
    let info = sdxl_pipeline::output::read_png_parameters(&bytes)
        .expect("png text")
        .expect("parameters chunk");
    assert!(
        info.starts_with(
            "a photo of an astronaut riding a horse on mars, highly detailed, <lora:tiny-lora-kohya:0.8>\n"
        ),
        "{info}"
    );
    assert!(
        info.contains(", Lora hashes: \"tiny-lora-kohya: 0b46d5849fdd\","),
        "{info}"
    );
}
