//! `sdxl-worker fetch`: downloads everything models.toml lists into the cache, then prints the
//! name, path, size and sha256 of each. Continues past failures and exits non-zero if any.

use crate::cache::{cached_sha256, CacheEntry, ModelCache};
use crate::download::{DownloadError, DownloadProgress};
use crate::models::{ModelsConfig, Source};
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Mutex;

/// Downloads everything in models.toml into the cache and prints what is where.
pub fn run_cli(models_toml: Option<&Path>) -> anyhow::Result<ExitCode> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let cfg = ModelsConfig::load(models_toml)?;
    let cache = ModelCache::new(&cfg).context("cannot set up the model cache")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    eprintln!("cache dir: {}", cache.dir().display());
    let failures = runtime.block_on(fetch_all(&cfg, &cache));
    if failures == 0 {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{failures} model(s) could not be fetched");
        Ok(ExitCode::FAILURE)
    }
}

/// Every entry of the config, checkpoints first.
pub fn all_entries(cfg: &ModelsConfig) -> Vec<&dyn CacheEntry> {
    let mut out: Vec<&dyn CacheEntry> = Vec::new();
    out.extend(cfg.checkpoints.iter().map(|c| c as &dyn CacheEntry));
    out.extend(cfg.loras.iter().map(|l| l as &dyn CacheEntry));
    if let Some(v) = &cfg.vae {
        out.push(v);
    }
    out.extend(cfg.embeddings.iter().map(|e| e as &dyn CacheEntry));
    out
}

/// Fetches every entry, printing one line per success and per failure; returns the failure count.
pub async fn fetch_all(cfg: &ModelsConfig, cache: &ModelCache) -> usize {
    let mut failures = 0;
    for entry in all_entries(cfg) {
        let bar = BarProgress::default();
        let result = fetch_one(cache, entry, &bar).await;
        bar.clear();
        match result {
            Ok(line) => println!("{line}"),
            Err(e) => {
                failures += 1;
                eprintln!("FAILED {}: [{}] {e}", entry.name(), e.code());
            }
        }
    }
    failures
}

async fn fetch_one(
    cache: &ModelCache,
    entry: &dyn CacheEntry,
    progress: &dyn DownloadProgress,
) -> Result<String, DownloadError> {
    let file = cache.ensure_file(entry, progress).await?;
    let sha = if file.path.is_file() {
        let in_cache = matches!(entry.source(), Source::Url(_));
        cached_sha256(&file.path, file.bytes, in_cache)
            .await
            .map_err(DownloadError::io(entry.name(), "cannot hash", &file.path))?
    } else {
        "-".to_string()
    };
    Ok(format!(
        "{}\t{}\t{}\t{}",
        entry.name(),
        file.path.display(),
        file.bytes,
        sha
    ))
}

/// An indicatif bar on stderr.
#[derive(Debug, Default)]
struct BarProgress {
    bar: Mutex<Option<ProgressBar>>,
}

impl BarProgress {
    fn clear(&self) {
        if let Ok(mut b) = self.bar.lock() {
            if let Some(bar) = b.take() {
                bar.finish_and_clear();
            }
        }
    }
}

impl DownloadProgress for BarProgress {
    fn started(&self, name: &str, total: Option<u64>, resumed_from: u64) {
        let bar = match total {
            Some(t) => ProgressBar::new(t),
            None => ProgressBar::no_length(),
        };
        let style = ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(name.to_string());
        bar.set_position(resumed_from);
        bar.reset_eta();
        if let Ok(mut b) = self.bar.lock() {
            if let Some(old) = b.replace(bar) {
                old.finish_and_clear();
            }
        }
    }

    fn advanced(&self, _name: &str, downloaded: u64, total: Option<u64>) {
        if let Ok(b) = self.bar.lock() {
            if let Some(bar) = b.as_ref() {
                if let Some(t) = total {
                    bar.set_length(t);
                }
                bar.set_position(downloaded);
            }
        }
    }

    fn finished(&self, _name: &str, _path: &Path, _bytes: u64) {
        self.clear();
    }
}
