//! Room rules: names (given or random), privacy, the property set and its validation, and the
//! room object as the API shows it. Pure functions over plain data.
//!
//! Must not: touch the store or HTTP. The writer calls [`merge_properties`] so that updates are
//! applied to the current state, in order.

use serde_json::{Map, Value};

use crate::properties::{self, Kind, PropertyError};

/// Longest accepted room name.
pub const MAX_NAME_LEN: usize = 128;
/// Length of a generated name: 36^20 ≈ 1.3 × 10^31 possibilities.
pub const RANDOM_NAME_LEN: usize = 20;
/// `max_participants` when the room does not set it.
pub const DEFAULT_MAX_PARTICIPANTS: u64 = 200;

/// The server's own first path segments, so they cannot be room names (compared case-insensitively).
const RESERVED: &[&str] = &["v1", "api", "healthz", "readyz", "metrics", "dashboard", "assets", "static"];

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RoomError {
    #[error("room name must be 1 to 128 characters of A-Z, a-z, 0-9, '_' or '-'")]
    BadName,
    #[error("room name '{0}' is reserved")]
    ReservedName(String),
    #[error("a room named '{0}' already exists")]
    NameTaken(String),
    #[error("privacy must be \"public\" or \"private\"")]
    BadPrivacy,
    #[error("room {0}")]
    Property(#[from] PropertyError),
    #[error("room not found")]
    NotFound,
    /// A batch names a room that does not exist (or has expired): nothing was done.
    #[error("room '{0}' not found")]
    Missing(String),
    /// A batch names the same room twice.
    #[error("room '{0}' is named twice")]
    Repeated(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Privacy {
    Public,
    Private,
}

impl Privacy {
    pub fn parse(v: &Value) -> Result<Privacy, RoomError> {
        match v.as_str() {
            Some("public") => Ok(Privacy::Public),
            Some("private") => Ok(Privacy::Private),
            _ => Err(RoomError::BadPrivacy),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Privacy::Public => "public",
            Privacy::Private => "private",
        }
    }
}

pub fn validate_name(name: &str) -> Result<(), RoomError> {
    let ok_chars = name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if name.is_empty() || name.len() > MAX_NAME_LEN || !ok_chars {
        return Err(RoomError::BadName);
    }
    if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name)) {
        return Err(RoomError::ReservedName(name.to_string()));
    }
    Ok(())
}

/// A fresh random name from `[a-z0-9]`, drawn from the thread's CSPRNG (ChaCha, OS-seeded).
pub fn random_name() -> String {
    const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..RANDOM_NAME_LEN).map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char).collect()
}

/// Every property a room accepts: Daily's behavioural ones first, then the UI-only ones
/// that are stored and echoed so Daily clients keep working.
const PROPERTIES: &[(&str, Kind)] = &[
    ("nbf", Kind::UnixSecs),
    ("exp", Kind::UnixSecs),
    ("max_participants", Kind::Int(1, 100_000)),
    ("eject_at_room_exp", Kind::Bool),
    ("eject_after_elapsed", Kind::Int(1, 315_360_000)),
    ("enable_knocking", Kind::Bool),
    ("enforce_unique_user_ids", Kind::Bool),
    ("enable_people_ui", Kind::Bool),
    ("enable_pip_ui", Kind::Bool),
    ("enable_emoji_reactions", Kind::Bool),
    ("enable_hand_raising", Kind::Bool),
    ("enable_prejoin_ui", Kind::Bool),
    ("enable_live_captions_ui", Kind::Bool),
    ("enable_network_ui", Kind::Bool),
    ("enable_noise_cancellation_ui", Kind::Bool),
    ("enable_breakout_rooms", Kind::Bool),
    ("enable_screenshare", Kind::Bool),
    ("enable_video_processing_ui", Kind::Bool),
    ("enable_chat", Kind::Bool),
    ("enable_advanced_chat", Kind::Bool),
    ("enable_shared_chat_history", Kind::Bool),
    ("start_video_off", Kind::Bool),
    ("start_audio_off", Kind::Bool),
    ("owner_only_broadcast", Kind::Bool),
    ("enable_recording", Kind::StrOrFalse(64)),
    ("enable_hidden_participants", Kind::Bool),
    ("enable_mesh_sfu", Kind::Bool),
    ("sfu_switchover", Kind::Number),
    ("experimental_optimize_large_calls", Kind::Bool),
    ("lang", Kind::Str(16)),
    ("meeting_join_hook", Kind::Str(2048)),
    ("geo", Kind::Str(64)),
    ("signaling_impl", Kind::Str(64)),
    ("enable_terse_logging", Kind::Bool),
    ("enable_transcription_storage", Kind::Bool),
    ("enable_dialout", Kind::Bool),
    ("sip", Kind::Object),
    ("sip_uri", Kind::Object),
    ("recordings_bucket", Kind::Object),
    ("transcription_bucket", Kind::Object),
    ("permissions", Kind::Permissions),
];

/// Domain settings (`POST /v1/`): Daily's domain properties that Gatehouse keeps. Those that
/// are also room properties ([`INHERITED`]) are the defaults a room takes when it is created
/// without them; the others (`hide_daily_branding`, `redirect_on_meeting_exit`,
/// `enable_opus_fec`, `batch_processor_bucket`) are the domain's own, stored and echoed.
const DOMAIN_ONLY: &[(&str, Kind)] = &[
    ("hide_daily_branding", Kind::Bool),
    ("redirect_on_meeting_exit", Kind::Str(2048)),
    ("enable_opus_fec", Kind::Bool),
    ("batch_processor_bucket", Kind::Object),
];

/// The room properties a domain setting gives a default for (Daily's list, as far as rooms
/// here have the property).
pub const INHERITED: &[&str] = &[
    "enable_people_ui",
    "enable_pip_ui",
    "enable_emoji_reactions",
    "enable_hand_raising",
    "enable_prejoin_ui",
    "enable_breakout_rooms",
    "enable_live_captions_ui",
    "enable_network_ui",
    "enable_noise_cancellation_ui",
    "enable_video_processing_ui",
    "enable_advanced_chat",
    "lang",
    "meeting_join_hook",
    "geo",
    "enable_terse_logging",
    "enable_transcription_storage",
    "transcription_bucket",
    "enable_mesh_sfu",
    "sfu_switchover",
    "enforce_unique_user_ids",
    "recordings_bucket",
    "permissions",
];

fn domain_kind(name: &str) -> Option<Kind> {
    match properties::kind_of(DOMAIN_ONLY, name) {
        Some(k) => Some(k),
        None if INHERITED.contains(&name) => properties::kind_of(PROPERTIES, name),
        None => None,
    }
}

/// Checks a domain settings patch: every name a domain property, every value well-typed;
/// `null` is kept and means "remove" (as in a room update).
pub fn validate_domain_patch(patch: &Map<String, Value>) -> Result<Map<String, Value>, PropertyError> {
    let mut out = Map::new();
    for (name, v) in patch {
        let kind = domain_kind(name).ok_or_else(|| PropertyError::Unknown(name.clone()))?;
        if !v.is_null() {
            properties::check(name, kind, v)?;
        }
        out.insert(name.clone(), v.clone());
    }
    Ok(out)
}

/// A new room's properties: what it was given, plus the domain's default for each inherited
/// property it was not given. Taken once, at creation: changing the domain later does not
/// change the rules of rooms that exist.
pub fn with_domain_defaults(mut config: Map<String, Value>, domain: &Map<String, Value>) -> Map<String, Value> {
    for (name, v) in domain {
        if INHERITED.contains(&name.as_str()) && !config.contains_key(name) {
            config.insert(name.clone(), v.clone());
        }
    }
    config
}

/// Checks a `properties` object for creation: every name known, every value well-typed, and
/// `nbf` before `exp`. `null` values are dropped (they mean "not set").
pub fn validate_properties(props: &Map<String, Value>) -> Result<Map<String, Value>, RoomError> {
    Ok(properties::validate(PROPERTIES, props, false)?)
}

/// Checks a patch (names and types; `null` is kept and means "remove"). The merge itself is
/// [`merge_properties`], run by the writer against the current room.
pub fn validate_patch(patch: &Map<String, Value>) -> Result<Map<String, Value>, RoomError> {
    Ok(properties::validate(PROPERTIES, patch, true)?)
}

/// Applies a validated patch: a `null` removes the property, anything else replaces it.
pub fn merge_properties(
    current: &Map<String, Value>,
    patch: &Map<String, Value>,
) -> Result<Map<String, Value>, RoomError> {
    let mut out = current.clone();
    for (name, v) in patch {
        if v.is_null() {
            out.remove(name);
        } else {
            out.insert(name.clone(), v.clone());
        }
    }
    properties::check_window(&out)?;
    Ok(out)
}

/// A room as the domain sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Room {
    pub id: uuid::Uuid,
    pub name: String,
    pub privacy: Privacy,
    pub created_ms: i64,
    pub api_created: bool,
    /// Only the properties that were set.
    pub config: Map<String, Value>,
}

impl Room {
    pub fn nbf(&self) -> Option<i64> {
        self.config.get("nbf").and_then(Value::as_i64)
    }

    pub fn exp(&self) -> Option<i64> {
        self.config.get("exp").and_then(Value::as_i64)
    }

    pub fn max_participants(&self) -> u64 {
        self.config.get("max_participants").and_then(Value::as_u64).unwrap_or(DEFAULT_MAX_PARTICIPANTS)
    }

    /// Expired at `now_secs` (check on read: no scheduler needed to make it so).
    pub fn is_expired(&self, now_secs: i64) -> bool {
        self.exp().is_some_and(|exp| now_secs >= exp)
    }

    /// Daily's room object (the API's answer, and the payload of room events).
    pub fn view(&self, public_url: &str) -> RoomView {
        RoomView {
            id: self.id.to_string(),
            name: self.name.clone(),
            api_created: self.api_created,
            privacy: match self.privacy {
                Privacy::Public => PrivacyName::Public,
                Privacy::Private => PrivacyName::Private,
            },
            url: format!("{}/{}", public_url.trim_end_matches('/'), self.name),
            created_at: crate::clock::rfc3339_ms(self.created_ms),
            config: self.config.clone(),
        }
    }

    pub fn to_json(&self, public_url: &str) -> Value {
        serde_json::to_value(self.view(public_url)).unwrap_or(Value::Null)
    }
}

/// Daily's room object.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
#[schemars(rename = "Room")]
pub struct RoomView {
    pub id: String,
    pub name: String,
    pub api_created: bool,
    pub privacy: PrivacyName,
    /// Where the room's page is.
    pub url: String,
    pub created_at: String,
    /// The room's properties (those it sets; the rest take their defaults).
    pub config: Map<String, Value>,
}

/// A room's privacy, as the API writes it.
#[derive(Debug, Clone, Copy, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(rename = "Privacy")]
pub enum PrivacyName {
    Public,
    Private,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn domain_settings_are_checked_and_only_room_properties_are_inherited() {
        let patch = obj(json!({"lang": "fi", "hide_daily_branding": true, "enforce_unique_user_ids": null}));
        assert_eq!(validate_domain_patch(&patch).unwrap(), patch, "null is kept: it removes a setting");
        for (bad, why) in [
            (json!({"exp": 5}), "unknown property 'exp'"),
            (json!({"max_participants": 5}), "unknown property 'max_participants'"),
            (json!({"hipaa": true}), "unknown property 'hipaa'"),
            (json!({"lang": 5}), "property 'lang'"),
        ] {
            let e = validate_domain_patch(&obj(bad.clone())).unwrap_err().to_string();
            assert!(e.starts_with(why), "{bad}: {e}");
        }
        // Every inherited name is a room property: a room can always be updated to undo it.
        for name in INHERITED {
            assert!(properties::kind_of(PROPERTIES, name).is_some(), "{name}");
        }
        let domain = obj(json!({"lang": "fi", "hide_daily_branding": true, "enable_pip_ui": true}));
        let room = with_domain_defaults(obj(json!({"enable_pip_ui": false, "max_participants": 3})), &domain);
        assert_eq!(Value::Object(room), json!({"enable_pip_ui": false, "max_participants": 3, "lang": "fi"}));
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn names() {
        assert!(validate_name("private-room-test").is_ok());
        assert!(validate_name(&"a".repeat(128)).is_ok());
        assert_eq!(validate_name(&"a".repeat(129)), Err(RoomError::BadName));
        assert_eq!(validate_name(""), Err(RoomError::BadName));
        assert_eq!(validate_name("a b"), Err(RoomError::BadName));
        assert_eq!(validate_name("é"), Err(RoomError::BadName));
        assert_eq!(validate_name("Dashboard"), Err(RoomError::ReservedName("Dashboard".into())));
    }

    #[test]
    fn random_names_are_20_lowercase_alnum() {
        let a = random_name();
        assert_eq!(a.len(), 20);
        assert!(a.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()));
        assert_ne!(a, random_name());
    }

    #[test]
    fn properties_are_typed() {
        let ok = json!({"exp": 1893456000, "max_participants": 4, "enable_chat": false, "enable_recording": "cloud", "lang": "fr", "permissions": {}});
        assert!(validate_properties(&obj(ok)).is_ok());
        assert_eq!(
            validate_properties(&obj(json!({"bogus": 1}))),
            Err(RoomError::Property(PropertyError::Unknown("bogus".into())))
        );
        assert!(validate_properties(&obj(json!({"exp": "soon"}))).is_err());
        assert!(validate_properties(&obj(json!({"exp": -1}))).is_err());
        assert!(validate_properties(&obj(json!({"exp": 1e300}))).is_err());
        assert!(validate_properties(&obj(json!({"max_participants": 0}))).is_err());
        assert!(validate_properties(&obj(json!({"nbf": 20, "exp": 10}))).is_err());
    }

    #[test]
    fn null_removes_in_a_patch() {
        let cur = obj(json!({"exp": 100, "enable_chat": true}));
        let patch = obj(json!({"exp": null, "max_participants": 3}));
        let patch = validate_patch(&patch).unwrap();
        let merged = merge_properties(&cur, &patch).unwrap();
        assert_eq!(Value::Object(merged), json!({"enable_chat": true, "max_participants": 3}));
    }
}
