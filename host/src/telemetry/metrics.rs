//! The platform's metrics, kept in atomics on the call path and read when
//! someone asks: `GET /metrics` renders them as Prometheus text, the OTLP
//! exporter sends the same readings to a collector.
//!
//! A call costs a lookup of its function in a [`DashMap`] (a shard read
//! lock, held only while its counters are bumped) and a handful of relaxed
//! atomic additions: one counter by outcome and one bucket and one sum per
//! histogram. Nothing is allocated after a function's first call, and no
//! lock is held between calls. Gauges (warm instances, queue depth, loaded
//! models, ledger lag) are not kept here at all: they are read from the
//! scheduler, the model registry and the ledger writer when collected.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;

use crate::billing::Outcome;
use crate::nn::Device;

/// Upper bounds (seconds) of the latency histograms' buckets: 100 µs to a
/// minute, about three per decade (a warm call is ~100 µs, a timeout up to
/// an hour lands in `+Inf`).
pub const LATENCY_BUCKETS: [f64; 19] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 20.0, 30.0, 60.0,
];

/// Every outcome, in the order [`FunctionMetrics`] counts them.
pub const OUTCOMES: [Outcome; 5] = Outcome::ALL;

/// A latency histogram over [`LATENCY_BUCKETS`]: one atomic per bucket
/// (not cumulative; the snapshot adds them up) and the sum in nanoseconds.
#[derive(Debug, Default)]
pub struct Histogram {
    /// `buckets[i]` counts values in `(LATENCY_BUCKETS[i-1], LATENCY_BUCKETS[i]]`;
    /// the last one counts values above every bound.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

/// A histogram as read at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Values in each bucket (not cumulative), one more than the bounds.
    pub counts: Vec<u64>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl HistogramSnapshot {
    /// Cumulative counts, one per bound, then `+Inf` (Prometheus' `le`).
    pub fn cumulative(&self) -> Vec<u64> {
        self.counts
            .iter()
            .scan(0u64, |acc, c| {
                *acc = acc.saturating_add(*c);
                Some(*acc)
            })
            .collect()
    }
}

impl Histogram {
    /// Records one value.
    pub fn observe(&self, value: Duration) {
        let secs = value.as_secs_f64();
        let ix = LATENCY_BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        if let Some(bucket) = self.buckets.get(ix) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
        let ns = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        HistogramSnapshot {
            count: counts.iter().fold(0u64, |a, c| a.saturating_add(*c)),
            counts,
            sum_seconds: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// One function's counters.
#[derive(Debug, Default)]
pub struct FunctionMetrics {
    /// Calls by outcome, in [`OUTCOMES`] order.
    outcomes: [AtomicU64; OUTCOMES.len()],
    /// From the call's arrival to its end.
    pub duration: Histogram,
    /// Waiting for admission.
    pub admission_wait: Histogram,
    /// Loading the function, for calls that found it at zero.
    pub cold_start: Histogram,
}

impl FunctionMetrics {
    /// Calls that ended with `outcome`.
    pub fn calls(&self, outcome: Outcome) -> u64 {
        self.outcomes
            .get(outcome.index())
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// What one finished call reports.
#[derive(Debug, Clone, Copy)]
pub struct CallObservation<'a> {
    pub function: &'a str,
    pub outcome: Outcome,
    /// From arrival to the end of the call.
    pub duration: Duration,
    pub admission_wait: Duration,
    /// Time spent loading the function, when this call did.
    pub cold_start: Option<Duration>,
}

/// Inference or model-load timings of one backend on one device.
pub type DeviceKey = (Device, &'static str);

/// The counters and histograms of one platform.
#[derive(Debug, Default)]
pub struct Metrics {
    functions: DashMap<String, Arc<FunctionMetrics>>,
    /// `wasi:nn` compute time, by device and backend.
    inference: DashMap<DeviceKey, Arc<Histogram>>,
    /// Model loads calls caused, by device and backend.
    model_loads: DashMap<DeviceKey, Arc<Histogram>>,
}

impl Metrics {
    pub fn new() -> Self {
        Self::default()
    }

    fn function(&self, name: &str, record: impl FnOnce(&FunctionMetrics)) {
        if let Some(metrics) = self.functions.get(name) {
            return record(&metrics);
        }
        let metrics = self
            .functions
            .entry(name.to_string())
            .or_default()
            .value()
            .clone();
        record(&metrics);
    }

    /// Counts one finished call of a function.
    pub fn call(&self, call: &CallObservation<'_>) {
        self.function(call.function, |m| {
            if let Some(counter) = m.outcomes.get(call.outcome.index()) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            m.duration.observe(call.duration);
            m.admission_wait.observe(call.admission_wait);
            if let Some(cold) = call.cold_start {
                m.cold_start.observe(cold);
            }
        });
    }

    fn timed(map: &DashMap<DeviceKey, Arc<Histogram>>, key: DeviceKey, took: Duration) {
        if let Some(h) = map.get(&key) {
            return h.observe(took);
        }
        map.entry(key).or_default().observe(took);
    }

    /// Records one `wasi:nn` compute.
    pub fn inference(&self, device: Device, backend: &'static str, took: Duration) {
        Self::timed(&self.inference, (device, backend), took);
    }

    /// Records one model load a call caused.
    pub fn model_load(&self, device: Device, backend: &'static str, took: Duration) {
        Self::timed(&self.model_loads, (device, backend), took);
    }

    /// Every function's counters, sorted by name.
    pub fn functions(&self) -> Vec<(String, Arc<FunctionMetrics>)> {
        let mut all: Vec<_> = self
            .functions
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    fn snapshot_of(
        map: &DashMap<DeviceKey, Arc<Histogram>>,
    ) -> Vec<(DeviceKey, HistogramSnapshot)> {
        let mut all: Vec<_> = map
            .iter()
            .map(|e| (*e.key(), e.value().snapshot()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Inference time histograms, by device and backend.
    pub fn inference_times(&self) -> Vec<(DeviceKey, HistogramSnapshot)> {
        Self::snapshot_of(&self.inference)
    }

    /// Model load time histograms, by device and backend.
    pub fn model_load_times(&self) -> Vec<(DeviceKey, HistogramSnapshot)> {
        Self::snapshot_of(&self.model_loads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_upper_bounds() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(100)); // on the first bound
        h.observe(Duration::from_micros(101));
        h.observe(Duration::from_secs(3600)); // above every bound
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.counts.first(), Some(&1));
        assert_eq!(s.counts.get(1), Some(&1));
        assert_eq!(s.counts.last(), Some(&1));
        assert_eq!(s.cumulative().last(), Some(&3));
        assert!((s.sum_seconds - 3600.000201).abs() < 1e-9);
    }

    #[test]
    fn calls_count_by_function_and_outcome() {
        let m = Metrics::new();
        for outcome in [Outcome::Ok, Outcome::Ok, Outcome::Timeout] {
            m.call(&CallObservation {
                function: "f",
                outcome,
                duration: Duration::from_millis(1),
                admission_wait: Duration::ZERO,
                cold_start: (outcome == Outcome::Timeout).then_some(Duration::from_millis(2)),
            });
        }
        let all = m.functions();
        let (name, f) = all.first().expect("one function");
        assert_eq!(name, "f");
        assert_eq!(f.calls(Outcome::Ok), 2);
        assert_eq!(f.calls(Outcome::Timeout), 1);
        assert_eq!(f.calls(Outcome::Trap), 0);
        assert_eq!(f.duration.snapshot().count, 3);
        assert_eq!(f.cold_start.snapshot().count, 1);
    }
}
