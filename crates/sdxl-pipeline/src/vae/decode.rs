//! fp16-safe decoding (SPEC §8): never a black or NaN image.

use candle_core::{DType, Tensor};

use super::AutoencoderKl;
use crate::{PipelineError, Result};

/// True when every element of `t` is finite (`0·x` is 0 exactly for finite x and NaN for NaN/±Inf,
/// so the sum is 0 or NaN and cannot overflow).
pub fn is_finite(t: &Tensor) -> Result<bool> {
    let zeros = (t.to_dtype(DType::F32)? * 0.0)?;
    Ok(zeros.sum_all()?.to_scalar::<f32>()? == 0.0)
}

/// Decodes `latents` (already divided by the scaling factor) with `vae`; when the output is not
/// finite (fp16 overflow) and `vae` is not f32, decodes again with the f32 VAE `reload_f32` builds.
/// Non-finite latents or a non-finite f32 result are [`PipelineError::NonFinite`].
pub fn decode_checked(
    vae: &AutoencoderKl,
    latents: &Tensor,
    reload_f32: impl FnOnce() -> Result<AutoencoderKl>,
) -> Result<Tensor> {
    if !is_finite(latents)? {
        return Err(PipelineError::NonFinite(
            "latents contain NaN/Inf before VAE decode (sampling diverged)".into(),
        ));
    }
    let image = vae.decode(latents)?;
    if is_finite(&image)? {
        return Ok(image);
    }
    if vae.dtype() == DType::F32 {
        return Err(PipelineError::NonFinite(
            "VAE decode in f32 produced NaN/Inf".into(),
        ));
    }
    tracing::warn!(dtype = ?vae.dtype(), "VAE decode produced NaN/Inf; retrying in f32");
    let vae32 = reload_f32()?;
    let image = vae32.decode(&latents.to_dtype(DType::F32)?)?;
    if is_finite(&image)? {
        Ok(image)
    } else {
        Err(PipelineError::NonFinite(format!(
            "VAE decode produced NaN/Inf in {:?} and again in f32",
            vae.dtype()
        )))
    }
}
