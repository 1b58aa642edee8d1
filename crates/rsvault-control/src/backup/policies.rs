//! Backup policies (`…/vaults/{v}/backupPolicies/{p}`): Azure's three defaults for every new vault,
//! and create / update / get / list / delete with Azure's validation for `AzureIaasVM`
//! (`SimpleSchedulePolicy` daily/weekly, `SimpleSchedulePolicyV2` hourly/daily/weekly,
//! `LongTermRetentionPolicy`), `AzureStorage` and `AzureWorkload`.
//!
//! `protectedItemsCount` is not stored: it is counted from the vault's items when a policy is read, so
//! it is always exact. A PUT on a policy no item uses answers 200 at once, as the live service does; a
//! PUT that changes a policy items use is a long-running operation (202, `operations/{op}`,
//! `operationResults/{op}`) that re-configures each item and records a `ConfigureBackup` job per item.

use super::jobs::NewJob;
use super::{policy_id, POLICY_TYPE, PROTECTED_ITEM_TYPE};
use crate::immutability::{self, retention_cut, Immutability};
use crate::{body, Control, Error, Result};
use chrono::{DateTime, Duration, Timelike, Utc};
use rsvault_core::odata::Filter;
use rsvault_store::ResourceRow;
use serde_json::{json, Map, Value};

const DAYS: &[&str] = &[
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const BMTS: &[&str] = &[
    "AzureIaasVM",
    "AzureStorage",
    "AzureWorkload",
    "AzureSql",
    "MAB",
    "DPM",
    "AzureBackupServer",
    "GenericDataSource",
];

fn bad(target: &str, message: impl Into<String>) -> Error {
    Error::Invalid {
        code: "BMSUserErrorInvalidPolicyInput",
        message: message.into(),
        target: Some(target.to_string()),
    }
}

/// Azure's policy name rule: 3-150 letters, digits, `-` or `_`, starting with a letter.
/// The schedule and retention rules of `rsvault-schedule` (time zones, slots, which tiers can keep
/// which points): what the scheduler will act on must be readable by it.
fn schedule_rules(stored: &Map<String, Value>) -> Result<()> {
    rsvault_schedule::validate::check_policy(&Value::Object(stored.clone())).map_err(|e| Error::Invalid {
        code: rsvault_schedule::INVALID_POLICY_INPUT,
        message: e.to_string(),
        target: Some(e.target().to_string()),
    })
}

fn check_name(name: &str) -> Result<()> {
    let ok = (3..=150).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid {
            code: "BMSUserErrorInvalidPolicyName",
            message: format!("The policy name '{name}' is invalid. Policy names are 3-150 characters, start with a letter and contain only letters, digits, '-' and '_'."),
            target: Some("policyName".into()),
        })
    }
}

fn obj<'a>(m: &'a Map<String, Value>, key: &str, path: &str) -> Result<&'a Map<String, Value>> {
    body::opt_obj(m, key, path)?.ok_or_else(|| bad(&format!("{path}{key}"), format!("'{path}{key}' is required.")))
}

fn array<'a>(m: &'a Map<String, Value>, key: &str, path: &str) -> Result<&'a [Value]> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(Error::InvalidRequestContent(format!(
            "Error converting value at path '{path}{key}': expected an array."
        ))),
    }
}

fn enum_of(m: &Map<String, Value>, key: &str, path: &str, allowed: &[&'static str]) -> Result<Option<&'static str>> {
    body::opt_enum(m, key, path, allowed).map_err(|_| {
        bad(
            &format!("{path}{key}"),
            format!("'{path}{key}' must be one of: {}.", allowed.join(", ")),
        )
    })
}

/// Run times: exactly one, a valid date-time on a full or half hour.
fn run_time(m: &Map<String, Value>, key: &str, path: &str) -> Result<DateTime<Utc>> {
    let times = array(m, key, path)?;
    if times.len() != 1 {
        return Err(bad(
            &format!("{path}{key}"),
            format!(
                "'{path}{key}' must contain exactly one time; this schedule has {}.",
                times.len()
            ),
        ));
    }
    let t = times[0]
        .as_str()
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc))
        .ok_or_else(|| {
            bad(
                &format!("{path}{key}"),
                format!("'{path}{key}' must hold ISO-8601 date-times."),
            )
        })?;
    if t.minute() % 30 != 0 || t.second() != 0 {
        return Err(bad(
            &format!("{path}{key}"),
            "Schedule run times must be on the hour or half hour.",
        ));
    }
    Ok(t)
}

fn days(m: &Map<String, Value>, key: &str, path: &str) -> Result<Vec<&'static str>> {
    let mut out = Vec::new();
    for d in array(m, key, path)? {
        let s = d.as_str().unwrap_or_default();
        let day = DAYS
            .iter()
            .find(|x| x.eq_ignore_ascii_case(s))
            .ok_or_else(|| bad(&format!("{path}{key}"), format!("'{s}' is not a day of the week.")))?;
        out.push(*day);
    }
    if out.is_empty() {
        return Err(bad(
            &format!("{path}{key}"),
            format!("'{path}{key}' needs at least one day."),
        ));
    }
    Ok(out)
}

/// What a schedule produces: how often, at which time of day, on which days.
#[derive(Debug)]
struct Schedule {
    frequency: &'static str,
    time: Option<DateTime<Utc>>,
    days: Vec<&'static str>,
    v2: bool,
}

fn schedule(m: &Map<String, Value>, path: &str, hourly_ok_v1: bool) -> Result<Schedule> {
    let ty = enum_of(
        m,
        "schedulePolicyType",
        path,
        &[
            "SimpleSchedulePolicy",
            "SimpleSchedulePolicyV2",
            "LogSchedulePolicy",
            "LongTermSchedulePolicy",
        ],
    )?
    .ok_or_else(|| {
        bad(
            &format!("{path}schedulePolicyType"),
            "'schedulePolicyType' is required.",
        )
    })?;
    let freq = enum_of(m, "scheduleRunFrequency", path, &["Daily", "Weekly", "Hourly"])?.ok_or_else(|| {
        bad(
            &format!("{path}scheduleRunFrequency"),
            "'scheduleRunFrequency' is required.",
        )
    })?;
    let hourly = |h: &Map<String, Value>, p: &str| -> Result<()> {
        let interval = body::opt_int(h, "interval", p)?.unwrap_or(0);
        if ![4, 6, 8, 12].contains(&interval) {
            return Err(bad(
                &format!("{p}interval"),
                "The hourly interval must be 4, 6, 8 or 12 hours.",
            ));
        }
        let window = body::opt_int(h, "scheduleWindowDuration", p)?.unwrap_or(0);
        if !(4..=24).contains(&window) || window % interval != 0 {
            return Err(bad(
                &format!("{p}scheduleWindowDuration"),
                "The schedule window must be 4 to 24 hours and a multiple of the interval.",
            ));
        }
        body::opt_str(h, "scheduleWindowStartTime", p)?
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .ok_or_else(|| {
                bad(
                    &format!("{p}scheduleWindowStartTime"),
                    "'scheduleWindowStartTime' must be a date-time.",
                )
            })?;
        Ok(())
    };
    match ty {
        "SimpleSchedulePolicy" => {
            let s = match freq {
                "Daily" => Schedule {
                    frequency: freq,
                    time: Some(run_time(m, "scheduleRunTimes", path)?),
                    days: vec![],
                    v2: false,
                },
                "Weekly" => Schedule {
                    frequency: freq,
                    time: Some(run_time(m, "scheduleRunTimes", path)?),
                    days: days(m, "scheduleRunDays", path)?,
                    v2: false,
                },
                _ if hourly_ok_v1 => {
                    hourly(obj(m, "hourlySchedule", path)?, &format!("{path}hourlySchedule."))?;
                    Schedule {
                        frequency: freq,
                        time: None,
                        days: vec![],
                        v2: false,
                    }
                }
                _ => {
                    return Err(bad(
                        &format!("{path}scheduleRunFrequency"),
                        "Hourly backups need an Enhanced policy (SimpleSchedulePolicyV2 with policyType V2).",
                    ))
                }
            };
            Ok(s)
        }
        "SimpleSchedulePolicyV2" => {
            let s = match freq {
                "Hourly" => {
                    hourly(obj(m, "hourlySchedule", path)?, &format!("{path}hourlySchedule."))?;
                    Schedule {
                        frequency: freq,
                        time: None,
                        days: vec![],
                        v2: true,
                    }
                }
                "Daily" => {
                    let p = format!("{path}dailySchedule.");
                    Schedule {
                        frequency: freq,
                        time: Some(run_time(obj(m, "dailySchedule", path)?, "scheduleRunTimes", &p)?),
                        days: vec![],
                        v2: true,
                    }
                }
                _ => {
                    let w = obj(m, "weeklySchedule", path)?;
                    let p = format!("{path}weeklySchedule.");
                    Schedule {
                        frequency: freq,
                        time: Some(run_time(w, "scheduleRunTimes", &p)?),
                        days: days(w, "scheduleRunDays", &p)?,
                        v2: true,
                    }
                }
            };
            Ok(s)
        }
        other => Err(bad(
            &format!("{path}schedulePolicyType"),
            format!("'{other}' is not a schedule for this kind of policy."),
        )),
    }
}

/// Retention count limits per tier: (daily, weekly, monthly, yearly) as (min, max).
struct Limits {
    daily: (i64, i64),
    weekly: (i64, i64),
    monthly: (i64, i64),
    yearly: (i64, i64),
}

const VM_LIMITS: Limits = Limits {
    daily: (7, 9999),
    weekly: (1, 5163),
    monthly: (1, 1188),
    yearly: (1, 99),
};
const AFS_LIMITS: Limits = Limits {
    daily: (1, 200),
    weekly: (1, 200),
    monthly: (1, 120),
    yearly: (1, 10),
};

fn duration(m: &Map<String, Value>, path: &str, unit: &str, (min, max): (i64, i64)) -> Result<()> {
    let d = obj(m, "retentionDuration", path)?;
    let p = format!("{path}retentionDuration.");
    let count = body::opt_int(d, "count", &p)?.ok_or_else(|| bad(&format!("{p}count"), "'count' is required."))?;
    let ty = body::opt_str(d, "durationType", &p)?.unwrap_or(unit);
    if !ty.eq_ignore_ascii_case(unit) {
        return Err(bad(
            &format!("{p}durationType"),
            format!("This retention is counted in {unit}, not '{ty}'."),
        ));
    }
    if !(min..=max).contains(&count) {
        return Err(bad(
            &format!("{p}count"),
            format!(
                "The retention range for this tier must be between {min} and {max} {}.",
                unit.to_ascii_lowercase()
            ),
        ));
    }
    Ok(())
}

fn retention_times_match(m: &Map<String, Value>, path: &str, s: &Schedule) -> Result<()> {
    let Some(want) = s.time else { return Ok(()) };
    for t in array(m, "retentionTimes", path)? {
        let got = t.as_str().and_then(|x| DateTime::parse_from_rfc3339(x).ok());
        if got.map(|g| (g.hour(), g.minute())) != Some((want.hour(), want.minute())) {
            return Err(bad(
                &format!("{path}retentionTimes"),
                "Retention times must match the schedule's run time.",
            ));
        }
    }
    Ok(())
}

fn retention(m: &Map<String, Value>, path: &str, s: &Schedule, limits: &Limits) -> Result<()> {
    let ty = enum_of(
        m,
        "retentionPolicyType",
        path,
        &["LongTermRetentionPolicy", "SimpleRetentionPolicy"],
    )?
    .ok_or_else(|| {
        bad(
            &format!("{path}retentionPolicyType"),
            "'retentionPolicyType' is required.",
        )
    })?;
    if ty == "SimpleRetentionPolicy" {
        return duration(m, path, "Days", limits.daily);
    }
    let daily = body::opt_obj(m, "dailySchedule", path)?;
    let weekly = body::opt_obj(m, "weeklySchedule", path)?;
    match (s.frequency, daily, weekly) {
        ("Weekly", Some(_), _) => {
            return Err(bad(
                &format!("{path}dailySchedule"),
                "A weekly schedule cannot have daily retention.",
            ))
        }
        ("Weekly", None, None) => {
            return Err(bad(
                &format!("{path}weeklySchedule"),
                "A weekly schedule needs weekly retention.",
            ))
        }
        ("Daily" | "Hourly", None, _) => {
            return Err(bad(
                &format!("{path}dailySchedule"),
                "A daily or hourly schedule needs daily retention.",
            ))
        }
        _ => {}
    }
    if let Some(d) = daily {
        let p = format!("{path}dailySchedule.");
        retention_times_match(d, &p, s)?;
        duration(d, &p, "Days", limits.daily)?;
    }
    if let Some(w) = weekly {
        let p = format!("{path}weeklySchedule.");
        let wd = days(w, "daysOfTheWeek", &p)?;
        if s.frequency == "Weekly" && wd.iter().any(|d| !s.days.contains(d)) {
            return Err(bad(
                &format!("{p}daysOfTheWeek"),
                "Weekly retention days must be days the schedule runs on.",
            ));
        }
        retention_times_match(w, &p, s)?;
        duration(w, &p, "Weeks", limits.weekly)?;
    }
    for (key, unit, lim) in [
        ("monthlySchedule", "Months", limits.monthly),
        ("yearlySchedule", "Years", limits.yearly),
    ] {
        let Some(x) = body::opt_obj(m, key, path)? else {
            continue;
        };
        let p = format!("{path}{key}.");
        let fmt = enum_of(x, "retentionScheduleFormatType", &p, &["Daily", "Weekly"])?.ok_or_else(|| {
            bad(
                &format!("{p}retentionScheduleFormatType"),
                "'retentionScheduleFormatType' is required.",
            )
        })?;
        if fmt == "Weekly" {
            let w = obj(x, "retentionScheduleWeekly", &p)?;
            let wp = format!("{p}retentionScheduleWeekly.");
            days(w, "daysOfTheWeek", &wp)?;
            for wk in array(w, "weeksOfTheMonth", &wp)? {
                let ok = wk.as_str().is_some_and(|s| {
                    ["First", "Second", "Third", "Fourth", "Last"]
                        .iter()
                        .any(|a| a.eq_ignore_ascii_case(s))
                });
                if !ok {
                    return Err(bad(
                        &format!("{wp}weeksOfTheMonth"),
                        "Weeks of the month are First, Second, Third, Fourth or Last.",
                    ));
                }
            }
        } else {
            let d = obj(x, "retentionScheduleDaily", &p)?;
            for day in array(d, "daysOfTheMonth", &format!("{p}retentionScheduleDaily."))? {
                let date = day.get("date").and_then(Value::as_i64).unwrap_or(0);
                let last = day.get("isLast").and_then(Value::as_bool).unwrap_or(false);
                if !last && !(1..=28).contains(&date) {
                    return Err(bad(
                        &format!("{p}retentionScheduleDaily.daysOfTheMonth"),
                        "Days of the month are 1 to 28, or isLast.",
                    ));
                }
            }
        }
        if key == "yearlySchedule" && array(x, "monthsOfYear", &p)?.is_empty() {
            return Err(bad(
                &format!("{p}monthsOfYear"),
                "Yearly retention needs at least one month.",
            ));
        }
        retention_times_match(x, &p, s)?;
        duration(x, &p, unit, lim)?;
    }
    Ok(())
}

/// The members each policy type has in the spec. Azure (.NET) reads member names case-insensitively and
/// ignores unknown ones; so does rsvault, and it stores and answers the spec's spelling only.
const VM_MEMBERS: &[&str] = &[
    "backupManagementType",
    "resourceGuardOperationRequests",
    "instantRPDetails",
    "schedulePolicy",
    "retentionPolicy",
    "tieringPolicy",
    "instantRpRetentionRangeInDays",
    "timeZone",
    "policyType",
    "snapshotConsistencyType",
];
const AFS_MEMBERS: &[&str] = &[
    "backupManagementType",
    "resourceGuardOperationRequests",
    "workLoadType",
    "schedulePolicy",
    "retentionPolicy",
    "vaultRetentionPolicy",
    "timeZone",
];
const WORKLOAD_MEMBERS: &[&str] = &[
    "backupManagementType",
    "resourceGuardOperationRequests",
    "workLoadType",
    "settings",
    "subProtectionPolicy",
    "makePolicyConsistent",
    "vaultRetentionPolicy",
];

/// `props` with member names in the spec's spelling, unknown members dropped.
fn canonical_members(props: &Map<String, Value>) -> Map<String, Value> {
    let bmt = props
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("backupManagementType"))
        .and_then(|(_, v)| v.as_str())
        .unwrap_or_default();
    let members = match bmt.to_ascii_lowercase().as_str() {
        "azurestorage" => AFS_MEMBERS,
        "azureworkload" => WORKLOAD_MEMBERS,
        _ => VM_MEMBERS,
    };
    props
        .iter()
        .filter_map(|(k, v)| {
            members
                .iter()
                .find(|m| m.eq_ignore_ascii_case(k))
                .map(|m| (m.to_string(), v.clone()))
        })
        .collect()
}

/// Validates a policy's `properties` and fills Azure's defaults; returns the stored properties.
fn check_properties(props: &Map<String, Value>) -> Result<Map<String, Value>> {
    let props = &canonical_members(props);
    let mut out = props.clone();
    if let Some(Value::Object(d)) = out.get("instantRPDetails") {
        let d: Map<String, Value> = d
            .iter()
            .filter_map(|(k, v)| {
                ["azureBackupRGNamePrefix", "azureBackupRGNameSuffix"]
                    .iter()
                    .find(|m| m.eq_ignore_ascii_case(k))
                    .map(|m| (m.to_string(), v.clone()))
            })
            .collect();
        out.insert("instantRPDetails".into(), Value::Object(d));
    }
    let bmt = enum_of(props, "backupManagementType", "properties.", BMTS)?
        .ok_or_else(|| bad("properties.backupManagementType", "'backupManagementType' is required."))?;
    out.insert("backupManagementType".into(), json!(bmt));
    match bmt {
        "AzureIaasVM" => {
            let s = schedule(
                obj(props, "schedulePolicy", "properties.")?,
                "properties.schedulePolicy.",
                false,
            )?;
            retention(
                obj(props, "retentionPolicy", "properties.")?,
                "properties.retentionPolicy.",
                &s,
                &VM_LIMITS,
            )?;
            let declared = enum_of(props, "policyType", "properties.", &["Invalid", "V1", "V2"])?;
            let ty = if s.v2 { "V2" } else { "V1" };
            if declared.is_some_and(|d| d != ty) || (s.v2 && declared.is_none()) {
                return Err(bad(
                    "properties.policyType",
                    "policyType must be V2 for SimpleSchedulePolicyV2 (Enhanced) schedules and V1 otherwise.",
                ));
            }
            out.insert("policyType".into(), json!(ty));
            let (default_irp, max_irp) = if s.v2 { (7, 30) } else { (2, 5) };
            let irp = body::opt_int(props, "instantRpRetentionRangeInDays", "properties.")?.unwrap_or(default_irp);
            if !(1..=max_irp).contains(&irp) {
                return Err(bad(
                    "properties.instantRpRetentionRangeInDays",
                    format!("Instant restore snapshots can be kept 1 to {max_irp} days with this policy type."),
                ));
            }
            if s.frequency == "Weekly" && irp != 5 && props.get("instantRpRetentionRangeInDays").is_some() && !s.v2 {
                return Err(bad(
                    "properties.instantRpRetentionRangeInDays",
                    "Weekly policies keep instant restore snapshots 5 days.",
                ));
            }
            out.insert(
                "instantRpRetentionRangeInDays".into(),
                json!(if s.frequency == "Weekly" && !s.v2 { 5 } else { irp }),
            );
            out.entry("instantRPDetails").or_insert_with(|| json!({}));
        }
        "AzureStorage" => {
            let wl = body::opt_str(props, "workLoadType", "properties.")?.unwrap_or("AzureFileShare");
            if !wl.eq_ignore_ascii_case("AzureFileShare") {
                return Err(bad(
                    "properties.workLoadType",
                    "AzureStorage policies protect AzureFileShare workloads.",
                ));
            }
            out.insert("workLoadType".into(), json!("AzureFileShare"));
            let s = schedule(
                obj(props, "schedulePolicy", "properties.")?,
                "properties.schedulePolicy.",
                true,
            )?;
            if s.frequency == "Weekly" {
                return Err(bad(
                    "properties.schedulePolicy.scheduleRunFrequency",
                    "File share policies run daily or hourly.",
                ));
            }
            retention(
                obj(props, "retentionPolicy", "properties.")?,
                "properties.retentionPolicy.",
                &s,
                &AFS_LIMITS,
            )?;
        }
        "AzureWorkload" => {
            body::opt_str(props, "workLoadType", "properties.")?.ok_or_else(|| {
                bad(
                    "properties.workLoadType",
                    "'workLoadType' is required for AzureWorkload policies.",
                )
            })?;
            let subs = array(props, "subProtectionPolicy", "properties.")?;
            let fulls = subs
                .iter()
                .filter(|s| {
                    s.get("policyType")
                        .and_then(Value::as_str)
                        .is_some_and(|t| t.eq_ignore_ascii_case("Full"))
                })
                .count();
            if fulls != 1 {
                return Err(bad(
                    "properties.subProtectionPolicy",
                    "A workload policy needs exactly one Full sub-policy.",
                ));
            }
            for (i, s) in subs.iter().enumerate() {
                let p = format!("properties.subProtectionPolicy[{i}].");
                let m = body::object(s)?;
                obj(m, "schedulePolicy", &p)?;
                obj(m, "retentionPolicy", &p)?;
            }
        }
        other => {
            return Err(bad(
                "properties.backupManagementType",
                format!("rsvault manages AzureIaasVM, AzureStorage and AzureWorkload policies, not '{other}'."),
            ))
        }
    }
    let tz = body::opt_str(props, "timeZone", "properties.")?.unwrap_or("UTC");
    out.insert("timeZone".into(), json!(tz));
    fill_weekly_frequency(&mut out);
    Ok(out)
}

/// Azure answers every `SimpleSchedulePolicy` (a VM's, a file share's, a workload's sub-policies)
/// with `scheduleWeeklyFrequency`, `0` unless the client set it (the live recordings).
fn fill_weekly_frequency(props: &mut Map<String, Value>) {
    let fill = |sp: Option<&mut Value>| {
        if let Some(Value::Object(sp)) = sp {
            let simple = sp
                .get("schedulePolicyType")
                .and_then(Value::as_str)
                .is_some_and(|t| t.eq_ignore_ascii_case("SimpleSchedulePolicy"));
            if simple {
                sp.entry("scheduleWeeklyFrequency").or_insert(json!(0));
            }
        }
    };
    fill(props.get_mut("schedulePolicy"));
    if let Some(Value::Array(subs)) = props.get_mut("subProtectionPolicy") {
        for sub in subs {
            fill(sub.get_mut("schedulePolicy"));
        }
    }
}

/// Azure's default policies for a new vault, created at `now`.
pub fn default_policies(now: DateTime<Utc>) -> Vec<(&'static str, Value)> {
    let next_hour = now
        .with_minute(0)
        .and_then(|t| t.with_second(0))
        .and_then(|t| t.with_nanosecond(0))
        .unwrap_or(now)
        + Duration::hours(1);
    let t = next_hour.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let window = next_hour.date_naive().format("%Y-%m-%dT08:00:00Z").to_string();
    vec![
        (
            "DefaultPolicy",
            json!({
                "backupManagementType": "AzureIaasVM",
                "instantRPDetails": {},
                "schedulePolicy": {"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Daily", "scheduleRunTimes": [t], "scheduleWeeklyFrequency": 0},
                "retentionPolicy": {"retentionPolicyType": "LongTermRetentionPolicy", "dailySchedule": {"retentionTimes": [t], "retentionDuration": {"count": 30, "durationType": "Days"}}},
                "instantRpRetentionRangeInDays": 2,
                "timeZone": "UTC",
                "policyType": "V1",
            }),
        ),
        (
            "EnhancedPolicy",
            json!({
                "backupManagementType": "AzureIaasVM",
                "instantRPDetails": {},
                "schedulePolicy": {"schedulePolicyType": "SimpleSchedulePolicyV2", "scheduleRunFrequency": "Hourly",
                                   "hourlySchedule": {"interval": 4, "scheduleWindowStartTime": window, "scheduleWindowDuration": 12}},
                "retentionPolicy": {"retentionPolicyType": "LongTermRetentionPolicy", "dailySchedule": {"retentionTimes": [window], "retentionDuration": {"count": 30, "durationType": "Days"}}},
                "instantRpRetentionRangeInDays": 7,
                "timeZone": "UTC",
                "policyType": "V2",
            }),
        ),
        (
            "HourlyLogBackup",
            json!({
                "backupManagementType": "AzureWorkload",
                "workLoadType": "SQLDataBase",
                "settings": {"timeZone": "UTC", "issqlcompression": false, "isCompression": false},
                "subProtectionPolicy": [
                    {"policyType": "Full",
                     "schedulePolicy": {"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Daily", "scheduleRunTimes": [t], "scheduleWeeklyFrequency": 0},
                     "retentionPolicy": {"retentionPolicyType": "LongTermRetentionPolicy", "dailySchedule": {"retentionTimes": [t], "retentionDuration": {"count": 30, "durationType": "Days"}}}},
                    {"policyType": "Log",
                     "schedulePolicy": {"schedulePolicyType": "LogSchedulePolicy", "scheduleFrequencyInMins": 60},
                     "retentionPolicy": {"retentionPolicyType": "SimpleRetentionPolicy", "retentionDuration": {"count": 30, "durationType": "Days"}}}
                ],
            }),
        ),
    ]
}

impl Control {
    /// Rows for the default policies of a new vault.
    pub(crate) fn default_policy_rows(&self, vault: &ResourceRow) -> Vec<ResourceRow> {
        let now = self.now();
        default_policies(now)
            .into_iter()
            .map(|(name, props)| self.policy_row(vault, name, props, None))
            .collect()
    }

    fn policy_row(&self, vault: &ResourceRow, name: &str, props: Value, existing: Option<&ResourceRow>) -> ResourceRow {
        let now = self.now();
        let id = existing
            .map(|e| e.id.clone())
            .unwrap_or_else(|| policy_id(&vault.id, name));
        let name = existing.map(|e| e.name.clone()).unwrap_or_else(|| name.to_string());
        ResourceRow {
            body: json!({"id": id, "name": name, "type": POLICY_TYPE, "properties": props}),
            id,
            subscription: vault.subscription.clone(),
            resource_group: vault.resource_group.clone(),
            type_key: POLICY_TYPE.to_ascii_lowercase(),
            name,
            parent_key: Some(vault.id.to_ascii_lowercase()),
            etag: uuid::Uuid::new_v4().to_string(),
            created: existing.map(|e| e.created).unwrap_or(now),
            updated: now,
        }
    }

    /// The items of a vault that use a policy (stopped items keep no policy).
    pub(crate) fn items_using_policy(&self, vault_id: &str, policy: &str) -> Result<Vec<ResourceRow>> {
        let items = self.store.read(|db| db.all_below(vault_id, PROTECTED_ITEM_TYPE))?;
        Ok(items
            .into_iter()
            .filter(|i| {
                i.body
                    .pointer("/properties/policyName")
                    .and_then(Value::as_str)
                    .is_some_and(|p| p.eq_ignore_ascii_case(policy))
            })
            .collect())
    }

    pub(crate) fn render_policy(&self, row: &ResourceRow) -> Value {
        let vault = row
            .id
            .rsplit_once("/backupPolicies/")
            .map(|(v, _)| v)
            .unwrap_or_default();
        let count = self.items_using_policy(vault, &row.name).map(|v| v.len()).unwrap_or(0);
        let mut b = row.body.clone();
        b["properties"]["protectedItemsCount"] = json!(count);
        b
    }

    /// The stored policy row, or Azure's not-found.
    pub fn policy_row_of(&self, vault: &ResourceRow, name: &str) -> Result<ResourceRow> {
        self.store
            .read(|db| db.resource(&policy_id(&vault.id, name)))?
            .ok_or_else(|| Error::NotFound {
                code: "BMSUserErrorPolicyNotFound",
                message: format!(
                    "Policy '{name}' was not found in vault '{}'. Check the policy name and try again.",
                    vault.name
                ),
            })
    }

    pub fn get_policy(&self, sub: &str, rg: &str, vault: &str, name: &str) -> Result<Value> {
        let v = self.vault_row(sub, rg, vault)?;
        Ok(self.render_policy(&self.policy_row_of(&v, name)?))
    }

    /// `GET backupPolicies` with `$filter=backupManagementType eq '…'` (and `workloadType`).
    pub fn list_policies(&self, sub: &str, rg: &str, vault: &str, filter: Option<&str>) -> Result<Vec<Value>> {
        let v = self.vault_row(sub, rg, vault)?;
        let f = Filter::parse(filter.unwrap_or_default())?;
        f.only(&["backupManagementType", "workloadType", "fabricName"], &[])?;
        let rows = self
            .store
            .read(|db| db.children(&v.id, Some(POLICY_TYPE), None, usize::MAX / 2))?;
        Ok(rows
            .items
            .iter()
            .filter(|r| {
                let p = &r.body["properties"];
                let bmt_ok = f.eq("backupManagementType").is_none_or(|b| {
                    p["backupManagementType"]
                        .as_str()
                        .is_some_and(|x| x.eq_ignore_ascii_case(b))
                });
                let wl_ok = f.eq("workloadType").is_none_or(|w| {
                    let own = p["workLoadType"]
                        .as_str()
                        .unwrap_or(match p["backupManagementType"].as_str() {
                            Some("AzureIaasVM") => "VM",
                            Some("AzureStorage") => "AzureFileShare",
                            _ => "",
                        });
                    own.eq_ignore_ascii_case(w)
                });
                bmt_ok && wl_ok
            })
            .map(|r| self.render_policy(r))
            .collect())
    }

    /// `PUT` a policy. Returns the operation id when the change re-configures protected items (202),
    /// and the policy as it now is.
    pub fn put_policy(
        &self,
        sub: &str,
        rg: &str,
        vault: &str,
        name: &str,
        req: &Value,
    ) -> Result<(Option<String>, Value)> {
        let v = self.vault_row(sub, rg, vault)?;
        check_name(name)?;
        let m = body::object(req)?;
        let props =
            body::opt_obj(m, "properties", "")?.ok_or_else(|| bad("properties", "'properties' is required."))?;
        let stored = check_properties(props)?;
        schedule_rules(&stored)?;
        let existing = self.store.read(|db| db.resource(&policy_id(&v.id, name)))?;
        if let Some(e) = &existing {
            let old = e
                .body
                .pointer("/properties/backupManagementType")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !old.eq_ignore_ascii_case(stored["backupManagementType"].as_str().unwrap_or_default()) {
                return Err(bad(
                    "properties.backupManagementType",
                    format!("The backup management type of policy '{name}' is {old}; it cannot be changed."),
                ));
            }
        }
        let row = self.policy_row(&v, name, Value::Object(stored), existing.as_ref());
        let items = if existing.is_some() {
            self.items_using_policy(&v.id, name)?
        } else {
            vec![]
        };
        if items.is_empty() {
            self.store.write(|db| db.put_resource(&row))?;
            return Ok((None, self.render_policy(&row)));
        }
        if let Some(e) = existing.as_ref().filter(|_| Immutability::of(&v.body).enforced()) {
            if let Some(tier) = retention_cut(&e.body["properties"], &row.body["properties"]) {
                return Err(immutability::blocked(
                    &format!(
                        "Reducing the retention of policy '{name}', which protects {} item(s),",
                        items.len()
                    ),
                    Some(&tier),
                ));
            }
        }
        let jobs: Vec<_> = items
            .iter()
            .map(|i| {
                let p = &i.body["properties"];
                let entity = p["friendlyName"].as_str().unwrap_or_default().to_string();
                let container = p["containerName"].as_str().unwrap_or_default().to_string();
                let bmt = p["backupManagementType"].as_str().unwrap_or("AzureIaasVM").to_string();
                (entity, container, bmt)
            })
            .map(|(entity, container, bmt)| {
                let mut bag = Map::new();
                bag.insert("Policy Name".into(), json!(row.name));
                self.completed_job(
                    &v,
                    &NewJob {
                        operation: "ConfigureBackup",
                        backup_management_type: &bmt,
                        entity: &entity,
                        container: &container,
                        property_bag: bag,
                    },
                )
            })
            .collect();
        let job_ids: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
        let op = self.finished_operation(
            &v,
            "PolicyUpdate",
            Some(&row.id),
            Some(json!({"objectType": "OperationStatusJobsExtendedInfo", "jobIds": job_ids, "failedJobsError": {}})),
        );
        self.store.write(|db| {
            db.put_resource(&row)?;
            for j in &jobs {
                db.put_job(j)?;
            }
            db.put_operation(&op)
        })?;
        Ok((Some(op.id), self.render_policy(&row)))
    }

    /// `DELETE` a policy: refused while items use it; false when there was none.
    pub fn delete_policy(&self, sub: &str, rg: &str, vault: &str, name: &str) -> Result<bool> {
        let v = self.vault_row(sub, rg, vault)?;
        let id = policy_id(&v.id, name);
        if self.store.read(|db| db.resource(&id))?.is_none() {
            return Ok(false);
        }
        let n = self.items_using_policy(&v.id, name)?.len();
        if n > 0 {
            return Err(Error::Invalid {
                code: "BMSUserErrorPolicyInUse",
                message: format!("Policy '{name}' is associated with {n} backup item(s). Associate the items with another policy or stop their protection before deleting the policy."),
                target: None,
            });
        }
        self.store.write(|db| db.delete_resource(&id))?;
        Ok(true)
    }

    /// A policy's operation, for `operations/{op}` and `operationResults/{op}`.
    pub fn policy_operation(
        &self,
        sub: &str,
        rg: &str,
        vault: &str,
        name: &str,
        op: &str,
    ) -> Result<rsvault_store::OperationRow> {
        let v = self.vault_row(sub, rg, vault)?;
        let o = self.vault_operation(sub, rg, vault, op)?;
        let pid = policy_id(&v.id, name).to_ascii_lowercase();
        if o.target.as_deref().map(str::to_ascii_lowercase) != Some(pid) {
            return Err(Error::NotFound {
                code: "ResourceNotFound",
                message: format!("The operation '{op}' was not found for policy '{name}'."),
            });
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(v: Value) -> Result<Map<String, Value>> {
        let m = check_properties(v.as_object().unwrap())?;
        schedule_rules(&m)?;
        Ok(m)
    }

    fn vm(schedule: Value, retention: Value) -> Value {
        json!({"backupManagementType": "AzureIaasVM", "schedulePolicy": schedule, "retentionPolicy": retention})
    }

    const T: &str = "2026-01-01T02:00:00Z";

    #[test]
    fn the_defaults_are_valid_policies() {
        for (name, p) in default_policies(Utc::now()) {
            props(p).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    /// Issue 16: Azure answers `scheduleWeeklyFrequency` on every SimpleSchedulePolicy (0 in the live
    /// recordings); rsvault dropped it from policies clients PUT without it.
    #[test]
    fn every_simple_schedule_answers_schedule_weekly_frequency() {
        let daily = json!({"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Daily", "scheduleRunTimes": [T]});
        let weekly = json!({"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Weekly", "scheduleRunDays": ["Sunday"], "scheduleRunTimes": [T], "scheduleWeeklyFrequency": 1});
        let keep = json!({"retentionPolicyType": "LongTermRetentionPolicy", "dailySchedule": {"retentionTimes": [T], "retentionDuration": {"count": 30, "durationType": "Days"}}});
        let weeks = json!({"retentionPolicyType": "LongTermRetentionPolicy", "weeklySchedule": {"daysOfTheWeek": ["Sunday"], "retentionTimes": [T], "retentionDuration": {"count": 12, "durationType": "Weeks"}}});
        for (name, policy, pointers) in [
            (
                "VM daily",
                vm(daily.clone(), keep.clone()),
                vec![("/schedulePolicy/scheduleWeeklyFrequency", 0)],
            ),
            (
                "VM weekly, as sent",
                vm(weekly, weeks),
                vec![("/schedulePolicy/scheduleWeeklyFrequency", 1)],
            ),
            (
                "file share",
                json!({"backupManagementType": "AzureStorage", "workLoadType": "AzureFileShare", "schedulePolicy": daily, "retentionPolicy": keep}),
                vec![("/schedulePolicy/scheduleWeeklyFrequency", 0)],
            ),
            (
                "workload",
                default_policies(Utc::now()).remove(2).1,
                vec![("/subProtectionPolicy/0/schedulePolicy/scheduleWeeklyFrequency", 0)],
            ),
        ] {
            let mut policy = policy;
            if name == "workload" {
                policy["subProtectionPolicy"][0]["schedulePolicy"]
                    .as_object_mut()
                    .unwrap()
                    .remove("scheduleWeeklyFrequency");
            }
            let m = Value::Object(props(policy).unwrap_or_else(|e| panic!("{name}: {e}")));
            for (p, want) in pointers {
                assert_eq!(m.pointer(p), Some(&json!(want)), "{name}: {m}");
            }
            if name == "workload" {
                assert!(
                    m.pointer("/subProtectionPolicy/1/schedulePolicy/scheduleWeeklyFrequency")
                        .is_none(),
                    "not on a LogSchedulePolicy"
                );
            }
        }
    }

    #[test]
    fn azure_rejects_these_policies() {
        let daily = json!({"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Daily", "scheduleRunTimes": [T]});
        let keep = |n: i64| json!({"retentionPolicyType": "LongTermRetentionPolicy", "dailySchedule": {"retentionTimes": [T], "retentionDuration": {"count": n, "durationType": "Days"}}});
        let cases: Vec<(&str, Value, &str)> = vec![
            (
                "two run times",
                vm(
                    json!({"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Daily", "scheduleRunTimes": [T, "2026-01-01T03:00:00Z"]}),
                    keep(30),
                ),
                "scheduleRunTimes",
            ),
            (
                "no run time",
                vm(
                    json!({"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Daily"}),
                    keep(30),
                ),
                "scheduleRunTimes",
            ),
            (
                "odd minute",
                vm(
                    json!({"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Daily", "scheduleRunTimes": ["2026-01-01T02:10:00Z"]}),
                    keep(30),
                ),
                "scheduleRunTimes",
            ),
            ("daily retention too short", vm(daily.clone(), keep(6)), "count"),
            ("daily retention too long", vm(daily.clone(), keep(10000)), "count"),
            (
                "no daily retention",
                vm(daily.clone(), json!({"retentionPolicyType": "LongTermRetentionPolicy"})),
                "dailySchedule",
            ),
            (
                "retention time differs",
                vm(
                    daily.clone(),
                    json!({"retentionPolicyType": "LongTermRetentionPolicy", "dailySchedule": {"retentionTimes": ["2026-01-01T05:00:00Z"], "retentionDuration": {"count": 30, "durationType": "Days"}}}),
                ),
                "retentionTimes",
            ),
            (
                "hourly without V2",
                vm(
                    json!({"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Hourly"}),
                    keep(30),
                ),
                "scheduleRunFrequency",
            ),
            (
                "weekly with daily retention",
                vm(
                    json!({"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Weekly", "scheduleRunDays": ["Sunday"], "scheduleRunTimes": [T]}),
                    keep(30),
                ),
                "dailySchedule",
            ),
            (
                "no backupManagementType",
                json!({"schedulePolicy": daily.clone()}),
                "backupManagementType",
            ),
            (
                "bad interval",
                json!({"backupManagementType": "AzureIaasVM", "policyType": "V2",
                "schedulePolicy": {"schedulePolicyType": "SimpleSchedulePolicyV2", "scheduleRunFrequency": "Hourly", "hourlySchedule": {"interval": 5, "scheduleWindowStartTime": T, "scheduleWindowDuration": 10}},
                "retentionPolicy": keep(30)}),
                "interval",
            ),
            (
                "V2 schedule without policyType",
                vm(
                    json!({"schedulePolicyType": "SimpleSchedulePolicyV2", "scheduleRunFrequency": "Daily", "dailySchedule": {"scheduleRunTimes": [T]}}),
                    keep(30),
                ),
                "policyType",
            ),
            (
                "instant RP too long",
                json!({"backupManagementType": "AzureIaasVM", "schedulePolicy": daily.clone(), "retentionPolicy": keep(30), "instantRpRetentionRangeInDays": 6}),
                "instantRpRetentionRangeInDays",
            ),
            (
                "file share retention too long",
                json!({"backupManagementType": "AzureStorage", "schedulePolicy": daily.clone(), "retentionPolicy": keep(201)}),
                "count",
            ),
            (
                "workload without Full",
                json!({"backupManagementType": "AzureWorkload", "workLoadType": "SQLDataBase", "subProtectionPolicy": []}),
                "subProtectionPolicy",
            ),
        ];
        for (what, p, target) in cases {
            let e = props(p).expect_err(what);
            assert_eq!(e.code(), "BMSUserErrorInvalidPolicyInput", "{what}: {e}");
            assert!(
                e.target().unwrap_or_default().ends_with(target),
                "{what}: target {:?}",
                e.target()
            );
        }
    }

    #[test]
    fn member_names_are_read_case_insensitively_and_unknown_ones_dropped() {
        let mut p = vm(
            json!({"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Daily", "scheduleRunTimes": [T]}),
            json!({"retentionPolicyType": "LongTermRetentionPolicy", "dailySchedule": {"retentionTimes": [T], "retentionDuration": {"count": 7, "durationType": "Days"}}}),
        );
        p["instantRpDetails"] = json!({"azureBackupRgNamePrefix": "rp"});
        p["resourceGroup"] = json!("rg");
        let out = props(p).unwrap();
        assert_eq!(out["instantRPDetails"]["azureBackupRGNamePrefix"], "rp");
        assert!(!out.contains_key("instantRpDetails") && !out.contains_key("resourceGroup"));
    }

    #[test]
    fn long_term_retention_with_every_tier_is_accepted() {
        let p = vm(
            json!({"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Daily", "scheduleRunTimes": [T]}),
            json!({"retentionPolicyType": "LongTermRetentionPolicy",
                "dailySchedule": {"retentionTimes": [T], "retentionDuration": {"count": 7, "durationType": "Days"}},
                "weeklySchedule": {"daysOfTheWeek": ["Sunday"], "retentionTimes": [T], "retentionDuration": {"count": 4, "durationType": "Weeks"}},
                "monthlySchedule": {"retentionScheduleFormatType": "Weekly", "retentionScheduleWeekly": {"daysOfTheWeek": ["Sunday"], "weeksOfTheMonth": ["First"]}, "retentionTimes": [T], "retentionDuration": {"count": 12, "durationType": "Months"}},
                "yearlySchedule": {"retentionScheduleFormatType": "Weekly", "monthsOfYear": ["January"], "retentionScheduleWeekly": {"daysOfTheWeek": ["Sunday"], "weeksOfTheMonth": ["First"]}, "retentionTimes": [T], "retentionDuration": {"count": 2, "durationType": "Years"}}}),
        );
        let out = props(p).unwrap();
        assert_eq!(out["policyType"], "V1");
        assert_eq!(out["instantRpRetentionRangeInDays"], 2);
        assert_eq!(out["timeZone"], "UTC");
    }
}
