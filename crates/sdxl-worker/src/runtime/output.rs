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
}

impl SamplerLabels {
    /// Resolves the labels of a job without a model (the pipeline's name table).
    pub fn of(job: &ValidatedJob) -> Result<Self, WorkerError> {
        let r = &job.request;
        let choice =
            sdxl_pipeline::sampling::resolve_sampler(&r.sampler_name, r.scheduler.as_deref())?;
        Ok(Self {
            sampler: choice.infotext_sampler,
            schedule: choice.infotext_schedule,
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
        }
    }
}

/// Encodes every image in the job's output format with its infotext.
pub fn encode_all(
    job: &ValidatedJob,
    labels: &SamplerLabels,
    images: &[RgbImage],
    seeds: &[u64],
) -> Result<Vec<RenderedImage>, WorkerError> {
    images
        .iter()
        .zip(seeds)
        .enumerate()
        .map(|(i, (img, &seed))| {
            let info = infotext(job, labels, i as u32);
            let bytes = encode_image(img, job.output_format, Some(&info))?;
            Ok(RenderedImage {
                bytes,
                infotext: info,
                seed,
            })
        })
        .collect()
}

/// The A1111 infotext of image `index` of `job`.
pub fn infotext(job: &ValidatedJob, labels: &SamplerLabels, index: u32) -> String {
    let r = &job.request;
    let mut extra = crate::job::image_infotext(job);
    if !job.loras.is_empty() {
        let list = job
            .loras
            .iter()
            .map(|l| format!("{}:{}", l.name, format_number(l.scale)))
            .collect::<Vec<_>>()
            .join(", ");
        extra.push(("Loras".to_string(), list));
    }
    Infotext {
        prompt: r.prompt.clone(),
        negative_prompt: r.negative_prompt.clone(),
        steps: r.steps,
        sampler: labels.sampler.clone(),
        schedule_type: Some(labels.schedule.clone()),
        cfg_scale: r.cfg_scale,
        seed: r.seed.saturating_add(u64::from(index)),
        width: r.width,
        height: r.height,
        model: job.checkpoint.clone(),
        clip_skip: (r.clip_skip > 2).then_some(r.clip_skip),
        extra,
    }
    .render()
}
