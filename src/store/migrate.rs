//! Schema 1 → schema 2, in place, on the first open by this build (`gatehouse migrate` runs
//! the same thing on its own).
//!
//! Schema 1 kept events in sled, three session indexes, lease timers and a reverse timer
//! index, and joined key parts with `\0`. Schema 2 moves the events to segment files, keeps
//! sessions as one record each (indexes in memory), keeps only room and ban deadlines as rows,
//! and length-prefixes key parts. Rooms, room indexes, tokens and webhooks are unchanged.
//!
//! Crash-safe: schema 1's data is only read until the new trees and the event log are written
//! and synced; then `schema` becomes 2; only then are schema 1's trees dropped (a leftover is
//! dropped at the next open). An interrupted migration starts over.
//!
//! Must not: change a tree schema 2 shares with schema 1 other than `meta`.

use std::path::Path;

use super::eventlog::EventLog;
use super::journal::LoggedEvent;
use super::keys;
use super::records::{self, EventRecord, SessionRecord, SessionRecordV1};
use super::state::Tree;
use super::StoreError;

/// Schema 1's trees, in the order its journal numbered them.
pub const V1_TREES: [&str; 17] = [
    "meta",
    "rooms",
    "rooms_by_id",
    "rooms_by_created",
    "tokens",
    "tokens_by_room",
    "events",
    "sessions",
    "sessions_by_room",
    "sessions_by_token",
    "sessions_by_user",
    "bans",
    "revocations",
    "timers",
    "timers_by_key",
    "webhooks",
    "attempts",
];

/// Schema 1's trees that schema 2 no longer has.
const V1_ONLY: [&str; 11] = [
    "tokens_by_room",
    "events",
    "sessions",
    "sessions_by_room",
    "sessions_by_token",
    "sessions_by_user",
    "bans",
    "revocations",
    "timers",
    "timers_by_key",
    "attempts",
];

const V1_TIMER_EJECT: u8 = 2;
const V1_TIMER_ROOM_EXP: u8 = 3;
const V1_TIMER_BAN: u8 = 4;

/// What a migration moved.
#[derive(Debug, Default, Clone, Copy)]
pub struct Report {
    pub journal_replayed: u64,
    pub events: u64,
    pub sessions: u64,
    pub rekeyed: u64,
}

/// Migrates the store in `data_dir` (opened as `db`) from schema 1.
pub fn run(db: &sled::Db, data_dir: &Path) -> Result<Report, StoreError> {
    let started = std::time::Instant::now();
    tracing::info!("migrating the store from schema 1 to schema 2 (events leave sled); this runs once");
    let v1 = |name: &str| db.open_tree(name);
    let mut report =
        Report { journal_replayed: replay_v1_journal(db, &data_dir.join("journal"))?, ..Default::default() };
    let tree = |t: Tree| db.open_tree(t.name());
    for t in Tree::ALL {
        if t.name().starts_with("v2/") {
            tree(t)?.clear()?;
        }
    }
    // Events → segment files.
    let events_dir = data_dir.join("events");
    let _ = std::fs::remove_dir_all(&events_dir);
    let log = EventLog::open(&events_dir, 1, super::eventlog::SEGMENT_BYTES)?;
    let mut chunk: Vec<LoggedEvent> = Vec::with_capacity(4096);
    let mut oldest = None;
    for item in v1("events")?.iter() {
        let (k, v) = item?;
        let seq = keys::u64_of(&k).ok_or_else(|| corrupt("events", &k, "key is not a u64"))?;
        let rec: EventRecord = records::decode("events", &k, records::EVENT_V1, &v)?;
        let room = serde_json::from_str::<serde_json::Value>(&rec.envelope)
            .ok()
            .and_then(|env| env["payload"]["room"].as_str().map(String::from));
        oldest.get_or_insert(seq);
        chunk.push(LoggedEvent { seq, ts_ms: rec.ts_ms, kind: rec.kind, room, envelope: rec.envelope, session: None });
        if chunk.len() == chunk.capacity() {
            report.events += chunk.len() as u64;
            log.append(&chunk)?;
            chunk.clear();
        }
    }
    report.events += chunk.len() as u64;
    log.append(&chunk)?;
    log.sync()?;
    let meta = v1("meta")?;
    let stored_next = meta.get(keys::META_NEXT_SEQ)?.and_then(|v| keys::u64_of(&v)).unwrap_or(1);
    let next_seq = stored_next.max(log.last() + 1);
    // Sessions: one record each, with their own ejection deadline from the reverse index.
    let by_key = v1("timers_by_key")?;
    for item in v1("sessions")?.iter() {
        let (k, v) = item?;
        let old: SessionRecordV1 = records::decode("sessions", &k, records::SESSION_V1, &v)?;
        let eject_timer_ms = by_key
            .get([&[V1_TIMER_EJECT], old.id.as_bytes()].concat())?
            .and_then(|d| <[u8; 8]>::try_from(d.as_ref()).ok().map(i64::from_be_bytes));
        let new = SessionRecord {
            id: old.id,
            secret_digest: old.secret_digest,
            room: old.room,
            user_id: old.user_id,
            user_name: old.user_name,
            owner: old.owner,
            token_id: old.token_id,
            token_iat: old.token_iat,
            token_exp: old.token_exp,
            joined_ms: old.joined_ms,
            eject_at_ms: old.eject_at_ms,
            eject_reason: old.eject_reason,
            eject_timer_ms,
            permissions_json: old.permissions_json,
            meeting_id: old.meeting_id,
            meeting_start_ms: old.meeting_start_ms,
            room_rules: old.room_rules,
            waiting: false,
        };
        tree(Tree::Sessions)?.insert(k, records::encode(records::SESSION_V2, &new)?)?;
        report.sessions += 1;
    }
    // Keys with `\0`-joined parts: room names never contain `\0`, so the first one splits.
    let split = |k: &[u8]| -> Option<(String, String)> {
        let at = k.iter().position(|b| *b == 0)?;
        Some((String::from_utf8(k[..at].to_vec()).ok()?, String::from_utf8(k[at + 1..].to_vec()).ok()?))
    };
    for item in v1("tokens_by_room")?.iter() {
        let (k, v) = item?;
        let (room, jti) = split(&k).ok_or_else(|| corrupt("tokens_by_room", &k, "no separator"))?;
        let room = (!room.is_empty()).then_some(room);
        tree(Tree::TokensByRoom)?.insert(keys::token_room(room.as_deref(), &jti), v)?;
        report.rekeyed += 1;
    }
    for item in v1("bans")?.iter() {
        let (k, v) = item?;
        let (room, user) = split(&k).ok_or_else(|| corrupt("bans", &k, "no separator"))?;
        tree(Tree::Bans)?.insert(keys::ban(&room, &user), v)?;
        report.rekeyed += 1;
    }
    for item in v1("revocations")?.iter() {
        let (k, v) = item?;
        let key = match k.first() {
            Some(b'u') => {
                let (room, user) = split(&k[1..]).ok_or_else(|| corrupt("revocations", &k, "no separator"))?;
                keys::revoke_user(&room, &user)
            }
            _ => k.to_vec(),
        };
        tree(Tree::Revocations)?.insert(key, v)?;
        report.rekeyed += 1;
    }
    for item in v1("timers")?.iter() {
        let (k, _) = item?;
        let (Some(deadline), Some(kind), Some(id)) = (k.get(..8), k.get(8), k.get(9..)) else {
            return Err(corrupt("timers", &k, "too short"));
        };
        let deadline = i64::try_from(keys::u64_of(deadline).unwrap_or(0)).unwrap_or(0);
        let id = String::from_utf8(id.to_vec()).map_err(|_| corrupt("timers", &k, "id is not UTF-8"))?;
        let key = match *kind {
            V1_TIMER_ROOM_EXP => keys::timer(deadline, keys::TIMER_ROOM_EXP, &[&id]),
            V1_TIMER_BAN => {
                let (room, user) = split(id.as_bytes()).ok_or_else(|| corrupt("timers", &k, "no separator"))?;
                keys::timer(deadline, keys::TIMER_BAN, &[&room, &user])
            }
            // Lease and session ejection deadlines are derived from the sessions now.
            _ => continue,
        };
        tree(Tree::Timers)?.insert(key, vec![])?;
        report.rekeyed += 1;
    }
    for item in v1("attempts")?.iter() {
        let (k, v) = item?;
        let at = k.iter().position(|b| *b == 0).ok_or_else(|| corrupt("attempts", &k, "no separator"))?;
        let webhook = String::from_utf8(k[..at].to_vec()).map_err(|_| corrupt("attempts", &k, "not UTF-8"))?;
        let rest = &k[at + 1..];
        let (Some(ms), Some(seq)) = (rest.get(..8), rest.get(8..16)) else {
            return Err(corrupt("attempts", &k, "too short"));
        };
        let ms = i64::from_be_bytes(ms.try_into().unwrap_or_default());
        let seq = u64::from_be_bytes(seq.try_into().unwrap_or_default());
        tree(Tree::Attempts)?.insert(keys::attempt(&webhook, ms, seq), v)?;
        report.rekeyed += 1;
    }
    meta.insert(keys::META_NEXT_SEQ, &next_seq.to_be_bytes())?;
    meta.insert(keys::META_APPLIED_LSN, &0u64.to_be_bytes())?;
    meta.insert(keys::META_EVENTS_OLDEST, &oldest.unwrap_or(next_seq).to_be_bytes())?;
    let sled_dir = super::applier::SledDir::open(&data_dir.join("store"))?;
    super::applier::checkpoint_sled(db, &sled_dir, true)?;
    // The point of no return.
    meta.insert(keys::META_SCHEMA, &2u32.to_be_bytes())?;
    super::applier::checkpoint_sled(db, &sled_dir, true)?;
    drop_v1(db, data_dir)?;
    tracing::info!(
        millis = started.elapsed().as_millis() as u64,
        events = report.events,
        sessions = report.sessions,
        rekeyed = report.rekeyed,
        journal_replayed = report.journal_replayed,
        "migration to schema 2 done"
    );
    Ok(report)
}

/// Drops schema 1's trees and journal (after the migration, or left over from one that was
/// interrupted after its point of no return).
pub fn drop_v1(db: &sled::Db, data_dir: &Path) -> Result<(), StoreError> {
    for name in V1_ONLY {
        if db.tree_names().iter().any(|n| n.as_ref() == name.as_bytes()) {
            db.drop_tree(name)?;
        }
    }
    let dir = data_dir.join("journal");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|e| StoreError::Setup(format!("removing schema 1's journal: {e}")))?;
    }
    Ok(())
}

fn corrupt(tree: &'static str, key: &[u8], why: &str) -> StoreError {
    StoreError::Corrupt { tree, key: keys::printable(key), why: why.into() }
}

/// Schema 1's journal entry.
#[derive(serde::Deserialize)]
struct V1Entry {
    first_seq: u64,
    #[allow(dead_code)] // part of the format; recovery only needs first_seq
    last_seq: u64,
    ops: Vec<(u8, Vec<u8>, Option<Vec<u8>>)>,
}

/// Schema 1's recovery: entries whose events sled lacks are applied to schema 1's trees.
fn replay_v1_journal(db: &sled::Db, dir: &Path) -> Result<u64, StoreError> {
    let files = super::journal::list(dir)?;
    if files.is_empty() {
        return Ok(0);
    }
    let trees: Vec<sled::Tree> = V1_TREES.iter().map(|t| db.open_tree(t)).collect::<Result<_, _>>()?;
    let have = match trees[6].last()? {
        Some((k, _)) => keys::u64_of(&k).unwrap_or(0),
        None => 0,
    };
    let mut replayed = 0;
    for (_, path) in files {
        let (recs, _) = super::journal::read_file(&path)?;
        for r in recs {
            let e: V1Entry = records::decode("journal", path.to_string_lossy().as_bytes(), 1, &r)?;
            if e.first_seq <= have {
                continue;
            }
            for (t, k, v) in e.ops {
                let tree = trees.get(usize::from(t)).ok_or_else(|| corrupt("journal", &k, "unknown tree"))?;
                match v {
                    Some(v) => tree.insert(k, v)?,
                    None => tree.remove(k)?,
                };
            }
            replayed += 1;
        }
    }
    Ok(replayed)
}
