//! img2img (SPEC §13, A1111 1.10 `StableDiffusionProcessingImg2Img` + k-diffusion
//! `sample_img2img`): the init image is resized (`images.resize_image`), VAE-encoded (latent
//! distribution mean × scaling factor), noised to the schedule's `t_enc` point and denoised on
//! the tail of the sampler's full schedule.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use super::inpaint::{InpaintParams, InpaintSetup, MaskedDenoiser};
use super::{
    check_request, synced_ms_since, CfgDenoiser, SdxlModel, StepProgress, Timings, Txt2ImgOutput,
    Txt2ImgRequest,
};
use crate::image_ops::{self, LatentMode, ResizeMode};
use crate::noise::TorchNoiseSource;
use crate::output::RgbImage;
use crate::prompt::PromptOptions;
use crate::sampling::{self, Denoiser, InitNoise, ModelSchedule, NoiseSource, SamplerChoice};
use crate::vae;
use crate::{PipelineError, Result};

/// A1111's default `denoising_strength` (img2img and the hires fix).
pub const DEFAULT_DENOISING_STRENGTH: f64 = 0.75;

/// The img2img inputs beyond a [`Txt2ImgRequest`] (whose width/height are the target size).
#[derive(Debug, Clone, PartialEq)]
pub struct Img2ImgParams {
    /// One image for the whole batch, or one per batch entry.
    pub init_images: Vec<RgbImage>,
    /// 0..=1; 0 returns the resized input unchanged (our rule, SPEC §13).
    pub denoising_strength: f64,
    /// A1111 `resize_mode`.
    pub resize_mode: ResizeMode,
    /// A1111 `initial_noise_multiplier` (1 = off).
    pub initial_noise_multiplier: f64,
    /// Inpainting (a mask and its options), SPEC §13.
    pub mask: Option<InpaintParams>,
}

impl Img2ImgParams {
    /// Params for `init_images` with A1111's defaults.
    pub fn new(init_images: Vec<RgbImage>) -> Self {
        Self {
            init_images,
            denoising_strength: DEFAULT_DENOISING_STRENGTH,
            resize_mode: ResizeMode::JustResize,
            initial_noise_multiplier: 1.0,
            mask: None,
        }
    }
}

/// A1111 `setup_img2img_steps(p)` with `img2img_fix_steps` off: `(schedule steps, t_enc)` =
/// `(steps, int(min(ds, 0.999) · steps))`.
pub fn img2img_steps(steps: usize, denoising_strength: f64) -> (usize, usize) {
    (
        steps,
        (denoising_strength.min(0.999) * steps as f64) as usize,
    )
}

/// A1111 `setup_img2img_steps(p, steps)` (the hires pass passes its steps): `(int(steps /
/// min(ds, 0.999)), steps − 1)`, or 0 schedule steps when ds ≤ 0.
pub fn hires_steps(steps: usize, denoising_strength: f64) -> (usize, usize) {
    let total = if denoising_strength > 0.0 {
        (steps as f64 / denoising_strength.min(0.999)) as usize
    } else {
        0
    };
    (total, steps.saturating_sub(1))
}

/// k-diffusion samplers only: A1111's timestep samplers (DDIM, PLMS, UniPC) noise img2img
/// latents differently, which is not implemented.
pub(super) fn require_k_diffusion(choice: &SamplerChoice, name: &str) -> Result<()> {
    if choice.init_noise == InitNoise::SigmaMax {
        Ok(())
    } else {
        Err(PipelineError::InvalidInput(format!(
            "sampler `{name}` cannot run img2img or a hires pass yet (A1111's timestep samplers \
             DDIM/PLMS/UniPC are not implemented there); use a k-diffusion sampler such as Euler, \
             Euler a or DPM++ 2M"
        )))
    }
}

/// k-diffusion `sample_img2img`: the full schedule for `steps`, its tail from index
/// `steps − t_enc − 1`, started at `init_latent + noise · σ_sched[0]`.
#[allow(clippy::too_many_arguments)]
pub(super) fn sample_img2img(
    choice: &SamplerChoice,
    schedule: &ModelSchedule,
    denoiser: &mut dyn Denoiser,
    init_latent: &Tensor,
    noise: &Tensor,
    steps: usize,
    t_enc: usize,
    noise_source: &mut dyn NoiseSource,
    on_step: &mut dyn FnMut(usize, usize) -> Result<()>,
) -> Result<Tensor> {
    let sigmas = sampling::sigmas_for(choice, schedule, steps)?;
    let start = steps
        .checked_sub(t_enc + 1)
        .ok_or_else(|| PipelineError::Internal(format!("t_enc {t_enc} ≥ steps {steps}")))?;
    let sched = sigmas
        .get(start..)
        .filter(|s| s.len() >= 2)
        .ok_or_else(|| PipelineError::Internal("img2img schedule too short".into()))?;
    let x =
        (init_latent.to_dtype(DType::F32)? + noise.to_dtype(DType::F32)?.affine(sched[0], 0.0)?)?;
    choice
        .sampler
        .sample(denoiser, x, sched, noise_source, on_step)
}

/// Number of sampler steps `sample_img2img` runs (for progress totals).
pub(super) fn img2img_step_count(steps: usize, t_enc: usize) -> usize {
    (t_enc + 1).min(steps)
}

/// RGB u8 → `[1, 3, H, W]` f32 in [-1, 1] as A1111 (`x / 255`, then `x · 2 − 1`, in f32).
pub(super) fn rgb_to_tensor(img: &RgbImage, device: &Device) -> Result<Tensor> {
    let data: Vec<f32> = img
        .pixels
        .iter()
        .map(|&p| f32::from(p) / 255.0 * 2.0 - 1.0)
        .collect();
    let (h, w) = (img.height as usize, img.width as usize);
    Ok(Tensor::from_vec(data, (h, w, 3), &Device::Cpu)?
        .permute((2, 0, 1))?
        .unsqueeze(0)?
        .contiguous()?
        .to_device(device)?)
}

impl SdxlModel {
    /// RGB → latent: VAE encoder mean × scaling factor (`[1, 4, H/8, W/8]`, f32). A non-finite
    /// result in f16/bf16 is retried with the f32 VAE (SPEC §8 rules, as decoding).
    pub fn encode(&self, img: &RgbImage) -> Result<Tensor> {
        let x = rgb_to_tensor(img, &self.options.device)?;
        let mean = vae::encode_checked(&self.vae, &x, || {
            self.checkpoint.load_vae(DType::F32, &self.options.device)
        })?;
        Ok((mean.to_dtype(DType::F32)? * self.checkpoint.configs().vae.scaling_factor)?)
    }

    /// The init latent of one image at the target size (A1111 `init`: resize modes 0–2 in
    /// pixels, mode 3 bilinear in latent space after encoding at the input size).
    fn init_latent(
        &self,
        img: &RgbImage,
        mode: ResizeMode,
        width: u32,
        height: u32,
    ) -> Result<Tensor> {
        match mode {
            ResizeMode::LatentUpscale => {
                let latent = self.encode(img)?;
                image_ops::interpolate(
                    &latent,
                    (height / 8) as usize,
                    (width / 8) as usize,
                    LatentMode::Bilinear,
                )
            }
            m => self.encode(&image_ops::resize_image(m, img, width, height)?),
        }
    }

    /// Renders `req.batch_size` images from `params.init_images` (image i of the batch uses
    /// init image i, or the only one). Progress and cancellation as [`SdxlModel::txt2img`].
    pub fn img2img(
        &self,
        req: &Txt2ImgRequest,
        params: &Img2ImgParams,
        on_step: &mut dyn FnMut(StepProgress),
        cancel: &AtomicBool,
    ) -> Result<Txt2ImgOutput> {
        check_request(req)?;
        check_params(params, req.batch_size)?;
        let choice = sampling::resolve_sampler_with(
            &req.sampler_name,
            req.scheduler.as_deref(),
            &req.sampler_params,
        )?;
        let pick = |i: u32| {
            &params.init_images[if params.init_images.len() == 1 {
                0
            } else {
                (i % req.batch_size) as usize
            }]
        };
        // A1111 repeats the batch's init images for every `n_iter` batch.
        let count = req.batch_size * req.n_iter;
        let image_seeds = req.variation.image_seeds(req.seed, count);
        let seeds: Vec<u64> = image_seeds.iter().map(|s| s.0).collect();
        let subseeds: Vec<u64> = image_seeds.iter().map(|s| s.1).collect();
        let inpaint = InpaintSetup::new(
            params.mask.as_ref(),
            &params.init_images,
            params.resize_mode,
            req.width,
            req.height,
        )?;
        let mut sampler_infotext = choice.extra_infotext.clone();
        sampler_infotext.extend(inpaint.infotext.iter().cloned());
        if params.denoising_strength == 0.0 {
            // Our rule: nothing to denoise, the (resized) input comes back unchanged ("only
            // masked" inpainting: the init image, A1111's output size there).
            let mode = match params.resize_mode {
                ResizeMode::LatentUpscale => ResizeMode::JustResize,
                m => m,
            };
            let keep = inpaint.mask.as_ref().is_some_and(|m| m.crop.is_some());
            let images = (0..count)
                .map(|i| {
                    if keep {
                        Ok(pick(i).clone())
                    } else {
                        image_ops::resize_image(mode, pick(i), req.width, req.height)
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            return Ok(Txt2ImgOutput {
                images,
                seeds,
                subseeds,
                sampler_infotext,
                sampler: choice.infotext_sampler.clone(),
                schedule_type: choice.infotext_schedule.clone(),
                warnings: inpaint.warnings,
                used_embeddings: Vec::new(),
                timings: Timings::default(),
            });
        }
        require_k_diffusion(&choice, &req.sampler_name)?;
        let (steps, t_enc) = img2img_steps(req.steps as usize, params.denoising_strength);

        let started = Instant::now();
        // Prompt schedules count the requested steps from the first call, as A1111's img2img.
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
        let (mut warnings, used_embeddings) = (cond.warnings.clone(), cond.used_embeddings.clone());
        warnings.extend(inpaint.warnings.iter().cloned());
        let mut denoiser = CfgDenoiser::new(self, cond, req)?;
        let device = &self.options.device;
        let masked = inpaint.images(
            &params.init_images,
            params.resize_mode,
            req.width,
            req.height,
        )?;
        let latents = match &masked {
            Some(images) => images
                .iter()
                .map(|m| self.encode(&m.source.image))
                .collect::<Result<Vec<_>>>()?,
            None => params
                .init_images
                .iter()
                .map(|img| self.init_latent(img, params.resize_mode, req.width, req.height))
                .collect::<Result<Vec<_>>>()?,
        };
        let latent_mask = inpaint.latent_mask(req.width, req.height, device)?;
        // A 9-channel (inpainting) UNet is conditioned on each prepared image and its mask
        // (A1111 `img2img_image_conditioning(image * 2 - 1, init_latent, image_mask)`).
        let image_conds = match &masked {
            Some(images) if self.is_inpainting() => {
                let (lh, lw) = ((req.height / 8) as usize, (req.width / 8) as usize);
                images
                    .iter()
                    .map(|m| {
                        self.inpainting_conditioning(
                            &m.source.image,
                            Some(&m.source.image_mask),
                            lh,
                            lw,
                            super::DEFAULT_INPAINTING_MASK_WEIGHT,
                        )
                        .map(Some)
                    })
                    .collect::<Result<Vec<_>>>()?
            }
            Some(images) => vec![None; images.len()],
            None => self.img2img_image_conds(params, req.width, req.height)?,
        };
        let encode_ms = synced_ms_since(device, started)?;

        let shape = [1, 4, (req.height / 8) as usize, (req.width / 8) as usize];
        let n = img2img_step_count(steps, t_enc) as u32;
        let mut images = Vec::with_capacity(count as usize);
        let (mut denoise_ms, mut decode_ms) = (0.0, 0.0);
        for (i, &(seed, subseed)) in image_seeds.iter().enumerate() {
            let i = i as u32;
            if cancel.load(Ordering::Relaxed) {
                return Err(PipelineError::Cancelled);
            }
            let t0 = Instant::now();
            let seed_noise = req.variation.noise_tensor(seed, subseed, &shape, device)?;
            denoiser.restart();
            let noise = if params.initial_noise_multiplier != 1.0 {
                seed_noise.affine(params.initial_noise_multiplier, 0.0)?
            } else {
                seed_noise.clone()
            };
            let mut noise_source = TorchNoiseSource::new(seed, &shape, device);
            let mut step_cb = |k: usize, _: usize| -> Result<()> {
                on_step(StepProgress {
                    image: i,
                    done: i * n + (k as u32 + 1).min(n),
                    total: n * count,
                });
                if cancel.load(Ordering::Relaxed) {
                    return Err(PipelineError::Cancelled);
                }
                Ok(())
            };
            let which = if latents.len() == 1 {
                0
            } else {
                (i % req.batch_size) as usize
            };
            denoiser.image_cond = image_conds.get(which).cloned().flatten();
            // Inpainting: the fill modes' init latent (latent noise uses the seed's noise, as
            // A1111's `create_random_tensors(all_seeds)`) and the mask blend of every call.
            let init = match &latent_mask {
                Some(lm) => lm.fill_latent(inpaint.fill, &latents[which], &seed_noise)?,
                None => latents[which].clone(),
            };
            let mut masked_denoiser;
            let den: &mut dyn Denoiser = match &latent_mask {
                Some(lm) => {
                    masked_denoiser = MaskedDenoiser {
                        inner: &mut denoiser,
                        init_latent: &init,
                        mask: lm,
                    };
                    &mut masked_denoiser
                }
                None => &mut denoiser,
            };
            let mut latent = sample_img2img(
                &choice,
                &self.schedule,
                den,
                &init,
                &noise,
                steps,
                t_enc,
                &mut noise_source,
                &mut step_cb,
            )?;
            if let Some(lm) = &latent_mask {
                latent = lm.blend(&latent, &init)?;
            }
            denoise_ms += synced_ms_since(device, t0)?;
            let t1 = Instant::now();
            let mut image = self.decode(&latent)?;
            if let (Some(m), Some(prepared)) = (&inpaint.mask, &masked) {
                image = super::inpaint::finish_image(&image, m, &prepared[which].overlay)?;
            }
            images.push(image);
            decode_ms += synced_ms_since(device, t1)?;
        }
        Ok(Txt2ImgOutput {
            images,
            seeds,
            subseeds,
            sampler_infotext,
            sampler: choice.infotext_sampler.clone(),
            schedule_type: choice.infotext_schedule.clone(),
            warnings,
            used_embeddings,
            timings: Timings {
                encode_ms,
                denoise_ms,
                decode_ms,
            },
        })
    }
}

/// The ranges img2img relies on.
fn check_params(p: &Img2ImgParams, batch_size: u32) -> Result<()> {
    let n = p.init_images.len();
    if n == 0 {
        return Err(PipelineError::InvalidInput("init_images is empty".into()));
    }
    if n != 1 && n != batch_size as usize {
        return Err(PipelineError::InvalidInput(format!(
            "{n} init images for a batch of {batch_size} (give one image, or one per batch entry)"
        )));
    }
    if !(0.0..=1.0).contains(&p.denoising_strength) {
        return Err(PipelineError::InvalidInput(format!(
            "denoising_strength must be in 0..=1 (got {})",
            p.denoising_strength
        )));
    }
    if !p.initial_noise_multiplier.is_finite() {
        return Err(PipelineError::InvalidInput(
            "initial_noise_multiplier must be finite".into(),
        ));
    }
    Ok(())
}
