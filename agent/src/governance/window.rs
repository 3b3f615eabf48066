//! Calendar windows for budgets (UTC hour, day, ISO week, month) and their boundaries. A budget
//! counts the spend of requests that *started* inside the current window, so the ledger can
//! rebuild a window's total after a restart with `ts_ms >= start`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Window {
    Hour,
    Day,
    Week,
    Month,
}

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

impl Window {
    pub fn parse(s: &str) -> Option<Window> {
        Some(match s {
            "hour" | "hourly" => Window::Hour,
            "day" | "daily" => Window::Day,
            "week" | "weekly" => Window::Week,
            "month" | "monthly" => Window::Month,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Window::Hour => "hour",
            Window::Day => "day",
            Window::Week => "week",
            Window::Month => "month",
        }
    }

    /// The window containing `ms` (milliseconds since the Unix epoch): its index (a small,
    /// increasing number, unique per window kind) and its start and end.
    pub fn at(self, ms: i64) -> Span {
        match self {
            Window::Hour => fixed(ms, HOUR_MS, 0),
            Window::Day => fixed(ms, DAY_MS, 0),
            // 1970-01-01 was a Thursday; ISO weeks start on Monday, 3 days earlier.
            Window::Week => fixed(ms, 7 * DAY_MS, -3 * DAY_MS),
            Window::Month => {
                // The calendar arithmetic (~190 instructions, callgrind) runs once a month per
                // thread: admission asks for the current month on every request, once per budget.
                thread_local! {
                    static LAST_MONTH: std::cell::Cell<Option<Span>> =
                        const { std::cell::Cell::new(None) };
                }
                LAST_MONTH.with(|last| match last.get() {
                    Some(s) if (s.start_ms..s.end_ms).contains(&ms) => s,
                    _ => {
                        let s = month(ms);
                        last.set(Some(s));
                        s
                    }
                })
            }
        }
    }
}

/// The calendar month containing `ms`.
fn month(ms: i64) -> Span {
    let days = ms.div_euclid(DAY_MS);
    let (y, m, _) = civil_from_days(days);
    let start = days_from_civil(y, m, 1) * DAY_MS;
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    let end = days_from_civil(ny, nm, 1) * DAY_MS;
    Span {
        index: (y * 12 + i64::from(m) - 1) as u64,
        start_ms: start,
        end_ms: end,
    }
}

/// One window of a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub index: u64,
    pub start_ms: i64,
    pub end_ms: i64,
}

fn fixed(ms: i64, len: i64, offset: i64) -> Span {
    let index = (ms - offset).div_euclid(len);
    let start_ms = index * len + offset;
    Span {
        index: index.max(0) as u64,
        start_ms,
        end_ms: start_ms + len,
    }
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) → days since 1970-01-01.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2026-12-01T00:00:00Z` for a millisecond timestamp.
pub fn rfc3339(ms: i64) -> String {
    let days = ms.div_euclid(DAY_MS);
    let (y, m, d) = civil_from_days(days);
    let rem = ms.rem_euclid(DAY_MS) / 1000;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The UTC month `YYYY-MM` as a span (for chargeback reports).
pub fn month_span(text: &str) -> Option<Span> {
    let (y, m) = text.split_once('-')?;
    let (y, m): (i64, u32) = (y.parse().ok()?, m.parse().ok()?);
    if !(1..=12).contains(&m) {
        return None;
    }
    Some(Window::Month.at(days_from_civil(y, m, 1) * DAY_MS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(y: i64, m: u32, d: u32, h: i64) -> i64 {
        days_from_civil(y, m, d) * DAY_MS + h * HOUR_MS
    }

    #[test]
    fn calendar_round_trips() {
        for z in [-1000, 0, 59, 60, 365, 10_957, 20_000, 20_788, 100_000] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(rfc3339(ms(2026, 12, 1, 5)), "2026-12-01T05:00:00Z");
    }

    proptest::proptest! {
        /// The month remembered from the last call answers as the arithmetic does, whatever
        /// order the instants come in (back and forth across boundaries included).
        #[test]
        fn a_remembered_month_is_the_computed_one(
            instants in proptest::collection::vec(-50 * DAY_MS..20_000 * DAY_MS, 1..40),
            edges in proptest::collection::vec(0usize..40, 0..10),
        ) {
            let mut all = instants.clone();
            // Instants on and just before month boundaries.
            for i in edges {
                let m = month(instants[i % instants.len()]);
                all.extend([m.start_ms, m.start_ms - 1, m.end_ms, m.end_ms - 1]);
            }
            for t in all {
                proptest::prop_assert_eq!(Window::Month.at(t), month(t), "{}", t);
            }
        }
    }

    #[test]
    fn months_have_their_own_length() {
        let feb = Window::Month.at(ms(2028, 2, 29, 23));
        assert_eq!(feb.start_ms, ms(2028, 2, 1, 0));
        assert_eq!(feb.end_ms, ms(2028, 3, 1, 0));
        let dec = Window::Month.at(ms(2026, 12, 31, 23));
        assert_eq!(dec.end_ms, ms(2027, 1, 1, 0));
        assert_eq!(Window::Month.at(dec.end_ms).index, dec.index + 1);
        assert_eq!(Window::Month.at(dec.end_ms - 1).index, dec.index);
        assert_eq!(
            month_span("2026-12").map(|s| s.start_ms),
            Some(dec.start_ms)
        );
        assert!(month_span("2026-13").is_none());
    }

    #[test]
    fn weeks_start_on_monday() {
        // 2026-11-30 is a Monday.
        let w = Window::Week.at(ms(2026, 12, 3, 12));
        assert_eq!(w.start_ms, ms(2026, 11, 30, 0));
        assert_eq!(w.end_ms, ms(2026, 12, 7, 0));
        let d = Window::Day.at(ms(2026, 12, 3, 12));
        assert_eq!(
            (d.start_ms, d.end_ms),
            (ms(2026, 12, 3, 0), ms(2026, 12, 4, 0))
        );
        let h = Window::Hour.at(ms(2026, 12, 3, 12) + 59 * 60_000);
        assert_eq!(h.start_ms, ms(2026, 12, 3, 12));
    }
}
