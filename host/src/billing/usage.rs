//! Usage queries: totals and cost over a time range, grouped by function,
//! day, hour or outcome, as JSON or CSV.

use serde::Serialize;

pub use crate::dates::{month_start_ms, parse_time};

/// How usage rows are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UsageGroup {
    Function,
    /// UTC days, `YYYY-MM-DD`.
    Day,
    /// UTC hours, `YYYY-MM-DDTHH:00Z`.
    Hour,
    Outcome,
}

impl UsageGroup {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "function" => UsageGroup::Function,
            "day" => UsageGroup::Day,
            "hour" => UsageGroup::Hour,
            "outcome" => UsageGroup::Outcome,
            _ => return None,
        })
    }
}

/// What to total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    pub tenant: String,
    /// Inclusive, ms since the Unix epoch.
    pub from_ms: i64,
    /// Exclusive.
    pub to_ms: i64,
    pub function: Option<String>,
    pub group_by: UsageGroup,
}

/// Totals of one group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UsageRow {
    pub key: String,
    pub invocations: u64,
    pub ok: u64,
    /// Trapped, timed out or failed.
    pub failed: u64,
    pub rejected: u64,
    pub cold_starts: u64,
    pub billed_ms: u64,
    /// Configured memory × billed time, in MB-ms (1024 MB × 1000 ms is one
    /// GB-second).
    pub memory_mb_ms: u64,
    pub guest_us: u64,
    pub cpu_inference_us: u64,
    pub gpu_inference_us: u64,
    pub model_load_us: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The sum of the records' costs, in micro-units (compiles included).
    pub cost_micros: u64,
    /// Function uploads validated and compiled, and their CPU time.
    pub compiles: u64,
    pub compile_cpu_us: u64,
    /// Model uploads validated (by loading them), and their CPU time.
    pub model_uploads: u64,
    pub model_upload_cpu_us: u64,
}

impl UsageRow {
    /// The sum of `rows`, keyed `total`.
    pub fn total(rows: &[UsageRow]) -> UsageRow {
        let mut t = UsageRow {
            key: "total".to_string(),
            ..UsageRow::default()
        };
        for r in rows {
            t.invocations += r.invocations;
            t.ok += r.ok;
            t.failed += r.failed;
            t.rejected += r.rejected;
            t.cold_starts += r.cold_starts;
            t.billed_ms += r.billed_ms;
            t.memory_mb_ms += r.memory_mb_ms;
            t.guest_us += r.guest_us;
            t.cpu_inference_us += r.cpu_inference_us;
            t.gpu_inference_us += r.gpu_inference_us;
            t.model_load_us += r.model_load_us;
            t.bytes_in += r.bytes_in;
            t.bytes_out += r.bytes_out;
            t.cost_micros += r.cost_micros;
            t.compiles += r.compiles;
            t.compile_cpu_us += r.compile_cpu_us;
            t.model_uploads += r.model_uploads;
            t.model_upload_cpu_us += r.model_upload_cpu_us;
        }
        t
    }
}

/// The CSV columns, in order.
pub const CSV_HEADER: &str = "key,invocations,ok,failed,rejected,cold_starts,billed_ms,\
memory_mb_ms,guest_us,cpu_inference_us,gpu_inference_us,model_load_us,bytes_in,bytes_out,\
cost_micros,compiles,compile_cpu_us,model_uploads,model_upload_cpu_us";

/// Rows as CSV (header first, total last).
pub fn to_csv(rows: &[UsageRow]) -> String {
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    let total = UsageRow::total(rows);
    for r in rows.iter().chain(std::iter::once(&total)) {
        let key = if r.key.contains([',', '"', '\n']) {
            format!("\"{}\"", r.key.replace('"', "\"\""))
        } else {
            r.key.clone()
        };
        out.push_str(&format!(
            "{key},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            r.invocations,
            r.ok,
            r.failed,
            r.rejected,
            r.cold_starts,
            r.billed_ms,
            r.memory_mb_ms,
            r.guest_us,
            r.cpu_inference_us,
            r.gpu_inference_us,
            r.model_load_us,
            r.bytes_in,
            r.bytes_out,
            r.cost_micros,
            r.compiles,
            r.compile_cpu_us,
            r.model_uploads,
            r.model_upload_cpu_us
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_has_a_header_rows_and_a_total() {
        let rows = vec![
            UsageRow {
                key: "a".into(),
                invocations: 2,
                cost_micros: 5,
                ..UsageRow::default()
            },
            UsageRow {
                key: "b,c".into(),
                invocations: 1,
                cost_micros: 7,
                compiles: 1,
                compile_cpu_us: 40,
                ..UsageRow::default()
            },
        ];
        let csv = to_csv(&rows);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], CSV_HEADER);
        assert!(lines[1].starts_with("a,2,"));
        assert!(lines[2].starts_with("\"b,c\",1,"));
        assert!(lines[3].starts_with("total,3,") && lines[3].ends_with(",12,1,40,0,0"));
    }
}
