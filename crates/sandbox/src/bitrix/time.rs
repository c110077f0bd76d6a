//! Calendar arithmetic for the portal clock (no date crate is available): PHP
//! `date('c')` output, the legacy site format, and lenient ISO 8601 input parsing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub(crate) const MICROS: i64 = 1_000_000;

/// Wall-clock unix time in microseconds.
pub(crate) fn wall_micros() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

pub(crate) fn to_system_time(micros: i64) -> SystemTime {
    let abs = Duration::from_micros(micros.unsigned_abs());
    if micros >= 0 {
        UNIX_EPOCH + abs
    } else {
        UNIX_EPOCH - abs
    }
}

/// Days since 1970-01-01 → (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

struct Parts {
    y: i64,
    mo: u32,
    d: u32,
    h: i64,
    mi: i64,
    s: i64,
}

fn parts(secs: i64, tz: i32) -> Parts {
    let local = secs + i64::from(tz);
    let (y, mo, d) = civil_from_days(local.div_euclid(86_400));
    let sod = local.rem_euclid(86_400);
    Parts {
        y,
        mo,
        d,
        h: sod / 3600,
        mi: sod % 3600 / 60,
        s: sod % 60,
    }
}

fn offset_string(tz: i32) -> String {
    let sign = if tz < 0 { '-' } else { '+' };
    let a = tz.unsigned_abs();
    format!("{sign}{:02}:{:02}", a / 3600, a % 3600 / 60)
}

/// PHP `date('c')`: `2026-03-17T15:29:15+03:00`.
pub(crate) fn format_iso(secs: i64, tz: i32) -> String {
    let p = parts(secs, tz);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{}",
        p.y,
        p.mo,
        p.d,
        p.h,
        p.mi,
        p.s,
        offset_string(tz)
    )
}

/// The site format older servers returned: `21.10.2015 17:00:50`.
pub(crate) fn format_legacy(secs: i64, tz: i32) -> String {
    let p = parts(secs, tz);
    format!(
        "{:02}.{:02}.{:04} {:02}:{:02}:{:02}",
        p.d, p.mo, p.y, p.h, p.mi, p.s
    )
}

/// Parses `YYYY-MM-DD[(T| )HH:MM[:SS[.frac]]][Z|±HH[:]MM]` or `DD.MM.YYYY[ HH:MM[:SS]]`
/// into unix seconds; a missing offset means the portal's time zone.
pub(crate) fn parse_datetime(input: &str, tz: i32) -> Option<i64> {
    let s = input.trim();
    let (date, rest) = match s.find(['T', ' ']) {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    };
    let (y, mo, d) = if date.contains('-') {
        let mut it = date.splitn(3, '-');
        let y = it.next()?.parse().ok()?;
        let mo = it.next()?.parse().ok()?;
        let d = it.next()?.parse().ok()?;
        (y, mo, d)
    } else {
        let mut it = date.splitn(3, '.');
        let d = it.next()?.parse().ok()?;
        let mo = it.next()?.parse().ok()?;
        let y = it.next()?.parse().ok()?;
        (y, mo, d)
    };
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let (clock, offset) = split_offset(rest)?;
    let mut hms = [0i64; 3];
    if !clock.is_empty() {
        let clock = clock.split('.').next().unwrap_or("");
        for (slot, piece) in hms.iter_mut().zip(clock.split(':')) {
            *slot = piece.parse().ok()?;
        }
    }
    if hms[0] > 23 || hms[1] > 59 || hms[2] > 60 {
        return None;
    }
    let offset = offset.unwrap_or(i64::from(tz));
    Some(days_from_civil(y, mo, d) * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2] - offset)
}

/// Splits a trailing `Z` / `±HH:MM` / `±HHMM` off a time string.
fn split_offset(rest: &str) -> Option<(&str, Option<i64>)> {
    if let Some(clock) = rest.strip_suffix('Z') {
        return Some((clock, Some(0)));
    }
    let Some(i) = rest.rfind(['+', '-']) else {
        return Some((rest, None));
    };
    let sign = if rest[i..].starts_with('-') { -1 } else { 1 };
    let digits: String = rest[i + 1..].chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 && digits.len() != 2 {
        return None;
    }
    let h: i64 = digits.get(..2)?.parse().ok()?;
    let m: i64 = digits
        .get(2..)
        .filter(|m| !m.is_empty())
        .map_or(Some(0), |m| m.parse().ok())?;
    Some((&rest[..i], Some(sign * (h * 3600 + m * 60))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_roundtrip() {
        let t = 1_773_750_555;
        assert_eq!(format_iso(t, 10_800), "2026-03-17T15:29:15+03:00");
        assert_eq!(format_iso(t, 0), "2026-03-17T12:29:15+00:00");
        assert_eq!(format_iso(t, -16_200), "2026-03-17T07:59:15-04:30");
        assert_eq!(format_legacy(t, 10_800), "17.03.2026 15:29:15");
        assert_eq!(parse_datetime("2026-03-17T15:29:15+03:00", 0), Some(t));
        assert_eq!(parse_datetime("2026-03-17T12:29:15Z", 5), Some(t));
        assert_eq!(parse_datetime("2026-03-17 15:29:15", 10_800), Some(t));
        assert_eq!(parse_datetime("17.03.2026 15:29:15", 10_800), Some(t));
        assert_eq!(parse_datetime("2026-03-17", 0), Some(t - t % 86_400));
        assert_eq!(parse_datetime("garbage", 0), None);
        assert_eq!(format_iso(-1, 0), "1969-12-31T23:59:59+00:00");
    }
}
