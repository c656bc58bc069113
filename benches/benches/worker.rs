//! Per-job worker overhead (SPEC §11): parse the job JSON, validate it, base64 the PNG bytes of a
//! 1024² image, build and serialize the result body, check its size.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use sdxl_pipeline::output::{encode_image, to_base64, ImageFormat, RgbImage};
use sdxl_worker::handler::{JobHandler, StubHandler};
use sdxl_worker::job::{self, ValidatedJob};
use sdxl_worker::protocol::{self, JobOutput, Timings};
use sdxl_worker::runtime::{self, Rendered, RenderedImage, SamplerLabels};

const JOB: &str = r#"{"id": "bench-1", "input": {"prompt": "a photo of an astronaut riding a horse on mars, highly detailed, sharp focus, cinematic lighting", "negative_prompt": "blurry, low quality, deformed, watermark, text", "steps": 25, "cfg_scale": 7, "sampler_name": "DPM++ 2M Karras", "width": 1024, "height": 1024, "seed": 42, "restore_faces": false, "n_iter": 1}}"#;

/// PNG bytes of a 1024² image with enough texture to compress like a real render (~2-3 MB).
fn png_1024() -> Vec<u8> {
    let mut state = 0x2545_f491_u32;
    let mut px = Vec::with_capacity(1024 * 1024 * 3);
    for y in 0..1024u32 {
        for x in 0..1024u32 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let n = (state % 24) as u8;
            px.extend_from_slice(&[
                (x / 4) as u8 ^ n,
                (y / 4) as u8 ^ n,
                ((x + y) / 8) as u8 ^ n,
            ]);
        }
    }
    let img = RgbImage::new(1024, 1024, px).unwrap();
    encode_image(&img, ImageFormat::Png, Some("a prompt\nSteps: 25")).unwrap()
}

/// The output the runtime builds for one rendered image (infotext, base64, parameters).
fn output_of(validated: &ValidatedJob, png: &[u8]) -> JobOutput {
    let labels = SamplerLabels::of(validated).unwrap();
    Rendered {
        images: vec![RenderedImage {
            bytes: png.to_vec(),
            infotext: runtime::infotext(validated, &labels, 0),
            seed: validated.request.seed,
        }],
        warnings: Vec::new(),
        inpainting_conditioning: false,
        timings: Timings::default(),
    }
    .into_job_output(validated)
}

fn per_job(png: &[u8], stub: &StubHandler) -> usize {
    let v: serde_json::Value = serde_json::from_str(JOB).unwrap();
    let validated = job::validate(&v["input"], stub.catalog()).unwrap();
    let out = output_of(&validated, png);
    let body = protocol::result_body_text(&Ok(out), false);
    body.len()
}

fn bench(c: &mut Criterion) {
    let stub = StubHandler::default();
    let png = png_1024();
    eprintln!("1024² PNG: {} bytes", png.len());
    let v: serde_json::Value = serde_json::from_str(JOB).unwrap();
    c.bench_function("worker/parse_job_json", |b| {
        b.iter(|| serde_json::from_str::<serde_json::Value>(black_box(JOB)).unwrap())
    });
    c.bench_function("worker/validate", |b| {
        b.iter(|| job::validate(black_box(&v["input"]), stub.catalog()).unwrap())
    });
    c.bench_function("worker/base64_1024_png", |b| {
        b.iter(|| to_base64(black_box(&png)))
    });
    let v2: serde_json::Value = serde_json::from_str(JOB).unwrap();
    let validated = job::validate(&v2["input"], stub.catalog()).unwrap();
    let out = Ok(output_of(&validated, &png));
    c.bench_function("worker/serialize_result_body_1024_png", |b| {
        b.iter(|| protocol::result_body_text(black_box(&out), false).len())
    });
    c.bench_function("worker/per_job_overhead_1024_png", |b| {
        b.iter(|| per_job(black_box(&png), &stub))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
