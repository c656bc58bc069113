//! Job-supplied images (SPEC §13): bare base64 or `data:` URIs holding PNG, JPEG or WebP, with
//! size limits checked before any pixel buffer is allocated; RGBA is flattened on white as A1111's
//! `images.flatten(img, opts.img2img_background_color)` (Pillow's `paste(mask=img)` rounding).
//! Masks go through A1111's `create_binary_mask` instead ([`decode_mask_field`]).

use std::io::Cursor;

use base64::Engine as _;
use image::{DynamicImage, ImageFormat, ImageReader, Limits};

use crate::output::{GrayImage, RgbImage};
use crate::{PipelineError, Result};

/// Limits on one input image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest encoded file, in bytes (after base64 decoding).
    pub max_bytes: usize,
    /// Largest width and height, in pixels.
    pub max_side: u32,
}

impl Default for ImageLimits {
    /// 30 MB and 4096² (SPEC §13).
    fn default() -> Self {
        Self {
            max_bytes: 30_000_000,
            max_side: 4096,
        }
    }
}

/// Decodes the image in job field `field` (named in every error): bare base64 or a
/// `data:image/...;base64,` URI, PNG/JPEG/WebP, at most `limits`; returns 8-bit RGB.
pub fn decode_image_field(field: &str, text: &str, limits: ImageLimits) -> Result<RgbImage> {
    let (img, _, _) = decode_any(field, text, limits)?;
    Ok(flatten_on_white(img))
}

/// Decodes the inpainting mask in job field `field` exactly as [`decode_image_field`] decodes
/// images, then applies A1111 1.10 `processing.create_binary_mask(image, round=True)` to the
/// image Pillow 9.5 would have opened (`images.read`, which turns a palette PNG with a per-entry
/// `tRNS` table into RGBA): an RGBA image whose alpha is not all 255 becomes its alpha
/// thresholded at `> 128` (255 or 0); anything else is Pillow's `convert('L')` (ITU-R 601 luma
/// `(19595·R + 38470·G + 7471·B + 0x8000) >> 16` for RGB, RGBA and palette images; the gray
/// channel of L/LA; 16-bit gray clipped to 255 as Pillow's mode `I`).
pub fn decode_mask_field(field: &str, text: &str, limits: ImageLimits) -> Result<GrayImage> {
    let (img, format, bytes) = decode_any(field, text, limits)?;
    let mode = match format {
        ImageFormat::Png => png_pillow_mode(&bytes),
        _ => None,
    };
    Ok(binary_mask(img, mode))
}

/// The image of job field `field`, its format and its encoded bytes.
fn decode_any(
    field: &str,
    text: &str,
    limits: ImageLimits,
) -> Result<(DynamicImage, ImageFormat, Vec<u8>)> {
    let bad = |why: String| PipelineError::InvalidInput(format!("`{field}`: {why}"));
    let payload = match text.strip_prefix("data:") {
        Some(rest) => {
            let (head, data) = rest
                .split_once(',')
                .ok_or_else(|| bad("a data: URI without a `,`".into()))?;
            if !head.ends_with(";base64") {
                return Err(bad("only base64 data: URIs are accepted".into()));
            }
            data
        }
        None if text.starts_with("http://") || text.starts_with("https://") => {
            return Err(bad(
                "URLs are not fetched; send the image as base64 or a data: URI".into(),
            ))
        }
        None => text,
    };
    // Base64 grows by 4/3: refuse an over-long text before decoding it.
    if payload.len() / 4 * 3 > limits.max_bytes + 3 {
        return Err(bad(format!(
            "image is larger than {} bytes",
            limits.max_bytes
        )));
    }
    let compact: String = payload.chars().filter(|c| !c.is_whitespace()).collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let bytes = engine
        .decode(compact.as_bytes())
        .map_err(|e| bad(format!("not valid base64 ({e})")))?;
    if bytes.len() > limits.max_bytes {
        return Err(bad(format!(
            "image is {} bytes, over the limit of {}",
            bytes.len(),
            limits.max_bytes
        )));
    }
    let mut reader = ImageReader::new(Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| bad(format!("unreadable image ({e})")))?;
    let format = match reader.format() {
        Some(f @ (ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP)) => f,
        _ => return Err(bad("not a PNG, JPEG or WebP image".into())),
    };
    let mut lim = Limits::default();
    lim.max_image_width = Some(limits.max_side);
    lim.max_image_height = Some(limits.max_side);
    lim.max_alloc = Some(u64::from(limits.max_side) * u64::from(limits.max_side) * 8 + (1 << 20));
    reader.limits(lim);
    let img = reader
        .decode()
        .map_err(|e| bad(format!("cannot decode the image ({e})")))?;
    if img.width() == 0 || img.height() == 0 {
        return Err(bad("the image is empty".into()));
    }
    Ok((img, format, bytes))
}

/// The Pillow 9.5 mode a PNG ends up in after A1111's `images.read`, where it differs from what
/// the `image` crate's expansion suggests (`tRNS` chunks and 16-bit gray).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PngMode {
    /// Gray (any depth but 16) or gray + alpha at 8 bits: `L` / `LA` / `1`, alpha ignored.
    Gray,
    /// 16-bit gray: Pillow mode `I`, `convert('L')` clips at 255.
    Gray16,
    /// 16-bit gray + alpha: Pillow opens it as `RGBA` (`LA;16B`).
    GrayAlpha16,
    /// Truecolour (a `tRNS` colour key is ignored: Pillow keeps `RGB`).
    Rgb,
    /// Palette without `tRNS` or with a single fully transparent entry: `P`, alpha ignored.
    Palette,
    /// Palette with a per-entry `tRNS` table: `images.read` converts it to `RGBA`.
    PaletteAlpha,
    /// Truecolour + alpha: `RGBA`.
    Rgba,
}

/// Reads the PNG header (up to the first IDAT) and classifies it as Pillow 9.5 + A1111's
/// `fix_png_transparency` would; `None` for an unreadable header (the pixels decoded anyway).
fn png_pillow_mode(bytes: &[u8]) -> Option<PngMode> {
    let reader = png::Decoder::new(Cursor::new(bytes)).read_info().ok()?;
    let info = reader.info();
    let sixteen = info.bit_depth == png::BitDepth::Sixteen;
    Some(match info.color_type {
        png::ColorType::Grayscale if sixteen => PngMode::Gray16,
        png::ColorType::Grayscale => PngMode::Gray,
        png::ColorType::GrayscaleAlpha if sixteen => PngMode::GrayAlpha16,
        png::ColorType::GrayscaleAlpha => PngMode::Gray,
        png::ColorType::Rgb => PngMode::Rgb,
        png::ColorType::Rgba => PngMode::Rgba,
        png::ColorType::Indexed => match info.trns.as_deref() {
            Some(t) if !is_simple_palette_trns(t) => PngMode::PaletteAlpha,
            _ => PngMode::Palette,
        },
    })
}

/// Pillow's `_simple_palette` regex `^\xff*\x00\xff*$` (Python's `$` also matches before one
/// trailing `\n`): exactly one fully transparent entry, the others opaque.
fn is_simple_palette_trns(t: &[u8]) -> bool {
    let t = t.strip_suffix(b"\n").unwrap_or(t);
    t.iter().filter(|&&b| b == 0).count() == 1 && t.iter().all(|&b| b == 0 || b == 0xff)
}

/// Pillow's `rgb2l`: ITU-R 601-2 luma in 16.16 fixed point.
fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16) as u8
}

/// `create_binary_mask(image, round=True)` on the decoded pixels; `mode` is the PNG class
/// (`None` for JPEG/WebP, whose channel layout the decoder reports as Pillow does).
fn binary_mask(img: DynamicImage, mode: Option<PngMode>) -> GrayImage {
    let (width, height) = (img.width(), img.height());
    let gray = |pixels: Vec<u8>| GrayImage {
        width,
        height,
        pixels,
    };
    // 16-bit samples: Pillow's `;16B` unpackers keep the high byte.
    let hi = |v: u16| (v >> 8) as u8;
    let alpha_mode = matches!(
        mode,
        Some(PngMode::Rgba | PngMode::PaletteAlpha | PngMode::GrayAlpha16)
    ) || (mode.is_none() && img.color().has_alpha());
    let threshold = |a: &[u8]| -> Option<Vec<u8>> {
        a.iter()
            .any(|&v| v != 255)
            .then(|| a.iter().map(|&v| if v > 128 { 255 } else { 0 }).collect())
    };
    match img {
        DynamicImage::ImageLuma8(im) => gray(im.into_raw()),
        DynamicImage::ImageLumaA8(im) => {
            gray(im.into_raw().chunks_exact(2).map(|p| p[0]).collect())
        }
        DynamicImage::ImageLuma16(im) => {
            gray(im.into_raw().iter().map(|&v| v.min(255) as u8).collect())
        }
        DynamicImage::ImageLumaA16(im) => {
            let raw = im.into_raw();
            if alpha_mode {
                let alpha: Vec<u8> = raw.chunks_exact(2).map(|p| hi(p[1])).collect();
                if let Some(m) = threshold(&alpha) {
                    return gray(m);
                }
                // `LA;16B` unpacks to RGBA (L, L, L, A): its luma is L again.
                return gray(raw.chunks_exact(2).map(|p| hi(p[0])).collect());
            }
            // 16-bit gray with a tRNS key: Pillow mode `I`, clipped.
            gray(raw.chunks_exact(2).map(|p| p[0].min(255) as u8).collect())
        }
        DynamicImage::ImageRgba16(im) => {
            let raw = im.into_raw();
            if alpha_mode {
                let alpha: Vec<u8> = raw.chunks_exact(4).map(|p| hi(p[3])).collect();
                if let Some(m) = threshold(&alpha) {
                    return gray(m);
                }
            }
            gray(
                raw.chunks_exact(4)
                    .map(|p| luma(hi(p[0]), hi(p[1]), hi(p[2])))
                    .collect(),
            )
        }
        DynamicImage::ImageRgb16(im) => gray(
            im.into_raw()
                .chunks_exact(3)
                .map(|p| luma(hi(p[0]), hi(p[1]), hi(p[2])))
                .collect(),
        ),
        DynamicImage::ImageRgba8(im) => {
            let raw = im.into_raw();
            if alpha_mode {
                let alpha: Vec<u8> = raw.chunks_exact(4).map(|p| p[3]).collect();
                if let Some(m) = threshold(&alpha) {
                    return gray(m);
                }
            }
            gray(
                raw.chunks_exact(4)
                    .map(|p| luma(p[0], p[1], p[2]))
                    .collect(),
            )
        }
        other => gray(
            other
                .to_rgb8()
                .into_raw()
                .chunks_exact(3)
                .map(|p| luma(p[0], p[1], p[2]))
                .collect(),
        ),
    }
}

/// A1111 `images.flatten(img, "#ffffff")`: an image with an alpha channel is pasted onto white
/// with its alpha as the mask (`(bg·(255−a) + px·a) / 255` rounded as Pillow's `DIV255`); any
/// other mode is converted to RGB.
fn flatten_on_white(img: DynamicImage) -> RgbImage {
    let (width, height) = (img.width(), img.height());
    let pixels = match img {
        DynamicImage::ImageRgba8(_)
        | DynamicImage::ImageRgba16(_)
        | DynamicImage::ImageRgba32F(_) => {
            let rgba = img.to_rgba8();
            let mut out = Vec::with_capacity(width as usize * height as usize * 3);
            for p in rgba.pixels() {
                let a = u32::from(p[3]);
                for c in 0..3 {
                    let v = 255 * (255 - a) + u32::from(p[c]) * a;
                    let t = v + 128;
                    out.push((((t >> 8) + t) >> 8) as u8);
                }
            }
            out
        }
        other => other.to_rgb8().into_raw(),
    };
    RgbImage {
        width,
        height,
        pixels,
    }
}
