//! `api-version` query values: `YYYY-MM-DD` with an optional `-preview`-style suffix.
//!
//! By default rsvault accepts every published version and any well-formed later one (clients send many);
//! strict mode accepts only the versions a provider has published ([`ApiVersion::is_published`]).

use crate::{Error, Result};
use chrono::NaiveDate;

/// A parsed api-version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiVersion {
    pub date: NaiveDate,
    pub suffix: Option<String>,
}

impl ApiVersion {
    /// Parses a value; malformed ones are `InvalidApiVersionParameter`.
    pub fn parse(text: &str, supported: &[&str]) -> Result<Self> {
        let bad = || Error::InvalidApiVersion {
            version: text.to_string(),
            supported: supported.join(", "),
        };
        if text.len() < 10 || !text.is_char_boundary(10) {
            return Err(bad());
        }
        let (date, rest) = text.split_at(10);
        let b = date.as_bytes();
        let shape = b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        });
        if !shape {
            return Err(bad());
        }
        let date = NaiveDate::parse_from_str(date, "%Y-%m-%d").map_err(|_| bad())?;
        let suffix = match rest {
            "" => None,
            s if s.starts_with('-') && s.len() > 1 && s[1..].chars().all(|c| c.is_ascii_alphanumeric()) => {
                Some(s[1..].to_ascii_lowercase())
            }
            _ => return Err(bad()),
        };
        Ok(ApiVersion { date, suffix })
    }

    /// True when `text` is one of the `published` versions (case-insensitive).
    pub fn is_published(text: &str, published: &[&str]) -> bool {
        published.iter().any(|p| p.eq_ignore_ascii_case(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dates_and_previews() {
        for ok in ["2026-11-01", "2016-12-01", "2019-05-13-preview", "2099-01-31"] {
            assert!(ApiVersion::parse(ok, &[]).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_malformed_versions() {
        for bad in [
            "",
            "2026",
            "2026-13-01",
            "2026-02-30",
            "26-11-01",
            "2026-11-01-",
            "2026-11-01preview",
            "2026/11/01",
            "２０２６-11-01",
            "latest",
        ] {
            let e = ApiVersion::parse(bad, &["2026-11-01"]).unwrap_err();
            assert_eq!(e.code(), "InvalidApiVersionParameter", "{bad}");
        }
    }
}
