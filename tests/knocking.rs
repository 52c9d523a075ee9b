//! Knock-to-join, black-box: a private room with `enable_knocking` has a lobby; owners (and
//! `canAdmin: participants` tokens, and the API key) admit or deny; a grant re-runs the join
//! decision; waiting participants never count and are never in presence.

mod common;
use std::time::Duration;

use common::{next_frame, Server};
use serde_json::{json, Value};

fn knock(s: &Server, room: &str, name: &str) -> (String, String, Value) {
    let r = s.join(room, None, Some(name));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["access"]["level"], "lobby", "{}", r.text);
    (r.body["session_id"].as_str().unwrap().into(), r.body["session_secret"].as_str().unwrap().into(), r.body)
}

fn decide(s: &Server, auth: &str, room: &str, body: Value) -> common::Reply {
    s.call("POST", &format!("/v1/rooms/{room}/waiting-participants"), Some(auth), Some(&body.to_string()))
}

fn waiting_ids(s: &Server, auth: &str, room: &str) -> Vec<String> {
    let r = s.call("GET", &format!("/v1/rooms/{room}/waiting-participants"), Some(auth), None);
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["data"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap().to_string()).collect()
}

fn lobby(s: &Server, name: &str, props: Value) {
    let mut p = json!({"enable_knocking": true});
    for (k, v) in props.as_object().unwrap() {
        p[k] = v.clone();
    }
    s.create_room(json!({"name": name, "privacy": "private", "properties": p}));
}

#[test]
fn a_knock_waits_unseen_and_uncounted_then_an_owner_admits_or_denies() {
    let s = Server::start();
    lobby(&s, "salon", json!({"max_participants": 2}));
    let owner = s.token(json!({"room_name": "salon", "is_owner": true, "user_name": "Host"}));
    let (host, _, _) = s.join_ok("salon", Some(&owner));
    let (ann, ann_secret, body) = knock(&s, "salon", "Ann");
    assert_eq!(body["awaitingAccess"]["level"], "full");
    assert!(body.get("user_id").is_none(), "a tokenless knock has no user_id: {body}");
    let (bob, bob_secret, _) = knock(&s, "salon", "Bob");
    let joined = s.events_of("waiting-participant.joined");
    assert_eq!(joined.len(), 2);
    assert_eq!(joined[0]["payload"]["session_id"], ann.as_str());
    assert_eq!(joined[0]["payload"]["user_name"], "Ann");
    // Unseen and uncounted: presence has the host only; the room (max 2) still takes a token holder.
    let p = s.get("/v1/rooms/salon/presence").body;
    assert_eq!(p["total_count"], 1, "{p}");
    assert!(s.get("/v1/presence").body["salon"].as_array().unwrap().iter().all(|x| x["id"] == host.as_str()));
    // A waiting participant keeps its lease with its own secret, and cannot use it for another.
    assert_eq!(s.call("POST", &format!("/v1/sessions/{ann}/heartbeat"), Some(&ann_secret), None).status, 200);
    assert_eq!(s.call("POST", &format!("/v1/sessions/{host}/heartbeat"), Some(&ann_secret), None).status, 401);
    assert_eq!(waiting_ids(&s, &owner, "salon"), [ann.clone(), bob.clone()]);

    // Admit Ann: a full session (same id and secret), in presence, with participant.joined.
    let r = decide(&s, &owner, "salon", json!({ann.clone(): {"grantRequestedAccess": true}}));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["granted"], json!([ann]));
    assert!(s.events_of("participant.joined").iter().any(|e| e["payload"]["session_id"] == ann.as_str()));
    assert_eq!(s.get("/v1/rooms/salon/presence").body["total_count"], 2);
    assert_eq!(s.call("POST", &format!("/v1/sessions/{ann}/heartbeat"), Some(&ann_secret), None).status, 200);

    // Deny Bob: he leaves the lobby (waiting-participant.left, reason denied) and his session is gone.
    let r = decide(&s, &owner, "salon", json!({bob.clone(): {"grantRequestedAccess": false}}));
    assert_eq!(r.body["denied"], json!([bob]), "{}", r.text);
    let left = s.events_of("waiting-participant.left");
    assert_eq!(left[0]["payload"]["session_id"], bob.as_str());
    assert_eq!(left[0]["payload"]["reason"], "denied");
    assert_eq!(s.call("POST", &format!("/v1/sessions/{bob}/heartbeat"), Some(&bob_secret), None).status, 404);
    assert!(waiting_ids(&s, &owner, "salon").is_empty());
}

#[test]
fn a_grant_rejudges_the_join_and_admit_all_takes_everyone() {
    let s = Server::start();
    lobby(&s, "tiny", json!({"max_participants": 1}));
    let owner = s.token(json!({"room_name": "tiny", "is_owner": true}));
    let (ann, _, _) = knock(&s, "tiny", "Ann");
    s.join_ok("tiny", Some(&owner));
    // The room filled while Ann waited: the grant is refused and she leaves the lobby.
    let r = decide(&s, &owner, "tiny", json!({ann.clone(): {"grantRequestedAccess": true}}));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["refused"][0]["id"], ann.as_str());
    assert_eq!(r.body["refused"][0]["error"], "meeting-full");
    assert_eq!(s.events_of("waiting-participant.left")[0]["payload"]["reason"], "meeting_full");
    assert_eq!(s.get("/v1/rooms/tiny/presence").body["total_count"], 1);

    // "*" admits everyone waiting (here: a bigger room).
    lobby(&s, "hall", json!({}));
    let ids: Vec<String> = (0..3).map(|i| knock(&s, "hall", &format!("guest {i}")).0).collect();
    let r = s.post("/v1/rooms/hall/waiting-participants", &json!({"*": {"grantRequestedAccess": true}}));
    assert_eq!(r.status, 200, "{}", r.text);
    let mut granted: Vec<String> =
        r.body["granted"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().into()).collect();
    granted.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(granted, want);
    assert_eq!(s.get("/v1/rooms/hall/presence").body["total_count"], 3);
    assert_eq!(s.events_of("meeting.started").iter().filter(|e| e["payload"]["room"] == "hall").count(), 1);
}

#[test]
fn who_may_decide_and_what_is_refused() {
    let s = Server::start();
    lobby(&s, "club", json!({}));
    lobby(&s, "other", json!({}));
    let member = s.token(json!({"room_name": "club"}));
    let admin = s.token(json!({"room_name": "club", "permissions": {"canAdmin": ["participants"]}}));
    let other_owner = s.token(json!({"room_name": "other", "is_owner": true}));
    let (ann, ann_secret, _) = knock(&s, "club", "Ann");
    let (elsewhere, _, _) = knock(&s, "other", "Eve");
    let grant = |id: &str| json!({id: {"grantRequestedAccess": true}});
    // A member's token, another room's owner, a waiting participant's own secret: no.
    assert_eq!(decide(&s, &member, "club", grant(&ann)).status, 403);
    assert_eq!(decide(&s, &other_owner, "club", grant(&ann)).status, 403);
    assert_eq!(decide(&s, &ann_secret, "club", grant(&ann)).status, 401);
    assert_eq!(s.call("GET", "/v1/rooms/club/waiting-participants", Some(&member), None).status, 403);
    // An id that is not waiting here (another room's knocker, a present session, nonsense): 404,
    // and nothing changes (Ann still waits).
    for id in [elsewhere.as_str(), "no-such-session"] {
        let r = decide(
            &s,
            &admin,
            "club",
            json!({ann.clone(): {"grantRequestedAccess": true}, id: {"grantRequestedAccess": true}}),
        );
        assert_eq!(r.status, 404, "{id}: {}", r.text);
        assert!(r.body["info"].as_str().unwrap().contains("not waiting"), "{}", r.text);
    }
    assert_eq!(waiting_ids(&s, &admin, "club"), [ann.clone()]);
    // Malformed decisions say what is expected.
    for bad in [
        json!({}),
        json!({ann.clone(): true}),
        json!({ann.clone(): {"grantRequestedAccess": "yes"}}),
        json!({ann.clone(): {"grantRequestedAccess": true, "extra": 1}}),
        json!([1]),
    ] {
        let r = decide(&s, &admin, "club", bad.clone());
        assert_eq!(r.status, 400, "{bad}: {}", r.text);
    }
    // A canAdmin token may decide.
    assert_eq!(decide(&s, &admin, "club", grant(&ann)).body["granted"], json!([ann]));
    // Tokens bypass the lobby; a token with knocking: true knocks.
    let r = s.join("club", Some(&member), None);
    assert_eq!(r.body["access"]["level"], "full", "{}", r.text);
    let knocker = s.token(json!({"room_name": "club", "knocking": true, "user_id": "kim"}));
    let r = s.join("club", Some(&knocker), None);
    assert_eq!(r.body["access"]["level"], "lobby", "{}", r.text);
    assert_eq!(r.body["user_id"], "kim");
    // Banning the user while she waits ends her wait; granting her afterwards is a 404.
    let kim = r.body["session_id"].as_str().unwrap().to_string();
    let b = s.post("/v1/rooms/club/eject", &json!({"user_ids": ["kim"], "ban": true}));
    assert_eq!(b.status, 200, "{}", b.text);
    assert!(s.events_of("waiting-participant.left").iter().any(|e| e["payload"]["session_id"] == kim.as_str()));
    assert_eq!(decide(&s, &admin, "club", grant(&kim)).status, 404);
    // Her token was revoked with the ban: she cannot knock again.
    assert_eq!(s.join("club", Some(&knocker), None).status, 403);
}

#[test]
fn the_lobby_is_bounded_and_a_silent_knocker_times_out() {
    let s = Server::start();
    lobby(&s, "busy", json!({}));
    // API-key joins are not limited per address: fill the lobby to its cap.
    for i in 0..100 {
        let r = s.call(
            "POST",
            "/v1/rooms/busy/join",
            Some(&s.key),
            Some(&json!({"user_name": format!("k{i}")}).to_string()),
        );
        assert_eq!(r.body["access"]["level"], "lobby", "{}", r.text);
    }
    let r = s.call("POST", "/v1/rooms/busy/join", Some(&s.key), Some(r#"{"user_name":"one too many"}"#));
    assert_eq!(r.status, 429, "{}", r.text);
    assert_eq!(r.body["error"], "rate-limit-error");
    assert!(r.body["info"].as_str().unwrap().contains("waiting"), "{}", r.text);
    // Nobody heartbeats: after the lease they leave the lobby (reason timeout) and room frees.
    s.advance(31.0);
    s.wait_event("waiting-participant.left", |e| e["payload"]["reason"] == "timeout");
    for _ in 0..100 {
        if s.get("/v1/rooms/busy/waiting-participants").body["total_count"] == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(s.get("/v1/rooms/busy/waiting-participants").body["total_count"], 0);
}

#[test]
fn anonymous_knocks_keep_the_per_address_join_limit() {
    let s = Server::start_with(&[("GATEHOUSE_JOIN_RATE", "0.01"), ("GATEHOUSE_JOIN_BURST", "5")]);
    lobby(&s, "busy", json!({}));
    let statuses: Vec<u16> = (0..8).map(|_| s.join("busy", None, None).status).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    assert_eq!(s.get("/v1/rooms/busy/waiting-participants").body["total_count"], 5);
}

#[test]
fn pre_auth_tells_what_a_join_would_get() {
    let s = Server::start();
    lobby(&s, "knocky", json!({}));
    s.create_room(json!({"name": "closed", "privacy": "private"}));
    s.create_room(json!({"name": "open"}));
    let pre = |room: &str, token: Option<&str>| {
        let body = token.map_or(json!({}), |t| json!({"token": t}));
        s.call("POST", &format!("/v1/rooms/{room}/pre-auth"), None, Some(&body.to_string()))
    };
    assert_eq!(pre("open", None).body["access"]["level"], "full");
    assert_eq!(pre("knocky", None).body["access"]["level"], "lobby");
    let r = pre("closed", None);
    assert_eq!(r.body["access"]["level"], "none");
    assert_eq!(r.body["error"], "not-allowed");
    let owner = s.token(json!({"room_name": "knocky", "is_owner": true}));
    assert_eq!(pre("knocky", Some(&owner)).body["access"]["level"], "full");
    let knocker = s.token(json!({"room_name": "knocky", "knocking": true}));
    assert_eq!(pre("knocky", Some(&knocker)).body["access"]["level"], "lobby");
    assert_eq!(pre("knocky", Some("not.a.token")).body["access"]["level"], "none");
    assert_eq!(pre("nowhere", None).status, 404);
    assert_eq!(s.call("POST", "/v1/rooms/open/pre-auth", None, Some(r#"{"bogus":1}"#)).status, 400);
    // Nothing was created.
    assert!(s.events_of("waiting-participant.joined").is_empty());
}

#[test]
fn a_waiting_stream_sees_only_its_decision_and_admins_see_knocks() {
    let s = Server::start();
    lobby(&s, "door", json!({}));
    let owner = s.token(json!({"room_name": "door", "is_owner": true}));
    let member = s.token(json!({"room_name": "door"}));
    let (host, host_secret, _) = s.join_ok("door", Some(&owner));
    let (guest, guest_secret, _) = s.join_ok("door", Some(&member));
    let host_rx = s.session_stream(&host, &host_secret);
    let guest_rx = s.session_stream(&guest, &guest_secret);
    assert_eq!(next_frame(&host_rx, &[]).0, "presence");
    assert_eq!(next_frame(&guest_rx, &[]).0, "presence");
    let (ann, ann_secret, _) = knock(&s, "door", "Ann");
    let ann_rx = s.session_stream(&ann, &ann_secret);
    let (kind, f) = next_frame(&ann_rx, &[]);
    assert_eq!(kind, "access");
    assert_eq!(f["access"]["level"], "lobby");
    // The owner's stream shows the knock; the guest's does not.
    let (kind, f) = next_frame(&host_rx, &[]);
    assert_eq!(kind, "waiting-participant.joined", "{f}");
    // Admitted: the waiting stream says so and goes on as a present session's.
    let r = s.post("/v1/rooms/door/waiting-participants", &json!({ann.clone(): {"grantRequestedAccess": true}}));
    assert_eq!(r.body["granted"], json!([ann]));
    assert_eq!(next_frame(&ann_rx, &[]).1["access"]["level"], "full");
    assert_eq!(next_frame(&ann_rx, &[]).0, "participant.joined");
    let (kind, snap) = next_frame(&ann_rx, &[]);
    assert_eq!(kind, "presence");
    assert_eq!(snap["participants"].as_array().unwrap().len(), 3, "{snap}");
    // The guest saw Ann join, never her knock.
    let (kind, f) = next_frame(&guest_rx, &[]);
    assert_eq!(kind, "participant.joined", "{f}");
    assert_eq!(f["payload"]["session_id"], ann.as_str());
    // A denied knocker's stream gets the refusal and closes.
    let (bob, bob_secret, _) = knock(&s, "door", "Bob");
    let bob_rx = s.session_stream(&bob, &bob_secret);
    assert_eq!(next_frame(&bob_rx, &[]).0, "access");
    s.post("/v1/rooms/door/waiting-participants", &json!({"*": {"grantRequestedAccess": false}}));
    let (kind, f) = next_frame(&bob_rx, &[]);
    assert_eq!(kind, "waiting-participant.left");
    assert_eq!(f["payload"]["reason"], "denied");
    assert!(bob_rx.recv_timeout(Duration::from_secs(2)).is_err(), "the stream closed");
}

#[test]
fn an_owners_stream_sees_every_knock_after_a_denial() {
    let s = Server::start();
    lobby(&s, "again", json!({}));
    let owner = s.token(json!({"room_name": "again", "is_owner": true}));
    let (host, host_secret, _) = s.join_ok("again", Some(&owner));
    let host_rx = s.session_stream(&host, &host_secret);
    assert_eq!(next_frame(&host_rx, &[]).0, "presence");
    for round in 0..3 {
        let (id, _, _) = knock(&s, "again", "Dan");
        let (kind, f) = next_frame(&host_rx, &[]);
        assert_eq!(
            (kind.as_str(), f["payload"]["session_id"].as_str()),
            ("waiting-participant.joined", Some(id.as_str())),
            "round {round}"
        );
        s.post("/v1/rooms/again/waiting-participants", &json!({id.clone(): {"grantRequestedAccess": false}}));
        let (kind, _) = next_frame(&host_rx, &[]);
        assert_eq!(kind, "waiting-participant.left", "round {round}");
    }
}

#[test]
fn admin_rights_follow_the_sessions_live_permissions() {
    let s = Server::start();
    lobby(&s, "desk", json!({}));
    let key = s.key.clone();
    let mod_tok =
        s.token(json!({"room_name": "desk", "user_id": "mod", "permissions": {"canAdmin": ["participants"]}}));
    let (m, _, _) = s.join_ok("desk", Some(&mod_tok));
    let guest_tok = s.token(json!({"room_name": "desk", "user_id": "guest"}));
    let (g, _, _) = s.join_ok("desk", Some(&guest_tok));
    knock(&s, "desk", "Visitor");
    assert_eq!(waiting_ids(&s, &mod_tok, "desk").len(), 1);
    let lobby_status = |tok: &str| s.call("GET", "/v1/rooms/desk/waiting-participants", Some(tok), None).status;
    assert_eq!(lobby_status(&guest_tok), 403);
    // Withdrawn from the moderator's session and granted to the guest's: the tokens follow.
    let upd = |id: &str, perms: Value| {
        let body = json!({"data": {id: perms}}).to_string();
        let r = s.call("POST", "/v1/rooms/desk/update-permissions", Some(&key), Some(&body));
        assert_eq!(r.status, 200, "{}", r.text);
    };
    upd(&m, json!({"canAdmin": false}));
    upd(&g, json!({"canAdmin": ["participants"]}));
    assert_eq!(lobby_status(&mod_tok), 403, "a withdrawn canAdmin still worked through the token");
    assert_eq!(lobby_status(&guest_tok), 200, "a granted canAdmin did not work");
    let r = s.call("POST", "/v1/rooms/desk/eject", Some(&mod_tok), Some(&json!({"ids": [g]}).to_string()));
    assert_eq!(r.status, 403, "{}", r.text);
}

#[test]
fn an_admitted_knock_replaces_the_users_session_when_ids_are_unique() {
    let s = Server::start();
    lobby(&s, "uniq", json!({"enforce_unique_user_ids": true, "max_participants": 1}));
    let present = s.token(json!({"room_name": "uniq", "user_id": "u1"}));
    let (old, _, _) = s.join_ok("uniq", Some(&present));
    let knocking = s.token(json!({"room_name": "uniq", "user_id": "u1", "knocking": true}));
    let r = s.join("uniq", Some(&knocking), None);
    assert_eq!(r.body["access"]["level"], "lobby", "{}", r.text);
    let new = r.body["session_id"].as_str().unwrap().to_string();
    // The room (max 1) is full with u1's old session, which gives way: the grant succeeds.
    let r = decide(&s, &s.key, "uniq", json!({new.clone(): {"grantRequestedAccess": true}}));
    assert_eq!(r.status, 200, "{}", r.text);
    let p = s.get("/v1/rooms/uniq/presence").body;
    assert_eq!(p["total_count"], 1, "{p}");
    assert_eq!(p["data"][0]["id"], new.as_str(), "{p}");
    let left = s.events_of("participant.left");
    assert!(left.iter().any(|e| e["payload"]["session_id"] == old.as_str()), "the old session did not leave");
}

#[test]
fn pre_auth_judges_bans_revocations_and_capacity_as_a_join_would() {
    let s = Server::start();
    s.create_room(json!({"name": "hall", "properties": {"max_participants": 1}}));
    let pre = |tok: Option<&str>| {
        let body = tok.map_or(json!({}), |t| json!({"token": t})).to_string();
        s.call("POST", "/v1/rooms/hall/pre-auth", None, Some(&body)).body
    };
    let banned = s.token(json!({"room_name": "hall", "user_id": "troll"}));
    let r = s.call(
        "POST",
        "/v1/rooms/hall/eject",
        Some(&s.key),
        Some(&json!({"user_ids": ["troll"], "ban": true}).to_string()),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(pre(Some(&banned))["access"]["level"], "none");
    assert_eq!(pre(None)["access"]["level"], "full");
    s.join_ok("hall", None);
    let full = pre(None);
    assert_eq!(full["access"]["level"], "none", "{full}");
    assert_eq!(full["error"], s.join("hall", None, None).body["error"], "{full}");
}
