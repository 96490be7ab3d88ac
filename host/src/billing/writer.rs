//! Group commit: one thread owns ledger writes and commits whatever has
//! queued up in one transaction.
//!
//! Callers push records onto a shared queue under a mutex, and only wake the
//! writer when it is idle: a record that arrives while a commit is running
//! simply joins the next one, with no system call on the request path.
//!
//! In `strict` mode a caller waits for the commit that carries its record
//! (many callers share one commit, so a durable write's cost is spread over
//! everything that arrived meanwhile). In `batched` mode nobody waits and
//! the writer wakes at most once per `flush_interval`: records are
//! committed together at least that often, and a crash loses at most that
//! window. While calls keep coming, the next interval starts as soon as a
//! batch is taken, so the writer wakes on its own timer and callers never
//! have to wake it; only the first call after a quiet interval does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{InvocationRecord, Ledger, LedgerError};
use crate::config::Durability;

type Ack = oneshot::Sender<Result<(), String>>;

/// The queue between callers and the writer thread.
#[derive(Default)]
struct Queue {
    records: Vec<InvocationRecord>,
    acks: Vec<Ack>,
    /// A flush was asked for: commit now, whatever the mode.
    flush: bool,
    /// The writer is waiting for work (a push must wake it).
    idle: bool,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Hands records to the ledger's writer thread.
pub struct LedgerWriter {
    shared: Arc<Shared>,
    durability: Durability,
    ledger: Arc<dyn Ledger>,
    stats: Arc<WriterStats>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Counters of the writer.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Records committed.
    pub written: AtomicU64,
    /// Transactions committed.
    pub commits: AtomicU64,
    /// Records handed over and not yet committed.
    pub pending: AtomicU64,
    /// Failed commits.
    pub failures: AtomicU64,
}

fn closed() -> LedgerError {
    LedgerError::Closed("the ledger writer has stopped".into())
}

impl LedgerWriter {
    /// Starts the writer thread over `ledger`.
    pub fn start(
        ledger: Arc<dyn Ledger>,
        durability: Durability,
        flush_interval: Duration,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
        });
        let stats = Arc::new(WriterStats::default());
        let thread = std::thread::Builder::new()
            .name("glia-ledger".into())
            .spawn({
                let (ledger, shared, stats) = (ledger.clone(), shared.clone(), stats.clone());
                move || run(&*ledger, &shared, durability, flush_interval, &stats)
            })?;
        Ok(Self {
            shared,
            durability,
            ledger,
            stats,
            thread: Some(thread),
        })
    }

    pub fn ledger(&self) -> &Arc<dyn Ledger> {
        &self.ledger
    }

    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Queues a record (with an acknowledgement to send once committed);
    /// wakes the writer only if it is idle and should start now.
    fn push(&self, record: InvocationRecord, ack: Option<Ack>) -> Result<(), LedgerError> {
        let mut q = self.shared.lock();
        if q.closed {
            return Err(closed());
        }
        let was_empty = q.records.is_empty();
        q.records.push(record);
        q.acks.extend(ack);
        // Strict: an idle writer starts a commit at once. Batched: an idle
        // writer starts its interval when the first record arrives.
        let wake = q.idle && (self.durability == Durability::Strict || was_empty);
        self.stats.pending.fetch_add(1, Ordering::Relaxed);
        drop(q);
        if wake {
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    /// Hands a record over without waiting for its commit (what `record`
    /// does in `batched` mode, without a future).
    pub fn hand_over(&self, record: InvocationRecord) -> Result<(), LedgerError> {
        self.push(record, None)
    }

    /// Records an invocation. In `strict` mode this returns once the record
    /// is committed; in `batched` mode at once.
    pub async fn record(&self, record: InvocationRecord) -> Result<(), LedgerError> {
        match self.durability {
            Durability::Batched => self.hand_over(record),
            Durability::Strict => {
                let (ack, done) = oneshot::channel();
                self.push(record, Some(ack))?;
                done.await
                    .map_err(|_| closed())?
                    .map_err(LedgerError::Closed)
            }
        }
    }

    /// Records without waiting, whatever the mode (for calls whose caller
    /// is gone).
    pub fn record_detached(&self, record: InvocationRecord) {
        if self.push(record, None).is_err() {
            tracing::error!("the ledger writer has stopped; a record was lost");
        }
    }

    /// Commits everything handed over so far.
    pub async fn flush(&self) -> Result<(), LedgerError> {
        let (ack, done) = oneshot::channel();
        {
            let mut q = self.shared.lock();
            if q.closed {
                return Err(closed());
            }
            q.acks.push(ack);
            q.flush = true;
        }
        self.shared.wake.notify_one();
        done.await
            .map_err(|_| closed())?
            .map_err(LedgerError::Closed)
    }
}

impl Drop for LedgerWriter {
    fn drop(&mut self) {
        // The thread commits what is left and stops.
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(
    ledger: &dyn Ledger,
    shared: &Shared,
    durability: Durability,
    flush_interval: Duration,
    stats: &WriterStats,
) {
    // The batch being committed; swapped with the queue's, so both keep
    // their capacity and a push rarely grows a vector.
    let mut records = Vec::new();
    // Batched: when the interval now filling up ends. The next one starts
    // as a batch is taken, so while calls keep coming the writer wakes
    // once an interval, and no caller has to wake it. The first interval
    // starts with the thread: records handed over before it first looks
    // wait for it too, instead of racing it into a commit of their own.
    let mut interval_end =
        (durability == Durability::Batched).then(|| Instant::now() + flush_interval);
    loop {
        let (acks, stop) = {
            let mut q = shared.lock();
            loop {
                if let Some(end) = interval_end {
                    // Let the interval fill up (a flush or close ends it).
                    q.idle = false;
                    let left = end.saturating_duration_since(Instant::now());
                    q = shared
                        .wake
                        .wait_timeout_while(q, left, |q| !q.flush && !q.closed)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                if !q.records.is_empty() || !q.acks.is_empty() || q.closed {
                    break;
                }
                // Nothing came: wait for work. In batched mode, the first
                // record starts an interval.
                q.idle = true;
                q = shared.wake.wait(q).unwrap_or_else(|p| p.into_inner());
                interval_end = (durability == Durability::Batched && !q.flush)
                    .then(|| Instant::now() + flush_interval);
            }
            q.idle = false;
            q.flush = false;
            std::mem::swap(&mut records, &mut q.records);
            (std::mem::take(&mut q.acks), q.closed)
        };
        if durability == Durability::Batched {
            interval_end = Some(Instant::now() + flush_interval);
        }
        let result = if records.is_empty() {
            Ok(())
        } else {
            commit(ledger, &records, stats)
        };
        stats
            .pending
            .fetch_sub(records.len() as u64, Ordering::Relaxed);
        for ack in acks {
            let _ = ack.send(result.clone());
        }
        // Dropped here, outside the lock.
        records.clear();
        if stop {
            // Anything queued after the last take, then stop.
            let rest = std::mem::take(&mut shared.lock().records);
            if !rest.is_empty() {
                let _ = commit(ledger, &rest, stats);
            }
            return;
        }
    }
}

/// Commits a batch, retrying a few times (a busy database, a full disk that
/// frees up) before reporting failure.
fn commit(
    ledger: &dyn Ledger,
    batch: &[InvocationRecord],
    stats: &WriterStats,
) -> Result<(), String> {
    let mut delay = Duration::from_millis(10);
    let mut attempt = 1;
    loop {
        match ledger.append(batch) {
            Ok(()) => {
                stats
                    .written
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                stats.commits.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            Err(e) if attempt >= 5 => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, records = batch.len(), "ledger commit failed");
                return Err(e.to_string());
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt, "ledger commit failed; retrying");
                std::thread::sleep(delay);
                delay *= 2;
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::{InvocationId, Outcome, RecordKind, SqliteLedger};

    /// The `i`th test id (upper halves increase, as a process makes them).
    fn id(i: u32) -> InvocationId {
        InvocationId::from_halves(
            (1_795_910_400_000 + u64::from(i)) << 16 | 0x7000,
            0x8000_0000_0000_0000 | u64::from(i),
        )
    }

    fn record(i: u32) -> InvocationRecord {
        InvocationRecord {
            id: id(i),
            kind: RecordKind::Invocation,
            tenant: "default".into(),
            function: "f".into(),
            version: 1,
            started_at_ms: i64::from(i),
            status: 200,
            outcome: Outcome::Ok,
            usage: Default::default(),
            billed_ms: 1,
            memory_mb_ms: 128,
            plan_version: 1,
            currency: "USD".into(),
            cost: Default::default(),
            nn: Default::default(),
        }
    }

    fn ledger() -> (tempfile::TempDir, Arc<dyn Ledger>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = SqliteLedger::open(&dir.path().join("ledger.db"), true).expect("opens");
        (dir, Arc::new(ledger))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn strict_records_are_committed_before_record_returns_and_grouped() {
        let (_dir, ledger) = ledger();
        let writer = Arc::new(
            LedgerWriter::start(ledger.clone(), Durability::Strict, Duration::from_secs(60))
                .expect("starts"),
        );
        let calls: Vec<_> = (0..200)
            .map(|i| {
                let writer = writer.clone();
                let ledger = ledger.clone();
                tokio::spawn(async move {
                    writer.record(record(i)).await.expect("recorded");
                    // Committed by the time record() returned.
                    assert!(ledger.get(&id(i).to_string()).expect("reads").is_some());
                })
            })
            .collect();
        for c in calls {
            c.await.expect("task");
        }
        let stats = writer.stats();
        assert_eq!(stats.written.load(Ordering::Relaxed), 200);
        assert!(
            stats.commits.load(Ordering::Relaxed) < 200,
            "concurrent records share commits"
        );
        assert_eq!(stats.pending.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn batched_records_wait_for_the_interval_or_a_flush() {
        let (_dir, ledger) = ledger();
        let writer =
            LedgerWriter::start(ledger.clone(), Durability::Batched, Duration::from_secs(60))
                .expect("starts");
        for i in 0..10 {
            writer.record(record(i)).await.expect("queued");
        }
        assert!(
            ledger.get(&id(0).to_string()).expect("reads").is_none(),
            "not yet"
        );
        writer.flush().await.expect("flushed");
        assert_eq!(ledger.records(0, 100).expect("reads").len(), 10);
        assert_eq!(writer.stats().commits.load(Ordering::Relaxed), 1);

        // And without a flush, within the interval.
        let writer = LedgerWriter::start(
            ledger.clone(),
            Durability::Batched,
            Duration::from_millis(20),
        )
        .expect("starts");
        writer.record(record(50)).await.expect("queued");
        let started = Instant::now();
        while ledger.get(&id(50).to_string()).expect("reads").is_none() {
            assert!(started.elapsed() < Duration::from_secs(2), "never written");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[test]
    fn records_queued_before_the_writer_first_looks_wait_for_the_interval() {
        let (_dir, ledger) = ledger();
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                records: (0..3).map(record).collect(),
                ..Queue::default()
            }),
            wake: Condvar::new(),
        });
        let stats = Arc::new(WriterStats::default());
        let thread = std::thread::spawn({
            let (ledger, shared, stats) = (ledger.clone(), shared.clone(), stats.clone());
            move || {
                run(
                    &*ledger,
                    &shared,
                    Durability::Batched,
                    Duration::from_secs(60),
                    &stats,
                )
            }
        });
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(stats.commits.load(Ordering::Relaxed), 0, "waits");
        assert!(ledger.get(&id(0).to_string()).expect("reads").is_none());
        shared.lock().closed = true;
        shared.wake.notify_one();
        thread.join().expect("writer");
        assert_eq!(stats.commits.load(Ordering::Relaxed), 1);
        assert_eq!(ledger.records(0, 100).expect("reads").len(), 3);
    }

    #[tokio::test]
    async fn dropping_the_writer_commits_what_is_queued() {
        let (_dir, ledger) = ledger();
        let writer =
            LedgerWriter::start(ledger.clone(), Durability::Batched, Duration::from_secs(60))
                .expect("starts");
        writer.record(record(1)).await.expect("queued");
        drop(writer);
        assert!(ledger.get(&id(1).to_string()).expect("reads").is_some());
    }
}
