//! A model-free [`JobHandler`] for tests and protocol development: it walks the steps (reporting
//! progress and honouring cancellation), then returns small real PNGs with the job's infotext.

use super::{
    CancelFlag, Catalog, ErrorCode, JobError, JobHandler, JobOutput, LoraSpec, Timings,
    SPEC_SAMPLERS, SPEC_SCHEDULERS,
};
use crate::job::ValidatedJob;
use sdxl_pipeline::output::{encode_image, to_base64, RgbImage};
use std::time::{Duration, Instant};

/// Test stub: no models, deterministic tiny images.
#[derive(Debug, Clone)]
pub struct StubHandler {
    /// The names it accepts.
    pub catalog: Catalog,
    /// Sleep per denoising step (lets tests observe a running job).
    pub step_delay: Duration,
    /// Fail every job with this error after the steps.
    pub fail_with: Option<JobError>,
    /// Panic inside `handle` (tests that a panic becomes an `INTERNAL` error).
    pub panic: bool,
    /// Side of the square images it returns, in pixels.
    pub image_side: u32,
}

impl Default for StubHandler {
    fn default() -> Self {
        Self {
            catalog: stub_catalog(),
            step_delay: Duration::ZERO,
            fail_with: None,
            panic: false,
            image_side: 8,
        }
    }
}

/// The catalog the stub serves: two checkpoints, two LoRAs (one default), SPEC §6 samplers.
pub fn stub_catalog() -> Catalog {
    Catalog {
        checkpoints: vec!["Stub XL".into(), "Other XL".into()],
        default_checkpoint: Some("Stub XL".into()),
        loras: vec![
            LoraSpec {
                name: "Detail Tweaker XL".into(),
                scale: 1.5,
            },
            LoraSpec {
                name: "Pixel Art XL".into(),
                scale: 1.0,
            },
        ],
        default_loras: vec![LoraSpec {
            name: "Detail Tweaker XL".into(),
            scale: 1.5,
        }],
        samplers: SPEC_SAMPLERS.iter().map(|s| s.to_string()).collect(),
        schedulers: SPEC_SCHEDULERS.iter().map(|s| s.to_string()).collect(),
    }
}

impl JobHandler for StubHandler {
    fn handle(
        &self,
        job: &ValidatedJob,
        progress: &dyn Fn(u32, u32),
        cancel: &CancelFlag,
    ) -> Result<JobOutput, JobError> {
        let start = Instant::now();
        if self.panic {
            panic!("stub handler asked to panic");
        }
        let total = job.request.steps;
        for step in 1..=total {
            if cancel.is_cancelled() {
                return Err(JobError::new(ErrorCode::Cancelled, "job cancelled"));
            }
            if !self.step_delay.is_zero() {
                std::thread::sleep(self.step_delay);
            }
            progress(step, total);
        }
        if let Some(e) = &self.fail_with {
            return Err(e.clone());
        }
        let info = job.infotext(0);
        let side = self.image_side.max(1);
        let mut images = Vec::new();
        for i in 0..job.request.batch_size {
            let shade = (job.request.seed.wrapping_add(u64::from(i)) % 251) as u8;
            let pixels = vec![shade; side as usize * side as usize * 3];
            let img = RgbImage::new(side, side, pixels)?;
            let bytes = encode_image(&img, job.output_format, Some(&job.infotext(i)))?;
            images.push(to_base64(&bytes));
        }
        let total_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        Ok(JobOutput {
            images,
            parameters: job.parameters(),
            info,
            warnings: Vec::new(),
            timings: Timings {
                total_ms,
                denoise_ms: total_ms,
                ..Timings::default()
            },
        })
    }

    fn catalog(&self) -> &Catalog {
        &self.catalog
    }
}
