//! The ledger writer thread's cost per row: appends batches of records like
//! those of a busy function (`batched` mode: `synchronous = NORMAL`) to a
//! fresh SQLite ledger and reports microseconds per row, per round of
//! batches (the table grows from round to round, as a real ledger does).
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
    Cost, InvocationId, InvocationRecord, Ledger, Outcome, SqliteLedger, Usage,
};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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
        nn: Default::default(),
    };
    let mut per_row = Vec::new();
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
        let started = Instant::now();
        for b in &rows {
            ledger.append(b).unwrap();
        }
        per_row.push(started.elapsed().as_secs_f64() * 1e6 / (batches * batch) as f64);
    }
    let mut sorted = per_row.clone();
    sorted.sort_by(f64::total_cmp);
    let all: Vec<String> = per_row.iter().map(|v| format!("{v:.2}")).collect();
    println!(
        "ledger append, batches of {batch}: {:.2} µs per row (median of {rounds} rounds of {} rows: {})",
        sorted[sorted.len() / 2],
        batches * batch,
        all.join(", ")
    );
}
