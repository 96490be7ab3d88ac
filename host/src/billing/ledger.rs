//! The ledger: one row per invocation, behind a trait so another database
//! (PostgreSQL) can take SQLite's place.
//!
//! SQLite keeps the ledger in its own file (`ledger.db`, WAL), apart from the
//! platform's metadata, so billing writes never wait on control-plane
//! writes. Rows are appended in batches, one transaction each (the writer
//! groups them). The columns the usage queries filter and sum are real
//! are columns, as is every other field of a record (only the per-model
//! `wasi:nn` detail is JSON, and only for calls that used it), and the one
//! secondary index is by tenant and time, so a row costs the writer thread a
//! few microseconds.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use super::usage::{UsageGroup, UsageQuery, UsageRow};
use super::{InvocationId, InvocationRecord, Outcome};
use crate::nn::NnUsageReport;

/// Why the ledger failed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("ledger record: {0}")]
    Json(#[from] serde_json::Error),
    #[error("ledger: {0}")]
    Closed(String),
}

/// Where invocation records are kept.
pub trait Ledger: Send + Sync {
    /// Appends records atomically and durably (as the ledger was opened).
    /// A record whose id is already present is left as it was.
    fn append(&self, records: &[InvocationRecord]) -> Result<(), LedgerError>;
    /// One record by invocation id.
    fn get(&self, id: &str) -> Result<Option<InvocationRecord>, LedgerError>;
    /// Totals per group over a time range.
    fn usage(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, LedgerError>;
    /// Every record of a time range, oldest first (tests, exports).
    fn records(&self, from_ms: i64, to_ms: i64) -> Result<Vec<InvocationRecord>, LedgerError>;
}

/// The SQLite ledger.
pub struct SqliteLedger {
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS invocations (
    id                TEXT PRIMARY KEY,
    tenant            TEXT NOT NULL,
    function          TEXT NOT NULL,
    version           INTEGER NOT NULL,
    started_at_ms     INTEGER NOT NULL,
    status            INTEGER NOT NULL,
    outcome           TEXT NOT NULL,
    billed_ms         INTEGER NOT NULL,
    memory_mb_ms      INTEGER NOT NULL,
    wall_us           INTEGER NOT NULL,
    queue_us          INTEGER NOT NULL,
    cold_start_us     INTEGER NOT NULL,
    run_us            INTEGER NOT NULL,
    guest_us          INTEGER NOT NULL,
    memory_mb         INTEGER NOT NULL,
    peak_memory_bytes INTEGER NOT NULL,
    cpu_inference_us  INTEGER NOT NULL,
    gpu_inference_us  INTEGER NOT NULL,
    model_loads       INTEGER NOT NULL,
    model_load_us     INTEGER NOT NULL,
    bytes_in          INTEGER NOT NULL,
    bytes_out         INTEGER NOT NULL,
    plan_version      INTEGER NOT NULL,
    currency          TEXT NOT NULL,
    request_nanos     INTEGER NOT NULL,
    memory_nanos      INTEGER NOT NULL,
    cpu_inference_nanos INTEGER NOT NULL,
    gpu_nanos         INTEGER NOT NULL,
    cold_start_nanos  INTEGER NOT NULL,
    model_load_nanos  INTEGER NOT NULL,
    cost_micros       INTEGER NOT NULL,
    -- wasi:nn detail (JSON), only for calls that used it.
    nn                TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS invocations_by_time ON invocations (tenant, started_at_ms);
";

/// Every column, in table order (for inserts and reads).
const COLUMNS: &str = "id, tenant, function, version, started_at_ms, status, outcome, billed_ms,
    memory_mb_ms, wall_us, queue_us, cold_start_us, run_us, guest_us, memory_mb,
    peak_memory_bytes, cpu_inference_us, gpu_inference_us, model_loads, model_load_us, bytes_in,
    bytes_out, plan_version, currency, request_nanos, memory_nanos, cpu_inference_nanos,
    gpu_nanos, cold_start_nanos, model_load_nanos, cost_micros, nn";

fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<InvocationRecord> {
    let u = |ix: usize| -> rusqlite::Result<u64> {
        Ok(u64::try_from(row.get::<_, i64>(ix)?).unwrap_or(0))
    };
    let outcome: String = row.get(6)?;
    let nn: Option<String> = row.get(31)?;
    let id: String = row.get(0)?;
    Ok(InvocationRecord {
        id: InvocationId::parse(&id).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                0,
                rusqlite::types::Type::Text,
                format!("`{id}` is not an invocation id").into(),
            )
        })?,
        tenant: row.get::<_, String>(1)?.into(),
        function: row.get::<_, String>(2)?.into(),
        version: row.get(3)?,
        started_at_ms: row.get(4)?,
        status: row.get(5)?,
        outcome: Outcome::parse(&outcome).unwrap_or(Outcome::Error),
        billed_ms: u(7)?,
        memory_mb_ms: u(8)?,
        usage: super::Usage {
            wall_us: u(9)?,
            queue_us: u(10)?,
            cold_start_us: u(11)?,
            run_us: u(12)?,
            guest_us: u(13)?,
            memory_mb: u(14)?,
            peak_memory_bytes: u(15)?,
            cpu_inference_us: u(16)?,
            gpu_inference_us: u(17)?,
            model_loads: u32::try_from(u(18)?).unwrap_or(u32::MAX),
            model_load_us: u(19)?,
            bytes_in: u(20)?,
            bytes_out: u(21)?,
        },
        plan_version: row.get(22)?,
        currency: row.get::<_, String>(23)?.into(),
        cost: super::Cost {
            request_nanos: u(24)?,
            memory_nanos: u(25)?,
            cpu_inference_nanos: u(26)?,
            gpu_nanos: u(27)?,
            cold_start_nanos: u(28)?,
            model_load_nanos: u(29)?,
            total_micros: u(30)?,
        },
        nn: nn
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or_default(),
    })
}

/// Clamps to SQLite's signed integers.
fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl SqliteLedger {
    /// Opens (creating) the ledger at `path`. `durable` makes every commit
    /// reach the disk before it returns (`synchronous = FULL`); otherwise a
    /// commit survives a crash of the process but not of the machine.
    pub fn open(path: &Path, durable: bool) -> Result<Self, LedgerError> {
        let writer = Connection::open(path)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        writer.pragma_update(None, "synchronous", if durable { "FULL" } else { "NORMAL" })?;
        writer.busy_timeout(std::time::Duration::from_secs(5))?;
        writer.execute_batch(SCHEMA)?;
        let reader = Connection::open(path)?;
        reader.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Self {
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
        })
    }
}

impl Ledger for SqliteLedger {
    fn append(&self, records: &[InvocationRecord]) -> Result<(), LedgerError> {
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(&format!(
                "INSERT OR IGNORE INTO invocations ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6,
                 ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22,
                 ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32)"
            ))?;
            let mut id = [0; 32];
            for r in records {
                let u = &r.usage;
                let c = &r.cost;
                let nn = if r.nn == NnUsageReport::default() {
                    None
                } else {
                    Some(serde_json::to_string(&r.nn)?)
                };
                insert.execute(params![
                    r.id.encode(&mut id),
                    &*r.tenant,
                    &*r.function,
                    r.version,
                    r.started_at_ms,
                    r.status,
                    r.outcome.as_str(),
                    int(r.billed_ms),
                    int(r.memory_mb_ms),
                    int(u.wall_us),
                    int(u.queue_us),
                    int(u.cold_start_us),
                    int(u.run_us),
                    int(u.guest_us),
                    int(u.memory_mb),
                    int(u.peak_memory_bytes),
                    int(u.cpu_inference_us),
                    int(u.gpu_inference_us),
                    u.model_loads,
                    int(u.model_load_us),
                    int(u.bytes_in),
                    int(u.bytes_out),
                    r.plan_version,
                    &*r.currency,
                    int(c.request_nanos),
                    int(c.memory_nanos),
                    int(c.cpu_inference_nanos),
                    int(c.gpu_nanos),
                    int(c.cold_start_nanos),
                    int(c.model_load_nanos),
                    int(c.total_micros),
                    nn,
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn get(&self, id: &str) -> Result<Option<InvocationRecord>, LedgerError> {
        let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {COLUMNS} FROM invocations WHERE id = ?1"))?;
        Ok(stmt.query_row([id], from_row).optional()?)
    }

    fn usage(&self, q: &UsageQuery) -> Result<Vec<UsageRow>, LedgerError> {
        let key = match q.group_by {
            UsageGroup::Function => "function",
            UsageGroup::Day => "strftime('%Y-%m-%d', started_at_ms / 1000, 'unixepoch')",
            UsageGroup::Hour => "strftime('%Y-%m-%dT%H:00Z', started_at_ms / 1000, 'unixepoch')",
            UsageGroup::Outcome => "outcome",
        };
        let sql = format!(
            "SELECT {key} AS k, COUNT(*), SUM(billed_ms), SUM(memory_mb_ms), SUM(guest_us),
                    SUM(cpu_inference_us), SUM(gpu_inference_us), SUM(model_load_us),
                    SUM(cold_start_us > 0), SUM(bytes_in), SUM(bytes_out), SUM(cost_micros),
                    SUM(outcome = 'ok'), SUM(outcome = 'rejected'), SUM(outcome IN ('trap', 'timeout', 'error'))
             FROM invocations
             WHERE tenant = ?1 AND started_at_ms >= ?2 AND started_at_ms < ?3
               AND (?4 IS NULL OR function = ?4)
             GROUP BY k ORDER BY k"
        );
        let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![q.tenant, q.from_ms, q.to_ms, q.function], |row| {
            let u = |ix: usize| -> rusqlite::Result<u64> {
                Ok(u64::try_from(row.get::<_, Option<i64>>(ix)?.unwrap_or(0)).unwrap_or(0))
            };
            Ok(UsageRow {
                key: row.get(0)?,
                invocations: u(1)?,
                billed_ms: u(2)?,
                memory_mb_ms: u(3)?,
                guest_us: u(4)?,
                cpu_inference_us: u(5)?,
                gpu_inference_us: u(6)?,
                model_load_us: u(7)?,
                cold_starts: u(8)?,
                bytes_in: u(9)?,
                bytes_out: u(10)?,
                cost_micros: u(11)?,
                ok: u(12)?,
                rejected: u(13)?,
                failed: u(14)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn records(&self, from_ms: i64, to_ms: i64) -> Result<Vec<InvocationRecord>, LedgerError> {
        let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM invocations WHERE started_at_ms >= ?1 AND started_at_ms < ?2
             ORDER BY started_at_ms, id"
        ))?;
        let rows = stmt.query_map(params![from_ms, to_ms], from_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

impl Outcome {
    /// Outcomes that ran guest code and failed.
    pub fn failed(self) -> bool {
        matches!(self, Outcome::Trap | Outcome::Timeout | Outcome::Error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::{Cost, Usage};
    use crate::nn::{Device, NnUsage};

    #[test]
    fn records_round_trip_every_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = SqliteLedger::open(&dir.path().join("ledger.db"), false).expect("opens");
        let nn = NnUsage::default();
        nn.record_compute(
            Device::Cpu,
            "ort",
            std::time::Duration::from_micros(42),
            true,
        );
        nn.record_load(
            "digits",
            Device::Cpu,
            "ort",
            std::time::Duration::from_millis(3),
        );
        let mut n = 0u64;
        let mut next = || {
            n += 1;
            n
        };
        let record = InvocationRecord {
            id: InvocationId::parse("0193abcd00007000800000000000000a").expect("an id"),
            tenant: "default".into(),
            function: "classify-digits".into(),
            version: 3,
            started_at_ms: 1_795_910_400_123,
            status: 200,
            outcome: Outcome::Trap,
            usage: Usage {
                wall_us: next(),
                queue_us: next(),
                cold_start_us: next(),
                run_us: next(),
                guest_us: next(),
                memory_mb: next(),
                peak_memory_bytes: next(),
                cpu_inference_us: next(),
                gpu_inference_us: next(),
                model_loads: 1,
                model_load_us: next(),
                bytes_in: next(),
                bytes_out: next(),
            },
            billed_ms: next(),
            memory_mb_ms: next(),
            plan_version: 9,
            currency: "EUR".into(),
            cost: Cost {
                request_nanos: next(),
                memory_nanos: next(),
                cpu_inference_nanos: next(),
                gpu_nanos: next(),
                cold_start_nanos: next(),
                model_load_nanos: next(),
                total_micros: next(),
            },
            nn: nn.report(),
        };
        let plain = InvocationRecord {
            id: InvocationId::parse("0193abce00007000800000000000000b").expect("an id"),
            nn: NnUsageReport::default(),
            ..record.clone()
        };
        ledger
            .append(&[record.clone(), plain.clone()])
            .expect("appends");
        // Appending the same id again changes nothing.
        ledger
            .append(&[InvocationRecord {
                status: 500,
                ..record.clone()
            }])
            .expect("appends");
        assert_eq!(
            ledger
                .get("0193abcd00007000800000000000000a")
                .expect("reads"),
            Some(record)
        );
        assert_eq!(
            ledger
                .get("0193abce00007000800000000000000b")
                .expect("reads"),
            Some(plain)
        );
        assert_eq!(ledger.get("nope").expect("reads"), None);
        assert_eq!(ledger.records(0, i64::MAX).expect("reads").len(), 2);
    }
}
