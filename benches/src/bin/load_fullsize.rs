//! Full-size load benchmark (SPEC §11): loads a 6.9 GB fp16 SDXL single file (synthetic: the real
//! key names and shapes of `tests/fixtures/checkpoint/sdxl-keys.txt`, pseudo-random data) as f16
//! on CPU and compares with one plain sequential read of the file: wall time and peak RSS (VmHWM)
//! against the file size. Targets: load ≤ 1.5× read time, peak RSS ≤ 1.2× file size.
//!
//! `cargo run --release -p sdxl-benches --bin load_fullsize` (add `--workspace`-wide features as
//! usual). The file is written once to `$SDXL_BENCH_DIR` (default `<temp dir>/sdxl-bench`), outside the repo.
//! Each measurement runs in a child process so that VmHWM is its own.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use sdxl_pipeline::checkpoint::{Checkpoint, Component, ModelSource};

use sdxl_benches::{write_fullsize_checkpoint, FULLSIZE_FILE_NAME as FILE_NAME};

type Failure = Box<dyn std::error::Error>;

fn bench_file() -> PathBuf {
    let dir = std::env::var_os("SDXL_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("sdxl-bench"));
    dir.join(FILE_NAME)
}

fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
            })
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Child: one plain sequential read of the file in 16 MiB chunks.
fn run_read(path: &Path) -> Result<(), Failure> {
    let t = Instant::now();
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 16 << 20];
    let mut sum = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sum = sum.wrapping_add(buf[n - 1] as u64);
    }
    println!("{} {} {sum}", t.elapsed().as_secs_f64(), peak_rss_bytes());
    Ok(())
}

/// Child: one read of the whole file into a freshly allocated buffer of the file's size (the
/// floor for any load that materialises the weights in new memory: it pays the page faults and
/// zeroing of ~7 GB of fresh anonymous memory, which a reused-buffer read does not).
fn run_read_alloc(path: &Path) -> Result<(), Failure> {
    let t = Instant::now();
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; std::fs::metadata(path)?.len() as usize];
    f.read_exact(&mut buf)?;
    let sum = buf.last().copied().unwrap_or(0);
    println!("{} {} {sum}", t.elapsed().as_secs_f64(), peak_rss_bytes());
    Ok(())
}

/// Child: load all four components as f16 on CPU (UNet and VAE as models, the text encoders'
/// parameters as tensors kept alive).
fn run_load(path: &Path) -> Result<(), Failure> {
    let t = Instant::now();
    let dev = Device::Cpu;
    let ckpt = Checkpoint::open(&ModelSource::SingleFile {
        path: path.to_path_buf(),
        config_dir: None,
    })?;
    let unet = ckpt.load_unet(DType::F16, &dev)?;
    let vae = ckpt.load_vae(DType::F16, &dev)?;
    let mut text: Vec<Tensor> = Vec::new();
    for c in [Component::TextEncoder, Component::TextEncoder2] {
        let vb = ckpt.var_builder(c, DType::F16, &dev)?;
        for (name, shape) in ckpt.parameter_names(c) {
            text.push(vb.get(shape, &name)?);
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!("{secs} {} {}", peak_rss_bytes(), text.len());
    drop((unet, vae, text));
    Ok(())
}

fn child(mode: &str, path: &Path) -> Result<(f64, u64), Failure> {
    let out = Command::new(std::env::current_exe()?)
        .arg(mode)
        .arg(path)
        .output()?;
    if !out.status.success() {
        return Err(format!("{mode}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut f = text.split_whitespace();
    let secs = f
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or("bad child output")?;
    let rss = f
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or("bad child output")?;
    Ok((secs, rss))
}

fn main() -> Result<(), Failure> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("read") => return run_read(Path::new(args.get(2).ok_or("path")?)),
        Some("load") => return run_load(Path::new(args.get(2).ok_or("path")?)),
        Some("read_alloc") => return run_read_alloc(Path::new(args.get(2).ok_or("path")?)),
        _ => {}
    }
    let path = bench_file();
    if !path.is_file() {
        eprintln!("writing {} ...", path.display());
        let t = Instant::now();
        write_fullsize_checkpoint(&path)?;
        eprintln!("written in {:.1} s", t.elapsed().as_secs_f64());
    }
    let size = std::fs::metadata(&path)?.len();
    let gb = |b: u64| b as f64 / 1e9;
    // Warm the page cache once so read and load compare like with like.
    let (warm, _) = child("read", &path)?;
    let (read_s, read_rss) = child("read", &path)?;
    let (alloc_s, alloc_rss) = child("read_alloc", &path)?;
    let (load_s, load_rss) = child("load", &path)?;
    println!("file: {} ({:.2} GB)", path.display(), gb(size));
    println!(
        "plain read: {read_s:.2} s (first, cache warming: {warm:.2} s), peak RSS {:.2} GB",
        gb(read_rss)
    );
    println!(
        "read into a fresh file-sized buffer: {alloc_s:.2} s, peak RSS {:.2} GB",
        gb(alloc_rss)
    );
    println!(
        "load f16 CPU (UNet + VAE models, both text encoders' tensors): {load_s:.2} s = {:.2}x read (target <= 1.5x)",
        load_s / read_s
    );
    println!("load / read-into-fresh-buffer: {:.2}x", load_s / alloc_s);
    println!(
        "load peak RSS (VmHWM): {:.2} GB = {:.2}x file size (target <= 1.2x)",
        gb(load_rss),
        load_rss as f64 / size as f64
    );
    Ok(())
}
