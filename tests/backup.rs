//! Backup and restore round trip: a running server and a stopped data dir back up to the
//! same state; restoring gives the same rooms, tokens, bans, revocations, timers and event
//! log, and a restored server fires its overdue deadlines.

mod common;
use common::{Server, KEY};
use serde_json::{json, Value};

fn gatehouse(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(args)
        .env("GATEHOUSE_API_KEY", KEY)
        .output()
        .unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Everything observable, minus room URLs (they follow each server's own address) and
/// presence durations (they follow the clock).
fn snapshot(s: &Server) -> Value {
    let mut rooms = s.get("/v1/rooms").body["data"].clone();
    for r in rooms.as_array_mut().unwrap() {
        r.as_object_mut().unwrap().remove("url");
    }
    let mut presence = s.get("/v1/presence").body;
    for list in presence.as_object_mut().unwrap().values_mut() {
        for p in list.as_array_mut().unwrap() {
            p.as_object_mut().unwrap().remove("duration");
        }
    }
    let mut meetings = s.get("/v1/meetings").body["data"].clone();
    for m in meetings.as_array_mut().unwrap() {
        m.as_object_mut().unwrap().remove("duration");
        for p in m["participants"].as_array_mut().unwrap() {
            p.as_object_mut().unwrap().remove("duration");
        }
    }
    json!({
        "meetings": meetings,
        "rooms": rooms,
        "presence": presence,
        "tokens": s.get("/v1/meeting-tokens").body["data"],
        "bans": s.get("/v1/rooms/classroom/bans").body["data"],
        "events": s.events(),
    })
}

#[test]
fn round_trip_running_and_stopped_then_overdue_deadlines_fire() {
    let tmp = tempfile::tempdir().unwrap();
    let a_dir = tmp.path().join("a");
    let env = [("GATEHOUSE_LEASE_SECS", "3600")];
    let mut a = Server::start_in(&a_dir, &env);
    a.create_room(json!({"name": "classroom", "privacy": "private", "properties": {"max_participants": 9}}));
    a.create_room(json!({"name": "lobby"}));
    let timed = a.token(json!({"room_name": "classroom", "user_id": "kid", "eject_after_elapsed": 100}));
    let revoked = a.token(json!({"room_name": "classroom", "user_id": "gone"}));
    let (timed_session, _, _) = a.join_ok("classroom", Some(&timed));
    a.join_ok("lobby", None);
    a.post("/v1/rooms/classroom/eject", &json!({"user_ids": ["troll"], "ban": true}));
    a.post("/v1/meeting-tokens/revoke", &json!({"token": revoked}));
    let before = snapshot(&a);
    assert_eq!(before["meetings"].as_array().unwrap().len(), 2, "two meetings go on: {}", before["meetings"]);

    let live = tmp.path().join("live.ghbk");
    let (ok, out) = gatehouse(&["backup", live.to_str().unwrap(), "--server", &a.base]);
    assert!(ok, "{out}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&live).unwrap().permissions().mode() & 0o777, 0o600, "the backup holds the key");
    assert!(a.terminate().success());
    let cold = tmp.path().join("cold.ghbk");
    let (ok, out) = gatehouse(&["backup", cold.to_str().unwrap(), "--data-dir", a_dir.to_str().unwrap()]);
    assert!(ok, "{out}");

    for (name, file) in [("live", &live), ("cold", &cold)] {
        let b_dir = tmp.path().join(format!("restored-{name}"));
        let (ok, out) = gatehouse(&["restore", file.to_str().unwrap(), "--data-dir", b_dir.to_str().unwrap()]);
        assert!(ok, "{out}");
        let b = Server::start_in(&b_dir, &env);
        assert_eq!(snapshot(&b), before, "{name}: the restored server holds the same state");
        assert_eq!(
            b.join("classroom", Some(&revoked), None).body["error"],
            "not-allowed",
            "{name}: revocation restored"
        );
        let troll = b.token(json!({"room_name": "classroom", "user_id": "troll"}));
        assert_eq!(b.join("classroom", Some(&troll), None).body["error"], "ejected", "{name}: ban restored");
        // The timer came back too: overdue, it fires once.
        b.advance(101.0);
        let e = b.wait_event("participant.ejected", |e| e["payload"]["session_id"] == timed_session.as_str());
        assert_eq!(e["payload"]["reason"], "elapsed");
        std::thread::sleep(std::time::Duration::from_millis(200));
        let n = b
            .events_of("participant.ejected")
            .iter()
            .filter(|e| e["payload"]["session_id"] == timed_session.as_str())
            .count();
        assert_eq!(n, 1);
    }

    // Refusals: a non-empty data dir, a damaged file.
    let (ok, out) = gatehouse(&["restore", live.to_str().unwrap(), "--data-dir", a_dir.to_str().unwrap()]);
    assert!(!ok && out.contains("already holds a store"), "{out}");
    let mut bytes = std::fs::read(&live).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    let damaged = tmp.path().join("damaged.ghbk");
    std::fs::write(&damaged, bytes).unwrap();
    let (ok, out) =
        gatehouse(&["restore", damaged.to_str().unwrap(), "--data-dir", tmp.path().join("x").to_str().unwrap()]);
    assert!(!ok && out.contains("checksum"), "{out}");
}

/// A backup client that stops reading holds only its own connection: writes keep being
/// acknowledged, and shutdown finishes within its grace period.
#[test]
fn a_stalled_backup_reader_stalls_nothing() {
    use std::io::{Read, Write};
    let mut s = Server::start_with(&[("GATEHOUSE_SHUTDOWN_GRACE_SECS", "2")]);
    // A store well over what socket buffers hold, so the reader really stalls the stream.
    let hook = "h".repeat(2000);
    for i in 0..3000 {
        s.create_room(json!({"name": format!("big-{i}"), "properties": {"meeting_join_hook": hook}}));
    }
    let mut stalled = std::net::TcpStream::connect(s.base.trim_start_matches("http://")).unwrap();
    write!(stalled, "GET /v1/backup HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\n\r\n", s.key).unwrap();
    let mut head = [0u8; 64];
    stalled.read_exact(&mut head).unwrap();
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    // The reader reads nothing more; writes go on (each would hang for good if the writer waited on it).
    for i in 0..50 {
        s.create_room(json!({"name": format!("after-{i}")}));
    }
    let started = std::time::Instant::now();
    let status = s.terminate_within(std::time::Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "shutdown hung with a stalled backup reader");
    assert!(started.elapsed() < std::time::Duration::from_secs(15), "shutdown took {:?}", started.elapsed());
    drop(stalled);
}
