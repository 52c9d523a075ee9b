//! Crash test: a real server with sled's background flusher off (so an acknowledgement before
//! our own flush cannot hide) takes concurrent room and token creation and is killed with
//! SIGKILL right after acknowledgements, several times. After each restart every acknowledged
//! room and token is there, the event log has no gap, and the server starts cleanly.

mod common;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::{Server, KEY};
use serde_json::json;

const ENV: &[(&str, &str)] = &[("GATEHOUSE_SLED_FLUSH_EVERY_MS", "0")];

#[derive(Default)]
struct Acked {
    rooms: BTreeSet<String>,
    jtis: BTreeSet<String>,
}

fn jti_of(token: &str) -> String {
    use base64::Engine;
    let seg = token.split('.').nth(1).unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(seg).unwrap()).unwrap();
    v["jti"].as_str().unwrap().to_string()
}

/// Clients hammer the server until it dies; returns what it acknowledged.
fn load_until_killed(s: &mut Server, round: usize, kill_after: usize) -> Acked {
    let acked = Arc::new(Mutex::new(Acked::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..6 {
        let (base, acked, stop) = (s.base.clone(), acked.clone(), stop.clone());
        workers.push(std::thread::spawn(move || {
            let agent = ureq::AgentBuilder::new().timeout(std::time::Duration::from_secs(5)).build();
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                if w % 2 == 0 {
                    let name = format!("r{round}-w{w}-{i}");
                    let r = agent
                        .post(&format!("{base}/v1/rooms"))
                        .set("Authorization", &format!("Bearer {KEY}"))
                        .send_string(&json!({"name": name}).to_string());
                    match r {
                        Ok(resp) if resp.status() == 200 => {
                            acked.lock().unwrap().rooms.insert(name);
                        }
                        Ok(_) | Err(ureq::Error::Status(..)) => panic!("unexpected refusal"),
                        Err(_) => return, // the server died mid-request: not acknowledged
                    }
                } else {
                    let r = agent
                        .post(&format!("{base}/v1/meeting-tokens"))
                        .set("Authorization", &format!("Bearer {KEY}"))
                        .send_string(r#"{"properties":{"room_name":"x"}}"#);
                    match r {
                        Ok(resp) if resp.status() == 200 => {
                            let v: serde_json::Value = resp.into_json().unwrap();
                            acked.lock().unwrap().jtis.insert(jti_of(v["token"].as_str().unwrap()));
                        }
                        Ok(_) | Err(ureq::Error::Status(..)) => panic!("unexpected refusal"),
                        Err(_) => return,
                    }
                }
            }
        }));
    }
    // Kill right after the kill_after-th acknowledgement, while the clients keep writing.
    loop {
        let n = {
            let a = acked.lock().unwrap();
            a.rooms.len() + a.jtis.len()
        };
        if n >= kill_after {
            break;
        }
        std::thread::yield_now();
    }
    s.kill9();
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.join().unwrap();
    }
    Arc::try_unwrap(acked).ok().unwrap().into_inner().unwrap()
}

fn all_jtis(s: &Server) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut after: Option<String> = None;
    loop {
        let q = after.as_ref().map(|a| format!("&starting_after={a}")).unwrap_or_default();
        let r = s.get(&format!("/v1/meeting-tokens?limit=100{q}"));
        let data = r.body["data"].as_array().unwrap().clone();
        for t in &data {
            out.insert(t["jti"].as_str().unwrap().to_string());
        }
        if !r.body["has_more"].as_bool().unwrap() {
            return out;
        }
        after = data.last().map(|t| t["jti"].as_str().unwrap().to_string());
    }
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut all = Acked::default();
    for round in 0..4 {
        let mut s = Server::start_in(&dir, ENV);
        let acked = load_until_killed(&mut s, round, 150 + 50 * round);
        assert!(!acked.rooms.is_empty() && !acked.jtis.is_empty());
        all.rooms.extend(acked.rooms);
        all.jtis.extend(acked.jtis);

        let s = Server::start_in(&dir, ENV);
        for name in &all.rooms {
            assert_eq!(
                s.get(&format!("/v1/rooms/{name}")).status,
                200,
                "acknowledged room {name} lost in round {round}"
            );
        }
        let stored = all_jtis(&s);
        let lost: Vec<_> = all.jtis.difference(&stored).collect();
        assert!(lost.is_empty(), "round {round}: acknowledged tokens lost: {lost:?}");
        let events = s.events();
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e["seq"].as_u64().unwrap(), i as u64 + 1, "gap in the event log");
        }
        let created: BTreeSet<String> = events
            .iter()
            .filter(|e| e["type"] == "room.created")
            .map(|e| e["payload"]["name"].as_str().unwrap().to_string())
            .collect();
        assert!(all.rooms.is_subset(&created), "a room without its event");
        assert_eq!(s.call("GET", "/readyz", None, None).status, 200);
    }
}
