//! Gatehouse in front of a real Janus (Debian's `janus`, started here on loopback): how long a
//! join takes to be in the media room, and how long an ejection takes to get the participant
//! out of Janus (its participant list and its session list), over `--ejections` ejections
//! (default 100). The media itself is not measured here (WebRTC needs a network namespace and
//! a browser): this is the control path's share of the cut, which the media cut adds Janus's
//! own teardown to.
//!
//! Baseline, measured in the same run: one VideoRoom `list` request to the same Janus (a
//! round trip to it). The cut is polled every 2 ms (each poll is two requests to Janus), so a
//! figure is at most a poll late.
//!
//! Run: `cargo bench --bench janus -- --ejections 100`; with real media (WebRTC in headless
//! Chromium, in a network namespace; needs root): `cargo bench --bench janus -- --media 100`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

// The tests' Janus configuration (the event handler's part is theirs alone).
#[path = "../tests/common/janus_config.rs"]
#[allow(dead_code)]
mod janus_config;
mod support;

use serde_json::{json, Value};
use support::{free_port, pct};

const KEY: &str = "5b2c0f6a9e8d7c1b3a4f5e6d7c8b9a0f1e2d3c4b5a69788796a5b4c3d2e1f0a9";
const ADMIN_KEY: &str = "bench-videoroom-admin-key";
const ADMIN_SECRET: &str = "bench-janus-admin-secret";

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Janus with the HTTP and Admin APIs on loopback, VideoRoom only.
fn janus(dir: &Path) -> (Kill, u16, u16) {
    let (port, admin) = (free_port(), free_port());
    janus_config::write(dir, port, admin, ADMIN_KEY, ADMIN_SECRET);
    let child = janus_config::run(dir, port, None);
    (Kill(child), port, admin)
}

fn gatehouse(dir: &Path, janus: u16, admin: u16) -> (Kill, String) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("GATEHOUSE_API_KEY", KEY)
        .env("GATEHOUSE_LOG", "warn")
        .env("GATEHOUSE_JANUS_URL", format!("http://127.0.0.1:{janus}/janus"))
        .env("GATEHOUSE_JANUS_ADMIN_KEY", ADMIN_KEY)
        .env("GATEHOUSE_JANUS_ADMIN_URL", format!("http://127.0.0.1:{admin}/admin"))
        .env("GATEHOUSE_JANUS_ADMIN_SECRET", ADMIN_SECRET)
        .env("GATEHOUSE_JOIN_RATE", "1000000")
        .env("GATEHOUSE_JOIN_BURST", "1000000")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    let child = Kill(child); // killed and waited for however this ends
    for line in out.lines() {
        if let Some(a) = line.unwrap().strip_prefix("gatehouse listening on ") {
            return (child, a.to_string());
        }
    }
    panic!("gatehouse did not start");
}

fn post(url: &str, auth: Option<&str>, body: Value) -> Value {
    let mut req = ureq::post(url);
    if let Some(a) = auth {
        req = req.set("Authorization", &format!("Bearer {a}"));
    }
    match req.send_json(body) {
        Ok(r) => r.into_json().unwrap(),
        Err(ureq::Error::Status(code, r)) => panic!("{url}: {code} {}", r.into_string().unwrap_or_default()),
        Err(e) => panic!("{url}: {e}"),
    }
}

/// The number after `flag` in the arguments.
fn arg(flag: &str) -> Option<usize> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok())
}

/// `--media N`: the media itself, with real WebRTC. Janus, Gatehouse and headless Chromium run
/// in a network namespace of their own (this program runs itself again under `unshare -n`);
/// `tests/browser/media.mjs` joins a host and an observer, then N guests in turn, each
/// ejected through the REST API after its media reached the others, with its page made
/// hostile (it ignores its end) and the observer deaf (it keeps its subscription, whatever
/// Janus says): the time until the observer's received bytes (getStats, sampled every 20 ms)
/// stop growing. Baseline, in the same run: every fifth round a guest that hangs up itself
/// (its page closes its connections), measured the same way.
fn media(rounds: usize) {
    const INSIDE: &str = "GATEHOUSE_BENCH_IN_NETNS";
    if std::env::var_os(INSIDE).is_none() {
        let status = Command::new("unshare")
            .args(["-n", "--"])
            .arg(std::env::current_exe().unwrap())
            .args(std::env::args().skip(1))
            .env(INSIDE, "1")
            .status()
            .expect("unshare (util-linux), as root");
        assert!(status.success(), "the media benchmark failed in its network namespace");
        return;
    }
    janus_config::media_network();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("janus")).unwrap();
    let (_janus, port, admin) = janus(&tmp.path().join("janus"));
    let (_gh, base) = gatehouse(&tmp.path().join("data"), port, admin);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut node = Command::new("node")
        .arg(root.join("tests/browser/media.mjs"))
        .current_dir(root.join("tests/browser"))
        .env("BASE", &base)
        .env("KEY", KEY)
        .env("SHOTS", root.join("target/browser-screenshots"))
        .env("ROUNDS", rounds.to_string())
        .env("SAMPLE_MS", "20")
        .stdout(Stdio::piped())
        .spawn()
        .expect("node, and playwright-core in tests/browser (npm ci)");
    let (mut cut, mut baseline, mut first) = (Vec::new(), Vec::new(), Vec::new());
    use std::io::BufRead;
    for line in std::io::BufReader::new(node.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let Some(m) = line.strip_prefix("measure: ") else {
            println!("{line}");
            continue;
        };
        let m: Value = serde_json::from_str(m).unwrap();
        let ms = m["cut_ms"].as_f64().unwrap();
        first.push(m["first_bytes_ms"].as_f64().unwrap());
        if m["kind"] == "baseline" {
            baseline.push(ms)
        } else {
            cut.push(ms)
        }
        if (cut.len() + baseline.len()) % 25 == 0 {
            eprintln!("{} ejections, {} baseline rounds", cut.len(), baseline.len());
        }
    }
    assert!(node.wait().unwrap().success(), "tests/browser/media.mjs failed");
    let (b50, b99) = (pct(&mut baseline, 0.5), pct(&mut baseline, 0.99));
    println!("baseline: a guest hangs up itself -> its media stops at the observer ({} rounds): p50 {b50:.0} ms, p99 {b99:.0} ms", baseline.len());
    let (c50, c99) = (pct(&mut cut, 0.5), pct(&mut cut, 0.99));
    let max = cut.iter().cloned().fold(0.0, f64::max);
    let mut slowest = cut.clone();
    slowest.sort_by(|a, b| b.total_cmp(a));
    println!("the slowest cuts (ms): {:?}", &slowest[..slowest.len().min(5)]);
    println!(
        "REST eject -> the (hostile) guest's media stops at the observer ({} ejections): p50 {c50:.0} ms ({:.1}x baseline), p99 {c99:.0} ms, max {max:.0} ms (target p99 <= 500 ms)",
        cut.len(),
        c50 / b50.max(1.0)
    );
    let (f50, f99) = (pct(&mut first, 0.5), pct(&mut first, 0.99));
    println!(
        "page opened -> its first media bytes at the host ({} joins): p50 {f50:.0} ms, p99 {f99:.0} ms",
        first.len()
    );
}

fn main() {
    if let Some(rounds) = arg("--media") {
        return media(rounds);
    }
    let ejections = arg("--ejections").unwrap_or(100);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("janus")).unwrap();
    let (_janus, port, admin) = janus(&tmp.path().join("janus"));
    let (_gh, base) = gatehouse(&tmp.path().join("data"), port, admin);
    let j = format!("http://127.0.0.1:{port}/janus");
    let admin_url = format!("http://127.0.0.1:{admin}/admin");
    post(&format!("{base}/v1/rooms"), Some(KEY), json!({"name": "bench"}));

    // A session with a VideoRoom handle, and a request on it.
    let open = || {
        let s = post(&j, None, json!({"janus": "create", "transaction": "t"}))["data"]["id"].as_u64().unwrap();
        let h = post(
            &format!("{j}/{s}"),
            None,
            json!({"janus": "attach", "plugin": "janus.plugin.videoroom", "transaction": "t"}),
        )["data"]["id"]
            .as_u64()
            .unwrap();
        (s, h)
    };
    let (ls, lh) = open();
    let list = |room: &str| {
        post(
            &format!("{j}/{ls}/{lh}"),
            None,
            json!({"janus": "message", "transaction": "t", "body": {"request": "listparticipants", "room": room, "admin_key": ADMIN_KEY}}),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while list("bench")["plugindata"]["data"]["participants"].is_null() {
        assert!(Instant::now() < deadline, "the room never reached Janus");
        std::thread::sleep(Duration::from_millis(20));
    }
    let sessions = || {
        post(&admin_url, None, json!({"janus": "list_sessions", "transaction": "t", "admin_secret": ADMIN_SECRET}))
            ["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_u64)
            .collect::<Vec<u64>>()
    };

    let mut baseline = Vec::new();
    let mut admit = Vec::new();
    let mut cut = Vec::new();
    for _ in 0..ejections {
        let t = Instant::now();
        list("bench");
        baseline.push(t.elapsed().as_secs_f64() * 1000.0);

        // Join: Gatehouse's answer, then Janus's joined event.
        let t = Instant::now();
        let me = post(&format!("{base}/v1/rooms/bench/join"), None, json!({"user_name": "bench"}));
        let (id, token) =
            (me["janus"]["id"].as_str().unwrap().to_string(), me["janus"]["token"].as_str().unwrap().to_string());
        let session = me["session_id"].as_str().unwrap().to_string();
        let (s, h) = open();
        let body = json!({"request": "join", "ptype": "publisher", "room": "bench", "id": id, "token": token});
        post(&format!("{j}/{s}/{h}"), None, json!({"janus": "message", "transaction": "t", "body": body}));
        let ev: Value = ureq::get(&format!("{j}/{s}?maxev=1")).call().unwrap().into_json().unwrap();
        assert_eq!(ev["plugindata"]["data"]["videoroom"], "joined", "{ev}");
        admit.push(t.elapsed().as_secs_f64() * 1000.0);

        // Eject, and wait until Janus lists neither the participant nor its session.
        let t = Instant::now();
        post(&format!("{base}/v1/rooms/bench/eject"), Some(KEY), json!({"ids": [session]}));
        loop {
            let listed = list("bench")["plugindata"]["data"]["participants"]
                .as_array()
                .is_some_and(|a| a.iter().any(|p| p["id"] == id.as_str()));
            if !listed && !sessions().contains(&s) {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "participant {id} still in Janus after 10 s");
            std::thread::sleep(Duration::from_millis(2));
        }
        cut.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let base_p50 = pct(&mut baseline, 0.5);
    println!(
        "janus round trip (VideoRoom list, baseline): p50 {base_p50:.2} ms, p99 {:.2} ms",
        pct(&mut baseline, 0.99)
    );
    let (a50, a99) = (pct(&mut admit, 0.5), pct(&mut admit, 0.99));
    println!(
        "join -> in the Janus room ({} joins): p50 {a50:.1} ms ({:.0}x baseline), p99 {a99:.1} ms",
        admit.len(),
        a50 / base_p50
    );
    let (c50, c99) = (pct(&mut cut, 0.5), pct(&mut cut, 0.99));
    let max = cut.iter().cloned().fold(0.0, f64::max);
    println!(
        "eject -> out of Janus (participant and session lists; {} ejections): p50 {c50:.1} ms ({:.0}x baseline), p99 {c99:.1} ms, max {max:.1} ms (target p99 <= 500 ms)",
        cut.len(),
        c50 / base_p50
    );
}
