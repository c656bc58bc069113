//! The one-shot local test mode (runpod.md §8.1): run `--test_input '<json>'` or
//! `./test_input.json` once, print the result body as JSON on stdout, exit 0 on success and 1 on
//! any error. No network (apart from model fetching done by the handler itself).

use crate::error::WorkerError;
use crate::handler::{self, CancelFlag, JobHandler};
use crate::logging;
use crate::protocol::{self, JobOutput};
use std::path::Path;
use std::process::ExitCode;

/// Job id used for the one-shot run (as in the runpod SDK).
pub const LOCAL_JOB_ID: &str = "local_test";

/// Runs `test_input` (or `./test_input.json`) once and prints the result; exit 0 or 1.
pub fn run_once(test_input: Option<&str>, models_toml: Option<&Path>) -> anyhow::Result<ExitCode> {
    logging::init_stderr();
    let text = match test_input {
        Some(t) => t.to_string(),
        None => match std::fs::read_to_string("test_input.json") {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("test_input.json not found or unreadable ({e}), exiting.");
                return Ok(ExitCode::FAILURE);
            }
        },
    };
    // Reject a malformed job before loading models.
    if let Err(e) = parse_job_input(&text) {
        print_body(&protocol::error_body(&e));
        tracing::error!("Job {LOCAL_JOB_ID} failed with error: {e}");
        return Ok(ExitCode::FAILURE);
    }
    let handler = handler::load_handler(models_toml)?;
    let (body, ok) = run_job_text(&text, handler.as_ref());
    print_body(&body);
    if ok {
        tracing::info!("Job {LOCAL_JOB_ID} completed successfully.");
        Ok(ExitCode::SUCCESS)
    } else {
        tracing::error!("Job {LOCAL_JOB_ID} failed.");
        Ok(ExitCode::FAILURE)
    }
}

fn print_body(body: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(body).unwrap_or_else(|_| body.to_string())
    );
}

/// Parses a whole job text (`{"input": {...}, ...}`) and returns its `input`.
pub fn parse_job_input(text: &str) -> Result<serde_json::Value, WorkerError> {
    let job: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| WorkerError::InvalidInput(format!("the job is not valid JSON: {e}")))?;
    match job.get("input") {
        Some(input) if !input.is_null() => Ok(input.clone()),
        _ if job.is_object() => Err(WorkerError::InvalidInput(
            "the job has no `input` object (expected {\"input\": {...}})".into(),
        )),
        _ => Err(WorkerError::InvalidInput(
            "the job must be a JSON object {\"input\": {...}}".into(),
        )),
    }
}

/// Runs one job given as text through validation and the handler.
pub fn run_job(text: &str, handler: &dyn JobHandler) -> Result<JobOutput, WorkerError> {
    let input = parse_job_input(text)?;
    let progress = |step: u32, total: u32| tracing::debug!("step {step}/{total}");
    handler::execute(handler, &input, &progress, &CancelFlag::new())
}

/// Like [`run_job`], returning the result body and whether the job succeeded.
pub fn run_job_text(text: &str, handler: &dyn JobHandler) -> (serde_json::Value, bool) {
    let result = run_job(text, handler);
    (protocol::result_body(&result), result.is_ok())
}
