//! `sdxl-worker`: RunPod serverless worker, local HTTP API and `render` CLI for SDXL.
//! Mode selection mirrors the runpod SDK's `serverless.start` (SPEC §2).

use clap::Parser;
use sdxl_worker::cli::{Cli, Command};
use sdxl_worker::{api, fetch, local, render, runpod};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let models_toml = cli.models_toml.as_deref();
    match &cli.command {
        Some(Command::Render(args)) => render::run(args, models_toml),
        Some(Command::Fetch) => fetch::run_cli(models_toml),
        Some(Command::Serve) => runpod::run_serve(models_toml),
        Some(Command::Api(args)) => api::run(&args.host, args.port, models_toml),
        None if cli.rp_serve_api => api::run(&cli.rp_api_host, cli.rp_api_port, models_toml),
        None if std::env::var_os("RUNPOD_WEBHOOK_GET_JOB").is_some() => {
            runpod::run_serve(models_toml)
        }
        None => local::run_once(cli.test_input.as_deref(), models_toml),
    }
}
