//! The UNet's input channel count, read from the shape of its `conv_in` weight (single file:
//! `model.diffusion_model.input_blocks.0.0.weight`; diffusers: `conv_in.weight`), as A1111 tells
//! SDXL inpainting checkpoints apart (`is_sdxl_inpaint`).

use super::header::SafetensorsFile;
use super::names::NameMap;
use crate::{PipelineError, Result};

/// Input channels of an ordinary SDXL UNet (the latent).
pub const LATENT_IN_CHANNELS: usize = 4;
/// Input channels of an SDXL inpainting UNet (latent, mask, masked-image latent).
pub const INPAINT_IN_CHANNELS: usize = 9;

/// The diffusers name of the first UNet convolution.
const CONV_IN: &str = "conv_in.weight";

/// `in_channels` of the UNet whose parameters `map` describes: dimension 1 of `conv_in.weight`.
/// 4 and 9 are valid; any other count (or a weight that is not 4-D) is
/// [`PipelineError::ModelInvalid`] naming the file that holds it. A checkpoint without the weight
/// keeps the SDXL default (4); building the UNet then reports the missing tensor.
pub(super) fn unet_in_channels(map: &NameMap, files: &[SafetensorsFile]) -> Result<usize> {
    let Some(source) = map.get(CONV_IN) else {
        return Ok(LATENT_IN_CHANNELS);
    };
    match source.shape.as_slice() {
        [_, c, _, _] if *c == LATENT_IN_CHANNELS || *c == INPAINT_IN_CHANNELS => Ok(*c),
        shape => Err(PipelineError::ModelInvalid {
            path: files
                .get(source.file)
                .map(|f| f.path().to_path_buf())
                .unwrap_or_default(),
            reason: format!(
                "UNet input convolution `{}` has shape {shape:?}: {} input channels, expected \
                 {LATENT_IN_CHANNELS} (SDXL) or {INPAINT_IN_CHANNELS} (SDXL inpainting)",
                source.key,
                shape
                    .get(1)
                    .map_or_else(|| "?".to_string(), |c| c.to_string()),
            ),
        }),
    }
}
