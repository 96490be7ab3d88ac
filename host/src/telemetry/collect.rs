//! One reading of every metric, as named families of samples: what
//! `GET /metrics` renders as Prometheus text and what the OTLP exporter
//! sends, so both always say the same thing.
//!
//! Counters and histograms come from [`Metrics`](super::Metrics) (kept on
//! the call path); gauges are read here, at collection time, from the
//! scheduler, the model registry, the ledger writer and the log store.

use std::sync::atomic::Ordering;

use super::metrics::{HistogramSnapshot, OUTCOMES};
use crate::api::AppState;
use crate::nn::Device;

/// What kind of metric a family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (from the start of the process).
    Counter,
    /// A value now.
    Gauge,
    /// A distribution, over [`super::LATENCY_BUCKETS`].
    Histogram,
}

/// One sample's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
    Histogram(HistogramSnapshot),
}

/// One labelled sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: Vec<(&'static str, String)>,
    pub value: Value,
}

/// A metric and its samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// Prometheus name (`glia_invocations_total`).
    pub name: &'static str,
    /// OpenTelemetry name (`glia.invocations`).
    pub otel_name: &'static str,
    /// UCUM unit (`s`, `By`, `{invocation}`).
    pub unit: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub samples: Vec<Sample>,
}

impl Family {
    fn new(
        name: &'static str,
        otel_name: &'static str,
        unit: &'static str,
        kind: Kind,
        help: &'static str,
    ) -> Self {
        Self {
            name,
            otel_name,
            unit,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    fn push(&mut self, labels: Vec<(&'static str, String)>, value: Value) {
        self.samples.push(Sample { labels, value });
    }

    fn with(mut self, labels: Vec<(&'static str, String)>, value: Value) -> Self {
        self.push(labels, value);
        self
    }
}

fn device_labels((device, backend): (Device, &'static str)) -> Vec<(&'static str, String)> {
    vec![
        ("device", device.name().to_string()),
        ("backend", backend.to_string()),
    ]
}

/// Reads every metric of the platform now.
pub fn collect(state: &AppState) -> Vec<Family> {
    let telemetry = &state.telemetry;
    let mut families = Vec::new();

    families.push(
        Family::new(
            "glia_build_info",
            "glia.build.info",
            "1",
            Kind::Gauge,
            "The running glia: its version and ONNX backend (always 1).",
        )
        .with(
            vec![
                ("version", env!("CARGO_PKG_VERSION").to_string()),
                ("onnx_backend", state.models.backend_name().to_string()),
            ],
            Value::Int(1),
        ),
    );
    families.push(
        Family::new(
            "glia_start_time_seconds",
            "glia.start_time",
            "s",
            Kind::Gauge,
            "When the platform started, in seconds since the Unix epoch.",
        )
        .with(vec![], Value::Float(telemetry.started_at_seconds())),
    );

    // Per function, from the call path.
    let mut invocations = Family::new(
        "glia_invocations_total",
        "glia.invocations",
        "{invocation}",
        Kind::Counter,
        "Finished invocations, by function and outcome (ok, trap, timeout, rejected, error).",
    );
    let mut duration = Family::new(
        "glia_invocation_duration_seconds",
        "glia.invocation.duration",
        "s",
        Kind::Histogram,
        "Invocation latency, from the request's arrival to the end of the call.",
    );
    let mut admission = Family::new(
        "glia_admission_wait_seconds",
        "glia.admission.wait",
        "s",
        Kind::Histogram,
        "Time invocations waited for admission (the function's and the platform's concurrency limits).",
    );
    let mut cold_starts = Family::new(
        "glia_cold_starts_total",
        "glia.cold_starts",
        "{invocation}",
        Kind::Counter,
        "Invocations that found their function at zero and loaded it first.",
    );
    let mut cold_start_time = Family::new(
        "glia_cold_start_duration_seconds",
        "glia.cold_start.duration",
        "s",
        Kind::Histogram,
        "Time cold starts spent loading the function's compiled component.",
    );
    for (key, m) in telemetry.metrics.functions() {
        // Keyed by `tenant/name`.
        let (tenant, function) = key.split_once('/').unwrap_or(("", key.as_str()));
        let by = |extra: Option<(&'static str, String)>| {
            let mut labels = vec![
                ("tenant", tenant.to_string()),
                ("function", function.to_string()),
            ];
            labels.extend(extra);
            labels
        };
        for outcome in OUTCOMES {
            invocations.push(
                by(Some(("outcome", outcome.as_str().to_string()))),
                Value::Int(m.calls(outcome)),
            );
        }
        duration.push(by(None), Value::Histogram(m.duration.snapshot()));
        admission.push(by(None), Value::Histogram(m.admission_wait.snapshot()));
        let cold = m.cold_start.snapshot();
        cold_starts.push(by(None), Value::Int(cold.count));
        cold_start_time.push(by(None), Value::Histogram(cold));
    }
    families.extend([
        invocations,
        duration,
        admission,
        cold_starts,
        cold_start_time,
    ]);

    // Per function, from the scheduler, for deployed functions.
    let mut warm = Family::new(
        "glia_warm_instances",
        "glia.warm_instances",
        "{version}",
        Kind::Gauge,
        "Function versions loaded and ready to instantiate (0: scaled to zero).",
    );
    let mut in_flight = Family::new(
        "glia_invocations_in_flight",
        "glia.invocations.in_flight",
        "{invocation}",
        Kind::Gauge,
        "Invocations admitted and not finished.",
    );
    let mut queued = Family::new(
        "glia_queue_depth",
        "glia.queue.depth",
        "{invocation}",
        Kind::Gauge,
        "Invocations waiting for admission.",
    );
    for record in state.registry.all() {
        let status = state.scheduler.status(&record);
        let labels = vec![
            ("tenant", record.tenant.to_string()),
            ("function", record.name.to_string()),
        ];
        warm.push(
            labels.clone(),
            Value::Int(status.warm_versions.len() as u64),
        );
        in_flight.push(labels.clone(), Value::Int(u64::from(status.in_flight)));
        queued.push(labels, Value::Int(u64::from(status.queued)));
    }
    families.extend([warm, in_flight, queued]);

    // Models and inference.
    // Count and size per (backend, device), in a stable order.
    let mut loaded = std::collections::BTreeMap::<(&'static str, Device), (u64, u64)>::new();
    for (backend, device, size) in state.models.loaded_graphs() {
        let (n, bytes) = loaded.entry((backend, device)).or_default();
        *n += 1;
        *bytes = bytes.saturating_add(size);
    }
    let mut models = Family::new(
        "glia_models_loaded",
        "glia.models.loaded",
        "{model}",
        Kind::Gauge,
        "Models loaded in memory, by backend and device.",
    );
    let mut resident = Family::new(
        "glia_model_resident_bytes",
        "glia.models.resident",
        "By",
        Kind::Gauge,
        "Size of the loaded models (counted against their device's budget), by backend and device.",
    );
    for ((backend, device), (n, bytes)) in loaded {
        let labels = device_labels((device, backend));
        models.push(labels.clone(), Value::Int(n));
        resident.push(labels, Value::Int(bytes));
    }
    families.extend([models, resident]);
    let mut budget = Family::new(
        "glia_model_memory_budget_bytes",
        "glia.models.memory_budget",
        "By",
        Kind::Gauge,
        "The loaded models' memory budget, by device (models.memory_budget_mb, \
         models.gpu_memory_budget_mb).",
    );
    for device in [Device::Cpu, Device::Gpu] {
        budget.push(
            vec![("device", device.name().to_string())],
            Value::Int(state.models.budget_bytes_on(device)),
        );
    }
    families.push(budget);
    let mut inference = Family::new(
        "glia_inference_duration_seconds",
        "glia.inference.duration",
        "s",
        Kind::Histogram,
        "wasi:nn compute time, by device and backend.",
    );
    for (key, h) in telemetry.metrics.inference_times() {
        inference.push(device_labels(key), Value::Histogram(h));
    }
    let mut loads = Family::new(
        "glia_model_load_duration_seconds",
        "glia.model_load.duration",
        "s",
        Kind::Histogram,
        "Time of the model loads invocations caused, by device and backend.",
    );
    for (key, h) in telemetry.metrics.model_load_times() {
        loads.push(device_labels(key), Value::Histogram(h));
    }
    families.extend([inference, loads]);

    // Guests' shares of the platform: CPU, memory, and upload buffers.
    let runtime = &state.runtime;
    let memory = runtime.memory();
    let stats = memory.stats();
    let read = |c: &std::sync::atomic::AtomicU64| Value::Int(c.load(Ordering::Relaxed));
    families.extend([
        Family::new(
            "glia_guest_cpu_slots",
            "glia.guest.cpu.slots",
            "{thread}",
            Kind::Gauge,
            "Guests that may run at once (runtime.guest_threads), shared equally between tenants.",
        )
        .with(vec![], Value::Int(runtime.cpu().slots() as u64)),
        Family::new(
            "glia_guest_cpu_waiting",
            "glia.guest.cpu.waiting",
            "{invocation}",
            Kind::Gauge,
            "Guests ready to run and waiting for their tenant's turn on a guest thread.",
        )
        .with(vec![], Value::Int(runtime.cpu().waiting() as u64)),
        Family::new(
            "glia_guest_cpu_waits_total",
            "glia.guest.cpu.waits",
            "{wait}",
            Kind::Counter,
            "Times a ready guest waited for a guest thread.",
        )
        .with(vec![], Value::Int(runtime.cpu().waits())),
        Family::new(
            "glia_guest_memory_budget_bytes",
            "glia.guest.memory.budget",
            "By",
            Kind::Gauge,
            "Linear memory all guests together may commit (runtime.guest_memory_budget_mb).",
        )
        .with(vec![], Value::Int(memory.limit())),
        Family::new(
            "glia_guest_memory_committed_bytes",
            "glia.guest.memory.committed",
            "By",
            Kind::Gauge,
            "Linear memory guests hold now (and calls reserved for themselves).",
        )
        .with(vec![], Value::Int(memory.committed())),
        Family::new(
            "glia_guest_memory_peak_bytes",
            "glia.guest.memory.peak",
            "By",
            Kind::Gauge,
            "The most linear memory guests held at once since the start.",
        )
        .with(vec![], read(&stats.peak_bytes)),
        Family::new(
            "glia_guest_memory_waits_total",
            "glia.guest.memory.waits",
            "{invocation}",
            Kind::Counter,
            "Calls that waited for room in the guest memory budget before they started.",
        )
        .with(vec![], read(&stats.waits)),
        Family::new(
            "glia_guest_memory_refusals_total",
            "glia.guest.memory.refusals",
            "{refusal}",
            Kind::Counter,
            "Calls refused (503) for want of guest memory, at admission or when a guest's growth \
             would pass the budget or its tenant's share.",
        )
        .with(
            vec![("stage", "admission".into())],
            read(&stats.refused_calls),
        )
        .with(
            vec![("stage", "growth".into())],
            read(&stats.refused_growths),
        ),
        Family::new(
            "glia_upload_buffered_bytes",
            "glia.upload.buffered",
            "By",
            Kind::Gauge,
            "Bytes of uploads held in memory now (server.max_buffered_upload_mb).",
        )
        .with(vec![], Value::Int(state.uploads.used())),
    ]);

    // The ledger: its lag behind the calls it records.
    if let Some(billing) = &state.billing {
        let stats = billing.stats();
        let read = |c: &std::sync::atomic::AtomicU64| Value::Int(c.load(Ordering::Relaxed));
        families.extend([
            Family::new(
                "glia_ledger_pending_records",
                "glia.ledger.pending",
                "{record}",
                Kind::Gauge,
                "Ledger records handed to the writer and not yet committed (its lag).",
            )
            .with(vec![], read(&stats.pending)),
            Family::new(
                "glia_ledger_records_total",
                "glia.ledger.records",
                "{record}",
                Kind::Counter,
                "Ledger records committed.",
            )
            .with(vec![], read(&stats.written)),
            Family::new(
                "glia_ledger_commits_total",
                "glia.ledger.commits",
                "{commit}",
                Kind::Counter,
                "Ledger transactions committed (each carries every record queued meanwhile).",
            )
            .with(vec![], read(&stats.commits)),
            Family::new(
                "glia_ledger_commit_failures_total",
                "glia.ledger.commit_failures",
                "{commit}",
                Kind::Counter,
                "Ledger commits that failed after their retries.",
            )
            .with(vec![], read(&stats.failures)),
        ]);
    }

    // Invocation logs.
    if let Some(logs) = &telemetry.logs {
        let stats = logs.stats();
        let read = |c: &std::sync::atomic::AtomicU64| Value::Int(c.load(Ordering::Relaxed));
        families.extend([
            Family::new(
                "glia_invocation_logs_total",
                "glia.invocation_logs",
                "{log}",
                Kind::Counter,
                "Invocation logs stored (calls that wrote to stdout or stderr).",
            )
            .with(vec![], read(&stats.stored)),
            Family::new(
                "glia_invocation_logs_truncated_total",
                "glia.invocation_logs.truncated",
                "{log}",
                Kind::Counter,
                "Invocation logs cut at telemetry.logs.max_bytes_per_call.",
            )
            .with(vec![], read(&stats.truncated)),
            Family::new(
                "glia_invocation_logs_pending",
                "glia.invocation_logs.pending",
                "{log}",
                Kind::Gauge,
                "Invocation logs captured and not yet written.",
            )
            .with(vec![], read(&stats.pending)),
        ]);
    }
    families
}
