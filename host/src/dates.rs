//! UTC calendar dates of Unix milliseconds, one implementation for the
//! platform (Howard Hinnant's algorithms, proleptic Gregorian): month
//! starts for spend, times in usage queries, timestamps the CLI prints.

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

/// (year, month, day) of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Midnight UTC of the first day of the month containing `ms`.
pub fn month_start_ms(ms: i64) -> i64 {
    let (y, m, _) = civil_from_days(ms.div_euclid(86_400_000));
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

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` of Unix milliseconds.
pub fn format_utc(ms: i64) -> String {
    let (y, m, d) = civil_from_days(ms.div_euclid(86_400_000));
    let rem = ms.rem_euclid(86_400_000);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
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
    fn utc_times() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_utc(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(format_utc(1_735_689_599_999), "2024-12-31T23:59:59.999Z");
        assert_eq!(format_utc(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn days_round_trip() {
        for days in [-800_000, -1, 0, 59, 60, 10_957, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }
}
