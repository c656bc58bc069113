//! (being written)

use std::path::Path;
use std::process::ExitCode;

/// Serves the local HTTP API on `host:port` until interrupted.
pub fn run(_host: &str, _port: u16, _models_toml: Option<&Path>) -> anyhow::Result<ExitCode> {
    anyhow::bail!("the local API is not implemented yet")
}
