//! How long each recovery point is kept: [`Retention`], parsed from a policy's `retentionPolicy`.
//!
//! # Tiers (Azure's semantics)
//! A scheduled recovery point belongs to zero or more tiers, judged on its LOCAL date in the
//! policy's time zone:
//! - **vault point**: for daily and weekly schedules every scheduled point; for hourly schedules
//!   only the last point of the local day. Azure: "For hourly backups, the last backup of the day
//!   is transferred to a vault" (Back up Azure VMs with the Enhanced policy,
//!   <https://learn.microsoft.com/azure/backup/backup-azure-vms-enhanced-policy>). The other hourly
//!   points live only as instant-restore snapshots (`instantRpRetentionRangeInDays`), which this
//!   crate does not model; they belong to no tier. The same rule is applied to Azure Files hourly
//!   schedules (not separately documented by Azure).
//! - **daily**: every vault point, when the policy has `dailySchedule`;
//! - **weekly**: a vault point taken on one of `weeklySchedule.daysOfTheWeek`;
//! - **monthly**: a vault point on one of `daysOfTheMonth` (`isLast` = the month's last day) for
//!   `retentionScheduleFormatType` Daily, or on a `daysOfTheWeek` day in one of `weeksOfTheMonth`
//!   for Weekly (First = days 1-7, Second 8-14, Third 15-21, Fourth 22-28, Last = the month's last
//!   seven days);
//! - **yearly**: a vault point in one of `monthsOfYear` that matches the same day rules.
//!
//! `SimpleRetentionPolicy` keeps every vault point for its duration (reported as the daily tier).
//!
//! # Expiry
//! A point expires at the latest of (point + each qualifying tier's duration), computed on the
//! local calendar of the policy's zone: Days and Weeks add whole local days, Months and Years add
//! calendar months (a day past the end of the target month is clamped to its last day, so one
//! month after 31 Jan is 28/29 Feb); the local result goes back to UTC by the daylight-saving rule of
//! [`crate::schedule`]. Counting on the local calendar makes "daily, 7 days" keep exactly the last
//! seven daily points whatever daylight saving did in between. A point is kept while
//! `now < expiry`; a point in no tier is not kept by retention at all.

use crate::error::{Error, Result};
use crate::json;
use crate::schedule::{resolve_local, Frequency, Schedule};
use chrono::{DateTime, Datelike, Days, Months, NaiveDate, NaiveDateTime, Utc, Weekday};
use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// The unit of a retention duration (`durationType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DurationType {
    Days,
    Weeks,
    Months,
    Years,
}

/// `retentionDuration`: a count of a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RetentionDuration {
    pub count: u32,
    pub unit: DurationType,
}

impl RetentionDuration {
    /// `local` plus this duration on the local calendar (months clamped to the month's end).
    pub fn add_local(&self, local: NaiveDateTime) -> Option<NaiveDateTime> {
        let n = self.count;
        match self.unit {
            DurationType::Days => local.checked_add_days(Days::new(n.into())),
            DurationType::Weeks => local.checked_add_days(Days::new(u64::from(n) * 7)),
            DurationType::Months => local.checked_add_months(Months::new(n)),
            DurationType::Years => local.checked_add_months(Months::new(n.checked_mul(12)?)),
        }
    }
}

/// `weeksOfTheMonth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeekOfMonth {
    First,
    Second,
    Third,
    Fourth,
    Last,
}

/// Which days of a month a monthly or yearly tier takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DayRule {
    /// `retentionScheduleFormatType` Daily: these dates, and the last day when `last`.
    DaysOfMonth { dates: Vec<u32>, last: bool },
    /// `retentionScheduleFormatType` Weekly: these weekdays in these weeks of the month.
    WeeksOfMonth {
        weeks: Vec<WeekOfMonth>,
        days: Vec<Weekday>,
    },
}

impl DayRule {
    /// Whether local date `d` is one of the rule's days.
    pub fn matches(&self, d: NaiveDate) -> bool {
        match self {
            DayRule::DaysOfMonth { dates, last } => {
                dates.contains(&d.day()) || (*last && d.succ_opt().is_none_or(|n| n.month() != d.month()))
            }
            DayRule::WeeksOfMonth { weeks, days } => {
                if !days.contains(&d.weekday()) {
                    return false;
                }
                let in_last_seven = d.checked_add_days(Days::new(7)).is_none_or(|n| n.month() != d.month());
                weeks.iter().any(|w| match w {
                    WeekOfMonth::First => d.day() <= 7,
                    WeekOfMonth::Second => (8..=14).contains(&d.day()),
                    WeekOfMonth::Third => (15..=21).contains(&d.day()),
                    WeekOfMonth::Fourth => (22..=28).contains(&d.day()),
                    WeekOfMonth::Last => in_last_seven,
                })
            }
        }
    }
}

/// `LongTermRetentionPolicy`: any of the four tiers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LongTerm {
    pub daily: Option<RetentionDuration>,
    pub weekly: Option<(Vec<Weekday>, RetentionDuration)>,
    pub monthly: Option<(DayRule, RetentionDuration)>,
    /// Months of the year (1-12), the day rule and the duration.
    pub yearly: Option<(Vec<u32>, DayRule, RetentionDuration)>,
}

/// A policy's retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retention {
    /// `SimpleRetentionPolicy`: every vault point for one duration.
    Simple(RetentionDuration),
    LongTerm(LongTerm),
}

/// The tiers a recovery point belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Tiers {
    pub daily: bool,
    pub weekly: bool,
    pub monthly: bool,
    pub yearly: bool,
}

impl Tiers {
    pub fn any(&self) -> bool {
        self.daily || self.weekly || self.monthly || self.yearly
    }
}

pub(crate) const MONTH_NAMES: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

impl Retention {
    /// From a policy's `properties` (its `retentionPolicy`).
    pub fn from_policy(properties: &Value) -> Result<Retention> {
        let p = json::object(properties, "properties")?;
        let r = json::get(p, "retentionPolicy")
            .ok_or_else(|| Error::invalid("retentionPolicy", "'retentionPolicy' is required."))?;
        Retention::from_json(r)
    }

    /// From a `retentionPolicy` object.
    pub fn from_json(retention_policy: &Value) -> Result<Retention> {
        let path = "retentionPolicy.";
        let m = json::object(retention_policy, "retentionPolicy")?;
        let ty = json::req_enum(
            m,
            "retentionPolicyType",
            path,
            &["SimpleRetentionPolicy", "LongTermRetentionPolicy"],
        )?;
        if ty == "SimpleRetentionPolicy" {
            return Ok(Retention::Simple(duration(m, path)?));
        }
        let mut lt = LongTerm::default();
        if let Some(d) = json::opt_obj(m, "dailySchedule", path)? {
            lt.daily = Some(duration(d, &format!("{path}dailySchedule."))?);
        }
        if let Some(w) = json::opt_obj(m, "weeklySchedule", path)? {
            let p = format!("{path}weeklySchedule.");
            let days = json::weekdays(w, "daysOfTheWeek", &p)?;
            if days.is_empty() {
                return Err(Error::invalid(
                    format!("{p}daysOfTheWeek"),
                    "Weekly retention needs at least one day of the week.",
                ));
            }
            lt.weekly = Some((days, duration(w, &p)?));
        }
        if let Some(x) = json::opt_obj(m, "monthlySchedule", path)? {
            let p = format!("{path}monthlySchedule.");
            lt.monthly = Some((day_rule(x, &p)?, duration(x, &p)?));
        }
        if let Some(x) = json::opt_obj(m, "yearlySchedule", path)? {
            let p = format!("{path}yearlySchedule.");
            lt.yearly = Some((months(x, &p)?, day_rule(x, &p)?, duration(x, &p)?));
        }
        if lt == LongTerm::default() {
            return Err(Error::invalid(
                format!("{path}dailySchedule"),
                "A long-term retention policy needs at least one retention schedule.",
            ));
        }
        Ok(Retention::LongTerm(lt))
    }

    /// The tiers the scheduled recovery point taken at `point` belongs to under `schedule`.
    pub fn tiers(&self, schedule: &Schedule, point: DateTime<Utc>) -> Tiers {
        let vault = match schedule.frequency() {
            Frequency::Hourly => schedule.is_last_of_day(point),
            Frequency::Daily | Frequency::Weekly => true,
        };
        if !vault {
            return Tiers::default();
        }
        let d = schedule.local_date(point);
        match self {
            Retention::Simple(_) => Tiers {
                daily: true,
                ..Tiers::default()
            },
            Retention::LongTerm(lt) => Tiers {
                daily: lt.daily.is_some(),
                weekly: lt.weekly.as_ref().is_some_and(|(days, _)| days.contains(&d.weekday())),
                monthly: lt.monthly.as_ref().is_some_and(|(rule, _)| rule.matches(d)),
                yearly: lt
                    .yearly
                    .as_ref()
                    .is_some_and(|(months, rule, _)| months.contains(&d.month()) && rule.matches(d)),
            },
        }
    }

    /// When the point taken at `point` expires: the latest of point + each qualifying tier's
    /// duration. `None` when no tier keeps it (or the date is out of range).
    pub fn expiry(&self, schedule: &Schedule, point: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let tiers = self.tiers(schedule, point);
        let durations: Vec<RetentionDuration> = match self {
            Retention::Simple(d) => vec![*d].into_iter().filter(|_| tiers.daily).collect(),
            Retention::LongTerm(lt) => [
                lt.daily.filter(|_| tiers.daily),
                lt.weekly.as_ref().map(|w| w.1).filter(|_| tiers.weekly),
                lt.monthly.as_ref().map(|m| m.1).filter(|_| tiers.monthly),
                lt.yearly.as_ref().map(|y| y.2).filter(|_| tiers.yearly),
            ]
            .into_iter()
            .flatten()
            .collect(),
        };
        let local = point.with_timezone(&schedule.zone()).naive_local();
        durations
            .iter()
            .filter_map(|d| d.add_local(local))
            .filter_map(|l| resolve_local(schedule.zone(), l))
            .max()
    }

    /// Of `points` (recovery points, by the time they were scheduled), the ones kept at `now`.
    pub fn survivors(
        &self,
        schedule: &Schedule,
        points: &[DateTime<Utc>],
        now: DateTime<Utc>,
    ) -> BTreeSet<DateTime<Utc>> {
        points
            .iter()
            .copied()
            .filter(|p| self.expiry(schedule, *p).is_some_and(|e| now < e))
            .collect()
    }
}

/// `retentionDuration` of a tier.
fn duration(m: &Map<String, Value>, path: &str) -> Result<RetentionDuration> {
    let d = json::req_obj(m, "retentionDuration", path)?;
    let p = format!("{path}retentionDuration.");
    let count =
        json::opt_int(d, "count", &p)?.ok_or_else(|| Error::invalid(format!("{p}count"), "'count' is required."))?;
    let unit = match json::req_enum(d, "durationType", &p, &["Days", "Weeks", "Months", "Years"])? {
        "Days" => DurationType::Days,
        "Weeks" => DurationType::Weeks,
        "Months" => DurationType::Months,
        _ => DurationType::Years,
    };
    let count = u32::try_from(count)
        .ok()
        .filter(|c| *c >= 1)
        .ok_or_else(|| Error::invalid(format!("{p}count"), "The retention count must be a positive number."))?;
    Ok(RetentionDuration { count, unit })
}

fn day_rule(x: &Map<String, Value>, p: &str) -> Result<DayRule> {
    let fmt = json::req_enum(x, "retentionScheduleFormatType", p, &["Daily", "Weekly"])?;
    if fmt == "Weekly" {
        let w = json::req_obj(x, "retentionScheduleWeekly", p)?;
        let wp = format!("{p}retentionScheduleWeekly.");
        let days = json::weekdays(w, "daysOfTheWeek", &wp)?;
        let mut weeks = Vec::new();
        for wk in json::array(w, "weeksOfTheMonth", &wp)? {
            let s = wk.as_str().unwrap_or_default();
            let week = [
                ("First", WeekOfMonth::First),
                ("Second", WeekOfMonth::Second),
                ("Third", WeekOfMonth::Third),
                ("Fourth", WeekOfMonth::Fourth),
                ("Last", WeekOfMonth::Last),
            ]
            .into_iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(s))
            .map(|(_, w)| w)
            .ok_or_else(|| {
                Error::invalid(
                    format!("{wp}weeksOfTheMonth"),
                    "Weeks of the month are First, Second, Third, Fourth or Last.",
                )
            })?;
            if !weeks.contains(&week) {
                weeks.push(week);
            }
        }
        Ok(DayRule::WeeksOfMonth { weeks, days })
    } else {
        let d = json::req_obj(x, "retentionScheduleDaily", p)?;
        let dp = format!("{p}retentionScheduleDaily.");
        let mut dates = Vec::new();
        let mut last = false;
        for day in json::array(d, "daysOfTheMonth", &dp)? {
            let o = json::object(day, &format!("{dp}daysOfTheMonth"))?;
            if matches!(json::get(o, "isLast"), Some(Value::Bool(true))) {
                last = true;
                continue;
            }
            let date = json::opt_int(o, "date", &format!("{dp}daysOfTheMonth."))?.unwrap_or(0);
            if !(1..=31).contains(&date) {
                return Err(Error::invalid(
                    format!("{dp}daysOfTheMonth"),
                    "Days of the month are 1 to 28, or isLast.",
                ));
            }
            if !dates.contains(&(date as u32)) {
                dates.push(date as u32);
            }
        }
        Ok(DayRule::DaysOfMonth { dates, last })
    }
}

fn months(x: &Map<String, Value>, p: &str) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    for m in json::array(x, "monthsOfYear", p)? {
        let s = m.as_str().unwrap_or_default();
        let n = MONTH_NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(s))
            .ok_or_else(|| Error::invalid(format!("{p}monthsOfYear"), format!("'{m}' is not a month of the year.")))?;
        if !out.contains(&(n as u32 + 1)) {
            out.push(n as u32 + 1);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveTime, TimeZone};
    use serde_json::json;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    const T: &str = "2020-01-01T10:00:00Z";

    fn daily_at_10(tz: &str) -> Schedule {
        Schedule::from_json(
            &json!({"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Daily", "scheduleRunTimes": [T]}),
            Some(tz),
        )
        .unwrap()
    }

    fn ltr(monthly: Value, yearly: Value) -> Retention {
        Retention::from_json(&json!({"retentionPolicyType": "LongTermRetentionPolicy",
            "dailySchedule": {"retentionTimes": [T], "retentionDuration": {"count": 7, "durationType": "Days"}},
            "weeklySchedule": {"daysOfTheWeek": ["Sunday"], "retentionTimes": [T], "retentionDuration": {"count": 4, "durationType": "Weeks"}},
            "monthlySchedule": monthly,
            "yearlySchedule": yearly}))
        .unwrap()
    }

    fn first_sunday_monthly() -> Value {
        json!({"retentionScheduleFormatType": "Weekly", "retentionScheduleWeekly": {"daysOfTheWeek": ["Sunday"], "weeksOfTheMonth": ["First"]},
               "retentionTimes": [T], "retentionDuration": {"count": 12, "durationType": "Months"}})
    }

    fn day_one_monthly() -> Value {
        json!({"retentionScheduleFormatType": "Daily", "retentionScheduleDaily": {"daysOfTheMonth": [{"date": 1, "isLast": false}]},
               "retentionTimes": [T], "retentionDuration": {"count": 12, "durationType": "Months"}})
    }

    fn january_first_yearly() -> Value {
        json!({"retentionScheduleFormatType": "Daily", "monthsOfYear": ["January"],
               "retentionScheduleDaily": {"daysOfTheMonth": [{"date": 1, "isLast": false}]},
               "retentionTimes": [T], "retentionDuration": {"count": 2, "durationType": "Years"}})
    }

    /// Years, months and days compared as a tuple: "date + n months is after end" without the
    /// implementation's calendar arithmetic (no clamping is needed for the days used here).
    fn plus_months_after(d: NaiveDate, months: i32, end: NaiveDate) -> bool {
        let total = d.year() * 12 + d.month0() as i32 + months;
        (total / 12, total % 12 + 1, d.day()) > (end.year(), end.month() as i32, end.day())
    }

    /// 400 daily backups at 10:00 "W. Europe Standard Time" (2026-01-01 .. 2027-02-04, through both
    /// 2026 DST changes); at the last backup, exactly what Azure keeps survives.
    #[test]
    fn four_hundred_days_of_daily_backups_keep_what_azure_keeps() {
        let zone = crate::zone::windows_zone("W. Europe Standard Time").unwrap();
        let s = daily_at_10("W. Europe Standard Time");
        let (start, end) = (date(2026, 1, 1), date(2027, 2, 4));
        let points: Vec<_> = s
            .slots(utc("2025-12-31T12:00:00Z"), utc("2027-02-04T12:00:00Z"))
            .collect();
        assert_eq!(points.len(), 400);
        let now = *points.last().unwrap();
        let at_ten = |d: NaiveDate| {
            zone.from_local_datetime(&d.and_time(NaiveTime::from_hms_opt(10, 0, 0).unwrap()))
                .single()
                .unwrap()
                .with_timezone(&Utc)
        };
        assert_eq!(points[0], at_ten(start));
        assert_eq!(now, at_ten(end));

        // Counting back from the end date, one tier at a time.
        let mut daily = BTreeSet::new();
        let mut weekly = BTreeSet::new();
        let mut d = end;
        for back in 0..28 {
            if back < 7 {
                daily.insert(d);
            }
            if d.weekday() == Weekday::Sun {
                weekly.insert(d);
            }
            d = d.pred_opt().unwrap();
        }
        let months: Vec<(i32, u32)> = (0..14).map(|i| (2026 + i / 12, (i % 12) as u32 + 1)).collect();
        let in_range = |d: &NaiveDate| (start..=end).contains(d);
        let first_sundays: BTreeSet<NaiveDate> = months
            .iter()
            .map(|&(y, m)| {
                (1..=7)
                    .map(|day| date(y, m, day))
                    .find(|d| d.weekday() == Weekday::Sun)
                    .unwrap()
            })
            .filter(in_range)
            .filter(|d| plus_months_after(*d, 12, end))
            .collect();
        let firsts: BTreeSet<NaiveDate> = months
            .iter()
            .map(|&(y, m)| date(y, m, 1))
            .filter(in_range)
            .filter(|d| plus_months_after(*d, 12, end))
            .collect();
        let yearly: BTreeSet<NaiveDate> = [date(2026, 1, 1), date(2027, 1, 1)]
            .into_iter()
            .filter(in_range)
            .filter(|d| plus_months_after(*d, 24, end))
            .collect();
        assert_eq!(
            (
                daily.len(),
                weekly.len(),
                first_sundays.len(),
                firsts.len(),
                yearly.len()
            ),
            (7, 4, 11, 12, 2)
        );

        for (what, monthly_json, monthly, total) in [
            (
                "monthly on the first Sunday",
                first_sunday_monthly(),
                &first_sundays,
                23,
            ),
            ("monthly on day 1", day_one_monthly(), &firsts, 22),
        ] {
            let r = ltr(monthly_json, january_first_yearly());
            let want: BTreeSet<DateTime<Utc>> = daily
                .iter()
                .chain(&weekly)
                .chain(monthly)
                .chain(&yearly)
                .map(|d| at_ten(*d))
                .collect();
            assert_eq!(want.len(), total, "{what}: overlaps counted once");
            let got = r.survivors(&s, &points, now);
            let show = |set: &BTreeSet<DateTime<Utc>>| {
                set.iter()
                    .map(|t| zone.from_utc_datetime(&t.naive_utc()).date_naive().to_string())
                    .collect::<Vec<_>>()
            };
            assert_eq!(show(&got), show(&want), "{what}");
        }
    }

    #[test]
    fn tiers_follow_the_day_rules() {
        let s = daily_at_10("UTC");
        let r = Retention::from_json(&json!({"retentionPolicyType": "LongTermRetentionPolicy",
            "dailySchedule": {"retentionDuration": {"count": 7, "durationType": "Days"}},
            "weeklySchedule": {"daysOfTheWeek": ["Saturday"], "retentionDuration": {"count": 4, "durationType": "Weeks"}},
            "monthlySchedule": {"retentionScheduleFormatType": "Daily", "retentionScheduleDaily": {"daysOfTheMonth": [{"date": 15}, {"date": 0, "isLast": true}]},
                                "retentionDuration": {"count": 1, "durationType": "Months"}},
            "yearlySchedule": {"retentionScheduleFormatType": "Weekly", "monthsOfYear": ["February", "december"],
                               "retentionScheduleWeekly": {"daysOfTheWeek": ["Friday"], "weeksOfTheMonth": ["Last"]},
                               "retentionDuration": {"count": 3, "durationType": "Years"}}}))
        .unwrap();
        let t = |s: &str| utc(&format!("{s}T10:00:00Z"));
        let tiers = |d: &str| {
            let x = r.tiers(&s, t(d));
            (x.daily, x.weekly, x.monthly, x.yearly)
        };
        let cases = [
            ("2026-01-14", (true, false, false, false), "2026-01-21"),
            ("2026-01-15", (true, false, true, false), "2026-02-15"),
            ("2026-01-31", (true, true, true, false), "2026-02-28"), // Saturday, last day: 1 month clamps to Feb 28
            ("2026-02-27", (true, false, false, true), "2029-02-27"), // last Friday of February
            ("2026-02-20", (true, false, false, false), "2026-02-27"), // a Friday, not in the last seven days
            ("2026-02-28", (true, true, true, false), "2026-03-28"), // Saturday and the last day
            ("2026-12-25", (true, false, false, true), "2029-12-25"), // last Friday of December
            ("2028-02-29", (true, false, true, false), "2028-03-29"), // leap day is the last day
        ];
        for (d, want, expiry) in cases {
            assert_eq!(tiers(d), want, "{d}");
            assert_eq!(r.expiry(&s, t(d)), Some(t(expiry)), "{d}");
        }
    }

    #[test]
    fn hourly_schedules_keep_only_the_last_point_of_the_day() {
        let s = Schedule::from_json(
            &json!({"schedulePolicyType": "SimpleSchedulePolicyV2", "scheduleRunFrequency": "Hourly",
                    "hourlySchedule": {"interval": 4, "scheduleWindowStartTime": "2026-01-01T08:00:00Z", "scheduleWindowDuration": 12}}),
            Some("India Standard Time"),
        )
        .unwrap();
        let r = Retention::from_json(&json!({"retentionPolicyType": "LongTermRetentionPolicy",
            "dailySchedule": {"retentionDuration": {"count": 30, "durationType": "Days"}}}))
        .unwrap();
        // Local 08:00, 12:00, 16:00 (+05:30) on 2026-03-01.
        let points: Vec<_> = s
            .slots(utc("2026-02-28T20:00:00Z"), utc("2026-03-01T12:00:00Z"))
            .collect();
        assert_eq!(
            points,
            vec![
                utc("2026-03-01T02:30:00Z"),
                utc("2026-03-01T06:30:00Z"),
                utc("2026-03-01T10:30:00Z")
            ]
        );
        let kept: Vec<bool> = points.iter().map(|p| r.tiers(&s, *p).any()).collect();
        assert_eq!(kept, vec![false, false, true]);
        assert_eq!(r.expiry(&s, points[0]), None);
        assert_eq!(r.expiry(&s, points[2]), Some(utc("2026-03-31T10:30:00Z")));
        let survivors = r.survivors(&s, &points, utc("2026-03-02T00:00:00Z"));
        assert_eq!(survivors.into_iter().collect::<Vec<_>>(), vec![points[2]]);
    }

    #[test]
    fn simple_retention_and_local_calendar_durations() {
        let s = daily_at_10("Pacific Standard Time");
        let r = Retention::from_json(&json!({"retentionPolicyType": "SimpleRetentionPolicy",
            "retentionDuration": {"count": 2, "durationType": "Days"}}))
        .unwrap();
        // 10:00 PST on Mar 7 + 2 local days = 10:00 PDT on Mar 9: 47 hours, across the spring change.
        let p = utc("2026-03-07T18:00:00Z");
        assert_eq!(r.expiry(&s, p), Some(utc("2026-03-09T17:00:00Z")));
        assert!(r.survivors(&s, &[p], utc("2026-03-09T16:59:59Z")).contains(&p));
        assert!(r.survivors(&s, &[p], utc("2026-03-09T17:00:00Z")).is_empty());
    }

    #[test]
    fn parse_errors_name_the_member() {
        let cases = [
            (
                json!({"retentionPolicyType": "LongTermRetentionPolicy"}),
                "retentionPolicy.dailySchedule",
            ),
            (
                json!({"retentionPolicyType": "Forever"}),
                "retentionPolicy.retentionPolicyType",
            ),
            (
                json!({"retentionPolicyType": "SimpleRetentionPolicy", "retentionDuration": {"count": 0, "durationType": "Days"}}),
                "retentionPolicy.retentionDuration.count",
            ),
            (
                json!({"retentionPolicyType": "SimpleRetentionPolicy", "retentionDuration": {"count": 3, "durationType": "Fortnights"}}),
                "retentionPolicy.retentionDuration.durationType",
            ),
            (
                json!({"retentionPolicyType": "LongTermRetentionPolicy", "yearlySchedule": {"retentionScheduleFormatType": "Daily", "monthsOfYear": ["Smarch"],
                    "retentionScheduleDaily": {"daysOfTheMonth": [{"date": 1}]}, "retentionDuration": {"count": 1, "durationType": "Years"}}}),
                "retentionPolicy.yearlySchedule.monthsOfYear",
            ),
            (
                json!({"retentionPolicyType": "LongTermRetentionPolicy", "monthlySchedule": {"retentionScheduleFormatType": "Weekly",
                    "retentionScheduleWeekly": {"daysOfTheWeek": ["Sunday"], "weeksOfTheMonth": ["Fifth"]}, "retentionDuration": {"count": 1, "durationType": "Months"}}}),
                "retentionPolicy.monthlySchedule.retentionScheduleWeekly.weeksOfTheMonth",
            ),
        ];
        for (j, target) in cases {
            let e = Retention::from_json(&j).expect_err(target);
            assert_eq!(e.target(), target, "{j}: {e}");
        }
    }
}
