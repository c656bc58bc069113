//! `models.toml`: the typed list of checkpoints, LoRAs and the optional VAE override (SPEC §9).
//!
//! Every problem is reported with the file, the entry and what is wrong, e.g.
//! `models.toml: checkpoints[1] "Foo": url "ftp://x" must be an http(s) URL`.

use crate::error::{ErrorCode, WorkerError};
use reqwest::Url;
use serde::Deserialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Env var naming the models.toml file.
pub const MODELS_TOML_ENV: &str = "SDXL_MODELS_TOML";
/// Env var that overrides `cache_dir`.
pub const CACHE_DIR_ENV: &str = "SDXL_CACHE_DIR";
/// File name used when neither a path nor `SDXL_MODELS_TOML` is given.
pub const DEFAULT_MODELS_TOML: &str = "models.toml";
/// File fetched from a `hf:owner/repo` source that names no path (diffusers VAE/UNet weights).
pub const DEFAULT_HF_FILE: &str = "diffusion_pytorch_model.safetensors";

/// A models.toml problem, naming the file, the entry and the problem.
#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The models.toml path.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML does not parse or does not match the schema (unknown key, wrong type, ...).
    #[error("{file}: {message}")]
    Syntax {
        /// The models.toml path.
        file: PathBuf,
        /// The parser's message (includes the line).
        message: String,
    },
    /// An entry is semantically wrong.
    #[error("{file}: {entry}: {problem}")]
    Invalid {
        /// The models.toml path.
        file: PathBuf,
        /// Which entry, e.g. `checkpoints[0] "Jib Mix"`.
        entry: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A job asked for a name the config does not list.
    #[error("unknown {kind} {name:?}; known: {known}")]
    UnknownModel {
        /// `checkpoint` or `lora`.
        kind: &'static str,
        /// The requested name.
        name: String,
        /// Comma-separated known names.
        known: String,
    },
}

impl ModelsError {
    /// The SPEC §4 error code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ModelsError::UnknownModel { .. } => ErrorCode::UnknownModel,
            _ => ErrorCode::ModelInvalid,
        }
    }
}

impl From<ModelsError> for WorkerError {
    fn from(e: ModelsError) -> Self {
        match e {
            ModelsError::UnknownModel { .. } => WorkerError::UnknownModel(e.to_string()),
            _ => WorkerError::ModelInvalid(e.to_string()),
        }
    }
}

/// Where a model file comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// An http(s) URL, downloaded into the cache dir.
    Url(String),
    /// A local file (or diffusers directory), used in place.
    Path(PathBuf),
    /// `hf:owner/repo[/path]`, fetched through hf-hub.
    HuggingFace {
        /// `owner/repo`.
        repo: String,
        /// File inside the repo (None ⇒ [`DEFAULT_HF_FILE`]).
        path: Option<String>,
    },
}

/// What the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    /// Noise prediction (SDXL base and most fine-tunes).
    #[default]
    Epsilon,
    /// v-prediction.
    VPrediction,
}

/// Which credentials an entry's download may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    /// Send `CIVITAI_API_KEY` as `Authorization: Bearer` to the entry's own host (mirrors, tests).
    Civitai,
    /// Never send credentials, even to civitai.com.
    None,
}

/// A `[[checkpoints]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointEntry {
    /// Name jobs use to select it.
    pub name: String,
    /// Used when a job names no checkpoint.
    pub default: bool,
    /// Where it comes from.
    pub source: Source,
    /// File name inside the cache dir (a plain name, no directories).
    pub filename: String,
    /// Expected lowercase hex sha256, verified when given.
    pub sha256: Option<String>,
    /// Epsilon or v-prediction.
    pub prediction: Prediction,
    /// Diffusers directory whose configs describe a non-standard architecture.
    pub config: Option<PathBuf>,
    /// Credential policy override.
    pub auth: Option<AuthKind>,
}

/// A `[[loras]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraEntry {
    /// Name jobs use to select it.
    pub name: String,
    /// Where it comes from.
    pub source: Source,
    /// File name inside the cache dir.
    pub filename: String,
    /// Expected lowercase hex sha256.
    pub sha256: Option<String>,
    /// Default scale (applied to every job that sends no `loras`).
    pub scale: f64,
    /// Credential policy override.
    pub auth: Option<AuthKind>,
}

/// An `[[embeddings]]` entry: an SDXL textual-inversion file (`clip_l` + `clip_g`) that prompts
/// use by its name (SPEC §5a).
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingEntry {
    /// The word that triggers it in prompts.
    pub name: String,
    /// Where it comes from.
    pub source: Source,
    /// File name inside the cache dir.
    pub filename: String,
    /// Expected lowercase hex sha256.
    pub sha256: Option<String>,
    /// Credential policy override.
    pub auth: Option<AuthKind>,
}

/// The optional `[vae]` override.
#[derive(Debug, Clone, PartialEq)]
pub struct VaeEntry {
    /// Display name (always `vae`).
    pub name: String,
    /// Where it comes from.
    pub source: Source,
    /// File name inside the cache dir.
    pub filename: String,
    /// Expected lowercase hex sha256.
    pub sha256: Option<String>,
    /// Credential policy override.
    pub auth: Option<AuthKind>,
    /// The VAE does not overflow in fp16 (`fp16_safe`, default true: the usual override is the
    /// fp16-fix VAE), so f16 models decode in f16 instead of upcasting to f32.
    pub fp16_safe: bool,
}

/// The whole models.toml.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelsConfig {
    /// Where downloads go.
    pub cache_dir: PathBuf,
    /// Checkpoints; exactly one is the default.
    pub checkpoints: Vec<CheckpointEntry>,
    /// LoRAs.
    pub loras: Vec<LoraEntry>,
    /// VAE override.
    pub vae: Option<VaeEntry>,
    /// Textual-inversion embeddings (`[[embeddings]]`), loaded with every checkpoint.
    pub embeddings: Vec<EmbeddingEntry>,
    /// The file this came from (for messages).
    pub origin: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    cache_dir: Option<PathBuf>,
    #[serde(default)]
    checkpoints: Vec<RawEntry>,
    #[serde(default)]
    loras: Vec<RawEntry>,
    vae: Option<RawEntry>,
    #[serde(default)]
    embeddings: Vec<RawEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: Option<String>,
    default: Option<bool>,
    url: Option<String>,
    path: Option<PathBuf>,
    source: Option<String>,
    filename: Option<String>,
    sha256: Option<String>,
    prediction: Option<Prediction>,
    config: Option<PathBuf>,
    scale: Option<f64>,
    auth: Option<AuthKind>,
    fp16_safe: Option<bool>,
}

/// Which table an entry is in; decides which keys are allowed.
#[derive(Clone, Copy, PartialEq)]
enum Table {
    Checkpoints,
    Loras,
    Vae,
    Embeddings,
}

struct EntryCtx<'a> {
    file: &'a Path,
    base: &'a Path,
    label: String,
}

impl EntryCtx<'_> {
    fn err(&self, problem: impl Into<String>) -> ModelsError {
        ModelsError::Invalid {
            file: self.file.to_path_buf(),
            entry: self.label.clone(),
            problem: problem.into(),
        }
    }
}

/// The fields every kind of entry shares, after validation.
struct Common {
    name: String,
    source: Source,
    filename: String,
    sha256: Option<String>,
    auth: Option<AuthKind>,
}

impl ModelsConfig {
    /// Loads `path`, else `$SDXL_MODELS_TOML`, else `./models.toml`; `$SDXL_CACHE_DIR` wins over
    /// the file's `cache_dir`.
    pub fn load(path: Option<&Path>) -> Result<Self, ModelsError> {
        let file = match path {
            Some(p) => p.to_path_buf(),
            None => std::env::var_os(MODELS_TOML_ENV)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_MODELS_TOML)),
        };
        let text = std::fs::read_to_string(&file).map_err(|source| ModelsError::Read {
            file: file.clone(),
            source,
        })?;
        let mut cfg = Self::from_toml_str(&text, &file)?;
        if let Some(dir) = std::env::var_os(CACHE_DIR_ENV).filter(|d| !d.is_empty()) {
            cfg.cache_dir = PathBuf::from(dir);
        }
        Ok(cfg)
    }

    /// Parses models.toml text; `origin` names the file in errors and anchors relative paths.
    /// Reads no environment except `HOME` for the default cache dir.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Self, ModelsError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| ModelsError::Syntax {
            file: origin.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let base = origin.parent().unwrap_or(Path::new("."));
        let cache_dir = match raw.cache_dir {
            Some(d) if d.as_os_str().is_empty() => default_cache_dir(),
            Some(d) => base.join(d),
            None => default_cache_dir(),
        };

        let file_err = |problem: &str| ModelsError::Invalid {
            file: origin.to_path_buf(),
            entry: "checkpoints".to_string(),
            problem: problem.to_string(),
        };
        if raw.checkpoints.is_empty() {
            return Err(file_err("no [[checkpoints]] entry; at least one is needed"));
        }

        let mut checkpoints = Vec::with_capacity(raw.checkpoints.len());
        for (i, e) in raw.checkpoints.into_iter().enumerate() {
            checkpoints.push(checkpoint_entry(e, i, origin, base)?);
        }
        check_unique(
            checkpoints.iter().map(|c| c.name.as_str()),
            "checkpoints",
            origin,
        )?;
        let defaults: Vec<&str> = checkpoints
            .iter()
            .filter(|c| c.default)
            .map(|c| c.name.as_str())
            .collect();
        match defaults.len() {
            0 if checkpoints.len() == 1 => {
                if let Some(only) = checkpoints.first_mut() {
                    only.default = true;
                }
            }
            0 => {
                return Err(file_err(
                    "no checkpoint has `default = true`; mark exactly one",
                ))
            }
            1 => {}
            _ => {
                return Err(file_err(&format!(
                    "{} checkpoints have `default = true` ({}); mark exactly one",
                    defaults.len(),
                    defaults.join(", ")
                )))
            }
        }

        let mut loras = Vec::with_capacity(raw.loras.len());
        for (i, e) in raw.loras.into_iter().enumerate() {
            loras.push(lora_entry(e, i, origin, base)?);
        }
        check_unique(loras.iter().map(|l| l.name.as_str()), "loras", origin)?;

        let vae = raw.vae.map(|e| vae_entry(e, origin, base)).transpose()?;

        let mut embeddings = Vec::with_capacity(raw.embeddings.len());
        for (i, e) in raw.embeddings.into_iter().enumerate() {
            embeddings.push(embedding_entry(e, i, origin, base)?);
        }
        check_unique(
            embeddings.iter().map(|e| e.name.as_str()),
            "embeddings",
            origin,
        )?;

        check_unique_filenames(&checkpoints, &loras, vae.as_ref(), origin)?;
        check_embedding_filenames(&checkpoints, &loras, vae.as_ref(), &embeddings, origin)?;

        Ok(ModelsConfig {
            cache_dir,
            checkpoints,
            loras,
            vae,
            embeddings,
            origin: origin.to_path_buf(),
        })
    }

    /// The checkpoint marked `default = true` (validation guarantees exactly one).
    ///
    /// # Panics
    /// Only for a config built by hand with no checkpoints; [`Self::from_toml_str`] rejects that.
    pub fn default_checkpoint(&self) -> &CheckpointEntry {
        // `from_toml_str` guarantees a non-empty list with exactly one default.
        let fallback = &self.checkpoints[0];
        self.checkpoints
            .iter()
            .find(|c| c.default)
            .unwrap_or(fallback)
    }

    /// The checkpoint called `name`.
    pub fn checkpoint(&self, name: &str) -> Option<&CheckpointEntry> {
        self.checkpoints.iter().find(|c| c.name == name)
    }

    /// The LoRA called `name`.
    pub fn lora(&self, name: &str) -> Option<&LoraEntry> {
        self.loras.iter().find(|l| l.name == name)
    }

    /// The embedding called `name`.
    pub fn embedding(&self, name: &str) -> Option<&EmbeddingEntry> {
        self.embeddings.iter().find(|e| e.name == name)
    }

    /// The checkpoint called `name`, or an `UNKNOWN_MODEL` error listing the known names.
    pub fn require_checkpoint(&self, name: &str) -> Result<&CheckpointEntry, ModelsError> {
        self.checkpoint(name)
            .ok_or_else(|| ModelsError::UnknownModel {
                kind: "checkpoint",
                name: name.to_string(),
                known: join_names(self.checkpoints.iter().map(|c| c.name.as_str())),
            })
    }

    /// The LoRA called `name`, or an `UNKNOWN_MODEL` error listing the known names.
    pub fn require_lora(&self, name: &str) -> Result<&LoraEntry, ModelsError> {
        self.lora(name).ok_or_else(|| ModelsError::UnknownModel {
            kind: "lora",
            name: name.to_string(),
            known: join_names(self.loras.iter().map(|l| l.name.as_str())),
        })
    }
}

fn join_names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = names.collect();
    if v.is_empty() {
        "(none)".to_string()
    } else {
        v.join(", ")
    }
}

/// `/runpod-volume/sdxl-models` when `/runpod-volume` exists, else `~/.cache/sdxl-worker`.
pub fn default_cache_dir() -> PathBuf {
    let volume = Path::new("/runpod-volume");
    if volume.is_dir() {
        return volume.join("sdxl-models");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join(".cache").join("sdxl-worker"),
        None => std::env::temp_dir().join("sdxl-worker-cache"),
    }
}

fn check_unique<'a>(
    names: impl Iterator<Item = &'a str>,
    table: &str,
    file: &Path,
) -> Result<(), ModelsError> {
    let mut seen = HashSet::new();
    for (i, name) in names.enumerate() {
        if !seen.insert(name) {
            return Err(ModelsError::Invalid {
                file: file.to_path_buf(),
                entry: format!("{table}[{i}] {name:?}"),
                problem: format!("duplicate name {name:?}; names in [[{table}]] must be unique"),
            });
        }
    }
    Ok(())
}

/// Two downloaded entries must not share a cache file.
fn check_unique_filenames(
    checkpoints: &[CheckpointEntry],
    loras: &[LoraEntry],
    vae: Option<&VaeEntry>,
    file: &Path,
) -> Result<(), ModelsError> {
    let mut seen: std::collections::HashMap<&str, String> = std::collections::HashMap::new();
    let downloaded = |s: &Source| matches!(s, Source::Url(_));
    let all = checkpoints
        .iter()
        .enumerate()
        .filter(|(_, c)| downloaded(&c.source))
        .map(|(i, c)| {
            (
                c.filename.as_str(),
                format!("checkpoints[{i}] {:?}", c.name),
            )
        })
        .chain(
            loras
                .iter()
                .enumerate()
                .filter(|(_, l)| downloaded(&l.source))
                .map(|(i, l)| (l.filename.as_str(), format!("loras[{i}] {:?}", l.name))),
        )
        .chain(
            vae.filter(|v| downloaded(&v.source))
                .map(|v| (v.filename.as_str(), "[vae]".to_string())),
        );
    for (filename, label) in all {
        if let Some(first) = seen.get(filename) {
            return Err(ModelsError::Invalid {
                file: file.to_path_buf(),
                entry: label,
                problem: format!(
                    "filename {filename:?} is already used by {first}; each download needs its own file name"
                ),
            });
        }
        seen.insert(filename, label);
    }
    Ok(())
}

fn checkpoint_entry(
    e: RawEntry,
    i: usize,
    file: &Path,
    base: &Path,
) -> Result<CheckpointEntry, ModelsError> {
    let ctx = ctx_for(&e, "checkpoints", i, file, base);
    reject_keys(&e, Table::Checkpoints, &ctx)?;
    let common = common_fields(&e, &ctx)?;
    Ok(CheckpointEntry {
        name: common.name,
        default: e.default.unwrap_or(false),
        source: common.source,
        filename: common.filename,
        sha256: common.sha256,
        prediction: e.prediction.unwrap_or_default(),
        config: e.config.map(|c| base.join(c)),
        auth: common.auth,
    })
}

fn lora_entry(e: RawEntry, i: usize, file: &Path, base: &Path) -> Result<LoraEntry, ModelsError> {
    let ctx = ctx_for(&e, "loras", i, file, base);
    reject_keys(&e, Table::Loras, &ctx)?;
    let common = common_fields(&e, &ctx)?;
    let scale = e.scale.unwrap_or(1.0);
    if !scale.is_finite() {
        return Err(ctx.err(format!("scale {scale} is not a finite number")));
    }
    Ok(LoraEntry {
        name: common.name,
        source: common.source,
        filename: common.filename,
        sha256: common.sha256,
        scale,
        auth: common.auth,
    })
}

fn embedding_entry(
    e: RawEntry,
    i: usize,
    file: &Path,
    base: &Path,
) -> Result<EmbeddingEntry, ModelsError> {
    let ctx = ctx_for(&e, "embeddings", i, file, base);
    reject_keys(&e, Table::Embeddings, &ctx)?;
    let common = common_fields(&e, &ctx)?;
    Ok(EmbeddingEntry {
        name: common.name,
        source: common.source,
        filename: common.filename,
        sha256: common.sha256,
        auth: common.auth,
    })
}

/// An embedding download must not share a cache file with any other download.
fn check_embedding_filenames(
    checkpoints: &[CheckpointEntry],
    loras: &[LoraEntry],
    vae: Option<&VaeEntry>,
    embeddings: &[EmbeddingEntry],
    file: &Path,
) -> Result<(), ModelsError> {
    let downloaded = |s: &Source| matches!(s, Source::Url(_));
    let others: Vec<&str> = checkpoints
        .iter()
        .filter(|c| downloaded(&c.source))
        .map(|c| c.filename.as_str())
        .chain(
            loras
                .iter()
                .filter(|l| downloaded(&l.source))
                .map(|l| l.filename.as_str()),
        )
        .chain(
            vae.filter(|v| downloaded(&v.source))
                .map(|v| v.filename.as_str()),
        )
        .collect();
    let mut seen: Vec<&str> = Vec::new();
    for (i, e) in embeddings.iter().enumerate() {
        if !downloaded(&e.source) {
            continue;
        }
        let f = e.filename.as_str();
        if others.contains(&f) || seen.contains(&f) {
            return Err(ModelsError::Invalid {
                file: file.to_path_buf(),
                entry: format!("embeddings[{i}] {:?}", e.name),
                problem: format!(
                    "filename {f:?} is already used by another entry; each download needs its own file name"
                ),
            });
        }
        seen.push(f);
    }
    Ok(())
}

fn vae_entry(mut e: RawEntry, file: &Path, base: &Path) -> Result<VaeEntry, ModelsError> {
    let name = e.name.take().unwrap_or_else(|| "vae".to_string());
    e.name = Some(name);
    let ctx = EntryCtx {
        file,
        base,
        label: "[vae]".to_string(),
    };
    reject_keys(&e, Table::Vae, &ctx)?;
    let common = common_fields(&e, &ctx)?;
    Ok(VaeEntry {
        name: common.name,
        source: common.source,
        filename: common.filename,
        sha256: common.sha256,
        auth: common.auth,
        fp16_safe: e.fp16_safe.unwrap_or(true),
    })
}

fn ctx_for<'a>(
    e: &RawEntry,
    table: &str,
    i: usize,
    file: &'a Path,
    base: &'a Path,
) -> EntryCtx<'a> {
    let label = match &e.name {
        Some(n) => format!("{table}[{i}] {n:?}"),
        None => format!("{table}[{i}]"),
    };
    EntryCtx { file, base, label }
}

/// Keys that parse for every entry kind but only mean something for some.
fn reject_keys(e: &RawEntry, table: Table, ctx: &EntryCtx) -> Result<(), ModelsError> {
    let mut bad = Vec::new();
    if table != Table::Checkpoints {
        if e.default.is_some() {
            bad.push("default");
        }
        if e.prediction.is_some() {
            bad.push("prediction");
        }
        if e.config.is_some() {
            bad.push("config");
        }
    }
    if table != Table::Loras && e.scale.is_some() {
        bad.push("scale");
    }
    if table != Table::Vae && e.fp16_safe.is_some() {
        bad.push("fp16_safe");
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(ctx.err(format!("unknown key(s) here: {}", bad.join(", "))))
    }
}

fn common_fields(e: &RawEntry, ctx: &EntryCtx) -> Result<Common, ModelsError> {
    let name = match e.name.as_deref().map(str::trim) {
        Some(n) if !n.is_empty() => n.to_string(),
        Some(_) => return Err(ctx.err("`name` is empty")),
        None => return Err(ctx.err("missing `name`")),
    };
    let given: Vec<&str> = [
        e.url.as_ref().map(|_| "url"),
        e.path.as_ref().map(|_| "path"),
        e.source.as_ref().map(|_| "source"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let source = match (given.as_slice(), &e.url, &e.path, &e.source) {
        (["url"], Some(url), _, _) => Source::Url(parse_url(url, ctx)?),
        (["path"], _, Some(p), _) => {
            if p.as_os_str().is_empty() {
                return Err(ctx.err("`path` is empty"));
            }
            Source::Path(ctx.base.join(p))
        }
        (["source"], _, _, Some(s)) => parse_source(s, ctx)?,
        ([], ..) => return Err(ctx.err("needs one of `url`, `path` or `source`")),
        _ => {
            return Err(ctx.err(format!(
                "gives both {}; use exactly one of `url`, `path` or `source`",
                given.join(" and ")
            )))
        }
    };
    let filename = match (&e.filename, &source) {
        (Some(f), _) => check_filename(f, ctx)?,
        (None, Source::Url(_)) => format!("{}.safetensors", slug(&name)),
        (None, Source::Path(p)) => p
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| slug(&name)),
        (None, Source::HuggingFace { path, .. }) => {
            let p = path.as_deref().unwrap_or(DEFAULT_HF_FILE);
            p.rsplit('/').next().unwrap_or(p).to_string()
        }
    };
    let sha256 = match e.sha256.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(h.to_ascii_lowercase())
        }
        Some(h) => {
            return Err(ctx.err(format!(
                "sha256 {h:?} is not 64 hex digits (leave it out or empty to skip the check)"
            )))
        }
    };
    Ok(Common {
        name,
        source,
        filename,
        sha256,
        auth: e.auth,
    })
}

fn parse_url(url: &str, ctx: &EntryCtx) -> Result<String, ModelsError> {
    let parsed = Url::parse(url.trim()).map_err(|e| ctx.err(format!("bad url: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ctx.err(format!(
            "bad url: scheme {:?} is not http or https",
            parsed.scheme()
        )));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(ctx.err("bad url: no host"));
    }
    Ok(parsed.to_string())
}

fn parse_source(s: &str, ctx: &EntryCtx) -> Result<Source, ModelsError> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix("hf:") {
        let mut parts = rest.splitn(3, '/');
        let owner = parts.next().unwrap_or("");
        let repo = parts.next().unwrap_or("");
        let path = parts.next().filter(|p| !p.is_empty());
        let ok = |p: &str| {
            !p.is_empty()
                && p != "."
                && p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if !ok(owner) || !ok(repo) {
            return Err(ctx.err(format!(
                "bad source {s:?}: expected hf:owner/repo or hf:owner/repo/path/in/repo"
            )));
        }
        if let Some(p) = path {
            if p.split('/').any(|seg| seg.is_empty() || seg == "..") {
                return Err(ctx.err(format!("bad source {s:?}: bad path inside the repo")));
            }
        }
        return Ok(Source::HuggingFace {
            repo: format!("{owner}/{repo}"),
            path: path.map(str::to_string),
        });
    }
    if s.starts_with("http://") || s.starts_with("https://") {
        return Ok(Source::Url(parse_url(s, ctx)?));
    }
    Err(ctx.err(format!(
        "bad source {s:?}: expected hf:owner/repo[/path] or an http(s) URL (use `path` for local files)"
    )))
}

/// A cache file name must be a plain name: no directories, no `..`, no hidden/temp suffixes.
fn check_filename(f: &str, ctx: &EntryCtx) -> Result<String, ModelsError> {
    let bad = f.is_empty()
        || f == "."
        || f == ".."
        || f.contains(['/', '\\', '\0'])
        || [".part", ".lock", ".sha256", ".invalid"]
            .iter()
            .any(|suffix| f.ends_with(suffix));
    if bad {
        return Err(ctx.err(format!(
            "filename {f:?} must be a plain file name (no directories, not .part/.lock/.sha256/.invalid)"
        )));
    }
    Ok(f.to_string())
}

/// Lowercase ASCII slug of a display name, used as a default file name.
fn slug(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    let trimmed = out.trim_matches('_');
    if trimmed.is_empty() {
        "model".to_string()
    } else {
        trimmed.to_string()
    }
}
