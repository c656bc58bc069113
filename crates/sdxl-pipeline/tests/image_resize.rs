//! Pillow-compatible resizing and A1111's `resize_image` modes against Pillow 13's own output
//! (`tests/fixtures/img2img/resize.safetensors`, `scripts/fixtures/make_img2img_fixtures.py resize`).
//! Tolerance: bit-exact (the port reproduces Pillow's fixed-point arithmetic).

use std::collections::HashMap;

use sdxl_pipeline::image_ops::resize::Box4;
use sdxl_pipeline::image_ops::{resize, resize_box, resize_image, Filter, ResizeMode};
use sdxl_pipeline::output::RgbImage;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../tests/fixtures/img2img/resize.safetensors"
);

/// name → RGB image (arrays are [h, w, 3] u8).
fn fixture() -> HashMap<String, RgbImage> {
    let bytes = std::fs::read(FIXTURE).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let shape = view.shape();
            assert_eq!(shape.len(), 3, "{name}");
            let img =
                RgbImage::new(shape[1] as u32, shape[0] as u32, view.data().to_vec()).unwrap();
            (name, img)
        })
        .collect()
}

fn filter(name: &str) -> Filter {
    match name {
        "nearest" => Filter::Nearest,
        "bilinear" => Filter::Bilinear,
        "bicubic" => Filter::Bicubic,
        "lanczos" => Filter::Lanczos,
        other => panic!("unknown filter {other}"),
    }
}

fn parse_size(s: &str) -> (u32, u32) {
    let (w, h) = s.split_once('x').unwrap();
    (w.parse().unwrap(), h.parse().unwrap())
}

/// Number of differing bytes and the largest difference.
fn diff(a: &RgbImage, b: &RgbImage) -> (usize, u8) {
    assert_eq!((a.width, a.height), (b.width, b.height));
    let mut n = 0;
    let mut max = 0;
    for (x, y) in a.pixels.iter().zip(&b.pixels) {
        let d = x.abs_diff(*y);
        if d > 0 {
            n += 1;
            max = max.max(d);
        }
    }
    (n, max)
}

#[test]
fn resize_matches_pillow_bit_exact() {
    let fx = fixture();
    let mut checked = 0;
    for (name, expected) in &fx {
        let parts: Vec<&str> = name.split('.').collect();
        if parts[0] != "resize" {
            continue;
        }
        let src = &fx[&format!("src.{}", parts[1])];
        let (w, h) = parse_size(parts[3]);
        let got = resize(src, w, h, filter(parts[2])).unwrap();
        assert_eq!(diff(&got, expected), (0, 0), "{name}");
        checked += 1;
    }
    assert_eq!(checked, 40);
}

#[test]
fn resize_with_box_matches_pillow() {
    let fx = fixture();
    let b = &fx["src.b"];
    let cases: [(&str, Filter, (u32, u32), Box4); 4] = [
        (
            "box.b.bicubic.40x7.top",
            Filter::Bicubic,
            (40, 7),
            (0.0, 0.0, 40.0, 0.0),
        ),
        (
            "box.b.bicubic.40x7.bottom",
            Filter::Bicubic,
            (40, 7),
            (0.0, 64.0, 40.0, 64.0),
        ),
        (
            "box.b.bicubic.5x64.left",
            Filter::Bicubic,
            (5, 64),
            (0.0, 0.0, 0.0, 64.0),
        ),
        (
            "box.b.lanczos.20x30.mid",
            Filter::Lanczos,
            (20, 30),
            (3.5, 7.25, 30.0, 60.0),
        ),
    ];
    for (name, f, (w, h), bx) in cases {
        let got = resize_box(b, w, h, f, bx).unwrap();
        assert_eq!(diff(&got, &fx[name]), (0, 0), "{name}");
    }
}

#[test]
fn a1111_resize_modes_match() {
    let fx = fixture();
    let mut checked = 0;
    for (name, expected) in &fx {
        let parts: Vec<&str> = name.split('.').collect();
        if parts[0] != "a1111" {
            continue;
        }
        let src = &fx[&format!("src.{}", parts[1])];
        let mode = match parts[2] {
            "mode0" => ResizeMode::JustResize,
            "mode1" => ResizeMode::CropAndResize,
            "mode2" => ResizeMode::ResizeAndFill,
            other => panic!("{other}"),
        };
        let (w, h) = parse_size(parts[3]);
        let got = resize_image(mode, src, w, h).unwrap();
        assert_eq!(diff(&got, expected), (0, 0), "{name}");
        checked += 1;
    }
    assert_eq!(checked, 12);
}

#[test]
fn bad_sizes_are_errors_not_panics() {
    let img = RgbImage::new(4, 4, vec![7; 48]).unwrap();
    assert!(resize(&img, 0, 4, Filter::Lanczos).is_err());
    assert!(resize_box(&img, 4, 4, Filter::Bicubic, (0.0, 0.0, 5.0, 4.0)).is_err());
    assert!(resize_image(ResizeMode::CropAndResize, &img, 4, 0).is_err());
}
