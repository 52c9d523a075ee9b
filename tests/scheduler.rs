//! Durable deadlines, black-box, with the test clock: each kind fires at its moment and not
//! before, moves when its state changes, is cancelled with it, and survives SIGKILL.

mod common;
use common::Server;
use serde_json::{json, Value};

fn settle() {
    std::thread::sleep(std::time::Duration::from_millis(150));
}

/// Leases long enough not to interfere with the deadlines under test.
fn server() -> Server {
    Server::start_with(&[("GATEHOUSE_LEASE_SECS", "3600")])
}

fn types(s: &Server) -> Vec<String> {
    s.events().iter().map(|e| e["type"].as_str().unwrap().to_string()).collect()
}

#[test]
fn room_expiry_fires_on_time_and_ejects_who_follows_room_rules() {
    let s = server();
    let now = s.now_secs();
    s.create_room(json!({"name": "r", "properties": {"exp": now + 60, "eject_at_room_exp": true}}));
    let (by_room, _, body) = s.join_ok("r", None);
    assert_eq!(body["will_eject_at"], now + 60);
    let own = s.token(json!({"room_name": "r", "eject_after_elapsed": 3600}));
    let (by_token, _, _) = s.join_ok("r", Some(&own));
    // `now` is whole seconds, the server's clock is not: keep a second of margin before the deadline.
    s.advance(58.0);
    settle();
    assert!(s.events_of("room.expired").is_empty(), "not before exp");
    s.advance(2.5);
    s.wait_event("room.expired", |e| e["payload"]["room"] == "r");
    let ej = s.wait_event("participant.ejected", |e| e["payload"]["session_id"] == by_room.as_str());
    assert_eq!(
        (ej["payload"]["reason"].as_str(), ej["payload"]["by"].as_str()),
        (Some("room_expired"), Some("scheduler"))
    );
    // The token's own settings replace the room's: that session stays, the room is a tombstone.
    assert!(s.events_of("participant.ejected").iter().all(|e| e["payload"]["session_id"] != by_token.as_str()));
    assert_eq!(s.get("/v1/rooms/r").status, 404, "the admin API answers 404 for expired rooms");
    assert_eq!(s.join("r", None, None).body["error"], "exp-room", "the tombstone keeps answering exp-room");
}

#[test]
fn tombstone_goes_with_the_last_participant_or_a_new_room() {
    let s = server();
    let now = s.now_secs();
    s.create_room(json!({"name": "t", "properties": {"exp": now + 10}}));
    let (a, secret, _) = s.join_ok("t", None);
    s.advance(11.0);
    s.wait_event("room.expired", |_| true);
    assert_eq!(s.join("t", None, None).body["error"], "exp-room");
    s.call("POST", &format!("/v1/sessions/{a}/leave"), Some(&secret), None);
    assert_eq!(s.join("t", None, None).body["error"], "no-room", "gone with its last participant");

    // A new room with a tombstone's name ejects the leftovers first.
    let now = s.now_secs();
    s.create_room(json!({"name": "u", "properties": {"exp": now + 10}}));
    let (left_over, _, _) = s.join_ok("u", None);
    s.advance(11.0);
    s.wait_event("room.expired", |e| e["payload"]["room"] == "u");
    let fresh = s.create_room(json!({"name": "u"}));
    assert_eq!(fresh["config"], json!({}));
    let ej = s.events_of("participant.ejected");
    let e = ej.iter().find(|e| e["payload"]["session_id"] == left_over.as_str()).expect("leftover ejected");
    assert_eq!(e["payload"]["reason"], "room_deleted");
    s.join_ok("u", None);
}

#[test]
fn token_expiry_ejects_only_with_eject_at_token_exp() {
    let s = server();
    let now = s.now_secs();
    s.create_room(json!({"name": "r"}));
    let strict = s.token(json!({"room_name": "r", "exp": now + 30, "eject_at_token_exp": true}));
    let lenient = s.token(json!({"room_name": "r", "exp": now + 30}));
    let (a, _, body) = s.join_ok("r", Some(&strict));
    assert_eq!(body["will_eject_at"], now + 30);
    let (b, _, body) = s.join_ok("r", Some(&lenient));
    assert_eq!(body["will_eject_at"], Value::Null);
    s.advance(28.0);
    settle();
    assert!(s.events_of("participant.ejected").is_empty());
    s.advance(2.5);
    let e = s.wait_event("participant.ejected", |e| e["payload"]["session_id"] == a.as_str());
    assert_eq!(e["payload"]["reason"], "token_expired");
    settle();
    assert!(
        s.events_of("participant.ejected").iter().all(|e| e["payload"]["session_id"] != b.as_str()),
        "expired token, but no eject_at_token_exp"
    );
    // Its holder cannot come back though.
    assert_eq!(s.join("r", Some(&lenient), None).body["error"], "exp-token");
}

#[test]
fn updating_exp_moves_the_expiry_and_deleting_cancels_it() {
    let s = server();
    let now = s.now_secs();
    s.create_room(json!({"name": "moving", "properties": {"exp": now + 100, "eject_at_room_exp": true}}));
    s.create_room(json!({"name": "doomed", "properties": {"exp": now + 100}}));
    let (sid, _, _) = s.join_ok("moving", None);
    let r = s.post("/v1/rooms/moving", &json!({"properties": {"exp": now + 200}}));
    assert_eq!(r.status, 200);
    let p = s.get("/v1/rooms/moving/presence").body;
    assert_eq!(p["total_count"], 1);
    s.delete("/v1/rooms/doomed");
    s.advance(150.0);
    settle();
    assert!(s.events_of("room.expired").is_empty(), "moved, and cancelled: {:?}", types(&s));
    assert_eq!(s.get("/v1/rooms/moving/presence").body["total_count"], 1, "the session's deadline moved too");
    s.advance(51.0);
    s.wait_event("room.expired", |e| e["payload"]["room"] == "moving");
    s.wait_event("participant.ejected", |e| e["payload"]["session_id"] == sid.as_str());
    assert!(s.events_of("room.expired").iter().all(|e| e["payload"]["room"] != "doomed"));
    // Removing exp removes the expiry.
    let now = s.now_secs();
    s.create_room(json!({"name": "kept", "properties": {"exp": now + 10}}));
    s.post("/v1/rooms/kept", &json!({"properties": {"exp": null}}));
    s.advance(20.0);
    settle();
    assert_eq!(s.get("/v1/rooms/kept").status, 200);
}

#[test]
fn bans_expire_with_an_event() {
    let s = server();
    let now = s.now_secs();
    s.create_room(json!({"name": "r"}));
    s.post("/v1/rooms/r/eject", &json!({"user_ids": ["x"], "ban": true, "ban_until": now + 100}));
    s.advance(98.0);
    settle();
    assert!(s.events_of("ban.removed").is_empty());
    s.advance(3.0);
    let e = s.wait_event("ban.removed", |_| true);
    assert_eq!((e["payload"]["user_id"].as_str(), e["payload"]["reason"].as_str()), (Some("x"), Some("expired")));
    assert_eq!(s.get("/v1/rooms/r/bans").body["total_count"], 0);
}

#[test]
fn overdue_deadlines_fire_once_in_order_after_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let env = [("GATEHOUSE_LEASE_SECS", "3600"), ("GATEHOUSE_SLED_FLUSH_EVERY_MS", "0")];
    let mut s = Server::start_in(&dir, &env);
    let t0 = s.now_secs();
    s.create_room(json!({"name": "r", "properties": {"exp": t0 + 25}}));
    let mut ids = Vec::new();
    for secs in [10, 20, 30] {
        let t = s.token(json!({"room_name": "r", "eject_after_elapsed": secs}));
        ids.push(s.join_ok("r", Some(&t)).0);
    }
    let before = s.events().len();
    s.kill9();
    let s = Server::start_in(&dir, &env);
    assert_eq!(s.call("GET", "/readyz", None, None).status, 200);
    let r = s.post("/v1/_test/clock", &json!({"set_ms": (t0 + 26) * 1000}));
    assert_eq!(r.status, 200);
    s.wait_event("room.expired", |_| true);
    settle();
    let after: Vec<Value> = s.events()[before..].to_vec();
    let summary: Vec<String> = after
        .iter()
        .map(|e| format!("{}:{}", e["type"].as_str().unwrap(), e["payload"]["session_id"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        summary,
        vec![
            format!("participant.ejected:{}", ids[0]),
            format!("participant.left:{}", ids[0]),
            format!("participant.ejected:{}", ids[1]),
            format!("participant.left:{}", ids[1]),
            "room.expired:".to_string(),
        ],
        "each overdue deadline once, in deadline order"
    );
    s.post("/v1/_test/clock", &json!({"set_ms": (t0 + 31) * 1000}));
    s.wait_event("participant.ejected", |e| e["payload"]["session_id"] == ids[2].as_str());
    settle();
    assert_eq!(s.events_of("participant.ejected").len(), 3);
    assert_eq!(s.events_of("room.expired").len(), 1);
    assert_eq!(s.join("r", None, None).body["error"], "no-room", "the tombstone left with the last one");
}
