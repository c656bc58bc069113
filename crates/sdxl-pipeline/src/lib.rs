//! SDXL text-to-image on candle.
//!
//! Data flows one way: prompt text → [`tokenizer`] → [`prompt`] (chunking) → [`text_encoder`] →
//! conditioning → [`sampling`] (sampler + [`unet`]) → [`vae`] → RGB → [`output`] (PNG/JPEG/WebP).
//! Weights come from [`checkpoint`] (single-file or diffusers layout, memory-mapped).
//! This crate knows nothing of HTTP, RunPod or CivitAI.

pub mod checkpoint;
mod conv;
pub mod device;
pub mod embedding;
pub mod error;
pub mod image_ops;
pub mod interrupt;
mod layers;
pub mod lora;
pub mod noise;
pub mod output;
pub mod pipeline;
pub mod prompt;
pub mod sampling;
pub mod text_encoder;
pub mod tokenizer;
pub mod unet;
pub mod vae;

pub use error::{ErrorKind, PipelineError, Result};
