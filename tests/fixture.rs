//! A data dir written by an earlier version (tests/fixtures/v1) still opens, reads and takes
//! new writes, with event numbering continuing where it stopped.

mod common;
use common::Server;
use serde_json::json;

#[test]
fn version_1_data_dir_still_opens() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let store = data.join("store");
    std::fs::create_dir_all(store.join("blobs")).unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1");
    for f in ["db", "conf"] {
        std::fs::copy(fixture.join(f), store.join(f)).unwrap();
    }
    let token = std::fs::read_to_string(fixture.join("owner-token.txt")).unwrap().trim().to_string();

    let s = Server::start_in(&data, &[]);
    let room = s.get("/v1/rooms/fixture-room");
    assert_eq!(room.status, 200, "{}", room.text);
    assert_eq!(room.body["privacy"], "private");
    assert_eq!(room.body["config"], json!({"exp": 4102444800u64, "max_participants": 7, "enable_chat": true}));
    assert_eq!(room.body["url"], format!("{}/fixture-room", s.base));
    assert_eq!(s.get("/v1/rooms/second").body["config"], json!({"enable_knocking": true}));
    assert_eq!(s.get("/v1/rooms/deleted").status, 404);
    assert_eq!(s.get("/v1/rooms").body["total_count"], 2);

    let v = s.get(&format!("/v1/meeting-tokens/{token}"));
    assert_eq!(v.status, 200, "{}", v.text);
    assert_eq!(v.body["room_name"], "fixture-room");
    assert_eq!(v.body["user_id"], "owner-1");
    let listed = s.get("/v1/meeting-tokens?room_name=fixture-room").body;
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);

    let types: Vec<String> = s.events().iter().map(|e| e["type"].as_str().unwrap().to_string()).collect();
    assert_eq!(
        types,
        ["room.created", "room.created", "room.updated", "meeting-token.created", "room.created", "room.deleted"]
    );
    s.create_room(json!({"name": "new-one"}));
    let last = s.events().last().cloned().unwrap();
    assert_eq!((last["seq"].as_u64(), last["type"].as_str()), (Some(7), Some("room.created")));
}
