//! Who may call each route is declared once, in the route table (`routes::Access`), and the
//! server holds every route to it: a route declared for the API key answers 401 to a request
//! without one or with a wrong one, before its handler looks at anything else; public routes
//! never ask for it; and the OpenAPI document agrees.

mod common;
use common::Server;
use gatehouse::api::routes::{Access, Op, ROUTES};

/// A path that fits the route's pattern (names and ids that exist nowhere).
fn concrete(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|seg| match seg {
            ":name" | ":room" => "some-room",
            ":file" => "room.js",
            s if s.starts_with(':') => "x",
            s => s,
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn every_route_declared_for_the_api_key_refuses_without_it() {
    let s = Server::start();
    let mut checked = 0;
    for r in ROUTES.iter().filter(|r| matches!(r.access, Access::ApiKey | Access::Metrics | Access::JanusEventHandler))
    {
        let path = concrete(r.path);
        let body = (r.method != "GET").then_some("{}");
        for auth in [None, Some("0123456789abcdef0123456789abcdef")] {
            let reply = s.call(r.method.as_str(), &path, auth, body);
            assert_eq!(reply.status, 401, "{} without the key ({auth:?}): {}", r.label, reply.text);
            assert_eq!(reply.body["error"], "authentication-error", "{}", r.label);
        }
        checked += 1;
    }
    assert!(checked >= 35, "{checked} routes");
    // The refusal comes before anything else: nothing was created, no event logged.
    assert_eq!(s.events().len(), 0);
    assert_eq!(s.get("/v1/rooms").body["total_count"], 0);
}

#[test]
fn public_and_participant_routes_do_not_ask_for_the_api_key() {
    let s = Server::start();
    for r in ROUTES.iter().filter(|r| matches!(r.access, Access::Public)) {
        let reply = s.call(r.method.as_str(), &concrete(r.path), None, None);
        assert_ne!(reply.status, 401, "{}: {}", r.label, reply.text);
    }
    // A participant route checks its own credential: a join into a public room needs none.
    s.create_room(serde_json::json!({"name": "open"}));
    assert_eq!(s.call("POST", "/v1/rooms/open/join", None, Some("{}")).status, 200);
}

#[test]
fn the_openapi_document_asks_for_a_bearer_wherever_a_route_needs_the_key() {
    let s = Server::start();
    let doc = s.get("/v1/openapi.json").body;
    let mut compared = 0;
    for r in ROUTES.iter().filter(|r| !matches!(r.op, Op::TestClock | Op::TestFaults)) {
        let path = r
            .path
            .split('/')
            .map(|seg| seg.strip_prefix(':').map_or(seg.to_string(), |p| format!("{{{p}}}")))
            .collect::<Vec<_>>()
            .join("/");
        let path = if path == "/v1" { "/v1/".to_string() } else { path };
        let Some(op) = doc["paths"][&path].get(r.method.as_str().to_lowercase()) else {
            continue; // pages and assets are not API operations
        };
        // A bearer credential is required: the API key, or (participant routes) a token or a
        // session secret, which the document cannot tell apart and the handlers check.
        let wants_bearer = op["security"].as_array().is_some_and(|s| !s.is_empty());
        match r.access {
            Access::ApiKey | Access::Metrics => assert!(wants_bearer, "{} is declared {:?}", r.label, r.access),
            Access::Public => assert!(!wants_bearer, "{} is declared public", r.label),
            Access::Session => assert!(wants_bearer, "{} takes a session secret", r.label),
            Access::Participant | Access::ApiKeyOrParticipant => {}
            // Janus's event handler's endpoint is no API operation (not in the document).
            Access::JanusEventHandler => {}
        }
        compared += 1;
    }
    assert!(compared >= 45, "{compared} operations compared");
}
