//! Presence lists, whole and paged, black-box: `GET /v1/presence` keeps Daily's shape and
//! pages with `limit`/`starting_after` and a `Link: rel="next"` header; a room's presence pages
//! the same way, for the API key or an owner's token.

mod common;
use std::collections::BTreeSet;

use common::Server;
use serde_json::{json, Value};

fn next_link(r: &common::Reply) -> Option<String> {
    let link = r.header("link")?;
    let start = link.find('<')? + 1;
    let end = link.find('>')?;
    assert!(link.ends_with("rel=\"next\""), "{link}");
    Some(link[start..end].to_string())
}

fn ids_of_everyone(body: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for (room, list) in body.as_object().unwrap() {
        for p in list.as_array().unwrap() {
            assert_eq!(p["room"], room.as_str());
            out.push(p["id"].as_str().unwrap().to_string());
        }
    }
    out
}

#[test]
fn everyone_pages_in_a_stable_order_even_when_the_last_one_leaves() {
    let s = Server::start();
    let mut secrets = std::collections::HashMap::new();
    for room in ["pa", "pb", "pc"] {
        s.create_room(json!({"name": room}));
    }
    for i in 0..25 {
        let room = ["pa", "pb", "pc"][i % 3];
        let (id, secret, _) = s.join_ok(room, None);
        secrets.insert(id, secret);
        if i % 5 == 0 {
            s.advance(1.0);
        }
    }
    let whole = s.get("/v1/presence");
    assert!(whole.header("link").is_none(), "no paging unless asked");
    let all: Vec<String> = ids_of_everyone(&whole.body);
    assert_eq!(all.len(), 25);

    let mut seen = Vec::new();
    let mut url = "/v1/presence?limit=7".to_string();
    let mut pages = 0;
    loop {
        let r = s.get(&url);
        assert_eq!(r.status, 200, "{}", r.text);
        let ids = ids_of_everyone(&r.body);
        assert!(ids.len() <= 7);
        seen.extend(ids.clone());
        pages += 1;
        match next_link(&r) {
            Some(next) => {
                // The last participant of the page leaves before the next page is asked for:
                // the cursor still knows where it was.
                let last = ids.last().unwrap();
                let l = s.call("POST", &format!("/v1/sessions/{last}/leave"), Some(&secrets[last]), None);
                assert_eq!(l.status, 200, "{}", l.text);
                url = next;
            }
            None => break,
        }
    }
    assert_eq!(pages, 4);
    assert_eq!(seen, all, "pages, in order, are the whole list");
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len());
    // Rooms come in name order.
    let rooms: Vec<String> = whole.body.as_object().unwrap().keys().cloned().collect();
    assert_eq!(rooms, ["pa", "pb", "pc"]);
}

#[test]
fn a_room_pages_for_its_owner_and_refuses_others() {
    let s = Server::start();
    s.create_room(json!({"name": "big", "privacy": "private"}));
    s.create_room(json!({"name": "other"}));
    let member = s.token(json!({"room_name": "big"}));
    for _ in 0..12 {
        s.join_ok("big", Some(&member));
    }
    let (other_id, _, _) = s.join_ok("other", None);
    let owner = s.token(json!({"room_name": "big", "is_owner": true}));

    let mut seen = Vec::new();
    let mut url = "/v1/rooms/big/presence?limit=5".to_string();
    loop {
        let r = s.call("GET", &url, Some(&owner), None);
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.body["total_count"], 12);
        for p in r.body["data"].as_array().unwrap() {
            seen.push(p["id"].as_str().unwrap().to_string());
        }
        match next_link(&r) {
            Some(next) => url = next,
            None => break,
        }
    }
    let whole: Vec<String> = s.get("/v1/rooms/big/presence").body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(seen, whole);
    assert_eq!(seen.len(), 12);

    // A member's token, or an owner's of another room, may not list the room.
    let r = s.call("GET", "/v1/rooms/big/presence", Some(&member), None);
    assert_eq!(r.status, 403, "{}", r.text);
    let elsewhere = s.token(json!({"room_name": "other", "is_owner": true}));
    assert_eq!(s.call("GET", "/v1/rooms/big/presence", Some(&elsewhere), None).status, 403);
    assert_eq!(s.call("GET", "/v1/rooms/big/presence", None, None).status, 401);

    // Bad cursors and limits say what is wrong.
    for (q, why) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=x", "limit"),
        ("starting_after=nonsense", "starting_after"),
        ("starting_after=big.x.y", "starting_after"),
        ("starting_after=..", "starting_after"),
    ] {
        let r = s.get(&format!("/v1/rooms/big/presence?{q}"));
        assert_eq!(r.status, 400, "{q}: {}", r.text);
        assert!(r.body["info"].as_str().unwrap().contains(why), "{q}: {}", r.text);
    }
    let r = s.get(&format!("/v1/rooms/big/presence?starting_after={other_id}"));
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.body["info"].as_str().unwrap().contains("another room"), "{}", r.text);
}
