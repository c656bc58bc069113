//! The VAE decoder (diffusers `Decoder`: conv_in, mid block, up blocks, GroupNorm, SiLU, conv_out)
//! on the fused GroupNorm of [`crate::layers`], with the mid-block attention computed in query
//! slices so its score matrix never exceeds [`ATTENTION_SLICE_ELEMENTS`].

use crate::conv::Conv2d;
use candle_core::{DType, Module, Tensor};
use candle_nn::{Conv2dConfig, Linear, VarBuilder};

use super::{VaeConfig, VAE_EPS};
use crate::layers::{GroupNorm, ResnetBlock, ResnetConfig};

/// Largest attention score block (queries × keys) computed at once: 2²⁶ elements = 256 MiB in
/// f32. A 1024² decode has 16384² scores (1 GiB) and runs in 4 slices; a 2048² one (65536²,
/// 16 GiB whole) in 64. Up to 8192 tokens (a 724² image) it is one slice, i.e. the plain attention.
pub(crate) const ATTENTION_SLICE_ELEMENTS: usize = 1 << 26;

fn conv3(vb: VarBuilder, inp: usize, out: usize) -> candle_core::Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    crate::conv::conv2d(inp, out, 3, cfg, vb)
}

/// A `[C, C]` linear stored as `[C, C]` or as a 1×1 conv `[C, C, 1, 1]` (old VAE files).
fn qkv_linear(channels: usize, vb: VarBuilder) -> candle_core::Result<Linear> {
    match vb.get((channels, channels), "weight") {
        Ok(w) => Ok(Linear::new(w, Some(vb.get(channels, "bias")?))),
        Err(_) => {
            let w = vb
                .get((channels, channels, 1, 1), "weight")?
                .reshape((channels, channels))?;
            Ok(Linear::new(w, Some(vb.get(channels, "bias")?)))
        }
    }
}

/// diffusers' single-head VAE attention (`group_norm`, `to_q`/`to_k`/`to_v`/`to_out.0`, or the old
/// `query`/`key`/`value`/`proj_attn`) with the residual; softmax in f32 as candle's block.
#[derive(Debug)]
struct SpatialAttention {
    group_norm: GroupNorm,
    query: Linear,
    key: Linear,
    value: Linear,
    proj: Linear,
    channels: usize,
}

impl SpatialAttention {
    fn new(vb: VarBuilder, channels: usize, groups: usize) -> candle_core::Result<Self> {
        let (q, k, v, o) = if vb.contains_tensor("to_q.weight") {
            ("to_q", "to_k", "to_v", "to_out.0")
        } else {
            ("query", "key", "value", "proj_attn")
        };
        Ok(Self {
            group_norm: GroupNorm::new(groups, channels, VAE_EPS, vb.pp("group_norm"))?,
            query: qkv_linear(channels, vb.pp(q))?,
            key: qkv_linear(channels, vb.pp(k))?,
            value: qkv_linear(channels, vb.pp(v))?,
            proj: qkv_linear(channels, vb.pp(o))?,
            channels,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let in_dtype = x.dtype();
        let (b, c, h, w) = x.dims4()?;
        let tokens = self
            .group_norm
            .forward(x)?
            .reshape((b, c, h * w))?
            .transpose(1, 2)?;
        // The scale is applied to q and k (c^-1/4 each), as diffusers' original block.
        let scale = (self.channels as f64).powf(-0.25);
        let q = (self.query.forward(&tokens)?.to_dtype(DType::F32)? * scale)?;
        let k = (self.key.forward(&tokens)?.to_dtype(DType::F32)? * scale)?;
        let k_t = k.t()?;
        let v = self.value.forward(&tokens)?.to_dtype(DType::F32)?;
        let n = h * w;
        let slice = (ATTENTION_SLICE_ELEMENTS / n.max(1)).clamp(1, n);
        let mut outs = Vec::with_capacity(n.div_ceil(slice));
        let mut start = 0;
        while start < n {
            let len = slice.min(n - start);
            let q_s = if len == n {
                q.clone()
            } else {
                q.narrow(1, start, len)?
            };
            let probs = candle_nn::ops::softmax_last_dim(&q_s.matmul(&k_t)?)?;
            outs.push(probs.matmul(&v)?);
            start += len;
        }
        let attn = if outs.len() == 1 {
            outs.remove(0)
        } else {
            Tensor::cat(&outs, 1)?
        };
        let out = self
            .proj
            .forward(&attn.to_dtype(in_dtype)?)?
            .t()?
            .reshape((b, c, h, w))?;
        out + x
    }
}

/// diffusers `UpDecoderBlock2D`: ResNets and an optional nearest-2× + conv upsampler.
#[derive(Debug)]
struct UpBlock {
    resnets: Vec<ResnetBlock>,
    upsampler: Option<Conv2d>,
}

/// The decoder half of the VAE.
#[derive(Debug)]
pub(crate) struct Decoder {
    conv_in: Conv2d,
    mid_first: ResnetBlock,
    mid_attention: SpatialAttention,
    mid_second: ResnetBlock,
    blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    pub fn new(
        vb: VarBuilder,
        cfg: &VaeConfig,
        first: usize,
        last: usize,
    ) -> candle_core::Result<Self> {
        let groups = cfg.norm_num_groups;
        let resnet = |vb: VarBuilder, inp: usize, out: usize| {
            ResnetBlock::new(
                vb,
                ResnetConfig {
                    in_channels: inp,
                    out_channels: out,
                    temb_channels: None,
                    groups,
                    eps: VAE_EPS,
                    output_scale_factor: 1.0,
                },
            )
        };
        let n = cfg.block_out_channels.len();
        let mut blocks = Vec::with_capacity(n);
        let mut prev = last;
        for (i, &out) in cfg.block_out_channels.iter().rev().enumerate() {
            let bvb = vb.pp("up_blocks").pp(i.to_string());
            let resnets = (0..cfg.layers_per_block + 1)
                .map(|j| {
                    let inp = if j == 0 { prev } else { out };
                    resnet(bvb.pp("resnets").pp(j.to_string()), inp, out)
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let upsampler = if i + 1 != n {
                Some(conv3(bvb.pp("upsamplers.0.conv"), out, out)?)
            } else {
                None
            };
            blocks.push(UpBlock { resnets, upsampler });
            prev = out;
        }
        let mid = vb.pp("mid_block");
        Ok(Self {
            conv_in: conv3(vb.pp("conv_in"), cfg.latent_channels, last)?,
            mid_first: resnet(mid.pp("resnets.0"), last, last)?,
            mid_attention: SpatialAttention::new(mid.pp("attentions.0"), last, groups)?,
            mid_second: resnet(mid.pp("resnets.1"), last, last)?,
            blocks,
            conv_norm_out: GroupNorm::new(groups, first, VAE_EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv3(vb.pp("conv_out"), first, cfg.out_channels)?,
        })
    }

    pub fn forward(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.conv_in.forward(z)?;
        let h = self.mid_first.forward(&h, None)?;
        let h = self.mid_attention.forward(&h)?;
        let mut h = self.mid_second.forward(&h, None)?;
        for block in &self.blocks {
            for r in &block.resnets {
                h = r.forward(&h, None)?;
            }
            if let Some(up) = &block.upsampler {
                let (_, _, hh, ww) = h.dims4()?;
                h = up.forward(&h.upsample_nearest2d(2 * hh, 2 * ww)?)?;
            }
        }
        self.conv_out.forward(&self.conv_norm_out.forward_silu(&h)?)
    }
}
