//! Steady state for months, compressed: clients loop join → heartbeat → presence → leave over
//! a set of rooms for a long time against a release server, and every minute the bench prints
//! the server's RSS (the mean of a sample each second, and the peak), open files, disk use of its data dir, the lifecycles done and the p50/p99
//! of the loop's requests in that minute. At the end it prints RSS growth from minute 5 to the
//! end (the target: ≤ 10 MiB), and the disk use against the retention setting.
//!
//! The server runs with sled's cache at 8 MiB, event retention `--retention-secs` (default 120)
//! and housekeeping every minute, so disk use levels off once retention starts to purge (from
//! minute 3): minute 5 onwards is the steady state, where memory must stay flat. `--retention-secs
//! 2592000` (the server's default, 30 days) measures the other case: nothing is purged, history
//! only grows on disk, and memory must stay flat all the same.
//!
//! Run: `cargo bench --bench steady -- --minutes 30` (`--clients 8 --rooms 50
//! --retention-secs 120`, `--binary PATH` to measure another build; `--attach ADDR --pid PID`
//! to load a server started by hand, e.g. under a heap profiler, with the same key and settings).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod support;

use support::{pct, rss_mib, Conn};

const KEY: &str = "5b2c0f6a9e8d7c1b3a4f5e6d7c8b9a0f1e2d3c4b5a69788796a5b4c3d2e1f0a9";

struct Server {
    child: Option<std::process::Child>,
    pid: u32,
    addr: String,
    dir: std::path::PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A server started by hand: its address and pid (its data dir is read from /proc).
fn attach(addr: &str, pid: u32) -> Server {
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
    Server { child: None, pid, addr: addr.to_string(), dir: cwd, _tmp: None }
}

fn start(binary: &str, retention_secs: u64) -> Server {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(binary);
    // The server goes with the bench, however the bench ends (an interrupted run must not
    // leave a server loading the machine).
    // SAFETY: prctl is async-signal-safe and touches nothing of the parent's.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("GATEHOUSE_API_KEY", KEY)
        .env("GATEHOUSE_LOG", "warn")
        .env("GATEHOUSE_CACHE_MB", "8")
        .env("GATEHOUSE_EVENTS_RETENTION_SECS", retention_secs.to_string())
        .env("GATEHOUSE_HOUSEKEEPING_CRON", "0 * * * * *")
        .env("GATEHOUSE_JOIN_RATE", "1000000000")
        .env("GATEHOUSE_JOIN_BURST", "1000000000")
        .env("GATEHOUSE_MAX_CONNECTIONS_PER_ADDRESS", "1000000")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    for line in out.lines() {
        let line = line.unwrap();
        if let Some(a) = line.strip_prefix("gatehouse listening on http://") {
            let (pid, path) = (child.id(), dir.path().to_path_buf());
            return Server { child: Some(child), pid, addr: a.to_string(), dir: path, _tmp: Some(dir) };
        }
    }
    panic!("server did not start");
}

/// The server's heap in use (MiB), from `/metrics` (`gatehouse_heap_allocated_bytes`, jemalloc
/// builds): told apart from RSS, it says whether memory grows with what is kept or with what
/// the allocator holds on to. NaN when the build does not report it.
async fn heap_mib(addr: &str) -> f64 {
    let (_, body) = Conn::open(addr).await.call("GET", "/metrics", KEY, None).await;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("gatehouse_heap_allocated_bytes "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(f64::NAN, |b| b / (1 << 20) as f64)
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn disk_mib(path: &std::path::Path) -> f64 {
    fn walk(p: &std::path::Path) -> u64 {
        let Ok(meta) = std::fs::symlink_metadata(p) else { return 0 };
        if !meta.is_dir() {
            return meta.len();
        }
        std::fs::read_dir(p).map(|d| d.flatten().map(|e| walk(&e.path())).sum()).unwrap_or(0)
    }
    walk(path) as f64 / (1 << 20) as f64
}

/// One client: join → heartbeat → presence → leave, over and over, recording each request's
/// latency (ms) and counting lifecycles.
async fn client(
    addr: String,
    n: usize,
    rooms: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
    lat: Arc<Mutex<Vec<f64>>>,
    done: Arc<AtomicU64>,
) {
    let mut c = Conn::open(&addr).await;
    let mut i = n;
    while !stop.load(Ordering::Relaxed) {
        i += 7;
        let room = format!("steady-{}", i % rooms);
        let t = Instant::now();
        let (st, body) = c
            .call("POST", &format!("/v1/rooms/{room}/join"), KEY, Some(format!(r#"{{"user_name":"u{n}-{i}"}}"#)))
            .await;
        let mut times = vec![t.elapsed().as_secs_f64() * 1000.0];
        if st != 200 {
            eprintln!("join {st}: {}", String::from_utf8_lossy(&body));
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let (id, secret) =
            (v["session_id"].as_str().unwrap_or_default(), v["session_secret"].as_str().unwrap_or_default());
        for (method, path, auth) in [
            ("POST", format!("/v1/sessions/{id}/heartbeat"), secret),
            ("GET", format!("/v1/rooms/{room}/presence"), KEY),
            ("POST", format!("/v1/sessions/{id}/leave"), secret),
        ] {
            let t = Instant::now();
            let (st, body) = c.call(method, &path, auth, Some(String::new())).await;
            if st >= 300 {
                eprintln!("{method} {path}: {st} {}", String::from_utf8_lossy(&body));
            }
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        lat.lock().unwrap().extend(times);
        done.fetch_add(1, Ordering::Relaxed);
    }
}

async fn steady(server: Server, minutes: u64, clients: usize, rooms: usize, retention_secs: u64) {
    let pid = server.pid;
    let mut setup = Conn::open(&server.addr).await;
    for r in 0..rooms {
        let body = format!(r#"{{"name":"steady-{r}","properties":{{"max_participants":100000}}}}"#);
        assert_eq!(setup.call("POST", "/v1/rooms", KEY, Some(body)).await.0, 200);
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lat = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..clients)
        .map(|n| tokio::spawn(client(server.addr.clone(), n, rooms, stop.clone(), lat.clone(), done.clone())))
        .collect();
    println!(
        "steady churn: {clients} clients, {rooms} rooms, {minutes} min, retention {retention_secs} s, sled cache 8 MiB"
    );
    // RSS is sampled every second and each minute reports the mean of its samples (and the
    // peak): one sample a minute would land on the housekeeping run's transient or miss it.
    println!(
        "{:>4} {:>12} {:>9} {:>9} {:>9} {:>6} {:>9} {:>8} {:>8}",
        "min", "lifecycles", "RSS MiB", "RSS max", "heap MiB", "fds", "disk MiB", "p50 ms", "p99 ms"
    );
    let started = Instant::now();
    let mut rss = Vec::new();
    let mut heap = Vec::new();
    let mut disk = Vec::new();
    let mut p99s = Vec::new();
    let mut last_done = 0;
    for m in 1..=minutes {
        let mut samples = Vec::new();
        for s in 1..=60 {
            tokio::time::sleep_until((started + Duration::from_secs(60 * (m - 1) + s)).into()).await;
            samples.push(rss_mib(pid));
        }
        let mut l = std::mem::take(&mut *lat.lock().unwrap());
        let total = done.load(Ordering::Relaxed);
        let r = samples.iter().sum::<f64>() / samples.len() as f64;
        let rmax = samples.iter().copied().fold(f64::MIN, f64::max);
        let d = disk_mib(&server.dir);
        let (p50, p99) = (pct(&mut l, 0.5), pct(&mut l, 0.99));
        let h = heap_mib(&server.addr).await;
        heap.push(h);
        println!(
            "{m:>4} {:>12} {r:>9.1} {rmax:>9.1} {h:>9.1} {:>6} {d:>9.1} {p50:>8.2} {p99:>8.2}",
            total - last_done,
            open_files(pid)
        );
        last_done = total;
        rss.push(r);
        disk.push(d);
        p99s.push(p99);
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    if rss.len() < 5 {
        println!("RSS growth is measured from minute 5: run at least 5 minutes (30 for the target)");
        return;
    }
    let from = rss.get(4).copied().unwrap_or(f64::NAN);
    let to = rss.last().copied().unwrap_or(f64::NAN);
    let peak = rss.iter().skip(4).copied().fold(f64::MIN, f64::max);
    // Minute means swing with the housekeeping runs they catch: five-minute windows compare
    // levels rather than phases.
    let window = |w: &[f64]| if w.is_empty() { f64::NAN } else { w.iter().sum::<f64>() / w.len() as f64 };
    let early = window(rss.get(4..rss.len().min(9)).unwrap_or(&[]));
    let late = window(&rss[rss.len().saturating_sub(5).max(4).min(rss.len())..]);
    println!(
        "RSS (each minute's mean) minute 5 → {minutes}: {from:.1} → {to:.1} MiB (growth {:+.1} MiB, highest minute {peak:.1}); minutes 5–9 → last 5: {early:.1} → {late:.1} MiB ({:+.1} MiB; target ≤ +10 MiB)",
        to - from,
        late - early
    );
    let (h5, hend) = (heap.get(4).copied().unwrap_or(f64::NAN), heap.last().copied().unwrap_or(f64::NAN));
    println!("heap in use (jemalloc's count) minute 5 → {minutes}: {h5:.1} → {hend:.1} MiB ({:+.1} MiB)", hend - h5);
    let dmax = disk.iter().copied().fold(f64::MIN, f64::max);
    println!(
        "disk: {:.1} MiB at the end, {dmax:.1} MiB at most; p99 first/last minute {:.2}/{:.2} ms; {} lifecycles",
        disk.last().copied().unwrap_or(0.0),
        p99s.first().copied().unwrap_or(f64::NAN),
        p99s.last().copied().unwrap_or(f64::NAN),
        done.load(Ordering::Relaxed)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let binary = arg("--binary").unwrap_or_else(|| env!("CARGO_BIN_EXE_gatehouse").to_string());
    let num = |name: &str, default: u64| arg(name).and_then(|v| v.parse().ok()).unwrap_or(default);
    let retention = num("--retention-secs", 120);
    let server = match (arg("--attach"), arg("--pid").and_then(|p| p.parse().ok())) {
        (Some(addr), Some(pid)) => attach(&addr, pid),
        _ => start(&binary, retention),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(steady(
        server,
        num("--minutes", 30),
        num("--clients", 8) as usize,
        num("--rooms", 50) as usize,
        retention,
    ));
}
