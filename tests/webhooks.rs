//! Webhooks against real local HTTP receivers: the API, signatures (checked here and by the
//! independent `standardwebhooks` verifier), in-order at-least-once delivery through failures,
//! 429, 410, timeouts, the circuit breaker, replay, and SIGKILL mid-delivery.

mod common;
use common::receiver::{Answer, Receiver};
use common::Server;
use serde_json::{json, Value};
use std::time::Duration;

const FAST: &[(&str, &str)] = &[("GATEHOUSE_WEBHOOK_TIMEOUT_MS", "500")];

fn create(s: &Server, body: Value) -> Value {
    let r = s.post("/v1/webhooks", &body);
    assert_eq!(r.status, 200, "{}", r.text);
    r.body
}

fn rooms(s: &Server, prefix: &str, n: usize) {
    for i in 0..n {
        s.create_room(json!({"name": format!("{prefix}{i}")}));
    }
}

/// Seqs delivered, first occurrences only: at-least-once means repeats are allowed.
fn firsts(seqs: &[u64]) -> Vec<u64> {
    let mut seen = std::collections::BTreeSet::new();
    seqs.iter().copied().filter(|s| seen.insert(*s)).collect()
}

/// Every seq in `from..=to` arrived, each first arrival in order (repeats allowed: at least once).
fn assert_in_order_no_gaps(seqs: &[u64], from: u64, to: u64) {
    assert_eq!(firsts(seqs), (from..=to).collect::<Vec<_>>(), "deliveries {seqs:?}");
}

#[test]
fn api_shape_test_post_and_validation() {
    let s = Server::start();
    let rx = Receiver::start();
    let w = create(&s, json!({"url": rx.url, "eventTypes": ["room.created"]}));
    for field in [
        "uuid",
        "url",
        "hmac",
        "basicAuth",
        "retryType",
        "eventTypes",
        "state",
        "failedCount",
        "lastMomentPushed",
        "createdAt",
        "updatedAt",
    ] {
        assert!(w.get(field).is_some(), "missing {field}: {w}");
    }
    assert_eq!((w["state"].as_str(), w["retryType"].as_str()), (Some("ACTIVE"), Some("circuit-breaker")));
    use base64::Engine;
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(w["hmac"].as_str().unwrap()).unwrap().len(), 32);
    assert_eq!(rx.requests()[0].json(), json!({"test": "test"}), "the test POST");
    let id = w["uuid"].as_str().unwrap();
    assert_eq!(s.get(&format!("/v1/webhooks/{id}")).body["uuid"], id);
    assert_eq!(s.get("/v1/webhooks").body.as_array().unwrap().len(), 1);
    // A URL that does not answer 2xx is refused.
    let bad = Receiver::start();
    bad.then(&[Answer::status(500)]);
    let r = s.post("/v1/webhooks", &json!({"url": bad.url}));
    assert_eq!(r.status, 400);
    assert!(r.body["info"].as_str().unwrap().contains("test POST"), "{}", r.text);
    let r = s.post("/v1/webhooks", &json!({"url": "http://127.0.0.1:1/nothing"}));
    assert_eq!(r.status, 400);
    for body in [
        json!({}),
        json!({"url": "ftp://x"}),
        json!({"url": rx.url, "retryType": "sometimes"}),
        json!({"url": rx.url, "eventTypes": ["nope"]}),
        json!({"url": rx.url, "hmac": "!!"}),
        json!({"url": rx.url, "colour": 1}),
    ] {
        assert_eq!(s.post("/v1/webhooks", &body).status, 400, "{body}");
    }
    let d = s.delete(&format!("/v1/webhooks/{id}"));
    assert_eq!(d.status, 200);
    assert_eq!(s.get(&format!("/v1/webhooks/{id}")).status, 404);
    // The secret never reaches the event log.
    assert!(!serde_json::to_string(&s.events()).unwrap().contains(w["hmac"].as_str().unwrap()));
}

#[test]
fn needs_python_deliveries_are_in_order_filtered_and_signed() {
    let s = Server::start();
    let rx = Receiver::start();
    let secret = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let w = create(
        &s,
        json!({"url": rx.url, "hmac": secret, "eventTypes": ["room.created", "room.deleted"], "basicAuth": "user:pass"}),
    );
    let start = w["cursor"].as_u64().unwrap();
    rooms(&s, "r", 5);
    s.token(json!({}));
    s.delete("/v1/rooms/r0");
    let got = rx.wait_for("6 deliveries", 10, |s| s.len() >= 6);
    let expected: Vec<u64> = s
        .events()
        .iter()
        .filter(|e| {
            ["room.created", "room.deleted"].contains(&e["type"].as_str().unwrap())
                && e["seq"].as_u64().unwrap() > start
        })
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(got, expected);
    let key = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, secret).unwrap();
    for r in rx.requests().iter().skip(1) {
        let id = r.header("webhook-id").unwrap();
        assert_eq!(id, r.json()["id"].as_str().unwrap(), "webhook-id is the event id");
        let ts = r.header("webhook-timestamp").unwrap();
        assert_eq!(r.header("x-webhook-timestamp"), Some(ts));
        let sw = format!("v1,{}", b64_hmac(&key, &format!("{id}.{ts}.{}", r.body)));
        assert_eq!(r.header("webhook-signature"), Some(sw.as_str()));
        assert_eq!(r.header("x-webhook-signature"), Some(b64_hmac(&key, &format!("{ts}.{}", r.body)).as_str()));
        assert_eq!(r.header("authorization"), Some("Basic dXNlcjpwYXNz"));
    }
    verify_with_standardwebhooks(&format!("whsec_{secret}"), &rx.requests()[1..]);
}

fn b64_hmac(key: &[u8], msg: &str) -> String {
    use hmac::Mac;
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    m.update(msg.as_bytes());
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, m.finalize().into_bytes())
}

/// Verifies deliveries with the `standardwebhooks` Python package (installed by ./run-tests).
fn verify_with_standardwebhooks(secret: &str, reqs: &[common::receiver::Received]) {
    common::require(common::python_has("standardwebhooks"), "the Python package standardwebhooks");
    let cases: Vec<Value> = reqs
        .iter()
        .map(|r| json!({"body": r.body, "headers": {"webhook-id": r.header("webhook-id"), "webhook-timestamp": r.header("webhook-timestamp"), "webhook-signature": r.header("webhook-signature")}}))
        .collect();
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
wh = Webhook(sys.argv[1])
for c in json.loads(sys.stdin.read()):
    wh.verify(c["body"], c["headers"])
print("verified", len(json.loads(sys.argv[2])) if len(sys.argv) > 2 else "")
"#;
    use std::io::Write;
    let mut child = std::process::Command::new(common::python())
        .args(["-c", script, secret])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(serde_json::to_string(&cases).unwrap().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "standardwebhooks refused a delivery: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn failures_429_and_timeouts_are_retried_in_order() {
    let s = Server::start_with(FAST);
    let rx = Receiver::start();
    let w = create(&s, json!({"url": rx.url}));
    let start = w["cursor"].as_u64().unwrap();
    rx.then(&[
        Answer::status(500),
        Answer { status: 429, headers: vec![("Retry-After".into(), "1".into())], delay: Duration::ZERO },
        Answer { status: 200, headers: vec![], delay: Duration::from_millis(900) },
    ]);
    rooms(&s, "a", 3);
    let head = s.get("/v1/events?limit=1").body["head_seq"].as_u64().unwrap();
    let got = rx.wait_for("3 events", 20, |s| firsts(s).last().copied() == Some(head));
    assert_in_order_no_gaps(&got, start + 1, head);
    let att = s.get(&format!("/v1/webhooks/{}/attempts", w["uuid"].as_str().unwrap())).body;
    let statuses: Vec<u64> = att["data"].as_array().unwrap().iter().map(|a| a["status"].as_u64().unwrap()).collect();
    assert!(statuses.contains(&500) && statuses.contains(&429) && statuses.contains(&0), "{att}");
    assert_eq!(s.get(&format!("/v1/webhooks/{}", w["uuid"].as_str().unwrap())).body["state"], "ACTIVE");
}

#[test]
fn circuit_breaker_fails_then_resumes_without_loss() {
    let s = Server::start_with(FAST);
    let rx = Receiver::start();
    let w = create(&s, json!({"url": rx.url}));
    let id = w["uuid"].as_str().unwrap().to_string();
    let start = w["cursor"].as_u64().unwrap();
    rx.then(&[Answer::status(503), Answer::status(503), Answer::status(503)]);
    s.create_room(json!({"name": "first"}));
    let failed = s.wait_event("webhook.failed", |_| true);
    assert_eq!(failed["payload"]["uuid"], id.as_str());
    assert_eq!(s.get(&format!("/v1/webhooks/{id}")).body["state"], "FAILED");
    rooms(&s, "more", 3);
    std::thread::sleep(Duration::from_millis(300));
    let before = rx.seqs().len();
    // Re-activating resumes from the cursor: the failed event and everything after it.
    let r = s.post(&format!("/v1/webhooks/{id}"), &json!({}));
    assert_eq!((r.status, r.body["state"].as_str()), (200, Some("ACTIVE")));
    let head = s.get("/v1/events?limit=1").body["head_seq"].as_u64().unwrap();
    let got = rx.wait_for("everything", 15, |s| firsts(s).last().copied() == Some(head));
    assert!(before >= 3);
    assert_in_order_no_gaps(&got, start + 1, head);
}

#[test]
fn gone_makes_the_webhook_inactive() {
    let s = Server::start_with(FAST);
    let rx = Receiver::start();
    let w = create(&s, json!({"url": rx.url}));
    rx.then(&[Answer::status(410)]);
    s.create_room(json!({"name": "x"}));
    let e = s.wait_event("webhook.failed", |_| true);
    assert_eq!(e["payload"]["state"], "INACTIVE");
    assert_eq!(s.get(&format!("/v1/webhooks/{}", w["uuid"].as_str().unwrap())).body["state"], "INACTIVE");
}

#[test]
fn replay_moves_the_cursor_back() {
    let s = Server::start();
    let rx = Receiver::start();
    let w = create(&s, json!({"url": rx.url, "eventTypes": ["room.created"]}));
    let id = w["uuid"].as_str().unwrap();
    rooms(&s, "p", 3);
    let first = rx.wait_for("3", 10, |s| s.len() >= 3);
    let r = s.post(&format!("/v1/webhooks/{id}/replay"), &json!({"from_seq": first[1]}));
    assert_eq!(r.status, 200, "{}", r.text);
    let got = rx.wait_for("replayed", 10, |s| s.len() >= 5);
    assert_eq!(got[3..], first[1..]);
    assert_eq!(s.post(&format!("/v1/webhooks/{id}/replay"), &json!({"from_seq": 0})).status, 400);
    assert_eq!(s.post(&format!("/v1/webhooks/{id}/replay"), &json!({"from_seq": 10_000})).status, 400);
}

#[test]
fn sigkill_mid_delivery_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let env = [("GATEHOUSE_SLED_FLUSH_EVERY_MS", "0")];
    let mut s = Server::start_in(&dir, &env);
    let rx = Receiver::start();
    let w = create(&s, json!({"url": rx.url}));
    let start = w["cursor"].as_u64().unwrap();
    // A slow receiver, so the kill lands mid-delivery.
    rx.then(&vec![Answer { status: 200, headers: vec![], delay: Duration::from_millis(30) }; 40]);
    rooms(&s, "k", 40);
    rx.wait_for("some", 10, |s| s.len() >= 5);
    s.kill9();
    let s = Server::start_in(&dir, &env);
    rooms(&s, "after", 5);
    let head = s.get("/v1/events?limit=1").body["head_seq"].as_u64().unwrap();
    let got = rx.wait_for("everything after restart", 30, |s| firsts(s).last().copied() == Some(head));
    assert_in_order_no_gaps(&got, start + 1, head);
}

#[test]
fn sse_stream_resumes_from_last_event_id() {
    use std::io::{BufRead, BufReader};
    let s = Server::start();
    rooms(&s, "e", 5);
    let read = |headers: &[(&str, &str)], query: &str, n: usize| -> Vec<u64> {
        let mut req =
            ureq::get(&s.url(&format!("/v1/events/stream{query}"))).set("Authorization", &format!("Bearer {}", s.key));
        for (k, v) in headers {
            req = req.set(k, v);
        }
        let resp = req.call().unwrap();
        assert_eq!(resp.header("content-type"), Some("text/event-stream"));
        let mut ids = Vec::new();
        for line in BufReader::new(resp.into_reader()).lines() {
            if let Some(id) = line.unwrap().strip_prefix("id: ") {
                ids.push(id.parse().unwrap());
                if ids.len() == n {
                    break;
                }
            }
        }
        ids
    };
    assert_eq!(read(&[], "", 5), vec![1, 2, 3, 4, 5]);
    assert_eq!(read(&[("Last-Event-ID", "3")], "?after=1", 2), vec![4, 5], "Last-Event-ID wins over after");
    assert_eq!(read(&[], "?after=4&types=room.created", 1), vec![5]);
    assert_eq!(s.call("GET", "/v1/events/stream?types=bogus", Some(&s.key), None).status, 400);
}

#[test]
fn compaction_respects_active_cursors_and_old_positions_get_410() {
    let s = Server::start_with(&[
        ("GATEHOUSE_EVENTS_RETENTION_SECS", "60"),
        ("GATEHOUSE_HOUSEKEEPING_CRON", "* * * * * *"),
        ("GATEHOUSE_WEBHOOK_TIMEOUT_MS", "500"),
    ]);
    let rx = Receiver::start();
    rooms(&s, "old", 5);
    let w = create(&s, json!({"url": rx.url, "retryType": "exponential"}));
    let cursor = w["cursor"].as_u64().unwrap();
    rx.then(&vec![Answer::status(500); 50]);
    rooms(&s, "held", 3);
    s.advance(120.0);
    // Everything up to the stuck webhook's cursor goes; what it still needs stays.
    let mut oldest = 0;
    for _ in 0..200 {
        let r = s.get("/v1/events?after=1");
        if r.status == 410 {
            oldest = r.body["oldest_seq"].as_u64().unwrap();
            assert!(r.body["head_seq"].as_u64().unwrap() >= cursor + 3);
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(oldest, cursor + 1, "compaction stops at the active webhook's cursor");
    assert_eq!(s.get(&format!("/v1/events?after={cursor}")).status, 200);
    let r = ureq::get(&s.url("/v1/events/stream")).set("Authorization", &format!("Bearer {}", s.key)).call().unwrap();
    assert_eq!(r.status(), 200, "after=0 means from the oldest retained");
    drop(r);
    let r = common::call_url("GET", &s.url("/v1/events/stream"), Some(&s.key), None, &[("Last-Event-ID", "2")]);
    assert_eq!((r.status, r.body["error"].as_str()), (410, Some("gone")));
    assert!(r.body["oldest_seq"].is_u64() && r.body["head_seq"].is_u64());
    let id = w["uuid"].as_str().unwrap();
    assert_eq!(s.post(&format!("/v1/webhooks/{id}/replay"), &json!({"from_seq": 1})).status, 410);
}

#[test]
fn deny_private_refuses_local_targets_even_by_name() {
    let s = Server::start_with(&[("GATEHOUSE_WEBHOOK_DENY_PRIVATE", "true")]);
    let rx = Receiver::start();
    let port = rx.url.rsplit(':').next().unwrap().to_string();
    for url in [rx.url.clone(), format!("http://localhost:{port}"), format!("http://[::ffff:127.0.0.1]:{port}/hook")] {
        let r = s.post("/v1/webhooks", &json!({"url": url}));
        assert_eq!(r.status, 400, "{url}: {}", r.text);
    }
    assert!(rx.requests().is_empty(), "nothing reached the private receiver");
}

/// A hostile receiver: answers every request 200 with a `size`-byte body, declared
/// (`Content-Length`) or not (chunked), and counts the event deliveries it got.
fn flooding_receiver(size: u64, chunked: bool) -> (String, std::sync::Arc<std::sync::Mutex<Vec<u64>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let seqs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = seqs.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut out = stream;
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        if h.trim().is_empty() {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0u8; len];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    if let Some(seq) = serde_json::from_slice::<Value>(&body).ok().and_then(|v| v["seq"].as_u64()) {
                        seen.lock().unwrap().push(seq);
                    }
                    let head = if chunked {
                        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_string()
                    } else {
                        format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n")
                    };
                    if out.write_all(head.as_bytes()).is_err() {
                        return;
                    }
                    let block = vec![b'x'; 64 * 1024];
                    let mut sent = 0u64;
                    while sent < size {
                        let n = (size - sent).min(block.len() as u64) as usize;
                        let ok = if chunked {
                            out.write_all(format!("{n:x}\r\n").as_bytes()).is_ok()
                                && out.write_all(&block[..n]).is_ok()
                                && out.write_all(b"\r\n").is_ok()
                        } else {
                            out.write_all(&block[..n]).is_ok()
                        };
                        if !ok {
                            return; // the server hung up: what a bounded reader does
                        }
                        sent += n as u64;
                    }
                    if chunked && out.write_all(b"0\r\n\r\n").is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, seqs)
}

/// Issue 24, item 1: a receiver's reply (to the test POST and to deliveries) is read up to a
/// few KB, then the connection is dropped; 256 MiB replies, declared or chunked, neither stall
/// delivery nor grow the server's memory.
#[test]
fn huge_webhook_replies_are_not_read_into_memory() {
    const SIZE: u64 = 256 * 1024 * 1024;
    let s = Server::start();
    let (declared, declared_got) = flooding_receiver(SIZE, false);
    let (chunked, chunked_got) = flooding_receiver(SIZE, true);
    let before = common::memory_mib(s.pid(), "VmHWM");
    create(&s, json!({"url": declared, "eventTypes": ["room.created"]}));
    create(&s, json!({"url": chunked, "eventTypes": ["room.created"]}));
    rooms(&s, "flood", 3);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while declared_got.lock().unwrap().len() < 3 || chunked_got.lock().unwrap().len() < 3 {
        assert!(std::time::Instant::now() < deadline, "deliveries stalled behind huge replies");
        std::thread::sleep(Duration::from_millis(20));
    }
    let peak = common::memory_mib(s.pid(), "VmHWM");
    println!("server peak RSS: {before:.1} MiB before, {peak:.1} MiB after 8 replies of 256 MiB each");
    assert!(peak < 128.0, "peak RSS {peak:.1} MiB: a reply was read into memory");
}

/// Issue 24, item 7: a failing webhook's retry waits its own time (`Retry-After`, honoured up
/// to an hour), whatever is done meanwhile to other webhooks.
#[test]
fn a_retry_waits_its_turn_whatever_happens_to_other_webhooks() {
    let s = Server::start_with(FAST);
    let rx = Receiver::start();
    let w = create(&s, json!({"url": rx.url, "eventTypes": ["room.created"]}));
    let id = w["uuid"].as_str().unwrap().to_string();
    rx.then(&[Answer {
        status: 503,
        headers: vec![("Retry-After".into(), "999999999".into())],
        delay: Duration::ZERO,
    }]);
    s.create_room(json!({"name": "held"}));
    let seq = rx.wait_for("the first attempt", 10, |s| !s.is_empty())[0];
    for _ in 0..200 {
        if !s.get(&format!("/v1/webhooks/{id}/attempts")).body["data"].as_array().unwrap().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    // Other webhooks come, change and go; each change is seen by every delivery worker.
    let other = Receiver::start();
    for i in 0..3 {
        let o = create(&s, json!({"url": other.url, "eventTypes": ["room.created"]}));
        let oid = o["uuid"].as_str().unwrap();
        assert_eq!(s.post(&format!("/v1/webhooks/{oid}"), &json!({})).status, 200);
        s.create_room(json!({"name": format!("churn{i}")}));
        other.wait_for("the other webhook's delivery", 10, |s| s.len() > i);
        assert_eq!(s.delete(&format!("/v1/webhooks/{oid}")).status, 200);
    }
    assert_eq!(rx.seqs(), vec![seq], "the failed event was retried before its Retry-After");
    // Retry-After is honoured up to its cap (an hour); past that, the retry comes.
    s.advance(3601.0);
    let got = rx.wait_for("the retry", 15, |s| s.len() >= 2);
    assert_eq!(got[1], seq);
}

/// Issue 24, item 4: credentials in a webhook URL reach the receiver (as basic auth) and
/// nothing else: not the `webhook.*` events, not the attempts, not the log.
#[test]
fn credentials_in_a_webhook_url_stay_out_of_events_attempts_and_logs() {
    let s = Server::start_with(FAST);
    let rx = Receiver::start();
    let with_creds = |pass: &str| rx.url.replace("http://", &format!("http://hook-user:{pass}@"));
    let w = create(&s, json!({"url": with_creds("s3cr3t-one"), "eventTypes": ["room.created"]}));
    let id = w["uuid"].as_str().unwrap();
    let r = s.post(&format!("/v1/webhooks/{id}"), &json!({"url": with_creds("s3cr3t-two")}));
    assert_eq!(r.status, 200, "{}", r.text);
    s.create_room(json!({"name": "creds"}));
    rx.wait_for("a delivery", 10, |s| !s.is_empty());
    let last = rx.requests().last().cloned().unwrap();
    assert_eq!(last.header("authorization"), Some("Basic aG9vay11c2VyOnMzY3IzdC10d28="), "delivered with them");
    // A timed-out attempt (its error names the URL) and the breaker's `webhook.failed`.
    let slow = Answer { status: 200, headers: vec![], delay: Duration::from_millis(900) };
    rx.then(&[slow.clone(), slow.clone(), slow]);
    s.create_room(json!({"name": "slow"}));
    s.wait_event("webhook.failed", |_| true);
    let created = &s.events_of("webhook.created")[0]["payload"];
    assert_eq!(created["url"], rx.url.as_str(), "the URL without its credentials");
    let everything = format!(
        "{}{}{}",
        serde_json::to_string(&s.events()).unwrap(),
        s.get(&format!("/v1/webhooks/{id}/attempts")).text,
        s.log()
    );
    assert!(!everything.contains("s3cr3t"), "a password leaked:\n{everything}");
    assert!(!everything.contains("hook-user"), "a user name leaked:\n{everything}");
}
