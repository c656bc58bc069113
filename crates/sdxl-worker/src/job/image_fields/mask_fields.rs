//! SPEC §13 inpainting fields: `mask` (base64 / data URI, A1111's `create_binary_mask`),
//! `mask_blur` (overrides `mask_blur_x` / `mask_blur_y` when set, as A1111's property setter),
//! `inpainting_fill`, `inpaint_full_res`, `inpaint_full_res_padding`, `inpainting_mask_invert`.
//! Without a mask the options are type-checked and have no effect (A1111 clients always send them).

use sdxl_pipeline::image_ops::{decode_mask_field, ImageLimits};
use sdxl_pipeline::pipeline::{InpaintParams, InpaintingFill, DEFAULT_MASK_BLUR};
use serde_json::Value;

use super::super::{describe, truncate, Checker};

/// Largest mask blur radius (A1111's UI slider stops at 64; the kernel grows with the radius).
pub const MAX_MASK_BLUR: i64 = 128;
/// Largest "only masked" padding in pixels.
pub const MAX_PADDING: i64 = 4096;

/// A1111's booleans that clients also send as 0/1 (`inpainting_mask_invert` is an int there).
fn flag(c: &mut Checker<'_>, name: &'static str, default: bool) -> bool {
    match c.get(&[name]) {
        None => default,
        Some((_, Value::Bool(b))) => *b,
        Some((_, v)) if v.as_i64() == Some(0) => false,
        Some((_, v)) if v.as_i64() == Some(1) => true,
        Some((_, v)) => {
            let d = describe(v);
            c.problem(format!("`{name}` must be a boolean (or 0/1), got {d}"));
            default
        }
    }
}

/// Reads the inpainting fields; `Some` when the job sent a non-empty `mask`.
pub(in crate::job) fn read(c: &mut Checker<'_>) -> Option<InpaintParams> {
    let blur = c.int(&["mask_blur"], 0, MAX_MASK_BLUR);
    let blur_x = c.int(&["mask_blur_x"], 0, MAX_MASK_BLUR);
    let blur_y = c.int(&["mask_blur_y"], 0, MAX_MASK_BLUR);
    let fill = c
        .int(&["inpainting_fill"], 0, 3)
        .and_then(InpaintingFill::from_index)
        .unwrap_or_default();
    let full_res = flag(c, "inpaint_full_res", true);
    let padding = c.int(&["inpaint_full_res_padding"], 0, MAX_PADDING);
    let invert = flag(c, "inpainting_mask_invert", false);
    let text = match c.get(&["mask"]) {
        None => return None,
        Some((_, Value::String(s))) if s.trim().is_empty() => return None,
        Some((_, Value::String(s))) => s.clone(),
        Some((_, v)) => {
            let d = describe(v);
            c.problem(format!(
                "`mask` must be a base64 string or data: URI, got {d}"
            ));
            return None;
        }
    };
    let mask = match decode_mask_field("mask", &text, ImageLimits::default()) {
        Ok(m) => m,
        Err(e) => {
            c.problem(truncate(&e.to_string().replace("invalid input: ", ""), 300));
            return None;
        }
    };
    let default = DEFAULT_MASK_BLUR as i64;
    let (bx, by) = match blur {
        Some(b) => (b, b),
        None => (blur_x.unwrap_or(default), blur_y.unwrap_or(default)),
    };
    Some(InpaintParams {
        mask,
        mask_blur_x: bx as u32,
        mask_blur_y: by as u32,
        fill,
        full_res,
        full_res_padding: padding.unwrap_or(0) as u32,
        invert,
    })
}
