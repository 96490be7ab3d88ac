//! Group commit: one thread owns ledger writes and commits whatever has
//! queued up in one transaction.
//!
//! In `strict` mode a caller waits for the commit that carries its record
//! (many callers share one commit, so the cost of a durable write is spread
//! over everything that arrived meanwhile). In `batched` mode nobody waits:
//! records are committed together at least every `flush_interval`, and a
//! crash loses at most that window.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{InvocationRecord, Ledger, LedgerError};
use crate::config::Durability;

/// Most records one transaction carries.
const MAX_BATCH: usize = 4096;

enum Message {
    Record(
        Box<InvocationRecord>,
        Option<oneshot::Sender<Result<(), String>>>,
    ),
    Flush(oneshot::Sender<Result<(), String>>),
}

/// Hands records to the ledger's writer thread.
pub struct LedgerWriter {
    tx: Sender<Message>,
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

impl LedgerWriter {
    /// Starts the writer thread over `ledger`.
    pub fn start(
        ledger: Arc<dyn Ledger>,
        durability: Durability,
        flush_interval: Duration,
    ) -> std::io::Result<Self> {
        let (tx, rx) = channel();
        let stats = Arc::new(WriterStats::default());
        let thread = std::thread::Builder::new()
            .name("glia-ledger".into())
            .spawn({
                let ledger = ledger.clone();
                let stats = stats.clone();
                move || run(&*ledger, &rx, durability, flush_interval, &stats)
            })?;
        Ok(Self {
            tx,
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

    /// Records an invocation. In `strict` mode this returns once the record
    /// is committed; in `batched` mode at once.
    pub async fn record(&self, record: InvocationRecord) -> Result<(), LedgerError> {
        self.stats.pending.fetch_add(1, Ordering::Relaxed);
        match self.durability {
            crate::config::Durability::Batched => {
                self.tx
                    .send(Message::Record(Box::new(record), None))
                    .map_err(|_| LedgerError::Closed("the ledger writer has stopped".into()))?;
                Ok(())
            }
            crate::config::Durability::Strict => {
                let (ack, done) = oneshot::channel();
                self.tx
                    .send(Message::Record(Box::new(record), Some(ack)))
                    .map_err(|_| LedgerError::Closed("the ledger writer has stopped".into()))?;
                done.await
                    .map_err(|_| LedgerError::Closed("the ledger writer has stopped".into()))?
                    .map_err(LedgerError::Closed)
            }
        }
    }

    /// Records without waiting, whatever the mode (for calls whose caller
    /// is gone).
    pub fn record_detached(&self, record: InvocationRecord) {
        self.stats.pending.fetch_add(1, Ordering::Relaxed);
        if self
            .tx
            .send(Message::Record(Box::new(record), None))
            .is_err()
        {
            tracing::error!("the ledger writer has stopped; a record was lost");
        }
    }

    /// Commits everything handed over so far.
    pub async fn flush(&self) -> Result<(), LedgerError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Message::Flush(ack))
            .map_err(|_| LedgerError::Closed("the ledger writer has stopped".into()))?;
        done.await
            .map_err(|_| LedgerError::Closed("the ledger writer has stopped".into()))?
            .map_err(LedgerError::Closed)
    }
}

impl Drop for LedgerWriter {
    fn drop(&mut self) {
        // Closing the channel makes the thread commit what is left and stop.
        let (tx, _) = channel();
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(
    ledger: &dyn Ledger,
    rx: &Receiver<Message>,
    durability: Durability,
    flush_interval: Duration,
    stats: &WriterStats,
) {
    let mut batch: Vec<InvocationRecord> = Vec::new();
    let mut acks: Vec<oneshot::Sender<Result<(), String>>> = Vec::new();
    loop {
        // Wait for the first message of the next batch.
        let Ok(first) = rx.recv() else { return };
        let mut closed = false;
        let take = |m: Message, batch: &mut Vec<_>, acks: &mut Vec<_>| match m {
            Message::Record(r, ack) => {
                batch.push(*r);
                acks.extend(ack);
            }
            Message::Flush(ack) => acks.push(ack),
        };
        let first_is_flush = matches!(first, Message::Flush(_));
        take(first, &mut batch, &mut acks);
        match durability {
            // Everything already queued joins this commit.
            Durability::Strict => {
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(m) => take(m, &mut batch, &mut acks),
                        Err(std::sync::mpsc::TryRecvError::Empty) => break,
                        Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    }
                }
            }
            // Collect for up to the flush interval (a flush request ends
            // the wait early).
            Durability::Batched => {
                let deadline = Instant::now() + flush_interval;
                let mut flush_now = first_is_flush;
                while batch.len() < MAX_BATCH && !flush_now {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match rx.recv_timeout(left) {
                        Ok(m) => {
                            let is_flush = matches!(m, Message::Flush(_));
                            take(m, &mut batch, &mut acks);
                            flush_now = is_flush;
                        }
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => {
                            closed = true;
                            break;
                        }
                    }
                }
            }
        }
        let result = if batch.is_empty() {
            Ok(())
        } else {
            commit(ledger, &batch, stats)
        };
        let n = batch.len() as u64;
        stats.pending.fetch_sub(n, Ordering::Relaxed);
        batch.clear();
        for ack in acks.drain(..) {
            let _ = ack.send(result.clone());
        }
        if closed {
            // Commit stragglers, then stop.
            let rest: Vec<InvocationRecord> = rx
                .try_iter()
                .filter_map(|m| match m {
                    Message::Record(r, _) => Some(*r),
                    Message::Flush(_) => None,
                })
                .collect();
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
    for attempt in 1..=5 {
        match ledger.append(batch) {
            Ok(()) => {
                stats
                    .written
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                stats.commits.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            Err(e) if attempt == 5 => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, records = batch.len(), "ledger commit failed");
                return Err(e.to_string());
            }
            Err(e) => {
                tracing::warn!(error = %e, attempt, "ledger commit failed; retrying");
                std::thread::sleep(delay);
                delay *= 2;
            }
        }
    }
    Err("unreachable".into())
}
