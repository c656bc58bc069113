//! The model-backed [`JobHandler`]: the [`ModelRuntime`] renders the job's catalog checkpoint
//! and LoRAs, and the result becomes the RunPod output.

use super::{CancelFlag, JobHandler};
use crate::catalog::Catalog;
use crate::error::WorkerError;
use crate::job::ValidatedJob;
use crate::protocol::JobOutput;
use crate::runtime::ModelRuntime;

impl JobHandler for ModelRuntime {
    fn handle(
        &self,
        job: &ValidatedJob,
        progress: &dyn Fn(u32, u32),
        cancel: &CancelFlag,
    ) -> Result<JobOutput, WorkerError> {
        let plan = self.plan_for(job)?;
        let rendered = self.render(job, &plan, progress, cancel.control())?;
        Ok(rendered.into_job_output(job))
    }

    fn catalog(&self) -> &Catalog {
        ModelRuntime::catalog(self)
    }

    fn embeddings(&self) -> Vec<crate::runtime::EmbeddingInfo> {
        ModelRuntime::embeddings(self)
    }
}
