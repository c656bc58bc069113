//! The two safetensors header parsers: the checkpoint loader's (`SafetensorsFile::open`, then
//! every small tensor read back) and the downloader's structural check (`check_safetensors`).
//! Any input must give `Ok` or a typed error: no panic, no huge allocation.
#![no_main]

use candle_core::Device;
use libfuzzer_sys::fuzz_target;
use sdxl_pipeline::checkpoint::SafetensorsFile;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let path = common::scratch("header.safetensors");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let _ = sdxl_worker::download::check_safetensors(&path);
    if let Ok(file) = SafetensorsFile::open(&path) {
        for entry in file.tensors().values() {
            let Some(dtype) = entry.dtype.float() else {
                continue;
            };
            let len = entry.end - entry.start;
            if len > 1 << 20 {
                continue;
            }
            let _ = file.load_bytes(entry, dtype, (0, len), &entry.shape, &Device::Cpu);
        }
    }
});
