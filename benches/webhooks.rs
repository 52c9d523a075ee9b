//! Webhook delivery benchmark: drains a backlog of 100,000 events to one local receiver
//! (events/s), then measures commit-to-receipt latency (receipt time − the event's commit
//! time, `event_ts`) at a steady 1,000 events/s. Release server, real HTTP both ways.
//!
//! Run: `cargo bench --bench webhooks`.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use tokio::net::TcpStream;

const KEY: &str = "5b2c0f6a9e8d7c1b3a4f5e6d7c8b9a0f1e2d3c4b5a69788796a5b4c3d2e1f0a9";
const BACKLOG: u64 = 100_000;

fn now_ms_f() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64() * 1000.0
}

/// (seq, receipt unix ms, event_ts unix ms)
type Log = Arc<Mutex<Vec<(u64, f64, f64)>>>;

async fn receiver(log: Log) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let log = log.clone();
                    async move {
                        let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
                        let at = now_ms_f();
                        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                            if let (Some(seq), Some(ts)) = (v["seq"].as_u64(), v["event_ts"].as_f64()) {
                                log.lock().unwrap().push((seq, at, ts * 1000.0));
                            }
                        }
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    url
}

struct Proc(Child, String);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn server(dir: &std::path::Path) -> Proc {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("GATEHOUSE_API_KEY", KEY)
        .env("GATEHOUSE_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    for line in out.lines() {
        if let Some(a) = line.unwrap().strip_prefix("gatehouse listening on http://") {
            return Proc(child, a.to_string());
        }
    }
    panic!("no server");
}

async fn call(addr: &str, method: &str, path: &str, body: &str) -> serde_json::Value {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "bench")
        .header("authorization", format!("Bearer {KEY}"))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap_or(serde_json::Value::Null)
}

/// Creates `n` rooms over 64 connections as fast as the server takes them.
async fn make_events(addr: &str, n: u64) {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (addr, next) = (addr.to_string(), next.clone());
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(&addr).await.unwrap();
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
            tokio::spawn(conn);
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let req = Request::post("/v1/rooms")
                    .header("host", "b")
                    .header("authorization", format!("Bearer {KEY}"))
                    .body(Full::new(Bytes::from_static(b"{}")))
                    .unwrap();
                let res = send.send_request(req).await.unwrap();
                let _ = res.into_body().collect().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1))).copied().unwrap_or(0.0)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let tmp = tempfile::tempdir().unwrap();
        let gh = server(&tmp.path().join("data"));
        let log: Log = Arc::default();
        let url = receiver(log.clone()).await;

        let t = Instant::now();
        make_events(&gh.1, BACKLOG).await;
        println!("backlog: {BACKLOG} events written in {:.1}s", t.elapsed().as_secs_f64());
        let w = call(&gh.1, "POST", "/v1/webhooks", &serde_json::json!({"url": url}).to_string()).await;
        let id = w["uuid"].as_str().unwrap().to_string();
        let start = Instant::now();
        call(&gh.1, "POST", &format!("/v1/webhooks/{id}/replay"), r#"{"from_seq":1}"#).await;
        loop {
            let n = log.lock().unwrap().len() as u64;
            if n >= BACKLOG {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(600), "drain stalled at {n}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let drained = start.elapsed().as_secs_f64();
        // What was delivered before the replay took effect (the webhook's own creation, at the
        // end of the log) comes first; order is judged from the replay's first event on.
        let seqs: Vec<u64> = log.lock().unwrap().iter().map(|r| r.0).skip_while(|&s| s != 1).collect();
        let in_order = seqs.windows(2).all(|w| w[0] < w[1]);
        if let Some(i) = seqs.windows(2).position(|w| w[0] >= w[1]) {
            let around = &seqs[i.saturating_sub(3)..(i + 4).min(seqs.len())];
            println!("first out-of-order receipt at position {i}: {around:?}");
        }
        println!(
            "drain: {BACKLOG} events in {drained:.2}s = {:.0} events/s (in order: {in_order})",
            BACKLOG as f64 / drained
        );

        // Steady 1,000 events/s for 10 s; latency = receipt − commit (event_ts).
        log.lock().unwrap().clear();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        let steady = 10_000u64;
        let addr = gh.1.clone();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(100_000);
        let paced = tokio::spawn(async move {
            for _ in 0..steady {
                tick.tick().await;
                let _ = tx.send(()).await;
            }
            drop(tx);
        });
        // A few connections so one slow acknowledgement does not stall the pace.
        let writers: Vec<_> = (0..8)
            .map(|_| {
                let addr = addr.clone();
                tokio::spawn(async move {
                    let stream = TcpStream::connect(&addr).await.unwrap();
                    let (send, conn) =
                        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
                    tokio::spawn(conn);
                    send
                })
            })
            .collect();
        let mut pool = Vec::new();
        for w in writers {
            pool.push(Arc::new(tokio::sync::Mutex::new(w.await.unwrap())));
        }
        let mut i = 0usize;
        let mut inflight = Vec::new();
        while rx.recv().await.is_some() {
            let s = pool[i % pool.len()].clone();
            i += 1;
            inflight.push(tokio::spawn(async move {
                let mut s = s.lock().await;
                let req = Request::post("/v1/rooms")
                    .header("host", "b")
                    .header("authorization", format!("Bearer {KEY}"))
                    .body(Full::new(Bytes::from_static(b"{}")))
                    .unwrap();
                let res = s.send_request(req).await.unwrap();
                let _ = res.into_body().collect().await;
            }));
        }
        paced.await.unwrap();
        for f in inflight {
            f.await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while (log.lock().unwrap().len() as u64) < steady && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut lat: Vec<f64> = log.lock().unwrap().iter().map(|(_, at, ts)| at - ts).collect();
        let n = lat.len();
        println!(
            "steady 1,000 events/s for 10 s: {n} received; commit-to-receipt p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99),
            pct(&mut lat, 1.0)
        );
    });
}
