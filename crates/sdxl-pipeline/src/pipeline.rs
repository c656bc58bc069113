//! The text-to-image request type (SPEC §3 fields that concern the pipeline) and, once written,
//! the txt2img loop. Defaults live here and nowhere else.

use crate::prompt::PromptMode;

/// Default number of denoising steps.
pub const DEFAULT_STEPS: u32 = 25;
/// Default classifier-free guidance scale.
pub const DEFAULT_CFG_SCALE: f64 = 7.0;
/// Default image side in pixels.
pub const DEFAULT_SIZE: u32 = 1024;
/// Default A1111 sampler name.
pub const DEFAULT_SAMPLER: &str = "DPM++ 2M Karras";
/// Default clip skip (1 and 2 both mean SDXL's penultimate layer).
pub const DEFAULT_CLIP_SKIP: u32 = 2;

/// One text-to-image request, already validated by the caller for types; the pipeline checks
/// the value ranges it depends on and answers with `InvalidInput` otherwise.
#[derive(Debug, Clone, PartialEq)]
pub struct Txt2ImgRequest {
    /// The positive prompt; may exceed 77 tokens.
    pub prompt: String,
    /// The negative prompt; `None` or empty ⇒ zero unconditional embedding.
    pub negative_prompt: Option<String>,
    /// Denoising steps (1..=150).
    pub steps: u32,
    /// CFG scale; ≤ 1 skips the unconditional pass.
    pub cfg_scale: f64,
    /// Image width in pixels (multiple of 8).
    pub width: u32,
    /// Image height in pixels (multiple of 8).
    pub height: u32,
    /// A1111 sampler name, e.g. `DPM++ 2M Karras` or `Euler a`.
    pub sampler_name: String,
    /// Optional A1111 ≥ 1.9 schedule type (`karras`, `exponential`, `normal`, ...).
    pub scheduler: Option<String>,
    /// Seed of image 0; image i uses `seed + i`.
    pub seed: u64,
    /// Number of images.
    pub batch_size: u32,
    /// CLIP skip (1..=12).
    pub clip_skip: u32,
    /// Long-prompt mode.
    pub prompt_mode: PromptMode,
}

impl Default for Txt2ImgRequest {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: None,
            steps: DEFAULT_STEPS,
            cfg_scale: DEFAULT_CFG_SCALE,
            width: DEFAULT_SIZE,
            height: DEFAULT_SIZE,
            sampler_name: DEFAULT_SAMPLER.to_string(),
            scheduler: None,
            seed: 0,
            batch_size: 1,
            clip_skip: DEFAULT_CLIP_SKIP,
            prompt_mode: PromptMode::Blend,
        }
    }
}
