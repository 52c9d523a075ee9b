//! Events: the types, Daily's envelope, and how a stored event is rendered. The log itself
//! lives in the store (written by the writer in the same transaction as the change).
//!
//! Must not: touch sled, or put a secret (API key, token, session secret) in a payload.

use serde_json::Value;

pub const ROOM_CREATED: &str = "room.created";
pub const ROOM_UPDATED: &str = "room.updated";
pub const ROOM_DELETED: &str = "room.deleted";
pub const ROOM_EXPIRED: &str = "room.expired";
pub const MEETING_TOKEN_CREATED: &str = "meeting-token.created";
pub const MEETING_TOKEN_REVOKED: &str = "meeting-token.revoked";
pub const MEETING_STARTED: &str = "meeting.started";
pub const MEETING_ENDED: &str = "meeting.ended";
pub const PARTICIPANT_JOINED: &str = "participant.joined";
pub const PARTICIPANT_LEFT: &str = "participant.left";
pub const PARTICIPANT_EJECTED: &str = "participant.ejected";
pub const PARTICIPANT_JOIN_DENIED: &str = "participant.join-denied";
pub const BAN_CREATED: &str = "ban.created";
pub const BAN_REMOVED: &str = "ban.removed";
pub const WEBHOOK_FAILED: &str = "webhook.failed";
pub const WEBHOOK_CREATED: &str = "webhook.created";
pub const WEBHOOK_UPDATED: &str = "webhook.updated";
pub const WEBHOOK_DELETED: &str = "webhook.deleted";
pub const WAITING_PARTICIPANT_JOINED: &str = "waiting-participant.joined";
pub const WAITING_PARTICIPANT_LEFT: &str = "waiting-participant.left";
pub const PARTICIPANT_UPDATED: &str = "participant.updated";

/// Who sees an event of a kind on the session streams of its room (ARCHITECTURE.md,
/// "Session streams"). Whatever the audience, an event about a session also reaches that
/// session's own stream (its ejection, its departure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Everyone in the room: what Daily's clients see of the call (who comes, goes and
    /// changes, the room's own changes). Events about participants hidden from presence still
    /// go to admins only.
    Room,
    /// The room's admins only (owners, `canAdmin: participants`): tokens, refusals, knocks,
    /// ejections, bans, webhooks.
    Admins,
}

/// Every event type the API documents (`types=` filters are checked against it), with its
/// audience on session streams.
pub const KINDS: &[(&str, Audience)] = &[
    (ROOM_CREATED, Audience::Room),
    (ROOM_UPDATED, Audience::Room),
    (ROOM_DELETED, Audience::Room),
    (ROOM_EXPIRED, Audience::Room),
    (MEETING_STARTED, Audience::Room),
    (MEETING_ENDED, Audience::Room),
    (PARTICIPANT_JOINED, Audience::Room),
    (PARTICIPANT_LEFT, Audience::Room),
    // Daily's clients see someone leave, not who removed them or why.
    (PARTICIPANT_EJECTED, Audience::Admins),
    (PARTICIPANT_JOIN_DENIED, Audience::Admins),
    (PARTICIPANT_UPDATED, Audience::Room),
    (WAITING_PARTICIPANT_JOINED, Audience::Admins),
    (WAITING_PARTICIPANT_LEFT, Audience::Admins),
    // Names someone who has not joined (maybe never visibly).
    (MEETING_TOKEN_CREATED, Audience::Admins),
    (MEETING_TOKEN_REVOKED, Audience::Admins),
    (BAN_CREATED, Audience::Admins),
    (BAN_REMOVED, Audience::Admins),
    (WEBHOOK_FAILED, Audience::Admins),
    (WEBHOOK_CREATED, Audience::Admins),
    (WEBHOOK_UPDATED, Audience::Admins),
    (WEBHOOK_DELETED, Audience::Admins),
];

/// Whether `kind` is an event type the API documents.
pub fn is_known(kind: &str) -> bool {
    KINDS.iter().any(|(k, _)| *k == kind)
}

/// Who sees events of `kind` on session streams; a kind not in [`KINDS`] is for admins only.
pub fn audience(kind: &str) -> Audience {
    KINDS.iter().find(|(k, _)| *k == kind).map_or(Audience::Admins, |(_, a)| *a)
}

/// An event a command wants logged; the writer gives it its sequence number and time.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: &'static str,
    pub payload: Value,
}

impl NewEvent {
    pub fn new(kind: &'static str, payload: Value) -> Self {
        NewEvent { kind, payload }
    }
}

/// `evt_<first 8 hex of the domain id>_<seq>`: unique even if a data dir is reset, because
/// a new data dir gets a new domain id.
pub fn event_id(domain8: &str, seq: u64) -> String {
    format!("evt_{domain8}_{seq}")
}

/// The first 8 hex digits of a domain id, as event ids carry them.
pub fn domain8(domain_id: &uuid::Uuid) -> String {
    domain_id.simple().to_string().chars().take(8).collect()
}

/// The envelope exactly as it is stored, returned and delivered.
pub fn render(domain8: &str, seq: u64, kind: &str, payload: &Value, ts_ms: i64) -> String {
    let env = serde_json::json!({
        "version": "1.0.0",
        "type": kind,
        "id": event_id(domain8, seq),
        "seq": seq,
        "payload": payload,
        "event_ts": ts_ms as f64 / 1000.0,
    });
    env.to_string()
}

/// `room.*` payloads: the room object's fields plus `room` (the name).
pub fn room_payload(room_json: &Value) -> Value {
    let mut p = room_json.clone();
    if let (Some(obj), Some(name)) = (p.as_object_mut(), room_json.get("name").cloned()) {
        obj.insert("room".into(), name);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 24, item 3: every kind has the audience written in ARCHITECTURE.md; a kind added
    /// to [`KINDS`] without being placed here fails, so nobody adds one without deciding.
    #[test]
    fn every_kind_has_its_stated_audience() {
        let room = [
            "room.created",
            "room.updated",
            "room.deleted",
            "room.expired",
            "meeting.started",
            "meeting.ended",
            "participant.joined",
            "participant.left",
            "participant.updated",
        ];
        let admins = [
            "participant.ejected",
            "participant.join-denied",
            "waiting-participant.joined",
            "waiting-participant.left",
            "meeting-token.created",
            "meeting-token.revoked",
            "ban.created",
            "ban.removed",
            "webhook.failed",
            "webhook.created",
            "webhook.updated",
            "webhook.deleted",
        ];
        assert_eq!(KINDS.len(), room.len() + admins.len(), "a kind without a stated audience");
        for k in room {
            assert_eq!(audience(k), Audience::Room, "{k}");
        }
        for k in admins {
            assert_eq!(audience(k), Audience::Admins, "{k}");
        }
        assert_eq!(audience("something.new"), Audience::Admins, "unknown kinds fail closed");
        assert!(is_known("ban.created") && !is_known("nope"));
    }

    #[test]
    fn envelope_shape() {
        let s = render("abcd1234", 7, ROOM_CREATED, &serde_json::json!({"room": "r"}), 1_500);
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["id"], "evt_abcd1234_7");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["version"], "1.0.0");
        assert_eq!(v["event_ts"], 1.5);
        assert_eq!(v["payload"]["room"], "r");
    }
}
