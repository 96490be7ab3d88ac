//! Throughput with metering off, `batched` and `strict`, measured side by
//! side in one run: three platforms (one per mode) serve the built-in
//! `hello`, and rounds alternate between them so every mode sees the same
//! machine state. Each round drives one platform with 16 concurrent callers
//! through its HTTP service for a fixed time. Besides calls per second, it
//! reports the CPU time the whole process spent per call (every thread: the
//! request worker, the ledger writer, the callers), which counts what
//! metering costs even where the ledger thread has a core to itself.
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

/// CPU time this process has used, all threads, user and system (from
/// `/proc/self/stat`, in clock ticks of 10 ms).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields from the third (after the command name, which may hold
    // spaces); utime and stime are the 14th and 15th.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

/// One round: calls per second and CPU microseconds per call.
#[derive(Clone, Copy)]
struct Round {
    rate: f64,
    cpu_us: f64,
}

/// A round against `bench`'s `hello` for `seconds`.
fn throughput(bench: &support::Bench, seconds: u64) -> Round {
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
        let (started, cpu) = (Instant::now(), cpu_time());
        let calls_before = done.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let (calls, elapsed) = (
            done.load(Ordering::Relaxed) - calls_before,
            started.elapsed(),
        );
        stop.store(true, Ordering::Relaxed);
        for c in callers {
            c.await.unwrap();
        }
        // The rows of the round's last interval count in its CPU time.
        if let Some(writer) = &app.state().billing {
            writer.flush().await.unwrap();
        }
        let cpu = cpu_time() - cpu;
        Round {
            rate: calls as f64 / elapsed.as_secs_f64(),
            cpu_us: cpu.as_secs_f64() * 1e6 / calls.max(1) as f64,
        }
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
    let median = |v: &mut dyn Iterator<Item = f64>| {
        let mut v: Vec<f64> = v.collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let rate = |r: &[Round]| median(&mut r.iter().map(|v| v.rate));
    let cpu = |r: &[Round]| median(&mut r.iter().map(|v| v.cpu_us));
    let base = modes.first().map_or("-", |(name, _)| *name);
    let (base_rate, base_cpu) = (rate(&results[0]), cpu(&results[0]));
    println!("{CALLERS} concurrent callers, {rounds} rounds of {seconds} s per mode, alternating");
    println!(
        "| metering | calls/s (median) | rounds | vs {base} | CPU µs per call (median) | rounds | vs {base} |"
    );
    println!("| --- | ---: | --- | ---: | ---: | --- | ---: |");
    for ((name, _), r) in modes.iter().zip(&results) {
        let (m, c) = (rate(r), cpu(r));
        let rates: Vec<String> = r.iter().map(|v| format!("{:.0}", v.rate)).collect();
        let cpus: Vec<String> = r.iter().map(|v| format!("{:.1}", v.cpu_us)).collect();
        println!(
            "| {name} | {m:.0} | {} | {:+.1} % | {c:.1} | {} | {:+.1} % |",
            rates.join(", "),
            (m / base_rate - 1.0) * 100.0,
            cpus.join(", "),
            (c / base_cpu - 1.0) * 100.0
        );
    }
}
