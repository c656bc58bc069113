//! Benchmarks live in `benches/benches/` and `src/bin/`; this library holds what the bench
//! binaries share: the synthetic full-size SDXL checkpoint writer (real key names and shapes,
//! pseudo-random fp16 data) and a synthetic kohya LoRA writer.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

/// Key names and shapes of the real SDXL base single file.
const KEYS: &str = include_str!("../../tests/fixtures/checkpoint/sdxl-keys.txt");
/// File name of the synthetic full-size checkpoint inside `$SDXL_BENCH_DIR`.
pub const FULLSIZE_FILE_NAME: &str = "sdxl-fullsize-synthetic-f16.safetensors";

/// A bench failure.
pub type Failure = Box<dyn std::error::Error>;

/// (key, dtype, shape) of every tensor of the real SDXL single file.
pub fn layout() -> Vec<(String, String, Vec<usize>)> {
    KEYS.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            match f.as_slice() {
                ["S", key, dtype, shape @ ..] => Some((
                    key.to_string(),
                    dtype.to_string(),
                    shape
                        .first()
                        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
                        .unwrap_or_default(),
                )),
                _ => None,
            }
        })
        .collect()
}

/// Writes the 6.9 GB synthetic fp16 SDXL single file to `path` (via `path.partial`).
pub fn write_fullsize_checkpoint(path: &Path) -> Result<(), Failure> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tensors = layout();
    let mut header = String::from("{");
    let mut offset = 0u64;
    for (i, (key, dtype, shape)) in tensors.iter().enumerate() {
        let size = if dtype == "I64" { 8 } else { 2 };
        let bytes = shape.iter().product::<usize>() as u64 * size;
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        if i > 0 {
            header.push(',');
        }
        header.push_str(&format!(
            "\"{key}\":{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{offset},{}]}}",
            dims.join(","),
            offset + bytes
        ));
        offset += bytes;
    }
    header.push('}');
    while (8 + header.len()) % 8 != 0 {
        header.push(' ');
    }
    // 1 MiB of pseudo-random fp16 values in ±0.02 (xorshift), cycled through the data section.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let block: Vec<u8> = (0..512 * 1024)
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let x = ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.04;
            half::f16::from_f32(x).to_le_bytes()
        })
        .collect();
    let tmp = path.with_extension("partial");
    let mut w = BufWriter::with_capacity(8 << 20, File::create(&tmp)?);
    w.write_all(&(header.len() as u64).to_le_bytes())?;
    w.write_all(header.as_bytes())?;
    let mut left = offset as usize;
    while left > 0 {
        let n = left.min(block.len());
        w.write_all(&block[..n])?;
        left -= n;
    }
    w.flush()?;
    drop(w);
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The attention linears (`to_q`, `to_k`, `to_v`, `to_out.0`) of the UNet of the single-file
/// checkpoint at `path`: (kohya module name, out features, in features).
pub fn lora_targets(path: &Path) -> Result<Vec<(String, usize, usize)>, Failure> {
    // SAFETY: the file is not modified while mapped (bench-owned files).
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(path)? };
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        let Some(rest) = name.strip_prefix("model.diffusion_model.") else {
            continue;
        };
        let is_attn = [
            ".to_q.weight",
            ".to_k.weight",
            ".to_v.weight",
            ".to_out.0.weight",
        ]
        .iter()
        .any(|s| rest.ends_with(s));
        if let (true, [o, i]) = (is_attn, view.shape()) {
            let module = rest.trim_end_matches(".weight").replace('.', "_");
            out.push((format!("lora_unet_{module}"), *o, *i));
        }
    }
    out.sort();
    Ok(out)
}

/// Writes a kohya LoRA (`lora_down`, `lora_up`, `alpha` = rank/2, fp16, pseudo-random ±0.02
/// from `seed`) of rank `rank` for `targets` to `path`.
pub fn write_kohya_lora(
    path: &Path,
    targets: &[(String, usize, usize)],
    rank: usize,
    seed: u64,
) -> Result<(), Failure> {
    use candle_core::{DType, Device, Tensor};
    let mut state = seed | 1;
    let mut rand = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.04
            })
            .collect()
    };
    let mut tensors = std::collections::HashMap::new();
    for (m, o, i) in targets {
        let down = Tensor::from_vec(rand(rank * i), (rank, *i), &Device::Cpu)?;
        let up = Tensor::from_vec(rand(o * rank), (*o, rank), &Device::Cpu)?;
        let alpha = Tensor::new(rank as f32 / 2.0, &Device::Cpu)?;
        tensors.insert(format!("{m}.lora_down.weight"), down.to_dtype(DType::F16)?);
        tensors.insert(format!("{m}.lora_up.weight"), up.to_dtype(DType::F16)?);
        tensors.insert(format!("{m}.alpha"), alpha.to_dtype(DType::F16)?);
    }
    candle_core::safetensors::save(&tensors, path)?;
    Ok(())
}
