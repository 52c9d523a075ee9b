//! Daily's batch room calls (`POST` and `DELETE /v1/batch/rooms`: up to 1,000 rooms, all or
//! nothing) and domain settings (`POST /v1/`: defaults rooms created afterwards take), black-box.

mod common;
use common::Server;
use serde_json::{json, Value};

fn room_names(s: &Server) -> Vec<String> {
    let mut names: Vec<String> = s.get("/v1/rooms").body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

fn batch_delete(s: &Server, body: &Value) -> common::Reply {
    s.call("DELETE", "/v1/batch/rooms", Some(&s.key), Some(&body.to_string()))
}

#[test]
fn a_batch_creates_every_room_in_the_order_given() {
    let s = Server::start();
    let r = s.post(
        "/v1/batch/rooms",
        &json!({"rooms": [
            {"name": "batch-a", "privacy": "private", "properties": {"max_participants": 3}},
            {},
            {"name": "batch-b", "properties": {"enable_knocking": true}},
        ]}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    let data = r.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    assert_eq!((data[0]["name"].as_str(), data[0]["privacy"].as_str()), (Some("batch-a"), Some("private")));
    assert_eq!(data[0]["config"], json!({"max_participants": 3}));
    assert_eq!(data[1]["name"].as_str().unwrap().len(), 20, "no name: a random one");
    assert_eq!(data[2]["config"], json!({"enable_knocking": true}));
    // Each is an ordinary room: readable, listed, announced, joinable.
    for room in data {
        let name = room["name"].as_str().unwrap();
        assert_eq!(&s.get(&format!("/v1/rooms/{name}")).body, room);
    }
    assert_eq!(s.get("/v1/rooms").body["total_count"], 3);
    assert_eq!(s.events_of("room.created").len(), 3);
    s.join_ok("batch-b", None);
}

#[test]
fn a_batch_with_one_bad_room_creates_none() {
    let s = Server::start();
    s.create_room(json!({"name": "taken"}));
    let cases = [
        (
            json!({"rooms": [{"name": "fresh-1"}, {"name": "taken"}, {"name": "fresh-2"}]}),
            400,
            "a room named 'taken' already exists",
        ),
        (
            json!({"rooms": [{"name": "twice"}, {"name": "fresh-1"}, {"name": "twice"}]}),
            400,
            "room 'twice' is named twice",
        ),
        (json!({"rooms": [{"name": "fresh-1"}, {"name": "bad name"}]}), 400, "rooms[1]: room name must be"),
        (
            json!({"rooms": [{}, {"properties": {"no_such_thing": 1}}]}),
            400,
            "rooms[1]: room unknown property 'no_such_thing'",
        ),
        (json!({"rooms": [{}, {"colour": "red"}]}), 400, "rooms[1]: unknown parameter 'colour'"),
        (json!({"rooms": [{}, "just-a-name"]}), 400, "rooms[1] must be an object"),
        (json!({"rooms": []}), 400, "'rooms' must be a list of 1 to 1000 rooms"),
        (json!({"rooms": {"name": "x"}}), 400, "'rooms' must be a list"),
        (json!({}), 400, "'rooms' must be a list"),
        (json!({"rooms": [{}], "extra": 1}), 400, "unknown parameter 'extra'"),
    ];
    for (body, status, info) in cases {
        let r = s.post("/v1/batch/rooms", &body);
        assert_eq!(r.status, status, "{body}: {}", r.text);
        assert_eq!(r.body["error"], "invalid-request-error", "{}", r.text);
        assert!(r.body["info"].as_str().unwrap().starts_with(info), "{body}: {}", r.text);
        assert_eq!(room_names(&s), ["taken"], "nothing of a refused batch is created ({body})");
    }
    assert_eq!(s.events_of("room.created").len(), 1);
    // Without the API key, nothing at all.
    let r = s.call("POST", "/v1/batch/rooms", None, Some(r#"{"rooms":[{}]}"#));
    assert_eq!(r.status, 401);
}

#[test]
fn a_batch_holds_up_to_1000_rooms() {
    let s = Server::start();
    let props = json!({"max_participants": 10, "enable_chat": true, "start_video_off": true, "lang": "en"});
    let rooms: Vec<Value> = (0..1000).map(|i| json!({"name": format!("r{i:04}"), "properties": props})).collect();
    let over: Vec<Value> = (0..1001).map(|_| json!({})).collect();
    let r = s.post("/v1/batch/rooms", &json!({"rooms": over}));
    assert_eq!(r.status, 400);
    assert_eq!(r.body["info"], "'rooms' lists 1001 rooms; at most 1000 per call");
    // 1,000 rooms with properties are more than the default 64 KiB body limit allows a single call.
    let body = json!({"rooms": rooms});
    assert!(body.to_string().len() > 64 * 1024);
    let r = s.post("/v1/batch/rooms", &body);
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["data"].as_array().unwrap().len(), 1000);
    assert_eq!(s.get("/v1/rooms").body["total_count"], 1000);
    assert_eq!(s.get("/v1/rooms/r0999").status, 200);
    // All of them go in one call too.
    let names: Vec<String> = (0..1000).map(|i| format!("r{i:04}")).collect();
    let r = batch_delete(&s, &json!({"room_names": names}));
    assert_eq!((r.status, &r.body), (200, &json!({"deleted_count": 1000})), "{}", r.text);
    assert_eq!(s.get("/v1/rooms").body["total_count"], 0);
}

#[test]
fn a_batch_delete_ejects_like_a_delete_and_refuses_all_or_nothing() {
    let s = Server::start();
    for n in ["keep", "go-1", "go-2"] {
        s.create_room(json!({"name": n}));
    }
    let (present, _, _) = s.join_ok("go-1", None);
    let refused = [
        (json!({"room_names": ["go-1", "nope"]}), 404, "not-found", "room 'nope' not found"),
        (json!({"room_names": ["go-1", "bad name!"]}), 404, "not-found", "room 'bad name!' not found"),
        (json!({"room_names": ["go-1", "go-1"]}), 400, "invalid-request-error", "room 'go-1' is named twice"),
        (json!({"room_names": ["go-1", 7]}), 400, "invalid-request-error", "room_names[1] must be a string"),
        (json!({"room_names": []}), 400, "invalid-request-error", "'room_names' must be a list of 1 to 1000 rooms"),
        (json!({"rooms": ["go-1"]}), 400, "invalid-request-error", "unknown parameter 'rooms'"),
    ];
    for (body, status, kind, info) in refused {
        let r = batch_delete(&s, &body);
        assert_eq!(
            (r.status, r.body["error"].as_str(), r.body["info"].as_str()),
            (status, Some(kind), Some(info)),
            "{body}"
        );
        assert_eq!(room_names(&s), ["go-1", "go-2", "keep"], "nothing of a refused batch is deleted ({body})");
    }
    assert_eq!(s.get("/v1/rooms/go-1/presence").body["total_count"], 1);
    let r = batch_delete(&s, &json!({"room_names": ["go-1", "go-2"]}));
    assert_eq!((r.status, &r.body), (200, &json!({"deleted_count": 2})), "{}", r.text);
    assert_eq!(room_names(&s), ["keep"]);
    let ejected = s.wait_event("participant.ejected", |e| e["payload"]["session_id"] == present.as_str());
    assert_eq!(ejected["payload"]["reason"], "room_deleted");
    assert_eq!(s.events_of("room.deleted").len(), 2);
    // Deleted rooms are gone: deleting them again is a 404 for the whole batch.
    assert_eq!(batch_delete(&s, &json!({"room_names": ["keep", "go-2"]})).status, 404);
    assert_eq!(room_names(&s), ["keep"]);
}

#[test]
fn domain_settings_are_defaults_for_rooms_created_after_them_and_survive_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Server::start_in(&tmp.path().join("d"), &[]);
    let before = s.create_room(json!({"name": "before"}));
    let r = s.post(
        "/v1/",
        &json!({"properties": {"enforce_unique_user_ids": true, "lang": "fi", "hide_daily_branding": true}}),
    );
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["config"]["lang"], "fi");
    assert_eq!(r.body["config"]["hide_daily_branding"], true);
    assert_eq!(r.body["config"]["max_participants"], 200, "the server's own defaults stay");
    assert!(r.body["domain_id"].is_string());
    assert_eq!(s.get("/v1").body, r.body);
    let updated = s.wait_event("domain.updated", |_| true);
    assert_eq!(updated["payload"]["config"]["lang"], "fi");

    // A room made now takes the inherited settings (not the domain's own), one that sets its own keeps it.
    let after = s.create_room(json!({"name": "after"}));
    assert_eq!(after["config"], json!({"enforce_unique_user_ids": true, "lang": "fi"}));
    let own = s.create_room(json!({"name": "own", "properties": {"lang": "sv"}}));
    assert_eq!(own["config"], json!({"enforce_unique_user_ids": true, "lang": "sv"}));
    let batch = s.post("/v1/batch/rooms", &json!({"rooms": [{"name": "batched"}]}));
    assert_eq!(batch.body["data"][0]["config"]["lang"], "fi");
    assert_eq!(s.get("/v1/rooms/before").body, before, "a room that existed keeps its rules");

    // The inherited rule is a rule: a second join with the same user id ejects the first.
    let t = s.token(json!({"room_name": "after", "user_id": "same"}));
    let (first, _, _) = s.join_ok("after", Some(&t));
    let (second, _, _) = s.join_ok("after", Some(&t));
    let p = s.get("/v1/rooms/after/presence").body;
    assert_eq!((p["total_count"].as_i64(), p["data"][0]["id"].as_str()), (Some(1), Some(second.as_str())));
    let ej = s.wait_event("participant.ejected", |e| e["payload"]["session_id"] == first.as_str());
    assert_eq!(ej["payload"]["reason"], "duplicate_user_id");

    // Acknowledged means durable: kill -9, restart, the settings are there and still apply.
    let domain = s.get("/v1").body;
    s.kill9();
    let s = Server::start_in(&tmp.path().join("d"), &[]);
    assert_eq!(s.get("/v1").body, domain);
    assert_eq!(s.create_room(json!({"name": "later"}))["config"]["lang"], "fi");

    // null removes a setting; later rooms no longer take it.
    let r = s.post("/v1/", &json!({"properties": {"lang": null}}));
    assert_eq!(r.status, 200);
    assert!(r.body["config"].get("lang").is_none(), "{}", r.text);
    assert_eq!(s.create_room(json!({"name": "last"}))["config"], json!({"enforce_unique_user_ids": true}));
}

#[test]
fn domain_settings_are_validated_by_name_and_type() {
    let s = Server::start();
    let cases = [
        (json!({"properties": {"max_participants": 5}}), "domain unknown property 'max_participants'"),
        (json!({"properties": {"exp": 1893456000}}), "domain unknown property 'exp'"),
        (json!({"properties": {"hipaa": true}}), "domain unknown property 'hipaa'"),
        (json!({"properties": {"enforce_unique_user_ids": "yes"}}), "domain property 'enforce_unique_user_ids'"),
        (json!({"properties": {"permissions": {"canSend": "sometimes"}}}), "domain property 'permissions"),
        (json!({"properties": 5}), "'properties' must be an object"),
        (json!({"config": {}}), "unknown parameter 'config'"),
    ];
    for (body, info) in cases {
        let r = s.post("/v1/", &body);
        assert_eq!((r.status, r.body["error"].as_str()), (400, Some("invalid-request-error")), "{body}: {}", r.text);
        assert!(r.body["info"].as_str().unwrap().starts_with(info), "{body}: {}", r.text);
    }
    assert_eq!(s.events_of("domain.updated").len(), 0, "nothing refused was stored");
    assert_eq!(s.call("POST", "/v1/", None, Some(r#"{"properties":{"lang":"fi"}}"#)).status, 401);
    assert!(s.get("/v1").body["config"].get("lang").is_none());
}
