//! The route table: every operation the API answers, with its method and path pattern. It is
//! the one classifier of requests: the router dispatches on it, and the metric label and the
//! access log name a request by its route's pattern (`POST /v1/rooms/:name/join`), never by
//! its path, which may hold a room name, a session id or a token. A request no route matches is
//! labelled `unmatched`, so labels are a fixed set whatever clients send.
//!
//! Must not: call handlers; `api::dispatch` maps each [`Op`] to its handler.

use hyper::Method;

use super::requests as Q;
use super::responses as R;

/// What a route does. `api::dispatch` matches on it exhaustively.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Healthz,
    Readyz,
    Metrics,
    Backup,
    OpenApi,
    Domain,
    UpdateDomain,
    BatchCreateRooms,
    BatchDeleteRooms,
    ListRooms,
    CreateRoom,
    GetRoom,
    UpdateRoom,
    DeleteRoom,
    Join,
    PreAuth,
    Eject,
    UpdatePermissions,
    WaitingList,
    WaitingDecide,
    RoomPresence,
    SendAppMessage,
    GetSessionData,
    SetSessionData,
    Bans,
    LiftBan,
    Presence,
    Heartbeat,
    Leave,
    SessionStream,
    RevokeTokens,
    CreateToken,
    ListTokens,
    ValidateToken,
    Events,
    EventStream,
    CreateWebhook,
    ListWebhooks,
    GetWebhook,
    UpdateWebhook,
    DeleteWebhook,
    ReplayWebhook,
    WebhookAttempts,
    ListMeetings,
    GetMeeting,
    MeetingParticipants,
    /// `POST /v1/_test/clock`, routed only in `test-clock` builds.
    TestClock,
    /// `POST /v1/_test/faults`, routed only in `test-clock` builds.
    TestFaults,
    /// Janus's API relayed (`/janus...`), with `--janus-url`.
    Janus,
    /// `POST /v1/janus/events`: Janus's event handler posts here.
    JanusEvents,
    Dashboard,
    Asset,
    RoomPage,
}

/// One route: a method, a path pattern (`:name` segments match any one segment, in order
/// they become the handler's parameters), and the label metrics and logs use.
#[derive(Debug)]
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub op: Op,
    /// Who may call it.
    pub access: Access,
    /// What the OpenAPI document and the endpoint table of docs/API.md say of it.
    pub doc: Doc,
    /// `"<METHOD> <path>"`, e.g. `"GET /v1/rooms/:name"`.
    pub label: &'static str,
}

/// The routes a cluster follower answers from its replica while it is fresh (reads of the
/// state and the event log, and the pages); everything else is forwarded to the leader.
/// Session streams are not here: an open stream renews its session's lease, a write.
const REPLICA_READS: &[&str] = &[
    "GET /healthz",
    "GET /v1/openapi.json",
    "GET /v1",
    "GET /v1/rooms",
    "GET /v1/rooms/:name",
    "GET /v1/rooms/:name/waiting-participants",
    "GET /v1/rooms/:name/presence",
    "GET /v1/rooms/:name/get-session-data",
    "GET /v1/rooms/:name/bans",
    "GET /v1/presence",
    "GET /v1/meeting-tokens",
    "GET /v1/meeting-tokens/:token",
    "GET /v1/events",
    "GET /v1/events/stream",
    "GET /v1/webhooks",
    "GET /v1/webhooks/:id",
    "GET /v1/webhooks/:id/attempts",
    "GET /v1/meetings",
    "GET /v1/meetings/:id",
    "GET /v1/meetings/:id/participants",
    "GET /dashboard",
    "GET /assets/:file",
    "GET /:room",
];

/// Who may call a route. The router itself checks the API key for [`Access::ApiKey`] (and for
/// [`Access::Metrics`] unless `/metrics` is public) before the handler runs; the credentials
/// of the others (a meeting token, a session secret) are their handlers' to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: health, the OpenAPI document, the pages and their assets.
    Public,
    /// The API key.
    ApiKey,
    /// `/metrics`: the API key, unless the server runs with `--metrics-public`.
    Metrics,
    /// A participant about to join: a meeting token, or nothing (a public room).
    Participant,
    /// A session's secret (heartbeat, leave, its stream).
    Session,
    /// The API key, or a meeting token of the room that makes its holder an admin (eject,
    /// permissions, the lobby, room presence).
    ApiKeyOrParticipant,
    /// Janus's event handler: HTTP Basic authentication with the API key as the password (all
    /// Janus's sample event handler can send).
    JanusEventHandler,
}

impl Access {
    /// Whether a request must carry a bearer credential (the OpenAPI document's `security`).
    pub fn needs_bearer(self) -> bool {
        !matches!(self, Access::Public | Access::Participant)
    }

    /// Who, in words (the endpoint table of docs/API.md).
    pub fn who(self) -> &'static str {
        match self {
            Access::Public => "anyone",
            Access::ApiKey => "API key",
            Access::Metrics => "API key (unless `--metrics-public`)",
            Access::Participant => "a meeting token, or none (public room)",
            Access::Session => "the session's secret",
            Access::ApiKeyOrParticipant => "API key, or an admin token of the room",
            Access::JanusEventHandler => "Janus's event handler (HTTP Basic, the API key as password)",
        }
    }
}

/// What is said of a route: a summary, its request body and answers, its query parameters.
/// The OpenAPI document (`openapi.rs`) and the endpoint table of docs/API.md are made from it.
#[derive(Debug)]
pub struct Doc {
    pub summary: &'static str,
    /// The request body's type, if it takes one.
    pub body: Option<Schema>,
    pub answer: Answer,
    pub query: &'static [Param],
    /// Answers besides the success and the errors every authenticated call can give.
    pub also: &'static [Other],
}

/// What a route answers when it succeeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// JSON of this type.
    Json(Schema),
    /// `text/event-stream`.
    Sse,
    /// Prometheus text.
    Text,
    /// A backup file.
    Binary,
    /// HTML or a static asset: a page, not an API operation (left out of the OpenAPI document).
    Page,
    /// Another server's answer, relayed as it came (Janus's API: documented by Janus, left out
    /// of the OpenAPI document).
    Relayed,
    /// For another server's use (Janus's event handler), not an API operation (left out of
    /// the OpenAPI document).
    Hook,
    /// A test hook, routed only in `test-clock` builds and documented nowhere.
    Undocumented,
}

/// A query parameter.
#[derive(Debug, Clone, Copy)]
pub enum Param {
    Str(&'static str),
    Bool(&'static str),
    /// An integer at least this, at most that (if any).
    Int(&'static str, i64, Option<i64>),
}

const LIMIT_100: Param = Param::Int("limit", 1, Some(100));
const LIMIT_1000: Param = Param::Int("limit", 1, Some(1000));

/// A type a route reads or answers, as the OpenAPI document describes it: its name, and its
/// schema (a `$ref` to the document's components, which the generator collects).
#[derive(Clone, Copy)]
pub struct Schema {
    pub name: fn() -> std::borrow::Cow<'static, str>,
    pub generate: fn(&mut schemars::SchemaGenerator) -> schemars::Schema,
}

impl Schema {
    pub const fn of<T: schemars::JsonSchema + ?Sized>() -> Schema {
        Schema { name: T::schema_name, generate: schemars::SchemaGenerator::subschema_for::<T> }
    }

    pub fn name(&self) -> String {
        (self.name)().into_owned()
    }
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&(self.name)())
    }
}

impl PartialEq for Schema {
    fn eq(&self, other: &Schema) -> bool {
        (self.name)() == (other.name)()
    }
}

impl Eq for Schema {}

/// Another answer: status, when, and its type.
#[derive(Debug, Clone, Copy)]
pub struct Other {
    pub status: &'static str,
    pub when: &'static str,
    pub schema: Schema,
}

/// An error answer.
const fn error(status: &'static str, when: &'static str) -> Other {
    answer::<R::Error>(status, when)
}

/// An answer of its own type.
const fn answer<T: schemars::JsonSchema>(status: &'static str, when: &'static str) -> Other {
    Other { status, when, schema: Schema::of::<T>() }
}

/// A JSON answer of this type.
const fn json<T: schemars::JsonSchema + ?Sized>() -> Answer {
    Answer::Json(Schema::of::<T>())
}

const fn doc(summary: &'static str, answer: Answer) -> Doc {
    Doc { summary, body: None, answer, query: &[], also: &[] }
}

impl Doc {
    const fn body<T: schemars::JsonSchema>(self) -> Doc {
        Doc { body: Some(Schema::of::<T>()), ..self }
    }

    const fn query(self, query: &'static [Param]) -> Doc {
        Doc { query, ..self }
    }

    const fn also(self, also: &'static [Other]) -> Doc {
        Doc { also, ..self }
    }
}

impl Route {
    /// Whether a cluster follower may answer it from its replica (see [`REPLICA_READS`]).
    pub fn replica_reads(&self) -> bool {
        REPLICA_READS.contains(&self.label)
    }

    /// Whether the route declares an answer of type `name` with this status: its own on a 2xx,
    /// one it names for the status, or an error (which any call can give).
    pub fn declares(&self, status: u16, name: &str) -> bool {
        let is = |s: &Schema| (s.name)() == name;
        if self.doc.answer == Answer::Undocumented {
            return true; // a test hook
        }
        if (200..300).contains(&status) && matches!(&self.doc.answer, Answer::Json(s) if is(s)) {
            return true;
        }
        if self.doc.also.iter().any(|o| o.status.parse::<u16>() == Ok(status) && is(&o.schema)) {
            return true;
        }
        status >= 400 && name == <R::Error as schemars::JsonSchema>::schema_name()
    }
}

/// The label of a request no route matches (unknown path, or a known path with another method).
pub const UNMATCHED: &str = "unmatched";

macro_rules! routes {
    ($($method:ident $path:literal => $op:ident ($access:ident) $doc:expr,)*) => {
        /// Every route, in matching order (the first route whose method and pattern fit wins).
        pub static ROUTES: &[Route] = &[
            $(Route {
                method: Method::$method,
                path: $path,
                op: Op::$op,
                access: Access::$access,
                label: concat!(stringify!($method), " ", $path),
                doc: $doc,
            },)*
        ];
    };
}

routes! {
    GET "/healthz" => Healthz (Public) doc("Alive", json::<R::Health>()),
    GET "/readyz" => Readyz (Public)
        doc("Store open and writable, timers loaded", json::<R::Ready>()).also(&[answer::<R::Ready>("503", "not ready (the body says why)")]),
    GET "/metrics" => Metrics (Metrics) doc("Prometheus metrics (text)", Answer::Text),
    GET "/v1/backup" => Backup (ApiKey) doc("(ext) A consistent backup, streamed", Answer::Binary),
    GET "/v1/openapi.json" => OpenApi (Public) doc("This document", json::<R::Document>()),
    GET "/v1" => Domain (ApiKey) doc("The domain (its id is the `d` claim of tokens)", json::<R::Domain>()),
    POST "/v1" => UpdateDomain (ApiKey)
        doc("Change the domain settings (defaults for rooms created afterwards; null removes one)", json::<R::Domain>()).body::<Q::DomainWrite>(),
    POST "/v1/batch/rooms" => BatchCreateRooms (ApiKey)
        doc("Create up to 1,000 rooms, all or none", json::<R::BatchCreated>()).body::<Q::BatchRooms>(),
    DELETE "/v1/batch/rooms" => BatchDeleteRooms (ApiKey)
        doc("Delete up to 1,000 rooms, all or none", json::<R::BatchDeleted>()).body::<Q::BatchRoomNames>(),
    GET "/v1/rooms" => ListRooms (ApiKey)
        doc("List rooms, newest first", json::<R::RoomList>()).query(&[LIMIT_100, Param::Str("starting_after"), Param::Str("ending_before")]),
    POST "/v1/rooms" => CreateRoom (ApiKey) doc("Create a room (no name: a random one)", json::<R::Room>()).body::<Q::RoomWrite>(),
    GET "/v1/rooms/:name" => GetRoom (ApiKey) doc("Get a room", json::<R::Room>()),
    POST "/v1/rooms/:name" => UpdateRoom (ApiKey) doc("Update a room (null removes a property)", json::<R::Room>()).body::<Q::RoomUpdate>(),
    DELETE "/v1/rooms/:name" => DeleteRoom (ApiKey) doc("Delete a room (everyone present is ejected)", json::<R::RoomDeleted>()),
    POST "/v1/rooms/:name/join" => Join (Participant)
        doc("Join", json::<R::Joined>()).body::<Q::Join>().also(&[
            error("403", "refused: not-allowed, nbf-room, exp-room, nbf-token, exp-token, meeting-full, ejected"),
            error("429", "too many join attempts"),
        ]),
    POST "/v1/rooms/:name/pre-auth" => PreAuth (Participant)
        doc("(ext) What a join would get now: full, lobby (knock-to-join) or none", json::<R::Access>())
            .body::<Q::PreAuth>()
            .also(&[error("429", "too many join attempts")]),
    POST "/v1/rooms/:name/eject" => Eject (ApiKeyOrParticipant)
        doc("Eject sessions (an admin token may eject from its room)", json::<R::Ejected>())
            .body::<Q::Eject>()
            .also(&[error("403", "not allowed to eject")]),
    POST "/v1/rooms/:name/update-permissions" => UpdatePermissions (ApiKeyOrParticipant)
        doc("Update present participants' permissions", json::<R::PermissionsSent>())
            .body::<Q::UpdatePermissions>()
            .also(&[error("403", "not allowed")]),
    GET "/v1/rooms/:name/waiting-participants" => WaitingList (ApiKeyOrParticipant)
        doc("(ext) Who waits in the room's lobby", json::<R::WaitingList>())
            .also(&[error("403", "not allowed")]),
    POST "/v1/rooms/:name/waiting-participants" => WaitingDecide (ApiKeyOrParticipant)
        doc("(ext) Admit or deny waiting participants", json::<R::WaitingDecided>())
            .body::<Q::WaitingDecisions>()
            .also(&[error("403", "not allowed")]),
    GET "/v1/rooms/:name/presence" => RoomPresence (ApiKeyOrParticipant) doc("Who is in the room", json::<R::Presence>()),
    POST "/v1/rooms/:name/send-app-message" => SendAppMessage (ApiKey)
        doc("Send a message to the session streams of those in the call now (not stored)", json::<R::AppMessageSent>()).body::<Q::AppMessage>(),
    GET "/v1/rooms/:name/get-session-data" => GetSessionData (ApiKey) doc("The running meeting's session data", json::<R::SessionData>()),
    POST "/v1/rooms/:name/set-session-data" => SetSessionData (ApiKey)
        doc("Set the running meeting's session data (replace or shallow-merge)", json::<R::SessionDataSet>()).body::<Q::SetSessionData>(),
    GET "/v1/rooms/:name/bans" => Bans (ApiKey)
        doc("(ext) Bans of the room in force, in user id order, a page at a time", json::<R::BanList>())
            .query(&[LIMIT_1000, Param::Str("starting_after")]),
    DELETE "/v1/rooms/:name/bans/:user_id" => LiftBan (ApiKey) doc("(ext) Lift a ban", json::<R::BanLifted>()),
    GET "/v1/presence" => Presence (ApiKey) doc("Everyone present, by room", json::<R::PresenceByRoom>()),
    POST "/v1/sessions/:id/heartbeat" => Heartbeat (Session) doc("Keep a session's lease", json::<R::Lease>()),
    POST "/v1/sessions/:id/leave" => Leave (Session) doc("Leave", json::<R::Left>()),
    GET "/v1/sessions/:id/stream" => SessionStream (Session)
        doc("SSE: presence changes and this session's end", Answer::Sse),
    POST "/v1/meeting-tokens/revoke" => RevokeTokens (ApiKey) doc("(ext) Revoke tokens", json::<R::Revoked>()).body::<Q::Revoke>(),
    POST "/v1/meeting-tokens" => CreateToken (ApiKey) doc("Create a meeting token", json::<R::TokenResponse>()).body::<Q::TokenRequest>(),
    GET "/v1/meeting-tokens" => ListTokens (ApiKey)
        doc("(ext) Issued tokens", json::<R::TokenList>()).query(&[LIMIT_100, Param::Str("room_name"), Param::Str("starting_after")]),
    GET "/v1/meeting-tokens/:token" => ValidateToken (ApiKey)
        doc("Validate a token", json::<R::TokenCheck>()).query(&[Param::Bool("ignoreNbf"), Param::Bool("verbose")]),
    GET "/v1/events" => Events (ApiKey)
        doc("The durable event log", json::<R::Events>())
            .query(&[Param::Int("after", 0, None), LIMIT_1000, Param::Str("types"), Param::Int("wait", 0, Some(60))])
            .also(&[error("410", "position older than the retained log")]),
    GET "/v1/events/stream" => EventStream (ApiKey)
        doc("SSE of the event log", Answer::Sse)
            .query(&[Param::Int("after", 0, None), Param::Str("types")])
            .also(&[error("410", "position older than the retained log")]),
    POST "/v1/webhooks" => CreateWebhook (ApiKey)
        doc("Create a webhook (the URL must answer a test POST with 2xx)", json::<R::Webhook>()).body::<Q::WebhookWrite>(),
    GET "/v1/webhooks" => ListWebhooks (ApiKey) doc("List webhooks", json::<Vec<R::Webhook>>()),
    GET "/v1/webhooks/:id" => GetWebhook (ApiKey) doc("Get a webhook", json::<R::Webhook>()),
    POST "/v1/webhooks/:id" => UpdateWebhook (ApiKey) doc("Update and re-activate a webhook", json::<R::Webhook>()).body::<Q::WebhookWrite>(),
    DELETE "/v1/webhooks/:id" => DeleteWebhook (ApiKey) doc("Delete a webhook", json::<R::WebhookDeleted>()),
    POST "/v1/webhooks/:id/replay" => ReplayWebhook (ApiKey)
        doc("(ext) Move the cursor back", json::<R::Webhook>()).body::<Q::Replay>().also(&[error("410", "position older than the retained log")]),
    GET "/v1/webhooks/:id/attempts" => WebhookAttempts (ApiKey) doc("(ext) Failed attempts", json::<R::WebhookAttempts>()),
    GET "/v1/meetings" => ListMeetings (ApiKey)
        doc("Meetings, newest first", json::<R::MeetingList>()).query(&[
            Param::Str("room"),
            Param::Int("timeframe_start", 0, None),
            Param::Int("timeframe_end", 0, None),
            Param::Bool("ongoing"),
            Param::Bool("no_participants"),
            LIMIT_100,
            Param::Str("starting_after"),
            Param::Str("ending_before"),
        ]),
    GET "/v1/meetings/:id" => GetMeeting (ApiKey) doc("A meeting", json::<R::Meeting>()),
    GET "/v1/meetings/:id/participants" => MeetingParticipants (ApiKey)
        doc("A meeting's participants, in join order", json::<R::MeetingParticipants>())
            .query(&[LIMIT_1000, Param::Str("joined_after"), Param::Str("joined_before")]),
    POST "/v1/_test/clock" => TestClock (ApiKey) doc("Move the server's clock (test builds only)", Answer::Undocumented),
    POST "/v1/_test/faults" => TestFaults (ApiKey) doc("Inject store faults (test builds only)", Answer::Undocumented),
    POST "/janus" => Janus (Public) doc("(ext) Janus's API, relayed (with `--janus-url`): a new Janus session", Answer::Relayed),
    GET "/janus/:session" => Janus (Public)
        doc("(ext) Janus's API, relayed: `info`, or a session's long-poll for events", Answer::Relayed),
    POST "/janus/:session" => Janus (Public) doc("(ext) Janus's API, relayed: a request to a Janus session", Answer::Relayed),
    POST "/janus/:session/:handle" => Janus (Public)
        doc("(ext) Janus's API, relayed: a request to a plugin handle (VideoRoom)", Answer::Relayed),
    POST "/v1/janus/events" => JanusEvents (JanusEventHandler)
        doc("(ext) Janus's event handler posts its events here (with `--janus-url`): media state", Answer::Hook),
    GET "/dashboard" => Dashboard (Public) doc("The dashboard (HTML; it asks for the API key)", Answer::Page),
    GET "/assets/:file" => Asset (Public) doc("The pages' scripts and styles", Answer::Page),
    GET "/:room" => RoomPage (Public) doc("The room page (HTML)", Answer::Page),
}

/// The endpoint table of docs/API.md, from the route table (`tests/api_doc.rs` keeps the two
/// equal): every route but the test hooks, with who may call it and what it does.
pub fn endpoint_table() -> String {
    let mut out = String::from("| endpoint | who | what |\n|---|---|---|\n");
    for r in ROUTES.iter().filter(|r| r.doc.answer != Answer::Undocumented) {
        out.push_str(&format!("| `{}` | {} | {} |\n", r.label, r.access.who(), r.doc.summary));
    }
    out
}

impl Route {
    /// The route's first parameter is a room name (`/v1/rooms/:name...`).
    pub fn names_a_room(&self) -> bool {
        self.path.starts_with("/v1/rooms/:name")
    }
}

/// Why no route answers a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// No pattern fits the path.
    NotFound,
    /// Patterns fit, for these other methods (the `Allow` header).
    Method(&'static str),
    /// A path segment is not valid UTF-8 once percent-decoded, or holds a control character or
    /// a bidirectional control (`properties::is_unsafe_char`): no name or id has one, and
    /// nothing that does gets as far as a handler, a log line or the event log.
    BadPath,
}

/// Whether a route is served by this build.
fn enabled(r: &Route) -> bool {
    !matches!(r.op, Op::TestClock | Op::TestFaults) || cfg!(feature = "test-clock")
}

/// The route for a request, with its decoded path parameters in pattern order.
pub fn find(method: &Method, path: &str) -> Result<(&'static Route, Vec<String>), Miss> {
    let segs = segments(path).ok_or(Miss::BadPath)?;
    let mut allowed: Vec<&'static str> = Vec::new();
    for (r, parts) in ROUTES.iter().zip(PARTS.iter()).filter(|(r, _)| enabled(r)) {
        let Some(params) = fit(parts, &segs) else { continue };
        if r.method == method {
            return Ok((r, params));
        }
        if !allowed.contains(&r.method.as_str()) {
            allowed.push(r.method.as_str());
        }
    }
    match allowed.as_slice() {
        [] => Err(Miss::NotFound),
        // The room page (`GET /:room`) fits every one-segment path: that is not a reason for 405.
        ["GET"] if segs.len() == 1 && !ROUTES.iter().any(|r| r.path.trim_start_matches('/') == segs[0]) => {
            Err(Miss::NotFound)
        }
        list => Err(Miss::Method(allow_header(list))),
    }
}

/// The `Allow` value for a set of methods, from a fixed list (so it can be `'static`).
fn allow_header(methods: &[&str]) -> &'static str {
    let has = |m: &str| methods.contains(&m);
    match (has("GET"), has("POST"), has("DELETE")) {
        (true, true, true) => "GET, POST, DELETE",
        (true, true, false) => "GET, POST",
        (true, false, true) => "GET, DELETE",
        (false, true, true) => "POST, DELETE",
        (false, true, false) => "POST",
        (false, false, true) => "DELETE",
        _ => "GET",
    }
}

/// The parameters if `pattern` fits the segments.
/// Each route's pattern split into segments once (in [`ROUTES`]' order): every request tries
/// most of the table.
static PARTS: std::sync::LazyLock<Vec<Vec<&'static str>>> =
    std::sync::LazyLock::new(|| ROUTES.iter().map(|r| r.path.split('/').filter(|p| !p.is_empty()).collect()).collect());

/// The parameters if the pattern's segments fit the path's; nothing is allocated for a route
/// that does not.
fn fit(parts: &[&str], segs: &[String]) -> Option<Vec<String>> {
    if parts.len() != segs.len() {
        return None;
    }
    let mut params = Vec::new();
    for (part, seg) in parts.iter().zip(segs) {
        if part.starts_with(':') {
            params.push(seg.clone());
        } else if part != seg {
            return None;
        }
    }
    Some(params)
}

/// The path split into percent-decoded segments; `None` when one is not valid UTF-8 or holds
/// a character no name may have.
fn segments(path: &str) -> Option<Vec<String>> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let decoded = percent_encoding::percent_decode_str(s).decode_utf8().ok()?;
            (!decoded.chars().any(crate::properties::is_unsafe_char)).then(|| decoded.into_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(label: &str) -> &'static Route {
        ROUTES.iter().find(|r| r.label == label).unwrap()
    }

    /// A follower answers from its replica only routes that exist and only read.
    #[test]
    fn replica_reads_are_declared_gets() {
        for label in REPLICA_READS {
            assert_eq!(route(label).method, Method::GET, "{label}");
        }
        assert!(!route("GET /v1/sessions/:id/stream").replica_reads(), "renews a lease");
        assert!(!route("POST /v1/rooms").replica_reads());
    }

    /// What the router's debug check (`api::as_declared`) accepts of an answer.
    #[test]
    fn a_route_declares_its_answer_its_other_answers_and_errors_only() {
        let name = |s: Schema| s.name();
        let room = name(Schema::of::<R::Room>());
        assert!(route("GET /v1/rooms/:name").declares(200, &room));
        assert!(!route("GET /v1/rooms/:name").declares(200, &name(Schema::of::<R::RoomList>())));
        assert!(!route("GET /v1/rooms").declares(200, &room));
        let error = name(Schema::of::<R::Error>());
        assert!(route("GET /v1/rooms/:name").declares(404, &error));
        assert!(!route("GET /v1/rooms/:name").declares(200, &error), "an error is no success");
        let ready = name(Schema::of::<R::Ready>());
        assert!(route("GET /readyz").declares(503, &ready), "declared with also()");
        assert!(!route("GET /readyz").declares(500, &ready));
        assert!(route("GET /v1/webhooks").declares(200, &name(Schema::of::<Vec<R::Webhook>>())));
        assert!(route("POST /v1/_test/clock").declares(200, "AnyValue"), "test hooks are undocumented");
    }

    /// Every JSON answer and body a route declares is a schema of the document, derived from
    /// its type; nothing is left that the routes do not name but the permissions object.
    #[test]
    fn the_documents_schemas_are_the_declared_types() {
        let doc = super::super::openapi::document();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for r in ROUTES {
            let declared = [r.doc.body, if let Answer::Json(s) = r.doc.answer { Some(s) } else { None }];
            for s in declared.into_iter().flatten().chain(r.doc.also.iter().map(|o| o.schema)) {
                let n = s.name();
                assert!(
                    schemas.contains_key(&n) || n.starts_with("Array_of_"),
                    "{}: {n} is not in the document",
                    r.label
                );
            }
        }
        assert!(!schemas.contains_key("Object"), "no hand-written catch-all schema is left");
    }

    #[test]
    fn finds_routes_and_parameters() {
        let (r, p) = find(&Method::POST, "/v1/rooms/a%20b/join").unwrap();
        assert_eq!((r.op, r.label, p), (Op::Join, "POST /v1/rooms/:name/join", vec!["a b".to_string()]));
        let (r, _) = find(&Method::POST, "/v1/meeting-tokens/revoke").unwrap();
        assert_eq!(r.op, Op::RevokeTokens);
        let (r, p) = find(&Method::GET, "/v1/meeting-tokens/eyJ.x.y").unwrap();
        assert_eq!((r.label, p[0].as_str()), ("GET /v1/meeting-tokens/:token", "eyJ.x.y"));
        assert_eq!(find(&Method::PUT, "/v1/rooms/x").unwrap_err(), Miss::Method("GET, POST, DELETE"));
        assert_eq!(find(&Method::GET, "/v1/rooms/x/join").unwrap_err(), Miss::Method("POST"));
        assert_eq!(find(&Method::GET, "/v1/meeting-tokens/a/b").unwrap_err(), Miss::NotFound);
        assert_eq!(find(&Method::POST, "/some-room").unwrap_err(), Miss::NotFound);
        assert_eq!(find(&Method::POST, "/healthz").unwrap_err(), Miss::Method("GET"));
        assert_eq!(find(&Method::GET, "/v1/rooms/%ff").unwrap_err(), Miss::BadPath);
        for odd in ["x%0aevent:%20evil", "x%00y", "x%E2%80%AEy", "%C2%85", "x%7f"] {
            assert_eq!(find(&Method::POST, &format!("/v1/rooms/{odd}/join")).unwrap_err(), Miss::BadPath, "{odd}");
        }
        assert!(find(&Method::POST, "/v1/rooms/x/join").unwrap().0.names_a_room());
        assert!(!find(&Method::GET, "/v1/rooms").unwrap().0.names_a_room());
    }

    #[test]
    fn labels_are_patterns() {
        for r in ROUTES {
            assert!(r.label.starts_with(r.method.as_str()) && r.label.ends_with(r.path), "{r:?}");
        }
    }
}
