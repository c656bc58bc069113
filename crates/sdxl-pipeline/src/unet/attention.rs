//! diffusers `Transformer2DModel` / `BasicTransformerBlock` / `Attention` with exact erf GEGLU and
//! an f32 softmax (candle-transformers' blocks use the tanh GELU, hence our own).

use candle_core::{DType, Module, Tensor};
use candle_nn::{LayerNorm, Linear, VarBuilder};

use crate::layers::GroupNorm;

/// Runtime switch for flash attention (builds with the `flash-attn` feature; on by default).
static FLASH_ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns flash attention on or off for UNets prepared from now on (A/B timings; no effect in a
/// build without the `flash-attn` feature). Flash attention runs only on CUDA in f16/bf16.
pub fn set_flash_attention(enabled: bool) {
    FLASH_ENABLED.store(enabled, std::sync::atomic::Ordering::Relaxed);
}

/// True when this build has the `flash-attn` feature.
pub fn flash_attention_built() -> bool {
    cfg!(feature = "flash-attn")
}

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

    /// Self-attention of `x` [B, L, C].
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, lq, _) = x.dims3()?;
        let q = self.to_q.forward(x)?;
        let k = self.to_k.forward(x)?;
        let v = self.to_v.forward(x)?;
        let out = self.attend(q, k, v, b, lq, lq)?;
        self.to_out.forward(&out)
    }

    /// Keys and values of `context` [B, Lk, Cc] in the layout the attention kernel takes: computed
    /// once per job for the text context (it does not change between steps).
    pub fn context_kv(&self, context: &Tensor) -> candle_core::Result<ContextKv> {
        let (b, lk, _) = context.dims3()?;
        let k = self.to_k.forward(context)?;
        let v = self.to_v.forward(context)?;
        if self.uses_flash(&k) {
            let split = |t: Tensor| t.reshape((b, lk, self.heads, self.head_dim));
            return Ok(ContextKv {
                k: split(k)?,
                v: split(v)?,
                flash: true,
            });
        }
        Ok(ContextKv {
            k: self.split_heads(k, b, lk)?,
            v: self.split_heads(v, b, lk)?,
            flash: false,
        })
    }

    /// Cross-attention of `x` [B, Lq, C] to the keys/values [`Self::context_kv`] made.
    pub fn forward_kv(&self, x: &Tensor, kv: &ContextKv) -> candle_core::Result<Tensor> {
        let (b, lq, _) = x.dims3()?;
        let q = self.to_q.forward(x)?;
        let out = if kv.flash {
            self.flash(q, &kv.k, &kv.v, b, lq)?
        } else {
            let q = self.split_heads(q, b, lq)?;
            self.attend_heads(&q, &kv.k, &kv.v, b, lq)?
        };
        self.to_out.forward(&out)
    }

    /// [B, L, H·D] → contiguous [B, H, L, D].
    fn split_heads(&self, t: Tensor, b: usize, l: usize) -> candle_core::Result<Tensor> {
        t.reshape((b, l, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    #[cfg(feature = "flash-attn")]
    fn uses_flash(&self, t: &Tensor) -> bool {
        FLASH_ENABLED.load(std::sync::atomic::Ordering::Relaxed)
            && t.device().is_cuda()
            && matches!(t.dtype(), DType::F16 | DType::BF16)
    }

    #[cfg(not(feature = "flash-attn"))]
    fn uses_flash(&self, _t: &Tensor) -> bool {
        false
    }

    /// Flash attention of `q` [B, Lq, H·D] with `k`, `v` [B, Lk, H, D] → [B, Lq, H·D].
    #[cfg(feature = "flash-attn")]
    fn flash(
        &self,
        q: Tensor,
        k: &Tensor,
        v: &Tensor,
        b: usize,
        lq: usize,
    ) -> candle_core::Result<Tensor> {
        let scale = (self.head_dim as f64).powf(-0.5) as f32;
        let q = q.reshape((b, lq, self.heads, self.head_dim))?;
        let out = candle_flash_attn::flash_attn(&q, k, v, scale, false)?;
        out.reshape((b, lq, self.heads * self.head_dim))
    }

    #[cfg(not(feature = "flash-attn"))]
    fn flash(
        &self,
        _q: Tensor,
        _k: &Tensor,
        _v: &Tensor,
        _b: usize,
        _lq: usize,
    ) -> candle_core::Result<Tensor> {
        candle_core::bail!("flash attention is not in this build")
    }

    fn attend(
        &self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        b: usize,
        lq: usize,
        lk: usize,
    ) -> candle_core::Result<Tensor> {
        if self.uses_flash(&q) {
            let split = |t: Tensor| t.reshape((b, lk, self.heads, self.head_dim));
            return self.flash(q, &split(k)?, &split(v)?, b, lq);
        }
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
        let q = self.split_heads(q, b, lq)?;
        let k = self.split_heads(k, b, lk)?;
        let v = self.split_heads(v, b, lk)?;
        self.attend_heads(&q, &k, &v, b, lq)
    }

    /// `q` [B, H, Lq, D], `k`, `v` [B, H, Lk, D] (contiguous) → [B, Lq, H·D].
    fn attend_heads(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        b: usize,
        lq: usize,
    ) -> candle_core::Result<Tensor> {
        let dtype = q.dtype();
        let scale = (self.head_dim as f64).powf(-0.5);
        let q = (q * scale)?;
        let scores = q.matmul(&k.t()?)?.to_dtype(DType::F32)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
        probs
            .matmul(v)?
            .transpose(1, 2)?
            .reshape((b, lq, self.heads * self.head_dim))
    }
}

/// Keys and values of the text context for one cross-attention, per job: [B, H, Lk, D] for the
/// plain kernel or [B, Lk, H, D] for flash attention.
#[derive(Debug, Clone)]
pub(crate) struct ContextKv {
    k: Tensor,
    v: Tensor,
    flash: bool,
}

/// GEGLU feed-forward: `net.0.proj` (→ 2·inner), `hidden * gelu_erf(gate)`, `net.2`. The
/// projection runs as two linears on the two row halves of its weight (views of the loaded
/// tensor), so both halves come out contiguous instead of as strided chunks of one output.
#[derive(Debug)]
struct FeedForward {
    hidden: Linear,
    gate: Linear,
    out: Linear,
}

impl FeedForward {
    fn new(vb: VarBuilder, dim: usize) -> candle_core::Result<Self> {
        let inner = dim * 4;
        let proj = vb.pp("net.0.proj");
        let w = proj.get((inner * 2, dim), "weight")?;
        let b = proj.get(inner * 2, "bias")?;
        let half = |i: usize| -> candle_core::Result<Linear> {
            Ok(Linear::new(
                w.narrow(0, i * inner, inner)?,
                Some(b.narrow(0, i * inner, inner)?),
            ))
        };
        Ok(Self {
            hidden: half(0)?,
            gate: half(1)?,
            out: candle_nn::linear(inner, dim, vb.pp("net.2"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let hidden = self.hidden.forward(x)?;
        let gate = self.gate.forward(x)?.gelu_erf()?;
        self.out.forward(&(hidden * gate)?)
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

    fn forward(&self, x: &Tensor, kv: &ContextKv) -> candle_core::Result<Tensor> {
        let x = (self.attn1.forward(&self.norm1.forward(x)?)? + x)?;
        let x = (self.attn2.forward_kv(&self.norm2.forward(&x)?, kv)? + &x)?;
        self.ff.forward(&self.norm3.forward(&x)?)? + &x
    }
}

/// Input/output projection: Linear (`use_linear_projection`, SDXL) or 1×1 conv.
#[derive(Debug)]
enum Projection {
    Linear(Linear),
    Conv(crate::conv::Conv2d),
}

impl Projection {
    fn new(vb: VarBuilder, inp: usize, out: usize, linear: bool) -> candle_core::Result<Self> {
        Ok(if linear {
            Self::Linear(candle_nn::linear(inp, out, vb)?)
        } else {
            Self::Conv(crate::conv::conv2d(inp, out, 1, Default::default(), vb)?)
        })
    }
}

/// diffusers `Transformer2DModel` (continuous input): GroupNorm, proj_in, N blocks, proj_out, residual.
#[derive(Debug)]
pub(crate) struct Transformer2D {
    norm: GroupNorm,
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
            norm: GroupNorm::new(cfg.groups, c, 1e-6, vb.pp("norm"))?,
            proj_in: Projection::new(vb.pp("proj_in"), c, c, cfg.linear_projection)?,
            blocks,
            proj_out: Projection::new(vb.pp("proj_out"), c, c, cfg.linear_projection)?,
        })
    }

    /// Cross-attention keys/values of `context` [B, L, Cc] for each block (once per job).
    pub fn context_kv(&self, context: &Tensor) -> candle_core::Result<Vec<ContextKv>> {
        self.blocks
            .iter()
            .map(|b| b.attn2.context_kv(context))
            .collect()
    }

    /// `x` [B, C, H, W]; `kv` from [`Self::context_kv`].
    pub fn forward(&self, x: &Tensor, kv: &[ContextKv]) -> candle_core::Result<Tensor> {
        if kv.len() != self.blocks.len() {
            candle_core::bail!(
                "transformer: {} context K/V for {} blocks",
                kv.len(),
                self.blocks.len()
            );
        }
        let (b, c, h, w) = x.dims4()?;
        let hs = self.norm.forward(x)?;
        let to_tokens = |t: Tensor| t.permute((0, 2, 3, 1))?.reshape((b, h * w, c));
        let mut hs = match &self.proj_in {
            Projection::Linear(l) => l.forward(&to_tokens(hs)?)?,
            Projection::Conv(conv) => to_tokens(conv.forward(&hs)?)?,
        };
        for (block, kv) in self.blocks.iter().zip(kv) {
            hs = block.forward(&hs, kv)?;
        }
        let to_image = |t: Tensor| t.reshape((b, h, w, c))?.permute((0, 3, 1, 2));
        let hs = match &self.proj_out {
            Projection::Linear(l) => to_image(l.forward(&hs)?)?,
            Projection::Conv(conv) => conv.forward(&to_image(hs)?.contiguous()?)?,
        };
        hs + x
    }
}
