//! The forward key table: every name a LoRA may use for a weight of the loaded model, built from
//! the checkpoint's own parameter list (never by un-flattening underscores).

use std::collections::HashMap;

use crate::checkpoint::{Checkpoint, Component};

/// The parameter a LoRA module changes.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub component: Component,
    /// diffusers / transformers parameter name, e.g. `down_blocks.1.attentions.0.proj_in.weight`.
    pub param: String,
    pub shape: Vec<usize>,
}

/// LoRA module name (key without its `.lora_down.weight`-style suffix) → target parameter.
pub(crate) struct KeyTable {
    map: HashMap<String, Target>,
}

fn flat(s: &str) -> String {
    s.replace('.', "_")
}

impl KeyTable {
    /// Registers, for every ≥2-D `.weight` of the UNet and both text encoders, the kohya names
    /// (LDM and diffusers flavours for the UNet), the diffusers/PEFT names and the old diffusers
    /// attention-processor names.
    pub fn build(ckpt: &Checkpoint) -> Self {
        let mut map = HashMap::new();
        for component in [
            Component::Unet,
            Component::TextEncoder,
            Component::TextEncoder2,
        ] {
            for (param, shape) in ckpt.parameter_names(component) {
                let Some(module) = param.strip_suffix(".weight") else {
                    continue;
                };
                if shape.len() < 2 {
                    continue;
                }
                let target = Target {
                    component,
                    param: param.clone(),
                    shape: shape.clone(),
                };
                for name in names_for(ckpt, component, module) {
                    map.entry(name).or_insert_with(|| target.clone());
                }
            }
        }
        Self { map }
    }

    /// The target of LoRA module `module`, if the model has it.
    pub fn get(&self, module: &str) -> Option<&Target> {
        self.map.get(module)
    }
}

fn names_for(ckpt: &Checkpoint, component: Component, module: &str) -> Vec<String> {
    let mut out = Vec::new();
    match component {
        Component::Unet => {
            if let Some(ldm) = ckpt
                .unet_ldm_name(&format!("{module}.weight"))
                .and_then(|n| n.strip_suffix(".weight").map(String::from))
            {
                out.push(format!("lora_unet_{}", flat(&ldm)));
            }
            out.push(format!("lora_unet_{}", flat(module)));
            for prefix in ["unet.", ""] {
                out.push(format!("{prefix}{module}"));
                if let Some(base) = module.strip_suffix(".to_out.0") {
                    out.push(format!("{prefix}{base}.to_out"));
                    out.push(format!("{prefix}{base}.processor.to_out_lora"));
                }
                for proj in ["to_q", "to_k", "to_v"] {
                    if let Some(base) = module.strip_suffix(&format!(".{proj}")) {
                        out.push(format!("{prefix}{base}.processor.{proj}_lora"));
                    }
                }
            }
        }
        Component::TextEncoder => {
            out.push(format!("lora_te1_{}", flat(module)));
            out.push(format!("text_encoder.{module}"));
            out.push(format!("text_encoder.{module}.lora_linear_layer"));
        }
        Component::TextEncoder2 => {
            out.push(format!("lora_te2_{}", flat(module)));
            out.push(format!("text_encoder_2.{module}"));
            out.push(format!("text_encoder_2.{module}.lora_linear_layer"));
        }
        Component::Vae => {}
    }
    out
}
