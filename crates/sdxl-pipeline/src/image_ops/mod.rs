//! Pixel-space image operations of img2img, inpainting and the hires fix (SPEC §13):
//! Pillow-compatible resampling ([`resize`]), A1111's `images.resize_image` modes
//! ([`resize_mode`]), decoding of job-supplied images and masks ([`input`]), and the inpainting
//! operations — mask invert/blur ([`mask`]), "only masked" crop regions ([`crop`]), the overlay
//! ([`composite`]) and the "fill" mode ([`fill`]) — bit-exact to A1111 on Pillow 9.5 / OpenCV.

pub mod composite;
pub mod crop;
pub mod fill;
pub mod input;
pub mod latent_resize;
pub mod mask;
pub mod resize;
pub mod resize_mode;

pub use composite::{apply_overlay, overlay_for};
pub use crop::{crop_gray, crop_region, crop_rgb, expand_crop_region, CropRegion};
pub use fill::fill_masked;
pub use input::{decode_image_field, decode_mask_field, ImageLimits};
pub use latent_resize::{interpolate, LatentMode};
pub use mask::{blur_mask, invert_mask, mask_for_overlay_full};
pub use resize::{resize, resize_box, Filter};
pub use resize_mode::{resize_image, ResizeMode};
