//! Events: the types, Daily's envelope, and how a stored event is rendered. The log itself
//! lives in the store (written by the writer in the same transaction as the change).
//!
//! Must not: touch sled, or put a secret (API key, token, session secret) in a payload.

use serde_json::Value;

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

/// Every event type the API documents (`types=` filters are checked against it). Producers
/// name one; the journal, the log and the wire carry [`EventKind::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    RoomCreated,
    RoomUpdated,
    RoomDeleted,
    RoomExpired,
    MeetingStarted,
    MeetingEnded,
    ParticipantJoined,
    ParticipantLeft,
    /// Daily's clients see someone leave, not who removed them or why.
    ParticipantEjected,
    ParticipantJoinDenied,
    ParticipantUpdated,
    /// (ext) A participant's media went up or down in Janus (`--janus-url`).
    ParticipantMedia,
    /// A meeting's session data changed (`set-session-data`); synced to everyone in the call (Daily's
    /// clients hear of it as `meeting-session-state-updated`).
    MeetingSessionDataUpdated,
    WaitingParticipantJoined,
    WaitingParticipantLeft,
    /// Names someone who has not joined (maybe never visibly).
    MeetingTokenCreated,
    MeetingTokenRevoked,
    BanCreated,
    BanRemoved,
    WebhookFailed,
    WebhookCreated,
    WebhookUpdated,
    WebhookDeleted,
    /// (ext) The domain settings changed (`POST /v1/`); Daily has no such event.
    DomainUpdated,
}

impl EventKind {
    pub const ALL: [EventKind; 24] = [
        EventKind::RoomCreated,
        EventKind::RoomUpdated,
        EventKind::RoomDeleted,
        EventKind::RoomExpired,
        EventKind::MeetingStarted,
        EventKind::MeetingEnded,
        EventKind::ParticipantJoined,
        EventKind::ParticipantLeft,
        EventKind::ParticipantEjected,
        EventKind::ParticipantJoinDenied,
        EventKind::ParticipantUpdated,
        EventKind::ParticipantMedia,
        EventKind::MeetingSessionDataUpdated,
        EventKind::WaitingParticipantJoined,
        EventKind::WaitingParticipantLeft,
        EventKind::MeetingTokenCreated,
        EventKind::MeetingTokenRevoked,
        EventKind::BanCreated,
        EventKind::BanRemoved,
        EventKind::WebhookFailed,
        EventKind::WebhookCreated,
        EventKind::WebhookUpdated,
        EventKind::WebhookDeleted,
        EventKind::DomainUpdated,
    ];

    /// The type's name, as Daily spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::RoomCreated => "room.created",
            EventKind::RoomUpdated => "room.updated",
            EventKind::RoomDeleted => "room.deleted",
            EventKind::RoomExpired => "room.expired",
            EventKind::MeetingStarted => "meeting.started",
            EventKind::MeetingEnded => "meeting.ended",
            EventKind::ParticipantJoined => "participant.joined",
            EventKind::ParticipantLeft => "participant.left",
            EventKind::ParticipantEjected => "participant.ejected",
            EventKind::ParticipantJoinDenied => "participant.join-denied",
            EventKind::ParticipantUpdated => "participant.updated",
            EventKind::ParticipantMedia => "participant.media",
            EventKind::MeetingSessionDataUpdated => "meeting-session-data.updated",
            EventKind::WaitingParticipantJoined => "waiting-participant.joined",
            EventKind::WaitingParticipantLeft => "waiting-participant.left",
            EventKind::MeetingTokenCreated => "meeting-token.created",
            EventKind::MeetingTokenRevoked => "meeting-token.revoked",
            EventKind::BanCreated => "ban.created",
            EventKind::BanRemoved => "ban.removed",
            EventKind::WebhookFailed => "webhook.failed",
            EventKind::WebhookCreated => "webhook.created",
            EventKind::WebhookUpdated => "webhook.updated",
            EventKind::WebhookDeleted => "webhook.deleted",
            EventKind::DomainUpdated => "domain.updated",
        }
    }

    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Who sees events of this kind on session streams: everyone in the room sees what Daily's
    /// clients see of the call; tokens, refusals, knocks, ejections, bans, webhooks and the
    /// domain are for the room's admins.
    pub fn audience(self) -> Audience {
        match self {
            EventKind::RoomCreated
            | EventKind::RoomUpdated
            | EventKind::RoomDeleted
            | EventKind::RoomExpired
            | EventKind::MeetingStarted
            | EventKind::MeetingEnded
            | EventKind::ParticipantJoined
            | EventKind::ParticipantLeft
            | EventKind::ParticipantUpdated
            | EventKind::ParticipantMedia
            | EventKind::MeetingSessionDataUpdated => Audience::Room,
            _ => Audience::Admins,
        }
    }
}

/// Whether `kind` is an event type the API documents.
pub fn is_known(kind: &str) -> bool {
    EventKind::parse(kind).is_some()
}

/// Who sees events of `kind` on session streams; a kind that is not an [`EventKind`] is for
/// admins only.
pub fn audience(kind: &str) -> Audience {
    audience_of(EventKind::parse(kind))
}

/// [`audience`] of a kind already parsed (`None`: not an [`EventKind`], admins only).
pub fn audience_of(kind: Option<EventKind>) -> Audience {
    kind.map_or(Audience::Admins, EventKind::audience)
}

/// An event a command wants logged, its payload already written as JSON (by the request's
/// own task, not the writer, which is one thread for every write); the writer gives it its
/// sequence number and time.
#[derive(Debug)]
pub struct NewEvent {
    pub kind: EventKind,
    pub payload: Box<serde_json::value::RawValue>,
    /// The payload's `room`, which routes the event to the room's streams.
    pub room: Option<String>,
}

impl NewEvent {
    pub fn new(
        kind: EventKind,
        payload: &impl serde::Serialize,
        room: Option<String>,
    ) -> Result<Self, serde_json::Error> {
        Ok(NewEvent { kind, payload: serde_json::value::to_raw_value(payload)?, room })
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

/// The envelope exactly as it is stored, returned and delivered. Its fields are in the order
/// the first releases wrote them (a JSON object's keys sorted); the payload is borrowed, not
/// copied into a new value (the writer renders every event).
pub fn render<P: serde::Serialize + ?Sized>(domain8: &str, seq: u64, kind: &str, payload: &P, ts_ms: i64) -> String {
    #[derive(serde::Serialize)]
    struct Envelope<'a, P: ?Sized> {
        event_ts: f64,
        id: String,
        payload: &'a P,
        seq: u64,
        #[serde(rename = "type")]
        kind: &'a str,
        version: &'static str,
    }
    let env =
        Envelope { event_ts: ts_ms as f64 / 1000.0, id: event_id(domain8, seq), payload, seq, kind, version: "1.0.0" };
    // A JSON value's keys are strings and the rest are numbers and text: writing it to a
    // string cannot fail.
    serde_json::to_string(&env).expect("an event envelope always serializes")
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

    /// The envelope is byte for byte what the first releases stored (a `json!` value's text).
    #[test]
    fn the_envelope_keeps_its_stored_form() {
        let payload = serde_json::json!({"room": "r\"1", "n": 2, "nested": {"b": [1, null], "a": "é"}});
        let old = serde_json::json!({
            "version": "1.0.0",
            "type": "room.created",
            "id": event_id("abcd1234", 7),
            "seq": 7,
            "payload": payload,
            "event_ts": 1_700_000_000_123i64 as f64 / 1000.0,
        })
        .to_string();
        assert_eq!(render("abcd1234", 7, "room.created", &payload, 1_700_000_000_123), old);
        let raw = serde_json::value::to_raw_value(&payload).unwrap();
        assert_eq!(
            render("abcd1234", 7, "room.created", &*raw, 1_700_000_000_123),
            old,
            "a payload written beforehand"
        );
    }

    /// Issue 24, item 3: every kind has the audience written in ARCHITECTURE.md; a kind added
    /// to [`EventKind`] without being placed here fails, so nobody adds one without deciding.
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
            "participant.media",
            "meeting-session-data.updated",
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
            "domain.updated",
        ];
        assert_eq!(EventKind::ALL.len(), room.len() + admins.len(), "a kind without a stated audience");
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k), "{k:?}");
        }
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
        let s = render("abcd1234", 7, EventKind::RoomCreated.as_str(), &serde_json::json!({"room": "r"}), 1_500);
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["id"], "evt_abcd1234_7");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["version"], "1.0.0");
        assert_eq!(v["event_ts"], 1.5);
        assert_eq!(v["payload"]["room"], "r");
    }
}
