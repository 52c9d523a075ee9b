//! Typed property tables: the shared checker for Daily-style `properties` objects, used by
//! room properties and meeting-token properties. Each table lists every accepted name with
//! the shape its value must have; anything else is refused by name.
//!
//! Must not: know what a property does; that belongs to `rooms` and `tokens`.

use serde_json::{Map, Value};

/// Latest accepted unix time in seconds (9999-12-31T23:59:59Z): bigger numbers are mistakes.
pub const MAX_UNIX_SECS: i64 = 253_402_300_799;

/// What a property's value must look like.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Bool,
    /// Unix seconds, 0..=MAX_UNIX_SECS: any JSON number, as Daily accepts (pipecat sends
    /// `time.time() + n`); kept as whole seconds, the fraction dropped, as Daily does.
    UnixSecs,
    /// An integer in the inclusive range.
    Int(i64, i64),
    /// Any finite number.
    Number,
    /// A string of at most this many characters.
    Str(usize),
    /// A string of at most this many characters, without control characters.
    Text(usize),
    /// A string, or `false` (Daily's `enable_recording`).
    StrOrFalse(usize),
    Object,
    /// Meeting-token `permissions`: `hasPresence` bool, `canSend`/`canAdmin`/`canReceive` bool or array of strings.
    Permissions,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PropertyError {
    #[error("unknown property '{0}'")]
    Unknown(String),
    #[error("property '{name}' {problem}")]
    Bad { name: String, problem: String },
}

pub fn bad(name: &str, problem: impl Into<String>) -> PropertyError {
    PropertyError::Bad { name: name.to_string(), problem: problem.into() }
}

pub fn kind_of(table: &[(&str, Kind)], name: &str) -> Option<Kind> {
    table.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
}

/// Checks every entry against `table`. With `keep_nulls`, `null` values stay (a patch: they
/// mean "remove"); otherwise they are dropped (they mean "not set").
pub fn validate(
    table: &[(&str, Kind)],
    props: &Map<String, Value>,
    keep_nulls: bool,
) -> Result<Map<String, Value>, PropertyError> {
    let mut out = Map::new();
    for (name, v) in props {
        let kind = kind_of(table, name).ok_or_else(|| PropertyError::Unknown(name.clone()))?;
        if v.is_null() {
            if keep_nulls {
                out.insert(name.clone(), Value::Null);
            }
            continue;
        }
        check(name, kind, v)?;
        out.insert(name.clone(), normalized(kind, v));
    }
    check_window(&out)?;
    Ok(out)
}

/// The value as stored: unix times as whole seconds, everything else as given.
fn normalized(kind: Kind, v: &Value) -> Value {
    match (kind, v.as_f64()) {
        (Kind::UnixSecs, Some(secs)) if v.as_i64().is_none() => Value::from(secs.trunc() as i64),
        _ => v.clone(),
    }
}

/// `nbf` must come before `exp` when both are set.
pub fn check_window(props: &Map<String, Value>) -> Result<(), PropertyError> {
    let nbf = props.get("nbf").and_then(Value::as_i64);
    let exp = props.get("exp").and_then(Value::as_i64);
    match (nbf, exp) {
        (Some(n), Some(e)) if n >= e => Err(bad("nbf", "must be before exp")),
        _ => Ok(()),
    }
}

pub fn check(name: &str, kind: Kind, v: &Value) -> Result<(), PropertyError> {
    let ok = match kind {
        Kind::Bool => v.is_boolean(),
        Kind::UnixSecs => v.as_f64().is_some_and(|n| (0.0..(MAX_UNIX_SECS + 1) as f64).contains(&n)),
        Kind::Int(lo, hi) => v.as_i64().is_some_and(|n| (lo..=hi).contains(&n)),
        Kind::Number => v.as_f64().is_some_and(f64::is_finite),
        Kind::Str(max) => v.as_str().is_some_and(|s| s.chars().count() <= max),
        Kind::Text(max) => v.as_str().is_some_and(|s| is_plain_text(s, max)),
        Kind::StrOrFalse(max) => v == &Value::Bool(false) || v.as_str().is_some_and(|s| s.chars().count() <= max),
        Kind::Object => v.is_object(),
        Kind::Permissions => return check_permissions(name, v),
    };
    if ok {
        return Ok(());
    }
    Err(bad(name, expectation(kind)))
}

/// At most `max` characters and no control characters (names are shown to other people).
pub fn is_plain_text(s: &str, max: usize) -> bool {
    s.chars().count() <= max && !s.chars().any(char::is_control)
}

fn expectation(kind: Kind) -> String {
    match kind {
        Kind::Bool => "must be true or false".into(),
        Kind::UnixSecs => {
            format!("must be a unix timestamp in seconds, between 0 and {MAX_UNIX_SECS}")
        }
        Kind::Int(lo, hi) => format!("must be an integer between {lo} and {hi}"),
        Kind::Number => "must be a number".into(),
        Kind::Str(max) | Kind::StrOrFalse(max) => {
            format!("must be a string of at most {max} characters")
        }
        Kind::Text(max) => {
            format!("must be a string of at most {max} characters without control characters")
        }
        Kind::Object | Kind::Permissions => "must be an object".into(),
    }
}

fn check_permissions(name: &str, v: &Value) -> Result<(), PropertyError> {
    let obj = v.as_object().ok_or_else(|| bad(name, "must be an object"))?;
    for (k, pv) in obj {
        let ok = match k.as_str() {
            "hasPresence" => pv.is_boolean(),
            "canSend" | "canAdmin" | "canReceive" => {
                pv.is_boolean()
                    || pv
                        .as_array()
                        .is_some_and(|a| a.len() <= 32 && a.iter().all(|s| s.as_str().is_some_and(|s| s.len() <= 64)))
            }
            _ => return Err(bad(name, format!("has an unknown field '{k}'"))),
        };
        if !ok {
            return Err(bad(name, format!("field '{k}' has the wrong type")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T: &[(&str, Kind)] =
        &[("nbf", Kind::UnixSecs), ("exp", Kind::UnixSecs), ("n", Kind::Text(5)), ("p", Kind::Permissions)];

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn refuses_unknown_and_mistyped() {
        assert_eq!(validate(T, &obj(json!({"x": 1})), false), Err(PropertyError::Unknown("x".into())));
        assert!(validate(T, &obj(json!({"exp": "1"})), false).is_err());
        assert_eq!(validate(T, &obj(json!({"exp": 1700000000.9})), false).unwrap()["exp"], json!(1700000000));
        assert!(validate(T, &obj(json!({"exp": -0.5})), false).is_err());
        assert!(validate(T, &obj(json!({"exp": 253402300799.5})), false).is_ok());
        assert!(validate(T, &obj(json!({"exp": 253402300800.0})), false).is_err());
        assert!(validate(T, &obj(json!({"exp": 99999999999999u64})), false).is_err());
        assert!(validate(T, &obj(json!({"n": "a\u{7}"})), false).is_err());
        assert!(validate(T, &obj(json!({"n": "abcdef"})), false).is_err());
        assert!(validate(T, &obj(json!({"nbf": 5, "exp": 5})), false).is_err());
        assert!(validate(T, &obj(json!({"p": {"canAdmin": ["participants"], "hasPresence": true}})), false).is_ok());
        assert!(validate(T, &obj(json!({"p": {"canAdmin": 3}})), false).is_err());
    }

    #[test]
    fn nulls_dropped_or_kept() {
        assert_eq!(validate(T, &obj(json!({"exp": null})), false).unwrap().len(), 0);
        assert_eq!(validate(T, &obj(json!({"exp": null})), true).unwrap().len(), 1);
    }
}
