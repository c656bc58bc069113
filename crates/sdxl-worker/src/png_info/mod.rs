//! PNG info (A1111 `/sdapi/v1/png-info`): the generation text of an image — a PNG `parameters`
//! text chunk (ours, A1111's) or the EXIF `UserComment` of a JPEG/WebP/PNG (CivitAI downloads,
//! A1111's JPEGs) — as A1111's `images.read_info_from_image` finds it, the image's other text
//! chunks as `items`, and the text parsed by A1111's `parse_generation_parameters` ([`parse`]).

pub mod parse;

pub use parse::parse_generation_parameters;

use crate::error::WorkerError;
use base64::Engine as _;
use serde_json::{json, Map, Value};
use std::io::Cursor;

/// Most bytes of a decoded image the route accepts (SPEC §13: 30 MB).
pub const MAX_IMAGE_BYTES: usize = 30 << 20;

/// A1111's `IGNORED_INFO_KEYS`: image info keys never listed in `items`.
const IGNORED_INFO_KEYS: &[&str] = &[
    "jfif",
    "jfif_version",
    "jfif_unit",
    "jfif_density",
    "dpi",
    "exif",
    "loop",
    "background",
    "timestamp",
    "duration",
    "progressive",
    "progression",
    "icc_profile",
    "chromaticity",
    "photoshop",
];

/// Decodes an image sent as bare base64 or a `data:image/...;base64,` URI (A1111
/// `decode_base64_to_image`; whitespace is ignored, padding optional).
pub fn decode_image_field(field: &str) -> Result<Vec<u8>, WorkerError> {
    let s = field.trim();
    let payload = if s.starts_with("data:image/") {
        s.split(';')
            .nth(1)
            .and_then(|p| p.split(',').nth(1))
            .ok_or_else(|| {
                WorkerError::InvalidInput(
                    "invalid input: `image` is a data: URI without a base64 payload".into(),
                )
            })?
    } else {
        s
    };
    let clean: String = payload.chars().filter(|c| !c.is_whitespace()).collect();
    if clean.len() / 4 * 3 > MAX_IMAGE_BYTES + 3 {
        return Err(WorkerError::InvalidInput(format!(
            "invalid input: `image` is larger than {MAX_IMAGE_BYTES} bytes"
        )));
    }
    let engine = base64::engine::general_purpose::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine.decode(clean.as_bytes()).map_err(|e| {
        WorkerError::InvalidInput(format!("invalid input: `image` is not valid base64: {e}"))
    })
}

/// What A1111's `read_info_from_image` returns: the generation text (if any) and the other
/// info items.
pub fn read_info_from_image(
    bytes: &[u8],
) -> Result<(Option<String>, Map<String, Value>), WorkerError> {
    let format = image::guess_format(bytes).map_err(|_| {
        WorkerError::InvalidInput(
            "invalid input: `image` is not a PNG, JPEG or WebP image".to_string(),
        )
    })?;
    let mut items = Map::new();
    if format == image::ImageFormat::Png {
        png_text_items(bytes, &mut items)?;
    }
    let exif = exif_of(bytes, format)?;
    let mut geninfo = match items.remove("parameters") {
        Some(Value::String(s)) => Some(s),
        _ => None,
    };
    if let Some(exif) = exif {
        if let Some(comment) = exif_user_comment(&exif).filter(|c| !c.is_empty()) {
            geninfo = Some(comment);
        }
    }
    for key in IGNORED_INFO_KEYS {
        items.remove(*key);
    }
    Ok((geninfo, items))
}

/// The `/sdapi/v1/png-info` reply for an image: `{"info", "items", "parameters"}`.
pub fn png_info_reply(bytes: &[u8]) -> Result<Value, WorkerError> {
    let (geninfo, items) = read_info_from_image(bytes)?;
    let info = geninfo.unwrap_or_default();
    let parameters = parse_generation_parameters(&info);
    Ok(json!({"info": info, "items": items, "parameters": parameters}))
}

/// Every text chunk of a PNG (tEXt, zTXt, iTXt) as PIL lists them in `image.info`.
fn png_text_items(bytes: &[u8], items: &mut Map<String, Value>) -> Result<(), WorkerError> {
    let unreadable = |e: png::DecodingError| {
        WorkerError::InvalidInput(format!("invalid input: `image` is not a readable PNG: {e}"))
    };
    let reader = png::Decoder::new(Cursor::new(bytes))
        .read_info()
        .map_err(unreadable)?;
    let info = reader.info();
    for t in &info.uncompressed_latin1_text {
        items.insert(t.keyword.clone(), json!(t.text));
    }
    for t in &info.compressed_latin1_text {
        if let Ok(text) = t.get_text() {
            items.insert(t.keyword.clone(), json!(text));
        }
    }
    for t in &info.utf8_text {
        if let Ok(text) = t.get_text() {
            items.insert(t.keyword.clone(), json!(text));
        }
    }
    Ok(())
}

/// The raw EXIF (TIFF) block of an image, if it has one.
fn exif_of(bytes: &[u8], format: image::ImageFormat) -> Result<Option<Vec<u8>>, WorkerError> {
    use image::ImageDecoder as _;
    let unreadable = |e: image::ImageError| {
        WorkerError::InvalidInput(format!("invalid input: `image` is not readable: {e}"))
    };
    let mut reader = image::ImageReader::new(Cursor::new(bytes));
    reader.set_format(format);
    let mut decoder = reader.into_decoder().map_err(unreadable)?;
    // A broken EXIF block is no generation text, not an error (PIL/piexif skip it too).
    Ok(decoder.exif_metadata().ok().flatten())
}

/// The EXIF `UserComment` decoded as piexif's `UserComment.load` does (ASCII, JIS or
/// UTF-16BE by its 8-byte prefix), else the bytes as UTF-8 with errors ignored (A1111's fallback).
pub fn exif_user_comment(exif: &[u8]) -> Option<String> {
    let tiff = exif.strip_prefix(b"Exif\0\0").unwrap_or(exif);
    let raw = tiff_user_comment(tiff)?;
    Some(decode_user_comment(raw))
}

fn decode_user_comment(raw: &[u8]) -> String {
    let (prefix, body) = raw.split_at(raw.len().min(8));
    match prefix {
        // `body.decode(..., errors='replace')`.
        b"ASCII\0\0\0" => body
            .iter()
            .map(|&b| if b < 128 { char::from(b) } else { '\u{FFFD}' })
            .collect(),
        b"UNICODE\0" => {
            let units: Vec<u16> = body
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            let mut s = String::from_utf16_lossy(&units);
            if body.len() % 2 == 1 {
                s.push('\u{FFFD}');
            }
            s
        }
        // JIS (Shift-JIS) and unknown prefixes: A1111 decodes the bytes as UTF-8, ignoring
        // errors (a Shift-JIS decoder is not worth a dependency for this).
        _ => lossy_ignore(raw),
    }
}

/// `bytes.decode('utf8', errors="ignore")`.
fn lossy_ignore(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).replace('\u{FFFD}', "")
}

/// Walks a TIFF block: IFD0 → the Exif IFD (tag 0x8769) → `UserComment` (tag 0x9286).
fn tiff_user_comment(tiff: &[u8]) -> Option<&[u8]> {
    let big = match tiff.get(..4)? {
        [0x49, 0x49, 42, 0] => false,
        [0x4d, 0x4d, 0, 42] => true,
        _ => return None,
    };
    let u16_at = |o: usize| -> Option<u16> {
        let b: [u8; 2] = tiff.get(o..o.checked_add(2)?)?.try_into().ok()?;
        Some(if big {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    };
    let u32_at = |o: usize| -> Option<u32> {
        let b: [u8; 4] = tiff.get(o..o.checked_add(4)?)?.try_into().ok()?;
        Some(if big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    };
    // (type, count, value-or-offset field position) of `tag` in the IFD at `ifd`.
    let find = |ifd: usize, tag: u16| -> Option<(u16, u32, usize)> {
        let n = usize::from(u16_at(ifd)?);
        (0..n).find_map(|i| {
            let e = ifd.checked_add(2 + 12 * i)?;
            (u16_at(e)? == tag).then_some(())?;
            Some((u16_at(e + 2)?, u32_at(e + 4)?, e + 8))
        })
    };
    let ifd0 = usize::try_from(u32_at(4)?).ok()?;
    let (_, _, ptr) = find(ifd0, 0x8769)?;
    let exif_ifd = usize::try_from(u32_at(ptr)?).ok()?;
    let (kind, count, field) = find(exif_ifd, 0x9286)?;
    // UNDEFINED (7) or BYTE/ASCII (1/2): one byte per count.
    if !matches!(kind, 1 | 2 | 7) {
        return None;
    }
    let count = usize::try_from(count).ok()?;
    let start = if count <= 4 {
        field
    } else {
        usize::try_from(u32_at(field)?).ok()?
    };
    tiff.get(start..start.checked_add(count)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A little-endian TIFF with IFD0 → Exif IFD → UserComment.
    fn tiff_with_comment(comment: &[u8]) -> Vec<u8> {
        let mut t = vec![0x49, 0x49, 42, 0, 8, 0, 0, 0];
        // IFD0 at 8: one entry (ExifIFD pointer, LONG, 1, offset 26), next IFD 0.
        t.extend_from_slice(&[1, 0, 0x69, 0x87, 4, 0, 1, 0, 0, 0, 26, 0, 0, 0, 0, 0, 0, 0]);
        // Exif IFD at 26: one entry (UserComment, UNDEFINED, n, offset 44).
        let n = u32::try_from(comment.len()).unwrap().to_le_bytes();
        t.extend_from_slice(&[1, 0, 0x86, 0x92, 7, 0]);
        t.extend_from_slice(&n);
        t.extend_from_slice(&[44, 0, 0, 0, 0, 0, 0, 0]);
        t.extend_from_slice(comment);
        t
    }

    #[test]
    fn user_comment_prefixes() {
        let mut unicode = b"UNICODE\0".to_vec();
        for u in "prompt ✨\nSteps: 4".encode_utf16() {
            unicode.extend_from_slice(&u.to_be_bytes());
        }
        assert_eq!(
            exif_user_comment(&tiff_with_comment(&unicode)).as_deref(),
            Some("prompt ✨\nSteps: 4")
        );
        let ascii = b"ASCII\0\0\0hello".to_vec();
        assert_eq!(
            exif_user_comment(&tiff_with_comment(&ascii)).as_deref(),
            Some("hello")
        );
        let mut exif = b"Exif\0\0".to_vec();
        exif.extend(tiff_with_comment(b"plain utf8 text"));
        assert_eq!(exif_user_comment(&exif).as_deref(), Some("plain utf8 text"));
    }

    #[test]
    fn broken_tiff_is_no_comment() {
        let good = tiff_with_comment(b"UNICODE\0\0a");
        for cut in 0..good.len() {
            let _ = exif_user_comment(&good[..cut]);
        }
        assert_eq!(exif_user_comment(b"II*\0\xff\xff\xff\xff"), None);
    }

    #[test]
    fn data_uri_and_bare_base64() {
        let b64 = base64::engine::general_purpose::STANDARD.encode(b"abcd");
        assert_eq!(decode_image_field(&b64).unwrap(), b"abcd");
        let uri = format!("data:image/png;base64,{}", b64.trim_end_matches('='));
        assert_eq!(decode_image_field(&uri).unwrap(), b"abcd");
        assert!(decode_image_field("data:image/png;base64").is_err());
        assert!(decode_image_field("%%%").is_err());
    }
}
