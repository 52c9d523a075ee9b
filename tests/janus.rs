//! Gatehouse in front of a real Janus (Debian's `janus`, started here on loopback from its own
//! small configuration): every live room has its VideoRoom room, sized by max_participants,
//! private and closed to anyone without a Gatehouse credential; deleted rooms go; a room
//! Gatehouse does not know is removed; after `kill -9` of Janus the rooms come back by
//! themselves. (The media itself, with WebRTC, needs a network namespace: not here.)

mod common;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::Server;
use serde_json::{json, Value};

const ADMIN_KEY: &str = "videoroom-admin-key-for-tests";
const ADMIN_SECRET: &str = "janus-admin-secret-for-tests";

struct Janus {
    child: Option<Child>,
    dir: std::path::PathBuf,
    port: u16,
    admin_port: u16,
}

impl Drop for Janus {
    fn drop(&mut self) {
        self.kill9();
    }
}

impl Janus {
    fn start(dir: &Path) -> Janus {
        std::fs::create_dir_all(dir).unwrap();
        let (port, admin_port) = (common::free_port(), common::free_port());
        common::janus_config::write(dir, port, admin_port, ADMIN_KEY, ADMIN_SECRET);
        let mut j = Janus { child: None, dir: dir.to_path_buf(), port, admin_port };
        j.run();
        j
    }

    fn run(&mut self) {
        let log = self.dir.join("janus.log");
        self.child = Some(common::janus_config::run(&self.dir, self.port, Some(&log)));
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/janus", self.port)
    }

    fn post(&self, path: &str, body: Value) -> Value {
        post_to(&self.url(), path, body)
    }

    /// A VideoRoom request on a fresh session.
    fn videoroom(&self, body: Value) -> Value {
        let Participant { session: s, handle: h } = self.participant();
        let out = self.post(&format!("/{s}/{h}"), json!({"janus": "message", "transaction": "t", "body": body}));
        self.post(&format!("/{s}"), json!({"janus": "destroy", "transaction": "t"}));
        out["plugindata"]["data"].clone()
    }

    /// Room name → (description, max publishers, private), as Janus lists them.
    fn rooms(&self) -> Vec<(String, String, u64, bool)> {
        let list = self.videoroom(json!({"request": "list", "admin_key": ADMIN_KEY}));
        let mut out: Vec<_> = list["list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["room"].as_str().unwrap().to_string(),
                    r["description"].as_str().unwrap_or("").to_string(),
                    r["max_publishers"].as_u64().unwrap(),
                    r["is_private"].as_bool().unwrap(),
                )
            })
            .collect();
        out.sort();
        out
    }

    fn wait_rooms(&self, want: &[(&str, u64)], s: &Server) {
        // A pass runs every 10 s after the last one ended (which may have waited on timeouts).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got: Vec<(String, u64)> =
                self.rooms().into_iter().filter(|r| r.1.starts_with("gatehouse:")).map(|r| (r.0, r.2)).collect();
            let want: Vec<(String, u64)> = want.iter().map(|(n, p)| (n.to_string(), *p)).collect();
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "Janus holds {got:?}, not {want:?}; log:\n{}", s.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn have(cmd: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {cmd}")).status().is_ok_and(|s| s.success())
}

#[test]
fn needs_janus_rooms_are_mirrored_into_videoroom_and_come_back_after_a_janus_crash() {
    common::require(have("janus"), "janus (Debian package janus)");
    let tmp = tempfile::tempdir().unwrap();
    let mut janus = Janus::start(&tmp.path().join("janus"));
    let url = janus.url();
    let admin_url = format!("http://127.0.0.1:{}/admin", janus.admin_port);
    let s = Server::start_with(&[
        ("GATEHOUSE_JANUS_URL", url.as_str()),
        ("GATEHOUSE_JANUS_ADMIN_KEY", ADMIN_KEY),
        ("GATEHOUSE_JANUS_ADMIN_URL", admin_url.as_str()),
        ("GATEHOUSE_JANUS_ADMIN_SECRET", ADMIN_SECRET),
    ]);
    // Someone else's room in the same Janus is left alone.
    janus.videoroom(
        json!({"request": "create", "room": "not-ours", "admin_key": ADMIN_KEY, "description": "another app"}),
    );

    s.create_room(json!({"name": "standup"}));
    s.create_room(json!({"name": "small", "properties": {"max_participants": 4}}));
    janus.wait_rooms(&[("small", 4), ("standup", 200)], &s);
    let rooms = janus.rooms();
    assert!(rooms.iter().any(|r| r.0 == "not-ours"), "{rooms:?}");
    assert!(rooms.iter().filter(|r| r.1.starts_with("gatehouse:")).all(|r| r.3), "private: {rooms:?}");

    // Nobody joins without a credential from Gatehouse (an empty allowed list, a room secret).
    let Participant { session: s_id, handle: h } = janus.participant();
    let join = janus.post(
        &format!("/{s_id}/{h}"),
        json!({"janus": "message", "transaction": "t", "body": {"request": "join", "ptype": "publisher", "room": "standup"}}),
    );
    // The join is answered asynchronously; an ack means Janus took the request, and the event
    // that follows must be an error.
    let event = ureq::get(&format!("{url}/{s_id}?maxev=1")).timeout(Duration::from_secs(5)).call().unwrap();
    let event: Value = event.into_json().unwrap();
    let data = &event["plugindata"]["data"];
    assert!(data["error_code"].is_number(), "a join without a token got in: {join} {event}");

    // Resized, deleted, and a stray "gatehouse:" room removed.
    let r = s.post("/v1/rooms/small", &json!({"properties": {"max_participants": 6}}));
    assert_eq!(r.status, 200, "{}", r.text);
    let r = s.call("DELETE", "/v1/rooms/standup", Some(common::KEY), None);
    assert_eq!(r.status, 200, "{}", r.text);
    janus.videoroom(
        json!({"request": "create", "room": "stray", "admin_key": ADMIN_KEY, "description": "gatehouse:stray"}),
    );
    janus.wait_rooms(&[("small", 6)], &s);

    // kill -9 of Janus: it forgets its rooms; back up, they are made again.
    janus.kill9();
    std::thread::sleep(Duration::from_millis(500));
    s.create_room(json!({"name": "while-down"}));
    janus.run();
    janus.wait_rooms(&[("small", 6), ("while-down", 200)], &s);
    // The pass that made them counts them when it ends.
    let metrics_now = || s.call("GET", "/metrics", Some(common::KEY), None).text;
    let in_step = within(|| {
        let m = metrics_now();
        m.contains("gatehouse_janus_up 1") && m.contains("gatehouse_janus_rooms 2")
    });
    let metrics = metrics_now();
    assert!(in_step.is_some(), "/metrics does not say Janus is in step:\n{metrics}");
    let failures: f64 =
        metrics.lines().find_map(|l| l.strip_prefix("gatehouse_janus_failures_total ")).unwrap().parse().unwrap();
    let created: f64 =
        metrics.lines().find_map(|l| l.strip_prefix("gatehouse_janus_rooms_created_total ")).unwrap().parse().unwrap();
    assert!(created >= 4.0, "{created}");
    assert!(s.log().contains("janus: cannot keep its rooms in step") || failures == 0.0, "{}", s.log());
    assert!(!s.log().contains(ADMIN_KEY) && !s.log().contains(ADMIN_SECRET), "secrets stay out of the log");

    // config check reports Janus's version and the Admin API.
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args([
            "config",
            "check",
            "--janus-url",
            &url,
            "--janus-admin-url",
            &admin_url,
            "--janus-admin-secret",
            ADMIN_SECRET,
        ])
        .env("GATEHOUSE_API_KEY", common::KEY)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("version 1.") && text.contains("Admin API answers"), "{text}");
    assert!(!text.contains(ADMIN_SECRET), "config check hides the secret: {text}");
}

/// A Janus session with a VideoRoom handle, as a participant's browser would hold it.
struct Participant {
    session: u64,
    handle: u64,
}

/// A Janus API request to `api` (Janus itself, or Gatehouse's relay).
fn post_to(api: &str, path: &str, body: Value) -> Value {
    let r = ureq::post(&format!("{api}{path}")).send_json(body).unwrap();
    r.into_json().unwrap()
}

/// A Janus session with a VideoRoom handle, made through `api`.
fn participant_at(api: &str) -> Participant {
    let session = post_to(api, "", json!({"janus": "create", "transaction": "t"}))["data"]["id"].as_u64().unwrap();
    let handle = post_to(
        api,
        &format!("/{session}"),
        json!({"janus": "attach", "plugin": "janus.plugin.videoroom", "transaction": "t"}),
    )["data"]["id"]
        .as_u64()
        .unwrap();
    Participant { session, handle }
}

/// Joins `room` through `api` as publisher `id` with `token`; the VideoRoom event that answers
/// (read with the session's long-poll).
fn join_at(api: &str, p: &Participant, room: &str, id: &str, token: &str) -> Value {
    let body = json!({"request": "join", "ptype": "publisher", "room": room, "id": id, "token": token, "display": id});
    post_to(
        api,
        &format!("/{}/{}", p.session, p.handle),
        json!({"janus": "message", "transaction": "t", "body": body}),
    );
    let event = ureq::get(&format!("{api}/{}?maxev=1", p.session)).timeout(Duration::from_secs(5)).call().unwrap();
    let event: Value = event.into_json().unwrap();
    event["plugindata"]["data"].clone()
}

impl Janus {
    fn participant(&self) -> Participant {
        participant_at(&self.url())
    }

    /// Joins `room` as publisher `id` with `token`; the VideoRoom event that answers.
    fn join(&self, p: &Participant, room: &str, id: &str, token: &str) -> Value {
        join_at(&self.url(), p, room, id, token)
    }

    fn admin(&self, path: &str, body: Value) -> Value {
        let mut body = body;
        body["transaction"] = json!("t");
        body["admin_secret"] = json!(ADMIN_SECRET);
        let url = format!("http://127.0.0.1:{}/admin{path}", self.admin_port);
        ureq::post(&url).send_json(body).unwrap().into_json().unwrap()
    }

    fn sessions(&self) -> Vec<u64> {
        self.admin("", json!({"janus": "list_sessions"}))["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_u64)
            .collect()
    }
}

/// How long until `done` holds (at most 5 s).
fn within(done: impl Fn() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        if done() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn needs_janus_a_join_admits_to_the_media_room_and_every_end_of_the_session_cuts_it() {
    common::require(have("janus"), "janus (Debian package janus)");
    let tmp = tempfile::tempdir().unwrap();
    let janus = Janus::start(&tmp.path().join("janus"));
    let url = janus.url();
    let admin_url = format!("http://127.0.0.1:{}/admin", janus.admin_port);
    let s = Server::start_with(&[
        ("GATEHOUSE_JANUS_URL", url.as_str()),
        ("GATEHOUSE_JANUS_PUBLIC_URL", "https://media.example.com/janus"),
        ("GATEHOUSE_JANUS_ADMIN_KEY", ADMIN_KEY),
        ("GATEHOUSE_JANUS_ADMIN_URL", admin_url.as_str()),
        ("GATEHOUSE_JANUS_ADMIN_SECRET", ADMIN_SECRET),
    ]);
    s.create_room(json!({"name": "call"}));
    janus.wait_rooms(&[("call", 200)], &s);

    // Each of three ways a session ends cuts its media: eject, leave, a ban.
    for how in ["eject", "leave", "ban"] {
        let token = s.token(json!({"room_name": "call", "user_id": format!("user-{how}")}));
        let (id, secret, body) = s.join_ok("call", Some(&token));
        let cred = &body["janus"];
        assert_eq!(cred["server"], "https://media.example.com/janus", "{body}");
        assert_eq!(cred["room"], "call");
        let token = cred["token"].as_str().unwrap().to_string();
        let media = cred["id"].as_str().unwrap().to_string();
        assert_ne!(media, id, "the media id is not the public session id");
        let p = janus.participant();
        let joined = janus.join(&p, "call", &media, &token);
        assert_eq!(joined["videoroom"], "joined", "{how}: {joined}");
        assert!(janus.sessions().contains(&p.session));
        let r = match how {
            "eject" => s.post("/v1/rooms/call/eject", &json!({"ids": [id]})),
            "leave" => s.call("POST", &format!("/v1/sessions/{id}/leave"), Some(&secret), None),
            _ => s.post("/v1/rooms/call/eject", &json!({"ids": [id], "ban": true})),
        };
        assert_eq!(r.status, 200, "{how}: {}", r.text);
        let listed = || {
            janus.videoroom(json!({"request": "listparticipants", "room": "call", "admin_key": ADMIN_KEY}))
                ["participants"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["id"] == media.as_str())
        };
        let took = within(|| !listed() && !janus.sessions().contains(&p.session));
        assert!(
            took.is_some_and(|t| t < Duration::from_secs(1)),
            "{how}: still in Janus after {took:?}; log:\n{}",
            s.log()
        );
        println!("{how}: out of Janus (participant list and sessions) {took:?} after the answer");
        // What it held no longer gets it in.
        let again = janus.participant();
        let refused = janus.join(&again, "call", &media, &token);
        assert!(refused["error_code"].is_number(), "{how}: rejoined with an old token: {refused}");
    }

    // A join right after the room was made gets its credential (the room is made in Janus then).
    s.create_room(json!({"name": "instant"}));
    let (_, _, body) = s.join_ok("instant", None);
    assert_eq!(body["janus"]["room"], "instant", "{body}");

    // A live session's token used under another id (not its own): kicked by the next pass.
    let (_, _, body) = s.join_ok("call", None);
    let token = body["janus"]["token"].as_str().unwrap().to_string();
    let p = janus.participant();
    assert_eq!(janus.join(&p, "call", "someone-else", &token)["videoroom"], "joined");
    s.create_room(json!({"name": "poke"})); // a room event: a pass now
    let gone = within(|| {
        !janus.videoroom(json!({"request": "listparticipants", "room": "call", "admin_key": ADMIN_KEY}))["participants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == "someone-else")
    });
    assert!(gone.is_some(), "a participant under an id no live session has stayed; log:\n{}", s.log());

    // A knock admitted from the lobby gets its credential on its stream, and it works.
    s.create_room(json!({"name": "salon", "privacy": "private", "properties": {"enable_knocking": true}}));
    let r = s.join("salon", None, Some("Visitor"));
    assert_eq!(r.body["access"]["level"], "lobby", "{}", r.text);
    assert!(r.body.get("janus").is_none(), "no media while waiting: {}", r.text);
    let (vid, vsecret) =
        (r.body["session_id"].as_str().unwrap().to_string(), r.body["session_secret"].as_str().unwrap().to_string());
    let agent = ureq::AgentBuilder::new().timeout_read(Duration::from_secs(10)).build();
    let stream = agent
        .get(&format!("{}/v1/sessions/{vid}/stream", s.base))
        .set("Authorization", &format!("Bearer {vsecret}"))
        .call()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stream.into_reader()));
    janus.wait_rooms(&[("call", 200), ("instant", 200), ("poke", 200), ("salon", 200)], &s);
    let decided = s.post("/v1/rooms/salon/waiting-participants", &json!({vid.clone(): {"grantRequestedAccess": true}}));
    assert_eq!(decided.status, 200, "{}", decided.text);
    let frame = loop {
        let line = lines.next().expect("the stream ended").unwrap();
        if let Some(data) = line.strip_prefix("data: ") {
            let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
            if v["access"]["level"] == "full" {
                break v;
            }
        }
    };
    let token = frame["janus"]["token"].as_str().unwrap_or_else(|| panic!("no credential: {frame}")).to_string();
    assert_eq!(frame["janus"]["room"], "salon");
    let p = janus.participant();
    let media = frame["janus"]["id"].as_str().unwrap();
    assert_eq!(janus.join(&p, "salon", media, &token)["videoroom"], "joined");
    let _ = vid;

    // kill -9 of Gatehouse mid-call: after the restart, a session still live keeps its media.
    let (_, _, body) = s.join_ok("call", None);
    let token = body["janus"]["token"].as_str().unwrap().to_string();
    let id = body["janus"]["id"].as_str().unwrap().to_string();
    let p = janus.participant();
    assert_eq!(janus.join(&p, "call", &id, &token)["videoroom"], "joined");
    let mut s = s;
    s.kill9();
    let s = Server::start_in(
        &s.dir,
        &[
            ("GATEHOUSE_JANUS_URL", url.as_str()),
            ("GATEHOUSE_JANUS_ADMIN_KEY", ADMIN_KEY),
            ("GATEHOUSE_JANUS_ADMIN_URL", admin_url.as_str()),
            ("GATEHOUSE_JANUS_ADMIN_SECRET", ADMIN_SECRET),
        ],
    );
    let listed = |who: &str| {
        janus.videoroom(json!({"request": "listparticipants", "room": "call", "admin_key": ADMIN_KEY}))["participants"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == who)
    };
    std::thread::sleep(Duration::from_millis(500));
    assert!(listed(&id), "a live session keeps its media across a Gatehouse restart");
    // Deleting the room ends everyone's media with it.
    let r = s.call("DELETE", "/v1/rooms/call", Some(common::KEY), None);
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(
        within(|| !janus.sessions().contains(&p.session)).is_some(),
        "room deletion left the media; log:\n{}",
        s.log()
    );
    let metrics = s.call("GET", "/metrics", Some(common::KEY), None).text;
    assert!(metrics.contains("gatehouse_janus_participants_cut_total"), "{metrics}");
}

#[test]
fn needs_janus_browsers_reach_janus_through_gatehouse_on_its_own_origin() {
    common::require(have("janus"), "janus (Debian package janus)");
    let tmp = tempfile::tempdir().unwrap();
    let janus = Janus::start(&tmp.path().join("janus"));
    let (url, admin_url) = (janus.url(), format!("http://127.0.0.1:{}/admin", janus.admin_port));
    // No --janus-public-url: browsers are handed this server's own relay.
    let s = Server::start_with(&[
        ("GATEHOUSE_JANUS_URL", url.as_str()),
        ("GATEHOUSE_JANUS_ADMIN_KEY", ADMIN_KEY),
        ("GATEHOUSE_JANUS_ADMIN_URL", admin_url.as_str()),
        ("GATEHOUSE_JANUS_ADMIN_SECRET", ADMIN_SECRET),
    ]);
    s.create_room(json!({"name": "call"}));
    janus.wait_rooms(&[("call", 200)], &s);
    let (id, _, body) = s.join_ok("call", None);
    let api = body["janus"]["server"].as_str().unwrap().to_string();
    assert_eq!(api, format!("{}/janus", s.base), "the relay, on the room page's own origin: {body}");
    // The room page's policy lets it talk to its own origin only, which is where Janus now is.
    let page = s.get("/call");
    assert!(
        page.header("content-security-policy").is_some_and(|c| c.contains("connect-src 'self'")),
        "{:?}",
        page.headers
    );

    // Janus's API works through the relay: info, a session, a VideoRoom join with the
    // credential, the long-poll that brings the answer.
    let info = s.call("GET", "/janus/info", None, None);
    assert_eq!(info.status, 200, "{}", info.text);
    assert_eq!(info.body["janus"], "server_info", "{}", info.text);
    assert_eq!(info.header("content-type"), Some("application/json"));
    let p = participant_at(&api);
    assert!(janus.sessions().contains(&p.session), "the session was made in Janus");
    let media = body["janus"]["id"].as_str().unwrap();
    let joined = join_at(&api, &p, "call", media, body["janus"]["token"].as_str().unwrap());
    assert_eq!(joined["videoroom"], "joined", "{joined}");
    // Without the credential, Janus refuses the join, relayed or not.
    let q = participant_at(&api);
    let refused = join_at(&api, &q, "call", "intruder", "not-a-token");
    assert!(refused["error_code"].is_number(), "{refused}");

    // Only Janus's API paths pass; the Admin API never does.
    for (method, path) in [
        ("POST", "/janus/admin"),
        ("POST", "/janus/1/admin"),
        ("GET", "/janus/1/2"),
        ("POST", "/janus/info"),
        ("POST", "/janus/../admin"),
        ("GET", "/janus/-1"),
    ] {
        let r = s.call(method, path, None, Some("{\"janus\":\"list_sessions\",\"transaction\":\"t\"}"));
        assert!(matches!(r.status, 404 | 405), "{method} {path}: {} {}", r.status, r.text);
        assert!(!r.text.contains("sessions"), "{method} {path}: {}", r.text);
    }
    let big = format!("{{\"janus\":\"create\",\"transaction\":\"{}\"}}", "x".repeat(200 * 1024));
    let r = s.call("POST", "/janus", None, Some(&big));
    assert_eq!(r.status, 413, "{}", r.text);

    // An ejection cuts the session the browser made through the relay: its long-poll is told
    // (Janus answers a poll of a session it no longer has with an empty 404).
    let r = s.post("/v1/rooms/call/eject", &json!({"ids": [id]}));
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(within(|| !janus.sessions().contains(&p.session)).is_some(), "still in Janus; log:\n{}", s.log());
    let gone = s.call("GET", &format!("/janus/{}?maxev=1", p.session), None, None);
    assert_eq!(gone.status, 404, "{}", gone.text);

    // Janus's event handler's endpoint takes the API key as the password of HTTP Basic only.
    let events = format!("{}/v1/janus/events", s.base);
    let basic = |password: &str| {
        use base64::Engine as _;
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("janus:{password}")))
    };
    let post = |auth: Option<String>, body: &str| {
        let headers: Vec<(&str, &str)> = auth.as_deref().map(|a| vec![("Authorization", a)]).unwrap_or_default();
        common::call_url("POST", &events, None, Some(body), &headers)
    };
    for (auth, why) in
        [(None, "none"), (Some(basic("not-the-key")), "a wrong key"), (Some(format!("Bearer {}", s.key)), "Bearer")]
    {
        let r = post(auth, "[]");
        assert_eq!(r.status, 401, "{why}: {}", r.text);
        assert!(!r.text.contains(&s.key), "{}", r.text);
    }
    assert_eq!(post(Some(basic(&s.key)), "not json").status, 400);
    let r = post(Some(basic(&s.key)), r#"[{"type": 1, "session_id": 1, "event": {"name": "created"}}]"#);
    assert_eq!(r.status, 200, "{}", r.text);

    // Janus down: the relay says so, without naming where Janus is.
    let mut janus = janus;
    janus.kill9();
    let r = s.call("POST", "/janus", None, Some("{\"janus\":\"create\",\"transaction\":\"t\"}"));
    assert_eq!(r.status, 502, "{}", r.text);
    assert!(!r.text.contains("127.0.0.1"), "{}", r.text);

    // A server without Janus has no relay.
    let plain = Server::start();
    let r = plain.call("POST", "/janus", None, Some("{}"));
    assert_eq!(r.status, 404, "{}", r.text);
    assert!(r.text.contains("--janus-url"), "{}", r.text);
}

/// A JSON request with reqwest (built without its `json` feature); the answer's JSON.
async fn send_json(client: &reqwest::Client, url: &str, body: Option<Value>, bearer: Option<&str>) -> Value {
    let mut req = match body {
        Some(b) => client.post(url).header("content-type", "application/json").body(b.to_string()),
        None => client.get(url),
    };
    if let Some(k) = bearer {
        req = req.bearer_auth(k);
    }
    let bytes = req.send().await.unwrap().bytes().await.unwrap();
    serde_json::from_slice(&bytes).unwrap_or_else(|_| panic!("{url}: {}", String::from_utf8_lossy(&bytes)))
}

/// Over HTTPS, the relay is on the page's own origin and certificate: a client that trusts only
/// the server's certificate reaches Janus through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn needs_janus_the_relay_serves_on_the_servers_certificate() {
    common::require(have("janus"), "janus (Debian package janus)");
    let tmp = tempfile::tempdir().unwrap();
    let janus = tokio::task::block_in_place(|| Janus::start(&tmp.path().join("janus")));
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let url = janus.url();
    let env = [
        ("GATEHOUSE_TLS_CERT", cert.to_str().unwrap()),
        ("GATEHOUSE_TLS_KEY", key.to_str().unwrap()),
        ("GATEHOUSE_JANUS_URL", url.as_str()),
        ("GATEHOUSE_JANUS_ADMIN_KEY", ADMIN_KEY),
    ];
    let s = tokio::task::block_in_place(|| Server::start_in(&tmp.path().join("d"), &env));
    assert!(s.base.starts_with("https://"), "{}", s.base);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ck.cert.pem().as_bytes()).unwrap()])
        .no_proxy()
        .build()
        .unwrap();
    let room =
        send_json(&client, &format!("{}/v1/rooms", s.base), Some(json!({"name": "call"})), Some(common::KEY)).await;
    assert_eq!(room["name"], "call", "{room}");
    let joined = send_json(&client, &format!("{}/v1/rooms/call/join", s.base), Some(json!({})), None).await;
    let api = joined["janus"]["server"].as_str().unwrap_or_else(|| panic!("no credential: {joined}")).to_string();
    assert_eq!(api, format!("{}/janus", s.base), "https, the same origin");
    let made = send_json(&client, &api, Some(json!({"janus": "create", "transaction": "t"})), None).await;
    let session = made["data"]["id"].as_u64().unwrap_or_else(|| panic!("{made}"));
    let info = send_json(&client, &format!("{api}/info"), None, None).await;
    assert_eq!(info["janus"], "server_info", "{info}");
    assert!(tokio::task::block_in_place(|| janus.sessions()).contains(&session), "made in Janus, over HTTPS");
}
