//! Building blocks of the HF `CLIPTextTransformer`: layer norm, causal self-attention, MLP and
//! one encoder layer. Layer norm and softmax run in f32 whatever the weight dtype.

use candle_core::{DType, Device, Module, Shape, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::ClipActivation;
use crate::{PipelineError, Result};

/// Loads `name` under `vb` with the given shape; a missing or mis-shaped tensor is an error that
/// names the tensor.
pub(crate) fn weight<S: Into<Shape>>(vb: &VarBuilder, shape: S, name: &str) -> Result<Tensor> {
    vb.get(shape, name)
        .map_err(|e| PipelineError::WeightInvalid {
            tensor: full_name(vb, name),
            reason: e.to_string(),
        })
}

/// The full tensor name of `name` under `vb`.
pub(crate) fn full_name(vb: &VarBuilder, name: &str) -> String {
    let prefix = vb.prefix();
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// A `Linear` with bias, `weight` of shape `[out, in]`.
pub(crate) fn linear(vb: &VarBuilder, in_dim: usize, out_dim: usize) -> Result<Linear> {
    let w = weight(vb, (out_dim, in_dim), "weight")?;
    let b = weight(vb, out_dim, "bias")?;
    Ok(Linear::new(w, Some(b)))
}

/// LayerNorm computed in f32; the output is cast back to the input dtype.
#[derive(Debug, Clone)]
pub(crate) struct LayerNormF32 {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNormF32 {
    pub(crate) fn new(vb: &VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: weight(vb, dim, "weight")?.to_dtype(DType::F32)?,
            bias: weight(vb, dim, "bias")?.to_dtype(DType::F32)?,
            eps: eps as f32,
        })
    }

    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dtype = xs.dtype();
        let x = xs.to_dtype(DType::F32)?.contiguous()?;
        let y = candle_nn::ops::layer_norm(&x, &self.weight, &self.bias, self.eps)?;
        Ok(y.to_dtype(dtype)?)
    }
}

/// Causal additive mask `[seq, seq]` (f32): 0 on and below the diagonal, -inf above.
pub(crate) fn causal_mask(seq: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..seq)
        .flat_map(|i| (0..seq).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(mask, (seq, seq), device)?)
}

/// Multi-head causal self-attention (`self_attn.{q,k,v,out}_proj`).
#[derive(Debug, Clone)]
struct SelfAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
    scale: f64,
}

impl SelfAttention {
    fn new(vb: &VarBuilder, hidden: usize, heads: usize) -> Result<Self> {
        if heads == 0 || hidden % heads != 0 {
            return Err(PipelineError::WeightInvalid {
                tensor: full_name(vb, "q_proj.weight"),
                reason: format!("hidden size {hidden} is not divisible by {heads} heads"),
            });
        }
        let head_dim = hidden / heads;
        Ok(Self {
            q_proj: linear(&vb.pp("q_proj"), hidden, hidden)?,
            k_proj: linear(&vb.pp("k_proj"), hidden, hidden)?,
            v_proj: linear(&vb.pp("v_proj"), hidden, hidden)?,
            out_proj: linear(&vb.pp("out_proj"), hidden, hidden)?,
            heads,
            head_dim,
            scale: (head_dim as f64).powf(-0.5),
        })
    }

    fn split_heads(&self, xs: &Tensor, b: usize, s: usize) -> Result<Tensor> {
        Ok(xs
            .reshape((b, s, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// `xs` `[B,S,H]`, `mask` `[S,S]` f32 → `[B,S,H]`.
    fn forward(&self, xs: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, s, h) = xs.dims3()?;
        let dtype = xs.dtype();
        let q = self.split_heads(&(self.q_proj.forward(xs)? * self.scale)?, b, s)?;
        let k = self.split_heads(&self.k_proj.forward(xs)?, b, s)?;
        let v = self.split_heads(&self.v_proj.forward(xs)?, b, s)?;
        let scores = q.matmul(&k.t()?)?.to_dtype(DType::F32)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(mask)?)?;
        let ctx = probs.to_dtype(dtype)?.matmul(&v)?;
        let ctx = ctx.transpose(1, 2)?.reshape((b, s, h))?;
        Ok(self.out_proj.forward(&ctx)?)
    }
}

/// The two-layer MLP (`mlp.fc1`, activation, `mlp.fc2`).
#[derive(Debug, Clone)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
    act: ClipActivation,
}

impl Mlp {
    fn new(vb: &VarBuilder, hidden: usize, inter: usize, act: ClipActivation) -> Result<Self> {
        Ok(Self {
            fc1: linear(&vb.pp("fc1"), hidden, inter)?,
            fc2: linear(&vb.pp("fc2"), inter, hidden)?,
            act,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let x = self.fc1.forward(xs)?;
        let x = match self.act {
            ClipActivation::QuickGelu => (&x * candle_nn::ops::sigmoid(&(&x * 1.702)?)?)?,
            ClipActivation::Gelu => x.gelu_erf()?,
        };
        Ok(self.fc2.forward(&x)?)
    }
}

/// One pre-LN transformer layer (`encoder.layers.N`).
#[derive(Debug, Clone)]
pub(crate) struct EncoderLayer {
    layer_norm1: LayerNormF32,
    self_attn: SelfAttention,
    layer_norm2: LayerNormF32,
    mlp: Mlp,
}

impl EncoderLayer {
    pub(crate) fn new(vb: &VarBuilder, cfg: &super::ClipTextConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            layer_norm1: LayerNormF32::new(&vb.pp("layer_norm1"), h, cfg.layer_norm_eps)?,
            self_attn: SelfAttention::new(&vb.pp("self_attn"), h, cfg.num_attention_heads)?,
            layer_norm2: LayerNormF32::new(&vb.pp("layer_norm2"), h, cfg.layer_norm_eps)?,
            mlp: Mlp::new(&vb.pp("mlp"), h, cfg.intermediate_size, cfg.hidden_act)?,
        })
    }

    pub(crate) fn forward(&self, xs: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let attn = self
            .self_attn
            .forward(&self.layer_norm1.forward(xs)?, mask)?;
        let xs = (xs + attn)?;
        let mlp = self.mlp.forward(&self.layer_norm2.forward(&xs)?)?;
        Ok((xs + mlp)?)
    }
}

/// Keeps only the last axis' rows at `positions` (one per batch row): `[B,S,H]` → `[B,H]`.
pub(crate) fn gather_rows(xs: &Tensor, positions: &[u32]) -> Result<Tensor> {
    let (b, s, h) = xs.dims3()?;
    let flat: Vec<u32> = positions
        .iter()
        .enumerate()
        .map(|(row, &p)| (row * s) as u32 + p)
        .collect();
    let idx = Tensor::from_vec(flat, b, xs.device())?;
    Ok(xs.reshape((b * s, h))?.index_select(&idx, 0)?)
}
