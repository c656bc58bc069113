//! The SPEC §13 inpainting job fields: `mask` decoding, A1111's defaults, `mask_blur` overriding
//! `mask_blur_x/y`, 0/1 or boolean flags, range errors naming the field, `parameters`.

use base64::Engine as _;
use sdxl_pipeline::pipeline::{InpaintParams, InpaintingFill};
use sdxl_worker::catalog::Catalog;
use sdxl_worker::error::{ErrorCode, WorkerError};
use sdxl_worker::handler::StubHandler;
use sdxl_worker::job::{validate, ValidatedJob};
use serde_json::{json, Value};

fn ok(input: Value) -> ValidatedJob {
    let catalog: Catalog = StubHandler::default().catalog;
    validate(&input, &catalog).unwrap_or_else(|e| panic!("{input} rejected: {e}"))
}

fn err(input: Value) -> String {
    let catalog: Catalog = StubHandler::default().catalog;
    match validate(&input, &catalog) {
        Ok(j) => panic!("{input} accepted: {j:?}"),
        Err(e @ WorkerError::InvalidInput(_)) => {
            assert_eq!(e.code(), ErrorCode::InvalidInput);
            e.to_string()
        }
        Err(e) => panic!("{e}"),
    }
}

/// A w×h gray PNG whose left half is white, as base64.
fn mask_png(w: u32, h: u32) -> String {
    let mut bytes = Vec::new();
    let enc = image::codecs::png::PngEncoder::new(&mut bytes);
    use image::ImageEncoder as _;
    let data: Vec<u8> = (0..w * h)
        .map(|i| if i % w < w / 2 { 255 } else { 0 })
        .collect();
    enc.write_image(&data, w, h, image::ExtendedColorType::L8)
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn mask_of(j: &ValidatedJob) -> &InpaintParams {
    j.img2img
        .as_ref()
        .and_then(|p| p.mask.as_ref())
        .expect("a mask")
}

#[test]
fn mask_decodes_with_a1111_api_defaults() {
    let j = ok(json!({"prompt": "p", "init_images": [mask_png(8, 4)], "mask": mask_png(8, 4)}));
    let m = mask_of(&j);
    assert_eq!((m.mask.width, m.mask.height), (8, 4));
    assert_eq!(&m.mask.pixels[..8], &[255, 255, 255, 255, 0, 0, 0, 0]);
    assert_eq!((m.mask_blur_x, m.mask_blur_y), (4, 4));
    assert_eq!(m.fill, InpaintingFill::Fill);
    assert!(m.full_res && !m.invert);
    assert_eq!(m.full_res_padding, 0);
    let p = j.parameters();
    assert_eq!(p["inpainting_fill"], 0);
    assert_eq!(p["inpaint_full_res"], true);
    assert_eq!(p["mask_size"], "8x4");
    // A data: URI works too; an empty mask string means no mask.
    let uri = format!("data:image/png;base64,{}", mask_png(8, 4));
    assert!(
        mask_of(&ok(
            json!({"prompt": "p", "init_images": [mask_png(8, 4)], "mask": uri})
        ))
        .full_res
    );
    let j = ok(json!({"prompt": "p", "init_images": [mask_png(8, 4)], "mask": ""}));
    assert!(j.img2img.unwrap().mask.is_none());
}

#[test]
fn mask_options_follow_a1111() {
    let j = ok(json!({
        "prompt": "p", "init_images": [mask_png(8, 4)], "mask": mask_png(8, 4),
        "mask_blur_x": 2, "mask_blur_y": 9, "inpainting_fill": 3, "inpaint_full_res": 0,
        "inpaint_full_res_padding": 32, "inpainting_mask_invert": 1
    }));
    let m = mask_of(&j);
    assert_eq!((m.mask_blur_x, m.mask_blur_y), (2, 9));
    assert_eq!(m.fill, InpaintingFill::LatentNothing);
    assert!(!m.full_res && m.invert);
    assert_eq!(m.full_res_padding, 32);
    // `mask_blur` overrides both (A1111's property setter).
    let j = ok(json!({
        "prompt": "p", "init_images": [mask_png(8, 4)], "mask": mask_png(8, 4),
        "mask_blur": 0, "mask_blur_x": 2, "inpainting_mask_invert": true
    }));
    let m = mask_of(&j);
    assert_eq!((m.mask_blur_x, m.mask_blur_y), (0, 0));
    assert!(m.invert);
}

#[test]
fn bad_mask_fields_are_refused_by_name() {
    let base = || json!({"prompt": "p", "init_images": [mask_png(8, 4)], "mask": mask_png(8, 4)});
    for (field, value) in [
        ("inpainting_fill", json!(4)),
        ("mask_blur", json!(-1)),
        ("mask_blur_y", json!(1000)),
        ("inpaint_full_res", json!("yes")),
        ("inpainting_mask_invert", json!(2)),
        ("inpaint_full_res_padding", json!(-3)),
        ("mask", json!(7)),
        ("mask", json!("not base64!")),
    ] {
        let mut job = base();
        job[field] = value;
        let e = err(job);
        assert!(e.contains(field), "{field}: {e}");
    }
}
