//! SPEC §13 job fields: img2img (`init_images`/`init_image`, `denoising_strength`,
//! `resize_mode`, `initial_noise_multiplier`), inpainting (`mask` and its options, read by
//! [`mask_fields`]) and the txt2img hires fix (`enable_hr`, `hr_*`).

mod mask_fields;

use sdxl_pipeline::image_ops::{decode_image_field, ImageLimits, ResizeMode};
use sdxl_pipeline::pipeline::{
    HiresParams, HiresTarget, HiresUpscaler, Img2ImgParams, Txt2ImgRequest,
    DEFAULT_DENOISING_STRENGTH,
};
use serde_json::{json, Map, Value};

use super::{describe, truncate, Checker, MAX_PROMPT_CHARS};
use crate::catalog::Catalog;

/// The SPEC §13 field names this module reads (added to the known fields).
pub const IMAGE_FIELDS: &[&str] = &[
    "init_images",
    "init_image",
    "denoising_strength",
    "resize_mode",
    "initial_noise_multiplier",
    "mask",
    "mask_blur",
    "mask_blur_x",
    "mask_blur_y",
    "inpainting_fill",
    "inpaint_full_res",
    "inpaint_full_res_padding",
    "inpainting_mask_invert",
    "include_init_images",
    "image_cfg_scale",
    "enable_hr",
    "hr_scale",
    "hr_resize_x",
    "hr_resize_y",
    "hr_upscaler",
    "hr_second_pass_steps",
    "hr_sampler_name",
    "hr_scheduler",
    "hr_prompt",
    "hr_negative_prompt",
    "hr_checkpoint_name",
    "firstphase_width",
    "firstphase_height",
];

/// Most init images one job may carry (one per batch entry).
pub const MAX_INIT_IMAGES: usize = 8;

/// What the §13 fields asked for.
#[derive(Debug, Default)]
pub(super) struct ImageFields {
    pub img2img: Option<Img2ImgParams>,
    pub hires: Option<HiresParams>,
}

/// Reads the §13 fields. `batch_size` is the job's (validated) batch size, `first_pass` the
/// validated width/height (for the hires target and budgets).
pub(super) fn read(
    c: &mut Checker<'_>,
    catalog: &Catalog,
    width: u32,
    height: u32,
    batch_size: u32,
) -> ImageFields {
    if let Some(name) = c.string(&["hr_checkpoint_name"], 1000) {
        if !name.is_empty() && name != "Use same checkpoint" {
            c.problem("`hr_checkpoint_name`: a different hires checkpoint is not supported".into());
        }
    }
    for f in ["firstphase_width", "firstphase_height"] {
        if let Some(v) = c.int(&[f], 0, 4096) {
            if v != 0 {
                c.problem(format!(
                    "`{f}` (the pre-1.0 hires fix) is not supported; use hr_scale or hr_resize_x/y"
                ));
            }
        }
    }
    let strength = c.number(&["denoising_strength"], 0.0, 1.0);
    let mut img2img = read_img2img(c, catalog, width, height, batch_size, strength);
    let mask = mask_fields::read(c);
    match (&mut img2img, mask) {
        (Some(p), mask) => p.mask = mask,
        (None, Some(_)) => c.problem(
            "`mask` needs an init image (`init_images`): inpainting repaints part of it".into(),
        ),
        (None, None) => {}
    }
    let enable_hr = match c.get(&["enable_hr"]) {
        None => false,
        Some((_, Value::Bool(b))) => *b,
        Some((_, v)) => {
            let d = describe(v);
            c.problem(format!("`enable_hr` must be a boolean, got {d}"));
            false
        }
    };
    let hires = if enable_hr {
        if img2img.is_some() {
            c.problem(
                "`enable_hr` is a txt2img option; it cannot be combined with `init_images`".into(),
            );
            None
        } else {
            read_hires(c, catalog, width, height, batch_size, strength)
        }
    } else {
        None
    };
    ImageFields { img2img, hires }
}

fn read_img2img(
    c: &mut Checker<'_>,
    catalog: &Catalog,
    width: u32,
    height: u32,
    batch_size: u32,
    strength: Option<f64>,
) -> Option<Img2ImgParams> {
    let texts: Vec<(String, String)> = match (c.get(&["init_images"]), c.get(&["init_image"])) {
        (None, None) => return None,
        (Some(_), Some(_)) => {
            c.problem("give either `init_images` or `init_image`, not both".into());
            return None;
        }
        (Some((_, Value::Array(items))), None) => {
            if items.is_empty() {
                // A1111 clients send [] for "no image"; nothing to do.
                return None;
            }
            if items.len() > MAX_INIT_IMAGES {
                c.problem(format!(
                    "`init_images` has {} images; at most {MAX_INIT_IMAGES}",
                    items.len()
                ));
                return None;
            }
            let mut out = Vec::new();
            for (i, v) in items.iter().enumerate() {
                match v.as_str() {
                    Some(s) => out.push((format!("init_images[{i}]"), s.to_string())),
                    None => c.problem(format!(
                        "`init_images[{i}]` must be a base64 string or data: URI, got {}",
                        describe(v)
                    )),
                }
            }
            out
        }
        (Some((_, v)), None) => {
            c.problem(format!(
                "`init_images` must be an array of base64 images, got {}",
                describe(v)
            ));
            return None;
        }
        (None, Some((_, Value::String(s)))) => vec![("init_image".to_string(), s.clone())],
        (None, Some((_, v))) => {
            c.problem(format!(
                "`init_image` must be a base64 string or data: URI, got {}",
                describe(v)
            ));
            return None;
        }
    };
    let resize_mode = c
        .int(&["resize_mode"], 0, 3)
        .and_then(ResizeMode::from_index)
        .unwrap_or_default();
    let multiplier = c
        .number(&["initial_noise_multiplier"], 0.0, 2.0)
        .unwrap_or(1.0);
    let mut images = Vec::with_capacity(texts.len());
    for (field, text) in &texts {
        match decode_image_field(field, text, ImageLimits::default()) {
            Ok(img) => {
                let pixels = u64::from(img.width) * u64::from(img.height);
                if resize_mode == ResizeMode::LatentUpscale && pixels > catalog.budgets.max_pixels {
                    c.problem(format!(
                        "`{field}` is {}x{}; resize_mode 3 encodes it at that size, over this worker's budget of {} pixels (SDXL_MAX_PIXELS)",
                        img.width, img.height, catalog.budgets.max_pixels
                    ));
                }
                images.push(img);
            }
            Err(e) => c.problem(truncate(&e.to_string().replace("invalid input: ", ""), 300)),
        }
    }
    if images.len() != texts.len() {
        return None;
    }
    if images.len() > 1 && images.len() != batch_size as usize {
        c.problem(format!(
            "{} init images for batch_size {batch_size}: give one image, or one per image of the batch",
            images.len()
        ));
        return None;
    }
    let _ = (width, height);
    Some(Img2ImgParams {
        init_images: images,
        denoising_strength: strength.unwrap_or(DEFAULT_DENOISING_STRENGTH),
        resize_mode,
        initial_noise_multiplier: multiplier,
        mask: None,
    })
}

fn read_hires(
    c: &mut Checker<'_>,
    catalog: &Catalog,
    width: u32,
    height: u32,
    batch_size: u32,
    strength: Option<f64>,
) -> Option<HiresParams> {
    let d = HiresParams::default();
    let scale = c.number(&["hr_scale"], 1.0, 4.0);
    let rx = c.int(&["hr_resize_x"], 0, 4096);
    let ry = c.int(&["hr_resize_y"], 0, 4096);
    let steps = c.int(&["hr_second_pass_steps"], 0, 150);
    let upscaler = match c.string(&["hr_upscaler"], 100) {
        None => None,
        Some(name) => match HiresUpscaler::from_name(&name) {
            Some(u) => Some(u),
            None => {
                c.problem(format!(
                    "unknown hr_upscaler {:?}; available: {}",
                    truncate(&name, 60),
                    HiresUpscaler::names().join(", ")
                ));
                None
            }
        },
    };
    let sampler = c
        .string(&["hr_sampler_name"], 200)
        .filter(|s| !s.is_empty() && s != "Use same sampler");
    if let Some(s) = &sampler {
        let known = catalog
            .samplers
            .iter()
            .any(|k| k.eq_ignore_ascii_case(s.trim()))
            || sdxl_pipeline::sampling::resolve_sampler(s.trim(), None).is_ok();
        if !known {
            c.problem(format!(
                "unknown hr_sampler_name {:?}; available: {}",
                truncate(s, 60),
                catalog.samplers.join(", ")
            ));
        }
    }
    let scheduler = c
        .string(&["hr_scheduler"], 100)
        .filter(|s| !s.is_empty() && s != "Use same scheduler");
    if let Some(s) = &scheduler {
        if !catalog
            .schedulers
            .iter()
            .any(|k| k.eq_ignore_ascii_case(s.trim()))
        {
            c.problem(format!(
                "unknown hr_scheduler {:?}; available: {}",
                truncate(s, 60),
                catalog.schedulers.join(", ")
            ));
        }
    }
    let prompt = c
        .string(&["hr_prompt"], MAX_PROMPT_CHARS)
        .filter(|s| !s.is_empty());
    let negative = c
        .string(&["hr_negative_prompt"], MAX_PROMPT_CHARS)
        .filter(|s| !s.is_empty());
    let p = HiresParams {
        scale: scale.unwrap_or(d.scale),
        resize_x: rx.map_or(0, |v| v as u32),
        resize_y: ry.map_or(0, |v| v as u32),
        upscaler,
        second_pass_steps: steps.map_or(0, |v| v as u32),
        sampler_name: sampler.map(|s| s.trim().to_string()),
        scheduler: scheduler.map(|s| s.trim().to_string()),
        prompt,
        negative_prompt: negative,
        denoising_strength: strength.unwrap_or(d.denoising_strength),
    };
    if p.denoising_strength == 0.0 {
        c.problem(
            "`denoising_strength` must be > 0 with enable_hr (the second pass would do nothing)"
                .into(),
        );
    }
    let target = HiresTarget::new(width, height, &p);
    let (w, h) = target.output_size();
    let per_image = u64::from(w) * u64::from(h);
    let upscale_side = target.upscale_to_x.max(target.upscale_to_y);
    if w < 64 || h < 64 || upscale_side > 4096 {
        c.problem(format!(
            "the hires fix would make {}x{} images (upscale {}x{}); each side must be 64..=4096",
            w, h, target.upscale_to_x, target.upscale_to_y
        ));
    } else if per_image > catalog.budgets.max_pixels {
        c.problem(format!(
            "the hires fix makes {w}x{h} images ({per_image} pixels), over this worker's budget of {} (SDXL_MAX_PIXELS)",
            catalog.budgets.max_pixels
        ));
    } else if per_image * u64::from(batch_size) > catalog.budgets.max_batch_pixels {
        c.problem(format!(
            "{batch_size} hires images of {w}x{h} are {} pixels, over this worker's budget of {} per job (SDXL_MAX_BATCH_PIXELS)",
            per_image * u64::from(batch_size),
            catalog.budgets.max_batch_pixels
        ));
    }
    Some(p)
}

/// The §13 entries of `parameters` (images are never echoed, as A1111's
/// `include_init_images: false`).
pub(super) fn parameters(
    params: &mut Map<String, Value>,
    img2img: Option<&Img2ImgParams>,
    hires: Option<&HiresParams>,
    request: &Txt2ImgRequest,
) {
    if let Some(p) = img2img {
        params.insert("denoising_strength".into(), json!(p.denoising_strength));
        params.insert("resize_mode".into(), json!(p.resize_mode));
        params.insert(
            "initial_noise_multiplier".into(),
            json!(p.initial_noise_multiplier),
        );
        params.insert("init_images_count".into(), json!(p.init_images.len()));
        if let Some(m) = &p.mask {
            params.insert(
                "mask_size".into(),
                json!(format!("{}x{}", m.mask.width, m.mask.height)),
            );
            params.insert("mask_blur_x".into(), json!(m.mask_blur_x));
            params.insert("mask_blur_y".into(), json!(m.mask_blur_y));
            params.insert("inpainting_fill".into(), json!(m.fill));
            params.insert("inpaint_full_res".into(), json!(m.full_res));
            params.insert("inpaint_full_res_padding".into(), json!(m.full_res_padding));
            params.insert("inpainting_mask_invert".into(), json!(u8::from(m.invert)));
        }
    }
    if let Some(h) = hires {
        let t = HiresTarget::new(request.width, request.height, h);
        let (w, hgt) = t.output_size();
        params.insert("enable_hr".into(), json!(true));
        params.insert("denoising_strength".into(), json!(h.denoising_strength));
        params.insert("hr_scale".into(), json!(h.scale));
        params.insert("hr_resize_x".into(), json!(h.resize_x));
        params.insert("hr_resize_y".into(), json!(h.resize_y));
        params.insert(
            "hr_upscaler".into(),
            json!(h.upscaler.map(HiresUpscaler::name)),
        );
        params.insert("hr_second_pass_steps".into(), json!(h.second_pass_steps));
        params.insert("hr_sampler_name".into(), json!(h.sampler_name));
        params.insert("hr_scheduler".into(), json!(h.scheduler));
        params.insert("hr_prompt".into(), json!(h.prompt));
        params.insert("hr_negative_prompt".into(), json!(h.negative_prompt));
        params.insert("hr_output_width".into(), json!(w));
        params.insert("hr_output_height".into(), json!(hgt));
    }
}

/// The infotext entries of SPEC §13, in A1111's order: `Denoising strength`, then for the hires
/// fix `Hires sampler`, `Hires prompt`, `Hires negative prompt`, `Hires upscale` or
/// `Hires resize`, `Hires steps`, `Hires upscaler`; for img2img `Noise multiplier` when ≠ 1.
pub fn image_infotext(job: &super::ValidatedJob) -> Vec<(String, String)> {
    use sdxl_pipeline::output::format_number;
    let mut out = Vec::new();
    if let Some(p) = &job.img2img {
        out.push((
            "Denoising strength".into(),
            format_number(p.denoising_strength),
        ));
        if p.initial_noise_multiplier != 1.0 {
            out.push((
                "Noise multiplier".into(),
                format_number(p.initial_noise_multiplier),
            ));
        }
    }
    if let Some(h) = &job.hires {
        let r = &job.request;
        out.push((
            "Denoising strength".into(),
            format_number(h.denoising_strength),
        ));
        if let Some(s) = h.sampler_name.as_ref().filter(|s| **s != r.sampler_name) {
            out.push(("Hires sampler".into(), s.clone()));
        }
        if let Some(p) = h.prompt.as_ref().filter(|p| **p != r.prompt) {
            out.push(("Hires prompt".into(), p.clone()));
        }
        if let Some(n) = h
            .negative_prompt
            .as_ref()
            .filter(|n| Some(*n) != r.negative_prompt.as_ref())
        {
            out.push(("Hires negative prompt".into(), n.clone()));
        }
        if h.resize_x == 0 && h.resize_y == 0 {
            out.push(("Hires upscale".into(), format_number(h.scale)));
        } else {
            out.push((
                "Hires resize".into(),
                format!("{}x{}", h.resize_x, h.resize_y),
            ));
        }
        if h.second_pass_steps > 0 {
            out.push(("Hires steps".into(), h.second_pass_steps.to_string()));
        }
        if let Some(u) = h.upscaler {
            out.push(("Hires upscaler".into(), u.name().to_string()));
        }
    }
    out
}
