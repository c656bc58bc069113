//! An advisory lock file (`<file>.lock`) so that two processes sharing a cache dir (two workers
//! on one network volume) do not download the same file at once. Created with `create_new`; the
//! holder refreshes its mtime while working; a lock untouched for longer than the stale limit is
//! taken over (its holder died).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// A held lock file; removed on drop.
#[derive(Debug)]
pub struct FileLock {
    path: PathBuf,
}

impl FileLock {
    /// Waits until `path` can be created exclusively. Polls every `poll`; a lock file whose
    /// mtime is older than `stale_after` is removed and taken.
    pub async fn acquire(
        path: &Path,
        stale_after: Duration,
        poll: Duration,
    ) -> std::io::Result<FileLock> {
        let mut announced = false;
        loop {
            match OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(mut f) => {
                    let _ = writeln!(f, "pid {}", std::process::id());
                    return Ok(FileLock {
                        path: path.to_path_buf(),
                    });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if is_stale(path, stale_after) {
                        tracing::warn!(lock = %path.display(), "taking over a stale download lock");
                        let _ = std::fs::remove_file(path);
                        continue;
                    }
                    if !announced {
                        tracing::info!(lock = %path.display(), "another process is downloading this file; waiting");
                        announced = true;
                    }
                    tokio::time::sleep(poll).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Marks the lock as alive (call while making progress).
    pub fn touch(&self) {
        if let Ok(f) = OpenOptions::new().write(true).open(&self.path) {
            let _ = f.set_modified(SystemTime::now());
        }
    }
}

fn is_stale(path: &Path, stale_after: Duration) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age > stale_after)
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
