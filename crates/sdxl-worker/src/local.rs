//! The one-shot local test mode (being written).

use std::path::Path;
use std::process::ExitCode;

/// Runs `test_input` (or `./test_input.json`) once and prints the result; exit 0 or 1.
pub fn run_once(
    _test_input: Option<&str>,
    _models_toml: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    anyhow::bail!("the local test mode is not implemented yet")
}
