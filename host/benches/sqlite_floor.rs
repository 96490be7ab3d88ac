//! What one SQLite row costs at the least, whatever the ledger puts in it:
//! appends of rows of four shapes to a fresh WAL database (`synchronous =
//! NORMAL`, as `batched` runs), in transactions of `GLIA_BENCH_BATCH` rows
//! (1,400 by default: 100 ms of calls at 14,000 calls/s).
//!
//! - `narrow, text key`: a 32-hex-digit text key and one integer, `WITHOUT ROWID`;
//! - `narrow, integer key`: an increasing integer row id and one integer;
//! - `wide, text key` and `wide, integer key`: the same keys with a short
//!   text and 30 integers (a third of them non-zero), the shape of a
//!   ledger row.
//!
//! `cargo bench -p glia-host --bench sqlite_floor` (`GLIA_BENCH_ROWS` rows
//! per shape, 200,000 by default; the shapes run in turn, three times).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "benchmark setup"
)]

use std::time::Instant;

use rusqlite::Connection;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy)]
struct Shape {
    name: &'static str,
    wide: bool,
    text_key: bool,
}

/// Microseconds per row for `rows` rows of `shape`.
fn run(shape: Shape, rows: u64, batch: u64) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = Connection::open(dir.path().join("floor.db")).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
    let key = if shape.text_key {
        "k TEXT PRIMARY KEY"
    } else {
        "k INTEGER PRIMARY KEY"
    };
    let rest = if shape.wide {
        let ints: Vec<String> = (0..30).map(|i| format!("c{i} INTEGER NOT NULL")).collect();
        format!("s TEXT NOT NULL, {}", ints.join(", "))
    } else {
        "x INTEGER NOT NULL".to_owned()
    };
    let without_rowid = if shape.text_key { " WITHOUT ROWID" } else { "" };
    conn.execute_batch(&format!("CREATE TABLE t ({key}, {rest}){without_rowid}"))
        .unwrap();
    let columns = if shape.wide { 32 } else { 2 };
    let placeholders: Vec<String> = (1..=columns).map(|i| format!("?{i}")).collect();
    let sql = format!("INSERT INTO t VALUES ({})", placeholders.join(", "));
    let base = 0x0193_0000_0000_7000_u64;
    let mut text = [0u8; 32];
    let started = Instant::now();
    let mut n = 0;
    while n < rows {
        let tx = conn.transaction().unwrap();
        {
            let mut insert = tx.prepare_cached(&sql).unwrap();
            for _ in 0..batch.min(rows - n) {
                let high = base + n;
                if shape.text_key {
                    let id = uuid::Uuid::from_u64_pair(high, 0x8000_0000_0000_0000 | n);
                    insert
                        .raw_bind_parameter(1, &*id.simple().encode_lower(&mut text))
                        .unwrap();
                } else {
                    insert
                        .raw_bind_parameter(1, i64::try_from(high).unwrap())
                        .unwrap();
                }
                if shape.wide {
                    insert.raw_bind_parameter(2, "default").unwrap();
                    for c in 3..=columns {
                        let v = if c % 3 == 0 { (n % 1000) as i64 } else { 0 };
                        insert.raw_bind_parameter(c, v).unwrap();
                    }
                } else {
                    insert.raw_bind_parameter(2, (n % 1000) as i64).unwrap();
                }
                insert.raw_execute().unwrap();
                n += 1;
            }
        }
        tx.commit().unwrap();
    }
    started.elapsed().as_secs_f64() * 1e6 / rows as f64
}

fn main() {
    let rows = env_or("GLIA_BENCH_ROWS", 200_000);
    let batch = env_or("GLIA_BENCH_BATCH", 1_400).max(1);
    let shapes = [
        Shape {
            name: "narrow, text key",
            wide: false,
            text_key: true,
        },
        Shape {
            name: "narrow, integer key",
            wide: false,
            text_key: false,
        },
        Shape {
            name: "wide, text key",
            wide: true,
            text_key: true,
        },
        Shape {
            name: "wide, integer key",
            wide: true,
            text_key: false,
        },
    ];
    let mut results = vec![Vec::new(); shapes.len()];
    for _ in 0..3 {
        for (shape, times) in shapes.iter().zip(&mut results) {
            times.push(run(*shape, rows, batch));
        }
    }
    for (shape, mut times) in shapes.iter().zip(results) {
        times.sort_by(f64::total_cmp);
        let shown: Vec<String> = times.iter().map(|t| format!("{t:.2}")).collect();
        println!(
            "{:<20} {:.2} µs per row (median of 3 runs of {rows} rows: {})",
            shape.name,
            times[1],
            shown.join(", ")
        );
    }
}
