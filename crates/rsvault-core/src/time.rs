//! Time as rsvault reads and writes it.
//!
//! [`Clock`] is the one source of "now" for everything that stamps or schedules; a test clock can stand in
//! for the system clock. The formatters write time the way the live Azure service does: timestamps with up
//! to seven fractional digits and trailing zeros dropped, and durations in .NET's ISO-8601 form
//! (`PT20M23.0896697S`).

pub use chrono::SubsecRound;
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use std::sync::Arc;

/// The source of the current time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> DateTime<Utc>;

    /// The clock as a [`TestClock`], when it is one (`rsvault serve --test-clock`).
    fn as_test_clock(&self) -> Option<&TestClock> {
        None
    }
}

/// The machine's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A virtual clock that moves only when told (`rsvault serve --test-clock`): schedules, retention,
/// soft delete and job timestamps read it, so a test can watch a month pass in seconds. It never
/// moves backwards.
#[derive(Debug)]
pub struct TestClock {
    now: std::sync::Mutex<DateTime<Utc>>,
}

impl TestClock {
    /// A clock standing at `start`.
    pub fn new(start: DateTime<Utc>) -> TestClock {
        TestClock {
            now: std::sync::Mutex::new(start),
        }
    }

    /// Moves the clock to `t`; a `t` before the current time leaves it where it is. Returns the time.
    pub fn move_to(&self, t: DateTime<Utc>) -> DateTime<Utc> {
        let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
        if t > *now {
            *now = t;
        }
        *now
    }
}

impl Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn as_test_clock(&self) -> Option<&TestClock> {
        Some(self)
    }
}

/// A shared clock handle.
pub type SharedClock = Arc<dyn Clock>;

/// Seven fractional digits with trailing zeros dropped (and no `.` for whole seconds).
fn fraction(nanos: u32) -> String {
    let ticks = nanos / 100;
    if ticks == 0 {
        return String::new();
    }
    let s = format!("{ticks:07}");
    format!(".{}", s.trim_end_matches('0'))
}

/// `2022-05-16T14:28:23.5523231Z`.
pub fn timestamp(t: DateTime<Utc>) -> String {
    format!(
        "{}{}Z",
        t.format("%Y-%m-%dT%H:%M:%S"),
        fraction(t.timestamp_subsec_nanos())
    )
}

/// RFC 3339 with milliseconds, for places where Azure uses plain ISO time (`systemData`).
/// The US text form the live service writes in job property bags: `6/15/2022 12:00:00 AM`.
pub fn us_datetime(t: DateTime<Utc>) -> String {
    t.format("%-m/%-d/%Y %-I:%M:%S %p").to_string()
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// An ISO-8601 duration as .NET writes a `TimeSpan`: `PT0S`, `PT5.65455S`, `PT1M6.9054505S`,
/// `PT2H0M1S`, `P1DT2H`.
pub fn iso_duration(d: Duration) -> String {
    let d = if d < Duration::zero() { Duration::zero() } else { d };
    let total = d.num_seconds();
    let nanos = (d - Duration::seconds(total)).num_nanoseconds().unwrap_or(0) as u32;
    let (days, h, m, s) = (total / 86_400, (total / 3600) % 24, (total / 60) % 60, total % 60);
    let mut out = String::from("P");
    if days > 0 {
        out.push_str(&format!("{days}D"));
    }
    let frac = fraction(nanos);
    if h == 0 && m == 0 && s == 0 && frac.is_empty() {
        if days == 0 {
            out.push_str("T0S");
        }
        return out;
    }
    out.push('T');
    if h > 0 {
        out.push_str(&format!("{h}H"));
    }
    if m > 0 || (h > 0 && (s > 0 || !frac.is_empty())) {
        out.push_str(&format!("{m}M"));
    }
    if s > 0 || !frac.is_empty() {
        out.push_str(&format!("{s}{frac}S"));
    }
    out
}

/// A `TimeSpan` in .NET's text form, as Azure writes `deferredDeleteTimeRemaining`:
/// `13.23:59:46.1421238` (days, then `hh:mm:ss` and up to 7 fraction digits).
pub fn timespan_text(d: Duration) -> String {
    let d = if d < Duration::zero() { Duration::zero() } else { d };
    let total = d.num_seconds();
    let nanos = (d - Duration::seconds(total)).num_nanoseconds().unwrap_or(0) as u32;
    let (days, h, m, s) = (total / 86_400, (total / 3600) % 24, (total / 60) % 60, total % 60);
    let frac = if nanos == 0 {
        String::new()
    } else {
        format!(".{:07}", nanos / 100)
    };
    if days > 0 {
        format!("{days}.{h:02}:{m:02}:{s:02}{frac}")
    } else {
        format!("{h:02}:{m:02}:{s:02}{frac}")
    }
}

/// The weak ETag ARM puts on vaults: `W/"datetime'2017-12-15T12%3A36%3A51.68Z'"`.
pub fn datetime_etag(t: DateTime<Utc>) -> String {
    let ts = timestamp(t).replace(':', "%3A");
    format!("W/\"datetime'{ts}'\"")
}

/// An HTTP `Date` header value.
pub fn http_date(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn timespans_are_written_as_dotnet_does() {
        let d = Duration::days(13)
            + Duration::hours(23)
            + Duration::minutes(59)
            + Duration::seconds(46)
            + Duration::nanoseconds(142_123_800);
        assert_eq!(timespan_text(d), "13.23:59:46.1421238");
        assert_eq!(timespan_text(Duration::seconds(61)), "00:01:01");
        assert_eq!(timespan_text(Duration::seconds(-5)), "00:00:00");
    }

    #[test]
    fn durations_match_the_live_service() {
        let cases = [
            (Duration::zero(), "PT0S"),
            (Duration::milliseconds(5654) + Duration::microseconds(550), "PT5.65455S"),
            (
                Duration::seconds(66) + Duration::nanoseconds(905_450_500),
                "PT1M6.9054505S",
            ),
            (
                Duration::seconds(20 * 60 + 23) + Duration::nanoseconds(89_669_700),
                "PT20M23.0896697S",
            ),
            (Duration::seconds(7201), "PT2H0M1S"),
            (Duration::hours(2), "PT2H"),
            (Duration::seconds(42), "PT42S"),
            (Duration::days(1), "P1D"),
            (Duration::nanoseconds(296_900), "PT0.0002969S"),
        ];
        for (d, want) in cases {
            assert_eq!(iso_duration(d), want);
        }
    }

    #[test]
    fn us_datetime_is_the_property_bag_form() {
        let t = DateTime::parse_from_rfc3339("2022-06-15T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(us_datetime(t), "6/15/2022 12:00:00 AM");
        let t = DateTime::parse_from_rfc3339("2022-05-16T14:28:28.49Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(us_datetime(t), "5/16/2022 2:28:28 PM");
    }

    #[test]
    fn timestamps_drop_trailing_zeros() {
        let t = Utc.with_ymd_and_hms(2019, 10, 4, 5, 39, 37).unwrap() + Duration::microseconds(641_400);
        assert_eq!(timestamp(t), "2019-10-04T05:39:37.6414Z");
        let t = Utc.with_ymd_and_hms(2019, 10, 4, 5, 39, 37).unwrap();
        assert_eq!(timestamp(t), "2019-10-04T05:39:37Z");
    }

    #[test]
    fn test_clock_moves_only_forward_and_only_when_told() {
        let start = DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let c = TestClock::new(start);
        assert_eq!(c.now(), start);
        assert_eq!(c.now(), start);
        let later = start + Duration::days(30);
        assert_eq!(c.move_to(later), later);
        assert_eq!(c.move_to(start), later, "never backwards");
        assert!(c.as_test_clock().is_some());
        assert!(SystemClock.as_test_clock().is_none());
    }

    #[test]
    fn etags_escape_colons() {
        let t = Utc.with_ymd_and_hms(2017, 12, 15, 12, 36, 51).unwrap() + Duration::milliseconds(680);
        assert_eq!(datetime_etag(t), "W/\"datetime'2017-12-15T12%3A36%3A51.68Z'\"");
    }
}
