//! `sdxl-worker render`: renders images locally and writes them with A1111 infotext.
//!
//! The job fields come from the flags (or `--json FILE`, flags winning) and go through the same
//! validation as RunPod jobs. `--checkpoint`, `--lora` and `--vae` also accept paths: a path
//! checkpoint gets no default LoRAs and no `[vae]` override (models.toml's defaults belong to
//! models.toml's checkpoints).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use sdxl_pipeline::checkpoint::{Checkpoint, VaeOverride};
use sdxl_pipeline::lora::{LoraSet, LoraSpec};
use sdxl_pipeline::output::encode_image;
use sdxl_pipeline::pipeline::{LoadOptions, SdxlModel, StepProgress};
use sdxl_pipeline::sampling::Prediction;
use serde_json::{Map, Value};

use crate::cli::RenderArgs;
use crate::handler::{catalog_from, pipeline_catalog, source_for};
use crate::job::{self, ValidatedJob};
use crate::models::{self, ModelsConfig};
use crate::store::ModelStore;

/// Renders images locally as described by the flags.
pub fn run(args: &RenderArgs, models_toml: Option<&Path>) -> anyhow::Result<ExitCode> {
    let input = job_input(args)?;
    let device = sdxl_pipeline::device::parse_device(&args.device)?;
    let dtype = match &args.dtype {
        Some(d) => sdxl_pipeline::device::parse_dtype(d)?,
        None if device.is_cuda() => candle_core::DType::F16,
        None => candle_core::DType::F32,
    };
    let store = load_store(models_toml, args.checkpoint.as_deref())?;
    let target = resolve_checkpoint(args, store.as_ref())?;

    // Validate every job field like a RunPod job; checkpoint/LoRAs are resolved here instead.
    let mut catalog = store
        .as_ref()
        .map(|s| catalog_from(s.config()))
        .unwrap_or_else(pipeline_catalog);
    if !target.from_models_toml {
        catalog.default_loras.clear();
    }
    let mut fields = input;
    fields.remove("checkpoint");
    let job_loras = fields.remove("loras");
    if job_loras.is_some() && !args.loras.is_empty() {
        bail!("give LoRAs either with --lora or in the job JSON, not both");
    }
    let job = job::validate(&Value::Object(fields), &catalog)
        .map_err(|e| anyhow::anyhow!("{} [{}]", e.message, e.code.as_str()))?;
    for w in &job.warnings {
        eprintln!("warning: {w}");
    }
    let lora_specs = if !args.loras.is_empty() {
        args.loras
            .iter()
            .map(|spec| lora_from_flag(spec, store.as_ref()))
            .collect::<anyhow::Result<Vec<_>>>()?
    } else {
        let named = match job_loras {
            Some(v) => {
                job::validate(&serde_json::json!({"prompt": "", "loras": v}), &catalog)
                    .map_err(|e| anyhow::anyhow!("{} [{}]", e.message, e.code.as_str()))?
                    .loras
            }
            None => job.loras.clone(),
        };
        named
            .iter()
            .map(|l| lora_from_catalog(&l.name, l.scale, store.as_ref()))
            .collect::<anyhow::Result<Vec<_>>>()?
    };

    let vae = vae_override(args, store.as_ref(), target.from_models_toml)?;
    let checkpoint = Arc::new(Checkpoint::open_with_vae(&target.source, vae.as_ref())?);
    let (loras, lora_warnings) = LoraSet::load(&lora_specs, &checkpoint)?;
    for w in &lora_warnings {
        eprintln!("warning: {w}");
    }
    let options = LoadOptions {
        dtype,
        device,
        prediction: target.prediction,
    };
    eprintln!("loading {} ...", target.label);
    let model = SdxlModel::load_with_loras(checkpoint, options, &loras)?;
    let job = ValidatedJob {
        checkpoint: Some(target.label.clone()),
        loras: lora_specs
            .iter()
            .map(|l| crate::handler::LoraSpec {
                name: l.name.clone(),
                scale: l.scale,
            })
            .collect(),
        ..job
    };
    render_and_write(&model, &job, &args.out)?;
    Ok(ExitCode::SUCCESS)
}

fn render_and_write(model: &SdxlModel, job: &ValidatedJob, out: &Path) -> anyhow::Result<()> {
    let total = u64::from(job.request.steps) * u64::from(job.request.batch_size);
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} steps  {elapsed_precise} (eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let cancel = AtomicBool::new(false);
    let mut on_step = |p: StepProgress| {
        bar.set_length(u64::from(p.total));
        bar.set_position(u64::from(p.done));
    };
    let result = model.txt2img(&job.request, &mut on_step, &cancel);
    bar.finish_and_clear();
    let out_imgs = result?;
    for w in &out_imgs.warnings {
        eprintln!("warning: {w}");
    }
    let n = out_imgs.images.len();
    for (i, (img, seed)) in out_imgs.images.iter().zip(&out_imgs.seeds).enumerate() {
        let info = job.infotext(i as u32);
        let bytes = encode_image(img, job.output_format, Some(&info))?;
        let path = output_path(out, i, n);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {} (seed {seed})", path.display());
    }
    let t = out_imgs.timings;
    eprintln!(
        "encode {:.0} ms, denoise {:.0} ms, decode {:.0} ms",
        t.encode_ms, t.denoise_ms, t.decode_ms
    );
    Ok(())
}

/// `a.png` for a single image; `a-0.png`, `a-1.png`, ... for a batch.
pub fn output_path(out: &Path, index: usize, count: usize) -> PathBuf {
    if count <= 1 {
        return out.to_path_buf();
    }
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let name = match out.extension() {
        Some(ext) => format!("{stem}-{index}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{index}"),
    };
    out.with_file_name(name)
}

/// The job `input` object: `--json FILE` (the `input` object or a whole `{"input": ...}` job),
/// overridden by every flag that was given.
fn job_input(args: &RenderArgs) -> anyhow::Result<Map<String, Value>> {
    let mut input = match &args.json {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let value: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", path.display()))?;
            let value = match value {
                Value::Object(mut o) if o.get("input").is_some_and(Value::is_object) => {
                    o.remove("input").unwrap_or(Value::Null)
                }
                v => v,
            };
            match value {
                Value::Object(o) => o,
                _ => bail!("{}: the job must be a JSON object", path.display()),
            }
        }
        None => Map::new(),
    };
    let mut set = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            input.insert(k.to_string(), v);
        }
    };
    set("prompt", args.prompt.clone().map(Value::from));
    set(
        "negative_prompt",
        args.negative_prompt.clone().map(Value::from),
    );
    set("steps", args.steps.map(Value::from));
    set("cfg_scale", args.cfg_scale.map(Value::from));
    set("sampler_name", args.sampler.clone().map(Value::from));
    set("scheduler", args.scheduler.clone().map(Value::from));
    set("seed", args.seed.map(Value::from));
    set("width", args.width.map(Value::from));
    set("height", args.height.map(Value::from));
    set("batch_size", args.batch_size.map(Value::from));
    set("clip_skip", args.clip_skip.map(Value::from));
    set("prompt_mode", args.prompt_mode.clone().map(Value::from));
    set("output_format", args.output_format.clone().map(Value::from));
    set("quality", args.quality.map(Value::from));
    if !input.contains_key("prompt") {
        bail!("--prompt is required (or a job file with --json)");
    }
    Ok(input)
}

/// The checkpoint to render with.
struct Target {
    source: sdxl_pipeline::checkpoint::ModelSource,
    label: String,
    prediction: Prediction,
    from_models_toml: bool,
}

/// models.toml is needed unless the checkpoint is given as a path.
fn load_store(
    models_toml: Option<&Path>,
    checkpoint: Option<&str>,
) -> anyhow::Result<Option<ModelStore>> {
    let is_path = checkpoint.is_some_and(|c| Path::new(c).exists());
    match ModelsConfig::load(models_toml) {
        Ok(cfg) => Ok(Some(ModelStore::new(cfg)?)),
        Err(_) if is_path => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn resolve_checkpoint(args: &RenderArgs, store: Option<&ModelStore>) -> anyhow::Result<Target> {
    if let Some(spec) = args.checkpoint.as_deref() {
        if let Some(entry) = store.and_then(|s| s.config().checkpoint(spec)) {
            return fetch_entry(store, entry, args.config.as_deref());
        }
        let path = Path::new(spec);
        if !path.exists() {
            bail!("--checkpoint {spec:?} is neither a models.toml checkpoint nor an existing file or directory");
        }
        let label = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| spec.to_string());
        return Ok(Target {
            source: source_for(path, args.config.as_deref()),
            label,
            prediction: Prediction::Epsilon,
            from_models_toml: false,
        });
    }
    let Some(s) = store else {
        bail!("no --checkpoint given and no models.toml found");
    };
    let entry = s.config().default_checkpoint();
    fetch_entry(store, entry, args.config.as_deref())
}

fn fetch_entry(
    store: Option<&ModelStore>,
    entry: &models::CheckpointEntry,
    config_override: Option<&Path>,
) -> anyhow::Result<Target> {
    let Some(store) = store else {
        bail!("models.toml is not available");
    };
    eprintln!("fetching {} (first use downloads it) ...", entry.name);
    let path = store
        .fetch(entry, None)
        .map_err(|e| anyhow::anyhow!("{e} [{}]", e.code()))?;
    Ok(Target {
        source: source_for(&path, config_override.or(entry.config.as_deref())),
        label: entry.name.clone(),
        prediction: match entry.prediction {
            models::Prediction::Epsilon => Prediction::Epsilon,
            models::Prediction::VPrediction => Prediction::V,
        },
        from_models_toml: true,
    })
}

/// `--vae PATH`, else models.toml's `[vae]` for a models.toml checkpoint (fetched on first use).
fn vae_override(
    args: &RenderArgs,
    store: Option<&ModelStore>,
    from_models_toml: bool,
) -> anyhow::Result<Option<VaeOverride>> {
    if let Some(path) = &args.vae {
        if !path.is_file() {
            bail!("--vae {}: no such file", path.display());
        }
        return Ok(Some(VaeOverride {
            path: path.clone(),
            fp16_safe: !args.vae_upcast,
        }));
    }
    match store {
        Some(store) if from_models_toml => store
            .vae_override()
            .map_err(|e| anyhow::anyhow!("{e} [{}]", e.code())),
        _ => Ok(None),
    }
}

/// `--lora NAME_OR_PATH[:SCALE]`: a models.toml LoRA name (default scale from models.toml) or a
/// `.safetensors` path (default scale 1).
fn lora_from_flag(spec: &str, store: Option<&ModelStore>) -> anyhow::Result<LoraSpec> {
    let (target, scale) = match spec.rsplit_once(':') {
        Some((head, tail)) if !head.is_empty() => match tail.trim().parse::<f64>() {
            Ok(v) if v.is_finite() => (head, Some(v)),
            Ok(_) => bail!("--lora {spec:?}: the scale must be a finite number"),
            Err(_) => (spec, None),
        },
        _ => (spec, None),
    };
    if let Some(entry) = store.and_then(|s| s.config().lora(target)) {
        return lora_from_catalog(&entry.name, scale.unwrap_or(entry.scale), store);
    }
    let path = Path::new(target);
    if !path.is_file() {
        bail!("--lora {spec:?}: {target:?} is neither a models.toml LoRA nor an existing file");
    }
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| target.to_string());
    Ok(LoraSpec {
        path: path.to_path_buf(),
        name,
        scale: scale.unwrap_or(1.0),
    })
}

/// A models.toml LoRA, fetched on first use.
fn lora_from_catalog(
    name: &str,
    scale: f64,
    store: Option<&ModelStore>,
) -> anyhow::Result<LoraSpec> {
    let Some(store) = store else {
        bail!("LoRA {name:?}: models.toml is not available");
    };
    let entry = store.config().require_lora(name)?;
    eprintln!("fetching LoRA {} (first use downloads it) ...", entry.name);
    let path = store
        .fetch(entry, None)
        .map_err(|e| anyhow::anyhow!("{e} [{}]", e.code()))?;
    Ok(LoraSpec {
        path,
        name: entry.name.clone(),
        scale,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_outputs_are_numbered() {
        let out = Path::new("dir/a.png");
        assert_eq!(output_path(out, 0, 1), PathBuf::from("dir/a.png"));
        assert_eq!(output_path(out, 1, 3), PathBuf::from("dir/a-1.png"));
        assert_eq!(output_path(Path::new("x"), 2, 3), PathBuf::from("x-2"));
    }
}
