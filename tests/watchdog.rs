//! A stuck dependency is not a silent hang: when the store's applier (the thread that writes
//! sled) makes no progress, `/readyz` answers 503 with the reason, the error is logged once,
//! systemd's watchdog stops being fed (so the unit is restarted), and writes meanwhile are
//! still acknowledged from the journal — a kill -9 loses none of them.

mod common;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::Server;
use serde_json::json;

/// The notifications systemd would get over `within`.
fn notifications(sock: &UnixDatagram, within: Duration) -> Vec<String> {
    let until = Instant::now() + within;
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    while Instant::now() < until {
        if let Ok(n) = sock.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).to_string());
        }
    }
    out
}

fn wait_ready(s: &Server, want: u16) -> serde_json::Value {
    for _ in 0..200 {
        let r = s.call("GET", "/readyz", None, None);
        if r.status == want {
            return r.body;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("/readyz never answered {want}");
}

#[test]
fn a_frozen_applier_is_reported_the_watchdog_starves_and_nothing_acknowledged_is_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let sock_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let dir = tmp.path().join("data");
    let env = [
        ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
        ("WATCHDOG_USEC", "400000"),
        ("GATEHOUSE_STALL_TIMEOUT_SECS", "1"),
        ("GATEHOUSE_SLED_FLUSH_EVERY_MS", "0"),
    ];
    let mut s = Server::start_in(&dir, &env);
    let healthy = notifications(&sock, Duration::from_millis(1200));
    assert_eq!(healthy.first().map(String::as_str), Some("READY=1"), "{healthy:?}");
    assert!(healthy.iter().filter(|m| *m == "WATCHDOG=1").count() >= 2, "{healthy:?}");

    // The applier stops; writes are still acknowledged (the journal has them).
    assert_eq!(s.post("/v1/_test/faults", &json!({"freeze_applier_ms": 5000})).status, 200);
    for i in 0..20 {
        s.create_room(json!({"name": format!("during-{i}")}));
    }
    let body = wait_ready(&s, 503);
    assert!(body["reason"].as_str().unwrap().contains("applier"), "{body}");
    let _ = notifications(&sock, Duration::from_millis(300));
    let starving = notifications(&sock, Duration::from_millis(1200));
    assert!(!starving.iter().any(|m| m == "WATCHDOG=1"), "the watchdog is still fed: {starving:?}");
    // Once the applier moves again, so does everything else.
    wait_ready(&s, 200);
    let fed = notifications(&sock, Duration::from_millis(1200));
    assert!(fed.iter().any(|m| m == "WATCHDOG=1"), "{fed:?}");
    assert_eq!(s.log().matches("the store is stuck").count(), 1, "logged once:\n{}", s.log());

    // Stuck again, and killed while stuck: every acknowledged write comes back from the journal.
    assert_eq!(s.post("/v1/_test/faults", &json!({"freeze_applier_ms": 60000})).status, 200);
    for i in 0..20 {
        s.create_room(json!({"name": format!("stuck-{i}")}));
    }
    wait_ready(&s, 503);
    s.kill9();
    let s = Server::start_in(&dir, &[]);
    for i in 0..20 {
        for name in [format!("during-{i}"), format!("stuck-{i}")] {
            assert_eq!(s.get(&format!("/v1/rooms/{name}")).status, 200, "acknowledged {name} lost");
        }
    }
    let seqs: Vec<u64> = s.events().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=40).collect::<Vec<u64>>());
}
