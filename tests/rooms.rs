//! Rooms API, black-box: creation (random and given names), validation, update, delete, listing.

mod common;
use common::Server;
use serde_json::json;

#[test]
fn random_names_are_20_chars_of_a_z_0_9() {
    let s = Server::start();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let room = s.create_room(json!({}));
        let name = room["name"].as_str().unwrap();
        assert_eq!(name.len(), 20);
        assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()), "{name}");
        assert!(seen.insert(name.to_string()));
        assert_eq!(room["privacy"], "public");
        assert_eq!(room["api_created"], true);
        assert_eq!(room["url"], format!("{}/{}", s.base, name));
        assert_eq!(room["config"], json!({}));
        assert!(uuid_like(room["id"].as_str().unwrap()));
    }
    // An empty name is a bad name, as documented; only an absent (or null) name means a random one.
    let r = s.post("/v1/rooms", &json!({"name": ""}));
    assert_eq!((r.status, r.body["error"].as_str()), (400, Some("invalid-request-error")), "{}", r.text);
    assert!(r.body["info"].as_str().unwrap().contains("room name"), "{}", r.text);
    assert_eq!(s.create_room(json!({"name": null}))["name"].as_str().unwrap().len(), 20);
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().filter(|c| *c == '-').count() == 4
}

#[test]
fn named_private_room_with_properties_round_trips() {
    let s = Server::start();
    let props = json!({"exp": 1893456000, "max_participants": 4, "enable_chat": false, "enable_prejoin_ui": false,
        "enable_emoji_reactions": false, "eject_at_room_exp": false, "start_video_off": false, "lang": "fr",
        "enable_recording": "cloud", "permissions": {"canSend": true}});
    let room = s.create_room(json!({"name": "private-room-test", "privacy": "private", "properties": props}));
    assert_eq!(room["name"], "private-room-test");
    assert_eq!(room["privacy"], "private");
    assert_eq!(room["config"], props);
    let created = room["created_at"].as_str().unwrap();
    assert!(created.ends_with('Z') && created.len() == 24, "{created}");
    let got = s.get("/v1/rooms/private-room-test");
    assert_eq!(got.status, 200);
    assert_eq!(got.body, room);
}

#[test]
fn taken_and_reserved_and_bad_names_are_refused() {
    let s = Server::start();
    s.create_room(json!({"name": "hello"}));
    let r = s.post("/v1/rooms", &json!({"name": "hello"}));
    assert_eq!((r.status, r.body["error"].as_str()), (400, Some("invalid-request-error")));
    assert!(r.body["info"].as_str().unwrap().contains("already exists"));
    for reserved in ["v1", "API", "healthz", "readyz", "metrics", "Dashboard", "assets", "static"] {
        let r = s.post("/v1/rooms", &json!({"name": reserved}));
        assert_eq!(r.status, 400, "{reserved}");
        assert!(r.body["info"].as_str().unwrap().contains("reserved"), "{}", r.text);
    }
    for bad in ["a b", "x/y", "é", "a.b", &"a".repeat(129)] {
        let r = s.post("/v1/rooms", &json!({"name": bad}));
        assert_eq!(r.status, 400, "{bad}");
    }
    assert_eq!(s.post("/v1/rooms", &json!({"name": "a".repeat(128)})).status, 200);
    assert_eq!(s.post("/v1/rooms", &json!({"name": 5})).status, 400);
}

#[test]
fn properties_are_validated_and_unknown_ones_named() {
    let s = Server::start();
    let cases = [
        (json!({"properties": {"no_such_thing": true}}), "no_such_thing"),
        (json!({"properties": {"exp": "tomorrow"}}), "exp"),
        (json!({"properties": {"exp": -5}}), "exp"),
        (json!({"properties": {"nbf": 1e300}}), "nbf"),
        (json!({"properties": {"exp": 99999999999999999u64}}), "exp"),
        (json!({"properties": {"max_participants": 0}}), "max_participants"),
        (json!({"properties": {"max_participants": 2.5}}), "max_participants"),
        (json!({"properties": {"enable_chat": "yes"}}), "enable_chat"),
        (json!({"properties": {"nbf": 2000000000, "exp": 1900000000}}), "nbf"),
        (json!({"privacy": "secret"}), "privacy"),
        (json!({"properties": []}), "properties"),
        (json!({"nmae": "typo"}), "nmae"),
    ];
    for (body, word) in cases {
        let r = s.post("/v1/rooms", &body);
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(r.body["error"], "invalid-request-error", "{body}");
        assert!(r.body["info"].as_str().unwrap().contains(word), "{body} → {}", r.text);
    }
    assert_eq!(s.get("/v1/rooms").body["total_count"], 0);
}

#[test]
fn update_merges_and_null_removes() {
    let s = Server::start();
    s.create_room(json!({"name": "r1", "properties": {"exp": 1893456000, "enable_chat": true}}));
    let r = s.post("/v1/rooms/r1", &json!({"privacy": "private", "properties": {"exp": null, "max_participants": 3}}));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["privacy"], "private");
    assert_eq!(r.body["config"], json!({"enable_chat": true, "max_participants": 3}));
    assert_eq!(s.get("/v1/rooms/r1").body["config"], json!({"enable_chat": true, "max_participants": 3}));
    assert_eq!(s.post("/v1/rooms/r1", &json!({"properties": {"bogus": 1}})).status, 400);
    assert_eq!(s.post("/v1/rooms/r1", &json!({"name": "renamed"})).status, 400);
    assert_eq!(s.post("/v1/rooms/nope", &json!({"privacy": "public"})).status, 404);
    // nbf after the stored exp is refused against the merged state.
    s.post("/v1/rooms/r1", &json!({"properties": {"exp": 1893456000}}));
    let r = s.post("/v1/rooms/r1", &json!({"properties": {"nbf": 1893456001}}));
    assert_eq!(r.status, 400, "{}", r.text);
}

#[test]
fn delete_then_404_and_name_reusable() {
    let s = Server::start();
    s.create_room(json!({"name": "gone"}));
    let r = s.delete("/v1/rooms/gone");
    assert_eq!((r.status, r.body.clone()), (200, json!({"deleted": true, "name": "gone"})));
    assert_eq!(s.get("/v1/rooms/gone").status, 404);
    assert_eq!(s.get("/v1/rooms/gone").body["error"], "not-found");
    assert_eq!(s.delete("/v1/rooms/gone").status, 404);
    s.create_room(json!({"name": "gone"}));
    assert_eq!(s.get("/v1/rooms").body["total_count"], 1);
}

#[test]
fn expired_room_answers_404() {
    let s = Server::start();
    let now = s.now_secs();
    s.create_room(json!({"name": "short", "properties": {"exp": now + 60}}));
    assert_eq!(s.get("/v1/rooms/short").status, 200);
    s.advance(61.0);
    assert_eq!(s.get("/v1/rooms/short").status, 404);
    assert_eq!(s.get("/v1/rooms").body["data"], json!([]));
}

#[test]
fn list_is_newest_first_with_cursors() {
    let s = Server::start();
    let names: Vec<String> = (0..7)
        .map(|i| {
            let n = format!("room-{i}");
            s.create_room(json!({"name": n}));
            n
        })
        .collect();
    let all = s.get("/v1/rooms");
    assert_eq!(all.body["total_count"], 7);
    let listed: Vec<&str> = all.body["data"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    let mut expect: Vec<&str> = names.iter().map(String::as_str).collect();
    expect.reverse();
    assert_eq!(listed, expect);

    let page1 = s.get("/v1/rooms?limit=3").body["data"].as_array().unwrap().clone();
    assert_eq!(page1.len(), 3);
    let last_id = page1[2]["id"].as_str().unwrap();
    let page2 = s.get(&format!("/v1/rooms?limit=3&starting_after={last_id}")).body["data"].as_array().unwrap().clone();
    let p2: Vec<&str> = page2.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(p2, vec!["room-3", "room-2", "room-1"]);
    let first_of_p2 = page2[0]["id"].as_str().unwrap();
    let back =
        s.get(&format!("/v1/rooms?limit=2&ending_before={first_of_p2}")).body["data"].as_array().unwrap().clone();
    let b: Vec<&str> = back.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(b, vec!["room-5", "room-4"]);

    for bad in [
        "limit=0",
        "limit=101",
        "limit=x",
        "starting_after=nope",
        &format!("starting_after={last_id}&ending_before={last_id}"),
    ] {
        assert_eq!(s.get(&format!("/v1/rooms?{bad}")).status, 400, "{bad}");
    }
    let unknown = "00000000-0000-4000-8000-000000000000";
    assert_eq!(s.get(&format!("/v1/rooms?starting_after={unknown}")).status, 400);
}

#[test]
fn rooms_and_events_survive_a_clean_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut s = Server::start_in(&dir, &[]);
    s.create_room(json!({"name": "keep", "privacy": "private"}));
    let status = s.terminate();
    assert!(status.success(), "SIGTERM exit: {status:?}");
    let s2 = Server::start_in(&dir, &[]);
    assert_eq!(s2.get("/v1/rooms/keep").body["privacy"], "private");
    s2.create_room(json!({"name": "after"}));
    let seqs: Vec<u64> = s2.events().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2]);
}
