//! Azure's naming rules for the resources rsvault creates.
//!
//! Each validator returns [`Error::InvalidResourceName`] with the rule in Azure's words, so a client sees
//! why a name was refused.

use crate::{Error, Result};

fn invalid(name: &str, rule: &str) -> Error {
    Error::InvalidResourceName {
        name: name.to_string(),
        rule: rule.to_string(),
    }
}

/// Recovery Services vault names: 2–50 characters, letters, digits and hyphens, starting with a letter.
pub fn vault(name: &str) -> Result<()> {
    const RULE: &str = "The name can contain only letters, numbers and hyphens, must start with a letter and must be between 2 and 50 characters long.";
    let ok = (2..=50).contains(&name.chars().count())
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(invalid(name, RULE))
    }
}

/// Resource group names: 1–90 characters, letters (Unicode), digits, `_`, `-`, `.`, `(`, `)`, not ending
/// with a period.
pub fn resource_group(name: &str) -> Result<()> {
    const RULE: &str = "Resource group names only allow alphanumeric characters, periods, underscores, hyphens and parenthesis, can be up to 90 characters long and cannot end in a period.";
    let ok = (1..=90).contains(&name.chars().count())
        && !name.ends_with('.')
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '(' | ')'));
    if ok {
        Ok(())
    } else {
        Err(invalid(name, RULE))
    }
}

/// Generic names of child resources (policies, VMs, accounts): 1–260 characters without control
/// characters, `/`, `\`, `?`, `#`, `%`, `&`.
pub fn generic(name: &str) -> Result<()> {
    const RULE: &str =
        "The name must be 1 to 260 characters long and must not contain control characters or any of '/\\?#%&'.";
    let ok =
        (1..=260).contains(&name.chars().count()) && !name.chars().any(|c| c.is_control() || "/\\?#%&".contains(c));
    if ok {
        Ok(())
    } else {
        Err(invalid(name, RULE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vault_names_follow_azure_rules() {
        let cases = [
            ("v1", true),
            ("a", false),
            ("1abc", false),
            ("my-vault", true),
            ("my_vault", false),
            ("-abc", false),
            (&"a".repeat(50), true),
            (&"a".repeat(51), false),
            ("vault.x", false),
        ];
        for (name, ok) in cases {
            assert_eq!(vault(name).is_ok(), ok, "{name}");
        }
    }

    #[test]
    fn resource_group_names_follow_azure_rules() {
        let cases = [
            ("rg", true),
            ("rg.", false),
            ("rg(1)_x-y.z", true),
            ("", false),
            ("a b", false),
            ("grüße", true),
        ];
        for (name, ok) in cases {
            assert_eq!(resource_group(name).is_ok(), ok, "{name}");
        }
        assert!(resource_group(&"r".repeat(91)).is_err());
    }
}
