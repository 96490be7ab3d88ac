//! Usage queries: totals and cost over a time range, grouped by function,
//! day, hour or outcome, as JSON or CSV.

use serde::Serialize;

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

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// (year, month) of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m)
}

/// Midnight UTC of the first day of the month containing `ms`.
pub fn month_start_ms(ms: i64) -> i64 {
    let (y, m) = civil_from_days(ms.div_euclid(86_400_000));
    days_from_civil(y, m, 1) * 86_400_000
}

/// Parses a time: milliseconds since the Unix epoch, a UTC date
/// `YYYY-MM-DD`, or `YYYY-MM-DDTHH:MM[:SS]Z` (UTC).
pub fn parse_time(s: &str) -> Option<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t.strip_suffix('Z')?)),
        None => (s, None),
    };
    let mut parts = date.splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let d: i64 = parts.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || !(1970..=9999).contains(&y) {
        return None;
    }
    let mut ms = days_from_civil(y, m, d) * 86_400_000;
    if let Some(t) = time {
        let mut hms = t.splitn(3, ':');
        let h: i64 = hms.next()?.parse().ok()?;
        let min: i64 = hms.next()?.parse().ok()?;
        let sec: i64 = match hms.next() {
            Some(s) => s.parse().ok()?,
            None => 0,
        };
        if !(0..24).contains(&h) || !(0..60).contains(&min) || !(0..=60).contains(&sec) {
            return None;
        }
        ms += ((h * 60 + min) * 60 + sec) * 1000;
    }
    Some(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_as_utc() {
        assert_eq!(parse_time("0"), Some(0));
        assert_eq!(parse_time("1970-01-02"), Some(86_400_000));
        assert_eq!(parse_time("2026-11-29"), Some(1_795_910_400_000));
        assert_eq!(
            parse_time("2026-11-29T10:30Z"),
            Some(1_795_910_400_000 + (10 * 60 + 30) * 60_000)
        );
        assert_eq!(
            parse_time("2026-11-29T10:30:15Z"),
            Some(1_795_910_400_000 + ((10 * 60 + 30) * 60 + 15) * 1000)
        );
        for bad in [
            "",
            "2026-13-01",
            "2026-11-29T10:30",
            "yesterday",
            "2026-11-29T25:00Z",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn month_starts() {
        let nov29 = parse_time("2026-11-29T10:30Z").expect("time");
        assert_eq!(
            month_start_ms(nov29),
            parse_time("2026-11-01").expect("date")
        );
        let mar1 = parse_time("2024-03-01").expect("date");
        assert_eq!(month_start_ms(mar1), mar1);
        assert_eq!(
            month_start_ms(mar1 - 1),
            parse_time("2024-02-01").expect("date")
        );
    }

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
