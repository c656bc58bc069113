//! The SDXL VAE (`AutoencoderKL`, diffusers names) and the fp16-safe decode of SPEC §8.

mod config;
mod decode;
mod decoder;
mod encode;
mod tiled;

use crate::conv::Conv2d;
use candle_core::{DType, Module, Tensor};
use candle_nn::{Conv2dConfig, GroupNorm, VarBuilder};
use candle_transformers::models::stable_diffusion::unet_2d_blocks::{
    DownEncoderBlock2D, DownEncoderBlock2DConfig, UNetMidBlock2D, UNetMidBlock2DConfig,
};

pub use config::VaeConfig;
pub use decode::{decode_checked, is_finite};
pub use encode::encode_checked;
pub use tiled::VaeTiling;

use decoder::Decoder;

use crate::{PipelineError, Result};

/// GroupNorm/ResNet epsilon of the diffusers VAE.
pub(crate) const VAE_EPS: f64 = 1e-6;

/// The KL autoencoder: `encoder`, `quant_conv`, `post_quant_conv`, `decoder`.
#[derive(Debug)]
pub struct AutoencoderKl {
    encoder: Coder<DownEncoderBlock2D>,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    dtype: DType,
    /// Image pixels per latent pixel (2^(levels − 1), 8 for SDXL).
    upscale: usize,
    tiling: Option<VaeTiling>,
}

/// The encoder: conv_in, down blocks, mid block, conv_norm_out, SiLU, conv_out (candle's blocks).
#[derive(Debug)]
struct Coder<B> {
    conv_in: Conv2d,
    blocks: Vec<B>,
    mid_block: UNetMidBlock2D,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

fn conv3(vb: VarBuilder, inp: usize, out: usize) -> candle_core::Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    crate::conv::conv2d(inp, out, 3, cfg, vb)
}

fn mid_block(
    vb: VarBuilder,
    channels: usize,
    groups: usize,
) -> candle_core::Result<UNetMidBlock2D> {
    let cfg = UNetMidBlock2DConfig {
        resnet_eps: VAE_EPS,
        output_scale_factor: 1.,
        attn_num_head_channels: None,
        resnet_groups: Some(groups),
        ..Default::default()
    };
    UNetMidBlock2D::new(vb, channels, None, cfg)
}

impl Coder<DownEncoderBlock2D> {
    fn new(
        vb: VarBuilder,
        cfg: &VaeConfig,
        first: usize,
        last: usize,
    ) -> candle_core::Result<Self> {
        let ch = &cfg.block_out_channels;
        let mut blocks = Vec::with_capacity(ch.len());
        let mut prev = first;
        for (i, &out) in ch.iter().enumerate() {
            let bcfg = DownEncoderBlock2DConfig {
                num_layers: cfg.layers_per_block,
                resnet_eps: VAE_EPS,
                resnet_groups: cfg.norm_num_groups,
                add_downsample: i + 1 != ch.len(),
                downsample_padding: 0,
                ..Default::default()
            };
            blocks.push(DownEncoderBlock2D::new(
                vb.pp("down_blocks").pp(i.to_string()),
                prev,
                out,
                bcfg,
            )?);
            prev = out;
        }
        Ok(Self {
            conv_in: conv3(vb.pp("conv_in"), cfg.in_channels, first)?,
            blocks,
            mid_block: mid_block(vb.pp("mid_block"), last, cfg.norm_num_groups)?,
            conv_norm_out: candle_nn::group_norm(
                cfg.norm_num_groups,
                last,
                VAE_EPS,
                vb.pp("conv_norm_out"),
            )?,
            conv_out: conv3(vb.pp("conv_out"), last, 2 * cfg.latent_channels)?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for b in &self.blocks {
            h = b.forward(&h)?;
        }
        let h = self
            .conv_norm_out
            .forward(&self.mid_block.forward(&h, None)?)?;
        self.conv_out.forward(&candle_nn::ops::silu(&h)?)
    }
}

impl AutoencoderKl {
    /// Builds the VAE from `vb` (diffusers names) for `cfg`; the model dtype is `vb`'s dtype.
    pub fn new(vb: VarBuilder, cfg: &VaeConfig) -> Result<Self> {
        cfg.validate()?;
        let (first, last) = match (
            cfg.block_out_channels.first(),
            cfg.block_out_channels.last(),
        ) {
            (Some(f), Some(l)) => (*f, *l),
            _ => return Err(PipelineError::InvalidConfig("vae: no levels".into())),
        };
        let lat = cfg.latent_channels;
        let conv1 = |vb: VarBuilder, c: usize| crate::conv::conv2d(c, c, 1, Default::default(), vb);
        Ok(Self {
            encoder: Coder::<DownEncoderBlock2D>::new(vb.pp("encoder"), cfg, first, last)?,
            decoder: Decoder::new(vb.pp("decoder"), cfg, first, last)?,
            quant_conv: match cfg.use_quant_conv {
                true => Some(conv1(vb.pp("quant_conv"), 2 * lat)?),
                false => None,
            },
            post_quant_conv: match cfg.use_post_quant_conv {
                true => Some(conv1(vb.pp("post_quant_conv"), lat)?),
                false => None,
            },
            dtype: vb.dtype(),
            upscale: 1 << cfg.block_out_channels.len().saturating_sub(1),
            tiling: Some(VaeTiling::default()),
        })
    }

    /// Decodes latents larger than `tiling.tile_latent` on a side in overlapping tiles
    /// ([`VaeTiling`]); `None` always decodes whole. Default: [`VaeTiling::default`].
    pub fn set_tiling(&mut self, tiling: Option<VaeTiling>) {
        self.tiling = tiling;
    }

    /// The tiling in effect.
    pub fn tiling(&self) -> Option<VaeTiling> {
        self.tiling
    }

    /// The dtype the weights were loaded in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Decodes latents `z` [B,4,h,w] that were already divided by the scaling factor into images
    /// [B,3,8h,8w] in about [-1, 1] (model dtype; `z` is cast to it). Latents larger than the
    /// tile size of [`Self::tiling`] decode in overlapping, blended tiles (diffusers'
    /// `tiled_decode`); smaller ones decode whole, exactly as without tiling.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let z = z.to_dtype(self.dtype)?;
        let (_, _, h, w) = z.dims4()?;
        match self.tiling {
            Some(t) if h > t.tile_latent || w > t.tile_latent => {
                tiled::decode_tiled(&z, t, self.upscale, |tile| self.decode_whole(tile))
            }
            _ => self.decode_whole(&z),
        }
    }

    /// The decoder over all of `z` (model dtype) at once.
    fn decode_whole(&self, z: &Tensor) -> Result<Tensor> {
        let z = match &self.post_quant_conv {
            Some(c) => c.forward(z)?,
            None => z.clone(),
        };
        Ok(self.decoder.forward(&z)?)
    }

    /// Encodes images [B,3,H,W] in [-1, 1] into the latent distribution `(mean, std)` (no scaling;
    /// log-variance clamped to [-30, 20] as diffusers does).
    pub fn encode(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let h = self.encoder.forward(&x.to_dtype(self.dtype)?)?;
        let h = match &self.quant_conv {
            Some(c) => c.forward(&h)?,
            None => h,
        };
        let parts = h.chunk(2, 1)?;
        let (mean, logvar) = match parts.as_slice() {
            [m, l] => (m.clone(), l.clone()),
            _ => return Err(PipelineError::Internal("vae: odd moment channels".into())),
        };
        let std = (logvar.clamp(-30f32, 20f32)? * 0.5)?.exp()?;
        Ok((mean, std))
    }
}
