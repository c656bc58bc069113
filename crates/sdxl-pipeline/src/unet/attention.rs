//! diffusers `Transformer2DModel` / `BasicTransformerBlock` / `Attention` with exact erf GEGLU and
//! an f32 softmax (candle-transformers' blocks use the tanh GELU, hence our own).

use candle_core::{DType, Module, Tensor, D};
use candle_nn::{LayerNorm, Linear, VarBuilder};

/// Multi-head attention with diffusers names `to_q`, `to_k`, `to_v`, `to_out.0`.
#[derive(Debug)]
pub(crate) struct Attention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    pub fn new(
        vb: VarBuilder,
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        head_dim: usize,
    ) -> candle_core::Result<Self> {
        let inner = heads * head_dim;
        Ok(Self {
            to_q: candle_nn::linear_no_bias(query_dim, inner, vb.pp("to_q"))?,
            to_k: candle_nn::linear_no_bias(context_dim, inner, vb.pp("to_k"))?,
            to_v: candle_nn::linear_no_bias(context_dim, inner, vb.pp("to_v"))?,
            to_out: candle_nn::linear(inner, query_dim, vb.pp("to_out").pp("0"))?,
            heads,
            head_dim,
        })
    }

    /// `x` [B, Lq, C]; `context` [B, Lk, Cc] (self-attention when `None`).
    pub fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let context = context.unwrap_or(x);
        let (b, lq, _) = x.dims3()?;
        let lk = context.dim(1)?;
        let q = self.to_q.forward(x)?;
        let k = self.to_k.forward(context)?;
        let v = self.to_v.forward(context)?;
        let out = self.attend(q, k, v, b, lq, lk)?;
        self.to_out.forward(&out)
    }

    #[cfg(feature = "flash-attn")]
    fn attend(
        &self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        b: usize,
        lq: usize,
        lk: usize,
    ) -> candle_core::Result<Tensor> {
        if q.device().is_cuda() && matches!(q.dtype(), DType::F16 | DType::BF16) {
            let scale = (self.head_dim as f64).powf(-0.5) as f32;
            let q = q.reshape((b, lq, self.heads, self.head_dim))?;
            let k = k.reshape((b, lk, self.heads, self.head_dim))?;
            let v = v.reshape((b, lk, self.heads, self.head_dim))?;
            let out = candle_flash_attn::flash_attn(&q, &k, &v, scale, false)?;
            return out.reshape((b, lq, self.heads * self.head_dim));
        }
        self.attend_plain(q, k, v, b, lq, lk)
    }

    #[cfg(not(feature = "flash-attn"))]
    fn attend(
        &self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        b: usize,
        lq: usize,
        lk: usize,
    ) -> candle_core::Result<Tensor> {
        self.attend_plain(q, k, v, b, lq, lk)
    }

    /// softmax(q kᵀ / √d) v with the softmax in f32, as torch's SDPA math.
    fn attend_plain(
        &self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        b: usize,
        lq: usize,
        lk: usize,
    ) -> candle_core::Result<Tensor> {
        let dtype = q.dtype();
        let split = |t: Tensor, l: usize| -> candle_core::Result<Tensor> {
            t.reshape((b, l, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let scale = (self.head_dim as f64).powf(-0.5);
        let q = (split(q, lq)? * scale)?;
        let k = split(k, lk)?;
        let v = split(v, lk)?;
        let scores = q.matmul(&k.t()?)?.to_dtype(DType::F32)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
        probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, lq, self.heads * self.head_dim))
    }
}

/// GEGLU feed-forward: `net.0.proj` (→ 2·inner), `hidden * gelu_erf(gate)`, `net.2`.
#[derive(Debug)]
struct FeedForward {
    proj: Linear,
    out: Linear,
}

impl FeedForward {
    fn new(vb: VarBuilder, dim: usize) -> candle_core::Result<Self> {
        let inner = dim * 4;
        Ok(Self {
            proj: candle_nn::linear(dim, inner * 2, vb.pp("net.0.proj"))?,
            out: candle_nn::linear(inner, dim, vb.pp("net.2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.proj.forward(x)?;
        let halves = h.chunk(2, D::Minus1)?;
        let (hidden, gate) = match halves.as_slice() {
            [a, b] => (a, b),
            _ => candle_core::bail!("GEGLU: projection did not split in two"),
        };
        self.out.forward(&(hidden * gate.gelu_erf()?)?)
    }
}

/// diffusers `BasicTransformerBlock`: self-attention, cross-attention, GEGLU feed-forward.
#[derive(Debug)]
struct BasicTransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl BasicTransformerBlock {
    fn new(
        vb: VarBuilder,
        dim: usize,
        context_dim: usize,
        heads: usize,
    ) -> candle_core::Result<Self> {
        let head_dim = dim / heads;
        Ok(Self {
            norm1: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            attn1: Attention::new(vb.pp("attn1"), dim, dim, heads, head_dim)?,
            norm2: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            attn2: Attention::new(vb.pp("attn2"), dim, context_dim, heads, head_dim)?,
            norm3: candle_nn::layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            ff: FeedForward::new(vb.pp("ff"), dim)?,
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> candle_core::Result<Tensor> {
        let x = (self.attn1.forward(&self.norm1.forward(x)?, None)? + x)?;
        let x = (self
            .attn2
            .forward(&self.norm2.forward(&x)?, Some(context))?
            + &x)?;
        self.ff.forward(&self.norm3.forward(&x)?)? + &x
    }
}

/// Input/output projection: Linear (`use_linear_projection`, SDXL) or 1×1 conv.
#[derive(Debug)]
enum Projection {
    Linear(Linear),
    Conv(candle_nn::Conv2d),
}

impl Projection {
    fn new(vb: VarBuilder, inp: usize, out: usize, linear: bool) -> candle_core::Result<Self> {
        Ok(if linear {
            Self::Linear(candle_nn::linear(inp, out, vb)?)
        } else {
            Self::Conv(candle_nn::conv2d(inp, out, 1, Default::default(), vb)?)
        })
    }
}

/// diffusers `Transformer2DModel` (continuous input): GroupNorm, proj_in, N blocks, proj_out, residual.
#[derive(Debug)]
pub(crate) struct Transformer2D {
    norm: candle_nn::GroupNorm,
    proj_in: Projection,
    blocks: Vec<BasicTransformerBlock>,
    proj_out: Projection,
}

/// Shape parameters of one [`Transformer2D`].
pub(crate) struct Transformer2DConfig {
    pub channels: usize,
    pub heads: usize,
    pub layers: usize,
    pub context_dim: usize,
    pub groups: usize,
    pub linear_projection: bool,
}

impl Transformer2D {
    pub fn new(vb: VarBuilder, cfg: &Transformer2DConfig) -> candle_core::Result<Self> {
        let c = cfg.channels;
        let blocks = (0..cfg.layers)
            .map(|i| {
                BasicTransformerBlock::new(
                    vb.pp("transformer_blocks").pp(i.to_string()),
                    c,
                    cfg.context_dim,
                    cfg.heads,
                )
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            norm: candle_nn::group_norm(cfg.groups, c, 1e-6, vb.pp("norm"))?,
            proj_in: Projection::new(vb.pp("proj_in"), c, c, cfg.linear_projection)?,
            blocks,
            proj_out: Projection::new(vb.pp("proj_out"), c, c, cfg.linear_projection)?,
        })
    }

    /// `x` [B, C, H, W], `context` [B, L, Cc].
    pub fn forward(&self, x: &Tensor, context: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let hs = self.norm.forward(x)?;
        let to_tokens = |t: Tensor| t.permute((0, 2, 3, 1))?.reshape((b, h * w, c));
        let mut hs = match &self.proj_in {
            Projection::Linear(l) => l.forward(&to_tokens(hs)?)?,
            Projection::Conv(conv) => to_tokens(conv.forward(&hs)?)?,
        };
        for block in &self.blocks {
            hs = block.forward(&hs, context)?;
        }
        let to_image = |t: Tensor| t.reshape((b, h, w, c))?.permute((0, 3, 1, 2));
        let hs = match &self.proj_out {
            Projection::Linear(l) => to_image(l.forward(&hs)?)?,
            Projection::Conv(conv) => conv.forward(&to_image(hs)?.contiguous()?)?,
        };
        hs + x
    }
}
