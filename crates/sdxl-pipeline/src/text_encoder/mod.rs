//! CLIP text encoders of SDXL: a candle port of the HF `CLIPTextTransformer` (plus the
//! `text_projection` of `CLIPTextModelWithProjection`) that returns SDXL's hidden state
//! (`hidden_states[-k]`, no final layer norm) and, for text encoder 2, the pooled embedding.
//! The config type can be built from a transformers `config.json`.

mod layers;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::Deserialize;

use crate::tokenizer::EOS_ID;
use crate::{PipelineError, Result};
use layers::{causal_mask, full_name, gather_rows, weight, EncoderLayer, LayerNormF32};

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

/// What [`ClipTextEncoder::forward`] returns.
#[derive(Debug, Clone)]
pub struct ClipOutput {
    /// `hidden_states[-k]` (k = max(clip_skip, 2)), before any final layer norm: `[B,S,H]`.
    pub hidden: Tensor,
    /// `text_projection(final_layer_norm(last)[first EOS])` `[B,P]`, when the model has a
    /// projection (SDXL text encoder 2).
    pub pooled: Option<Tensor>,
}

/// HF `CLIPTextModel` / `CLIPTextModelWithProjection` on candle.
#[derive(Debug, Clone)]
pub struct ClipTextEncoder {
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<EncoderLayer>,
    final_layer_norm: LayerNormF32,
    projection: Option<Linear>,
    mask: Tensor,
    hidden_size: usize,
    dtype: DType,
}

impl ClipTextEncoder {
    /// `vb` is rooted where `text_model.embeddings...` (and `text_projection.weight` for text
    /// encoder 2) live. The projection is loaded when `text_projection.weight` exists; its width
    /// must equal `cfg.projection_dim` when that is set. A missing or mis-shaped tensor is a
    /// [`PipelineError::WeightInvalid`] naming it.
    pub fn new(vb: VarBuilder, cfg: &ClipTextConfig) -> Result<Self> {
        let tm = vb.pp("text_model");
        let emb = tm.pp("embeddings");
        let h = cfg.hidden_size;
        let token_embedding = weight(&emb.pp("token_embedding"), (cfg.vocab_size, h), "weight")?;
        let position_embedding = weight(
            &emb.pp("position_embedding"),
            (cfg.max_position_embeddings, h),
            "weight",
        )?;
        let layers_vb = tm.pp("encoder").pp("layers");
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| EncoderLayer::new(&layers_vb.pp(i), cfg))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm =
            LayerNormF32::new(&tm.pp("final_layer_norm"), h, cfg.layer_norm_eps)?;
        let projection = if vb.contains_tensor("text_projection.weight") {
            Some(Self::load_projection(&vb, cfg)?)
        } else {
            None
        };
        let mask = causal_mask(cfg.max_position_embeddings, vb.device())?;
        Ok(Self {
            dtype: token_embedding.dtype(),
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            projection,
            mask,
            hidden_size: h,
        })
    }

    fn load_projection(vb: &VarBuilder, cfg: &ClipTextConfig) -> Result<Linear> {
        let name = "text_projection.weight";
        let w = vb
            .get_unchecked(name)
            .map_err(|e| PipelineError::WeightInvalid {
                tensor: full_name(vb, name),
                reason: e.to_string(),
            })?;
        let dims = w.dims().to_vec();
        let ok = match dims.as_slice() {
            [p, h] => *h == cfg.hidden_size && cfg.projection_dim.is_none_or(|want| want == *p),
            _ => false,
        };
        if !ok {
            return Err(PipelineError::WeightInvalid {
                tensor: full_name(vb, name),
                reason: format!(
                    "shape {dims:?}, expected [{}, {}]",
                    cfg.projection_dim
                        .map_or_else(|| "P".to_string(), |p| p.to_string()),
                    cfg.hidden_size
                ),
            });
        }
        Ok(Linear::new(w, None))
    }

    /// Width of the hidden states.
    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    /// Number of transformer layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Width of the pooled output, when the model has a text projection.
    pub fn projection_dim(&self) -> Option<usize> {
        self.projection
            .as_ref()
            .and_then(|p| p.weight().dims().first().copied())
    }

    /// Dtype of the weights (and of the outputs).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Device of the weights.
    pub fn device(&self) -> &Device {
        self.token_embedding.device()
    }

    /// The hidden-state index counted from the end that `clip_skip` selects (SPEC §3):
    /// 1 and 2 ⇒ 2 (SDXL's penultimate layer), k ≥ 3 ⇒ k.
    pub fn layer_from_end(clip_skip: usize) -> usize {
        clip_skip.max(2)
    }

    /// `ids` `[B,S]` (u32, S ≤ max positions) → `hidden_states[-max(clip_skip, 2)]` (HF numbering:
    /// `hidden_states[0]` is the embedding output, no final layer norm) and, when the model has a
    /// projection, the pooled embedding at the first EOS (HF: argmax of the ids, which is the first
    /// 49407 since that is the largest id). Layers after the requested one are only run when the
    /// pooled output needs them.
    pub fn forward(&self, ids: &Tensor, clip_skip: usize) -> Result<ClipOutput> {
        self.forward_with_overrides(ids, clip_skip, &[])
    }

    /// [`Self::forward`] where the token embeddings (before the position embeddings are added)
    /// at `row, offset..offset + n` are replaced by an override's `n` vectors, as A1111's
    /// `EmbeddingsWithFixes` places textual-inversion vectors. Vectors that would run past the
    /// sequence are cut (A1111 `emb_len = min(len - offset - 1, n)` with its BOS shift already in
    /// `offset`).
    pub fn forward_with_overrides(
        &self,
        ids: &Tensor,
        clip_skip: usize,
        overrides: &[TokenOverride<'_>],
    ) -> Result<ClipOutput> {
        let (b, s) = ids.dims2()?;
        let max_pos = self.position_embedding.dim(0)?;
        if s == 0 || s > max_pos {
            return Err(PipelineError::InvalidInput(format!(
                "text encoder input has {s} tokens; 1..={max_pos} are supported"
            )));
        }
        let k = Self::layer_from_end(clip_skip);
        let n = self.layers.len();
        if k > n + 1 {
            return Err(PipelineError::InvalidInput(format!(
                "clip_skip {clip_skip} selects hidden_states[-{k}], but the text encoder has only {} hidden states",
                n + 1
            )));
        }
        let keep_after = n + 1 - k;
        let run = if self.projection.is_some() {
            n
        } else {
            keep_after
        };

        let ids = ids.to_dtype(DType::U32)?;
        let tokens = self
            .token_embedding
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, s, self.hidden_size))?;
        let tokens = self.apply_overrides(tokens, overrides)?;
        let positions = self.position_embedding.narrow(0, 0, s)?;
        let mut xs = tokens.broadcast_add(&positions)?;
        let mask = self.mask.narrow(0, 0, s)?.narrow(1, 0, s)?.contiguous()?;

        let mut hidden = (keep_after == 0).then(|| xs.clone());
        for (i, layer) in self.layers.iter().take(run).enumerate() {
            xs = layer.forward(&xs, &mask)?;
            if i + 1 == keep_after {
                hidden = Some(xs.clone());
            }
        }
        let hidden = match hidden {
            Some(h) => h,
            None => xs.clone(),
        };
        let pooled = match &self.projection {
            Some(proj) => {
                let last = self.final_layer_norm.forward(&xs)?;
                let eos = first_eos_positions(&ids)?;
                Some(proj.forward(&gather_rows(&last, &eos)?)?)
            }
            None => None,
        };
        Ok(ClipOutput { hidden, pooled })
    }
}

/// Textual-inversion vectors that replace token embeddings in
/// [`ClipTextEncoder::forward_with_overrides`].
#[derive(Debug, Clone, Copy)]
pub struct TokenOverride<'a> {
    /// Batch row.
    pub row: usize,
    /// First sequence position replaced.
    pub offset: usize,
    /// `[n, hidden]` vectors.
    pub vectors: &'a Tensor,
}

impl ClipTextEncoder {
    fn apply_overrides(&self, tokens: Tensor, overrides: &[TokenOverride<'_>]) -> Result<Tensor> {
        if overrides.is_empty() {
            return Ok(tokens);
        }
        let (b, s, h) = tokens.dims3()?;
        let mut rows = Vec::with_capacity(b);
        for r in 0..b {
            let mut row = tokens.get(r)?;
            for o in overrides.iter().filter(|o| o.row == r) {
                let (n, width) = o.vectors.dims2()?;
                if width != h || o.offset >= s {
                    return Err(PipelineError::InvalidInput(format!(
                        "embedding vectors [{n}, {width}] do not fit at position {} of a [{s}, {h}] row",
                        o.offset
                    )));
                }
                let n = n.min(s - o.offset);
                let vecs = o
                    .vectors
                    .narrow(0, 0, n)?
                    .to_dtype(row.dtype())?
                    .to_device(row.device())?;
                let mut parts = Vec::with_capacity(3);
                if o.offset > 0 {
                    parts.push(row.narrow(0, 0, o.offset)?);
                }
                parts.push(vecs);
                if o.offset + n < s {
                    parts.push(row.narrow(0, o.offset + n, s - o.offset - n)?);
                }
                row = Tensor::cat(&parts, 0)?;
            }
            rows.push(row);
        }
        Ok(Tensor::stack(&rows, 0)?)
    }
}

/// Per row, the first position of the largest id (HF `argmax(input_ids)`), i.e. the first EOS.
fn first_eos_positions(ids: &Tensor) -> Result<Vec<u32>> {
    let rows = ids.to_device(&Device::Cpu)?.to_vec2::<u32>()?;
    Ok(rows
        .iter()
        .map(|row| {
            let max = row.iter().copied().max().unwrap_or(EOS_ID);
            row.iter().position(|&t| t == max).unwrap_or(0) as u32
        })
        .collect())
}
