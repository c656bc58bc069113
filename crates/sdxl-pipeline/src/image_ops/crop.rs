//! "Only masked" inpainting regions (SPEC §13): A1111 1.10 `masking.get_crop_region_v2` and
//! `masking.expand_crop_region`, and Pillow `Image.crop`.

use crate::output::{GrayImage, RgbImage};

/// A crop box in Pillow's convention: left/top inclusive, right/bottom exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropRegion {
    pub x1: u32,
    pub y1: u32,
    pub x2: u32,
    pub y2: u32,
}

impl CropRegion {
    /// `x2 − x1` (0 when the box is inverted).
    pub fn width(&self) -> u32 {
        self.x2.saturating_sub(self.x1)
    }

    /// `y2 − y1` (0 when the box is inverted).
    pub fn height(&self) -> u32 {
        self.y2.saturating_sub(self.y1)
    }

    /// True when the box holds no pixel.
    pub fn is_empty(&self) -> bool {
        self.width() == 0 || self.height() == 0
    }

    /// A1111's `paste_to` / `paste_loc`: `(x1, y1, x2 − x1, y2 − y1)`.
    pub fn paste_loc(&self) -> (u32, u32, u32, u32) {
        (self.x1, self.y1, self.width(), self.height())
    }
}

/// A1111 1.10 `masking.get_crop_region_v2(mask, pad)`: Pillow `getbbox()` of the non-zero
/// pixels, grown by `padding` on every side and clipped to the mask; `None` for an all-black
/// (or empty) mask.
pub fn crop_region(mask: &GrayImage, padding: u32) -> Option<CropRegion> {
    let (w, h) = (mask.width as usize, mask.height as usize);
    if w == 0 || h == 0 || mask.pixels.len() != w * h {
        return None;
    }
    let (mut x1, mut y1, mut x2, mut y2) = (w, h, 0, 0);
    for (y, row) in mask.pixels.chunks_exact(w).enumerate() {
        let Some(first) = row.iter().position(|&v| v != 0) else {
            continue;
        };
        let last = row.iter().rposition(|&v| v != 0).unwrap_or(first);
        x1 = x1.min(first);
        x2 = x2.max(last + 1);
        y1 = y1.min(y);
        y2 = y + 1;
    }
    if x2 == 0 {
        return None;
    }
    let (x1, y1, x2, y2) = (x1 as u32, y1 as u32, x2 as u32, y2 as u32);
    Some(CropRegion {
        x1: x1.saturating_sub(padding),
        y1: y1.saturating_sub(padding),
        x2: x2.saturating_add(padding).min(mask.width),
        y2: y2.saturating_add(padding).min(mask.height),
    })
}

/// A1111 1.10 `masking.expand_crop_region`: grows `r` (in an image of `image_width` ×
/// `image_height`) to the aspect ratio of the processing size, centred, shifted back inside
/// the image and clipped. Python's float ratios, `int()` truncation and floor division are
/// reproduced. An empty region or a zero processing size (a `ZeroDivisionError` in A1111) is
/// returned unchanged.
pub fn expand_crop_region(
    r: CropRegion,
    processing_width: u32,
    processing_height: u32,
    image_width: u32,
    image_height: u32,
) -> CropRegion {
    if r.is_empty() || processing_width == 0 || processing_height == 0 {
        return r;
    }
    let (mut x1, mut y1, mut x2, mut y2) = (
        i64::from(r.x1),
        i64::from(r.y1),
        i64::from(r.x2),
        i64::from(r.y2),
    );
    let (iw, ih) = (i64::from(image_width), i64::from(image_height));
    let ratio_crop_region = (x2 - x1) as f64 / (y2 - y1) as f64;
    let ratio_processing = f64::from(processing_width) / f64::from(processing_height);
    if ratio_crop_region > ratio_processing {
        let desired_height = (x2 - x1) as f64 / ratio_processing;
        (y1, y2) = widen_axis(y1, y2, desired_height, ih);
    } else {
        let desired_width = (y2 - y1) as f64 * ratio_processing;
        (x1, x2) = widen_axis(x1, x2, desired_width, iw);
    }
    let c = |v: i64| v.clamp(0, i64::from(u32::MAX)) as u32;
    CropRegion {
        x1: c(x1),
        y1: c(y1),
        x2: c(x2),
        y2: c(y2),
    }
}

/// Pillow `Image.crop(box)` on `channels`-byte pixels: the box may reach outside the image
/// (those pixels are 0); an inverted box gives an empty image.
fn crop_bytes(pixels: &[u8], w: u32, h: u32, channels: usize, r: CropRegion) -> Vec<u8> {
    let (cw, ch) = (r.width() as usize, r.height() as usize);
    let mut out = vec![0u8; cw * ch * channels];
    if pixels.len() != w as usize * h as usize * channels {
        return out;
    }
    for y in 0..ch {
        let sy = r.y1 as usize + y;
        if sy >= h as usize {
            break;
        }
        let sx0 = r.x1 as usize;
        if sx0 >= w as usize {
            break;
        }
        let n = cw.min(w as usize - sx0);
        let src = (sy * w as usize + sx0) * channels;
        let dst = y * cw * channels;
        out[dst..dst + n * channels].copy_from_slice(&pixels[src..src + n * channels]);
    }
    out
}

/// Pillow `Image.crop(box)` of an RGB image (see [`CropRegion`]; outside pixels are black).
pub fn crop_rgb(img: &RgbImage, r: CropRegion) -> RgbImage {
    RgbImage {
        width: r.width(),
        height: r.height(),
        pixels: crop_bytes(&img.pixels, img.width, img.height, 3, r),
    }
}

/// Pillow `Image.crop(box)` of an `L` image (see [`CropRegion`]; outside pixels are 0).
pub fn crop_gray(img: &GrayImage, r: CropRegion) -> GrayImage {
    GrayImage {
        width: r.width(),
        height: r.height(),
        pixels: crop_bytes(&img.pixels, img.width, img.height, 1, r),
    }
}

/// One axis of `expand_crop_region`: widen `[lo, hi)` to `desired` (Python `int` of the float
/// difference, half on each side with floor division), shift it back inside `[0, limit]`.
fn widen_axis(mut lo: i64, mut hi: i64, desired: f64, limit: i64) -> (i64, i64) {
    let diff = (desired - (hi - lo) as f64) as i64;
    lo -= diff.div_euclid(2);
    hi += diff - diff.div_euclid(2);
    if hi >= limit {
        let d = hi - limit;
        hi -= d;
        lo -= d;
    }
    if lo < 0 {
        hi -= lo;
        lo = 0;
    }
    if hi >= limit {
        hi = limit;
    }
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degenerate_inputs() {
        let empty = GrayImage::new(0, 0, vec![]).unwrap();
        assert_eq!(crop_region(&empty, 4), None);
        let r = CropRegion {
            x1: 5,
            y1: 5,
            x2: 5,
            y2: 9,
        };
        assert_eq!(expand_crop_region(r, 64, 64, 10, 10), r);
        let full = CropRegion {
            x1: 0,
            y1: 0,
            x2: 4,
            y2: 4,
        };
        assert_eq!(expand_crop_region(full, 0, 64, 10, 10), full);
        let inverted = CropRegion {
            x1: 3,
            y1: 0,
            x2: 1,
            y2: 2,
        };
        let img = RgbImage::new(4, 4, vec![7; 48]).unwrap();
        assert_eq!(crop_rgb(&img, inverted).pixels.len(), 0);
    }
}
