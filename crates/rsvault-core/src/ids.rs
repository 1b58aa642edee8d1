//! ARM resource ids: parsing, segment access and scope containment.
//!
//! An id is `/subscriptions/{s}[/resourceGroups/{g}[/providers/{ns}/{type}/{name}[/{type}/{name}]…]]`.
//! Names and literal segments compare case-insensitively, as ARM does; the text is kept as given so
//! responses can echo the caller's casing. Paths arrive percent-encoded from SDKs (`%3B`) and raw from
//! pollers (`;`): [`decode_path`] turns both into the same segments.

use crate::{Error, Result};
use percent_encoding::percent_decode_str;

/// Splits a URL path into percent-decoded segments, dropping empty ones (`//`, trailing `/`).
///
/// A segment that is, or decodes to, `.` or `..`, or that decodes to text containing `/` or `\`, is
/// refused: every segment names one thing, so the scope authorization checks (the segments joined by
/// `/`) splits back into exactly the segments the handler reads.
pub fn decode_path(path: &str) -> Result<Vec<String>> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let seg = percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| Error::bad_request(format!("The request path segment '{s}' is not valid UTF-8.")))?;
            if seg == "." || seg == ".." || seg.contains(['/', '\\']) {
                return Err(Error::bad_request(format!(
                    "The request path segment '{s}' is not allowed: a segment cannot be '.' or '..' or contain '/' or '\\'."
                )));
            }
            Ok(seg)
        })
        .collect()
}

/// True when `scope` equals `target` or is one of its ancestors, compared segment by segment,
/// case-insensitively. `/` contains everything.
pub fn scope_contains(scope: &str, target: &str) -> bool {
    let s: Vec<&str> = scope.split('/').filter(|x| !x.is_empty()).collect();
    let t: Vec<&str> = target.split('/').filter(|x| !x.is_empty()).collect();
    s.len() <= t.len() && s.iter().zip(&t).all(|(a, b)| a.eq_ignore_ascii_case(b))
}

/// The lower-cased form used as a lookup key for ids and names.
pub fn key(s: &str) -> String {
    s.to_ascii_lowercase()
}

/// A parsed ARM resource id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceId {
    /// The id as given, without a trailing slash.
    pub text: String,
    pub subscription: String,
    pub resource_group: Option<String>,
    /// Provider namespace, e.g. `Microsoft.RecoveryServices`.
    pub namespace: Option<String>,
    /// `(type, name)` pairs below the namespace, outermost first.
    pub types: Vec<(String, String)>,
}

impl ResourceId {
    /// Parses an id; anything that is not ARM's shape is a `LinkedInvalidPropertyId`-style 400.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || Error::Invalid {
            code: "InvalidResourceId",
            message: format!("Resource id '{text}' is invalid."),
            target: None,
        };
        let segs: Vec<&str> = text.split('/').collect();
        if segs.first() != Some(&"") {
            return Err(bad());
        }
        let segs: Vec<&str> = segs[1..].to_vec();
        let segs: Vec<&str> = match segs.last() {
            Some(&"") => segs[..segs.len() - 1].to_vec(),
            _ => segs,
        };
        if segs.len() < 2 || !segs[0].eq_ignore_ascii_case("subscriptions") || segs.iter().any(|s| s.is_empty()) {
            return Err(bad());
        }
        let mut id = ResourceId {
            text: format!("/{}", segs.join("/")),
            subscription: segs[1].to_string(),
            resource_group: None,
            namespace: None,
            types: vec![],
        };
        let mut rest = &segs[2..];
        if rest.len() >= 2 && rest[0].eq_ignore_ascii_case("resourceGroups") {
            id.resource_group = Some(rest[1].to_string());
            rest = &rest[2..];
        }
        if rest.is_empty() {
            return Ok(id);
        }
        if rest.len() < 4 || !rest[0].eq_ignore_ascii_case("providers") || !rest.len().is_multiple_of(2) {
            return Err(bad());
        }
        id.namespace = Some(rest[1].to_string());
        for pair in rest[2..].chunks(2) {
            id.types.push((pair[0].to_string(), pair[1].to_string()));
        }
        Ok(id)
    }

    /// `Namespace/type1/type2…`, e.g. `Microsoft.RecoveryServices/vaults`.
    pub fn resource_type(&self) -> Option<String> {
        let ns = self.namespace.as_ref()?;
        let mut t = ns.clone();
        for (ty, _) in &self.types {
            t.push('/');
            t.push_str(ty);
        }
        Some(t)
    }

    /// The innermost name.
    pub fn name(&self) -> Option<&str> {
        self.types.last().map(|(_, n)| n.as_str())
    }

    /// The lower-cased id, used as the storage key.
    pub fn key(&self) -> String {
        key(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_a_vault_id() {
        let id =
            ResourceId::parse("/Subscriptions/S1/resourcegroups/RG/providers/Microsoft.RecoveryServices/vaults/v1")
                .unwrap();
        assert_eq!(id.subscription, "S1");
        assert_eq!(id.resource_group.as_deref(), Some("RG"));
        assert_eq!(id.resource_type().unwrap(), "Microsoft.RecoveryServices/vaults");
        assert_eq!(id.name(), Some("v1"));
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "",
            "subscriptions/x",
            "/subscriptions",
            "/subscriptions/s/providers/x",
            "/foo/bar",
            "/subscriptions//resourceGroups/x",
        ] {
            assert!(ResourceId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn decodes_percent_encoded_semicolons() {
        let segs = decode_path("/a/IaasVMContainer%3Biaasvmcontainerv2%3Brg%3Bvm/").unwrap();
        assert_eq!(segs, vec!["a", "IaasVMContainer;iaasvmcontainerv2;rg;vm"]);
    }

    #[test]
    fn segments_that_decode_to_separators_or_dots_are_refused() {
        for bad in [
            "/a/b%2Fc",
            "/a/b%2fc",
            "/a/%2e%2e/b",
            "/a/../b",
            "/a/./b",
            "/a/%2E",
            "/a/b%5Cc",
            "/a/b\\c",
        ] {
            assert!(decode_path(bad).is_err(), "{bad}");
        }
        assert_eq!(
            decode_path("/a/..b/.well-known").unwrap(),
            vec!["a", "..b", ".well-known"]
        );
    }

    #[test]
    fn scope_containment_is_by_segment_and_case_insensitive() {
        assert!(scope_contains("/", "/subscriptions/a"));
        assert!(scope_contains("/subscriptions/A", "/subscriptions/a/resourceGroups/x"));
        assert!(!scope_contains(
            "/subscriptions/a/resourceGroups/x",
            "/subscriptions/a/resourceGroups/xy"
        ));
        assert!(!scope_contains("/subscriptions/a/resourceGroups/x", "/subscriptions/a"));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = ResourceId::parse(&s);
            let _ = decode_path(&s);
        }

        #[test]
        fn parse_round_trips(sub in "[a-z0-9-]{1,36}", rg in "[A-Za-z0-9_().-]{1,20}", name in "[A-Za-z][A-Za-z0-9-]{1,20}") {
            let text = format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.RecoveryServices/vaults/{name}");
            let id = ResourceId::parse(&text).unwrap();
            prop_assert_eq!(&id.text, &text);
            prop_assert_eq!(id.name(), Some(name.as_str()));
        }
    }
}
