//! `VaeConfig`: the diffusers `AutoencoderKL` config.json fields the SDXL VAE uses.

use serde::Deserialize;

use crate::{PipelineError, Result};

/// diffusers `AutoencoderKL` configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    #[serde(default)]
    pub down_block_types: Vec<String>,
    #[serde(default)]
    pub up_block_types: Vec<String>,
    #[serde(default = "two")]
    pub layers_per_block: usize,
    #[serde(default = "four")]
    pub latent_channels: usize,
    #[serde(default = "groups")]
    pub norm_num_groups: usize,
    /// Latents are divided by this before decoding (0.13025 for SDXL, also the default here since
    /// diffusers' 0.18215 default is the SD1 value).
    #[serde(default = "sdxl_scaling")]
    pub scaling_factor: f64,
    /// The VAE overflows in fp16 and should be decoded in f32 (true for the original SDXL VAE).
    #[serde(default = "yes")]
    pub force_upcast: bool,
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
}

fn three() -> usize {
    3
}
fn two() -> usize {
    2
}
fn four() -> usize {
    4
}
fn groups() -> usize {
    32
}
fn sdxl_scaling() -> f64 {
    0.13025
}
fn yes() -> bool {
    true
}

impl VaeConfig {
    /// The stabilityai SDXL base 1.0 VAE config.
    pub fn sdxl_base() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            block_out_channels: vec![128, 256, 512, 512],
            down_block_types: vec!["DownEncoderBlock2D".into(); 4],
            up_block_types: vec!["UpDecoderBlock2D".into(); 4],
            layers_per_block: 2,
            latent_channels: 4,
            norm_num_groups: 32,
            scaling_factor: 0.13025,
            force_upcast: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }

    /// Checks the config describes a VAE this crate can build.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(PipelineError::InvalidConfig(format!("vae: {m}")));
        let n = self.block_out_channels.len();
        if n == 0 {
            return bad("no block_out_channels");
        }
        if self
            .down_block_types
            .iter()
            .any(|t| t != "DownEncoderBlock2D")
            || self.up_block_types.iter().any(|t| t != "UpDecoderBlock2D")
        {
            return bad("only DownEncoderBlock2D / UpDecoderBlock2D are supported");
        }
        if (!self.down_block_types.is_empty() && self.down_block_types.len() != n)
            || (!self.up_block_types.is_empty() && self.up_block_types.len() != n)
        {
            return bad("block type count differs from block_out_channels");
        }
        if !self.mid_block_add_attention {
            return bad("mid_block_add_attention = false is not supported");
        }
        if self.norm_num_groups == 0
            || self
                .block_out_channels
                .iter()
                .any(|c| c % self.norm_num_groups != 0)
        {
            return bad("channels not divisible by norm_num_groups");
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            return bad("scaling_factor must be positive");
        }
        Ok(())
    }
}
