//! Pixel-space image operations of img2img and the hires fix (SPEC §13): Pillow-compatible
//! resampling ([`resize`]), A1111's `images.resize_image` modes ([`resize_mode`]) and decoding of
//! job-supplied images ([`input`]).

pub mod input;
pub mod latent_resize;
pub mod resize;
pub mod resize_mode;

pub use input::{decode_image_field, ImageLimits};
pub use latent_resize::{interpolate, LatentMode};
pub use resize::{resize, resize_box, Filter};
pub use resize_mode::{resize_image, ResizeMode};
