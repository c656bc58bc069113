//! The worker side of sdxl-worker: models.toml and the model cache, CivitAI/Hugging Face
//! downloads, the job schema, the model runtime every frontend renders through, the RunPod
//! serverless loop, the local HTTP API, the one-shot test mode, the `render`/`fetch` CLI
//! commands and result upload to an S3-compatible bucket. Tensors live in `sdxl_pipeline`.

pub mod api;
pub mod cache;
pub mod catalog;
pub mod cli;
pub mod delivery;
pub mod download;
pub mod error;
pub mod fetch;
pub mod handler;
pub mod ids;
pub mod job;
pub mod local;
pub mod logging;
pub mod models;
pub mod png_info;
pub mod prompt_tags;
pub mod protocol;
pub mod render;
pub mod render_images;
pub mod runpod;
pub mod runtime;
pub mod signals;
pub mod store;
pub mod upload;
