//! Reading the policy JSON the way Azure (.NET) does: member names case-insensitive, enum values
//! case-insensitive, times of day taken from ISO-8601 date-times. Every failure is an [`Error`]
//! naming the member's path; nothing here panics on any JSON.

use crate::error::{Error, Result};
use chrono::{DateTime, NaiveDateTime, NaiveTime, Timelike, Weekday};
use serde_json::{Map, Value};

/// A member by name, case-insensitively; `null` counts as absent.
pub(crate) fn get<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    m.get(key)
        .or_else(|| m.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))
        .filter(|v| !v.is_null())
}

pub(crate) fn object<'a>(v: &'a Value, path: &str) -> Result<&'a Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| Error::invalid(path, format!("'{path}' must be an object.")))
}

pub(crate) fn opt_obj<'a>(m: &'a Map<String, Value>, key: &str, path: &str) -> Result<Option<&'a Map<String, Value>>> {
    get(m, key).map(|v| object(v, &format!("{path}{key}"))).transpose()
}

pub(crate) fn req_obj<'a>(m: &'a Map<String, Value>, key: &str, path: &str) -> Result<&'a Map<String, Value>> {
    opt_obj(m, key, path)?.ok_or_else(|| Error::invalid(format!("{path}{key}"), format!("'{path}{key}' is required.")))
}

pub(crate) fn array<'a>(m: &'a Map<String, Value>, key: &str, path: &str) -> Result<&'a [Value]> {
    match get(m, key) {
        None => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(Error::invalid(
            format!("{path}{key}"),
            format!("'{path}{key}' must be an array."),
        )),
    }
}

pub(crate) fn opt_str<'a>(m: &'a Map<String, Value>, key: &str, path: &str) -> Result<Option<&'a str>> {
    match get(m, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Error::invalid(
            format!("{path}{key}"),
            format!("'{path}{key}' must be a string."),
        )),
    }
}

pub(crate) fn opt_int(m: &Map<String, Value>, key: &str, path: &str) -> Result<Option<i64>> {
    match get(m, key) {
        None => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| Error::invalid(format!("{path}{key}"), format!("'{path}{key}' must be an integer."))),
    }
}

/// One of `allowed` (case-insensitive), returned in its canonical spelling.
pub(crate) fn enum_of(
    m: &Map<String, Value>,
    key: &str,
    path: &str,
    allowed: &[&'static str],
) -> Result<Option<&'static str>> {
    let Some(s) = opt_str(m, key, path)? else {
        return Ok(None);
    };
    allowed
        .iter()
        .find(|a| a.eq_ignore_ascii_case(s))
        .copied()
        .map(Some)
        .ok_or_else(|| {
            Error::invalid(
                format!("{path}{key}"),
                format!("'{path}{key}' must be one of: {}.", allowed.join(", ")),
            )
        })
}

pub(crate) fn req_enum(
    m: &Map<String, Value>,
    key: &str,
    path: &str,
    allowed: &[&'static str],
) -> Result<&'static str> {
    enum_of(m, key, path, allowed)?
        .ok_or_else(|| Error::invalid(format!("{path}{key}"), format!("'{path}{key}' is required.")))
}

/// The wall-clock time of day a schedule time stands for. Azure sends run times as full date-times
/// (`2026-01-01T02:30:00Z`) and uses only their time of day, read in the policy's `timeZone`: the
/// offset written in the string is ignored, as Azure does. Also accepted: a date-time without an
/// offset, and a bare `HH:MM[:SS]`.
pub(crate) fn time_of_day(s: &str) -> Option<NaiveTime> {
    let t = DateTime::parse_from_rfc3339(s)
        .map(|d| d.naive_local().time())
        .ok()
        .or_else(|| {
            NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|d| d.time())
        })
        .or_else(|| NaiveTime::parse_from_str(s, "%H:%M:%S").ok())
        .or_else(|| NaiveTime::parse_from_str(s, "%H:%M").ok())?;
    t.with_nanosecond(0)
}

pub(crate) const DAY_NAMES: [(&str, Weekday); 7] = [
    ("Sunday", Weekday::Sun),
    ("Monday", Weekday::Mon),
    ("Tuesday", Weekday::Tue),
    ("Wednesday", Weekday::Wed),
    ("Thursday", Weekday::Thu),
    ("Friday", Weekday::Fri),
    ("Saturday", Weekday::Sat),
];

/// Days of the week (Azure's `DayOfWeek` names), deduplicated in Sunday-first order.
pub(crate) fn weekdays(m: &Map<String, Value>, key: &str, path: &str) -> Result<Vec<Weekday>> {
    let mut out = Vec::new();
    for d in array(m, key, path)? {
        let s = d.as_str().unwrap_or_default();
        let (_, day) = DAY_NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(s))
            .ok_or_else(|| Error::invalid(format!("{path}{key}"), format!("'{d}' is not a day of the week.")))?;
        if !out.contains(day) {
            out.push(*day);
        }
    }
    out.sort_by_key(|d| d.num_days_from_sunday());
    Ok(out)
}
