//! Meeting history, black-box, with the test clock: Daily's shapes, filters, pagination, bad
//! input, and records that survive a kill -9 and a backup/restore.

mod common;
use common::Server;
use serde_json::{json, Value};

fn leave(s: &Server, id: &str, secret: &str) {
    let r = s.call("POST", &format!("/v1/sessions/{id}/leave"), Some(secret), None);
    assert_eq!(r.status, 200, "{}", r.text);
}

/// Moves time on in steps shorter than the lease, keeping `alive` sessions alive.
fn pass(s: &Server, secs: u32, alive: &[(&str, &str)]) {
    let mut left = secs;
    while left > 0 {
        let step = left.min(10);
        s.advance(f64::from(step));
        for (id, secret) in alive {
            let r = s.call("POST", &format!("/v1/sessions/{id}/heartbeat"), Some(secret), None);
            assert_eq!(r.status, 200, "{}", r.text);
        }
        left -= step;
    }
}

#[test]
fn a_meeting_is_recorded_with_its_participants_in_dailys_shape() {
    let s = Server::start();
    s.create_room(json!({"name": "weekly"}));
    let t0 = s.now_secs();
    let tok = s.token(json!({"room_name": "weekly", "user_id": "ann-1", "user_name": "Ann"}));
    let (ann, ann_secret, _) = s.join_ok("weekly", Some(&tok));
    pass(&s, 10, &[(&ann, &ann_secret)]);
    let (bob, bob_secret, _) = s.join_ok("weekly", None);
    pass(&s, 20, &[(&ann, &ann_secret), (&bob, &bob_secret)]);
    // Ongoing: listed as such, durations running to now.
    let r = s.get("/v1/meetings?ongoing=true");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["total_count"], 1);
    let m = &r.body["data"][0];
    assert_eq!(m["room"], "weekly");
    assert_eq!(m["ongoing"], true);
    assert_eq!(m["start_time"], t0);
    assert_eq!(m["duration"], 30);
    assert_eq!(m["max_participants"], 2);
    assert_eq!(m["id"], s.events_of("meeting.started")[0]["payload"]["meeting_id"]);
    leave(&s, &bob, &bob_secret);
    pass(&s, 5, &[(&ann, &ann_secret)]);
    leave(&s, &ann, &ann_secret);
    assert_eq!(s.get("/v1/meetings?ongoing=true").body["total_count"], 0);
    let r = s.get("/v1/meetings");
    let m = r.body["data"][0].clone();
    assert_eq!(m["ongoing"], false);
    assert_eq!(m["duration"], 35);
    let ps = m["participants"].as_array().unwrap();
    assert_eq!(ps.len(), 2);
    assert_eq!(
        ps[0],
        json!({"user_id": "ann-1", "participant_id": ann, "user_name": "Ann", "join_time": t0, "duration": 35})
    );
    assert_eq!(ps[1]["participant_id"], bob.as_str());
    assert_eq!(ps[1]["user_id"], Value::Null);
    assert_eq!(ps[1]["duration"], 20);
    // One meeting, with its participants, paged in join order; past the end: 404 (as Daily).
    let id = m["id"].as_str().unwrap();
    let one = s.get(&format!("/v1/meetings/{id}"));
    assert_eq!(one.status, 200);
    assert!(one.body.get("participants").is_none(), "{}", one.text);
    assert_eq!(one.body["max_participants"], 2);
    let p1 = s.get(&format!("/v1/meetings/{id}/participants?limit=1"));
    assert_eq!(p1.body["data"][0]["participant_id"], ann.as_str(), "{}", p1.text);
    let p2 = s.get(&format!("/v1/meetings/{id}/participants?limit=1&joined_after={ann}"));
    assert_eq!(p2.body["data"][0]["participant_id"], bob.as_str());
    assert_eq!(s.get(&format!("/v1/meetings/{id}/participants?limit=1&joined_after={bob}")).status, 404);
    // Backwards: the participants just before the cursor.
    let back = s.get(&format!("/v1/meetings/{id}/participants?limit=1&joined_before={bob}"));
    assert_eq!(back.body["data"][0]["participant_id"], ann.as_str(), "{}", back.text);
    assert_eq!(s.get("/v1/meetings?no_participants=true").body["data"][0].get("participants"), None);
}

#[test]
fn filters_and_pages_newest_first() {
    let s = Server::start();
    for room in ["r1", "r2"] {
        s.create_room(json!({"name": room}));
    }
    let mut starts = Vec::new();
    for i in 0..5 {
        let room = if i % 2 == 0 { "r1" } else { "r2" };
        starts.push(s.now_secs());
        let (id, secret, _) = s.join_ok(room, None);
        pass(&s, 60, &[(&id, &secret)]);
        leave(&s, &id, &secret);
        s.advance(60.0);
    }
    let ids = |r: &common::Reply| -> Vec<String> {
        assert_eq!(r.status, 200, "{}", r.text);
        r.body["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect()
    };
    let all = ids(&s.get("/v1/meetings"));
    assert_eq!(all.len(), 5);
    let times: Vec<i64> = s.get("/v1/meetings").body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["start_time"].as_i64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] > w[1]), "newest first: {times:?}");
    assert_eq!(ids(&s.get("/v1/meetings?room=r1")).len(), 3);
    let window = s.get(&format!("/v1/meetings?timeframe_start={}&timeframe_end={}", starts[1], starts[3]));
    assert_eq!(window.body["total_count"], 2, "{}", window.text);
    // Pages of 2: on with starting_after, back with ending_before.
    let p1 = ids(&s.get("/v1/meetings?limit=2"));
    let p2 = ids(&s.get(&format!("/v1/meetings?limit=2&starting_after={}", p1[1])));
    let p3 = ids(&s.get(&format!("/v1/meetings?limit=2&starting_after={}", p2[1])));
    assert_eq!([p1.clone(), p2.clone(), p3].concat(), all);
    assert_eq!(ids(&s.get(&format!("/v1/meetings?limit=2&ending_before={}", p2[0]))), p1);
    assert_eq!(s.get("/v1/meetings?limit=2").body["total_count"], 5, "total_count ignores paging");
    // Bad input says what is wrong.
    for (q, says) in [
        ("timeframe_start=200&timeframe_end=100", "before"),
        ("timeframe_start=-5", "timeframe_start"),
        ("timeframe_end=99999999999999999", "timeframe_end"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("ongoing=maybe", "ongoing"),
        ("starting_after=no-such-meeting", "cursor"),
        ("starting_after=a&ending_before=b", "either"),
        ("room=bad%20name", "room"),
    ] {
        let r = s.get(&format!("/v1/meetings?{q}"));
        assert_eq!(r.status, 400, "{q}: {}", r.text);
        assert!(r.body["info"].as_str().unwrap().contains(says), "{q}: {}", r.text);
    }
    assert_eq!(s.get("/v1/meetings/no-such-meeting").status, 404);
    assert_eq!(s.get(&format!("/v1/meetings/{}/participants?joined_after=nobody", all[0])).status, 400);
    assert_eq!(s.call("GET", "/v1/meetings", None, None).status, 401);
}

#[test]
fn meetings_survive_kill_9_and_a_replaced_session_keeps_its_meeting() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut s = Server::start_in(&dir, &[]);
    s.create_room(json!({"name": "uniq", "properties": {"enforce_unique_user_ids": true}}));
    let t = s.token(json!({"room_name": "uniq", "user_id": "same"}));
    s.join_ok("uniq", Some(&t));
    s.join_ok("uniq", Some(&t)); // replaces the first: the same meeting goes on
                                 // A peak of 3 that has passed (two guests came and one went) is kept across the kill.
    s.join_ok("uniq", None);
    let (guest, guest_secret, _) = s.join_ok("uniq", None);
    leave(&s, &guest, &guest_secret);
    let before = s.get("/v1/meetings").body;
    assert_eq!(before["total_count"], 1, "{before}");
    assert_eq!(before["data"][0]["participants"].as_array().unwrap().len(), 4);
    assert_eq!(before["data"][0]["max_participants"], 3);
    s.kill9();
    let s = Server::start_in(&dir, &[]);
    let after = s.get("/v1/meetings").body;
    assert_eq!(after["data"][0]["id"], before["data"][0]["id"]);
    assert_eq!(after["data"][0]["ongoing"], true);
    assert_eq!(after["data"][0]["participants"].as_array().unwrap().len(), 4);
    assert_eq!(after["data"][0]["max_participants"], 3);
}
