//! `sdxl-worker render`: renders images locally and writes them with A1111 infotext.
//!
//! The job fields come from the flags (or `--json FILE`, flags winning) and go through the same
//! validation as RunPod jobs. `--checkpoint`, `--lora` and `--vae` also accept paths: a path
//! checkpoint gets no default LoRAs and no `[vae]` override (models.toml's defaults belong to
//! models.toml's checkpoints).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use sdxl_pipeline::checkpoint::VaeOverride;
use serde_json::{Map, Value};

use crate::cli::RenderArgs;
use crate::error::WorkerError;
use crate::job;
use crate::runtime::{self, CliOverrides, Location, ModelRuntime, RenderPlan, ResolvedLora};
use crate::upload::{BlockingUploader, UploadItem};

/// Renders images locally as described by the flags.
pub fn run(args: &RenderArgs, models_toml: Option<&Path>) -> anyhow::Result<ExitCode> {
    let mut fields = job_input(args)?;
    // `--checkpoint` wins over the job file's `checkpoint`; either may name a path here.
    let job_checkpoint = fields.remove("checkpoint");
    let reference = match (&args.checkpoint, &job_checkpoint) {
        (Some(c), _) => Some(c.clone()),
        (None, Some(Value::String(c))) => Some(c.clone()),
        (None, None | Some(Value::Null)) => None,
        (None, Some(other)) => bail!(
            "`checkpoint` must be a string, got {}",
            job::describe(other)
        ),
    };
    let is_path = reference.as_deref().is_some_and(|c| Path::new(c).exists());
    let config = runtime::models_for_cli(models_toml, is_path).map_err(tagged)?;
    let (device, dtype) = runtime::choose_device(Some(&args.device), args.dtype.as_deref())?;
    let runtime = ModelRuntime::new(config, device, dtype)
        .map_err(tagged)?
        .with_budgets(crate::catalog::Budgets::from_env().map_err(tagged)?);

    let cli = CliOverrides {
        allow_paths: true,
        config_dir: args.config.clone(),
        vae: vae_flag(args)?,
    };
    let checkpoint = runtime
        .resolve_checkpoint(reference.as_deref(), &cli)
        .map_err(tagged)?;
    // A path checkpoint gets no default LoRAs (models.toml's defaults belong to its checkpoints).
    // `--upload` (or `"upload": true` in the job file) needs the `BUCKET_*` bucket.
    let uploader = if fields.get("upload") == Some(&Value::Bool(true)) {
        crate::delivery::uploader_from_env()?
    } else {
        None
    };
    let mut catalog = runtime.catalog().clone().with_uploads(uploader.is_some());
    if matches!(checkpoint.location, Location::Path(_)) {
        catalog.default_loras.clear();
    }
    if fields.contains_key("loras") && !args.loras.is_empty() {
        bail!("give LoRAs either with --lora or in the job JSON, not both");
    }
    let mut job = job::validate(&Value::Object(fields), &catalog).map_err(tagged)?;
    for w in &job.warnings {
        eprintln!("warning: {w}");
    }
    let mut loras = if args.loras.is_empty() {
        job.loras
            .iter()
            .map(|l| {
                runtime
                    .resolve_lora(&l.name, Some(l.scale), false)
                    .map(|r| r.with_te_scale(l.te_scale))
            })
            .collect::<Result<Vec<_>, _>>()
    } else {
        args.loras
            .iter()
            .map(|spec| lora_from_flag(&runtime, spec))
            .collect::<Result<Vec<_>, _>>()
    }
    .map_err(tagged)?;
    if !args.loras.is_empty() {
        // `--lora` stands for the `loras` field: the prompt's tags apply on top (SPEC §5a).
        for tag in &job.lora_tags {
            let spec = tag.spec();
            let r = runtime
                .resolve_lora(&spec.name, Some(spec.scale), false)
                .map_err(tagged)?
                .with_te_scale(spec.te_scale);
            match loras.iter_mut().find(|l| l.label == r.label) {
                Some(existing) => *existing = r,
                None => loras.push(r),
            }
        }
    }
    job.checkpoint = Some(checkpoint.label.clone());
    job.loras = runtime::lora_specs(&loras);
    job.warnings.clear(); // printed above

    eprintln!("loading {} (first use downloads it) ...", checkpoint.label);
    let plan = RenderPlan { checkpoint, loras };
    render_and_write(&runtime, &job, &plan, &args.out, uploader.as_deref())?;
    Ok(ExitCode::SUCCESS)
}

/// A worker error with its code, for the CLI.
fn tagged(e: crate::error::WorkerError) -> anyhow::Error {
    anyhow::anyhow!("{e} [{}]", e.code())
}

fn render_and_write(
    runtime: &ModelRuntime,
    job: &job::ValidatedJob,
    plan: &RenderPlan,
    out: &Path,
    uploader: Option<&BlockingUploader>,
) -> anyhow::Result<()> {
    let total = u64::from(job.request.steps) * u64::from(job.image_count());
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} steps  {elapsed_precise} (eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let cancel = AtomicBool::new(false);
    let on_step = |done: u32, total: u32| {
        bar.set_length(u64::from(total));
        bar.set_position(u64::from(done));
    };
    let result = runtime.render(job, plan, &on_step, &cancel);
    bar.finish_and_clear();
    let rendered = result.map_err(tagged)?;
    for w in &rendered.warnings {
        eprintln!("warning: {w}");
    }
    let n = rendered.images.len();
    if let (true, Some(uploader)) = (job.upload, uploader) {
        let job_id = crate::ids::new_job_id().replacen("test-", "render-", 1);
        let items: Vec<UploadItem> = rendered
            .images
            .iter()
            .map(|i| UploadItem::from_format(i.bytes.clone(), job.output_format))
            .collect();
        let urls = uploader
            .upload_images(&job_id, &items)
            .map_err(|e| tagged(WorkerError::UploadFailed(format!("uploading failed: {e}"))))?;
        for (url, image) in urls.iter().zip(&rendered.images) {
            println!("{url} (seed {})", image.seed);
        }
    }
    for (i, image) in rendered.images.iter().enumerate().filter(|_| !job.upload) {
        let path = output_path(out, i, n);
        std::fs::write(&path, &image.bytes)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {} (seed {})", path.display(), image.seed);
    }
    let t = rendered.timings;
    eprintln!(
        "load {} ms, encode {} ms, denoise {} ms, decode {} ms",
        t.load_ms, t.encode_ms, t.denoise_ms, t.decode_ms
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
    if let Ok(Value::Object(flags)) = serde_json::to_value(&args.job) {
        input.extend(flags);
    }
    if let Some(path) = &args.job.init_image {
        input.insert(
            "init_images".into(),
            crate::render_images::init_images_from_file(path)?,
        );
    }
    if let Some(path) = &args.job.mask {
        input.insert("mask".into(), crate::render_images::mask_from_file(path)?);
    }
    if !input.contains_key("prompt") {
        bail!("--prompt is required (or a job file with --json)");
    }
    Ok(input)
}

/// `--vae PATH [--vae-upcast]`.
fn vae_flag(args: &RenderArgs) -> anyhow::Result<Option<VaeOverride>> {
    let Some(path) = &args.vae else {
        return Ok(None);
    };
    if !path.is_file() {
        bail!("--vae {}: no such file", path.display());
    }
    Ok(Some(VaeOverride {
        path: path.clone(),
        fp16_safe: !args.vae_upcast,
    }))
}

/// `--lora NAME_OR_PATH[:SCALE]`: a models.toml LoRA name (default scale from models.toml) or a
/// `.safetensors` path (default scale 1).
fn lora_from_flag(
    runtime: &ModelRuntime,
    spec: &str,
) -> Result<ResolvedLora, crate::error::WorkerError> {
    let (target, scale) = match spec.rsplit_once(':') {
        Some((head, tail)) if !head.is_empty() => match tail.trim().parse::<f64>() {
            Ok(v) if v.is_finite() => (head, Some(v)),
            Ok(_) => {
                return Err(WorkerError::InvalidInput(format!(
                    "--lora {spec:?}: the scale must be a finite number"
                )))
            }
            Err(_) => (spec, None),
        },
        _ => (spec, None),
    };
    runtime.resolve_lora(target, scale, true)
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
