//! Azure's rejections of schedules and retentions that the control plane's policy parser
//! (`rsvault-control`'s `backup/policies.rs`) does not already make. Call [`check_policy`] with a
//! policy's `properties` after that parser has accepted them; every error has the code
//! `BMSUserErrorInvalidPolicyInput` and a target under `properties.`.
//!
//! Already checked by policies.rs, so NOT repeated here: a weekly schedule without run days, more
//! than one run time, run times off the hour/half hour, hourly interval not 4/6/8/12, window not
//! 4-24 hours or not a multiple of the interval, retention counts outside Azure's ranges, daily
//! retention with a weekly schedule, weekly retention days that are not run days, retention times
//! that differ from the run time, dates of the month outside 1-28, yearly retention without months.
//!
//! Checked here:
//! - `timeZone` must be a Windows time-zone id Azure knows;
//! - the schedule and the retention must be usable by [`Schedule`] and [`Retention`] (so the
//!   scheduler can never meet a stored policy it cannot run);
//! - `weeksOfTheMonth` and `daysOfTheMonth` must not be empty (a monthly or yearly tier that takes
//!   no day), and `monthsOfYear` must hold month names;
//! - with a weekly schedule, monthly and yearly retention must be week-based
//!   (`retentionScheduleFormatType` Weekly) and their `daysOfTheWeek` must be days the schedule
//!   runs on, as Azure's portal and API require;
//! - the hourly window must start on the hour or half hour, like run times.

use crate::error::{Error, Result};
use crate::json;
use crate::retention::{DayRule, Retention};
use crate::schedule::{Plan, Schedule};
use chrono::Timelike;
use serde_json::Value;

/// The checks above, for an `AzureIaasVM` or `AzureStorage` policy's `properties`; other
/// management types pass (their schedules live in sub-policies).
pub fn check_policy(properties: &Value) -> Result<()> {
    let prefixed = |e: Error| {
        match e {
        Error::Invalid { target, message } => Error::invalid(format!("properties.{target}"), message),
        Error::UnknownTimeZone(id) => Error::invalid(
            "properties.timeZone",
            format!("The time zone '{id}' is not supported. Use a Windows time zone id such as 'UTC' or 'Pacific Standard Time'."),
        ),
    }
    };
    let p = json::object(properties, "properties").map_err(prefixed)?;
    let bmt = json::opt_str(p, "backupManagementType", "")
        .map_err(prefixed)?
        .unwrap_or_default();
    if !["AzureIaasVM", "AzureStorage"]
        .iter()
        .any(|b| b.eq_ignore_ascii_case(bmt))
    {
        return Ok(());
    }
    let schedule = Schedule::from_policy(properties).map_err(prefixed)?;
    let retention = Retention::from_policy(properties).map_err(prefixed)?;
    check(&schedule, &retention).map_err(prefixed)
}

fn check(schedule: &Schedule, retention: &Retention) -> Result<()> {
    if let Plan::Hourly { start, .. } = schedule.plan() {
        if start.minute() % 30 != 0 || start.second() != 0 {
            return Err(Error::invalid(
                "schedulePolicy.hourlySchedule.scheduleWindowStartTime",
                "The schedule window must start on the hour or half hour.",
            ));
        }
    }
    let Retention::LongTerm(lt) = retention else {
        return Ok(());
    };
    let run_days = match schedule.plan() {
        Plan::Weekly { days, .. } => Some(days),
        _ => None,
    };
    let tiers = [
        ("monthlySchedule", lt.monthly.as_ref().map(|m| &m.0)),
        ("yearlySchedule", lt.yearly.as_ref().map(|y| &y.1)),
    ];
    for (key, rule) in tiers {
        let Some(rule) = rule else { continue };
        let path = format!("retentionPolicy.{key}");
        match rule {
            DayRule::DaysOfMonth { dates, last } => {
                if run_days.is_some() {
                    return Err(Error::invalid(
                        format!("{path}.retentionScheduleFormatType"),
                        "For a weekly backup schedule, monthly and yearly retention must be week-based (retentionScheduleFormatType Weekly).",
                    ));
                }
                if dates.is_empty() && !last {
                    return Err(Error::invalid(
                        format!("{path}.retentionScheduleDaily.daysOfTheMonth"),
                        "Specify at least one day of the month for this retention schedule.",
                    ));
                }
            }
            DayRule::WeeksOfMonth { weeks, days } => {
                if weeks.is_empty() {
                    return Err(Error::invalid(
                        format!("{path}.retentionScheduleWeekly.weeksOfTheMonth"),
                        "Specify at least one week of the month for this retention schedule.",
                    ));
                }
                if days.is_empty() {
                    return Err(Error::invalid(
                        format!("{path}.retentionScheduleWeekly.daysOfTheWeek"),
                        "Specify at least one day of the week for this retention schedule.",
                    ));
                }
                if let Some(run) = run_days {
                    if days.iter().any(|d| !run.contains(d)) {
                        return Err(Error::invalid(
                            format!("{path}.retentionScheduleWeekly.daysOfTheWeek"),
                            "Days of the week in the retention schedule must be days the backup schedule runs on.",
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T: &str = "2026-01-01T02:00:00Z";

    fn weekly(days: &[&str]) -> Value {
        json!({"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Weekly", "scheduleRunDays": days, "scheduleRunTimes": [T]})
    }

    fn daily() -> Value {
        json!({"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Daily", "scheduleRunTimes": [T]})
    }

    fn weekly_retention(extra: Value) -> Value {
        let mut r = json!({"retentionPolicyType": "LongTermRetentionPolicy",
            "weeklySchedule": {"daysOfTheWeek": ["Sunday"], "retentionTimes": [T], "retentionDuration": {"count": 4, "durationType": "Weeks"}}});
        for (k, v) in extra.as_object().unwrap() {
            r[k] = v.clone();
        }
        r
    }

    fn daily_retention(extra: Value) -> Value {
        let mut r = json!({"retentionPolicyType": "LongTermRetentionPolicy",
            "dailySchedule": {"retentionTimes": [T], "retentionDuration": {"count": 30, "durationType": "Days"}}});
        for (k, v) in extra.as_object().unwrap() {
            r[k] = v.clone();
        }
        r
    }

    fn vm(schedule: Value, retention: Value, tz: &str) -> Value {
        json!({"backupManagementType": "AzureIaasVM", "schedulePolicy": schedule, "retentionPolicy": retention, "timeZone": tz})
    }

    fn monthly_weekly(days: &[&str], weeks: &[&str]) -> Value {
        json!({"monthlySchedule": {"retentionScheduleFormatType": "Weekly", "retentionScheduleWeekly": {"daysOfTheWeek": days, "weeksOfTheMonth": weeks},
               "retentionTimes": [T], "retentionDuration": {"count": 12, "durationType": "Months"}}})
    }

    #[test]
    fn azure_rejects_these_policies() {
        let hourly_at = |start: &str| {
            json!({"schedulePolicyType": "SimpleSchedulePolicyV2", "scheduleRunFrequency": "Hourly",
                   "hourlySchedule": {"interval": 4, "scheduleWindowStartTime": start, "scheduleWindowDuration": 12}})
        };
        let cases: Vec<(&str, Value, &str)> = vec![
            (
                "unknown time zone",
                vm(daily(), daily_retention(json!({})), "Middle Earth Time"),
                "properties.timeZone",
            ),
            (
                "weekly schedule, monthly by date",
                vm(
                    weekly(&["Sunday"]),
                    weekly_retention(
                        json!({"monthlySchedule": {"retentionScheduleFormatType": "Daily", "retentionScheduleDaily": {"daysOfTheMonth": [{"date": 1}]},
                        "retentionTimes": [T], "retentionDuration": {"count": 12, "durationType": "Months"}}}),
                    ),
                    "UTC",
                ),
                "properties.retentionPolicy.monthlySchedule.retentionScheduleFormatType",
            ),
            (
                "weekly schedule, monthly on a day it does not run",
                vm(
                    weekly(&["Sunday"]),
                    weekly_retention(monthly_weekly(&["Monday"], &["First"])),
                    "UTC",
                ),
                "properties.retentionPolicy.monthlySchedule.retentionScheduleWeekly.daysOfTheWeek",
            ),
            (
                "monthly with no week of the month",
                vm(daily(), daily_retention(monthly_weekly(&["Monday"], &[])), "UTC"),
                "properties.retentionPolicy.monthlySchedule.retentionScheduleWeekly.weeksOfTheMonth",
            ),
            (
                "monthly with no day of the week",
                vm(daily(), daily_retention(monthly_weekly(&[], &["First"])), "UTC"),
                "properties.retentionPolicy.monthlySchedule.retentionScheduleWeekly.daysOfTheWeek",
            ),
            (
                "yearly with no day of the month",
                vm(
                    daily(),
                    daily_retention(
                        json!({"yearlySchedule": {"retentionScheduleFormatType": "Daily", "monthsOfYear": ["March"],
                        "retentionScheduleDaily": {"daysOfTheMonth": []}, "retentionTimes": [T], "retentionDuration": {"count": 2, "durationType": "Years"}}}),
                    ),
                    "UTC",
                ),
                "properties.retentionPolicy.yearlySchedule.retentionScheduleDaily.daysOfTheMonth",
            ),
            (
                "hourly window at 08:15",
                vm(hourly_at("2026-01-01T08:15:00Z"), daily_retention(json!({})), "UTC"),
                "properties.schedulePolicy.hourlySchedule.scheduleWindowStartTime",
            ),
        ];
        for (what, p, target) in cases {
            let e = check_policy(&p).expect_err(what);
            assert_eq!(e.code(), "BMSUserErrorInvalidPolicyInput", "{what}");
            assert_eq!(e.target(), target, "{what}: {e}");
        }
    }

    #[test]
    fn azure_accepts_these_policies() {
        let cases: Vec<(&str, Value)> = vec![
            (
                "daily, India",
                vm(daily(), daily_retention(json!({})), "India Standard Time"),
            ),
            (
                "weekly schedule with week-based monthly on a run day",
                vm(
                    weekly(&["Sunday", "Wednesday"]),
                    weekly_retention(monthly_weekly(&["Wednesday"], &["Last"])),
                    "UTC",
                ),
            ),
            (
                "daily schedule, monthly on the last Friday",
                vm(daily(), daily_retention(monthly_weekly(&["Friday"], &["Last"])), "UTC"),
            ),
            (
                "rsvault's DefaultPolicy",
                json!({"backupManagementType": "AzureIaasVM", "instantRPDetails": {},
                    "schedulePolicy": {"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Daily", "scheduleRunTimes": [T], "scheduleWeeklyFrequency": 0},
                    "retentionPolicy": {"retentionPolicyType": "LongTermRetentionPolicy", "dailySchedule": {"retentionTimes": [T], "retentionDuration": {"count": 30, "durationType": "Days"}}},
                    "instantRpRetentionRangeInDays": 2, "timeZone": "UTC", "policyType": "V1"}),
            ),
            (
                "rsvault's EnhancedPolicy",
                json!({"backupManagementType": "AzureIaasVM", "instantRPDetails": {},
                    "schedulePolicy": {"schedulePolicyType": "SimpleSchedulePolicyV2", "scheduleRunFrequency": "Hourly",
                                       "hourlySchedule": {"interval": 4, "scheduleWindowStartTime": "2026-01-01T08:00:00Z", "scheduleWindowDuration": 12}},
                    "retentionPolicy": {"retentionPolicyType": "LongTermRetentionPolicy", "dailySchedule": {"retentionTimes": ["2026-01-01T08:00:00Z"], "retentionDuration": {"count": 30, "durationType": "Days"}}},
                    "instantRpRetentionRangeInDays": 7, "timeZone": "UTC", "policyType": "V2"}),
            ),
            (
                "workload policies are not this module's",
                json!({"backupManagementType": "AzureWorkload", "timeZone": "nowhere"}),
            ),
            (
                "hourly at 08:30",
                vm(
                    json!({"schedulePolicyType": "SimpleSchedulePolicyV2", "scheduleRunFrequency": "Hourly",
                           "hourlySchedule": {"interval": 4, "scheduleWindowStartTime": "2026-01-01T08:30:00Z", "scheduleWindowDuration": 12}}),
                    daily_retention(json!({})),
                    "Pacific Standard Time",
                ),
            ),
        ];
        for (what, p) in cases {
            check_policy(&p).unwrap_or_else(|e| panic!("{what}: {e}"));
        }
    }
}
