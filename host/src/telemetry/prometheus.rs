//! Prometheus' text exposition format (version 0.0.4), rendered from a
//! [`collect`](super::collect) reading: what `GET /metrics` serves.

use std::fmt::Write as _;

use super::LATENCY_BUCKETS;
use super::collect::{Family, Kind, Value};

/// The `content-type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders `families`, each with its `# HELP` and `# TYPE` lines.
pub fn render(families: &[Family]) -> String {
    let mut out = String::with_capacity(4096);
    for family in families {
        let kind = match family.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(out, "# HELP {} {}", family.name, escape_help(family.help));
        let _ = writeln!(out, "# TYPE {} {kind}", family.name);
        for sample in &family.samples {
            match &sample.value {
                Value::Int(v) => line(&mut out, family.name, "", &sample.labels, None, v),
                Value::Float(v) => line(&mut out, family.name, "", &sample.labels, None, v),
                Value::Histogram(h) => {
                    let cumulative = h.cumulative();
                    for (ix, count) in cumulative.iter().enumerate() {
                        let le = LATENCY_BUCKETS
                            .get(ix)
                            .map_or_else(|| "+Inf".to_string(), |b| b.to_string());
                        line(
                            &mut out,
                            family.name,
                            "_bucket",
                            &sample.labels,
                            Some(&le),
                            count,
                        );
                    }
                    line(
                        &mut out,
                        family.name,
                        "_sum",
                        &sample.labels,
                        None,
                        &h.sum_seconds,
                    );
                    line(
                        &mut out,
                        family.name,
                        "_count",
                        &sample.labels,
                        None,
                        &h.count,
                    );
                }
            }
        }
    }
    out
}

fn line(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[(&'static str, String)],
    le: Option<&str>,
    value: &dyn std::fmt::Display,
) {
    out.push_str(name);
    out.push_str(suffix);
    if !labels.is_empty() || le.is_some() {
        out.push('{');
        let all = labels
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .chain(le.map(|le| ("le", le)));
        for (ix, (key, value)) in all.enumerate() {
            if ix > 0 {
                out.push(',');
            }
            let _ = write!(out, "{key}=\"{}\"", escape_label(value));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metrics::Histogram;

    #[test]
    fn renders_counters_gauges_and_histograms() {
        let h = Histogram::default();
        h.observe(std::time::Duration::from_millis(3));
        let families = vec![
            Family {
                name: "glia_invocations_total",
                otel_name: "glia.invocations",
                unit: "{invocation}",
                help: "Calls.",
                kind: Kind::Counter,
                samples: vec![crate::telemetry::collect::Sample {
                    labels: vec![("function", "a\"b".into()), ("outcome", "ok".into())],
                    value: Value::Int(2),
                }],
            },
            Family {
                name: "glia_d_seconds",
                otel_name: "glia.d",
                unit: "s",
                help: "D.",
                kind: Kind::Histogram,
                samples: vec![crate::telemetry::collect::Sample {
                    labels: vec![("function", "f".into())],
                    value: Value::Histogram(h.snapshot()),
                }],
            },
        ];
        let text = render(&families);
        assert!(text.contains("# TYPE glia_invocations_total counter\n"));
        assert!(text.contains("glia_invocations_total{function=\"a\\\"b\",outcome=\"ok\"} 2\n"));
        assert!(text.contains("glia_d_seconds_bucket{function=\"f\",le=\"0.0025\"} 0\n"));
        assert!(text.contains("glia_d_seconds_bucket{function=\"f\",le=\"0.005\"} 1\n"));
        assert!(text.contains("glia_d_seconds_bucket{function=\"f\",le=\"+Inf\"} 1\n"));
        assert!(text.contains("glia_d_seconds_sum{function=\"f\"} 0.003\n"));
        assert!(text.contains("glia_d_seconds_count{function=\"f\"} 1\n"));
    }
}
