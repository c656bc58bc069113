//! The model cache: turns a models.toml entry into a local, verified file path, downloading it on
//! first use. Several callers asking for the same file at once share one transfer (in-process
//! per-file gate plus a lock file against other processes on the same volume).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use sdxl_worker::{cache::ModelCache, download::TracingProgress, models::ModelsConfig};
//! let cfg = ModelsConfig::load(None)?;
//! let cache = ModelCache::new(&cfg)?;
//! let path = cache.ensure(cfg.default_checkpoint(), &TracingProgress::default()).await?;
//! # let _ = path; Ok(()) }
//! ```

use crate::download::{
    check_safetensors, sha256_file, DownloadError, DownloadOptions, DownloadProgress,
    DownloadRequest, Downloader, FileLock,
};
use crate::models::{
    AuthKind, CheckpointEntry, LoraEntry, ModelsConfig, Source, VaeEntry, DEFAULT_HF_FILE,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often a process waiting for another process's download polls the lock file.
const LOCK_POLL: Duration = Duration::from_millis(500);

/// Anything models.toml lists that the cache can provide.
pub trait CacheEntry: Send + Sync {
    /// The entry's name (messages, progress).
    fn name(&self) -> &str;
    /// Where it comes from.
    fn source(&self) -> &Source;
    /// File name inside the cache dir.
    fn filename(&self) -> &str;
    /// Expected sha256, lowercase hex.
    fn sha256(&self) -> Option<&str>;
    /// Credential policy.
    fn auth(&self) -> Option<AuthKind>;
}

macro_rules! impl_cache_entry {
    ($t:ty) => {
        impl CacheEntry for $t {
            fn name(&self) -> &str {
                &self.name
            }
            fn source(&self) -> &Source {
                &self.source
            }
            fn filename(&self) -> &str {
                &self.filename
            }
            fn sha256(&self) -> Option<&str> {
                self.sha256.as_deref()
            }
            fn auth(&self) -> Option<AuthKind> {
                self.auth
            }
        }
    };
}
impl_cache_entry!(CheckpointEntry);
impl_cache_entry!(LoraEntry);
impl_cache_entry!(VaeEntry);

/// A verified local model file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedFile {
    /// Local path (file, or a diffusers directory for `path =` entries).
    pub path: PathBuf,
    /// Size in bytes (0 for directories).
    pub bytes: u64,
}

/// The cache dir, the downloader and the per-file single-flight gates.
#[derive(Debug)]
pub struct ModelCache {
    dir: PathBuf,
    downloader: Downloader,
    gates: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

impl ModelCache {
    /// A cache in `cfg.cache_dir` with [`DownloadOptions::from_env`].
    pub fn new(cfg: &ModelsConfig) -> Result<Self, DownloadError> {
        Self::with_options(cfg.cache_dir.clone(), DownloadOptions::from_env())
    }

    /// A cache in `dir` with explicit options (tests shrink backoff delays here).
    pub fn with_options(dir: PathBuf, opts: DownloadOptions) -> Result<Self, DownloadError> {
        Ok(ModelCache {
            dir,
            downloader: Downloader::new(opts)?,
            gates: Mutex::new(HashMap::new()),
        })
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a URL entry lives once downloaded (inside the cache dir).
    pub fn cached_path(&self, entry: &dyn CacheEntry) -> PathBuf {
        self.dir.join(entry.filename())
    }

    /// Returns a local verified path, downloading on first use (one transfer when several
    /// callers ask at once). A cached file that fails verification is moved aside to
    /// `<file>.invalid` and reported as `MODEL_INVALID`; the next call downloads it again.
    pub async fn ensure(
        &self,
        entry: &dyn CacheEntry,
        progress: &dyn DownloadProgress,
    ) -> Result<PathBuf, DownloadError> {
        self.ensure_file(entry, progress).await.map(|f| f.path)
    }

    /// Like [`ensure`](Self::ensure) but also returns the size.
    pub async fn ensure_file(
        &self,
        entry: &dyn CacheEntry,
        progress: &dyn DownloadProgress,
    ) -> Result<CachedFile, DownloadError> {
        match entry.source() {
            Source::Path(p) => local_file(entry.name(), p).await,
            Source::Url(url) => self.ensure_url(entry, url, progress).await,
            Source::HuggingFace { repo, path } => {
                self.ensure_hf(entry, repo, path.as_deref().unwrap_or(DEFAULT_HF_FILE))
                    .await
            }
        }
    }

    fn gate(&self, key: &Path) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = match self.gates.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        gates.entry(key.to_path_buf()).or_default().clone()
    }

    async fn ensure_url(
        &self,
        entry: &dyn CacheEntry,
        url: &str,
        progress: &dyn DownloadProgress,
    ) -> Result<CachedFile, DownloadError> {
        let name = entry.name();
        let dest = self.cached_path(entry);
        let gate = self.gate(&dest);
        let _in_process = gate.lock().await;
        if dest.exists() {
            return verify_cached(entry, &dest).await;
        }
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(DownloadError::io(
                name,
                "cannot create cache dir",
                &self.dir,
            ))?;
        let lock_path = sibling(&dest, ".lock");
        let lock = FileLock::acquire(
            &lock_path,
            self.downloader.options().stale_lock_after,
            LOCK_POLL,
        )
        .await
        .map_err(DownloadError::io(
            name,
            "cannot create lock file",
            &lock_path,
        ))?;
        if dest.exists() {
            // Another process finished it while we waited for the lock.
            return verify_cached(entry, &dest).await;
        }
        let req = DownloadRequest {
            name,
            url,
            dest: &dest,
            sha256: entry.sha256(),
            auth: entry.auth(),
        };
        let done = self
            .downloader
            .download(&req, progress, Some(&lock))
            .await?;
        write_sha_sidecar(&dest, &done.sha256, done.bytes);
        Ok(CachedFile {
            path: done.path,
            bytes: done.bytes,
        })
    }

    async fn ensure_hf(
        &self,
        entry: &dyn CacheEntry,
        repo: &str,
        file: &str,
    ) -> Result<CachedFile, DownloadError> {
        let name = entry.name();
        let hf_err = |message: String| DownloadError::HuggingFace {
            name: name.to_string(),
            repo: repo.to_string(),
            path: file.to_string(),
            message,
        };
        let gate = self.gate(&self.dir.join("huggingface").join(repo).join(file));
        let _in_process = gate.lock().await;
        let cache = match std::env::var_os("HF_HOME") {
            Some(_) => hf_hub::Cache::from_env(),
            None => hf_hub::Cache::new(self.dir.join("huggingface").join("hub")),
        };
        let token = std::env::var("HF_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())
            .or_else(|| cache.token());
        let hf_secret = token.clone();
        let mut builder = hf_hub::api::tokio::ApiBuilder::from_cache(cache)
            .with_progress(false)
            .with_token(token);
        if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
            builder = builder.with_endpoint(endpoint);
        }
        let scrub = |m: String| match &hf_secret {
            Some(s) => m.replace(s.as_str(), "***"),
            None => m,
        };
        let api = builder.build().map_err(|e| hf_err(scrub(e.to_string())))?;
        tracing::info!(model = name, repo, file, "fetching from Hugging Face");
        let path = api
            .model(repo.to_string())
            .get(file)
            .await
            .map_err(|e| hf_err(scrub(e.to_string())))?;
        let bytes = check_file(name, &path).await?;
        Ok(CachedFile { path, bytes })
    }
}

/// A `path =` entry: a diffusers directory is used as is; a file must be valid safetensors.
/// Never moves or deletes the operator's file.
async fn local_file(name: &str, path: &Path) -> Result<CachedFile, DownloadError> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(|e| DownloadError::Invalid {
            name: name.to_string(),
            file: path.to_path_buf(),
            problem: format!("local model path cannot be read: {e}"),
        })?;
    if meta.is_dir() {
        return Ok(CachedFile {
            path: path.to_path_buf(),
            bytes: 0,
        });
    }
    let bytes = check_file(name, path).await?;
    Ok(CachedFile {
        path: path.to_path_buf(),
        bytes,
    })
}

/// Safetensors structure check off the async threads; returns the file size.
async fn check_file(name: &str, path: &Path) -> Result<u64, DownloadError> {
    let p = path.to_path_buf();
    let result = tokio::task::spawn_blocking(move || {
        check_safetensors(&p).map_err(|e| e.to_string())?;
        std::fs::metadata(&p)
            .map(|m| m.len())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    result.map_err(|problem| DownloadError::Invalid {
        name: name.to_string(),
        file: path.to_path_buf(),
        problem,
    })
}

/// Checks a file already in the cache dir; on failure moves it aside so a re-fetch can happen.
async fn verify_cached(entry: &dyn CacheEntry, dest: &Path) -> Result<CachedFile, DownloadError> {
    let name = entry.name();
    let bytes = match check_file(name, dest).await {
        Ok(b) => b,
        Err(DownloadError::Invalid { problem, .. }) => {
            let aside = move_aside(dest);
            return Err(DownloadError::Invalid {
                name: name.to_string(),
                file: dest.to_path_buf(),
                problem: format!("cached file is corrupt ({problem}); {aside}"),
            });
        }
        Err(e) => return Err(e),
    };
    if let Some(expected) = entry.sha256() {
        let got = cached_sha256(dest, bytes, true)
            .await
            .map_err(DownloadError::io(name, "cannot hash", dest))?;
        if !got.eq_ignore_ascii_case(expected) {
            let aside = move_aside(dest);
            tracing::warn!(model = name, file = %dest.display(), "cached file has the wrong sha256; {aside}");
            return Err(DownloadError::ShaMismatch {
                name: name.to_string(),
                file: dest.to_path_buf(),
                expected: expected.to_string(),
                got,
            });
        }
    }
    Ok(CachedFile {
        path: dest.to_path_buf(),
        bytes,
    })
}

/// Renames a bad cached file to `<file>.invalid` (or deletes it) and says which.
fn move_aside(dest: &Path) -> String {
    let _ = std::fs::remove_file(sibling(dest, ".sha256"));
    let aside = sibling(dest, ".invalid");
    match std::fs::rename(dest, &aside) {
        Ok(()) => format!(
            "moved aside to {}; it will be downloaded again",
            aside.display()
        ),
        Err(_) => match std::fs::remove_file(dest) {
            Ok(()) => "deleted; it will be downloaded again".to_string(),
            Err(e) => format!("could not remove it ({e}); delete it by hand"),
        },
    }
}

/// `<path><suffix>`, e.g. `model.safetensors.lock`.
pub(crate) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Records a verified download's sha256 as `<file>.sha256` (`<hex> <size>`), so later checks
/// and `fetch` need not re-read a multi-GB file.
fn write_sha_sidecar(dest: &Path, sha: &str, bytes: u64) {
    let side = sibling(dest, ".sha256");
    if let Err(e) = std::fs::write(&side, format!("{sha} {bytes}\n")) {
        tracing::warn!(file = %side.display(), error = %e, "cannot write sha256 sidecar");
    }
}

/// The file's sha256: from the `<file>.sha256` sidecar when it matches the size, else computed
/// (and recorded in a sidecar when `record`; never pass `true` for an operator's `path =` file).
pub async fn cached_sha256(path: &Path, bytes: u64, record: bool) -> std::io::Result<String> {
    let side = sibling(path, ".sha256");
    if let Ok(text) = tokio::fs::read_to_string(&side).await {
        let mut it = text.split_whitespace();
        if let (Some(sha), Some(size)) = (it.next(), it.next()) {
            if size.parse::<u64>().ok() == Some(bytes)
                && sha.len() == 64
                && sha.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Ok(sha.to_ascii_lowercase());
            }
        }
    }
    let p = path.to_path_buf();
    let sha = tokio::task::spawn_blocking(move || sha256_file(&p))
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
    if record {
        write_sha_sidecar(path, &sha, bytes);
    }
    Ok(sha)
}
