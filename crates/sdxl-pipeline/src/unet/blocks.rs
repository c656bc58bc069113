//! Down, mid and up blocks of the SDXL UNet (diffusers `CrossAttnDownBlock2D`, `DownBlock2D`,
//! `UNetMidBlock2DCrossAttn`, `CrossAttnUpBlock2D`, `UpBlock2D`). ResNet blocks are
//! [`crate::layers::ResnetBlock`] (diffusers' `ResnetBlock2D` with a fused GroupNorm).
//!
//! The text context enters as per-job cross-attention keys/values ([`ContextKv`], one `Vec` per
//! transformer in forward order) and the time embedding as SiLU(temb), computed once per call.

use crate::conv::Conv2d;
use candle_core::{Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use super::attention::{ContextKv, Transformer2D, Transformer2DConfig};
use crate::layers::{ResnetBlock, ResnetConfig};

/// The per-job cross-attention K/V of every transformer of the UNet, in forward order.
pub(crate) type KvIter<'a> = std::slice::Iter<'a, Vec<ContextKv>>;

fn next_kv<'a>(kv: &mut KvIter<'a>) -> candle_core::Result<&'a [ContextKv]> {
    kv.next()
        .map(Vec::as_slice)
        .ok_or_else(|| candle_core::Error::Msg("unet: context K/V exhausted".into()))
}

fn push_kv(
    attentions: &[Transformer2D],
    context: &Tensor,
    out: &mut Vec<Vec<ContextKv>>,
) -> candle_core::Result<()> {
    for a in attentions {
        out.push(a.context_kv(context)?);
    }
    Ok(())
}

/// What every block of one UNet shares.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockCommon {
    pub temb_channels: usize,
    pub groups: usize,
    pub eps: f64,
    pub output_scale_factor: f64,
    pub context_dim: usize,
    pub linear_projection: bool,
}

impl BlockCommon {
    fn resnet(&self, vb: VarBuilder, inp: usize, out: usize) -> candle_core::Result<ResnetBlock> {
        let cfg = ResnetConfig {
            in_channels: inp,
            out_channels: out,
            temb_channels: Some(self.temb_channels),
            groups: self.groups,
            eps: self.eps,
            output_scale_factor: self.output_scale_factor,
        };
        ResnetBlock::new(vb, cfg)
    }

    fn transformer(
        &self,
        vb: VarBuilder,
        channels: usize,
        heads: usize,
        layers: usize,
    ) -> candle_core::Result<Transformer2D> {
        Transformer2D::new(
            vb,
            &Transformer2DConfig {
                channels,
                heads,
                layers,
                context_dim: self.context_dim,
                groups: self.groups,
                linear_projection: self.linear_projection,
            },
        )
    }
}

/// Attention settings of one level; `None` for a level without attention.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LevelAttention {
    pub heads: usize,
    pub layers: usize,
}

/// One down level: ResNets (+ transformers) and an optional stride-2 conv downsampler.
#[derive(Debug)]
pub(crate) struct DownBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<Transformer2D>,
    downsampler: Option<Conv2d>,
}

impl DownBlock {
    pub fn new(
        vb: VarBuilder,
        common: &BlockCommon,
        (inp, out): (usize, usize),
        layers: usize,
        attention: Option<LevelAttention>,
        downsample: Option<usize>,
    ) -> candle_core::Result<Self> {
        let mut resnets = Vec::with_capacity(layers);
        let mut attentions = Vec::new();
        for j in 0..layers {
            let c_in = if j == 0 { inp } else { out };
            resnets.push(common.resnet(vb.pp("resnets").pp(j.to_string()), c_in, out)?);
            if let Some(a) = attention {
                attentions.push(common.transformer(
                    vb.pp("attentions").pp(j.to_string()),
                    out,
                    a.heads,
                    a.layers,
                )?);
            }
        }
        let downsampler = match downsample {
            Some(padding) => {
                let cfg = Conv2dConfig {
                    stride: 2,
                    padding,
                    ..Default::default()
                };
                Some(crate::conv::conv2d(
                    out,
                    out,
                    3,
                    cfg,
                    vb.pp("downsamplers.0.conv"),
                )?)
            }
            None => None,
        };
        Ok(Self {
            resnets,
            attentions,
            downsampler,
        })
    }

    /// Appends the cross-attention K/V of `context` for each transformer of the block.
    pub fn context_kv(
        &self,
        context: &Tensor,
        out: &mut Vec<Vec<ContextKv>>,
    ) -> candle_core::Result<()> {
        push_kv(&self.attentions, context, out)
    }

    /// Returns the block output and the skip states it contributes (one per layer + downsampler).
    /// `temb` is SiLU(time embedding).
    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        kv: &mut KvIter,
    ) -> candle_core::Result<(Tensor, Vec<Tensor>)> {
        let mut x = x.clone();
        let mut skips = Vec::with_capacity(self.resnets.len() + 1);
        for (j, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(&x, Some(temb))?;
            if let Some(attn) = self.attentions.get(j) {
                x = attn.forward(&x, next_kv(kv)?)?;
            }
            skips.push(x.clone());
        }
        if let Some(down) = &self.downsampler {
            x = down.forward(&x)?;
            skips.push(x.clone());
        }
        Ok((x, skips))
    }
}

/// diffusers `UNetMidBlock2DCrossAttn`: resnet, (transformer, resnet).
#[derive(Debug)]
pub(crate) struct MidBlock {
    first: ResnetBlock,
    attention: Transformer2D,
    second: ResnetBlock,
}

impl MidBlock {
    pub fn new(
        vb: VarBuilder,
        common: &BlockCommon,
        channels: usize,
        attention: LevelAttention,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            first: common.resnet(vb.pp("resnets.0"), channels, channels)?,
            attention: common.transformer(
                vb.pp("attentions.0"),
                channels,
                attention.heads,
                attention.layers,
            )?,
            second: common.resnet(vb.pp("resnets.1"), channels, channels)?,
        })
    }

    /// Appends the cross-attention K/V of `context` for the block's transformer.
    pub fn context_kv(
        &self,
        context: &Tensor,
        out: &mut Vec<Vec<ContextKv>>,
    ) -> candle_core::Result<()> {
        push_kv(std::slice::from_ref(&self.attention), context, out)
    }

    pub fn forward(
        &self,
        x: &Tensor,
        temb: &Tensor,
        kv: &mut KvIter,
    ) -> candle_core::Result<Tensor> {
        let x = self.first.forward(x, Some(temb))?;
        let x = self.attention.forward(&x, next_kv(kv)?)?;
        self.second.forward(&x, Some(temb))
    }
}

/// One up level: ResNets over [x | skip] (+ transformers) and an optional nearest-2× + conv upsampler.
#[derive(Debug)]
pub(crate) struct UpBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<Transformer2D>,
    upsampler: Option<Conv2d>,
}

/// Channel counts of one up level (diffusers `get_up_block` arguments).
#[derive(Debug, Clone, Copy)]
pub(crate) struct UpChannels {
    pub inp: usize,
    pub prev_out: usize,
    pub out: usize,
}

impl UpBlock {
    pub fn new(
        vb: VarBuilder,
        common: &BlockCommon,
        ch: UpChannels,
        layers: usize,
        attention: Option<LevelAttention>,
        upsample: bool,
    ) -> candle_core::Result<Self> {
        let mut resnets = Vec::with_capacity(layers);
        let mut attentions = Vec::new();
        for j in 0..layers {
            let skip = if j + 1 == layers { ch.inp } else { ch.out };
            let c_in = if j == 0 { ch.prev_out } else { ch.out };
            resnets.push(common.resnet(vb.pp("resnets").pp(j.to_string()), c_in + skip, ch.out)?);
            if let Some(a) = attention {
                attentions.push(common.transformer(
                    vb.pp("attentions").pp(j.to_string()),
                    ch.out,
                    a.heads,
                    a.layers,
                )?);
            }
        }
        let upsampler = if upsample {
            let cfg = Conv2dConfig {
                padding: 1,
                ..Default::default()
            };
            Some(crate::conv::conv2d(
                ch.out,
                ch.out,
                3,
                cfg,
                vb.pp("upsamplers.0.conv"),
            )?)
        } else {
            None
        };
        Ok(Self {
            resnets,
            attentions,
            upsampler,
        })
    }

    /// Number of skip states this block consumes.
    pub fn skip_count(&self) -> usize {
        self.resnets.len()
    }

    /// Appends the cross-attention K/V of `context` for each transformer of the block.
    pub fn context_kv(
        &self,
        context: &Tensor,
        out: &mut Vec<Vec<ContextKv>>,
    ) -> candle_core::Result<()> {
        push_kv(&self.attentions, context, out)
    }

    /// `skips` in the order they are consumed (last produced first); `upsample_to` is the spatial
    /// size of the next skip state (diffusers' `upsample_size`).
    pub fn forward(
        &self,
        x: &Tensor,
        skips: &[Tensor],
        temb: &Tensor,
        kv: &mut KvIter,
        upsample_to: Option<(usize, usize)>,
    ) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        for (j, (resnet, skip)) in self.resnets.iter().zip(skips).enumerate() {
            x = Tensor::cat(&[&x, skip], 1)?;
            x = resnet.forward(&x, Some(temb))?;
            if let Some(attn) = self.attentions.get(j) {
                x = attn.forward(&x, next_kv(kv)?)?;
            }
        }
        if let Some(up) = &self.upsampler {
            let (_, _, h, w) = x.dims4()?;
            let (th, tw) = upsample_to.unwrap_or((2 * h, 2 * w));
            x = up.forward(&x.upsample_nearest2d(th, tw)?)?;
        }
        Ok(x)
    }
}
