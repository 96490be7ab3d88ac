//! What one SQLite row costs at the least, whatever the ledger puts in it:
//! appends of rows of four shapes to a fresh WAL database (`synchronous =
//! NORMAL`, as `batched` runs), in transactions of `GLIA_BENCH_BATCH` rows
//! (1,400 by default: 100 ms of calls at 14,000 calls/s).
//!
//! - `narrow, text key`: a 32-hex-digit text key and one integer, `WITHOUT ROWID`;
//! - `narrow, integer key`: an increasing integer row id and one integer;
//! - `wide, text key` and `wide, integer key`: the same keys with a short
//!   text and 30 integers (a third of them non-zero), the shape of a
//!   ledger row with a column per field;
//! - `blob, integer key`: an integer row id and an 80-byte blob (a record
//!   encoded whole);
//! - `one blob per batch`: a transaction's rows as one row, an integer key
//!   and a blob of 80 bytes per row (a segment of encoded records);
//! - `blob, 32 per INSERT`: the blob rows, 32 to a statement.
//!
//! Each is reported in wall time and in the thread's CPU time (from
//! `/proc/thread-self/schedstat`), which leaves out the waits for the disk.
//!
//! `cargo bench -p glia-host --bench sqlite_floor` (`GLIA_BENCH_ROWS` rows
//! per shape, 200,000 by default; the shapes run in turn, three times).
//! `GLIA_BENCH_SHAPES` names the shapes to run (a comma-separated list of
//! name prefixes) and `GLIA_BENCH_PRAGMAS` sets pragmas on each fresh
//! database before it turns to WAL (`page_size=16384;cache_size=-65536`).
//! A run of fewer rows than the WAL holds (about 4 MB of them at 4 KiB
//! pages, 16 MB at 16 KiB) leaves out the checkpoints.

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

#[derive(Clone, Copy, PartialEq)]
enum Body {
    /// One integer.
    Narrow,
    /// A short text and 30 integers.
    Wide,
    /// An 80-byte blob.
    Blob,
    /// A batch's rows as one blob.
    Batch,
    /// An 80-byte blob, `MULTI` rows to an `INSERT`.
    Multi,
}

/// Rows to one `INSERT` of the `Multi` shape.
const MULTI: u64 = 32;

#[derive(Clone, Copy)]
struct Shape {
    name: &'static str,
    body: Body,
    text_key: bool,
}

/// This thread's time on a CPU, in nanoseconds.
fn cpu_ns() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    stat.split_whitespace().next().unwrap().parse().unwrap()
}

/// Microseconds per row for `rows` rows of `shape`: wall time and CPU time.
fn run(shape: Shape, rows: u64, batch: u64) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = Connection::open(dir.path().join("floor.db")).unwrap();
    if let Ok(pragmas) = std::env::var("GLIA_BENCH_PRAGMAS") {
        for p in pragmas.split(';').filter(|p| !p.is_empty()) {
            conn.execute_batch(&format!("PRAGMA {p}")).unwrap();
        }
    }
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.pragma_update(None, "synchronous", "NORMAL").unwrap();
    let key = if shape.text_key {
        "k TEXT PRIMARY KEY"
    } else {
        "k INTEGER PRIMARY KEY"
    };
    let rest = match shape.body {
        Body::Wide => {
            let ints: Vec<String> = (0..30).map(|i| format!("c{i} INTEGER NOT NULL")).collect();
            format!("s TEXT NOT NULL, {}", ints.join(", "))
        }
        Body::Narrow => "x INTEGER NOT NULL".to_owned(),
        Body::Blob | Body::Batch | Body::Multi => "b BLOB NOT NULL".to_owned(),
    };
    let without_rowid = if shape.text_key { " WITHOUT ROWID" } else { "" };
    conn.execute_batch(&format!("CREATE TABLE t ({key}, {rest}){without_rowid}"))
        .unwrap();
    let columns = if shape.body == Body::Wide { 32 } else { 2 };
    let placeholders: Vec<String> = (1..=columns).map(|i| format!("?{i}")).collect();
    let sql = format!("INSERT INTO t VALUES ({})", placeholders.join(", "));
    let multi_sql = format!(
        "INSERT INTO t VALUES {}",
        vec!["(?, ?)"; MULTI as usize].join(", ")
    );
    let base = 0x0193_0000_0000_7000_u64;
    let mut text = [0u8; 32];
    let mut segment = Vec::new();
    let (started, cpu) = (Instant::now(), cpu_ns());
    let mut n = 0;
    while n < rows {
        let tx = conn.transaction().unwrap();
        {
            let mut insert = tx.prepare_cached(&sql).unwrap();
            if shape.body == Body::Batch {
                let count = batch.min(rows - n);
                segment.clear();
                for i in n..n + count {
                    segment.extend_from_slice(&i.to_le_bytes());
                    segment.extend_from_slice(&[7; 72]);
                }
                insert
                    .raw_bind_parameter(1, i64::try_from(base + n).unwrap())
                    .unwrap();
                insert.raw_bind_parameter(2, &segment[..]).unwrap();
                insert.raw_execute().unwrap();
                n += count;
            }
            if shape.body == Body::Multi {
                let mut multi = tx.prepare_cached(&multi_sql).unwrap();
                let end = (n + batch).min(rows);
                while n < end {
                    // Whole statements of MULTI rows, then one row at a time.
                    let (statement, count) = if end - n >= MULTI {
                        (&mut multi, MULTI)
                    } else {
                        (&mut insert, 1)
                    };
                    for (i, row) in (n..n + count).enumerate() {
                        let mut blob = [7u8; 80];
                        blob[..8].copy_from_slice(&row.to_le_bytes());
                        let key = i64::try_from(base + row).unwrap();
                        statement.raw_bind_parameter(2 * i + 1, key).unwrap();
                        statement.raw_bind_parameter(2 * i + 2, &blob[..]).unwrap();
                    }
                    statement.raw_execute().unwrap();
                    n += count;
                }
            }
            while n < rows && shape.body != Body::Batch && shape.body != Body::Multi {
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
                match shape.body {
                    Body::Wide => {
                        insert.raw_bind_parameter(2, "default").unwrap();
                        for c in 3..=columns {
                            let v = if c % 3 == 0 { (n % 1000) as i64 } else { 0 };
                            insert.raw_bind_parameter(c, v).unwrap();
                        }
                    }
                    Body::Narrow => insert.raw_bind_parameter(2, (n % 1000) as i64).unwrap(),
                    Body::Blob | Body::Batch | Body::Multi => {
                        let mut blob = [7u8; 80];
                        blob[..8].copy_from_slice(&n.to_le_bytes());
                        insert.raw_bind_parameter(2, &blob[..]).unwrap();
                    }
                }
                insert.raw_execute().unwrap();
                n += 1;
                if n % batch == 0 {
                    break;
                }
            }
        }
        tx.commit().unwrap();
    }
    let per_row = |total: f64| total * 1e6 / rows as f64;
    (
        per_row(started.elapsed().as_secs_f64()),
        per_row((cpu_ns() - cpu) as f64 / 1e9),
    )
}

fn main() {
    let rows = env_or("GLIA_BENCH_ROWS", 200_000);
    let batch = env_or("GLIA_BENCH_BATCH", 1_400).max(1);
    let shape = |name, body, text_key| Shape {
        name,
        body,
        text_key,
    };
    let shapes = [
        shape("narrow, text key", Body::Narrow, true),
        shape("narrow, integer key", Body::Narrow, false),
        shape("wide, text key", Body::Wide, true),
        shape("wide, integer key", Body::Wide, false),
        shape("blob, integer key", Body::Blob, false),
        shape("one blob per batch", Body::Batch, false),
        shape("blob, 32 per INSERT", Body::Multi, false),
    ];
    let only = std::env::var("GLIA_BENCH_SHAPES").ok();
    let shapes: Vec<Shape> = shapes
        .into_iter()
        .filter(|s| {
            only.as_ref()
                .is_none_or(|o| o.split(',').any(|o| s.name.starts_with(o)))
        })
        .collect();
    let mut results = vec![Vec::new(); shapes.len()];
    for _ in 0..3 {
        for (shape, times) in shapes.iter().zip(&mut results) {
            times.push(run(*shape, rows, batch));
        }
    }
    for (shape, times) in shapes.iter().zip(results) {
        let median = |pick: fn(&(f64, f64)) -> f64| {
            let mut values: Vec<f64> = times.iter().map(pick).collect();
            values.sort_by(f64::total_cmp);
            let shown: Vec<String> = values.iter().map(|t| format!("{t:.2}")).collect();
            format!("{:.2} ({})", values[1], shown.join(", "))
        };
        println!(
            "{:<20} µs per row, wall {}, CPU {} (medians of 3 runs of {rows} rows)",
            shape.name,
            median(|t| t.0),
            median(|t| t.1),
        );
    }
}
