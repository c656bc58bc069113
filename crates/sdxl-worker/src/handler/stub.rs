//! A model-free [`JobHandler`] for tests and protocol development: it walks the steps (reporting
//! progress and honouring cancellation), then returns small real PNGs with the job's infotext,
//! built exactly as the model runtime builds its output.

use super::{CancelFlag, JobHandler};
use crate::catalog::{Catalog, LoraSpec};
use crate::error::WorkerError;
use crate::job::ValidatedJob;
use crate::protocol::{JobOutput, Timings};
use crate::runtime::{output, Rendered, SamplerLabels};
use sdxl_pipeline::output::RgbImage;
use std::time::{Duration, Instant};

/// Test stub: no models, deterministic tiny images.
#[derive(Debug, Clone)]
pub struct StubHandler {
    /// The names it accepts.
    pub catalog: Catalog,
    /// Sleep per denoising step (lets tests observe a running job).
    pub step_delay: Duration,
    /// Fail every job with this error after the steps.
    pub fail_with: Option<WorkerError>,
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

/// The catalog the stub serves: two checkpoints, two LoRAs (one default), the pipeline's samplers.
pub fn stub_catalog() -> Catalog {
    let detail = LoraSpec {
        name: "Detail Tweaker XL".into(),
        scale: 1.5,
        te_scale: None,
    };
    Catalog {
        checkpoints: vec!["Stub XL".into(), "Other XL".into()],
        default_checkpoint: Some("Stub XL".into()),
        loras: vec![
            detail.clone(),
            LoraSpec {
                name: "Pixel Art XL".into(),
                scale: 1.0,
                te_scale: None,
            },
        ],
        default_loras: vec![detail],
        ..Catalog::pipeline_only()
    }
}

impl JobHandler for StubHandler {
    fn handle(
        &self,
        job: &ValidatedJob,
        progress: &dyn Fn(u32, u32),
        cancel: &CancelFlag,
    ) -> Result<JobOutput, WorkerError> {
        let start = Instant::now();
        if self.panic {
            panic!("stub handler asked to panic");
        }
        let total = job.request.steps;
        for step in 1..=total {
            if cancel.is_cancelled() {
                return Err(WorkerError::cancelled());
            }
            if !self.step_delay.is_zero() {
                std::thread::sleep(self.step_delay);
            }
            progress(step, total);
        }
        if let Some(e) = &self.fail_with {
            return Err(e.clone());
        }
        let side = self.image_side.max(1);
        let seeds = job.seeds();
        let images = seeds
            .iter()
            .map(|seed| {
                let shade = (seed % 251) as u8;
                RgbImage::new(side, side, vec![shade; side as usize * side as usize * 3])
            })
            .collect::<Result<Vec<_>, _>>()?;
        let images = output::encode_all(
            job,
            &SamplerLabels::of(job)?,
            &images,
            &seeds,
            &output::NetworkHashes::default(),
        )?;
        let total_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let rendered = Rendered {
            images,
            warnings: Vec::new(),
            inpainting_conditioning: false,
            timings: Timings {
                total_ms,
                denoise_ms: total_ms,
                ..Timings::default()
            },
        };
        Ok(rendered.into_job_output(job))
    }

    fn catalog(&self) -> &Catalog {
        &self.catalog
    }
}
