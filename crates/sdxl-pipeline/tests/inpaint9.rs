//! 9-channel SDXL inpainting checkpoints (SPEC §13): detection from the UNet's `conv_in` weight
//! and A1111 1.10's image conditioning, against `tests/fixtures/inpaint9/` made by
//! `scripts/fixtures/make_inpaint9_renders.py` (a Python port of A1111's
//! `txt2img_image_conditioning` / `inpainting_image_conditioning` and of its CFG denoiser's
//! `c_concat`, driving diffusers' UNet2DConditionModel with 9 input channels and k-diffusion) on
//! `tests/fixtures/tiny-sdxl-inpaint-single-file.safetensors`
//! (`scripts/fixtures/make_tiny_inpaint_model.py`).
//!
//! Bars: the conditioning tensors within 1e-5 absolute (f32 VAE encode, as `vae.rs`); renders at
//! the render parity bar of `render_cases.rs` / `img2img_renders.rs` — PSNR ≥ 60 dB and
//! max |Δ| ≤ 2/255.

mod model_support;

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use model_support::{fixture, max_abs_diff, tiny_dir};
use sdxl_pipeline::checkpoint::{Checkpoint, ModelSource};
use sdxl_pipeline::image_ops::ResizeMode;
use sdxl_pipeline::output::{GrayImage, RgbImage};
use sdxl_pipeline::pipeline::{
    HiresParams, HiresUpscaler, Img2ImgParams, LoadOptions, SdxlModel, Txt2ImgRequest,
};
use sdxl_pipeline::{ErrorKind, PipelineError};

const P: &str = "a photo of an astronaut riding a horse on mars, highly detailed";
const NEG: &str = "blurry, low quality, watermark";

fn inpaint_source() -> ModelSource {
    ModelSource::SingleFile {
        path: fixture("tiny-sdxl-inpaint-single-file.safetensors"),
        config_dir: Some(tiny_dir()),
    }
}

fn inpaint_model() -> SdxlModel {
    let ckpt = Checkpoint::open(&inpaint_source()).unwrap();
    SdxlModel::load(Arc::new(ckpt), LoadOptions::default()).unwrap()
}

fn rgb(path: &Path) -> RgbImage {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_rgb8();
    RgbImage::new(img.width(), img.height(), img.into_raw()).unwrap()
}

fn gray(path: &Path) -> GrayImage {
    let img = image::open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .to_luma8();
    GrayImage::new(img.width(), img.height(), img.into_raw()).unwrap()
}

fn psnr_and_max(a: &[u8], b: &[u8]) -> (f64, u8) {
    assert_eq!(a.len(), b.len());
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

fn check_render(name: &str, ours: &RgbImage) {
    let reference = rgb(&fixture(&format!("inpaint9/{name}.png")));
    assert_eq!(
        (ours.width, ours.height),
        (reference.width, reference.height),
        "{name}: size"
    );
    let (psnr, max) = psnr_and_max(&reference.pixels, &ours.pixels);
    eprintln!("{name}: PSNR {psnr:.2} dB, max |Δ| {max}");
    assert!(
        psnr >= 60.0 && max <= 2,
        "{name}: PSNR {psnr:.2} dB, max |Δ| {max}"
    );
}

/// The cases' shared request (`cases.json` "common": CFG 6.5, blend, clip skip 2, 64×64).
fn request(sampler: &str, steps: u32, seed: u64) -> Txt2ImgRequest {
    Txt2ImgRequest {
        prompt: P.into(),
        negative_prompt: Some(NEG.into()),
        steps,
        cfg_scale: 6.5,
        width: 64,
        height: 64,
        sampler_name: sampler.into(),
        seed,
        ..Txt2ImgRequest::default()
    }
}

#[test]
fn in_channels_come_from_the_conv_in_weight() {
    let inpaint = Checkpoint::open(&inpaint_source()).unwrap();
    assert_eq!(inpaint.configs().unet.in_channels, 9);
    assert!(inpaint.is_inpainting());
    // The config dir says 4: the weight decides.
    let plain = model_support::single_checkpoint();
    assert_eq!(plain.configs().unet.in_channels, 4);
    assert!(!plain.is_inpainting());
    assert!(!model_support::dir_checkpoint().is_inpainting());
}

/// A copy of the tiny diffusers dir whose UNet file holds only `conv_in.weight` of `channels`
/// inputs (opening reads headers only).
fn diffusers_dir_with_conv_in(channels: usize) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for sub in ["unet", "vae", "text_encoder", "text_encoder_2"] {
        let from = tiny_dir().join(sub);
        let to = tmp.path().join(sub);
        std::fs::create_dir_all(&to).unwrap();
        for entry in std::fs::read_dir(&from).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    let unet = tmp.path().join("unet/diffusion_pytorch_model.safetensors");
    let _ = std::fs::remove_file(
        tmp.path()
            .join("unet/diffusion_pytorch_model.fp16.safetensors"),
    );
    let w = Tensor::zeros((32, channels, 3, 3), candle_core::DType::F16, &Device::Cpu).unwrap();
    candle_core::safetensors::save(
        &std::collections::HashMap::from([("conv_in.weight".to_string(), w)]),
        &unet,
    )
    .unwrap();
    tmp
}

#[test]
fn diffusers_layout_conv_in_is_detected() {
    let dir = diffusers_dir_with_conv_in(9);
    let ckpt = Checkpoint::open(&ModelSource::DiffusersDir(dir.path().to_path_buf())).unwrap();
    assert_eq!(ckpt.configs().unet.in_channels, 9);
    assert!(ckpt.is_inpainting());
}

#[test]
fn other_input_channel_counts_are_model_invalid_naming_the_file() {
    let dir = diffusers_dir_with_conv_in(5);
    let err = Checkpoint::open(&ModelSource::DiffusersDir(dir.path().to_path_buf())).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ModelInvalid, "{err}");
    match &err {
        PipelineError::ModelInvalid { path, reason } => {
            assert!(
                path.ends_with("unet/diffusion_pytorch_model.safetensors"),
                "{err}"
            );
            assert!(reason.contains("5 input channels"), "{err}");
        }
        other => panic!("expected ModelInvalid, got {other:?}"),
    }
}

#[test]
fn conditioning_tensors_match_a1111() {
    let model = inpaint_model();
    assert!(model.is_inpainting());
    let want =
        candle_core::safetensors::load(fixture("inpaint9/cond.safetensors"), &Device::Cpu).unwrap();
    let source = rgb(&fixture("inpaint9/init.png"));
    let mask = gray(&fixture("inpaint9/mask.png"));
    let (lh, lw) = ((source.height / 8) as usize, (source.width / 8) as usize);
    let mut cases: Vec<(&str, Tensor)> =
        vec![("gray_64x48", model.txt2img_conditioning(64, 48).unwrap())];
    for (name, m, w) in [
        ("mask_w1", Some(&mask), 1.0),
        ("mask_w05", Some(&mask), 0.5),
        ("mask_w03", Some(&mask), 0.3),
        ("nomask_w1", None, 1.0),
        ("nomask_w06", None, 0.6),
    ] {
        let c = model
            .inpainting_conditioning(&source, m, lh, lw, w)
            .unwrap();
        cases.push((name, c));
    }
    for (name, ours) in cases {
        let reference = &want[name];
        assert_eq!(ours.dims(), reference.dims(), "{name}: shape");
        let d = max_abs_diff(&ours, reference);
        // The mask channel is exact.
        let dm = max_abs_diff(
            &ours.narrow(1, 0, 1).unwrap(),
            &reference.narrow(1, 0, 1).unwrap(),
        );
        eprintln!("{name}: max |Δ| {d:e} (mask channel {dm})");
        assert_eq!(dm, 0.0, "{name}: mask channel");
        assert!(d <= 1e-5, "{name}: max |Δ| {d}");
    }
}

#[test]
fn mask_of_another_size_is_invalid_input() {
    let model = inpaint_model();
    let source = rgb(&fixture("inpaint9/init.png"));
    let mask = GrayImage::new(8, 8, vec![255; 64]).unwrap();
    let err = model
        .inpainting_conditioning(&source, Some(&mask), 7, 10, 1.0)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
}

#[test]
fn txt2img_renders_match_a1111() {
    let model = inpaint_model();
    let cancel = AtomicBool::new(false);
    for (name, sampler, steps, seed) in [
        ("t2i_euler", "Euler", 6, 42),
        ("t2i_euler_a", "Euler a", 5, 7),
    ] {
        let out = model
            .txt2img(&request(sampler, steps, seed), &mut |_| {}, &cancel)
            .unwrap();
        check_render(name, &out.images[0]);
    }
}

#[test]
fn img2img_without_mask_matches_a1111() {
    let model = inpaint_model();
    let mut params = Img2ImgParams::new(vec![rgb(&fixture("inpaint9/init.png"))]);
    params.denoising_strength = 0.5;
    let out = model
        .img2img(
            &request("Euler", 6, 5),
            &params,
            &mut |_| {},
            &AtomicBool::new(false),
        )
        .unwrap();
    check_render("i2i_euler_05", &out.images[0]);
    assert!(model.uses_inpainting_conditioning(true, None));
    assert!(!model.uses_inpainting_conditioning(false, None));
}

#[test]
fn hires_pass_matches_the_reference() {
    let model = inpaint_model();
    let hires = HiresParams {
        scale: 1.5,
        upscaler: Some(HiresUpscaler::from_name("Latent").unwrap()),
        denoising_strength: 0.6,
        ..HiresParams::default()
    };
    let out = model
        .txt2img_hires(
            &request("Euler", 4, 3),
            &hires,
            &mut |_| {},
            &AtomicBool::new(false),
        )
        .unwrap();
    check_render("hr_latent", &out.images[0]);
    // A1111 reports the conditioning for pixel upscalers only (latent ones fail there).
    assert!(!model.uses_inpainting_conditioning(false, Some(&hires)));
    let lanczos = HiresParams {
        upscaler: Some(HiresUpscaler::Lanczos),
        ..hires
    };
    assert!(model.uses_inpainting_conditioning(false, Some(&lanczos)));
}

#[test]
fn latent_resize_mode_is_refused_on_an_inpainting_model() {
    let model = inpaint_model();
    let mut params = Img2ImgParams::new(vec![rgb(&fixture("inpaint9/init.png"))]);
    params.resize_mode = ResizeMode::LatentUpscale;
    let err = model
        .img2img(
            &request("Euler", 4, 1),
            &params,
            &mut |_| {},
            &AtomicBool::new(false),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains("resize_mode 3"), "{err}");
}

/// A mask on the 9-channel model: the mask-aware image conditioning (masked image latent +
/// the job-size mask) together with the latent blend after every call and the overlay
/// (`cases.json` "inpaint_masked": blur 0, fill 1 original, whole picture, strength 0.75).
#[test]
fn masked_inpainting_on_an_inpainting_model_matches_a1111() {
    use sdxl_pipeline::pipeline::{InpaintParams, InpaintingFill};
    let model = inpaint_model();
    let mut params = Img2ImgParams::new(vec![rgb(&fixture("inpaint9/init.png"))]);
    params.denoising_strength = 0.75;
    let mut mask = InpaintParams::new(gray(&fixture("inpaint9/mask.png")));
    mask.mask_blur_x = 0;
    mask.mask_blur_y = 0;
    mask.fill = InpaintingFill::Original;
    mask.full_res = false;
    params.mask = Some(mask);
    let out = model
        .img2img(
            &request("Euler", 6, 11),
            &params,
            &mut |_| {},
            &AtomicBool::new(false),
        )
        .unwrap();
    check_render("inpaint_masked", &out.images[0]);
}
