//! Black-box test harness: starts the real `gatehouse` binary on 127.0.0.1:0 with a temp data
//! dir, and talks HTTP to it.
#![allow(dead_code)]

pub mod janus_config;
mod ports;
pub mod receiver;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// True once the server has closed the connection (EOF or reset), reading whatever it sent.
pub fn closed_within(c: &mut std::net::TcpStream, limit: Duration) -> bool {
    c.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    false
}

/// Frames of a session stream, as (event, data), read on a thread.
pub type Frames = mpsc::Receiver<(String, Value)>;

/// The next frame that is not in `skip`, within 5 s.
pub fn next_frame(rx: &Frames, skip: &[&str]) -> (String, Value) {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let f = rx.recv_timeout(left).expect("no frame within 5 s");
        if !skip.contains(&f.0.as_str()) {
            return f;
        }
    }
}

/// The Python interpreter of the test virtual environment (`./run-tests` makes it under
/// `target/test-venv` and exports `GATEHOUSE_TEST_PYTHON`), else `python3`.
pub fn python() -> String {
    if let Ok(p) = std::env::var("GATEHOUSE_TEST_PYTHON") {
        return p;
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/python");
    if venv.exists() {
        return venv.to_string_lossy().to_string();
    }
    "python3".into()
}

/// Fails the test (never skips it) when a tool it needs is missing, saying what to install.
/// Tests that call this are named `needs_*`, so `./run-tests --fast` can leave them out by name.
pub fn require(available: bool, what: &str) {
    assert!(
        available,
        "this test needs {what}, which is missing here. `./run-tests` installs it and runs every test; \
         `./run-tests --fast` leaves out the needs_* tests and says so."
    );
}

/// Whether the test Python can import `module`.
pub fn python_has(module: &str) -> bool {
    Command::new(python())
        .args(["-c", &format!("import {module}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A strong, fixed key for tests (64 hex chars).
pub const KEY: &str = "5b2c0f6a9e8d7c1b3a4f5e6d7c8b9a0f1e2d3c4b5a69788796a5b4c3d2e1f0a9";

pub struct Server {
    child: Option<Child>,
    pub base: String,
    pub key: String,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub text: String,
    pub headers: Vec<(String, String)>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

impl Server {
    /// A fresh server with a temp data dir and the test key.
    pub fn start() -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let mut s = Server::start_in(&dir, &[]);
        s._tmp = Some(tmp);
        s
    }

    /// A fresh server with a temp data dir and extra environment variables.
    pub fn start_with(env: &[(&str, &str)]) -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let mut s = Server::start_in(&dir, env);
        s._tmp = Some(tmp);
        s
    }

    /// Joins `room` with an optional token; returns the reply.
    pub fn join(&self, room: &str, token: Option<&str>, user_name: Option<&str>) -> Reply {
        let mut body = serde_json::Map::new();
        if let Some(t) = token {
            body.insert("token".into(), t.into());
        }
        if let Some(n) = user_name {
            body.insert("user_name".into(), n.into());
        }
        self.call("POST", &format!("/v1/rooms/{room}/join"), None, Some(&Value::Object(body).to_string()))
    }

    /// Joins and asserts success; returns (session id, secret, reply body).
    pub fn join_ok(&self, room: &str, token: Option<&str>) -> (String, String, Value) {
        let r = self.join(room, token, Some("someone"));
        assert_eq!(r.status, 200, "join {room}: {}", r.text);
        (
            r.body["session_id"].as_str().unwrap().to_string(),
            r.body["session_secret"].as_str().unwrap().to_string(),
            r.body,
        )
    }

    /// Events of the given type, oldest first.
    pub fn events_of(&self, kind: &str) -> Vec<Value> {
        self.events().into_iter().filter(|e| e["type"] == kind).collect()
    }

    /// Waits (bounded) until an event of `kind` matching `pred` is in the log; for work the
    /// deadline task does asynchronously after the clock moved.
    pub fn wait_event(&self, kind: &str, pred: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..400 {
            if let Some(e) = self.events_of(kind).into_iter().find(|e| pred(e)) {
                return e;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("no {kind} event matching after 10 s; log:\n{}", serde_json::to_string_pretty(&self.events()).unwrap());
    }

    /// A server on `dir` (kept), with extra environment variables (`GATEHOUSE_LISTEN` among
    /// them names its address; a free port on loopback otherwise).
    pub fn start_in(dir: &Path, env: &[(&str, &str)]) -> Server {
        let listen = env.iter().find(|(k, _)| *k == "GATEHOUSE_LISTEN").map_or("127.0.0.1:0", |(_, v)| *v);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
        cmd.arg("serve")
            .arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(dir)
            .env("GATEHOUSE_API_KEY", KEY)
            .env("GATEHOUSE_LOG", "info")
            .env("GATEHOUSE_JOIN_RATE", "100000")
            .env("GATEHOUSE_JOIN_BURST", "100000")
            .env("GATEHOUSE_MAX_CONNECTIONS_PER_ADDRESS", "100000")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Server::spawn(cmd, dir, KEY)
    }

    pub fn spawn(mut cmd: Command, dir: &Path, key: &str) -> Server {
        let mut child = cmd.spawn().expect("start gatehouse");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut line = String::new();
            while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                log2.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            while r.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                if let Some(url) = line.trim().strip_prefix("gatehouse listening on ") {
                    let _ = tx.send(url.to_string());
                }
                line.clear();
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(b) => b,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start; stderr:\n{}", log.lock().unwrap());
            }
        };
        Server { child: Some(child), base, key: key.to_string(), dir: dir.to_path_buf(), _tmp: None, stderr: log }
    }

    /// Reads session `id`'s stream (`GET /v1/sessions/:id/stream` with its secret) on a thread.
    pub fn session_stream(&self, id: &str, secret: &str) -> Frames {
        let url = self.url(&format!("/v1/sessions/{id}/stream"));
        let secret = secret.to_string();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let resp = ureq::get(&url).set("Authorization", &format!("Bearer {secret}")).call().unwrap();
            let mut kind = String::new();
            for line in BufReader::new(resp.into_reader()).lines() {
                let Ok(line) = line else { break };
                if let Some(k) = line.strip_prefix("event: ") {
                    kind = k.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    let v: Value =
                        serde_json::from_str(d).unwrap_or_else(|e| panic!("frame {kind} is not JSON ({e}): {d}"));
                    if tx.send((kind.clone(), v)).is_err() {
                        break;
                    }
                }
            }
        });
        rx
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Everything the server wrote to stderr so far (its log).
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends `sig` (`"STOP"`, `"CONT"`…) to the server.
    pub fn signal(&self, sig: &str) {
        unsafe_kill(self.pid(), sig);
    }

    /// SIGKILL, then wait for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        unsafe_kill(c.id(), "TERM");
        c.wait().unwrap()
    }

    /// SIGTERM, then wait at most `limit` for the exit; `None` (after a SIGKILL) if it hung.
    pub fn terminate_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let mut c = self.child.take().expect("running");
        unsafe_kill(c.id(), "TERM");
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// A connection from a chosen loopback source address (all of 127.0.0.0/8 is local).
    pub fn connect_from(&self, source: [u8; 4]) -> std::net::TcpStream {
        let to: std::net::SocketAddr = self.base.trim_start_matches("http://").parse().unwrap();
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&std::net::SocketAddr::from((source, 0)).into()).unwrap();
        s.connect(&to.into()).unwrap();
        s.into()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn call(&self, method: &str, path: &str, auth: Option<&str>, body: Option<&str>) -> Reply {
        call_url(method, &self.url(path), auth, body, &[])
    }

    pub fn get(&self, path: &str) -> Reply {
        self.call("GET", path, Some(&self.key), None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Reply {
        self.call("POST", path, Some(&self.key), Some(&body.to_string()))
    }

    pub fn delete(&self, path: &str) -> Reply {
        self.call("DELETE", path, Some(&self.key), None)
    }

    /// `POST /v1/rooms/:room/eject` with `bearer` (an API key or a meeting token).
    pub fn eject_as(&self, room: &str, bearer: &str, body: Value) -> Reply {
        self.call("POST", &format!("/v1/rooms/{room}/eject"), Some(bearer), Some(&body.to_string()))
    }

    /// Moves the server's clock forward (needs a `test-clock` build).
    pub fn advance(&self, secs: f64) {
        let r = self.post("/v1/_test/clock", &serde_json::json!({"advance_secs": secs}));
        assert_eq!(
            r.status, 200,
            "the clock control endpoint is missing: run the tests with `cargo test --features test-clock`"
        );
    }

    pub fn now_secs(&self) -> i64 {
        let r = self.post("/v1/_test/clock", &serde_json::json!({"advance_secs": 0}));
        assert_eq!(
            r.status, 200,
            "the clock control endpoint is missing: run the tests with `cargo test --features test-clock`"
        );
        r.body["now_ms"].as_i64().unwrap() / 1000
    }

    pub fn create_room(&self, body: Value) -> Value {
        let r = self.post("/v1/rooms", &body);
        assert_eq!(r.status, 200, "create room: {}", r.text);
        r.body
    }

    pub fn token(&self, props: Value) -> String {
        let r = self.post("/v1/meeting-tokens", &serde_json::json!({"properties": props}));
        assert_eq!(r.status, 200, "create token: {}", r.text);
        r.body["token"].as_str().unwrap().to_string()
    }

    /// All durable events, oldest first.
    pub fn events(&self) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let r = self.get(&format!("/v1/events?after={after}&limit=1000"));
            assert_eq!(r.status, 200, "{}", r.text);
            out.extend(r.body["data"].as_array().unwrap().iter().cloned());
            after = r.body["next_after"].as_u64().unwrap();
            if !r.body["has_more"].as_bool().unwrap() {
                return out;
            }
        }
    }
}

#[allow(unused_imports)] // not every test (or bench) binary starts processes
pub use ports::free_port;

/// A memory figure of a process from `/proc/<pid>/status` (`VmRSS`: now; `VmHWM`: its peak),
/// in MiB; 0 when it cannot be read.
pub fn memory_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field).and_then(|r| r.strip_prefix(':')))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn unsafe_kill(pid: u32, sig: &str) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

pub fn call_url(method: &str, url: &str, auth: Option<&str>, body: Option<&str>, headers: &[(&str, &str)]) -> Reply {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build();
    let mut req = agent.request(method, url);
    if let Some(a) = auth {
        req = req.set("Authorization", &format!("Bearer {a}"));
    }
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let res = match body {
        Some(b) => req.set("Content-Type", "application/json").send_string(b),
        None => req.call(),
    };
    let resp = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = resp.status();
    let headers = resp.headers_names().iter().map(|n| (n.clone(), resp.header(n).unwrap_or("").to_string())).collect();
    let mut text = String::new();
    resp.into_reader().take(50_000_000).read_to_string(&mut text).unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply { status, body, text, headers }
}

/// Sends raw bytes on a fresh TCP connection and returns the raw response (for requests a
/// normal client refuses to build: invalid UTF-8 paths, lying Content-Length...).
pub fn raw(base: &str, request: &[u8]) -> String {
    use std::io::Write;
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.windows(4).any(|w| w == b"\r\n\r\n") && response_complete(&out) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).to_string()
}

fn response_complete(out: &[u8]) -> bool {
    let text = String::from_utf8_lossy(out);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let len = head.lines().find_map(|l| {
        l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0))
    });
    len.is_some_and(|n| body.len() >= n)
}

fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl").current_dir(dir).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "openssl {args:?}: {text}");
}

/// A test CA (`ca.pem`, `ca.key`) in `dir`, and for each `(name, extension)` a certificate it
/// signed, `<name>.pem` with its key `<name>.key` (the extension line, e.g.
/// `subjectAltName=IP:127.0.0.1`, goes into it). Made with openssl, valid two days.
pub fn test_ca(dir: &Path, leaves: &[(&str, &str)]) {
    let rsa = ["-newkey", "rsa:2048", "-nodes"];
    openssl(
        dir,
        &[&["req", "-x509"][..], &rsa, &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test-ca"]]
            .concat(),
    );
    for (name, ext) in leaves {
        let (key, csr, pem, extfile) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
        openssl(dir, &[&["req"][..], &rsa, &["-keyout", &key, "-out", &csr, "-subj", &format!("/CN={name}")]].concat());
        std::fs::write(dir.join(&extfile), format!("{ext}\n")).unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &extfile,
            ],
        );
    }
}
