//! The four architecture configs of an SDXL checkpoint: from a diffusers directory or the
//! built-in SDXL base values (`sdxl_base/*.json`, copies of stabilityai's config.json files).

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::text_encoder::ClipTextConfig;
use crate::unet::UNetConfig;
use crate::vae::VaeConfig;
use crate::{PipelineError, Result};

/// Configs of the UNet, the VAE and both text encoders.
#[derive(Debug, Clone, PartialEq)]
pub struct SdxlConfigs {
    pub unet: UNetConfig,
    pub vae: VaeConfig,
    pub text_encoder: ClipTextConfig,
    pub text_encoder_2: ClipTextConfig,
}

const UNET_JSON: &str = include_str!("sdxl_base/unet.json");
const VAE_JSON: &str = include_str!("sdxl_base/vae.json");
const TE1_JSON: &str = include_str!("sdxl_base/text_encoder.json");
const TE2_JSON: &str = include_str!("sdxl_base/text_encoder_2.json");

impl SdxlConfigs {
    /// stabilityai/stable-diffusion-xl-base-1.0's configs.
    pub fn sdxl_base() -> Self {
        // The embedded JSON is checked by a unit test; fall back to the Rust constructors anyway.
        Self {
            unet: serde_json::from_str(UNET_JSON).unwrap_or_else(|_| UNetConfig::sdxl_base()),
            vae: serde_json::from_str(VAE_JSON).unwrap_or_else(|_| VaeConfig::sdxl_base()),
            text_encoder: serde_json::from_str(TE1_JSON)
                .unwrap_or_else(|_| ClipTextConfig::sdxl_clip_l()),
            text_encoder_2: serde_json::from_str(TE2_JSON)
                .unwrap_or_else(|_| ClipTextConfig::sdxl_clip_g()),
        }
    }

    /// Reads `unet/`, `vae/`, `text_encoder/` and `text_encoder_2/` `config.json` under `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Ok(Self {
            unet: read_config(&dir.join("unet/config.json"))?,
            vae: read_config(&dir.join("vae/config.json"))?,
            text_encoder: read_config(&dir.join("text_encoder/config.json"))?,
            text_encoder_2: read_config(&dir.join("text_encoder_2/config.json"))?,
        })
    }
}

fn read_config<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| PipelineError::Config {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| PipelineError::Config {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_sdxl_base_configs_parse_and_match_constructors() {
        let u: UNetConfig = serde_json::from_str(UNET_JSON).unwrap();
        assert_eq!(u, UNetConfig::sdxl_base());
        let v: VaeConfig = serde_json::from_str(VAE_JSON).unwrap();
        assert_eq!(v, VaeConfig::sdxl_base());
        let t1: ClipTextConfig = serde_json::from_str(TE1_JSON).unwrap();
        let mut l = ClipTextConfig::sdxl_clip_l();
        l.projection_dim = t1.projection_dim;
        assert_eq!(t1, l);
        let t2: ClipTextConfig = serde_json::from_str(TE2_JSON).unwrap();
        assert_eq!(t2, ClipTextConfig::sdxl_clip_g());
    }
}
