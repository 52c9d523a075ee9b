//! Cluster mode on etcd: `config check --store etcd` against real etcd clusters (plain, with
//! user/password auth, with TLS client certificates; a member down; quorum lost); the fenced
//! leader election (one leader; a member of three dies and nothing changes; the leader dies as
//! with kill -9 and another node takes over within the lease TTL plus a third; the deposed
//! leader's fenced write is refused); nodes that lose nothing through failovers; followers that
//! answer reads from their replicas (their own writes at once, through a frozen leader, and not
//! past their staleness bound when cut off from etcd). Real etcd processes on loopback, temp data dirs;
//! `./run-tests` installs etcd (Debian `etcd-server`, `etcd-client`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse::cluster::etcd::{Etcd, Op};
use gatehouse::cluster::leader::{Leadership, Role};
use gatehouse::cluster::EtcdSettings;

/// Whether `tool` is an executable on the PATH.
fn have(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

struct Member {
    client: String,
    child: Option<Child>,
    /// How it was started, to start it again on the same data dir.
    args: Vec<std::ffi::OsString>,
}

/// Real etcd members on loopback, killed (SIGKILL) when dropped.
struct EtcdCluster {
    members: Vec<Member>,
    dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// `n` members; `tls`: (server cert, key, CA) to require client certificates on https.
    fn start(n: usize, tls: Option<(&Path, &Path, &Path)>) -> EtcdCluster {
        common::require(have("etcd") && have("etcdctl"), "etcd and etcdctl (Debian packages etcd-server, etcd-client)");
        let dir = tempfile::tempdir().unwrap();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (common::free_port(), common::free_port())).collect();
        let initial: Vec<String> =
            ports.iter().enumerate().map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}")).collect();
        let token = format!("gh-test-{}", std::process::id());
        let mut members = Vec::new();
        for (i, (c, p)) in ports.iter().enumerate() {
            let client = format!("{scheme}://127.0.0.1:{c}");
            let mut cmd = Command::new("etcd");
            cmd.args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(dir.path().join(format!("m{i}")))
                .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{p}")])
                .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{p}")])
                .args(["--initial-cluster", &initial.join(","), "--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", &token]);
            if let Some((cert, key, ca)) = tls {
                cmd.arg("--cert-file").arg(cert).arg("--key-file").arg(key).arg("--trusted-ca-file").arg(ca);
                cmd.arg("--client-cert-auth");
            }
            let args: Vec<std::ffi::OsString> = cmd.get_args().map(|a| a.to_os_string()).collect();
            members.push(Member { client, child: None, args });
        }
        let mut c = EtcdCluster { members, dir };
        for i in 0..n {
            c.spawn(i);
        }
        c.wait_healthy(tls);
        c
    }

    fn spawn(&mut self, i: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("m{i}.log")))
            .unwrap();
        let child = Command::new("etcd")
            .args(&self.members[i].args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.members[i].child = Some(child);
    }

    /// Starts a killed member again on its data dir (it rejoins the cluster).
    fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_healthy(None);
    }

    fn wait_healthy(&self, tls: Option<(&Path, &Path, &Path)>) {
        let started = Instant::now();
        loop {
            let mut cmd = Command::new("etcdctl");
            cmd.env("ETCDCTL_API", "3").args(["--endpoints", &self.endpoints().join(","), "endpoint", "health"]);
            if let Some((cert, key, ca)) = tls {
                cmd.arg("--cacert").arg(ca).arg("--cert").arg(cert).arg("--key").arg(key);
            }
            if cmd.output().is_ok_and(|o| o.status.success()) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "etcd did not become healthy; see {}",
                self.dir.path().display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client.clone()).collect()
    }

    /// SIGKILL, as a VM or process dying would.
    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

fn check(args: &[&str]) -> Output {
    let tmp = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["config", "check", "--store", "etcd", "--data-dir"])
        .arg(tmp.path())
        .args(args)
        .env("GATEHOUSE_API_KEY", common::KEY)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn needs_etcd_config_check_reports_the_clusters_health() {
    let mut c = EtcdCluster::start(3, None);
    let eps = c.endpoints().join(",");
    let o = check(&["--etcd-endpoints", &eps]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("3 of 3 configured endpoints answer; 3 members"), "{t}");
    assert!(t.contains("etcd 3."), "{t}");
    assert!(t.contains("; leader m"), "{t}");
    assert!(t.contains("0 keys under '/gatehouse/'"), "{t}");
    // One endpoint of three: works, with a warning that it hangs on one member.
    let o = check(&["--etcd-endpoints", &c.members[2].client]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("warning: 1 of 3 members answer"), "{t}");

    // One member of three dies: healthy again once the other two have a raft leader (at
    // once, or after an election if the dead one led), and the report names the silent one.
    c.kill(0);
    let started = Instant::now();
    let (o, t) = loop {
        let o = check(&["--etcd-endpoints", &eps]);
        let t = text(&o);
        if o.status.success() || started.elapsed() > Duration::from_secs(15) {
            break (o, t);
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(o.status.success(), "{t}");
    assert!(t.contains("2 of 3 configured endpoints answer"), "{t}");
    assert!(t.contains(&format!("{}: NOT ANSWERING", c.members[0].client)), "{t}");

    // Two of three: no quorum, no leader: refused with the reason (once etcd notices).
    c.kill(1);
    let started = Instant::now();
    loop {
        let o = check(&["--etcd-endpoints", &eps]);
        let t = text(&o);
        if !o.status.success() {
            assert!(t.contains("do not agree on a leader") || t.contains("no quorum"), "{t}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "still healthy without quorum: {t}");
        std::thread::sleep(Duration::from_millis(500));
    }

    // Nothing there at all; bad settings.
    let o = check(&["--etcd-endpoints", &format!("http://127.0.0.1:{}", common::free_port())]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("no endpoint answered"), "{}", text(&o));
    for (args, says) in [
        (vec![], "needs --etcd-endpoints"),
        (vec!["--etcd-endpoints", "127.0.0.1:2379"], "not an http:// or https://"),
        (vec!["--etcd-endpoints", "https://127.0.0.1:2379"], "--etcd-ca-file"),
        (vec!["--etcd-endpoints", "http://root:pw@127.0.0.1:2379"], "credentials do not belong in a URL"),
        (vec!["--etcd-endpoints", "http://127.0.0.1:2379/?x=1"], "not an http:// or https://"),
        (vec!["--etcd-endpoints", &eps, "--etcd-user", "root"], "go together"),
        (vec!["--etcd-endpoints", &eps, "--etcd-lease-ttl-secs", "1"], "etcd-lease-ttl-secs"),
    ] {
        let o = check(&args);
        assert!(!o.status.success(), "{args:?} accepted");
        assert!(text(&o).contains(says), "{args:?}: {}", text(&o));
    }
}

#[test]
fn needs_etcd_config_check_with_a_password_never_shows_it() {
    let c = EtcdCluster::start(1, None);
    let ep = &c.members[0].client;
    let ctl = |args: &[&str]| {
        let o = Command::new("etcdctl").env("ETCDCTL_API", "3").args(["--endpoints", ep]).args(args).output().unwrap();
        assert!(o.status.success(), "etcdctl {args:?}: {}", text(&o));
    };
    ctl(&["user", "add", "root:Correct-Horse-9", "--interactive=false"]);
    ctl(&["auth", "enable"]);
    let o = check(&["--etcd-endpoints", ep, "--etcd-user", "root", "--etcd-password", "Correct-Horse-9"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("1 of 1 configured endpoints answer"), "{t}");
    assert!(t.contains("password (hidden)") && !t.contains("Correct-Horse-9"), "{t}");
    let o = check(&["--etcd-endpoints", ep, "--etcd-user", "root", "--etcd-password", "Wrong-Horse-7"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("refused the credentials of user 'root'"), "{t}");
    assert!(!t.contains("Wrong-Horse-7"), "the password was echoed: {t}");
    // Without credentials, etcd refuses: said, not a crash.
    let o = check(&["--etcd-endpoints", ep]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, in `dir`.
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf, PathBuf) {
    common::test_ca(dir, &[("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")]);
    (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"), dir.join("client.pem"), dir.join("client.key"))
}

#[test]
fn needs_etcd_config_check_over_tls_with_a_client_certificate() {
    common::require(have("openssl"), "openssl");
    let certs = tempfile::tempdir().unwrap();
    let (ca, server, server_key, client, client_key) = certificates(certs.path());
    let c = EtcdCluster::start(1, Some((&server, &server_key, &ca)));
    let ep = &c.members[0].client;
    let s = |p: &PathBuf| p.to_string_lossy().to_string();
    let o = check(&[
        "--etcd-endpoints",
        ep,
        "--etcd-ca-file",
        &s(&ca),
        "--etcd-cert-file",
        &s(&client),
        "--etcd-key-file",
        &s(&client_key),
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("1 of 1 configured endpoints answer"), "{t}");
    // Without the client certificate the member refuses the handshake.
    let o = check(&["--etcd-endpoints", ep, "--etcd-ca-file", &s(&ca)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("NOT ANSWERING"), "{}", text(&o));
    // A CA that did not sign the server's certificate: refused too.
    let other = tempfile::tempdir().unwrap();
    let (other_ca, ..) = certificates(other.path());
    let o = check(&[
        "--etcd-endpoints",
        ep,
        "--etcd-ca-file",
        &s(&other_ca),
        "--etcd-cert-file",
        &s(&client),
        "--etcd-key-file",
        &s(&client_key),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    // Unreadable files are named.
    let o = check(&["--etcd-endpoints", ep, "--etcd-ca-file", "/nonexistent/ca.pem"]);
    assert!(text(&o).contains("/nonexistent/ca.pem"), "{}", text(&o));
}

fn settings(endpoints: Vec<String>, prefix: &str) -> EtcdSettings {
    EtcdSettings {
        endpoints,
        prefix: prefix.into(),
        user: None,
        password: None,
        ca_file: None,
        client_cert: None,
        lease_ttl_secs: 4,
        request_timeout: Duration::from_secs(2),
        advertise_url: None,
        snapshot_every: 10_000,
        read_staleness: Duration::from_secs(1),
    }
}

async fn until(what: &str, limit: Duration, f: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

#[test]
fn needs_etcd_one_fenced_leader_survives_a_member_and_is_replaced_when_it_dies() {
    let mut c = EtcdCluster::start(3, None);
    let eps = c.endpoints();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let prefix = "/gh-test/";
        let a_etcd = Arc::new(Etcd::new(&settings(eps.clone(), prefix)).unwrap());
        let mut rotated = eps.clone();
        rotated.rotate_left(1);
        let b_etcd = Arc::new(Etcd::new(&settings(rotated, prefix)).unwrap());
        // etcd's own leader election (when the member that dies leads the raft group) takes
        // about its election timeout (1 s): a TTL of 4 s leaves room for it.
        let ttl = 4;
        let a = Leadership::start(a_etcd.clone(), "node-a".into(), ttl);
        until("a leads", Duration::from_secs(10), || matches!(a.role(), Role::Leader { .. })).await;
        let b = Leadership::start(b_etcd.clone(), "node-b".into(), ttl);
        until("b follows a", Duration::from_secs(10), || b.role() == Role::Follower { leader: Some("node-a".into()) })
            .await;
        assert_eq!(b.fence(), None);

        let key = a_etcd.key("fenced");
        let put = |v: &str| [Op::Put { key: key.clone(), value: v.as_bytes().to_vec(), lease: 0 }];
        let fence_a = a.fence().expect("a leads");
        assert!(a.fenced(&fence_a, &put("from a")).await.unwrap());

        // The member a talks to dies (kill -9): a goes on leading through the others, for
        // longer than its lease, and its fenced writes still commit.
        c.kill(0);
        tokio::time::sleep(Duration::from_secs(ttl * 2)).await;
        assert_eq!(a.fence(), Some(fence_a.clone()), "a lost the lead over one member of three");
        assert!(matches!(b.role(), Role::Follower { .. }));
        assert!(a.fenced(&fence_a, &put("from a, member down")).await.unwrap());

        // a dies without a word (its lease runs out by itself): b takes over within the TTL
        // plus a third and the time of a campaign.
        let died = Instant::now();
        a.abandon();
        until("b leads", Duration::from_secs(ttl + 4), || matches!(b.role(), Role::Leader { .. })).await;
        let took = died.elapsed();
        println!("failover: b leads {took:?} after a died (lease TTL {ttl} s)");
        assert!(took <= Duration::from_millis(ttl * 1000 * 4 / 3 + 1500), "failover took {took:?}");

        // a wakes up late and writes with its old fence: refused, nothing written.
        let stale = a_etcd.txn(&[fence_a.clone()], &put("from a, deposed"), &[]).await.unwrap();
        assert!(!stale.succeeded, "a deposed leader wrote");
        assert_eq!(a_etcd.get(&key).await.unwrap().unwrap().value, b"from a, member down");
        let fence_b = b.fence().expect("b leads");
        assert_ne!(fence_b, fence_a);
        assert!(b.fenced(&fence_b, &put("from b")).await.unwrap());

        // A resignation hands over at once: the next node campaigns on an empty key.
        let c_etcd = Arc::new(Etcd::new(&settings(eps[1..].to_vec(), prefix)).unwrap());
        let next = Leadership::start(c_etcd, "node-c".into(), ttl);
        until("c follows b", Duration::from_secs(5), || {
            next.role() == Role::Follower { leader: Some("node-b".into()) }
        })
        .await;
        b.resign().await;
        until("c leads", Duration::from_secs(3), || matches!(next.role(), Role::Leader { .. })).await;
        assert!(!b_etcd.txn(&[fence_b], &put("from b, resigned"), &[]).await.unwrap().succeeded);
    });
}

/// A Gatehouse node in cluster mode on `port` (fixed: a follower and the leader it becomes
/// listen on the same address).
fn node(c: &EtcdCluster, dir: &Path, port: u16) -> common::Server {
    node_with(c, dir, port, &[])
}

fn node_with(c: &EtcdCluster, dir: &Path, port: u16, env: &[(&str, &str)]) -> common::Server {
    node_on(&c.endpoints(), dir, port, env)
}

/// [`node_with`], reaching etcd at `endpoints`.
fn node_on(endpoints: &[String], dir: &Path, port: u16, env: &[(&str, &str)]) -> common::Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    cmd.envs(env.iter().copied());
    cmd.args(["serve", "--store", "etcd", "--etcd-endpoints", &endpoints.join(",")])
        .args(["--etcd-prefix", "/gh-nodes/", "--etcd-lease-ttl-secs", "4"])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir)
        .env("GATEHOUSE_API_KEY", common::KEY)
        .env("GATEHOUSE_LOG", "info")
        .env("GATEHOUSE_TRUSTED_PROXIES", "127.0.0.1")
        // Snapshots often, so that takeovers start from one and the history is trimmed.
        .env("GATEHOUSE_ETCD_SNAPSHOT_EVERY", "4")
        .env("GATEHOUSE_JOIN_RATE", "100000")
        .env("GATEHOUSE_JOIN_BURST", "100000")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    common::Server::spawn(cmd, dir, common::KEY)
}

/// Retries a write while the cluster elects (503) until it is acknowledged.
fn acked(s: &common::Server, path: &str, body: serde_json::Value, within: Duration) -> (common::Reply, Duration) {
    let started = Instant::now();
    loop {
        let r = s.post(path, &body);
        if r.status == 200 {
            return (r, started.elapsed());
        }
        assert!(r.status == 503 || r.status == 0, "{path}: {} {}", r.status, r.text);
        assert!(started.elapsed() < within, "{path} not acknowledged within {within:?}: {} {}", r.status, r.text);
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn seqs(s: &common::Server) -> Vec<u64> {
    let r = s.get("/v1/events?limit=1000");
    assert_eq!(r.status, 200, "{}", r.text);
    r.body["data"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

#[test]
fn needs_etcd_two_nodes_lose_nothing_when_the_leader_and_an_etcd_member_die() {
    let mut c = EtcdCluster::start(3, None);
    let tmp = tempfile::tempdir().unwrap();
    let (pa, pb) = (common::free_port(), common::free_port());
    let mut a = node(&c, &tmp.path().join("a"), pa);
    // A is alone: it leads once elected.
    acked(&a, "/v1/rooms", serde_json::json!({"name": "first"}), Duration::from_secs(15));
    let b = node(&c, &tmp.path().join("b"), pb);
    let logs = LogsOnPanic(&[&a, &b]);
    // A webhook, registered through the follower: delivered by whichever node leads.
    let hook = common::receiver::Receiver::start();
    acked(&b, "/v1/webhooks", serde_json::json!({"url": hook.url}), Duration::from_secs(5));
    // Any node answers any request: B forwards to A.
    let mut rooms = vec!["first".to_string()];
    for i in 0..6 {
        let name = format!("room-{i}");
        let via = if i % 2 == 0 { &a } else { &b };
        acked(via, "/v1/rooms", serde_json::json!({"name": name}), Duration::from_secs(5));
        rooms.push(name);
    }
    let (joined, _) =
        acked(&b, "/v1/rooms/room-0/join", serde_json::json!({"user_name": "Ann"}), Duration::from_secs(5));
    let session = joined.body["session_id"].as_str().unwrap().to_string();
    let (tok, _) = acked(
        &b,
        "/v1/meeting-tokens",
        serde_json::json!({"properties": {"room_name": "room-1"}}),
        Duration::from_secs(5),
    );
    let token = tok.body["token"].as_str().unwrap().to_string();
    assert_eq!(b.get(&format!("/v1/meeting-tokens/{token}")).status, 200);

    // An etcd member dies: writes go on (after etcd's own election, if it led).
    c.kill(0);
    let (_, took) = acked(&b, "/v1/rooms", serde_json::json!({"name": "member-down"}), Duration::from_secs(10));
    println!("a write after an etcd member died: acknowledged {took:?} after the first try");
    rooms.push("member-down".into());
    let before = seqs(&b);
    assert_eq!(before, (1..=before.len() as u64).collect::<Vec<_>>(), "the event log has a gap");
    // The history is trimmed: a snapshot names the state, and the records it covers are gone.
    let etcd = Etcd::new(&settings(c.endpoints()[1..].to_vec(), "/gh-nodes/")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let started = Instant::now();
    loop {
        let (snap, wal) = rt.block_on(async {
            (etcd.get(&etcd.key("snap/current")).await.unwrap(), etcd.get_prefix(&etcd.key("wal/")).await.unwrap())
        });
        if snap.is_some() && wal.len() < 4 {
            break;
        }
        // A snapshot that fails is tried again 5 s later; a trim waits for the follower's
        // progress (reported every second).
        assert!(started.elapsed() < Duration::from_secs(20), "no snapshot trimmed the history ({} records)", wal.len());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Writes after the snapshot: the takeover needs the snapshot and the records after it.
    acked(&b, "/v1/rooms", serde_json::json!({"name": "after-snapshot"}), Duration::from_secs(5));
    rooms.push("after-snapshot".into());
    let before = seqs(&b);

    // A room that expires while no one leads: its ejection fires once, on the new leader.
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 2;
    acked(
        &b,
        "/v1/rooms",
        serde_json::json!({"name": "expiring", "properties": {"exp": exp, "eject_at_room_exp": true}}),
        Duration::from_secs(5),
    );
    rooms.push("expiring".into());
    let (guest, _) = acked(&b, "/v1/rooms/expiring/join", serde_json::json!({}), Duration::from_secs(5));
    let guest = guest.body["session_id"].as_str().unwrap().to_string();

    // The leader dies (kill -9): B takes over and has every acknowledged write.
    drop(logs);
    a.kill9();
    let (_, took) = acked(&b, "/v1/rooms", serde_json::json!({"name": "after-failover"}), Duration::from_secs(15));
    println!("failover: B acknowledged a write {took:?} after A was killed (lease TTL 4 s)");
    assert!(took <= Duration::from_secs(10), "failover took {took:?}");
    rooms.push("after-failover".into());
    let started = Instant::now();
    let ejected = loop {
        let r = b.get("/v1/events?limit=1000&types=participant.ejected");
        let n: Vec<serde_json::Value> = r.body["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["payload"]["session_id"] == guest.as_str())
            .cloned()
            .collect();
        if !n.is_empty() || started.elapsed() > Duration::from_secs(10) {
            break n;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(ejected.len(), 1, "the overdue ejection fired {} times", ejected.len());
    assert_eq!(ejected[0]["payload"]["reason"], "room_expired", "{}", ejected[0]);
    rooms.retain(|r| r != "expiring"); // expired: gone, as it should be
    for name in &rooms {
        assert_eq!(b.get(&format!("/v1/rooms/{name}")).status, 200, "acknowledged room {name} lost");
    }
    let presence = b.get("/v1/rooms/room-0/presence");
    assert!(presence.text.contains(&session), "the session did not survive the failover: {}", presence.text);
    assert_eq!(b.get(&format!("/v1/meeting-tokens/{token}")).status, 200, "tokens signed before still validate");
    // The leader reports etcd's size and the snapshot's position.
    let metrics = b.get("/metrics").text;
    let size = metrics
        .lines()
        .find_map(|l| l.strip_prefix("gatehouse_etcd_db_size_bytes "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no etcd size in /metrics:\n{metrics}"));
    assert!(size > 0.0, "{metrics}");
    assert!(metrics.contains("gatehouse_etcd_snapshot_lsn "), "{metrics}");
    let after = seqs(&b);
    assert_eq!(after, (1..=after.len() as u64).collect::<Vec<_>>(), "the event log has a gap after failover");
    assert!(after.len() > before.len());
    assert_eq!(after[..before.len()], before[..]);

    // Every event reached the webhook, in order, across the failover (at least once: a
    // batch may come again from the new leader's cursor, never out of order).
    let last = *after.last().unwrap();
    // The webhook's first event: the one after its creation.
    let first = hook.wait_for("a delivery", 10, |s| !s.is_empty())[0];
    let got = hook.wait_for("every event", 20, |s| (first..=last).all(|q| s.contains(&q)));
    let mut seen = std::collections::BTreeSet::new();
    let firsts: Vec<u64> = got.iter().copied().filter(|q| seen.insert(*q)).collect();
    assert!(firsts.windows(2).all(|w| w[0] < w[1]), "out of order: {got:?}");
    for w in got.windows(2).filter(|w| w[1] <= w[0]) {
        assert!(w[1] <= w[0], "a redelivery restarts from an earlier cursor: {got:?}");
    }

    // A comes back (same data dir): it follows B and answers through it.
    let a = node(&c, &tmp.path().join("a"), pa);
    let started = Instant::now();
    loop {
        let r = a.get("/v1/rooms/after-failover");
        if r.status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the restarted node never answered: {} {}",
            r.status,
            r.text
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(b);
    drop(a);
}

fn gatehouse(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(args)
        .env("GATEHOUSE_API_KEY", common::KEY)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap()
}

#[test]
fn needs_etcd_a_single_nodes_backup_moves_into_etcd_and_back() {
    let c = EtcdCluster::start(1, None);
    let tmp = tempfile::tempdir().unwrap();
    // A single node on its data dir, with some state.
    let single = common::Server::start_in(&tmp.path().join("single"), &[]);
    single.create_room(serde_json::json!({"name": "moved", "privacy": "private"}));
    let token = single.token(serde_json::json!({"room_name": "moved", "user_id": "ann"}));
    single.join_ok("moved", Some(&token));
    let events_before = seqs(&single);
    let file = tmp.path().join("single.ghbk");
    let o = gatehouse(&["backup", file.to_str().unwrap(), "--server", &single.base]);
    assert!(o.status.success(), "{}", text(&o));
    drop(single);

    // Into etcd, then a node serves it: rooms, sessions, tokens and events as they were.
    let ep = c.members[0].client.clone();
    let into =
        ["restore", file.to_str().unwrap(), "--store", "etcd", "--etcd-endpoints", &ep, "--etcd-prefix", "/gh-nodes/"];
    let o = gatehouse(&into);
    assert!(o.status.success(), "{}", text(&o));
    let o = gatehouse(&into);
    assert!(
        !o.status.success() && text(&o).contains("already holds"),
        "a second restore was not refused: {}",
        text(&o)
    );
    let n = node(&c, &tmp.path().join("node"), common::free_port());
    acked(&n, "/v1/rooms", serde_json::json!({"name": "in-the-cluster"}), Duration::from_secs(15));
    assert_eq!(n.get("/v1/rooms/moved").status, 200);
    assert_eq!(n.get(&format!("/v1/meeting-tokens/{token}")).status, 200, "the domain id did not move");
    assert_eq!(n.join("moved", Some(&token), None).status, 200);
    let after = seqs(&n);
    assert_eq!(after[..events_before.len()], events_before[..]);
    assert_eq!(after, (1..=after.len() as u64).collect::<Vec<_>>());

    // And back: a backup of the cluster (through the node) restores into a data dir.
    let back = tmp.path().join("cluster.ghbk");
    let o = gatehouse(&["backup", back.to_str().unwrap(), "--server", &n.base]);
    assert!(o.status.success(), "{}", text(&o));
    drop(n);
    let dir = tmp.path().join("again");
    let o = gatehouse(&["restore", back.to_str().unwrap(), "--data-dir", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let again = common::Server::start_in(&dir, &[]);
    assert_eq!(again.get("/v1/rooms/in-the-cluster").status, 200);
    assert_eq!(again.get(&format!("/v1/meeting-tokens/{token}")).status, 200);
    assert_eq!(seqs(&again), after);
}

/// Follows `/v1/events/stream` through `bases` (moving to the next when one ends), resuming
/// after the last seq it saw, until `stop`; every seq in arrival order.
fn sse_reader(bases: Vec<String>, stop: Arc<std::sync::atomic::AtomicBool>) -> std::thread::JoinHandle<Vec<u64>> {
    use std::io::BufRead as _;
    std::thread::spawn(move || {
        let mut seen: Vec<u64> = Vec::new();
        let mut at = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let after = seen.last().copied().unwrap_or(0);
            let url = format!("{}/v1/events/stream?after={after}", bases[at % bases.len()]);
            let agent = ureq::AgentBuilder::new().timeout_read(Duration::from_secs(2)).build();
            match agent.get(&url).set("Authorization", &format!("Bearer {}", common::KEY)).call() {
                Ok(resp) => {
                    for line in std::io::BufReader::new(resp.into_reader()).lines() {
                        let Ok(line) = line else { break };
                        if let Some(id) = line.strip_prefix("id: ").and_then(|v| v.trim().parse::<u64>().ok()) {
                            seen.push(id);
                        }
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            break;
                        }
                    }
                }
                Err(_) => at += 1,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        seen
    })
}

#[test]
fn needs_etcd_mixed_load_through_failovers_keeps_limits_order_and_streams() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut c = EtcdCluster::start(3, None);
    let tmp = tempfile::tempdir().unwrap();
    let (pa, pb) = (common::free_port(), common::free_port());
    let mut a = node(&c, &tmp.path().join("a"), pa);
    acked(
        &a,
        "/v1/rooms",
        serde_json::json!({"name": "capped", "properties": {"max_participants": 3}}),
        Duration::from_secs(15),
    );
    let b = node(&c, &tmp.path().join("b"), pb);
    acked(&b, "/v1/rooms", serde_json::json!({"name": "b-forwards"}), Duration::from_secs(10));
    let (a_base, b_base) = (a.base.clone(), b.base.clone());
    let stop = Arc::new(AtomicBool::new(false));
    // An SSE reader on the follower; when its node goes, it resumes on the other.
    let reader = sse_reader(vec![b_base.clone(), a_base.clone()], stop.clone());

    // Joins racing for one room's three places, from both nodes at once.
    let racers: Vec<_> = (0..8)
        .map(|i| {
            let base = if i % 2 == 0 { a_base.clone() } else { b_base.clone() };
            std::thread::spawn(move || {
                common::call_url("POST", &format!("{base}/v1/rooms/capped/join"), None, Some("{}"), &[]).status
            })
        })
        .collect();
    let statuses: Vec<u16> = racers.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 3, "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || (400..500).contains(s)), "{statuses:?}");

    // A steady writer through B while an etcd member and then the leader die and come back.
    let acked_rooms = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let writer = {
        let (b_base, stop, acked_rooms) = (b_base.clone(), stop.clone(), acked_rooms.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("load-{i}");
                let body = serde_json::json!({"name": name}).to_string();
                let r = common::call_url("POST", &format!("{b_base}/v1/rooms"), Some(common::KEY), Some(&body), &[]);
                if r.status == 200 {
                    acked_rooms.lock().unwrap().push(name);
                    i += 1;
                } else {
                    // 503 while electing; a retry of a room that was in fact created: taken.
                    assert!(matches!(r.status, 503 | 400 | 0), "{} {}", r.status, r.text);
                    if r.status == 400 {
                        i += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    c.kill(1);
    std::thread::sleep(Duration::from_secs(2));
    c.restart(1);
    a.kill9();
    let started = Instant::now();
    let count = || acked_rooms.lock().unwrap().len();
    let before = count();
    while count() == before {
        assert!(started.elapsed() < Duration::from_secs(15), "no write acknowledged after the leader died");
        std::thread::sleep(Duration::from_millis(50));
    }
    println!("failover under load: next write acknowledged {:?} after the leader died", started.elapsed());
    let a = node(&c, &tmp.path().join("a"), pa); // back, as a follower
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();

    // Every acknowledged room; the capped room within its limit; events 1..head, no gap or
    // duplicate; the stream saw them all, in order, across the failover.
    for name in acked_rooms.lock().unwrap().iter() {
        assert_eq!(a.get(&format!("/v1/rooms/{name}")).status, 200, "acknowledged {name} lost");
    }
    let p = b.get("/v1/rooms/capped/presence");
    assert!(p.body["total_count"].as_u64().unwrap() <= 3, "{}", p.text);
    let all = seqs(&b);
    assert_eq!(all, (1..=all.len() as u64).collect::<Vec<_>>(), "gap or duplicate in the event log");
    let head = *all.last().unwrap();
    let got = reader.join().unwrap();
    let covered: Vec<u64> = got.iter().copied().filter(|q| *q <= head).collect();
    assert_eq!(covered, (1..=head).collect::<Vec<_>>(), "the stream missed or repeated events across the failover");
    drop(a);
}

/// A follower holds connections to the leader's rules: half-sent request heads are closed at
/// the head deadline, one address cannot hold more unauthenticated connections than its cap,
/// an API key lifts it, and the follower still forwards to the leader meanwhile.
#[test]
fn needs_etcd_every_node_holds_slow_clients_to_the_same_deadlines_and_caps() {
    use std::io::{Read, Write};
    let c = EtcdCluster::start(1, None);
    let tmp = tempfile::tempdir().unwrap();
    let env = [("GATEHOUSE_HEAD_TIMEOUT_SECS", "2"), ("GATEHOUSE_MAX_CONNECTIONS_PER_ADDRESS", "20")];
    let a = node_with(&c, &tmp.path().join("a"), common::free_port(), &env);
    acked(&a, "/v1/rooms", serde_json::json!({"name": "first"}), Duration::from_secs(15));
    let b = node_with(&c, &tmp.path().join("b"), common::free_port(), &env);
    acked(&b, "/v1/rooms", serde_json::json!({"name": "via-b"}), Duration::from_secs(10));
    // Every node, leader and follower (which answers some reads itself, forwards the rest).
    for (k, (role, n)) in [("leader", &a), ("follower", &b)].into_iter().enumerate() {
        let k = k as u8;
        // Slow heads from 15 addresses, 20 each (not from 127.0.0.1, a trusted proxy for the
        // nodes, exempt from the per-address cap): every one closed at the head deadline.
        let mut slow: Vec<std::net::TcpStream> = Vec::new();
        for i in 0..300 {
            let mut conn = n.connect_from([127, 3 + k, 3, 1 + (i % 15) as u8]);
            conn.write_all(b"GET /v1/rooms HTTP/1.1\r\nHost: x\r\n").unwrap();
            slow.push(conn);
        }
        // Meanwhile the node answers.
        assert_eq!(n.get("/v1/rooms/first").status, 200);
        assert_eq!(n.get("/v1/rooms/via-b").status, 200);
        std::thread::sleep(Duration::from_secs(3));
        let open = slow
            .iter_mut()
            .map(|conn| common::closed_within(conn, Duration::from_millis(300)))
            .filter(|closed| !closed)
            .count();
        assert_eq!(open, 0, "{open} of 300 half-sent request heads still open on the {role} after the 2 s deadline");
        // The per-address cap: 20 idle connections from one address, the 21st closed at once.
        let from = [127, 3 + k, 3, 100];
        let mut twenty: Vec<std::net::TcpStream> = (0..20).map(|_| n.connect_from(from)).collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut over = n.connect_from(from);
        assert!(
            common::closed_within(&mut over, Duration::from_secs(1)),
            "a 21st unauthenticated connection was kept by the {role}"
        );
        // A connection that carries the API key no longer counts against its address.
        write!(twenty[0], "GET /v1/rooms/first HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n", n.key)
            .unwrap();
        let mut head = [0u8; 12];
        twenty[0].read_exact(&mut head).unwrap();
        assert_eq!(&head, b"HTTP/1.1 200", "the API key's request on the {role}");
        let mut next = n.connect_from(from);
        next.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut buf = Vec::new();
        next.read_to_end(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"), "{role}: {}", String::from_utf8_lossy(&buf));
    }
}

/// Waits until `node` answers `path` with 200 (its replica has it, or it forwards).
fn until_ok(node: &common::Server, path: &str, within: Duration) {
    let started = Instant::now();
    loop {
        let r = node.get(path);
        if r.status == 200 {
            return;
        }
        assert!(started.elapsed() < within, "{path}: {} {}", r.status, r.text);
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn needs_etcd_a_follower_reads_its_replica_its_own_writes_and_through_a_frozen_leader() {
    let c = EtcdCluster::start(3, None);
    let tmp = tempfile::tempdir().unwrap();
    let a = node(&c, &tmp.path().join("a"), common::free_port());
    acked(&a, "/v1/rooms", serde_json::json!({"name": "first"}), Duration::from_secs(15));
    let b = node(&c, &tmp.path().join("b"), common::free_port());
    until_ok(&b, "/v1/rooms/first", Duration::from_secs(15));

    // Read-your-writes: every write through the follower is answered once its replica holds
    // it, so the next read on the same node sees it, whoever answers that read.
    let mut tokens = Vec::new();
    let _logs = LogsOnPanic(&[&a, &b]);
    for i in 0..20 {
        let name = format!("ryw-{i}");
        acked(&b, "/v1/rooms", serde_json::json!({"name": name}), Duration::from_secs(5));
        let r = b.get(&format!("/v1/rooms/{name}"));
        assert_eq!(r.status, 200, "a room created through the follower was not there on its next read: {}", r.text);
        let (t, _) = acked(
            &b,
            "/v1/meeting-tokens",
            serde_json::json!({"properties": {"room_name": name, "user_id": format!("u{i}")}}),
            Duration::from_secs(5),
        );
        let token = t.body["token"].as_str().unwrap().to_string();
        assert_eq!(b.get(&format!("/v1/meeting-tokens/{token}")).status, 200);
        let (joined, _) =
            acked(&b, &format!("/v1/rooms/{name}/join"), serde_json::json!({"token": token}), Duration::from_secs(5));
        let session = joined.body["session_id"].as_str().unwrap().to_string();
        let presence = b.get(&format!("/v1/rooms/{name}/presence"));
        assert!(presence.text.contains(&session), "join {i} is not in the follower's presence: {}", presence.text);
        tokens.push(token);
    }
    let r = b.delete("/v1/rooms/ryw-0");
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(b.get("/v1/rooms/ryw-0").status, 404, "a room deleted through the follower was still there");
    // The follower's event log is the leader's: the same events, the same seqs.
    let (on_a, on_b) = (seqs(&a), seqs(&b));
    assert!(on_b.len() >= 80, "{} events", on_b.len());
    assert_eq!(on_a, on_b);

    // The leader freezes (SIGSTOP): the follower's replica still answers reads at once
    // (nothing it reads is forwarded to the frozen process), while etcd says it is current.
    a.signal("STOP");
    let started = Instant::now();
    let mut reads = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        let t = Instant::now();
        for path in [
            "/v1/rooms/ryw-1".to_string(),
            format!("/v1/meeting-tokens/{}", tokens[2]),
            "/v1/rooms/ryw-3/presence".into(),
            "/v1/presence".into(),
            "/v1/events?limit=5".into(),
            "/v1/meetings".into(),
        ] {
            let r = b.get(&path);
            assert_eq!(r.status, 200, "{path} with the leader frozen: {}", r.text);
            reads += 1;
        }
        assert!(t.elapsed() < Duration::from_secs(2), "reads with the leader frozen took {:?}", t.elapsed());
    }
    a.signal("CONT");
    println!("{reads} reads answered by the follower while the leader was frozen");
}

#[test]
fn needs_etcd_a_node_listening_on_every_address_must_say_how_it_is_reached() {
    let c = EtcdCluster::start(1, None);
    let tmp = tempfile::tempdir().unwrap();
    let port = common::free_port().to_string();
    let o = gatehouse(&[
        "serve",
        "--store",
        "etcd",
        "--etcd-endpoints",
        &c.endpoints()[0],
        "--listen",
        &format!("0.0.0.0:{port}"),
        "--data-dir",
        tmp.path().join("n").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains(&format!("--etcd-advertise-url http://<its address>:{port}")), "{}", text(&o));
}

/// A TCP proxy on loopback that the test can cut (every connection closed, new ones refused).
struct Cuttable {
    addr: String,
    cut: Arc<std::sync::atomic::AtomicBool>,
}

impl Cuttable {
    fn start(upstream: String) -> Cuttable {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let cut = Arc::new(AtomicBool::new(false));
        let cut2 = cut.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if cut2.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let Ok(server) = std::net::TcpStream::connect(upstream.trim_start_matches("http://")) else { continue };
                for (from, to) in [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)] {
                    let cut = cut2.clone();
                    std::thread::spawn(move || pump(from, to, &cut));
                }
            }
        });
        fn pump(mut from: std::net::TcpStream, mut to: std::net::TcpStream, cut: &AtomicBool) {
            use std::io::{Read, Write};
            from.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let mut buf = [0u8; 16384];
            while !cut.load(Ordering::SeqCst) {
                match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                    Err(_) => break,
                }
            }
            let _ = to.shutdown(std::net::Shutdown::Both);
            let _ = from.shutdown(std::net::Shutdown::Both);
        }
        Cuttable { addr, cut }
    }

    fn cut(&self, cut: bool) {
        self.cut.store(cut, std::sync::atomic::Ordering::SeqCst);
    }
}

#[test]
fn needs_etcd_a_follower_cut_off_from_etcd_stops_reading_its_replica_after_its_bound() {
    let c = EtcdCluster::start(1, None);
    let tmp = tempfile::tempdir().unwrap();
    let a = node(&c, &tmp.path().join("a"), common::free_port());
    acked(&a, "/v1/rooms", serde_json::json!({"name": "before"}), Duration::from_secs(15));
    // B reaches etcd only through a proxy the test cuts; it reaches the leader directly.
    let proxy = Cuttable::start(c.endpoints()[0].clone());
    let mut b = node_on(std::slice::from_ref(&proxy.addr), &tmp.path().join("b"), common::free_port(), &[]);
    until_ok(&b, "/v1/rooms/before", Duration::from_secs(15));
    let _logs = LogsOnPanic(&[&a, &b]);

    proxy.cut(true);
    let cut_at = Instant::now();
    acked(&a, "/v1/rooms", serde_json::json!({"name": "after-the-cut"}), Duration::from_secs(5));
    // Past its bound (1 s) the replica, which cannot have that room, answers nothing: reads are
    // forwarded to the leader, which has it.
    std::thread::sleep(Duration::from_millis(1500).saturating_sub(cut_at.elapsed()));
    for _ in 0..10 {
        let r = b.get("/v1/rooms/after-the-cut");
        assert_eq!(r.status, 200, "a follower cut off from etcd answered from its stale replica: {}", r.text);
        assert_eq!(b.get("/v1/rooms/before").status, 200);
    }
    // Reconnected, it catches up by itself: the leader frozen, it answers from its replica.
    proxy.cut(false);
    acked(&a, "/v1/rooms", serde_json::json!({"name": "after-the-repair"}), Duration::from_secs(5));
    until_ok(&b, "/v1/rooms/after-the-repair", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    a.signal("STOP");
    let r = b.get("/v1/rooms/after-the-cut");
    a.signal("CONT");
    assert_eq!(r.status, 200, "the reconnected replica did not catch up: {}", r.text);
    assert!(b.log().contains("the replica cannot read etcd"), "{}", b.log());

    // Stopped while it follows, under writes: a clean exit (its replica stops before its store).
    drop(_logs);
    let writes = std::thread::spawn({
        let base = a.base.clone();
        move || {
            for i in 0..40 {
                let url = format!("{base}/v1/rooms");
                common::call_url("POST", &url, Some(common::KEY), Some(&format!(r#"{{"name":"late-{i}"}}"#)), &[]);
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let status = b.terminate();
    writes.join().unwrap();
    assert!(status.success(), "a follower stopped by SIGTERM exited with {status}:\n{}", b.log());
}

/// Prints the nodes' logs if the test fails while it is held.
struct LogsOnPanic<'a>(&'a [&'a common::Server]);

impl Drop for LogsOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (i, n) in self.0.iter().enumerate() {
                eprintln!("--- node {i} ({}):\n{}", n.base, n.log());
            }
        }
    }
}
