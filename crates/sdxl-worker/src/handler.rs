//! The job-handler contract shared by every mode (RunPod loop, local API, one-shot): the
//! [`JobHandler`] trait, the [`CancelFlag`], and [`execute`], which validates a raw `input` and
//! runs it safely. The model-backed handler is the [`ModelRuntime`]; [`StubHandler`] serves
//! protocol tests without a model.

mod model;
mod stub;

pub use stub::{stub_catalog, StubHandler};

use crate::catalog::{Budgets, Catalog};
use crate::error::WorkerError;
use crate::job::{self, ValidatedJob};
use crate::protocol::JobOutput;
use crate::runtime::{self, ModelRuntime};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Test-only: set to `1` to make the binary serve jobs with [`StubHandler`] instead of models.
pub const STUB_HANDLER_ENV: &str = "SDXL_WORKER_STUB_HANDLER";
/// Test-only: milliseconds the stub handler sleeps per step (default 0).
pub const STUB_STEP_MS_ENV: &str = "SDXL_WORKER_STUB_STEP_MS";

/// A cancellation flag shared between the protocol side and the running job, with A1111's
/// `/interrupt` and `/skip` requests beside it (they end the render early but keep what it has
/// made, see `sdxl_pipeline::interrupt`).
#[derive(Debug, Clone, Default)]
pub struct CancelFlag {
    cancel: Arc<AtomicBool>,
    interrupt: Arc<AtomicBool>,
    skip: Arc<AtomicBool>,
}

impl CancelFlag {
    /// A fresh, un-cancelled flag.
    pub fn new() -> Self {
        Self::default()
    }
    /// Requests cancellation; the job stops at its next step boundary.
    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }
    /// True once [`CancelFlag::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
    /// A1111 `/interrupt`: the render stops at its next denoiser call and returns the current
    /// image decoded from A1111's `last_latent`; later images are not made.
    pub fn interrupt(&self) {
        self.interrupt.store(true, Ordering::SeqCst);
    }
    /// A1111 `/skip`: like [`CancelFlag::interrupt`] for the current image only.
    pub fn skip(&self) {
        self.skip.store(true, Ordering::SeqCst);
    }
    /// True once [`CancelFlag::interrupt`] was called.
    pub fn is_interrupted(&self) -> bool {
        self.interrupt.load(Ordering::SeqCst)
    }
    /// The underlying cancel flag, as the pipeline polls it between denoising steps.
    pub fn as_atomic(&self) -> &AtomicBool {
        &self.cancel
    }
    /// All three flags, as the pipeline's render polls them.
    pub fn control(&self) -> sdxl_pipeline::interrupt::RenderControl<'_> {
        sdxl_pipeline::interrupt::RenderControl {
            cancel: &self.cancel,
            interrupt: Some(&self.interrupt),
            skip: Some(&self.skip),
        }
    }
}

/// Runs validated jobs. Implementations do the GPU work; they are called on a blocking thread.
pub trait JobHandler: Send + Sync + 'static {
    /// Runs one validated job; reports progress `(step, total)` and polls `cancel` between steps
    /// (returning a `CANCELLED` error when it is set). The output's warnings start with the
    /// job's validation warnings.
    fn handle(
        &self,
        job: &ValidatedJob,
        progress: &dyn Fn(u32, u32),
        cancel: &CancelFlag,
    ) -> Result<JobOutput, WorkerError>;

    /// Names the validator accepts (checkpoints, LoRAs, samplers).
    fn catalog(&self) -> &Catalog;

    /// The textual-inversion embeddings of the loaded model (`GET /sdapi/v1/embeddings`); none
    /// by default.
    fn embeddings(&self) -> Vec<runtime::EmbeddingInfo> {
        Vec::new()
    }
}

/// Validates a raw `input` object against the handler's catalog and runs it (see
/// [`run_validated`]).
pub fn execute(
    handler: &dyn JobHandler,
    input: &serde_json::Value,
    progress: &dyn Fn(u32, u32),
    cancel: &CancelFlag,
) -> Result<JobOutput, WorkerError> {
    let job = job::validate(input, handler.catalog())?;
    run_validated(handler, &job, progress, cancel)
}

/// Runs an already validated job, turning a panic in the handler into an `INTERNAL` error.
pub fn run_validated(
    handler: &dyn JobHandler,
    job: &ValidatedJob,
    progress: &dyn Fn(u32, u32),
    cancel: &CancelFlag,
) -> Result<JobOutput, WorkerError> {
    match catch_unwind(AssertUnwindSafe(|| handler.handle(job, progress, cancel))) {
        Ok(result) => result,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            tracing::error!(panic = %what, "job handler panicked");
            Err(WorkerError::Internal(format!(
                "the job handler failed: {what}"
            )))
        }
    }
}

/// Builds the handler the binary serves jobs with: the [`ModelRuntime`] over models.toml on the
/// device of `SDXL_DEVICE`/`SDXL_DTYPE`, with the default model preloaded. With
/// `SDXL_WORKER_STUB_HANDLER=1` (test-only) it is the [`StubHandler`].
pub fn load_handler(models_toml: Option<&Path>) -> anyhow::Result<Arc<dyn JobHandler>> {
    if std::env::var(STUB_HANDLER_ENV).as_deref() == Ok("1") {
        let step_ms = std::env::var(STUB_STEP_MS_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        tracing::warn!("serving jobs with the test-only stub handler ({STUB_HANDLER_ENV}=1)");
        return Ok(Arc::new(StubHandler {
            step_delay: std::time::Duration::from_millis(step_ms),
            catalog: Catalog {
                budgets: Budgets::from_env()?,
                ..stub_catalog()
            },
            ..StubHandler::default()
        }));
    }
    let config = crate::models::ModelsConfig::load(models_toml)?;
    let (device, dtype) = runtime::device_from_env()?;
    let handler =
        ModelRuntime::new(Some(config), device, dtype)?.with_budgets(Budgets::from_env()?);
    if let Err(e) = handler.preload() {
        tracing::error!(
            code = e.code().as_str(),
            "could not load the default checkpoint: {e}"
        );
    }
    Ok(Arc::new(handler))
}
