//! Inpainting masks (SPEC §13): inversion, A1111's mask blur (OpenCV's bit-exact 8-bit
//! `GaussianBlur`) and the doubled mask of the non-"only masked" overlay.

use crate::output::GrayImage;

/// Pillow `ImageOps.invert` of an `L` image: `255 − v`.
pub fn invert_mask(m: &GrayImage) -> GrayImage {
    GrayImage {
        width: m.width,
        height: m.height,
        pixels: m.pixels.iter().map(|&v| 255 - v).collect(),
    }
}

/// A1111 1.10 `StableDiffusionProcessingImg2Img.init`'s mask blur: when `blur_x > 0`,
/// `cv2.GaussianBlur(mask, (k, 1), blur_x)` with `k = 2·int(2.5·blur_x + 0.5) + 1`, then when
/// `blur_y > 0` the same with `(1, k)` and sigma `blur_y`.
///
/// A port of OpenCV's 8-bit path (`smooth.dispatch.cpp` `GaussianBlur` →
/// `createGaussianKernels` with `ufixedpoint16` kernels from `getGaussianKernelBitExact` +
/// `getGaussianKernelFixedPoint_ED`, then `smooth.simd.hpp` `GaussianBlurFixedPoint`): the
/// kernel is quantised to 8 fractional bits with error diffusion, each output is
/// `(Σ kᵢ·srcᵢ + 128) >> 8` in exact integer arithmetic, and borders are `BORDER_REFLECT_101`
/// (reflected as often as needed when the kernel is wider than the image). A side of length 1
/// is copied, as OpenCV does. Cost is `width·height·k` per pass. A buffer whose length does not
/// match its size is returned unchanged.
pub fn blur_mask(m: &GrayImage, blur_x: u32, blur_y: u32) -> GrayImage {
    let mut out = m.clone();
    if m.pixels.len() != m.width as usize * m.height as usize {
        return out;
    }
    if blur_x > 0 && m.width > 1 {
        let k = opencv_fixed_kernel(a1111_kernel_size(blur_x), f64::from(blur_x));
        out.pixels = convolve(&out.pixels, m.width as usize, m.height as usize, &k, true);
    }
    if blur_y > 0 && m.height > 1 {
        let k = opencv_fixed_kernel(a1111_kernel_size(blur_y), f64::from(blur_y));
        out.pixels = convolve(&out.pixels, m.width as usize, m.height as usize, &k, false);
    }
    out
}

/// A1111's kernel size for a blur radius: `2·int(2.5·r + 0.5) + 1`.
fn a1111_kernel_size(r: u32) -> usize {
    2 * ((2.5 * f64::from(r) + 0.5) as usize) + 1
}

/// OpenCV `getGaussianKernelBitExact(n, sigma)` (σ > 0) quantised by
/// `getGaussianKernelFixedPoint_ED(…, 8)`: odd `n`, raw `ufixedpoint16` values summing to 256.
fn opencv_fixed_kernel(n: usize, sigma: f64) -> Vec<u32> {
    if n <= 1 {
        return vec![256];
    }
    let half = (n - 1) / 2;
    let scale2x = -0.125 / (sigma * sigma);
    let values: Vec<f64> = (0..half)
        .map(|i| {
            let x = 1 - n as i64 + 2 * i as i64;
            ((x * x) as f64 * scale2x).exp()
        })
        .collect();
    let mut sum = 0.0;
    for v in &values {
        sum += v;
    }
    sum *= 2.0;
    sum += 1.0;
    let mul1 = 1.0 / sum;
    let mut out = vec![0u32; n];
    let mut err = 0.0;
    let mut total = 0i64;
    for (i, v) in values.iter().enumerate() {
        let adj = v * mul1 * 256.0 + err;
        let q = adj.round_ties_even();
        err = adj - q;
        let q = q as i64;
        out[i] = q as u32;
        out[n - 1 - i] = q as u32;
        total += q;
    }
    out[half] = (256 - 2 * total).max(0) as u32;
    out
}

/// OpenCV `borderInterpolate(p, len, BORDER_REFLECT_101)`.
fn reflect101(mut p: i64, len: i64) -> usize {
    if len <= 1 {
        return 0;
    }
    while p < 0 || p >= len {
        p = if p < 0 { -p } else { 2 * len - 2 - p };
    }
    p as usize
}

/// One separable pass of `kernel` along rows (`horizontal`) or columns, rounding as OpenCV's
/// `ufixedpoint16` → `uint8_t` cast.
fn convolve(src: &[u8], w: usize, h: usize, kernel: &[u32], horizontal: bool) -> Vec<u8> {
    let r = kernel.len() / 2;
    let (len, lines) = if horizontal { (w, h) } else { (h, w) };
    // Source position of every sample of the line extended by `r` on both sides.
    let index: Vec<usize> = (0..(len + 2 * r) as i64)
        .map(|p| reflect101(p - r as i64, len as i64))
        .collect();
    let mut out = vec![0u8; src.len()];
    let mut ext = vec![0u32; index.len()];
    for line in 0..lines {
        let at = |i: usize| {
            if horizontal {
                line * w + i
            } else {
                i * w + line
            }
        };
        for (e, &i) in ext.iter_mut().zip(&index) {
            *e = u32::from(src[at(i)]);
        }
        for x in 0..len {
            let acc: u32 = ext[x..x + kernel.len()]
                .iter()
                .zip(kernel)
                .map(|(&s, &k)| s * k)
                .sum();
            out[at(x)] = ((acc + 128) >> 8).min(255) as u8;
        }
    }
    out
}

/// The overlay mask when not inpainting "only masked": A1111's
/// `np.clip(mask.astype(np.float32) * 2, 0, 255).astype(np.uint8)`.
pub fn mask_for_overlay_full(mask: &GrayImage) -> GrayImage {
    GrayImage {
        width: mask.width,
        height: mask.height,
        pixels: mask
            .pixels
            .iter()
            .map(|&v| (u16::from(v) * 2).min(255) as u8)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_sum_to_one_in_fixed_point() {
        for r in [1u32, 2, 4, 8, 16, 64] {
            let k = opencv_fixed_kernel(a1111_kernel_size(r), f64::from(r));
            assert_eq!(k.iter().sum::<u32>(), 256, "r={r}");
            assert_eq!(k.len() % 2, 1);
        }
        assert_eq!(a1111_kernel_size(4), 21);
    }

    #[test]
    fn reflect101_repeats_for_wide_kernels() {
        assert_eq!(reflect101(-1, 5), 1);
        assert_eq!(reflect101(5, 5), 3);
        assert_eq!(reflect101(-9, 5), 1);
        assert_eq!(reflect101(13, 5), 3);
        assert_eq!(reflect101(-3, 1), 0);
    }

    #[test]
    fn empty_and_thin_masks_do_not_panic() {
        let empty = GrayImage::new(0, 0, vec![]).unwrap();
        assert_eq!(blur_mask(&empty, 4, 4), empty);
        let col = GrayImage::new(1, 3, vec![0, 255, 0]).unwrap();
        assert_eq!(blur_mask(&col, 4, 0), col);
    }
}
