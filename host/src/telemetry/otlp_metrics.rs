//! Metrics over OTLP/HTTP: every `export_interval_ms`, one
//! [`collect`](super::collect) reading is encoded as an OTLP
//! `ExportMetricsServiceRequest` (protobuf) and posted to the collector's
//! `/v1/metrics`.
//!
//! glia's counters and histograms are already aggregated (atomics on the
//! call path), so they are sent as they are: counters as cumulative
//! monotonic sums, gauges as gauges, histograms as cumulative explicit-bucket
//! histograms, all starting at the platform's start. The OpenTelemetry SDK's
//! metrics pipeline is not used: its instruments aggregate per call (a lock
//! and an attribute lookup each time) and cannot take readings aggregated
//! elsewhere (docs/adr/0010-telemetry.md).

use std::sync::Weak;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message as _;

use super::LATENCY_BUCKETS;
use super::collect::{Family, Kind, Value, collect};
use crate::api::AppState;

/// Longest wait for the collector's answer to one export.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("sending metrics to {endpoint}: {source}")]
    Send {
        endpoint: String,
        source: reqwest::Error,
    },
    #[error("the collector at {endpoint} answered {status}")]
    Status {
        endpoint: String,
        status: reqwest::StatusCode,
    },
}

fn nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn string(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
    }
}

/// The resource every export describes: `service.name`,
/// `service.version` and `service.instance.id`.
pub fn resource(service_name: &str, instance_id: &str) -> Resource {
    Resource {
        attributes: vec![
            string("service.name", service_name),
            string("service.version", env!("CARGO_PKG_VERSION")),
            string("service.instance.id", instance_id),
        ],
        ..Resource::default()
    }
}

/// Encodes one reading taken at `now`, cumulative since `start`.
pub fn encode(
    families: &[Family],
    resource: Resource,
    start: SystemTime,
    now: SystemTime,
) -> ExportMetricsServiceRequest {
    let (start, now) = (nanos(start), nanos(now));
    let cumulative = AggregationTemporality::Cumulative as i32;
    let attributes = |labels: &[(&'static str, String)]| -> Vec<KeyValue> {
        labels.iter().map(|(k, v)| string(k, v.clone())).collect()
    };
    let number = |labels: &[(&'static str, String)], value: &Value| {
        let value = match value {
            Value::Int(v) => number_data_point::Value::AsInt(i64::try_from(*v).unwrap_or(i64::MAX)),
            Value::Float(v) => number_data_point::Value::AsDouble(*v),
            Value::Histogram(h) => number_data_point::Value::AsDouble(h.sum_seconds),
        };
        NumberDataPoint {
            attributes: attributes(labels),
            start_time_unix_nano: start,
            time_unix_nano: now,
            value: Some(value),
            ..NumberDataPoint::default()
        }
    };
    let metrics = families
        .iter()
        .filter(|f| !f.samples.is_empty())
        .map(|family| {
            let data = match family.kind {
                Kind::Counter => metric::Data::Sum(Sum {
                    data_points: family
                        .samples
                        .iter()
                        .map(|s| number(&s.labels, &s.value))
                        .collect(),
                    aggregation_temporality: cumulative,
                    is_monotonic: true,
                }),
                Kind::Gauge => metric::Data::Gauge(Gauge {
                    data_points: family
                        .samples
                        .iter()
                        .map(|s| number(&s.labels, &s.value))
                        .collect(),
                }),
                Kind::Histogram => metric::Data::Histogram(Histogram {
                    data_points: family
                        .samples
                        .iter()
                        .filter_map(|s| match &s.value {
                            Value::Histogram(h) => Some(HistogramDataPoint {
                                attributes: attributes(&s.labels),
                                start_time_unix_nano: start,
                                time_unix_nano: now,
                                count: h.count,
                                sum: Some(h.sum_seconds),
                                bucket_counts: h.counts.clone(),
                                explicit_bounds: LATENCY_BUCKETS.to_vec(),
                                ..HistogramDataPoint::default()
                            }),
                            _ => None,
                        })
                        .collect(),
                    aggregation_temporality: cumulative,
                }),
            };
            Metric {
                name: family.otel_name.to_string(),
                description: family.help.to_string(),
                unit: family.unit.to_string(),
                data: Some(data),
                ..Metric::default()
            }
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "glia".to_string(),
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    ..InstrumentationScope::default()
                }),
                metrics,
                ..ScopeMetrics::default()
            }],
            ..ResourceMetrics::default()
        }],
    }
}

/// Posts one reading of `state`'s metrics to `endpoint`.
pub async fn export(
    client: &reqwest::Client,
    endpoint: &str,
    state: &AppState,
) -> Result<(), ExportError> {
    let telemetry = &state.telemetry;
    let request = encode(
        &collect(state),
        resource(
            &state.config.telemetry.service_name,
            telemetry.instance_id(),
        ),
        telemetry.started_at(),
        SystemTime::now(),
    );
    let response = client
        .post(endpoint)
        .header("content-type", "application/x-protobuf")
        .body(request.encode_to_vec())
        .send()
        .await
        .map_err(|source| ExportError::Send {
            endpoint: endpoint.to_string(),
            source,
        })?;
    if !response.status().is_success() {
        return Err(ExportError::Status {
            endpoint: endpoint.to_string(),
            status: response.status(),
        });
    }
    Ok(())
}

/// A client for the collector.
pub fn client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(EXPORT_TIMEOUT)
        .build()
}

/// Exports every `interval` until the platform is gone. A failing collector
/// is reported once, and again when it recovers.
pub fn spawn(
    state: Weak<AppState>,
    client: reqwest::Client,
    endpoint: String,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut failing = false;
        loop {
            ticker.tick().await;
            let Some(state) = state.upgrade() else { break };
            match export(&client, &endpoint, &state).await {
                Ok(()) if failing => {
                    tracing::info!(%endpoint, "metrics export recovered");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    tracing::warn!(error = %e, "metrics export failed; retrying every interval");
                    failing = true;
                }
                Err(e) => tracing::debug!(error = %e, "metrics export failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::collect::Sample;
    use crate::telemetry::metrics::Histogram as Hist;

    #[test]
    fn encodes_counters_gauges_and_histograms() {
        let h = Hist::default();
        h.observe(Duration::from_millis(3));
        let families = vec![
            Family {
                name: "glia_invocations_total",
                otel_name: "glia.invocations",
                unit: "{invocation}",
                help: "Calls.",
                kind: Kind::Counter,
                samples: vec![Sample {
                    labels: vec![("function", "f".into())],
                    value: Value::Int(2),
                }],
            },
            Family {
                name: "glia_d_seconds",
                otel_name: "glia.d",
                unit: "s",
                help: "D.",
                kind: Kind::Histogram,
                samples: vec![Sample {
                    labels: vec![],
                    value: Value::Histogram(h.snapshot()),
                }],
            },
            Family {
                name: "glia_empty",
                otel_name: "glia.empty",
                unit: "1",
                help: "Nothing.",
                kind: Kind::Gauge,
                samples: vec![],
            },
        ];
        let start = UNIX_EPOCH + Duration::from_secs(10);
        let now = UNIX_EPOCH + Duration::from_secs(20);
        let request = encode(&families, resource("glia", "i"), start, now);
        let scope = &request.resource_metrics[0].scope_metrics[0];
        assert_eq!(scope.metrics.len(), 2, "empty families are left out");
        let Some(metric::Data::Sum(sum)) = &scope.metrics[0].data else {
            panic!("a sum")
        };
        assert!(sum.is_monotonic);
        assert_eq!(
            sum.data_points[0].value,
            Some(number_data_point::Value::AsInt(2))
        );
        assert_eq!(sum.data_points[0].start_time_unix_nano, 10_000_000_000);
        let Some(metric::Data::Histogram(hist)) = &scope.metrics[1].data else {
            panic!("a histogram")
        };
        let point = &hist.data_points[0];
        assert_eq!(point.count, 1);
        assert_eq!(point.bucket_counts.len(), point.explicit_bounds.len() + 1);
        // Round trip through protobuf.
        let bytes = request.encode_to_vec();
        let decoded = ExportMetricsServiceRequest::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(decoded, request);
    }
}
