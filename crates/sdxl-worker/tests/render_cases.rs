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

mod render_support;

use render_support::{assert_render_matches, case_args, fixtures, read_cases, run_render, Quoting};

fn cases() -> Vec<(String, Vec<String>)> {
    cases_in("cases.txt")
}

/// The cases of one list file under `tests/fixtures/renders/`.
fn cases_in(file: &str) -> Vec<(String, Vec<String>)> {
    read_cases(&format!("renders/{file}"), Quoting::PrintfQ)
}

fn check(names: &[&str]) {
    check_in("cases.txt", names)
}

fn check_in(file: &str, names: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let all = cases_in(file);
    for name in names {
        run_render(name, case_args(&all, name), dir.path());
        assert_render_matches(
            name,
            &fixtures().join(format!("renders/{name}.png")),
            &dir.path().join(format!("{name}.png")),
        );
    }
}

#[test]
fn q_splitting_undoes_printf_q() {
    assert_eq!(
        render_support::split_printf_q(r"render --prompt a\ b\,\ c --steps 6"),
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
    run_render(name, words, dir.path());
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
