//! The model cache: turns a models.toml entry into a local, verified file path, downloading it on
//! first use. Several callers asking for the same file at once share one transfer (in-process
//! per-file gate plus an OS file lock, `flock`, against other processes on the same volume).
//!
//! A verified sha256 is recorded in a side file (`<file>.sha256` for downloads; under
//! `<cache>/.verified/` for `path =` and `hf:` files, which are not ours to write next to) that is
//! written atomically and keyed to the file's size, mtime and inode: a file changed in place no
//! longer matches its record and is hashed again on its next use.
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
    check_safetensors, sha256_file, write_atomic, DownloadError, DownloadOptions, DownloadProgress,
    DownloadRequest, Downloader, FileLock,
};
use crate::models::{
    AuthKind, CheckpointEntry, EmbeddingEntry, LoraEntry, ModelsConfig, Source, VaeEntry,
    DEFAULT_HF_FILE,
};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often a process waiting for another process's download retries the lock.
const LOCK_POLL: Duration = Duration::from_millis(200);

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
impl_cache_entry!(EmbeddingEntry);

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
            Source::Path(p) => self.local_file(entry, p).await,
            Source::Url(url) => self.ensure_url(entry, url, progress).await,
            Source::HuggingFace { repo, path } => {
                self.ensure_hf(entry, repo, path.as_deref().unwrap_or(DEFAULT_HF_FILE))
                    .await
            }
        }
    }

    /// The sha256 of `entry`'s file as far as it is known without reading the file: models.toml's
    /// `sha256`, else a valid verified-hash record of the cached file (downloads record theirs;
    /// `path =` and `hf:` files only when models.toml gave a sha256). `None` when unknown.
    pub fn known_sha256(&self, entry: &dyn CacheEntry, path: &Path) -> Option<String> {
        if let Some(sha) = entry.sha256() {
            return Some(sha.to_ascii_lowercase());
        }
        let meta = std::fs::metadata(path).ok()?;
        let record = match entry.source() {
            Source::Url(_) => sibling(path, ".sha256"),
            Source::Path(_) | Source::HuggingFace { .. } => foreign_record_path(&self.dir, path),
        };
        read_sha_record(&record, &meta)
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
            if let Some(done) = recorded_ok(entry, &dest) {
                return Ok(done);
            }
        }
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(DownloadError::io(
                name,
                "cannot create cache dir",
                &self.dir,
            ))?;
        // Verifying, moving aside and downloading all happen under the lock, so no process
        // moves aside a file another one has just put in place.
        let lock_path = sibling(&dest, ".lock");
        let lock = FileLock::acquire(&lock_path, LOCK_POLL)
            .await
            .map_err(DownloadError::io(name, "cannot lock", &lock_path))?;
        if dest.exists() {
            // Cached before, or another process finished it while we waited for the lock.
            return verify_cached(entry, &dest).await;
        }
        let req = DownloadRequest {
            name,
            url,
            dest: &dest,
            sha256: entry.sha256(),
            auth: entry.auth(),
        };
        let done = self.downloader.download(&req, progress, &lock).await?;
        write_sha_record(&sibling(&dest, ".sha256"), &dest, &done.sha256);
        drop(lock);
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
        self.check_foreign_sha(entry, &path).await?;
        Ok(CachedFile { path, bytes })
    }

    /// A `path =` entry: a diffusers directory is used as is (a `sha256` cannot be checked for
    /// a directory and is refused); a file must be valid safetensors and match `sha256` when
    /// given. Never moves or deletes the operator's file.
    async fn local_file(
        &self,
        entry: &dyn CacheEntry,
        path: &Path,
    ) -> Result<CachedFile, DownloadError> {
        let name = entry.name();
        let meta = tokio::fs::metadata(path)
            .await
            .map_err(|e| DownloadError::Invalid {
                name: name.to_string(),
                file: path.to_path_buf(),
                problem: format!("local model path cannot be read: {e}"),
            })?;
        if meta.is_dir() {
            if entry.sha256().is_some() {
                return Err(DownloadError::Invalid {
                    name: name.to_string(),
                    file: path.to_path_buf(),
                    problem: "models.toml gives a sha256 for a directory (a diffusers layout);                               a sha256 can only be checked for a single file: remove it"
                        .to_string(),
                });
            }
            return Ok(CachedFile {
                path: path.to_path_buf(),
                bytes: 0,
            });
        }
        let bytes = check_file(name, path).await?;
        self.check_foreign_sha(entry, path).await?;
        Ok(CachedFile {
            path: path.to_path_buf(),
            bytes,
        })
    }

    /// Checks `sha256` of a file the cache does not own (`path =`, `hf:`); the verified hash
    /// is recorded under `<cache>/.verified/`, never next to the file.
    async fn check_foreign_sha(
        &self,
        entry: &dyn CacheEntry,
        path: &Path,
    ) -> Result<(), DownloadError> {
        let Some(expected) = entry.sha256() else {
            return Ok(());
        };
        let name = entry.name();
        let record = foreign_record_path(&self.dir, path);
        let got = sha256_with_record(path, &record, true)
            .await
            .map_err(DownloadError::io(name, "cannot hash", path))?;
        if !got.eq_ignore_ascii_case(expected) {
            return Err(DownloadError::ShaMismatch {
                name: name.to_string(),
                file: path.to_path_buf(),
                expected: expected.to_string(),
                got,
            });
        }
        Ok(())
    }
}

/// `<cache>/.verified/<sha256 of the absolute path>.sha256`.
fn foreign_record_path(cache_dir: &Path, path: &Path) -> PathBuf {
    let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let key = hex::encode(Sha256::digest(abs.as_os_str().as_encoded_bytes()));
    cache_dir.join(".verified").join(format!("{key}.sha256"))
}

/// The fast path for a cached download: a valid record of a verified hash for exactly this
/// file (size, mtime, inode) that matches models.toml, or no sha256 to check and a sane header.
fn recorded_ok(entry: &dyn CacheEntry, dest: &Path) -> Option<CachedFile> {
    let meta = std::fs::metadata(dest).ok()?;
    if !meta.is_file() {
        return None;
    }
    match entry.sha256() {
        Some(expected) => {
            let sha = read_sha_record(&sibling(dest, ".sha256"), &meta)?;
            sha.eq_ignore_ascii_case(expected).then_some(())?;
        }
        None => check_safetensors(dest).ok()?,
    }
    Some(CachedFile {
        path: dest.to_path_buf(),
        bytes: meta.len(),
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
        let got = sha256_with_record(dest, &sibling(dest, ".sha256"), true)
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

/// What a verified-hash record says: `<sha256> <size> <mtime ns> <inode>`.
fn sha_record_line(sha: &str, meta: &std::fs::Metadata) -> String {
    let mtime_ns = meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128;
    format!("{sha} {} {mtime_ns} {}\n", meta.len(), meta.ino())
}

/// Records `file`'s verified sha256 in `record` (atomically), keyed to its current size, mtime
/// and inode, so later checks and `fetch` need not re-read a multi-GB file, and a file changed
/// in place is hashed again.
fn write_sha_record(record: &Path, file: &Path, sha: &str) {
    let Ok(meta) = std::fs::metadata(file) else {
        return;
    };
    if let Some(dir) = record.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = write_atomic(record, sha_record_line(sha, &meta).as_bytes()) {
        tracing::warn!(file = %record.display(), error = %e, "cannot write the sha256 record");
    }
}

/// The recorded sha256 when the record matches the file's current size, mtime and inode.
fn read_sha_record(record: &Path, meta: &std::fs::Metadata) -> Option<String> {
    let text = std::fs::read_to_string(record).ok()?;
    let sha = text.split_whitespace().next()?;
    let valid = sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit());
    (valid && text == sha_record_line(sha, meta)).then(|| sha.to_ascii_lowercase())
}

/// `path`'s sha256: from `record` when it matches the file exactly, else computed from the
/// file (and recorded when `save`).
async fn sha256_with_record(path: &Path, record: &Path, save: bool) -> std::io::Result<String> {
    let meta = tokio::fs::metadata(path).await?;
    if let Some(sha) = read_sha_record(record, &meta) {
        return Ok(sha);
    }
    let p = path.to_path_buf();
    let sha = tokio::task::spawn_blocking(move || sha256_file(&p))
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))??;
    // Record only if the file did not change while it was being read.
    if save
        && tokio::fs::metadata(path).await.is_ok_and(|m| {
            m.len() == meta.len()
                && m.mtime() == meta.mtime()
                && m.mtime_nsec() == meta.mtime_nsec()
        })
    {
        write_sha_record(record, path, &sha);
    }
    Ok(sha)
}

/// The file's sha256: from the `<file>.sha256` record when it matches the file's size, mtime
/// and inode, else computed (and recorded when `record`; never pass `true` for an operator's
/// `path =` file).
pub async fn cached_sha256(path: &Path, _bytes: u64, record: bool) -> std::io::Result<String> {
    sha256_with_record(path, &sibling(path, ".sha256"), record).await
}
