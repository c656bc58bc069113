//! What a render produces: encoded images with the A1111 infotext built from the names the
//! pipeline resolved, and the conversion into the RunPod [`JobOutput`] every handler returns.

use sdxl_pipeline::output::{encode_image, format_number, to_base64, Infotext, RgbImage};

use crate::error::WorkerError;
use crate::job::ValidatedJob;
use crate::protocol::{JobOutput, Timings};

/// The sampler and schedule names as A1111 writes them (`DPM++ 2M`, `Karras`), as resolved by
/// the pipeline from whatever spelling the job used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SamplerLabels {
    /// Sampler without the schedule.
    pub sampler: String,
    /// Schedule type label.
    pub schedule: String,
    /// The sampler parameters A1111 writes when not default (`Eta`, `Sigma churn`, ...).
    pub extra: Vec<(String, String)>,
}

impl SamplerLabels {
    /// Resolves the labels of a job without a model (the pipeline's name table).
    pub fn of(job: &ValidatedJob) -> Result<Self, WorkerError> {
        let r = &job.request;
        let choice = sdxl_pipeline::sampling::resolve_sampler_with(
            &r.sampler_name,
            r.scheduler.as_deref(),
            &r.sampler_params,
        )?;
        Ok(Self {
            sampler: choice.infotext_sampler,
            schedule: choice.infotext_schedule,
            extra: choice.extra_infotext,
        })
    }
}

/// One encoded image.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedImage {
    /// PNG/JPEG/WebP bytes (PNGs carry the infotext in their `parameters` chunk).
    pub bytes: Vec<u8>,
    /// The A1111 infotext.
    pub infotext: String,
    /// The seed of this image.
    pub seed: u64,
}

/// What the runtime returns for one job.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// The images in batch order.
    pub images: Vec<RenderedImage>,
    /// Things the user should know (unmatched LoRA keys, prompt fallbacks).
    pub warnings: Vec<String>,
    /// Phase timings.
    pub timings: Timings,
    /// The render used an inpainting model's image conditioning as A1111 reports it
    /// (`is_using_inpainting_conditioning`).
    pub inpainting_conditioning: bool,
}

impl Rendered {
    /// The RunPod output of this render: base64 images, the job's parameters, the first image's
    /// infotext, the job's validation warnings followed by the render's.
    pub fn into_job_output(self, job: &ValidatedJob) -> JobOutput {
        let infotexts: Vec<String> = self.images.iter().map(|i| i.infotext.clone()).collect();
        let mut warnings = job.warnings.clone();
        warnings.extend(self.warnings);
        JobOutput {
            images: self.images.iter().map(|i| to_base64(&i.bytes)).collect(),
            image_urls: None,
            parameters: job.parameters(),
            info: infotexts.first().cloned().unwrap_or_default(),
            infotexts,
            warnings,
            timings: self.timings,
            inpainting_conditioning: self.inpainting_conditioning,
        }
    }
}

/// The file hashes an infotext lists (A1111's `Lora hashes` and `TI hashes`): `(alias,
/// shorthash)` pairs in order; entries whose sha256 is unknown are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkHashes {
    /// `Lora hashes`: the name the prompt's tag used (else the catalog name) and its shorthash.
    pub lora: Vec<(String, String)>,
    /// `TI hashes`: embedding name and shorthash.
    pub ti: Vec<(String, String)>,
}

impl NetworkHashes {
    /// The infotext fields: `("Lora hashes", "a: 0123456789ab, b: ...")`, then `TI hashes`.
    pub fn fields(&self) -> Vec<(String, String)> {
        let join = |list: &[(String, String)]| {
            list.iter()
                .map(|(name, hash)| format!("{name}: {hash}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut out = Vec::new();
        if !self.lora.is_empty() {
            out.push(("Lora hashes".to_string(), join(&self.lora)));
        }
        if !self.ti.is_empty() {
            out.push(("TI hashes".to_string(), join(&self.ti)));
        }
        out
    }
}

/// A1111's shorthash: the first 12 hex digits of the file's sha256 (lower case).
pub fn shorthash(sha256: &str) -> String {
    sha256
        .chars()
        .take(12)
        .collect::<String>()
        .to_ascii_lowercase()
}

/// A name as A1111 writes it in `Lora hashes` / `TI hashes`: without `:` and `,`.
pub fn hash_alias(name: &str) -> String {
    name.chars().filter(|c| *c != ':' && *c != ',').collect()
}

/// Encodes every image in the job's output format with its infotext.
pub fn encode_all(
    job: &ValidatedJob,
    labels: &SamplerLabels,
    images: &[RgbImage],
    seeds: &[u64],
    hashes: &NetworkHashes,
) -> Result<Vec<RenderedImage>, WorkerError> {
    images
        .iter()
        .zip(seeds)
        .enumerate()
        .map(|(i, (img, &seed))| {
            let info = infotext_with(job, labels, i as u32, hashes);
            let bytes = encode_image(img, job.output_format, Some(&info))?;
            Ok(RenderedImage {
                bytes,
                infotext: info,
                seed,
            })
        })
        .collect()
}

/// The A1111 infotext of image `index` of `job` (its seed and variation seed as A1111's
/// `all_seeds` / `all_subseeds`).
pub fn infotext(job: &ValidatedJob, labels: &SamplerLabels, index: u32) -> String {
    infotext_with(job, labels, index, &NetworkHashes::default())
}

/// The A1111 infotext of image `index` of `job`, with `Lora hashes` / `TI hashes`. The prompt is
/// the one written, `<lora:...>` tags included (as A1111 writes it).
pub fn infotext_with(
    job: &ValidatedJob,
    labels: &SamplerLabels,
    index: u32,
    hashes: &NetworkHashes,
) -> String {
    let r = &job.request;
    let i = index as usize;
    let seed = job
        .seeds()
        .get(i)
        .copied()
        .unwrap_or_else(|| r.seed.saturating_add(u64::from(index)));
    let subseed = job
        .subseeds()
        .get(i)
        .copied()
        .unwrap_or(r.variation.subseed);
    let mut extra = crate::job::image_infotext(job);
    if !job.loras.is_empty() {
        let list = job
            .loras
            .iter()
            .map(|l| match l.te_scale {
                Some(te) => format!(
                    "{}:{}:{}",
                    l.name,
                    format_number(te),
                    format_number(l.scale)
                ),
                None => format!("{}:{}", l.name, format_number(l.scale)),
            })
            .collect::<Vec<_>>()
            .join(", ");
        extra.push(("Loras".to_string(), list));
    }
    extra.extend(labels.extra.iter().cloned());
    let second_order =
        sdxl_pipeline::sampling::resolve_sampler(&r.sampler_name, r.scheduler.as_deref())
            .is_ok_and(|c| c.second_order);
    let steps = sdxl_pipeline::prompt::schedule_steps(r.steps as usize, second_order);
    if let Some(name) = sdxl_pipeline::prompt::emphasis_infotext(
        r.emphasis,
        &r.prompt,
        r.negative_prompt.as_deref(),
        steps,
    ) {
        extra.push(("Emphasis".to_string(), name.to_string()));
    }
    extra.extend(hashes.fields());
    Infotext {
        prompt: r.prompt.clone(),
        negative_prompt: r.negative_prompt.clone(),
        steps: r.steps,
        sampler: labels.sampler.clone(),
        schedule_type: Some(labels.schedule.clone()),
        cfg_scale: r.cfg_scale,
        seed,
        width: r.width,
        height: r.height,
        model: job.checkpoint.clone(),
        variation: r.variation.infotext(subseed),
        clip_skip: (r.clip_skip > 2).then_some(r.clip_skip),
        extra,
    }
    .render()
}
