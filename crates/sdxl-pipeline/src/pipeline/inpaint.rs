//! Inpainting (SPEC §13, A1111 1.10 `StableDiffusionProcessingImg2Img.init`/`.sample`, the CFG
//! denoiser's mask blend and `process_images_inner`'s overlay): the mask is inverted and blurred,
//! "only masked" crops the mask's box (widened to the job's aspect) and renders it at the job
//! size, the init image is filled under the mask (`masking.fill`), the latent mask is the
//! processed mask resized to latent size (Pillow bicubic) and rounded, every denoiser call and
//! the final latent keep the init latent outside it, and the decoded image is composited over
//! the original outside the mask (A1111's overlay, pasted back at the crop for "only masked").
//!
//! The Pillow/OpenCV-exact image operations live in [`crate::image_ops`]; this module only
//! orders them as A1111 does.

use candle_core::{DType, Device, Tensor};

use crate::image_ops::{self, CropRegion, Filter, ResizeMode};
use crate::output::{GrayImage, RgbImage, RgbaImage};
use crate::sampling::Denoiser;
use crate::{PipelineError, Result};

/// A1111's default `mask_blur` (x and y).
pub const DEFAULT_MASK_BLUR: u32 = 4;

/// The warning of a blank mask with "only masked" (A1111 falls back to plain img2img).
pub const BLANK_MASK_WARNING: &str =
    "Unable to perform \"Inpaint Only mask\" because mask is blank, switch to img2img mode.";

/// A1111 `inpainting_fill`: what the masked area starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(into = "u8")]
pub enum InpaintingFill {
    /// 0: the init image blurred into the masked area (`masking.fill`).
    #[default]
    Fill,
    /// 1: the init image as it is.
    Original,
    /// 2: the masked init latent replaced by the seed's noise.
    LatentNoise,
    /// 3: the masked init latent set to zero.
    LatentNothing,
}

impl From<InpaintingFill> for u8 {
    fn from(f: InpaintingFill) -> u8 {
        match f {
            InpaintingFill::Fill => 0,
            InpaintingFill::Original => 1,
            InpaintingFill::LatentNoise => 2,
            InpaintingFill::LatentNothing => 3,
        }
    }
}

impl InpaintingFill {
    /// The mode for A1111's integer, `None` outside 0..=3.
    pub fn from_index(i: i64) -> Option<Self> {
        match i {
            0 => Some(Self::Fill),
            1 => Some(Self::Original),
            2 => Some(Self::LatentNoise),
            3 => Some(Self::LatentNothing),
            _ => None,
        }
    }

    /// A1111's infotext value (`Masked content`); `None` for `original`, which A1111 omits.
    pub fn infotext(self) -> Option<&'static str> {
        match self {
            Self::Fill => Some("fill"),
            Self::Original => None,
            Self::LatentNoise => Some("latent noise"),
            Self::LatentNothing => Some("latent nothing"),
        }
    }
}

/// The inpainting inputs of an img2img job (A1111 API field names in the comments).
#[derive(Debug, Clone, PartialEq)]
pub struct InpaintParams {
    /// `mask`, already binarised as A1111's `create_binary_mask` (white = repaint).
    pub mask: GrayImage,
    /// `mask_blur_x` (0 = no horizontal blur).
    pub mask_blur_x: u32,
    /// `mask_blur_y` (0 = no vertical blur).
    pub mask_blur_y: u32,
    /// `inpainting_fill`.
    pub fill: InpaintingFill,
    /// `inpaint_full_res` ("only masked").
    pub full_res: bool,
    /// `inpaint_full_res_padding` in pixels of the init image.
    pub full_res_padding: u32,
    /// `inpainting_mask_invert` (repaint the black part).
    pub invert: bool,
}

impl InpaintParams {
    /// Params for `mask` with A1111's API defaults (blur 4, fill, only masked, padding 0).
    pub fn new(mask: GrayImage) -> Self {
        Self {
            mask,
            mask_blur_x: DEFAULT_MASK_BLUR,
            mask_blur_y: DEFAULT_MASK_BLUR,
            fill: InpaintingFill::Fill,
            full_res: true,
            full_res_padding: 0,
            invert: false,
        }
    }

    /// A1111's infotext entries: `Mask mode`, `Mask blur` (when x = y > 0), then `Inpaint area` /
    /// `Masked area padding` (only masked) and `Masked content`; a blank mask with "only masked"
    /// keeps only the first two (A1111 drops the mask before the others are set).
    fn infotext(&self, only_masked: bool, blank: bool) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.invert {
            out.push(("Mask mode".into(), "Inpaint not masked".into()));
        }
        if self.mask_blur_x == self.mask_blur_y && self.mask_blur_x > 0 {
            out.push(("Mask blur".into(), self.mask_blur_x.to_string()));
        }
        if only_masked {
            out.push(("Inpaint area".into(), "Only masked".into()));
            out.push((
                "Masked area padding".into(),
                self.full_res_padding.to_string(),
            ));
        }
        if let Some(v) = self.fill.infotext().filter(|_| !blank) {
            out.push(("Masked content".into(), v.into()));
        }
        out
    }
}

/// The job's mask after A1111's `init` (invert, blur, crop or resize).
#[derive(Debug, Clone)]
pub(super) struct PreparedMask {
    /// A1111 `image_mask` (= `latent_mask`) at the job size.
    pub image_mask: GrayImage,
    /// A1111 `mask_for_overlay`.
    pub mask_for_overlay: GrayImage,
    /// "Only masked": the crop region in init-image pixels.
    pub crop: Option<CropRegion>,
    /// Infotext entries of the mask fields.
    pub infotext: Vec<(String, String)>,
}

impl PreparedMask {
    /// A1111 `paste_to`: `(x, y, w, h)` of the crop.
    pub fn paste_to(&self) -> Option<(u32, u32, u32, u32)> {
        self.crop.map(|r| (r.x1, r.y1, r.x2 - r.x1, r.y2 - r.y1))
    }
}

/// Resizes a mask with A1111 `images.resize_image` (through RGB, as Pillow resizes each band alike).
fn resize_mask(mode: ResizeMode, m: &GrayImage, width: u32, height: u32) -> Result<GrayImage> {
    Ok(image_ops::resize_image(mode, &m.to_rgb(), width, height)?.red_channel())
}

/// A1111 `init`'s mask part. `Ok(None)`: a blank mask with "only masked" — A1111 then falls back
/// to plain img2img (no mask, no overlay) and says so in a comment; the caller warns.
/// `init_sizes` are the init images' sizes: "only masked" crops them with the mask's box, so they
/// must have the mask's size (A1111 would crop mismatched pixels); resize mode 3 with a mask fails
/// in A1111 (its fill and overlay see images of two sizes) and is refused here.
pub(super) fn prepare_mask(
    p: &InpaintParams,
    resize_mode: ResizeMode,
    width: u32,
    height: u32,
    init_sizes: &[(u32, u32)],
) -> Result<Option<PreparedMask>> {
    if resize_mode == ResizeMode::LatentUpscale {
        return Err(PipelineError::InvalidInput(
            "resize_mode 3 (latent upscale) cannot be combined with a mask; use resize_mode 0, 1 \
             or 2"
                .into(),
        ));
    }
    let mut mask = p.mask.clone();
    if p.invert {
        mask = image_ops::invert_mask(&mask);
    }
    let mask = image_ops::blur_mask(&mask, p.mask_blur_x, p.mask_blur_y);
    if !p.full_res {
        let image_mask = resize_mask(resize_mode, &mask, width, height)?;
        let mask_for_overlay = image_ops::mask_for_overlay_full(&image_mask);
        return Ok(Some(PreparedMask {
            infotext: p.infotext(false, false),
            image_mask,
            mask_for_overlay,
            crop: None,
        }));
    }
    if let Some(&(w, h)) = init_sizes.iter().find(|&&s| s != (mask.width, mask.height)) {
        return Err(PipelineError::InvalidInput(format!(
            "the mask is {}x{} but an init image is {w}x{h}; with inpaint_full_res (only masked) \
             they must have the same size",
            mask.width, mask.height
        )));
    }
    let Some(region) = image_ops::crop_region(&mask, p.full_res_padding) else {
        return Ok(None);
    };
    let crop = image_ops::expand_crop_region(region, width, height, mask.width, mask.height);
    let image_mask = resize_mask(
        ResizeMode::ResizeAndFill,
        &image_ops::crop_gray(&mask, crop),
        width,
        height,
    )?;
    Ok(Some(PreparedMask {
        infotext: p.infotext(true, false),
        image_mask,
        mask_for_overlay: mask,
        crop: Some(crop),
    }))
}

/// The infotext of a blank mask with "only masked" (plain img2img, A1111 keeps the other keys).
pub(super) fn blank_infotext(p: &InpaintParams) -> Vec<(String, String)> {
    p.infotext(false, true)
}

/// What A1111's `img2img_image_conditioning` reads for 9-channel inpainting UNets: the init image
/// after crop and fill (A1111's `image` before `image * 2 - 1`) and the processed mask at the job
/// size (A1111's `image_mask`).
// image conditioning (9-channel models): see inpaint9
#[derive(Debug, Clone)]
pub struct ConditioningSource {
    /// The image the VAE encodes (job size).
    pub image: RgbImage,
    /// The processed mask (job size).
    pub image_mask: GrayImage,
}

/// One init image prepared for inpainting.
#[derive(Debug, Clone)]
pub(super) struct InpaintImage {
    /// The image to encode, with the mask's image (image conditioning, see inpaint9).
    pub source: ConditioningSource,
    /// A1111's overlay image (the init image, transparent under the mask).
    pub overlay: RgbaImage,
}

/// A1111 `init`'s per-image part: resize (or crop for "only masked"), the overlay, the fill.
pub(super) fn prepare_image(
    mask: &PreparedMask,
    img: &RgbImage,
    fill: InpaintingFill,
    resize_mode: ResizeMode,
    width: u32,
    height: u32,
) -> Result<InpaintImage> {
    let image = match mask.crop {
        None => image_ops::resize_image(resize_mode, img, width, height)?,
        Some(_) => img.clone(),
    };
    let overlay = if (mask.mask_for_overlay.width, mask.mask_for_overlay.height)
        == (image.width, image.height)
    {
        image_ops::overlay_for(&image, &mask.mask_for_overlay)
    } else {
        let m = resize_mask(
            resize_mode,
            &mask.mask_for_overlay,
            image.width,
            image.height,
        )?;
        image_ops::overlay_for(&image, &m)
    };
    let image = match mask.crop {
        Some(r) => image_ops::resize_image(
            ResizeMode::ResizeAndFill,
            &image_ops::crop_rgb(&image, r),
            width,
            height,
        )?,
        None => image,
    };
    // A1111 fills for every mode but `original` (latent noise / nothing too).
    let image = if fill == InpaintingFill::Original {
        image
    } else {
        image_ops::fill_masked(&image, &mask.image_mask)
    };
    Ok(InpaintImage {
        source: ConditioningSource {
            image,
            image_mask: mask.image_mask.clone(),
        },
        overlay,
    })
}

/// A1111's latent masks `[1, 4, h, w]` f32: `nmask` = the mask resized to latent size (Pillow
/// bicubic, RGB), `/255`, rounded; `mask = 1 − nmask`.
#[derive(Debug, Clone)]
pub(super) struct LatentMask {
    /// Where the init latent is kept (1 outside the mask).
    pub mask: Tensor,
    /// Where the sampler's result is used (1 inside the mask).
    pub nmask: Tensor,
}

impl LatentMask {
    /// The latent masks of `image_mask` for a latent of `lw × lh`.
    pub fn new(image_mask: &GrayImage, lw: u32, lh: u32, device: &Device) -> Result<Self> {
        let small = image_ops::resize(&image_mask.to_rgb(), lw, lh, Filter::Bicubic)?.red_channel();
        let lat: Vec<f32> = small
            .pixels
            .iter()
            .map(|&v| (f32::from(v) / 255.0).round())
            .collect();
        let plane = Tensor::from_vec(lat, (1, 1, lh as usize, lw as usize), device)?;
        let nmask = plane.repeat((1, 4, 1, 1))?;
        let mask = nmask.affine(-1.0, 1.0)?;
        Ok(Self { mask, nmask })
    }

    /// `current · nmask + init · mask` (A1111's `apply_blend`).
    pub fn blend(&self, current: &Tensor, init: &Tensor) -> Result<Tensor> {
        let current = current.to_dtype(DType::F32)?;
        Ok(((current.broadcast_mul(&self.nmask))? + init.broadcast_mul(&self.mask)?)?)
    }

    /// The init latent of the fill modes: latent noise → `init · mask + noise · nmask`, latent
    /// nothing → `init · mask`, otherwise unchanged.
    pub fn fill_latent(
        &self,
        fill: InpaintingFill,
        init: &Tensor,
        noise: &Tensor,
    ) -> Result<Tensor> {
        Ok(match fill {
            InpaintingFill::LatentNoise => {
                (init.broadcast_mul(&self.mask)? + noise.broadcast_mul(&self.nmask)?)?
            }
            InpaintingFill::LatentNothing => init.broadcast_mul(&self.mask)?,
            InpaintingFill::Fill | InpaintingFill::Original => init.clone(),
        })
    }
}

/// A1111's CFG denoiser with a mask (`mask_before_denoising` off): every denoised prediction keeps
/// the init latent outside the mask.
pub(super) struct MaskedDenoiser<'a> {
    /// The CFG denoiser.
    pub inner: &'a mut dyn Denoiser,
    /// The (filled) init latent.
    pub init_latent: &'a Tensor,
    /// The latent masks.
    pub mask: &'a LatentMask,
}

impl Denoiser for MaskedDenoiser<'_> {
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        let denoised = self.inner.denoise(x, sigma)?;
        self.mask.blend(&denoised, self.init_latent)
    }
}

/// A1111 `apply_overlay`: the result (uncropped into the overlay's size for "only masked")
/// composited under the overlay.
pub(super) fn finish_image(
    image: &RgbImage,
    mask: &PreparedMask,
    overlay: &RgbaImage,
) -> Result<RgbImage> {
    image_ops::apply_overlay(image, mask.paste_to(), overlay)
}

/// The mask side of one img2img job: the prepared mask (`None` without a mask, or for a blank
/// mask with "only masked"), its infotext entries and warnings.
#[derive(Debug, Default)]
pub(super) struct InpaintSetup {
    /// The prepared mask.
    pub mask: Option<PreparedMask>,
    /// The fill mode.
    pub fill: InpaintingFill,
    /// Infotext entries of the mask fields.
    pub infotext: Vec<(String, String)>,
    /// The blank-mask fallback warning.
    pub warnings: Vec<String>,
}

impl InpaintSetup {
    /// A1111 `init`'s mask part for `params.mask` (nothing without a mask).
    pub fn new(
        mask: Option<&InpaintParams>,
        images: &[RgbImage],
        resize_mode: ResizeMode,
        width: u32,
        height: u32,
    ) -> Result<Self> {
        let Some(p) = mask else {
            return Ok(Self::default());
        };
        let sizes: Vec<(u32, u32)> = images.iter().map(|i| (i.width, i.height)).collect();
        Ok(match prepare_mask(p, resize_mode, width, height, &sizes)? {
            Some(m) => Self {
                infotext: m.infotext.clone(),
                mask: Some(m),
                fill: p.fill,
                warnings: Vec::new(),
            },
            // A1111: 'Unable to perform "Inpaint Only mask" because mask is blank, switch to
            // img2img mode.' — plain img2img, no overlay.
            None => Self {
                mask: None,
                fill: p.fill,
                infotext: blank_infotext(p),
                warnings: vec![BLANK_MASK_WARNING.to_string()],
            },
        })
    }

    /// The prepared init images (`None` without a mask).
    pub fn images(
        &self,
        images: &[RgbImage],
        resize_mode: ResizeMode,
        width: u32,
        height: u32,
    ) -> Result<Option<Vec<InpaintImage>>> {
        self.mask
            .as_ref()
            .map(|m| {
                images
                    .iter()
                    .map(|img| prepare_image(m, img, self.fill, resize_mode, width, height))
                    .collect::<Result<Vec<_>>>()
            })
            .transpose()
    }

    /// The latent masks (`None` without a mask).
    pub fn latent_mask(
        &self,
        width: u32,
        height: u32,
        device: &Device,
    ) -> Result<Option<LatentMask>> {
        self.mask
            .as_ref()
            .map(|m| LatentMask::new(&m.image_mask, width / 8, height / 8, device))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(String, String)]) -> Vec<(&str, &str)> {
        v.iter().map(|(k, x)| (k.as_str(), x.as_str())).collect()
    }

    #[test]
    fn infotext_follows_a1111() {
        let mask = GrayImage::new(2, 1, vec![0, 255]).unwrap();
        let mut p = InpaintParams::new(mask);
        assert_eq!(
            pairs(&p.infotext(true, false)),
            [
                ("Mask blur", "4"),
                ("Inpaint area", "Only masked"),
                ("Masked area padding", "0"),
                ("Masked content", "fill"),
            ]
        );
        p.invert = true;
        p.mask_blur_y = 2;
        p.fill = InpaintingFill::LatentNoise;
        assert_eq!(
            pairs(&p.infotext(false, false)),
            [
                ("Mask mode", "Inpaint not masked"),
                ("Masked content", "latent noise"),
            ]
        );
        p.mask_blur_y = 4;
        p.fill = InpaintingFill::Original;
        assert_eq!(
            pairs(&blank_infotext(&p)),
            [("Mask mode", "Inpaint not masked"), ("Mask blur", "4")]
        );
    }

    #[test]
    fn fill_modes_map_a1111_integers() {
        for i in 0..4 {
            let f = InpaintingFill::from_index(i).unwrap();
            assert_eq!(i64::from(u8::from(f)), i);
        }
        assert_eq!(InpaintingFill::from_index(4), None);
    }

    #[test]
    fn latent_mask_rounds_and_blends() {
        let m = GrayImage::new(
            16,
            8,
            (0..128).map(|i| if i % 16 < 8 { 255 } else { 0 }).collect(),
        )
        .unwrap();
        let lm = LatentMask::new(&m, 2, 1, &Device::Cpu).unwrap();
        let n: Vec<f32> = lm.nmask.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(n, [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]);
        let cur = Tensor::full(5f32, (1, 4, 1, 2), &Device::Cpu).unwrap();
        let init = Tensor::full(-1f32, (1, 4, 1, 2), &Device::Cpu).unwrap();
        let b: Vec<f32> = lm
            .blend(&cur, &init)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(b, [5.0, -1.0, 5.0, -1.0, 5.0, -1.0, 5.0, -1.0]);
    }
}
