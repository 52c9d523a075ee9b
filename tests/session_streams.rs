//! Session streams in large rooms, black-box (threshold lowered with
//! GATEHOUSE_LARGE_ROOM_THRESHOLD): above it a stream gets the count and the latest joiners,
//! then `presence-summary` frames instead of every join and departure; below it again, a full
//! snapshot; its own ejection still reaches it and closes it.

mod common;
use std::time::Duration;

use common::{next_frame, Server};
use serde_json::{json, Value};

#[test]
fn a_large_room_streams_counts_and_summaries_then_full_lists_again() {
    let s = Server::start_with(&[("GATEHOUSE_LARGE_ROOM_THRESHOLD", "5")]);
    s.create_room(json!({"name": "hall"}));
    let mut secrets = Vec::new();
    for i in 0..6 {
        let r = s.join("hall", None, Some(&format!("guest {i}")));
        assert_eq!(r.status, 200, "{}", r.text);
        secrets.push((
            r.body["session_id"].as_str().unwrap().to_string(),
            r.body["session_secret"].as_str().unwrap().to_string(),
        ));
    }
    let (me, my_secret) = secrets[0].clone();
    let rx = s.session_stream(&me, &my_secret);
    let (kind, snap) = next_frame(&rx, &[]);
    assert_eq!(kind, "presence");
    assert_eq!(snap["large"], true, "{snap}");
    assert_eq!(snap["count"], 6);
    assert_eq!(snap["session_id"], me.as_str());
    let recent: Vec<&str> =
        snap["participants"].as_array().unwrap().iter().map(|p| p["userName"].as_str().unwrap()).collect();
    assert_eq!(recent, ["guest 5", "guest 4", "guest 3", "guest 2", "guest 1", "guest 0"], "newest first");

    // Three more join: one summary (or a few) with the count and who, never a frame per join.
    let mut joined = Vec::new();
    for i in 6..9 {
        let r = s.join("hall", None, Some(&format!("guest {i}")));
        joined.push(r.body["session_id"].as_str().unwrap().to_string());
        secrets.push((
            r.body["session_id"].as_str().unwrap().to_string(),
            r.body["session_secret"].as_str().unwrap().to_string(),
        ));
    }
    let mut seen = Vec::new();
    let mut count = 0;
    while seen.len() < 3 {
        let (kind, f) = next_frame(&rx, &[]);
        assert_eq!(kind, "presence-summary", "{f}");
        count = f["count"].as_u64().unwrap();
        for p in f["joined"].as_array().unwrap() {
            assert!(p["joinTime"].as_str().unwrap().ends_with('Z'), "{p}");
            seen.push(p["id"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(count, 9);
    seen.sort();
    joined.sort();
    assert_eq!(seen, joined);

    // Leaving below the threshold (less 10%) makes it small again: a full snapshot.
    for (id, secret) in &secrets[1..7] {
        let l = s.call("POST", &format!("/v1/sessions/{id}/leave"), Some(secret), None);
        assert_eq!(l.status, 200, "{}", l.text);
    }
    let (kind, snap) = next_frame(&rx, &["presence-summary"]);
    assert_eq!(kind, "presence", "{snap}");
    assert_eq!(snap["large"], false);
    assert_eq!(snap["participants"].as_array().unwrap().len(), 3, "{snap}");
    // Small again: every change is a frame of its own.
    s.join_ok("hall", None);
    assert_eq!(next_frame(&rx, &[]).0, "participant.joined");

    // Its own ejection reaches it, and the stream closes after its departure.
    let r = s.post("/v1/rooms/hall/eject", &json!({"ids": [me]}));
    assert_eq!(r.body["ejectedIds"], json!([me]));
    let (kind, f) = next_frame(&rx, &[]);
    assert_eq!(kind, "participant.ejected", "{f}");
    assert_eq!(f["payload"]["session_id"], me.as_str());
    assert_eq!(next_frame(&rx, &[]).0, "participant.left");
    assert!(rx.recv_timeout(Duration::from_secs(3)).is_err(), "the stream closed");
}

#[test]
fn a_large_rooms_stream_closes_on_its_own_end_and_on_deletion() {
    let s = Server::start_with(&[("GATEHOUSE_LARGE_ROOM_THRESHOLD", "2")]);
    s.create_room(json!({"name": "big"}));
    let (a, a_secret, _) = s.join_ok("big", None);
    let (b, b_secret, _) = s.join_ok("big", None);
    let (_c, _, _) = s.join_ok("big", None);
    let ra = s.session_stream(&a, &a_secret);
    let rb = s.session_stream(&b, &b_secret);
    assert_eq!(next_frame(&ra, &[]).1["large"], true);
    assert_eq!(next_frame(&rb, &[]).1["large"], true);
    // a leaves: its stream gets its own departure and closes; b's sees only a summary.
    let l = s.call("POST", &format!("/v1/sessions/{a}/leave"), Some(&a_secret), None);
    assert_eq!(l.status, 200);
    assert_eq!(next_frame(&ra, &[]).0, "participant.left");
    assert!(ra.recv_timeout(Duration::from_secs(2)).is_err());
    let (kind, f) = next_frame(&rb, &[]);
    assert_eq!(kind, "presence-summary");
    assert_eq!(f["left"][0]["id"], a.as_str());
    // Deleting the room ends every stream.
    assert_eq!(s.delete("/v1/rooms/big").status, 200);
    let mut kinds = Vec::new();
    while let Ok((k, _)) = rb.recv_timeout(Duration::from_secs(3)) {
        kinds.push(k);
    }
    assert!(kinds.contains(&"participant.left".to_string()), "{kinds:?}");
}

#[test]
fn someone_elses_departure_does_not_close_my_stream() {
    let s = Server::start();
    s.create_room(json!({"name": "small"}));
    let (me, secret, _) = s.join_ok("small", None);
    let (other, other_secret, _) = s.join_ok("small", None);
    let rx = s.session_stream(&me, &secret);
    assert_eq!(next_frame(&rx, &[]).0, "presence");
    let l = s.call("POST", &format!("/v1/sessions/{other}/leave"), Some(&other_secret), None);
    assert_eq!(l.status, 200);
    let (kind, f) = next_frame(&rx, &[]);
    assert_eq!(kind, "participant.left");
    assert_eq!(f["payload"]["session_id"], other.as_str());
    // Still open: the next change arrives.
    s.join_ok("small", None);
    assert_eq!(next_frame(&rx, &[]).0, "participant.joined");
}

/// Minting a token for a room is an event of that room's too.
const TOKENS: &[&str] = &["meeting-token.created"];

fn ids(snap: &Value) -> Vec<String> {
    snap["participants"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap().to_string()).collect()
}

#[test]
fn hidden_participants_stay_off_other_participants_streams() {
    let s = Server::start();
    s.create_room(json!({"name": "quiet"}));
    let owner = s.token(json!({"room_name": "quiet", "is_owner": true}));
    let (host, host_secret, _) = s.join_ok("quiet", Some(&owner));
    let (me, secret, _) = s.join_ok("quiet", None);
    let guest = s.session_stream(&me, &secret);
    let admin = s.session_stream(&host, &host_secret);
    assert_eq!(next_frame(&guest, TOKENS).0, "presence");
    assert_eq!(next_frame(&admin, TOKENS).0, "presence");
    // A hidden participant's join reaches the admin, not the guest.
    let ghost_tok = s.token(json!({"room_name": "quiet", "user_name": "Ghost", "permissions": {"hasPresence": false}}));
    let (ghost, ghost_secret, _) = s.join_ok("quiet", Some(&ghost_tok));
    let (kind, f) = next_frame(&admin, TOKENS);
    assert_eq!((kind.as_str(), f["payload"]["session_id"].as_str()), ("participant.joined", Some(ghost.as_str())));
    // The guest sees the next visible change first, never the ghost's.
    let (visible, _, _) = s.join_ok("quiet", None);
    let (kind, f) = next_frame(&guest, TOKENS);
    assert_eq!((kind.as_str(), f["payload"]["session_id"].as_str()), ("participant.joined", Some(visible.as_str())));
    // Shown by an update: the guest's stream redraws with the ghost in it; hidden again: without.
    let show = |has: bool| {
        let body = json!({"data": {ghost.clone(): {"hasPresence": has}}}).to_string();
        let r = s.call("POST", "/v1/rooms/quiet/update-permissions", Some(&s.key), Some(&body));
        assert_eq!(r.status, 200, "{}", r.text);
    };
    show(true);
    let (kind, snap) = next_frame(&guest, &["participant.updated", "meeting-token.created"]);
    assert_eq!(kind, "presence", "{snap}");
    assert!(ids(&snap).contains(&ghost), "{snap}");
    show(false);
    let (kind, snap) = next_frame(&guest, &["participant.updated", "meeting-token.created"]);
    assert_eq!(kind, "presence", "{snap}");
    assert!(!ids(&snap).contains(&ghost), "{snap}");
    // Its departure, too, is for admins only.
    let l = s.call("POST", &format!("/v1/sessions/{ghost}/leave"), Some(&ghost_secret), None);
    assert_eq!(l.status, 200);
    s.join_ok("quiet", None);
    let (kind, f) = next_frame(&guest, TOKENS);
    assert_eq!(kind, "participant.joined", "the guest saw the ghost leave: {f}");
    assert_ne!(f["payload"]["session_id"], ghost.as_str());
}

#[test]
fn a_waiting_stream_hears_its_admission_when_nobody_else_follows_the_room() {
    let s = Server::start();
    s.create_room(json!({"name": "door", "privacy": "private", "properties": {"enable_knocking": true}}));
    let r = s.join("door", None, Some("Visitor"));
    assert_eq!(r.body["access"]["level"], "lobby", "{}", r.text);
    let id = r.body["session_id"].as_str().unwrap().to_string();
    let rx = s.session_stream(&id, r.body["session_secret"].as_str().unwrap());
    let (kind, f) = next_frame(&rx, &[]);
    assert_eq!((kind.as_str(), f["access"]["level"].as_str()), ("access", Some("lobby")), "{f}");
    // No stream follows the room; the API key admits.
    let body = json!({id.clone(): {"grantRequestedAccess": true}}).to_string();
    let r = s.call("POST", "/v1/rooms/door/waiting-participants", Some(&s.key), Some(&body));
    assert_eq!(r.status, 200, "{}", r.text);
    let (kind, f) = next_frame(&rx, &[]);
    assert_eq!((kind.as_str(), f["access"]["level"].as_str()), ("access", Some("full")), "{f}");
}

/// Frame kinds a stream got until (and with) a `room.updated` marker, skipping keep-alives.
fn kinds_until_marker(rx: &common::Frames) -> Vec<(String, Value)> {
    let mut got = Vec::new();
    loop {
        let (kind, f) = next_frame(rx, &[]);
        let done = kind == "room.updated";
        got.push((kind, f));
        if done {
            return got;
        }
    }
}

/// Issue 24, item 3: each event kind has one audience (ARCHITECTURE.md, "Session streams"):
/// a plain participant's stream gets what Daily's clients see (joins, departures, updates of
/// visible participants, the room's own changes); tokens, refused joins, knocks, ejections of
/// others and bans reach only the room's admins.
#[test]
fn admin_only_events_stay_off_plain_participants_streams() {
    let s = Server::start();
    s.create_room(json!({"name": "vis", "privacy": "private", "properties": {"enable_knocking": true}}));
    let owner = s.token(json!({"room_name": "vis", "is_owner": true, "user_id": "host"}));
    let plain = s.token(json!({"room_name": "vis", "user_id": "plain", "user_name": "Plain"}));
    let (host, host_secret, _) = s.join_ok("vis", Some(&owner));
    let (me, secret, _) = s.join_ok("vis", Some(&plain));
    let admin_rx = s.session_stream(&host, &host_secret);
    let plain_rx = s.session_stream(&me, &secret);
    assert_eq!(next_frame(&admin_rx, &[]).0, "presence");
    assert_eq!(next_frame(&plain_rx, &[]).0, "presence");

    // meeting-token.created, for someone who has not joined (and would be hidden).
    s.token(
        json!({"room_name": "vis", "user_id": "future", "user_name": "Not Yet", "permissions": {"hasPresence": false}}),
    );
    // participant.join-denied.
    let other_room = s.token(json!({"room_name": "elsewhere", "user_name": "Refused"}));
    assert_eq!(s.join("vis", Some(&other_room), None).status, 403);
    // waiting-participant.joined, then .left (denied).
    let knock = s.join("vis", None, Some("Knocker"));
    let knocker = knock.body["session_id"].as_str().unwrap().to_string();
    let r = s.post("/v1/rooms/vis/waiting-participants", &json!({knocker.clone(): {"grantRequestedAccess": false}}));
    assert_eq!(r.status, 200, "{}", r.text);
    // participant.joined, .updated, .ejected, .left; ban.created; meeting-token.revoked.
    let visitor = s.token(json!({"room_name": "vis", "user_id": "visitor", "user_name": "Visitor"}));
    let (v, _, _) = s.join_ok("vis", Some(&visitor));
    let r = s.post("/v1/rooms/vis/update-permissions", &json!({"data": {v.clone(): {"canSend": false}}}));
    assert_eq!(r.status, 200, "{}", r.text);
    let r = s.post("/v1/rooms/vis/eject", &json!({"ids": [v], "ban": true}));
    assert_eq!(r.status, 200, "{}", r.text);
    // ban.removed; meeting-token.revoked by jti.
    assert_eq!(s.delete("/v1/rooms/vis/bans/visitor").status, 200);
    let spare = s.token(json!({"room_name": "vis", "user_id": "spare"}));
    assert_eq!(s.post("/v1/meeting-tokens/revoke", &json!({"token": spare})).status, 200);
    // webhook.* carry no room; room.updated is the marker everyone sees.
    let r = s.post("/v1/rooms/vis", &json!({"properties": {"max_participants": 50}}));
    assert_eq!(r.status, 200, "{}", r.text);

    let seen_by_admin: Vec<String> = kinds_until_marker(&admin_rx).into_iter().map(|(k, _)| k).collect();
    let plain_frames = kinds_until_marker(&plain_rx);
    let seen_by_plain: Vec<&str> = plain_frames.iter().map(|(k, _)| k.as_str()).collect();
    for kind in [
        "meeting-token.created",
        "participant.join-denied",
        "waiting-participant.joined",
        "waiting-participant.left",
        "participant.joined",
        "participant.updated",
        "participant.ejected",
        "participant.left",
        "ban.created",
        "meeting-token.revoked",
        "ban.removed",
        "room.updated",
    ] {
        assert!(seen_by_admin.iter().any(|k| k == kind), "the admin did not see {kind}: {seen_by_admin:?}");
    }
    assert_eq!(
        seen_by_plain,
        ["participant.joined", "participant.updated", "participant.left", "room.updated"],
        "a plain participant's stream"
    );
    let text = format!("{plain_frames:?}");
    for secret_word in ["Not Yet", "future", "Refused", "Knocker", "spare"] {
        assert!(!text.contains(secret_word), "{secret_word} reached a plain participant: {text}");
    }
}
