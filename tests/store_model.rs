//! Model-based store test: random sequences of room, token, join, leave, heartbeat, eject,
//! ban, revoke and clock steps, clean restarts and crash restarts (sled left holding only part
//! of the journal, and part of one batch), applied to the real store and to a plain model.
//! After every step the presence, the counts, the bans and the events match the model's.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use gatehouse::clock::ManualClock;
use gatehouse::events::NewEvent;
use gatehouse::rooms::{Privacy, RoomError};
use gatehouse::sessions::TokenCheck;
use gatehouse::store::{
    CreateRoom, CreateToken, DeleteRoom, Eject, EjectError, Heartbeat, Join, JoinOutcome, Leave, LiftBan, Revoke,
    RoomCursor, Store, StoreOptions, SyncMode, TokenRecord, UpdateRoom,
};
use gatehouse::tokens::Claims;
use rand::{RngExt, SeedableRng};
use serde_json::{json, Map, Value};

const LEASE_MS: i64 = 30_000;
const T0: i64 = 1_800_000_000_000;

#[derive(Debug, Clone, PartialEq)]
struct MRoom {
    private: bool,
    config: Map<String, Value>,
}

impl MRoom {
    fn max(&self) -> u64 {
        self.config.get("max_participants").and_then(Value::as_u64).unwrap_or(200)
    }
    fn exp_ms(&self) -> Option<i64> {
        self.config.get("exp").and_then(Value::as_i64).map(|s| s * 1000)
    }
    fn expired(&self, now: i64) -> bool {
        self.exp_ms().is_some_and(|e| now.div_euclid(1000) * 1000 >= e)
    }
    fn eject_after_ms(&self) -> Option<i64> {
        self.config.get("eject_after_elapsed").and_then(Value::as_i64).map(|s| s * 1000)
    }
    fn eject_at_exp(&self) -> bool {
        self.config.get("eject_at_room_exp").and_then(Value::as_bool) == Some(true)
    }
}

#[derive(Debug, Clone)]
struct MSession {
    room: String,
    user: Option<String>,
    jti: Option<String>,
    joined: i64,
    seen: i64,
    /// The token's own `eje` (then the room's rules do not apply).
    token_eje_ms: Option<i64>,
}

impl MSession {
    fn room_rules(&self) -> bool {
        self.token_eje_ms.is_none()
    }
}

#[derive(Default)]
struct Model {
    rooms: BTreeMap<String, MRoom>,
    /// Rooms whose expiry has fired (and which someone stays in).
    fired: BTreeSet<String>,
    sessions: BTreeMap<String, MSession>,
    bans: BTreeSet<(String, String)>,
    revoked: BTreeSet<String>,
    tokens: BTreeMap<String, Option<String>>,
    /// Event types logged since the last check.
    pending: Vec<String>,
    events: u64,
    now: i64,
}

impl Model {
    fn log(&mut self, kind: &str) {
        self.pending.push(kind.to_string());
        self.events += 1;
    }

    fn present(&self, room: &str) -> usize {
        self.sessions.values().filter(|s| s.room == room).count()
    }

    /// The session's own deadline (token `eje`, else the room's `eject_after_elapsed`).
    fn own_deadline(&self, s: &MSession) -> Option<i64> {
        match s.token_eje_ms {
            Some(ms) => Some(s.joined + ms),
            None => self.rooms.get(&s.room).and_then(MRoom::eject_after_ms).map(|ms| s.joined + ms),
        }
    }

    /// Ends sessions as the store does: ejected (unless a leave or timeout), left, and the
    /// meeting's end (and an expired room's removal) when the last one goes.
    fn end(&mut self, ids: &[String], reason: &str) {
        for id in ids {
            let Some(s) = self.sessions.remove(id) else { continue };
            if !matches!(reason, "left" | "timeout") {
                self.log("participant.ejected");
            }
            self.log("participant.left");
            if self.present(&s.room) == 0 {
                self.log("meeting.ended");
                if self.fired.contains(&s.room) || self.rooms.get(&s.room).is_some_and(|r| r.expired(self.now)) {
                    self.drop_room(&s.room);
                }
            }
        }
    }

    fn remove_room(&mut self, name: &str) {
        let ids: Vec<String> = self.sessions.iter().filter(|(_, s)| s.room == name).map(|(id, _)| id.clone()).collect();
        self.end(&ids, "room_deleted");
        self.drop_room(name);
    }

    /// A room goes, and its bans with it (each logs `ban.removed`).
    fn drop_room(&mut self, name: &str) {
        self.rooms.remove(name);
        self.fired.remove(name);
        let gone: Vec<(String, String)> = self.bans.iter().filter(|(r, _)| r == name).cloned().collect();
        for b in gone {
            self.bans.remove(&b);
            self.log("ban.removed");
        }
    }

    /// Fires every deadline due at `now`, in deadline order, as the store's writer does.
    fn fire(&mut self, now: i64) {
        loop {
            let mut due: Vec<(i64, u8, String)> = Vec::new();
            for (id, s) in &self.sessions {
                due.push((s.seen + LEASE_MS, 0, id.clone()));
                if let Some(at) = self.own_deadline(s) {
                    due.push((at, 1, id.clone()));
                }
            }
            for (name, r) in &self.rooms {
                if let (Some(at), false) = (r.exp_ms(), self.fired.contains(name)) {
                    due.push((at, 2, name.clone()));
                }
            }
            due.retain(|(at, _, _)| *at <= now);
            due.sort();
            let Some((_, kind, id)) = due.into_iter().next() else { return };
            match kind {
                0 => {
                    if now - self.sessions[&id].seen >= LEASE_MS {
                        self.end(&[id], "timeout");
                    } else {
                        unreachable!("a lease is due only once it has run out");
                    }
                }
                1 => self.end(&[id], "elapsed"),
                _ => {
                    self.log("room.expired");
                    let room = self.rooms[&id].clone();
                    let leaving: Vec<String> = self
                        .sessions
                        .iter()
                        .filter(|(_, s)| s.room == id && room.eject_at_exp() && s.room_rules())
                        .map(|(sid, _)| sid.clone())
                        .collect();
                    self.fired.insert(id.clone());
                    self.end(&leaving, "room_expired");
                    if self.present(&id) == 0 && self.rooms.contains_key(&id) {
                        self.drop_room(&id);
                    }
                }
            }
        }
    }
}

fn open(path: &std::path::Path, clock: Arc<ManualClock>) -> Store {
    Store::open(
        StoreOptions {
            sync: SyncMode::Flush,
            public_url: "http://x".into(),
            lease_ms: LEASE_MS,
            background_flush_ms: None,
            cache_bytes: 8 << 20,
            ..StoreOptions::at(path.to_path_buf())
        },
        clock,
    )
    .unwrap()
}

fn random_config(rng: &mut impl rand::Rng, now_s: i64) -> Map<String, Value> {
    let mut m = Map::new();
    if rng.random_bool(0.6) {
        m.insert("max_participants".into(), json!(rng.random_range(1..4)));
    }
    if rng.random_bool(0.3) {
        m.insert("exp".into(), json!(now_s + rng.random_range(5..80)));
        if rng.random_bool(0.5) {
            m.insert("eject_at_room_exp".into(), json!(true));
        }
    }
    if rng.random_bool(0.2) {
        m.insert("eject_after_elapsed".into(), json!(rng.random_range(5..60)));
    }
    m
}

/// Makes the writer look at the clock and waits until it has (a no-op command after the tick).
async fn settle(store: &Store) {
    store.tick().await;
    store.submit_wait(Heartbeat { session_id: "none".into() }).await.unwrap();
}

async fn check(store: &Store, model: &mut Model, ordered: bool, seen: &mut u64) {
    let live = store.live();
    let mut got: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (room, _) in live.rooms() {
        for e in live.present_in(room) {
            got.entry(room.to_string()).or_default().insert(e.session.id.clone());
        }
    }
    let mut want: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (id, s) in &model.sessions {
        want.entry(s.room.clone()).or_default().insert(id.clone());
    }
    assert_eq!(got, want, "presence");
    assert_eq!(store.session_count(), model.sessions.len());
    let listed: BTreeMap<String, MRoom> = store
        .list_rooms(10_000, &RoomCursor::First)
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|r| (r.name.clone(), MRoom { private: r.privacy == Privacy::Private, config: r.config }))
        .collect();
    assert_eq!(listed, model.rooms, "rooms");
    assert_eq!(store.room_count().unwrap(), model.rooms.len() as u64);
    let own: usize = model.sessions.values().filter(|s| model.own_deadline(s).is_some()).count();
    let rooms_pending = model.rooms.iter().filter(|(n, r)| r.exp_ms().is_some() && !model.fired.contains(*n)).count();
    assert_eq!(
        store.timer_count(),
        model.sessions.len() + own + rooms_pending,
        "deadlines: sessions {:?} rooms {:?} fired {:?}",
        model.sessions,
        model.rooms,
        model.fired
    );
    for (room, _) in &model.rooms {
        let bans: BTreeSet<(String, String)> =
            store.bans(room, i64::MAX - 1).unwrap().into_iter().map(|(u, _)| (room.clone(), u)).collect();
        let want: BTreeSet<(String, String)> = model.bans.iter().filter(|(r, _)| r == room).cloned().collect();
        assert_eq!(bans, want, "bans of {room}");
    }
    for (jti, room) in &model.tokens {
        assert_eq!(store.token(jti).unwrap().map(|t| t.room), Some(room.clone()));
    }
    let page = store.events(*seen, 100_000, None).unwrap();
    let mut types: Vec<String> = page.events.iter().map(|e| e.kind.to_string()).collect();
    for (i, e) in page.events.iter().enumerate() {
        assert_eq!(e.seq, *seen + i as u64 + 1, "contiguous seqs");
    }
    let mut expect = std::mem::take(&mut model.pending);
    if !ordered {
        types.sort();
        expect.sort();
    }
    if types != expect {
        for e in &page.events {
            println!("store event {}", e.envelope);
        }
    }
    assert_eq!(types, expect, "events");
    assert_eq!(store.durable_seq(), model.events, "head");
    *seen = model.events;
}

async fn run(seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("store");
    let clock = Arc::new(ManualClock::new(T0));
    let mut store = open(&path, clock.clone());
    let mut m = Model::default();
    let mut seen = 0u64;
    let names = ["a", "b", "c"];
    let users = ["u1", "u2", "u3"];
    let mut now = T0;
    for step in 0..350 {
        now += 1000;
        clock.set_ms(now);
        m.now = now;
        settle(&store).await;
        m.fire(now);
        check(&store, &mut m, false, &mut seen).await;
        let name = names[rng.random_range(0..names.len())].to_string();
        let mut ordered = true;
        let op = rng.random_range(0..100);
        println!(
            "step {step} t={} op {op} room {name} sessions {:?}",
            (now - T0) / 1000,
            m.sessions
                .iter()
                .map(|(id, s)| format!(
                    "{}:{}:j{}:s{}:e{:?}",
                    &id[..4],
                    s.room,
                    (s.joined - T0) / 1000,
                    (s.seen - T0) / 1000,
                    m.own_deadline(s).map(|d| (d - T0) / 1000)
                ))
                .collect::<Vec<_>>()
        );
        match op {
            0..=11 => {
                let config = random_config(&mut rng, now / 1000);
                let private = rng.random_bool(0.4);
                let privacy = if private { Privacy::Private } else { Privacy::Public };
                let out = store
                    .submit(CreateRoom { name: Some(name.clone()), privacy, config: config.clone() })
                    .await
                    .unwrap();
                let taken = m.rooms.get(&name).is_some_and(|r| !r.expired(now));
                if taken {
                    assert!(matches!(out, Err(RoomError::NameTaken(_))), "{out:?}");
                } else {
                    assert!(out.is_ok(), "{out:?}");
                    if m.rooms.contains_key(&name) {
                        m.remove_room(&name);
                    }
                    m.rooms.insert(name, MRoom { private, config });
                    m.log("room.created");
                }
            }
            12..=15 => {
                let patch = {
                    let mut p = Map::new();
                    p.insert("max_participants".into(), json!(rng.random_range(1..4)));
                    p
                };
                let out =
                    store.submit(UpdateRoom { name: name.clone(), privacy: None, patch: patch.clone() }).await.unwrap();
                match m.rooms.get_mut(&name).filter(|r| !r.expired(now)) {
                    None => assert!(matches!(out, Err(RoomError::NotFound)), "{out:?}"),
                    Some(r) => {
                        assert!(out.is_ok());
                        r.config.extend(patch);
                        m.log("room.updated");
                    }
                }
            }
            16..=18 => {
                let out = store.submit(DeleteRoom { name: name.clone(), by: "test".into() }).await.unwrap();
                if m.rooms.contains_key(&name) {
                    assert!(out.is_ok());
                    m.remove_room(&name);
                    m.log("room.deleted");
                } else {
                    assert!(matches!(out, Err(RoomError::NotFound)));
                }
            }
            19..=48 => {
                // A join: tokenless, or with a token (for this room or another, maybe revoked).
                let with_token = rng.random_bool(0.7);
                let user = users[rng.random_range(0..users.len())].to_string();
                let token_room = if rng.random_bool(0.9) { name.clone() } else { "elsewhere".to_string() };
                let eje = rng.random_bool(0.2).then(|| rng.random_range(5..40u64));
                let jti = uuid::Uuid::now_v7().to_string();
                let reuse = m.revoked.iter().next().cloned().filter(|_| rng.random_bool(0.2));
                let jti = reuse.unwrap_or(jti);
                let token = if with_token {
                    let claims = Claims {
                        room: Some(token_room.clone()),
                        user_id: Some(user.clone()),
                        eject_after_elapsed: eje,
                        jti: Some(jti.clone()),
                        ..Default::default()
                    };
                    TokenCheck::Valid { claims: Box::new(claims), token_id: jti.clone() }
                } else {
                    TokenCheck::None
                };
                let sid = uuid::Uuid::new_v4().to_string();
                let out = store
                    .submit(Join {
                        room: name.clone(),
                        token,
                        user_name: None,
                        session_id: sid.clone(),
                        secret_digest: [0; 32],
                        leeway_s: 0,
                    })
                    .await
                    .unwrap();
                let room = m.rooms.get(&name).cloned();
                let refusal = match &room {
                    None => Some("no-room"),
                    Some(r) if r.expired(now) => Some("exp-room"),
                    Some(r) if !with_token && r.private => Some("not-allowed"),
                    Some(_) if with_token && token_room != name => Some("not-allowed"),
                    Some(_) if with_token && m.revoked.contains(&jti) => Some("not-allowed"),
                    Some(_) if with_token && m.bans.contains(&(name.clone(), user.clone())) => Some("ejected"),
                    Some(r) if m.present(&name) as u64 >= r.max() => Some("meeting-full"),
                    Some(_) => None,
                };
                match (refusal, out) {
                    (Some(err), JoinOutcome::Denied(d)) => {
                        assert_eq!(d.error, err);
                        m.log("participant.join-denied");
                    }
                    (None, JoinOutcome::Joined(_)) => {
                        if m.present(&name) == 0 {
                            m.log("meeting.started");
                        }
                        m.sessions.insert(
                            sid,
                            MSession {
                                room: name,
                                user: with_token.then_some(user),
                                jti: with_token.then_some(jti),
                                joined: now,
                                seen: now,
                                token_eje_ms: eje.filter(|_| with_token).map(|s| s as i64 * 1000),
                            },
                        );
                        m.log("participant.joined");
                    }
                    (want, got) => panic!("join: model says {want:?}, store says {got:?}"),
                }
            }
            49..=56 => {
                let Some(id) = pick(&mut rng, &m.sessions) else { continue };
                assert!(store.submit(Leave { session_id: id.clone() }).await.unwrap());
                m.end(&[id], "left");
            }
            57..=66 => {
                let Some(id) = pick(&mut rng, &m.sessions) else { continue };
                assert!(store.submit(Heartbeat { session_id: id.clone() }).await.unwrap().is_some());
                if let Some(s) = m.sessions.get_mut(&id) {
                    s.seen = now;
                }
            }
            67..=74 => {
                let ban = rng.random_bool(0.5);
                let user_ids: Vec<String> = if rng.random_bool(0.5) {
                    vec![users[rng.random_range(0..users.len())].to_string()]
                } else {
                    vec![]
                };
                let ids: Vec<String> =
                    m.sessions.iter().filter(|(_, s)| s.room == name).map(|(id, _)| id.clone()).take(1).collect();
                let ejected = store
                    .submit(Eject {
                        room: name.clone(),
                        ids: ids.clone(),
                        user_ids: user_ids.clone(),
                        ban,
                        ban_until_s: None,
                        by: "api:test".into(),
                        by_token: false,
                        max_bans: 10_000,
                    })
                    .await
                    .unwrap();
                let mut targets: Vec<String> = m
                    .sessions
                    .iter()
                    .filter(|(id, s)| {
                        s.room == name && (ids.contains(id) || s.user.as_ref().is_some_and(|u| user_ids.contains(u)))
                    })
                    .map(|(id, _)| id.clone())
                    .collect();
                targets.sort();
                // Refused calls change nothing: the room is gone, or a ban could not hold someone.
                if !m.rooms.get(&name).is_some_and(|r| !r.expired(now)) {
                    assert_eq!(ejected, Err(EjectError::NoRoom));
                    continue;
                }
                let anonymous = targets.iter().find(|id| m.sessions[*id].user.is_none()).cloned();
                if let (true, Some(id)) = (ban, anonymous) {
                    assert_eq!(ejected, Err(EjectError::Anonymous(id)));
                    continue;
                }
                assert_eq!(ejected, Ok(targets.clone()));
                let target_sessions: Vec<MSession> = targets.iter().map(|id| m.sessions[id].clone()).collect();
                m.end(&targets, if ban { "banned" } else { "api" });
                if ban {
                    let banned: BTreeSet<String> =
                        user_ids.iter().cloned().chain(target_sessions.iter().filter_map(|s| s.user.clone())).collect();
                    for u in banned {
                        m.bans.insert((name.clone(), u));
                        m.log("ban.created");
                    }
                    for s in target_sessions.iter().filter(|s| s.jti.is_some()) {
                        m.revoked.insert(s.jti.clone().unwrap_or_default());
                        m.log("meeting-token.revoked");
                    }
                }
            }
            75..=78 => {
                let Some((room, user)) = m.bans.iter().next().cloned() else { continue };
                assert!(store.submit(LiftBan { room: room.clone(), user_id: user.clone() }).await.unwrap());
                m.bans.remove(&(room, user));
                m.log("ban.removed");
            }
            79..=82 => {
                let Some(jti) = m.sessions.values().find_map(|s| s.jti.clone()) else { continue };
                let ejected = store
                    .submit(Revoke::Token { token_id: jti.clone(), exp_ms: None, room: None, by: "api:test".into() })
                    .await
                    .unwrap();
                let mut targets: Vec<String> = m
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.jti.as_deref() == Some(&jti))
                    .map(|(id, _)| id.clone())
                    .collect();
                targets.sort();
                let mut got = ejected.clone();
                got.sort();
                assert_eq!(got, targets);
                m.revoked.insert(jti);
                m.log("meeting-token.revoked");
                m.end(&targets, "token_revoked");
            }
            83..=86 => {
                let jti = uuid::Uuid::now_v7().to_string();
                let room = rng.random_bool(0.7).then(|| name.clone());
                let record = TokenRecord {
                    jti: jti.clone(),
                    kid: "k".into(),
                    room: room.clone(),
                    user_id: None,
                    user_name: None,
                    is_owner: false,
                    nbf: None,
                    exp: None,
                    created_ms: now,
                };
                store
                    .submit(CreateToken {
                        record,
                        event: NewEvent::new(
                            gatehouse::events::EventKind::MeetingTokenCreated,
                            &json!({"jti": jti}),
                            None,
                        )
                        .unwrap(),
                    })
                    .await
                    .unwrap();
                m.tokens.insert(jti, room);
                m.log("meeting-token.created");
            }
            87..=93 => {
                // Time passes: deadlines fire (leases, ejections, expiries).
                now += rng.random_range(1..40) * 1000;
                clock.set_ms(now);
                m.now = now;
                settle(&store).await;
                m.fire(now);
                ordered = false;
            }
            94..=96 => {
                store.close().await;
                drop(store);
                store = open(&path, clock.clone());
                restarted(&mut m, now);
            }
            _ => {
                // A crash: sled keeps only part of what the journal has, part of one batch too.
                let (batches, trees) = (rng.random_range(0..4), rng.random_range(0..4));
                store.close_as_if_crashed(batches, trees).await;
                drop(store);
                store = open(&path, clock.clone());
                restarted(&mut m, now);
            }
        }
        check(&store, &mut m, ordered, &mut seen).await;
        let _ = step;
    }
    store.close().await;
}

/// After a restart every session has a fresh lease.
fn restarted(m: &mut Model, now: i64) {
    for s in m.sessions.values_mut() {
        s.seen = now;
    }
}

fn pick(rng: &mut impl rand::Rng, sessions: &BTreeMap<String, MSession>) -> Option<String> {
    if sessions.is_empty() {
        return None;
    }
    sessions.keys().nth(rng.random_range(0..sessions.len())).cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_behaves_like_the_model_across_restarts_and_crashes() {
    for seed in 0..6 {
        run(seed).await;
    }
}
