//! Telemetry: where time goes in every call, and what the platform is doing.
//!
//! - **Traces** ([`trace`]): `tracing` spans, one tree per call, exported
//!   over OTLP/HTTP by the OpenTelemetry SDK when a collector is configured
//!   (`[telemetry] otlp_endpoint` or the standard `OTEL_EXPORTER_OTLP_*`
//!   variables).
//! - **Metrics** ([`metrics`], [`collect`]): counters and histograms kept in
//!   atomics on the call path, gauges read when collected; served as
//!   Prometheus text on `GET /metrics` ([`prometheus`]) and sent over OTLP
//!   ([`otlp_metrics`]).
//! - **Host logs** ([`init`]): `tracing` events on stderr, human-readable or
//!   JSON, filtered by `GLIA_LOG`; a line about a call carries its invocation
//!   id (the root span's field).
//!
//! A guest's own output (stdout and stderr) is the [`crate::logs`] module's.
//!
//! The subscriber is process-wide (that is how `tracing` works): [`init`]
//! installs it once, at `glia serve`. Metrics belong to one platform
//! ([`Telemetry`]), so several platforms in one process (tests) count their
//! own calls.

pub mod collect;
pub mod metrics;
pub mod otlp_metrics;
pub mod prometheus;
pub mod trace;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

pub use collect::collect;
pub use metrics::{CallObservation, LATENCY_BUCKETS, Metrics};

use crate::config::{LogFormat, TelemetryConfig};
use crate::logs::LogStore;

/// The log filter when neither `GLIA_LOG` nor `RUST_LOG` is set.
pub const DEFAULT_LOG_FILTER: &str = "info,wasmtime=warn,cranelift=warn";

/// One platform's telemetry: its metrics and its invocation logs.
pub struct Telemetry {
    pub metrics: Arc<Metrics>,
    /// Guest output, kept per invocation; `None` when
    /// `telemetry.logs.enabled` is off.
    pub logs: Option<Arc<LogStore>>,
    started_at: SystemTime,
    instance_id: String,
}

impl Telemetry {
    pub fn new(logs: Option<Arc<LogStore>>) -> Self {
        Self {
            metrics: Arc::new(Metrics::new()),
            logs,
            started_at: SystemTime::now(),
            instance_id: uuid::Uuid::now_v7().simple().to_string(),
        }
    }

    /// When the platform started.
    pub fn started_at(&self) -> SystemTime {
        self.started_at
    }

    pub fn started_at_seconds(&self) -> f64 {
        self.started_at
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }

    /// `service.instance.id`: this platform, among others with the same
    /// service name.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP trace exporter for {endpoint}: {message}")]
    Exporter { endpoint: String, message: String },
    #[error("the OTLP endpoint {endpoint}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Keeps span export running; flushes what is left when dropped.
#[must_use = "dropping the guard stops exporting spans"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Sends every finished span now.
    pub fn flush(&self) {
        if let Some(provider) = &self.provider
            && let Err(e) = provider.force_flush()
        {
            tracing::warn!(error = %e, "flushing spans failed");
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("glia: exporting the last spans failed: {e}");
        }
    }
}

/// Installs the process-wide subscriber: log lines on stderr in
/// `config.log_format`, filtered by `GLIA_LOG` (or `RUST_LOG`), and, when an
/// OTLP traces endpoint is configured, span export.
pub fn init(config: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    init_with_writer(config, std::io::stderr)
}

/// [`init`], writing log lines to `writer` (tests capture them).
pub fn init_with_writer<W>(
    config: &TelemetryConfig,
    writer: W,
) -> Result<TelemetryGuard, TelemetryError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = std::env::var("GLIA_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| DEFAULT_LOG_FILTER.to_string());
    let ansi = config.log_format == LogFormat::Human
        && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_target(false)
        .with_ansi(ansi);
    let fmt = match config.log_format {
        LogFormat::Human => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    }
    .with_filter(EnvFilter::new(filter));

    let provider = match config.otlp_endpoints().traces {
        Some(endpoint) => Some(tracer_provider(config, &endpoint)?),
        None => None,
    };
    // Only glia's own spans are exported (never, say, the HTTP client's
    // that sends them).
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("glia"))
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false)
            .with_filter(Targets::new().with_target("glia_host", Level::DEBUG))
    });
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    if provider.is_some() {
        trace::set_exporting();
    }
    Ok(TelemetryGuard { provider })
}

fn tracer_provider(
    config: &TelemetryConfig,
    endpoint: &str,
) -> Result<SdkTracerProvider, TelemetryError> {
    crate::config::check_otlp_url(endpoint).map_err(|reason| TelemetryError::Endpoint {
        endpoint: endpoint.to_string(),
        reason,
    })?;
    use opentelemetry_otlp::{Protocol, WithExportConfig as _};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| TelemetryError::Exporter {
            endpoint: endpoint.to_string(),
            message: e.to_string(),
        })?;
    let batches = BatchConfigBuilder::default()
        .with_scheduled_delay(Duration::from_millis(config.export_interval_ms))
        .build();
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(batches)
        .build();
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attributes([opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        )])
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource)
        .build())
}
