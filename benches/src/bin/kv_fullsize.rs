//! Full-size UNet on CPU in f32 (the synthetic checkpoint of `load_fullsize`, written to
//! `$SDXL_BENCH_DIR` if missing): one CFG batch-2 call at a latent side (first argument, default
//! 32 = 256²) with the per-job part recomputed every call (`forward`, what every step cost before
//! issue 17) against `forward_prepared` with it done once, in alternating pairs (second argument).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use sdxl_benches::{write_fullsize_checkpoint, Failure, FULLSIZE_FILE_NAME};
use sdxl_pipeline::checkpoint::{Checkpoint, ModelSource};

fn main() -> Result<(), Failure> {
    let mut args = std::env::args().skip(1);
    let side: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(32);
    let pairs: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(3);
    let dir = std::env::var_os("SDXL_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("sdxl-bench"));
    let path = dir.join(FULLSIZE_FILE_NAME);
    if !path.is_file() {
        std::fs::create_dir_all(&dir)?;
        write_fullsize_checkpoint(&path)?;
    }
    let ckpt = Checkpoint::open(&ModelSource::SingleFile {
        path,
        config_dir: None,
    })?;
    let dev = Device::Cpu;
    let t = Instant::now();
    let unet = ckpt.load_unet(DType::F32, &dev)?;
    println!("unet f32 load: {:.1} s", t.elapsed().as_secs_f64());
    let x = Tensor::randn(0f32, 1.0, (2, 4, side, side), &dev)?;
    let ctx = Tensor::randn(0f32, 1.0, (2, 77, 2048), &dev)?;
    let pooled = Tensor::randn(0f32, 1.0, (2, 1280), &dev)?;
    let s = (side * 8) as f32;
    let ids = Tensor::new(&[[s, s, 0.0, 0.0, s, s], [s, s, 0.0, 0.0, s, s]], &dev)?;
    let t = Instant::now();
    let cond = unet.prepare(&ctx, &pooled, &ids)?;
    println!(
        "prepare (cross-attention K/V of 70 blocks + micro-conditioning): {:.0} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    unet.forward_prepared(&x, 500.0, &cond)?;
    for p in 0..pairs {
        let t = Instant::now();
        unet.forward(&x, 400.0 - p as f64, &ctx, &pooled, &ids)?;
        let every = t.elapsed().as_secs_f64();
        let t = Instant::now();
        unet.forward_prepared(&x, 300.0 - p as f64, &cond)?;
        let once = t.elapsed().as_secs_f64();
        println!(
            "pair {}: K/V every call {:.2} s | prepared once {:.2} s ({:.2}x)",
            p + 1,
            every,
            once,
            once / every
        );
    }
    Ok(())
}
