//! `/metrics` after a scripted workload: the counters moved by exactly what was done.

mod common;
use common::Server;
use serde_json::json;

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn counters_follow_a_scripted_workload() {
    let s = Server::start();
    assert_eq!(s.call("GET", "/metrics", None, None).status, 401, "needs the API key by default");
    s.create_room(json!({"name": "m", "privacy": "private"}));
    s.create_room(json!({"name": "n"}));
    let t = s.token(json!({"room_name": "m"}));
    s.join_ok("m", Some(&t));
    s.join_ok("n", None);
    for _ in 0..3 {
        assert_eq!(s.join("m", None, None).status, 403);
    }
    assert_eq!(s.join("nope", None, None).status, 404);
    let m = s.get("/metrics");
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    let text = m.text;
    assert_eq!(value(&text, "gatehouse_joins_total{outcome=\"admitted\"}"), 2.0);
    assert_eq!(value(&text, "gatehouse_joins_total{outcome=\"not-allowed\"}"), 3.0);
    assert_eq!(value(&text, "gatehouse_joins_total{outcome=\"no-room\"}"), 1.0);
    assert_eq!(value(&text, "gatehouse_http_requests_total{route=\"POST /v1/rooms\",status=\"200\"}"), 2.0);
    assert_eq!(value(&text, "gatehouse_http_requests_total{route=\"POST /v1/rooms/:name/join\",status=\"403\"}"), 3.0);
    assert_eq!(value(&text, "gatehouse_sessions_live"), 2.0);
    assert_eq!(value(&text, "gatehouse_rooms"), 2.0);
    assert_eq!(value(&text, "gatehouse_timers_pending"), 2.0, "one lease per session");
    let head = s.get("/v1/events?limit=1").body["head_seq"].as_f64().unwrap();
    assert_eq!(value(&text, "gatehouse_events_head_seq"), head);
    assert!(value(&text, "gatehouse_journal_sync_seconds_count") >= 1.0);
    assert!(text.contains("gatehouse_http_request_duration_seconds_bucket{route=\"POST /v1/rooms\",le=\"+Inf\"} 2"));
    // No path with a token in it becomes a label.
    assert!(!text.contains(&t));
    let public = Server::start_with(&[("GATEHOUSE_METRICS_PUBLIC", "true")]);
    assert_eq!(public.call("GET", "/metrics", None, None).status, 200);
}

#[test]
fn webhook_families_follow_deliveries() {
    let s = Server::start();
    let rx = common::receiver::Receiver::start();
    let w = s.post("/v1/webhooks", &json!({"url": rx.url}));
    assert_eq!(w.status, 200, "{}", w.text);
    let id = w.body["uuid"].as_str().unwrap().to_string();
    s.create_room(json!({"name": "hooked"}));
    rx.wait_for("one delivery", 10, |seqs| !seqs.is_empty());
    // The cursor is written in batches (at most 200 ms later).
    let mut text = String::new();
    for _ in 0..50 {
        text = s.get("/metrics").text;
        if value(&text, &format!("gatehouse_webhook_lag_events{{webhook=\"{id}\"}}")) == 0.0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(value(&text, &format!("gatehouse_webhook_deliveries_total{{webhook=\"{id}\"}}")), 1.0);
    assert_eq!(value(&text, &format!("gatehouse_webhook_failures_total{{webhook=\"{id}\"}}")), 0.0);
    assert_eq!(value(&text, &format!("gatehouse_webhook_lag_events{{webhook=\"{id}\"}}")), 0.0);
    assert_eq!(value(&text, &format!("gatehouse_webhook_state{{webhook=\"{id}\",state=\"ACTIVE\"}}")), 1.0);
    assert!(text.contains("# TYPE gatehouse_webhook_deliveries_total counter"));
}

/// Labels come from the route table: ids, names and tokens in paths (including unknown paths
/// with a token in them, and each session's own URLs) never become a label or a line of the
/// access log, and the set of labels stays fixed however many distinct paths clients send.
#[test]
fn labels_and_access_log_never_hold_ids_names_or_tokens() {
    let s = Server::start_with(&[("GATEHOUSE_LOG", "debug")]);
    s.create_room(json!({"name": "secret-room-name"}));
    let t = s.token(json!({"room_name": "secret-room-name"}));
    let (id, secret, _) = s.join_ok("secret-room-name", Some(&t));
    for i in 0..50 {
        s.call("GET", &format!("/v1/meeting-tokens/{t}/x{i}"), Some(&s.key), None);
        s.call("GET", &format!("/probe-{i}/a/b"), None, None);
        s.call("PUT", &format!("/v1/rooms/secret-room-name-{i}"), Some(&s.key), None);
    }
    s.call("POST", &format!("/v1/sessions/{id}/heartbeat"), Some(&secret), None);
    s.get(&format!("/v1/meeting-tokens/{t}"));
    let text = s.get("/metrics").text;
    let log = s.log();
    for needle in [t.as_str(), &id, &secret, "secret-room-name", "probe-"] {
        assert!(!text.contains(needle), "{needle} is in a metric label:\n{text}");
        let access: Vec<&str> = log.lines().filter(|l| l.contains("request_id")).collect();
        assert!(!access.is_empty(), "the access log is on at debug");
        assert!(access.iter().all(|l| !l.contains(needle)), "{needle} is in the access log");
    }
    let routes: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("gatehouse_http_requests_total{route=\""))
        .filter_map(|l| l.split('"').next())
        .collect();
    assert!(routes.contains("unmatched"), "{routes:?}");
    assert!(routes.contains("POST /v1/sessions/:id/heartbeat"), "{routes:?}");
    assert!(routes.contains("GET /v1/meeting-tokens/:token"), "{routes:?}");
    assert!(routes.len() <= 8, "labels grow with paths: {routes:?}");
}

/// Issue 24, item 10: a room created with an `exp` already past is accepted (Daily's reference
/// sets no such limit) and expires at once, but is no deadline the writer was late for: it
/// stays out of `gatehouse_deadline_lateness_seconds`.
#[test]
fn a_past_exp_is_accepted_and_kept_out_of_the_lateness_metric() {
    let s = Server::start();
    let now = s.now_secs();
    s.create_room(json!({"name": "bygone", "properties": {"exp": now - 1_000_000}}));
    s.wait_event("room.expired", |e| e["payload"]["room"] == "bygone");
    let text = s.get("/metrics").text;
    let sum = value(&text, "gatehouse_deadline_lateness_seconds_sum");
    assert!(sum < 60.0, "lateness sum {sum} s after one room created with a past exp");
    assert!(value(&text, "gatehouse_deadline_lateness_seconds_count") >= 1.0, "the expiry was counted, on time");
}
