//! What `wasi:nn` did during one invocation: which models it loaded and how
//! long that took, and how long inference ran on each device. Billing and
//! telemetry read this; the response carries a summary in `server-timing`.

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use super::Device;
use crate::telemetry::Metrics;

/// Inference time on one device, through one backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeTime {
    pub device: Device,
    /// A backend's name (static as recorded; owned when read back).
    pub backend: Cow<'static, str>,
    /// Finished `compute` calls.
    pub runs: u32,
    pub micros: u64,
}

/// A model load this invocation triggered (models already loaded cost none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelLoad {
    pub model: String,
    pub device: Device,
    pub backend: Cow<'static, str>,
    pub micros: u64,
}

/// A request for a device the platform does not have, served on another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fallback {
    pub model: String,
    pub requested: Device,
    pub ran_on: Device,
}

/// A snapshot of one invocation's `wasi:nn` use.
///
/// A call's inference (one or two backend-and-device pairs) is held inline
/// and backend names are static, so a call that loads nothing builds,
/// copies and frees its report without the heap: the report travels with
/// the call's ledger row to the writer thread.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NnUsageReport {
    pub compute: SmallVec<[ComputeTime; 2]>,
    pub loads: Vec<ModelLoad>,
    pub fallbacks: Vec<Fallback>,
    /// Inference run in place, on the thread running the guest (so it is
    /// not counted as the guest's own time).
    pub inline_micros: u64,
}

impl NnUsageReport {
    /// Whether the invocation used `wasi:nn` at all (loaded or ran a model,
    /// or fell back from one device to another).
    pub fn is_empty(&self) -> bool {
        self.compute.is_empty() && self.loads.is_empty() && self.fallbacks.is_empty()
    }

    /// Total inference time on `device`.
    pub fn compute_on(&self, device: Device) -> Duration {
        Duration::from_micros(
            self.compute
                .iter()
                .filter(|c| c.device == device)
                .map(|c| c.micros)
                .sum(),
        )
    }

    /// Total model-load time this invocation triggered.
    pub fn load_time(&self) -> Duration {
        Duration::from_micros(self.loads.iter().map(|l| l.micros).sum())
    }

    /// The devices inference ran on, in a stable order.
    pub fn devices(&self) -> Vec<Device> {
        let mut devices: Vec<Device> = self.compute.iter().map(|c| c.device).collect();
        devices.sort();
        devices.dedup();
        devices
    }

    /// `server-timing` entries (durations in milliseconds), or `None` when
    /// the invocation did not use `wasi:nn`.
    pub fn server_timing(&self) -> Option<String> {
        let mut parts = Vec::new();
        if !self.loads.is_empty() {
            parts.push(format!(
                "nn-load;dur={:.3}",
                self.load_time().as_secs_f64() * 1e3
            ));
        }
        for c in &self.compute {
            parts.push(format!(
                "nn-compute;dur={:.3};desc=\"{} {} x{}\"",
                Duration::from_micros(c.micros).as_secs_f64() * 1e3,
                c.backend,
                c.device,
                c.runs
            ));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

/// Collects one invocation's `wasi:nn` use; shared between the guest's
/// store and the code that answers the call. Each run and load is also
/// counted in the platform's metrics, when given.
#[derive(Debug, Default)]
pub struct NnUsage {
    report: Mutex<NnUsageReport>,
    metrics: Option<Arc<Metrics>>,
    /// Runs that outlived their call's deadline and are still running.
    outliving: AtomicUsize,
    /// Woken as each of them ends.
    ended: Notify,
}

impl NnUsage {
    /// A collector that also counts into `metrics`.
    pub fn with_metrics(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics: Some(metrics),
            ..Self::default()
        }
    }

    /// A run that goes on after its call gave up on it (its deadline
    /// passed): its time is counted when `ran` says how long it ran, and
    /// [`settled`](Self::settled) waits for that. The call is billed for
    /// everything its runs used, until they really end.
    pub fn outlived(
        self: &Arc<Self>,
        device: Device,
        backend: &'static str,
        ran: impl Future<Output = Option<Duration>> + Send + 'static,
    ) {
        self.outliving.fetch_add(1, Ordering::AcqRel);
        let usage = self.clone();
        tokio::spawn(async move {
            if let Some(took) = ran.await {
                usage.record_compute(device, backend, took, false);
            }
            usage.outliving.fetch_sub(1, Ordering::AcqRel);
            usage.ended.notify_waiters();
        });
    }

    /// Once every run that outlived its call has ended and been counted.
    pub async fn settled(&self) {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.outliving.load(Ordering::Acquire) == 0 {
                return;
            }
            ended.await;
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut NnUsageReport) -> R) -> R {
        f(&mut self.report.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Records a run; `inline` when it ran on the guest's own thread.
    pub fn record_compute(
        &self,
        device: Device,
        backend: &'static str,
        took: Duration,
        inline: bool,
    ) {
        if let Some(metrics) = &self.metrics {
            metrics.inference(device, backend, took);
        }
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.with(|r| {
            if inline {
                r.inline_micros = r.inline_micros.saturating_add(micros);
            }
            match r
                .compute
                .iter_mut()
                .find(|c| c.device == device && c.backend == backend)
            {
                Some(c) => {
                    c.runs = c.runs.saturating_add(1);
                    c.micros = c.micros.saturating_add(micros);
                }
                None => r.compute.push(ComputeTime {
                    device,
                    backend: Cow::Borrowed(backend),
                    runs: 1,
                    micros,
                }),
            }
        });
    }

    pub fn record_load(&self, model: &str, device: Device, backend: &'static str, took: Duration) {
        if let Some(metrics) = &self.metrics {
            metrics.model_load(device, backend, took);
        }
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.with(|r| {
            r.loads.push(ModelLoad {
                model: model.to_string(),
                device,
                backend: Cow::Borrowed(backend),
                micros,
            })
        });
    }

    pub fn record_fallback(&self, model: &str, requested: Device, ran_on: Device) {
        self.with(|r| {
            r.fallbacks.push(Fallback {
                model: model.to_string(),
                requested,
                ran_on,
            })
        });
    }

    pub fn report(&self) -> NnUsageReport {
        self.with(|r| r.clone())
    }

    /// The report, leaving this collector empty (for the code that prices
    /// a finished call: it needs the report once, and need not copy it).
    pub fn take_report(&self) -> NnUsageReport {
        self.with(std::mem::take)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compute_accumulates_per_device_and_backend() {
        let usage = NnUsage::default();
        usage.record_compute(Device::Cpu, "tract", Duration::from_micros(10), true);
        usage.record_compute(Device::Cpu, "tract", Duration::from_micros(15), false);
        usage.record_compute(Device::Gpu, "torch", Duration::from_micros(7), false);
        usage.record_load("digits", Device::Cpu, "tract", Duration::from_millis(2));
        let r = usage.report();
        assert_eq!(r.compute_on(Device::Cpu), Duration::from_micros(25));
        assert_eq!(r.compute_on(Device::Gpu), Duration::from_micros(7));
        assert_eq!(r.devices(), vec![Device::Cpu, Device::Gpu]);
        assert_eq!(r.load_time(), Duration::from_millis(2));
        assert_eq!(r.inline_micros, 10);
        assert_eq!(
            r.server_timing().as_deref(),
            Some(
                "nn-load;dur=2.000, nn-compute;dur=0.025;desc=\"tract cpu x2\", \
                 nn-compute;dur=0.007;desc=\"torch gpu x1\""
            )
        );
        assert_eq!(NnUsage::default().report().server_timing(), None);
        // Two backend-and-device pairs are held inline: nothing on the heap.
        assert!(!r.compute.spilled());
    }

    #[test]
    fn reports_read_back_from_their_stored_json() {
        // As ledgers store it (and stored it before reports were inline).
        let stored = r#"{"compute":[{"device":"cpu","backend":"tract","runs":2,"micros":40},
            {"device":"gpu","backend":"torch","runs":1,"micros":7},
            {"device":"cpu","backend":"ort","runs":1,"micros":5}],
            "loads":[{"model":"digits","device":"cpu","backend":"tract","micros":900}],
            "fallbacks":[],"inline_micros":40}"#;
        let r: NnUsageReport = serde_json::from_str(stored).expect("reads");
        assert_eq!(r.compute.len(), 3);
        assert_eq!(r.compute[1].backend, "torch");
        assert_eq!(r.compute_on(Device::Cpu), Duration::from_micros(45));
        assert_eq!(r.loads[0].backend, "tract");
        let again: NnUsageReport =
            serde_json::from_str(&serde_json::to_string(&r).expect("writes")).expect("reads");
        assert_eq!(again, r);
    }
}
