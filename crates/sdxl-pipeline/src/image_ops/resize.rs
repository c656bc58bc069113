//! Pillow-compatible `Image.resize` for RGB u8 images (Pillow 13, `reducing_gap=None`): the
//! separable convolution of `libImaging/Resample.c` (filter support widened by the downscale
//! factor, coefficients normalised to sum 1 and then rounded to 22-bit fixed point, horizontal
//! pass into an 8-bit image, then vertical) and, for `Nearest`, the affine scaling of
//! `libImaging/Geometry.c` (`ImagingScaleAffine`). Bit-exact with Pillow by construction.

use crate::output::RgbImage;
use crate::{PipelineError, Result};

/// Pillow's resampling filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// `Image.NEAREST`.
    Nearest,
    /// `Image.BILINEAR` (triangle, support 1).
    Bilinear,
    /// `Image.BICUBIC` (a = −0.5, support 2; Pillow's default for `resize`).
    Bicubic,
    /// `Image.LANCZOS` (windowed sinc, support 3).
    Lanczos,
}

/// Fixed-point bits of the 8-bit coefficients (`PRECISION_BITS = 32 - 8 - 2`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bilinear(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

fn lanczos(x: f64) -> f64 {
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// A separable filter: its function and its support radius.
type Kernel = (fn(f64) -> f64, f64);

impl Filter {
    /// The filter function and its support, or `None` for nearest.
    fn kernel(self) -> Option<Kernel> {
        match self {
            Self::Nearest => None,
            Self::Bilinear => Some((bilinear, 1.0)),
            Self::Bicubic => Some((bicubic, 2.0)),
            Self::Lanczos => Some((lanczos, 3.0)),
        }
    }
}

/// The source rectangle `(x0, y0, x1, y1)` of Pillow's `box` argument (floats, as Pillow).
pub type Box4 = (f32, f32, f32, f32);

/// The taps of one axis: per output pixel the first input index, the tap count and `ksize`
/// fixed-point weights (`precompute_coeffs` + `normalize_coeffs_8bpc`).
struct Coeffs {
    ksize: usize,
    bounds: Vec<(usize, usize)>,
    kk: Vec<i32>,
}

fn precompute_coeffs(
    in_size: usize,
    in0: f32,
    in1: f32,
    out_size: usize,
    filter: fn(f64) -> f64,
    filter_support: f64,
) -> Coeffs {
    let scale = f64::from(in1 - in0) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter_support * filterscale;
    let ksize = (support.ceil() as usize) * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut kk = vec![0i32; out_size * ksize];
    let mut k = vec![0f64; ksize];
    for xx in 0..out_size {
        let center = f64::from(in0) + (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64);
        let n = (xmax - xmin).max(0) as usize;
        let mut ww = 0.0;
        k.iter_mut().for_each(|v| *v = 0.0);
        for (x, kx) in k.iter_mut().enumerate().take(n) {
            let w = filter((x as f64 + xmin as f64 - center + 0.5) * ss);
            *kx = w;
            ww += w;
        }
        if ww != 0.0 {
            k.iter_mut().take(n).for_each(|v| *v /= ww);
        }
        let scale_fp = f64::from(1u32 << PRECISION_BITS);
        for (x, v) in k.iter().enumerate() {
            kk[xx * ksize + x] = if *v < 0.0 {
                (-0.5 + v * scale_fp) as i32
            } else {
                (0.5 + v * scale_fp) as i32
            };
        }
        bounds.push((xmin as usize, n));
    }
    Coeffs { ksize, bounds, kk }
}

fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// Resizes `img` to `width`×`height` exactly as Pillow's `img.resize((width, height), filter)`.
pub fn resize(img: &RgbImage, width: u32, height: u32, filter: Filter) -> Result<RgbImage> {
    let full = (0.0, 0.0, img.width as f32, img.height as f32);
    resize_box(img, width, height, filter, full)
}

/// Pillow's `img.resize((width, height), filter, box=src)`: only the `src` rectangle of the
/// input is resampled (A1111's "resize and fill" stretches one edge row/column this way).
pub fn resize_box(
    img: &RgbImage,
    width: u32,
    height: u32,
    filter: Filter,
    src: Box4,
) -> Result<RgbImage> {
    if width == 0 || height == 0 || img.width == 0 || img.height == 0 {
        return Err(PipelineError::InvalidInput(format!(
            "cannot resize a {}x{} image to {width}x{height}",
            img.width, img.height
        )));
    }
    let (x0, y0, x1, y1) = src;
    let (iw, ih) = (img.width as f32, img.height as f32);
    let inside = |a: f32, b: f32, size: f32| (0.0..=b).contains(&a) && b <= size;
    if !(inside(x0, x1, iw) && inside(y0, y1, ih)) {
        return Err(PipelineError::InvalidInput(format!(
            "resize box {src:?} is outside the {}x{} image",
            img.width, img.height
        )));
    }
    if width == img.width && height == img.height && src == (0.0, 0.0, iw, ih) {
        return Ok(img.clone());
    }
    match filter.kernel() {
        None => Ok(nearest(img, width, height, src)),
        Some((f, support)) => Ok(convolve(img, width, height, src, f, support)),
    }
}

/// `ImagingScaleAffine`: source coordinates accumulated in doubles from the pixel centres.
fn nearest(img: &RgbImage, width: u32, height: u32, src: Box4) -> RgbImage {
    let (x0, y0, x1, y1) = src;
    let a0 = f64::from(x1 - x0) / f64::from(width);
    let a4 = f64::from(y1 - y0) / f64::from(height);
    let coord = |v: f64| if v < 0.0 { -1 } else { v as i64 };
    let (iw, ih) = (i64::from(img.width), i64::from(img.height));
    let mut xin = Vec::with_capacity(width as usize);
    let mut xo = f64::from(x0) + a0 * 0.5;
    for _ in 0..width {
        xin.push(coord(xo));
        xo += a0;
    }
    let mut out = vec![0u8; width as usize * height as usize * 3];
    let mut yo = f64::from(y0) + a4 * 0.5;
    for y in 0..height as usize {
        let yi = coord(yo);
        if (0..ih).contains(&yi) {
            for (x, &xi) in xin.iter().enumerate() {
                if (0..iw).contains(&xi) {
                    let s = (yi as usize * img.width as usize + xi as usize) * 3;
                    let d = (y * width as usize + x) * 3;
                    out[d..d + 3].copy_from_slice(&img.pixels[s..s + 3]);
                }
            }
        }
        yo += a4;
    }
    RgbImage {
        width,
        height,
        pixels: out,
    }
}

/// `ImagingResampleInner`: horizontal pass (only the rows the vertical pass reads) into an
/// 8-bit image, then the vertical pass; a pass whose axis is unchanged is skipped.
fn convolve(
    img: &RgbImage,
    width: u32,
    height: u32,
    src: Box4,
    f: fn(f64) -> f64,
    support: f64,
) -> RgbImage {
    let (x0, y0, x1, y1) = src;
    let (w_out, h_out) = (width as usize, height as usize);
    let need_h = width != img.width || x0 != 0.0 || x1 != width as f32;
    let need_v = height != img.height || y0 != 0.0 || y1 != height as f32;
    let horiz = precompute_coeffs(img.width as usize, x0, x1, w_out, f, support);
    let mut vert = precompute_coeffs(img.height as usize, y0, y1, h_out, f, support);

    let mut cur = img.clone();
    if need_h {
        let first = vert.bounds.first().map_or(0, |b| b.0);
        let last = vert.bounds.last().map_or(0, |b| b.0 + b.1);
        for b in &mut vert.bounds {
            b.0 -= first;
        }
        let rows = last - first;
        let mut out = vec![0u8; w_out * rows * 3];
        let stride = img.width as usize * 3;
        for yy in 0..rows {
            let row = &img.pixels[(yy + first) * stride..(yy + first + 1) * stride];
            for xx in 0..w_out {
                let (xmin, n) = horiz.bounds[xx];
                let k = &horiz.kk[xx * horiz.ksize..xx * horiz.ksize + n];
                let mut ss = [1i64 << (PRECISION_BITS - 1); 3];
                for (x, &kx) in k.iter().enumerate() {
                    let p = (x + xmin) * 3;
                    for (s, &v) in ss.iter_mut().zip(&row[p..p + 3]) {
                        *s += i64::from(v) * i64::from(kx);
                    }
                }
                let d = (yy * w_out + xx) * 3;
                for (o, s) in out[d..d + 3].iter_mut().zip(ss) {
                    *o = clip8(s);
                }
            }
        }
        cur = RgbImage {
            width,
            height: rows as u32,
            pixels: out,
        };
    }
    if need_v {
        let w = cur.width as usize;
        let mut out = vec![0u8; w * h_out * 3];
        for yy in 0..h_out {
            let (ymin, n) = vert.bounds[yy];
            let k = &vert.kk[yy * vert.ksize..yy * vert.ksize + n];
            for xx in 0..w {
                let mut ss = [1i64 << (PRECISION_BITS - 1); 3];
                for (y, &ky) in k.iter().enumerate() {
                    let p = ((y + ymin) * w + xx) * 3;
                    for (s, &v) in ss.iter_mut().zip(&cur.pixels[p..p + 3]) {
                        *s += i64::from(v) * i64::from(ky);
                    }
                }
                let d = (yy * w + xx) * 3;
                for (o, s) in out[d..d + 3].iter_mut().zip(ss) {
                    *o = clip8(s);
                }
            }
        }
        cur = RgbImage {
            width: cur.width,
            height,
            pixels: out,
        };
    }
    cur
}
