//! Invocation logs: what a guest writes to stdout and stderr, captured per
//! call, bounded, and kept with the invocation for authors to read
//! (`GET /v1/invocations/{id}/logs`, `glia logs FUNCTION`).
//!
//! Each call gets one [`Capture`], shared by its stdout and stderr so the
//! two interleave in the order they were written. It keeps at most
//! `[telemetry.logs] max_bytes_per_call`; the rest is counted and dropped
//! (the guest's writes always succeed: a chatty guest is never trapped or
//! slowed for its logging), and the log ends with a marker saying where it
//! was cut. When the call's store is dropped, the capture hands its log to
//! the [`LogStore`] writer thread; a call that wrote nothing costs no write.
//!
//! Logs live in their own SQLite file (`logs.db`), apart from the billing
//! ledger: they are kept whether billing is on or off, their writes never
//! wait on (or delay) billing commits, and they are deleted after
//! `retention_hours` while the ledger is kept.

mod store;

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

pub use store::{LogError, LogStats, LogStore};

/// Bytes a guest may hand over in one write (wasi `check-write` permit).
const WRITE_PERMIT: usize = 64 * 1024;

/// Where a piece of a log came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
    /// Written by glia, not by the guest (the truncation marker).
    Glia,
}

/// A run of output from one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub stream: Stream,
    /// The bytes as written, as UTF-8 (invalid sequences replaced).
    pub text: String,
}

/// One invocation's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvocationLog {
    /// Position in the store (increasing); `None` until written.
    pub seq: Option<i64>,
    pub invocation_id: String,
    pub function: String,
    pub version: u32,
    /// Unix milliseconds.
    pub started_at_ms: i64,
    /// When the guest finished (its store was dropped).
    pub ended_at_ms: i64,
    /// Everything the guest wrote, kept or not.
    pub bytes_written: u64,
    /// Bytes kept (at most `max_bytes_per_call`).
    pub bytes_kept: u64,
    pub truncated: bool,
    pub entries: Vec<Entry>,
    /// The tenant that owns the function.
    pub tenant: String,
}

impl InvocationLog {
    /// The log as plain text, streams interleaved as written.
    pub fn text(&self) -> String {
        self.entries.iter().map(|e| e.text.as_str()).collect()
    }
}

/// The truncation marker ending a log cut after `kept` bytes.
pub fn truncation_marker(kept: u64) -> String {
    format!("\n[glia: log truncated after {kept} bytes]\n")
}

/// The call a capture belongs to.
#[derive(Debug, Clone)]
pub struct CallInfo {
    pub invocation_id: String,
    pub tenant: String,
    pub function: String,
    pub version: u32,
    pub started_at_ms: i64,
}

#[derive(Default)]
struct Buffer {
    chunks: Vec<(Stream, Vec<u8>)>,
    kept: usize,
    written: u64,
}

/// One call's stdout and stderr, bounded. Hands its log to the store when
/// dropped (with the call's store).
pub struct Capture {
    call: CallInfo,
    limit: usize,
    buffer: Mutex<Buffer>,
    sink: store::Sink,
}

impl Capture {
    fn write(&self, stream: Stream, bytes: &[u8]) {
        let mut buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        buffer.written = buffer.written.saturating_add(bytes.len() as u64);
        let room = self.limit.saturating_sub(buffer.kept);
        let take = bytes.get(..bytes.len().min(room)).unwrap_or_default();
        if take.is_empty() {
            return;
        }
        buffer.kept += take.len();
        match buffer.chunks.last_mut() {
            Some((last, chunk)) if *last == stream => chunk.extend_from_slice(take),
            _ => buffer.chunks.push((stream, take.to_vec())),
        }
    }

    /// The log so far, if the guest wrote anything.
    fn log(&self) -> Option<InvocationLog> {
        let buffer = std::mem::take(&mut *self.buffer.lock().unwrap_or_else(|p| p.into_inner()));
        if buffer.written == 0 {
            return None;
        }
        let kept = buffer.kept as u64;
        let truncated = buffer.written > kept;
        let mut entries: Vec<Entry> = buffer
            .chunks
            .into_iter()
            .map(|(stream, bytes)| Entry {
                stream,
                text: String::from_utf8_lossy(&bytes).into_owned(),
            })
            .collect();
        if truncated {
            entries.push(Entry {
                stream: Stream::Glia,
                text: truncation_marker(kept),
            });
        }
        Some(InvocationLog {
            seq: None,
            invocation_id: self.call.invocation_id.clone(),
            function: self.call.function.clone(),
            version: self.call.version,
            started_at_ms: self.call.started_at_ms,
            ended_at_ms: crate::registry::now_ms(),
            bytes_written: buffer.written,
            bytes_kept: kept,
            truncated,
            entries,
            tenant: self.call.tenant.clone(),
        })
    }

    /// The guest's stdout and stderr, for its WASI context.
    pub fn streams(self: &Arc<Self>) -> (GuestOutput, GuestOutput) {
        (
            GuestOutput {
                capture: self.clone(),
                stream: Stream::Stdout,
            },
            GuestOutput {
                capture: self.clone(),
                stream: Stream::Stderr,
            },
        )
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(log) = self.log() {
            self.sink.push(log);
        }
    }
}

/// One of a call's output streams, as WASI sees it: always ready, every
/// write accepted (and kept while there is room).
#[derive(Clone)]
pub struct GuestOutput {
    capture: Arc<Capture>,
    stream: Stream,
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.capture.write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.capture.write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capture(limit: usize) -> (tempfile::TempDir, Arc<LogStore>, Arc<Capture>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LogStore::open(&dir.path().join("logs.db"), limit, 1).expect("opens");
        let capture = store.capture(CallInfo {
            invocation_id: "id-1".into(),
            tenant: "t".into(),
            function: "f".into(),
            version: 2,
            started_at_ms: 1,
        });
        (dir, store, capture)
    }

    #[test]
    fn streams_interleave_and_are_bounded() {
        let (_dir, store, capture) = capture(10);
        let (mut out, mut err) = capture.streams();
        out.write(Bytes::from_static(b"one ")).expect("write");
        out.write(Bytes::from_static(b"two ")).expect("write");
        err.write(Bytes::from_static(b"oops")).expect("write");
        out.write(Bytes::from_static(b"dropped"))
            .expect("never fails");
        assert_eq!(out.check_write().expect("ready"), WRITE_PERMIT);
        drop((out, err, capture));
        let log = store.get("t", "id-1").expect("reads").expect("kept");
        assert_eq!(log.bytes_written, 19);
        assert_eq!(log.bytes_kept, 10);
        assert!(log.truncated);
        assert_eq!(
            log.entries
                .iter()
                .map(|e| (e.stream, e.text.as_str()))
                .collect::<Vec<_>>(),
            [
                (Stream::Stdout, "one two "),
                (Stream::Stderr, "oo"),
                (Stream::Glia, "\n[glia: log truncated after 10 bytes]\n"),
            ]
        );
        assert_eq!(
            log.text(),
            "one two oo\n[glia: log truncated after 10 bytes]\n"
        );
        assert_eq!((log.function.as_str(), log.version), ("f", 2));
    }

    #[test]
    fn a_silent_call_leaves_no_log() {
        let (_dir, store, capture) = capture(10);
        drop(capture.streams());
        drop(capture);
        store.flush();
        assert_eq!(store.get("t", "id-1").expect("reads"), None);
    }
}
