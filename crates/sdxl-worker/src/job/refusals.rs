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

/// What a refusal predicate sees: the whole `input` object.
pub struct Context<'a> {
    obj: &'a Map<String, Value>,
}

impl<'a> Context<'a> {
    /// The context of one job input.
    pub fn new(obj: &'a Map<String, Value>) -> Self {
        Self { obj }
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

fn no_refiner(c: &Context<'_>) -> bool {
    c.is_inert(
        "refiner_checkpoint",
        &[serde_json::json!(""), serde_json::json!("None")],
    )
}

const HIRES: &str =
    "this hires-fix option (a first-pass image, a second checkpoint, firstphase sizes) is not available on this worker";
const IMG2IMG: &str = "the image CFG scale of InstructPix2Pix models is not available";

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
        field: "firstpass_image",
        inert: inert_values!("firstpass_image", [""]),
        why: HIRES,
    },
    // Without `enable_hr` or an init image A1111 ignores these; the rows keep them from being
    // warned about as unknown.
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
    // InstructPix2Pix's image CFG scale only matters for edit models, which SDXL lacks.
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
    let mut problems: Vec<String> = REFUSALS
        .iter()
        .filter(|r| ctx.get(r.field).is_some() && !(r.inert)(&ctx))
        .map(|r| {
            let shown = ctx.get(r.field).map(super::describe).unwrap_or_default();
            format!("`{}` = {shown}: {}", r.field, r.why)
        })
        .collect();
    for field in ["prompt", "hr_prompt"] {
        if let Some(why) = ctx.get(field).and_then(Value::as_str).and_then(composable) {
            problems.push(format!("`{field}`: {why}"));
        }
    }
    problems
}

/// A1111's composable-diffusion syntax in a positive prompt (`prompt_parser
/// .get_multicond_prompt_list`: sub-prompts split at `\bAND\b`, each with an optional trailing
/// `:weight`), which changes the image and is not implemented: why it is refused, or `None`.
pub fn composable(prompt: &str) -> Option<String> {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let has_and = prompt.match_indices("AND").any(|(i, _)| {
        !word(prompt[..i].chars().next_back()) && !word(prompt[i + 3..].chars().next())
    });
    if has_and {
        return Some(
            "A1111's composable diffusion (`AND` between sub-prompts) is not available on this \
             worker"
                .into(),
        );
    }
    trailing_weight(prompt).filter(|w| *w != 1.0).map(|w| {
        format!(
            "a trailing `:{w}` weights the whole prompt in A1111 (composable diffusion), \
                 which is not available on this worker; write `(prompt:{w})` for emphasis"
        )
    })
}

/// The `:number` at the end of a prompt (A1111's `re_weight`: `\s*:\s*[-+]?(\d+\.?|\d*\.\d+)\s*$`).
fn trailing_weight(prompt: &str) -> Option<f64> {
    let body = prompt.trim_end();
    let start = body
        .char_indices()
        .rev()
        .take_while(|(_, c)| c.is_ascii_digit() || *c == '.')
        .last()
        .map(|(i, _)| i)?;
    let number = &body[start..];
    let before = &body[..start];
    let (sign, before) = match before.strip_suffix(['-', '+']) {
        Some(rest) => (&before[rest.len()..], rest),
        None => ("", before),
    };
    let before = before.trim_end().strip_suffix(':')?;
    if before.trim().is_empty() || number.matches('.').count() > 1 || number == "." {
        return None;
    }
    format!("{sign}{number}").parse().ok()
}

#[cfg(test)]
mod tests {
    use super::composable;

    #[test]
    fn composable_syntax_is_found_as_a1111_splits_it() {
        for p in [
            "a cat AND a dog",
            "a cat AND",
            "cat:1.5",
            "a cat : 0.5 ",
            "x :-2",
            "a:.5",
        ] {
            assert!(composable(p).is_some(), "{p}");
        }
        for p in [
            "a cat",
            "SAND and ANDROID",
            "(cat:1.5)",
            "a cat:1",
            "<lora:x:0.8>",
            "time 10:30 pm",
            "ratio 16:9 frame",
            ":5",
        ] {
            assert!(composable(p).is_none(), "{p}");
        }
    }
}
