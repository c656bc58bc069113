//! The job schema of SPEC §3: hand-written validation of the `input` object that reports every
//! problem at once and coerces nothing, producing a [`ValidatedJob`] for the handler.

use crate::catalog::{Catalog, LoraSpec};
use crate::error::WorkerError;
use sdxl_pipeline::output::{format_number, ImageFormat};
use sdxl_pipeline::pipeline::Txt2ImgRequest;
use sdxl_pipeline::prompt::{Emphasis, PromptMode};
use serde_json::{json, Map, Value};

mod image_fields;
pub mod refusals;
mod seeds;

pub use image_fields::{image_infotext, IMAGE_FIELDS, MAX_INIT_IMAGES};
pub use sdxl_pipeline::pipeline::{HiresParams, Img2ImgParams};

/// Largest allowed seed (2^53 − 1, exact in a JSON double).
pub const MAX_SEED: i64 = (1 << 53) - 1;
/// Longest accepted prompt / negative prompt, in characters.
pub const MAX_PROMPT_CHARS: usize = 20_000;
/// Most LoRAs one job may apply.
pub const MAX_LORAS: usize = 16;
/// JPEG quality when the job gives none (A1111's default).
pub const DEFAULT_JPEG_QUALITY: u8 = 80;

/// Field names this schema understands (aliases included); anything else is warned about.
pub const KNOWN_FIELDS: &[&str] = &[
    "prompt",
    "negative_prompt",
    "steps",
    "num_inference_steps",
    "cfg_scale",
    "guidance_scale",
    "width",
    "height",
    "sampler_name",
    "sampler",
    "scheduler",
    "seed",
    "batch_size",
    "num_images",
    "loras",
    "checkpoint",
    "clip_skip",
    "prompt_mode",
    "emphasis",
    "output_format",
    "quality",
    "override_settings",
    "upload",
    "n_iter",
    "subseed",
    "subseed_strength",
    "seed_resize_from_w",
    "seed_resize_from_h",
    "eta",
    "s_noise",
    "s_churn",
    "s_tmin",
    "s_tmax",
];

/// A1111 `override_settings` keys the worker honours, and the job field each one stands for
/// (an alias: giving both with different values is a problem). Other keys are warned about.
pub const HONOURED_OVERRIDES: &[(&str, &str)] = &[
    ("sd_model_checkpoint", "checkpoint"),
    ("CLIP_stop_at_last_layers", "clip_skip"),
    ("emphasis", "emphasis"),
    // A1111 options read by the sampler (see `seeds::sampler_params`), not aliases.
    ("eta_ancestral", "eta"),
    ("eta_ddim", "eta"),
    ("s_noise", "s_noise"),
];

/// A job that passed validation: what the pipeline needs plus the worker-level choices.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedJob {
    /// The pipeline request (seed already resolved: never random here).
    pub request: Txt2ImgRequest,
    /// Checkpoint name from the catalog (`None` only when the catalog has none).
    pub checkpoint: Option<String>,
    /// LoRAs to apply, in order (the catalog defaults when the job sent no `loras`), with the
    /// prompt's `<lora:...>` tags applied (SPEC §5a; `request.prompt` keeps the tags as written,
    /// the runtime encodes it without them).
    pub loras: Vec<LoraSpec>,
    /// The prompt's `<lora:...>` tags, resolved (their written names go into `Lora hashes`).
    pub lora_tags: Vec<crate::prompt_tags::LoraTag>,
    /// Encoding of the returned images.
    pub output_format: ImageFormat,
    /// True when the job asked for seed −1 and the seed was drawn at random.
    pub seed_was_random: bool,
    /// Validation warnings (ignored fields), to be returned with the output.
    pub warnings: Vec<String>,
    /// The job asked for its images in the bucket (`"upload": true`, SPEC §4).
    pub upload: bool,
    /// img2img inputs (SPEC §13), when the job sent `init_images`.
    pub img2img: Option<Img2ImgParams>,
    /// The hires fix (SPEC §13), when the job sent `enable_hr: true`.
    pub hires: Option<HiresParams>,
}

impl ValidatedJob {
    /// The seeds of every image (A1111 `all_seeds`): image i uses `seed + i`, or `seed` when a
    /// variation strength is set.
    pub fn seeds(&self) -> Vec<u64> {
        self.image_seeds().into_iter().map(|s| s.0).collect()
    }

    /// The variation seeds of every image (A1111 `all_subseeds`: `subseed + i`).
    pub fn subseeds(&self) -> Vec<u64> {
        self.image_seeds().into_iter().map(|s| s.1).collect()
    }

    /// Number of images the job renders (`batch_size × n_iter`).
    pub fn image_count(&self) -> u32 {
        self.request.batch_size * self.request.n_iter
    }

    fn image_seeds(&self) -> Vec<(u64, u64)> {
        let r = &self.request;
        r.variation.image_seeds(r.seed, self.image_count())
    }

    /// Every effective parameter (SPEC §4 `parameters`): the pipeline request's fields under
    /// their job names, the seeds as a list, and the worker-level choices.
    pub fn parameters(&self) -> Value {
        let (format, quality) = match self.output_format {
            ImageFormat::Png => ("png", None),
            ImageFormat::Jpeg { quality } => ("jpeg", Some(quality)),
            ImageFormat::WebP => ("webp", None),
        };
        let mut params = serde_json::to_value(&self.request).unwrap_or_else(|_| json!({}));
        if let Some(obj) = params.as_object_mut() {
            obj.insert("seeds".into(), json!(self.seeds()));
            obj.insert("checkpoint".into(), json!(self.checkpoint));
            obj.insert("loras".into(), json!(self.loras));
            obj.insert("output_format".into(), json!(format));
            obj.insert("quality".into(), json!(quality));
            image_fields::parameters(
                obj,
                self.img2img.as_ref(),
                self.hires.as_ref(),
                &self.request,
            );
        }
        params
    }
}

/// Validates a job `input` against the catalog, collecting every problem into one error.
/// The error code is `UNKNOWN_MODEL` when the only problems are unknown model names.
pub fn validate(input: &Value, catalog: &Catalog) -> Result<ValidatedJob, WorkerError> {
    let Some(obj) = input.as_object() else {
        return Err(WorkerError::InvalidInput(format!(
            "invalid input: `input` must be a JSON object, got {}",
            describe(input)
        )));
    };
    let (fields, override_notes) = with_overrides(obj);
    let mut c = Checker {
        obj: &fields,
        problems: Vec::new(),
        unknown_models: 0,
        notes: override_notes,
    };
    if let Some(v) = obj
        .get("override_settings")
        .filter(|v| !v.is_null() && !v.is_object())
    {
        c.problem(format!(
            "`override_settings` must be an object, got {}",
            describe(v)
        ));
    }
    let defaults = Txt2ImgRequest::default();

    let prompt = match obj.get("prompt") {
        None | Some(Value::Null) => {
            c.problem("`prompt` is required (a string)".to_string());
            None
        }
        Some(_) => c.string(&["prompt"], MAX_PROMPT_CHARS),
    };
    let negative_prompt = c.string(&["negative_prompt"], MAX_PROMPT_CHARS);
    let steps = c.int(&["steps", "num_inference_steps"], 1, 150);
    let cfg_scale = c.number(&["cfg_scale", "guidance_scale"], 0.0, 30.0);
    let width = c.dimension("width");
    let height = c.dimension("height");
    let sampler = c.sampler(catalog);
    let scheduler = c.scheduler(catalog);
    let seed = c.int(&["seed"], -1, MAX_SEED);
    let batch_size = c.int(&["batch_size", "num_images"], 1, 8);
    let seeds = seeds::read(&mut c, batch_size);
    let clip_skip = c.int(
        &["clip_skip", "override_settings.CLIP_stop_at_last_layers"],
        1,
        12,
    );
    let prompt_mode = c.prompt_mode();
    let emphasis = c.emphasis();
    let checkpoint = c.checkpoint(catalog);
    let loras = c.loras(catalog);
    let tagged = crate::prompt_tags::job_set(
        prompt.as_deref(),
        loras.unwrap_or_else(|| catalog.default_loras.clone()),
        catalog,
        MAX_LORAS,
    );
    for p in &tagged.problems {
        c.unknown_models += usize::from(p.unknown_model);
        c.problem(p.message.clone());
    }
    let output_format = c.output_format();
    let upload = c.upload(catalog);

    if let Some(images) = seeds.image_count(&c, batch_size) {
        c.pixel_budgets(&catalog.budgets, width, height, Some(images));
    }
    // Fields that would change the image but are not implemented (SPEC §3): one table.
    c.problems.extend(refusals::problems(obj));
    let images = image_fields::read(
        &mut c,
        catalog,
        width.unwrap_or(defaults.width),
        height.unwrap_or(defaults.height),
        batch_size.map_or(defaults.batch_size, to_u32),
    );

    let mut warnings = std::mem::take(&mut c.notes);
    warnings.extend(
        negative_prompt
            .as_deref()
            .and_then(crate::prompt_tags::negative_prompt_warning),
    );
    let mut unknown: Vec<&str> = obj
        .keys()
        .map(String::as_str)
        .filter(|k| !KNOWN_FIELDS.contains(k) && !refusals::covers(k) && !IMAGE_FIELDS.contains(k))
        .collect();
    unknown.sort_unstable();
    if !unknown.is_empty() {
        warnings.push(format!(
            "ignored unknown field(s): {}",
            unknown
                .iter()
                .map(|k| truncate(k, 64))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }

    if !c.problems.is_empty() {
        let n = c.problems.len();
        let head = if n == 1 {
            "invalid input".to_string()
        } else {
            format!("invalid input ({n} problems)")
        };
        let message = format!("{head}: {}", c.problems.join("; "));
        return Err(if c.unknown_models == n {
            WorkerError::UnknownModel(message)
        } else {
            WorkerError::InvalidInput(message)
        });
    }

    let (seed, seed_was_random) = match seed {
        None | Some(-1) => (crate::ids::random_seed(), true),
        Some(s) => (u64::try_from(s).unwrap_or(0), false),
    };
    let request = Txt2ImgRequest {
        prompt: prompt.unwrap_or_default(),
        negative_prompt: negative_prompt.filter(|n| !n.is_empty()),
        steps: steps.map_or(defaults.steps, to_u32),
        cfg_scale: cfg_scale.unwrap_or(defaults.cfg_scale),
        width: width.unwrap_or(defaults.width),
        height: height.unwrap_or(defaults.height),
        sampler_name: sampler.unwrap_or(defaults.sampler_name),
        scheduler,
        seed,
        batch_size: batch_size.map_or(defaults.batch_size, to_u32),
        clip_skip: clip_skip.map_or(defaults.clip_skip, to_u32),
        prompt_mode: prompt_mode.unwrap_or(defaults.prompt_mode),
        emphasis: emphasis.unwrap_or(defaults.emphasis),
        n_iter: seeds.n_iter.map_or(defaults.n_iter, to_u32),
        variation: seeds.variation(),
        sampler_params: seeds.sampler_params,
    };
    Ok(ValidatedJob {
        request,
        checkpoint: checkpoint
            .or_else(|| catalog.effective_default_checkpoint().map(str::to_string)),
        loras: tagged.loras,
        lora_tags: tagged.tags,
        output_format: output_format.unwrap_or_default(),
        seed_was_random,
        warnings,
        upload,
        img2img: images.img2img,
        hires: images.hires,
    })
}

/// The input with every honoured `override_settings` key copied in as
/// `override_settings.<key>` (so the field readers treat it as an alias of its job field), and
/// notes about the keys that are not honoured.
fn with_overrides(obj: &Map<String, Value>) -> (Map<String, Value>, Vec<String>) {
    let mut fields = obj.clone();
    let mut notes = Vec::new();
    match obj.get("override_settings") {
        None | Some(Value::Null) => {}
        Some(Value::Object(settings)) => {
            let mut ignored = Vec::new();
            for (key, value) in settings {
                match HONOURED_OVERRIDES.iter().find(|(k, _)| k == key) {
                    Some((k, _)) => {
                        fields.insert(format!("override_settings.{k}"), value.clone());
                    }
                    None if refusals::covers(&format!("override_settings.{key}")) => {}
                    None => ignored.push(truncate(key, 64)),
                }
            }
            if !ignored.is_empty() {
                ignored.sort_unstable();
                notes.push(format!(
                    "ignored override_settings key(s): {}",
                    ignored.join(", ")
                ));
            }
        }
        Some(_) => {} // reported by `validate`
    }
    (fields, notes)
}

/// Checks a checkpoint name against the catalog as a job's `checkpoint` field is checked
/// (used by A1111's `POST /options`), returning the catalog's spelling.
pub fn checkpoint_name(value: &Value, catalog: &Catalog) -> Result<String, WorkerError> {
    let fields: Map<String, Value> = [("checkpoint".to_string(), value.clone())]
        .into_iter()
        .collect();
    let mut c = Checker {
        obj: &fields,
        problems: Vec::new(),
        unknown_models: 0,
        notes: Vec::new(),
    };
    match c.checkpoint(catalog) {
        Some(name) => Ok(name),
        None if c.unknown_models > 0 => Err(WorkerError::UnknownModel(c.problems.join("; "))),
        None => Err(WorkerError::InvalidInput(c.problems.join("; "))),
    }
}

fn to_u32(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

/// A short description of a JSON value for error messages: `true (a boolean)`, `"7" (a string)`.
pub fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("{b} (a boolean)"),
        Value::Number(n) if n.is_f64() => {
            format!("{} (a non-integer number)", truncate(&n.to_string(), 32))
        }
        Value::Number(n) => format!("{} (an integer)", truncate(&n.to_string(), 32)),
        Value::String(s) => format!("{} (a string)", truncate(&format!("{s:?}"), 40)),
        Value::Array(_) => "an array".into(),
        Value::Object(_) => "an object".into(),
    }
}

fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_string()
    } else {
        let cut: String = s.chars().take(max_chars).collect();
        format!("{cut}…")
    }
}

/// Why a job-supplied name is not acceptable as a model name (paths and odd characters).
pub fn name_problem(name: &str) -> Option<&'static str> {
    if name.trim().is_empty() {
        Some("is empty")
    } else if name.contains('/') || name.contains('\\') || name.contains("..") {
        Some("looks like a path (names may not contain `/`, `\\` or `..`)")
    } else if name.chars().any(char::is_control) {
        Some("contains control characters")
    } else if name.chars().count() > 200 {
        Some("is longer than 200 characters")
    } else {
        None
    }
}

/// Collects problems while reading fields.
struct Checker<'a> {
    obj: &'a Map<String, Value>,
    problems: Vec<String>,
    unknown_models: usize,
    notes: Vec<String>,
}

impl<'a> Checker<'a> {
    fn problem(&mut self, p: String) {
        self.problems.push(p);
    }

    /// The value of a field or its alias; `null` counts as absent. Conflicting aliases are a problem.
    fn get(&mut self, names: &[&'a str]) -> Option<(&'a str, &'a Value)> {
        let present: Vec<(&str, &Value)> = names
            .iter()
            .filter_map(|n| self.obj.get(*n).filter(|v| !v.is_null()).map(|v| (*n, v)))
            .collect();
        match present.as_slice() {
            [] => None,
            [one] => Some(*one),
            [first, rest @ ..] => {
                if rest.iter().all(|(_, v)| *v == first.1) {
                    Some(*first)
                } else {
                    let list = present
                        .iter()
                        .map(|(n, _)| format!("`{n}`"))
                        .collect::<Vec<_>>();
                    self.problem(format!(
                        "{} are aliases of one field but have different values",
                        list.join(" and ")
                    ));
                    None
                }
            }
        }
    }

    fn int(&mut self, names: &[&'a str], min: i64, max: i64) -> Option<i64> {
        let (name, v) = self.get(names)?;
        match v.as_i64() {
            Some(i) if (min..=max).contains(&i) => Some(i),
            Some(_) => {
                self.problem(format!(
                    "`{name}` must be {min}..={max}, got {}",
                    describe(v)
                ));
                None
            }
            None => {
                let why = if v.as_u64().is_some() {
                    format!("must be {min}..={max}")
                } else {
                    "must be an integer".to_string()
                };
                self.problem(format!("`{name}` {why}, got {}", describe(v)));
                None
            }
        }
    }

    fn number(&mut self, names: &[&'a str], min: f64, max: f64) -> Option<f64> {
        let (name, v) = self.get(names)?;
        match v.as_f64() {
            Some(x) if x.is_finite() && x >= min && x <= max => Some(x),
            Some(_) => {
                self.problem(format!(
                    "`{name}` must be a number in {}..={}, got {}",
                    format_number(min),
                    format_number(max),
                    describe(v)
                ));
                None
            }
            None => {
                self.problem(format!("`{name}` must be a number, got {}", describe(v)));
                None
            }
        }
    }

    fn string(&mut self, names: &[&'a str], max_chars: usize) -> Option<String> {
        let (name, v) = self.get(names)?;
        match v.as_str() {
            Some(s) if s.chars().count() <= max_chars => Some(s.to_string()),
            Some(_) => {
                self.problem(format!("`{name}` is longer than {max_chars} characters"));
                None
            }
            None => {
                self.problem(format!("`{name}` must be a string, got {}", describe(v)));
                None
            }
        }
    }

    /// Output pixels of one image and of the whole job against the budgets (width and height
    /// default to the request defaults when absent; nothing is checked when one was invalid).
    fn pixel_budgets(
        &mut self,
        budgets: &crate::catalog::Budgets,
        width: Option<u32>,
        height: Option<u32>,
        batch: Option<i64>,
    ) {
        // A field that is present but invalid was reported already; no budget guess on it.
        let invalid = |v: bool, names: &[&str]| {
            !v && names
                .iter()
                .any(|n| self.obj.get(*n).is_some_and(|x| !x.is_null()))
        };
        if invalid(width.is_some(), &["width"])
            || invalid(height.is_some(), &["height"])
            || invalid(batch.is_some(), &["batch_size", "num_images"])
        {
            return;
        }
        let d = Txt2ImgRequest::default();
        let w = u64::from(width.unwrap_or(d.width));
        let h = u64::from(height.unwrap_or(d.height));
        let images = batch.map_or(u64::from(d.batch_size), |b| b.unsigned_abs());
        let per_image = w * h;
        if per_image > budgets.max_pixels {
            self.problem(format!(
                "{w}x{h} is {per_image} pixels per image, over this worker's budget of {} (SDXL_MAX_PIXELS)",
                budgets.max_pixels
            ));
        } else if per_image * images > budgets.max_batch_pixels {
            self.problem(format!(
                "{images} images of {w}x{h} are {} pixels, over this worker's budget of {} per job (SDXL_MAX_BATCH_PIXELS)",
                per_image * images,
                budgets.max_batch_pixels
            ));
        }
    }

    fn dimension(&mut self, name: &'a str) -> Option<u32> {
        let (_, v) = self.get(&[name])?;
        let Some(i) = v.as_i64() else {
            self.problem(format!(
                "`{name}` must be an integer (multiple of 8, 64..=2048), got {}",
                describe(v)
            ));
            return None;
        };
        if !(64..=2048).contains(&i) || i % 8 != 0 {
            self.problem(format!(
                "`{name}` must be a multiple of 8 in 64..=2048, got {i}"
            ));
            return None;
        }
        u32::try_from(i).ok()
    }

    /// Picks the catalog's spelling of `value` (exact, else case-insensitive).
    fn lookup<'c>(list: impl Iterator<Item = &'c String>, value: &str) -> Option<String> {
        let mut ci = None;
        for item in list {
            if item == value {
                return Some(item.clone());
            }
            if ci.is_none() && item.eq_ignore_ascii_case(value) {
                ci = Some(item.clone());
            }
        }
        ci
    }

    fn sampler(&mut self, catalog: &Catalog) -> Option<String> {
        let name = self.string(&["sampler_name", "sampler"], 200)?;
        // Catalog names, plus every spelling the pipeline resolves (legacy "DPM++ 2M Karras",
        // A1111 aliases such as "k_dpmpp_2m").
        let found = Self::lookup(catalog.samplers.iter(), name.trim()).or_else(|| {
            sdxl_pipeline::sampling::resolve_sampler(name.trim(), None)
                .ok()
                .map(|_| name.trim().to_string())
        });
        if found.is_none() {
            self.problem(format!(
                "unknown sampler {:?}; available: {}",
                truncate(&name, 60),
                catalog.samplers.join(", ")
            ));
        }
        found
    }

    fn scheduler(&mut self, catalog: &Catalog) -> Option<String> {
        let name = self.string(&["scheduler"], 100)?;
        let found = Self::lookup(catalog.schedulers.iter(), name.trim());
        if found.is_none() {
            self.problem(format!(
                "unknown scheduler {:?}; available: {}",
                truncate(&name, 60),
                catalog.schedulers.join(", ")
            ));
        }
        found
    }

    fn prompt_mode(&mut self) -> Option<PromptMode> {
        let s = self.string(&["prompt_mode"], 100)?;
        let mode = PromptMode::parse(&s);
        if mode.is_none() {
            self.problem(format!(
                "`prompt_mode` must be \"blend\" or \"concat\", got {:?}",
                truncate(&s, 40)
            ));
        }
        mode
    }

    /// `emphasis` (job spelling `original`/`no_norm`/`ignore`/`none`) and A1111's
    /// `override_settings.emphasis` (`Original`/`No norm`/`Ignore`/`None`); either spelling is
    /// accepted in both places, and both given must agree.
    fn emphasis(&mut self) -> Option<Emphasis> {
        let mut found: Option<Emphasis> = None;
        for name in ["emphasis", "override_settings.emphasis"] {
            let Some(s) = self.string(&[name], 100) else {
                continue;
            };
            let Some(e) = Emphasis::parse(&s) else {
                self.problem(format!(
                    "`{name}` must be \"original\", \"no_norm\", \"ignore\" or \"none\" (A1111: \"Original\", \"No norm\", \"Ignore\", \"None\"), got {:?}",
                    truncate(&s, 40)
                ));
                return None;
            };
            match found {
                Some(prev) if prev != e => {
                    self.problem(
                        "`emphasis` and `override_settings.emphasis` have different values"
                            .to_string(),
                    );
                    return None;
                }
                _ => found = Some(e),
            }
        }
        found
    }

    fn model_name(&mut self, field: &str, name: &str, known: Vec<&String>) -> Option<String> {
        if let Some(why) = name_problem(name) {
            self.problem(format!("{field} {:?} {why}", truncate(name, 60)));
            return None;
        }
        let found = Self::lookup(known.iter().copied(), name);
        if found.is_none() {
            self.unknown_models += 1;
            let list = known
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            self.problem(format!(
                "unknown {field} {:?}; available: {list}",
                truncate(name, 60)
            ));
        }
        found
    }

    fn checkpoint(&mut self, catalog: &Catalog) -> Option<String> {
        let name = self.string(
            &["checkpoint", "override_settings.sd_model_checkpoint"],
            1000,
        )?;
        self.model_name("checkpoint", &name, catalog.checkpoints.iter().collect())
    }

    fn loras(&mut self, catalog: &Catalog) -> Option<Vec<LoraSpec>> {
        let (_, v) = self.get(&["loras"])?;
        let Some(items) = v.as_array() else {
            self.problem(format!(
                "`loras` must be an array of {{\"name\", \"scale\"}} objects, got {}",
                describe(v)
            ));
            return None;
        };
        if items.len() > MAX_LORAS {
            self.problem(format!(
                "`loras` has {} entries; at most {MAX_LORAS} are allowed",
                items.len()
            ));
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let Some(obj) = item.as_object() else {
                self.problem(format!(
                    "`loras[{i}]` must be an object {{\"name\", \"scale\"}}, got {}",
                    describe(item)
                ));
                ok = false;
                continue;
            };
            let name = match obj.get("name") {
                Some(Value::String(s)) => {
                    let known = catalog.loras.iter().map(|l| &l.name).collect();
                    self.model_name(&format!("LoRA (`loras[{i}].name`)"), s, known)
                }
                Some(other) => {
                    self.problem(format!(
                        "`loras[{i}].name` must be a string, got {}",
                        describe(other)
                    ));
                    None
                }
                None => {
                    self.problem(format!("`loras[{i}].name` is required"));
                    None
                }
            };
            let scale = match obj.get("scale") {
                None | Some(Value::Null) => name
                    .as_ref()
                    .and_then(|n| catalog.loras.iter().find(|l| &l.name == n).map(|l| l.scale)),
                Some(v) => match v.as_f64() {
                    Some(x) if x.is_finite() && (-4.0..=4.0).contains(&x) => Some(x),
                    _ => {
                        self.problem(format!(
                            "`loras[{i}].scale` must be a number in -4..=4, got {}",
                            describe(v)
                        ));
                        None
                    }
                },
            };
            for key in obj.keys().filter(|k| *k != "name" && *k != "scale") {
                self.problem(format!(
                    "`loras[{i}]` has unknown key `{}` (only `name` and `scale`)",
                    truncate(key, 40)
                ));
                ok = false;
            }
            match (name, scale) {
                (Some(name), Some(scale)) => {
                    if out.iter().any(|l: &LoraSpec| l.name == name) {
                        self.problem(format!("LoRA {name:?} is listed twice in `loras`"));
                        ok = false;
                    }
                    out.push(LoraSpec {
                        name,
                        scale,
                        te_scale: None,
                    });
                }
                _ => ok = false,
            }
        }
        ok.then_some(out)
    }

    /// `upload`: a boolean (nothing coerced); `true` needs a configured bucket.
    fn upload(&mut self, catalog: &Catalog) -> bool {
        let Some((_, v)) = self.get(&["upload"]) else {
            return false;
        };
        match v.as_bool() {
            Some(true) if !catalog.uploads_enabled => {
                self.problem(
                    "`upload` is true but no bucket configured (BUCKET_ENDPOINT_URL, SPEC §4)"
                        .to_string(),
                );
                false
            }
            Some(b) => b,
            None => {
                self.problem(format!("`upload` must be a boolean, got {}", describe(v)));
                false
            }
        }
    }

    fn output_format(&mut self) -> Option<ImageFormat> {
        let format = self.string(&["output_format"], 20);
        let quality = self.int(&["quality"], 1, 100);
        if quality.is_some() && format.as_deref() != Some("jpeg") {
            self.notes
                .push("`quality` applies to output_format \"jpeg\" only; ignored".to_string());
        }
        let result = match format.as_deref() {
            None | Some("png") => Some(ImageFormat::Png),
            Some("jpeg") => Some(ImageFormat::Jpeg {
                quality: quality
                    .and_then(|q| u8::try_from(q).ok())
                    .unwrap_or(DEFAULT_JPEG_QUALITY),
            }),
            Some("webp") => Some(ImageFormat::WebP),
            Some(other) => {
                self.problem(format!(
                    "`output_format` must be \"png\", \"jpeg\" or \"webp\", got {:?}",
                    truncate(other, 20)
                ));
                None
            }
        };
        result
    }
}
