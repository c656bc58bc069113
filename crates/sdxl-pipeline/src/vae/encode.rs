//! fp16-safe encoding (SPEC §13 "same fp16-safety rules as decoding").

use candle_core::{DType, Tensor};

use super::{is_finite, AutoencoderKl};
use crate::{PipelineError, Result};

/// The latent distribution mean of images `x` ([B,3,H,W] in [-1, 1]) under `vae`, unscaled; when
/// it is not finite and `vae` is not f32, encodes again with the f32 VAE `reload_f32` builds.
pub fn encode_checked(
    vae: &AutoencoderKl,
    x: &Tensor,
    reload_f32: impl FnOnce() -> Result<AutoencoderKl>,
) -> Result<Tensor> {
    let (mean, _) = vae.encode(x)?;
    if is_finite(&mean)? {
        return Ok(mean);
    }
    if vae.dtype() == DType::F32 {
        return Err(PipelineError::NonFinite(
            "VAE encode in f32 produced NaN/Inf".into(),
        ));
    }
    tracing::warn!(dtype = ?vae.dtype(), "VAE encode produced NaN/Inf; retrying in f32");
    let (mean, _) = reload_f32()?.encode(&x.to_dtype(DType::F32)?)?;
    if is_finite(&mean)? {
        Ok(mean)
    } else {
        Err(PipelineError::NonFinite(format!(
            "VAE encode produced NaN/Inf in {:?} and again in f32",
            vae.dtype()
        )))
    }
}
