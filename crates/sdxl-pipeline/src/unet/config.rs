//! `UNetConfig`: the subset of a diffusers `UNet2DConditionModel` config.json that SDXL uses.

use serde::Deserialize;

use crate::{PipelineError, Result};

/// A config value that diffusers accepts either as one number for every level or as a list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum PerLevel {
    /// The same value for every level.
    Same(usize),
    /// One value per level (down-block order).
    List(Vec<usize>),
}

impl PerLevel {
    /// The value for each of `levels` levels, or an error when a list has the wrong length.
    pub fn expand(&self, levels: usize, field: &str) -> Result<Vec<usize>> {
        match self {
            Self::Same(v) => Ok(vec![*v; levels]),
            Self::List(v) if v.len() == levels => Ok(v.clone()),
            Self::List(v) => Err(PipelineError::InvalidConfig(format!(
                "unet: `{field}` has {} entries for {levels} levels",
                v.len()
            ))),
        }
    }
}

/// diffusers `UNet2DConditionModel` configuration (SDXL flavour: `addition_embed_type = "text_time"`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UNetConfig {
    #[serde(default = "default_latent_channels")]
    pub in_channels: usize,
    #[serde(default = "default_latent_channels")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    #[serde(default = "default_layers_per_block")]
    pub layers_per_block: usize,
    #[serde(default = "default_one")]
    pub transformer_layers_per_block: PerLevel,
    /// With `num_attention_heads` null this is the number of heads per level (diffusers naming quirk).
    pub attention_head_dim: PerLevel,
    #[serde(default)]
    pub num_attention_heads: Option<PerLevel>,
    pub cross_attention_dim: usize,
    #[serde(default = "default_groups")]
    pub norm_num_groups: usize,
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    #[serde(default = "default_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default = "default_one_usize")]
    pub downsample_padding: usize,
    #[serde(default = "default_one_f64")]
    pub resnet_out_scale_factor: f64,
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<Vec<Vec<usize>>>,
}

fn default_latent_channels() -> usize {
    4
}
fn default_layers_per_block() -> usize {
    2
}
fn default_one() -> PerLevel {
    PerLevel::Same(1)
}
fn default_one_usize() -> usize {
    1
}
fn default_one_f64() -> f64 {
    1.0
}
fn default_groups() -> usize {
    32
}
fn default_norm_eps() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}

/// The resolved per-level layout the model is built from.
#[derive(Debug, Clone)]
pub(crate) struct UNetLayout {
    pub heads: Vec<usize>,
    pub transformer_layers: Vec<usize>,
    pub down_attention: Vec<bool>,
    pub up_attention: Vec<bool>,
    pub time_embed_dim: usize,
    pub addition_time_embed_dim: usize,
    pub projection_input_dim: usize,
}

impl UNetConfig {
    /// The stabilityai SDXL base 1.0 UNet config.
    pub fn sdxl_base() -> Self {
        Self {
            in_channels: 4,
            out_channels: 4,
            block_out_channels: vec![320, 640, 1280],
            down_block_types: [
                "DownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
            ]
            .map(String::from)
            .to_vec(),
            up_block_types: ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]
                .map(String::from)
                .to_vec(),
            layers_per_block: 2,
            transformer_layers_per_block: PerLevel::List(vec![1, 2, 10]),
            attention_head_dim: PerLevel::List(vec![5, 10, 20]),
            num_attention_heads: None,
            cross_attention_dim: 2048,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            addition_embed_type: Some("text_time".into()),
            addition_time_embed_dim: Some(256),
            projection_class_embeddings_input_dim: Some(2816),
            use_linear_projection: true,
            downsample_padding: 1,
            resnet_out_scale_factor: 1.0,
            reverse_transformer_layers_per_block: None,
        }
    }

    /// Number of resolution levels.
    pub fn levels(&self) -> usize {
        self.block_out_channels.len()
    }

    /// Checks the config describes a UNet this crate can build and resolves per-level values.
    pub(crate) fn layout(&self) -> Result<UNetLayout> {
        let bad = |m: String| PipelineError::InvalidConfig(format!("unet: {m}"));
        let n = self.levels();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(bad(format!(
                "{n} block_out_channels but {} down and {} up block types",
                self.down_block_types.len(),
                self.up_block_types.len()
            )));
        }
        if self.addition_embed_type.as_deref() != Some("text_time") {
            return Err(bad(format!(
                "addition_embed_type {:?} is not \"text_time\" (not an SDXL UNet)",
                self.addition_embed_type
            )));
        }
        if self.reverse_transformer_layers_per_block.is_some() {
            return Err(bad(
                "reverse_transformer_layers_per_block is not supported".into()
            ));
        }
        let attention = |types: &[String], down: bool| -> Result<Vec<bool>> {
            types
                .iter()
                .map(|t| match (t.as_str(), down) {
                    ("CrossAttnDownBlock2D", true) | ("CrossAttnUpBlock2D", false) => Ok(true),
                    ("DownBlock2D", true) | ("UpBlock2D", false) => Ok(false),
                    _ => Err(bad(format!("unsupported block type {t}"))),
                })
                .collect()
        };
        let heads = self
            .num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim)
            .expand(n, "attention heads")?;
        for (i, (&h, &c)) in heads.iter().zip(&self.block_out_channels).enumerate() {
            if h == 0 || c % h != 0 {
                return Err(bad(format!("level {i}: {c} channels for {h} heads")));
            }
        }
        if self.norm_num_groups == 0
            || self
                .block_out_channels
                .iter()
                .any(|c| c % self.norm_num_groups != 0)
        {
            return Err(bad("channels not divisible by norm_num_groups".into()));
        }
        let addition_time_embed_dim = self
            .addition_time_embed_dim
            .ok_or_else(|| bad("addition_time_embed_dim missing".into()))?;
        let projection_input_dim = self
            .projection_class_embeddings_input_dim
            .ok_or_else(|| bad("projection_class_embeddings_input_dim missing".into()))?;
        if addition_time_embed_dim % 2 != 0 || self.block_out_channels[0] % 2 != 0 {
            return Err(bad("odd sinusoidal embedding width".into()));
        }
        Ok(UNetLayout {
            heads,
            transformer_layers: self
                .transformer_layers_per_block
                .expand(n, "transformer_layers_per_block")?,
            down_attention: attention(&self.down_block_types, true)?,
            up_attention: attention(&self.up_block_types, false)?,
            time_embed_dim: self.block_out_channels[0] * 4,
            addition_time_embed_dim,
            projection_input_dim,
        })
    }
}
