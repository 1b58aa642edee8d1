//! The OData `$filter` subset Azure Backup accepts: comparisons joined by `and`,
//! `field op 'value'` with `op` one of `eq ne gt ge lt le`, string values in single quotes (`''` is a
//! quote inside one), or bare tokens (numbers, `true`).
//!
//! Parsing never panics; anything else is a 400 that names the problem. Which fields a list accepts is
//! the caller's business ([`Filter::only`]).

use crate::{Error, Result};

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

/// One `field op value` clause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    pub field: String,
    pub op: Op,
    pub value: String,
}

/// A parsed filter: all clauses must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub clauses: Vec<Clause>,
}

fn invalid(message: String) -> Error {
    Error::Invalid {
        code: "BMSUserErrorInvalidInput",
        message,
        target: Some("$filter".into()),
    }
}

#[derive(Debug, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
}

fn tokens(s: &str) -> Result<Vec<Tok>> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '\'' {
            chars.next();
            let mut v = String::new();
            loop {
                match chars.next() {
                    Some('\'') if chars.peek() == Some(&'\'') => {
                        chars.next();
                        v.push('\'');
                    }
                    Some('\'') => break,
                    Some(ch) => v.push(ch),
                    None => return Err(invalid(format!("The filter '{s}' has an unterminated string."))),
                }
            }
            out.push(Tok::Str(v));
        } else {
            let mut w = String::new();
            while let Some(&ch) = chars.peek() {
                if ch.is_whitespace() || ch == '\'' {
                    break;
                }
                w.push(ch);
                chars.next();
            }
            out.push(Tok::Word(w));
        }
    }
    Ok(out)
}

impl Filter {
    /// Parses a `$filter` value (already URL-decoded). An empty filter has no clauses.
    pub fn parse(s: &str) -> Result<Filter> {
        let toks = tokens(s)?;
        let mut clauses = Vec::new();
        let mut i = 0;
        while i < toks.len() {
            if !clauses.is_empty() {
                match &toks[i] {
                    Tok::Word(w) if w.eq_ignore_ascii_case("and") => i += 1,
                    _ => {
                        return Err(invalid(format!(
                            "The filter '{s}' is invalid: clauses can only be joined with 'and'."
                        )))
                    }
                }
            }
            let (Some(Tok::Word(field)), Some(Tok::Word(op)), Some(value)) =
                (toks.get(i), toks.get(i + 1), toks.get(i + 2))
            else {
                return Err(invalid(format!(
                    "The filter '{s}' is invalid: expected clauses of the form \"name eq 'value'\"."
                )));
            };
            let op = match op.to_ascii_lowercase().as_str() {
                "eq" => Op::Eq,
                "ne" => Op::Ne,
                "gt" => Op::Gt,
                "ge" => Op::Ge,
                "lt" => Op::Lt,
                "le" => Op::Le,
                other => {
                    return Err(invalid(format!(
                        "The filter '{s}' uses the unsupported operator '{other}'."
                    )))
                }
            };
            let value = match value {
                Tok::Str(v) => v.clone(),
                Tok::Word(w) if !w.eq_ignore_ascii_case("and") => w.clone(),
                Tok::Word(_) => return Err(invalid(format!("The filter '{s}' is missing a value."))),
            };
            clauses.push(Clause {
                field: field.clone(),
                op,
                value,
            });
            i += 3;
        }
        Ok(Filter { clauses })
    }

    /// Checks every field is one of `allowed` (case-insensitive) and used with `eq` unless listed in
    /// `ranged`.
    pub fn only(&self, allowed: &[&str], ranged: &[&str]) -> Result<()> {
        for c in &self.clauses {
            if !allowed.iter().any(|a| a.eq_ignore_ascii_case(&c.field)) {
                return Err(invalid(format!(
                    "The filter field '{}' is not supported here. Supported fields: {}.",
                    c.field,
                    allowed.join(", ")
                )));
            }
            if c.op != Op::Eq && !ranged.iter().any(|a| a.eq_ignore_ascii_case(&c.field)) {
                return Err(invalid(format!("The filter field '{}' only supports 'eq'.", c.field)));
            }
        }
        Ok(())
    }

    /// The value of the first `eq` clause on `field`.
    pub fn eq(&self, field: &str) -> Option<&str> {
        self.clauses
            .iter()
            .find(|c| c.op == Op::Eq && c.field.eq_ignore_ascii_case(field))
            .map(|c| c.value.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn azure_filters_parse() {
        let f = Filter::parse("backupManagementType eq 'AzureIaasVM' and friendlyName eq 'o''brien'").unwrap();
        assert_eq!(f.eq("BACKUPMANAGEMENTTYPE"), Some("AzureIaasVM"));
        assert_eq!(f.eq("friendlyName"), Some("o'brien"));
        let f = Filter::parse("startTime ge '2016-01-01 12:00:00 AM' and endTime lt 2017-01-01").unwrap();
        assert_eq!(f.clauses[0].op, Op::Ge);
        assert_eq!(f.clauses[1].value, "2017-01-01");
        assert!(Filter::parse("").unwrap().clauses.is_empty());
    }

    #[test]
    fn bad_filters_are_400s() {
        for bad in [
            "a eq",
            "a like 'b'",
            "a eq 'b' or c eq 'd'",
            "a eq 'b",
            "eq 'b'",
            "a eq 'b' and",
        ] {
            let e = Filter::parse(bad).unwrap_err();
            assert_eq!(e.code(), "BMSUserErrorInvalidInput", "{bad}");
        }
        let f = Filter::parse("color eq 'red'").unwrap();
        assert!(f.only(&["status"], &[]).is_err());
        let f = Filter::parse("status gt 'x'").unwrap();
        assert!(f.only(&["status"], &[]).is_err());
        assert!(f.only(&["status"], &["status"]).is_ok());
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = Filter::parse(&s);
        }

        #[test]
        fn quoted_values_round_trip(field in "[a-zA-Z]{1,12}", value in "[^\\x00]{0,20}") {
            let text = format!("{field} eq '{}'", value.replace('\'', "''"));
            let f = Filter::parse(&text).unwrap();
            prop_assert_eq!(f.eq(&field), Some(value.as_str()));
        }
    }
}
