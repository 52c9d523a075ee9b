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
    /// `permissions`, checked against Daily's value sets ([`check_permissions`]).
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

/// At most `max` characters, none of them a control character or a bidirectional control
/// (names are shown to other people, and written to logs).
pub fn is_plain_text(s: &str, max: usize) -> bool {
    s.chars().count() <= max && !s.chars().any(is_unsafe_char)
}

/// A control character (C0, DEL, C1: newlines, NUL, escapes) or a bidirectional control (the
/// marks, embeddings, overrides and isolates that make text display in another order than it
/// is stored in, so that a name can pass for another).
pub fn is_unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
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

/// Daily's `canSend` values.
pub const CAN_SEND: &[&str] = &["video", "audio", "screenVideo", "screenAudio", "customVideo", "customAudio"];
/// Daily's `canAdmin` values.
pub const CAN_ADMIN: &[&str] = &["participants", "streaming", "transcription"];
/// Keys of a `canReceive` media object with a boolean value (the custom ones map track names).
const RECEIVE_MEDIA: &[&str] = &["video", "audio", "screenVideo", "screenAudio"];
/// Most entries in `byUserId` / `byParticipantId`, and track names in `customVideo`/`customAudio`.
const MAX_RECEIVE_ENTRIES: usize = 256;

/// A `permissions` object (meeting tokens, rooms, `update-permissions`) against Daily's value
/// sets: `hasPresence` bool; `canSend` bool or an array of [`CAN_SEND`]; `canAdmin` bool or an
/// array of [`CAN_ADMIN`]; `canReceive` `{base?, byUserId?, byParticipantId?}`.
pub fn check_permissions(name: &str, v: &Value) -> Result<(), PropertyError> {
    let obj = v.as_object().ok_or_else(|| bad(name, "must be an object"))?;
    for (k, pv) in obj {
        match k.as_str() {
            "hasPresence" => {
                if !pv.is_boolean() {
                    return Err(bad(name, "field 'hasPresence' must be true or false"));
                }
            }
            "canSend" => check_set(name, k, pv, CAN_SEND)?,
            "canAdmin" => check_set(name, k, pv, CAN_ADMIN)?,
            "canReceive" => check_can_receive(name, pv)?,
            _ => {
                return Err(bad(
                    name,
                    format!("has an unknown field '{}' (known: hasPresence, canSend, canReceive, canAdmin)", clip(k)),
                ))
            }
        }
    }
    Ok(())
}

fn clip(s: &str) -> String {
    s.chars().take(64).filter(|c| !c.is_control()).collect()
}

/// `true`, `false`, or an array of distinct values from `allowed`.
fn check_set(name: &str, field: &str, v: &Value, allowed: &[&str]) -> Result<(), PropertyError> {
    let expect = || bad(name, format!("field '{field}' must be true, false or an array of {}", allowed.join(", ")));
    match v {
        Value::Bool(_) => Ok(()),
        Value::Array(a) => {
            let mut seen: Vec<&str> = Vec::new();
            for item in a {
                let s = item.as_str().ok_or_else(expect)?;
                if !allowed.contains(&s) {
                    return Err(bad(
                        name,
                        format!("field '{field}' has an unknown value '{}' (known: {})", clip(s), allowed.join(", ")),
                    ));
                }
                if seen.contains(&s) {
                    return Err(bad(name, format!("field '{field}' lists '{s}' twice")));
                }
                seen.push(s);
            }
            Ok(())
        }
        _ => Err(expect()),
    }
}

/// `canReceive`: `base` (bool or a media object), `byUserId` and `byParticipantId` (objects of
/// bool or media object).
fn check_can_receive(name: &str, v: &Value) -> Result<(), PropertyError> {
    let obj = v.as_object().ok_or_else(|| bad(name, "field 'canReceive' must be an object"))?;
    for (k, sub) in obj {
        match k.as_str() {
            "base" => check_media(name, "canReceive.base", sub)?,
            "byUserId" | "byParticipantId" => {
                let m =
                    sub.as_object().ok_or_else(|| bad(name, format!("field 'canReceive.{k}' must be an object")))?;
                if m.len() > MAX_RECEIVE_ENTRIES {
                    return Err(bad(
                        name,
                        format!("field 'canReceive.{k}' has more than {MAX_RECEIVE_ENTRIES} entries"),
                    ));
                }
                for (id, media) in m {
                    if !is_plain_text(id, 255) {
                        return Err(bad(name, format!("field 'canReceive.{k}' has a bad key")));
                    }
                    check_media(name, &format!("canReceive.{k}"), media)?;
                }
            }
            _ => {
                return Err(bad(
                    name,
                    format!(
                        "field 'canReceive' has an unknown field '{}' (known: base, byUserId, byParticipantId)",
                        clip(k)
                    ),
                ))
            }
        }
    }
    Ok(())
}

/// `true`, `false`, or `{video?, audio?, screenVideo?, screenAudio?: bool, customVideo?, customAudio?: {name: bool}}`.
fn check_media(name: &str, field: &str, v: &Value) -> Result<(), PropertyError> {
    let m = match v {
        Value::Bool(_) => return Ok(()),
        Value::Object(m) => m,
        _ => return Err(bad(name, format!("field '{field}' must be true, false or an object of media"))),
    };
    for (k, x) in m {
        if RECEIVE_MEDIA.contains(&k.as_str()) {
            if !x.is_boolean() {
                return Err(bad(name, format!("field '{field}.{k}' must be true or false")));
            }
        } else if k == "customVideo" || k == "customAudio" {
            let tracks = x.as_object().ok_or_else(|| bad(name, format!("field '{field}.{k}' must be an object")))?;
            if tracks.len() > MAX_RECEIVE_ENTRIES
                || tracks.iter().any(|(t, b)| !b.is_boolean() || !is_plain_text(t, 255))
            {
                return Err(bad(name, format!("field '{field}.{k}' must map track names to true or false")));
            }
        } else {
            return Err(bad(
                name,
                format!(
                    "field '{field}' has an unknown medium '{}' (known: video, audio, screenVideo, screenAudio, customVideo, customAudio)",
                    clip(k)
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plain_text_refuses_controls_and_bidi_overrides() {
        assert!(is_plain_text("Zoë O'Brien – 東京", 100));
        for bad in ["a\nb", "a\0b", "a\u{1b}[31m", "a\u{85}b", "evil\u{202E}txt.exe", "a\u{2066}b", "a\u{200F}"] {
            assert!(!is_plain_text(bad, 100), "{bad:?}");
        }
        assert!(!is_plain_text("abc", 2));
    }

    const T: &[(&str, Kind)] =
        &[("nbf", Kind::UnixSecs), ("exp", Kind::UnixSecs), ("n", Kind::Text(5)), ("p", Kind::Permissions)];

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn permissions_follow_dailys_value_sets() {
        let ok = |v: Value| check_permissions("permissions", &v).is_ok();
        assert!(ok(json!({"hasPresence": false, "canSend": ["video", "audio"], "canAdmin": ["participants"]})));
        assert!(ok(json!({"canSend": true, "canAdmin": false, "canReceive": {"base": false}})));
        assert!(ok(json!({"canReceive": {"base": {"video": true, "customVideo": {"*": false, "cam2": true}},
            "byUserId": {"u1": true}, "byParticipantId": {"p1": {"audio": false}}}})));
        assert!(!ok(json!({"canSend": ["smell"]})));
        assert!(!ok(json!({"canSend": ["video", "video"]})));
        assert!(!ok(json!({"canAdmin": ["everything"]})));
        assert!(!ok(json!({"canAdmin": "participants"})));
        assert!(!ok(json!({"canReceive": ["video"]})));
        assert!(!ok(json!({"canReceive": {"base": {"smell": true}}})));
        assert!(!ok(json!({"canReceive": {"all": true}})));
        assert!(!ok(json!({"hasPresence": "yes"})));
        assert!(!ok(json!({"isBoss": true})));
        let e = check_permissions("permissions", &json!({"canSend": ["smell"]})).unwrap_err().to_string();
        assert!(e.contains("smell") && e.contains("screenVideo"), "{e}");
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
