//! Image output: RGB buffers → PNG (with the A1111 infotext in a `parameters` text chunk),
//! JPEG or WebP, and base64 for JSON replies. Also the A1111 infotext builder.

use crate::{PipelineError, Result};
use base64::Engine as _;
use std::io::Cursor;

/// An 8-bit RGB image, row-major, `width * height * 3` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbImage {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl RgbImage {
    /// Wraps a pixel buffer after checking its length.
    pub fn new(width: u32, height: u32, pixels: Vec<u8>) -> Result<Self> {
        let expected = width as usize * height as usize * 3;
        if pixels.len() != expected {
            return Err(PipelineError::Image(format!(
                "RGB buffer of {} bytes does not match {width}x{height}",
                pixels.len()
            )));
        }
        Ok(Self {
            width,
            height,
            pixels,
        })
    }
}

/// An 8-bit single-channel image (Pillow mode `L`: masks), row-major, `width * height` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrayImage {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl GrayImage {
    /// Wraps a pixel buffer after checking its length.
    pub fn new(width: u32, height: u32, pixels: Vec<u8>) -> Result<Self> {
        if pixels.len() != width as usize * height as usize {
            return Err(PipelineError::Image(format!(
                "gray buffer of {} bytes does not match {width}x{height}",
                pixels.len()
            )));
        }
        Ok(Self {
            width,
            height,
            pixels,
        })
    }

    /// The same values in all three channels (Pillow `convert('RGB')` of an `L` image), so the
    /// RGB resizers serve masks too.
    pub fn to_rgb(&self) -> RgbImage {
        RgbImage {
            width: self.width,
            height: self.height,
            pixels: self.pixels.iter().flat_map(|&v| [v, v, v]).collect(),
        }
    }
}

impl RgbImage {
    /// The first channel (the inverse of [`GrayImage::to_rgb`] for gray content).
    pub fn red_channel(&self) -> GrayImage {
        GrayImage {
            width: self.width,
            height: self.height,
            pixels: self.pixels.chunks_exact(3).map(|p| p[0]).collect(),
        }
    }
}

/// An 8-bit RGBA image with straight (not premultiplied) alpha (Pillow mode `RGBA`: inpainting
/// overlays), row-major, `width * height * 4` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RgbaImage {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl RgbaImage {
    /// Wraps a pixel buffer after checking its length.
    pub fn new(width: u32, height: u32, pixels: Vec<u8>) -> Result<Self> {
        if pixels.len() != width as usize * height as usize * 4 {
            return Err(PipelineError::Image(format!(
                "RGBA buffer of {} bytes does not match {width}x{height}",
                pixels.len()
            )));
        }
        Ok(Self {
            width,
            height,
            pixels,
        })
    }
}

/// Encoded image formats the worker can return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageFormat {
    /// Lossless PNG with the infotext in a `parameters` chunk (default).
    #[default]
    Png,
    /// JPEG at the given quality (1..=100).
    Jpeg { quality: u8 },
    /// Lossless WebP.
    WebP,
}

impl ImageFormat {
    /// File extension without the dot.
    pub fn extension(self) -> &'static str {
        match self {
            Self::Png => "png",
            Self::Jpeg { .. } => "jpg",
            Self::WebP => "webp",
        }
    }
}

/// Encodes an image; `parameters` (the A1111 infotext) is embedded in PNGs as a `parameters`
/// text chunk (tEXt when Latin-1, iTXt otherwise, as PIL does). JPEG and WebP carry no metadata.
pub fn encode_image(
    img: &RgbImage,
    format: ImageFormat,
    parameters: Option<&str>,
) -> Result<Vec<u8>> {
    match format {
        ImageFormat::Png => encode_png(img, parameters),
        ImageFormat::Jpeg { quality } => {
            let quality = quality.clamp(1, 100);
            let mut out = Vec::new();
            let enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality);
            image::ImageEncoder::write_image(
                enc,
                &img.pixels,
                img.width,
                img.height,
                image::ExtendedColorType::Rgb8,
            )
            .map_err(|e| PipelineError::Image(e.to_string()))?;
            Ok(out)
        }
        ImageFormat::WebP => {
            let mut out = Vec::new();
            let enc = image::codecs::webp::WebPEncoder::new_lossless(&mut out);
            image::ImageEncoder::write_image(
                enc,
                &img.pixels,
                img.width,
                img.height,
                image::ExtendedColorType::Rgb8,
            )
            .map_err(|e| PipelineError::Image(e.to_string()))?;
            Ok(out)
        }
    }
}

fn encode_png(img: &RgbImage, parameters: Option<&str>) -> Result<Vec<u8>> {
    let err = |e: png::EncodingError| PipelineError::Image(e.to_string());
    let mut out = Cursor::new(Vec::new());
    {
        let mut enc = png::Encoder::new(&mut out, img.width, img.height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Fast);
        if let Some(text) = parameters {
            if is_latin1(text) {
                enc.add_text_chunk("parameters".to_string(), text.to_string())
                    .map_err(err)?;
            } else {
                enc.add_itxt_chunk("parameters".to_string(), text.to_string())
                    .map_err(err)?;
            }
        }
        let mut writer = enc.write_header().map_err(err)?;
        writer.write_image_data(&img.pixels).map_err(err)?;
        writer.finish().map_err(err)?;
    }
    Ok(out.into_inner())
}

fn is_latin1(s: &str) -> bool {
    s.chars().all(|c| (c as u32) < 256)
}

/// Standard base64 (no `data:` prefix), as RunPod and A1111 clients expect.
pub fn to_base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Reads the `parameters` text chunk of a PNG (tEXt, zTXt or iTXt), if present.
pub fn read_png_parameters(png_bytes: &[u8]) -> Result<Option<String>> {
    let decoder = png::Decoder::new(Cursor::new(png_bytes));
    let reader = decoder
        .read_info()
        .map_err(|e| PipelineError::Image(e.to_string()))?;
    let info = reader.info();
    if let Some(t) = info
        .uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == "parameters")
    {
        return Ok(Some(t.text.clone()));
    }
    if let Some(t) = info
        .compressed_latin1_text
        .iter()
        .find(|t| t.keyword == "parameters")
    {
        return t
            .get_text()
            .map(Some)
            .map_err(|e| PipelineError::Image(e.to_string()));
    }
    if let Some(t) = info.utf8_text.iter().find(|t| t.keyword == "parameters") {
        return t
            .get_text()
            .map(Some)
            .map_err(|e| PipelineError::Image(e.to_string()));
    }
    Ok(None)
}

/// The A1111 "PNG info" text of one image (SPEC §4).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Infotext {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub steps: u32,
    /// Sampler without the schedule, e.g. `DPM++ 2M`.
    pub sampler: String,
    /// Schedule type, e.g. `Karras`; omitted when `None`.
    pub schedule_type: Option<String>,
    pub cfg_scale: f64,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    pub model: Option<String>,
    /// `Variation seed`, `Variation seed strength`, `Seed resize from` (A1111 writes them after
    /// `Model` and before `Clip skip`).
    pub variation: Vec<(String, String)>,
    pub clip_skip: Option<u32>,
    /// Further `key: value` pairs, appended before `Version`.
    pub extra: Vec<(String, String)>,
}

impl Infotext {
    /// Renders the text exactly in A1111's layout: prompt, `Negative prompt: ...`, then one
    /// line of `key: value` pairs (values with `,`, `:` or newlines are JSON-quoted, as A1111 does).
    pub fn render(&self) -> String {
        let mut s = self.prompt.clone();
        if let Some(neg) = self.negative_prompt.as_deref().filter(|n| !n.is_empty()) {
            s.push_str("\nNegative prompt: ");
            s.push_str(neg);
        }
        let mut fields: Vec<(String, String)> = vec![
            ("Steps".into(), self.steps.to_string()),
            ("Sampler".into(), self.sampler.clone()),
        ];
        if let Some(st) = &self.schedule_type {
            fields.push(("Schedule type".into(), st.clone()));
        }
        fields.push(("CFG scale".into(), format_number(self.cfg_scale)));
        fields.push(("Seed".into(), self.seed.to_string()));
        fields.push(("Size".into(), format!("{}x{}", self.width, self.height)));
        if let Some(m) = &self.model {
            fields.push(("Model".into(), m.clone()));
        }
        fields.extend(self.variation.iter().cloned());
        if let Some(c) = self.clip_skip {
            fields.push(("Clip skip".into(), c.to_string()));
        }
        fields.extend(self.extra.iter().cloned());
        fields.push((
            "Version".into(),
            format!("sdxl-worker {}", env!("CARGO_PKG_VERSION")),
        ));
        let line = fields
            .iter()
            .map(|(k, v)| format!("{k}: {}", quote_value(v)))
            .collect::<Vec<_>>()
            .join(", ");
        s.push('\n');
        s.push_str(&line);
        s
    }
}

/// A1111 `infotext_utils.quote`: plain unless the value holds `,`, `:` or a newline.
fn quote_value(v: &str) -> String {
    if v.contains(',') || v.contains(':') || v.contains('\n') {
        serde_json::to_string(v).unwrap_or_else(|_| format!("\"{v}\""))
    } else {
        v.to_string()
    }
}

/// Formats a number the way it reads in A1111 infotext: `7`, `7.5`, `6.25`.
pub fn format_number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        let s = format!("{x:.6}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> RgbImage {
        let mut px = Vec::with_capacity((w * h * 3) as usize);
        for y in 0..h {
            for x in 0..w {
                px.extend_from_slice(&[(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8]);
            }
        }
        RgbImage::new(w, h, px).unwrap()
    }

    #[test]
    fn png_round_trips_pixels_and_parameters() {
        let img = gradient(17, 9);
        for text in ["plain prompt\nSteps: 4", "日本語 prompt ✨\nSteps: 4"] {
            let bytes = encode_image(&img, ImageFormat::Png, Some(text)).unwrap();
            assert_eq!(read_png_parameters(&bytes).unwrap().as_deref(), Some(text));
            let decoded = image::load_from_memory(&bytes).unwrap().to_rgb8();
            assert_eq!(decoded.as_raw(), &img.pixels);
        }
    }

    #[test]
    fn jpeg_and_webp_decode() {
        let img = gradient(32, 16);
        let jpg = encode_image(&img, ImageFormat::Jpeg { quality: 90 }, Some("x")).unwrap();
        assert_eq!(&jpg[..2], &[0xFF, 0xD8]);
        let webp = encode_image(&img, ImageFormat::WebP, None).unwrap();
        let back = image::load_from_memory(&webp).unwrap().to_rgb8();
        assert_eq!(back.as_raw(), &img.pixels);
    }

    #[test]
    fn wrong_buffer_length_is_an_error() {
        assert!(RgbImage::new(2, 2, vec![0; 11]).is_err());
    }

    #[test]
    fn infotext_matches_a1111_layout() {
        let t = Infotext {
            prompt: "a cat".into(),
            negative_prompt: Some("blurry".into()),
            steps: 25,
            sampler: "DPM++ 2M".into(),
            schedule_type: Some("Karras".into()),
            cfg_scale: 7.0,
            seed: 42,
            width: 1024,
            height: 1024,
            model: Some("Jib Mix".into()),
            extra: vec![("Loras".into(), "Detail Tweaker XL:1.5".into())],
            ..Default::default()
        };
        let s = t.render();
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            s,
            format!("a cat\nNegative prompt: blurry\nSteps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 42, Size: 1024x1024, Model: Jib Mix, Loras: \"Detail Tweaker XL:1.5\", Version: sdxl-worker {version}")
        );
        assert_eq!(format_number(6.5), "6.5");
        assert_eq!(format_number(0.125), "0.125");
    }
}
