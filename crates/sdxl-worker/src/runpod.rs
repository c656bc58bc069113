//! (being written)

use std::path::Path;
use std::process::ExitCode;

/// The production RunPod serverless loop (configured from the RUNPOD_* environment).
pub fn run_serve(_models_toml: Option<&Path>) -> anyhow::Result<ExitCode> {
    anyhow::bail!("the RunPod loop is not implemented yet")
}
