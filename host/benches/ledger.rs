//! The ledger writer thread's cost per row: appends batches of records like
//! those of a busy function (`batched` mode: `synchronous = NORMAL`) to a
//! fresh SQLite ledger and reports microseconds per row, per round of
//! batches (the table grows from round to round, as a real ledger does).
//!
//! Every third record is a model call's, with a `wasi:nn` report (one CPU
//! inference). Besides wall time it reports the thread's CPU time per row
//! (from `/proc/thread-self/schedstat`): what the writer takes from a core
//! that also serves calls, without the waits for the disk.
//!
//! `cargo bench -p glia-host --bench ledger` (`GLIA_BENCH_ROUNDS` rounds of
//! `GLIA_BENCH_BATCHES` batches of `GLIA_BENCH_BATCH` rows).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "benchmark setup"
)]

use std::sync::Arc;
use std::time::Instant;

use glia_host::billing::{
    Cost, InvocationId, InvocationRecord, Ledger, Outcome, RecordKind, SqliteLedger, Usage,
};
use glia_host::nn::usage::ComputeTime;
use glia_host::nn::{Device, NnUsageReport};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// This thread's time on a CPU, in nanoseconds.
fn cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    stat.split_whitespace().next().unwrap().parse().unwrap()
}

/// The median of `values`, and all of them as text.
fn median(values: &[f64]) -> (f64, String) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let all: Vec<String> = values.iter().map(|v| format!("{v:.2}")).collect();
    (sorted[sorted.len() / 2], all.join(", "))
}

fn main() {
    let rounds = env_or("GLIA_BENCH_ROUNDS", 5);
    let batches = env_or("GLIA_BENCH_BATCHES", 200);
    let batch = env_or("GLIA_BENCH_BATCH", 256);
    let dir = tempfile::tempdir().unwrap();
    let ledger = SqliteLedger::open(&dir.path().join("ledger.db"), false).unwrap();
    let (tenant, function, currency): (Arc<str>, Arc<str>, Arc<str>) =
        ("default".into(), "hello".into(), "USD".into());
    let started_at_ms = glia_host::registry::now_ms();
    let record = |i: usize| InvocationRecord {
        id: InvocationId::now(),
        kind: RecordKind::Invocation,
        tenant: tenant.clone(),
        function: function.clone(),
        version: 1,
        started_at_ms: started_at_ms + (i / 30) as i64,
        status: 200,
        outcome: Outcome::Ok,
        usage: Usage {
            wall_us: 180 + (i % 50) as u64,
            queue_us: 2,
            run_us: 90 + (i % 40) as u64,
            guest_us: 20 + (i % 10) as u64,
            memory_mb: 128,
            peak_memory_bytes: 1_114_112,
            bytes_out: 18,
            ..Usage::default()
        },
        billed_ms: 1,
        memory_mb_ms: 128,
        plan_version: 1,
        currency: currency.clone(),
        cost: Cost {
            request_nanos: 1_000,
            memory_nanos: 2,
            total_micros: 1,
            ..Cost::default()
        },
        nn: if i.is_multiple_of(3) {
            NnUsageReport {
                compute: [ComputeTime {
                    device: Device::Cpu,
                    backend: "tract".into(),
                    runs: 1,
                    micros: 40 + (i % 20) as u64,
                }]
                .into_iter()
                .collect(),
                inline_micros: 40,
                ..NnUsageReport::default()
            }
        } else {
            NnUsageReport::default()
        },
    };
    let (mut per_row, mut cpu_per_row) = (Vec::new(), Vec::new());
    let mut n = 0;
    for _ in 0..rounds {
        let rows: Vec<Vec<InvocationRecord>> = (0..batches)
            .map(|_| {
                (0..batch)
                    .map(|_| {
                        n += 1;
                        record(n)
                    })
                    .collect()
            })
            .collect();
        let (started, cpu) = (Instant::now(), cpu_ns());
        for b in &rows {
            ledger.append(b).unwrap();
        }
        let count = (batches * batch) as f64;
        per_row.push(started.elapsed().as_secs_f64() * 1e6 / count);
        cpu_per_row.push((cpu_ns() - cpu) as f64 / 1e3 / count);
    }
    for (what, values) in [("wall", per_row), ("CPU", cpu_per_row)] {
        let (median, all) = median(&values);
        println!(
            "ledger append, batches of {batch}: {median:.2} µs {what} per row (median of {rounds} rounds of {} rows: {all})",
            batches * batch,
        );
    }
}
