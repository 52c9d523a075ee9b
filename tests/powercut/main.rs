//! Power cuts, not just `kill -9`: the data dir is on a file system that forgets whatever was
//! not made durable (`fs.rs`: file data by `fsync`, names by an `fsync` of their directory), and
//! the power goes at the worst moments — under mixed writes (rooms, tokens, joins, bans,
//! revocations, knocks and grants, webhooks, meetings), within the first second of a fresh
//! data dir, and during recovery — more than 50 times, some cuts keeping nothing unsynced and
//! some keeping a torn, zero-filled part of it. After every restart: the server comes up, every
//! acknowledged write is there, tokens still verify, bans hold, the events are contiguous with
//! exactly one per acknowledged change and no seq ever served for two different events, and the
//! webhook gets every event without skipping one.
//!
//! Then an `fsync` that fails with EIO (as Linux fails it, losing the data and letting the next
//! `fsync` succeed): the server stops acknowledging writes, `/readyz` says why, and a restart
//! recovers every acknowledged write from the journal.
//!
//! These need root and `/dev/fuse` (the `needs_root_` prefix keeps them out of `--fast`).

#[path = "../common/mod.rs"]
mod common;
mod fs;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::receiver::Receiver;
use common::{Server, KEY};
use fs::{Cut, PowerCut, Rng};
use serde_json::{json, Value};

fn require_fuse() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    common::require(root && Path::new("/dev/fuse").exists(), "root and /dev/fuse (a FUSE file system)");
}

fn mount() -> (tempfile::TempDir, PowerCut) {
    let tmp = tempfile::tempdir().unwrap();
    let fs = PowerCut::mount(tmp.path()).expect("mount the power-cut file system (root and /dev/fuse)");
    (tmp, fs)
}

// ---------------------------------------------------------------------------------------------
// The file system's own tests: it drops what it should and keeps what was synced.

fn write_file(path: &Path, bytes: &[u8], sync: bool) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
    if sync {
        f.sync_data().unwrap();
    }
}

fn sync_dir(path: &Path) {
    std::fs::File::open(path).unwrap().sync_all().unwrap();
}

#[test]
fn needs_root_the_power_cut_file_system_keeps_only_what_was_made_durable() {
    require_fuse();
    let (_tmp, fs) = mount();
    let root = fs.path().to_path_buf();
    // A file synced, its name synced: kept. Data appended without a sync: gone.
    write_file(&root.join("kept"), b"durable", true);
    sync_dir(&root);
    write_file(&root.join("kept"), b"-lost", false);
    // A directory made, its name synced, a file in it with its name synced but no data sync.
    std::fs::create_dir(root.join("d")).unwrap();
    sync_dir(&root);
    write_file(&root.join("d/empty"), b"never synced", false);
    sync_dir(&root.join("d"));
    // A rename without a directory sync is undone; a deletion too.
    write_file(&root.join("old"), b"x", true);
    write_file(&root.join("gone"), b"y", true);
    sync_dir(&root);
    std::fs::rename(root.join("old"), root.join("new")).unwrap();
    std::fs::remove_file(root.join("gone")).unwrap();
    // A file synced, its name never synced: gone, data and all.
    write_file(&root.join("unnamed"), b"synced data", true);
    // sync_file_range is not a sync.
    {
        use std::os::unix::io::AsRawFd;
        write_file(&root.join("kept"), b"-range", false);
        let f = std::fs::File::open(root.join("kept")).unwrap();
        // SAFETY: a valid fd and range.
        let rc = unsafe {
            libc::sync_file_range(
                f.as_raw_fd(),
                0,
                0,
                libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER,
            )
        };
        assert_eq!(rc, 0);
    }
    let before = fs.stats();
    fs.cut(Cut::Strict);
    assert_eq!(std::fs::read(root.join("kept")).unwrap(), b"durable");
    assert!(!root.join("unnamed").exists(), "a name never synced survived");
    assert_eq!(std::fs::read(root.join("d/empty")).unwrap(), b"", "unsynced data survived");
    assert!(root.join("old").exists() && !root.join("new").exists(), "an unsynced rename survived");
    assert!(root.join("gone").exists(), "an unsynced deletion survived");
    assert!(fs.stats().dropped > before.dropped);

    // What survives a torn cut is the synced part plus a prefix of the rest (maybe zeros).
    for seed in 0..20 {
        let f = root.join(format!("torn-{seed}"));
        write_file(&f, b"0123456789", true);
        sync_dir(&root);
        write_file(&f, b"abcdefghij", false);
        write_file(&f, b"ABCDEFGHIJ", false);
        fs.cut(Cut::Torn(seed));
        let got = std::fs::read(&f).unwrap();
        assert!(got.starts_with(b"0123456789"), "seed {seed}: the synced part was damaged: {got:?}");
        let rest = &got[10..];
        let written = b"abcdefghijABCDEFGHIJ";
        assert!(rest.len() <= written.len(), "seed {seed}: more than was written: {got:?}");
        let ok = rest.iter().zip(written.iter()).all(|(a, b)| a == b || *a == 0);
        assert!(ok, "seed {seed}: a torn tail must be a prefix of what was written, or zeros: {got:?}");
    }

    // A failed fsync loses the data, and the next fsync of the same file succeeds anyway.
    write_file(&root.join("eio"), b"first", true);
    sync_dir(&root);
    fs.fail_fsync("/eio", 1);
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(root.join("eio")).unwrap();
        f.write_all(b"-second").unwrap();
        let err = f.sync_data().expect_err("the injected fsync failure");
        assert_eq!(err.raw_os_error(), Some(libc::EIO));
        f.write_all(b"-third").unwrap();
        f.sync_data().expect("the fsync after a failure succeeds (as on Linux)");
    }
    fs.cut(Cut::Strict);
    assert_eq!(std::fs::read(root.join("eio")).unwrap(), b"first\0\0\0\0\0\0\0-third", "the failed write was not lost");
}

// ---------------------------------------------------------------------------------------------
// The server under power cuts.

fn jti_of(token: &str) -> String {
    use base64::Engine;
    let seg = token.split('.').nth(1).unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(seg).unwrap_or_default();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    v["jti"].as_str().unwrap_or_default().to_string()
}

/// What the server acknowledged (2xx) in one data dir, and what was attempted without an
/// answer (a cut came first: it may or may not have happened).
#[derive(Default)]
struct Ledger {
    rooms: BTreeSet<String>,
    /// Tokens nothing ever revokes: they must verify after every cut.
    plain: BTreeMap<String, String>,
    /// jti → token, for every acknowledged token.
    tokens: BTreeMap<String, String>,
    /// Tokens someone tried to revoke (or whose user someone tried to ban).
    maybe_revoked: BTreeSet<String>,
    revoked: BTreeSet<String>,
    /// session id → (room, user id, token jti).
    joins: BTreeMap<String, (String, String, String)>,
    maybe_ejected: BTreeSet<String>,
    bans: BTreeSet<(String, String)>,
    /// waiting session id → room.
    knocks: BTreeMap<String, String>,
    maybe_granted: BTreeSet<String>,
    granted: BTreeSet<String>,
    webhooks: BTreeSet<String>,
    /// Answers no rule explains.
    errors: Vec<String>,
}

/// One data dir's life: its ledger, and every event ever served from it (seq → envelope).
struct Lineage {
    tag: String,
    dir: PathBuf,
    env: Vec<(&'static str, String)>,
    ledger: Arc<Mutex<Ledger>>,
    served: BTreeMap<u64, Value>,
    lobby: Arc<Mutex<String>>,
    counter: Arc<AtomicU64>,
    hook: Option<(Receiver, u64)>,
    extra: Receiver,
    /// What was already checked one by one (later checks take a sample of it).
    checked: BTreeSet<String>,
    /// The API key: the test's, or (`generated_key`) the one the server made and printed.
    key: String,
    generated_key: bool,
}

impl Lineage {
    fn new(tag: &str, root: &Path, sled_flusher: bool) -> Lineage {
        let mut env =
            vec![("GATEHOUSE_LEASE_SECS", "3600".to_string()), ("GATEHOUSE_SHUTDOWN_GRACE_SECS", "2".to_string())];
        // The default is off; a lineage with it on checks the cuts do not depend on that.
        env.push(("GATEHOUSE_SLED_FLUSH_EVERY_MS", if sled_flusher { "500" } else { "0" }.to_string()));
        Lineage {
            tag: tag.to_string(),
            dir: root.join(tag),
            env,
            ledger: Arc::default(),
            served: BTreeMap::new(),
            lobby: Arc::default(),
            counter: Arc::default(),
            hook: None,
            extra: Receiver::start(),
            checked: BTreeSet::new(),
            key: KEY.to_string(),
            generated_key: false,
        }
    }

    fn env(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&self.dir)
            .env("GATEHOUSE_JOIN_RATE", "100000")
            .env("GATEHOUSE_JOIN_BURST", "100000")
            .env("GATEHOUSE_MAX_CONNECTIONS_PER_ADDRESS", "100000")
            .stdin(Stdio::null());
        if self.generated_key {
            cmd.env_remove("GATEHOUSE_API_KEY");
        } else {
            cmd.env("GATEHOUSE_API_KEY", KEY);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    fn start(&mut self) -> Server {
        if !self.generated_key {
            return Server::start_in(&self.dir, &self.env());
        }
        let mut cmd = self.command();
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut s = Server::spawn(cmd, &self.dir, "");
        // Printed before the server listened, so durable by now: the same after every cut.
        let key = std::fs::read_to_string(self.dir.join("api_key")).unwrap().trim().to_string();
        assert!(self.key == KEY || self.key == key, "{}: the generated API key changed across a cut", self.tag);
        self.key = key.clone();
        s.key = key;
        s
    }

    /// Starts the server and kills it `after` later, whether or not it is serving yet.
    fn start_and_kill(&self, after: Duration) {
        let mut child = self.command().stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(after);
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// An HTTP exchange with a live server: `Err` when the server died (not acknowledged).
fn send(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    auth: Option<&str>,
    body: Option<&Value>,
) -> Result<(u16, Value), ()> {
    let mut req = agent.request(method, url);
    if let Some(a) = auth {
        req = req.set("Authorization", &format!("Bearer {a}"));
    }
    let res = match body {
        Some(b) => req.set("Content-Type", "application/json").send_string(&b.to_string()),
        None => req.call(),
    };
    let resp = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(_) => return Err(()),
    };
    let status = resp.status();
    let text = resp.into_string().map_err(|_| ())?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

/// One client: mixed writes until the server dies.
fn client(
    base: String,
    key: String,
    lin_ledger: Arc<Mutex<Ledger>>,
    lobby: Arc<Mutex<String>>,
    counter: Arc<AtomicU64>,
    hook_url: String,
    seed: u64,
) {
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
    let mut rng = Rng::new(seed);
    let api = Some(key.as_str());
    let url = |p: &str| format!("{base}{p}");
    let next = || counter.fetch_add(1, Ordering::Relaxed);
    let ledger = || lin_ledger.lock().unwrap();
    let fail = |what: String| lin_ledger.lock().unwrap().errors.push(what);
    loop {
        let step: Result<(), ()> = (|| {
            match rng.below(100) {
                0..=17 => {
                    let name = format!("room-{}", next());
                    let (st, _) = send(
                        &agent,
                        "POST",
                        &url("/v1/rooms"),
                        api,
                        Some(&json!({"name": name, "properties": {"max_participants": 10000}})),
                    )?;
                    match st {
                        200 => {
                            ledger().rooms.insert(name);
                        }
                        other => fail(format!("create room {name}: {other}")),
                    }
                }
                18..=35 => {
                    let room = pick(&ledger().rooms, &mut rng);
                    let mut props = json!({"user_id": format!("plain-{}", next())});
                    if let Some(r) = room {
                        props["room_name"] = json!(r);
                    }
                    let (st, v) =
                        send(&agent, "POST", &url("/v1/meeting-tokens"), api, Some(&json!({"properties": props})))?;
                    match (st, v["token"].as_str()) {
                        (200, Some(t)) => {
                            let mut l = ledger();
                            l.plain.insert(jti_of(t), t.to_string());
                            l.tokens.insert(jti_of(t), t.to_string());
                        }
                        _ => fail(format!("plain token: {st} {v}")),
                    }
                }
                36..=57 => {
                    let Some(room) = pick(&ledger().rooms, &mut rng) else { return Ok(()) };
                    let user = format!("joiner-{}", next());
                    let (st, v) = send(
                        &agent,
                        "POST",
                        &url("/v1/meeting-tokens"),
                        api,
                        Some(&json!({"properties": {"room_name": room, "user_id": user}})),
                    )?;
                    let Some(token) = v["token"].as_str().filter(|_| st == 200) else {
                        fail(format!("join token: {st} {v}"));
                        return Ok(());
                    };
                    let jti = jti_of(token);
                    ledger().tokens.insert(jti.clone(), token.to_string());
                    let (st, v) = send(
                        &agent,
                        "POST",
                        &url(&format!("/v1/rooms/{room}/join")),
                        None,
                        Some(&json!({"token": token, "user_name": user})),
                    )?;
                    match (st, v["session_id"].as_str()) {
                        (200, Some(id)) => {
                            ledger().joins.insert(id.to_string(), (room, user, jti));
                        }
                        _ => fail(format!("join {room}: {st} {v}")),
                    }
                }
                58..=63 => {
                    // Picked and marked under one lock: two clients never take the same one.
                    let target = {
                        let mut l = ledger();
                        let candidates: Vec<_> =
                            l.joins.iter().filter(|(id, _)| !l.maybe_ejected.contains(*id)).collect();
                        let picked = (!candidates.is_empty()).then(|| {
                            let (id, (room, user, jti)) = candidates[rng.below(candidates.len() as u64) as usize];
                            (id.clone(), room.clone(), user.clone(), jti.clone())
                        });
                        if let Some((id, _, _, jti)) = &picked {
                            l.maybe_ejected.insert(id.clone());
                            l.maybe_revoked.insert(jti.clone());
                        }
                        picked
                    };
                    let Some((_, room, user, _)) = target else { return Ok(()) };
                    let (st, v) = send(
                        &agent,
                        "POST",
                        &url(&format!("/v1/rooms/{room}/eject")),
                        api,
                        Some(&json!({"user_ids": [user], "ban": true})),
                    )?;
                    match st {
                        200 => {
                            ledger().bans.insert((room, user));
                        }
                        _ => fail(format!("eject and ban: {st} {v}")),
                    }
                }
                64..=71 => {
                    let (st, v) = send(
                        &agent,
                        "POST",
                        &url("/v1/meeting-tokens"),
                        api,
                        Some(&json!({"properties": {"user_id": format!("revoked-{}", next())}})),
                    )?;
                    let Some(token) = v["token"].as_str().filter(|_| st == 200) else {
                        fail(format!("token to revoke: {st} {v}"));
                        return Ok(());
                    };
                    let jti = jti_of(token);
                    {
                        let mut l = ledger();
                        l.tokens.insert(jti.clone(), token.to_string());
                        l.maybe_revoked.insert(jti.clone());
                    }
                    let (st, v) =
                        send(&agent, "POST", &url("/v1/meeting-tokens/revoke"), api, Some(&json!({"jti": jti})))?;
                    match st {
                        200 => {
                            ledger().revoked.insert(jti);
                        }
                        _ => fail(format!("revoke: {st} {v}")),
                    }
                }
                72..=85 => {
                    let room = lobby.lock().unwrap().clone();
                    let (st, v) = send(
                        &agent,
                        "POST",
                        &url(&format!("/v1/rooms/{room}/join")),
                        None,
                        Some(&json!({"user_name": format!("knocker-{}", next())})),
                    )?;
                    match (st, v["session_id"].as_str(), v["access"]["level"].as_str()) {
                        (200, Some(id), Some("lobby")) => {
                            ledger().knocks.insert(id.to_string(), room);
                        }
                        (429, _, _) => {} // the lobby is full
                        _ => fail(format!("knock: {st} {v}")),
                    }
                }
                86..=97 => {
                    let target = {
                        let mut l = ledger();
                        let open: Vec<_> = l.knocks.iter().filter(|(id, _)| !l.maybe_granted.contains(*id)).collect();
                        let picked = (!open.is_empty()).then(|| {
                            let (id, room) = open[rng.below(open.len() as u64) as usize];
                            (id.clone(), room.clone())
                        });
                        if let Some((id, _)) = &picked {
                            l.maybe_granted.insert(id.clone());
                        }
                        picked
                    };
                    let Some((id, room)) = target else { return Ok(()) };
                    let body = json!({ id.clone(): {"grantRequestedAccess": true} });
                    let (st, v) = send(
                        &agent,
                        "POST",
                        &url(&format!("/v1/rooms/{room}/waiting-participants")),
                        api,
                        Some(&body),
                    )?;
                    match st {
                        200 if v["granted"].as_array().is_some_and(|g| g.iter().any(|x| x == &json!(id))) => {
                            ledger().granted.insert(id);
                        }
                        _ => fail(format!("grant {id}: {st} {v}")),
                    }
                }
                _ => {
                    if ledger().webhooks.len() >= 3 {
                        return Ok(());
                    }
                    let (st, v) = send(&agent, "POST", &url("/v1/webhooks"), api, Some(&json!({"url": hook_url})))?;
                    match (st, v["uuid"].as_str()) {
                        (200, Some(id)) => {
                            ledger().webhooks.insert(id.to_string());
                        }
                        _ => fail(format!("webhook: {st} {v}")),
                    }
                }
            }
            Ok(())
        })();
        if step.is_err() {
            return; // the server is gone
        }
    }
}

fn pick(set: &BTreeSet<String>, rng: &mut Rng) -> Option<String> {
    if set.is_empty() {
        return None;
    }
    set.iter().nth(rng.below(set.len() as u64) as usize).cloned()
}

/// Runs `clients` against the server for `run`, then kills it (the clients' requests in flight
/// are not acknowledged) — the first half of a power cut.
fn load_then_kill(s: &mut Server, lin: &Lineage, run: Duration, seed: u64) {
    let mut workers = Vec::new();
    for w in 0..4u64 {
        let (base, ledger, lobby, counter) =
            (s.base.clone(), lin.ledger.clone(), lin.lobby.clone(), lin.counter.clone());
        let (hook, key) = (lin.extra.url.clone(), s.key.clone());
        workers.push(std::thread::spawn(move || {
            client(base, key, ledger, lobby, counter, hook, seed.wrapping_mul(16).wrapping_add(w))
        }));
    }
    std::thread::sleep(run);
    s.kill9();
    for w in workers {
        w.join().unwrap();
    }
}

/// Pages through a list endpoint (`data`, a cursor field, `starting_after`).
fn list_all(s: &Server, path: &str, cursor: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    let sep = if path.contains('?') { '&' } else { '?' };
    loop {
        let q = after.as_ref().map(|a| format!("&starting_after={a}")).unwrap_or_default();
        let r = s.get(&format!("{path}{sep}limit=100{q}"));
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        let data = r.body["data"].as_array().cloned().unwrap_or_default();
        after = data.last().and_then(|v| v[cursor].as_str()).map(String::from);
        let full = data.len() == 100;
        out.extend(data);
        if !full || after.is_none() {
            return out;
        }
    }
}

/// A sample of what is in `all` but was already checked, plus everything not checked yet.
fn to_check<'a>(all: impl Iterator<Item = &'a String>, checked: &mut BTreeSet<String>, rng: &mut Rng) -> Vec<String> {
    let mut out = Vec::new();
    for k in all {
        if checked.insert(k.clone()) || rng.below(20) == 0 {
            out.push(k.clone());
        }
    }
    out
}

/// Every acknowledged write is there; events are contiguous, one per change, never reused.
fn verify(s: &Server, lin: &mut Lineage, when: &str) {
    assert_eq!(s.call("GET", "/readyz", None, None).status, 200, "{when}: not ready; log:\n{}", s.log());
    let log = s.log();
    for broken in ["lost from disk", "are missing", "has a hole", "unreadable"] {
        assert!(!log.contains(broken), "{when}: recovery found something broken ({broken}):\n{log}");
    }
    let l = lin.ledger.lock().unwrap();
    assert!(l.errors.is_empty(), "{when}: unexpected answers: {:?}", l.errors);
    let events = s.events();
    // Contiguous from 1, and nothing ever served is lost or changed.
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"].as_u64(), Some(i as u64 + 1), "{when}: the event log has a gap or starts late at {i}");
    }
    let head = events.len() as u64;
    if let Some((&last_served, _)) = lin.served.last_key_value() {
        assert!(
            head >= last_served,
            "{when}: events up to {last_served} were served before the cut; head is now {head}"
        );
    }
    for e in &events {
        let seq = e["seq"].as_u64().unwrap_or_default();
        let prior = lin.served.entry(seq).or_insert_with(|| e.clone());
        assert_eq!(prior, e, "{when}: seq {seq} was served for two different events");
    }
    let count = |kind: &str, field: &str| -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for e in events.iter().filter(|e| e["type"] == kind) {
            *out.entry(e["payload"][field].as_str().unwrap_or_default().to_string()).or_insert(0) += 1;
        }
        out
    };
    let once = |m: &BTreeMap<String, usize>, key: &str, what: &str| {
        assert_eq!(m.get(key).copied().unwrap_or(0), 1, "{when}: {what} {key}: not exactly one event");
    };
    let rooms = count("room.created", "name");
    let tokens = count("meeting-token.created", "jti");
    for (k, n) in rooms.iter().chain(tokens.iter()) {
        assert!(*n <= 1, "{when}: {k} created {n} times");
    }
    let listed: BTreeSet<String> =
        list_all(s, "/v1/rooms", "id").iter().filter_map(|r| r["name"].as_str().map(String::from)).collect();
    for name in &l.rooms {
        assert!(listed.contains(name), "{when}: acknowledged room {name} lost");
        once(&rooms, name, "room");
    }
    let listed: BTreeSet<String> =
        list_all(s, "/v1/meeting-tokens", "jti").iter().filter_map(|t| t["jti"].as_str().map(String::from)).collect();
    for jti in l.tokens.keys() {
        assert!(listed.contains(jti), "{when}: acknowledged token {jti} lost");
        once(&tokens, jti, "token");
    }
    let mut rng = Rng::new(head);
    for jti in to_check(l.plain.keys(), &mut lin.checked, &mut rng) {
        let r = s.get(&format!("/v1/meeting-tokens/{}?verbose=true", l.plain[&jti]));
        assert_eq!(r.body["status"], "valid", "{when}: acknowledged token {jti} no longer verifies: {}", r.text);
    }
    for jti in to_check(l.revoked.iter(), &mut lin.checked, &mut rng) {
        let r = s.get(&format!("/v1/meeting-tokens/{}?verbose=true", l.tokens[&jti]));
        assert_eq!(r.body["status"], "revoked", "{when}: revoked token {jti} is not: {}", r.text);
    }
    let joined = count("participant.joined", "session_id");
    let mut present: BTreeSet<String> = BTreeSet::new();
    for (_, ids) in s.get("/v1/presence").body.as_object().cloned().unwrap_or_default() {
        present.extend(ids.as_array().into_iter().flatten().filter_map(|p| p["id"].as_str().map(String::from)));
    }
    let met: BTreeSet<String> = list_all(s, "/v1/meetings?no_participants=true", "id")
        .iter()
        .filter_map(|m| m["room"].as_str().map(String::from))
        .collect();
    for (id, (room, _, _)) in &l.joins {
        once(&joined, id, "join");
        assert!(l.maybe_ejected.contains(id) || present.contains(id), "{when}: session {id} lost from {room}");
        assert!(met.contains(room), "{when}: no meeting for {room}");
    }
    let banned = count("ban.created", "user_id");
    let ban_keys: Vec<String> = l.bans.iter().map(|(r, u)| format!("{r}/{u}")).collect();
    for key in to_check(ban_keys.iter(), &mut lin.checked, &mut rng) {
        let (room, user) = key.split_once('/').unwrap_or_default();
        assert!(banned.contains_key(user), "{when}: no ban.created for {user}");
        let bans = s.get(&format!("/v1/rooms/{room}/bans"));
        assert!(bans.text.contains(&format!("\"{user}\"")), "{when}: ban of {user} in {room} lost: {}", bans.text);
    }
    // Bans hold: a fresh token for a banned user is refused.
    if let Some((room, user)) = l.bans.iter().nth(rng.below(l.bans.len() as u64) as usize) {
        let t = s.token(json!({"room_name": room, "user_id": user}));
        let r = s.join(room, Some(&t), Some("again"));
        assert_eq!(
            (r.status, r.body["error"].as_str()),
            (403, Some("ejected")),
            "{when}: a ban did not hold: {}",
            r.text
        );
    }
    let knocked = count("waiting-participant.joined", "session_id");
    let lobbies: BTreeSet<&String> = l.knocks.values().collect();
    let mut waiting = String::new();
    for room in lobbies {
        waiting.push_str(&s.get(&format!("/v1/rooms/{room}/waiting-participants")).text);
    }
    for id in l.knocks.keys() {
        once(&knocked, id, "knock");
        if l.granted.contains(id) {
            once(&joined, id, "granted join");
            assert!(present.contains(id), "{when}: granted {id} not present");
        } else if !l.maybe_granted.contains(id) {
            assert!(waiting.contains(id.as_str()), "{when}: knock {id} lost");
        }
    }
    let hooks = s.get("/v1/webhooks").text;
    for id in &l.webhooks {
        assert!(hooks.contains(id.as_str()), "{when}: acknowledged webhook {id} lost");
    }
}

/// The webhook got every event after its creation, in order, never skipping one (a restart
/// may send some again), each exactly as served.
fn verify_webhook(s: &Server, lin: &Lineage) {
    let Some((hook, after)) = &lin.hook else { return };
    let head = s.events().len() as u64;
    let got = hook.wait_for("every event up to the head", 120, |seqs| {
        let have: BTreeSet<u64> = seqs.iter().copied().collect();
        (after + 1..=head).all(|q| have.contains(&q))
    });
    let mut last = *after;
    for q in &got {
        assert!(*q <= last + 1, "{}: the webhook skipped from {last} to {q}", lin.tag);
        last = (*q).max(last);
    }
    for r in hook.requests() {
        let v = r.json();
        let Some(seq) = v["seq"].as_u64() else { continue };
        if let Some(served) = lin.served.get(&seq) {
            assert_eq!(v["id"], served["id"], "{}: seq {seq} delivered as another event", lin.tag);
            assert_eq!(v["payload"], served["payload"], "{}: seq {seq} delivered with another payload", lin.tag);
        }
    }
}

fn new_lobby(s: &Server, lin: &Lineage) {
    let name = format!("lobby-{}", lin.counter.fetch_add(1, Ordering::Relaxed));
    // Room for every grant of a round: at 200 (the default) a fast, long round's grants could
    // fill it, and a `meeting-full` refusal is no durability failure.
    s.create_room(
        json!({"name": name, "privacy": "private", "properties": {"enable_knocking": true, "max_participants": 10000}}),
    );
    lin.ledger.lock().unwrap().rooms.insert(name.clone());
    *lin.lobby.lock().unwrap() = name;
}

fn cut_kind(rng: &mut Rng) -> Cut {
    if rng.below(2) == 0 {
        Cut::Strict
    } else {
        Cut::Torn(rng.next())
    }
}

#[test]
fn needs_root_acknowledged_writes_survive_power_cuts() {
    require_fuse();
    let (_tmp, fs) = mount();
    let seed = std::env::var("GATEHOUSE_POWERCUT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(7)
    });
    eprintln!("power cuts with GATEHOUSE_POWERCUT_SEED={seed}");
    let mut rng = Rng::new(seed);
    let mut cuts = 0;
    let started = Instant::now();

    // Within the first second of a fresh data dir: tokens minted at once still verify after the
    // cut (the domain id they are signed for is durable before the first one is answered).
    for n in 0..10 {
        let mut lin = Lineage::new(&format!("fresh-{n}"), fs.path(), n % 2 == 0);
        // Some generate their API key: the key printed once must be the one kept.
        lin.generated_key = n % 3 == 0;
        let mut s = lin.start();
        let run = Duration::from_millis(100 + rng.below(800));
        new_lobby(&s, &lin);
        load_then_kill(&mut s, &lin, run, rng.next());
        let how = cut_kind(&mut rng);
        fs.cut(how);
        cuts += 1;
        let s = lin.start();
        verify(&s, &mut lin, &format!("fresh data dir {n}, cut {how:?} after {run:?}"));
    }

    // Two long lives: cuts under load, and cuts during recovery.
    for life in 0..2 {
        let tag = format!("life-{life}");
        let mut lin = Lineage::new(&tag, fs.path(), life == 0);
        if life == 1 {
            // Small segments: closed and packed all along, under the cuts.
            lin.env.push(("GATEHOUSE_EVENT_SEGMENT_KB", "64".to_string()));
        }
        {
            let s = lin.start();
            let hook = Receiver::start();
            let r = s.post("/v1/webhooks", &json!({"url": hook.url}));
            assert_eq!(r.status, 200, "{}", r.text);
            lin.hook = Some((hook, s.events().len() as u64));
        }
        fs.cut(Cut::Strict);
        cuts += 1;
        for round in 0..18 {
            let mut s = lin.start();
            verify(&s, &mut lin, &format!("{tag} round {round}, before load"));
            new_lobby(&s, &lin);
            let run = Duration::from_millis(300 + rng.below(2200));
            load_then_kill(&mut s, &lin, run, rng.next());
            if round % 5 == 1 {
                // A process crash first: what was written but not synced is still in the page
                // cache, and the restart's recovery reads it; then the power goes.
                lin.start().kill9();
            } else if round % 5 == 4 {
                // A process crash, then the power goes during the recovery that follows it.
                lin.start_and_kill(Duration::from_millis(rng.below(300)));
            }
            let how = cut_kind(&mut rng);
            fs.cut(how);
            cuts += 1;
            if round % 4 == 3 {
                // The power goes again while the server recovers.
                let after = Duration::from_millis(rng.below(400));
                lin.start_and_kill(after);
                let again = cut_kind(&mut rng);
                fs.cut(again);
                cuts += 1;
                eprintln!("{}: cut {again:?} {after:?} into recovery", lin.tag);
            }
            let s = lin.start();
            verify(&s, &mut lin, &format!("{tag} round {round}, cut {how:?} after {run:?}"));
        }
        let s = lin.start();
        verify(&s, &mut lin, &format!("{tag} at the end"));
        if life == 1 {
            let packs = std::fs::read_dir(lin.dir.join("events"))
                .unwrap()
                .filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "pack")))
                .count();
            assert!(packs > 0, "{tag}: no segment was packed under the cuts");
        }
        verify_webhook(&s, &lin);
        let l = lin.ledger.lock().unwrap();
        eprintln!(
            "{}: {} rooms, {} tokens, {} joins, {} bans, {} revocations, {} knocks ({} granted), {} webhooks acknowledged; {} events",
            lin.tag,
            l.rooms.len(),
            l.tokens.len(),
            l.joins.len(),
            l.bans.len(),
            l.revoked.len(),
            l.knocks.len(),
            l.granted.len(),
            l.webhooks.len(),
            lin.served.len()
        );
    }
    let st = fs.stats();
    eprintln!(
        "{cuts} power cuts in {:?}; the file system took back {} unsynced changes; {st:?}",
        started.elapsed(),
        st.dropped
    );
    assert!(cuts >= 50);
}

#[test]
fn needs_root_a_failed_fsync_stops_acknowledgements_until_a_restart() {
    require_fuse();
    let (_tmp, fs) = mount();
    let dir = fs.path().join("data");
    let s = Server::start_in(&dir, &[("GATEHOUSE_SLED_FLUSH_EVERY_MS", "0")]);
    let mut acked = Vec::new();
    for i in 0..20 {
        let name = format!("before-{i}");
        s.create_room(json!({"name": name}));
        acked.push(name);
    }
    // The journal's next fsync fails (and loses what it held), the one after "succeeds".
    fs.fail_fsync("/wal/", 1);
    let r = s.post("/v1/rooms", &json!({"name": "during"}));
    assert_eq!(r.status, 503, "a write whose fsync failed was answered: {}", r.text);
    for i in 0..5 {
        let r = s.post("/v1/rooms", &json!({"name": format!("after-{i}")}));
        assert_eq!(r.status, 503, "a write after a failed fsync was acknowledged: {}", r.text);
    }
    let ready = s.call("GET", "/readyz", None, None);
    assert_eq!(ready.status, 503);
    let why = ready.body["reason"].as_str().unwrap_or_default();
    assert!(
        why.contains("journal fdatasync failed") && why.contains("restart"),
        "readyz does not say why: {}",
        ready.text
    );
    assert!(s.log().contains("fdatasync failed"), "the log does not say why");
    // Reads go on.
    assert_eq!(s.get("/v1/rooms/before-0").status, 200);
    let mut s = s;
    s.kill9();
    fs.cut(Cut::Strict);
    let s = Server::start_in(&dir, &[]);
    assert_eq!(s.call("GET", "/readyz", None, None).status, 200, "no recovery after a failed fsync: {}", s.log());
    for name in &acked {
        assert_eq!(s.get(&format!("/v1/rooms/{name}")).status, 200, "acknowledged room {name} lost");
    }
    let events = s.events();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"].as_u64(), Some(i as u64 + 1), "gap in the events after the failed fsync");
    }
    s.create_room(json!({"name": "after-restart"}));

    // The same with the store's checkpoint: a failed fsync of sled's file must not let the
    // journal go, nor be retried as if nothing happened.
    let mut s = s;
    fs.fail_fsync("/store/db", 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut n = 0;
    loop {
        let r = s.post("/v1/rooms", &json!({"name": format!("ckpt-{n}")}));
        if r.status != 200 {
            assert_eq!(r.status, 503, "{}", r.text);
            break;
        }
        acked.push(format!("ckpt-{n}"));
        n += 1;
        assert!(
            Instant::now() < deadline,
            "writes still acknowledged 20 s after the store's fsync failed; log:\n{}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let ready = s.call("GET", "/readyz", None, None);
    let why = ready.body["reason"].as_str().unwrap_or_default();
    assert!(why.contains("checkpoint failed") && why.contains("fsync"), "readyz does not say why: {}", ready.text);
    s.kill9();
    fs.cut(Cut::Strict);
    let s = Server::start_in(&dir, &[]);
    for name in &acked {
        assert_eq!(
            s.get(&format!("/v1/rooms/{name}")).status,
            200,
            "acknowledged room {name} lost after a failed store fsync"
        );
    }
}
