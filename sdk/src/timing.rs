//! `server-timing` entries for the current call.
//!
//! A call's entries are collected while the handler runs and sent in one
//! `server-timing` header with its response (glia adds its own entries,
//! such as `nn-compute`, after them). Every successful
//! [`Model::infer`](crate::nn::Model::infer) adds its time to the `infer`
//! entry by itself; [`measure`] and [`record`] add others:
//!
//! ```
//! use glia_sdk::timing;
//!
//! let words = timing::measure("tokenize", || "a few words".split(' ').count());
//! assert_eq!(words, 3);
//! assert_eq!(timing::entries()[0].0, "tokenize");
//! ```
//!
//! Durations are in milliseconds with three decimals
//! (`tokenize;dur=0.012, infer;dur=1.870`), entries in the order they were
//! first recorded; recording a name again adds to it.

use std::cell::RefCell;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::Response;

thread_local! {
    /// `(name, total)` per entry, in first-recorded order.
    static ENTRIES: RefCell<Vec<(String, Duration)>> = const { RefCell::new(Vec::new()) };
}

/// Adds `duration` to the entry `name` (created if new). Characters that
/// cannot appear in a metric name (anything but letters, digits and
/// `!#$%&'*+-.^_`|~`) become `-`.
pub fn record(name: &str, duration: Duration) {
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    ENTRIES.with_borrow_mut(
        |entries| match entries.iter_mut().find(|(entry, _)| *entry == name) {
            Some((_, total)) => *total = total.saturating_add(duration),
            None => entries.push((name, duration)),
        },
    );
}

/// Runs `f` and records its duration under `name`.
pub fn measure<T>(name: &str, f: impl FnOnce() -> T) -> T {
    let started = now();
    let value = f();
    record(name, since(started));
    value
}

/// Nanoseconds on a monotonic clock. Inside a component, the host's
/// `wasi:clocks` clock read directly: `std::time::Instant` goes through
/// wasi-libc and costs a few microseconds more a reading, which showed in
/// the timings of microsecond-long inferences.
pub(crate) fn now() -> u64 {
    if crate::ON_WASI {
        wasip2::clocks::monotonic_clock::now()
    } else {
        static START: OnceLock<Instant> = OnceLock::new();
        let elapsed = START.get_or_init(Instant::now).elapsed();
        u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The time since `started` (a reading of [`now`]).
pub(crate) fn since(started: u64) -> Duration {
    Duration::from_nanos(now().saturating_sub(started))
}

/// The entries recorded so far in this call.
pub fn entries() -> Vec<(String, Duration)> {
    ENTRIES.with_borrow(Clone::clone)
}

/// Forgets every entry (done before each call).
pub(crate) fn reset() {
    ENTRIES.with_borrow_mut(Vec::clear);
}

/// The entries as a `server-timing` value, or `None` when there are none.
fn header_value() -> Option<String> {
    let entries = entries();
    (!entries.is_empty()).then(|| {
        entries
            .iter()
            .map(|(name, total)| format!("{name};dur={:.3}", total.as_secs_f64() * 1e3))
            .collect::<Vec<_>>()
            .join(", ")
    })
}

/// Adds the call's entries to `response`'s `server-timing` header.
pub(crate) fn annotate(mut response: Response) -> Response {
    if let Some(value) = header_value() {
        let headers = response.headers_mut();
        let value = match headers.get("server-timing") {
            Some(own) => format!("{own}, {value}"),
            None => value,
        };
        headers.insert("server-timing", value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_accumulate_in_order_and_annotate_responses() {
        reset();
        assert_eq!(
            annotate(Response::new(200)).headers().get("server-timing"),
            None
        );
        record("tokenize", Duration::from_micros(1500));
        record("infer", Duration::from_micros(250));
        record("tokenize", Duration::from_micros(500));
        record("bad name;x", Duration::from_millis(1));
        assert_eq!(
            header_value().as_deref(),
            Some("tokenize;dur=2.000, infer;dur=0.250, bad-name-x;dur=1.000")
        );
        let response = annotate(Response::new(200).with_header("Server-Timing", "db;dur=1"));
        assert_eq!(
            response.headers().get("server-timing"),
            Some("db;dur=1, tokenize;dur=2.000, infer;dur=0.250, bad-name-x;dur=1.000")
        );
        reset();
        assert!(entries().is_empty());
    }
}
