//! PNG info: reading the A1111 `parameters` text chunk from arbitrary bytes gives text, nothing
//! or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sdxl_pipeline::output::read_png_parameters(data);
});
