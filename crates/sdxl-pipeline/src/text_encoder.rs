//! CLIP text encoders of SDXL (being written). The config type is fixed here so the checkpoint
//! loader can build it from `config.json` files.

use serde::Deserialize;

/// Activation of the CLIP MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ClipActivation {
    /// `x * sigmoid(1.702 x)` (CLIP ViT-L).
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// Exact erf GELU (OpenCLIP ViT-bigG in HF form); tanh approximation is not accepted.
    #[serde(rename = "gelu")]
    Gelu,
}

/// The subset of a transformers `CLIPTextConfig` the encoders need.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: ClipActivation,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    /// Width of `text_projection` (text encoder 2 only).
    #[serde(default)]
    pub projection_dim: Option<usize>,
}

fn default_layer_norm_eps() -> f64 {
    1e-5
}

impl ClipTextConfig {
    /// SDXL text encoder 1: CLIP ViT-L/14.
    pub fn sdxl_clip_l() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 77,
            hidden_act: ClipActivation::QuickGelu,
            layer_norm_eps: 1e-5,
            projection_dim: None,
        }
    }

    /// SDXL text encoder 2: OpenCLIP ViT-bigG/14 with its 1280-wide text projection.
    pub fn sdxl_clip_g() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 1280,
            intermediate_size: 5120,
            num_hidden_layers: 32,
            num_attention_heads: 20,
            max_position_embeddings: 77,
            hidden_act: ClipActivation::Gelu,
            layer_norm_eps: 1e-5,
            projection_dim: Some(1280),
        }
    }
}
