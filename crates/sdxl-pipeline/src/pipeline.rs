//! The text-to-image request type (SPEC §3 fields that concern the pipeline; defaults live here
//! and nowhere else), the loaded model and the txt2img loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use crate::checkpoint::{Checkpoint, Component};
use crate::embedding::TextualInversion;
use crate::interrupt::{CondDenoiser, Flow, RenderControl, Watched};
use crate::lora::{LiveWeights, LoraSet, SwitchOutcome};
use crate::noise::{TorchNoiseSource, VariationSeed};
use crate::output::RgbImage;
use crate::prompt::{Emphasis, PromptEncoder, PromptMode, PromptOptions, ScheduledConditioning};
use crate::sampling::{self, Denoiser, ModelSchedule, Prediction, SamplerParams};
use crate::text_encoder::ClipTextEncoder;
use crate::unet::{SdxlUNet, UNetConditioning};
use crate::vae::{self, AutoencoderKl};
use crate::{PipelineError, Result};

mod hires;
mod image_conditioning;
mod img2img;
mod inpaint;

pub use hires::{upscale_pixels, HiresParams, HiresTarget, HiresUpscaler};
pub use image_conditioning::DEFAULT_INPAINTING_MASK_WEIGHT;
pub use img2img::{hires_steps, img2img_steps, Img2ImgParams, DEFAULT_DENOISING_STRENGTH};
pub use inpaint::{
    ConditioningSource, InpaintParams, InpaintingFill, BLANK_MASK_WARNING, DEFAULT_MASK_BLUR,
};

/// Default number of denoising steps.
pub const DEFAULT_STEPS: u32 = 25;
/// Default classifier-free guidance scale.
pub const DEFAULT_CFG_SCALE: f64 = 7.0;
/// Default image side in pixels.
pub const DEFAULT_SIZE: u32 = 1024;
/// Default A1111 sampler name.
pub const DEFAULT_SAMPLER: &str = "DPM++ 2M Karras";
/// Default clip skip (1 and 2 both mean SDXL's penultimate layer).
pub const DEFAULT_CLIP_SKIP: u32 = 2;

/// One text-to-image request, already validated by the caller for types; the pipeline checks
/// the value ranges it depends on and answers with `InvalidInput` otherwise. Serializes to the
/// job schema's field names (the worker's `parameters` output).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Txt2ImgRequest {
    /// The positive prompt; may exceed 77 tokens.
    pub prompt: String,
    /// The negative prompt; `None` or empty ⇒ zero unconditional embedding.
    pub negative_prompt: Option<String>,
    /// Denoising steps (1..=150).
    pub steps: u32,
    /// CFG scale; ≤ 1 skips the unconditional pass.
    pub cfg_scale: f64,
    /// Image width in pixels (multiple of 8).
    pub width: u32,
    /// Image height in pixels (multiple of 8).
    pub height: u32,
    /// A1111 sampler name, e.g. `DPM++ 2M Karras` or `Euler a`.
    pub sampler_name: String,
    /// Optional A1111 ≥ 1.9 schedule type (`karras`, `exponential`, `normal`, ...).
    pub scheduler: Option<String>,
    /// Seed of image 0; image i uses `seed + i`.
    pub seed: u64,
    /// Number of images.
    pub batch_size: u32,
    /// CLIP skip (1..=12).
    pub clip_skip: u32,
    /// Long-prompt mode.
    pub prompt_mode: PromptMode,
    /// Emphasis mode of the prompt syntax (SPEC §5a).
    pub emphasis: Emphasis,
    /// Number of batches (A1111 `n_iter`): `batch_size × n_iter` images in all.
    pub n_iter: u32,
    /// Variation seed and seed resize (A1111 `subseed`, ...; SPEC §3).
    #[serde(flatten)]
    pub variation: VariationSeed,
    /// `eta`, `s_churn`, `s_tmin`, `s_tmax`, `s_noise` and the eta options (SPEC §3).
    #[serde(flatten)]
    pub sampler_params: SamplerParams,
}

impl Default for Txt2ImgRequest {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative_prompt: None,
            steps: DEFAULT_STEPS,
            cfg_scale: DEFAULT_CFG_SCALE,
            width: DEFAULT_SIZE,
            height: DEFAULT_SIZE,
            sampler_name: DEFAULT_SAMPLER.to_string(),
            scheduler: None,
            seed: 0,
            batch_size: 1,
            clip_skip: DEFAULT_CLIP_SKIP,
            prompt_mode: PromptMode::Blend,
            emphasis: Emphasis::Original,
            n_iter: 1,
            variation: VariationSeed::default(),
            sampler_params: SamplerParams::default(),
        }
    }
}

/// Per-step progress of a render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepProgress {
    /// Index of the image in the batch.
    pub image: u32,
    /// Steps done over the whole batch.
    pub done: u32,
    /// Total steps over the whole batch.
    pub total: u32,
}

/// Wall-clock time spent in each phase, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Prompt encoding.
    pub encode_ms: f64,
    /// The sampler loops of all images.
    pub denoise_ms: f64,
    /// VAE decoding and conversion to RGB.
    pub decode_ms: f64,
}

/// What a render produced.
#[derive(Debug, Clone)]
pub struct Txt2ImgOutput {
    /// One RGB image per batch entry.
    pub images: Vec<RgbImage>,
    /// The seed of each image (A1111 `all_seeds`: `seed + i`, or `seed` for every image with a
    /// variation strength).
    pub seeds: Vec<u64>,
    /// The variation seed of each image (`subseed + i`).
    pub subseeds: Vec<u64>,
    /// Infotext pairs of the sampler parameters (`Eta`, `Sigma churn`, ...; A1111 order), then
    /// img2img's inpainting entries (`Mask blur`, `Inpaint area`, ...).
    pub sampler_infotext: Vec<(String, String)>,
    /// Sampler name for the infotext, e.g. `DPM++ 2M`.
    pub sampler: String,
    /// Schedule type for the infotext, e.g. `Karras`.
    pub schedule_type: String,
    /// Things the user should know (prompt truncation, fallbacks).
    pub warnings: Vec<String>,
    /// Names of the textual-inversion embeddings the prompts used (for the infotext's `TI hashes`).
    pub used_embeddings: Vec<String>,
    /// Time per phase.
    pub timings: Timings,
}

/// How a model is loaded: dtype and device of the weights and the prediction type.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Weight dtype of the text encoders and the UNet.
    pub dtype: DType,
    /// Where the model runs.
    pub device: Device,
    /// ε- or v-prediction (from models.toml or the checkpoint).
    pub prediction: Prediction,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            device: Device::Cpu,
            prediction: Prediction::Epsilon,
        }
    }
}

/// A loaded SDXL model: both text encoders, the UNet and the VAE on one device, with the LoRA set
/// currently merged into the text encoders and the UNet.
pub struct SdxlModel {
    checkpoint: Arc<Checkpoint>,
    prompt_encoder: PromptEncoder,
    unet: SdxlUNet,
    vae: AutoencoderKl,
    schedule: ModelSchedule,
    options: LoadOptions,
    /// Handles of the LoRA-targetable weights (text encoder 1, text encoder 2, UNet).
    live: Vec<LiveWeights>,
}

impl SdxlModel {
    /// Loads every component of `checkpoint` with `options`. The VAE runs in f32 when the weights
    /// are f16 and its config asks for an upcast (SDXL's VAE overflows in f16, SPEC §8).
    pub fn load(checkpoint: Arc<Checkpoint>, options: LoadOptions) -> Result<Self> {
        Self::load_with_loras(checkpoint, options, &LoraSet::empty())
    }

    /// [`Self::load`] with `loras` merged into the weights as they are loaded.
    pub fn load_with_loras(
        checkpoint: Arc<Checkpoint>,
        options: LoadOptions,
        loras: &LoraSet,
    ) -> Result<Self> {
        let (dtype, device) = (options.dtype, &options.device);
        if dtype == DType::BF16 && device.is_cpu() {
            return Err(PipelineError::InvalidInput(
                "bf16 weights need a CUDA device (candle's CPU backend has no bf16 matmul); \
                 use f32 or f16 on the CPU"
                    .into(),
            ));
        }
        let cfg = checkpoint.configs().clone();
        let ckpt = checkpoint.as_ref();
        let (te1, live_te1) =
            LiveWeights::load(ckpt, Component::TextEncoder, dtype, device, loras, |vb| {
                ClipTextEncoder::new(vb, &cfg.text_encoder)
            })?;
        let (te2, live_te2) =
            LiveWeights::load(ckpt, Component::TextEncoder2, dtype, device, loras, |vb| {
                ClipTextEncoder::new(vb, &cfg.text_encoder_2)
            })?;
        let prompt_encoder = PromptEncoder::new(te1, te2)?;
        let (unet, live_unet) =
            LiveWeights::load(ckpt, Component::Unet, dtype, device, loras, |vb| {
                SdxlUNet::new(vb, &cfg.unet)
            })?;
        let vae = checkpoint.load_vae(vae_dtype(dtype, cfg.vae.force_upcast), device)?;
        Ok(Self {
            checkpoint,
            prompt_encoder,
            unet,
            vae,
            schedule: ModelSchedule::sdxl(),
            options,
            live: vec![live_te1, live_te2, live_unet],
        })
    }

    /// Makes the merged LoRA set `loras` (the empty set restores the base weights exactly).
    /// Only the parameters touched by the old or the new set are re-read from the checkpoint and
    /// rewritten in place; the same set as before costs nothing. Returns how many parameters
    /// were rewritten.
    pub fn set_loras(&mut self, loras: &LoraSet) -> Result<usize> {
        let mut rewritten = 0;
        for live in &mut self.live {
            if let SwitchOutcome::Rewritten(n) = live.switch(&self.checkpoint, loras)? {
                rewritten += n;
            }
        }
        Ok(rewritten)
    }

    /// Replaces the textual-inversion embeddings prompts may name (SPEC §5a).
    pub fn set_embeddings(&mut self, embeddings: Vec<TextualInversion>) -> Result<()> {
        self.prompt_encoder.set_embeddings(embeddings)
    }

    /// The textual-inversion embeddings prompts may name.
    pub fn embeddings(&self) -> &[TextualInversion] {
        self.prompt_encoder.embeddings()
    }

    /// The cache key of the merged LoRA set (`None` after a failed switch).
    pub fn lora_key(&self) -> Option<&str> {
        self.live.first().and_then(LiveWeights::key)
    }

    /// The checkpoint the model was loaded from.
    pub fn checkpoint(&self) -> &Arc<Checkpoint> {
        &self.checkpoint
    }

    /// The UNet (for benchmarks and direct calls: [`SdxlUNet::prepare`] +
    /// [`SdxlUNet::forward_prepared`]).
    pub fn unet(&self) -> &SdxlUNet {
        &self.unet
    }

    /// The VAE the model decodes with.
    pub fn vae(&self) -> &AutoencoderKl {
        &self.vae
    }

    /// The dtype the VAE decodes in (f32 for an f16 model unless the VAE is fp16-safe).
    pub fn vae_dtype(&self) -> DType {
        self.vae.dtype()
    }

    /// The load options in effect.
    pub fn options(&self) -> &LoadOptions {
        &self.options
    }

    /// Renders `req.batch_size × req.n_iter` images (A1111's batches run one image at a time
    /// here, so `n_iter` batches are the same images as one batch of that size). `on_step` is
    /// called after every denoising step; `control.cancel` (or a bare `&AtomicBool`) is checked
    /// between steps and ends the render with [`PipelineError::Cancelled`]; `control.interrupt` /
    /// `control.skip` end it early with what A1111 returns then ([`crate::interrupt`]).
    pub fn txt2img<'c>(
        &self,
        req: &Txt2ImgRequest,
        on_step: &mut dyn FnMut(StepProgress),
        control: impl Into<RenderControl<'c>>,
    ) -> Result<Txt2ImgOutput> {
        let control = control.into();
        let cancel: &AtomicBool = control.cancel;
        check_request(req)?;
        let choice = sampling::resolve_sampler_with(
            &req.sampler_name,
            req.scheduler.as_deref(),
            &req.sampler_params,
        )?;
        let sigmas = sampling::sigmas_for(&choice, &self.schedule, req.steps as usize)?;
        let sigma0 = *sigmas
            .first()
            .ok_or_else(|| PipelineError::InvalidInput("empty sigma schedule".into()))?;

        let started = Instant::now();
        let cond = self.prompt_encoder.scheduled_conditioning(
            &req.prompt,
            req.negative_prompt.as_deref(),
            PromptOptions {
                mode: req.prompt_mode,
                clip_skip: req.clip_skip,
                emphasis: req.emphasis,
                steps: crate::prompt::schedule_steps(req.steps as usize, choice.second_order),
                hires_base_steps: None,
            },
        )?;
        let used_embeddings = cond.used_embeddings.clone();
        let mut denoiser = CfgDenoiser::new(self, cond, req)?;
        denoiser.image_cond = self.txt2img_image_cond(req.width, req.height)?;
        let device = &self.options.device;
        let encode_ms = synced_ms_since(device, started)?;

        let shape = [1, 4, (req.height / 8) as usize, (req.width / 8) as usize];
        let count = req.batch_size * req.n_iter;
        let image_seeds = req.variation.image_seeds(req.seed, count);
        let mut images = Vec::with_capacity(count as usize);
        let (mut denoise_ms, mut decode_ms) = (0.0, 0.0);
        for (i, &(seed, subseed)) in (0..count).zip(&image_seeds) {
            let t0 = Instant::now();
            let noise = req.variation.noise_tensor(seed, subseed, &shape, device)?;
            let x = noise.affine(choice.init_noise.factor(sigma0), 0.0)?;
            let mut noise_source = TorchNoiseSource::new(seed, &shape, &self.options.device);
            denoiser.restart();
            // The sampler's own step count: A1111's timestep samplers may run one more step
            // than requested (e.g. DDIM/UniPC with a step count that does not divide 1000).
            let mut step_cb = |k: usize, n: usize| -> Result<()> {
                let n = n as u32;
                on_step(StepProgress {
                    image: i,
                    done: i * n + k as u32 + 1,
                    total: n * count,
                });
                if cancel.load(Ordering::Relaxed) {
                    return Err(PipelineError::Cancelled);
                }
                Ok(())
            };
            if cancel.load(Ordering::Relaxed) {
                return Err(PipelineError::Cancelled);
            }
            let mut watched = Watched::new(&mut denoiser, control, &x);
            let sampled =
                choice
                    .sampler
                    .sample(&mut watched, x, &sigmas, &mut noise_source, &mut step_cb);
            let (latents, flow) = watched.finish(sampled)?;
            denoise_ms += synced_ms_since(device, t0)?;
            let t1 = Instant::now();
            images.push(self.decode(&latents)?);
            decode_ms += synced_ms_since(device, t1)?;
            if flow == Flow::Stop {
                break;
            }
        }
        Ok(Txt2ImgOutput {
            // An interrupt may stop the batch early: seeds of the images made only.
            seeds: image_seeds.iter().take(images.len()).map(|s| s.0).collect(),
            subseeds: image_seeds.iter().take(images.len()).map(|s| s.1).collect(),
            images,
            sampler_infotext: choice.extra_infotext.clone(),
            sampler: choice.infotext_sampler.clone(),
            schedule_type: choice.infotext_schedule.clone(),
            warnings: denoiser.conds.warnings.clone(),
            used_embeddings,
            timings: Timings {
                encode_ms,
                denoise_ms,
                decode_ms,
            },
        })
    }

    /// Latents `[1,4,h,w]` → RGB: `vae.decode(latents / scaling_factor)`, then
    /// `round(clamp(x/2 + 0.5, 0, 1) · 255)` in HWC order (diffusers / A1111).
    pub fn decode(&self, latents: &Tensor) -> Result<RgbImage> {
        let image = self.decode_raw(latents)?;
        let (_, _, h, w) = image.dims4()?;
        let u8s = ((image / 2.0)? + 0.5)?
            .clamp(0f32, 1f32)?
            .affine(255.0, 0.0)?
            .round()?
            .squeeze(0)?
            .permute((1, 2, 0))?
            .to_dtype(DType::U8)?
            .flatten_all()?
            .to_device(&Device::Cpu)?
            .to_vec1::<u8>()?;
        RgbImage::new(w as u32, h as u32, u8s)
    }

    /// Latents → the VAE's f32 output `[1, 3, H, W]` (nominally in [-1, 1]): unscaled by the
    /// scaling factor and decoded, with the f32 retry of [`vae::decode_checked`].
    pub(crate) fn decode_raw(&self, latents: &Tensor) -> Result<Tensor> {
        let scaled = (latents.to_dtype(DType::F32)?
            / self.checkpoint.configs().vae.scaling_factor)?
            .to_dtype(self.vae.dtype())?;
        let image = vae::decode_checked(&self.vae, &scaled, || {
            self.checkpoint.load_vae(DType::F32, &self.options.device)
        })?;
        Ok(image.to_dtype(DType::F32)?)
    }
}

/// VAE dtype for a model dtype: f16 with `force_upcast` decodes in f32 (SPEC §8).
fn vae_dtype(dtype: DType, force_upcast: bool) -> DType {
    if dtype == DType::F16 && force_upcast {
        DType::F32
    } else {
        dtype
    }
}

/// Milliseconds since `t` once the work queued on `device` has finished (a CUDA device runs
/// asynchronously: without the synchronisation a phase would be charged to the next one).
fn synced_ms_since(device: &Device, t: Instant) -> Result<f64> {
    device.synchronize()?;
    Ok(t.elapsed().as_secs_f64() * 1000.0)
}

/// The value ranges the pipeline relies on (the worker's job schema checks the SPEC §3 limits).
fn check_request(req: &Txt2ImgRequest) -> Result<()> {
    let mut problems = Vec::new();
    if req.steps == 0 {
        problems.push("steps must be at least 1".to_string());
    }
    if req.batch_size == 0 {
        problems.push("batch_size must be at least 1".to_string());
    }
    if req.n_iter == 0 {
        problems.push("n_iter must be at least 1".to_string());
    }
    for (name, v) in [("width", req.width), ("height", req.height)] {
        if v < 8 || v % 8 != 0 {
            problems.push(format!("{name} must be a positive multiple of 8 (got {v})"));
        }
    }
    if !req.cfg_scale.is_finite() {
        problems.push("cfg_scale must be finite".to_string());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(PipelineError::InvalidInput(problems.join("; ")))
    }
}

/// The UNet behind a [`Denoiser`]: k-diffusion's `DiscreteEpsDDPMDenoiser`/`CompVisVDenoiser`
/// scalings with fractional timesteps, and classifier-free guidance as one batch-2 UNet call
/// (`[uncond, cond]`), or a batch-1 call when `cfg_scale ≤ 1`. The conditioning of each call is
/// the schedule pair at the call counter (A1111 `reconstruct_cond_batch`, SPEC §5a); each
/// distinct pair is prepared once.
struct CfgDenoiser<'a> {
    unet: &'a SdxlUNet,
    schedule: &'a ModelSchedule,
    prediction: Prediction,
    /// The prompt schedules of the job.
    conds: ScheduledConditioning,
    /// Cross-attention K/V and micro-conditioning per (cond, uncond) encoding pair.
    prepared: Vec<((usize, usize), UNetConditioning)>,
    /// A1111 `CFGDenoiser.step`: denoiser calls so far in this image's sampling.
    call: usize,
    time_ids: Tensor,
    cfg_scale: f64,
    guided: bool,
    /// The positive prompt's denoised prediction of the last guided call (A1111's
    /// `last_latent`, read by `/interrupt`).
    last_cond: Option<Tensor>,
    /// `[1, 5, h, w]` image conditioning of a 9-channel inpainting UNet (A1111 `c_concat`),
    /// appended to the c_in-scaled latent of both CFG halves ([`image_conditioning`]).
    image_cond: Option<Tensor>,
}

impl<'a> CfgDenoiser<'a> {
    fn new(
        model: &'a SdxlModel,
        conds: ScheduledConditioning,
        req: &Txt2ImgRequest,
    ) -> Result<Self> {
        let device = &model.options.device;
        let (h, w) = (f64::from(req.height), f64::from(req.width));
        let time_ids = Tensor::new(
            &[[h as f32, w as f32, 0.0, 0.0, h as f32, w as f32]],
            device,
        )?;
        let mut denoiser = Self {
            unet: &model.unet,
            schedule: &model.schedule,
            prediction: model.options.prediction,
            conds,
            prepared: Vec::new(),
            call: 0,
            time_ids,
            cfg_scale: req.cfg_scale,
            guided: req.cfg_scale > 1.0,
            last_cond: None,
            image_cond: None,
        };
        // The first pair is prepared up front (prompt encoding time, not sampling time).
        denoiser.prepared_index(denoiser.conds.pair_at(0))?;
        Ok(denoiser)
    }

    /// Starts a new image: the call counter goes back to 0.
    fn restart(&mut self) {
        self.call = 0;
    }

    /// Index in `prepared` of the UNet conditioning of `pair`, preparing it on first use.
    fn prepared_index(&mut self, pair: (usize, usize)) -> Result<usize> {
        if let Some(i) = self.prepared.iter().position(|(p, _)| *p == pair) {
            return Ok(i);
        }
        let cond = self.conds.pair(pair)?;
        let dtype = self.unet.dtype();
        let ids = &self.time_ids;
        let (context, pooled, time_ids) = if self.guided {
            (
                Tensor::cat(&[&cond.uncond.context, &cond.cond.context], 0)?,
                Tensor::cat(&[&cond.uncond.pooled, &cond.cond.pooled], 0)?,
                Tensor::cat(&[ids, ids], 0)?,
            )
        } else {
            (
                cond.cond.context.clone(),
                cond.cond.pooled.clone(),
                ids.clone(),
            )
        };
        let prepared = self.unet.prepare(
            &context.to_dtype(dtype)?,
            &pooled.to_dtype(dtype)?,
            &time_ids.to_dtype(dtype)?,
        )?;
        self.prepared.push((pair, prepared));
        Ok(self.prepared.len() - 1)
    }
}

impl Denoiser for CfgDenoiser<'_> {
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?;
        let x_in = x.affine(sampling::c_in(sigma), 0.0)?;
        let x_in = match &self.image_cond {
            Some(c) => Tensor::cat(&[&x_in, c], 1)?,
            None => x_in,
        };
        let x_in = if self.guided {
            Tensor::cat(&[&x_in, &x_in], 0)?
        } else {
            x_in
        };
        let t = self.schedule.sigma_to_t(sigma);
        let idx = self.prepared_index(self.conds.pair_at(self.call))?;
        self.call += 1;
        let out = self
            .unet
            .forward_prepared(&x_in, t, &self.prepared[idx].1)?
            .to_dtype(DType::F32)?;
        if !self.guided {
            return sampling::denoised_from_output(&x, &out, sigma, self.prediction);
        }
        let d_u =
            sampling::denoised_from_output(&x, &out.narrow(0, 0, 1)?, sigma, self.prediction)?;
        let d_c =
            sampling::denoised_from_output(&x, &out.narrow(0, 1, 1)?, sigma, self.prediction)?;
        // D = D_u + g·(D_c − D_u), as A1111's CFGDenoiser combines denoised values.
        let d = (&d_u + ((&d_c - &d_u)? * self.cfg_scale)?)?;
        self.last_cond = Some(d_c);
        Ok(d)
    }
}

impl CondDenoiser for CfgDenoiser<'_> {
    fn last_cond(&self) -> Option<Tensor> {
        self.last_cond.clone()
    }
}
