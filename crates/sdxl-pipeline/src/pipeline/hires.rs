//! The hires fix of txt2img (SPEC §13, A1111 1.10 `StableDiffusionProcessingTxt2Img.sample` /
//! `sample_hr_pass` / `calculate_target_resolution`): a first pass at width×height, an upscale of
//! its latent (torch `interpolate` modes) or of its decoded pixels (Lanczos/Nearest upscalers,
//! then VAE encode), an optional centre crop (both `hr_resize_x/y` set) and an img2img second
//! pass with A1111's hires step rule. The seed's generator gives the first pass's noise and then
//! the second pass's; the ancestral noise generator continues across both passes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle_core::{Device, Tensor};

use super::img2img::{hires_steps, require_k_diffusion, sample_img2img};
use super::{
    check_request, synced_ms_since, CfgDenoiser, SdxlModel, StepProgress, Timings, Txt2ImgOutput,
    Txt2ImgRequest,
};
use crate::image_ops::{self, Filter, LatentMode};
use crate::noise::{TorchGenerator, TorchNoiseSource};
use crate::output::RgbImage;
use crate::prompt::PromptOptions;
use crate::sampling::{self, SamplerChoice};
use crate::{PipelineError, Result};

/// Latent-space pixels per latent pixel (A1111 `opt_f`).
const OPT_F: u32 = 8;

/// `hr_upscaler`: a latent mode or one of the pixel upscalers A1111 ships without models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HiresUpscaler {
    /// A `Latent*` mode.
    Latent(LatentMode),
    /// A1111 `UpscalerLanczos`.
    Lanczos,
    /// A1111 `UpscalerNearest`.
    Nearest,
    /// A1111 `UpscalerNone` (a plain Lanczos resize to the target).
    None,
}

impl HiresUpscaler {
    /// Every name `hr_upscaler` accepts (the six latent modes, then the pixel upscalers).
    pub fn names() -> Vec<&'static str> {
        let mut v: Vec<&str> = LatentMode::ALL.iter().map(|(n, _)| *n).collect();
        v.extend(["None", "Lanczos", "Nearest"]);
        v
    }

    /// The upscaler of an A1111 name (exact spelling).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "Lanczos" => Some(Self::Lanczos),
            "Nearest" => Some(Self::Nearest),
            "None" => Some(Self::None),
            other => LatentMode::from_name(other).map(Self::Latent),
        }
    }

    /// The A1111 name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Latent(m) => m.name(),
            Self::Lanczos => "Lanczos",
            Self::Nearest => "Nearest",
            Self::None => "None",
        }
    }
}

/// The hires-fix fields of a txt2img request (A1111 names without the `hr_` prefix).
#[derive(Debug, Clone, PartialEq)]
pub struct HiresParams {
    /// `hr_scale` (used when neither resize is set).
    pub scale: f64,
    /// `hr_resize_x` (0 = unset).
    pub resize_x: u32,
    /// `hr_resize_y` (0 = unset).
    pub resize_y: u32,
    /// `hr_upscaler`; `None` = A1111's default `Latent` (and no infotext entry).
    pub upscaler: Option<HiresUpscaler>,
    /// `hr_second_pass_steps` (0 = the first pass's steps).
    pub second_pass_steps: u32,
    /// `hr_sampler_name` (`None` = the first pass's).
    pub sampler_name: Option<String>,
    /// `hr_scheduler` (`None` = the first pass's).
    pub scheduler: Option<String>,
    /// `hr_prompt` (`None` = the prompt).
    pub prompt: Option<String>,
    /// `hr_negative_prompt` (`None` = the negative prompt).
    pub negative_prompt: Option<String>,
    /// `denoising_strength` of the second pass.
    pub denoising_strength: f64,
}

impl Default for HiresParams {
    /// A1111's defaults: scale 2, Latent, same steps/sampler/prompts, strength 0.75.
    fn default() -> Self {
        Self {
            scale: 2.0,
            resize_x: 0,
            resize_y: 0,
            upscaler: None,
            second_pass_steps: 0,
            sampler_name: None,
            scheduler: None,
            prompt: None,
            negative_prompt: None,
            denoising_strength: super::DEFAULT_DENOISING_STRENGTH,
        }
    }
}

/// Where the hires pass goes (A1111 `calculate_target_resolution`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HiresTarget {
    /// `hr_upscale_to_x`: the upscale width (also the time-id width).
    pub upscale_to_x: u32,
    /// `hr_upscale_to_y`.
    pub upscale_to_y: u32,
    /// Latent columns cropped away (`truncate_x`).
    pub truncate_x: u32,
    /// Latent rows cropped away (`truncate_y`).
    pub truncate_y: u32,
}

impl HiresTarget {
    /// A1111's target for a first pass of `width`×`height`.
    pub fn new(width: u32, height: u32, p: &HiresParams) -> Self {
        let (rx, ry) = (p.resize_x, p.resize_y);
        let (w, h) = (u64::from(width), u64::from(height));
        let cap = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        if rx == 0 && ry == 0 {
            return Self {
                upscale_to_x: (f64::from(width) * p.scale) as u32,
                upscale_to_y: (f64::from(height) * p.scale) as u32,
                truncate_x: 0,
                truncate_y: 0,
            };
        }
        let (x, y) = (u64::from(rx), u64::from(ry));
        if ry == 0 {
            return Self::plain(rx, cap(x * h / w));
        }
        if rx == 0 {
            return Self::plain(cap(y * w / h), ry);
        }
        let (ux, uy) = if (width as f64 / height as f64) < (rx as f64 / ry as f64) {
            (rx, cap(x * h / w))
        } else {
            (cap(y * w / h), ry)
        };
        Self {
            upscale_to_x: ux,
            upscale_to_y: uy,
            truncate_x: ux.saturating_sub(rx) / OPT_F,
            truncate_y: uy.saturating_sub(ry) / OPT_F,
        }
    }

    fn plain(x: u32, y: u32) -> Self {
        Self {
            upscale_to_x: x,
            upscale_to_y: y,
            truncate_x: 0,
            truncate_y: 0,
        }
    }

    /// Latent size of the upscale, `(h, w)`.
    pub fn latent_upscale(&self) -> (usize, usize) {
        (
            (self.upscale_to_y / OPT_F) as usize,
            (self.upscale_to_x / OPT_F) as usize,
        )
    }

    /// Latent size after the crop, `(h, w)` (0 when the crop leaves nothing).
    pub fn latent_final(&self) -> (usize, usize) {
        let (h, w) = self.latent_upscale();
        (
            h.saturating_sub(self.truncate_y as usize),
            w.saturating_sub(self.truncate_x as usize),
        )
    }

    /// The output image size `(width, height)`.
    pub fn output_size(&self) -> (u32, u32) {
        let (h, w) = self.latent_final();
        (w as u32 * OPT_F, h as u32 * OPT_F)
    }
}

/// `images.resize_image(0, im, w, h, upscaler_name)` with A1111's model-free upscalers
/// (`modules/upscaler.py`: `Upscaler.upscale` + `UpscalerLanczos`/`UpscalerNearest`).
pub fn upscale_pixels(im: &RgbImage, w: u32, h: u32, upscaler: HiresUpscaler) -> Result<RgbImage> {
    let filter = match upscaler {
        HiresUpscaler::Lanczos => Filter::Lanczos,
        HiresUpscaler::Nearest => Filter::Nearest,
        _ => return image_ops::resize(im, w, h, Filter::Lanczos),
    };
    let scale = (f64::from(w) / f64::from(im.width)).max(f64::from(h) / f64::from(im.height));
    let mut im = im.clone();
    if scale > 1.0 {
        let dest_w = ((f64::from(im.width) * scale) / 8.0).floor() as u32 * 8;
        let dest_h = ((f64::from(im.height) * scale) / 8.0).floor() as u32 * 8;
        for i in 0..3 {
            if im.width >= dest_w && im.height >= dest_h && (i > 0 || scale != 1.0) {
                break;
            }
            let shape = (im.width, im.height);
            let (nw, nh) = (
                (f64::from(im.width) * scale) as u32,
                (f64::from(im.height) * scale) as u32,
            );
            im = image_ops::resize(&im, nw, nh, filter)?;
            if shape == (im.width, im.height) {
                break;
            }
        }
        if im.width != dest_w || im.height != dest_h {
            im = image_ops::resize(&im, dest_w, dest_h, Filter::Lanczos)?;
        }
    }
    if im.width != w || im.height != h {
        im = image_ops::resize(&im, w, h, Filter::Lanczos)?;
    }
    Ok(im)
}

/// The hires pass's sampler: `hr_sampler_name`/`hr_scheduler` falling back to the first pass's
/// (a legacy "X Karras" hires name keeps its own schedule when the first pass's scheduler
/// would contradict it).
fn hires_choice(req: &Txt2ImgRequest, p: &HiresParams) -> Result<(SamplerChoice, String)> {
    let name = p
        .sampler_name
        .clone()
        .unwrap_or_else(|| req.sampler_name.clone());
    let choice = match &p.scheduler {
        Some(s) => sampling::resolve_sampler_with(&name, Some(s), &req.sampler_params)?,
        None => {
            sampling::resolve_sampler_with(&name, req.scheduler.as_deref(), &req.sampler_params)
                .or_else(|_| sampling::resolve_sampler_with(&name, None, &req.sampler_params))?
        }
    };
    Ok((choice, name))
}

impl SdxlModel {
    /// Latents → RGB as A1111 hands them to a pixel upscaler: `uint8(255 · clamp((x+1)/2, 0, 1))`
    /// (truncating, unlike the final decode).
    fn decode_truncating(&self, latents: &Tensor) -> Result<RgbImage> {
        let image = self.decode_raw(latents)?;
        let (_, _, h, w) = image.dims4()?;
        let f = ((image + 1.0)? / 2.0)?
            .clamp(0f32, 1f32)?
            .squeeze(0)?
            .permute((1, 2, 0))?
            .flatten_all()?
            .to_device(&Device::Cpu)?
            .to_vec1::<f32>()?;
        let pixels = f.iter().map(|v| (255.0 * v) as u8).collect();
        RgbImage::new(w as u32, h as u32, pixels)
    }

    /// txt2img with the hires fix: `req` describes the first pass (its width/height), `hires` the
    /// second. The images come back at [`HiresTarget::output_size`].
    pub fn txt2img_hires(
        &self,
        req: &Txt2ImgRequest,
        hires: &HiresParams,
        on_step: &mut dyn FnMut(StepProgress),
        cancel: &AtomicBool,
    ) -> Result<Txt2ImgOutput> {
        check_request(req)?;
        let target = HiresTarget::new(req.width, req.height, hires);
        let (fh, fw) = target.latent_final();
        if fh == 0 || fw == 0 || !(0.0..=1.0).contains(&hires.denoising_strength) {
            return Err(PipelineError::InvalidInput(format!(
                "hires target {}x{} (crop {}x{} latents, strength {}) leaves no image",
                target.upscale_to_x,
                target.upscale_to_y,
                target.truncate_x,
                target.truncate_y,
                hires.denoising_strength
            )));
        }
        if req.variation.varies() || req.variation.resizes() {
            return Err(PipelineError::InvalidInput(
                "variation seeds (subseed_strength, seed_resize_from_w/h) together with the \
                 hires fix (enable_hr) are not available on this worker yet"
                    .into(),
            ));
        }
        let choice = sampling::resolve_sampler_with(
            &req.sampler_name,
            req.scheduler.as_deref(),
            &req.sampler_params,
        )?;
        let (choice2, name2) = hires_choice(req, hires)?;
        require_k_diffusion(&choice2, &name2)?;
        let sigmas = sampling::sigmas_for(&choice, &self.schedule, req.steps as usize)?;
        let sigma0 = *sigmas
            .first()
            .ok_or_else(|| PipelineError::InvalidInput("empty sigma schedule".into()))?;
        let steps2 = if hires.second_pass_steps > 0 {
            hires.second_pass_steps
        } else {
            req.steps
        } as usize;
        let (sched2, t_enc) = hires_steps(steps2, hires.denoising_strength);
        if sched2 <= t_enc {
            return Err(PipelineError::InvalidInput(
                "the hires pass needs denoising_strength > 0".into(),
            ));
        }

        let started = Instant::now();
        let device = &self.options.device;
        let options = |steps: usize, second_order: bool, hires_base_steps| PromptOptions {
            mode: req.prompt_mode,
            clip_skip: req.clip_skip,
            emphasis: req.emphasis,
            steps: crate::prompt::schedule_steps(steps, second_order),
            hires_base_steps,
        };
        let first = options(req.steps as usize, choice.second_order, None);
        let cond = self.prompt_encoder.scheduled_conditioning(
            &req.prompt,
            req.negative_prompt.as_deref(),
            first,
        )?;
        let prompt2 = hires.prompt.as_deref().unwrap_or(&req.prompt);
        let negative2 = match &hires.negative_prompt {
            Some(n) => Some(n.as_str()),
            None => req.negative_prompt.as_deref(),
        };
        // The hires pass has its own prompt schedules on its own steps, continuing the first
        // pass's timeline (A1111 `calculate_hr_conds`: base steps = `firstpass_steps`).
        let cond2 = self.prompt_encoder.scheduled_conditioning(
            prompt2,
            negative2,
            options(steps2, choice2.second_order, Some(first.steps)),
        )?;
        let mut warnings = cond.warnings.clone();
        for w in &cond2.warnings {
            if !warnings.contains(w) {
                warnings.push(w.clone());
            }
        }
        let mut used_embeddings = cond.used_embeddings.clone();
        for e in &cond2.used_embeddings {
            if !used_embeddings.contains(e) {
                used_embeddings.push(e.clone());
            }
        }
        let mut denoiser = CfgDenoiser::new(self, cond, req)?;
        denoiser.image_cond = self.txt2img_image_cond(req.width, req.height)?;
        // Time ids of the hires pass: the pre-crop upscale size (A1111's SdConditioning).
        let req2 = Txt2ImgRequest {
            width: target.upscale_to_x,
            height: target.upscale_to_y,
            ..req.clone()
        };
        let mut denoiser2 = CfgDenoiser::new(self, cond2, &req2)?;
        let encode_ms = synced_ms_since(device, started)?;

        let shape = [1, 4, (req.height / 8) as usize, (req.width / 8) as usize];
        let shape2 = [1, 4, fh, fw];
        let n1 = req.steps;
        let n2 = (t_enc + 1) as u32;
        let per_image = n1 + n2;
        let count = req.batch_size * req.n_iter;
        let image_seeds = req.variation.image_seeds(req.seed, count);
        let total = per_image * count;
        let mut images = Vec::with_capacity(count as usize);
        let mut seeds = Vec::with_capacity(count as usize);
        let (mut denoise_ms, mut decode_ms) = (0.0, 0.0);
        for (i, &(seed, _)) in (0..count).zip(&image_seeds) {
            denoiser.restart();
            denoiser2.restart();
            if cancel.load(Ordering::Relaxed) {
                return Err(PipelineError::Cancelled);
            }
            let t0 = Instant::now();
            let mut generator = TorchGenerator::new(seed);
            let noise = generator.randn_tensor(&shape, device)?;
            let x = noise.affine(choice.init_noise.factor(sigma0), 0.0)?;
            let mut noise_source = TorchNoiseSource::new(seed, &shape, device);
            let mut step_cb = |k: usize, _n: usize| -> Result<()> {
                on_step(StepProgress {
                    image: i,
                    done: (i * per_image + k as u32 + 1).min(total),
                    total,
                });
                if cancel.load(Ordering::Relaxed) {
                    return Err(PipelineError::Cancelled);
                }
                Ok(())
            };
            let first = choice.sampler.sample(
                &mut denoiser,
                x,
                &sigmas,
                &mut noise_source,
                &mut step_cb,
            )?;
            let upscaled = self.hires_upscale(&first, &target, hires.upscaler)?;
            let (ty, tx) = (target.truncate_y as usize, target.truncate_x as usize);
            let init = upscaled.narrow(2, ty / 2, fh)?.narrow(3, tx / 2, fw)?;
            if denoiser2.image_cond.is_none() {
                // The same for every image of the batch: made once.
                denoiser2.image_cond =
                    self.hires_image_cond(&upscaled, (ty / 2, fh), (tx / 2, fw))?;
            }
            let noise2 = generator.randn_tensor(&shape2, device)?;
            noise_source.set_shape(&shape2);
            let mut step_cb = |k: usize, _n: usize| -> Result<()> {
                on_step(StepProgress {
                    image: i,
                    done: (i * per_image + n1 + k as u32 + 1).min(total),
                    total,
                });
                if cancel.load(Ordering::Relaxed) {
                    return Err(PipelineError::Cancelled);
                }
                Ok(())
            };
            let latent = sample_img2img(
                &choice2,
                &self.schedule,
                &mut denoiser2,
                &init,
                &noise2,
                sched2,
                t_enc,
                &mut noise_source,
                &mut step_cb,
            )?;
            denoise_ms += synced_ms_since(device, t0)?;
            let t1 = Instant::now();
            images.push(self.decode(&latent)?);
            decode_ms += synced_ms_since(device, t1)?;
            seeds.push(seed);
        }
        Ok(Txt2ImgOutput {
            images,
            subseeds: image_seeds.iter().take(seeds.len()).map(|s| s.1).collect(),
            seeds,
            sampler_infotext: choice.extra_infotext.clone(),
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

    /// The first pass's latent at the upscale size (before the crop).
    fn hires_upscale(
        &self,
        latent: &Tensor,
        target: &HiresTarget,
        upscaler: Option<HiresUpscaler>,
    ) -> Result<Tensor> {
        let (h, w) = target.latent_upscale();
        match upscaler.unwrap_or(HiresUpscaler::Latent(LatentMode::Bilinear)) {
            HiresUpscaler::Latent(mode) => image_ops::interpolate(latent, h, w, mode),
            pixel => {
                let low = self.decode_truncating(latent)?;
                let big = upscale_pixels(&low, target.upscale_to_x, target.upscale_to_y, pixel)?;
                self.encode(&big)
            }
        }
    }
}
