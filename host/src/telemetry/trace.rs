//! Traces: one per call, as `tracing` spans that the OpenTelemetry layer
//! turns into OTLP spans when an endpoint is configured.
//!
//! The span tree of a call (names are stable; see docs/observability.md):
//!
//! ```text
//! glia.invoke                       root, server span; the invocation id, function, outcome
//! ├── glia.admission                waiting for the function's and the platform's slots
//! ├── glia.cold_start               loading the compiled component (calls that found it at zero)
//! ├── glia.instantiate              a fresh instance in a fresh store
//! ├── glia.guest                    the guest's handler
//! │   ├── glia.nn.load              each wasi:nn load: model, backend, device
//! │   └── glia.nn.compute           each wasi:nn compute: model, backend, device
//! └── glia.ledger.write             under `strict`, the wait for the billing record's commit
//! ```
//!
//! Only the root span is at `INFO`, so that host log lines about a call
//! carry its invocation id; the others are at `DEBUG`, which the log filter
//! leaves out by default. Without an OTLP endpoint nothing else listens to
//! them, and a disabled span costs one atomic load. Attributes describe the
//! call (names, versions, devices, sizes), never its payloads: no bodies, no
//! query strings, no tensor data.
//!
//! A caller's W3C `traceparent` (and `tracestate`) make the call's trace a
//! continuation of the caller's; a guest's outgoing HTTP requests carry the
//! `glia.guest` span's context the same way (or, when glia exports no
//! traces, the caller's headers unchanged).

use std::sync::atomic::{AtomicBool, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C trace-context headers.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Set once spans are exported (an OpenTelemetry layer is installed).
static EXPORTING: AtomicBool = AtomicBool::new(false);

pub(super) fn set_exporting() {
    EXPORTING.store(true, Ordering::Relaxed);
}

/// Whether spans go to an OpenTelemetry collector.
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

#[derive(Default)]
struct Collected(Vec<(HeaderName, HeaderValue)>);

impl Injector for Collected {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.push((name, value));
        }
    }
}

/// The root span of one call. When spans are exported and the caller sent a
/// valid `traceparent`, the call's trace continues the caller's.
pub fn invocation_span(invocation_id: &str, method: &http::Method, headers: &HeaderMap) -> Span {
    let span = tracing::info_span!(
        "glia.invoke",
        glia.invocation_id = %invocation_id,
        otel.kind = "server",
        http.request.method = %method,
        glia.tenant = tracing::field::Empty,
        glia.function = tracing::field::Empty,
        glia.function.version = tracing::field::Empty,
        glia.cold_start = tracing::field::Empty,
        glia.outcome = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    if exporting() && headers.contains_key(TRACEPARENT) {
        let parent = TraceContextPropagator::new().extract(&Headers(headers));
        if let Err(e) = span.set_parent(parent) {
            tracing::debug!(error = %e, "the caller's traceparent was not used");
        }
    }
    span
}

/// Records a field of a call's span that only its trace needs: when spans
/// are exported. (Every field recorded on the root span is also formatted
/// into the log lines' context, at a cost on every call; log lines need the
/// invocation id and the function, recorded always.)
pub fn record<V: tracing::Value>(span: &Span, field: &str, value: V) {
    if exporting() {
        span.record(field, value);
    }
}

/// Trace-context headers a guest's outgoing requests carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceHeaders(Vec<(HeaderName, HeaderValue)>);

impl TraceHeaders {
    /// The caller's own `traceparent` and `tracestate`, to forward as they
    /// are when glia does not take part in the trace.
    pub fn forwarded(incoming: &HeaderMap) -> Self {
        let mut headers = Vec::new();
        for name in [TRACEPARENT, TRACESTATE] {
            if let Some(value) = incoming.get(name) {
                headers.push((HeaderName::from_static(name), value.clone()));
            }
        }
        Self(headers)
    }

    /// `span`'s context, when spans are exported; `None` otherwise.
    pub fn of(span: &Span) -> Option<Self> {
        if !exporting() {
            return None;
        }
        let mut collected = Collected::default();
        TraceContextPropagator::new().inject_context(&span.context(), &mut collected);
        (!collected.0.is_empty()).then_some(Self(collected.0))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sets these headers on an outgoing request, replacing the guest's own.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.0 {
            headers.insert(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_headers_replace_the_guests() {
        let mut incoming = HeaderMap::new();
        incoming.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        incoming.insert("x-other", HeaderValue::from_static("1"));
        let trace = TraceHeaders::forwarded(&incoming);
        let mut outgoing = HeaderMap::new();
        outgoing.insert(TRACEPARENT, HeaderValue::from_static("guest's own"));
        trace.apply(&mut outgoing);
        assert_eq!(outgoing.get(TRACEPARENT), incoming.get(TRACEPARENT));
        assert!(outgoing.get("x-other").is_none());
        assert!(TraceHeaders::forwarded(&HeaderMap::new()).is_empty());
    }
}
