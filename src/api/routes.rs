//! The route table: every operation the API answers, with its method and path pattern. It is
//! the one classifier of requests: the router dispatches on it, and the metric label and the
//! access log name a request by its route's pattern (`POST /v1/rooms/:name/join`), never by
//! its path, which may hold a room name, a session id or a token. A request no route matches is
//! labelled `unmatched`, so labels are a fixed set whatever clients send.
//!
//! Must not: call handlers; `api::dispatch` maps each [`Op`] to its handler.

use hyper::Method;

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
    /// `"<METHOD> <path>"`, e.g. `"GET /v1/rooms/:name"`.
    pub label: &'static str,
}

/// The label of a request no route matches (unknown path, or a known path with another method).
pub const UNMATCHED: &str = "unmatched";

macro_rules! routes {
    ($($method:ident $path:literal => $op:ident,)*) => {
        /// Every route, in matching order (the first route whose method and pattern fit wins).
        pub static ROUTES: &[Route] = &[
            $(Route { method: Method::$method, path: $path, op: Op::$op, label: concat!(stringify!($method), " ", $path) },)*
        ];
    };
}

routes! {
    GET "/healthz" => Healthz,
    GET "/readyz" => Readyz,
    GET "/metrics" => Metrics,
    GET "/v1/backup" => Backup,
    GET "/v1/openapi.json" => OpenApi,
    GET "/v1" => Domain,
    POST "/v1" => UpdateDomain,
    POST "/v1/batch/rooms" => BatchCreateRooms,
    DELETE "/v1/batch/rooms" => BatchDeleteRooms,
    GET "/v1/rooms" => ListRooms,
    POST "/v1/rooms" => CreateRoom,
    GET "/v1/rooms/:name" => GetRoom,
    POST "/v1/rooms/:name" => UpdateRoom,
    DELETE "/v1/rooms/:name" => DeleteRoom,
    POST "/v1/rooms/:name/join" => Join,
    POST "/v1/rooms/:name/pre-auth" => PreAuth,
    POST "/v1/rooms/:name/eject" => Eject,
    POST "/v1/rooms/:name/update-permissions" => UpdatePermissions,
    GET "/v1/rooms/:name/waiting-participants" => WaitingList,
    POST "/v1/rooms/:name/waiting-participants" => WaitingDecide,
    GET "/v1/rooms/:name/presence" => RoomPresence,
    POST "/v1/rooms/:name/send-app-message" => SendAppMessage,
    GET "/v1/rooms/:name/get-session-data" => GetSessionData,
    POST "/v1/rooms/:name/set-session-data" => SetSessionData,
    GET "/v1/rooms/:name/bans" => Bans,
    DELETE "/v1/rooms/:name/bans/:user_id" => LiftBan,
    GET "/v1/presence" => Presence,
    POST "/v1/sessions/:id/heartbeat" => Heartbeat,
    POST "/v1/sessions/:id/leave" => Leave,
    GET "/v1/sessions/:id/stream" => SessionStream,
    POST "/v1/meeting-tokens/revoke" => RevokeTokens,
    POST "/v1/meeting-tokens" => CreateToken,
    GET "/v1/meeting-tokens" => ListTokens,
    GET "/v1/meeting-tokens/:token" => ValidateToken,
    GET "/v1/events" => Events,
    GET "/v1/events/stream" => EventStream,
    POST "/v1/webhooks" => CreateWebhook,
    GET "/v1/webhooks" => ListWebhooks,
    GET "/v1/webhooks/:id" => GetWebhook,
    POST "/v1/webhooks/:id" => UpdateWebhook,
    DELETE "/v1/webhooks/:id" => DeleteWebhook,
    POST "/v1/webhooks/:id/replay" => ReplayWebhook,
    GET "/v1/webhooks/:id/attempts" => WebhookAttempts,
    GET "/v1/meetings" => ListMeetings,
    GET "/v1/meetings/:id" => GetMeeting,
    GET "/v1/meetings/:id/participants" => MeetingParticipants,
    POST "/v1/_test/clock" => TestClock,
    POST "/v1/_test/faults" => TestFaults,
    GET "/dashboard" => Dashboard,
    GET "/assets/:file" => Asset,
    GET "/:room" => RoomPage,
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
    for r in ROUTES.iter().filter(|r| enabled(r)) {
        let Some(params) = fit(r.path, &segs) else { continue };
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
fn fit(pattern: &str, segs: &[String]) -> Option<Vec<String>> {
    let parts: Vec<&str> = pattern.split('/').filter(|p| !p.is_empty()).collect();
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
