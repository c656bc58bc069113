//! LoRA merging for the CivitAI SDXL formats (kohya LoRA/LoCon, LyCORIS LoHa/LoKr, DoRA,
//! diffusers/PEFT and old diffusers keys) into per-component f32 deltas keyed by diffusers
//! parameter names, ready for [`Checkpoint::var_builder_with_deltas`] or for switching the
//! weights of a loaded model in place ([`LiveWeights`]).

mod deltas;
pub(crate) mod file;
mod keys;
mod live;

mod math;
mod module;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use candle_core::{DType, Device};

use crate::checkpoint::{Checkpoint, Component};
use crate::{PipelineError, Result};
use file::LoraFile;
use keys::KeyTable;
use module::ModuleError;

pub use deltas::ComponentDeltas;
use deltas::Term;
pub use live::{LiveWeights, SwitchOutcome};
use module::Planned;

/// One LoRA of a request: file, display name and multipliers (A1111 `<lora:name:scale>` and
/// `<lora:name:te:unet>`).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    /// The LoRA file.
    pub path: PathBuf,
    /// Display name (messages, cache key).
    pub name: String,
    /// Multiplier of the UNet modules, and of the text-encoder modules unless `te_scale` is set.
    pub scale: f64,
    /// Multiplier of the text-encoder modules (`lora_te1_*`, `lora_te2_*`, PEFT `text_encoder*`)
    /// when it differs from `scale` (A1111's `te_multiplier`); `None` ⇒ `scale`.
    pub te_scale: Option<f64>,
}

impl LoraSpec {
    /// The multiplier of the modules of `component`: `te_scale` (else `scale`) for the text
    /// encoders, `scale` for the UNet (A1111 applies `te_multiplier` to `lora_te*` modules and
    /// `unet_multiplier` to `lora_unet*` modules).
    pub fn scale_for(&self, component: Component) -> f64 {
        match component {
            Component::TextEncoder | Component::TextEncoder2 => self.te_scale.unwrap_or(self.scale),
            Component::Unet | Component::Vae => self.scale,
        }
    }
}

/// Parsed and resolved LoRAs: the summed f32 delta of every touched parameter, per component.
#[derive(Debug, Clone, Default)]
pub struct LoraSet {
    key: String,
    deltas: [Arc<ComponentDeltas>; 4],
}

fn slot(c: Component) -> usize {
    match c {
        Component::Unet => 0,
        Component::Vae => 1,
        Component::TextEncoder => 2,
        Component::TextEncoder2 => 3,
    }
}

impl LoraSet {
    /// The empty set (base weights).
    pub fn empty() -> Self {
        Self::default()
    }

    /// Reads every LoRA of `specs`, resolves its keys against `ckpt` and sums the deltas.
    /// Returns the set and warnings naming every tensor that was not used. A LoRA that matches
    /// nothing, an SD1.x LoRA, a malformed file or a delta whose shape does not fit its weight is
    /// an error naming the LoRA (and key). The set's delta memory is capped by
    /// [`LoraBudget::from_env`].
    pub fn load(specs: &[LoraSpec], ckpt: &Checkpoint) -> Result<(Self, Vec<String>)> {
        Self::load_with_budget(specs, ckpt, LoraBudget::from_env())
    }

    /// [`Self::load`] with an explicit memory budget. Every module's delta shape is computed from
    /// its factor shapes and checked against its weight before any product is formed.
    pub fn load_with_budget(
        specs: &[LoraSpec],
        ckpt: &Checkpoint,
        budget: LoraBudget,
    ) -> Result<(Self, Vec<String>)> {
        let table = KeyTable::build(ckpt);
        let mut sums: [ComponentDeltas; 4] = Default::default();
        let mut warnings = Vec::new();
        let mut base_vbs: HashMap<usize, candle_nn::VarBuilder<'static>> = HashMap::new();
        let mut held = 0u64;
        for spec in specs {
            let lora = LoraFile::read(&spec.path)?;
            let mut ctx = ResolveCtx {
                table: &table,
                ckpt,
                base_vbs: &mut base_vbs,
                warnings: &mut warnings,
                budget,
                held: &mut held,
            };
            let deltas = resolve(spec, &lora, &mut ctx)?;
            for (target, term) in deltas {
                sums[slot(target.component)].add(target.param, target.shape, term);
            }
        }
        for w in &warnings {
            tracing::warn!("{w}");
        }
        let key = Self::key_of(specs);
        Ok((
            Self {
                key,
                deltas: sums.map(Arc::new),
            },
            warnings,
        ))
    }

    /// The key a set loaded from `specs` has (names, paths and scales in order), so a caller can
    /// tell a cache hit without reading any file.
    pub fn key_of(specs: &[LoraSpec]) -> String {
        specs
            .iter()
            .map(|s| match s.te_scale {
                Some(te) => format!("{}={}@{}/te{}", s.name, s.path.display(), s.scale, te),
                None => format!("{}={}@{}", s.name, s.path.display(), s.scale),
            })
            .collect::<Vec<_>>()
            .join(";")
    }

    /// The deltas of `component` (diffusers name → f32 delta, materialised on demand); pass it to
    /// [`Checkpoint::var_builder_with_deltas`].
    pub fn deltas(&self, component: Component) -> Arc<ComponentDeltas> {
        self.deltas[slot(component)].clone()
    }

    /// Cache identity: equal keys ⇒ equal deltas (names, paths and scales in order).
    pub fn key(&self) -> String {
        self.key.clone()
    }

    /// True when no parameter is changed.
    pub fn is_empty(&self) -> bool {
        self.deltas.iter().all(|d| d.is_empty())
    }
}

/// Env var capping the delta memory of one LoRA set ([`LoraBudget::max_delta_bytes`]).
pub const MAX_LORA_DELTA_BYTES_ENV: &str = "SDXL_MAX_LORA_DELTA_BYTES";

/// Memory limits of one LoRA set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoraBudget {
    /// Bytes the set may hold: the f32 deltas materialised at load (LoHa, LoKr, CP, DoRA), the
    /// f32 low-rank factors of plain LoRAs (their full-size products are formed later in row
    /// blocks, inside the checkpoint merge, and never held), plus the transient intermediates
    /// of the module being formed. Default 8 GiB.
    pub max_delta_bytes: u64,
}

impl Default for LoraBudget {
    fn default() -> Self {
        Self {
            max_delta_bytes: 8 << 30,
        }
    }
}

impl LoraBudget {
    /// The default, or `SDXL_MAX_LORA_DELTA_BYTES` when it is a positive integer.
    pub fn from_env() -> Self {
        let mut b = Self::default();
        if let Ok(v) = std::env::var(MAX_LORA_DELTA_BYTES_ENV) {
            match v.trim().parse::<u64>() {
                Ok(n) if n > 0 => b.max_delta_bytes = n,
                _ => tracing::warn!(
                    value = %v,
                    "{MAX_LORA_DELTA_BYTES_ENV} is not a positive integer; using the default"
                ),
            }
        }
        b
    }
}

/// A module may allocate, on its way to a delta of `n` elements, at most this many elements in
/// all: the LoHa formula forms two factors and their product (3n), DoRA three more of its
/// size; a CP core adds `out · rank · kh · kw` per factor, which for real ranks stays far
/// below 4n or the 4M-element (16 MB) floor that keeps small layers with large ranks legal.
fn intermediate_cap(n: usize) -> usize {
    n.saturating_mul(7).max(1 << 22)
}

struct ResolveCtx<'a> {
    table: &'a KeyTable,
    ckpt: &'a Checkpoint,
    base_vbs: &'a mut HashMap<usize, candle_nn::VarBuilder<'static>>,
    warnings: &'a mut Vec<String>,
    budget: LoraBudget,
    /// Bytes the set holds so far.
    held: &'a mut u64,
}

impl ResolveCtx<'_> {
    /// Charges `bytes` held by the set, or refuses them naming the LoRA and key.
    fn charge(&mut self, spec: &LoraSpec, key: &str, bytes: u64, transient: u64) -> Result<()> {
        let need = self.held.saturating_add(bytes).saturating_add(transient);
        if need > self.budget.max_delta_bytes {
            return Err(lora_error(
                spec,
                key,
                format!(
                    "the LoRA set would need {need} bytes of deltas, over the cap of {} bytes \
                     (env {MAX_LORA_DELTA_BYTES_ENV}); use fewer or smaller LoRAs",
                    self.budget.max_delta_bytes
                ),
            ));
        }
        *self.held = self.held.saturating_add(bytes);
        Ok(())
    }
}

fn module_error(spec: &LoraSpec, key: &str, e: ModuleError) -> PipelineError {
    match e {
        ModuleError::Malformed(r) => lora_error(spec, key, r),
        ModuleError::Shapes(r) => lora_error(spec, key, format!("incompatible factor shapes: {r}")),
    }
}

fn lora_error(spec: &LoraSpec, key: &str, reason: String) -> PipelineError {
    PipelineError::TensorInvalid {
        path: spec.path.clone(),
        tensor: key.to_string(),
        reason: format!("LoRA `{}`: {reason}", spec.name),
    }
}

/// Alpha for diffusers/PEFT keys from the `lora_adapter_metadata` JSON (`{"unet.lora_alpha": 8}`
/// or `{"unet": {"lora_alpha": 8}}`), keyed by the component prefix.
fn peft_alphas(lora: &LoraFile) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    let Some(text) = lora.metadata.get("lora_adapter_metadata") else {
        return out;
    };
    let Ok(serde_json::Value::Object(obj)) = serde_json::from_str::<serde_json::Value>(text) else {
        return out;
    };
    for (k, v) in &obj {
        if let Some(prefix) = k.strip_suffix(".lora_alpha") {
            if let Some(a) = v.as_f64() {
                out.insert(prefix.to_string(), a);
            }
        } else if let Some(a) = v.get("lora_alpha").and_then(|a| a.as_f64()) {
            out.insert(k.clone(), a);
        }
    }
    out
}

fn refuse_non_sdxl(spec: &LoraSpec, lora: &LoraFile) -> Result<()> {
    let sd1_key = lora.tensors.keys().find(|k| k.starts_with("lora_te_"));
    let version = lora
        .metadata
        .get("ss_base_model_version")
        .filter(|v| v.starts_with("sd_v1") || v.starts_with("sd_v2"));
    if sd1_key.is_some() || version.is_some() {
        let why = match (sd1_key, version) {
            (Some(k), _) => format!("text-encoder key `{k}` uses the SD1.x `lora_te_` prefix"),
            (None, Some(v)) => format!("metadata ss_base_model_version = {v}"),
            (None, None) => String::new(),
        };
        return Err(PipelineError::ModelInvalid {
            path: spec.path.clone(),
            reason: format!(
                "LoRA `{}` is for SD1.x/SD2.x, not SDXL ({why}); it cannot be applied",
                spec.name
            ),
        });
    }
    Ok(())
}

fn resolve(
    spec: &LoraSpec,
    lora: &LoraFile,
    ctx: &mut ResolveCtx<'_>,
) -> Result<Vec<(keys::Target, Term)>> {
    let (table, ckpt) = (ctx.table, ctx.ckpt);
    refuse_non_sdxl(spec, lora)?;
    if !spec.scale.is_finite() || !spec.te_scale.unwrap_or(0.0).is_finite() {
        return Err(PipelineError::InvalidInput(format!(
            "LoRA `{}`: scale {} (text encoders {:?}) is not finite",
            spec.name, spec.scale, spec.te_scale
        )));
    }
    let peft_alpha = peft_alphas(lora);
    let (modules, unknown) = module::group(&lora.tensors);
    let mut unmatched: Vec<String> = unknown;
    let mut out = Vec::new();
    for (name, m) in &modules {
        let Some(target) = table.get(name) else {
            unmatched.extend(m.parts.values().map(|(k, _)| k.clone()));
            continue;
        };
        let first_key = m
            .parts
            .values()
            .map(|(k, _)| k.as_str())
            .min()
            .unwrap_or(name);
        let default_alpha = name
            .split('.')
            .next()
            .and_then(|p| peft_alpha.get(p).copied());
        if m.dora_scale().is_none() {
            if let Some((up, down, used)) =
                m.low_rank().map_err(|e| module_error(spec, first_key, e))?
            {
                let s = m
                    .scale(Some(down.dim(0)?), default_alpha)
                    .map_err(|e| module_error(spec, first_key, e))?;
                let fits = up.dim(0)? == target.shape.first().copied().unwrap_or(0)
                    && down.dim(1)? == target.shape.iter().skip(1).product::<usize>();
                if !fits {
                    return Err(lora_error(
                        spec,
                        first_key,
                        format!(
                            "delta shape {:?} does not fit `{}` of shape {:?}",
                            [up.dim(0)?, down.dim(1)?],
                            target.param,
                            target.shape
                        ),
                    ));
                }
                let factor_bytes = 4 * (up.elem_count() as u64 + down.elem_count() as u64);
                ctx.charge(spec, first_key, factor_bytes, 0)?;
                unmatched.extend(m.unused_keys(&used));
                out.push((
                    target.clone(),
                    Term::LowRank {
                        up,
                        down,
                        scale: spec.scale_for(target.component) * s,
                    },
                ));
                continue;
            }
        }
        // Shapes first: nothing is multiplied until the result is known to fit its weight and
        // the budget (a 1 MB LoHa of [65536,1]×[1,65536] factors must not allocate 16 GB).
        let plan: Planned = m.planned().map_err(|e| module_error(spec, first_key, e))?;
        let target_elems = target.shape.iter().product::<usize>();
        if plan.elems != target_elems || plan.shape.first() != target.shape.first() {
            return Err(lora_error(
                spec,
                first_key,
                format!(
                    "its factors multiply out to shape {:?}, which does not fit `{}` of shape {:?}",
                    plan.shape, target.param, target.shape
                ),
            ));
        }
        let dora_extra = if m.dora_scale().is_some() {
            3 * target_elems
        } else {
            0
        };
        let transient = plan.total.saturating_add(dora_extra);
        if transient > intermediate_cap(target_elems) {
            return Err(lora_error(
                spec,
                first_key,
                format!(
                    "its factors would need {transient} intermediate elements for a delta of \
                     {target_elems} (shape {:?}); refusing a malformed or hostile module",
                    target.shape
                ),
            ));
        }
        ctx.charge(
            spec,
            first_key,
            4 * target_elems as u64,
            4 * (transient as u64).saturating_sub(target_elems as u64),
        )?;
        let (updown, rank, used) = m.updown().map_err(|e| match e {
            ModuleError::Malformed(r) => lora_error(spec, first_key, r),
            ModuleError::Shapes(r) => {
                lora_error(spec, first_key, format!("incompatible factor shapes: {r}"))
            }
        })?;
        let s = m.scale(rank, default_alpha).map_err(|e| match e {
            ModuleError::Malformed(r) | ModuleError::Shapes(r) => lora_error(spec, first_key, r),
        })?;
        unmatched.extend(m.unused_keys(&used));
        let fits = updown.elem_count() == target.shape.iter().product::<usize>()
            && updown.dim(0).ok() == target.shape.first().copied();
        if !fits {
            return Err(lora_error(
                spec,
                first_key,
                format!(
                    "delta shape {:?} does not fit `{}` of shape {:?}",
                    updown.dims(),
                    target.param,
                    target.shape
                ),
            ));
        }
        let mut delta = updown.reshape(target.shape.as_slice())?;
        if let Some(ds) = m.dora_scale() {
            let in_dim = target.shape.get(1).copied().unwrap_or(0);
            if ds.elem_count() != in_dim {
                return Err(lora_error(
                    spec,
                    first_key,
                    format!(
                        "dora_scale shape {:?} does not fit {:?}",
                        ds.dims(),
                        target.shape
                    ),
                ));
            }
            let i = slot(target.component);
            let vb = match ctx.base_vbs.get(&i) {
                Some(vb) => vb.clone(),
                None => {
                    let vb = ckpt.var_builder(target.component, DType::F32, &Device::Cpu)?;
                    ctx.base_vbs.insert(i, vb.clone());
                    vb
                }
            };
            let base = vb.get(target.shape.as_slice(), &target.param)?;
            delta = math::dora(&delta, &base, ds)?;
        }
        let delta = (delta * (spec.scale_for(target.component) * s))?;
        out.push((target.clone(), Term::Full(delta)));
    }
    if out.is_empty() {
        let sample: Vec<&str> = unmatched.iter().take(3).map(String::as_str).collect();
        return Err(PipelineError::ModelInvalid {
            path: spec.path.clone(),
            reason: format!(
                "LoRA `{}` matches no weight of this SDXL model ({} keys, e.g. {sample:?})",
                spec.name,
                lora.tensors.len()
            ),
        });
    }
    if !unmatched.is_empty() {
        unmatched.sort();
        ctx.warnings.push(format!(
            "LoRA `{}`: {} key(s) not applied: {}",
            spec.name,
            unmatched.len(),
            unmatched.join(", ")
        ));
    }
    Ok(out)
}
