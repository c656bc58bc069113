//! Inpainting fill mode 0 "fill" (SPEC §13): A1111 1.10 `masking.fill`, which smears the
//! unmasked colours into the masked area with Pillow 9.5's `ImageFilter.GaussianBlur` (three
//! extended box blurs, `libImaging/BoxBlur.c`) at decreasing radii.

use super::composite::{alpha_composite, paste_with_inverted_mask, unpremultiply};
use crate::output::{GrayImage, RgbImage};

/// A1111's `(radius, repeats)` schedule.
const SCHEDULE: [(u32, usize); 6] = [(256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)];

/// A1111 1.10 `masking.fill(image, mask)`: the image premultiplied into `RGBa` with the inverted
/// mask as alpha (`paste(mask=ImageOps.invert(mask))`), then for each `(radius, repeats)` in
/// `[(256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)]` Pillow `GaussianBlur(radius)` of that
/// `RGBa` image, `convert('RGBA')`, `alpha_composite` onto an accumulator (initially transparent
/// black) `repeats` times; finally `convert("RGB")`. Mask pixels beyond the mask's extent count
/// as 0 (kept).
pub fn fill_masked(image: &RgbImage, mask: &GrayImage) -> RgbImage {
    let (w, h) = (image.width as usize, image.height as usize);
    if w == 0 || h == 0 || image.pixels.len() != w * h * 3 {
        return image.clone();
    }
    let masked = paste_with_inverted_mask(image, mask);
    let mut acc = vec![0u8; w * h * 4];
    for (radius, repeats) in SCHEDULE {
        let mut blurred = gaussian_blur(&masked, w, h, radius as f32);
        unpremultiply(&mut blurred);
        for _ in 0..repeats {
            alpha_composite(&mut acc, &blurred);
        }
    }
    RgbImage {
        width: image.width,
        height: image.height,
        pixels: acc
            .chunks_exact(4)
            .flat_map(|p| [p[0], p[1], p[2]])
            .collect(),
    }
}

/// Pillow 9.5 `ImagingGaussianBlur(radius, passes=3)` on a 4-channel buffer: the extended box
/// radius of Gwosdek et al. computed in C `float` as Pillow does, then `ImagingBoxBlur`.
pub(crate) fn gaussian_blur(px: &[u8], w: usize, h: usize, radius: f32) -> Vec<u8> {
    const PASSES: u32 = 3;
    let sigma2: f32 = radius * radius / PASSES as f32;
    let big_l: f32 = (12.0 * f64::from(sigma2) + 1.0).sqrt() as f32;
    let l: f32 = ((f64::from(big_l) - 1.0) / 2.0).floor() as f32;
    let mut a: f32 = (2.0 * l + 1.0) * (l * (l + 1.0) - 3.0 * sigma2);
    a /= 6.0 * (sigma2 - (l + 1.0) * (l + 1.0));
    box_blur(px, w, h, l + a, PASSES)
}

/// Pillow 9.5 `ImagingBoxBlur`: `n` horizontal passes, transpose, `n` passes, transpose back.
fn box_blur(px: &[u8], w: usize, h: usize, radius: f32, n: u32) -> Vec<u8> {
    let mut img = px.to_vec();
    for _ in 0..n {
        horizontal_box_blur(&mut img, w, radius);
    }
    let mut t = transpose(&img, w, h);
    for _ in 0..n {
        horizontal_box_blur(&mut t, h, radius);
    }
    transpose(&t, h, w)
}

/// Swaps rows and columns of a `w`×`h` 4-channel buffer.
fn transpose(px: &[u8], w: usize, h: usize) -> Vec<u8> {
    let mut out = vec![0u8; px.len()];
    for y in 0..h {
        for x in 0..w {
            let s = (y * w + x) * 4;
            let d = (x * h + y) * 4;
            out[d..d + 4].copy_from_slice(&px[s..s + 4]);
        }
    }
    out
}

/// Pillow 9.5 `ImagingHorizontalBoxBlur` (in place, line by line), with its `float` weights
/// and `UINT32` accumulators (wrapping, as in C).
fn horizontal_box_blur(px: &mut [u8], w: usize, float_radius: f32) {
    if w == 0 {
        return;
    }
    let radius = float_radius as i32;
    let ww = ((1u32 << 24) as f32 / (float_radius * 2.0 + 1.0)) as u32;
    let fw = (1u32 << 24).wrapping_sub(((radius * 2 + 1) as u32).wrapping_mul(ww)) / 2;
    let xsize = w as i32;
    let edge_a = (radius + 1).min(xsize);
    let edge_b = (xsize - radius - 1).max(0);
    let mut line = vec![0u8; w * 4];
    for row in px.chunks_exact_mut(w * 4) {
        line_box_blur(&mut line, row, xsize - 1, radius, edge_a, edge_b, ww, fw);
        row.copy_from_slice(&line);
    }
}

/// Pillow 9.5 `ImagingLineBoxBlur32` for one line of 4-channel pixels.
#[allow(clippy::too_many_arguments)]
fn line_box_blur(
    out: &mut [u8],
    input: &[u8],
    lastx: i32,
    radius: i32,
    edge_a: i32,
    edge_b: i32,
    ww: u32,
    fw: u32,
) {
    let px = |x: i32, c: usize| u32::from(input[x as usize * 4 + c]);
    let mut acc = [0u32; 4];
    for (c, a) in acc.iter_mut().enumerate() {
        *a = px(0, c).wrapping_mul((radius + 1) as u32);
        for x in 0..edge_a - 1 {
            *a = a.wrapping_add(px(x, c));
        }
        *a = a.wrapping_add(px(lastx, c).wrapping_mul((radius - edge_a + 1) as u32));
    }
    let mut step = |x: i32, sub: i32, add: i32, left: i32, right: i32| {
        for (c, a) in acc.iter_mut().enumerate() {
            *a = a.wrapping_add(px(add, c)).wrapping_sub(px(sub, c));
            let bulk = a
                .wrapping_mul(ww)
                .wrapping_add((px(left, c) + px(right, c)).wrapping_mul(fw));
            out[x as usize * 4 + c] = (bulk.wrapping_add(1 << 23) >> 24) as u8;
        }
    };
    if edge_a <= edge_b {
        for x in 0..edge_a {
            step(x, 0, x + radius, 0, x + radius + 1);
        }
        for x in edge_a..edge_b {
            step(
                x,
                x - radius - 1,
                x + radius,
                x - radius - 1,
                x + radius + 1,
            );
        }
        for x in edge_b..=lastx {
            step(x, x - radius - 1, lastx, x - radius - 1, lastx);
        }
    } else {
        for x in 0..edge_b {
            step(x, 0, x + radius, 0, x + radius + 1);
        }
        for x in edge_b..edge_a {
            step(x, 0, lastx, 0, lastx);
        }
        for x in edge_a..=lastx {
            step(x, x - radius - 1, lastx, x - radius - 1, lastx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn radius_zero_is_identity_and_empty_images_pass() {
        let px: Vec<u8> = (0..5 * 3 * 4).map(|i| (i * 37 % 256) as u8).collect();
        assert_eq!(gaussian_blur(&px, 5, 3, 0.0), px);
        let empty = RgbImage::new(0, 0, vec![]).unwrap();
        let m = GrayImage::new(0, 0, vec![]).unwrap();
        assert_eq!(fill_masked(&empty, &m), empty);
    }
}
