//! HTTP benchmark: the release server against a bare hyper hello-world baseline, same client,
//! same concurrency (64 keep-alive connections), in the same run. Prints requests/s, p50/p99
//! latency and the ratio to the baseline; then fills a store with 1,000,000 rooms, 1,000,000
//! issued tokens and 5,000,000 events (750,000 joins and leaves make the other 3,000,000) and
//! reports the store's size on disk, restart-to-ready time and RSS.
//!
//! Run: `cargo bench --bench http` (add `-- --quick` to skip the million-record part;
//! `-- --tokens 3` runs only the baseline and token creation, three rounds, with the server's
//! CPU per token).
//! `cargo bench --bench http -- --cluster`: the same rows against two nodes on a local
//! three-member etcd (through the leader and through the follower, which answers reads from
//! its replica), and the failover time (leader killed → first write acknowledged by the other
//! node) over 20 trials, then from a frozen leader (SIGSTOP) over 5. Needs `etcd`.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use support::{cpu_secs, free_port, rss_mib};
use tokio::net::TcpStream;

const KEY: &str = "5b2c0f6a9e8d7c1b3a4f5e6d7c8b9a0f1e2d3c4b5a69788796a5b4c3d2e1f0a9";
const CONNECTIONS: usize = 64;
const WARMUP: Duration = Duration::from_secs(1);
const MEASURE: Duration = Duration::from_secs(6);
/// Rooms the join benchmark spreads its joins over.
const JOIN_ROOMS: u64 = 8;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--baseline-server") {
        return baseline_server();
    }
    if args.iter().any(|a| a == "--fill") {
        return fill(&args[args.iter().position(|a| a == "--fill").unwrap() + 1]);
    }
    let quick = args.iter().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    if args.iter().any(|a| a == "--cluster") {
        return rt.block_on(cluster());
    }
    if let Some(at) = args.iter().position(|a| a == "--tokens") {
        let rounds = args.get(at + 1).and_then(|n| n.parse().ok()).unwrap_or(3);
        return rt.block_on(tokens_only(rounds));
    }
    rt.block_on(run(quick));
}

/// A hello-world hyper 1 server with the same server builder Gatehouse uses.
fn baseline_server() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("gatehouse listening on http://{}", listener.local_addr().unwrap());
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    let mut r = hyper::Response::new(Full::new(Bytes::from_static(b"{\"hello\":\"world\"}")));
                    r.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
                    Ok::<_, std::convert::Infallible>(r)
                });
                let b = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                let _ = b.serve_connection(hyper_util::rt::TokioIo::new(stream), svc).await;
            });
        }
    });
}

struct Proc {
    child: Child,
    addr: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(mut cmd: Command) -> Proc {
    use std::io::BufRead;
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    for line in out.lines() {
        let line = line.unwrap();
        if let Some(url) = line.strip_prefix("gatehouse listening on http://") {
            return Proc { child, addr: url.to_string() };
        }
    }
    panic!("server did not start");
}

fn gatehouse(dir: &std::path::Path, sync: &str) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--sync", sync, "--data-dir"])
        .arg(dir)
        .env("GATEHOUSE_API_KEY", KEY)
        .env("GATEHOUSE_LOG", "warn")
        .env("GATEHOUSE_JOIN_RATE", "1000000000")
        .env("GATEHOUSE_JOIN_BURST", "1000000000");
    spawn(cmd)
}

#[derive(Clone, Copy)]
enum Kind {
    Get,
    Post,
}

struct Result {
    name: String,
    rps: f64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
}

/// Drives `CONNECTIONS` keep-alive connections as fast as they answer; `body(i)` makes the i-th body.
async fn load(
    name: &str,
    addr: &str,
    kind: Kind,
    path: String,
    body: Arc<dyn Fn(u64) -> String + Send + Sync>,
) -> Result {
    let counter = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let (addr, path, body, counter, errors) =
            (addr.to_string(), path.clone(), body.clone(), counter.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(&addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
            tokio::spawn(conn);
            let mut lat = Vec::new();
            loop {
                let now = Instant::now();
                if now - start > WARMUP + MEASURE {
                    break;
                }
                let i = counter.fetch_add(1, Ordering::Relaxed);
                // `{n}` in the path spreads requests over JOIN_ROOMS rooms.
                let path = path.replace("{n}", &(i % JOIN_ROOMS).to_string());
                let b = match kind {
                    Kind::Get => Request::get(&path).body(Full::new(Bytes::new())),
                    Kind::Post => Request::post(&path)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body(i)))),
                };
                let req = b
                    .map(|mut r| {
                        r.headers_mut().insert("host", "bench".parse().unwrap());
                        r.headers_mut().insert("authorization", format!("Bearer {KEY}").parse().unwrap());
                        r
                    })
                    .unwrap();
                let t = Instant::now();
                let res = send.send_request(req).await.unwrap();
                let ok = res.status().is_success();
                let _ = res.into_body().collect().await;
                if now - start > WARMUP {
                    lat.push(t.elapsed().as_micros() as u64);
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    let pct =
        |p: f64| all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or(0);
    Result {
        name: name.to_string(),
        rps: all.len() as f64 / MEASURE.as_secs_f64(),
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        errors: errors.load(Ordering::Relaxed),
    }
}

fn no_body() -> Arc<dyn Fn(u64) -> String + Send + Sync> {
    Arc::new(|_| String::new())
}

async fn post_json(addr: &str, path: &str, body: &str) -> serde_json::Value {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::post(path)
        .header("host", "bench")
        .header("authorization", format!("Bearer {KEY}"))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

async fn run(quick: bool) {
    let mut results = Vec::new();
    {
        let base = spawn({
            let mut c = Command::new(std::env::current_exe().unwrap());
            c.arg("--baseline-server");
            c
        });
        results.push(load("baseline: hyper hello-world GET", &base.addr, Kind::Get, "/".into(), no_body()).await);
    }
    for sync in ["fdatasync", "flush"] {
        let tmp = tempfile::tempdir().unwrap();
        let gh = gatehouse(&tmp.path().join("data"), sync);
        let label = |s: &str| {
            if sync == "fdatasync" {
                s.to_string()
            } else {
                format!("{s} (--sync flush)")
            }
        };
        results.push(
            load(
                &label("POST /v1/rooms (durable)"),
                &gh.addr,
                Kind::Post,
                "/v1/rooms".into(),
                Arc::new(|_| "{}".to_string()),
            )
            .await,
        );
        results.push(
            load(
                &label("POST /v1/meeting-tokens (durable)"),
                &gh.addr,
                Kind::Post,
                "/v1/meeting-tokens".into(),
                Arc::new(|_| r#"{"properties":{"room_name":"bench","user_id":"u"}}"#.to_string()),
            )
            .await,
        );
        if sync == "flush" {
            continue;
        }
        post_json(&gh.addr, "/v1/rooms", r#"{"name":"bench"}"#).await;
        let token = post_json(&gh.addr, "/v1/meeting-tokens", r#"{"properties":{"room_name":"bench"}}"#).await["token"]
            .as_str()
            .unwrap()
            .to_string();
        results.push(
            load(
                "GET /v1/meeting-tokens/:token",
                &gh.addr,
                Kind::Get,
                format!("/v1/meeting-tokens/{token}"),
                no_body(),
            )
            .await,
        );
        results.push(load("GET /v1/rooms/:name", &gh.addr, Kind::Get, "/v1/rooms/bench".into(), no_body()).await);
        // Several rooms, so that no room fills up during the run (each holds 100,000).
        for n in 0..JOIN_ROOMS {
            let body = format!(r#"{{"name":"joinbench-{n}","properties":{{"max_participants":100000}}}}"#);
            post_json(&gh.addr, "/v1/rooms", &body).await;
        }
        // A token for no room in particular is good for every room.
        let jt = post_json(&gh.addr, "/v1/meeting-tokens", r#"{"properties":{"user_name":"bench"}}"#).await["token"]
            .as_str()
            .unwrap()
            .to_string();
        let join_body = format!(r#"{{"token":"{jt}"}}"#);
        let body = Arc::new(move |_| join_body.clone());
        results.push(
            load(
                "POST /v1/rooms/:name/join (durable)",
                &gh.addr,
                Kind::Post,
                "/v1/rooms/joinbench-{n}/join".into(),
                body,
            )
            .await,
        );
    }
    table(&results);
    if !quick {
        big_store().await;
    }
}

/// `--tokens [ROUNDS]`: only the baseline and durable token creation, alternated ROUNDS
/// times on one server, with the server's CPU per token: the quick loop for issue 22's
/// token target.
async fn tokens_only(rounds: usize) {
    let base = spawn({
        let mut c = Command::new(std::env::current_exe().unwrap());
        c.arg("--baseline-server");
        c
    });
    let tmp = tempfile::tempdir().unwrap();
    let gh = gatehouse(&tmp.path().join("data"), "fdatasync");
    let pid = gh.child.id();
    let body: Arc<dyn Fn(u64) -> String + Send + Sync> =
        Arc::new(|_| r#"{"properties":{"room_name":"bench","user_id":"u"}}"#.to_string());
    let mut ratios = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        let b = load("baseline", &base.addr, Kind::Get, "/".into(), no_body()).await;
        let cpu0 = cpu_secs(pid);
        let t = load("tokens", &gh.addr, Kind::Post, "/v1/meeting-tokens".into(), body.clone()).await;
        let cpu = cpu_secs(pid) - cpu0;
        let made = t.rps * (WARMUP + MEASURE).as_secs_f64();
        println!(
            "round {round}: baseline {:.0}/s, tokens {:.0}/s = {:.3}x, p50 {} us, p99 {} us, server CPU {:.1} us/token ({:.0}% of a core), errors {}",
            b.rps,
            t.rps,
            t.rps / b.rps,
            t.p50_us,
            t.p99_us,
            cpu * 1e6 / made,
            cpu * 100.0 / (WARMUP + MEASURE).as_secs_f64(),
            t.errors
        );
        ratios.push(t.rps / b.rps);
    }
    // The machine's speed moves from round to round (the same build's CPU per token varied by a
    // third here): the median says more than any one round.
    ratios.sort_by(f64::total_cmp);
    let median = match ratios.len() {
        0 => return,
        n if n % 2 == 1 => ratios[n / 2],
        n => (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0,
    };
    println!(
        "median of {} rounds: {median:.3}x (lowest {:.3}x, highest {:.3}x)",
        ratios.len(),
        ratios[0],
        ratios[ratios.len() - 1]
    );
}

fn table(results: &[Result]) {
    let baseline = results[0].rps;
    println!(
        "\n{CONNECTIONS} connections, {}s measured after {}s warm-up, client and server on the same {} cores\n",
        MEASURE.as_secs(),
        WARMUP.as_secs(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!(
        "| {:<46} | {:>9} | {:>8} | {:>8} | {:>6} | {:>6} |",
        "request", "req/s", "p50 ms", "p99 ms", "× base", "errors"
    );
    println!("|{:-<48}|{:-<11}|{:-<10}|{:-<10}|{:-<8}|{:-<8}|", "", "", "", "", "", "");
    for r in results {
        println!(
            "| {:<46} | {:>9.0} | {:>8.2} | {:>8.2} | {:>6.2} | {:>6} |",
            r.name,
            r.rps,
            r.p50_us as f64 / 1000.0,
            r.p99_us as f64 / 1000.0,
            r.rps / baseline,
            r.errors
        );
    }
}

/// Three etcd members on loopback (killed when dropped), and their client URLs.
fn etcd_cluster(dir: &std::path::Path) -> (Vec<Proc>, Vec<String>) {
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let initial: Vec<String> =
        ports.iter().enumerate().map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}")).collect();
    let mut procs = Vec::new();
    let mut urls = Vec::new();
    for (i, (c, p)) in ports.iter().enumerate() {
        let client = format!("http://127.0.0.1:{c}");
        let child = Command::new("etcd")
            .args(["--name", &format!("m{i}"), "--data-dir"])
            .arg(dir.join(format!("m{i}")))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{p}")])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{p}")])
            .args(["--initial-cluster", &initial.join(",")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (Debian etcd-server) is needed for --cluster");
        procs.push(Proc { child, addr: client.clone() });
        urls.push(client);
    }
    (procs, urls)
}

fn node(dir: &std::path::Path, port: u16, endpoints: &[String]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    cmd.args(["serve", "--store", "etcd", "--etcd-endpoints", &endpoints.join(",")])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir)
        .env("GATEHOUSE_API_KEY", KEY)
        .env("GATEHOUSE_LOG", "warn")
        .env("GATEHOUSE_TRUSTED_PROXIES", "127.0.0.1")
        .env("GATEHOUSE_JOIN_RATE", "1000000000")
        .env("GATEHOUSE_JOIN_BURST", "1000000000");
    spawn(cmd)
}

/// POST /v1/rooms until acknowledged: how long it took.
async fn until_acked(addr: &str, limit: Duration) -> Option<Duration> {
    // Names never repeat across calls: a name taken by an earlier call would be refused (409)
    // and counted as time without a leader.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let started = Instant::now();
    while started.elapsed() < limit {
        let i = NEXT.fetch_add(1, Ordering::Relaxed);
        let body = format!(r#"{{"name":"failover-{}-{i}"}}"#, std::process::id());
        let ok = async {
            let stream = TcpStream::connect(addr).await.ok()?;
            let (mut send, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.ok()?;
            tokio::spawn(conn);
            let req = Request::post("/v1/rooms")
                .header("host", "bench")
                .header("authorization", format!("Bearer {KEY}"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body)))
                .ok()?;
            // Short: a request forwarded to a frozen leader must not hide the takeover.
            let r = tokio::time::timeout(Duration::from_millis(500), send.send_request(req)).await.ok()?.ok()?;
            if std::env::var_os("BENCH_DEBUG").is_some() {
                eprintln!("until_acked {addr}: {}", r.status());
            }
            Some(r.status().is_success())
        }
        .await;
        if ok == Some(true) {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Failover trials of `--cluster`: the leader killed, and the leader frozen.
const TRIALS: usize = 20;
const FROZEN_TRIALS: usize = 5;

async fn cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let (_etcd, endpoints) = etcd_cluster(&tmp.path().join("etcd"));
    let mut results = Vec::new();
    {
        let base = spawn({
            let mut c = Command::new(std::env::current_exe().unwrap());
            c.arg("--baseline-server");
            c
        });
        results.push(load("baseline: hyper hello-world GET", &base.addr, Kind::Get, "/".into(), no_body()).await);
    }
    let ports = [free_port(), free_port()];
    let dirs = [tmp.path().join("n0"), tmp.path().join("n1")];
    let mut nodes = vec![Some(node(&dirs[0], ports[0], &endpoints))];
    until_acked(&nodes[0].as_ref().unwrap().addr, Duration::from_secs(30)).await.expect("no leader");
    nodes.push(Some(node(&dirs[1], ports[1], &endpoints)));
    let leader = nodes[0].as_ref().unwrap().addr.clone();
    let follower = nodes[1].as_ref().unwrap().addr.clone();
    until_acked(&follower, Duration::from_secs(30)).await.expect("the follower does not forward");
    for (via, addr) in [("leader", &leader), ("follower", &follower)] {
        let label = |s: &str| format!("{s} via {via}");
        results.push(
            load(&label("POST /v1/rooms"), addr, Kind::Post, "/v1/rooms".into(), Arc::new(|_| "{}".to_string())).await,
        );
        results.push(
            load(
                &label("POST /v1/meeting-tokens"),
                addr,
                Kind::Post,
                "/v1/meeting-tokens".into(),
                Arc::new(|_| r#"{"properties":{"room_name":"bench","user_id":"u"}}"#.to_string()),
            )
            .await,
        );
    }
    post_json(&leader, "/v1/rooms", r#"{"name":"bench"}"#).await;
    let token = post_json(&leader, "/v1/meeting-tokens", r#"{"properties":{"room_name":"bench"}}"#).await["token"]
        .as_str()
        .unwrap()
        .to_string();
    // The follower's replica has them once it polled (within a second).
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (via, addr) in [("leader", &leader), ("follower", &follower)] {
        results.push(
            load(&format!("GET /v1/rooms/:name via {via}"), addr, Kind::Get, "/v1/rooms/bench".into(), no_body()).await,
        );
        results.push(
            load(
                &format!("GET /v1/meeting-tokens/:token via {via}"),
                addr,
                Kind::Get,
                format!("/v1/meeting-tokens/{token}"),
                no_body(),
            )
            .await,
        );
    }
    for n in 0..JOIN_ROOMS {
        post_json(
            &leader,
            "/v1/rooms",
            &format!(r#"{{"name":"joinbench-{n}","properties":{{"max_participants":100000}}}}"#),
        )
        .await;
    }
    let jt = post_json(&leader, "/v1/meeting-tokens", r#"{"properties":{"user_name":"bench"}}"#).await["token"]
        .as_str()
        .unwrap()
        .to_string();
    let join_body = format!(r#"{{"token":"{jt}"}}"#);
    results.push(
        load(
            "POST /v1/rooms/:name/join via leader",
            &leader,
            Kind::Post,
            "/v1/rooms/joinbench-{n}/join".into(),
            Arc::new(move |_| join_body.clone()),
        )
        .await,
    );
    println!("\nTwo Gatehouse nodes on a three-member etcd (all on loopback).");
    table(&results);

    // Failover: kill the leader, time the first write the other node acknowledges, restart
    // the killed one (it rebuilds its replica and follows), twenty times. Then a frozen leader
    // (SIGSTOP: a hung process, or a VM that stopped), which refuses nothing: only its lease
    // running out lets the other node take over.
    let mut leading = 0;
    let mut cluster = Nodes { nodes, dirs, ports, endpoints };
    let killed = cluster.failovers(&mut leading, TRIALS, false).await;
    report("leader killed → first write acknowledged by the other node", &killed);
    let frozen = cluster.failovers(&mut leading, FROZEN_TRIALS, true).await;
    report("leader frozen (SIGSTOP) → first write acknowledged by the other node", &frozen);
}

/// The two nodes of `--cluster`, and how to start each again.
struct Nodes {
    nodes: Vec<Option<Proc>>,
    dirs: [std::path::PathBuf; 2],
    ports: [u16; 2],
    endpoints: Vec<String>,
}

impl Nodes {
    /// `n` failovers, the leader killed (or frozen, then killed once the other node leads):
    /// how long each took until the other node acknowledged a write. The stopped node is
    /// started again (it rebuilds its replica and follows) and given 3 s before the next.
    async fn failovers(&mut self, leading: &mut usize, n: usize, freeze: bool) -> Vec<f64> {
        let mut times = Vec::new();
        for trial in 0..n {
            let other = 1 - *leading;
            if freeze {
                let pid = self.nodes[*leading].as_ref().unwrap().child.id();
                let _ = Command::new("kill").args(["-STOP", &pid.to_string()]).status();
            } else {
                drop(self.nodes[*leading].take());
            }
            let took = until_acked(&self.nodes[other].as_ref().unwrap().addr, Duration::from_secs(60))
                .await
                .expect("no failover");
            println!(
                "failover {} ({}): {:.2} s",
                trial + 1,
                if freeze { "frozen" } else { "killed" },
                took.as_secs_f64()
            );
            times.push(took.as_secs_f64());
            drop(self.nodes[*leading].take());
            self.nodes[*leading] = Some(node(&self.dirs[*leading], self.ports[*leading], &self.endpoints));
            tokio::time::sleep(Duration::from_secs(3)).await;
            *leading = other;
        }
        times
    }
}

/// The median and the worst of `times`.
fn report(what: &str, times: &[f64]) {
    let mut t = times.to_vec();
    t.sort_by(f64::total_cmp);
    let n = t.len();
    let median = if n.is_multiple_of(2) { (t[n / 2 - 1] + t[n / 2]) / 2.0 } else { t[n / 2] };
    println!("failover ({what}), {n} trials, lease TTL 5 s: median {median:.2} s, max {:.2} s", t[n - 1]);
}

/// Fills a data dir with 1,000,000 rooms and 1,000,000 tokens through the store's own writer
/// (the same commands the API submits), then measures a restart of the release server on it.
async fn big_store() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let started = Instant::now();
    let status = Command::new(std::env::current_exe().unwrap()).arg("--fill").arg(&dir).status().unwrap();
    assert!(status.success());
    println!(
        "\nfilled 1,000,000 rooms + 1,000,000 tokens + 5,000,000 events in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    let disk = dir_size(&dir);
    let t0 = Instant::now();
    let gh = gatehouse(&dir, "fdatasync");
    let ready = wait_ready(&gh.addr).await;
    let to_ready = t0.elapsed();
    let _ = ready;
    let rss_idle = rss_mib(gh.child.id());
    let r =
        load("GET /v1/rooms/:name (1M rooms stored)", &gh.addr, Kind::Get, "/v1/rooms/room-500000".into(), no_body())
            .await;
    let w = load(
        "POST /v1/rooms (1M rooms stored)",
        &gh.addr,
        Kind::Post,
        "/v1/rooms".into(),
        Arc::new(|_| "{}".to_string()),
    )
    .await;
    let rss_loaded = rss_mib(gh.child.id());
    println!("store on disk: {:.0} MiB", disk as f64 / 1048576.0);
    println!("restart to ready: {:.2}s", to_ready.as_secs_f64());
    println!("RSS after start: {rss_idle:.0} MiB; after load: {rss_loaded:.0} MiB");
    println!(
        "with 1M rooms: GET room {:.0} req/s (p99 {:.2} ms), POST room {:.0} req/s (p99 {:.2} ms)",
        r.rps,
        r.p99_us as f64 / 1000.0,
        w.rps,
        w.p99_us as f64 / 1000.0
    );
    // A second restart, this time after SIGKILL under load: the journal and sled's log tail are replayed.
    drop(gh);
    let t1 = Instant::now();
    let gh = gatehouse(&dir, "fdatasync");
    wait_ready(&gh.addr).await;
    println!(
        "restart to ready after SIGKILL: {:.2}s; RSS {:.0} MiB",
        t1.elapsed().as_secs_f64(),
        rss_mib(gh.child.id())
    );
}

async fn wait_ready(addr: &str) -> bool {
    for _ in 0..6000 {
        if let Ok(stream) = TcpStream::connect(addr).await {
            if let Ok((mut send, conn)) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await
            {
                tokio::spawn(conn);
                let req = Request::get("/readyz").header("host", "bench").body(Full::new(Bytes::new())).unwrap();
                if let Ok(res) = send.send_request(req).await {
                    if res.status().is_success() {
                        return true;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

fn dir_size(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let m = e.metadata().unwrap();
                    if m.is_dir() {
                        dir_size(&e.path())
                    } else {
                        m.len()
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// `--fill DIR`: the million-record store, written through the writer in concurrent batches.
fn fill(dir: &str) {
    use gatehouse::store::{CreateRoom, CreateToken, Join, Leave, Store, StoreOptions, SyncMode, TokenRecord};
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let path = std::path::Path::new(dir);
        std::fs::create_dir_all(path).unwrap();
        let opts = StoreOptions {
            path: path.join("store"),
            cache_bytes: 64 << 20,
            background_flush_ms: Some(500),
            sync: SyncMode::Flush,
            public_url: "http://bench".into(),
            lease_ms: 30_000,
            queue: 4096,
            shed_after: std::time::Duration::from_secs(60),
            stall_after: std::time::Duration::from_secs(30),
            large_room: gatehouse::store::fanout::DEFAULT_LARGE_ROOM,
            segment_bytes: gatehouse::store::eventlog::SEGMENT_BYTES,
        };
        let store = Store::open(opts, Arc::new(gatehouse::clock::SystemClock)).unwrap();
        const N: u64 = 1_000_000;
        let mut tasks = Vec::new();
        for w in 0..256u64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = w;
                while i < N {
                    let name = format!("room-{i}");
                    store
                        .submit_wait(CreateRoom {
                            name: Some(name.clone()),
                            privacy: gatehouse::rooms::Privacy::Public,
                            config: Default::default(),
                        })
                        .await
                        .unwrap()
                        .unwrap();
                    let jti = uuid::Uuid::now_v7().to_string();
                    let record = TokenRecord {
                        jti: jti.clone(),
                        kid: "bench".into(),
                        room: Some(name),
                        user_id: Some(format!("u{i}")),
                        user_name: None,
                        is_owner: false,
                        nbf: None,
                        exp: Some(4102444800),
                        created_ms: 0,
                    };
                    store
                        .submit_wait(CreateToken {
                            record,
                            event: gatehouse::events::NewEvent::new(
                                gatehouse::events::EventKind::MeetingTokenCreated,
                                &serde_json::json!({"jti": jti, "room": format!("room-{i}")}),
                                Some(format!("room-{i}")),
                            )
                            .unwrap(),
                        })
                        .await
                        .unwrap();
                    // 750,000 rooms also see a join and a leave: four more events each.
                    if i < 750_000 {
                        let sid = format!("s{i}");
                        store
                            .submit_wait(Join {
                                room: format!("room-{i}"),
                                token: gatehouse::sessions::TokenCheck::None,
                                user_name: Some("bench".into()),
                                session_id: sid.clone(),
                                secret_digest: [0; 32],
                                leeway_s: 0,
                            })
                            .await
                            .unwrap();
                        store.submit_wait(Leave { session_id: sid }).await.unwrap();
                    }
                    i += 256;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        store.close().await;
    });
}
