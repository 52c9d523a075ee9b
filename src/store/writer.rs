//! The one writer and group commit (ARCHITECTURE.md, invariants 1 and 2).
//!
//! A dedicated thread takes commands in arrival order. Each command runs its checks against the
//! current trees (it is the only writer, so what it reads cannot change under it), appends its
//! write set (state change *and* events) to the journal, then applies it to sled in one
//! transaction. Commands that arrive while a sync is running queue up and share the next one:
//! after each batch the journal is synced once, then the durable head advances, replies go
//! out, and event readers wake. Every few seconds the journal is rotated and the closed file
//! handed to the checkpointer thread, which flushes sled and deletes what sled now covers.
//!
//! Must not: do anything with side effects inside a transaction closure (sled may re-run it);
//! the closure only replays a prepared write set.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::{Map, Value};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use tokio::sync::{mpsc, oneshot, watch};

use super::journal::{self, Journal};
use super::records::{self, EventRecord, TokenRecord};
use super::{keys, room_from_record, room_to_record, StoreError, SyncMode, Tree, Trees};
use crate::clock::SharedClock;
use crate::events::{self, NewEvent};
use crate::rooms::{self, Privacy, Room, RoomError};
use crate::sessions::{Denial, Session};

pub use super::participants::{EjectRequest, JoinRequest, RevokeRequest};

/// Most commands applied before one journal sync.
const MAX_BATCH: usize = 1024;
/// The journal is rotated (and sled checkpointed) when its file passes this size...
const ROTATE_BYTES: u64 = 16 << 20;
/// ...or this long after the last rotation, if anything was written.
const ROTATE_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// A mutation. Inputs are already validated by the domain module; the writer runs the checks
/// that depend on current state.
#[derive(Debug)]
pub enum Command {
    CreateRoom {
        name: Option<String>,
        privacy: Privacy,
        config: Map<String, Value>,
    },
    /// `patch` is validated; `null` values remove properties.
    UpdateRoom {
        name: String,
        privacy: Option<Privacy>,
        patch: Map<String, Value>,
    },
    /// Deletes the room and ejects everyone present (reason `room_deleted`); `by` names the caller.
    DeleteRoom {
        name: String,
        by: String,
    },
    Join(Box<JoinRequest>),
    Leave {
        session_id: String,
    },
    /// Extends a session's lease in memory only: no event, no journal record, no sync.
    Heartbeat {
        session_id: String,
    },
    Eject(Box<EjectRequest>),
    LiftBan {
        room: String,
        user_id: String,
    },
    Revoke(Box<RevokeRequest>),
    /// A deadline that came due. It re-checks current state, so firing twice is harmless.
    FireTimer {
        deadline_ms: i64,
        kind: u8,
        id: String,
    },
    CreateToken {
        record: TokenRecord,
        event: NewEvent,
    },
    CreateWebhook(Box<super::WebhookRecord>),
    UpdateWebhook {
        id: String,
        patch: super::WebhookPatch,
    },
    DeleteWebhook {
        id: String,
    },
    ReplayWebhook {
        id: String,
        from_seq: u64,
    },
    /// A delivery worker's report; dropped if the cursor moved meanwhile.
    WebhookProgress {
        id: String,
        expect_cursor: u64,
        delivery: super::Delivery,
    },
    /// Housekeeping: purge at most this many dead records of each kind.
    Purge {
        limit: usize,
    },
    /// Housekeeping: drop the oldest events the retention rules allow (one chunk).
    Compact(super::Retention),
    /// Writes a consistent backup of every tree (plus the given data-dir files) to the sink.
    /// Writes wait meanwhile: the writer is busy copying.
    Backup {
        sink: super::BackupSink,
        files: Vec<(&'static str, Vec<u8>)>,
    },
    /// Flush, answer, and stop the writer.
    Shutdown,
    /// Test builds only: the writer stops for this long, as if a dependency hung.
    #[cfg(feature = "test-clock")]
    Freeze {
        ms: u64,
    },
}

/// What a command did. Domain refusals are values, not errors.
#[derive(Debug)]
pub enum Outcome {
    Room(Room),
    RoomDeleted(String),
    TokenRecorded,
    Refused(RoomError),
    Joined(Box<Session>),
    JoinDenied(Denial),
    SessionEnded,
    NoSession,
    Heartbeat {
        lease_until_ms: i64,
    },
    Ejected(Vec<String>),
    BanLifted(bool),
    Revoked {
        ejected: Vec<String>,
    },
    Fired(usize),
    Purged(super::PurgeReport),
    BackedUp(u64),
    Webhook(Box<super::WebhookRecord>),
    /// A worker's report arrived after the cursor or state was changed by the API: not applied.
    StaleWebhookReport(Box<super::WebhookRecord>),
    NoWebhook,
    Stopped,
}

pub(super) struct Job {
    pub cmd: Command,
    pub reply: oneshot::Sender<Result<Outcome, StoreError>>,
}

pub(super) struct WriterInit {
    pub trees: Trees,
    pub next_seq: u64,
    pub room_count: u64,
    pub domain8: String,
    pub journal: Journal,
    pub sync: SyncMode,
    /// Closed journal file numbers go to the checkpointer.
    pub checkpoints: std::sync::mpsc::Sender<u64>,
    pub public_url: String,
    pub clock: SharedClock,
    pub durable: watch::Sender<u64>,
    pub writable: Arc<AtomicBool>,
    /// Presence lease length.
    pub lease_ms: i64,
    /// Woken whenever timers are written, so the deadline task re-reads the earliest one.
    pub timers_changed: Arc<tokio::sync::Notify>,
    /// Sends a new value whenever webhook configuration or state changes.
    pub webhooks_changed: Arc<watch::Sender<u64>>,
    pub stats: Arc<super::StoreStats>,
}

/// Who is in a room right now (the writer's own bookkeeping, rebuilt from `sessions` at start).
#[derive(Debug, Clone)]
pub(super) struct RoomLive {
    pub count: u64,
    pub meeting_id: String,
    pub start_ms: i64,
}

pub(super) struct Writer {
    pub(super) s: WriterInit,
    /// Live session count and meeting per room: capacity checks without scans.
    pub(super) live: std::collections::HashMap<String, RoomLive>,
    /// Last sign of life per session (join, heartbeat, open stream). Memory only: after a
    /// restart every live session starts with a fresh lease.
    pub(super) leases: std::collections::HashMap<String, i64>,
    /// A sled write or a journal sync failed after the journal took a record: the in-memory
    /// state can no longer be trusted, so every later command answers 503 until a restart
    /// (whose recovery replays the journal).
    poisoned: Option<String>,
    last_rotation: std::time::Instant,
    /// Commands committed since the last journal sync.
    unsynced: bool,
}

/// Staged writes of one command: replayed verbatim inside the transaction.
/// A write set without events (a lease timer moved) is "soft": applied to sled without a
/// journal record, because losing it in a crash changes nothing (leases restart fresh).
#[derive(Default)]
pub(super) struct WriteSet {
    ops: Vec<(Tree, Vec<u8>, Option<Vec<u8>>)>,
    events: Vec<NewEvent>,
    pub(super) room_delta: i64,
    /// Rooms this write set removes (so a tombstone is not removed twice).
    pub(super) removed_rooms: BTreeSet<String>,
    /// In-memory presence changes, applied only once the write set is committed.
    pub(super) live: Vec<LiveChange>,
    timers_touched: bool,
    /// Webhook configuration or state changed: the delivery manager reloads.
    pub(super) webhooks_touched: bool,
}

#[derive(Debug)]
pub(super) enum LiveChange {
    Joined { room: String, session_id: String, meeting_id: String, start_ms: i64, at_ms: i64 },
    Left { room: String, session_id: String },
}

impl WriteSet {
    pub(super) fn put(&mut self, t: Tree, k: impl Into<Vec<u8>>, v: Vec<u8>) {
        self.timers_touched |= t == Tree::Timers;
        self.ops.push((t, k.into(), Some(v)));
    }

    pub(super) fn del(&mut self, t: Tree, k: impl Into<Vec<u8>>) {
        self.ops.push((t, k.into(), None));
    }

    pub(super) fn event(&mut self, kind: &'static str, payload: Value) {
        self.events.push(NewEvent::new(kind, payload));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.events.is_empty()
    }
}

impl Writer {
    pub fn new(s: WriterInit) -> Result<Writer, StoreError> {
        let (live, leases) = super::participants::rebuild_presence(&s.trees, s.clock.now_ms())?;
        Ok(Writer { s, live, leases, poisoned: None, last_rotation: std::time::Instant::now(), unsynced: false })
    }

    /// The writer loop: take a batch, apply each command, sync the journal once, answer everyone.
    pub fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            let stop = batch.iter().any(|j| matches!(j.cmd, Command::Shutdown));
            let results: Vec<_> = batch.iter_mut().map(|j| self.apply(&mut j.cmd)).collect();
            let sync_started = std::time::Instant::now();
            let synced = self.sync();
            self.s.stats.sync_seconds.observe(sync_started.elapsed().as_secs_f64());
            self.s.stats.batch_size.observe(batch.len() as f64);
            for (job, res) in batch.into_iter().zip(results) {
                let answer = match (&synced, res) {
                    (Ok(()), r) => r,
                    (Err(e), _) => Err(StoreError::Unavailable(e.clone())),
                };
                let _ = job.reply.send(answer);
            }
            if stop {
                break;
            }
            self.maybe_rotate(false);
        }
        // Every sender is gone or Shutdown arrived: hand the last file to the checkpointer.
        let _ = self.sync();
        self.maybe_rotate(true);
    }

    /// Makes the batch durable (journal `fdatasync`, unless `--sync flush`), then publishes the new head.
    fn sync(&mut self) -> Result<(), String> {
        if let Some(why) = &self.poisoned {
            return Err(why.clone());
        }
        if self.unsynced && self.s.sync == SyncMode::Fdatasync {
            if let Err(e) = self.s.journal.sync() {
                self.poison(e.clone());
                return Err(e);
            }
        }
        self.unsynced = false;
        self.s.durable.send_replace(self.s.next_seq - 1);
        Ok(())
    }

    fn poison(&mut self, why: String) {
        tracing::error!(error = %why, "the store cannot write; refusing writes until restart (recovery replays the journal)");
        self.s.writable.store(false, Ordering::SeqCst);
        self.poisoned = Some(why);
    }

    /// Starts a new journal file when the current one is big or old, and lets the checkpointer
    /// fold the closed one into sled.
    fn maybe_rotate(&mut self, force: bool) {
        let len = self.s.journal.len();
        let due = len >= ROTATE_BYTES || (len > 0 && self.last_rotation.elapsed() >= ROTATE_EVERY);
        if self.poisoned.is_some() || !(due || (force && len > 0)) {
            return;
        }
        // The counter is also recoverable from the last event; storing it keeps that true after compaction.
        let _ = self.s.trees.get(Tree::Meta).insert(keys::META_NEXT_SEQ, &self.s.next_seq.to_be_bytes());
        match self.s.journal.rotate() {
            Ok(closed) => {
                self.last_rotation = std::time::Instant::now();
                let _ = self.s.checkpoints.send(closed);
            }
            Err(e) => tracing::warn!(error = %e, "journal rotation failed; will retry"),
        }
    }

    /// Applies one command. An I/O error from sled here (a full disk makes sled fail reads and
    /// writes alike) means the store cannot take writes: it is answered as `Unavailable` (503).
    fn apply(&mut self, cmd: &mut Command) -> Result<Outcome, StoreError> {
        self.apply_inner(cmd).map_err(|e| match e {
            StoreError::Io(io) => {
                self.s.writable.store(false, Ordering::SeqCst);
                StoreError::Unavailable(format!("storage error: {io}"))
            }
            other => other,
        })
    }

    fn apply_inner(&mut self, cmd: &mut Command) -> Result<Outcome, StoreError> {
        if let Some(why) = &self.poisoned {
            return Err(StoreError::Unavailable(why.clone()));
        }
        let (ws, outcome) = match cmd {
            Command::CreateRoom { name, privacy, config } => {
                self.create_room(name.take(), *privacy, std::mem::take(config))?
            }
            Command::UpdateRoom { name, privacy, patch } => self.update_room(name, *privacy, patch)?,
            Command::DeleteRoom { name, by } => self.delete_room(name, by)?,
            Command::CreateToken { record, event } => self.create_token(record, event)?,
            Command::Join(req) => self.join(req)?,
            Command::Leave { session_id } => self.leave(session_id)?,
            Command::Heartbeat { session_id } => (None, self.heartbeat(session_id)?),
            Command::Eject(req) => self.eject(req)?,
            Command::LiftBan { room, user_id } => self.lift_ban(room, user_id)?,
            Command::Revoke(req) => self.revoke(req)?,
            Command::FireTimer { deadline_ms, kind, id } => self.fire_timer(*deadline_ms, *kind, id)?,
            Command::Purge { limit } => self.purge(*limit)?,
            Command::Backup { sink, files } => {
                (None, Outcome::BackedUp(super::backup::write(&self.s.trees, files, sink.0.as_mut())?))
            }
            Command::Compact(r) => self.compact(r)?,
            Command::CreateWebhook(w) => self.create_webhook(w)?,
            Command::UpdateWebhook { id, patch } => self.update_webhook(id, patch)?,
            Command::DeleteWebhook { id } => self.delete_webhook(id)?,
            Command::ReplayWebhook { id, from_seq } => self.replay_webhook(id, *from_seq)?,
            Command::WebhookProgress { id, expect_cursor, delivery } => {
                self.webhook_progress(id, *expect_cursor, delivery)?
            }
            Command::Shutdown => return Ok(Outcome::Stopped),
            #[cfg(feature = "test-clock")]
            Command::Freeze { ms } => {
                std::thread::sleep(std::time::Duration::from_millis(*ms));
                return Ok(Outcome::Fired(0));
            }
        };
        if let Some(ws) = ws {
            self.commit(ws)?;
        }
        Ok(outcome)
    }

    pub(super) fn now_ms(&self) -> i64 {
        self.s.clock.now_ms()
    }

    pub(super) fn get_room(&self, name: &str) -> Result<Option<Room>, StoreError> {
        match self.s.trees.get(Tree::Rooms).get(name.as_bytes())? {
            Some(b) => Ok(Some(room_from_record(super::decode_room(name.as_bytes(), &b)?)?)),
            None => Ok(None),
        }
    }

    pub(super) fn room_json(&self, room: &Room) -> Value {
        events::room_payload(&room.to_json(&self.s.public_url))
    }

    fn put_room(&self, ws: &mut WriteSet, room: &Room) -> Result<(), StoreError> {
        ws.put(Tree::Rooms, room.name.as_bytes(), records::encode(records::ROOM_V1, &room_to_record(room))?);
        Ok(())
    }

    fn create_room(
        &mut self,
        name: Option<String>,
        privacy: Privacy,
        config: Map<String, Value>,
    ) -> Result<(Option<WriteSet>, Outcome), StoreError> {
        let mut ws = WriteSet::default();
        let now_s = self.now_ms().div_euclid(1000);
        let name = match name {
            Some(n) => {
                match self.get_room(&n)? {
                    // An expired room's tombstone: its leftovers go first, then the name is free.
                    Some(old) if old.is_expired(now_s) => {
                        self.remove_room(&mut ws, &old, "room_deleted", "scheduler")?
                    }
                    Some(_) => return Ok((None, Outcome::Refused(RoomError::NameTaken(n)))),
                    None => {}
                }
                n
            }
            None => loop {
                let n = rooms::random_name();
                if self.get_room(&n)?.is_none() {
                    break n;
                }
            },
        };
        let room =
            Room { id: uuid::Uuid::new_v4(), name, privacy, created_ms: self.now_ms(), api_created: true, config };
        self.put_room(&mut ws, &room)?;
        self.sync_room_timer(&mut ws, &room)?;
        ws.put(Tree::RoomsById, room.id.as_bytes().to_vec(), room.name.as_bytes().to_vec());
        ws.put(Tree::RoomsByCreated, keys::room_created(room.created_ms, &room.name), room.name.as_bytes().to_vec());
        ws.room_delta = 1;
        ws.event(events::ROOM_CREATED, self.room_json(&room));
        Ok((Some(ws), Outcome::Room(room)))
    }

    fn update_room(
        &mut self,
        name: &str,
        privacy: Option<Privacy>,
        patch: &Map<String, Value>,
    ) -> Result<(Option<WriteSet>, Outcome), StoreError> {
        let now_s = self.now_ms().div_euclid(1000);
        let Some(mut room) = self.get_room(name)?.filter(|r| !r.is_expired(now_s)) else {
            return Ok((None, Outcome::Refused(RoomError::NotFound)));
        };
        room.config = match rooms::merge_properties(&room.config, patch) {
            Ok(c) => c,
            Err(e) => return Ok((None, Outcome::Refused(e))),
        };
        if let Some(p) = privacy {
            room.privacy = p;
        }
        let mut ws = WriteSet::default();
        self.put_room(&mut ws, &room)?;
        self.sync_room_timer(&mut ws, &room)?;
        self.reschedule_room_sessions(&mut ws, &room)?;
        ws.event(events::ROOM_UPDATED, self.room_json(&room));
        Ok((Some(ws), Outcome::Room(room)))
    }

    fn delete_room(&mut self, name: &str, by: &str) -> Result<(Option<WriteSet>, Outcome), StoreError> {
        let Some(room) = self.get_room(name)? else {
            return Ok((None, Outcome::Refused(RoomError::NotFound)));
        };
        let mut ws = WriteSet::default();
        self.remove_room(&mut ws, &room, "room_deleted", by)?;
        ws.event(events::ROOM_DELETED, self.room_json(&room));
        Ok((Some(ws), Outcome::RoomDeleted(room.name)))
    }

    fn create_token(
        &mut self,
        record: &TokenRecord,
        event: &NewEvent,
    ) -> Result<(Option<WriteSet>, Outcome), StoreError> {
        let mut ws = WriteSet::default();
        ws.put(Tree::Tokens, record.jti.as_bytes(), records::encode(records::TOKEN_V1, record)?);
        ws.put(Tree::TokensByRoom, keys::token_room(record.room.as_deref(), &record.jti), Vec::new());
        ws.events.push(event.clone());
        Ok((Some(ws), Outcome::TokenRecorded))
    }

    /// Journals the write set (state change, its events with the next seqs, counters), then
    /// applies it to sled in one transaction.
    pub(super) fn commit(&mut self, mut ws: WriteSet) -> Result<(), StoreError> {
        if ws.events.is_empty() {
            return self.commit_soft(ws);
        }
        let ts = self.now_ms();
        let first_seq = self.s.next_seq;
        let mut seq = first_seq;
        for ev in std::mem::take(&mut ws.events) {
            let envelope = events::render(&self.s.domain8, seq, ev.kind, &ev.payload, ts);
            let rec = EventRecord { kind: ev.kind.to_string(), ts_ms: ts, envelope };
            ws.put(Tree::Events, keys::seq(seq).to_vec(), records::encode(records::EVENT_V1, &rec)?);
            seq += 1;
        }
        let rooms = self.s.room_count.saturating_add_signed(ws.room_delta);
        if ws.room_delta != 0 {
            ws.put(Tree::Meta, keys::META_ROOMS, rooms.to_be_bytes().to_vec());
        }
        let entry = journal::Entry {
            first_seq,
            last_seq: seq - 1,
            ops: ws.ops.into_iter().map(|(t, k, v)| (t as u8, k, v)).collect(),
        };
        let record = journal::encode_record(&entry)?;
        if let Err(e) = self.s.journal.append(&record) {
            // Nothing was applied; the file was cut back. Refuse this one and carry on.
            self.s.writable.store(false, Ordering::SeqCst);
            tracing::error!(error = %e, "journal append failed");
            return Err(StoreError::Unavailable(e));
        }
        self.s.writable.store(true, Ordering::SeqCst);
        self.unsynced = true;
        // From here the record may be replayed at recovery, so its seqs are spent either way.
        self.s.next_seq = seq;
        match apply_ops(&self.s.trees, &entry.ops) {
            Ok(()) => {
                self.s.room_count = rooms;
                self.after_commit(std::mem::take(&mut ws.live), ws.timers_touched, ws.webhooks_touched);
                Ok(())
            }
            Err(e) => {
                self.poison(format!("sled write failed: {e}"));
                Err(StoreError::Unavailable(e.to_string()))
            }
        }
    }
}

impl Writer {
    /// A write set without events: straight to sled, no journal record (see [`WriteSet`]).
    fn commit_soft(&mut self, mut ws: WriteSet) -> Result<(), StoreError> {
        let ops: Vec<_> = std::mem::take(&mut ws.ops).into_iter().map(|(t, k, v)| (t as u8, k, v)).collect();
        apply_ops(&self.s.trees, &ops)?;
        self.after_commit(std::mem::take(&mut ws.live), ws.timers_touched, ws.webhooks_touched);
        Ok(())
    }

    fn after_commit(&mut self, live: Vec<LiveChange>, timers_touched: bool, webhooks_touched: bool) {
        if webhooks_touched {
            self.s.webhooks_changed.send_modify(|v| *v += 1);
        }
        for change in live {
            match change {
                LiveChange::Joined { room, session_id, meeting_id, start_ms, at_ms } => {
                    let entry = self.live.entry(room).or_insert(RoomLive { count: 0, meeting_id, start_ms });
                    entry.count += 1;
                    self.leases.insert(session_id, at_ms);
                }
                LiveChange::Left { room, session_id } => {
                    self.leases.remove(&session_id);
                    if let Some(l) = self.live.get_mut(&room) {
                        l.count = l.count.saturating_sub(1);
                        if l.count == 0 {
                            self.live.remove(&room);
                        }
                    }
                }
            }
        }
        if timers_touched {
            self.s.timers_changed.notify_one();
        }
    }
}

/// Applies journaled ops to sled in one transaction over the trees they touch. Used by the
/// writer and by recovery.
pub(super) fn apply_ops(trees: &Trees, ops: &[journal::Op]) -> Result<(), StoreError> {
    let used: Vec<u8> = ops.iter().map(|(t, _, _)| *t).collect::<BTreeSet<_>>().into_iter().collect();
    let mut handles = Vec::with_capacity(used.len());
    for t in &used {
        let tree = Tree::ALL.get(usize::from(*t)).ok_or_else(|| StoreError::Corrupt {
            tree: "journal",
            key: String::new(),
            why: format!("unknown tree index {t}"),
        })?;
        handles.push(trees.get(*tree).clone());
    }
    let slot = |t: u8| used.iter().position(|u| *u == t).unwrap_or(0);
    let res: Result<(), TransactionError<()>> = handles.as_slice().transaction(|txs| {
        for (t, k, v) in ops {
            let tx = &txs[slot(*t)];
            match v {
                Some(v) => tx.insert(k.as_slice(), v.as_slice())?,
                None => tx.remove(k.as_slice())?,
            };
        }
        Ok::<(), ConflictableTransactionError<()>>(())
    });
    match res {
        Ok(()) => Ok(()),
        Err(TransactionError::Storage(e)) => Err(StoreError::Io(e)),
        Err(TransactionError::Abort(())) => Err(StoreError::Unavailable("transaction aborted".into())),
    }
}
