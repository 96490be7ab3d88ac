//! The invocation log store: `logs.db` (SQLite, WAL), one row per call that
//! wrote anything, appended by one writer thread and deleted after the
//! retention period.
//!
//! Captures hand their logs over under a mutex and wake the writer only
//! when it is idle (the call path never waits for a write); the writer
//! commits whatever queued meanwhile in one transaction. A log is readable
//! as soon as it is handed over: [`LogStore::get`] looks at the queue
//! before the database.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::{CallInfo, Capture, Entry, InvocationLog};

/// How often the writer deletes logs past their retention.
const REAP_INTERVAL: Duration = Duration::from_secs(600);

/// Why the log store failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invocation log database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("invocation log entries: {0}")]
    Json(#[from] serde_json::Error),
    #[error("starting the log writer: {0}")]
    Thread(std::io::Error),
}

/// Counters of the store.
#[derive(Debug, Default)]
pub struct LogStats {
    /// Logs written.
    pub stored: AtomicU64,
    /// Logs cut at the size limit.
    pub truncated: AtomicU64,
    /// Logs handed over and not yet written.
    pub pending: AtomicU64,
    /// Logs lost to a failed write.
    pub failed: AtomicU64,
}

#[derive(Default)]
struct Queue {
    logs: Vec<InvocationLog>,
    /// The writer is waiting for work (a push must wake it).
    idle: bool,
    /// A batch taken from the queue is being written.
    writing: bool,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the writer.
    wake: Condvar,
    /// Signals that a batch was written.
    written: Condvar,
    stats: LogStats,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where captures hand their logs over.
#[derive(Clone)]
pub(super) struct Sink(Arc<Shared>);

impl Sink {
    pub(super) fn push(&self, log: InvocationLog) {
        let mut q = self.0.lock();
        if q.closed {
            self.0.stats.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.logs.push(log);
        self.0.stats.pending.fetch_add(1, Ordering::Relaxed);
        let wake = q.idle;
        drop(q);
        if wake {
            self.0.wake.notify_one();
        }
    }
}

/// Invocation logs on disk.
pub struct LogStore {
    shared: Arc<Shared>,
    reader: Mutex<Connection>,
    max_bytes_per_call: usize,
    thread: Option<std::thread::JoinHandle<()>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS invocation_logs (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    invocation_id TEXT NOT NULL UNIQUE,
    function      TEXT NOT NULL,
    version       INTEGER NOT NULL,
    started_at_ms INTEGER NOT NULL,
    ended_at_ms   INTEGER NOT NULL,
    bytes_written INTEGER NOT NULL,
    bytes_kept    INTEGER NOT NULL,
    truncated     INTEGER NOT NULL,
    -- [{\"stream\": \"stdout\" | \"stderr\" | \"glia\", \"text\": ...}, ...]
    entries       TEXT NOT NULL,
    tenant        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS invocation_logs_by_function ON invocation_logs (tenant, function, seq);
CREATE INDEX IF NOT EXISTS invocation_logs_by_end ON invocation_logs (ended_at_ms);
";

const COLUMNS: &str = "seq, invocation_id, function, version, started_at_ms, ended_at_ms, \
                       bytes_written, bytes_kept, truncated, entries, tenant";

fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<InvocationLog> {
    let u = |ix: usize| -> rusqlite::Result<u64> {
        Ok(u64::try_from(row.get::<_, i64>(ix)?).unwrap_or(0))
    };
    let entries: String = row.get(9)?;
    Ok(InvocationLog {
        seq: Some(row.get(0)?),
        invocation_id: row.get(1)?,
        function: row.get(2)?,
        version: row.get(3)?,
        started_at_ms: row.get(4)?,
        ended_at_ms: row.get(5)?,
        bytes_written: u(6)?,
        bytes_kept: u(7)?,
        truncated: row.get(8)?,
        entries: serde_json::from_str::<Vec<Entry>>(&entries).unwrap_or_default(),
        tenant: row.get(10)?,
    })
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl LogStore {
    /// Opens (creating) the store at `path`, keeping at most
    /// `max_bytes_per_call` of each call and deleting logs older than
    /// `retention_hours`.
    pub fn open(
        path: &Path,
        max_bytes_per_call: usize,
        retention_hours: u64,
    ) -> Result<Arc<Self>, LogError> {
        let open = || -> Result<Connection, LogError> {
            let conn = Connection::open(path)?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            conn.busy_timeout(Duration::from_secs(5))?;
            Ok(conn)
        };
        let writer = open()?;
        writer.execute_batch(SCHEMA)?;
        let reader = open()?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            written: Condvar::new(),
            stats: LogStats::default(),
        });
        let retention = Duration::from_secs(retention_hours.saturating_mul(3600));
        let thread = std::thread::Builder::new()
            .name("glia-logs".into())
            .spawn({
                let shared = shared.clone();
                move || run(writer, &shared, retention)
            })
            .map_err(LogError::Thread)?;
        Ok(Arc::new(Self {
            shared,
            reader: Mutex::new(reader),
            max_bytes_per_call,
            thread: Some(thread),
        }))
    }

    /// A capture for one call.
    pub fn capture(&self, call: CallInfo) -> Arc<Capture> {
        Arc::new(Capture {
            call,
            limit: self.max_bytes_per_call,
            buffer: Mutex::default(),
            sink: Sink(self.shared.clone()),
        })
    }

    pub fn stats(&self) -> &LogStats {
        &self.shared.stats
    }

    fn reader(&self) -> MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One of a tenant's invocation logs (blocking).
    pub fn get(
        &self,
        tenant: &str,
        invocation_id: &str,
    ) -> Result<Option<InvocationLog>, LogError> {
        if let Some(pending) = self
            .shared
            .lock()
            .logs
            .iter()
            .find(|l| l.invocation_id == invocation_id && l.tenant == tenant)
        {
            return Ok(Some(pending.clone()));
        }
        Ok(self
            .reader()
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM invocation_logs WHERE invocation_id = ?1 AND tenant = ?2"
                ),
                params![invocation_id, tenant],
                from_row,
            )
            .optional()?)
    }

    /// A tenant's function's logs, oldest first: the `limit` latest, or with
    /// `after` the `limit` first written after that `seq` (blocking).
    pub fn recent(
        &self,
        tenant: &str,
        function: &str,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<InvocationLog>, LogError> {
        let reader = self.reader();
        let logs = match after {
            Some(after) => {
                let mut stmt = reader.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM invocation_logs WHERE tenant = ?4 AND function = ?1 \
                     AND seq > ?2 ORDER BY seq LIMIT ?3"
                ))?;
                stmt.query_map(params![function, after, limit, tenant], from_row)?
                    .collect::<Result<Vec<_>, _>>()?
            }
            None => {
                let mut stmt = reader.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM invocation_logs WHERE tenant = ?3 AND function = ?1 \
                     ORDER BY seq DESC LIMIT ?2"
                ))?;
                let mut logs = stmt
                    .query_map(params![function, limit, tenant], from_row)?
                    .collect::<Result<Vec<_>, _>>()?;
                logs.reverse();
                logs
            }
        };
        Ok(logs)
    }

    /// Deletes logs of calls that ended before `cutoff_ms`; returns how
    /// many (blocking).
    pub fn delete_before(&self, cutoff_ms: i64) -> Result<usize, LogError> {
        Ok(self.reader().execute(
            "DELETE FROM invocation_logs WHERE ended_at_ms < ?1",
            params![cutoff_ms],
        )?)
    }

    /// Waits until every log handed over so far is written (blocking).
    pub fn flush(&self) {
        let mut q = self.shared.lock();
        while !q.logs.is_empty() || q.writing {
            if q.idle {
                self.shared.wake.notify_one();
            }
            q = self
                .shared
                .written
                .wait_timeout(q, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

impl Drop for LogStore {
    fn drop(&mut self) {
        // The thread writes what is left and stops.
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(mut conn: Connection, shared: &Shared, retention: Duration) {
    let retention_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let reap = |conn: &Connection| {
        let cutoff = crate::registry::now_ms().saturating_sub(retention_ms);
        match conn.execute(
            "DELETE FROM invocation_logs WHERE ended_at_ms < ?1",
            params![cutoff],
        ) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "expired invocation logs deleted"),
            Err(e) => tracing::warn!(error = %e, "deleting expired invocation logs failed"),
        }
    };
    reap(&conn);
    let mut last_reap = std::time::Instant::now();
    loop {
        let (batch, stop) = {
            let mut q = shared.lock();
            q.idle = true;
            let left = REAP_INTERVAL.saturating_sub(last_reap.elapsed());
            let mut q = shared
                .wake
                .wait_timeout_while(q, left, |q| q.logs.is_empty() && !q.closed)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            q.idle = false;
            q.writing = true;
            (std::mem::take(&mut q.logs), q.closed)
        };
        if !batch.is_empty() {
            write(&mut conn, &batch, &shared.stats);
        }
        shared.lock().writing = false;
        shared.written.notify_all();
        if last_reap.elapsed() >= REAP_INTERVAL {
            reap(&conn);
            last_reap = std::time::Instant::now();
        }
        if stop {
            let rest = std::mem::take(&mut shared.lock().logs);
            if !rest.is_empty() {
                write(&mut conn, &rest, &shared.stats);
            }
            return;
        }
    }
}

fn write(conn: &mut Connection, batch: &[InvocationLog], stats: &LogStats) {
    let result = (|| -> Result<(), LogError> {
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(&format!(
                "INSERT OR IGNORE INTO invocation_logs ({}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                COLUMNS.trim_start_matches("seq, ")
            ))?;
            for log in batch {
                stmt.execute(params![
                    log.invocation_id,
                    log.function,
                    log.version,
                    log.started_at_ms,
                    log.ended_at_ms,
                    int(log.bytes_written),
                    int(log.bytes_kept),
                    log.truncated,
                    serde_json::to_string(&log.entries)?,
                    log.tenant,
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    })();
    let n = batch.len() as u64;
    stats.pending.fetch_sub(n, Ordering::Relaxed);
    match result {
        Ok(()) => {
            stats.stored.fetch_add(n, Ordering::Relaxed);
            let truncated = batch.iter().filter(|l| l.truncated).count() as u64;
            stats.truncated.fetch_add(truncated, Ordering::Relaxed);
        }
        Err(e) => {
            stats.failed.fetch_add(n, Ordering::Relaxed);
            tracing::error!(error = %e, logs = n, "writing invocation logs failed; they are lost");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::Stream;

    fn log(id: &str, function: &str, ended_at_ms: i64) -> InvocationLog {
        InvocationLog {
            seq: None,
            invocation_id: id.into(),
            function: function.into(),
            version: 1,
            started_at_ms: ended_at_ms - 1,
            ended_at_ms,
            bytes_written: 3,
            bytes_kept: 3,
            truncated: false,
            entries: vec![Entry {
                stream: Stream::Stdout,
                text: "hi\n".into(),
            }],
            tenant: "t".into(),
        }
    }

    #[test]
    fn logs_are_listed_per_function_in_order_and_expire() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LogStore::open(&dir.path().join("logs.db"), 1024, 1).expect("opens");
        let sink = Sink(store.shared.clone());
        let now = crate::registry::now_ms();
        for i in 0..5 {
            sink.push(log(&format!("a{i}"), "a", now + i));
        }
        sink.push(log("b0", "b", now));
        sink.push(log("old", "a", now - 2 * 3_600_000));
        store.flush();
        assert_eq!(store.stats().stored.load(Ordering::Relaxed), 7);
        assert_eq!(store.stats().pending.load(Ordering::Relaxed), 0);

        let latest = store.recent("t", "a", None, 2).expect("reads");
        let ids: Vec<&str> = latest.iter().map(|l| l.invocation_id.as_str()).collect();
        assert_eq!(ids, ["a4", "old"]);
        let first = store.recent("t", "a", Some(0), 3).expect("reads");
        let ids: Vec<&str> = first.iter().map(|l| l.invocation_id.as_str()).collect();
        assert_eq!(ids, ["a0", "a1", "a2"]);
        let after = first.last().and_then(|l| l.seq);
        let next = store.recent("t", "a", after, 10).expect("reads");
        assert_eq!(next.len(), 3);
        assert_eq!(
            store
                .get("t", "b0")
                .expect("reads")
                .expect("kept")
                .entries
                .len(),
            1
        );

        // Retention: one hour here; `old` ended two hours ago.
        assert_eq!(store.delete_before(now - 3_600_000).expect("deletes"), 1);
        assert_eq!(store.get("t", "old").expect("reads"), None);
        assert!(store.get("t", "a0").expect("reads").is_some());
        assert_eq!(store.get("other", "a0").expect("reads"), None, "per tenant");
        assert!(
            store
                .recent("other", "a", None, 10)
                .expect("reads")
                .is_empty()
        );
    }

    #[test]
    fn the_writer_deletes_expired_logs_when_it_starts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("logs.db");
        let store = LogStore::open(&path, 1024, 1).expect("opens");
        Sink(store.shared.clone()).push(log("old", "a", crate::registry::now_ms() - 7_200_000));
        store.flush();
        assert!(store.get("t", "old").expect("reads").is_some());
        drop(store);
        let store = LogStore::open(&path, 1024, 1).expect("reopens");
        store.flush();
        // The reaper runs before the first batch; give it the moment it needs.
        let started = std::time::Instant::now();
        while store.get("t", "old").expect("reads").is_some() {
            assert!(started.elapsed() < Duration::from_secs(5), "never reaped");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
