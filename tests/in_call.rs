//! What reaches the people in a call, black-box: `send-app-message` (to the session streams of
//! those present now, never stored) and meeting session data (`get-session-data`,
//! `set-session-data`: durable while the meeting runs, gone when it ends).

mod common;
use std::time::Duration;

use common::{next_frame, Frames, Server};
use serde_json::{json, Value};

fn send(s: &Server, room: &str, body: &Value) -> common::Reply {
    s.post(&format!("/v1/rooms/{room}/send-app-message"), body)
}

/// The next `app-message` frame's data, skipping presence and snapshot frames.
fn next_message(rx: &Frames) -> Value {
    loop {
        let (kind, data) = next_frame(rx, &[]);
        if kind == "app-message" {
            return data;
        }
    }
}

/// Nothing but frames of other kinds arrives for a while.
fn no_message(rx: &Frames) {
    while let Ok((kind, data)) = rx.recv_timeout(Duration::from_millis(700)) {
        assert_ne!(kind, "app-message", "unexpected message: {data}");
    }
}

#[test]
fn app_messages_reach_those_in_the_call_and_are_not_stored() {
    let s = Server::start();
    s.create_room(json!({"name": "salon", "privacy": "private", "properties": {"enable_knocking": true}}));
    let host_tok = s.token(json!({"room_name": "salon", "is_owner": true, "user_name": "Host"}));
    let guest_tok = s.token(json!({"room_name": "salon", "user_name": "Guest"}));
    let (host, host_secret, _) = s.join_ok("salon", Some(&host_tok));
    let (guest, guest_secret, _) = s.join_ok("salon", Some(&guest_tok));
    let knock = s.join("salon", None, Some("Visitor"));
    assert_eq!(knock.body["access"]["level"], "lobby", "{}", knock.text);
    let (visitor, visitor_secret) =
        (knock.body["session_id"].as_str().unwrap(), knock.body["session_secret"].as_str().unwrap());
    let host_rx = s.session_stream(&host, &host_secret);
    let guest_rx = s.session_stream(&guest, &guest_secret);
    let visitor_rx = s.session_stream(visitor, visitor_secret);
    assert_eq!(next_frame(&host_rx, &[]).0, "presence");
    assert_eq!(next_frame(&guest_rx, &[]).0, "presence");
    assert_eq!(next_frame(&visitor_rx, &[]).0, "access");
    let events_before = s.events().len();

    // To everyone: both present sessions get it, the one in the lobby does not.
    let r = send(&s, "salon", &json!({"data": {"message": "hello all"}, "recipient": "*"}));
    assert_eq!((r.status, &r.body), (200, &json!({"sent": "true", "recipients": 2})), "{}", r.text);
    for rx in [&host_rx, &guest_rx] {
        assert_eq!(
            next_message(rx),
            json!({"room": "salon", "fromId": "api", "recipient": "*", "data": {"message": "hello all"}})
        );
    }
    // To one session: only it; the host's next message is the one sent to everyone after.
    let r = send(&s, "salon", &json!({"data": "just you", "recipient": guest}));
    assert_eq!(r.body["recipients"], 1, "{}", r.text);
    assert_eq!(next_message(&guest_rx)["data"], "just you");
    send(&s, "salon", &json!({"data": 2}));
    assert_eq!(next_message(&host_rx)["data"], 2, "recipient defaults to everyone");
    assert_eq!(next_message(&guest_rx)["data"], 2);
    // Whoever is not in the call gets nothing, as with Daily: the answer says none was reached.
    for nobody in [visitor, "no-such-session"] {
        let r = send(&s, "salon", &json!({"data": {}, "recipient": nobody}));
        assert_eq!((r.status, r.body["recipients"].as_i64()), (200, Some(0)), "{}", r.text);
    }
    no_message(&visitor_rx);
    assert_eq!(s.events().len(), events_before, "app messages are not stored");

    // Refused, with the reason.
    let big = "x".repeat(4096);
    let cases = [
        (json!({"data": big}), 400, "'data' is 4098 bytes as JSON; at most 4096"),
        (json!({"data": {}, "to": "*"}), 400, "unknown parameter 'to'"),
        (json!({"data": {}, "recipient": ""}), 400, "'recipient' must be \"*\" or a session id"),
        (json!({"data": {}, "recipient": 5}), 400, "'recipient' must be a string"),
    ];
    for (body, status, info) in cases {
        let r = send(&s, "salon", &body);
        assert_eq!((r.status, r.body["info"].as_str()), (status, Some(info)), "{}", r.text);
    }
    assert_eq!(send(&s, "salon", &json!({"data": "x".repeat(4094)})).status, 200, "4,096 bytes is the limit");
    assert_eq!(send(&s, "nowhere", &json!({"data": {}})).status, 404);
    let r = s.call("POST", "/v1/rooms/salon/send-app-message", Some(&guest_secret), Some("{}"));
    assert_eq!(r.status, 401, "a participant's secret is not an API key");
}

fn get_data(s: &Server, room: &str) -> common::Reply {
    s.get(&format!("/v1/rooms/{room}/get-session-data"))
}

fn set_data(s: &Server, room: &str, body: &Value) -> common::Reply {
    s.post(&format!("/v1/rooms/{room}/set-session-data"), body)
}

#[test]
fn session_data_lives_with_the_meeting_and_survives_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("d");
    let mut s = Server::start_in(&dir, &[("GATEHOUSE_LEASE_SECS", "3600")]);
    s.create_room(json!({"name": "sd"}));
    // No meeting, no session data.
    for r in [get_data(&s, "sd"), set_data(&s, "sd", &json!({"data": {"a": 1}}))] {
        assert_eq!(r.status, 400, "{}", r.text);
        assert_eq!(r.body["info"], "no meeting is running in room 'sd': session data lives with a meeting");
    }
    let (a, a_secret, _) = s.join_ok("sd", None);
    assert_eq!(get_data(&s, "sd").body, json!({"data": {}}));

    let r = set_data(&s, "sd", &json!({"data": {"a": 1, "nested": {"x": 1}}}));
    assert_eq!(
        (r.status, &r.body),
        (200, &json!({"sent": "true", "data": {"a": 1, "nested": {"x": 1}}})),
        "{}",
        r.text
    );
    // Shallow merge: deleted keys go, top-level keys are replaced whole (nested objects too).
    let r = set_data(
        &s,
        "sd",
        &json!({"data": {"b": 2, "nested": {"y": 2}}, "mergeStrategy": "shallow-merge", "keysToDelete": ["a"]}),
    );
    assert_eq!(r.body["data"], json!({"b": 2, "nested": {"y": 2}}), "{}", r.text);
    assert_eq!(get_data(&s, "sd").body, json!({"data": {"b": 2, "nested": {"y": 2}}}));
    // Replace (the default) replaces.
    set_data(&s, "sd", &json!({"data": {"c": 3}}));
    assert_eq!(get_data(&s, "sd").body["data"], json!({"c": 3}));
    // Everyone in the call hears of it; the log has it.
    let rx = s.session_stream(&a, &a_secret);
    assert_eq!(next_frame(&rx, &[]).0, "presence", "the stream follows the room from here on");
    let (kind, f) = next_frame(&rx, &[]);
    assert_eq!((kind.as_str(), &f["data"]), ("session-data", &json!({"c": 3})), "the snapshot carries the data");
    set_data(&s, "sd", &json!({"data": {"d": 4}, "mergeStrategy": "shallow-merge"}));
    let (kind, f) = next_frame(&rx, &[]);
    assert_eq!(kind, "meeting-session-data.updated");
    assert_eq!(f["payload"]["keys"], json!(["c", "d"]));
    let (kind, f) = next_frame(&rx, &[]);
    assert_eq!(kind, "session-data");
    assert_eq!(f["data"], json!({"c": 3, "d": 4}));
    let seq = f["seq"].as_u64().expect("a change's frame has its seq");
    // The log says that it changed, never what it holds: session data goes with its meeting.
    let logged = s.events_of("meeting-session-data.updated");
    assert_eq!(logged.len(), 4);
    assert_eq!(logged[3]["seq"].as_u64(), Some(seq));
    assert_eq!(logged[3]["payload"]["room"], "sd");
    assert!(logged[3]["payload"]["meeting_id"].is_string());
    assert!(logged.iter().all(|e| e["payload"].get("data").is_none()), "{logged:?}");
    // Someone who joins later gets the data as it is now, after the presence snapshot.
    let (b, b_secret, _) = s.join_ok("sd", None);
    let rx_b = s.session_stream(&b, &b_secret);
    assert_eq!(next_frame(&rx_b, &[]).0, "presence");
    let (kind, f) = next_frame(&rx_b, &[]);
    assert_eq!((kind.as_str(), &f["data"], &f["seq"]), ("session-data", &json!({"c": 3, "d": 4}), &Value::Null));
    assert_eq!(s.call("POST", &format!("/v1/sessions/{b}/leave"), Some(&b_secret), None).status, 200);

    // Refused, with the reason, and nothing changed.
    let cases = [
        (
            json!({"data": {"e": 5}, "keysToDelete": ["c"]}),
            "'keysToDelete' applies only with \"mergeStrategy\": \"shallow-merge\"",
        ),
        (json!({"data": {}, "mergeStrategy": "deep"}), "'mergeStrategy' must be \"replace\" or \"shallow-merge\""),
        (json!({"data": [1, 2]}), "'data' must be an object"),
        (
            json!({"data": {}, "mergeStrategy": "shallow-merge", "keysToDelete": [1]}),
            "'keysToDelete' must be a list of strings",
        ),
        (json!({"data": {}, "merge": "replace"}), "unknown parameter 'merge'"),
    ];
    for (body, info) in cases {
        let r = set_data(&s, "sd", &body);
        assert_eq!((r.status, r.body["info"].as_str()), (400, Some(info)), "{body}: {}", r.text);
    }
    // 100 KB at most, counted on the merged result.
    let half = "y".repeat(60 * 1000);
    assert_eq!(set_data(&s, "sd", &json!({"data": {"one": half}, "mergeStrategy": "shallow-merge"})).status, 200);
    let r = set_data(&s, "sd", &json!({"data": {"two": half}, "mergeStrategy": "shallow-merge"}));
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(r.body["info"].as_str().unwrap().ends_with("bytes as JSON; at most 102400"), "{}", r.text);
    set_data(&s, "sd", &json!({"data": {"c": 3, "d": 4}}));
    assert_eq!(get_data(&s, "sd").body["data"], json!({"c": 3, "d": 4}));
    assert_eq!(get_data(&s, "nowhere").status, 404);

    // Acknowledged means durable: kill -9 while the meeting runs; after the restart it is there.
    s.kill9();
    let s = Server::start_in(&dir, &[("GATEHOUSE_LEASE_SECS", "3600")]);
    assert_eq!(get_data(&s, "sd").body, json!({"data": {"c": 3, "d": 4}}));

    // The meeting ends with its last departure, and its data with it.
    assert_eq!(s.call("POST", &format!("/v1/sessions/{a}/leave"), Some(&a_secret), None).status, 200);
    assert_eq!(get_data(&s, "sd").status, 400);
    s.join_ok("sd", None);
    assert_eq!(get_data(&s, "sd").body, json!({"data": {}}), "a new meeting starts without the old one's data");
}
