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
//! calendar months (a day past the end of the target month is clamped to its last day, so 31 Jan
//! + 1 month = 28/29 Feb); the local result goes back to UTC by the daylight-saving rule of
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
