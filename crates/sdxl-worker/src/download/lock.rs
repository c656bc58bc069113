//! The cross-process download lock: an OS file lock (`flock(2)`, exclusive) on `<file>.lock`,
//! held for the whole download by the one process that downloads. Others wait for it (the wait
//! ends when the holder's download ends, or when the holder dies: the kernel drops the lock of a
//! dead process, so a killed fetch never blocks the next run). The lock file carries no state.
//!
//! The holder removes the lock file before releasing the lock. A waiter that then gets the lock
//! on the removed file notices (the path no longer names the inode it locked) and starts over on
//! a fresh file, so at most one process ever holds the lock for a path.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How often a waiter logs that it is still waiting.
const STILL_WAITING_EVERY: Duration = Duration::from_secs(60);

/// A held exclusive `flock` on `<file>.lock`; the file is removed and the lock released on drop.
#[derive(Debug)]
pub struct FileLock {
    path: PathBuf,
    file: File,
}

/// Outcome of one non-blocking attempt.
enum Try {
    Held(File),
    Busy,
}

fn try_lock(path: &Path) -> std::io::Result<Try> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    // SAFETY: flock on a valid, owned file descriptor; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) | Some(libc::EINTR) => Ok(Try::Busy),
            _ => Err(e),
        };
    }
    // The previous holder may have removed the file between our open and our flock: then we
    // hold a lock nobody else can see. Only a lock on the inode the path names counts.
    let ours = file.metadata()?;
    match std::fs::metadata(path) {
        Ok(m) if m.ino() == ours.ino() && m.dev() == ours.dev() => Ok(Try::Held(file)),
        Ok(_) => Ok(Try::Busy),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Try::Busy),
        Err(e) => Err(e),
    }
}

impl FileLock {
    /// Takes the lock, waiting (polling every `poll`) while another process holds it. The
    /// wait has no time limit of its own: it is bounded by the holder's download, which has
    /// timeouts and a retry limit, and by the holder's life.
    pub async fn acquire(path: &Path, poll: Duration) -> std::io::Result<FileLock> {
        let started = Instant::now();
        let mut last_log: Option<Instant> = None;
        loop {
            match try_lock(path)? {
                Try::Held(file) => {
                    if last_log.is_some() {
                        tracing::info!(
                            lock = %path.display(),
                            waited = ?started.elapsed(),
                            "download lock acquired after waiting"
                        );
                    }
                    return Ok(FileLock {
                        path: path.to_path_buf(),
                        file,
                    });
                }
                Try::Busy => {
                    if last_log.is_none_or(|t| t.elapsed() >= STILL_WAITING_EVERY) {
                        tracing::info!(
                            lock = %path.display(),
                            waited = ?started.elapsed(),
                            "another process is downloading this file; waiting for it to finish \
                             (the wait ends with its download, or at once if it dies)"
                        );
                        last_log = Some(Instant::now());
                    }
                    tokio::time::sleep(poll).await;
                }
            }
        }
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Remove while still holding the lock (see the module docs), then release it by closing.
        let _ = std::fs::remove_file(&self.path);
        // SAFETY: unlocking our own valid descriptor; closing it (when `file` drops) would too.
        unsafe {
            libc::flock(self.file.as_raw_fd(), libc::LOCK_UN);
        }
    }
}
