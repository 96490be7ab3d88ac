//! Inference inside a function vs the same backend called natively, and
//! ONNX Runtime vs tract, on the same models and inputs, measured side by
//! side in one run.
//!
//! `in-function` is the time a built-in function spends in `wasi:nn`
//! `compute` (its `server-timing: infer` entry, measured by the guest around
//! the call); `native` is `LoadedModel::run` on the same shared model and the
//! same input tensors, called directly from Rust. For each backend and model
//! the two calls alternate, so both see the same machine state.
//!
//! Models: `digits` through `classify-digits` (one `[1, 64]` f32 sample),
//! and `minilm` through `embed-text` (one sentence, `[1, 16]` i64 ids and
//! mask, as the function pads it).
//!
//! `cargo bench -p glia-host --bench nn` (`GLIA_BENCH_CALLS` sets the count
//! for `digits`; `minilm` runs a tenth as many).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "benchmark setup"
)]

mod support;

use std::time::Instant;

use bytes::Bytes;
use glia_host::config::OnnxBackendChoice;
use glia_host::nn::{DType, Tensor};
use http_body_util::{BodyExt, Full};

const HELDOUT: &str = include_str!("../../functions/classify-digits/model/heldout.json");
/// "A man is playing a guitar.", as `embed-text` tokenizes it.
const SENTENCE: &str = "A man is playing a guitar.";
const SENTENCE_IDS: [i64; 9] = [101, 1037, 2158, 2003, 2652, 1037, 2858, 1012, 102];
/// The length `embed-text` pads nine tokens to.
const PADDED: usize = 16;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn i64_tensor(values: &[i64]) -> Tensor {
    Tensor {
        dims: vec![1, values.len()],
        dtype: DType::I64,
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

/// Median in-function and native microseconds for one backend and model.
struct Row {
    backend: &'static str,
    model: &'static str,
    calls: usize,
    native: f64,
    in_function: f64,
}

fn measure(backend: OnnxBackendChoice, calls: usize) -> Vec<Row> {
    let support::Bench { rt, platform, .. } =
        &support::platform_with(true, |c| c.models.backend = backend);
    let app = platform.app().clone();
    let backend_name = platform.state().models.backend_name();

    // The guest's own `infer` time from a call to `path` with `body`.
    let in_function = |path: &str, body: Vec<u8>| -> f64 {
        rt.block_on(async {
            let request = http::Request::post(path)
                .header("host", "localhost")
                .header("authorization", support::AUTHORIZATION)
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let response = app.handle(request).await;
            assert_eq!(response.status(), 200);
            let infer = response
                .headers()
                .get_all("server-timing")
                .iter()
                .flat_map(|v| v.to_str().unwrap().split(", "))
                .find_map(|entry| entry.strip_prefix("infer;dur="))
                .expect("an infer timing")
                .parse::<f64>()
                .unwrap();
            response.into_body().collect().await.unwrap();
            infer * 1000.0
        })
    };
    let run_alternating =
        |calls: usize, f: &dyn Fn(usize) -> f64, n: &dyn Fn(usize) -> f64| -> (f64, f64) {
            for i in 0..calls / 10 {
                f(i);
                n(i);
            }
            let (mut fs, mut ns) = (Vec::with_capacity(calls), Vec::with_capacity(calls));
            for i in 0..calls {
                fs.push(f(i));
                ns.push(n(i));
            }
            (median(fs), median(ns))
        };

    // digits
    let digits = rt
        .block_on(platform.state().models.load("default", "digits"))
        .unwrap();
    let heldout: serde_json::Value = serde_json::from_str(HELDOUT).unwrap();
    let samples: Vec<Vec<f32>> = heldout["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s["pixels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    let sample = |i: usize| &samples[i % samples.len()];
    let (df, dn) = run_alternating(
        calls,
        &|i| {
            let body = serde_json::to_vec(&serde_json::json!({ "pixels": sample(i) })).unwrap();
            in_function("/fn/classify-digits", body)
        },
        &|i| {
            let tensor = Tensor::from_f32(vec![1, 64], sample(i));
            let started = Instant::now();
            let out = digits.run(&[tensor]).unwrap();
            let us = started.elapsed().as_secs_f64() * 1e6;
            assert_eq!(out[0].dims, vec![1, 10]);
            us
        },
    );

    // minilm
    let minilm = rt
        .block_on(platform.state().models.load("default", "minilm"))
        .unwrap();
    let mut ids = SENTENCE_IDS.to_vec();
    let mut mask = vec![1i64; ids.len()];
    ids.resize(PADDED, 0);
    mask.resize(PADDED, 0);
    let body = serde_json::to_vec(&serde_json::json!({ "text": SENTENCE })).unwrap();
    let minilm_calls = (calls / 10).max(10);
    let (mf, mn) = run_alternating(
        minilm_calls,
        &|_| in_function("/fn/embed-text", body.clone()),
        &|_| {
            let inputs = [i64_tensor(&ids), i64_tensor(&mask)];
            let started = Instant::now();
            let out = minilm.run(&inputs).unwrap();
            let us = started.elapsed().as_secs_f64() * 1e6;
            assert_eq!(out[3].dims, vec![1, 384]);
            us
        },
    );
    vec![
        Row {
            backend: backend_name,
            model: "digits",
            calls,
            native: dn,
            in_function: df,
        },
        Row {
            backend: backend_name,
            model: "minilm",
            calls: minilm_calls,
            native: mn,
            in_function: mf,
        },
    ]
}

fn main() {
    let calls: usize = std::env::var("GLIA_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let mut rows = measure(OnnxBackendChoice::Tract, calls);
    rows.extend(measure(OnnxBackendChoice::Ort, calls));
    assert_eq!(rows[2].backend, "ort", "ONNX Runtime was found");
    println!(
        "| backend | model | calls | native run | in-function compute | in-function / native |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    for r in &rows {
        println!(
            "| {} | {} | {} | {:.1} µs | {:.1} µs | {:.2}× |",
            r.backend,
            r.model,
            r.calls,
            r.native,
            r.in_function,
            r.in_function / r.native
        );
    }
    println!();
    println!("| model | tract native | ort native | tract / ort |");
    println!("| --- | ---: | ---: | ---: |");
    for (t, o) in rows
        .iter()
        .filter(|r| r.backend == "tract")
        .zip(rows.iter().filter(|r| r.backend == "ort"))
    {
        println!(
            "| {} | {:.1} µs | {:.1} µs | {:.2}× |",
            t.model,
            t.native,
            o.native,
            t.native / o.native
        );
    }
}
