//! Request fields that would change the image but that this worker does not implement (SPEC §3:
//! "refuse rather than mislead"). Each is accepted silently at its inert value (the default an
//! A1111 client sends, e.g. `restore_faces: false`, `alwayson_scripts: {}`) and refused with
//! `INVALID_INPUT` naming the field otherwise.
//!
//! **The one table to edit** is [`REFUSALS`]: implementing a field means deleting its row (and
//! reading the field in `job.rs`). A row whose field only matters together with another one
//! (`hr_scale` only with `enable_hr`) says so in its predicate, so clients that send every
//! default (the `webuiapi` library does) are never refused.

use serde_json::{Map, Value};

/// What a refusal predicate sees: the whole `input` object and the sampler it resolves to.
pub struct Context<'a> {
    obj: &'a Map<String, Value>,
    sampler: Option<sdxl_pipeline::sampling::SamplerChoice>,
}

impl<'a> Context<'a> {
    /// The context of one job input (the sampler is resolved as the pipeline will resolve it;
    /// `None` when its name is invalid, which the validator reports on its own).
    pub fn new(obj: &'a Map<String, Value>) -> Self {
        let name = ["sampler_name", "sampler"]
            .iter()
            .find_map(|k| obj.get(*k).and_then(Value::as_str))
            .unwrap_or(sdxl_pipeline::pipeline::DEFAULT_SAMPLER);
        let scheduler = obj.get("scheduler").and_then(Value::as_str);
        let sampler = sdxl_pipeline::sampling::resolve_sampler(name, scheduler).ok();
        Self { obj, sampler }
    }

    /// A field (`override_settings.<key>` reads inside `override_settings`); `null` is absent.
    fn get(&self, field: &str) -> Option<&'a Value> {
        let v = match field.strip_prefix("override_settings.") {
            Some(key) => self.obj.get("override_settings")?.get(key),
            None => self.obj.get(field),
        };
        v.filter(|v| !v.is_null())
    }

    /// True when the field is absent, `null` or one of `inert` values (numbers compare as
    /// numbers, strings case-insensitively, and `""`, `[]`, `{}` count as empty).
    fn is_inert(&self, field: &str, inert: &[Value]) -> bool {
        match self.get(field) {
            None => true,
            Some(v) => inert.iter().any(|i| same(v, i)),
        }
    }

    /// The infotext name of the resolved sampler (`DPM++ 2M`, `Euler a`, `DDIM`).
    fn sampler_name(&self) -> Option<&str> {
        self.sampler.as_ref().map(|s| s.infotext_sampler.as_str())
    }

    /// The value of `eta` A1111 uses for this sampler when the request sets none, or `None`
    /// when the sampler takes no eta: 1 for ancestral/SDE samplers, 0 for DDIM.
    fn eta_default(&self) -> Option<f64> {
        match &self.sampler {
            Some(s) if s.uses_noise => Some(1.0),
            Some(s) if s.infotext_sampler == "DDIM" => Some(0.0),
            _ => None,
        }
    }
}

fn same(v: &Value, inert: &Value) -> bool {
    match (v, inert) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::String(a), Value::String(b)) => a.trim().eq_ignore_ascii_case(b),
        (Value::Array(a), Value::Array(b)) => a.is_empty() && b.is_empty(),
        (Value::Object(a), Value::Object(b)) => a.is_empty() && b.is_empty(),
        (a, b) => a == b,
    }
}

/// One refused field.
pub struct Refusal {
    /// The field, or `override_settings.<key>`.
    pub field: &'static str,
    /// True when the request's value leaves the image as this worker renders it.
    pub inert: fn(&Context<'_>) -> bool,
    /// What the worker lacks, for the error message.
    pub why: &'static str,
}

macro_rules! inert_values {
    ($field:literal, [$($v:tt),*]) => {
        |c: &Context<'_>| c.is_inert($field, &[$(serde_json::json!($v)),*])
    };
}

/// A field that matters only together with another row's field (`hr_scale` with `enable_hr`,
/// `subseed` with `subseed_strength`): that row refuses, so the error names the one field to
/// change; this row only keeps the field from being warned about as unknown.
fn by_parent(_: &Context<'_>) -> bool {
    true
}

fn no_subseed(c: &Context<'_>) -> bool {
    c.is_inert("subseed_strength", &[serde_json::json!(0)])
}

fn no_refiner(c: &Context<'_>) -> bool {
    c.is_inert(
        "refiner_checkpoint",
        &[serde_json::json!(""), serde_json::json!("None")],
    )
}

/// `seed_resize_from_w/h` change the noise only when both are > 0 and differ from the image
/// size in latent units (A1111 `create_random_tensors`).
fn no_seed_resize(c: &Context<'_>) -> bool {
    let read = |k: &str| c.get(k).and_then(Value::as_f64);
    let (Some(w), Some(h)) = (read("seed_resize_from_w"), read("seed_resize_from_h")) else {
        return true;
    };
    if w <= 0.0 || h <= 0.0 {
        return true;
    }
    let d = f64::from(sdxl_pipeline::pipeline::DEFAULT_SIZE);
    let width = read("width").unwrap_or(d);
    let height = read("height").unwrap_or(d);
    (w / 8.0).floor() == (width / 8.0).floor() && (h / 8.0).floor() == (height / 8.0).floor()
}

/// `eta` (request) wins over the `eta_ancestral` / `eta_ddim` options; it matters only to a
/// sampler that takes eta, and only when it differs from A1111's default for that sampler.
fn eta_inert(c: &Context<'_>) -> bool {
    match (c.get("eta").and_then(Value::as_f64), c.eta_default()) {
        (Some(eta), Some(default)) => eta == default,
        (None, _) => c.get("eta").is_none(),
        (Some(_), None) => true,
    }
}

fn eta_option_inert(c: &Context<'_>, key: &str, sampler_default: f64) -> bool {
    let Some(v) = c.get(key) else { return true };
    // `eta_default` is 1 exactly for the ancestral/SDE samplers and 0 exactly for DDIM.
    if c.get("eta").is_some() || c.eta_default() != Some(sampler_default) {
        return true;
    }
    v.as_f64() == Some(sampler_default)
}

/// Samplers that take `s_noise` in A1111 1.10 (`sampler_extra_params`, not Euler a; the churn
/// samplers only with churn, refused on its own).
fn takes_s_noise(c: &Context<'_>) -> bool {
    matches!(
        c.sampler_name(),
        Some("DPM++ SDE" | "DPM++ 2M SDE" | "DPM++ 2M SDE Heun" | "DPM++ 3M SDE")
    )
}

fn takes_churn(c: &Context<'_>) -> bool {
    matches!(c.sampler_name(), Some("Euler" | "Heun" | "DPM2"))
}

fn no_churn(c: &Context<'_>) -> bool {
    !takes_churn(c) || c.is_inert("s_churn", &[serde_json::json!(0)])
}

const HIRES: &str = "hires fix is not available on this worker yet";
const IMG2IMG: &str = "image to image / inpainting is not available on this worker yet";

/// Every refused field. Edit this table (and only this one) when a field gets implemented.
pub const REFUSALS: &[Refusal] = &[
    Refusal {
        field: "restore_faces",
        inert: inert_values!("restore_faces", [false]),
        why: "face restoration is not available on this worker",
    },
    Refusal {
        field: "tiling",
        inert: inert_values!("tiling", [false]),
        why: "tiling is not available on this worker",
    },
    Refusal {
        field: "alwayson_scripts",
        inert: inert_values!("alwayson_scripts", [{}]),
        why: "A1111 scripts and extensions (ControlNet, ADetailer, ...) do not run on this worker",
    },
    Refusal {
        field: "script_name",
        inert: inert_values!("script_name", [""]),
        why: "A1111 scripts do not run on this worker",
    },
    Refusal {
        field: "script_args",
        inert: by_parent,
        why: "A1111 scripts do not run on this worker",
    },
    Refusal {
        field: "refiner_checkpoint",
        inert: no_refiner,
        why: "refiner checkpoints are not available on this worker",
    },
    Refusal {
        field: "refiner_switch_at",
        inert: by_parent,
        why: "refiner checkpoints are not available on this worker",
    },
    Refusal {
        field: "styles",
        inert: inert_values!("styles", [[]]),
        why: "this worker has no prompt styles (GET /sdapi/v1/prompt-styles lists none)",
    },
    Refusal {
        field: "n_iter",
        inert: inert_values!("n_iter", [1]),
        why: "several batches per job (`n_iter` > 1) are not available on this worker yet",
    },
    Refusal {
        field: "subseed_strength",
        inert: no_subseed,
        why: "variation seeds are not available on this worker yet",
    },
    Refusal {
        field: "subseed",
        inert: by_parent,
        why: "variation seeds are not available on this worker yet",
    },
    Refusal {
        field: "seed_resize_from_w",
        inert: no_seed_resize,
        why: "resizing the seed (`seed_resize_from_w/h`) is not available on this worker yet",
    },
    Refusal {
        field: "seed_resize_from_h",
        inert: by_parent,
        why: "resizing the seed (`seed_resize_from_w/h`) is not available on this worker yet",
    },
    Refusal {
        field: "eta",
        inert: eta_inert,
        why: "a non-default eta is not available on this worker yet (ancestral/SDE samplers use 1, DDIM 0)",
    },
    Refusal {
        field: "override_settings.eta_ancestral",
        inert: |c| eta_option_inert(c, "override_settings.eta_ancestral", 1.0),
        why: "a non-default eta is not available on this worker yet",
    },
    Refusal {
        field: "override_settings.eta_ddim",
        inert: |c| eta_option_inert(c, "override_settings.eta_ddim", 0.0),
        why: "a non-default eta is not available on this worker yet",
    },
    Refusal {
        field: "s_churn",
        inert: no_churn,
        why: "`s_churn` is not available on this worker yet",
    },
    Refusal {
        field: "s_tmin",
        inert: by_parent,
        why: "`s_churn` is not available on this worker yet",
    },
    Refusal {
        field: "s_tmax",
        inert: by_parent,
        why: "`s_churn` is not available on this worker yet",
    },
    Refusal {
        field: "s_noise",
        inert: |c| !takes_s_noise(c) || c.is_inert("s_noise", &[serde_json::json!(1)]),
        why: "`s_noise` other than 1 is not available on this worker yet",
    },
    Refusal {
        field: "override_settings.s_noise",
        inert: |c| {
            c.get("s_noise").is_some()
                || !takes_s_noise(c)
                || c.is_inert("override_settings.s_noise", &[serde_json::json!(1)])
        },
        why: "`s_noise` other than 1 is not available on this worker yet",
    },
    Refusal {
        field: "s_min_uncond",
        inert: inert_values!("s_min_uncond", [0]),
        why: "negative guidance minimum sigma (`s_min_uncond`) is not available on this worker",
    },
    Refusal {
        field: "override_settings.sd_vae",
        inert: inert_values!("override_settings.sd_vae", ["Automatic"]),
        why: "choosing a VAE per job is not available on this worker (models.toml `[vae]` decides)",
    },
    // Hires fix (txt2img `enable_hr`) and its parameters.
    Refusal {
        field: "enable_hr",
        inert: inert_values!("enable_hr", [false]),
        why: HIRES,
    },
    Refusal {
        field: "firstpass_image",
        inert: inert_values!("firstpass_image", [""]),
        why: HIRES,
    },
    // Without `enable_hr` or an init image A1111 ignores these; the rows keep them from being
    // warned about as unknown.
    Refusal {
        field: "denoising_strength",
        inert: by_parent,
        why: HIRES,
    },
    Refusal {
        field: "hr_scale",
        inert: by_parent,
        why: HIRES,
    },
    Refusal {
        field: "hr_upscaler",
        inert: by_parent,
        why: HIRES,
    },
    Refusal {
        field: "hr_second_pass_steps",
        inert: by_parent,
        why: HIRES,
    },
    Refusal {
        field: "hr_resize_x",
        inert: by_parent,
        why: HIRES,
    },
    Refusal {
        field: "hr_resize_y",
        inert: by_parent,
        why: HIRES,
    },
    Refusal {
        field: "hr_sampler_name",
        inert: by_parent,
        why: HIRES,
    },
    Refusal {
        field: "hr_scheduler",
        inert: by_parent,
        why: HIRES,
    },
    Refusal {
        field: "hr_prompt",
        inert: by_parent,
        why: HIRES,
    },
    Refusal {
        field: "hr_negative_prompt",
        inert: by_parent,
        why: HIRES,
    },
    Refusal {
        field: "hr_checkpoint_name",
        inert: by_parent,
        why: HIRES,
    },
    Refusal {
        field: "firstphase_width",
        inert: by_parent,
        why: HIRES,
    },
    Refusal {
        field: "firstphase_height",
        inert: by_parent,
        why: HIRES,
    },
    // Image to image and inpainting.
    Refusal {
        field: "init_images",
        inert: inert_values!("init_images", [[]]),
        why: IMG2IMG,
    },
    Refusal {
        field: "init_image",
        inert: inert_values!("init_image", [""]),
        why: IMG2IMG,
    },
    Refusal {
        field: "mask",
        inert: inert_values!("mask", [""]),
        why: IMG2IMG,
    },
    Refusal {
        field: "resize_mode",
        inert: by_parent,
        why: IMG2IMG,
    },
    Refusal {
        field: "mask_blur",
        inert: by_parent,
        why: IMG2IMG,
    },
    Refusal {
        field: "mask_blur_x",
        inert: by_parent,
        why: IMG2IMG,
    },
    Refusal {
        field: "mask_blur_y",
        inert: by_parent,
        why: IMG2IMG,
    },
    Refusal {
        field: "inpainting_fill",
        inert: by_parent,
        why: IMG2IMG,
    },
    Refusal {
        field: "inpaint_full_res",
        inert: by_parent,
        why: IMG2IMG,
    },
    Refusal {
        field: "inpaint_full_res_padding",
        inert: by_parent,
        why: IMG2IMG,
    },
    Refusal {
        field: "inpainting_mask_invert",
        inert: by_parent,
        why: IMG2IMG,
    },
    Refusal {
        field: "initial_noise_multiplier",
        inert: by_parent,
        why: IMG2IMG,
    },
    Refusal {
        field: "image_cfg_scale",
        inert: by_parent,
        why: IMG2IMG,
    },
];

/// True when `field` (a top-level field, or `override_settings.<key>`) has a row in
/// [`REFUSALS`]: such a field is never warned about as unknown.
pub fn covers(field: &str) -> bool {
    REFUSALS.iter().any(|r| r.field == field)
}

/// One problem per refused field whose value is not inert, in table order.
pub fn problems(obj: &Map<String, Value>) -> Vec<String> {
    let ctx = Context::new(obj);
    REFUSALS
        .iter()
        .filter(|r| ctx.get(r.field).is_some() && !(r.inert)(&ctx))
        .map(|r| {
            let shown = ctx.get(r.field).map(super::describe).unwrap_or_default();
            format!("`{}` = {shown}: {}", r.field, r.why)
        })
        .collect()
}
