//! A1111's image conditioning of 9-channel SDXL inpainting checkpoints (SPEC §13; A1111 1.10
//! `modules/processing.py`): the UNet input is `[x(4), mask(1), masked-image latent(4)]`, the last
//! five channels (`c_concat`) made here once per image and concatenated to the c_in-scaled latent
//! of both CFG halves by the CFG denoiser (`sd_models_xl.apply_model`).
//!
//! * txt2img (`txt2img_image_conditioning`, SDXL inpaint branch): a 0.5-gray image (0 in the VAE's
//!   [-1, 1] range) encoded, and a mask of ones;
//! * img2img (`inpainting_image_conditioning`): mask `/255`, rounded to 0/1
//!   (`round_image_mask=True`), `lerp(source, source·(1−mask), inpainting_mask_weight)` encoded
//!   (latent mean × scaling factor, SPEC §13), the mask resized to the latent with torch
//!   `interpolate`'s default `nearest`, `cat([mask, latent], dim 1)`; without a mask the mask is
//!   ones (with the default weight 1 the encoded image is then the gray one);
//! * hires pass: the gray conditioning at the pre-crop upscale size, cropped with the latent
//!   (A1111 1.10 conditions a latent-upscaler pass on the first-pass size and fails, issue 6281;
//!   its pixel-upscaler path gives `lerp(src, 0, 1) = 0`, the same gray image).

use candle_core::{DType, Device, Tensor};

use super::{HiresParams, HiresUpscaler, Img2ImgParams, SdxlModel};
use crate::image_ops::{self, LatentMode, ResizeMode};
use crate::output::{GrayImage, RgbImage};
use crate::vae;
use crate::{PipelineError, Result};

/// A1111's default `inpainting_mask_weight` option ("Inpainting conditioning mask strength").
pub const DEFAULT_INPAINTING_MASK_WEIGHT: f64 = 1.0;

impl SdxlModel {
    /// Whether the checkpoint's UNet takes 9 input channels (SDXL inpainting: latent, mask and
    /// masked-image latent), so that every render gets the image conditioning of this module.
    pub fn is_inpainting(&self) -> bool {
        self.checkpoint.is_inpainting()
    }

    /// A1111 `inpainting_image_conditioning(source, latent, mask)`: `[1, 5, latent_h, latent_w]`
    /// f32 = `[mask, VAE mean × scaling of lerp(source, source·(1−mask), mask_weight)]`, `mask`
    /// (white = repaint) of the size of `source` or `None` (= ones). Pass the image exactly as the
    /// init latent is encoded from (after resize, crop and fill).
    pub fn inpainting_conditioning(
        &self,
        source: &RgbImage,
        mask: Option<&GrayImage>,
        latent_h: usize,
        latent_w: usize,
        mask_weight: f64,
    ) -> Result<Tensor> {
        if !mask_weight.is_finite() {
            return Err(PipelineError::InvalidInput(format!(
                "inpainting_mask_weight must be finite (got {mask_weight})"
            )));
        }
        let (w, h) = (source.width as usize, source.height as usize);
        let src: Vec<f32> = source
            .pixels
            .iter()
            .map(|&p| f32::from(p) / 255.0 * 2.0 - 1.0)
            .collect();
        let mask01: Vec<f32> = match mask {
            Some(m) => {
                if (m.width, m.height) != (source.width, source.height) {
                    return Err(PipelineError::InvalidInput(format!(
                        "mask is {}x{} but the image is {}x{}",
                        m.width, m.height, source.width, source.height
                    )));
                }
                // `torch.round` of `x / 255` (no value is exactly 0.5, so half-even never applies).
                m.pixels
                    .iter()
                    .map(|&p| (f32::from(p) / 255.0).round())
                    .collect()
            }
            None => vec![1.0; w * h],
        };
        let weight = mask_weight as f32;
        // HWC source, one mask value per pixel; torch.lerp's two-sided formula in f32.
        let masked: Vec<f32> = src
            .iter()
            .enumerate()
            .map(|(i, &s)| lerp(s, s * (1.0 - mask01[i / 3]), weight))
            .collect();
        let device = &self.options.device;
        let image = Tensor::from_vec(masked, (h, w, 3), &Device::Cpu)?
            .permute((2, 0, 1))?
            .unsqueeze(0)?
            .contiguous()?
            .to_device(device)?;
        let latent = self.encode_tensor(&image)?;
        let mask = Tensor::from_vec(mask01, (1, 1, h, w), &Device::Cpu)?;
        let mask = image_ops::interpolate(&mask, latent_h, latent_w, LatentMode::Nearest)?
            .to_device(device)?;
        let (_, _, lh, lw) = latent.dims4()?;
        if (lh, lw) != (latent_h, latent_w) {
            return Err(PipelineError::InvalidInput(format!(
                "the conditioning image encodes to a {lw}x{lh} latent, the render's latent is \
                 {latent_w}x{latent_h}"
            )));
        }
        Ok(Tensor::cat(&[&mask, &latent], 1)?)
    }

    /// A1111 `txt2img_image_conditioning` of an SDXL inpainting model for a `width`×`height`
    /// render: the 0.5-gray image encoded, behind a mask of ones (`[1, 5, height/8, width/8]`).
    pub fn txt2img_conditioning(&self, width: u32, height: u32) -> Result<Tensor> {
        let device = &self.options.device;
        let (h, w) = (height as usize, width as usize);
        // images_tensor_to_samples(0.5) = encode(0.5·2 − 1) = encode(0).
        let image = Tensor::zeros((1, 3, h, w), DType::F32, device)?;
        let latent = self.encode_tensor(&image)?;
        let (_, _, lh, lw) = latent.dims4()?;
        let ones = Tensor::ones((1, 1, lh, lw), DType::F32, device)?;
        Ok(Tensor::cat(&[&ones, &latent], 1)?)
    }

    /// A1111's `is_using_inpainting_conditioning` reply field for a render on this model: true
    /// on an inpainting model for img2img and for a hires pass with a pixel upscaler (A1111 sets
    /// it in `inpainting_image_conditioning`), false for txt2img (its SDXL txt2img branch leaves
    /// it false: the model's `conditioning_key` is `crossattn`).
    pub fn uses_inpainting_conditioning(&self, img2img: bool, hires: Option<&HiresParams>) -> bool {
        let pixel_hires = hires.is_some_and(|h| {
            matches!(
                h.upscaler,
                Some(HiresUpscaler::Lanczos | HiresUpscaler::Nearest | HiresUpscaler::None)
            )
        });
        self.is_inpainting() && (img2img || pixel_hires)
    }

    /// The conditioning of a txt2img render on this model (`None` for a 4-channel UNet).
    pub(super) fn txt2img_image_cond(&self, width: u32, height: u32) -> Result<Option<Tensor>> {
        if self.is_inpainting() {
            self.txt2img_conditioning(width, height).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The conditioning of each init image of an img2img render without a mask (`None`s for a
    /// 4-channel UNet): A1111 conditions image i of the batch on init image i as resized to the
    /// target size. Resize mode 3 (latent upscale) is refused on an inpainting model: A1111
    /// encodes the conditioning at the input size there, which does not fit the latent.
    pub(super) fn img2img_image_conds(
        &self,
        params: &Img2ImgParams,
        width: u32,
        height: u32,
    ) -> Result<Vec<Option<Tensor>>> {
        if !self.is_inpainting() {
            return Ok(vec![None; params.init_images.len()]);
        }
        if params.resize_mode == ResizeMode::LatentUpscale {
            return Err(PipelineError::InvalidInput(
                "resize_mode 3 (just resize, latent upscale) cannot be used with an inpainting \
                 checkpoint (9-channel UNet): its image conditioning needs the image at the \
                 target size; use resize_mode 0, 1 or 2"
                    .into(),
            ));
        }
        let (h, w) = ((height / 8) as usize, (width / 8) as usize);
        params
            .init_images
            .iter()
            .map(|img| {
                let resized = image_ops::resize_image(params.resize_mode, img, width, height)?;
                self.inpainting_conditioning(&resized, None, h, w, DEFAULT_INPAINTING_MASK_WEIGHT)
                    .map(Some)
            })
            .collect()
    }

    /// The conditioning of a hires pass on the pre-crop `upscaled` latent: gray at its pixel
    /// size (the upscale size when that is a multiple of 8), cropped as the latent (`rows`,
    /// `cols` = the latent's `narrow` start and length).
    pub(super) fn hires_image_cond(
        &self,
        upscaled: &Tensor,
        rows: (usize, usize),
        cols: (usize, usize),
    ) -> Result<Option<Tensor>> {
        let (_, _, h, w) = upscaled.dims4()?;
        match self.txt2img_image_cond((w * 8) as u32, (h * 8) as u32)? {
            Some(c) => Ok(Some(
                c.narrow(2, rows.0, rows.1)?.narrow(3, cols.0, cols.1)?,
            )),
            None => Ok(None),
        }
    }

    /// `[1, 3, H, W]` in [-1, 1] → VAE latent mean × scaling factor (f32), with the f32 retry of
    /// [`vae::encode_checked`].
    fn encode_tensor(&self, image: &Tensor) -> Result<Tensor> {
        let x = image.to_dtype(self.vae.dtype())?;
        let mean = vae::encode_checked(&self.vae, &x, || {
            self.checkpoint.load_vae(DType::F32, &self.options.device)
        })?;
        Ok((mean.to_dtype(DType::F32)? * self.checkpoint.configs().vae.scaling_factor)?)
    }
}

/// `torch.lerp(start, end, weight)` as its vectorised CPU kernel computes it in f32 (fused
/// multiply-adds, the two-sided formula).
fn lerp(start: f32, end: f32, weight: f32) -> f32 {
    if weight.abs() < 0.5 {
        weight.mul_add(end - start, start)
    } else {
        (end - start).mul_add(-(1.0 - weight), end)
    }
}

#[cfg(test)]
mod tests {
    use super::lerp;

    #[test]
    fn lerp_is_exact_at_the_ends() {
        assert_eq!(lerp(0.3, 0.0, 1.0), 0.0);
        assert_eq!(lerp(0.3, 0.0, 0.0), 0.3);
        assert_eq!(lerp(-1.0, 1.0, 0.25), -0.5);
    }
}
