//! Live permission changes, black-box: `POST /v1/rooms/:name/update-permissions` as Daily
//! documents it, validation against Daily's value sets, `hasPresence: false` in presence, and
//! `*` updates racing joins.

mod common;
use common::Server;
use serde_json::{json, Value};

fn update(s: &Server, auth: &str, room: &str, body: Value) -> common::Reply {
    s.call("POST", &format!("/v1/rooms/{room}/update-permissions"), Some(auth), Some(&body.to_string()))
}

/// A session's permissions as the log last stated them (its join, then each update).
fn permissions_of(s: &Server, id: &str) -> Value {
    let mut perms = Value::Null;
    for e in s.events() {
        if (e["type"] == "participant.updated" || e["type"] == "participant.joined") && e["payload"]["session_id"] == id
        {
            perms = e["payload"]["permissions"].clone();
        }
    }
    perms
}

#[test]
fn updates_replace_fields_merge_can_receive_and_star_covers_the_rest() {
    let s = Server::start();
    s.create_room(json!({"name": "studio"}));
    let (a, _, _) = s.join_ok("studio", None);
    let (b, _, _) = s.join_ok("studio", None);
    let r = s.post(
        "/v1/rooms/studio/update-permissions",
        &json!({"data": {"*": {"canSend": false}, a.clone(): {"canAdmin": ["participants"], "canReceive": {"base": false}}}}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["status"], "sent");
    let mut updated: Vec<String> =
        r.body["updated"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().into()).collect();
    updated.sort();
    let mut want = vec![a.clone(), b.clone()];
    want.sort();
    assert_eq!(updated, want);
    // a got its own patch only (not "*"'s); b got "*".
    assert_eq!(
        permissions_of(&s, &a),
        json!({"hasPresence": true, "canAdmin": ["participants"], "canReceive": {"base": false}})
    );
    assert_eq!(permissions_of(&s, &b)["canSend"], false);
    // canReceive merges by sub-field.
    let r = s.post(
        "/v1/rooms/studio/update-permissions",
        &json!({"data": {a.clone(): {"canReceive": {"byUserId": {"u1": true}}}}}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(permissions_of(&s, &a)["canReceive"], json!({"base": false, "byUserId": {"u1": true}}));
    // The same update again changes nothing and logs nothing.
    let before = s.events_of("participant.updated").len();
    let r = s.post(
        "/v1/rooms/studio/update-permissions",
        &json!({"data": {a.clone(): {"canReceive": {"byUserId": {"u1": true}}}}}),
    );
    assert_eq!(r.body["updated"], json!([]));
    assert_eq!(s.events_of("participant.updated").len(), before);
    // Someone who joins later keeps their own permissions.
    let (c, _, body) = s.join_ok("studio", None);
    assert_eq!(body["permissions"], json!({"hasPresence": true}));
    assert_ne!(permissions_of(&s, &c)["canSend"], false);
}

#[test]
fn has_presence_false_hides_from_presence_but_not_from_the_rooms_own_list() {
    let s = Server::start();
    s.create_room(json!({"name": "quiet"}));
    let (shy, _, _) = s.join_ok("quiet", None);
    let (loud, _, _) = s.join_ok("quiet", None);
    let r = s.post("/v1/rooms/quiet/update-permissions", &json!({"data": {shy.clone(): {"hasPresence": false}}}));
    assert_eq!(r.body["updated"], json!([shy]), "{}", r.text);
    let everyone: Vec<Value> = s.get("/v1/presence").body["quiet"].as_array().unwrap().clone();
    assert_eq!(everyone.len(), 1);
    assert_eq!(everyone[0]["id"], loud.as_str());
    let room = s.get("/v1/rooms/quiet/presence").body;
    assert_eq!(room["total_count"], 2);
    let hidden = room["data"].as_array().unwrap().iter().find(|p| p["id"] == shy.as_str()).unwrap().clone();
    assert_eq!(hidden["hidden"], true);
    // Shown again.
    s.post("/v1/rooms/quiet/update-permissions", &json!({"data": {shy.clone(): {"hasPresence": true}}}));
    assert_eq!(s.get("/v1/presence").body["quiet"].as_array().unwrap().len(), 2);
}

#[test]
fn who_may_update_and_bad_input_is_refused_with_reasons() {
    let s = Server::start();
    s.create_room(json!({"name": "desk", "privacy": "private"}));
    let member = s.token(json!({"room_name": "desk"}));
    let admin = s.token(json!({"room_name": "desk", "permissions": {"canAdmin": true}}));
    let (m, _, _) = s.join_ok("desk", Some(&member));
    let ok = json!({"data": {m.clone(): {"canSend": ["audio"]}}});
    assert_eq!(update(&s, &member, "desk", ok.clone()).status, 403);
    assert_eq!(update(&s, &admin, "desk", ok.clone()).status, 200);
    assert_eq!(s.call("POST", "/v1/rooms/desk/update-permissions", None, Some(&ok.to_string())).status, 401);
    assert_eq!(s.post("/v1/rooms/nowhere/update-permissions", &ok).status, 404);
    for (body, says) in [
        (json!({"data": {m.clone(): {"canSend": ["smell"]}}}), "smell"),
        (json!({"data": {m.clone(): {"canSend": ["audio", "audio"]}}}), "twice"),
        (json!({"data": {m.clone(): {"canAdmin": ["everything"]}}}), "participants"),
        (json!({"data": {m.clone(): {"hasPresence": "no"}}}), "hasPresence"),
        (json!({"data": {m.clone(): {"canReceive": {"base": {"smell": true}}}}}), "smell"),
        (json!({"data": {m.clone(): {"isBoss": true}}}), "isBoss"),
        (json!({"data": {m.clone(): ["video"]}}), "object"),
        (json!({"data": {}}), "data"),
        (json!({"data": []}), "data"),
        (json!({"data": {m.clone(): {}}, "extra": 1}), "extra"),
        (json!({"data": {m.clone(): {}}}), "names no permission to change"),
        (json!({}), "data"),
    ] {
        let r = s.post("/v1/rooms/desk/update-permissions", &body);
        assert_eq!(r.status, 400, "{body}: {}", r.text);
        assert!(r.text.contains(says), "{body}: {}", r.text);
    }
    // Tokens are held to the same value sets, issued or minted offline.
    let r = s.post(
        "/v1/meeting-tokens",
        &json!({"properties": {"room_name": "desk", "permissions": {"canSend": ["smell"]}}}),
    );
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.text.contains("smell"));
}

#[test]
fn star_updates_racing_joins_touch_each_session_once_or_not_at_all() {
    let s = Server::start();
    s.create_room(json!({"name": "race", "properties": {"max_participants": 1000}}));
    for _ in 0..5 {
        s.join_ok("race", None);
    }
    let base = s.base.clone();
    let joiners: Vec<_> = (0..4)
        .map(|_| {
            let base = base.clone();
            std::thread::spawn(move || {
                (0..15)
                    .map(|_| {
                        common::call_url("POST", &format!("{base}/v1/rooms/race/join"), None, Some("{}"), &[]).status
                    })
                    .collect::<Vec<u16>>()
            })
        })
        .collect();
    let mut updates = Vec::new();
    for i in 0..10 {
        let r = s.post("/v1/rooms/race/update-permissions", &json!({"data": {"*": {"canSend": i % 2 == 0}}}));
        assert_eq!(r.status, 200, "{}", r.text);
        updates.push(r.body["updated"].as_array().unwrap().len());
    }
    for j in joiners {
        assert!(j.join().unwrap().iter().all(|st| *st == 200));
    }
    // Every participant.updated names a session that was present, and each update's reply
    // counted exactly the events it logged.
    let events = s.events_of("participant.updated");
    assert_eq!(events.len(), updates.iter().sum::<usize>());
    let joined: std::collections::HashSet<String> = s
        .events_of("participant.joined")
        .iter()
        .map(|e| e["payload"]["session_id"].as_str().unwrap().to_string())
        .collect();
    assert!(events.iter().all(|e| joined.contains(e["payload"]["session_id"].as_str().unwrap())));
    assert_eq!(s.get("/v1/rooms/race/presence").body["total_count"], 65);
}

/// Issue 24, item 6: `canAdmin` withdrawn from a token's session by update-permissions stays
/// withdrawn for that token: after the session leaves, the token neither ejects nor bans, and
/// a new session from it starts without admin rights; a later grant restores them.
#[test]
fn a_withdrawn_can_admin_sticks_to_the_token() {
    let s = Server::start();
    s.create_room(json!({"name": "mods"}));
    let moderator =
        s.token(json!({"room_name": "mods", "user_id": "mod", "permissions": {"canAdmin": ["participants"]}}));
    let (first, secret, _) = s.join_ok("mods", Some(&moderator));
    assert_eq!(s.eject_as("mods", &moderator, json!({"user_ids": ["nobody"]})).status, 200, "an admin to begin with");
    let r = update(&s, &s.key, "mods", json!({"data": {first.clone(): {"canAdmin": false}}}));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(s.eject_as("mods", &moderator, json!({"user_ids": ["x"], "ban": true})).status, 403);
    let l = s.call("POST", &format!("/v1/sessions/{first}/leave"), Some(&secret), None);
    assert_eq!(l.status, 200);
    let r = s.eject_as("mods", &moderator, json!({"user_ids": ["x"], "ban": true}));
    assert_eq!(r.status, 403, "the withdrawal outlived the session: {}", r.text);
    assert!(s.events_of("ban.created").is_empty());
    // A new session from the same token starts without admin rights.
    let (second, _, body) = s.join_ok("mods", Some(&moderator));
    assert_eq!(body["permissions"]["canAdmin"], json!([]), "{body}");
    assert_eq!(s.eject_as("mods", &moderator, json!({"user_ids": ["x"]})).status, 403);
    // Granted again: the token is an admin again, with or without a session.
    let r = update(&s, &s.key, "mods", json!({"data": {second.clone(): {"canAdmin": ["participants"]}}}));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(s.eject_as("mods", &moderator, json!({"ids": [second]})).status, 200);
    assert_eq!(s.eject_as("mods", &moderator, json!({"user_ids": ["x"], "ban": true})).status, 200);
}
