//! A1111 1.10 `modules/images.py` `resize_image` with the default `upscaler_for_img2img`
//! (None ⇒ Pillow LANCZOS): 0 just resize, 1 crop and resize, 2 resize and fill; mode 3
//! ("just resize (latent upscale)") leaves the pixels alone and resizes the latent instead.

use super::resize::{resize, resize_box, Filter};
use crate::output::RgbImage;
use crate::{PipelineError, Result};

/// A1111's `resize_mode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(into = "u8")]
pub enum ResizeMode {
    /// 0: stretch to the target size.
    #[default]
    JustResize,
    /// 1: scale to cover the target, centre-crop.
    CropAndResize,
    /// 2: scale to fit inside the target, fill the bands by stretching the edge rows/columns.
    ResizeAndFill,
    /// 3: encode at the input size, then resize the latent (bilinear) to the target.
    LatentUpscale,
}

impl From<ResizeMode> for u8 {
    fn from(m: ResizeMode) -> u8 {
        match m {
            ResizeMode::JustResize => 0,
            ResizeMode::CropAndResize => 1,
            ResizeMode::ResizeAndFill => 2,
            ResizeMode::LatentUpscale => 3,
        }
    }
}

impl ResizeMode {
    /// The mode for A1111's integer, `None` outside 0..=3.
    pub fn from_index(i: i64) -> Option<Self> {
        match i {
            0 => Some(Self::JustResize),
            1 => Some(Self::CropAndResize),
            2 => Some(Self::ResizeAndFill),
            3 => Some(Self::LatentUpscale),
            _ => None,
        }
    }
}

/// Copies `src` into `dst` with its top-left corner at (`x`, `y`), clipped (Pillow `paste`).
fn paste(dst: &mut RgbImage, src: &RgbImage, x: i64, y: i64) {
    for sy in 0..i64::from(src.height) {
        let dy = y + sy;
        if dy < 0 || dy >= i64::from(dst.height) {
            continue;
        }
        for sx in 0..i64::from(src.width) {
            let dx = x + sx;
            if dx < 0 || dx >= i64::from(dst.width) {
                continue;
            }
            let s = ((sy * i64::from(src.width) + sx) * 3) as usize;
            let d = ((dy * i64::from(dst.width) + dx) * 3) as usize;
            dst.pixels[d..d + 3].copy_from_slice(&src.pixels[s..s + 3]);
        }
    }
}

fn black(width: u32, height: u32) -> RgbImage {
    RgbImage {
        width,
        height,
        pixels: vec![0; width as usize * height as usize * 3],
    }
}

/// `images.resize_image(resize_mode, im, width, height)` for modes 0–2 (mode 3 is treated as 0
/// here: A1111 does not call it for mode 3, see [`ResizeMode::LatentUpscale`]).
pub fn resize_image(mode: ResizeMode, im: &RgbImage, width: u32, height: u32) -> Result<RgbImage> {
    if im.width == 0 || im.height == 0 || width == 0 || height == 0 {
        return Err(PipelineError::InvalidInput(format!(
            "cannot resize a {}x{} image to {width}x{height}",
            im.width, im.height
        )));
    }
    let (w, h) = (i64::from(width), i64::from(height));
    let (iw, ih) = (i64::from(im.width), i64::from(im.height));
    let ratio = f64::from(width) / f64::from(height);
    let src_ratio = f64::from(im.width) / f64::from(im.height);
    let dims = |sw: i64, sh: i64| -> Result<(u32, u32)> {
        match (u32::try_from(sw), u32::try_from(sh)) {
            (Ok(a), Ok(b)) if a > 0 && b > 0 => Ok((a, b)),
            _ => Err(PipelineError::InvalidInput(format!(
                "a {}x{} image is too thin to fit {width}x{height}",
                im.width, im.height
            ))),
        }
    };
    match mode {
        ResizeMode::JustResize | ResizeMode::LatentUpscale => {
            resize(im, width, height, Filter::Lanczos)
        }
        ResizeMode::CropAndResize => {
            let src_w = if ratio > src_ratio { w } else { iw * h / ih };
            let src_h = if ratio <= src_ratio { h } else { ih * w / iw };
            let (sw, sh) = dims(src_w, src_h)?;
            let resized = resize(im, sw, sh, Filter::Lanczos)?;
            let mut res = black(width, height);
            paste(&mut res, &resized, w / 2 - src_w / 2, h / 2 - src_h / 2);
            Ok(res)
        }
        ResizeMode::ResizeAndFill => {
            let src_w = if ratio < src_ratio { w } else { iw * h / ih };
            let src_h = if ratio >= src_ratio { h } else { ih * w / iw };
            let (sw, sh) = dims(src_w, src_h)?;
            let resized = resize(im, sw, sh, Filter::Lanczos)?;
            let mut res = black(width, height);
            paste(&mut res, &resized, w / 2 - src_w / 2, h / 2 - src_h / 2);
            let (rw, rh) = (resized.width as f32, resized.height as f32);
            if ratio < src_ratio {
                let fill = h / 2 - src_h / 2;
                if fill > 0 {
                    let f = fill as u32;
                    let top = resize_box(
                        &resized,
                        width,
                        f,
                        Filter::Bicubic,
                        (0.0, 0.0, w as f32, 0.0),
                    )?;
                    paste(&mut res, &top, 0, 0);
                    let bottom =
                        resize_box(&resized, width, f, Filter::Bicubic, (0.0, rh, w as f32, rh))?;
                    paste(&mut res, &bottom, 0, fill + src_h);
                }
            } else if ratio > src_ratio {
                let fill = w / 2 - src_w / 2;
                if fill > 0 {
                    let f = fill as u32;
                    let left = resize_box(
                        &resized,
                        f,
                        height,
                        Filter::Bicubic,
                        (0.0, 0.0, 0.0, h as f32),
                    )?;
                    paste(&mut res, &left, 0, 0);
                    let right = resize_box(
                        &resized,
                        f,
                        height,
                        Filter::Bicubic,
                        (rw, 0.0, rw, h as f32),
                    )?;
                    paste(&mut res, &right, fill + src_w, 0);
                }
            }
            Ok(res)
        }
    }
}
