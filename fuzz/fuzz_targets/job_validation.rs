//! Job validation: any bytes that parse as JSON give a validated job or a `WorkerError`, never a
//! panic; a validated job's parameters, infotext and A1111 mapping are built too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sdxl_worker::catalog::Catalog;
use sdxl_worker::runtime::{infotext, SamplerLabels};

fuzz_target!(|data: &[u8]| {
    let Ok(input) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let catalog = sdxl_worker::handler::stub_catalog();
    for catalog in [&catalog, &Catalog::pipeline_only()] {
        if let Ok(job) = sdxl_worker::job::validate(&input, catalog) {
            let _ = job.parameters();
            if let Ok(labels) = SamplerLabels::of(&job) {
                let _ = infotext(&job, &labels, 0);
            }
        }
    }
});
