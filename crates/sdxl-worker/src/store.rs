//! Blocking access to models.toml entries for the GPU side: resolves an entry to a verified local
//! file, downloading it on first use through the async [`ModelCache`] on a private runtime.

use std::path::PathBuf;
use std::time::Duration;

use sdxl_pipeline::checkpoint::VaeOverride;

use crate::cache::{CacheEntry, ModelCache};
use crate::download::{DownloadError, DownloadProgress, TracingProgress};
use crate::error::WorkerError;
use crate::models::ModelsConfig;

/// models.toml plus its cache, usable from blocking (non-async) code.
pub struct ModelStore {
    config: ModelsConfig,
    cache: ModelCache,
    /// Always `Some` until dropped (taken out in `Drop`).
    runtime: Option<tokio::runtime::Runtime>,
}

impl ModelStore {
    /// Opens the cache of `config` (creating the cache dir when needed).
    pub fn new(config: ModelsConfig) -> Result<Self, WorkerError> {
        let cache = ModelCache::new(&config)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sdxl-fetch")
            .enable_all()
            .build()
            .map_err(|e| {
                WorkerError::Internal(format!("cannot start the download runtime: {e}"))
            })?;
        Ok(Self {
            config,
            cache,
            runtime: Some(runtime),
        })
    }

    /// The parsed models.toml.
    pub fn config(&self) -> &ModelsConfig {
        &self.config
    }

    /// A verified local path for `entry`, downloading it first if needed. Progress goes to the
    /// log (`tracing`) unless `progress` is given. Safe to call from any thread, including a
    /// blocking thread of another tokio runtime.
    pub fn fetch(
        &self,
        entry: &dyn CacheEntry,
        progress: Option<&dyn DownloadProgress>,
    ) -> Result<PathBuf, DownloadError> {
        let logged = TracingProgress::new(Duration::from_secs(2));
        let progress = progress.unwrap_or(&logged);
        let fut = self.cache.ensure(entry, progress);
        let Some(runtime) = &self.runtime else {
            return Err(DownloadError::Client(
                "the download runtime has stopped".into(),
            ));
        };
        std::thread::scope(|s| {
            s.spawn(|| runtime.block_on(fut))
                .join()
                .unwrap_or_else(|_| {
                    Err(DownloadError::Io {
                        name: entry.name().to_string(),
                        what: "downloading (the download thread panicked)",
                        file: self.cache.cached_path(entry),
                        source: std::io::Error::other("panic"),
                    })
                })
        })
    }

    /// The sha256 of `entry`'s local file `path` when known without reading it (models.toml, or
    /// the cache's verified-hash record); see [`ModelCache::known_sha256`].
    pub fn known_sha256(&self, entry: &dyn CacheEntry, path: &std::path::Path) -> Option<String> {
        self.cache.known_sha256(entry, path)
    }

    /// The models.toml `[vae]` override as a verified local file (downloaded on first use), or
    /// `None` when models.toml names no VAE.
    pub fn vae_override(&self) -> Result<Option<VaeOverride>, DownloadError> {
        let Some(entry) = &self.config.vae else {
            return Ok(None);
        };
        let path = self.fetch(entry, None)?;
        Ok(Some(VaeOverride {
            path,
            fp16_safe: entry.fp16_safe,
        }))
    }
}

impl Drop for ModelStore {
    /// The store may be dropped inside another runtime's async context (the serve loop owns the
    /// handler): a blocking runtime drop would panic there, so the download runtime is shut down
    /// in the background instead.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
