//! Streams and presence under joins, against a running release server (this build's, or the
//! binary given with `--binary PATH`, so that an older build can be measured the same way).
//!
//! `rooms R PER`: R rooms of PER participants, every participant's session stream open
//! (`GET /v1/sessions/:id/stream`), then 1,000 joins per second for 10 s spread over the
//! rooms. Reports: a `/metrics` scrape, `GET /v1/presence` and one room's presence (time to
//! answer, with everyone present), the joins' p50/p99, the time from a join's answer to its
//! `participant.joined` frame on a stream in that room (p50/p99), and the server's CPU seconds
//! and RSS.
//!
//! `large N` (or `large R PER`): one room of N participants (or R rooms of PER) with every
//! stream open, half of them read one frame a second; then 1,000 joins and 1,000 leaves at
//! 200/s. Reports RSS at peak and after the streams close (and the allocator's decay time),
//! join-to-frame latency on the fast readers (in a large room: to the first `presence-summary`
//! made after the join's answer, on 50 sampled readers), CPU seconds.
//!
//! Run: `cargo bench --bench streams -- rooms 100 100`, `-- large 10000`, `-- large 100 100`
//! (add `--binary PATH` to measure another build).

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::{cpu_secs, pct, rss_mib, Conn};

const KEY: &str = "5b2c0f6a9e8d7c1b3a4f5e6d7c8b9a0f1e2d3c4b5a69788796a5b4c3d2e1f0a9";

struct Server {
    child: std::process::Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(binary: &str) -> Server {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(binary)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("GATEHOUSE_API_KEY", KEY)
        .env("GATEHOUSE_LOG", "warn")
        .env("GATEHOUSE_JOIN_RATE", "1000000000")
        .env("GATEHOUSE_JOIN_BURST", "1000000000")
        .env("GATEHOUSE_MAX_CONNECTIONS_PER_ADDRESS", "1000000")
        .env("GATEHOUSE_MAX_STREAMS_PER_SESSION", "4")
        .env("GATEHOUSE_LEASE_SECS", "3600")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    for line in out.lines() {
        let line = line.unwrap();
        if let Some(a) = line.strip_prefix("gatehouse listening on http://") {
            return Server { child, addr: a.to_string(), _dir: dir };
        }
    }
    panic!("server did not start");
}

/// When each session id's `participant.joined` frame was seen, by any stream.
type Seen = Arc<Mutex<HashMap<String, Instant>>>;
/// Summaries seen by sampled fast readers: (the summary's `at`, unix ms; when it arrived).
type Summaries = Arc<Mutex<Vec<Vec<(i64, Instant)>>>>;

fn unix_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Opens a session stream and reads it; `slow`: one read a second. Returns when the server
/// closes it or `stop` fires.
async fn follow(
    addr: String,
    id: String,
    secret: String,
    slow: bool,
    seen: Seen,
    summaries: Option<Summaries>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut mine: Vec<(i64, Instant)> = Vec::new();
    let Ok(mut s) = TcpStream::connect(&addr).await else { return };
    let req = format!("GET /v1/sessions/{id}/stream HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer {secret}\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; if slow { 4096 } else { 64 * 1024 }];
    let mut carry = String::new();
    let mut stop = stop;
    loop {
        if slow {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => return,
            }
        }
        let n = tokio::select! {
            r = s.read(&mut buf) => match r { Ok(0) | Err(_) => break, Ok(n) => n },
            _ = stop.changed() => break,
        };
        if slow {
            continue;
        }
        carry.push_str(&String::from_utf8_lossy(&buf[..n]));
        while let Some(at) = carry.find("\n\n") {
            let frame: String = carry.drain(..at + 2).collect();
            if frame.contains("event: presence-summary") {
                let at = frame
                    .find("\"at\":")
                    .and_then(|i| frame[i + 5..].split(|c: char| !c.is_ascii_digit()).next()?.parse::<i64>().ok());
                if let (Some(at), true) = (at, summaries.is_some()) {
                    mine.push((at, Instant::now()));
                }
            }
            if frame.contains("event: participant.joined") {
                if let Some(i) = frame.find("\"session_id\":\"") {
                    let rest = &frame[i + 14..];
                    if let Some(end) = rest.find('"') {
                        seen.lock().unwrap().entry(rest[..end].to_string()).or_insert_with(Instant::now);
                    }
                }
            }
        }
    }
    if let Some(all) = summaries {
        all.lock().unwrap().push(mine);
    }
}

async fn join(c: &mut Conn, room: &str) -> (String, String) {
    let (status, body) = c.call("POST", &format!("/v1/rooms/{room}/join"), KEY, Some("{}".into())).await;
    assert_eq!(status, 200, "join: {}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    (v["session_id"].as_str().unwrap().to_string(), v["session_secret"].as_str().unwrap().to_string())
}

async fn timed(c: &mut Conn, path: &str) -> (f64, usize) {
    let t = Instant::now();
    let (status, body) = c.call("GET", path, KEY, None).await;
    assert_eq!(status, 200, "{path}");
    (t.elapsed().as_secs_f64() * 1000.0, body.len())
}

/// Fills rooms, opens every stream; returns the sessions' (room, id, secret).
async fn populate(
    server: &Server,
    rooms: usize,
    per_room: usize,
    slow_half: bool,
    seen: &Seen,
    summaries: &Summaries,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Vec<(String, String, String)> {
    let mut c = Conn::open(&server.addr).await;
    for r in 0..rooms {
        let body = format!(r#"{{"name":"room-{r}","properties":{{"max_participants":100000}}}}"#);
        assert_eq!(c.call("POST", "/v1/rooms", KEY, Some(body)).await.0, 200);
    }
    let mut sessions = Vec::new();
    let mut joiners: Vec<Conn> = Vec::new();
    for _ in 0..16 {
        joiners.push(Conn::open(&server.addr).await);
    }
    for r in 0..rooms {
        let room = format!("room-{r}");
        let mut n = 0;
        while n < per_room {
            let batch = (per_room - n).min(joiners.len());
            let futs = joiners.iter_mut().take(batch).map(|j| join(j, &room));
            for (id, secret) in futures_join_all(futs).await {
                sessions.push((room.clone(), id, secret));
            }
            n += batch;
        }
    }
    for (i, (_, id, secret)) in sessions.iter().enumerate() {
        let slow = slow_half && i % 2 == 1;
        // Fifty fast readers keep the summaries they see (for the large-room latency).
        let sample = (!slow && i < 100).then(|| summaries.clone());
        tokio::spawn(follow(server.addr.clone(), id.clone(), secret.clone(), slow, seen.clone(), sample, stop.clone()));
        if i % 500 == 499 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    sessions
}

/// Awaits futures concurrently (no extra dependency for `join_all`).
async fn futures_join_all<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    let futs: Vec<_> = futs.map(Box::pin).collect();
    let mut pending: Vec<Option<std::pin::Pin<Box<F>>>> = futs.into_iter().map(Some).collect();
    let mut results: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (i, slot) in pending.iter_mut().enumerate() {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => {
                        results[i] = Some(v);
                        *slot = None;
                    }
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.extend(results.into_iter().flatten());
    out
}

/// Joins (and optionally leaves) at `rate` per second; returns join latencies (ms) and the
/// (session id, time answered) of each join.
async fn paced(
    server: &Server,
    rooms: &[String],
    total: usize,
    rate: f64,
    leaves: Vec<(String, String)>,
) -> (Vec<f64>, Vec<(String, Instant, i64)>) {
    let conns = 32;
    let mut tasks = Vec::new();
    let start = Instant::now();
    let per = total / conns;
    let leaves = Arc::new(Mutex::new(leaves));
    for c in 0..conns {
        let addr = server.addr.clone();
        let rooms = rooms.to_vec();
        let leaves = leaves.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(&addr).await;
            let mut lat = Vec::new();
            let mut acked = Vec::new();
            for k in 0..per {
                let i = k * conns + c;
                let due = start + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
                let room = &rooms[i % rooms.len()];
                let t = Instant::now();
                let (id, _) = join(&mut conn, room).await;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
                acked.push((id, Instant::now(), unix_ms()));
                let leave = leaves.lock().unwrap().pop();
                if let Some((lid, lsecret)) = leave {
                    let req = Request::post(format!("/v1/sessions/{lid}/leave"))
                        .header("host", "bench")
                        .header("authorization", format!("Bearer {lsecret}"))
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    conn.send.ready().await.unwrap();
                    let _ = conn.send.send_request(req).await;
                }
            }
            (lat, acked)
        }));
    }
    let mut lat = Vec::new();
    let mut acked = Vec::new();
    for t in tasks {
        let (l, a) = t.await.unwrap();
        lat.extend(l);
        acked.extend(a);
    }
    (lat, acked)
}

fn delivery(seen: &Seen, acked: &[(String, Instant, i64)]) -> (usize, Vec<f64>) {
    let seen = seen.lock().unwrap();
    let mut d = Vec::new();
    for (id, at, _) in acked {
        if let Some(s) = seen.get(id) {
            d.push(s.saturating_duration_since(*at).as_secs_f64() * 1000.0);
        }
    }
    (d.len(), d)
}

async fn rooms_scenario(binary: &str, rooms: usize, per_room: usize) {
    let server = start(binary);
    let pid = server.child.id();
    let seen: Seen = Arc::default();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let t = Instant::now();
    let sessions = populate(&server, rooms, per_room, false, &seen, &Summaries::default(), &stop).await;
    println!(
        "{} sessions in {rooms} rooms, every stream open, in {:.1}s; RSS {:.0} MiB",
        sessions.len(),
        t.elapsed().as_secs_f64(),
        rss_mib(pid)
    );
    let mut c = Conn::open(&server.addr).await;
    let (scrape, _) = timed(&mut c, "/metrics").await;
    let (presence, bytes) = timed(&mut c, "/v1/presence").await;
    let (room, _) = timed(&mut c, "/v1/rooms/room-0/presence").await;
    println!("with everyone present: /metrics {scrape:.1} ms; GET /v1/presence {presence:.1} ms ({bytes} bytes); one room's presence {room:.1} ms");
    let names: Vec<String> = (0..rooms).map(|r| format!("room-{r}")).collect();
    let cpu0 = cpu_secs(pid);
    let t = Instant::now();
    let (mut lat, acked) = paced(&server, &names, 10_000, 1000.0, Vec::new()).await;
    let wall = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = cpu_secs(pid) - cpu0;
    let (n, mut d) = delivery(&seen, &acked);
    println!(
        "10,000 joins at 1,000/s took {wall:.1}s: join p50 {:.1} ms, p99 {:.1} ms; frame on a stream of the room after the answer: {n} seen, p50 {:.1} ms, p99 {:.1} ms; server CPU {cpu:.1} s ({:.0}% of one core); RSS {:.0} MiB",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        pct(&mut d, 0.5),
        pct(&mut d, 0.99),
        cpu / wall * 100.0,
        rss_mib(pid)
    );
    let (scrape, _) = timed(&mut c, "/metrics").await;
    let (presence, _) = timed(&mut c, "/v1/presence").await;
    println!("after: /metrics {scrape:.1} ms; GET /v1/presence {presence:.1} ms");
    let _ = stop_tx.send(true);
}

async fn large_scenario(binary: &str, rooms: usize, n: usize) {
    let server = start(binary);
    let pid = server.child.id();
    let seen: Seen = Arc::default();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let rss0 = rss_mib(pid);
    let t = Instant::now();
    let summaries = Summaries::default();
    let sessions = populate(&server, rooms, n, true, &seen, &summaries, &stop).await;
    let rss_open = rss_mib(pid);
    println!("{rooms} room(s) of {n}, every stream open (half read one frame a second), in {:.1}s; RSS {rss0:.0} MiB before, {rss_open:.0} MiB with the streams open", t.elapsed().as_secs_f64());
    let names: Vec<String> = (0..rooms).map(|r| format!("room-{r}")).collect();
    let cpu0 = cpu_secs(pid);
    let leaves: Vec<(String, String)> = sessions
        .iter()
        .step_by((sessions.len() / 1000).max(1))
        .take(1000)
        .map(|(_, id, s)| (id.clone(), s.clone()))
        .collect();
    let mut peak = rss_open;
    let sampler = {
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let d = done.clone();
        let h = tokio::spawn(async move {
            let mut p: f64 = 0.0;
            while !d.load(std::sync::atomic::Ordering::Relaxed) {
                p = p.max(rss_mib(pid));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            p
        });
        (done, h)
    };
    let (mut lat, acked) = paced(&server, &names, 1000, 200.0, leaves).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    sampler.0.store(true, std::sync::atomic::Ordering::Relaxed);
    peak = peak.max(sampler.1.await.unwrap());
    let cpu = cpu_secs(pid) - cpu0;
    // The server's own view of the joins (time from the request's head to its answer).
    let (_, m) = Conn::open(&server.addr).await.call("GET", "/metrics", KEY, None).await;
    for line in String::from_utf8_lossy(&m).lines() {
        if line.contains("join") && (line.contains("duration_seconds_sum") || line.contains("duration_seconds_count")) {
            println!("server: {line}");
        }
    }
    let (mut seen_n, mut d) = delivery(&seen, &acked);
    let _ = stop_tx.send(true);
    // The server notices a closed stream at its next write (a frame, or the 15 s keep-alive).
    let closing = Instant::now();
    let mut c = Conn::open(&server.addr).await;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (_, m) = c.call("GET", "/metrics", KEY, None).await;
        let open = String::from_utf8_lossy(&m)
            .lines()
            .find_map(|l| l.strip_prefix("gatehouse_connections_open ").and_then(|v| v.trim().parse::<f64>().ok()))
            .unwrap_or(0.0);
        if open < 10.0 || closing.elapsed() > Duration::from_secs(40) {
            println!(
                "streams closed on the server {:.1}s after the clients went ({open} connections open)",
                closing.elapsed().as_secs_f64()
            );
            break;
        }
    }
    // The allocator gives freed memory back within its decay time (jemalloc: 10 s).
    tokio::time::sleep(Duration::from_secs(15)).await;
    if seen_n == 0 {
        // A large room: each join shows in the first summary made after its answer.
        for frames in summaries.lock().unwrap().iter() {
            for (_, ack, ack_ms) in &acked {
                if let Some((_, arrived)) = frames.iter().find(|(at, _)| at >= ack_ms) {
                    d.push(arrived.saturating_duration_since(*ack).as_secs_f64() * 1000.0);
                    seen_n += 1;
                }
            }
        }
    }
    println!(
        "1,000 joins and 1,000 leaves at 200/s: join p50 {:.1} ms, p99 {:.1} ms; frame on a fast reader after the answer ({seen_n} join×reader pairs): p50 {:.1} ms, p99 {:.1} ms; CPU {cpu:.1} s; RSS peak {peak:.0} MiB, {:.0} MiB after the streams closed",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.99),
        pct(&mut d, 0.5),
        pct(&mut d, 0.99),
        rss_mib(pid)
    );
    if let Some(secs) = std::env::var("STREAMS_PAUSE").ok().and_then(|v| v.parse().ok()) {
        println!("server pid {pid}: pausing {secs}s (STREAMS_PAUSE)");
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let binary = args
        .iter()
        .position(|a| a == "--binary")
        .map(|i| args[i + 1].clone())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_gatehouse").to_string());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let pos = |name: &str| args.iter().position(|a| a == name);
    if let Some(i) = pos("rooms") {
        let r = args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(100);
        let p = args.get(i + 2).and_then(|v| v.parse().ok()).unwrap_or(100);
        rt.block_on(rooms_scenario(&binary, r, p));
    } else if let Some(i) = pos("large") {
        // `large N` (one room) or `large R PER`.
        let a: Option<usize> = args.get(i + 1).and_then(|v| v.parse().ok());
        let b: Option<usize> = args.get(i + 2).and_then(|v| v.parse().ok());
        match (a, b) {
            (Some(r), Some(p)) => rt.block_on(large_scenario(&binary, r, p)),
            (n, _) => rt.block_on(large_scenario(&binary, 1, n.unwrap_or(10_000))),
        }
    } else {
        rt.block_on(rooms_scenario(&binary, 100, 100));
    }
}
