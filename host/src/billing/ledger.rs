//! The ledger: one row per invocation, behind a trait so another database
//! (PostgreSQL) can take SQLite's place.
//!
//! SQLite keeps the ledger in its own file (`ledger.db`, WAL), apart from the
//! platform's metadata, so billing writes never wait on control-plane
//! writes. Rows are appended in batches, one transaction each (the writer
//! groups them). Every field of a record is a column (only the per-model
//! `wasi:nn` detail is JSON, and only for calls that used it).
//!
//! A row is keyed by the upper half of its invocation id (time and counter,
//! which increase with every id a process makes) as SQLite's integer row
//! id, with the lower half beside it: appending a row is one insert at the
//! end of one B-tree, SQLite's cheapest. Besides its key a row holds its
//! start time and the rest of its record encoded as one column
//! ([`codec`](super::codec)): what a row costs SQLite grows with its
//! columns and bytes, and the encoded record is half the CPU time of one
//! column per field.
//!
//! Rows written before that layout stay where they were, one column per
//! field: `invocations_wide` (keyed like `invocations`) and
//! `invocations_by_id` (keyed by the whole id, from before ids were
//! counted). `invocations_by_id` also keeps any row whose upper half was
//! taken already (only possible when two processes write one ledger).
//! Reads look in all three.
//!
//! Usage queries do not read the rows. In the same transaction, the writer
//! adds each batch into per-minute totals (`usage_minutes`, one row per
//! tenant, minute, function and outcome), so a month's usage reads at most
//! one small row per minute, function and outcome whatever the traffic, and
//! the totals always equal the sum of the rows. A call counts in the minute
//! it arrived in; a usage range holds the minutes that start within it.
//! Rejected calls (refused by admission; nothing ran or is billed) are
//! counted in the totals only, not kept as rows: a flood of refused calls
//! costs the ledger a row per function and minute, whatever its size.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};

use rusqlite::{Connection, OptionalExtension, ToSql, params, params_from_iter};

use super::codec;
use super::usage::{UsageGroup, UsageQuery, UsageRow};
use super::{InvocationId, InvocationRecord, Outcome, RecordKind};
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
    /// The largest upper half in `invocations_by_id` and
    /// `invocations_wide` (0 when both are empty): an id at or below it may
    /// be stored in one of them already.
    older_newest: AtomicU64,
    /// The largest upper half in `invocations` that this ledger knows of:
    /// a batch whose every id is above it and above `older_newest` is
    /// appended without looking for its rows first.
    newest: AtomicU64,
    /// Rejected calls counted lately: they have no rows to be found by, so
    /// a retried batch looks for them here.
    counted_rejections: Mutex<RecentIds>,
}

/// The last [`RecentIds::CAPACITY`] ids remembered.
#[derive(Default)]
struct RecentIds {
    ids: std::collections::HashSet<InvocationId>,
    order: std::collections::VecDeque<InvocationId>,
}

impl RecentIds {
    /// Far more than a batch holds: a retried batch is the one before.
    const CAPACITY: usize = 65_536;

    fn contains(&self, id: &InvocationId) -> bool {
        self.ids.contains(id)
    }

    fn insert(&mut self, id: InvocationId) {
        if self.ids.insert(id) {
            self.order.push_back(id);
            if self.order.len() > Self::CAPACITY
                && let Some(oldest) = self.order.pop_front()
            {
                self.ids.remove(&oldest);
            }
        }
    }
}

/// A row's fields after its key, as both invocation tables declare them.
const BODY: &str = "
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
    nn                TEXT";

/// The schema (`{BODY}` stands for [`BODY`]).
const SCHEMA: &str = "
-- One row per invocation, keyed by the upper half of its id; the rest of
-- the record encoded (billing/codec.rs).
CREATE TABLE IF NOT EXISTS invocations (
    seq               INTEGER PRIMARY KEY,
    id_low            INTEGER NOT NULL,
    started_at_ms     INTEGER NOT NULL,
    record            BLOB NOT NULL
);
-- Rows of a ledger from before records were encoded, a column per field.
CREATE TABLE IF NOT EXISTS invocations_wide (
    seq               INTEGER PRIMARY KEY,
    id_low            INTEGER NOT NULL,{BODY}
);
-- Rows keyed by the whole id: a ledger's from before, and any whose upper
-- half was taken.
CREATE TABLE IF NOT EXISTS invocations_by_id (
    id                TEXT PRIMARY KEY,{BODY}
) WITHOUT ROWID;
-- Per-minute totals of the rows above, kept in the same transactions.
CREATE TABLE IF NOT EXISTS usage_minutes (
    tenant            TEXT NOT NULL,
    minute_ms         INTEGER NOT NULL,
    function          TEXT NOT NULL,
    outcome           TEXT NOT NULL,
    invocations       INTEGER NOT NULL,
    cold_starts       INTEGER NOT NULL,
    billed_ms         INTEGER NOT NULL,
    memory_mb_ms      INTEGER NOT NULL,
    guest_us          INTEGER NOT NULL,
    cpu_inference_us  INTEGER NOT NULL,
    gpu_inference_us  INTEGER NOT NULL,
    model_load_us     INTEGER NOT NULL,
    bytes_in          INTEGER NOT NULL,
    bytes_out         INTEGER NOT NULL,
    cost_micros       INTEGER NOT NULL,
    PRIMARY KEY (tenant, minute_ms, function, outcome)
) WITHOUT ROWID;
";

/// A ledger written before the per-minute totals existed: totals from its
/// rows (in both tables; `{FIELDS}` stands for [`FIELDS`]), and its per-row
/// index (which the totals replace) dropped.
const MIGRATE_TO_TOTALS: &str = "
INSERT INTO usage_minutes
SELECT tenant, started_at_ms - started_at_ms % 60000, function, outcome, COUNT(*),
       SUM(cold_start_us > 0), SUM(billed_ms), SUM(memory_mb_ms), SUM(guest_us),
       SUM(cpu_inference_us), SUM(gpu_inference_us), SUM(model_load_us), SUM(bytes_in),
       SUM(bytes_out), SUM(cost_micros)
FROM (SELECT {FIELDS} FROM invocations_by_id UNION ALL SELECT {FIELDS} FROM invocations_wide)
GROUP BY 1, 2, 3, 4;
DROP INDEX IF EXISTS invocations_by_time;
";

/// Adds a batch's totals to what is stored.
const ADD_TOTALS: &str = "
INSERT INTO usage_minutes VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)
ON CONFLICT (tenant, minute_ms, function, outcome) DO UPDATE SET
    invocations = invocations + excluded.invocations,
    cold_starts = cold_starts + excluded.cold_starts,
    billed_ms = billed_ms + excluded.billed_ms,
    memory_mb_ms = memory_mb_ms + excluded.memory_mb_ms,
    guest_us = guest_us + excluded.guest_us,
    cpu_inference_us = cpu_inference_us + excluded.cpu_inference_us,
    gpu_inference_us = gpu_inference_us + excluded.gpu_inference_us,
    model_load_us = model_load_us + excluded.model_load_us,
    bytes_in = bytes_in + excluded.bytes_in,
    bytes_out = bytes_out + excluded.bytes_out,
    cost_micros = cost_micros + excluded.cost_micros
";

const MINUTE_MS: i64 = 60_000;

/// The `outcome`s under which uploads are totalled.
const COMPILE: &str = "compile";
const MODEL_UPLOAD: &str = "model-upload";

/// One minute's totals for a tenant, function and outcome, from one batch.
/// Uploads are totalled under the outcomes `compile` and `model-upload`
/// (and their model's name for a function).
struct MinuteTotals<'r> {
    tenant: &'r str,
    function: &'r str,
    minute_ms: i64,
    outcome: &'static str,
    /// invocations, cold starts, billed ms, memory MB-ms, guest µs, CPU
    /// and GPU inference µs, model-load µs, bytes in and out, cost µ.
    sums: [u64; 11],
}

impl<'r> MinuteTotals<'r> {
    fn of(r: &'r InvocationRecord) -> Self {
        Self {
            tenant: &r.tenant,
            function: &r.function,
            minute_ms: r.started_at_ms - r.started_at_ms.rem_euclid(MINUTE_MS),
            outcome: match r.kind {
                RecordKind::Invocation => r.outcome.as_str(),
                RecordKind::Compile => COMPILE,
                RecordKind::ModelUpload => MODEL_UPLOAD,
            },
            sums: [0; 11],
        }
    }

    fn holds(&self, other: &Self) -> bool {
        self.minute_ms == other.minute_ms
            && self.outcome == other.outcome
            && self.function == other.function
            && self.tenant == other.tenant
    }

    fn add(&mut self, r: &InvocationRecord) {
        let u = &r.usage;
        let values = [
            1,
            u64::from(u.cold_start_us > 0),
            r.billed_ms,
            r.memory_mb_ms,
            u.guest_us,
            u.cpu_inference_us,
            u.gpu_inference_us,
            u.model_load_us,
            u.bytes_in,
            u.bytes_out,
            r.cost.total_micros,
        ];
        for (sum, v) in self.sums.iter_mut().zip(values) {
            *sum = sum.saturating_add(v);
        }
    }
}

/// Adds `r` to the batch's totals (a batch spans few minutes and
/// functions, so a scan of the list finds its entry).
fn add_to_totals<'r>(totals: &mut Vec<MinuteTotals<'r>>, r: &'r InvocationRecord) {
    let key = MinuteTotals::of(r);
    match totals.iter_mut().rev().find(|t| t.holds(&key)) {
        Some(t) => t.add(r),
        None => {
            let mut t = key;
            t.add(r);
            totals.push(t);
        }
    }
}

/// How many fields a row has after its key.
const FIELD_COUNT: usize = 31;

/// A row's fields after its key, in table order (for inserts and reads).
const FIELDS: &str = "tenant, function, version, started_at_ms, status, outcome, billed_ms,
    memory_mb_ms, wall_us, queue_us, cold_start_us, run_us, guest_us, memory_mb,
    peak_memory_bytes, cpu_inference_us, gpu_inference_us, model_loads, model_load_us, bytes_in,
    bytes_out, plan_version, currency, request_nanos, memory_nanos, cpu_inference_nanos,
    gpu_nanos, cold_start_nanos, model_load_nanos, cost_micros, nn";

/// How a row of a table with a column per field is keyed.
#[derive(Clone, Copy)]
enum Key {
    /// `seq, id_low`: the id's halves (`invocations_wide`).
    Halves,
    /// `id`: its text (`invocations_by_id`).
    Text,
}

impl Key {
    /// Columns before the row's fields.
    fn columns(self) -> usize {
        match self {
            Key::Halves => 2,
            Key::Text => 1,
        }
    }

    /// The statements of its table.
    fn sql(self) -> &'static Statements {
        static BY_SEQ: LazyLock<Statements> = LazyLock::new(|| Statements::of(Key::Halves));
        static BY_ID: LazyLock<Statements> = LazyLock::new(|| Statements::of(Key::Text));
        match self {
            Key::Halves => &BY_SEQ,
            Key::Text => &BY_ID,
        }
    }
}

/// The statements that name a table's every column, written once.
struct Statements {
    insert: String,
    /// One row by id.
    get: String,
    /// The rows of a time range.
    range: String,
}

impl Statements {
    fn of(key: Key) -> Self {
        let (table, columns, matches) = match key {
            Key::Halves => (
                "invocations_wide",
                "seq, id_low",
                "seq = ?1 AND id_low = ?2",
            ),
            Key::Text => ("invocations_by_id", "id", "id = ?1"),
        };
        let values: Vec<String> = (1..=key.columns() + FIELD_COUNT)
            .map(|i| format!("?{i}"))
            .collect();
        let select = format!("SELECT {columns}, {FIELDS} FROM {table} WHERE");
        Self {
            insert: format!(
                "INSERT OR IGNORE INTO {table} ({columns}, {FIELDS}) VALUES ({})",
                values.join(", ")
            ),
            get: format!("{select} {matches}"),
            range: format!("{select} started_at_ms >= ?1 AND started_at_ms < ?2"),
        }
    }
}

/// The columns of an `invocations` row.
const ENCODED: &str = "seq, id_low, started_at_ms, record";

/// Appends a row to `invocations`, unless its key is taken.
static INSERT_ENCODED: LazyLock<String> = LazyLock::new(|| {
    format!("INSERT OR IGNORE INTO invocations ({ENCODED}) VALUES (?1, ?2, ?3, ?4)")
});

/// Rows that one statement of [`INSERT_NEW_ROWS`] appends: SQLite's work
/// per statement, spread over this many rows.
const ROWS_PER_INSERT: usize = 32;

/// Appends [`ROWS_PER_INSERT`] rows whose keys must be free (an error
/// otherwise). `OR FAIL`: a taken key stops the statement without undoing
/// the rows it inserted before, so SQLite keeps no journal of the
/// statement; the caller gives up the whole transaction instead.
static INSERT_NEW_ROWS: LazyLock<String> = LazyLock::new(|| {
    let rows = vec!["(?, ?, ?, ?)"; ROWS_PER_INSERT];
    format!(
        "INSERT OR FAIL INTO invocations ({ENCODED}) VALUES {}",
        rows.join(", ")
    )
});

/// Appends one row whose key must be free.
static INSERT_NEW_ROW: LazyLock<String> = LazyLock::new(|| {
    format!("INSERT OR FAIL INTO invocations ({ENCODED}) VALUES (?1, ?2, ?3, ?4)")
});

static GET_ENCODED: LazyLock<String> =
    LazyLock::new(|| format!("SELECT {ENCODED} FROM invocations WHERE seq = ?1 AND id_low = ?2"));
static RANGE_ENCODED: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {ENCODED} FROM invocations WHERE started_at_ms >= ?1 AND started_at_ms < ?2")
});

/// A row of `invocations` ([`ENCODED`]).
fn from_encoded(row: &rusqlite::Row<'_>) -> rusqlite::Result<InvocationRecord> {
    let id = InvocationId::from_halves(
        unsigned(row.get::<_, i64>(0)?),
        unsigned(row.get::<_, i64>(1)?),
    );
    codec::decode(id, row.get(2)?, row.get_ref(3)?.as_blob()?).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Blob, e.into())
    })
}

/// A row of a table with a column per field (`key` columns, then
/// [`FIELDS`]).
fn from_row(row: &rusqlite::Row<'_>, key: Key) -> rusqlite::Result<InvocationRecord> {
    let id = match key {
        Key::Halves => InvocationId::from_halves(
            unsigned(row.get::<_, i64>(0)?),
            unsigned(row.get::<_, i64>(1)?),
        ),
        Key::Text => {
            let id: String = row.get(0)?;
            InvocationId::parse(&id).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(
                    0,
                    rusqlite::types::Type::Text,
                    format!("`{id}` is not an invocation id").into(),
                )
            })?
        }
    };
    // The `ix`th field (1: tenant ... 31: nn).
    let at = |ix: usize| ix + key.columns() - 1;
    let u = |ix: usize| -> rusqlite::Result<u64> {
        Ok(u64::try_from(row.get::<_, i64>(at(ix))?).unwrap_or(0))
    };
    let outcome: String = row.get(at(6))?;
    let nn: Option<String> = row.get(at(31))?;
    Ok(InvocationRecord {
        id,
        kind: RecordKind::Invocation,
        tenant: row.get::<_, String>(at(1))?.into(),
        function: row.get::<_, String>(at(2))?.into(),
        version: row.get(at(3))?,
        started_at_ms: row.get(at(4))?,
        status: row.get(at(5))?,
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
        plan_version: row.get(at(22))?,
        currency: row.get::<_, String>(at(23))?.into(),
        cost: super::Cost {
            request_nanos: u(24)?,
            memory_nanos: u(25)?,
            // Not columns: these tables hold rows from before CPU was
            // priced, and (rarely) a row whose upper half another process
            // took, which keeps its total but not these two parts.
            cpu_nanos: 0,
            cpu_inference_nanos: u(26)?,
            gpu_nanos: u(27)?,
            cold_start_nanos: u(28)?,
            model_load_nanos: u(29)?,
            carried_nanos: 0,
            total_micros: u(30)?,
        },
        nn: nn
            .and_then(|json| serde_json::from_str(&json).ok())
            .unwrap_or_default(),
    })
}

/// The `nn` column of a table with a column per field: the `wasi:nn`
/// report as JSON, only for calls that used it.
fn nn_json(r: &InvocationRecord) -> Result<Option<String>, serde_json::Error> {
    if r.nn == NnUsageReport::default() {
        Ok(None)
    } else {
        serde_json::to_string(&r.nn).map(Some)
    }
}

/// Binds a record's fields from parameter `first` on.
fn bind_fields(
    stmt: &mut rusqlite::Statement<'_>,
    first: usize,
    r: &InvocationRecord,
    nn: Option<&str>,
) -> rusqlite::Result<()> {
    let u = &r.usage;
    let c = &r.cost;
    let fields: [&dyn ToSql; FIELD_COUNT] = [
        &&*r.tenant,
        &&*r.function,
        &r.version,
        &r.started_at_ms,
        &r.status,
        &r.outcome.as_str(),
        &int(r.billed_ms),
        &int(r.memory_mb_ms),
        &int(u.wall_us),
        &int(u.queue_us),
        &int(u.cold_start_us),
        &int(u.run_us),
        &int(u.guest_us),
        &int(u.memory_mb),
        &int(u.peak_memory_bytes),
        &int(u.cpu_inference_us),
        &int(u.gpu_inference_us),
        &u.model_loads,
        &int(u.model_load_us),
        &int(u.bytes_in),
        &int(u.bytes_out),
        &r.plan_version,
        &&*r.currency,
        &int(c.request_nanos),
        &int(c.memory_nanos),
        &int(c.cpu_inference_nanos),
        &int(c.gpu_nanos),
        &int(c.cold_start_nanos),
        &int(c.model_load_nanos),
        &int(c.total_micros),
        &nn,
    ];
    for (ix, field) in fields.into_iter().enumerate() {
        stmt.raw_bind_parameter(first + ix, field)?;
    }
    Ok(())
}

/// An id half as SQLite stores it (the same 64 bits, signed).
fn signed(v: u64) -> i64 {
    i64::from_ne_bytes(v.to_ne_bytes())
}

fn unsigned(v: i64) -> u64 {
    u64::from_ne_bytes(v.to_ne_bytes())
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
        let exists = |sql: &str| writer.query_row(sql, [], |row| row.get::<_, bool>(0));
        let had_totals =
            exists("SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'usage_minutes')")?;
        let has_column = |column: &str| {
            exists(&format!(
                "SELECT EXISTS (SELECT 1 FROM pragma_table_info('invocations') WHERE name = '{column}')"
            ))
        };
        // Rows keyed by their whole id: the table becomes `invocations_by_id`.
        let keyed_by_id = has_column("id")?;
        // Rows with a column per field: the table becomes `invocations_wide`.
        let wide = !keyed_by_id && has_column("tenant")?;
        let tx = writer.unchecked_transaction()?;
        if keyed_by_id {
            tx.execute_batch("ALTER TABLE invocations RENAME TO invocations_by_id")?;
        } else if wide {
            tx.execute_batch("ALTER TABLE invocations RENAME TO invocations_wide")?;
        }
        tx.execute_batch(&SCHEMA.replace("{BODY}", BODY))?;
        if !had_totals {
            tx.execute_batch(&MIGRATE_TO_TOTALS.replace("{FIELDS}", FIELDS))?;
        }
        tx.commit()?;
        // Ids made from now on come after every row's.
        let newest = |table: &str| -> rusqlite::Result<u64> {
            let seq: Option<i64> =
                writer.query_row(&format!("SELECT MAX(seq) FROM {table}"), [], |row| {
                    row.get(0)
                })?;
            Ok(seq.map_or(0, unsigned))
        };
        let by_id_newest = writer
            .query_row("SELECT MAX(id) FROM invocations_by_id", [], |row| {
                row.get::<_, Option<String>>(0)
            })?
            .and_then(|id| InvocationId::parse(&id))
            .map_or(0, |id| id.halves().0);
        let older_newest = newest("invocations_wide")?.max(by_id_newest);
        let newest = newest("invocations")?;
        InvocationId::make_later_than(newest.max(older_newest));
        let reader = Connection::open(path)?;
        reader.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Self {
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
            older_newest: AtomicU64::new(older_newest),
            newest: AtomicU64::new(newest),
            counted_rejections: Mutex::default(),
        })
    }
}

/// Binds `r` as the `invocations` row whose first column is parameter
/// `first` of `insert`.
fn bind_encoded(
    insert: &mut rusqlite::CachedStatement<'_>,
    first: usize,
    r: &InvocationRecord,
    encoded: &mut Vec<u8>,
) -> rusqlite::Result<()> {
    let (high, low) = r.id.halves();
    encoded.clear();
    codec::encode(r, encoded);
    insert.raw_bind_parameter(first, signed(high))?;
    insert.raw_bind_parameter(first + 1, signed(low))?;
    insert.raw_bind_parameter(first + 2, r.started_at_ms)?;
    insert.raw_bind_parameter(first + 3, &encoded[..])
}

/// A batch's transaction. Its `BEGIN`, `COMMIT` and `ROLLBACK` are cached
/// statements: rusqlite's own transactions parse them anew each time, a
/// tenth of the writer's CPU time when commits carry few rows.
struct Batch<'c> {
    conn: &'c Connection,
}

impl<'c> Batch<'c> {
    fn begin(conn: &'c Connection) -> rusqlite::Result<Self> {
        conn.prepare_cached("BEGIN")?.execute([])?;
        Ok(Self { conn })
    }

    /// Commits; a commit that fails is rolled back.
    fn commit(self) -> rusqlite::Result<()> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        Ok(())
    }
}

impl std::ops::Deref for Batch<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        // Not committed: undo what the batch wrote.
        if !self.conn.is_autocommit() {
            let rolled_back = self
                .conn
                .prepare_cached("ROLLBACK")
                .and_then(|mut rollback| rollback.execute([]));
            if let Err(e) = rolled_back {
                tracing::error!(error = %e, "rolling back a ledger batch failed");
            }
        }
    }
}

/// Adds a batch's totals to the stored ones.
fn add_totals(tx: &Connection, totals: &[MinuteTotals<'_>]) -> rusqlite::Result<()> {
    let mut add = tx.prepare_cached(ADD_TOTALS)?;
    for t in totals {
        let key: [&dyn ToSql; 4] = [&t.tenant, &t.minute_ms, &t.function, &t.outcome];
        let sums = t.sums.map(int);
        let sums = sums.iter().map(|v| v as &dyn ToSql);
        add.execute(params_from_iter(key.into_iter().chain(sums)))?;
    }
    Ok(())
}

/// Whether a record is stored as a row. A rejected call (nothing ran,
/// nothing is billed) is only counted in its minute's totals, so a flood
/// of refused calls adds a row per function and minute, not per call.
fn kept_as_row(r: &InvocationRecord) -> bool {
    r.outcome != Outcome::Rejected
}

/// Appends a batch none of whose ids can be stored already, with no look
/// for them first. A key that is taken after all (an id twice in the
/// batch, a row of another process) fails the transaction with a
/// constraint error.
fn append_new(conn: &Connection, records: &[InvocationRecord]) -> rusqlite::Result<()> {
    let tx = Batch::begin(conn)?;
    {
        let mut many = tx.prepare_cached(&INSERT_NEW_ROWS)?;
        let mut one = tx.prepare_cached(&INSERT_NEW_ROW)?;
        let mut encoded = Vec::with_capacity(256);
        // Rejected calls are counted in the totals only.
        let rows: Vec<&InvocationRecord> = records.iter().filter(|r| kept_as_row(r)).collect();
        let mut chunks = rows.chunks_exact(ROWS_PER_INSERT);
        for chunk in &mut chunks {
            for (i, r) in chunk.iter().enumerate() {
                bind_encoded(&mut many, 4 * i + 1, r, &mut encoded)?;
            }
            many.raw_execute()?;
        }
        for r in chunks.remainder() {
            bind_encoded(&mut one, 1, r, &mut encoded)?;
            one.raw_execute()?;
        }
        let mut totals = Vec::new();
        for r in records {
            add_to_totals(&mut totals, r);
        }
        add_totals(&tx, &totals)?;
    }
    tx.commit()
}

/// Appends a batch some of whose records may be stored already (a
/// retried batch) or whose upper halves may be taken (by another process):
/// each is looked for first and stored, and counted, once. Returns the
/// largest upper half now in `invocations_by_id` or `invocations_wide`, at
/// least `older_newest`.
fn append_checked(
    conn: &Connection,
    records: &[InvocationRecord],
    mut older_newest: u64,
    counted_rejections: &RecentIds,
) -> Result<u64, LedgerError> {
    let tx = Batch::begin(conn)?;
    {
        let mut insert = tx.prepare_cached(&INSERT_ENCODED)?;
        let mut by_id = tx.prepare_cached(&Key::Text.sql().insert)?;
        let mut low_of = tx.prepare_cached("SELECT id_low FROM invocations WHERE seq = ?1")?;
        let mut stored_before = tx.prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM invocations_by_id WHERE id = ?1)
                     OR EXISTS (SELECT 1 FROM invocations_wide WHERE seq = ?2 AND id_low = ?3)",
        )?;
        let mut id = [0; 32];
        let mut encoded = Vec::with_capacity(256);
        let mut totals = Vec::new();
        for r in records {
            if !kept_as_row(r) {
                if !counted_rejections.contains(&r.id) {
                    add_to_totals(&mut totals, r);
                }
                continue;
            }
            let (high, low) = r.id.halves();
            // An id no later than the newest kept in the older tables
            // (from before, or another process's) may be there already.
            if high <= older_newest
                && stored_before.query_row(
                    params![r.id.encode(&mut id), signed(high), signed(low)],
                    |row| row.get(0),
                )?
            {
                continue;
            }
            bind_encoded(&mut insert, 1, r, &mut encoded)?;
            let mut inserted = insert.raw_execute()? == 1;
            if !inserted {
                // Its upper half is taken: by this record (a retried
                // batch), or by another's (another process).
                let taken: i64 = low_of.query_row([signed(high)], |row| row.get(0))?;
                if taken != signed(low) {
                    by_id.raw_bind_parameter(1, r.id.encode(&mut id))?;
                    bind_fields(&mut by_id, 2, r, nn_json(r)?.as_deref())?;
                    inserted = by_id.raw_execute()? == 1;
                    older_newest = older_newest.max(high);
                }
            }
            // A record already stored (a retried batch) is not counted
            // twice.
            if inserted {
                add_to_totals(&mut totals, r);
            }
        }
        add_totals(&tx, &totals)?;
    }
    tx.commit()?;
    Ok(older_newest)
}

impl Ledger for SqliteLedger {
    fn append(&self, records: &[InvocationRecord]) -> Result<(), LedgerError> {
        let conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let older_newest = self.older_newest.load(Ordering::Relaxed);
        let floor = older_newest.max(self.newest.load(Ordering::Relaxed));
        let highs = || records.iter().map(|r| r.id.halves().0);
        // Ids made by this process after every stored row's, as they are
        // but for a retried batch: none can be stored yet.
        let new = highs().all(|high| high > floor)
            && match append_new(&conn, records) {
                Ok(()) => true,
                Err(e)
                    if e.sqlite_error_code() == Some(rusqlite::ErrorCode::ConstraintViolation) =>
                {
                    false
                }
                Err(e) => return Err(e.into()),
            };
        let mut counted_rejections = self
            .counted_rejections
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !new {
            let older_newest = append_checked(&conn, records, older_newest, &counted_rejections)?;
            self.older_newest.fetch_max(older_newest, Ordering::Relaxed);
        }
        for r in records.iter().filter(|r| !kept_as_row(r)) {
            counted_rejections.insert(r.id);
        }
        self.newest
            .fetch_max(highs().max().unwrap_or(0), Ordering::Relaxed);
        Ok(())
    }

    fn get(&self, id: &str) -> Result<Option<InvocationRecord>, LedgerError> {
        let Some(id) = InvocationId::parse(id) else {
            return Ok(None);
        };
        let (high, low) = id.halves();
        let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let halves = [signed(high), signed(low)];
        let mut stmt = conn.prepare_cached(&GET_ENCODED)?;
        if let Some(found) = stmt.query_row(halves, from_encoded).optional()? {
            return Ok(Some(found));
        }
        let mut stmt = conn.prepare_cached(&Key::Halves.sql().get)?;
        let found = stmt
            .query_row(halves, |row| from_row(row, Key::Halves))
            .optional()?;
        if found.is_some() {
            return Ok(found);
        }
        let mut stmt = conn.prepare_cached(&Key::Text.sql().get)?;
        Ok(stmt
            .query_row([id.encode(&mut [0; 32])], |row| from_row(row, Key::Text))
            .optional()?)
    }

    fn usage(&self, q: &UsageQuery) -> Result<Vec<UsageRow>, LedgerError> {
        let key = match q.group_by {
            UsageGroup::Function => "function",
            UsageGroup::Day => "strftime('%Y-%m-%d', minute_ms / 1000, 'unixepoch')",
            UsageGroup::Hour => "strftime('%Y-%m-%dT%H:00Z', minute_ms / 1000, 'unixepoch')",
            UsageGroup::Outcome => "outcome",
        };
        let count = |outcomes: &str| {
            format!("SUM(CASE WHEN outcome IN ({outcomes}) THEN invocations ELSE 0 END)")
        };
        // An upload's CPU time and bytes are its own, not the calls'.
        let of = |outcomes: &str, column: &str| {
            format!("SUM(CASE WHEN outcome IN ({outcomes}) THEN {column} ELSE 0 END)")
        };
        let uploads = format!("'{COMPILE}', '{MODEL_UPLOAD}'");
        let of_calls = |column: &str| {
            format!("SUM(CASE WHEN outcome NOT IN ({uploads}) THEN {column} ELSE 0 END)")
        };
        let sql = format!(
            "SELECT {key} AS k, {}, SUM(billed_ms), SUM(memory_mb_ms), {},
                    SUM(cpu_inference_us), SUM(gpu_inference_us), SUM(model_load_us),
                    SUM(cold_starts), {}, SUM(bytes_out), SUM(cost_micros),
                    {}, {}, {}, {}, {}, {}, {}
             FROM usage_minutes
             WHERE tenant = ?1 AND minute_ms >= ?2 AND minute_ms < ?3
               AND (?4 IS NULL OR function = ?4)
             GROUP BY k ORDER BY k",
            of_calls("invocations"),
            of_calls("guest_us"),
            of_calls("bytes_in"),
            count("'ok'"),
            count("'rejected'"),
            count("'trap', 'timeout', 'error'"),
            count(&format!("'{COMPILE}'")),
            of(&format!("'{COMPILE}'"), "guest_us"),
            count(&format!("'{MODEL_UPLOAD}'")),
            of(&format!("'{MODEL_UPLOAD}'"), "guest_us"),
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
                compiles: u(15)?,
                compile_cpu_us: u(16)?,
                model_uploads: u(17)?,
                model_upload_cpu_us: u(18)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn records(&self, from_ms: i64, to_ms: i64) -> Result<Vec<InvocationRecord>, LedgerError> {
        let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn.prepare_cached(&RANGE_ENCODED)?;
        let mut records = stmt
            .query_map(params![from_ms, to_ms], from_encoded)?
            .collect::<Result<Vec<_>, _>>()?;
        for key in [Key::Halves, Key::Text] {
            let mut stmt = conn.prepare_cached(&key.sql().range)?;
            let rows = stmt.query_map(params![from_ms, to_ms], |row| from_row(row, key))?;
            for row in rows {
                records.push(row?);
            }
        }
        records.sort_by_key(|r| (r.started_at_ms, r.id));
        Ok(records)
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

    /// The `n`th test id (as a process makes them: upper halves increase).
    fn id(n: u32) -> InvocationId {
        InvocationId::from_halves(
            (1_795_910_400_000 + u64::from(n)) << 16 | 0x7000,
            0x8000_0000_0000_0000 | u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 2,
        )
    }

    /// What `wasi:nn` reports of a call that loaded a model and ran it.
    fn model_call_report() -> NnUsageReport {
        let nn = NnUsage::default();
        nn.record_load(
            "digits",
            Device::Cpu,
            "tract",
            std::time::Duration::from_millis(3),
        );
        nn.record_compute(
            Device::Cpu,
            "tract",
            std::time::Duration::from_micros(42),
            true,
        );
        nn.report()
    }

    /// A record of `function` arriving at `ms`.
    fn call(n: u32, function: &str, ms: i64, outcome: Outcome) -> InvocationRecord {
        InvocationRecord {
            id: id(n),
            kind: RecordKind::Invocation,
            tenant: "t".into(),
            function: function.into(),
            version: 1,
            started_at_ms: ms,
            status: 200,
            outcome,
            usage: Usage {
                run_us: 1_500,
                guest_us: u64::from(n),
                cold_start_us: u64::from(n.is_multiple_of(3)),
                bytes_in: 10,
                bytes_out: u64::from(n) * 7,
                ..Usage::default()
            },
            billed_ms: 2,
            memory_mb_ms: 256,
            plan_version: 1,
            currency: "USD".into(),
            cost: Cost {
                total_micros: u64::from(n) + 1,
                ..Cost::default()
            },
            nn: NnUsageReport::default(),
        }
    }

    /// Usage totalled from the rows themselves, for minutes starting in
    /// `[from, to)`.
    fn summed(records: &[InvocationRecord], from: i64, to: i64) -> UsageRow {
        let mut t = UsageRow::default();
        for r in records {
            let minute = r.started_at_ms - r.started_at_ms.rem_euclid(MINUTE_MS);
            if minute < from || minute >= to {
                continue;
            }
            t.invocations += 1;
            t.ok += u64::from(r.outcome == Outcome::Ok);
            t.rejected += u64::from(r.outcome == Outcome::Rejected);
            t.failed += u64::from(r.outcome.failed());
            t.cold_starts += u64::from(r.usage.cold_start_us > 0);
            t.billed_ms += r.billed_ms;
            t.memory_mb_ms += r.memory_mb_ms;
            t.guest_us += r.usage.guest_us;
            t.bytes_in += r.usage.bytes_in;
            t.bytes_out += r.usage.bytes_out;
            t.cost_micros += r.cost.total_micros;
        }
        t
    }

    fn usage(ledger: &dyn Ledger, from: i64, to: i64, group_by: UsageGroup) -> Vec<UsageRow> {
        ledger
            .usage(&UsageQuery {
                tenant: "t".into(),
                from_ms: from,
                to_ms: to,
                function: None,
                group_by,
            })
            .expect("usage")
    }

    fn without_key(mut row: UsageRow) -> UsageRow {
        row.key = String::new();
        row
    }

    #[test]
    fn usage_totals_equal_the_rows_however_they_were_batched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = SqliteLedger::open(&dir.path().join("ledger.db"), false).expect("opens");
        let base = 1_795_910_400_000; // a whole hour
        let outcomes = [Outcome::Ok, Outcome::Trap, Outcome::Rejected, Outcome::Ok];
        let records: Vec<InvocationRecord> = (0..300u32)
            .map(|n| {
                let function = if n % 2 == 0 { "a" } else { "b" };
                // Spread over three hours, several calls a minute.
                let ms = base + i64::from(n) * 37_000;
                call(n, function, ms, outcomes[n as usize % outcomes.len()])
            })
            .collect();
        // Batches of uneven sizes, and one batch sent twice (a retried
        // commit): nothing counts twice.
        for batch in records.chunks(41) {
            ledger.append(batch).expect("appends");
        }
        ledger.append(&records[..41]).expect("appends again");

        let all = usage(&ledger, 0, i64::MAX, UsageGroup::Function);
        assert_eq!(all.len(), 2);
        assert_eq!(
            without_key(UsageRow::total(&all)),
            summed(&records, 0, i64::MAX)
        );
        // Per function, per hour, per outcome: each grouping adds up.
        for group_by in [UsageGroup::Hour, UsageGroup::Day, UsageGroup::Outcome] {
            let rows = usage(&ledger, 0, i64::MAX, group_by);
            assert_eq!(
                without_key(UsageRow::total(&rows)),
                summed(&records, 0, i64::MAX),
                "{group_by:?}"
            );
        }
        assert_eq!(usage(&ledger, 0, i64::MAX, UsageGroup::Hour).len(), 4);
        // A range holds the minutes that start in it.
        let (from, to) = (base + 3_600_000 + 30_000, base + 7_200_000 + 1);
        assert_eq!(
            without_key(UsageRow::total(&usage(
                &ledger,
                from,
                to,
                UsageGroup::Function
            ))),
            summed(&records, from, to)
        );
        assert!(usage(&ledger, 0, base, UsageGroup::Function).is_empty());
    }

    #[test]
    fn a_ledger_from_before_keeps_its_rows_and_gets_its_totals() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ledger.db");
        let records: Vec<InvocationRecord> = (0..50u32)
            .map(|n| {
                call(
                    n,
                    "a",
                    1_795_910_400_000 + i64::from(n) * 10_000,
                    Outcome::Ok,
                )
            })
            .collect();
        {
            let ledger = SqliteLedger::open(&path, false).expect("opens");
            let conn = ledger.writer.lock().expect("lock");
            store_wide(&conn, &records);
            // As an earlier glia left it: rows keyed by their id's text, an
            // index per row, no totals.
            conn.execute_batch(&format!(
                "DROP TABLE usage_minutes;
                 DROP TABLE invocations_by_id;
                 CREATE TABLE old (id TEXT PRIMARY KEY, {BODY}) WITHOUT ROWID;
                 INSERT INTO old SELECT printf('%016x%016x', seq, id_low), {FIELDS}
                     FROM invocations_wide;
                 DROP TABLE invocations;
                 DROP TABLE invocations_wide;
                 ALTER TABLE old RENAME TO invocations;
                 CREATE INDEX invocations_by_time ON invocations (tenant, started_at_ms);"
            ))
            .expect("downgrades");
        }
        let ledger = SqliteLedger::open(&path, false).expect("reopens");
        let all = usage(&ledger, 0, i64::MAX, UsageGroup::Function);
        assert_eq!(
            without_key(UsageRow::total(&all)),
            summed(&records, 0, i64::MAX)
        );
        // Every row is still there, found by its id.
        assert_eq!(ledger.records(0, i64::MAX).expect("reads"), records);
        assert_eq!(
            ledger.get(&records[7].id.to_string()).expect("reads"),
            Some(records[7].clone())
        );
        let conn = ledger.reader.lock().expect("lock");
        let index: bool = conn
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'invocations_by_time')",
                [],
                |row| row.get(0),
            )
            .expect("reads");
        assert!(!index, "the per-row index is gone");
        drop(conn);
        // And it keeps counting, new rows beside the old.
        let next = call(99, "a", 1_795_910_400_000, Outcome::Ok);
        ledger.append(std::slice::from_ref(&next)).expect("appends");
        ledger.append(&records[..5]).expect("appends again");
        assert_eq!(
            UsageRow::total(&usage(&ledger, 0, i64::MAX, UsageGroup::Function)).invocations,
            51
        );
        assert_eq!(ledger.get(&next.id.to_string()).expect("reads"), Some(next));
        assert_eq!(ledger.records(0, i64::MAX).expect("reads").len(), 51);
    }

    /// Stores `records` as ledgers did before records were encoded: a column
    /// per field, in `invocations_wide`.
    fn store_wide(conn: &Connection, records: &[InvocationRecord]) {
        let mut insert = conn.prepare(&Key::Halves.sql().insert).expect("prepares");
        for r in records {
            let (high, low) = r.id.halves();
            insert.raw_bind_parameter(1, signed(high)).expect("binds");
            insert.raw_bind_parameter(2, signed(low)).expect("binds");
            let nn = nn_json(r).expect("json");
            bind_fields(&mut insert, 3, r, nn.as_deref()).expect("binds");
            assert_eq!(insert.raw_execute().expect("inserts"), 1);
        }
    }

    #[test]
    fn a_ledger_with_a_column_per_field_keeps_its_rows_and_encodes_new_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ledger.db");
        let mut records: Vec<InvocationRecord> = (0..40u32)
            .map(|n| {
                call(
                    n,
                    "a",
                    1_795_910_400_000 + i64::from(n) * 1_000,
                    Outcome::Ok,
                )
            })
            .collect();
        records[3].nn = model_call_report();
        {
            let ledger = SqliteLedger::open(&path, false).expect("opens");
            ledger.append(&records).expect("appends");
            // As the previous layout left it: the same rows and totals, a
            // column per field in `invocations`.
            let conn = ledger.writer.lock().expect("lock");
            store_wide(&conn, &records);
            conn.execute_batch(
                "DROP TABLE invocations;
                 ALTER TABLE invocations_wide RENAME TO invocations;",
            )
            .expect("downgrades");
        }
        let ledger = SqliteLedger::open(&path, false).expect("reopens");
        assert_eq!(ledger.records(0, i64::MAX).expect("reads"), records);
        assert_eq!(
            ledger.get(&records[3].id.to_string()).expect("reads"),
            Some(records[3].clone())
        );
        // Old rows handed over again are not stored or counted twice; new
        // ones are stored encoded, beside them.
        let newer: Vec<InvocationRecord> = (100..103u32)
            .map(|n| call(n, "a", 1_795_910_500_000, Outcome::Trap))
            .collect();
        ledger.append(&records[..10]).expect("appends again");
        ledger.append(&newer).expect("appends");
        let totals = UsageRow::total(&usage(&ledger, 0, i64::MAX, UsageGroup::Function));
        assert_eq!(totals.invocations, 43);
        let all = ledger.records(0, i64::MAX).expect("reads");
        assert_eq!(all.len(), 43);
        assert_eq!(without_key(totals), summed(&all, 0, i64::MAX));
        assert_eq!(
            ledger.get(&newer[1].id.to_string()).expect("reads"),
            Some(newer[1].clone())
        );
        let conn = ledger.reader.lock().expect("lock");
        let count = |table: &str| -> i64 {
            conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
                row.get(0)
            })
            .expect("reads")
        };
        assert_eq!((count("invocations"), count("invocations_wide")), (3, 40));
    }

    #[test]
    fn a_damaged_record_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = SqliteLedger::open(&dir.path().join("ledger.db"), false).expect("opens");
        let r = call(1, "a", 1_795_910_400_000, Outcome::Ok);
        ledger.append(std::slice::from_ref(&r)).expect("appends");
        ledger
            .writer
            .lock()
            .expect("lock")
            .execute_batch("UPDATE invocations SET record = substr(record, 1, 5)")
            .expect("damages");
        let err = ledger.get(&r.id.to_string()).expect_err("fails");
        assert!(err.to_string().contains("record ends early"), "{err}");
        assert!(ledger.records(0, i64::MAX).is_err());
    }

    #[test]
    fn a_row_whose_upper_half_is_taken_is_kept_by_its_whole_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = SqliteLedger::open(&dir.path().join("ledger.db"), false).expect("opens");
        let first = call(1, "a", 1_795_910_400_000, Outcome::Ok);
        // Another process's id, in the same millisecond with the same
        // counter.
        let (high, low) = first.id.halves();
        let twin = InvocationRecord {
            id: InvocationId::from_halves(high, low ^ 1),
            function: "b".into(),
            ..first.clone()
        };
        ledger
            .append(&[first.clone(), twin.clone()])
            .expect("appends");
        // A retried batch adds nothing.
        ledger
            .append(&[twin.clone(), first.clone()])
            .expect("appends");
        assert_eq!(
            ledger.get(&first.id.to_string()).expect("reads"),
            Some(first)
        );
        assert_eq!(ledger.get(&twin.id.to_string()).expect("reads"), Some(twin));
        assert_eq!(ledger.records(0, i64::MAX).expect("reads").len(), 2);
        assert_eq!(
            UsageRow::total(&usage(&ledger, 0, i64::MAX, UsageGroup::Function)).invocations,
            2
        );
        let conn = ledger.reader.lock().expect("lock");
        let by_id: i64 = conn
            .query_row("SELECT COUNT(*) FROM invocations_by_id", [], |row| {
                row.get(0)
            })
            .expect("reads");
        assert_eq!(by_id, 1);
    }

    #[test]
    fn rows_another_ledger_took_since_opening_are_not_lost_or_counted_twice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ledger.db");
        // Two processes writing one ledger, each opened while it was empty.
        let (one, two) = (
            SqliteLedger::open(&path, false).expect("opens"),
            SqliteLedger::open(&path, false).expect("opens again"),
        );
        let base = 1_795_910_400_000;
        let first: Vec<InvocationRecord> = (0..40)
            .map(|n| call(n, "a", base + i64::from(n), Outcome::Ok))
            .collect();
        one.append(&first).expect("appends");
        // The second's ids share upper halves with half of the first's: its
        // batch, appended as new, meets taken keys and is stored the
        // careful way, whole.
        let second: Vec<InvocationRecord> = (20..60)
            .map(|n| {
                let r = call(n, "b", base + i64::from(n), Outcome::Ok);
                let (high, low) = r.id.halves();
                InvocationRecord {
                    id: InvocationId::from_halves(high, low ^ 1),
                    ..r
                }
            })
            .collect();
        two.append(&second).expect("appends");
        // The first's next batch goes on as new.
        let third: Vec<InvocationRecord> = (60..100)
            .map(|n| call(n, "a", base + i64::from(n), Outcome::Ok))
            .collect();
        one.append(&third).expect("appends");
        let all: Vec<&InvocationRecord> = first.iter().chain(&second).chain(&third).collect();
        for r in &all {
            assert_eq!(
                two.get(&r.id.to_string()).expect("reads").as_ref(),
                Some(*r)
            );
        }
        assert_eq!(one.records(0, i64::MAX).expect("reads").len(), all.len());
        assert_eq!(
            UsageRow::total(&usage(&two, 0, i64::MAX, UsageGroup::Function)).invocations,
            all.len() as u64
        );
        let conn = one.reader.lock().expect("lock");
        let by_id: i64 = conn
            .query_row("SELECT COUNT(*) FROM invocations_by_id", [], |row| {
                row.get(0)
            })
            .expect("reads");
        assert_eq!(by_id, 20);
    }

    #[test]
    fn ids_made_after_opening_a_ledger_come_after_its_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ledger.db");
        // A row from a clock an hour ahead of this one.
        let ahead = crate::registry::now_ms() + 3_600_000;
        let high = u64::try_from(ahead).expect("positive") << 16 | 0x7000;
        let record = InvocationRecord {
            id: InvocationId::from_halves(high, 0x8000_0000_0000_0001),
            ..call(1, "a", ahead, Outcome::Ok)
        };
        SqliteLedger::open(&path, false)
            .expect("opens")
            .append(&[record])
            .expect("appends");
        let _ledger = SqliteLedger::open(&path, false).expect("reopens");
        assert!(InvocationId::now().halves().0 > high);
    }

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
            kind: RecordKind::Invocation,
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
                // Not columns of that table.
                cpu_nanos: 0,
                carried_nanos: 0,
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
