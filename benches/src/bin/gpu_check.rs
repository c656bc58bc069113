//! GPU check (issue 17, run by `scripts/gpu-check.sh`): device-synchronised timings of the phases
//! that decide SDXL speed on one machine, on the synthetic full-size checkpoint
//! (`load_fullsize`'s writer) or, with `--small`, on the tiny fixture model at tiny sizes (so CI
//! can prove the whole path works on a CPU).
//!
//! ```text
//! gpu_check [--device cuda|cuda:N|cpu] [--dtype f16|bf16|f32] [--small] [--checkpoint FILE]
//!           [--config DIR] [--dir DIR] [--steps N]
//! ```
//! Prints one `name: value` line per measurement: checkpoint → device load, text encode, UNet step
//! (batch 2) with and without flash attention, VAE decode, a whole txt2img, a switch between two
//! nine-LoRA sets, peak RSS. (The VRAM high-water mark comes from `scripts/gpu-check.sh`, which
//! polls nvidia-smi while this runs.)

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use sdxl_benches::{
    lora_targets, write_fullsize_checkpoint, write_kohya_lora, Failure, FULLSIZE_FILE_NAME,
};
use sdxl_pipeline::checkpoint::{Checkpoint, ModelSource};
use sdxl_pipeline::device::{parse_device, parse_dtype};
use sdxl_pipeline::lora::{LoraSet, LoraSpec};
use sdxl_pipeline::pipeline::{LoadOptions, SdxlModel, Txt2ImgRequest};
use sdxl_pipeline::unet::{flash_attention_built, set_flash_attention};

struct Args {
    device: String,
    dtype: String,
    small: bool,
    checkpoint: Option<PathBuf>,
    config: Option<PathBuf>,
    dir: PathBuf,
    steps: u32,
}

fn parse_args() -> Result<Args, Failure> {
    let mut a = Args {
        device: "cuda".into(),
        dtype: "f16".into(),
        small: false,
        checkpoint: None,
        config: None,
        dir: std::env::var_os("SDXL_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join("sdxl-bench")),
        steps: 30,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--device" => a.device = val()?,
            "--dtype" => a.dtype = val()?,
            "--small" => a.small = true,
            "--checkpoint" => a.checkpoint = Some(val()?.into()),
            "--config" => a.config = Some(val()?.into()),
            "--dir" => a.dir = val()?.into(),
            "--steps" => a.steps = val()?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    Ok(a)
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// Seconds `f` took, with the device synchronised before the clock is read.
fn timed<T>(dev: &Device, f: impl FnOnce() -> Result<T, Failure>) -> Result<(T, f64), Failure> {
    dev.synchronize()?;
    let t = Instant::now();
    let out = f()?;
    dev.synchronize()?;
    Ok((out, t.elapsed().as_secs_f64()))
}

fn peak_rss_gb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1e6)
}

fn main() -> Result<(), Failure> {
    let args = parse_args()?;
    let dev = parse_device(&args.device)?;
    let dtype = parse_dtype(&args.dtype)?;
    let (side, unet_side, decode_side) = if args.small {
        (64u32, 8usize, 8usize)
    } else {
        (1024, 128, 128)
    };

    // The checkpoint: the tiny fixture (--small), a given file, or the synthetic full-size one.
    let (path, config) = match (&args.checkpoint, args.small) {
        (Some(p), _) => (p.clone(), args.config.clone()),
        (None, true) => (
            fixtures().join("tiny-sdxl-single-file.safetensors"),
            Some(fixtures().join("tiny-sdxl")),
        ),
        (None, false) => {
            let p = args.dir.join(FULLSIZE_FILE_NAME);
            if !p.is_file() {
                std::fs::create_dir_all(&args.dir)?;
                eprintln!("writing {} (6.9 GB) ...", p.display());
                let t = Instant::now();
                write_fullsize_checkpoint(&p)?;
                println!(
                    "synthetic checkpoint written: {:.1} s",
                    t.elapsed().as_secs_f64()
                );
            }
            (p, None)
        }
    };
    println!(
        "checkpoint: {} (device {}, dtype {:?}, flash-attn built: {})",
        path.display(),
        args.device,
        dtype,
        flash_attention_built()
    );
    let source = ModelSource::SingleFile {
        path: path.clone(),
        config_dir: config,
    };

    // 1. Checkpoint → device.
    let (model, load_s) = timed(&dev, || {
        let ckpt = Arc::new(Checkpoint::open(&source)?);
        let options = LoadOptions {
            dtype,
            device: dev.clone(),
            ..Default::default()
        };
        Ok(SdxlModel::load(ckpt, options)?)
    })?;
    println!("checkpoint to device (all components): {load_s:.2} s");

    // 2. UNet step, CFG batch 2, with and without flash attention.
    let unet = model.unet();
    let lat = unet_side;
    let x = Tensor::randn(0f32, 1.0, (2, 4, lat, lat), &dev)?.to_dtype(dtype)?;
    let ucfg = &model.checkpoint().configs().unet;
    let ctx_dim = ucfg.cross_attention_dim;
    let pooled_dim = ucfg.projection_class_embeddings_input_dim.unwrap_or(2816)
        - 6 * ucfg.addition_time_embed_dim.unwrap_or(256);
    let context = Tensor::randn(0f32, 1.0, (2, 77, ctx_dim), &dev)?.to_dtype(dtype)?;
    let pooled = Tensor::randn(0f32, 1.0, (2, pooled_dim), &dev)?.to_dtype(dtype)?;
    let s = f64::from(side);
    let ids =
        Tensor::new(&[[s, s, 0.0, 0.0, s, s], [s, s, 0.0, 0.0, s, s]], &dev)?.to_dtype(dtype)?;
    let flash_modes: &[bool] = if flash_attention_built() {
        &[true, false]
    } else {
        &[false]
    };
    for &flash in flash_modes {
        set_flash_attention(flash);
        let cond = unet.prepare(&context, &pooled, &ids)?;
        unet.forward_prepared(&x, 500.0, &cond)?; // warm-up (kernel load, cuDNN algo search)
        let n = 3;
        let (_, secs) = timed(&dev, || {
            for i in 0..n {
                unet.forward_prepared(&x, 900.0 - 100.0 * i as f64, &cond)?;
            }
            Ok(())
        })?;
        println!(
            "unet step {side}x{side} batch 2 (flash attention {}): {:.1} ms",
            if flash { "on" } else { "off" },
            secs * 1000.0 / n as f64
        );
    }
    set_flash_attention(true);

    // 3. VAE decode in the requested dtype (the fp16-fix VAE's dtype on CUDA).
    let vae = model.checkpoint().load_vae(dtype, &dev)?;
    let z = Tensor::randn(0f32, 1.0, (1, 4, decode_side, decode_side), &dev)?.to_dtype(dtype)?;
    vae.decode(&z)?;
    let (_, dec_s) = timed(&dev, || Ok(vae.decode(&z)?))?;
    drop(vae);
    println!(
        "vae decode {}x{} {:?}: {:.1} ms",
        decode_side * 8,
        decode_side * 8,
        dtype,
        dec_s * 1000.0
    );

    // 4. A whole image: prompt encoding, `steps` Euler steps with CFG, decode.
    let req = Txt2ImgRequest {
        prompt: "a photo of a lighthouse on a cliff at sunset, detailed".into(),
        negative_prompt: Some("blurry".into()),
        steps: if args.small {
            args.steps.min(4)
        } else {
            args.steps
        },
        width: side,
        height: side,
        sampler_name: "Euler".into(),
        ..Default::default()
    };
    let cancel = AtomicBool::new(false);
    let (out, img_s) = timed(&dev, || Ok(model.txt2img(&req, &mut |_| {}, &cancel)?))?;
    let t = out.timings;
    println!(
        "txt2img {side}x{side}, {} steps, CFG: {img_s:.2} s (text encode {:.1} ms, denoise {:.1} ms = {:.1} ms/step, decode {:.1} ms)",
        req.steps,
        t.encode_ms,
        t.denoise_ms,
        t.denoise_ms / f64::from(req.steps),
        t.decode_ms
    );
    println!("text encode (both prompts, per job): {:.1} ms", t.encode_ms);

    // 5. Nine-LoRA switch: set A (nine rank-32 LoRAs on every UNet attention linear) → set B
    // (the same files at other scales: every touched weight rewritten).
    let lora_dir = args.dir.join("gpu-check-loras");
    std::fs::create_dir_all(&lora_dir)?;
    let targets = lora_targets(&path)?;
    let rank = if args.small { 4 } else { 32 };
    let mut files = Vec::new();
    for i in 0..9u64 {
        let f = lora_dir.join(format!("lora{i}-r{rank}.safetensors"));
        if !f.is_file() {
            write_kohya_lora(&f, &targets, rank, 0x51ED_2701 + i)?;
        }
        files.push(f);
    }
    let specs = |scale: f64| -> Vec<LoraSpec> {
        files
            .iter()
            .enumerate()
            .map(|(i, f)| LoraSpec {
                path: f.clone(),
                name: format!("lora{i}"),
                scale,
                te_scale: None,
            })
            .collect()
    };
    let mut model = model;
    let ckpt = model.checkpoint().clone();
    let (set_a, _) = LoraSet::load(&specs(0.5), &ckpt)?;
    let (set_b, _) = LoraSet::load(&specs(0.8), &ckpt)?;
    let (n, on_s) = timed(&dev, || Ok(model.set_loras(&set_a)?))?;
    let (_, ab_s) = timed(&dev, || Ok(model.set_loras(&set_b)?))?;
    let (_, off_s) = timed(&dev, || Ok(model.set_loras(&LoraSet::empty())?))?;
    println!(
        "nine-LoRA switch ({} UNet linears, rank {rank}): base->A {:.0} ms, A->B {:.0} ms, B->base {:.0} ms ({n} parameters)",
        targets.len(),
        on_s * 1000.0,
        ab_s * 1000.0,
        off_s * 1000.0
    );

    println!("peak RSS (VmHWM): {:.2} GB", peak_rss_gb());
    Ok(())
}
