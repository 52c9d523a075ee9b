//! On-disk records: their own versioned types (never the API's JSON types), encoded with
//! bincode 2 behind a leading version byte. A record that fails to decode is an error naming
//! the tree and key, never a panic.
//!
//! Must not: change a field of a released version in place. A new shape is a new version byte
//! with a decoder for the old one kept beside it.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::StoreError;

pub const ROOM_V1: u8 = 1;
pub const TOKEN_V1: u8 = 1;
pub const EVENT_V1: u8 = 1;
/// Version 1 (schema 1): read only by the migration.
pub const SESSION_V1: u8 = 1;
pub const SESSION_V2: u8 = 2;
pub const BAN_V1: u8 = 1;
pub const REVOCATION_V1: u8 = 1;
/// Version 1 (schema 1): read and converted on the fly.
pub const WEBHOOK_V1: u8 = 1;
pub const WEBHOOK_V2: u8 = 2;
pub const ATTEMPT_V1: u8 = 1;
pub const MEETING_V1: u8 = 1;
pub const MEETING_PARTICIPANT_V1: u8 = 1;
pub const OBJECT_V1: u8 = 1;

/// A free-form JSON object, as text (bincode cannot decode free-form JSON): the domain
/// settings (`meta`), a running meeting's session data (`v2/meetings`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectRecord {
    pub json: String,
}

pub fn encode_object(map: &serde_json::Map<String, serde_json::Value>) -> Result<Vec<u8>, StoreError> {
    encode(OBJECT_V1, &ObjectRecord { json: serde_json::Value::Object(map.clone()).to_string() })
}

/// An [`ObjectRecord`]'s object; no record is an empty object.
pub fn decode_object(
    tree: &'static str,
    key: &[u8],
    bytes: Option<&[u8]>,
) -> Result<serde_json::Map<String, serde_json::Value>, StoreError> {
    let Some(bytes) = bytes else { return Ok(serde_json::Map::new()) };
    let rec: ObjectRecord = decode(tree, key, OBJECT_V1, bytes)?;
    serde_json::from_str(&rec.json).map_err(|e| StoreError::Corrupt {
        tree,
        key: super::keys::printable(key),
        why: format!("not a JSON object: {e}"),
    })
}

/// A meeting session: from the first present join into an empty room to the last departure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeetingRecord {
    /// UUIDv7, so key order is start order.
    pub id: String,
    pub room: String,
    pub start_ms: i64,
    /// `None` while it goes on.
    pub end_ms: Option<i64>,
    /// Most people present at once.
    pub max_participants: u64,
}

/// One session's part in a meeting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeetingParticipantRecord {
    /// The session id (Daily's `participant_id`).
    pub participant_id: String,
    pub user_id: Option<String>,
    pub user_name: Option<String>,
    pub join_ms: i64,
    /// `None` while present.
    pub leave_ms: Option<i64>,
}

/// A webhook subscription with its delivery cursor and failure counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookRecord {
    pub uuid: String,
    pub url: String,
    /// Base64 of the signing secret (Daily's `hmac`).
    pub hmac: String,
    pub basic_auth: Option<String>,
    /// "circuit-breaker" or "exponential".
    pub retry_type: String,
    /// Empty = every type.
    pub event_types: Vec<String>,
    /// "ACTIVE", "FAILED" or "INACTIVE".
    pub state: String,
    /// Consecutive failed attempts.
    pub failed_count: u32,
    /// Highest seq delivered (or skipped as not matching).
    pub cursor: u64,
    pub last_pushed_ms: Option<i64>,
    pub first_failure_ms: Option<i64>,
    pub successes: u64,
    /// Failed attempts, all time.
    pub failures: u64,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// Set when the log was compacted past this webhook's cursor: events before this seq were
    /// never delivered to it.
    pub lost_before: Option<u64>,
    /// Bumped by every change made through the API (update, replay): a delivery worker's report
    /// made before one is dropped, even when the cursor happens to be where it was.
    pub version: u64,
}

/// Schema 1's webhook record (no `version`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookRecordV1 {
    pub uuid: String,
    pub url: String,
    pub hmac: String,
    pub basic_auth: Option<String>,
    pub retry_type: String,
    pub event_types: Vec<String>,
    pub state: String,
    pub failed_count: u32,
    pub cursor: u64,
    pub last_pushed_ms: Option<i64>,
    pub first_failure_ms: Option<i64>,
    pub successes: u64,
    pub failures: u64,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub lost_before: Option<u64>,
}

/// A webhook record of either version.
pub fn decode_webhook(key: &[u8], bytes: &[u8]) -> Result<WebhookRecord, StoreError> {
    if bytes.first() == Some(&WEBHOOK_V1) {
        let w: WebhookRecordV1 = decode("webhooks", key, WEBHOOK_V1, bytes)?;
        return Ok(WebhookRecord {
            uuid: w.uuid,
            url: w.url,
            hmac: w.hmac,
            basic_auth: w.basic_auth,
            retry_type: w.retry_type,
            event_types: w.event_types,
            state: w.state,
            failed_count: w.failed_count,
            cursor: w.cursor,
            last_pushed_ms: w.last_pushed_ms,
            first_failure_ms: w.first_failure_ms,
            successes: w.successes,
            failures: w.failures,
            created_ms: w.created_ms,
            updated_ms: w.updated_ms,
            lost_before: w.lost_before,
            version: 0,
        });
    }
    decode("webhooks", key, WEBHOOK_V2, bytes)
}

/// One failed delivery attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub seq: u64,
    pub at_ms: i64,
    /// HTTP status, or 0 when there was no response.
    pub status: u16,
    pub duration_ms: u64,
    /// What went wrong: the start of the response body, or the transport error.
    pub detail: String,
}

/// A live participant session. Ended sessions are deleted (their story is in the event log).
/// The writer keeps every live session in memory as well; this record is what a restart
/// rebuilds it from (there are no index trees: the indexes are in memory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: String,
    /// SHA-256 of the session secret; the secret itself is never stored.
    pub secret_digest: [u8; 32],
    pub room: String,
    pub user_id: Option<String>,
    pub user_name: Option<String>,
    pub owner: bool,
    /// `jti`, or `sha256:<hex>` for tokens without one.
    pub token_id: Option<String>,
    pub token_iat: Option<f64>,
    pub token_exp: Option<f64>,
    pub joined_ms: i64,
    /// When the session is over by check-on-read (its own deadline or the room's expiry).
    pub eject_at_ms: Option<i64>,
    pub eject_reason: Option<String>,
    /// The session's own ejection timer (`eject_at_ms` without the room's expiry, which the
    /// room's timer enforces for everyone at once).
    pub eject_timer_ms: Option<i64>,
    pub permissions_json: Option<String>,
    pub meeting_id: String,
    pub meeting_start_ms: i64,
    /// The room's ejection settings apply to this session (its token set none).
    pub room_rules: bool,
    /// Knocking: waiting in the lobby, not (yet) present.
    pub waiting: bool,
}

/// Schema 1's session record, read only by the migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecordV1 {
    pub id: String,
    /// SHA-256 of the session secret; the secret itself is never stored.
    pub secret_digest: [u8; 32],
    pub room: String,
    pub user_id: Option<String>,
    pub user_name: Option<String>,
    pub owner: bool,
    /// `jti`, or `sha256:<hex>` for tokens without one.
    pub token_id: Option<String>,
    pub token_iat: Option<f64>,
    pub token_exp: Option<f64>,
    pub joined_ms: i64,
    pub eject_at_ms: Option<i64>,
    pub eject_reason: Option<String>,
    pub permissions_json: Option<String>,
    pub meeting_id: String,
    pub meeting_start_ms: i64,
    /// The room's ejection settings apply to this session (its token set none).
    pub room_rules: bool,
}

/// A ban of one user id from one room name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BanRecord {
    /// Unix ms; `None` = until lifted.
    pub until_ms: Option<i64>,
    pub created_ms: i64,
    pub by: String,
}

/// A revocation: of one token (until it would have expired anyway), or of every token for a
/// room (and user) issued before a time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevocationRecord {
    /// Unix ms after which the revocation no longer matters; `None` = forever.
    pub until_ms: Option<i64>,
    /// For room-wide and room+user revocations: tokens with `iat` before this (or without `iat`).
    pub issued_before_s: Option<f64>,
    pub created_ms: i64,
}

/// A room. `config_json` is the JSON object of set properties, kept as text because bincode
/// cannot decode free-form JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomRecord {
    pub id: [u8; 16],
    pub name: String,
    /// 0 public, 1 private.
    pub private: bool,
    pub created_ms: i64,
    pub api_created: bool,
    pub config_json: String,
}

/// An issued meeting token's metadata (never the JWT itself).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub jti: String,
    /// `kid` of the signing key.
    pub kid: String,
    pub room: Option<String>,
    pub user_id: Option<String>,
    pub user_name: Option<String>,
    pub is_owner: bool,
    pub nbf: Option<i64>,
    pub exp: Option<i64>,
    pub created_ms: i64,
}

/// Schema 1's event record (events lived in sled then), read only by the migration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub kind: String,
    pub ts_ms: i64,
    pub envelope: String,
}

pub fn encode<T: Serialize>(version: u8, value: &T) -> Result<Vec<u8>, StoreError> {
    let mut out = vec![version];
    bincode::serde::encode_into_std_write(value, &mut out, bincode::config::standard())
        .map_err(|e| StoreError::Encode(e.to_string()))?;
    Ok(out)
}

pub fn decode<T: DeserializeOwned>(tree: &'static str, key: &[u8], version: u8, bytes: &[u8]) -> Result<T, StoreError> {
    let corrupt = |why: String| StoreError::Corrupt { tree, key: super::keys::printable(key), why };
    let (v, body) = bytes.split_first().ok_or_else(|| corrupt("empty record".into()))?;
    if *v != version {
        return Err(corrupt(format!("record version {v}, this build reads {version}")));
    }
    let (value, used) =
        bincode::serde::decode_from_slice(body, bincode::config::standard()).map_err(|e| corrupt(e.to_string()))?;
    if used != body.len() {
        return Err(corrupt(format!("{} trailing bytes", body.len() - used)));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let r = TokenRecord {
            jti: "j".into(),
            kid: "k".into(),
            room: None,
            user_id: Some("u".into()),
            user_name: None,
            is_owner: true,
            nbf: None,
            exp: Some(5),
            created_ms: 1,
        };
        let bytes = encode(TOKEN_V1, &r).unwrap();
        assert_eq!(decode::<TokenRecord>("tokens", b"j", TOKEN_V1, &bytes).unwrap(), r);
        assert!(decode::<TokenRecord>("tokens", b"j", 2, &bytes).is_err());
        assert!(decode::<TokenRecord>("tokens", b"j", TOKEN_V1, &bytes[..3]).is_err());
        assert!(decode::<TokenRecord>("tokens", b"j", TOKEN_V1, &[]).is_err());
    }
}
