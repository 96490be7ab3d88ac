//! Invocation latency, measured side by side in one run:
//!
//! - `call/warm` vs `call/cold`: one call of the built-in `hello` through the
//!   HTTP service (no socket), with the function warm, and scaled to zero
//!   before every call (so each call loads the artifact and links it; the
//!   scale-to-zero itself is untimed setup);
//! - `call/warm` vs `call/warm-anonymous`: with an API key checked, and
//!   without one (`hello` is public), which is what authentication costs;
//! - `artifact/compile` vs `artifact/load`: compiling `hello` with Cranelift
//!   vs loading its precompiled artifact, the two paths a restart can take.
//!
//! `cargo bench -p glia-host --bench invoke`
//!
//! By default no `tracing` subscriber is installed. `GLIA_BENCH_TELEMETRY=logs`
//! installs the one `glia serve` installs (log lines at `info`, written to
//! nowhere); `GLIA_BENCH_TELEMETRY=otlp` adds span export to an OTLP endpoint
//! that refuses connections (`http://127.0.0.1:9`), so every call's spans are
//! built and handed to the exporter.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "benchmark setup"
)]

mod support;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Empty};

fn request() -> http::Request<Empty<Bytes>> {
    http::Request::get("/fn/hello/bench")
        .header("host", "localhost")
        .header("authorization", support::AUTHORIZATION)
        .body(Empty::new())
        .unwrap()
}

fn anonymous_request() -> http::Request<Empty<Bytes>> {
    http::Request::get("/fn/hello/bench")
        .header("host", "localhost")
        .body(Empty::new())
        .unwrap()
}

/// Installs the subscriber `GLIA_BENCH_TELEMETRY` asks for.
fn telemetry() -> Option<glia_host::telemetry::TelemetryGuard> {
    let mut config = glia_host::config::TelemetryConfig::default();
    match std::env::var("GLIA_BENCH_TELEMETRY").as_deref() {
        Ok("logs") => {}
        Ok("otlp") => config.otlp_endpoint = "http://127.0.0.1:9".into(),
        _ => return None,
    }
    Some(glia_host::telemetry::init_with_writer(&config, std::io::sink).unwrap())
}

fn bench(c: &mut Criterion) {
    let _telemetry = telemetry();
    let support::Bench { rt, platform, .. } = &support::platform(true);
    let app = platform.app().clone();
    let scheduler = platform.state().scheduler.clone();

    let call_with = |app: &glia_host::api::App, request: http::Request<Empty<Bytes>>| {
        rt.block_on(async {
            let response = app.handle(request).await;
            assert_eq!(response.status(), 200);
            let cold = response.headers()["glia-cold-start"] == "true";
            response.into_body().collect().await.unwrap();
            cold
        })
    };
    let call = |app: &glia_host::api::App| call_with(app, request());
    assert!(call(&app), "first call is cold");

    let mut group = c.benchmark_group("call");
    group.bench_function("warm", |b| b.iter(|| assert!(!call(&app))));
    group.bench_function("warm-anonymous", |b| {
        b.iter(|| assert!(!call_with(&app, anonymous_request())))
    });
    group.bench_function("cold", |b| {
        b.iter_batched(
            // Scaling to zero (dropping the loaded component) is not part of
            // the cold start; it happens before the timed call.
            || {
                // The previous call's guest task may still be winding down.
                while scheduler.warm_count() > 0 {
                    scheduler.scale_to_zero("default/hello");
                    std::thread::yield_now();
                }
            },
            |()| assert!(call(&app)),
            BatchSize::PerIteration,
        )
    });
    group.finish();

    let runtime = &platform.state().runtime;
    let wasm = glia_host::builtins::BUILTINS[0].wasm;
    let scratch = tempfile::tempdir().unwrap();
    let artifact = scratch.path().join("hello.cwasm");
    std::fs::write(&artifact, runtime.precompile(wasm).unwrap()).unwrap();
    let mut group = c.benchmark_group("artifact");
    group.sample_size(10);
    group.bench_function("compile", |b| b.iter(|| runtime.precompile(wasm).unwrap()));
    group.bench_function("load", |b| b.iter(|| runtime.load(&artifact).unwrap()));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
