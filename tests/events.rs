//! The event log: contiguous sequence numbers from 1, Daily's envelope, paging, type filters,
//! long-poll, and numbering that continues across restarts.

mod common;
use common::Server;
use serde_json::json;

#[test]
fn every_mutation_logs_its_event_in_order() {
    let s = Server::start();
    let domain = s.get("/v1/").body["domain_id"].as_str().unwrap().replace('-', "");
    s.create_room(json!({"name": "r"}));
    s.post("/v1/rooms/r", &json!({"properties": {"max_participants": 2}}));
    s.token(json!({"room_name": "r"}));
    s.delete("/v1/rooms/r");
    let ev = s.events();
    let types: Vec<&str> = ev.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, vec!["room.created", "room.updated", "meeting-token.created", "room.deleted"]);
    for (i, e) in ev.iter().enumerate() {
        let seq = i as u64 + 1;
        assert_eq!(e["seq"], seq);
        assert_eq!(e["id"], format!("evt_{}_{seq}", &domain[..8]));
        assert_eq!(e["version"], "1.0.0");
        assert!(e["event_ts"].as_f64().unwrap() > 1.7e9);
    }
    assert_eq!(ev[1]["payload"]["room"], "r");
    assert_eq!(ev[1]["payload"]["config"]["max_participants"], 2);
    assert_eq!(ev[3]["payload"]["name"], "r");
}

#[test]
fn paging_filters_and_next_after() {
    let s = Server::start();
    for i in 0..5 {
        s.create_room(json!({"name": format!("r{i}")}));
        s.token(json!({}));
    }
    let r = s.get("/v1/events?after=0&limit=3").body;
    assert_eq!(r["data"].as_array().unwrap().len(), 3);
    assert_eq!(
        (r["next_after"].as_u64(), r["has_more"].as_bool(), r["head_seq"].as_u64()),
        (Some(3), Some(true), Some(10))
    );
    let r = s.get("/v1/events?after=3&limit=1000").body;
    assert_eq!(r["data"][0]["seq"], 4);
    assert_eq!((r["next_after"].as_u64(), r["has_more"].as_bool()), (Some(10), Some(false)));
    let rooms = s.get("/v1/events?types=room.created").body;
    let seqs: Vec<u64> = rooms["data"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 3, 5, 7, 9]);
    assert_eq!(rooms["next_after"], 10, "next_after counts filtered-out events");
    let none = s.get("/v1/events?after=10").body;
    assert_eq!((none["data"].as_array().unwrap().len(), none["next_after"].as_u64()), (0, Some(10)));
}

#[test]
fn long_poll_returns_when_an_event_lands() {
    let s = Server::start();
    let base = s.base.clone();
    let waiter = std::thread::spawn(move || {
        let started = std::time::Instant::now();
        let r = common::call_url("GET", &format!("{base}/v1/events?after=0&wait=20"), Some(common::KEY), None, &[]);
        (r, started.elapsed())
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    s.create_room(json!({"name": "wake"}));
    let (r, took) = waiter.join().unwrap();
    assert_eq!(r.body["data"][0]["payload"]["name"], "wake");
    assert!(took < std::time::Duration::from_secs(15), "long-poll waited {took:?}");
}

#[test]
fn sequence_continues_after_restart_without_gaps() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let mut s = Server::start_in(&dir, &[]);
    s.create_room(json!({"name": "a"}));
    s.create_room(json!({"name": "b"}));
    let domain = s.get("/v1/").body["domain_id"].clone();
    s.kill9();
    let s = Server::start_in(&dir, &[]);
    assert_eq!(s.get("/v1/").body["domain_id"], domain, "domain id is stable");
    s.create_room(json!({"name": "c"}));
    let seqs: Vec<u64> = s.events().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
}
