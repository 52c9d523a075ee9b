//! Ejection, bans and revocation, black-box: who may eject, what gets ejected, bans that last,
//! and revocations that refuse joins and eject sessions already in.

mod common;
use common::{Server, KEY};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

fn offline(claims: Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(KEY.as_bytes()).unwrap())
        .unwrap()
}

#[test]
fn api_key_ejects_only_sessions_of_that_room() {
    let s = Server::start();
    s.create_room(json!({"name": "a"}));
    s.create_room(json!({"name": "b"}));
    let (a1, _, _) = s.join_ok("a", None);
    let (b1, _, _) = s.join_ok("b", None);
    let r = s.post("/v1/rooms/a/eject", &json!({"ids": [a1, b1, "no-such-session"]}));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body, json!({"ejectedIds": [a1]}));
    assert_eq!(s.get("/v1/rooms/b/presence").body["total_count"], 1);
    let ej = &s.events_of("participant.ejected")[0]["payload"];
    assert_eq!(ej["reason"], "api");
    assert!(ej["by"].as_str().unwrap().starts_with("api:"));
    let left = &s.events_of("participant.left")[0]["payload"];
    assert_eq!(left["reason"], "ejected");
    // Limits and types.
    let many: Vec<String> = (0..101).map(|i| format!("s{i}")).collect();
    assert_eq!(s.post("/v1/rooms/a/eject", &json!({"ids": many})).status, 400);
    assert_eq!(s.post("/v1/rooms/a/eject", &json!({"user_ids": "x"})).status, 400);
    assert_eq!(s.post("/v1/rooms/a/eject", &json!({"ban": "yes"})).status, 400);
    assert_eq!(s.post("/v1/rooms/a/eject", &json!({"ban_until": 5})).status, 400);
    assert_eq!(s.post("/v1/rooms/zzz/eject", &json!({"ids": []})).status, 404);
}

#[test]
fn who_may_eject_with_a_token() {
    let s = Server::start();
    let now = s.now_secs();
    s.create_room(json!({"name": "room", "privacy": "private"}));
    let guest = s.token(json!({"room_name": "room", "user_id": "guest"}));
    let (victim, _, _) = s.join_ok("room", Some(&guest));
    let forbidden = |bearer: &str| {
        let r = s.eject_as("room", bearer, json!({"ids": [victim]}));
        assert_eq!((r.status, r.body["error"].as_str()), (403, Some("forbidden-error")), "{}", r.text);
    };
    forbidden(&guest);
    forbidden(&s.token(json!({"room_name": "other", "is_owner": true})));
    forbidden(&s.token(json!({"is_owner": true})));
    forbidden(&s.token(json!({"room_name": "room", "is_owner": true, "exp": now + 5})).pipe_advance(&s, 6.0));
    let revoked = s.token(json!({"room_name": "room", "is_owner": true}));
    assert_eq!(s.post("/v1/meeting-tokens/revoke", &json!({"token": revoked})).status, 200);
    forbidden(&revoked);
    forbidden(&offline(json!({"r": "room", "o": true, "exp": "never"})));
    let r = s.eject_as("room", "not-a-key-and-not-a-jwt", json!({"ids": [victim]}));
    assert_eq!(r.status, 401);
    assert_eq!(s.get("/v1/rooms/room/presence").body["total_count"], 1, "nobody was ejected so far");

    let admin = s.token(json!({"room_name": "room", "permissions": {"canAdmin": ["participants"]}}));
    let r = s.eject_as("room", &admin, json!({"ids": [victim]}));
    assert_eq!(r.body, json!({"ejectedIds": [victim]}));
    let ej = &s.events_of("participant.ejected")[0]["payload"];
    assert_eq!(ej["reason"], "owner");
    assert!(ej["by"].as_str().unwrap().starts_with("token:"));

    let owner = s.token(json!({"room_name": "room", "is_owner": true}));
    let (v2, _, _) = s.join_ok("room", Some(&guest));
    assert_eq!(s.eject_as("room", &owner, json!({"user_ids": ["guest"]})).body, json!({"ejectedIds": [v2]}));
}

trait AdvanceAfter {
    fn pipe_advance(self, s: &Server, secs: f64) -> Self;
}

impl AdvanceAfter for String {
    fn pipe_advance(self, s: &Server, secs: f64) -> String {
        s.advance(secs);
        self
    }
}

#[test]
fn bans_last_across_tokens_deletion_and_restart_until_lifted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let mut s = Server::start_in(&dir, &[]);
    s.create_room(json!({"name": "class", "privacy": "private"}));
    let t = s.token(json!({"room_name": "class", "user_id": "troll"}));
    let (sid, _, _) = s.join_ok("class", Some(&t));
    let r = s.post("/v1/rooms/class/eject", &json!({"ids": [sid], "ban": true, "user_ids": ["absent-user"]}));
    assert_eq!(r.body, json!({"ejectedIds": [sid]}));
    assert_eq!(s.events_of("participant.ejected")[0]["payload"]["reason"], "banned");
    let bans = s.get("/v1/rooms/class/bans").body;
    let users: Vec<&str> = bans["data"].as_array().unwrap().iter().map(|b| b["user_id"].as_str().unwrap()).collect();
    assert_eq!(users, vec!["absent-user", "troll"]);
    assert_eq!(bans["data"][0]["until"], Value::Null, "API-key bans last until lifted");
    // The token that session used is revoked too.
    assert_eq!(s.get(&format!("/v1/meeting-tokens/{t}?verbose=true")).body["status"], "revoked");
    // A freshly minted token does not help a banned user.
    let fresh = s.token(json!({"room_name": "class", "user_id": "troll"}));
    let r = s.join("class", Some(&fresh), None);
    assert_eq!((r.status, r.body["error"].as_str()), (403, Some("ejected")));
    assert_eq!(s.get(&format!("/v1/meeting-tokens/{fresh}?verbose=true")).body["status"], "banned");
    // A crash keeps the ban.
    s.kill9();
    let s = Server::start_in(&dir, &[]);
    assert_eq!(s.join("class", Some(&fresh), None).body["error"], "ejected");
    assert_eq!(s.join("class", Some(&t), None).body["error"], "not-allowed", "revocation survives too");
    // Lifted: in again.
    let r = s.delete("/v1/rooms/class/bans/troll");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(s.delete("/v1/rooms/class/bans/troll").status, 404);
    s.join_ok("class", Some(&fresh));
    let removed = s.events_of("ban.removed");
    assert_eq!(removed[0]["payload"]["user_id"], "troll");
}

fn ban_users(s: &Server, room: &str, query: &str) -> (Vec<String>, Value) {
    let r = s.get(&format!("/v1/rooms/{room}/bans{query}"));
    assert_eq!(r.status, 200, "{}", r.text);
    let users = r.body["data"].as_array().unwrap().iter().map(|b| b["user_id"].as_str().unwrap().to_string()).collect();
    (users, r.body)
}

/// Issue 24, item 5: bans per room are capped (`--max-bans-per-room`), listed a page at a
/// time, and go with their room (deleted, or expired and gone), each with `ban.removed`.
#[test]
fn bans_are_capped_paged_and_go_with_their_room() {
    let s = Server::start_with(&[("GATEHOUSE_MAX_BANS_PER_ROOM", "5")]);
    let now = s.now_secs();
    s.create_room(json!({"name": "b", "privacy": "private"}));
    let owner = s.token(json!({"room_name": "b", "is_owner": true}));
    let ban = |users: &[&str]| s.eject_as("b", &owner, json!({"user_ids": users, "ban": true}));
    assert_eq!(ban(&["u0", "u1", "u2"]).status, 200);
    let r = ban(&["u3", "u4", "u5"]);
    assert_eq!((r.status, r.body["error"].as_str()), (400, Some("invalid-request-error")), "{}", r.text);
    assert!(r.body["info"].as_str().unwrap().contains('5'), "the message names the cap: {}", r.text);
    assert_eq!(ban_users(&s, "b", "").1["total_count"], 3, "nothing of a refused call was applied");
    assert_eq!(ban(&["u3", "u4"]).status, 200);
    assert_eq!(ban(&["u0"]).status, 200, "banning again someone banned takes no new place");
    assert_eq!(ban(&["u9"]).status, 400);
    // Lifting one makes a place again (the writer's count follows every removal).
    assert_eq!(s.delete("/v1/rooms/b/bans/u4").status, 200);
    assert_eq!(ban(&["u9"]).status, 200);
    assert_eq!(ban(&["u4"]).status, 400);
    assert_eq!(s.delete("/v1/rooms/b/bans/u9").status, 200);
    assert_eq!(ban(&["u4"]).status, 200);
    // Pages: limit and a cursor, in user id order.
    let (first, body) = ban_users(&s, "b", "?limit=2");
    assert_eq!(
        (first.clone(), body["has_more"].as_bool(), body["total_count"].as_u64()),
        (vec!["u0".to_string(), "u1".into()], Some(true), Some(5))
    );
    let (second, _) = ban_users(&s, "b", "?limit=2&starting_after=u1");
    let (third, body) = ban_users(&s, "b", "?limit=2&starting_after=u3");
    assert_eq!(
        (second, third, body["has_more"].as_bool()),
        (vec!["u2".to_string(), "u3".into()], vec!["u4".to_string()], Some(false))
    );
    for bad in ["?limit=0", "?limit=1001", "?limit=x"] {
        assert_eq!(s.get(&format!("/v1/rooms/b/bans{bad}")).status, 400, "{bad}");
    }
    // Deleting the room removes its bans; a room of the same name starts without them.
    assert_eq!(s.delete("/v1/rooms/b").status, 200);
    let removed: Vec<Value> =
        s.events_of("ban.removed").into_iter().filter(|e| e["payload"]["reason"] == "room_deleted").collect();
    assert_eq!(removed.len(), 5, "{removed:?}");
    s.create_room(json!({"name": "b", "privacy": "private"}));
    assert_eq!(ban_users(&s, "b", "").1["total_count"], 0);
    let t = s.token(json!({"room_name": "b", "user_id": "u0"}));
    s.join_ok("b", Some(&t));
    // An expiring room takes its bans with it when it goes.
    s.create_room(json!({"name": "short", "properties": {"exp": now + 60}}));
    assert_eq!(s.post("/v1/rooms/short/eject", &json!({"user_ids": ["w"], "ban": true})).status, 200);
    s.advance(61.0);
    s.wait_event("ban.removed", |e| e["payload"]["room"] == "short" && e["payload"]["reason"] == "room_expired");
    assert_eq!(ban_users(&s, "short", "").1["total_count"], 0);
}

/// Issue 24, item 9: a ban needs a user id to keep someone out; banning an anonymous session
/// is refused with the reason, and nobody is ejected by the refused call.
#[test]
fn banning_an_anonymous_session_is_refused_with_the_reason() {
    let s = Server::start();
    s.create_room(json!({"name": "pub"}));
    let (anon, _, _) = s.join_ok("pub", None);
    let r = s.post("/v1/rooms/pub/eject", &json!({"ids": [anon], "ban": true}));
    assert_eq!((r.status, r.body["error"].as_str()), (400, Some("invalid-request-error")), "{}", r.text);
    assert!(r.body["info"].as_str().unwrap().contains("user_id"), "{}", r.text);
    assert_eq!(s.get("/v1/rooms/pub/presence").body["total_count"], 1, "the refused call ejected nobody");
    assert!(s.events_of("ban.created").is_empty());
    let r = s.post("/v1/rooms/pub/eject", &json!({"ids": [anon]}));
    assert_eq!(r.body, json!({"ejectedIds": [anon]}));
}

#[test]
fn token_made_bans_are_bounded() {
    let s = Server::start();
    let now = s.now_secs();
    s.create_room(json!({"name": "capped", "properties": {"exp": now + 7200}}));
    s.create_room(json!({"name": "open"}));
    let owner = s.token(json!({"room_name": "capped", "is_owner": true}));
    s.eject_as("capped", &owner, json!({"user_ids": ["x"], "ban": true, "ban_until": now + 99_999}));
    let until = s.get("/v1/rooms/capped/bans").body["data"][0]["until"].as_i64().unwrap();
    assert_eq!(until, now + 7200, "at most until the room's exp");
    let owner2 = s.token(json!({"room_name": "open", "is_owner": true}));
    s.eject_as("open", &owner2, json!({"user_ids": ["y"], "ban": true}));
    let until = s.get("/v1/rooms/open/bans").body["data"][0]["until"].as_i64().unwrap();
    assert!((until - (now + 86_400)).abs() <= 2, "24 h without exp: {until} vs {now}");
    // A ban runs out by itself (check on read).
    let t = s.token(json!({"room_name": "open", "user_id": "y"}));
    assert_eq!(s.join("open", Some(&t), None).body["error"], "ejected");
    s.advance(86_401.0);
    assert_eq!(s.join("open", Some(&t), None).status, 200);
}

#[test]
fn revocation_by_jti_refuses_joins_and_ejects_sessions() {
    let s = Server::start();
    s.create_room(json!({"name": "r", "privacy": "private"}));
    let t = s.token(json!({"room_name": "r", "user_id": "u"}));
    let (sid, _, _) = s.join_ok("r", Some(&t));
    let jti = s.get("/v1/meeting-tokens?room_name=r").body["data"][0]["jti"].as_str().unwrap().to_string();
    let r = s.post("/v1/meeting-tokens/revoke", &json!({"jti": jti}));
    assert_eq!(r.body, json!({"revoked": true, "ejectedIds": [sid]}));
    assert_eq!(s.events_of("participant.ejected")[0]["payload"]["reason"], "token_revoked");
    assert_eq!(s.events_of("meeting-token.revoked").len(), 1);
    let j = s.join("r", Some(&t), None);
    assert_eq!((j.status, j.body["error"].as_str()), (403, Some("not-allowed")));
    let denied = s.events_of("participant.join-denied");
    assert_eq!(denied[0]["payload"]["detail"], "revoked");
    let v = s.get(&format!("/v1/meeting-tokens/{t}"));
    assert_eq!(v.status, 400);
    assert!(v.body["info"].as_str().unwrap().contains("revoked"));
    // Another token for the same user still works: the revocation was of one token.
    let other = s.token(json!({"room_name": "r", "user_id": "u"}));
    s.join_ok("r", Some(&other));
}

#[test]
fn revocation_of_offline_tokens_by_hash_user_and_time() {
    let s = Server::start();
    s.create_room(json!({"name": "r", "privacy": "private"}));
    let now = s.now_secs();
    // Offline, without jti: revoked by the token itself (its SHA-256).
    let off = offline(json!({"r": "r", "ud": "a"}));
    s.join_ok("r", Some(&off));
    assert_eq!(
        s.post("/v1/meeting-tokens/revoke", &json!({"token": off})).body["ejectedIds"].as_array().unwrap().len(),
        1
    );
    assert_eq!(s.join("r", Some(&off), None).body["error"], "not-allowed");
    // (room, user): every token of that user for the room issued so far.
    let b1 = s.token(json!({"room_name": "r", "user_id": "b"}));
    let b_off = offline(json!({"r": "r", "ud": "b"}));
    assert_eq!(s.post("/v1/meeting-tokens/revoke", &json!({"room_name": "r", "user_id": "b"})).status, 200);
    assert_eq!(s.join("r", Some(&b1), None).body["error"], "not-allowed");
    assert_eq!(s.join("r", Some(&b_off), None).body["error"], "not-allowed", "no iat: covered");
    s.advance(2.0);
    let b2 = s.token(json!({"room_name": "r", "user_id": "b"}));
    s.join_ok("r", Some(&b2));
    // Room-wide before a time: tokens without iat included, later ones fine.
    let old = offline(json!({"r": "r", "ud": "c", "iat": now - 100}));
    let no_iat = offline(json!({"r": "r", "ud": "d"}));
    let new = offline(json!({"r": "r", "ud": "e", "iat": now + 1000}));
    let (c_sid, _, _) = s.join_ok("r", Some(&old));
    let r = s.post("/v1/meeting-tokens/revoke", &json!({"room_name": "r", "issued_before": now}));
    let ejected = r.body["ejectedIds"].as_array().unwrap();
    assert!(ejected.contains(&json!(c_sid)));
    assert_eq!(s.join("r", Some(&no_iat), None).body["error"], "not-allowed");
    assert_eq!(s.join("r", Some(&old), None).body["error"], "not-allowed");
    s.join_ok("r", Some(&new));
    // Bad requests.
    for bad in [
        json!({}),
        json!({"jti": "a", "token": "b"}),
        json!({"room_name": "r"}),
        json!({"token": "garbage"}),
        json!({"room_name": "r", "issued_before": "x"}),
    ] {
        assert_eq!(s.post("/v1/meeting-tokens/revoke", &bad).status, 400, "{bad}");
    }
}

#[test]
fn deleting_a_room_ejects_everyone() {
    let s = Server::start();
    s.create_room(json!({"name": "bye"}));
    s.join_ok("bye", None);
    s.join_ok("bye", None);
    s.delete("/v1/rooms/bye");
    let ej = s.events_of("participant.ejected");
    assert_eq!(ej.len(), 2);
    assert!(ej.iter().all(|e| e["payload"]["reason"] == "room_deleted"));
    assert_eq!(s.events_of("meeting.ended").len(), 1);
    let types: Vec<String> = s.events().iter().map(|e| e["type"].as_str().unwrap().to_string()).collect();
    assert_eq!(types.last().map(String::as_str), Some("room.deleted"));
    assert_eq!(s.get("/v1/presence").body, json!({}));
}

#[test]
fn sessions_and_leases_survive_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let mut s = Server::start_in(&dir, &[("GATEHOUSE_SLED_FLUSH_EVERY_MS", "0")]);
    s.create_room(json!({"name": "keep"}));
    let (sid, secret, _) = s.join_ok("keep", None);
    s.kill9();
    let s = Server::start_in(&dir, &[]);
    assert_eq!(s.get("/v1/rooms/keep/presence").body["data"][0]["id"], sid.as_str());
    assert_eq!(s.call("POST", &format!("/v1/sessions/{sid}/heartbeat"), Some(&secret), None).status, 200);
    // A fresh lease after restart: gone only after a full lease of silence.
    s.advance(25.0);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(s.get("/v1/rooms/keep/presence").body["total_count"], 1);
    s.advance(10.0);
    s.wait_event("participant.left", |e| e["payload"]["reason"] == "timeout");
}
