//! Joining, presence, sessions and leases, black-box, with time moved by the test clock.

mod common;
use common::{Server, KEY};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

fn offline(claims: Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(KEY.as_bytes()).unwrap())
        .unwrap()
}

fn assert_denied(r: &common::Reply, status: u16, error: &str) {
    assert_eq!(r.status, status, "{}", r.text);
    assert_eq!(r.body["error"], error, "{}", r.text);
}

#[test]
fn public_join_presence_and_leave() {
    let s = Server::start();
    s.create_room(json!({"name": "pub"}));
    let r = s.join("pub", None, Some("Ann"));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["user_id"], Value::Null);
    assert_eq!(r.body["user_name"], "Ann");
    assert_eq!(r.body["owner"], false);
    assert_eq!(r.body["will_eject_at"], Value::Null);
    assert_eq!(r.body["session_secret"].as_str().unwrap().len(), 64);
    let id = r.body["session_id"].as_str().unwrap().to_string();
    let secret = r.body["session_secret"].as_str().unwrap().to_string();

    let p = s.get("/v1/rooms/pub/presence").body;
    assert_eq!(p["total_count"], 1);
    assert_eq!(p["data"][0]["id"], id.as_str());
    assert_eq!(p["data"][0]["userName"], "Ann");
    assert_eq!(p["data"][0]["room"], "pub");
    assert!(p["data"][0]["joinTime"].as_str().unwrap().ends_with('Z'));
    assert_eq!(s.get("/v1/presence").body["pub"][0]["id"], id.as_str());

    let l = s.call("POST", &format!("/v1/sessions/{id}/leave"), Some(&secret), None);
    assert_eq!(l.status, 200, "{}", l.text);
    assert_eq!(s.get("/v1/rooms/pub/presence").body["total_count"], 0);
    let types: Vec<String> = s.events().iter().map(|e| e["type"].as_str().unwrap().to_string()).collect();
    assert_eq!(types, ["room.created", "meeting.started", "participant.joined", "participant.left", "meeting.ended"]);
    let left = s.events_of("participant.left");
    assert_eq!(left[0]["payload"]["reason"], "left");
    let started = &s.events_of("meeting.started")[0]["payload"];
    assert_eq!(s.events_of("meeting.ended")[0]["payload"]["meeting_id"], started["meeting_id"]);
    // Nothing in the log carries the secret.
    assert!(!serde_json::to_string(&s.events()).unwrap().contains(&secret));
}

#[test]
fn private_room_needs_a_token() {
    let s = Server::start();
    s.create_room(json!({"name": "private-room-test", "privacy": "private"}));
    let r = s.join("private-room-test", None, None);
    assert_denied(&r, 403, "not-allowed");
    assert_eq!(
        r.body["info"],
        "You are not allowed to join this meeting: the room is private and the join carries no meeting token"
    );
    let t = s.token(json!({"room_name": "private-room-test", "user_id": "u1", "user_name": "Zed"}));
    let ok = s.join("private-room-test", Some(&t), Some("ignored"));
    assert_eq!(ok.status, 200, "{}", ok.text);
    assert_eq!(ok.body["user_id"], "u1");
    assert_eq!(ok.body["user_name"], "Zed");
    let denied = s.events_of("participant.join-denied");
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0]["payload"]["reason"], "not-allowed");
    assert_eq!(denied[0]["payload"]["detail"], "private_room");
}

#[test]
fn every_refusal_has_its_own_error_and_event() {
    let s = Server::start();
    let now = s.now_secs();
    s.create_room(json!({"name": "later", "properties": {"nbf": now + 3600}}));
    s.create_room(json!({"name": "over", "properties": {"exp": now + 10}}));
    s.create_room(json!({"name": "room-a", "privacy": "private"}));
    s.create_room(json!({"name": "tiny", "properties": {"max_participants": 1}}));
    // Someone stays in "over", so after its exp it is a tombstone answering exp-room (an empty
    // expired room is removed, and then answers no-room).
    s.join_ok("over", None);
    s.advance(11.0);
    assert_denied(&s.join("nope", None, None), 404, "no-room");
    assert_denied(&s.join("later", None, None), 403, "nbf-room");
    assert_denied(&s.join("over", None, None), 403, "exp-room");
    let for_b = s.token(json!({"room_name": "room-b"}));
    assert_denied(&s.join("room-a", Some(&for_b), None), 403, "not-allowed");
    let early = s.token(json!({"room_name": "room-a", "nbf": now + 3600}));
    assert_denied(&s.join("room-a", Some(&early), None), 403, "nbf-token");
    let late = s.token(json!({"room_name": "room-a", "exp": now + 5}));
    assert_denied(&s.join("room-a", Some(&late), None), 403, "exp-token");
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"r": "room-a"}),
        &EncodingKey::from_secret(b"not-the-key-not-the-key-not-the-key!").unwrap(),
    )
    .unwrap();
    assert_denied(&s.join("room-a", Some(&forged), None), 403, "not-allowed");
    s.join_ok("tiny", None);
    assert_denied(&s.join("tiny", None, None), 403, "meeting-full");
    let details: Vec<(String, String)> = s
        .events_of("participant.join-denied")
        .iter()
        .map(|e| {
            (e["payload"]["reason"].as_str().unwrap().to_string(), e["payload"]["detail"].as_str().unwrap().to_string())
        })
        .collect();
    let expect = [
        ("no-room", "no_room"),
        ("nbf-room", "room_not_started"),
        ("exp-room", "room_expired"),
        ("not-allowed", "wrong_room"),
        ("nbf-token", "token_not_yet_valid"),
        ("exp-token", "token_expired"),
        ("not-allowed", "bad_signature"),
        ("meeting-full", "meeting_full"),
    ];
    assert_eq!(details, expect.map(|(a, b)| (a.to_string(), b.to_string())));
    let log = serde_json::to_string(&s.events()).unwrap();
    for t in [&for_b, &early, &late, &forged] {
        assert!(!log.contains(t.as_str()), "a token leaked into the event log");
    }
    assert!(!s.log().contains(&for_b));
}

#[test]
fn owners_count_toward_capacity_and_joins_race_safely() {
    let s = Server::start();
    s.create_room(json!({"name": "fifty", "properties": {"max_participants": 50}}));
    let base = s.base.clone();
    let handles: Vec<_> = (0..200)
        .map(|_| {
            let base = base.clone();
            std::thread::spawn(move || {
                common::call_url("POST", &format!("{base}/v1/rooms/fifty/join"), None, Some("{}"), &[]).status
            })
        })
        .collect();
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 50);
    assert_eq!(statuses.iter().filter(|s| **s == 403).count(), 150);
    assert_eq!(s.get("/v1/rooms/fifty/presence").body["total_count"], 50);
    let owner = s.token(json!({"room_name": "fifty", "is_owner": true}));
    assert_denied(&s.join("fifty", Some(&owner), None), 403, "meeting-full");
}

#[test]
fn unique_user_ids_eject_the_earlier_session() {
    let s = Server::start();
    s.create_room(json!({"name": "uniq", "properties": {"enforce_unique_user_ids": true}}));
    let t = s.token(json!({"room_name": "uniq", "user_id": "same"}));
    let (first, _, _) = s.join_ok("uniq", Some(&t));
    let (second, _, _) = s.join_ok("uniq", Some(&t));
    let p = s.get("/v1/rooms/uniq/presence").body;
    assert_eq!(p["total_count"], 1);
    assert_eq!(p["data"][0]["id"], second.as_str());
    let ej = s.events_of("participant.ejected");
    assert_eq!(ej[0]["payload"]["session_id"], first.as_str());
    assert_eq!(ej[0]["payload"]["reason"], "duplicate_user_id");
    assert_eq!(s.events_of("meeting.ended").len(), 0, "the meeting goes on");
}

#[test]
fn session_secrets_are_checked() {
    let s = Server::start();
    s.create_room(json!({"name": "r"}));
    let (a, a_secret, _) = s.join_ok("r", None);
    let (b, b_secret, _) = s.join_ok("r", None);
    for path in ["heartbeat", "leave"] {
        let r = s.call("POST", &format!("/v1/sessions/{a}/{path}"), Some("wrong"), None);
        assert_eq!((r.status, r.body["error"].as_str()), (401, Some("authentication-error")), "{path}");
        let r = s.call("POST", &format!("/v1/sessions/{a}/{path}"), Some(&b_secret), None);
        assert_eq!(r.status, 401, "another session's secret");
        let r = s.call("POST", &format!("/v1/sessions/{a}/{path}"), None, None);
        assert_eq!(r.status, 401);
        let r = s.call("POST", &format!("/v1/sessions/nope/{path}"), Some(&a_secret), None);
        assert_eq!(r.status, 404);
    }
    assert_eq!(s.call("POST", &format!("/v1/sessions/{a}/heartbeat"), Some(&a_secret), None).status, 200);
    assert_eq!(s.call("POST", &format!("/v1/sessions/{b}/leave"), Some(&b_secret), None).status, 200);
    assert_eq!(s.call("POST", &format!("/v1/sessions/{b}/heartbeat"), Some(&b_secret), None).status, 404);
}

#[test]
fn leases_lapse_without_heartbeats() {
    let s = Server::start();
    s.create_room(json!({"name": "lease"}));
    let (quiet, _, _) = s.join_ok("lease", None);
    let (chatty, secret, _) = s.join_ok("lease", None);
    s.advance(20.0);
    assert_eq!(s.call("POST", &format!("/v1/sessions/{chatty}/heartbeat"), Some(&secret), None).status, 200);
    s.advance(11.0);
    let left = s.wait_event("participant.left", |e| e["payload"]["session_id"] == quiet.as_str());
    assert_eq!(left["payload"]["reason"], "timeout");
    assert_eq!(s.get("/v1/rooms/lease/presence").body["total_count"], 1);
    s.advance(20.0);
    s.wait_event("participant.left", |e| e["payload"]["session_id"] == chatty.as_str());
    s.wait_event("meeting.ended", |_| true);
    // Heartbeats wrote no events.
    let types: Vec<String> = s.events().iter().map(|e| e["type"].as_str().unwrap().to_string()).collect();
    assert_eq!(types.len(), 7, "room.created, started, 2 joined, 2 left, ended: {types:?}");
}

#[test]
fn token_elapsed_ejection_and_will_eject_at() {
    let s = Server::start();
    s.create_room(json!({"name": "timed", "privacy": "private", "properties": {"eject_after_elapsed": 600}}));
    let t = s.token(json!({"room_name": "timed", "eject_after_elapsed": 3}));
    let (id, _, body) = s.join_ok("timed", Some(&t));
    let joined = body["joined_at"].as_f64().unwrap();
    // The deadline lands on the whole second it announces (issue 24, item 12): at the earliest
    // 3 s after the join.
    assert_eq!(body["will_eject_at"].as_i64().unwrap(), (joined + 3.0).ceil() as i64);
    let joined_event = &s.events_of("participant.joined")[0]["payload"];
    assert_eq!(joined_event["will_eject_at"], body["will_eject_at"]);
    s.advance(2.0);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(s.events_of("participant.ejected").is_empty(), "not before its time");
    s.advance(2.0);
    let e = s.wait_event("participant.ejected", |e| e["payload"]["session_id"] == id.as_str());
    assert_eq!((e["payload"]["reason"].as_str(), e["payload"]["by"].as_str()), (Some("elapsed"), Some("scheduler")));
}

#[test]
fn user_names_are_bounded() {
    let s = Server::start();
    s.create_room(json!({"name": "n"}));
    let long = "x".repeat(10_000);
    assert_eq!(s.join("n", None, Some(&long)).status, 400);
    assert_eq!(s.join("n", None, Some("bad\u{1b}[31m")).status, 400);
    assert_eq!(s.join("n", None, Some("Zoë 🎉")).status, 200);
    assert!(s.events_of("participant.join-denied").is_empty(), "bad input is not a join attempt");
}

#[test]
fn join_floods_are_rate_limited_without_events() {
    let s = Server::start_with(&[("GATEHOUSE_JOIN_RATE", "1"), ("GATEHOUSE_JOIN_BURST", "5")]);
    s.create_room(json!({"name": "flood", "privacy": "private"}));
    let mut limited = 0;
    for _ in 0..40 {
        let r = s.join("flood", None, None);
        if r.status == 429 {
            assert_eq!(r.body["error"], "rate-limit-error");
            assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
            limited += 1;
        }
    }
    assert!(limited >= 30, "{limited}");
    assert!(s.events_of("participant.join-denied").len() <= 10);
}

/// A media server or app backend joins on behalf of many participants from one address with
/// the API key: it is not throttled per address. Anonymous and token-only joins still are.
#[test]
fn joins_with_the_api_key_are_not_throttled_per_address() {
    let s = Server::start_with(&[("GATEHOUSE_JOIN_RATE", "0.01"), ("GATEHOUSE_JOIN_BURST", "5")]);
    s.create_room(json!({"name": "stage", "privacy": "private"}));
    let t = s.token(json!({"room_name": "stage"}));
    let body = json!({"token": t}).to_string();
    for i in 0..120 {
        let r = s.call("POST", "/v1/rooms/stage/join", Some(&s.key), Some(&body));
        assert_eq!(r.status, 200, "join {i} on behalf of a participant: {}", r.text);
    }
    // A wrong key is refused as such, not treated as anonymous.
    let r = s.call("POST", "/v1/rooms/stage/join", Some("not-the-key"), Some(&body));
    assert_eq!((r.status, r.body["error"].as_str()), (401, Some("authentication-error")), "{}", r.text);
    let statuses: Vec<u16> =
        (0..10).map(|_| s.call("POST", "/v1/rooms/stage/join", None, Some(&body)).status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 5, "token-only joins keep the limit: {statuses:?}");
    assert_eq!(s.join("stage", None, None).status, 429, "anonymous joins keep the limit");
}

#[test]
fn session_stream_pushes_presence_and_closes_on_ejection() {
    use std::io::{BufRead, BufReader};
    let s = Server::start();
    s.create_room(json!({"name": "live"}));
    let (id, secret, _) = s.join_ok("live", None);
    let url = s.url(&format!("/v1/sessions/{id}/stream"));
    let reader = std::thread::spawn(move || {
        let resp = ureq::get(&url).set("Authorization", &format!("Bearer {secret}")).call().unwrap();
        assert_eq!(resp.header("content-type"), Some("text/event-stream"));
        let mut events = Vec::new();
        for line in BufReader::new(resp.into_reader()).lines() {
            let Ok(line) = line else { break };
            if let Some(e) = line.strip_prefix("event: ") {
                events.push(e.to_string());
            }
        }
        events
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    s.join_ok("live", None);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let r = s.post("/v1/rooms/live/eject", &json!({"ids": [id]}));
    assert_eq!(r.body["ejectedIds"], json!([id]));
    let events = reader.join().unwrap();
    assert_eq!(events.first().map(String::as_str), Some("presence"));
    assert!(events.contains(&"participant.joined".to_string()), "{events:?}");
    assert!(events.contains(&"participant.ejected".to_string()), "{events:?}");
    assert_eq!(events.last().map(String::as_str), Some("participant.left"), "the stream closes after its own end");
    // The stream needs the secret, never in the URL.
    assert_eq!(s.call("GET", &format!("/v1/sessions/{id}/stream"), None, None).status, 401);
}

#[test]
fn offline_tokens_join_like_issued_ones() {
    let s = Server::start();
    s.create_room(json!({"name": "off", "privacy": "private"}));
    let t = offline(json!({"r": "off", "ud": "app-user", "u": "App User"}));
    let (_, _, body) = s.join_ok("off", Some(&t));
    assert_eq!(body["user_id"], "app-user");
}

fn set_clock_ms(s: &Server, ms: i64) {
    let r = s.post("/v1/_test/clock", &json!({"set_ms": ms}));
    assert_eq!(r.status, 200, "{}", r.text);
}

/// Issue 24, item 12: `will_eject_at` is the moment of ejection, not the whole second before
/// it: a session joined at x.5 s with 3 s to stay is still present a second before the time it
/// was told, and gone at that time.
#[test]
fn will_eject_at_is_the_moment_of_ejection() {
    let s = Server::start();
    s.create_room(json!({"name": "tick"}));
    let t = s.token(json!({"room_name": "tick", "eject_after_elapsed": 3}));
    let base = (s.now_secs() + 100) * 1000;
    set_clock_ms(&s, base + 500);
    let (id, _, body) = s.join_ok("tick", Some(&t));
    let announced = body["will_eject_at"].as_i64().unwrap();
    assert!(announced * 1000 >= base + 3500, "announced {announced}, before 3 s have passed");
    let present = || s.get("/v1/rooms/tick/presence").body["total_count"].as_u64().unwrap();
    set_clock_ms(&s, announced * 1000 - 1000);
    assert_eq!(present(), 1, "ejected before the announced time");
    set_clock_ms(&s, announced * 1000);
    assert_eq!(present(), 0, "still present at the announced time");
    let e = s.wait_event("participant.ejected", |e| e["payload"]["session_id"] == id.as_str());
    assert_eq!(e["payload"]["reason"], "elapsed");
}
