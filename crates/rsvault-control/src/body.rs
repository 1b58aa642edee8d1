//! Checks of request bodies, with ARM's codes: a body that is not the right JSON shape is
//! `InvalidRequestContent`; a value outside an enum or a range is `BadRequest`/`InvalidParameter`.

use rsvault_core::{Error, Result};
use serde_json::{Map, Value};

/// The body as a JSON object.
pub fn object(v: &Value) -> Result<&Map<String, Value>> {
    v.as_object()
        .ok_or_else(|| Error::InvalidRequestContent("The request body must be a JSON object.".into()))
}

fn wrong_type(path: &str, want: &str, got: &Value) -> Error {
    let got = match got {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    Error::InvalidRequestContent(format!(
        "Error converting value of type {got} at path '{path}': expected {want}"
    ))
}

/// An optional string member.
pub fn opt_str<'a>(m: &'a Map<String, Value>, key: &str, path: &str) -> Result<Option<&'a str>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(wrong_type(&format!("{path}{key}"), "string", v)),
    }
}

/// An optional object member.
pub fn opt_obj<'a>(m: &'a Map<String, Value>, key: &str, path: &str) -> Result<Option<&'a Map<String, Value>>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(v) => Err(wrong_type(&format!("{path}{key}"), "object", v)),
    }
}

/// An optional integer member.
pub fn opt_int(m: &Map<String, Value>, key: &str, path: &str) -> Result<Option<i64>> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64()),
        Some(v) => Err(wrong_type(&format!("{path}{key}"), "integer", v)),
    }
}

/// An optional string member that must be one of `allowed` (case-insensitive); returns the canonical
/// spelling.
pub fn opt_enum(
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
        .ok_or_else(|| Error::Invalid {
            code: "BadRequest",
            message: format!(
                "The value '{s}' is not valid for '{path}{key}'. Allowed values are: {}.",
                allowed.join(", ")
            ),
            target: Some(format!("{path}{key}")),
        })
}

/// `tags`: an object of string values (at most 50, as Azure).
pub fn tags(m: &Map<String, Value>) -> Result<Option<Map<String, Value>>> {
    let Some(t) = opt_obj(m, "tags", "")? else {
        return Ok(None);
    };
    if t.len() > 50 {
        return Err(Error::Invalid {
            code: "InvalidTagNameOrValue",
            message: "The number of tags on a resource cannot exceed 50.".into(),
            target: Some("tags".into()),
        });
    }
    for (k, v) in t {
        if !v.is_string() {
            return Err(wrong_type(&format!("tags.{k}"), "string", v));
        }
        if k.is_empty() || k.len() > 512 || k.contains(['<', '>', '%', '&', '\\', '?', '/']) {
            return Err(Error::Invalid {
                code: "InvalidTagNameCharacters",
                message: format!(
                    "The tag names '{k}' have reserved characters '<,>,%,&,\\,?,/' or control characters."
                ),
                target: Some("tags".into()),
            });
        }
    }
    Ok(Some(t.clone()))
}

/// Azure's normalised location: `West US` → `westus`.
pub fn normalize_location(l: &str) -> String {
    l.chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase()
}

/// A required `location`, normalised.
pub fn location(m: &Map<String, Value>) -> Result<String> {
    match opt_str(m, "location", "")? {
        Some(l) if !l.trim().is_empty() => Ok(normalize_location(l)),
        _ => Err(Error::Invalid {
            code: "LocationRequired",
            message: "The location property is required for this definition.".into(),
            target: Some("location".into()),
        }),
    }
}

/// Merges `patch` into `base` the way ARM PATCH does for nested objects (objects merge, other values
/// replace, `null` removes).
pub fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    b.remove(k);
                } else {
                    merge(b.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_is_deep() {
        let mut a = json!({"x": {"y": 1, "z": 2}, "k": 1});
        merge(&mut a, &json!({"x": {"y": 3}, "k": null, "n": [1]}));
        assert_eq!(a, json!({"x": {"y": 3, "z": 2}, "n": [1]}));
    }

    #[test]
    fn type_errors_name_the_path() {
        let m = json!({"properties": {"publicNetworkAccess": 5}});
        let p = opt_obj(m.as_object().unwrap(), "properties", "").unwrap().unwrap();
        let e = opt_enum(p, "publicNetworkAccess", "properties.", &["Enabled"]).unwrap_err();
        assert_eq!(e.code(), "InvalidRequestContent");
        assert!(e.to_string().contains("properties.publicNetworkAccess"));
        let m = json!({"tags": {"a": 1}});
        assert_eq!(
            tags(m.as_object().unwrap()).unwrap_err().code(),
            "InvalidRequestContent"
        );
    }
}
