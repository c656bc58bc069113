//! Name maps from stored tensor keys to diffusers/transformers parameter names: the inverse of
//! diffusers' `convert_diffusers_to_original_sdxl.py` (research §2), with UNet/VAE block indices
//! derived from the configs.

use std::collections::BTreeMap;

use super::header::TensorEntry;
use crate::unet::UNetConfig;
use crate::vae::VaeConfig;

/// Single-file key prefixes of the four components.
pub const UNET_PREFIX: &str = "model.diffusion_model.";
pub const VAE_PREFIX: &str = "first_stage_model.";
pub const TE1_PREFIX: &str = "conditioner.embedders.0.transformer.";
pub const TE2_PREFIX: &str = "conditioner.embedders.1.model.";

/// How a stored tensor becomes the parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// Used as stored.
    Identity,
    /// Row block `part` of `parts` equal blocks along dim 0 (OpenCLIP fused q/k/v).
    Rows { part: usize, parts: usize },
    /// 2-D transpose (OpenCLIP `text_projection`).
    Transpose,
    /// `[o, i, 1, 1]` conv weight used as a `[o, i]` linear weight (VAE mid attention).
    Squeeze1x1,
}

impl Transform {
    /// The parameter shape for a stored shape, or `None` when the transform does not apply.
    pub fn shape(&self, stored: &[usize]) -> Option<Vec<usize>> {
        match (self, stored) {
            (Self::Identity, s) => Some(s.to_vec()),
            (Self::Rows { parts, .. }, [r, rest @ ..]) if *parts > 0 && r % parts == 0 => {
                let mut v = vec![r / parts];
                v.extend_from_slice(rest);
                Some(v)
            }
            (Self::Transpose, [a, b]) => Some(vec![*b, *a]),
            (Self::Squeeze1x1, [o, i, 1, 1]) => Some(vec![*o, *i]),
            _ => None,
        }
    }
}

/// Where one parameter comes from.
#[derive(Debug, Clone)]
pub struct Source {
    /// Index into the checkpoint's file list.
    pub file: usize,
    /// The stored key.
    pub key: String,
    pub transform: Transform,
    /// Parameter shape (after the transform).
    pub shape: Vec<usize>,
}

/// diffusers name → source, for one component.
pub type NameMap = BTreeMap<String, Source>;

pub(super) fn insert(
    map: &mut NameMap,
    name: String,
    file: usize,
    key: &str,
    t: Transform,
    e: &TensorEntry,
) {
    match t.shape(&e.shape) {
        Some(shape) => {
            map.insert(
                name,
                Source {
                    file,
                    key: key.to_string(),
                    transform: t,
                    shape,
                },
            );
        }
        None => {
            tracing::warn!(key, shape = ?e.shape, "tensor has a shape the name map cannot use; ignored")
        }
    }
}

// ---------------------------------------------------------------- UNet

const UNET_TOP: [(&str, &str); 7] = [
    ("time_embedding.linear_1.", "time_embed.0."),
    ("time_embedding.linear_2.", "time_embed.2."),
    ("add_embedding.linear_1.", "label_emb.0.0."),
    ("add_embedding.linear_2.", "label_emb.0.2."),
    ("conv_in.", "input_blocks.0.0."),
    ("conv_norm_out.", "out.0."),
    ("conv_out.", "out.2."),
];

const UNET_RESNET: [(&str, &str); 6] = [
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("time_emb_proj.", "emb_layers.1."),
    ("conv_shortcut.", "skip_connection."),
];

/// `(diffusers prefix, ldm prefix, is_resnet)` for every block of a UNet config.
pub fn unet_prefix_map(cfg: &UNetConfig) -> Vec<(String, String, bool)> {
    let l = cfg.layers_per_block;
    let n = cfg.levels();
    let has_attn = |t: &String| t.starts_with("CrossAttn");
    let mut m = Vec::new();
    for i in 0..n {
        let down_attn = cfg.down_block_types.get(i).is_some_and(has_attn);
        let up_attn = cfg.up_block_types.get(i).is_some_and(has_attn);
        for j in 0..l {
            let b = (l + 1) * i + j + 1;
            m.push((
                format!("down_blocks.{i}.resnets.{j}."),
                format!("input_blocks.{b}.0."),
                true,
            ));
            if down_attn {
                m.push((
                    format!("down_blocks.{i}.attentions.{j}."),
                    format!("input_blocks.{b}.1."),
                    false,
                ));
            }
        }
        if i + 1 < n {
            m.push((
                format!("down_blocks.{i}.downsamplers.0.conv."),
                format!("input_blocks.{}.0.op.", (l + 1) * (i + 1)),
                false,
            ));
        }
        for j in 0..=l {
            let b = (l + 1) * i + j;
            m.push((
                format!("up_blocks.{i}.resnets.{j}."),
                format!("output_blocks.{b}.0."),
                true,
            ));
            if up_attn {
                m.push((
                    format!("up_blocks.{i}.attentions.{j}."),
                    format!("output_blocks.{b}.1."),
                    false,
                ));
            }
        }
        if i + 1 < n {
            m.push((
                format!("up_blocks.{i}.upsamplers.0."),
                format!(
                    "output_blocks.{}.{}.",
                    (l + 1) * i + l,
                    if up_attn { 2 } else { 1 }
                ),
                false,
            ));
        }
    }
    m.push((
        "mid_block.resnets.0.".into(),
        "middle_block.0.".into(),
        true,
    ));
    m.push((
        "mid_block.attentions.0.".into(),
        "middle_block.1.".into(),
        false,
    ));
    m.push((
        "mid_block.resnets.1.".into(),
        "middle_block.2.".into(),
        true,
    ));
    m
}

/// diffusers name of an LDM UNet key (prefix `model.diffusion_model.` already removed).
pub fn unet_ldm_to_diffusers(key: &str, pmap: &[(String, String, bool)]) -> Option<String> {
    for (hf, sd) in UNET_TOP {
        if let Some(rest) = key.strip_prefix(sd) {
            return Some(format!("{hf}{rest}"));
        }
    }
    for (hf, sd, is_res) in pmap {
        if let Some(rest) = key.strip_prefix(sd.as_str()) {
            if !is_res {
                return Some(format!("{hf}{rest}"));
            }
            return UNET_RESNET
                .iter()
                .find_map(|(d, l)| rest.strip_prefix(l).map(|tail| format!("{hf}{d}{tail}")));
        }
    }
    None
}

/// LDM name of a diffusers UNet parameter (inverse of [`unet_ldm_to_diffusers`], without the
/// `model.diffusion_model.` prefix). Used by LoRA key tables for diffusers-layout checkpoints.
pub fn unet_diffusers_to_ldm(name: &str, pmap: &[(String, String, bool)]) -> Option<String> {
    for (hf, sd) in UNET_TOP {
        if let Some(rest) = name.strip_prefix(hf) {
            return Some(format!("{sd}{rest}"));
        }
    }
    for (hf, sd, is_res) in pmap {
        if let Some(rest) = name.strip_prefix(hf.as_str()) {
            if !is_res {
                return Some(format!("{sd}{rest}"));
            }
            return UNET_RESNET
                .iter()
                .find_map(|(d, l)| rest.strip_prefix(d).map(|tail| format!("{sd}{l}{tail}")));
        }
    }
    None
}

// ---------------------------------------------------------------- VAE

fn vae_resnet(tail: &str) -> String {
    match tail.strip_prefix("nin_shortcut.") {
        Some(t) => format!("conv_shortcut.{t}"),
        None => tail.to_string(),
    }
}

/// diffusers name (and transform) of an LDM VAE key (prefix removed).
pub fn vae_ldm_to_diffusers(key: &str, levels: usize, ndim: usize) -> Option<(String, Transform)> {
    let id = |s: String| Some((s, Transform::Identity));
    if key.starts_with("quant_conv.") || key.starts_with("post_quant_conv.") {
        return id(key.to_string());
    }
    let (side, rest) = key.split_once('.')?;
    if side != "encoder" && side != "decoder" {
        return None;
    }
    if rest.starts_with("conv_in.") || rest.starts_with("conv_out.") {
        return id(key.to_string());
    }
    if let Some(t) = rest.strip_prefix("norm_out.") {
        return id(format!("{side}.conv_norm_out.{t}"));
    }
    let parts: Vec<&str> = rest.splitn(4, '.').collect();
    match parts.as_slice() {
        ["down", i, "block", tail] => {
            let (j, tail) = tail.split_once('.')?;
            id(format!(
                "{side}.down_blocks.{i}.resnets.{j}.{}",
                vae_resnet(tail)
            ))
        }
        ["down", i, "downsample", tail] => {
            id(format!("{side}.down_blocks.{i}.downsamplers.0.{tail}"))
        }
        ["up", li, kind, tail] => {
            let li: usize = li.parse().ok()?;
            let i = levels.checked_sub(1)?.checked_sub(li)?;
            match *kind {
                "block" => {
                    let (j, tail) = tail.split_once('.')?;
                    id(format!(
                        "{side}.up_blocks.{i}.resnets.{j}.{}",
                        vae_resnet(tail)
                    ))
                }
                "upsample" => id(format!("{side}.up_blocks.{i}.upsamplers.0.{tail}")),
                _ => None,
            }
        }
        ["mid", block, ..] if block.starts_with("block_") => {
            let k: usize = block.strip_prefix("block_")?.parse().ok()?;
            let tail = rest.splitn(3, '.').nth(2)?;
            id(format!(
                "{side}.mid_block.resnets.{}.{}",
                k.checked_sub(1)?,
                vae_resnet(tail)
            ))
        }
        ["mid", "attn_1", what, tail] => {
            let d = match *what {
                "norm" => "group_norm",
                "q" => "to_q",
                "k" => "to_k",
                "v" => "to_v",
                "proj_out" => "to_out.0",
                _ => return None,
            };
            let t = if *what != "norm" && *tail == "weight" && ndim == 4 {
                Transform::Squeeze1x1
            } else {
                Transform::Identity
            };
            Some((format!("{side}.mid_block.attentions.0.{d}.{tail}"), t))
        }
        _ => None,
    }
}

// ---------------------------------------------------------------- text encoders

/// transformers name of a CLIP text-model key: adds the `text_model.` prefix that transformers ≥ 5.6
/// drops when saving; `None` for the `position_ids` buffer.
pub fn clip_name(key: &str) -> Option<String> {
    if key.ends_with("position_ids") {
        return None;
    }
    if key.starts_with("text_model.") || key == "text_projection.weight" {
        Some(key.to_string())
    } else {
        Some(format!("text_model.{key}"))
    }
}

const TE2_RENAMES: [(&str, &str); 5] = [
    ("ln_1.", "layer_norm1."),
    ("ln_2.", "layer_norm2."),
    ("mlp.c_fc.", "mlp.fc1."),
    ("mlp.c_proj.", "mlp.fc2."),
    ("attn.out_proj.", "self_attn.out_proj."),
];

/// transformers names (with transforms) of an OpenCLIP bigG key (prefix removed).
pub fn open_clip_to_diffusers(key: &str) -> Vec<(String, Transform)> {
    let one = |s: String, t| vec![(s, t)];
    match key {
        "token_embedding.weight" => {
            return one(
                "text_model.embeddings.token_embedding.weight".into(),
                Transform::Identity,
            )
        }
        "positional_embedding" => {
            return one(
                "text_model.embeddings.position_embedding.weight".into(),
                Transform::Identity,
            )
        }
        "text_projection" => return one("text_projection.weight".into(), Transform::Transpose),
        "text_projection.weight" => {
            return one("text_projection.weight".into(), Transform::Identity)
        }
        _ => {}
    }
    if let Some(t) = key.strip_prefix("ln_final.") {
        return one(
            format!("text_model.final_layer_norm.{t}"),
            Transform::Identity,
        );
    }
    let Some(rest) = key.strip_prefix("transformer.resblocks.") else {
        return Vec::new();
    };
    let Some((idx, tail)) = rest.split_once('.') else {
        return Vec::new();
    };
    let base = format!("text_model.encoder.layers.{idx}.");
    let fused = match tail {
        "attn.in_proj_weight" => Some("weight"),
        "attn.in_proj_bias" => Some("bias"),
        _ => None,
    };
    if let Some(wb) = fused {
        return ["q_proj", "k_proj", "v_proj"]
            .iter()
            .enumerate()
            .map(|(part, p)| {
                (
                    format!("{base}self_attn.{p}.{wb}"),
                    Transform::Rows { part, parts: 3 },
                )
            })
            .collect();
    }
    TE2_RENAMES
        .iter()
        .find_map(|(o, d)| tail.strip_prefix(o).map(|t| format!("{base}{d}{t}")))
        .map(|n| vec![(n, Transform::Identity)])
        .unwrap_or_default()
}

// ---------------------------------------------------------------- builders

/// The four name maps of an SDXL single file (keys not belonging to a component are ignored).
pub fn single_file_maps<'a>(
    entries: impl Iterator<Item = (&'a String, &'a TensorEntry)>,
    file: usize,
    unet: &UNetConfig,
    vae: &VaeConfig,
) -> [NameMap; 4] {
    let pmap = unet_prefix_map(unet);
    let levels = vae.block_out_channels.len();
    let mut maps: [NameMap; 4] = Default::default();
    let mut ignored = 0usize;
    for (key, e) in entries {
        let [u, v, t1, t2] = &mut maps;
        if let Some(k) = key.strip_prefix(UNET_PREFIX) {
            match unet_ldm_to_diffusers(k, &pmap) {
                Some(n) => insert(u, n, file, key, Transform::Identity, e),
                None => ignored += 1,
            }
        } else if let Some(k) = key.strip_prefix(VAE_PREFIX) {
            match vae_ldm_to_diffusers(k, levels, e.shape.len()) {
                Some((n, t)) => insert(v, n, file, key, t, e),
                None => ignored += 1,
            }
        } else if let Some(k) = key.strip_prefix(TE1_PREFIX) {
            match clip_name(k) {
                Some(n) => insert(t1, n, file, key, Transform::Identity, e),
                None => ignored += 1,
            }
        } else if let Some(k) = key.strip_prefix(TE2_PREFIX) {
            let names = open_clip_to_diffusers(k);
            if names.is_empty() {
                ignored += 1;
            }
            for (n, t) in names {
                insert(t2, n, file, key, t, e);
            }
        } else {
            ignored += 1;
        }
    }
    if ignored > 0 {
        tracing::debug!(
            ignored,
            "single file: keys outside the four SDXL components ignored"
        );
    }
    maps
}

/// Adds the tensors of one diffusers-layout file to `map` (text encoders get `text_model.` names).
pub fn diffusers_file_map<'a>(
    map: &mut NameMap,
    entries: impl Iterator<Item = (&'a String, &'a TensorEntry)>,
    file: usize,
    text_encoder: bool,
) {
    for (key, e) in entries {
        let name = if text_encoder {
            match clip_name(key) {
                Some(n) => n,
                None => continue,
            }
        } else {
            key.clone()
        };
        insert(map, name, file, key, Transform::Identity, e);
    }
}
