//! The SDXL UNet (`UNet2DConditionModel` with `text_time` micro-conditioning) on candle-nn, with
//! diffusers parameter names.

mod attention;
mod blocks;
mod config;
mod embeddings;

use std::collections::HashMap;
use std::sync::Mutex;

use crate::conv::Conv2d;
use candle_core::{DType, Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

pub use attention::{flash_attention_built, set_flash_attention};
pub use config::{PerLevel, UNetConfig};

use crate::layers::GroupNorm;
use crate::{PipelineError, Result};
use attention::ContextKv;
use blocks::{BlockCommon, DownBlock, LevelAttention, MidBlock, UpBlock, UpChannels};
use embeddings::{TimestepEmbedding, Timesteps};

/// The SDXL denoising UNet.
#[derive(Debug)]
pub struct SdxlUNet {
    time_proj: Timesteps,
    time_embedding: TimestepEmbedding,
    add_time_proj: Timesteps,
    add_embedding: TimestepEmbedding,
    conv_in: Conv2d,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    in_channels: usize,
    context_dim: usize,
    text_embeds_dim: usize,
    dtype: DType,
}

/// Named intermediate tensors of one forward pass (the module outputs diffusers' hooks see).
pub type Intermediates = Vec<(String, Tensor)>;

/// What the UNet needs from the conditioning of one job, computed once by [`SdxlUNet::prepare`]:
/// the cross-attention keys/values of the text context for every transformer block, the
/// micro-conditioning embedding, and (filled on first use) the time embedding of each timestep.
#[derive(Debug)]
pub struct UNetConditioning {
    kv: Vec<Vec<ContextKv>>,
    /// `add_embedding([text_embeds | sinusoid(time_ids)])` [B, T].
    aug: Tensor,
    batch: usize,
    /// Timestep bits → (`time_embedding` output, SiLU(time_embedding + aug)).
    temb: Mutex<HashMap<u64, (Tensor, Tensor)>>,
}

impl UNetConditioning {
    /// The batch size the conditioning was prepared for.
    pub fn batch(&self) -> usize {
        self.batch
    }
}

impl SdxlUNet {
    /// Builds the UNet from `vb` (diffusers names) for `cfg`.
    pub fn new(vb: VarBuilder, cfg: &UNetConfig) -> Result<Self> {
        let layout = cfg.layout()?;
        let n = cfg.levels();
        let ch = &cfg.block_out_channels;
        let first = *ch
            .first()
            .ok_or_else(|| PipelineError::InvalidConfig("unet: no levels".into()))?;
        let last = *ch
            .last()
            .ok_or_else(|| PipelineError::InvalidConfig("unet: no levels".into()))?;
        let time_proj = Timesteps {
            dim: first,
            flip_sin_to_cos: cfg.flip_sin_to_cos,
            shift: cfg.freq_shift,
        };
        let add_time_proj = Timesteps {
            dim: layout.addition_time_embed_dim,
            ..time_proj
        };
        let text_embeds_dim = layout
            .projection_input_dim
            .checked_sub(6 * layout.addition_time_embed_dim)
            .ok_or_else(|| {
                PipelineError::InvalidConfig(
                    "unet: projection_class_embeddings_input_dim < 6·addition_time_embed_dim"
                        .into(),
                )
            })?;
        let common = BlockCommon {
            temb_channels: layout.time_embed_dim,
            groups: cfg.norm_num_groups,
            eps: cfg.norm_eps,
            output_scale_factor: cfg.resnet_out_scale_factor,
            context_dim: cfg.cross_attention_dim,
            linear_projection: cfg.use_linear_projection,
        };
        let attn_at = |level: usize, has: bool| {
            has.then(|| LevelAttention {
                heads: layout.heads[level],
                layers: layout.transformer_layers[level],
            })
        };
        let conv3 = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let mut down_blocks = Vec::with_capacity(n);
        let mut prev = first;
        for (i, &out) in ch.iter().enumerate() {
            let is_last = i + 1 == n;
            down_blocks.push(DownBlock::new(
                vb.pp("down_blocks").pp(i.to_string()),
                &common,
                (prev, out),
                cfg.layers_per_block,
                attn_at(i, layout.down_attention[i]),
                (!is_last).then_some(cfg.downsample_padding),
            )?);
            prev = out;
        }
        let mid_block = MidBlock::new(
            vb.pp("mid_block"),
            &common,
            last,
            LevelAttention {
                heads: layout.heads[n - 1],
                layers: layout.transformer_layers[n - 1],
            },
        )?;
        let mut up_blocks = Vec::with_capacity(n);
        let mut prev_out = last;
        for i in 0..n {
            let level = n - 1 - i;
            let out = ch[level];
            let inp = ch[level.saturating_sub(1)];
            up_blocks.push(UpBlock::new(
                vb.pp("up_blocks").pp(i.to_string()),
                &common,
                UpChannels { inp, prev_out, out },
                cfg.layers_per_block + 1,
                attn_at(level, layout.up_attention[i]),
                i + 1 != n,
            )?);
            prev_out = out;
        }
        Ok(Self {
            time_proj,
            time_embedding: TimestepEmbedding::new(
                vb.pp("time_embedding"),
                first,
                layout.time_embed_dim,
            )?,
            add_time_proj,
            add_embedding: TimestepEmbedding::new(
                vb.pp("add_embedding"),
                layout.projection_input_dim,
                layout.time_embed_dim,
            )?,
            conv_in: crate::conv::conv2d(cfg.in_channels, first, 3, conv3, vb.pp("conv_in"))?,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::new(
                cfg.norm_num_groups,
                first,
                cfg.norm_eps,
                vb.pp("conv_norm_out"),
            )?,
            conv_out: crate::conv::conv2d(first, cfg.out_channels, 3, conv3, vb.pp("conv_out"))?,
            in_channels: cfg.in_channels,
            context_dim: cfg.cross_attention_dim,
            text_embeds_dim,
            dtype: vb.dtype(),
        })
    }

    /// The dtype the weights were loaded in (and of the output).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// x [B,4,h,w], timestep (fractional allowed), context [B,L,2048], text_embeds [B,1280],
    /// time_ids [B,6] → model output [B,4,h,w] (in the model dtype).
    pub fn forward(
        &self,
        x: &Tensor,
        timestep: f64,
        context: &Tensor,
        text_embeds: &Tensor,
        time_ids: &Tensor,
    ) -> Result<Tensor> {
        let cond = self.prepare(context, text_embeds, time_ids)?;
        self.run(x, timestep, &cond, None)
    }

    /// [`Self::forward`] with the per-job part ([`Self::prepare`]) done once: a sampler loop
    /// calls this every step with the same `cond`.
    pub fn forward_prepared(
        &self,
        x: &Tensor,
        timestep: f64,
        cond: &UNetConditioning,
    ) -> Result<Tensor> {
        self.run(x, timestep, cond, None)
    }

    /// [`Self::forward`] that also returns the outputs of `time_embedding`, `add_embedding`,
    /// `conv_in`, each `down_blocks.i`, `mid_block`, each `up_blocks.i` and `conv_norm_out`.
    pub fn forward_with_intermediates(
        &self,
        x: &Tensor,
        timestep: f64,
        context: &Tensor,
        text_embeds: &Tensor,
        time_ids: &Tensor,
    ) -> Result<(Tensor, Intermediates)> {
        let mut trace = Vec::new();
        let cond = self.prepare(context, text_embeds, time_ids)?;
        let out = self.run(x, timestep, &cond, Some(&mut trace))?;
        Ok((out, trace))
    }

    /// The per-job part of a forward pass: validates the conditioning (context [B,L,2048],
    /// text_embeds [B,1280], time_ids [B,6]) and computes the cross-attention keys/values of
    /// every transformer block and the micro-conditioning embedding.
    pub fn prepare(
        &self,
        context: &Tensor,
        text_embeds: &Tensor,
        time_ids: &Tensor,
    ) -> Result<UNetConditioning> {
        let b = self.check_conditioning(context, text_embeds, time_ids)?;
        let dtype = self.dtype;
        let context = context.to_dtype(dtype)?;
        let mut kv = Vec::new();
        for block in &self.down_blocks {
            block.context_kv(&context, &mut kv)?;
        }
        self.mid_block.context_kv(&context, &mut kv)?;
        for block in &self.up_blocks {
            block.context_kv(&context, &mut kv)?;
        }
        // text_time micro-conditioning: add_embedding([text_embeds | sinusoid(time_ids)]).
        let time_embeds = self
            .add_time_proj
            .forward(&time_ids.flatten_all()?)?
            .reshape((b, ()))?;
        let add_in = Tensor::cat(
            &[&text_embeds.to_dtype(dtype)?, &time_embeds.to_dtype(dtype)?],
            1,
        )?;
        let aug = self.add_embedding.forward(&add_in)?;
        Ok(UNetConditioning {
            kv,
            aug,
            batch: b,
            temb: Mutex::new(HashMap::new()),
        })
    }

    fn check_conditioning(
        &self,
        context: &Tensor,
        text_embeds: &Tensor,
        time_ids: &Tensor,
    ) -> Result<usize> {
        let bad = |m: String| Err(PipelineError::Internal(format!("unet input: {m}")));
        let (b, _, cd) = context.dims3()?;
        if cd != self.context_dim {
            return bad(format!(
                "context {:?}, expected [{b}, L, {}]",
                context.dims(),
                self.context_dim
            ));
        }
        if text_embeds.dims() != [b, self.text_embeds_dim] {
            return bad(format!(
                "text_embeds {:?}, expected [{b}, {}]",
                text_embeds.dims(),
                self.text_embeds_dim
            ));
        }
        if time_ids.dims() != [b, 6] {
            return bad(format!("time_ids {:?}, expected [{b}, 6]", time_ids.dims()));
        }
        Ok(b)
    }

    fn check_x(&self, x: &Tensor, cond: &UNetConditioning) -> Result<()> {
        let bad = |m: String| Err(PipelineError::Internal(format!("unet input: {m}")));
        let (b, c, _, _) = x.dims4()?;
        if c != self.in_channels {
            return bad(format!("x has {c} channels, expected {}", self.in_channels));
        }
        if b != cond.batch {
            return bad(format!(
                "x {:?} has batch {b}, the conditioning {}",
                x.dims(),
                cond.batch
            ));
        }
        Ok(())
    }

    /// (`time_embedding(sinusoid(t))`, SiLU(that + aug)) for `timestep`, computed on the first
    /// call per timestep of a job and reused after (the same schedule runs for every image).
    fn time_embedding(&self, timestep: f64, cond: &UNetConditioning) -> Result<(Tensor, Tensor)> {
        let key = timestep.to_bits();
        if let Some(hit) = cond.temb.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(hit);
        }
        // f32 sinusoid, then the MLP in the model dtype.
        let t = Timesteps::constant(cond.batch, timestep, cond.aug.device())?;
        let t_emb = self.time_proj.forward(&t)?.to_dtype(self.dtype)?;
        let emb = self.time_embedding.forward(&t_emb)?;
        let silu = candle_nn::ops::silu(&(&emb + &cond.aug)?)?;
        if let Ok(mut m) = cond.temb.lock() {
            m.insert(key, (emb.clone(), silu.clone()));
        }
        Ok((emb, silu))
    }

    fn run(
        &self,
        x: &Tensor,
        timestep: f64,
        cond: &UNetConditioning,
        mut trace: Option<&mut Intermediates>,
    ) -> Result<Tensor> {
        self.check_x(x, cond)?;
        // Inputs in any float dtype are cast to the model dtype (the output's dtype).
        let x = &x.to_dtype(self.dtype)?;
        let mut record = |name: &str, t: &Tensor| {
            if let Some(tr) = trace.as_deref_mut() {
                tr.push((name.to_string(), t.clone()));
            }
        };
        let (emb, temb) = self.time_embedding(timestep, cond)?;
        record("time_embedding", &emb);
        record("add_embedding", &cond.aug);
        let mut kv = cond.kv.iter();

        let mut h = self.conv_in.forward(x)?;
        record("conv_in", &h);
        let mut skips = vec![h.clone()];
        for (i, block) in self.down_blocks.iter().enumerate() {
            let (out, s) = block.forward(&h, &temb, &mut kv)?;
            h = out;
            skips.extend(s);
            record(&format!("down_blocks.{i}"), &h);
        }
        h = self.mid_block.forward(&h, &temb, &mut kv)?;
        record("mid_block", &h);
        for (i, block) in self.up_blocks.iter().enumerate() {
            let take = block.skip_count();
            let start = skips.len().checked_sub(take).ok_or_else(|| {
                PipelineError::Internal("unet: skip connections exhausted".into())
            })?;
            let mine: Vec<Tensor> = skips.drain(start..).rev().collect();
            let upsample_to = match skips.last() {
                Some(next) => {
                    let (_, _, hh, ww) = next.dims4()?;
                    Some((hh, ww))
                }
                None => None,
            };
            h = block.forward(&h, &mine, &temb, &mut kv, upsample_to)?;
            record(&format!("up_blocks.{i}"), &h);
        }
        h = self.conv_norm_out.forward(&h)?;
        record("conv_norm_out", &h);
        Ok(self.conv_out.forward(&candle_nn::ops::silu(&h)?)?)
    }
}
