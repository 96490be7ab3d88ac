//! Inference inside a function vs the same backend called natively, on the
//! same model and inputs, measured side by side in one run.
//!
//! `in-function` is the time the built-in `classify-digits` function spends
//! in `wasi:nn` `compute` (its `server-timing: infer` header, measured by the
//! guest around the call); `native` is `LoadedModel::run` on the same shared
//! model and pixels, called directly from Rust. Calls alternate, so both see
//! the same machine state.
//!
//! `cargo bench -p glia-host --bench nn` (`GLIA_BENCH_CALLS` sets the count).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "benchmark setup"
)]

mod support;

use std::time::Instant;

use bytes::Bytes;
use glia_host::nn::Tensor;
use http_body_util::{BodyExt, Full};

const HELDOUT: &str = include_str!("../../functions/classify-digits/model/heldout.json");

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let calls: usize = std::env::var("GLIA_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let support::Bench { rt, platform, .. } = &support::platform(true);
    let app = platform.app().clone();
    let model = rt.block_on(platform.state().models.load("digits")).unwrap();

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

    let in_function = |pixels: &[f32]| -> f64 {
        let body = serde_json::to_vec(&serde_json::json!({ "pixels": pixels })).unwrap();
        rt.block_on(async {
            let request = http::Request::post("/fn/classify-digits")
                .header("host", "localhost")
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let response = app.handle(request).await;
            assert_eq!(response.status(), 200);
            let timing = response.headers()["server-timing"]
                .to_str()
                .unwrap()
                .to_string();
            response.into_body().collect().await.unwrap();
            let ms: f64 = timing.strip_prefix("infer;dur=").unwrap().parse().unwrap();
            ms * 1000.0
        })
    };
    let native = |pixels: &[f32]| -> f64 {
        let tensor = Tensor::from_f32(vec![1, 64], pixels);
        let started = Instant::now();
        let out = model.run(&[tensor]).unwrap();
        let us = started.elapsed().as_secs_f64() * 1e6;
        assert_eq!(out[0].dims, vec![1, 10]);
        us
    };

    for s in samples.iter().take(200) {
        in_function(s);
        native(s);
    }
    let (mut f, mut n) = (Vec::with_capacity(calls), Vec::with_capacity(calls));
    for s in samples.iter().cycle().take(calls) {
        f.push(in_function(s));
        n.push(native(s));
    }
    let (mf, mn) = (median(f), median(n));
    println!("model                 digits (tract, [1, 64] f32 -> [1, 10])");
    println!("calls                 {calls} each, alternating");
    println!("native run            median {mn:.1} µs");
    println!("in-function compute   median {mf:.1} µs");
    println!("in-function / native  {:.2}x (+{:.1} µs)", mf / mn, mf - mn);
}
