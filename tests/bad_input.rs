//! Hostile and malformed input: every case gets a clear 4xx with `info`, never a 500 or a
//! panic, and secrets are never echoed.

mod common;
use common::{raw, Server, KEY};
use serde_json::json;

fn assert_error(r: &common::Reply, status: u16, kind: &str, word: &str) {
    assert_eq!(r.status, status, "{}", r.text);
    assert_eq!(r.body["error"], kind, "{}", r.text);
    let info = r.body["info"].as_str().unwrap_or("");
    assert!(info.to_lowercase().contains(&word.to_lowercase()), "info {info:?} lacks {word:?}");
}

#[test]
fn malformed_json_and_wrong_types() {
    let s = Server::start();
    let r = s.call("POST", "/v1/rooms", Some(KEY), Some("{\"name\": "));
    assert_error(&r, 400, "json-parsing-error", "not valid JSON");
    let r = s.call("POST", "/v1/rooms", Some(KEY), Some("[1,2]"));
    assert_error(&r, 400, "invalid-request-error", "object");
    let r = s.call("POST", "/v1/rooms", Some(KEY), Some("\"str\""));
    assert_error(&r, 400, "invalid-request-error", "object");
    let r = s.call("POST", "/v1/meeting-tokens", Some(KEY), Some(r#"{"properties": "all"}"#));
    assert_error(&r, 400, "invalid-request-error", "properties");
    let r = s.call("POST", "/v1/rooms", Some(KEY), Some(r#"{"properties": {"max_participants": 1e400}}"#));
    assert_eq!(r.status, 400, "{}", r.text);
    let r = s.call("POST", "/v1/rooms", Some(KEY), Some(r#"{"properties": {"exp": 123456789012345678901234567890}}"#));
    assert_error(&r, 400, "invalid-request-error", "exp");
    let r = s.call("POST", "/v1/rooms", Some(KEY), Some(r#"{"properties": {"nbf": -1700000000}}"#));
    assert_error(&r, 400, "invalid-request-error", "nbf");
    // A body that is not UTF-8 at all.
    let resp = raw(
        &s.base,
        &[
            b"POST /v1/rooms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ".as_slice(),
            KEY.as_bytes(),
            b"\r\nContent-Length: 3\r\nConnection: close\r\n\r\n\xff\xfe\xfd",
        ]
        .concat(),
    );
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(resp.contains("json-parsing-error"), "{resp}");
}

#[test]
fn oversized_bodies_get_413() {
    let s = Server::start();
    let big = json!({"name": "x", "properties": {"lang": "a".repeat(70 * 1024)}}).to_string();
    let r = s.call("POST", "/v1/rooms", Some(KEY), Some(&big));
    assert_error(&r, 413, "invalid-request-error", "larger than 65536");
    // Chunked, with no Content-Length to refuse up front.
    let chunk = "a".repeat(40_000);
    let mut req = format!("POST /v1/rooms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    for _ in 0..3 {
        req.push_str(&format!("{:x}\r\n{chunk}\r\n", chunk.len()));
    }
    req.push_str("0\r\n\r\n");
    let resp = raw(&s.base, req.as_bytes());
    assert!(resp.starts_with("HTTP/1.1 413"), "{}", &resp[..resp.len().min(200)]);
    // Just under the limit is fine (and is then a validation error, not a size error).
    let ok_size = json!({"properties": {"lang": "a".repeat(60 * 1024)}}).to_string();
    assert_eq!(s.call("POST", "/v1/rooms", Some(KEY), Some(&ok_size)).status, 400);
}

#[test]
fn authorization_missing_malformed_or_wrong() {
    let s = Server::start();
    for path in ["/v1/", "/v1/rooms", "/v1/events", "/v1/meeting-tokens"] {
        let r = s.call("GET", path, None, None);
        assert_error(&r, 401, "authentication-error", "missing");
    }
    let r = s.call("GET", "/v1/rooms", Some("not-the-key"), None);
    assert_error(&r, 401, "authentication-error", "not valid");
    assert!(!r.text.contains("not-the-key"));
    let r = common::call_url("GET", &s.url("/v1/rooms"), None, None, &[("Authorization", &format!("Basic {KEY}"))]);
    assert_error(&r, 400, "authorization-header-error", "Bearer");
    assert!(!r.text.contains(KEY));
    let r = common::call_url("GET", &s.url("/v1/rooms"), None, None, &[("Authorization", "Bearer")]);
    assert_error(&r, 400, "authorization-header-error", "Bearer");
    let resp = raw(
        &s.base,
        b"GET /v1/rooms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xff\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    // A prefix of the real key is not the key.
    let r = s.call("GET", "/v1/rooms", Some(&KEY[..32]), None);
    assert_eq!(r.status, 401);
}

#[test]
fn paths_routes_and_methods() {
    let s = Server::start();
    let resp = raw(
        &s.base,
        format!("GET /v1/rooms/%FF%FE HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(resp.contains("UTF-8"), "{resp}");
    let r = s.get("/v1/nothing-here");
    assert_error(&r, 404, "not-found", "route");
    let r = s.call("PUT", "/v1/rooms", Some(KEY), Some("{}"));
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, POST"));
    let r = s.get(&format!("/v1/rooms/{}", "x".repeat(5000)));
    assert_eq!(r.status, 404);
    let r = s.get("/v1/rooms?limit=-1");
    assert_error(&r, 400, "invalid-request-error", "limit");
    let r = s.get("/v1/events?after=18446744073709551616");
    assert_error(&r, 400, "invalid-request-error", "after");
    let r = s.get("/v1/events?types=room.created,nope");
    assert_error(&r, 400, "invalid-request-error", "nope");
    let r = s.get("/v1/meeting-tokens/x?verbose=maybe");
    assert_error(&r, 400, "invalid-request-error", "verbose");
    let h = s.call("GET", "/healthz", None, None);
    assert_eq!(h.status, 200);
    let r = s.call("GET", "/readyz", None, None);
    assert_eq!((r.status, r.body["ready"].as_bool()), (200, Some(true)));
}

#[test]
fn no_request_ever_gets_a_500() {
    let s = Server::start();
    let bodies = [
        "",
        "{}",
        "null",
        "0",
        "{\"name\":null}",
        "{\"privacy\":null,\"properties\":null}",
        "{\"properties\":{\"exp\":null}}",
        "{\"name\":\"\\u0000\"}",
        "{\"a\":{\"b\":{\"c\":[[[[[[[[[[[]]]]]]]]]]]}}",
        "{\"properties\":{\"sfu_switchover\":1e308}}",
    ];
    for path in ["/v1/rooms", "/v1/rooms/r", "/v1/meeting-tokens", "/v1/rooms/r/join"] {
        for b in bodies {
            let r = s.call("POST", path, Some(KEY), Some(b));
            assert!(r.status < 500, "{path} {b}: {}", r.text);
        }
    }
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let r = s.call("POST", "/v1/rooms", Some(KEY), Some(&deep));
    assert_error(&r, 400, "json-parsing-error", "JSON");
    assert!(!s.log().contains("panicked"));
}

/// Issue 24, item 8: a name in a path with control characters, NUL or a bidi override is
/// refused before anything is logged; names that cannot be rooms never reach the event log.
#[test]
fn odd_names_in_paths_are_refused_before_anything_is_logged() {
    let s = Server::start();
    s.create_room(json!({"name": "fine"}));
    let odd = ["x%0aevent:%20evil", "x%00y", "x%E2%80%AEevil", "x%1b%5b31m", "x%0d%0aevil", "evil%C2%85x", "a%20evil"];
    let routes = [
        ("POST", "/v1/rooms/{}/join"),
        ("POST", "/v1/rooms/{}/pre-auth"),
        ("POST", "/v1/rooms/{}/eject"),
        ("POST", "/v1/rooms/{}/update-permissions"),
        ("GET", "/v1/rooms/{}/waiting-participants"),
        ("POST", "/v1/rooms/{}/waiting-participants"),
        ("GET", "/v1/rooms/{}/presence"),
        ("GET", "/v1/rooms/{}/bans"),
        ("DELETE", "/v1/rooms/fine/bans/{}"),
        ("DELETE", "/v1/rooms/{}/bans/someone"),
        ("GET", "/v1/rooms/{}"),
        ("POST", "/v1/rooms/{}"),
        ("DELETE", "/v1/rooms/{}"),
        ("GET", "/{}"),
    ];
    for name in odd {
        for (method, pattern) in routes {
            let path = pattern.replace("{}", name);
            let resp = raw(
                &s.base,
                format!(
                    "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
                )
                .as_bytes(),
            );
            assert!(resp.starts_with("HTTP/1.1 400") || resp.starts_with("HTTP/1.1 404"), "{method} {path}: {resp}");
        }
    }
    let log = serde_json::to_string(&s.events()).unwrap();
    assert!(!log.contains("evil") && !log.contains("x\\u0000y"), "an odd name reached the event log: {log}");
    assert!(s.events_of("participant.join-denied").is_empty());
    assert!(!s.log().contains("evil"), "an odd name reached the log");
}
