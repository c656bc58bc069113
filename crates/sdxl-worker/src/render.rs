//! `sdxl-worker render` (being written).

use crate::cli::RenderArgs;
use std::path::Path;
use std::process::ExitCode;

/// Renders images locally as described by the flags.
pub fn run(_args: &RenderArgs, _models_toml: Option<&Path>) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`render` is not implemented yet")
}
