//! The inpainting overlay (SPEC §13): A1111 1.10 `processing.py`'s `overlay_images` entry and
//! `apply_overlay` / `uncrop`, with Pillow 9.5's integer rounding for `paste(mask=…)`, `RGBa`
//! (premultiplied) ↔ `RGBA` conversions and `alpha_composite`.

use super::resize_mode::{resize_image, ResizeMode};
use crate::output::{GrayImage, RgbImage, RgbaImage};
use crate::{PipelineError, Result};

/// Pillow's `DIV255`: `a / 255` rounded, as `((a + 128) >> 8 + a + 128) >> 8`.
pub(crate) fn div255(a: u32) -> u32 {
    let t = a + 128;
    ((t >> 8) + t) >> 8
}

/// `Image.new('RGBa', size).paste(image.convert("RGBA").convert("RGBa"),
/// mask=ImageOps.invert(mask))`: every channel (alpha 255 included) times `255 − mask`,
/// rounded by `DIV255`. Premultiplied result; mask pixels beyond the mask's extent count as 0.
pub(crate) fn paste_with_inverted_mask(image: &RgbImage, mask: &GrayImage) -> Vec<u8> {
    let (w, h) = (image.width as usize, image.height as usize);
    let mut out = vec![0u8; w * h * 4];
    let mask_ok = mask.pixels.len() == mask.width as usize * mask.height as usize;
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let m = if mask_ok && x < mask.width as usize && y < mask.height as usize {
                mask.pixels[y * mask.width as usize + x]
            } else {
                0
            };
            let keep = 255 - u32::from(m);
            let src = image.pixels.get(i * 3..i * 3 + 3).unwrap_or(&[0, 0, 0]);
            for (c, &v) in src.iter().chain(&[255u8]).enumerate() {
                out[i * 4 + c] = div255(u32::from(v) * keep) as u8;
            }
        }
    }
    out
}

/// Pillow `convert('RGBA')` of an `RGBa` buffer (`rgba2rgbA`): `255·c / a` truncated and
/// clipped, unchanged where `a` is 0 or 255. In place.
pub(crate) fn unpremultiply(px: &mut [u8]) {
    for p in px.chunks_exact_mut(4) {
        let a = u32::from(p[3]);
        if a != 0 && a != 255 {
            for c in &mut p[..3] {
                *c = (255 * u32::from(*c) / a).min(255) as u8;
            }
        }
    }
}

/// Pillow 9.5 `ImagingAlphaComposite(dst, src)` (`Image.alpha_composite`): `src` over `dst`,
/// both straight `RGBA`, 7 extra bits of precision; `dst` is overwritten with the result.
pub(crate) fn alpha_composite(dst: &mut [u8], src: &[u8]) {
    const PRECISION_BITS: u32 = 7;
    for (d, s) in dst.chunks_exact_mut(4).zip(src.chunks_exact(4)) {
        let sa = u32::from(s[3]);
        if sa == 0 {
            continue;
        }
        let blend = u32::from(d[3]) * (255 - sa);
        let outa255 = sa * 255 + blend;
        let coef1 = sa * 255 * 255 * (1 << PRECISION_BITS) / outa255;
        let coef2 = 255 * (1 << PRECISION_BITS) - coef1;
        for c in 0..3 {
            let tmp = u32::from(s[c]) * coef1 + u32::from(d[c]) * coef2;
            let t = tmp + (0x80 << PRECISION_BITS);
            d[c] = ((((t >> 8) + t) >> 8) >> PRECISION_BITS) as u8;
        }
        let t = outa255 + 0x80;
        d[3] = (((t >> 8) + t) >> 8) as u8;
    }
}

/// One entry of A1111 1.10's `p.overlay_images` (`StableDiffusionProcessingImg2Img.init`):
/// `image_masked = Image.new('RGBa', size); image_masked.paste(image.convert("RGBA")
/// .convert("RGBa"), mask=ImageOps.invert(mask_for_overlay.convert('L')));
/// image_masked.convert('RGBA')` — the original image, transparent where the mask is white.
/// `mask_for_overlay` should have the image's size (A1111 resizes it first); pixels it does not
/// cover count as 0 (fully kept).
pub fn overlay_for(image: &RgbImage, mask_for_overlay: &GrayImage) -> RgbaImage {
    let mut pixels = paste_with_inverted_mask(image, mask_for_overlay);
    unpremultiply(&mut pixels);
    RgbaImage {
        width: image.width,
        height: image.height,
        pixels,
    }
}

/// A1111 1.10 `processing.apply_overlay(image, paste_loc, overlay)` (the composited image):
/// with `paste_loc = (x, y, w, h)`, `uncrop` first — `images.resize_image(1, image, w, h)`
/// (crop and resize, Lanczos) pasted opaque at `(x, y)` into a transparent `RGBA` of the
/// overlay's size; then `alpha_composite(overlay)` on top and `convert('RGB')` (alpha dropped,
/// so pixels nothing covers are black). Without `paste_loc` the image must have the overlay's
/// size.
pub fn apply_overlay(
    image: &RgbImage,
    paste_loc: Option<(u32, u32, u32, u32)>,
    overlay: &RgbaImage,
) -> Result<RgbImage> {
    let (ow, oh) = (overlay.width as usize, overlay.height as usize);
    if overlay.pixels.len() != ow * oh * 4 {
        return Err(PipelineError::Image(format!(
            "overlay buffer of {} bytes does not match {ow}x{oh}",
            overlay.pixels.len()
        )));
    }
    let mut base = match paste_loc {
        Some((x, y, w, h)) => {
            let resized = resize_image(ResizeMode::CropAndResize, image, w, h)?;
            let mut base = vec![0u8; ow * oh * 4];
            for sy in 0..resized.height as usize {
                let dy = y as usize + sy;
                if dy >= oh {
                    break;
                }
                for sx in 0..resized.width as usize {
                    let dx = x as usize + sx;
                    if dx >= ow {
                        break;
                    }
                    let s = (sy * resized.width as usize + sx) * 3;
                    let d = (dy * ow + dx) * 4;
                    base[d..d + 3].copy_from_slice(&resized.pixels[s..s + 3]);
                    base[d + 3] = 255;
                }
            }
            base
        }
        None => {
            if (image.width, image.height) != (overlay.width, overlay.height)
                || image.pixels.len() != ow * oh * 3
            {
                return Err(PipelineError::Image(format!(
                    "the image is {}x{} but its overlay is {ow}x{oh}",
                    image.width, image.height
                )));
            }
            image
                .pixels
                .chunks_exact(3)
                .flat_map(|p| [p[0], p[1], p[2], 255])
                .collect()
        }
    };
    alpha_composite(&mut base, &overlay.pixels);
    Ok(RgbImage {
        width: overlay.width,
        height: overlay.height,
        pixels: base
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatched_sizes_are_errors_not_panics() {
        let img = RgbImage::new(2, 2, vec![9; 12]).unwrap();
        let ov = RgbaImage::new(3, 2, vec![0; 24]).unwrap();
        assert!(apply_overlay(&img, None, &ov).is_err());
        assert!(apply_overlay(&img, Some((0, 0, 0, 2)), &ov).is_err());
        let out = apply_overlay(&img, Some((2, 1, 2, 2)), &ov).unwrap();
        assert_eq!((out.width, out.height), (3, 2));
        let small_mask = GrayImage::new(1, 1, vec![255]).unwrap();
        let o = overlay_for(&img, &small_mask);
        assert_eq!(&o.pixels[..4], &[0, 0, 0, 0]);
        assert_eq!(&o.pixels[4..8], &[9, 9, 9, 255]);
    }
}
