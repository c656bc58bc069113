//! The SPEC §13 job fields: img2img inputs (images as base64 / data: URIs, limits, RGBA on white),
//! hires-fix fields, budgets counting the hires output, refusals, parameters and infotext.

use base64::Engine as _;
use sdxl_pipeline::image_ops::ResizeMode;
use sdxl_pipeline::pipeline::HiresUpscaler;
use sdxl_worker::catalog::Catalog;
use sdxl_worker::error::{ErrorCode, WorkerError};
use sdxl_worker::handler::StubHandler;
use sdxl_worker::job::{image_infotext, validate, ValidatedJob};
use serde_json::{json, Value};

fn catalog() -> Catalog {
    StubHandler::default().catalog
}

fn ok(input: Value) -> ValidatedJob {
    validate(&input, &catalog()).unwrap_or_else(|e| panic!("{input} rejected: {e}"))
}

fn err(input: Value) -> String {
    match validate(&input, &catalog()) {
        Ok(j) => panic!("{input} accepted: {j:?}"),
        Err(e) => {
            assert_eq!(e.code(), ErrorCode::InvalidInput, "{e}");
            e.to_string()
        }
    }
}

/// A w×h PNG (RGB or RGBA) as base64.
fn png(w: u32, h: u32, rgba: Option<[u8; 4]>) -> String {
    let mut bytes = Vec::new();
    let enc = image::codecs::png::PngEncoder::new(&mut bytes);
    use image::ImageEncoder as _;
    match rgba {
        Some(px) => {
            let data: Vec<u8> = (0..w * h).flat_map(|_| px).collect();
            enc.write_image(&data, w, h, image::ExtendedColorType::Rgba8)
                .unwrap();
        }
        None => {
            let data: Vec<u8> = (0..w * h * 3).map(|i| (i % 251) as u8).collect();
            enc.write_image(&data, w, h, image::ExtendedColorType::Rgb8)
                .unwrap();
        }
    }
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn init_images_decode_with_a1111_defaults() {
    let j =
        ok(json!({"prompt": "p", "init_images": [png(16, 8, None)], "width": 64, "height": 64}));
    let p = j.img2img.as_ref().expect("img2img");
    assert_eq!(p.denoising_strength, 0.75);
    assert_eq!(p.resize_mode, ResizeMode::JustResize);
    assert_eq!(p.initial_noise_multiplier, 1.0);
    assert_eq!((p.init_images[0].width, p.init_images[0].height), (16, 8));
    assert!(j.warnings.is_empty(), "{:?}", j.warnings);
    let params = j.parameters();
    assert_eq!(params["denoising_strength"], 0.75);
    assert!(params.get("init_images").is_none(), "images are not echoed");
    let info = image_infotext(&j);
    assert_eq!(
        info,
        vec![("Denoising strength".to_string(), "0.75".to_string())]
    );
}

#[test]
fn data_uris_init_image_alias_and_fields() {
    let j = ok(json!({
        "prompt": "p", "init_image": format!("data:image/png;base64,{}", png(8, 8, None)),
        "denoising_strength": 0.3, "resize_mode": 2, "initial_noise_multiplier": 0.9
    }));
    let p = j.img2img.unwrap();
    assert_eq!(p.denoising_strength, 0.3);
    assert_eq!(p.resize_mode, ResizeMode::ResizeAndFill);
    assert_eq!(p.initial_noise_multiplier, 0.9);
}

#[test]
fn rgba_is_flattened_on_white_like_pillow_paste() {
    // Pillow 9.5: `bg = Image.new("RGBA", size, "#ffffff"); bg.paste(im, mask=im)` gives
    // (132, 227, 255) for (10, 200, 255, 128).
    let j = ok(json!({"prompt": "p", "init_images": [png(2, 2, Some([10, 200, 255, 128]))]}));
    let img = &j.img2img.unwrap().init_images[0];
    assert_eq!(&img.pixels[0..3], &[132, 227, 255]);
}

#[test]
fn bad_images_name_the_field() {
    let e = err(json!({"prompt": "p", "init_images": ["not base64!!"]}));
    assert!(e.contains("init_images[0]"), "{e}");
    let e = err(json!({"prompt": "p", "init_images": [png(4, 4, None), "aGVsbG8="]}));
    assert!(
        e.contains("init_images[1]") && e.contains("PNG, JPEG or WebP"),
        "{e}"
    );
    let e = err(json!({"prompt": "p", "init_images": "abc"}));
    assert!(e.contains("`init_images` must be an array"), "{e}");
    let e = err(json!({"prompt": "p", "init_image": 5}));
    assert!(e.contains("`init_image`"), "{e}");
    let e = err(json!({"prompt": "p", "init_images": ["https://example.com/a.png"]}));
    assert!(e.contains("URLs are not fetched"), "{e}");
    let e =
        err(json!({"prompt": "p", "init_images": [png(4, 4, None)], "denoising_strength": 1.5}));
    assert!(e.contains("`denoising_strength`"), "{e}");
    let e = err(json!({"prompt": "p", "init_images": [png(4, 4, None)], "resize_mode": 4}));
    assert!(e.contains("`resize_mode`"), "{e}");
    let e = err(
        json!({"prompt": "p", "init_images": [png(4, 4, None), png(4, 4, None)], "batch_size": 3}),
    );
    assert!(e.contains("2 init images for batch_size 3"), "{e}");
}

#[test]
fn oversized_images_are_refused_before_decoding() {
    // A PNG header claiming 5000×5000 (over 4096²): refused by the decoder limits.
    let e = err(json!({"prompt": "p", "init_images": [png(4097, 1, None)]}));
    assert!(e.contains("init_images[0]"), "{e}");
    let huge = "A".repeat(41_000_000);
    let e = err(json!({"prompt": "p", "init_images": [huge]}));
    assert!(e.contains("larger than 30000000 bytes"), "{e}");
}

#[test]
fn mask_and_unsupported_image_fields_are_refused() {
    // A mask needs an init image (inpainting itself: tests/inpaint_schema.rs).
    let e = err(json!({"prompt": "p", "mask": png(4, 4, None)}));
    assert!(e.contains("`mask`"), "{e}");
    let e = err(json!({"prompt": "p", "enable_hr": true, "hr_checkpoint_name": "other"}));
    assert!(e.contains("`hr_checkpoint_name`"), "{e}");
    let e = err(json!({"prompt": "p", "enable_hr": true, "init_images": [png(4, 4, None)]}));
    assert!(e.contains("`enable_hr`"), "{e}");
    // A1111 clients' default inpainting fields without a mask are fine and silent.
    let j = ok(json!({
        "prompt": "p", "init_images": [png(4, 4, None)], "mask": null, "mask_blur": 4,
        "inpainting_fill": 0, "inpaint_full_res": true, "inpaint_full_res_padding": 0,
        "inpainting_mask_invert": 0, "include_init_images": false
    }));
    assert!(j.warnings.is_empty(), "{:?}", j.warnings);
}

#[test]
fn hires_fields_and_defaults() {
    let j = ok(json!({"prompt": "p", "width": 512, "height": 512, "enable_hr": true}));
    let h = j.hires.as_ref().expect("hires");
    assert_eq!(
        (h.scale, h.denoising_strength, h.upscaler),
        (2.0, 0.75, None)
    );
    assert_eq!(
        image_infotext(&j),
        vec![
            ("Denoising strength".to_string(), "0.75".to_string()),
            ("Hires upscale".to_string(), "2".to_string()),
        ]
    );
    assert_eq!(j.parameters()["hr_output_width"], 1024);
    let j = ok(json!({
        "prompt": "p", "width": 512, "height": 384, "enable_hr": true, "hr_scale": 1.5,
        "hr_resize_x": 1024, "hr_resize_y": 1024, "hr_upscaler": "Latent (nearest-exact)",
        "hr_second_pass_steps": 7, "hr_sampler_name": "Euler", "hr_scheduler": "karras",
        "hr_prompt": "q", "hr_negative_prompt": "", "denoising_strength": 0.4
    }));
    let h = j.hires.as_ref().unwrap();
    assert_eq!(
        h.upscaler,
        Some(HiresUpscaler::from_name("Latent (nearest-exact)").unwrap())
    );
    assert_eq!(
        (h.resize_x, h.resize_y, h.second_pass_steps),
        (1024, 1024, 7)
    );
    assert_eq!(h.prompt.as_deref(), Some("q"));
    assert_eq!(h.negative_prompt, None, "\"\" = same as the first pass");
    let info = image_infotext(&j);
    assert!(info.contains(&("Hires resize".to_string(), "1024x1024".to_string())));
    assert!(info.contains(&("Hires steps".to_string(), "7".to_string())));
    assert!(info.contains(&(
        "Hires upscaler".to_string(),
        "Latent (nearest-exact)".to_string()
    )));
    // enable_hr false: the hires fields are ignored silently, as A1111.
    let j = ok(json!({"prompt": "p", "enable_hr": false, "hr_scale": 2, "hr_upscaler": "Latent"}));
    assert!(j.hires.is_none() && j.warnings.is_empty());
}

#[test]
fn hires_errors() {
    let e = err(json!({"prompt": "p", "enable_hr": true, "hr_upscaler": "R-ESRGAN 4x+"}));
    assert!(
        e.contains("unknown hr_upscaler") && e.contains("Latent (bicubic antialiased)"),
        "{e}"
    );
    let e = err(json!({"prompt": "p", "enable_hr": "yes"}));
    assert!(e.contains("`enable_hr` must be a boolean"), "{e}");
    let e = err(json!({"prompt": "p", "enable_hr": true, "hr_sampler_name": "Nope"}));
    assert!(e.contains("hr_sampler_name"), "{e}");
    let e = err(json!({"prompt": "p", "enable_hr": true, "denoising_strength": 0}));
    assert!(e.contains("denoising_strength"), "{e}");
}

#[test]
fn budgets_count_the_hires_output() {
    // 1024² ×2 = 2048², exactly the default per-image budget.
    ok(json!({"prompt": "p", "enable_hr": true}));
    let e = err(json!({"prompt": "p", "enable_hr": true, "hr_scale": 2.5}));
    assert!(e.contains("SDXL_MAX_PIXELS"), "{e}");
    let e = err(json!({"prompt": "p", "enable_hr": true, "batch_size": 3}));
    assert!(e.contains("SDXL_MAX_BATCH_PIXELS"), "{e}");
}

#[test]
fn worker_error_for_images_is_invalid_input() {
    let e = validate(&json!({"prompt": "p", "init_images": [""]}), &catalog()).unwrap_err();
    assert!(matches!(e, WorkerError::InvalidInput(_)), "{e:?}");
}
