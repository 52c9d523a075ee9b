//! What the endpoints answer: one type per JSON answer. A handler builds its answer as one of
//! these and `wire::ok` serializes it; the route table declares the same type
//! (`json::<T>()`), the OpenAPI document's answer schemas are derived from it (schemars), and
//! in debug builds the router checks that what a handler answered is what its route declares.
//! Where Daily's object is free-form (a room's `config`, a token's claims, permissions, an
//! event's payload) the field is an open JSON object.
//!
//! The presence lists and event pages are written straight to bytes (no intermediate values);
//! their types here ([`Presence`], [`PresenceByRoom`], [`Events`]) describe those bytes (the
//! entries are the same [`PresenceEntry`] the writers serialize), and their handlers mark
//! the answer with the type (`wire::answered`), which schemathesis then holds to its schema.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Map, Value};

pub use super::presence::PresenceEntry;
pub use crate::rooms::RoomView as Room;
pub use crate::sessions::SessionView;

/// An open JSON object.
pub type Object = Map<String, Value>;

/// The same string every time (`"sent"`, `"true"`): its schema is that one value.
macro_rules! word {
    ($name:ident, $text:literal) => {
        #[derive(Debug, Clone, Copy, Serialize, JsonSchema, PartialEq, Eq)]
        pub enum $name {
            #[serde(rename = $text)]
            Is,
        }
    };
}
word!(Sent, "sent");
word!(TrueText, "true");
word!(OkText, "ok");

/// An error: a kind (`not-found`, `invalid-request-error`, ...) and what went wrong; some
/// errors add fields (a 410's `oldest_seq` and `head_seq`).
#[derive(Debug, Serialize, JsonSchema)]
pub struct Error {
    pub error: String,
    pub info: String,
    #[serde(flatten)]
    pub extra: Object,
}

/// `GET /healthz`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Health {
    pub status: OkText,
}

/// `GET /readyz` (200 when ready, 503 with the reason when not).
#[derive(Debug, Serialize, JsonSchema)]
pub struct Ready {
    pub ready: bool,
    pub store_writable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The OpenAPI document itself.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct Document(#[schemars(with = "Object")] pub Value);

/// `GET` / `POST /v1/`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Domain {
    pub domain_id: String,
    pub domain_name: String,
    /// The domain settings rooms inherit.
    pub config: Object,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct RoomList {
    pub total_count: u64,
    pub data: Vec<Room>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct BatchCreated {
    pub data: Vec<Room>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct BatchDeleted {
    pub deleted_count: u64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct RoomDeleted {
    pub deleted: bool,
    pub name: String,
}

/// A level of access: `full` (in the call), `lobby` (waiting to be let in), `none`.
#[derive(Debug, Clone, Copy, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Full,
    Lobby,
    None,
}

#[derive(Debug, Clone, Copy, Serialize, JsonSchema)]
pub struct AccessLevel {
    pub level: Level,
}

/// A join: admitted (`access.level` `full`) or waiting in the lobby (`lobby`, with
/// `awaitingAccess`). The secret authenticates the session's heartbeats, leave and stream.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Joined {
    #[serde(flatten)]
    pub session: SessionView,
    pub session_secret: String,
    pub lease_seconds: i64,
    pub access: AccessLevel,
    #[serde(rename = "awaitingAccess", skip_serializing_if = "Option::is_none")]
    pub awaiting_access: Option<AccessLevel>,
    /// With a Janus media server: how to connect to the call's media (admitted joins only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub janus: Option<crate::janus::Credential>,
}

/// `POST /v1/rooms/:name/pre-auth`: what a join would get now, and why not when `none`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Access {
    pub room: String,
    pub access: AccessLevel,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Ejected {
    #[serde(rename = "ejectedIds")]
    pub ejected_ids: Vec<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct PermissionsSent {
    pub status: Sent,
    pub updated: Vec<String>,
}

/// Someone waiting in a room's lobby.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Waiting {
    pub id: String,
    pub name: String,
    pub user_id: Option<String>,
    pub joined_at: i64,
    #[serde(rename = "awaitingAccess")]
    pub awaiting_access: AccessLevel,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct WaitingList {
    pub total_count: u64,
    pub data: Vec<Waiting>,
}

/// A lobby decision that could not be carried out (the room is full, the user is banned...).
#[derive(Debug, Serialize, JsonSchema)]
pub struct Refused {
    pub id: String,
    pub error: String,
    pub info: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct WaitingDecided {
    pub ids: Vec<String>,
    pub granted: Vec<String>,
    pub denied: Vec<String>,
    pub refused: Vec<Refused>,
}

/// `GET /v1/rooms/:name/presence` (written straight to bytes by `presence.rs`).
#[derive(Serialize, JsonSchema)]
pub struct Presence<'a> {
    pub total_count: u64,
    pub data: Vec<PresenceEntry<'a>>,
}

/// `GET /v1/presence`: everyone present, by room (written straight to bytes).
#[derive(Serialize, JsonSchema)]
#[serde(transparent)]
pub struct PresenceByRoom<'a>(pub BTreeMap<String, Vec<PresenceEntry<'a>>>);

#[derive(Debug, Serialize, JsonSchema)]
pub struct AppMessageSent {
    pub sent: TrueText,
    pub recipients: u64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SessionData {
    pub data: Object,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SessionDataSet {
    pub sent: TrueText,
    pub data: Object,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Ban {
    pub user_id: String,
    /// Unix seconds; `null`: for as long as the room exists.
    pub until: Option<i64>,
    pub created_at: String,
    pub by: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct BanList {
    pub total_count: u64,
    pub data: Vec<Ban>,
    pub has_more: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct BanLifted {
    pub deleted: bool,
    pub room: String,
    pub user_id: String,
}

/// A heartbeat: the session's lease now runs until then (unix seconds).
#[derive(Debug, Serialize, JsonSchema)]
pub struct Lease {
    pub lease_until: i64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Left {
    pub left: bool,
    pub session_id: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Revoked {
    pub revoked: bool,
    #[serde(rename = "ejectedIds")]
    pub ejected_ids: Vec<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TokenResponse {
    pub token: String,
}

/// An issued token's metadata (never the token itself). Fields in alphabetical order: the
/// `meeting-token.created` event's payload is this, serialized as it is, and stored payloads
/// have always had sorted keys.
#[derive(Debug, Serialize, JsonSchema)]
pub struct TokenInfo {
    pub created_at: String,
    pub exp: Option<i64>,
    pub is_owner: bool,
    pub jti: String,
    pub kid: String,
    pub nbf: Option<i64>,
    pub room: Option<String>,
    pub room_name: Option<String>,
    pub user_id: Option<String>,
    pub user_name: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct TokenList {
    pub data: Vec<TokenInfo>,
    pub has_more: bool,
}

/// `GET /v1/meeting-tokens/:token`: the token's properties as Daily names them (with
/// `verbose`, its `status` too: `valid`, `expired`, `revoked`, `banned`, ...).
#[derive(Debug, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct TokenCheck(pub Object);

/// `GET /v1/events` (the stored envelopes spliced in as they are, by `events.rs`).
#[derive(Debug, Serialize, JsonSchema)]
pub struct Events {
    pub data: Vec<Object>,
    pub next_after: u64,
    pub has_more: bool,
    pub head_seq: u64,
}

/// Daily's webhook object, plus the cursor and delivery counts.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    pub uuid: String,
    pub url: String,
    pub hmac: String,
    pub basic_auth: Option<String>,
    #[schemars(with = "RetryType")]
    pub retry_type: String,
    pub event_types: Vec<String>,
    #[schemars(with = "WebhookState")]
    pub state: String,
    pub failed_count: u32,
    pub last_moment_pushed: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub cursor: u64,
    pub successes: u64,
    pub failures: u64,
    pub events_lost_before: Option<u64>,
}

#[derive(Debug, Clone, Copy, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RetryType {
    CircuitBreaker,
    Exponential,
}

#[derive(Debug, Clone, Copy, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum WebhookState {
    Active,
    Failed,
    Inactive,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct WebhookDeleted {
    pub deleted: bool,
    pub uuid: String,
}

/// A failed delivery attempt.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Attempt {
    pub seq: u64,
    pub at: String,
    /// HTTP status, or 0 when there was no response.
    pub status: u16,
    pub duration_ms: u64,
    /// The start of the response body, or the transport error.
    pub detail: String,
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookAttempts {
    pub uuid: String,
    #[schemars(with = "WebhookState")]
    pub state: String,
    pub successes: u64,
    pub failed_count: u32,
    pub cursor: u64,
    pub data: Vec<Attempt>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct MeetingParticipant {
    pub participant_id: String,
    pub user_id: Option<String>,
    pub user_name: Option<String>,
    pub join_time: i64,
    pub duration: i64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Meeting {
    pub id: String,
    pub room: String,
    pub start_time: i64,
    pub duration: i64,
    pub ongoing: bool,
    pub max_participants: u64,
    /// In lists, unless `no_participants` (at most the first 100).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub participants: Option<Vec<MeetingParticipant>>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct MeetingList {
    pub total_count: u64,
    pub data: Vec<Meeting>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct MeetingParticipants {
    pub total_count: u64,
    pub data: Vec<MeetingParticipant>,
}
