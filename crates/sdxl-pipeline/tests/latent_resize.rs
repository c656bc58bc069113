//! The six A1111 latent upscale modes against torch 2.15's `F.interpolate`
//! (`tests/fixtures/img2img/latent_resize.safetensors`, `make_img2img_fixtures.py latent`).
//! Tolerance 5e-6 absolute on values of about ±4 (a few f32 ulps): the same f32 weights and index
//! rules; torch's vectorised CPU kernels sum the taps in their own order (measured: ≤ 2.2e-6,
//! bicubic; nearest modes exact).

use candle_core::{Device, Tensor};
use sdxl_pipeline::image_ops::{interpolate, LatentMode};

mod model_support;
use model_support::load_floats;

const TOL: f32 = 5e-6;

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn latent_modes_match_torch_interpolate() {
    let fx = load_floats("img2img/latent_resize.safetensors");
    let x = &fx["x"];
    let mut checked = 0;
    for (name, expected) in &fx {
        let Some((mode, size)) = name.split_once('|') else {
            continue;
        };
        let mode = LatentMode::from_name(mode).unwrap();
        let (h, w) = size.split_once('x').unwrap();
        let (h, w): (usize, usize) = (h.parse().unwrap(), w.parse().unwrap());
        let got = interpolate(x, h, w, mode).unwrap();
        let err = max_abs(&got, expected);
        eprintln!("{name}: {err:e}");
        assert!(err <= TOL, "{name}: max abs err {err}");
        checked += 1;
    }
    assert_eq!(checked, 24);
}

#[test]
fn names_round_trip_and_bad_sizes_fail() {
    for (name, mode) in LatentMode::ALL {
        assert_eq!(LatentMode::from_name(name), Some(mode));
        assert_eq!(mode.name(), name);
    }
    assert_eq!(LatentMode::from_name("Lanczos"), None);
    let x = Tensor::zeros((1, 4, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(interpolate(&x, 0, 3, LatentMode::Bilinear).is_err());
}
