//! Command-line interface (SPEC §2). Parsing only; each subcommand's work lives in its module.

use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use std::path::PathBuf;

/// SDXL image generation worker: RunPod serverless endpoint, local HTTP API and render CLI.
#[derive(Debug, Parser)]
#[command(name = "sdxl-worker", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// With no subcommand: serve the local HTTP API (like the runpod SDK's `--rp_serve_api`).
    #[arg(long = "rp_serve_api", global = false)]
    pub rp_serve_api: bool,
    /// Host for `--rp_serve_api`.
    #[arg(long = "rp_api_host", default_value = "127.0.0.1")]
    pub rp_api_host: String,
    /// Port for `--rp_serve_api`.
    #[arg(long = "rp_api_port", default_value_t = 8000)]
    pub rp_api_port: u16,
    /// With no subcommand: run this job JSON once instead of `./test_input.json`.
    #[arg(long = "test_input")]
    pub test_input: Option<String>,
    /// Path of models.toml (env `SDXL_MODELS_TOML`; default `./models.toml`).
    #[arg(long, env = "SDXL_MODELS_TOML", global = true)]
    pub models_toml: Option<PathBuf>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Production RunPod loop (needs the RUNPOD_* environment of a serverless worker).
    Serve,
    /// Local HTTP API: RunPod routes plus an AUTOMATIC1111 subset.
    Api(ApiArgs),
    /// Render images locally and write PNGs with A1111 infotext.
    Render(Box<RenderArgs>),
    /// Download everything in models.toml into the cache.
    Fetch,
}

/// Flags of `api`.
#[derive(Debug, Args)]
pub struct ApiArgs {
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to bind.
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
}

/// Flags of `render`: the job fields ([`JobFlags`]) plus where the model comes from and where
/// the images go.
#[derive(Debug, Args)]
pub struct RenderArgs {
    /// The job fields.
    #[command(flatten)]
    pub job: JobFlags,
    /// LoRA as NAME_OR_PATH[:SCALE]; repeatable.
    #[arg(long = "lora")]
    pub loras: Vec<String>,
    /// A models.toml checkpoint name, a single-file .safetensors, or a diffusers directory.
    #[arg(long)]
    pub checkpoint: Option<String>,
    /// A diffusers directory whose configs describe a single-file checkpoint.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A standalone VAE .safetensors (diffusers or original layout) instead of the checkpoint's;
    /// without it, models.toml's `[vae]` applies to models.toml checkpoints.
    #[arg(long)]
    pub vae: Option<PathBuf>,
    /// The --vae file is not fp16-safe: decode in f32 when the model is f16.
    #[arg(long, requires = "vae")]
    pub vae_upcast: bool,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32, f16 or bf16 (default: f32 on CPU, f16 on CUDA).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Output file; with a batch, `a.png` becomes `a-0.png`, `a-1.png`, ...
    #[arg(long, default_value = "out.png")]
    pub out: PathBuf,
    /// Render a job JSON file (the `input` object of a RunPod job, or the whole job).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The job fields of SPEC §3 as `render` flags: each serializes under its job-schema name, so a
/// given flag becomes that field of the job (over `--json`) and is validated like a RunPod job.
#[derive(Debug, Default, Args, Serialize)]
pub struct JobFlags {
    /// The prompt (may exceed 77 tokens).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// The negative prompt (absent or empty ⇒ zero embedding).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    /// Denoising steps.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<u32>,
    /// Classifier-free guidance scale.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cfg_scale: Option<f64>,
    /// A1111 sampler name, e.g. "DPM++ 2M Karras", "Euler a".
    #[arg(long)]
    #[serde(rename = "sampler_name", skip_serializing_if = "Option::is_none")]
    pub sampler: Option<String>,
    /// Schedule type: karras, exponential, normal, sgm_uniform, automatic.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<String>,
    /// Seed (-1 ⇒ random).
    #[arg(long, allow_hyphen_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// Image width in pixels.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Image height in pixels.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// Number of images (image i uses seed + i).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    /// Number of batches (A1111 n_iter): batch_size × n_iter images, image j uses seed + j.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n_iter: Option<u32>,
    /// A1111 variation seed (-1 ⇒ random); image j uses subseed + j.
    #[arg(long, allow_hyphen_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subseed: Option<i64>,
    /// Variation strength 0..=1 (0 ⇒ off; otherwise every image keeps the seed).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subseed_strength: Option<f64>,
    /// Reproduce the noise of this width (A1111 "resize seed from width"; 0 ⇒ off).
    #[arg(long, allow_hyphen_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed_resize_from_w: Option<i64>,
    /// Reproduce the noise of this height (A1111 "resize seed from height"; 0 ⇒ off).
    #[arg(long, allow_hyphen_values = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed_resize_from_h: Option<i64>,
    /// Sampler eta (default: 1 for ancestral/SDE samplers, 0 for DDIM).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta: Option<f64>,
    /// Noise multiplier s_noise (Euler/Heun/DPM2 churn, SDE samplers; default 1).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s_noise: Option<f64>,
    /// Churn s_churn of Euler/Heun/DPM2 (default 0).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s_churn: Option<f64>,
    /// Lowest sigma that gets churn (default 0).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s_tmin: Option<f64>,
    /// Highest sigma that gets churn (default 0 = infinity).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s_tmax: Option<f64>,
    /// CLIP skip (1 and 2 = SDXL default).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_skip: Option<u32>,
    /// Long-prompt mode: blend or concat.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_mode: Option<String>,
    /// Emphasis of the A1111 prompt syntax: original, no_norm, ignore or none.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emphasis: Option<String>,
    /// Output format: png, jpeg or webp.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_format: Option<String>,
    /// JPEG quality 1..=100.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quality: Option<u8>,
    /// img2img: an init image file (PNG/JPEG/WebP), sent as the job's `init_images`.
    #[arg(long)]
    #[serde(skip)]
    pub init_image: Option<PathBuf>,
    /// img2img / hires fix: denoising strength 0..=1 (default 0.75).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub denoising_strength: Option<f64>,
    /// img2img: 0 just resize, 1 crop and resize, 2 resize and fill, 3 latent upscale.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resize_mode: Option<u8>,
    /// img2img: A1111 initial noise multiplier (default 1).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_noise_multiplier: Option<f64>,
    /// Inpainting: a mask file (white = repaint), sent as the job's `mask`; needs --init-image.
    #[arg(long)]
    #[serde(skip)]
    pub mask: Option<PathBuf>,
    /// Inpainting: mask blur radius for x and y (default 4).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask_blur: Option<u32>,
    /// Inpainting: horizontal mask blur (default 4; --mask-blur overrides it).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask_blur_x: Option<u32>,
    /// Inpainting: vertical mask blur (default 4; --mask-blur overrides it).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask_blur_y: Option<u32>,
    /// Inpainting: masked content, 0 fill, 1 original, 2 latent noise, 3 latent nothing.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inpainting_fill: Option<u8>,
    /// Inpainting: true = only masked (default), false = whole picture.
    #[arg(long, action = clap::ArgAction::Set)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inpaint_full_res: Option<bool>,
    /// Inpainting: only-masked padding in pixels (default 0).
    #[arg(long)]
    #[serde(
        rename = "inpaint_full_res_padding",
        skip_serializing_if = "Option::is_none"
    )]
    pub inpaint_padding: Option<u32>,
    /// Inpainting: repaint the black part of the mask instead.
    #[arg(long)]
    #[serde(
        rename = "inpainting_mask_invert",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub mask_invert: bool,
    /// Hires fix: render at width×height, upscale and run a second pass.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub enable_hr: bool,
    /// Hires fix: upscale factor (default 2).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hr_scale: Option<f64>,
    /// Hires fix: target width (0 = from hr_scale).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hr_resize_x: Option<u32>,
    /// Hires fix: target height (0 = from hr_scale).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hr_resize_y: Option<u32>,
    /// Hires fix: Latent, Latent (antialiased), Latent (bicubic), Latent (bicubic antialiased),
    /// Latent (nearest), Latent (nearest-exact), Lanczos, Nearest or None.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hr_upscaler: Option<String>,
    /// Hires fix: steps of the second pass (0 = same as --steps).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hr_second_pass_steps: Option<u32>,
    /// Hires fix: sampler of the second pass (default: the first pass's).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hr_sampler_name: Option<String>,
    /// Hires fix: schedule type of the second pass (default: the first pass's).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hr_scheduler: Option<String>,
    /// Hires fix: prompt of the second pass (default: the prompt).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hr_prompt: Option<String>,
    /// Hires fix: negative prompt of the second pass (default: the negative prompt).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hr_negative_prompt: Option<String>,
    /// Upload the images to the `BUCKET_*` bucket and print presigned URLs (no local files).
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub upload: bool,
}
