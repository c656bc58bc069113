//! models.toml parsing and validation: any text gives a config or a `ModelsError`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sdxl_worker::models::ModelsConfig;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = ModelsConfig::from_toml_str(text, std::path::Path::new("/fuzz/models.toml")) {
        let _ = cfg.default_checkpoint();
    }
});
