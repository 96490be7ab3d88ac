//! Throughput with metering off, `batched` and `strict`, measured side by
//! side in one run: three platforms (one per mode) serve the built-in
//! `hello`, and rounds alternate between them so every mode sees the same
//! machine state. Each round drives one platform with 16 concurrent callers
//! through its HTTP service for a fixed time.
//!
//! `cargo bench -p glia-host --bench billing` (`GLIA_BENCH_SECONDS` sets each
//! round's length, `GLIA_BENCH_ROUNDS` the rounds per mode, and
//! `GLIA_BENCH_MODES` which modes run, in order: `off,batched`, or
//! `off,off` to see how much two identical platforms differ).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    reason = "benchmark setup"
)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use glia_host::config::Durability;
use http_body_util::{BodyExt, Full};

const CALLERS: usize = 16;

/// A change to the benchmark's configuration.
type Tweak = Box<dyn Fn(&mut glia_host::config::Config)>;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Calls per second against `bench`'s `hello` for `seconds`.
fn throughput(bench: &support::Bench, seconds: u64) -> f64 {
    let app = bench.platform.app().clone();
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    bench.rt.block_on(async {
        let callers: Vec<_> = (0..CALLERS)
            .map(|_| {
                let (app, done, stop) = (app.clone(), done.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let request = http::Request::get("/fn/hello/")
                            .header("host", "localhost")
                            .header("authorization", support::AUTHORIZATION)
                            .body(Full::new(Bytes::new()))
                            .unwrap();
                        let response = app.handle(request).await;
                        assert_eq!(response.status(), 200);
                        response.into_body().collect().await.unwrap();
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        stop.store(true, Ordering::Relaxed);
        let calls = done.load(Ordering::Relaxed);
        let elapsed = started.elapsed();
        for c in callers {
            c.await.unwrap();
        }
        calls as f64 / elapsed.as_secs_f64()
    })
}

fn main() {
    let seconds = env_or("GLIA_BENCH_SECONDS", 3);
    let rounds = env_or("GLIA_BENCH_ROUNDS", 3);
    let wanted =
        std::env::var("GLIA_BENCH_MODES").unwrap_or_else(|_| "off,batched,strict".to_string());
    let modes: Vec<(&str, Tweak)> = wanted
        .split(',')
        .map(|name| -> (&str, Tweak) {
            match name {
                "off" => (name, Box::new(|c| c.billing.enabled = false)),
                "batched" => (
                    name,
                    Box::new(|c| {
                        c.billing.enabled = true;
                        c.billing.durability = Durability::Batched;
                    }),
                ),
                "strict" => (
                    name,
                    Box::new(|c| {
                        c.billing.enabled = true;
                        c.billing.durability = Durability::Strict;
                    }),
                ),
                other => panic!("unknown metering mode `{other}`: off, batched or strict"),
            }
        })
        .collect();
    let benches: Vec<_> = modes
        .iter()
        .map(|(_, tweak)| {
            support::platform_with(true, |c| {
                c.runtime.max_instances = 64;
                tweak(c);
            })
        })
        .collect();
    // Warm every platform up.
    for b in &benches {
        throughput(b, 1);
    }
    let mut results = vec![Vec::new(); modes.len()];
    for _ in 0..rounds {
        for (ix, b) in benches.iter().enumerate() {
            results[ix].push(throughput(b, seconds));
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let base = modes.first().map_or("-", |(name, _)| *name);
    let base_rate = median(&results[0]);
    println!("{CALLERS} concurrent callers, {rounds} rounds of {seconds} s per mode, alternating");
    println!("| metering | calls/s (median) | rounds | vs {base} |");
    println!("| --- | ---: | --- | ---: |");
    for ((name, _), r) in modes.iter().zip(&results) {
        let m = median(r);
        let all: Vec<String> = r.iter().map(|v| format!("{v:.0}")).collect();
        println!(
            "| {name} | {m:.0} | {} | {:+.1} % |",
            all.join(", "),
            (m / base_rate - 1.0) * 100.0
        );
    }
}
