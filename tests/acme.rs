//! HTTPS by itself (`--acme-domain`) against a real ACME CA: Debian's `pebble`, started here on
//! loopback with `pebble-challtestsrv` answering its DNS (every name is 127.0.0.1), so the CA
//! really validates tls-alpn-01 by connecting to the server's port. The first certificate is
//! obtained and served to a client that trusts only pebble's root; a renewal (SIGHUP) is
//! swapped in while a session stream stays open; a restart serves the stored certificate
//! without asking the CA, even with the CA down; a CA that is down with nothing stored leaves
//! the server running and saying why it cannot serve HTTPS yet.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Server, KEY};
use rustls_pki_types::pem::PemObject;
use serde_json::{json, Value};

const DOMAIN: &str = "gatehouse.test";

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn have(cmd: &str) -> bool {
    Command::new("sh").arg("-c").arg(format!("command -v {cmd}")).status().is_ok_and(|s| s.success())
}

/// pebble (validating on `tls_port`) and its DNS; the directory URL.
struct Ca {
    dir: PathBuf,
    directory: String,
    management: u16,
    dns: u16,
    tls_port: u16,
    pebble: Option<Proc>,
    _dns: Proc,
}

impl Ca {
    fn start(dir: &Path, tls_port: u16) -> Ca {
        std::fs::create_dir_all(dir).unwrap();
        // pebble's own HTTPS API: a certificate for 127.0.0.1 from a CA of our own.
        common::test_ca(dir, &[("server", "subjectAltName=DNS:localhost,IP:127.0.0.1")]);
        let dns = common::free_port();
        let chall = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", "", "-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns}"), "-management", &format!("127.0.0.1:{}", common::free_port())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut ca = Ca {
            dir: dir.to_path_buf(),
            directory: String::new(),
            management: common::free_port(),
            dns,
            tls_port,
            pebble: None,
            _dns: Proc(chall),
        };
        ca.run_pebble();
        ca
    }

    fn run_pebble(&mut self) {
        let listen = common::free_port();
        let config = json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{listen}"),
            "managementListenAddress": format!("127.0.0.1:{}", self.management),
            "certificate": self.dir.join("server.pem"), "privateKey": self.dir.join("server.key"),
            "httpPort": common::free_port(), "tlsPort": self.tls_port, "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        std::fs::write(self.dir.join("pebble.json"), config.to_string()).unwrap();
        let log = std::fs::File::create(self.dir.join("pebble.log")).unwrap();
        let child = Command::new("pebble")
            .arg("-config")
            .arg(self.dir.join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{}", self.dns)])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.pebble = Some(Proc(child));
        self.directory = format!("https://127.0.0.1:{listen}/dir");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", listen)).is_err() {
            assert!(Instant::now() < deadline, "pebble did not start: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        self.pebble = None;
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default()
    }

    /// Certificates pebble issued so far.
    fn issued(&self) -> usize {
        self.log().matches("Issued certificate").count()
    }

    /// The root pebble issues under (it makes a new one each run).
    async fn root(&self) -> String {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(self.dir.join("ca.pem")).unwrap()).unwrap();
        let client = reqwest::Client::builder().tls_certs_only([ca]).no_proxy().build().unwrap();
        let url = format!("https://127.0.0.1:{}/roots/0", self.management);
        client.get(url).send().await.unwrap().text().await.unwrap()
    }
}

fn gatehouse(data: &Path, port: u16, ca: &Ca) -> Server {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    cmd.arg("serve")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(data)
        .args(["--acme-domain", DOMAIN, "--acme-email", "ops@example.com", "--acme-directory", &ca.directory])
        .arg("--acme-ca-root")
        .arg(ca.dir.join("ca.pem"))
        .env("GATEHOUSE_API_KEY", KEY)
        .env("GATEHOUSE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Server::spawn(cmd, data, KEY)
}

/// A client that trusts only `root` and finds the domain on 127.0.0.1:`port`.
fn client(root: &str, port: u16) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(root.as_bytes()).unwrap()])
        .resolve(DOMAIN, SocketAddr::from(([127, 0, 0, 1], port)))
        .no_proxy()
        .build()
        .unwrap()
}

/// The serial of the certificate served for the domain, verified against `root` only.
async fn served_serial(root: &str, port: u16) -> Option<String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(root.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let name = rustls_pki_types::ServerName::try_from(DOMAIN).unwrap();
    let tls = connector.connect(name, tcp).await.ok()?;
    let der = tls.get_ref().1.peer_certificates()?.first()?.clone();
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some(cert.raw_serial_as_string())
}

async fn wait_serial(root: &str, port: u16, other_than: Option<&str>, s: &Server) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(serial) = served_serial(root, port).await {
            if Some(serial.as_str()) != other_than {
                return serial;
            }
        }
        assert!(Instant::now() < deadline, "no (new) certificate served within 60 s; log:\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn post(c: &reqwest::Client, port: u16, path: &str, body: Value) -> Value {
    let r = c
        .post(format!("https://{DOMAIN}:{port}{path}"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn needs_pebble_a_certificate_is_obtained_renewed_under_an_open_stream_and_reused() {
    common::require(
        have("pebble") && have("pebble-challtestsrv"),
        "pebble and pebble-challtestsrv (Debian package pebble)",
    );
    common::require(have("openssl"), "openssl");
    let tmp = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let mut ca = tokio::task::block_in_place(|| Ca::start(&tmp.path().join("ca"), port));
    let data = tmp.path().join("data");
    let mut s = tokio::task::block_in_place(|| gatehouse(&data, port, &ca));
    assert!(s.base.starts_with("https://"), "{}", s.base);
    let root = ca.root().await;

    // The first certificate: served, and verified by a client that trusts only pebble's root.
    let first = wait_serial(&root, port, None, &s).await;
    assert_eq!(ca.issued(), 1);
    let c = client(&root, port);
    let health = c.get(format!("https://{DOMAIN}:{port}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(ca.log().contains("validations"), "pebble validated the domain itself");

    // /metrics says how long it has left (pebble's certificates last five years).
    let metrics = c.get(format!("https://{DOMAIN}:{port}/metrics")).bearer_auth(KEY).send().await.unwrap();
    let text = metrics.text().await.unwrap();
    let days: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("gatehouse_tls_certificate_days_left "))
        .unwrap_or_else(|| panic!("no days_left gauge:\n{text}"))
        .parse()
        .unwrap();
    assert!(days > 300.0, "{days}");

    // A session stream stays open across a renewal (SIGHUP forces one).
    post(&c, port, "/v1/rooms", json!({"name": "tls-room"})).await;
    let me = post(&c, port, "/v1/rooms/tls-room/join", json!({"user_name": "Ann"})).await;
    let (id, secret) = (me["session_id"].as_str().unwrap(), me["session_secret"].as_str().unwrap());
    let mut stream =
        c.get(format!("https://{DOMAIN}:{port}/v1/sessions/{id}/stream")).bearer_auth(secret).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let _snapshot = tokio::time::timeout(Duration::from_secs(10), stream.chunk()).await.unwrap().unwrap();
    let hup = Command::new("kill").args(["-HUP", &s.pid().to_string()]).status().unwrap();
    assert!(hup.success());
    let second = wait_serial(&root, port, Some(&first), &s).await;
    assert_eq!(ca.issued(), 2);
    // The open stream still carries on: Bob's joining reaches it.
    post(&c, port, "/v1/rooms/tls-room/join", json!({"user_name": "Bob"})).await;
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.contains("Bob") {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.chunk()).await {
            Ok(Ok(Some(b))) => seen.push_str(&String::from_utf8_lossy(&b)),
            other => panic!("the stream opened before the renewal ended ({other:?}); it read:\n{seen}"),
        }
    }

    // A restart serves the stored certificate without asking the CA, even with the CA down.
    tokio::task::block_in_place(|| s.terminate());
    ca.stop();
    let s = tokio::task::block_in_place(|| gatehouse(&data, port, &ca));
    assert_eq!(served_serial(&root, port).await.as_deref(), Some(second.as_str()), "the stored certificate, at once");
    assert_eq!(ca.issued(), 2);
    let report = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["config", "check", "--data-dir"])
        .arg(&data)
        .args(["--acme-domain", DOMAIN, "--acme-directory", &ca.directory])
        .env("GATEHOUSE_API_KEY", KEY)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&report.stdout);
    assert!(out.contains("acme: certificate") && out.contains("days left"), "config check: {out}");
    drop(s);

    // Nothing stored and the CA down: the server runs and says why HTTPS is not served yet.
    let fresh = tmp.path().join("fresh");
    let s = tokio::task::block_in_place(|| gatehouse(&fresh, common::free_port(), &ca));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !s.log().contains("cannot reach the ACME directory") {
        assert!(Instant::now() < deadline, "the log does not say the CA is unreachable:\n{}", s.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(s.log().contains("no certificate yet"), "{}", s.log());
    assert!(!s.log().contains(KEY), "the API key is never logged");
}
