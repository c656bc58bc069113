//! Shared harness of the render parity tests: case lists (one command line per case, written by
//! the fixture generators), a `sdxl-worker render` run with the fixture paths rewritten, and the
//! render parity bar (PSNR ≥ 60 dB and max |Δ| ≤ 2/255 against the reference PNG).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Lowest PSNR a render may have against its reference.
pub const MIN_PSNR_DB: f64 = 60.0;
/// Largest per-channel difference a render may have against its reference.
pub const MAX_ABS_DELTA: u8 = 2;

/// `tests/fixtures` of the workspace.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// How a case file quotes its words.
#[derive(Debug, Clone, Copy)]
pub enum Quoting {
    /// bash `printf %q` (backslash escapes, no quotes).
    PrintfQ,
    /// Python `shlex.quote` (single quotes, `'"'"'` for a quote).
    Shlex,
}

/// Splits a line written by bash `printf %q` into words.
pub fn split_printf_q(line: &str) -> Vec<String> {
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

/// Splits a line quoted by Python's `shlex.quote` into words.
pub fn split_shlex(line: &str) -> Vec<String> {
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

/// The `(name, render arguments)` of every case in `tests/fixtures/<file>`.
pub fn read_cases(file: &str, quoting: Quoting) -> Vec<(String, Vec<String>)> {
    let path = fixtures().join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut words = match quoting {
                Quoting::PrintfQ => split_printf_q(l),
                Quoting::Shlex => split_shlex(l),
            };
            let name = words.remove(0);
            (name, words)
        })
        .collect()
}

/// The arguments of case `name`.
pub fn case_args<'a>(cases: &'a [(String, Vec<String>)], name: &str) -> &'a [String] {
    &cases
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no case {name}"))
        .1
}

/// Runs `sdxl-worker` with a case's arguments in `out_dir`: `data/renders/…` outputs land in
/// `out_dir`, other `data/…` inputs come from the fixtures. Panics with stderr on failure.
pub fn run_render(name: &str, words: &[String], out_dir: &Path) {
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
}

/// Width, height and RGB bytes of a PNG.
pub fn rgb(path: &Path) -> (u32, u32, Vec<u8>) {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    (img.width(), img.height(), img.into_raw())
}

/// PSNR (dB, ∞ when equal) and the largest per-byte difference.
pub fn psnr_and_max(a: &[u8], b: &[u8]) -> (f64, u8) {
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

/// Compares two PNGs (same size, then the bar); returns (PSNR, max |Δ|).
pub fn assert_render_matches(label: &str, reference: &Path, ours: &Path) -> (f64, u8) {
    let (w1, h1, want) = rgb(reference);
    let (w2, h2, got) = rgb(ours);
    assert_eq!((w1, h1), (w2, h2), "{label}: size");
    let (psnr, max) = psnr_and_max(&want, &got);
    eprintln!("{label}: PSNR {psnr:.2} dB, max |Δ| {max}");
    assert!(
        psnr >= MIN_PSNR_DB && max <= MAX_ABS_DELTA,
        "{label}: PSNR {psnr:.2} dB, max |Δ| {max}"
    );
    (psnr, max)
}
