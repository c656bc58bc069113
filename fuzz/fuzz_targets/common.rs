//! Shared by the file-based targets: a scratch file per fuzzing process (in /dev/shm when it
//! exists, so the disk is not worn).

use std::path::PathBuf;

pub fn scratch(name: &str) -> PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    base.join(format!("sdxl-fuzz-{}-{name}", std::process::id()))
}
