//! PNG encode (+ infotext chunk) and base64 of a 1024×1024 image (SPEC §11: < 100 ms).

use criterion::{criterion_group, criterion_main, Criterion};
use sdxl_pipeline::output::{encode_image, to_base64, ImageFormat, RgbImage};
use std::hint::black_box;

/// A deterministic image with photo-like variation (smooth gradients plus hashed noise), so the
/// compressor does neither trivially well nor pathologically badly.
fn test_image(w: u32, h: u32) -> RgbImage {
    let mut px = Vec::with_capacity((w * h * 3) as usize);
    let mut state: u32 = 0x1234_5678;
    for y in 0..h {
        for x in 0..w {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let n = state & 15;
            px.push(((x / 4 + n) % 256) as u8);
            px.push(((y / 4 + n) % 256) as u8);
            px.push((((x + y) / 8 + n) % 256) as u8);
        }
    }
    RgbImage::new(w, h, px).expect("valid buffer")
}

fn bench_output(c: &mut Criterion) {
    let img = test_image(1024, 1024);
    let info = "a photo of an astronaut riding a horse on mars\nNegative prompt: blurry\nSteps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 42, Size: 1024x1024";
    let mut group = c.benchmark_group("output_1024");
    group.sample_size(20);
    group.bench_function("png_encode", |b| {
        b.iter(|| encode_image(black_box(&img), ImageFormat::Png, Some(info)).expect("png"))
    });
    group.bench_function("png_encode_plus_base64", |b| {
        b.iter(|| {
            let png = encode_image(black_box(&img), ImageFormat::Png, Some(info)).expect("png");
            to_base64(&png)
        })
    });
    group.bench_function("jpeg_q90_plus_base64", |b| {
        b.iter(|| {
            let jpg = encode_image(black_box(&img), ImageFormat::Jpeg { quality: 90 }, None)
                .expect("jpeg");
            to_base64(&jpg)
        })
    });
    group.finish();
}

criterion_group!(benches, bench_output);
criterion_main!(benches);
