//! One resumable HTTP(S) download into `<dest>.part`, verified, then renamed onto `<dest>`.
//!
//! Only the holder of the download lock ([`FileLock`]) writes the `.part` file. Next to it,
//! `<dest>.part.meta` (written atomically) records which URL (as a sha256, never the URL itself:
//! it may carry a token), which strong `ETag` and which total size the partial bytes belong to.
//! A later holder adopts a leftover `.part` only when all three are known and the URL matches,
//! and resumes with `Range` + `If-Range: <etag>`, so a file that changed on the server starts
//! over instead of splicing old and new bytes. The sha256 that gates the rename is read back from
//! the finished file on disk, and must equal the hash of the bytes received (an adopted prefix
//! hashed from the file, the rest as this process wrote it); the length on disk is checked too.

use super::lock::FileLock;
use super::options::DownloadOptions;
use super::progress::DownloadProgress;
use super::redact::{redact_url, scrub, sends_key, withheld_for_plain_http};
use super::verify::{check_safetensors, plausible_prefix};
use super::DownloadError;
use crate::models::AuthKind;
use reqwest::header::{
    HeaderMap, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_RANGE, LOCATION, RANGE,
    RETRY_AFTER,
};
use reqwest::{StatusCode, Url};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncSeekExt, AsyncWriteExt, BufWriter};

/// Bytes of a non-model body quoted in errors.
const SNIPPET_BYTES: usize = 200;

/// What to download and where.
#[derive(Debug, Clone, Copy)]
pub struct DownloadRequest<'a> {
    /// Entry name (for messages and progress).
    pub name: &'a str,
    /// Source URL (may carry a secret in its query; never shown unredacted).
    pub url: &'a str,
    /// Final path; bytes go to `<dest>.part` first.
    pub dest: &'a Path,
    /// Expected lowercase hex sha256.
    pub sha256: Option<&'a str>,
    /// Credential policy of the entry.
    pub auth: Option<AuthKind>,
}

/// A finished, verified download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    /// Where the file now is.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Its lowercase hex sha256.
    pub sha256: String,
}

/// HTTP downloader: a reqwest client without automatic redirects plus [`DownloadOptions`].
#[derive(Debug, Clone)]
pub struct Downloader {
    client: reqwest::Client,
    opts: DownloadOptions,
}

/// The `.part` file being written and what is known about it.
struct Part {
    path: PathBuf,
    out: BufWriter<tokio::fs::File>,
    written: u64,
    hasher: Sha256,
    total: Option<u64>,
    validator: Option<String>,
    /// `<dest>.part.meta`.
    meta_path: PathBuf,
    /// sha256 of the source URL (what the meta file records instead of the URL).
    url_sha: String,
}

/// What `<dest>.part.meta` records about the bytes in `<dest>.part`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct PartMeta {
    /// sha256 (hex) of the URL the bytes came from.
    url_sha256: String,
    /// The server's strong ETag for them.
    etag: String,
    /// The full size the server announced.
    total: u64,
}

impl Part {
    /// Records (atomically: temp file + rename) what the partial bytes belong to, when the
    /// server gave a strong ETag and a size; otherwise removes any old record, so the part can
    /// only be resumed by this process.
    fn save_meta(&self) {
        let _ = std::fs::remove_file(&self.meta_path);
        let (Some(etag), Some(total)) = (&self.validator, self.total) else {
            return;
        };
        let meta = PartMeta {
            url_sha256: self.url_sha.clone(),
            etag: etag.clone(),
            total,
        };
        let Ok(text) = serde_json::to_string(&meta) else {
            return;
        };
        if let Err(e) = write_atomic(&self.meta_path, text.as_bytes()) {
            tracing::warn!(file = %self.meta_path.display(), error = %e, "cannot record partial download metadata; a later run will start over");
        }
    }

    async fn reset(&mut self, name: &str) -> Result<(), DownloadError> {
        let _ = std::fs::remove_file(&self.meta_path);
        let io = DownloadError::io(name, "cannot truncate", &self.path);
        self.out.flush().await.map_err(io)?;
        let f = self.out.get_mut();
        f.set_len(0)
            .await
            .map_err(DownloadError::io(name, "cannot truncate", &self.path))?;
        f.seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(DownloadError::io(name, "cannot seek", &self.path))?;
        self.written = 0;
        self.hasher = Sha256::new();
        self.total = None;
        self.validator = None;
        Ok(())
    }

    async fn write(&mut self, name: &str, bytes: &[u8]) -> Result<(), DownloadError> {
        self.out.write_all(bytes).await.map_err(DownloadError::io(
            name,
            "cannot write",
            &self.path,
        ))?;
        self.hasher.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    async fn flush(&mut self, name: &str) -> Result<(), DownloadError> {
        self.out
            .flush()
            .await
            .map_err(DownloadError::io(name, "cannot write", &self.path))
    }
}

/// How one attempt ended when it did not fail for good.
enum Attempt {
    Done,
    Retry {
        reason: String,
        retry_after: Option<Duration>,
        progressed: bool,
    },
}

impl Downloader {
    /// Builds the client (no automatic redirects: they are followed by hand so the API key
    /// never crosses hosts).
    pub fn new(opts: DownloadOptions) -> Result<Self, DownloadError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(opts.connect_timeout)
            .read_timeout(opts.read_timeout)
            .user_agent(concat!("sdxl-worker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| DownloadError::Client(e.without_url().to_string()))?;
        Ok(Downloader { client, opts })
    }

    /// The options in use.
    pub fn options(&self) -> &DownloadOptions {
        &self.opts
    }

    /// Downloads `req.url` to `req.dest`, resuming a `.part` whose recorded URL/ETag/size
    /// match, retrying transient failures, verifying size, sha256 (when given) and safetensors
    /// structure, then renaming atomically. On a verification failure the `.part` is deleted and
    /// nothing is at `dest`. `lock` is the held download lock for `dest`: only its holder may
    /// write the `.part` file.
    pub async fn download(
        &self,
        req: &DownloadRequest<'_>,
        progress: &dyn DownloadProgress,
        lock: &FileLock,
    ) -> Result<Downloaded, DownloadError> {
        tracing::debug!(model = req.name, lock = %lock.path().display(), "holding the download lock");
        let result = self.download_inner(req, progress).await;
        if result.is_err() {
            // Keep a partial file for resuming, but not an empty one.
            let part = part_path(req.dest);
            if std::fs::metadata(&part).is_ok_and(|m| m.len() == 0) {
                remove_part(req);
            }
        }
        result
    }

    async fn download_inner(
        &self,
        req: &DownloadRequest<'_>,
        progress: &dyn DownloadProgress,
    ) -> Result<Downloaded, DownloadError> {
        let shown = redact_url(req.url);
        let original = Url::parse(req.url).map_err(|e| DownloadError::Redirect {
            name: req.name.to_string(),
            url: shown.clone(),
            problem: format!("bad url: {e}"),
        })?;
        let mut part = self.open_part(req).await?;
        tracing::info!(model = req.name, url = %shown, resume_from = part.written, "fetching");

        let mut failures = 0u32;
        loop {
            let outcome = self.attempt(req, &original, &mut part, progress).await;
            let outcome = match outcome {
                Ok(o) => o,
                Err(e) => {
                    if matches!(
                        e,
                        DownloadError::TooLarge { .. } | DownloadError::SizeMismatch { .. }
                    ) {
                        drop(part);
                        remove_part(req);
                    }
                    return Err(e);
                }
            };
            match outcome {
                Attempt::Done => break,
                Attempt::Retry {
                    reason,
                    retry_after,
                    progressed,
                } => {
                    part.flush(req.name).await?;
                    if progressed {
                        failures = 0;
                    }
                    failures += 1;
                    if failures > self.opts.max_retries {
                        return Err(DownloadError::RetriesExhausted {
                            name: req.name.to_string(),
                            url: shown,
                            attempts: failures,
                            last: reason,
                        });
                    }
                    let delay = self.opts.backoff(failures, retry_after);
                    tracing::warn!(
                        model = req.name,
                        url = %shown,
                        %reason,
                        have_bytes = part.written,
                        retry_in = ?delay,
                        "download interrupted; retrying"
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
        self.finish(req, part, progress).await
    }

    async fn open_part(&self, req: &DownloadRequest<'_>) -> Result<Part, DownloadError> {
        let path = part_path(req.dest);
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(DownloadError::io(req.name, "cannot create", dir))?;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .await
            .map_err(DownloadError::io(req.name, "cannot open", &path))?;
        let mut existing = file
            .metadata()
            .await
            .map_err(DownloadError::io(req.name, "cannot stat", &path))?
            .len();
        let meta_path = meta_path(req.dest);
        let url_sha = hex::encode(Sha256::digest(req.url.as_bytes()));
        let mut adopted: Option<PartMeta> = None;
        if existing > 0 {
            let meta = std::fs::read(&meta_path)
                .ok()
                .and_then(|b| serde_json::from_slice::<PartMeta>(&b).ok());
            match meta {
                Some(m) if m.url_sha256 == url_sha && existing <= m.total => adopted = Some(m),
                _ => {
                    tracing::info!(
                        model = req.name,
                        file = %path.display(),
                        "a partial download from an earlier run has no matching record of its URL, ETag and size; starting over"
                    );
                    file.set_len(0).await.map_err(DownloadError::io(
                        req.name,
                        "cannot truncate",
                        &path,
                    ))?;
                    existing = 0;
                }
            }
        }
        if adopted.is_none() {
            let _ = std::fs::remove_file(&meta_path);
        }
        let mut hasher = Sha256::new();
        if existing > 0 {
            let p = path.clone();
            hasher = tokio::task::spawn_blocking(move || hash_prefix(&p))
                .await
                .map_err(|e| DownloadError::Io {
                    name: req.name.to_string(),
                    what: "cannot hash",
                    file: path.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?
                .map_err(DownloadError::io(req.name, "cannot hash", &path))?;
        }
        file.seek(std::io::SeekFrom::Start(existing))
            .await
            .map_err(DownloadError::io(req.name, "cannot seek", &path))?;
        Ok(Part {
            path,
            out: BufWriter::with_capacity(4 << 20, file),
            written: existing,
            hasher,
            total: adopted.as_ref().map(|m| m.total),
            validator: adopted.map(|m| m.etag),
            meta_path,
            url_sha,
        })
    }

    /// Sends the request (following redirects by hand) and streams the body into `part`.
    async fn attempt(
        &self,
        req: &DownloadRequest<'_>,
        original: &Url,
        part: &mut Part,
        progress: &dyn DownloadProgress,
    ) -> Result<Attempt, DownloadError> {
        let key = self.opts.civitai_key.as_ref();
        let secret = key.map(|k| k.expose());
        let start_written = part.written;
        let mut url = original.clone();
        let mut redirects = 0u32;
        let mut key_sent: bool;
        let resp = loop {
            let mut rb = self.client.get(url.clone());
            if part.written > 0 {
                rb = rb.header(RANGE, format!("bytes={}-", part.written));
                if let Some(v) = &part.validator {
                    rb = rb.header(IF_RANGE, v.as_str());
                }
            }
            key_sent = false;
            if let Some(k) = key {
                if sends_key(original, &url, req.auth) {
                    rb = rb.bearer_auth(k.expose());
                    key_sent = true;
                } else if withheld_for_plain_http(original, &url, req.auth) {
                    tracing::warn!(
                        model = req.name,
                        url = %redact_url(url.as_str()),
                        "CIVITAI_API_KEY is not sent over plain http to a non-loopback host; use an https URL"
                    );
                }
            }
            let resp = match rb.send().await {
                Ok(r) => r,
                Err(e) => {
                    return Ok(Attempt::Retry {
                        reason: scrub(&describe(&e, &redact_url(url.as_str())), secret),
                        retry_after: None,
                        progressed: false,
                    })
                }
            };
            let status = resp.status();
            if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                redirects += 1;
                let next = next_location(&url, resp.headers()).map_err(|problem| {
                    DownloadError::Redirect {
                        name: req.name.to_string(),
                        url: redact_url(url.as_str()),
                        problem,
                    }
                })?;
                if redirects > self.opts.max_redirects {
                    return Err(DownloadError::Redirect {
                        name: req.name.to_string(),
                        url: redact_url(url.as_str()),
                        problem: format!("more than {} redirects", self.opts.max_redirects),
                    });
                }
                tracing::debug!(model = req.name, to = %redact_url(next.as_str()), "following redirect");
                url = next;
                continue;
            }
            break resp;
        };

        let status = resp.status();
        let shown = redact_url(url.as_str());
        match status {
            StatusCode::OK => {
                if part.written > 0 {
                    tracing::info!(model = req.name, "server sent the whole file (it ignored the Range, or the file changed: If-Range); restarting from byte 0");
                    part.reset(req.name).await?;
                }
                part.total = header_u64(resp.headers(), CONTENT_LENGTH.as_str());
                part.validator = strong_etag(resp.headers());
                part.save_meta();
            }
            StatusCode::PARTIAL_CONTENT => {
                let range = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_content_range);
                let etag = strong_etag(resp.headers());
                let same_file = match (&part.validator, &etag) {
                    (Some(saved), Some(now)) => saved == now,
                    (Some(_), None) => false,
                    (None, _) => true,
                };
                let same_size = match (range.and_then(|r| r.1), part.total) {
                    (Some(now), Some(saved)) => now == saved,
                    _ => true,
                };
                if !same_file || !same_size {
                    part.reset(req.name).await?;
                    return Ok(Attempt::Retry {
                        reason: "the file on the server changed (ETag or size) since the partial download; restarting".into(),
                        retry_after: None,
                        progressed: false,
                    });
                }
                match range {
                    Some((start, total)) if start == part.written => {
                        part.total = total.or(part.total);
                    }
                    _ => {
                        part.reset(req.name).await?;
                        return Ok(Attempt::Retry {
                            reason: "server resumed at an unexpected offset; restarting".into(),
                            retry_after: None,
                            progressed: false,
                        });
                    }
                }
            }
            StatusCode::RANGE_NOT_SATISFIABLE if part.written > 0 => {
                let total = resp
                    .headers()
                    .get(CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes */"))
                    .and_then(|n| n.trim().parse::<u64>().ok());
                if total == Some(part.written) {
                    part.total = total;
                    return Ok(Attempt::Done);
                }
                part.reset(req.name).await?;
                return Ok(Attempt::Retry {
                    reason: "server refused the resume range; restarting".into(),
                    retry_after: None,
                    progressed: false,
                });
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                let hint = if key.is_none() {
                    "this download needs a CivitAI API key: set CIVITAI_API_KEY (civitai.com → Account settings → API Keys)".to_string()
                } else if !key_sent && withheld_for_plain_http(original, &url, req.auth) {
                    "CIVITAI_API_KEY is never sent over plain http (except to loopback); use an https URL".to_string()
                } else if !key_sent {
                    "the server wants credentials, but CIVITAI_API_KEY is only sent to civitai.com or to entries with auth = \"civitai\"".to_string()
                } else {
                    "CIVITAI_API_KEY was rejected or has no access to this model; check the key".to_string()
                };
                return Err(DownloadError::Unauthorized {
                    name: req.name.to_string(),
                    url: shown,
                    status: status.as_u16(),
                    hint,
                });
            }
            StatusCode::NOT_FOUND => {
                return Err(DownloadError::HttpStatus {
                    name: req.name.to_string(),
                    url: shown,
                    status: 404,
                    hint: "; check the url in models.toml (for CivitAI: https://civitai.com/api/download/models/<model version id>)".into(),
                })
            }
            s if s == StatusCode::TOO_MANY_REQUESTS
                || s == StatusCode::REQUEST_TIMEOUT
                || s.is_server_error() =>
            {
                return Ok(Attempt::Retry {
                    reason: format!("HTTP {} from {shown}", s.as_u16()),
                    retry_after: retry_after(resp.headers()),
                    progressed: false,
                })
            }
            s => {
                return Err(DownloadError::HttpStatus {
                    name: req.name.to_string(),
                    url: shown,
                    status: s.as_u16(),
                    hint: String::new(),
                })
            }
        }

        if let Some(total) = part.total {
            if total > self.opts.max_bytes {
                return Err(DownloadError::TooLarge {
                    name: req.name.to_string(),
                    size: total,
                    cap: self.opts.max_bytes,
                });
            }
        }
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        self.stream(
            req,
            &shown,
            &content_type,
            resp,
            part,
            start_written,
            progress,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn stream(
        &self,
        req: &DownloadRequest<'_>,
        shown: &str,
        content_type: &str,
        mut resp: reqwest::Response,
        part: &mut Part,
        start_written: u64,
        progress: &dyn DownloadProgress,
    ) -> Result<Attempt, DownloadError> {
        let secret = self.opts.civitai_key.as_ref().map(|k| k.expose());
        let textual = content_type.starts_with("text/")
            || content_type.contains("json")
            || content_type.contains("html");
        // A fresh file must start like safetensors; hold its first bytes until that is known.
        let mut head: Option<Vec<u8>> = (part.written == 0 || textual).then(Vec::new);
        progress.started(req.name, part.total, part.written);
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    return Ok(Attempt::Retry {
                        reason: scrub(&describe(&e, shown), secret),
                        retry_after: None,
                        progressed: part.written > start_written,
                    });
                }
            };
            let seen =
                part.written + head.as_ref().map_or(0, |h| h.len() as u64) + chunk.len() as u64;
            if seen > self.opts.max_bytes {
                return Err(DownloadError::TooLarge {
                    name: req.name.to_string(),
                    size: seen,
                    cap: self.opts.max_bytes,
                });
            }
            match head.as_mut() {
                Some(h) => {
                    h.extend_from_slice(&chunk);
                    if h.len() >= 9 || textual {
                        let h = head.take().unwrap_or_default();
                        self.check_head(req, shown, content_type, &h, textual, secret)?;
                        part.write(req.name, &h).await?;
                    }
                }
                None => part.write(req.name, &chunk).await?,
            }
            progress.advanced(req.name, part.written, part.total);
        }
        if let Some(h) = head.take() {
            self.check_head(req, shown, content_type, &h, textual, secret)?;
            part.write(req.name, &h).await?;
        }
        part.flush(req.name).await?;
        match part.total {
            Some(total) if part.written < total => Ok(Attempt::Retry {
                reason: format!("connection closed after {} of {total} bytes", part.written),
                retry_after: None,
                progressed: part.written > start_written,
            }),
            Some(total) if part.written > total => Err(DownloadError::SizeMismatch {
                name: req.name.to_string(),
                got: part.written,
                expected: total,
            }),
            _ => Ok(Attempt::Done),
        }
    }

    /// Rejects an HTML/JSON/text body, or one that does not start like safetensors.
    fn check_head(
        &self,
        req: &DownloadRequest<'_>,
        shown: &str,
        content_type: &str,
        head: &[u8],
        textual: bool,
        secret: Option<&str>,
    ) -> Result<(), DownloadError> {
        let first_non_ws = head.iter().copied().find(|b| !b.is_ascii_whitespace());
        let looks_html = content_type.contains("html") || first_non_ws == Some(b'<');
        let looks_json = content_type.contains("json") || first_non_ws == Some(b'{');
        if !textual && plausible_prefix(head) {
            return Ok(());
        }
        let (what, fix) = if looks_html {
            (
                "an HTML page",
                "the URL leads to a web page (login page?), not a file: use a direct download URL such as https://civitai.com/api/download/models/<version id> and set CIVITAI_API_KEY if the model needs login",
            )
        } else if looks_json {
            (
                "a JSON message",
                "the server sent an error message instead of the file (missing or expired CIVITAI_API_KEY, or a wrong model version id): check the key and the url",
            )
        } else if textual {
            (
                "text",
                "the URL does not point at a model file; check it in models.toml",
            )
        } else {
            (
                "data that is not a safetensors file",
                "only .safetensors models are supported; point the url at the safetensors file",
            )
        };
        let snippet: String = String::from_utf8_lossy(head.get(..SNIPPET_BYTES).unwrap_or(head))
            .chars()
            .filter(|c| !c.is_control() || *c == ' ')
            .collect();
        Err(DownloadError::NotAModel {
            name: req.name.to_string(),
            url: shown.to_string(),
            what: what.to_string(),
            snippet: scrub(&snippet, secret),
            fix: fix.to_string(),
        })
    }

    /// Verifies sha256 and safetensors structure, then renames the `.part` onto `dest`.
    async fn finish(
        &self,
        req: &DownloadRequest<'_>,
        mut part: Part,
        progress: &dyn DownloadProgress,
    ) -> Result<Downloaded, DownloadError> {
        part.flush(req.name).await?;
        part.out
            .get_mut()
            .sync_all()
            .await
            .map_err(DownloadError::io(req.name, "cannot sync", &part.path))?;
        let streamed_sha = hex::encode(part.hasher.clone().finalize());
        let bytes = part.written;
        let part_path = part.path.clone();
        drop(part);
        let on_disk = tokio::fs::metadata(&part_path)
            .await
            .map_err(DownloadError::io(req.name, "cannot stat", &part_path))?
            .len();
        if on_disk != bytes {
            remove_part(req);
            return Err(DownloadError::SizeMismatch {
                name: req.name.to_string(),
                got: on_disk,
                expected: bytes,
            });
        }
        // The hash that gates the rename is read back from the file on disk; it must also equal
        // the hash of the bytes this process received (anything else means the file was
        // changed under us).
        let p = part_path.clone();
        let sha = tokio::task::spawn_blocking(move || super::verify::sha256_file(&p))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r)
            .map_err(DownloadError::io(req.name, "cannot hash", &part_path))?;
        if sha != streamed_sha {
            remove_part(req);
            return Err(DownloadError::Invalid {
                name: req.name.to_string(),
                file: req.dest.to_path_buf(),
                problem: "the partial file on disk differs from the bytes received (was it \
                          written by another process?); downloading again will fix it"
                    .into(),
            });
        }
        if let Some(expected) = req.sha256 {
            if !expected.eq_ignore_ascii_case(&sha) {
                remove_part(req);
                return Err(DownloadError::ShaMismatch {
                    name: req.name.to_string(),
                    file: req.dest.to_path_buf(),
                    expected: expected.to_ascii_lowercase(),
                    got: sha,
                });
            }
        }
        let p = part_path.clone();
        let checked = tokio::task::spawn_blocking(move || check_safetensors(&p))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|p| p.to_string()));
        if let Err(problem) = checked {
            remove_part(req);
            return Err(DownloadError::Invalid {
                name: req.name.to_string(),
                file: req.dest.to_path_buf(),
                problem: format!("downloaded file rejected: {problem}"),
            });
        }
        tokio::fs::rename(&part_path, req.dest)
            .await
            .map_err(DownloadError::io(req.name, "cannot rename into", req.dest))?;
        let _ = std::fs::remove_file(meta_path(req.dest));
        progress.finished(req.name, req.dest, bytes);
        Ok(Downloaded {
            path: req.dest.to_path_buf(),
            bytes,
            sha256: sha,
        })
    }
}

/// `<dest>.part`.
pub(crate) fn part_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

/// `<dest>.part.meta`.
pub(crate) fn meta_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".part.meta");
    PathBuf::from(s)
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory (unique to this
/// process and call), synced, then renamed over `path`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(
        ".tmp{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The response's strong `ETag` (weak ones cannot validate byte ranges).
fn strong_etag(headers: &HeaderMap) -> Option<String> {
    headers
        .get(ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && !v.starts_with("W/"))
        .map(str::to_string)
}

fn remove_part(req: &DownloadRequest<'_>) {
    let _ = std::fs::remove_file(meta_path(req.dest));
    let p = part_path(req.dest);
    if let Err(e) = std::fs::remove_file(&p) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(file = %p.display(), error = %e, "cannot remove partial download");
        }
    }
}

fn hash_prefix(path: &Path) -> std::io::Result<Sha256> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(hasher);
        }
        hasher.update(buf.get(..n).unwrap_or_default());
    }
}

/// A reqwest error described without its URL (which may carry secrets), with our redacted one.
fn describe(e: &reqwest::Error, shown_url: &str) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "connection broke while reading the body"
    } else {
        "request failed"
    };
    let mut msg = format!("{kind} ({shown_url})");
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

fn next_location(current: &Url, headers: &HeaderMap) -> Result<Url, String> {
    let loc = headers
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or("redirect without a Location header")?;
    let next = current
        .join(loc)
        .map_err(|e| format!("unusable Location: {e}"))?;
    if !matches!(next.scheme(), "http" | "https") {
        return Err(format!(
            "redirect to unsupported scheme {:?}",
            next.scheme()
        ));
    }
    Ok(next)
}

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// `bytes START-END/TOTAL` ⇒ (START, TOTAL or None for `*`).
fn parse_content_range(v: &str) -> Option<(u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let start = start.trim().parse().ok()?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start, total))
}

/// `Retry-After: <seconds>` (HTTP dates fall back to the normal backoff).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_parses() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }
}
