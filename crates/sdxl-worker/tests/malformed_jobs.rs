//! A corpus of malformed jobs sent to the local API (`/runsync`, `/v2/.../run`, A1111 `txt2img`)
//! and to the one-shot path: each gets a typed JSON error and the next valid job still works.

use sdxl_worker::api::{self, ApiConfig};
use sdxl_worker::error::ErrorCode;
use sdxl_worker::handler::{JobHandler, StubHandler};
use sdxl_worker::local;
use serde_json::{json, Value};
use std::sync::Arc;

/// A malformed request body with a name for failure messages.
struct Case {
    name: String,
    body: Vec<u8>,
}

fn case(name: impl Into<String>, body: Vec<u8>) -> Case {
    Case {
        name: name.into(),
        body,
    }
}

fn input_case(name: impl Into<String>, input: Value) -> Case {
    case(name, json!({ "input": input }).to_string().into_bytes())
}

fn with(field: &str, value: Value) -> Value {
    let mut base = json!({"prompt": "a cat", "steps": 2});
    base.as_object_mut()
        .unwrap()
        .insert(field.to_string(), value);
    base
}

fn corpus() -> Vec<Case> {
    let mut cases = Vec::new();
    let int_fields = [
        "steps",
        "num_inference_steps",
        "width",
        "height",
        "seed",
        "batch_size",
        "num_images",
        "clip_skip",
        "quality",
    ];
    let num_fields = ["cfg_scale", "guidance_scale"];
    let str_fields = [
        "prompt",
        "negative_prompt",
        "sampler_name",
        "sampler",
        "scheduler",
        "checkpoint",
        "prompt_mode",
        "output_format",
    ];
    for f in int_fields {
        for (label, v) in [
            ("bool", json!(true)),
            ("string", json!("7")),
            ("float", json!(7.5)),
            ("array", json!([8])),
            ("object", json!({"v": 8})),
        ] {
            cases.push(input_case(format!("{f} as {label}"), with(f, v)));
        }
    }
    for f in num_fields {
        for (label, v) in [
            ("bool", json!(false)),
            ("string", json!("7")),
            ("array", json!([7])),
            ("object", json!({})),
        ] {
            cases.push(input_case(format!("{f} as {label}"), with(f, v)));
        }
    }
    for f in str_fields {
        for (label, v) in [
            ("number", json!(1)),
            ("bool", json!(true)),
            ("array", json!(["x"])),
            ("object", json!({"x": 1})),
        ] {
            cases.push(input_case(format!("{f} as {label}"), with(f, v)));
        }
    }
    for (name, input) in [
        ("missing prompt", json!({"steps": 2})),
        ("null prompt", json!({"prompt": null})),
        ("empty input", json!({})),
        ("prompt too long", json!({"prompt": "a".repeat(20_001)})),
        ("huge width", with("width", json!(4096))),
        ("huge height", with("height", json!(100_000))),
        ("astronomic width", with("width", json!(1u64 << 40))),
        ("float height 1e9", with("height", json!(1e9))),
        ("width not multiple of 8", with("width", json!(1001))),
        ("width too small", with("width", json!(32))),
        ("negative width", with("width", json!(-1024))),
        ("negative steps", with("steps", json!(-5))),
        ("zero steps", with("steps", json!(0))),
        ("151 steps", with("steps", json!(151))),
        ("a million steps", with("steps", json!(1_000_000))),
        ("u64 max steps", with("steps", json!(u64::MAX))),
        ("cfg 31", with("cfg_scale", json!(31))),
        ("negative cfg", with("cfg_scale", json!(-1))),
        ("seed -2", with("seed", json!(-2))),
        ("seed 2^53", with("seed", json!(1u64 << 53))),
        ("batch 9", with("batch_size", json!(9))),
        ("batch 0", with("batch_size", json!(0))),
        ("clip skip 13", with("clip_skip", json!(13))),
        ("quality 0", with("quality", json!(0))),
        (
            "unknown sampler",
            with("sampler_name", json!("DPM++ 9M Turbo")),
        ),
        (
            "unknown scheduler",
            with("scheduler", json!("polyexponential")),
        ),
        ("unknown prompt mode", with("prompt_mode", json!("mix"))),
        ("unknown output format", with("output_format", json!("gif"))),
        (
            "unknown checkpoint",
            with("checkpoint", json!("Nonexistent XL")),
        ),
        (
            "unknown lora",
            with("loras", json!([{"name": "Nonexistent", "scale": 1}])),
        ),
        (
            "lora path traversal",
            with("loras", json!([{"name": "../../etc/passwd", "scale": 1}])),
        ),
        (
            "lora absolute path",
            with(
                "loras",
                json!([{"name": "/runpod-volume/x.safetensors", "scale": 1}]),
            ),
        ),
        (
            "lora windows path",
            with("loras", json!([{"name": "C:\\models\\x", "scale": 1}])),
        ),
        (
            "lora url",
            with(
                "loras",
                json!([{"name": "https://evil.example/x.safetensors", "scale": 1}]),
            ),
        ),
        (
            "checkpoint path",
            with("checkpoint", json!("../checkpoints/x.safetensors")),
        ),
        ("checkpoint dotdot", with("checkpoint", json!(".."))),
        (
            "lora scale 5",
            with("loras", json!([{"name": "Pixel Art XL", "scale": 5}])),
        ),
        (
            "lora scale string",
            with("loras", json!([{"name": "Pixel Art XL", "scale": "1"}])),
        ),
        ("lora without name", with("loras", json!([{"scale": 1}]))),
        (
            "lora extra key",
            with(
                "loras",
                json!([{"name": "Pixel Art XL", "url": "http://x"}]),
            ),
        ),
        ("lora as string", with("loras", json!("Pixel Art XL"))),
        (
            "lora list of strings",
            with("loras", json!(["Pixel Art XL"])),
        ),
        (
            "duplicate lora",
            with(
                "loras",
                json!([{"name": "Pixel Art XL"}, {"name": "Pixel Art XL"}]),
            ),
        ),
        (
            "too many loras",
            with("loras", json!(vec![json!({"name": "Pixel Art XL"}); 40])),
        ),
        (
            "conflicting aliases",
            json!({"prompt": "x", "steps": 5, "num_inference_steps": 6}),
        ),
        (
            "everything wrong",
            json!({"prompt": 1, "steps": true, "width": "big", "loras": 3, "seed": 0.5}),
        ),
        ("input is a string", json!("a cat")),
        ("input is an array", json!([{"prompt": "a cat"}])),
        ("input is a number", json!(42)),
        ("input is true", json!(true)),
    ] {
        cases.push(input_case(name, input));
    }
    let nested = format!(
        "{{\"input\": {{\"prompt\": \"x\", \"loras\": {}{}}}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    for (name, body) in [
        ("input null", b"{\"input\": null}".to_vec()),
        ("no input key", b"{\"prompt\": \"a cat\"}".to_vec()),
        (
            "top-level array",
            b"[{\"input\": {\"prompt\": \"a\"}}]".to_vec(),
        ),
        ("top-level string", b"\"hello\"".to_vec()),
        ("empty body", Vec::new()),
        ("whitespace body", b"   \n".to_vec()),
        ("truncated json", b"{\"input\": {\"prompt\": \"a c".to_vec()),
        (
            "trailing garbage",
            b"{\"input\": {\"prompt\": \"a\"}} xyz".to_vec(),
        ),
        ("single quotes", b"{'input': {'prompt': 'a'}}".to_vec()),
        (
            "NaN literal",
            b"{\"input\": {\"prompt\": \"a\", \"cfg_scale\": NaN}}".to_vec(),
        ),
        (
            "number overflow",
            b"{\"input\": {\"prompt\": \"a\", \"cfg_scale\": 1e400}}".to_vec(),
        ),
        (
            "invalid utf-8",
            b"{\"input\": {\"prompt\": \"\xff\xfe\xfd\"}}".to_vec(),
        ),
        (
            "lone surrogate escape",
            b"{\"input\": {\"prompt\": \"\\ud800\"}}".to_vec(),
        ),
        ("nul byte", b"{\"input\": {\"prompt\": \"a\x00\"}}".to_vec()),
        ("deeply nested arrays", nested.into_bytes()),
        (
            "deeply nested objects",
            format!("{}{}", "{\"a\":".repeat(50_000), "}".repeat(50_000)).into_bytes(),
        ),
        (
            "binary garbage",
            (0..4096u32).map(|i| (i * 7919 % 256) as u8).collect(),
        ),
    ] {
        cases.push(case(name, body));
    }
    cases
}

fn fifty_megabytes() -> Vec<u8> {
    let mut body = b"{\"input\": {\"prompt\": \"".to_vec();
    body.resize(body.len() + 50 * 1024 * 1024, b'a');
    body.extend_from_slice(b"\"}}");
    body
}

const CODES: &[&str] = &["INVALID_INPUT", "UNKNOWN_MODEL", "PAYLOAD_TOO_LARGE"];

/// Asserts an HTTP reply is a typed JSON error (4xx + code, or a RunPod FAILED status).
fn assert_typed_error(name: &str, status: u16, body: &[u8]) {
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|_| {
        panic!(
            "{name}: reply is not JSON: {}",
            String::from_utf8_lossy(body)
        )
    });
    if status == 200 {
        assert_eq!(v["status"], "FAILED", "{name}: {v}");
        assert!(v["error"].is_string(), "{name}: {v}");
        let code = v["output"]["code"].as_str().unwrap_or_default();
        assert!(CODES.contains(&code), "{name}: {v}");
    } else {
        assert!((400..500).contains(&status), "{name}: HTTP {status}");
        assert!(v["error"].is_string(), "{name}: {v}");
        assert!(
            CODES.contains(&v["code"].as_str().unwrap_or_default()),
            "{name}: {v}"
        );
    }
}

#[test]
fn the_corpus_is_big_enough() {
    assert!(corpus().len() >= 100, "{}", corpus().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_job_gets_a_typed_json_error_from_the_api() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let h: Arc<dyn JobHandler> = Arc::new(StubHandler::default());
    tokio::spawn(api::serve(
        listener,
        h,
        ApiConfig::default(),
        std::future::pending(),
    ));
    let client = reqwest::Client::new();
    let valid = json!({"input": {"prompt": "a cat", "steps": 1}});
    for (i, c) in corpus().into_iter().enumerate() {
        let route = match i % 3 {
            0 => "/runsync",
            1 => "/v2/ep/runsync",
            _ => "/v2/ep/run",
        };
        let r = client
            .post(format!("{base}{route}"))
            .header("content-type", "application/json")
            .body(c.body.clone())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let bytes = r.bytes().await.unwrap();
        assert_typed_error(&c.name, status, &bytes);
        // The A1111 route gets the same input objects.
        if let Ok(Value::Object(job)) = serde_json::from_slice::<Value>(&c.body) {
            if let Some(input @ Value::Object(_)) = job.get("input") {
                let r = client
                    .post(format!("{base}/sdapi/v1/txt2img"))
                    .json(input)
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                assert!(
                    (400..500).contains(&status),
                    "{}: txt2img HTTP {status}",
                    c.name
                );
                let v: Value = r.json().await.unwrap();
                assert!(
                    v["error"].is_string() && v["code"].is_string(),
                    "{}: {v}",
                    c.name
                );
            }
        }
        let r = client
            .post(format!("{base}/runsync"))
            .json(&valid)
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["status"], "COMPLETED", "after {}: {v}", c.name);
    }
}

/// POSTs `body` over a raw HTTP/1.1 connection while reading the reply at the same time, and
/// returns the status and the reply body. The server may answer 413 and close the connection
/// before the upload ends; an HTTP client library would then report only its failed write.
async fn post_while_reading(base: &str, path: &str, body: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let body = body.to_vec();
    let writer = tokio::spawn(async move {
        // Write errors are expected once the server has answered and closed.
        if wr.write_all(head.as_bytes()).await.is_ok() {
            for chunk in body.chunks(64 * 1024) {
                if wr.write_all(chunk).await.is_err() {
                    break;
                }
            }
        }
    });
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        rd.read_to_end(&mut reply),
    )
    .await;
    writer.abort();
    let text = String::from_utf8_lossy(&reply).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = match text.split_once("\r\n\r\n") {
        Some((head, rest))
            if head
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked") =>
        {
            dechunk(rest)
        }
        Some((_, rest)) => rest.to_string(),
        None => String::new(),
    };
    (status, body)
}

/// The payload of a chunked HTTP/1.1 body.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifty_megabyte_body_is_refused_with_json_and_the_server_goes_on() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let h: Arc<dyn JobHandler> = Arc::new(StubHandler::default());
    tokio::spawn(api::serve(
        listener,
        h,
        ApiConfig::default(),
        std::future::pending(),
    ));
    let (status, body) = post_while_reading(&base, "/runsync", &fifty_megabytes()).await;
    assert_eq!(status, 413, "{body}");
    let v: Value = serde_json::from_str(&body).expect("a JSON error body");
    assert_eq!(v["code"], "PAYLOAD_TOO_LARGE");
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{base}/runsync"))
        .json(&json!({"input": {"prompt": "a", "steps": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "COMPLETED");
}

#[test]
fn every_malformed_job_fails_typed_in_the_one_shot_path() {
    let handler = StubHandler::default();
    let mut cases = corpus();
    cases.push(case("50 MB", fifty_megabytes()));
    for c in cases {
        let Ok(text) = std::str::from_utf8(&c.body) else {
            continue; // the one-shot mode reads text; invalid UTF-8 fails at read_to_string
        };
        let e = local::run_job(text, &handler).expect_err(&c.name);
        assert!(
            matches!(e.code(), ErrorCode::InvalidInput | ErrorCode::UnknownModel),
            "{}: {e}",
            c.name
        );
        assert!(!e.message().is_empty());
        assert!(local::run_job(r#"{"input": {"prompt": "a", "steps": 1}}"#, &handler).is_ok());
    }
}
