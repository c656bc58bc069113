//! The job schema of SPEC §3: defaults, aliases, strict types, ranges, names, warnings, output.

use sdxl_pipeline::output::{read_png_parameters, ImageFormat};
use sdxl_pipeline::pipeline::Txt2ImgRequest;
use sdxl_pipeline::prompt::PromptMode;
use sdxl_worker::catalog::{Catalog, LoraSpec};
use sdxl_worker::error::{ErrorCode, WorkerError};
use sdxl_worker::handler::{self, CancelFlag, StubHandler};
use sdxl_worker::job::{validate, ValidatedJob, MAX_SEED};
use sdxl_worker::protocol::{self, JobOutput};
use sdxl_worker::runtime::{infotext, SamplerLabels};
use serde_json::{json, Value};

fn catalog() -> Catalog {
    StubHandler::default().catalog
}

fn ok(input: Value) -> ValidatedJob {
    validate(&input, &catalog()).unwrap_or_else(|e| panic!("{input} rejected: {e}"))
}

fn err(input: Value) -> WorkerError {
    match validate(&input, &catalog()) {
        Ok(j) => panic!("{input} accepted: {j:?}"),
        Err(e) => e,
    }
}

#[test]
fn defaults_come_from_txt2img_request() {
    let j = ok(json!({"prompt": "a cat"}));
    let d = Txt2ImgRequest::default();
    assert_eq!(j.request.steps, d.steps);
    assert_eq!(j.request.cfg_scale, d.cfg_scale);
    assert_eq!((j.request.width, j.request.height), (1024, 1024));
    assert_eq!(j.request.sampler_name, "DPM++ 2M Karras");
    assert_eq!(j.request.batch_size, 1);
    assert_eq!(j.request.clip_skip, 2);
    assert_eq!(j.request.prompt_mode, PromptMode::Blend);
    assert_eq!(j.request.negative_prompt, None);
    assert_eq!(j.request.scheduler, None);
    assert_eq!(j.checkpoint.as_deref(), Some("Stub XL"));
    assert_eq!(j.loras, catalog().default_loras);
    assert_eq!(j.output_format, ImageFormat::Png);
    assert!(j.seed_was_random, "seed defaults to -1 ⇒ random");
    assert!(j.request.seed <= u64::from(u32::MAX));
    assert!(j.warnings.is_empty());
}

#[test]
fn every_field_is_read_and_aliases_work() {
    let j = ok(json!({
        "prompt": "p", "negative_prompt": "n", "num_inference_steps": 30, "guidance_scale": 5.5,
        "width": 832, "height": 1216, "sampler": "Euler a", "scheduler": "karras", "seed": 42,
        "num_images": 3, "loras": [{"name": "Pixel Art XL", "scale": -0.5}], "checkpoint": "Other XL",
        "clip_skip": 3, "prompt_mode": "concat", "output_format": "jpeg", "quality": 95
    }));
    let r = &j.request;
    assert_eq!(
        (r.prompt.as_str(), r.negative_prompt.as_deref()),
        ("p", Some("n"))
    );
    assert_eq!(
        (r.steps, r.cfg_scale, r.width, r.height),
        (30, 5.5, 832, 1216)
    );
    assert_eq!(
        (r.sampler_name.as_str(), r.scheduler.as_deref()),
        ("Euler a", Some("karras"))
    );
    assert_eq!((r.seed, r.batch_size, r.clip_skip), (42, 3, 3));
    assert_eq!(r.prompt_mode, PromptMode::Concat);
    assert!(!j.seed_was_random);
    assert_eq!(j.seeds(), vec![42, 43, 44]);
    assert_eq!(j.checkpoint.as_deref(), Some("Other XL"));
    assert_eq!(
        j.loras,
        vec![LoraSpec {
            name: "Pixel Art XL".into(),
            scale: -0.5
        }]
    );
    assert_eq!(j.output_format, ImageFormat::Jpeg { quality: 95 });
}

#[test]
fn a1111_names_win_and_equal_aliases_are_fine_but_conflicts_are_errors() {
    assert_eq!(
        ok(json!({"prompt": "p", "steps": 9, "num_inference_steps": 9}))
            .request
            .steps,
        9
    );
    let e = err(json!({"prompt": "p", "steps": 9, "num_inference_steps": 10}));
    assert!(
        e.message().contains("`steps` and `num_inference_steps`"),
        "{}",
        e.message()
    );
}

#[test]
fn nothing_is_coerced() {
    for (field, value) in [
        ("steps", json!(true)),
        ("steps", json!(7.5)),
        ("steps", json!("7")),
        ("steps", json!(20.0)),
        ("cfg_scale", json!("7")),
        ("cfg_scale", json!(false)),
        ("width", json!(1024.0)),
        ("seed", json!("42")),
        ("seed", json!(4.2)),
        ("batch_size", json!([1])),
        ("clip_skip", json!({})),
        ("prompt_mode", json!(1)),
        ("negative_prompt", json!(5)),
        ("sampler_name", json!(true)),
        ("output_format", json!(["png"])),
        ("quality", json!(90.5)),
    ] {
        let e = err(json!({"prompt": "p", field: value}));
        assert_eq!(e.code(), ErrorCode::InvalidInput);
        assert!(
            e.message().contains(&format!("`{field}`")),
            "{field}={value}: {}",
            e.message()
        );
    }
    let e = err(json!({"prompt": 5}));
    assert!(e.message().contains("`prompt` must be a string"));
}

#[test]
fn ranges_are_enforced_at_both_ends() {
    for (field, good, bad) in [
        (
            "steps",
            vec![json!(1), json!(150)],
            vec![json!(0), json!(151), json!(-3)],
        ),
        (
            "cfg_scale",
            vec![json!(0), json!(30), json!(1.0)],
            vec![json!(-0.1), json!(30.5)],
        ),
        (
            "width",
            vec![json!(64), json!(2048), json!(1216)],
            vec![json!(56), json!(2056), json!(1001), json!(0)],
        ),
        (
            "height",
            vec![json!(64), json!(2048)],
            vec![json!(4096), json!(-8)],
        ),
        (
            "seed",
            vec![json!(-1), json!(0), json!(MAX_SEED)],
            vec![json!(-2), json!(MAX_SEED + 1), json!(u64::MAX)],
        ),
        (
            "batch_size",
            vec![json!(1), json!(8)],
            vec![json!(0), json!(9)],
        ),
        (
            "clip_skip",
            vec![json!(1), json!(12)],
            vec![json!(0), json!(13)],
        ),
        (
            "quality",
            vec![json!(1), json!(100)],
            vec![json!(0), json!(101)],
        ),
    ] {
        for g in good {
            ok(json!({"prompt": "p", field: g}));
        }
        for b in bad {
            let e = err(json!({"prompt": "p", field: b}));
            assert!(
                e.message().contains(&format!("`{field}`")),
                "{field}={b}: {}",
                e.message()
            );
        }
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let e = err(
        json!({"steps": 0, "cfg_scale": "x", "width": 7, "height": true, "sampler_name": "Nope",
        "seed": -5, "batch_size": 99, "loras": [{"name": "../etc/passwd"}], "checkpoint": "Missing",
        "clip_skip": 0, "prompt_mode": "mix", "output_format": "gif"}),
    );
    assert_eq!(e.code(), ErrorCode::InvalidInput);
    for needle in [
        "`prompt`",
        "`steps`",
        "`cfg_scale`",
        "`width`",
        "`height`",
        "sampler",
        "`seed`",
        "`batch_size`",
        "path",
        "checkpoint",
        "`clip_skip`",
        "`prompt_mode`",
        "`output_format`",
    ] {
        assert!(
            e.message().contains(needle),
            "missing {needle}: {}",
            e.message()
        );
    }
    assert!(
        e.message().starts_with("invalid input (13 problems): "),
        "{}",
        e.message()
    );
}

#[test]
fn unknown_fields_are_ignored_and_named_in_warnings() {
    let j =
        ok(json!({"prompt": "p", "restore_faces": false, "do_not_save_grid": true, "styles": []}));
    assert_eq!(
        j.warnings,
        vec!["ignored unknown field(s): do_not_save_grid, restore_faces, styles".to_string()]
    );
    let out = handler::execute(
        &StubHandler::default(),
        &json!({"prompt": "p", "steps": 1, "zzz": 1}),
        &|_, _| {},
        &CancelFlag::new(),
    )
    .unwrap();
    assert_eq!(
        out.warnings,
        vec!["ignored unknown field(s): zzz".to_string()]
    );
}

#[test]
fn quality_without_jpeg_is_a_warning() {
    let j = ok(json!({"prompt": "p", "quality": 50}));
    assert_eq!(j.output_format, ImageFormat::Png);
    assert_eq!(j.warnings.len(), 1);
    assert!(j.warnings[0].contains("`quality`"));
    assert!(
        ok(json!({"prompt": "p", "quality": 50, "output_format": "jpeg"}))
            .warnings
            .is_empty()
    );
}

#[test]
fn nulls_mean_absent() {
    let j = ok(
        json!({"prompt": "p", "negative_prompt": null, "steps": null, "seed": null, "loras": null, "checkpoint": null}),
    );
    assert_eq!(j.request.steps, 25);
    assert_eq!(j.loras, catalog().default_loras);
    assert!(ok(json!({"prompt": "p", "negative_prompt": ""}))
        .request
        .negative_prompt
        .is_none());
    assert!(err(json!({"prompt": null}))
        .message()
        .contains("`prompt` is required"));
}

#[test]
fn model_names_are_checked_and_paths_rejected() {
    let e = err(json!({"prompt": "p", "checkpoint": "Nope XL"}));
    assert_eq!(e.code(), ErrorCode::UnknownModel);
    assert!(
        e.message().contains("Stub XL, Other XL"),
        "lists what exists: {}",
        e.message()
    );
    let e = err(json!({"prompt": "p", "loras": [{"name": "Nope", "scale": 1}]}));
    assert_eq!(e.code(), ErrorCode::UnknownModel);
    for bad in [
        "../x",
        "a/b",
        "a\\b",
        "..",
        "/abs.safetensors",
        "C:\\x",
        "",
        "  ",
        "x\u{0}y",
    ] {
        let e = err(json!({"prompt": "p", "loras": [{"name": bad, "scale": 1}]}));
        assert_eq!(
            e.code(),
            ErrorCode::InvalidInput,
            "{bad:?}: {}",
            e.message()
        );
        let e = err(json!({"prompt": "p", "checkpoint": bad}));
        assert_eq!(e.code(), ErrorCode::InvalidInput, "{bad:?}");
    }
    // Case-insensitive match resolves to the catalog spelling.
    assert_eq!(
        ok(json!({"prompt": "p", "checkpoint": "other xl"}))
            .checkpoint
            .as_deref(),
        Some("Other XL")
    );
    assert_eq!(
        ok(json!({"prompt": "p", "sampler_name": "euler A"}))
            .request
            .sampler_name,
        "Euler a"
    );
}

#[test]
fn loras_items_are_strict() {
    let j = ok(json!({"prompt": "p", "loras": []}));
    assert!(j.loras.is_empty(), "an empty list replaces the defaults");
    let j = ok(json!({"prompt": "p", "loras": [{"name": "Detail Tweaker XL"}]}));
    assert_eq!(
        j.loras[0].scale, 1.5,
        "missing scale ⇒ the models.toml scale"
    );
    for bad in [
        json!("Detail Tweaker XL"),
        json!({"name": "Detail Tweaker XL"}),
        json!([{"name": "Detail Tweaker XL", "scale": 4.5}]),
        json!([{"name": "Detail Tweaker XL", "scale": "1"}]),
        json!([{"name": "Detail Tweaker XL", "scale": 1, "path": "/x"}]),
        json!([{"scale": 1}]),
        json!([{"name": 3}]),
        json!(["Detail Tweaker XL"]),
        json!([{"name": "Detail Tweaker XL"}, {"name": "Detail Tweaker XL"}]),
        json!(vec![json!({"name": "Pixel Art XL"}); 17]),
    ] {
        let e = err(json!({"prompt": "p", "loras": bad}));
        assert!(
            e.message().contains("loras") || e.message().contains("LoRA"),
            "{bad}: {}",
            e.message()
        );
    }
}

#[test]
fn input_must_be_an_object() {
    for v in [json!(null), json!(1), json!("x"), json!([]), json!(true)] {
        let e = err(v);
        assert!(e.message().contains("must be a JSON object"));
    }
}

#[test]
fn parameters_list_every_effective_value_and_seeds() {
    let j = ok(json!({"prompt": "p", "seed": 7, "batch_size": 2, "output_format": "jpeg"}));
    let p = j.parameters();
    for key in [
        "prompt",
        "negative_prompt",
        "steps",
        "cfg_scale",
        "width",
        "height",
        "sampler_name",
        "scheduler",
        "seed",
        "seeds",
        "batch_size",
        "clip_skip",
        "prompt_mode",
        "checkpoint",
        "loras",
        "output_format",
        "quality",
    ] {
        assert!(p.get(key).is_some(), "{key} missing in {p}");
    }
    assert_eq!(p["seeds"], json!([7, 8]));
    assert_eq!(p["output_format"], "jpeg");
    assert_eq!(p["quality"], 80);
}

/// The infotext the runtime writes for image `i` of `j`.
fn info(j: &ValidatedJob, i: u32) -> String {
    infotext(j, &SamplerLabels::of(j).unwrap(), i)
}

#[test]
fn infotext_is_a1111_shaped() {
    let j = ok(json!({"prompt": "a cat", "negative_prompt": "blurry", "seed": 42, "loras": []}));
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        info(&j, 0),
        format!("a cat\nNegative prompt: blurry\nSteps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 42, Size: 1024x1024, Model: Stub XL, Version: sdxl-worker {version}")
    );
    let j = ok(
        json!({"prompt": "a", "seed": 1, "sampler_name": "Euler", "scheduler": "exponential", "loras": [], "clip_skip": 3}),
    );
    assert!(
        info(&j, 1).contains("Sampler: Euler, Schedule type: Exponential, CFG scale: 7, Seed: 2,"),
        "{}",
        info(&j, 1)
    );
    assert!(info(&j, 0).contains("Clip skip: 3"));
}

#[test]
fn stub_output_carries_the_infotext_in_each_png() {
    use base64::Engine as _;
    let out = handler::execute(
        &StubHandler::default(),
        &json!({"prompt": "p", "seed": 10, "batch_size": 2, "steps": 2}),
        &|_, _| {},
        &CancelFlag::new(),
    )
    .unwrap();
    assert_eq!(out.images.len(), 2);
    let png = base64::engine::general_purpose::STANDARD
        .decode(&out.images[1])
        .unwrap();
    let text = read_png_parameters(&png).unwrap().unwrap();
    assert!(text.contains("Seed: 11"), "{text}");
    assert!(out.info.contains("Seed: 10"));
}

#[test]
fn cancel_and_progress_reach_the_handler() {
    let steps = std::sync::Mutex::new(Vec::new());
    let cancel = CancelFlag::new();
    let progress = |s: u32, t: u32| {
        steps.lock().unwrap().push((s, t));
        if s == 2 {
            cancel.cancel();
        }
    };
    let e = handler::execute(
        &StubHandler::default(),
        &json!({"prompt": "p", "steps": 5}),
        &progress,
        &cancel,
    )
    .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Cancelled);
    assert_eq!(*steps.lock().unwrap(), vec![(1, 5), (2, 5)]);
}

#[test]
fn result_and_error_bodies_have_the_wire_shape() {
    let e = WorkerError::ModelDownloadFailed("HTTP 401 from civitai.com".into());
    assert_eq!(
        protocol::result_body(&Err(e)),
        json!({"error": "HTTP 401 from civitai.com", "output": {"code": "MODEL_DOWNLOAD_FAILED"}})
    );
    for (code, s) in [
        (ErrorCode::InvalidInput, "INVALID_INPUT"),
        (ErrorCode::UnknownModel, "UNKNOWN_MODEL"),
        (ErrorCode::ModelInvalid, "MODEL_INVALID"),
        (ErrorCode::OutOfMemory, "OUT_OF_MEMORY"),
        (ErrorCode::Cancelled, "CANCELLED"),
        (ErrorCode::ResultTooLarge, "RESULT_TOO_LARGE"),
        (ErrorCode::Internal, "INTERNAL"),
    ] {
        assert_eq!(serde_json::to_value(code).unwrap(), json!(s));
        assert_eq!(code.as_str(), s);
    }
    let pe = sdxl_pipeline::PipelineError::OutOfMemory("CUDA".into());
    assert_eq!(WorkerError::from(pe).code(), ErrorCode::OutOfMemory);
}

#[test]
fn result_body_text_matches_result_body() {
    let out = handler::execute(
        &StubHandler::default(),
        &json!({"prompt": "ü ✨ \"q\"", "steps": 1}),
        &|_, _| {},
        &CancelFlag::new(),
    );
    let err: Result<JobOutput, WorkerError> = Err(WorkerError::Internal("bad \"thing\"\n".into()));
    for r in [out, err] {
        let text: Value = serde_json::from_str(&protocol::result_body_text(&r, false)).unwrap();
        assert_eq!(text, protocol::result_body(&r));
        let mut with_stop: Value =
            serde_json::from_str(&protocol::result_body_text(&r, true)).unwrap();
        assert_eq!(
            with_stop.as_object_mut().unwrap().remove("stopPod"),
            Some(json!(true))
        );
        assert_eq!(with_stop, protocol::result_body(&r));
    }
}

#[test]
fn upload_is_a_strict_boolean_that_needs_a_bucket() {
    let j = ok(json!({"prompt": "a cat"}));
    assert!(!j.upload);
    let j = ok(json!({"prompt": "a cat", "upload": false}));
    assert!(!j.upload && j.warnings.is_empty(), "{:?}", j.warnings);
    let e = err(json!({"prompt": "a cat", "upload": true}));
    assert_eq!(e.code(), ErrorCode::InvalidInput);
    assert!(e.message().contains("no bucket configured"), "{e}");
    let with_bucket = catalog().with_uploads(true);
    let j = validate(&json!({"prompt": "a cat", "upload": true}), &with_bucket).unwrap();
    assert!(j.upload);
    for bad in [json!(1), json!("true"), json!([true]), json!({})] {
        let e = validate(&json!({"prompt": "a cat", "upload": bad}), &with_bucket).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidInput);
        assert!(e.message().contains("`upload` must be a boolean"), "{e}");
    }
}
