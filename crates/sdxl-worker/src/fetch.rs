//! `sdxl-worker fetch` (being written).

use std::path::Path;
use std::process::ExitCode;

/// Downloads everything in models.toml into the cache and prints what is where.
pub fn run_cli(_models_toml: Option<&Path>) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`fetch` is not implemented yet")
}
