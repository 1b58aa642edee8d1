//! When a policy takes backups: [`Schedule`], parsed from a policy's `schedulePolicy` and `timeZone`.
//!
//! Supported: `SimpleSchedulePolicy` daily / weekly (and the hourly form Azure Files uses) and
//! `SimpleSchedulePolicyV2` hourly / daily / weekly. Run times are wall-clock times of day in the
//! policy's time zone (a Windows id, see [`crate::zone`]); only the time of day of
//! `scheduleRunTimes` / `scheduleWindowStartTime` counts, whatever date and offset the string has,
//! as in Azure.
//!
//! An hourly schedule runs at `start + k × interval` for every `k ≥ 0` with
//! `k × interval < scheduleWindowDuration`, counted on the local wall clock from the window's start
//! each day (a window may run past midnight). The end of the window is exclusive, so a 24-hour
//! window every 4 hours from 08:00 runs 6 times a day (08, 12, 16, 20, 00, 04), never twice at 08:00.
//!
//! # Daylight-saving rule
//! Each scheduled local time becomes exactly one UTC instant:
//! - a local time that exists once is that instant;
//! - a local time skipped by a spring-forward gap becomes the first instant after the gap (a daily
//!   02:30 in "Pacific Standard Time" on 2026-03-08 runs at 03:00 PDT = 10:00 UTC);
//! - a local time repeated by a fall-back becomes its FIRST occurrence only (a daily 01:30 on
//!   2026-11-01 runs at 01:30 PDT = 08:30 UTC, and not again at 01:30 PST).
//!
//! Two scheduled local times of one day that land on the same instant this way (only possible if
//! both fall in one gap) give one slot. Slots are therefore strictly increasing and never repeat.
//!
//! Nothing here reads a clock: every function takes the instants it works on.

use crate::error::{Error, Result};
use crate::json;
use crate::zone::windows_zone;
use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Timelike, Utc, Weekday,
};
use chrono_tz::Tz;
use serde_json::Value;

/// How often a schedule runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Frequency {
    Daily,
    Weekly,
    Hourly,
}

/// The local times a schedule runs at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Every day at each of `times`.
    Daily { times: Vec<NaiveTime> },
    /// On each of `days` at each of `times`.
    Weekly { days: Vec<Weekday>, times: Vec<NaiveTime> },
    /// Every day from `start`, every `interval_hours`, for `window_hours` (end exclusive).
    Hourly {
        start: NaiveTime,
        interval_hours: u32,
        window_hours: u32,
    },
}

/// A backup schedule in a time zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    zone: Tz,
    plan: Plan,
}

/// How many days of windows `next_slot` / `prev_slot` look through before giving up; a weekly plan
/// with at least one day always has a slot within 8.
const SEARCH_DAYS: i64 = 16;

/// The UTC instant of a local wall-clock time in `zone`, by the module's daylight-saving rule:
/// the only instant, the first of two, or the first instant after a gap. `None` only at the ends
/// of chrono's range.
pub fn resolve_local(zone: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    match zone.from_local_datetime(&local) {
        LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(a, b) => Some(a.min(b).with_timezone(&Utc)),
        LocalResult::None => {
            // In a gap: the first local minute that exists again is where the gap ends. Gaps are
            // whole minutes in the tz database; the longest (a skipped day) is under 48 hours.
            let mut m = local.with_second(0)?.with_nanosecond(0)?;
            for _ in 0..48 * 60 {
                m = m.checked_add_signed(Duration::minutes(1))?;
                if let Some(t) = zone.from_local_datetime(&m).earliest() {
                    return Some(t.with_timezone(&Utc));
                }
            }
            None
        }
    }
}

impl Schedule {
    /// A schedule from its parts; refuses plans that never run.
    pub fn new(zone: Tz, plan: Plan) -> Result<Schedule> {
        let bad = |m: &str| Err(Error::invalid("schedulePolicy", m));
        match &plan {
            Plan::Daily { times } if times.is_empty() => return bad("A daily schedule needs a run time."),
            Plan::Weekly { days, .. } if days.is_empty() => {
                return bad("A weekly schedule needs at least one day to run on.")
            }
            Plan::Weekly { times, .. } if times.is_empty() => return bad("A weekly schedule needs a run time."),
            Plan::Hourly {
                interval_hours,
                window_hours,
                ..
            } if *interval_hours == 0 || *window_hours == 0 || *window_hours > 24 => {
                return bad("An hourly schedule needs an interval and a window of 1 to 24 hours.")
            }
            _ => {}
        }
        let mut plan = plan;
        match &mut plan {
            Plan::Daily { times } | Plan::Weekly { times, .. } => {
                times.sort();
                times.dedup();
            }
            Plan::Hourly { .. } => {}
        }
        if let Plan::Weekly { days, .. } = &mut plan {
            days.sort_by_key(|d| d.num_days_from_sunday());
            days.dedup();
        }
        Ok(Schedule { zone, plan })
    }

    /// From a policy's `properties`: its `schedulePolicy` and `timeZone` (UTC when absent).
    pub fn from_policy(properties: &Value) -> Result<Schedule> {
        let p = json::object(properties, "properties")?;
        let tz = json::opt_str(p, "timeZone", "")?;
        let s = json::get(p, "schedulePolicy")
            .ok_or_else(|| Error::invalid("schedulePolicy", "'schedulePolicy' is required."))?;
        Schedule::from_json(s, tz)
    }

    /// From a `schedulePolicy` object and the policy's `timeZone` (a Windows id; `None` is UTC).
    pub fn from_json(schedule_policy: &Value, time_zone: Option<&str>) -> Result<Schedule> {
        let zone = match time_zone {
            Some(id) => windows_zone(id)?,
            None => Tz::UTC,
        };
        let path = "schedulePolicy.";
        let m = json::object(schedule_policy, "schedulePolicy")?;
        let ty = json::req_enum(
            m,
            "schedulePolicyType",
            path,
            &["SimpleSchedulePolicy", "SimpleSchedulePolicyV2"],
        )?;
        let freq = json::req_enum(m, "scheduleRunFrequency", path, &["Daily", "Weekly", "Hourly"])?;
        let plan = match (ty, freq) {
            (_, "Hourly") => hourly(
                json::req_obj(m, "hourlySchedule", path)?,
                &format!("{path}hourlySchedule."),
            )?,
            ("SimpleSchedulePolicy", "Daily") => Plan::Daily { times: times(m, path)? },
            ("SimpleSchedulePolicy", _) => Plan::Weekly {
                days: run_days(m, path)?,
                times: times(m, path)?,
            },
            (_, "Daily") => {
                let p = format!("{path}dailySchedule.");
                Plan::Daily {
                    times: times(json::req_obj(m, "dailySchedule", path)?, &p)?,
                }
            }
            _ => {
                let p = format!("{path}weeklySchedule.");
                let w = json::req_obj(m, "weeklySchedule", path)?;
                Plan::Weekly {
                    days: run_days(w, &p)?,
                    times: times(w, &p)?,
                }
            }
        };
        Schedule::new(zone, plan).map_err(|e| match e {
            Error::Invalid { message, .. } => Error::invalid(format!("{path}scheduleRunFrequency"), message),
            other => other,
        })
    }

    /// The policy's time zone.
    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The local times it runs at.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    pub fn frequency(&self) -> Frequency {
        match self.plan {
            Plan::Daily { .. } => Frequency::Daily,
            Plan::Weekly { .. } => Frequency::Weekly,
            Plan::Hourly { .. } => Frequency::Hourly,
        }
    }

    /// The local date of an instant in the policy's zone.
    pub fn local_date(&self, t: DateTime<Utc>) -> NaiveDate {
        t.with_timezone(&self.zone).date_naive()
    }

    /// The local wall-clock times of the window (or run day) that starts on local date `d`, in order.
    fn local_slots(&self, d: NaiveDate) -> Vec<NaiveDateTime> {
        match &self.plan {
            Plan::Daily { times } => times.iter().map(|t| d.and_time(*t)).collect(),
            Plan::Weekly { days, times } if days.contains(&d.weekday()) => {
                times.iter().map(|t| d.and_time(*t)).collect()
            }
            Plan::Weekly { .. } => vec![],
            Plan::Hourly {
                start,
                interval_hours,
                window_hours,
            } => (0..*window_hours)
                .step_by(*interval_hours as usize)
                .filter_map(|h| d.and_time(*start).checked_add_signed(Duration::hours(h.into())))
                .collect(),
        }
    }

    /// The first slot strictly after `after`.
    pub fn next_slot(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut d = self.local_date(after).checked_sub_signed(Duration::days(2))?;
        for _ in 0..SEARCH_DAYS {
            for local in self.local_slots(d) {
                // Local slots come in increasing order and `resolve_local` never goes backwards,
                // so the first one past `after` is the earliest.
                match resolve_local(self.zone, local) {
                    Some(u) if u > after => return Some(u),
                    _ => {}
                }
            }
            d = d.succ_opt()?;
        }
        None
    }

    /// The last slot at or before `at`.
    pub fn prev_slot(&self, at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut d = self.local_date(at).checked_add_signed(Duration::days(2))?;
        for _ in 0..SEARCH_DAYS {
            for local in self.local_slots(d).into_iter().rev() {
                match resolve_local(self.zone, local) {
                    Some(u) if u <= at => return Some(u),
                    _ => {}
                }
            }
            d = d.pred_opt()?;
        }
        None
    }

    /// The slots in the half-open interval (`after`, `until`], in order, each once.
    pub fn slots(&self, after: DateTime<Utc>, until: DateTime<Utc>) -> Slots<'_> {
        Slots {
            schedule: self,
            cursor: after,
            until,
        }
    }

    /// What a server that was down runs once when it starts at `now`: the latest slot in
    /// (`last_done`, `now`], or `None` when no slot was missed. With no `last_done` (never backed
    /// up) it is the latest slot at or before `now`. Never more than one slot, however long the
    /// server was down.
    pub fn missed(&self, last_done: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let p = self.prev_slot(now)?;
        match last_done {
            Some(l) if p <= l => None,
            _ => Some(p),
        }
    }

    /// Whether `t` is the last slot of its local day (the one Azure moves to the vault for an
    /// hourly schedule). For daily and weekly schedules with one run time, every slot is.
    pub fn is_last_of_day(&self, t: DateTime<Utc>) -> bool {
        self.next_slot(t).map(|n| self.local_date(n)) != Some(self.local_date(t))
    }
}

/// The iterator [`Schedule::slots`] returns.
#[derive(Debug, Clone)]
pub struct Slots<'a> {
    schedule: &'a Schedule,
    cursor: DateTime<Utc>,
    until: DateTime<Utc>,
}

impl Iterator for Slots<'_> {
    type Item = DateTime<Utc>;

    fn next(&mut self) -> Option<DateTime<Utc>> {
        if self.cursor >= self.until {
            return None;
        }
        let n = self.schedule.next_slot(self.cursor).filter(|n| *n <= self.until);
        self.cursor = n.unwrap_or(self.until);
        n
    }
}

fn times(m: &serde_json::Map<String, Value>, path: &str) -> Result<Vec<NaiveTime>> {
    let key = "scheduleRunTimes";
    let list = json::array(m, key, path)?;
    let mut out = Vec::with_capacity(list.len());
    for t in list {
        let t = t.as_str().and_then(json::time_of_day).ok_or_else(|| {
            Error::invalid(
                format!("{path}{key}"),
                format!("'{path}{key}' must hold ISO-8601 date-times."),
            )
        })?;
        out.push(t);
    }
    if out.is_empty() {
        return Err(Error::invalid(
            format!("{path}{key}"),
            format!("'{path}{key}' needs a run time."),
        ));
    }
    Ok(out)
}

fn run_days(m: &serde_json::Map<String, Value>, path: &str) -> Result<Vec<Weekday>> {
    let days = json::weekdays(m, "scheduleRunDays", path)?;
    if days.is_empty() {
        return Err(Error::invalid(
            format!("{path}scheduleRunDays"),
            format!("'{path}scheduleRunDays' needs at least one day."),
        ));
    }
    Ok(days)
}

fn hourly(h: &serde_json::Map<String, Value>, path: &str) -> Result<Plan> {
    let interval = json::opt_int(h, "interval", path)?.unwrap_or(0);
    let window = json::opt_int(h, "scheduleWindowDuration", path)?.unwrap_or(0);
    let start = json::opt_str(h, "scheduleWindowStartTime", path)?
        .and_then(json::time_of_day)
        .ok_or_else(|| {
            Error::invalid(
                format!("{path}scheduleWindowStartTime"),
                "'scheduleWindowStartTime' must be a date-time.",
            )
        })?;
    // Azure's narrower rules (4/6/8/12, a window of 4 to 24 hours) are `validate`'s; the parser
    // only refuses what cannot be scheduled at all.
    if !(1..=24).contains(&interval) {
        return Err(Error::invalid(
            format!("{path}interval"),
            "The hourly interval must be 4, 6, 8 or 12 hours.",
        ));
    }
    if !(1..=24).contains(&window) {
        return Err(Error::invalid(
            format!("{path}scheduleWindowDuration"),
            "The schedule window must be 4 to 24 hours.",
        ));
    }
    Ok(Plan::Hourly {
        start,
        interval_hours: interval as u32,
        window_hours: window as u32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn daily(time: &str, tz: &str) -> Schedule {
        Schedule::from_json(
            &json!({"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Daily",
                    "scheduleRunTimes": [format!("2020-01-01T{time}:00Z")]}),
            Some(tz),
        )
        .unwrap()
    }

    fn hourly(start: &str, interval: u32, window: u32, tz: &str) -> Schedule {
        Schedule::from_json(
            &json!({"schedulePolicyType": "SimpleSchedulePolicyV2", "scheduleRunFrequency": "Hourly",
                    "hourlySchedule": {"interval": interval, "scheduleWindowStartTime": format!("2020-01-01T{start}:00Z"), "scheduleWindowDuration": window}}),
            Some(tz),
        )
        .unwrap()
    }

    fn all(s: &Schedule, after: &str, until: &str) -> Vec<String> {
        s.slots(utc(after), utc(until))
            .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            .collect()
    }

    #[test]
    fn slots_land_on_the_right_utc_instants_across_daylight_saving() {
        let cases: Vec<(&str, Schedule, &str, &str, Vec<&str>)> = vec![
            (
                "UTC daily",
                daily("02:00", "UTC"),
                "2026-01-01T00:00:00Z",
                "2026-01-03T02:00:00Z",
                vec!["2026-01-01T02:00:00Z", "2026-01-02T02:00:00Z", "2026-01-03T02:00:00Z"],
            ),
            (
                "Pacific 02:30 on the spring-forward night runs at 03:00 PDT, once",
                daily("02:30", "Pacific Standard Time"),
                "2026-03-07T00:00:00Z",
                "2026-03-10T00:00:00Z",
                vec!["2026-03-07T10:30:00Z", "2026-03-08T10:00:00Z", "2026-03-09T09:30:00Z"],
            ),
            (
                "Pacific 01:30 on the fall-back night runs at the first 01:30 only",
                daily("01:30", "Pacific Standard Time"),
                "2026-10-31T00:00:00Z",
                "2026-11-03T00:00:00Z",
                vec!["2026-10-31T08:30:00Z", "2026-11-01T08:30:00Z", "2026-11-02T09:30:00Z"],
            ),
            (
                "W. Europe 02:30 on 2026-03-29 (02:00 CET -> 03:00 CEST) runs at 03:00 CEST",
                daily("02:30", "W. Europe Standard Time"),
                "2026-03-28T00:00:00Z",
                "2026-03-31T00:00:00Z",
                vec!["2026-03-28T01:30:00Z", "2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"],
            ),
            (
                "W. Europe 02:30 on 2026-10-25 (03:00 CEST -> 02:00 CET) runs once, at 02:30 CEST",
                daily("02:30", "W. Europe Standard Time"),
                "2026-10-24T00:00:00Z",
                "2026-10-27T00:00:00Z",
                vec!["2026-10-24T00:30:00Z", "2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"],
            ),
            (
                "India (no DST, +05:30) weekly Monday and Thursday 22:00",
                Schedule::from_json(
                    &json!({"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Weekly",
                            "scheduleRunDays": ["thursday", "Monday"], "scheduleRunTimes": ["2020-01-01T22:00:00Z"]}),
                    Some("India Standard Time"),
                )
                .unwrap(),
                "2026-06-01T00:00:00Z",
                "2026-06-12T00:00:00Z",
                vec!["2026-06-01T16:30:00Z", "2026-06-04T16:30:00Z", "2026-06-08T16:30:00Z", "2026-06-11T16:30:00Z"],
            ),
            (
                "V2 weekly Sunday 23:30 in W. Europe across the spring change",
                Schedule::from_json(
                    &json!({"schedulePolicyType": "SimpleSchedulePolicyV2", "scheduleRunFrequency": "Weekly",
                            "weeklySchedule": {"scheduleRunDays": ["Sunday"], "scheduleRunTimes": ["2020-01-01T23:30:00+05:00"]}}),
                    Some("W. Europe Standard Time"),
                )
                .unwrap(),
                "2026-03-20T00:00:00Z",
                "2026-04-06T00:00:00Z",
                vec!["2026-03-22T22:30:00Z", "2026-03-29T21:30:00Z", "2026-04-05T21:30:00Z"],
            ),
            (
                "hourly every 4 h from 08:00 for 12 h (end exclusive)",
                hourly("08:00", 4, 12, "UTC"),
                "2026-01-01T00:00:00Z",
                "2026-01-02T00:00:00Z",
                vec!["2026-01-01T08:00:00Z", "2026-01-01T12:00:00Z", "2026-01-01T16:00:00Z"],
            ),
            (
                "hourly every 4 h from 08:00 for 24 h crosses midnight, six a day",
                hourly("08:00", 4, 24, "UTC"),
                "2026-01-01T07:00:00Z",
                "2026-01-02T08:00:00Z",
                vec![
                    "2026-01-01T08:00:00Z",
                    "2026-01-01T12:00:00Z",
                    "2026-01-01T16:00:00Z",
                    "2026-01-01T20:00:00Z",
                    "2026-01-02T00:00:00Z",
                    "2026-01-02T04:00:00Z",
                    "2026-01-02T08:00:00Z",
                ],
            ),
            (
                "hourly every 6 h from 20:00 for 12 h in India",
                hourly("20:00", 6, 12, "India Standard Time"),
                "2026-01-01T00:00:00Z",
                "2026-01-02T18:00:00Z",
                vec!["2026-01-01T14:30:00Z", "2026-01-01T20:30:00Z", "2026-01-02T14:30:00Z"],
            ),
            (
                "hourly every 4 h from 00:00 on the Pacific spring-forward day",
                hourly("00:00", 4, 24, "Pacific Standard Time"),
                "2026-03-08T07:00:00Z",
                "2026-03-09T07:00:00Z",
                vec![
                    "2026-03-08T08:00:00Z",
                    "2026-03-08T11:00:00Z",
                    "2026-03-08T15:00:00Z",
                    "2026-03-08T19:00:00Z",
                    "2026-03-08T23:00:00Z",
                    "2026-03-09T03:00:00Z",
                    "2026-03-09T07:00:00Z",
                ],
            ),
            (
                "hourly every 4 h from 01:00 on the Pacific fall-back day: 01:00 once",
                hourly("01:00", 4, 24, "Pacific Standard Time"),
                "2026-11-01T07:00:00Z",
                "2026-11-02T10:00:00Z",
                vec![
                    "2026-11-01T08:00:00Z",
                    "2026-11-01T13:00:00Z",
                    "2026-11-01T17:00:00Z",
                    "2026-11-01T21:00:00Z",
                    "2026-11-02T01:00:00Z",
                    "2026-11-02T05:00:00Z",
                    "2026-11-02T09:00:00Z",
                ],
            ),
        ];
        for (what, s, after, until, want) in cases {
            assert_eq!(all(&s, after, until), want, "{what}");
        }
    }

    #[test]
    fn the_interval_is_half_open() {
        let s = daily("02:00", "UTC");
        assert_eq!(
            all(&s, "2026-01-01T02:00:00Z", "2026-01-02T02:00:00Z"),
            vec!["2026-01-02T02:00:00Z"]
        );
        assert_eq!(
            s.next_slot(utc("2026-01-01T02:00:00Z")),
            Some(utc("2026-01-02T02:00:00Z"))
        );
        assert_eq!(
            s.next_slot(utc("2026-01-01T01:59:59Z")),
            Some(utc("2026-01-01T02:00:00Z"))
        );
        assert!(all(&s, "2026-01-02T02:00:00Z", "2026-01-01T00:00:00Z").is_empty());
    }

    #[test]
    fn missed_gives_at_most_the_latest_slot() {
        let s = daily("02:00", "Pacific Standard Time");
        let cases = [
            // (last_done, now, expected)
            (
                Some("2026-01-01T10:00:00Z"),
                "2026-01-31T12:00:00Z",
                Some("2026-01-31T10:00:00Z"),
            ),
            (Some("2026-01-01T10:00:00Z"), "2026-01-01T12:00:00Z", None),
            (
                Some("2026-01-01T10:00:00Z"),
                "2026-01-02T10:00:00Z",
                Some("2026-01-02T10:00:00Z"),
            ),
            (Some("2026-01-01T10:00:00Z"), "2026-01-02T09:59:59Z", None),
            (None, "2026-01-02T09:59:59Z", Some("2026-01-01T10:00:00Z")),
            (
                Some("2026-03-01T10:00:00Z"),
                "2026-03-08T12:00:00Z",
                Some("2026-03-08T10:00:00Z"),
            ),
        ];
        for (last, now, want) in cases {
            assert_eq!(s.missed(last.map(utc), utc(now)), want.map(utc), "{last:?} {now}");
        }
        let w = Schedule::new(
            Tz::UTC,
            Plan::Weekly {
                days: vec![Weekday::Wed],
                times: vec![NaiveTime::from_hms_opt(3, 0, 0).unwrap()],
            },
        )
        .unwrap();
        // Down for ten weeks: one run, for the latest Wednesday.
        assert_eq!(
            w.missed(Some(utc("2026-01-07T03:00:00Z")), utc("2026-03-20T00:00:00Z")),
            Some(utc("2026-03-18T03:00:00Z"))
        );
    }

    #[test]
    fn hourly_last_of_day() {
        let s = hourly("08:00", 4, 12, "UTC");
        assert!(!s.is_last_of_day(utc("2026-01-01T12:00:00Z")));
        assert!(s.is_last_of_day(utc("2026-01-01T16:00:00Z")));
        let s = hourly("08:00", 4, 24, "UTC");
        assert!(s.is_last_of_day(utc("2026-01-01T20:00:00Z")));
        assert!(!s.is_last_of_day(utc("2026-01-02T00:00:00Z")));
        assert!(!s.is_last_of_day(utc("2026-01-02T04:00:00Z")));
    }

    #[test]
    fn parse_errors_name_the_member() {
        let cases = [
            (
                json!({"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Weekly", "scheduleRunTimes": ["2020-01-01T02:00:00Z"]}),
                Some("UTC"),
                "schedulePolicy.scheduleRunDays",
            ),
            (
                json!({"schedulePolicyType": "SimpleSchedulePolicyV2", "scheduleRunFrequency": "Weekly",
                       "weeklySchedule": {"scheduleRunDays": [], "scheduleRunTimes": ["2020-01-01T02:00:00Z"]}}),
                Some("UTC"),
                "schedulePolicy.weeklySchedule.scheduleRunDays",
            ),
            (
                json!({"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Daily"}),
                Some("UTC"),
                "schedulePolicy.scheduleRunTimes",
            ),
            (
                json!({"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Daily", "scheduleRunTimes": ["noon"]}),
                Some("UTC"),
                "schedulePolicy.scheduleRunTimes",
            ),
            (
                json!({"schedulePolicyType": "LogSchedulePolicy", "scheduleRunFrequency": "Daily"}),
                Some("UTC"),
                "schedulePolicy.schedulePolicyType",
            ),
            (
                json!({"schedulePolicyType": "SimpleSchedulePolicyV2", "scheduleRunFrequency": "Hourly"}),
                Some("UTC"),
                "schedulePolicy.hourlySchedule",
            ),
            (
                json!({"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Daily", "scheduleRunTimes": ["2020-01-01T02:00:00Z"]}),
                Some("Moon Time"),
                "timeZone",
            ),
            (json!([]), None, "schedulePolicy"),
        ];
        for (j, tz, target) in cases {
            let e = Schedule::from_json(&j, tz).expect_err(target);
            assert_eq!(e.target(), target, "{j}: {e}");
            assert_eq!(e.code(), "BMSUserErrorInvalidPolicyInput");
        }
    }

    #[test]
    fn the_default_policies_parse() {
        let p = json!({"schedulePolicy": {"schedulePolicyType": "SimpleSchedulePolicyV2", "scheduleRunFrequency": "Hourly",
                           "hourlySchedule": {"interval": 4, "scheduleWindowStartTime": "2026-01-01T08:00:00Z", "scheduleWindowDuration": 12}},
                       "timeZone": "UTC"});
        let s = Schedule::from_policy(&p).unwrap();
        assert_eq!(s.frequency(), Frequency::Hourly);
        let p = json!({"SchedulePolicy": {"schedulepolicytype": "SimpleSchedulePolicy", "scheduleRunFrequency": "daily", "scheduleRunTimes": ["2026-01-01T09:00:00Z"]}});
        let s = Schedule::from_policy(&p).unwrap();
        assert_eq!(s.zone(), Tz::UTC);
        assert_eq!(
            s.next_slot(utc("2026-05-05T00:00:00Z")),
            Some(utc("2026-05-05T09:00:00Z"))
        );
    }
}
