//! The ledger: one row per invocation, behind a trait so another database
//! (PostgreSQL) can take SQLite's place.
//!
//! SQLite keeps the ledger in its own file (`ledger.db`, WAL), apart from the
//! platform's metadata, so billing writes never wait on control-plane
//! writes. Rows are appended in batches, one transaction each (the writer
//! groups them). The columns the usage queries filter and sum are real
//! columns; the whole record is also kept as JSON for
//! `GET /v1/invocations/{id}`.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use super::usage::{UsageGroup, UsageQuery, UsageRow};
use super::{InvocationRecord, Outcome};

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
    id              TEXT PRIMARY KEY,
    tenant          TEXT NOT NULL,
    function        TEXT NOT NULL,
    version         INTEGER NOT NULL,
    started_at_ms   INTEGER NOT NULL,
    status          INTEGER NOT NULL,
    outcome         TEXT NOT NULL,
    billed_ms       INTEGER NOT NULL,
    memory_mb_ms    INTEGER NOT NULL,
    run_us          INTEGER NOT NULL,
    guest_us        INTEGER NOT NULL,
    cpu_inference_us INTEGER NOT NULL,
    gpu_inference_us INTEGER NOT NULL,
    model_load_us   INTEGER NOT NULL,
    cold_start_us   INTEGER NOT NULL,
    bytes_in        INTEGER NOT NULL,
    bytes_out       INTEGER NOT NULL,
    plan_version    INTEGER NOT NULL,
    cost_micros     INTEGER NOT NULL,
    record          TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS invocations_by_time ON invocations (tenant, started_at_ms);
CREATE INDEX IF NOT EXISTS invocations_by_function ON invocations (tenant, function, started_at_ms);
";

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
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO invocations (id, tenant, function, version, started_at_ms,
                     status, outcome, billed_ms, memory_mb_ms, run_us, guest_us, cpu_inference_us,
                     gpu_inference_us, model_load_us, cold_start_us, bytes_in, bytes_out,
                     plan_version, cost_micros, record)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                     ?17, ?18, ?19, ?20)",
            )?;
            for r in records {
                let u = &r.usage;
                insert.execute(params![
                    r.id,
                    r.tenant,
                    r.function,
                    r.version,
                    r.started_at_ms,
                    r.status,
                    r.outcome.as_str(),
                    int(r.billed_ms),
                    int(r.memory_mb_ms),
                    int(u.run_us),
                    int(u.guest_us),
                    int(u.cpu_inference_us),
                    int(u.gpu_inference_us),
                    int(u.model_load_us),
                    int(u.cold_start_us),
                    int(u.bytes_in),
                    int(u.bytes_out),
                    r.plan_version,
                    int(r.cost.total_micros),
                    serde_json::to_string(r)?,
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn get(&self, id: &str) -> Result<Option<InvocationRecord>, LedgerError> {
        let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let json: Option<String> = conn
            .query_row(
                "SELECT record FROM invocations WHERE id = ?1",
                [id],
                |row| row.get(0),
            )
            .optional()?;
        Ok(match json {
            Some(json) => Some(serde_json::from_str(&json)?),
            None => None,
        })
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
        let mut stmt = conn.prepare_cached(
            "SELECT record FROM invocations WHERE started_at_ms >= ?1 AND started_at_ms < ?2
             ORDER BY started_at_ms, id",
        )?;
        let rows = stmt.query_map(params![from_ms, to_ms], |row| row.get::<_, String>(0))?;
        rows.map(|json| Ok(serde_json::from_str(&json?)?)).collect()
    }
}

impl Outcome {
    /// Outcomes that ran guest code and failed.
    pub fn failed(self) -> bool {
        matches!(self, Outcome::Trap | Outcome::Timeout | Outcome::Error)
    }
}
