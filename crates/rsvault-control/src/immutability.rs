//! Immutable vaults and always-on soft delete, enforced as Azure Backup enforces them.
//!
//! A vault's `properties.securitySettings.immutabilitySettings.state` is `Disabled`, `Unlocked` or
//! `Locked`. While it is `Unlocked` or `Locked` the vault refuses every operation that could lose a
//! recovery point before its expiry:
//!
//! * deleting a protected item's data (`DELETE` of a protected item: stop protection and delete data)
//!   while any of its recovery points has not expired;
//! * reducing a retention duration of a policy that protects items, or moving an item to a policy
//!   that keeps its points for less time;
//! * disabling soft delete.
//!
//! `Unlocked` can go back to `Disabled`; `Locked` is irreversible (only tightens). Soft delete
//! `AlwaysON` (`securitySettings.softDeleteSettings.softDeleteState`, which is also the backup
//! vaultconfig's `softDeleteFeatureState`) is irreversible too. The refusals are 400s in Azure's
//! words; recovery points report `recoveryPointProperties.immutabilityProperties.isImmutable`.

use crate::{Error, Result};
use serde_json::Value;

/// A vault's immutability setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Immutability {
    Disabled,
    Unlocked,
    Locked,
}

impl Immutability {
    /// The setting of a vault body (`Disabled` when absent).
    pub fn of(vault_body: &Value) -> Immutability {
        match vault_body
            .pointer("/properties/securitySettings/immutabilitySettings/state")
            .and_then(Value::as_str)
        {
            Some(s) if s.eq_ignore_ascii_case("Locked") => Immutability::Locked,
            Some(s) if s.eq_ignore_ascii_case("Unlocked") => Immutability::Unlocked,
            _ => Immutability::Disabled,
        }
    }

    /// Whether the vault refuses operations that lose recovery points (`Unlocked` or `Locked`).
    pub fn enforced(self) -> bool {
        self != Immutability::Disabled
    }

    fn as_str(self) -> &'static str {
        match self {
            Immutability::Disabled => "Disabled",
            Immutability::Unlocked => "Unlocked",
            Immutability::Locked => "Locked",
        }
    }
}

/// A vault's soft delete state as stored (`Enabled` when absent).
pub fn soft_delete_state(vault_body: &Value) -> &str {
    vault_body
        .pointer("/properties/securitySettings/softDeleteSettings/softDeleteState")
        .and_then(Value::as_str)
        .unwrap_or("Enabled")
}

/// The code of every operation an immutable vault refuses.
pub const OPERATION_BLOCKED: &str = "UserErrorOperationNotAllowedOnImmutableVault";
/// The code for trying to loosen a locked immutability setting.
pub const LOCKED: &str = "UserErrorImmutabilityStateLocked";
/// The code for trying to turn always-on soft delete off.
pub const ALWAYS_ON: &str = "BMSUserErrorSoftDeleteAlwaysOnCannotBeDisabled";

/// The refusal of an operation that would lose recovery points in an immutable vault.
pub fn blocked(operation: &str, target: Option<&str>) -> Error {
    Error::Invalid {
        code: OPERATION_BLOCKED,
        message: format!(
            "{operation} is not allowed because immutability is enabled on this vault. An immutable vault blocks any operation that could lead to the loss of recovery points before their expiry."
        ),
        target: target.map(String::from),
    }
}

/// Checks a change of a vault's security settings, from the stored body `old` to the body `new` that
/// would be stored: `Locked` never loosens, `AlwaysON` soft delete never turns off, and an
/// immutable vault's soft delete cannot be disabled.
pub fn check_settings_change(old: &Value, new: &Value) -> Result<()> {
    let (was, will) = (Immutability::of(old), Immutability::of(new));
    if was == Immutability::Locked && will != Immutability::Locked {
        return Err(Error::Invalid {
            code: LOCKED,
            message: format!(
                "Immutability of this vault is locked and cannot be changed to '{}'. A locked immutable vault cannot be made mutable again.",
                will.as_str()
            ),
            target: Some("properties.securitySettings.immutabilitySettings.state".into()),
        });
    }
    let (sd_was, sd_will) = (soft_delete_state(old), soft_delete_state(new));
    if sd_was.eq_ignore_ascii_case("AlwaysON") && !sd_will.eq_ignore_ascii_case("AlwaysON") {
        return Err(Error::Invalid {
            code: ALWAYS_ON,
            message:
                "Soft delete is always on for this vault and cannot be changed. Always-on soft delete is irreversible."
                    .into(),
            target: Some("properties.securitySettings.softDeleteSettings.softDeleteState".into()),
        });
    }
    let disabling = !sd_was.eq_ignore_ascii_case("Disabled") && sd_will.eq_ignore_ascii_case("Disabled");
    if disabling && (was.enforced() || will.enforced()) {
        return Err(blocked(
            "Disabling soft delete",
            Some("properties.securitySettings.softDeleteSettings.softDeleteState"),
        ));
    }
    Ok(())
}

/// Approximate days of a `retentionDuration` (`{count, durationType}`), for comparisons.
fn duration_days(d: &Value) -> Option<i64> {
    let count = d.get("count").and_then(Value::as_i64)?;
    let unit = match d.get("durationType").and_then(Value::as_str)? {
        t if t.eq_ignore_ascii_case("Days") => 1,
        t if t.eq_ignore_ascii_case("Weeks") => 7,
        t if t.eq_ignore_ascii_case("Months") => 31,
        t if t.eq_ignore_ascii_case("Years") => 366,
        _ => return None,
    };
    Some(count * unit)
}

/// Every `retentionDuration` of a policy's properties, by its JSON path.
fn durations(v: &Value, path: &str, out: &mut Vec<(String, i64)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = format!("{path}{k}");
                if k == "retentionDuration" {
                    if let Some(d) = duration_days(x) {
                        out.push((p.clone(), d));
                    }
                }
                durations(x, &format!("{p}."), out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                durations(x, &format!("{path}{i}."), out);
            }
        }
        _ => {}
    }
}

/// The first retention tier of policy properties `old` that `new` drops or shortens, by its path
/// (`properties.retentionPolicy.dailySchedule.retentionDuration`), or `None` when `new` keeps at
/// least as long everywhere.
pub fn retention_cut(old: &Value, new: &Value) -> Option<String> {
    let (mut was, mut will) = (vec![], vec![]);
    durations(old, "properties.", &mut was);
    durations(new, "properties.", &mut will);
    was.into_iter()
        .find(|(p, d)| !will.iter().any(|(q, e)| q == p && e >= d))
        .map(|(p, _)| p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vault(imm: &str, sd: &str) -> Value {
        json!({"properties": {"securitySettings": {"immutabilitySettings": {"state": imm}, "softDeleteSettings": {"softDeleteState": sd}}}})
    }

    #[test]
    fn locked_only_tightens_and_always_on_stays_on() {
        let ok = [
            ("Disabled", "Enabled", "Unlocked", "Enabled"),
            ("Disabled", "Enabled", "Locked", "Enabled"),
            ("Unlocked", "Enabled", "Disabled", "Enabled"),
            ("Unlocked", "Enabled", "Locked", "AlwaysON"),
            ("Locked", "Enabled", "Locked", "AlwaysON"),
            ("Disabled", "Enabled", "Disabled", "Disabled"),
            ("Disabled", "AlwaysON", "Locked", "AlwaysON"),
        ];
        for (a, b, c, d) in ok {
            assert!(
                check_settings_change(&vault(a, b), &vault(c, d)).is_ok(),
                "{a} {b} -> {c} {d}"
            );
        }
        let refused = [
            ("Locked", "Enabled", "Unlocked", "Enabled", LOCKED),
            ("Locked", "Enabled", "Disabled", "Enabled", LOCKED),
            ("Disabled", "AlwaysON", "Disabled", "Enabled", ALWAYS_ON),
            ("Disabled", "AlwaysON", "Disabled", "Disabled", ALWAYS_ON),
            ("Unlocked", "Enabled", "Unlocked", "Disabled", OPERATION_BLOCKED),
            ("Locked", "Enabled", "Locked", "Disabled", OPERATION_BLOCKED),
            ("Unlocked", "Enabled", "Disabled", "Disabled", OPERATION_BLOCKED),
            ("Disabled", "Enabled", "Unlocked", "Disabled", OPERATION_BLOCKED),
        ];
        for (a, b, c, d, code) in refused {
            let e = check_settings_change(&vault(a, b), &vault(c, d)).unwrap_err();
            assert_eq!(e.code(), code, "{a} {b} -> {c} {d}");
        }
    }

    #[test]
    fn retention_cuts_are_found_by_tier() {
        let daily = |n: i64, unit: &str| json!({"retentionPolicy": {"dailySchedule": {"retentionDuration": {"count": n, "durationType": unit}}}});
        assert_eq!(retention_cut(&daily(30, "Days"), &daily(30, "Days")), None);
        assert_eq!(retention_cut(&daily(30, "Days"), &daily(5, "Weeks")), None);
        assert_eq!(
            retention_cut(&daily(30, "Days"), &daily(7, "Days")).as_deref(),
            Some("properties.retentionPolicy.dailySchedule.retentionDuration")
        );
        let mut with_weekly = daily(30, "Days");
        with_weekly["retentionPolicy"]["weeklySchedule"] =
            json!({"retentionDuration": {"count": 12, "durationType": "Weeks"}});
        assert_eq!(retention_cut(&daily(30, "Days"), &with_weekly), None);
        assert_eq!(
            retention_cut(&with_weekly, &daily(30, "Days")).as_deref(),
            Some("properties.retentionPolicy.weeklySchedule.retentionDuration"),
            "dropping a tier cuts retention"
        );
    }
}
