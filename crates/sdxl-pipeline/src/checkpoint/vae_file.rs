//! A standalone VAE file that replaces a checkpoint's own VAE (models.toml `[vae]`, SPEC §8):
//! diffusers layout (`diffusion_pytorch_model.safetensors`, new `to_q` or old `query` attention
//! names) or original layout (`sdxl_vae.safetensors`: `encoder.down.0.block.0…`), with or without
//! a `first_stage_model.` / `vae.` key prefix.

use super::header::TensorEntry;
use super::names::{self, NameMap, Transform};

/// Key prefixes a standalone VAE file may carry (the first one found in every key is removed).
const PREFIXES: [&str; 2] = [names::VAE_PREFIX, "vae."];

/// Old diffusers VAE attention names (before diffusers 0.15) → today's.
const OLD_ATTENTION: [(&str, &str); 4] = [
    (".query.", ".to_q."),
    (".key.", ".to_k."),
    (".value.", ".to_v."),
    (".proj_attn.", ".to_out.0."),
];

/// The layout of a standalone VAE file, told apart by its block names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaeLayout {
    /// diffusers names (`encoder.down_blocks.0.resnets.0…`).
    Diffusers,
    /// Original LDM names (`encoder.down.0.block.0…`).
    Original,
}

/// Builds the VAE name map of a standalone VAE file (`file` is its index in the checkpoint's file
/// list). Errors with a reason when the file holds no VAE tensors of a known layout.
pub fn vae_file_map<'a>(
    entries: impl Iterator<Item = (&'a String, &'a TensorEntry)>,
    file: usize,
    levels: usize,
) -> Result<(NameMap, VaeLayout), String> {
    let entries: Vec<(&String, &TensorEntry)> = entries.collect();
    let prefix = PREFIXES
        .into_iter()
        .find(|p| !entries.is_empty() && entries.iter().all(|(k, _)| k.starts_with(p)))
        .unwrap_or("");
    let stripped = |k: &'a String| -> &'a str { &k[prefix.len()..] };
    let layout = if entries
        .iter()
        .any(|(k, _)| stripped(k).starts_with("decoder.up_blocks."))
    {
        VaeLayout::Diffusers
    } else if entries
        .iter()
        .any(|(k, _)| stripped(k).starts_with("decoder.up."))
    {
        VaeLayout::Original
    } else {
        return Err(
            "no VAE decoder tensors (`decoder.up_blocks.…` or `decoder.up.…`): not a VAE file"
                .into(),
        );
    };
    let mut map = NameMap::new();
    let mut ignored = 0usize;
    for (key, e) in entries {
        let k = stripped(key);
        let named = match layout {
            VaeLayout::Diffusers => Some((modern_attention_name(k), Transform::Identity)),
            VaeLayout::Original => names::vae_ldm_to_diffusers(k, levels, e.shape.len()),
        };
        match named {
            Some((name, transform)) => names::insert(&mut map, name, file, key, transform, e),
            None => ignored += 1,
        }
    }
    if ignored > 0 {
        tracing::debug!(
            ignored,
            "VAE file: keys that are not VAE parameters ignored"
        );
    }
    Ok((map, layout))
}

/// `encoder.mid_block.attentions.0.query.weight` → `….to_q.weight` (other names unchanged).
fn modern_attention_name(key: &str) -> String {
    if key.contains(".attentions.") {
        for (old, new) in OLD_ATTENTION {
            if key.contains(old) {
                return key.replacen(old, new, 1);
            }
        }
    }
    key.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::header::StoredDtype;

    fn entry(shape: &[usize]) -> TensorEntry {
        TensorEntry {
            dtype: StoredDtype::Candle(candle_core::DType::F32),
            shape: shape.to_vec(),
            start: 0,
            end: 0,
        }
    }

    fn map_of(keys: &[(&str, &[usize])]) -> Result<(NameMap, VaeLayout), String> {
        let owned: Vec<(String, TensorEntry)> = keys
            .iter()
            .map(|(k, s)| (k.to_string(), entry(s)))
            .collect();
        vae_file_map(owned.iter().map(|(k, e)| (k, e)), 3, 4)
    }

    #[test]
    fn old_diffusers_attention_names_are_renamed() {
        let (map, layout) = map_of(&[
            ("decoder.up_blocks.0.resnets.0.conv1.weight", &[4, 4, 3, 3]),
            ("decoder.mid_block.attentions.0.query.weight", &[4, 4]),
            ("decoder.mid_block.attentions.0.proj_attn.bias", &[4]),
        ])
        .unwrap();
        assert_eq!(layout, VaeLayout::Diffusers);
        let names: Vec<&String> = map.keys().collect();
        assert_eq!(
            names,
            [
                "decoder.mid_block.attentions.0.to_out.0.bias",
                "decoder.mid_block.attentions.0.to_q.weight",
                "decoder.up_blocks.0.resnets.0.conv1.weight",
            ]
        );
        assert!(map.values().all(|s| s.file == 3));
    }

    #[test]
    fn original_layout_with_prefix_maps_to_diffusers_names() {
        let (map, layout) = map_of(&[
            (
                "first_stage_model.decoder.up.3.block.0.conv1.weight",
                &[4, 4, 3, 3],
            ),
            (
                "first_stage_model.decoder.mid.attn_1.q.weight",
                &[4, 4, 1, 1],
            ),
        ])
        .unwrap();
        assert_eq!(layout, VaeLayout::Original);
        let q = &map["decoder.mid_block.attentions.0.to_q.weight"];
        assert_eq!(q.shape, [4, 4]);
        assert_eq!(q.key, "first_stage_model.decoder.mid.attn_1.q.weight");
        assert!(map.contains_key("decoder.up_blocks.0.resnets.0.conv1.weight"));
    }

    #[test]
    fn a_file_without_decoder_tensors_is_refused() {
        let e = map_of(&[("model.diffusion_model.conv_in.weight", &[4])]).unwrap_err();
        assert!(e.contains("not a VAE file"), "{e}");
        assert!(map_of(&[]).is_err());
    }
}
