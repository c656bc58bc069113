//! Job-supplied images (SPEC §13): bare base64 or `data:` URIs holding PNG, JPEG or WebP, with
//! size limits checked before any pixel buffer is allocated; RGBA is flattened on white as A1111's
//! `images.flatten(img, opts.img2img_background_color)` (Pillow's `paste(mask=img)` rounding).

use std::io::Cursor;

use base64::Engine as _;
use image::{DynamicImage, ImageFormat, ImageReader, Limits};

use crate::output::RgbImage;
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
    match reader.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP) => {}
        _ => return Err(bad("not a PNG, JPEG or WebP image".into())),
    }
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
    Ok(flatten_on_white(img))
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
