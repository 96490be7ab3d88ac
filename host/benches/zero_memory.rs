//! Memory per deployed-but-zero function: deploys the built-in `hello`
//! under 10,000 names (identical bytes, so one compile) and reports the
//! growth of the process's resident set divided by the number of functions.
//!
//! `cargo bench -p glia-host --bench zero_memory` (`GLIA_BENCH_FUNCTIONS`
//! changes the count).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "benchmark setup"
)]

mod support;

use bytes::Bytes;
use glia_host::registry::SettingsPatch;

/// Resident set size in KiB, from /proc/self/status.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn main() {
    let count: usize = std::env::var("GLIA_BENCH_FUNCTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let support::Bench { rt, platform, .. } = &support::platform(false);
    let registry = platform.state().registry.clone();
    let wasm = Bytes::from_static(glia_host::builtins::BUILTINS[0].wasm);

    // The first deploy compiles; its artifact and the engine's code are not
    // per-function costs.
    let mut usage = glia_host::registry::UploadUsage::default();
    rt.block_on(registry.deploy(
        "default",
        "warmup",
        wasm.clone(),
        SettingsPatch::default(),
        &mut usage,
    ))
    .unwrap();
    let before = rss_kib();
    let started = std::time::Instant::now();
    rt.block_on(async {
        for i in 0..count {
            registry
                .deploy(
                    "default",
                    &format!("f{i:05}"),
                    wasm.clone(),
                    SettingsPatch::default(),
                    &mut usage,
                )
                .await
                .unwrap();
        }
    });
    let elapsed = started.elapsed();
    let after = rss_kib();
    let warm = platform.state().scheduler.warm_count();
    let per = (after.saturating_sub(before)) as f64 / count as f64;
    println!("functions deployed        {count}");
    println!(
        "deploy time               {:.1} s ({:.2} ms each)",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / count as f64
    );
    println!("warm versions             {warm}");
    println!("RSS before / after        {before} KiB / {after} KiB");
    println!("per zero function         {per:.2} KiB");
}
