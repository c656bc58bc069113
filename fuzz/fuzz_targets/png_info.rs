//! PNG info: reading the A1111 `parameters` text chunk from arbitrary bytes, the whole
//! `/sdapi/v1/png-info` reply (text chunks, EXIF UserComment), and A1111's infotext parser on
//! arbitrary text give a value or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sdxl_pipeline::output::read_png_parameters(data);
    let _ = sdxl_worker::png_info::png_info_reply(data);
    let _ = sdxl_worker::png_info::exif_user_comment(data);
    let _ = sdxl_worker::png_info::parse_generation_parameters(&String::from_utf8_lossy(data));
});
