//! Deadline benchmark. Phase 1 (the store in process; its writer fires deadlines): 200,000
//! sessions whose ejection deadlines (token `exp` + `eject_at_token_exp`) are spread evenly
//! over a 20-second window (10,000 firings/s); reports lateness (event time − deadline)
//! p50/p99/max, firings per second, and RSS. Phase 1b: one room whose `exp` ejects 10,000
//! present at once; reports the time from the deadline to the last ejection. Phase 2 (real
//! binary): 200,000 more, the writing process is killed with SIGKILL, we wait until 100,000
//! are overdue, start the release server and measure restart-to-ready and the time until every
//! overdue one has fired. Sessions are created through the store's writer (the same `Join`
//! command the API submits).
//!
//! Run: `cargo bench --bench deadlines`.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse::clock::{Clock, SystemClock};
use gatehouse::sessions::TokenCheck;
use gatehouse::store::{CreateRoom, Join, JoinOutcome, Store, StoreOptions, SyncMode};
use gatehouse::tokens::Claims;
use support::rss_mib;

const N: usize = 200_000;
const WINDOW_S: f64 = 20.0;
const KEY: &str = "5b2c0f6a9e8d7c1b3a4f5e6d7c8b9a0f1e2d3c4b5a69788796a5b4c3d2e1f0a9";

fn open(dir: &std::path::Path) -> Store {
    std::fs::create_dir_all(dir).unwrap();
    let opts = StoreOptions {
        path: dir.join("store"),
        cache_bytes: 64 << 20,
        background_flush_ms: Some(500),
        sync: SyncMode::Fdatasync,
        public_url: "http://bench".into(),
        lease_ms: 3_600_000,
        queue: 4096,
        shed_after: std::time::Duration::from_secs(60),
        stall_after: std::time::Duration::from_secs(30),
        large_room: gatehouse::store::fanout::DEFAULT_LARGE_ROOM,
        segment_bytes: gatehouse::store::eventlog::SEGMENT_BYTES,
    };
    Store::open(opts, Arc::new(SystemClock)).unwrap()
}

fn join(i: usize, room: &str, exp_s: Option<f64>) -> Join {
    let claims =
        Claims { room: Some(room.into()), exp: exp_s, eject_at_token_exp: exp_s.is_some(), ..Default::default() };
    Join {
        room: room.into(),
        token: TokenCheck::Valid { claims: Box::new(claims), token_id: format!("t{i}") },
        user_name: None,
        session_id: format!("s{i:07}"),
        secret_digest: [0; 32],
        leeway_s: 0,
    }
}

/// Joins concurrently (they share journal syncs), returning what each join answered.
async fn join_all(store: &Store, joins: Vec<Join>) -> Vec<JoinOutcome> {
    let mut set = tokio::task::JoinSet::new();
    for (n, j) in joins.into_iter().enumerate() {
        let store = store.clone();
        set.spawn(async move { (n, store.submit_wait(j).await.unwrap()) });
    }
    let mut out: Vec<(usize, JoinOutcome)> = set.join_all().await;
    out.sort_by_key(|(n, _)| *n);
    out.into_iter().map(|(_, o)| o).collect()
}

/// Creates sessions `from..to` with deadlines spread over `[start_s, start_s + window)`;
/// returns session id → deadline ms.
async fn fill(store: &Store, from: usize, to: usize, start_s: f64, window: f64) -> HashMap<String, i64> {
    let mut deadlines = HashMap::new();
    let mut i = from;
    while i < to {
        let end = (i + 2000).min(to);
        let cmds =
            (i..end).map(|k| join(k, "r", Some(start_s + window * (k - from) as f64 / (to - from) as f64))).collect();
        for r in join_all(store, cmds).await {
            match r {
                JoinOutcome::Joined(s) => {
                    deadlines.insert(s.id.clone(), s.eject_at_ms.unwrap());
                }
                other => panic!("join refused: {other:?}"),
            }
        }
        i = end;
    }
    deadlines
}

async fn make_room(store: &Store) {
    let mut config = serde_json::Map::new();
    // Above the API's limit on purpose: the writer does not check it, and one room keeps this simple.
    config.insert("max_participants".into(), serde_json::json!(1_000_000));
    store
        .submit(CreateRoom { name: Some("r".into()), privacy: gatehouse::rooms::Privacy::Public, config })
        .await
        .unwrap()
        .unwrap();
}

fn pct(v: &[f64], p: f64) -> f64 {
    v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1))).copied().unwrap_or(0.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    if let Some(p) = args.iter().position(|a| a == "--fill") {
        return rt.block_on(fill_child(&args[p + 1], args[p + 2].parse().unwrap()));
    }
    rt.block_on(phase1());
    rt.block_on(room_expiry());
    rt.block_on(phase2());
}

async fn phase1() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(&tmp.path().join("data"));
    make_room(&store).await;
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let clock: gatehouse::clock::SharedClock = Arc::new(SystemClock);
    // Estimate the creation rate to place the window after creation ends.
    let probe_start = Instant::now();
    fill(&store, 0, 2000, clock.now_ms() as f64 / 1000.0 + 3600.0, 1.0).await;
    let rate = 2000.0 / probe_start.elapsed().as_secs_f64();
    let lead = (N as f64 / rate) * 1.5 + 10.0;
    let start_s = clock.now_ms() as f64 / 1000.0 + lead;
    println!("creating {N} sessions through the writer at ~{rate:.0}/s; window starts in {lead:.0}s");
    let t = Instant::now();
    let deadlines = fill(&store, 2000, 2000 + N, start_s, WINDOW_S).await;
    println!("created in {:.1}s; RSS {:.0} MiB", t.elapsed().as_secs_f64(), rss_mib("self"));
    let head_before = store.durable_seq();
    drop(rx);
    // Wait for the window to pass and the firings to finish.
    let deadline = Instant::now() + Duration::from_secs_f64(lead + WINDOW_S + 300.0);
    let mut lateness = Vec::with_capacity(N);
    let mut after = head_before;
    let (mut first_ts, mut last_ts) = (f64::MAX, 0f64);
    let mut peak_rss = 0f64;
    while lateness.len() < N && Instant::now() < deadline {
        let page = store.events(after, 1000, Some(&["participant.ejected".to_string()])).unwrap();
        after = page.next_after;
        for e in &page.events {
            let v: serde_json::Value = serde_json::from_str(&e.envelope).unwrap();
            let ts = v["event_ts"].as_f64().unwrap() * 1000.0;
            if let Some(d) = deadlines.get(v["payload"]["session_id"].as_str().unwrap()) {
                lateness.push(ts - *d as f64);
                first_ts = first_ts.min(ts);
                last_ts = last_ts.max(ts);
            }
        }
        if page.events.is_empty() {
            peak_rss = peak_rss.max(rss_mib("self"));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    lateness.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "phase 1: {} of {N} fired; lateness p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {:.0} firings/s over {:.1}s; peak RSS {:.0} MiB",
        lateness.len(),
        pct(&lateness, 0.5),
        pct(&lateness, 0.99),
        pct(&lateness, 1.0),
        lateness.len() as f64 / ((last_ts - first_ts) / 1000.0).max(0.001),
        (last_ts - first_ts) / 1000.0,
        peak_rss
    );
    store.close().await;
}

/// Phase 1b: one room with 10,000 present and `eject_at_room_exp`: its expiry is one firing.
async fn room_expiry() {
    const PRESENT: usize = 10_000;
    let tmp = tempfile::tempdir().unwrap();
    let store = open(&tmp.path().join("data"));
    let now_s = SystemClock.now_ms() / 1000;
    let exp_s = now_s + 30;
    let mut config = serde_json::Map::new();
    config.insert("max_participants".into(), serde_json::json!(100_000));
    config.insert("exp".into(), serde_json::json!(exp_s));
    config.insert("eject_at_room_exp".into(), serde_json::json!(true));
    store
        .submit(CreateRoom { name: Some("big".into()), privacy: gatehouse::rooms::Privacy::Public, config })
        .await
        .unwrap()
        .unwrap();
    let joins = (0..PRESENT).map(|i| join(i, "big", None)).collect();
    let admitted = join_all(&store, joins).await.iter().filter(|o| matches!(o, JoinOutcome::Joined(_))).count();
    assert_eq!(admitted, PRESENT);
    let after = store.durable_seq();
    assert!(SystemClock.now_ms() / 1000 < exp_s, "joining took longer than the lead");
    let mut last_ms = 0f64;
    let mut ejected = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut cursor = after;
    while ejected < PRESENT && Instant::now() < deadline {
        let page = store.events(cursor, 1000, Some(&["participant.ejected".to_string()])).unwrap();
        cursor = page.next_after;
        for e in &page.events {
            ejected += 1;
            last_ms = last_ms.max(e.ts_ms as f64);
        }
        if page.events.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Events carry their batch's time; the durable head moving is when readers see them.
    println!(
        "phase 1b: room exp with {PRESENT} present: {ejected} ejected; the last {:.0} ms after the deadline (event time)",
        last_ms - (exp_s * 1000) as f64
    );
    store.close().await;
}

/// Child process of phase 2: writes 200,000 sessions, then waits to be killed.
async fn fill_child(dir: &str, start_s: f64) {
    let store = open(std::path::Path::new(dir));
    make_room(&store).await;
    fill(&store, 0, N, start_s, 2.0 * WINDOW_S).await;
    println!("filled");
    tokio::time::sleep(Duration::from_secs(3600)).await;
}

async fn phase2() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    // Deadlines spread over 40 s starting well after the fill: half overdue 20 s in.
    let now_s = SystemClock.now_ms() as f64 / 1000.0;
    let start_s = now_s + 200.0;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--fill")
        .arg(&dir)
        .arg(start_s.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    for line in out.lines() {
        if line.unwrap() == "filled" {
            break;
        }
    }
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    let overdue_at = start_s + WINDOW_S;
    let wait = overdue_at - SystemClock.now_ms() as f64 / 1000.0;
    assert!(wait > 0.0, "the fill took longer than the lead time; raise it");
    println!("phase 2: filled and killed with SIGKILL; waiting {wait:.0}s until 100,000 are overdue");
    tokio::time::sleep(Duration::from_secs_f64(wait)).await;

    let t0 = Instant::now();
    let mut gh = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&dir)
        .env("GATEHOUSE_API_KEY", KEY)
        .env("GATEHOUSE_LOG", "warn")
        .env("GATEHOUSE_LEASE_SECS", "3600")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(gh.stdout.take().unwrap()).lines();
    let addr = loop {
        if let Some(a) = lines.next().unwrap().unwrap().strip_prefix("gatehouse listening on http://") {
            break a.to_string();
        }
    };
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build();
    while agent.get(&format!("http://{addr}/readyz")).call().is_err() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let ready = t0.elapsed();
    let restart_s = SystemClock.now_ms() as f64 / 1000.0 - (t0.elapsed().as_secs_f64());
    let overdue = ((restart_s - start_s) / (2.0 * WINDOW_S) * N as f64).clamp(0.0, N as f64) as usize;
    let t1 = Instant::now();
    let mut fired = 0usize;
    let mut after = 0u64;
    while fired < overdue && t1.elapsed() < Duration::from_secs(600) {
        let r: serde_json::Value = agent
            .get(&format!("http://{addr}/v1/events?after={after}&limit=1000&types=participant.ejected"))
            .set("Authorization", &format!("Bearer {KEY}"))
            .call()
            .unwrap()
            .into_json()
            .unwrap();
        fired += r["data"].as_array().unwrap().len();
        let next = r["next_after"].as_u64().unwrap();
        if next == after {
            std::thread::sleep(Duration::from_millis(20));
        }
        after = next;
    }
    let all_fired = t1.elapsed();
    let rss = rss_mib(gh.id());
    let _ = gh.kill();
    let _ = gh.wait();
    println!(
        "phase 2: restart-to-ready {:.2}s; {overdue} overdue at restart, all fired {:.2}s after ready; server RSS {rss:.0} MiB",
        ready.as_secs_f64(),
        all_fired.as_secs_f64()
    );
}
