//! Properties over random schedules, zones and instants: slots strictly increase and never repeat,
//! `missed` is the latest slot and at most one, one slot per scheduled local time; and the JSON
//! parsers and the validator never panic on random JSON.

use chrono::{DateTime, Duration, NaiveTime, TimeZone, Utc, Weekday};
use proptest::prelude::*;
use rsvault_schedule::{validate, zone::WINDOWS_ZONES, Plan, Retention, Schedule, Tz};
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;

const DAYS: [Weekday; 7] = [
    Weekday::Sun,
    Weekday::Mon,
    Weekday::Tue,
    Weekday::Wed,
    Weekday::Thu,
    Weekday::Fri,
    Weekday::Sat,
];

fn half_hour() -> impl Strategy<Value = NaiveTime> {
    (0u32..48).prop_map(|h| NaiveTime::from_hms_opt(h / 2, (h % 2) * 30, 0).unwrap())
}

fn plan() -> impl Strategy<Value = Plan> {
    prop_oneof![
        prop::collection::vec(half_hour(), 1..3).prop_map(|times| Plan::Daily { times }),
        (
            prop::collection::vec(0usize..7, 1..7),
            prop::collection::vec(half_hour(), 1..2)
        )
            .prop_map(|(d, times)| Plan::Weekly {
                days: d.into_iter().map(|i| DAYS[i]).collect(),
                times,
            }),
        (half_hour(), prop::sample::select(vec![4u32, 6, 8, 12]), 4u32..=24).prop_map(
            |(start, interval_hours, window_hours)| Plan::Hourly {
                start,
                interval_hours,
                window_hours,
            }
        ),
    ]
}

fn zone() -> impl Strategy<Value = Tz> {
    (0..WINDOWS_ZONES.len()).prop_map(|i| WINDOWS_ZONES[i].1.parse::<Tz>().unwrap())
}

fn instant() -> impl Strategy<Value = DateTime<Utc>> {
    // 2015 .. 2060, to the second.
    (1_420_070_400i64..2_840_140_800).prop_map(|s| Utc.timestamp_opt(s, 0).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn next_slot_is_strictly_increasing(z in zone(), p in plan(), after in instant()) {
        let s = Schedule::new(z, p).unwrap();
        let mut t = after;
        for _ in 0..30 {
            let n = s.next_slot(t).expect("a schedule always has a next slot");
            prop_assert!(n > t);
            t = n;
        }
    }

    #[test]
    fn slots_never_repeat_and_stay_in_the_interval(z in zone(), p in plan(), after in instant(), days in 1i64..40) {
        let s = Schedule::new(z, p).unwrap();
        let until = after + Duration::days(days);
        let all: Vec<_> = s.slots(after, until).collect();
        prop_assert!(all.windows(2).all(|w| w[0] < w[1]));
        prop_assert!(all.iter().all(|t| after < *t && *t <= until));
        let set: BTreeSet<_> = all.iter().collect();
        prop_assert_eq!(set.len(), all.len());
        // Nothing skipped: after the last slot, the next one is past `until`.
        let last = all.last().copied().unwrap_or(after);
        prop_assert!(s.next_slot(last).is_none_or(|n| n > until));
    }

    #[test]
    fn missed_is_the_latest_slot_and_only_one(z in zone(), p in plan(), now in instant(), back in 0i64..(90 * 24 * 3600)) {
        let s = Schedule::new(z, p).unwrap();
        let last_done = now - Duration::seconds(back);
        match s.missed(Some(last_done), now) {
            Some(m) => {
                prop_assert!(last_done < m && m <= now);
                prop_assert_eq!(s.next_slot(m - Duration::seconds(1)), Some(m), "a real slot");
                prop_assert!(s.next_slot(m).unwrap() > now, "the latest one");
            }
            None => prop_assert!(s.next_slot(last_done).unwrap() > now, "nothing was missed"),
        }
        let m = s.missed(None, now).unwrap();
        prop_assert!(m <= now && s.next_slot(m).unwrap() > now);
    }

    #[test]
    fn a_daily_time_runs_once_per_local_day(z in zone(), t in half_hour(), after in instant()) {
        let s = Schedule::new(z, Plan::Daily { times: vec![t] }).unwrap();
        let all: Vec<_> = s.slots(after, after + Duration::days(60)).collect();
        let dates: BTreeSet<_> = all.iter().map(|u| s.local_date(*u)).collect();
        prop_assert_eq!(dates.len(), all.len());
        prop_assert!((59..=61).contains(&all.len()));
    }

    #[test]
    fn parsers_never_panic(v in json_value(), tz in prop::option::of("[A-Za-z .()+-]{0,12}")) {
        let _ = Schedule::from_json(&v, tz.as_deref());
        let _ = Retention::from_json(&v);
        let _ = Schedule::from_policy(&v);
        let _ = Retention::from_policy(&v);
        let _ = validate::check_policy(&v);
        if let Ok(s) = Schedule::from_json(&v, None) {
            let t = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
            let _ = s.slots(t, t + Duration::days(3)).count();
            if let Ok(r) = Retention::from_json(&v) {
                let _ = r.expiry(&s, t);
            }
        }
    }

    #[test]
    fn mutated_policies_never_panic(path in prop::collection::vec(0usize..16, 1..4), replacement in json_value()) {
        let mut p = sample_policy();
        mutate(&mut p, &path, replacement);
        let _ = validate::check_policy(&p);
        if let (Ok(s), Ok(r)) = (Schedule::from_policy(&p), Retention::from_policy(&p)) {
            let t = Utc.timestamp_opt(1_800_000_000, 0).unwrap();
            let points: Vec<_> = s.slots(t, t + Duration::days(10)).collect();
            let _ = r.survivors(&s, &points, t + Duration::days(20));
        }
    }
}

const KEYS: &[&str] = &[
    "schedulePolicyType",
    "scheduleRunFrequency",
    "scheduleRunTimes",
    "scheduleRunDays",
    "hourlySchedule",
    "interval",
    "scheduleWindowStartTime",
    "scheduleWindowDuration",
    "dailySchedule",
    "weeklySchedule",
    "retentionPolicyType",
    "retentionDuration",
    "count",
    "durationType",
    "daysOfTheWeek",
    "monthlySchedule",
    "yearlySchedule",
    "retentionScheduleFormatType",
    "retentionScheduleDaily",
    "retentionScheduleWeekly",
    "daysOfTheMonth",
    "weeksOfTheMonth",
    "monthsOfYear",
    "date",
    "isLast",
    "schedulePolicy",
    "retentionPolicy",
    "timeZone",
    "backupManagementType",
];

const WORDS: &[&str] = &[
    "SimpleSchedulePolicy",
    "SimpleSchedulePolicyV2",
    "LongTermRetentionPolicy",
    "SimpleRetentionPolicy",
    "Daily",
    "Weekly",
    "Hourly",
    "Days",
    "Weeks",
    "Months",
    "Years",
    "Sunday",
    "Monday",
    "First",
    "Last",
    "January",
    "AzureIaasVM",
    "AzureStorage",
    "UTC",
    "Pacific Standard Time",
    "2026-01-01T02:30:00Z",
    "25:99",
    "",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-3i64..40).prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        prop::sample::select(WORDS).prop_map(|s| json!(s)),
        ".{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..8)
                .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect::<Map<_, _>>())),
        ]
    })
}

fn sample_policy() -> Value {
    let t = "2026-01-01T02:00:00Z";
    json!({"backupManagementType": "AzureIaasVM", "timeZone": "W. Europe Standard Time",
        "schedulePolicy": {"schedulePolicyType": "SimpleSchedulePolicy", "scheduleRunFrequency": "Weekly", "scheduleRunDays": ["Sunday", "Wednesday"], "scheduleRunTimes": [t]},
        "retentionPolicy": {"retentionPolicyType": "LongTermRetentionPolicy",
            "weeklySchedule": {"daysOfTheWeek": ["Sunday"], "retentionTimes": [t], "retentionDuration": {"count": 4, "durationType": "Weeks"}},
            "monthlySchedule": {"retentionScheduleFormatType": "Weekly", "retentionScheduleWeekly": {"daysOfTheWeek": ["Sunday"], "weeksOfTheMonth": ["First", "Last"]},
                                "retentionTimes": [t], "retentionDuration": {"count": 12, "durationType": "Months"}},
            "yearlySchedule": {"retentionScheduleFormatType": "Daily", "monthsOfYear": ["January"], "retentionScheduleDaily": {"daysOfTheMonth": [{"date": 1}, {"isLast": true}]},
                               "retentionTimes": [t], "retentionDuration": {"count": 2, "durationType": "Years"}}}})
}

/// Replace the member reached by following `path` (each step picks a child by index, modulo the
/// number of children) with `replacement`.
fn mutate(v: &mut Value, path: &[usize], replacement: Value) {
    let Some((first, rest)) = path.split_first() else {
        *v = replacement;
        return;
    };
    let child = match v {
        Value::Object(m) if !m.is_empty() => {
            let n = m.len();
            m.values_mut().nth(first % n)
        }
        Value::Array(a) if !a.is_empty() => {
            let n = a.len();
            a.get_mut(first % n)
        }
        _ => None,
    };
    match child {
        Some(c) => mutate(c, rest, replacement),
        None => *v = replacement,
    }
}
