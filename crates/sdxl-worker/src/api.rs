//! The local HTTP API (SPEC §2): RunPod routes (`/run`, `/runsync`, `/status/{id}`, `/cancel/{id}`,
//! `/health`, also under `/v2/{endpoint_id}/...`) and an AUTOMATIC1111 subset under `/sdapi/v1`.
//! Jobs run in the background one at a time; every error reply is JSON.

mod a1111;
mod a1111_control;
mod a1111_img2img;
mod a1111_lists;
mod a1111_options;
pub mod error;
pub mod guard;
mod runpod_routes;
pub mod state;

pub use error::ApiError;
pub use state::{ApiConfig, ApiState, JobState};

use crate::handler::{self, JobHandler};
use crate::logging;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

/// Builds the router over a started [`ApiState`].
pub fn router(state: Arc<ApiState>) -> Router {
    let runpod = Router::new()
        .route("/run", post(runpod_routes::run))
        .route("/runsync", post(runpod_routes::runsync))
        .route(
            "/status/{id}",
            get(runpod_routes::status).post(runpod_routes::status),
        )
        .route("/cancel/{id}", post(runpod_routes::cancel))
        .route("/health", get(runpod_routes::health));
    let a1111 = Router::new()
        .route("/txt2img", post(a1111::txt2img))
        .route("/img2img", post(a1111_img2img::img2img))
        .route("/sd-models", get(a1111::sd_models))
        .route(
            "/options",
            get(a1111_options::get_options).post(a1111_options::set_options),
        )
        .route("/progress", get(a1111::progress))
        .route("/samplers", get(a1111::samplers))
        .route("/loras", get(a1111::loras))
        .route("/schedulers", get(a1111_lists::schedulers))
        .route("/sd-vae", get(a1111_lists::sd_vae))
        .route("/upscalers", get(a1111_lists::upscalers))
        .route(
            "/latent-upscale-modes",
            get(a1111_lists::latent_upscale_modes),
        )
        .route("/cmd-flags", get(a1111_lists::cmd_flags))
        .route("/scripts", get(a1111_lists::scripts))
        .route("/prompt-styles", get(a1111_lists::empty_list))
        .route("/hypernetworks", get(a1111_lists::empty_list))
        .route("/face-restorers", get(a1111_lists::empty_list))
        .route("/realesrgan-models", get(a1111_lists::empty_list))
        .route("/interrupt", post(a1111_control::interrupt))
        .route("/skip", post(a1111_control::skip))
        .route("/refresh-checkpoints", post(a1111_control::refresh))
        .route("/refresh-loras", post(a1111_control::refresh))
        .route(
            "/png-info",
            post(a1111_control::png_info).layer(DefaultBodyLimit::max(
                a1111_control::PNG_INFO_BODY_LIMIT.max(state.config.body_limit),
            )),
        )
        .route("/embeddings", get(a1111::embeddings));
    Router::new()
        .merge(runpod.clone())
        .nest("/v2/{endpoint_id}", runpod)
        .nest("/sdapi/v1", a1111)
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "this route does not accept that method",
            )
        })
        .layer(DefaultBodyLimit::max(state.config.body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::guard,
        ))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    handler: Arc<dyn JobHandler>,
    config: ApiConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = ApiState::start(handler, config);
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

/// The warning for an API reachable from other hosts without a token (`None` when bound to
/// loopback or protected by `SDXL_API_TOKEN`).
pub fn exposure_warning(addr: &SocketAddr, has_token: bool) -> Option<String> {
    (!has_token && !addr.ip().is_loopback()).then(|| {
        format!(
            "the local API listens on {addr}, which is not loopback, without a token: anyone who \
             can reach it can run jobs; set {} to require `Authorization: Bearer <token>`",
            guard::API_TOKEN_ENV
        )
    })
}

/// Serves the local HTTP API on `host:port` until SIGTERM or SIGINT (requests in flight finish).
pub fn run(host: &str, port: u16, models_toml: Option<&Path>) -> anyhow::Result<ExitCode> {
    logging::init_stderr();
    let grace = crate::signals::shutdown_grace_from_env()?;
    let mut config = ApiConfig {
        uploader: crate::delivery::uploader_from_env()?,
        api_token: std::env::var(guard::API_TOKEN_ENV)
            .ok()
            .filter(|t| !t.trim().is_empty())
            .map(|t| crate::upload::Secret::new(t.trim())),
        ..ApiConfig::default()
    };
    if let Ok(bytes) = std::env::var("SDXL_MAX_RESULT_BYTES") {
        config.max_result_bytes = bytes
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("SDXL_MAX_RESULT_BYTES is not a byte count: {bytes}"))?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let models_toml = models_toml.map(Path::to_path_buf);
    let served = runtime.block_on(async {
        // Signals are handled from the start (also while models load or download).
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            crate::signals::termination().await;
            let _ = stop_tx.send(true);
        });
        let stopped = {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let load = tokio::task::spawn_blocking(move || handler::load_handler(models_toml.as_deref()));
        let handler = tokio::select! {
            loaded = load => loaded??,
            _ = stopped => {
                tracing::info!("stopped while loading models");
                return Ok(());
            }
        };
        let host = if host == "localhost" { "127.0.0.1" } else { host };
        let addr: SocketAddr = format!("{host}:{port}").parse().or_else(|_| {
            format!("[{host}]:{port}").parse::<SocketAddr>()
        })?;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        if let Some(warning) = exposure_warning(&addr, config.api_token.is_some()) {
            tracing::warn!("{warning}");
        }
        tracing::info!("local API listening on http://{addr} (RunPod routes, /v2/<endpoint>/..., /sdapi/v1/...)");
        let mut shutdown_rx = stop_rx.clone();
        let shutdown = async move {
            let _ = shutdown_rx.wait_for(|s| *s).await;
        };
        let serving = serve(listener, handler, config, shutdown);
        tokio::pin!(serving);
        tokio::select! {
            r = &mut serving => r,
            // Requests still in flight (a waiting /runsync or txt2img) get the grace period.
            _ = async {
                let _ = stop_rx.wait_for(|s| *s).await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!("the shutdown grace period of {grace:?} is over: stopping with requests in flight");
                Ok(())
            }
        }
    });
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    served?;
    Ok(ExitCode::SUCCESS)
}
