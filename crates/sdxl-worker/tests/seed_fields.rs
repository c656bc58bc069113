//! The SPEC §3 seed and sampler-parameter fields of the job schema: `n_iter`, `subseed`,
//! `subseed_strength`, `seed_resize_from_w/h`, `eta`, `s_noise`, `s_churn`, `s_tmin`, `s_tmax`
//! and the `override_settings` options `eta_ancestral`, `eta_ddim`, `s_noise` — ranges, A1111's
//! all_seeds / all_subseeds rules, and the infotext keys A1111 writes for them.

use sdxl_worker::catalog::Catalog;
use sdxl_worker::error::WorkerError;
use sdxl_worker::handler::{self, CancelFlag, StubHandler};
use sdxl_worker::job::{validate, ValidatedJob};
use sdxl_worker::runtime::{infotext, SamplerLabels};
use serde_json::{json, Value};

fn catalog() -> Catalog {
    StubHandler::default().catalog
}

fn ok(input: Value) -> ValidatedJob {
    validate(&input, &catalog()).unwrap_or_else(|e| panic!("{input} rejected: {e}"))
}

fn err(input: Value) -> String {
    match validate(&input, &catalog()) {
        Ok(j) => panic!("{input} accepted: {j:?}"),
        Err(WorkerError::InvalidInput(m)) => m,
        Err(e) => panic!("{input}: unexpected error {e:?}"),
    }
}

fn info(j: &ValidatedJob, i: u32) -> String {
    infotext(j, &SamplerLabels::of(j).unwrap(), i)
}

#[test]
fn defaults_change_nothing() {
    let j = ok(json!({"prompt": "p", "seed": 5, "batch_size": 2}));
    assert_eq!(j.request.n_iter, 1);
    assert_eq!(j.seeds(), [5, 6]);
    assert_eq!(j.request.variation.subseed_strength, 0.0);
    assert!(
        j.request.variation.subseed <= u64::from(u32::MAX),
        "random subseed"
    );
    assert!(j.warnings.is_empty(), "{:?}", j.warnings);
    let text = info(&j, 1);
    assert!(!text.contains("Variation") && !text.contains("Eta") && !text.contains("Sigma"));
}

#[test]
fn n_iter_multiplies_the_images_and_steps_the_seeds() {
    let j = ok(json!({"prompt": "p", "seed": 10, "batch_size": 2, "n_iter": 3}));
    assert_eq!(j.image_count(), 6);
    assert_eq!(j.seeds(), [10, 11, 12, 13, 14, 15]);
    assert!(info(&j, 5).contains("Seed: 15,"), "{}", info(&j, 5));
    assert_eq!(j.parameters()["n_iter"], 3);
    assert_eq!(j.parameters()["seeds"], json!([10, 11, 12, 13, 14, 15]));
}

#[test]
fn n_iter_limits() {
    assert!(err(json!({"prompt": "p", "n_iter": 0})).contains("`n_iter` must be 1..=16"));
    assert!(err(json!({"prompt": "p", "n_iter": 17})).contains("`n_iter` must be 1..=16"));
    assert!(err(json!({"prompt": "p", "n_iter": 1.5})).contains("`n_iter`"));
    let m = err(json!({"prompt": "p", "batch_size": 4, "n_iter": 5, "width": 256, "height": 256}));
    assert!(
        m.contains("`batch_size` × `n_iter` must be at most 16"),
        "{m}"
    );
    // the batch pixel budget counts every image of every batch (SPEC §12)
    let m = err(json!({"prompt": "p", "batch_size": 4, "n_iter": 3}));
    assert!(m.contains("12 images of 1024x1024"), "{m}");
    assert!(m.contains("SDXL_MAX_BATCH_PIXELS"), "{m}");
    ok(json!({"prompt": "p", "batch_size": 4, "n_iter": 2}));
}

#[test]
fn variation_seeds_follow_a1111_all_seeds() {
    let j = ok(json!({
        "prompt": "p", "seed": 10, "subseed": 3, "subseed_strength": 0.5,
        "batch_size": 2, "n_iter": 2, "loras": []
    }));
    assert_eq!(j.seeds(), [10, 10, 10, 10]);
    assert_eq!(j.subseeds(), [3, 4, 5, 6]);
    let text = info(&j, 2);
    assert!(
        text.contains("Seed: 10, Size: 1024x1024, Model: Stub XL, Variation seed: 5, Variation seed strength: 0.5, Version:"),
        "{text}"
    );
    // strength 0: the subseed is resolved (A1111) but not written
    let j = ok(json!({"prompt": "p", "seed": 10, "subseed": 3, "batch_size": 2}));
    assert_eq!(j.seeds(), [10, 11]);
    assert!(!info(&j, 0).contains("Variation"));
}

#[test]
fn random_subseed_is_resolved() {
    let j = ok(json!({"prompt": "p", "subseed": -1, "subseed_strength": 0.2}));
    assert!(j.request.variation.subseed <= u64::from(u32::MAX));
    assert_eq!(
        j.parameters()["subseed"],
        json!(j.request.variation.subseed)
    );
}

#[test]
fn seed_resize_fields() {
    let j = ok(
        json!({"prompt": "p", "seed_resize_from_w": 640, "seed_resize_from_h": 512, "loras": []}),
    );
    assert!(info(&j, 0).contains("Model: Stub XL, Seed resize from: 640x512, Version"));
    // A1111's "off" values
    let j = ok(json!({"prompt": "p", "seed_resize_from_w": -1, "seed_resize_from_h": 0}));
    assert!(!j.request.variation.resizes());
    let j = ok(json!({"prompt": "p", "seed_resize_from_w": 640}));
    assert!(!j.request.variation.resizes(), "needs both sizes, as A1111");
    assert!(err(json!({"prompt": "p", "seed_resize_from_w": 5})).contains("seed_resize_from_w"));
    assert!(err(json!({"prompt": "p", "seed_resize_from_h": 5000})).contains("seed_resize_from_h"));
    assert!(err(json!({"prompt": "p", "subseed_strength": 1.5})).contains("subseed_strength"));
    assert!(err(json!({"prompt": "p", "subseed_strength": true})).contains("subseed_strength"));
    assert!(err(json!({"prompt": "p", "subseed": -2})).contains("subseed"));
}

#[test]
fn eta_goes_where_a1111_passes_it() {
    let j = ok(json!({"prompt": "p", "sampler_name": "Euler a", "eta": 0.5}));
    assert!(info(&j, 0).contains("Eta: 0.5"), "{}", info(&j, 0));
    let j = ok(json!({"prompt": "p", "sampler_name": "DDIM", "eta": 0.25}));
    assert!(info(&j, 0).contains("Eta DDIM: 0.25"), "{}", info(&j, 0));
    // samplers without eta ignore it (A1111: not in their signature)
    let j = ok(json!({"prompt": "p", "sampler_name": "Euler", "eta": 0.5}));
    assert!(!info(&j, 0).contains("Eta"));
    // defaults are not written
    let j = ok(json!({"prompt": "p", "sampler_name": "Euler a", "eta": 1}));
    assert!(!info(&j, 0).contains("Eta"));
    let j = ok(json!({"prompt": "p", "sampler_name": "DDIM", "eta": 0}));
    assert!(!info(&j, 0).contains("Eta"));
    assert!(err(json!({"prompt": "p", "eta": 1.5})).contains("`eta`"));
}

#[test]
fn eta_options_in_override_settings() {
    let j = ok(
        json!({"prompt": "p", "sampler_name": "Euler a", "override_settings": {"eta_ancestral": 0.3, "eta_ddim": 0.6}}),
    );
    assert!(j.warnings.is_empty(), "{:?}", j.warnings);
    assert!(info(&j, 0).contains("Eta: 0.3"));
    let j = ok(
        json!({"prompt": "p", "sampler_name": "DDIM", "override_settings": {"eta_ancestral": 0.3, "eta_ddim": 0.6}}),
    );
    assert!(info(&j, 0).contains("Eta DDIM: 0.6"));
    // the request's eta wins over the option (A1111: `p.eta if p.eta is not None else opts...`)
    let j = ok(
        json!({"prompt": "p", "sampler_name": "DDIM", "eta": 0.1, "override_settings": {"eta_ddim": 0.6}}),
    );
    assert!(info(&j, 0).contains("Eta DDIM: 0.1"));
    assert!(err(json!({"prompt": "p", "override_settings": {"eta_ddim": 2}})).contains("eta_ddim"));
}

#[test]
fn churn_and_s_noise_go_where_a1111_passes_them() {
    let j = ok(
        json!({"prompt": "p", "sampler_name": "Euler", "s_churn": 1, "s_tmin": 0.5, "s_tmax": 10, "s_noise": 0.9}),
    );
    let text = info(&j, 0);
    assert!(
        text.contains("Sigma churn: 1, Sigma tmin: 0.5, Sigma tmax: 10, Sigma noise: 0.9, Version"),
        "{text}"
    );
    // Euler a takes eta but not s_noise (not in A1111's sampler_extra_params)
    let j = ok(json!({"prompt": "p", "sampler_name": "Euler a", "s_noise": 0.9, "s_churn": 1}));
    assert!(!info(&j, 0).contains("Sigma"), "{}", info(&j, 0));
    // SDE samplers take s_noise; the option wins over the request when it is not 1 (A1111)
    let j = ok(
        json!({"prompt": "p", "sampler_name": "DPM++ 2M SDE", "s_noise": 0.9, "override_settings": {"s_noise": 0.8}}),
    );
    assert!(info(&j, 0).contains("Sigma noise: 0.8"), "{}", info(&j, 0));
    let j = ok(
        json!({"prompt": "p", "sampler_name": "DPM++ 2M SDE", "s_noise": 0.9, "override_settings": {"s_noise": 1}}),
    );
    assert!(info(&j, 0).contains("Sigma noise: 0.9"));
    // A1111 clients send these defaults; s_tmax 0 means infinity
    let j = ok(
        json!({"prompt": "p", "sampler_name": "Euler", "s_churn": 0, "s_tmin": 0, "s_tmax": 0, "s_noise": 1, "eta": null}),
    );
    assert!(!info(&j, 0).contains("Sigma"));
    assert!(err(json!({"prompt": "p", "s_churn": -1})).contains("s_churn"));
    assert!(err(json!({"prompt": "p", "s_noise": "1"})).contains("s_noise"));
}

#[test]
fn plms_is_a_sampler() {
    let j = ok(json!({"prompt": "p", "sampler_name": "PLMS", "scheduler": "karras"}));
    let labels = SamplerLabels::of(&j).unwrap();
    assert_eq!(labels.sampler, "PLMS");
    assert_eq!(labels.schedule, "Automatic");
}

#[test]
fn stub_output_has_every_image_of_every_batch() {
    let out = handler::execute(
        &StubHandler::default(),
        &json!({"prompt": "p", "seed": 10, "batch_size": 2, "n_iter": 2, "steps": 1}),
        &|_, _| {},
        &CancelFlag::new(),
    )
    .unwrap();
    assert_eq!(out.images.len(), 4);
    assert_eq!(out.infotexts.len(), 4);
    assert!(out.infotexts[3].contains("Seed: 13,"));
}
