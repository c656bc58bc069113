//! The LoRA parser and resolver against the tiny fixture SDXL: file validation, module grouping,
//! factor-shape planning and the merge math. Any input must give `Ok` or a typed error.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sdxl_pipeline::checkpoint::{Checkpoint, ModelSource};
use sdxl_pipeline::lora::{LoraBudget, LoraSet, LoraSpec};

#[path = "common.rs"]
mod common;

fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures"))
}

fn checkpoint() -> &'static Checkpoint {
    static CKPT: OnceLock<Checkpoint> = OnceLock::new();
    CKPT.get_or_init(|| {
        Checkpoint::open(&ModelSource::SingleFile {
            path: fixtures().join("tiny-sdxl-single-file.safetensors"),
            config_dir: Some(fixtures().join("tiny-sdxl")),
        })
        .expect("the tiny fixture checkpoint opens")
    })
}

fuzz_target!(|data: &[u8]| {
    let path = common::scratch("lora.safetensors");
    if std::fs::write(&path, data).is_err() {
        return;
    }
    let spec = LoraSpec {
        path,
        name: "fuzz".into(),
        scale: 1.0,
        te_scale: None,
    };
    // A 256 MB budget: anything the planner lets through must stay far below the 1 GB limit.
    let budget = LoraBudget {
        max_delta_bytes: 256 << 20,
    };
    let _ = LoraSet::load_with_budget(&[spec], checkpoint(), budget);
});
