//! The durable store: the only user of sled and bincode (ARCHITECTURE.md, invariant 10). It owns the
//! trees and their key layouts, the versioned records, the single writer that applies every
//! mutation in order, and group commit (a mutation is answered only after a flush covers it).
//!
//! Reads go straight to the trees. Writes go through [`Store::submit`] as a [`Command`].
//! Must not: know about HTTP, or decide domain rules; those are `rooms`/`tokens` functions the
//! writer calls.

mod backup;
mod housekeeping;
mod journal;
mod keys;
mod participants;
mod records;
mod webhooks;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot, watch};

pub use backup::{restore, BackupSink, RestoreReport};
pub use housekeeping::{PurgeReport, Retention, COMPACT_CHUNK};
pub use records::TokenRecord;
pub use records::{AttemptRecord, BanRecord, WebhookRecord};
pub use webhooks::{public_payload as webhook_payload, Delivery, WebhookPatch};
pub use writer::{Command, EjectRequest, JoinRequest, Outcome, RevokeRequest};

use crate::clock::SharedClock;
use crate::rooms::{Privacy, Room};
use records::{EventRecord, RoomRecord};

/// The on-disk schema this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot write (disk full, I/O error) or is shutting down: nothing was acknowledged.
    #[error("the store cannot accept writes: {0}")]
    Unavailable(String),
    /// The writer's queue stayed full for the admission wait: the command was not taken.
    #[error("the writer is overloaded")]
    Overloaded,
    #[error("stored record in tree '{tree}' at key '{key}' is unreadable: {why}")]
    Corrupt { tree: &'static str, key: String, why: String },
    #[error("could not encode a record: {0}")]
    Encode(String),
    #[error("storage error: {0}")]
    Io(#[from] sled::Error),
    #[error("data dir: {0}")]
    Setup(String),
}

/// How hard a flush pushes data down before a mutation is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// The journal is written (not synced) before the acknowledgement: survives a process crash,
    /// not a power cut.
    Flush,
    /// The journal is `fdatasync`ed before the acknowledgement: survives both.
    Fdatasync,
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Folder holding sled's files (`store/`), the journal (`journal/`) beside it.
    pub path: PathBuf,
    pub cache_bytes: u64,
    /// sled's background flusher period; `None` switches it off (crash tests use this so an
    /// acknowledgement before our own flush cannot hide).
    pub background_flush_ms: Option<u64>,
    pub sync: SyncMode,
    /// Base of room URLs (`<public_url>/<name>`), for room payloads in events.
    pub public_url: String,
    /// Presence lease length in ms.
    pub lease_ms: i64,
    /// Commands the writer's queue holds.
    pub queue: usize,
    /// How long [`Store::submit`] waits for room in a full queue before giving up (shedding).
    pub shed_after: std::time::Duration,
}

/// What the writer measures, for `/metrics`.
pub struct StoreStats {
    /// Time of each batch's journal sync (the acknowledgement's durability cost).
    pub sync_seconds: crate::metrics::Histogram,
    /// Commands per batch (how much group commit shares).
    pub batch_size: crate::metrics::Histogram,
    /// Deadline firing lateness: firing time − deadline.
    pub lateness_seconds: crate::metrics::Histogram,
    /// Commands refused because the writer's queue stayed full ([`StoreError::Overloaded`]).
    pub shed: std::sync::atomic::AtomicU64,
}

impl Default for StoreStats {
    fn default() -> Self {
        StoreStats {
            sync_seconds: crate::metrics::Histogram::new(crate::metrics::SECONDS),
            batch_size: crate::metrics::Histogram::new(crate::metrics::SIZES),
            lateness_seconds: crate::metrics::Histogram::new(crate::metrics::SECONDS),
            shed: Default::default(),
        }
    }
}

/// Where in the room list to start.
#[derive(Debug, Clone)]
pub enum RoomCursor {
    First,
    /// Rooms older than this room id.
    After(uuid::Uuid),
    /// Rooms newer than this room id.
    Before(uuid::Uuid),
}

/// A page of events.
#[derive(Debug, Clone)]
pub struct EventPage {
    pub envelopes: Vec<String>,
    /// Highest seq examined (even if filtered out).
    pub next_after: u64,
    pub has_more: bool,
    pub head_seq: u64,
}

/// The sled trees, in the order of [`Tree`].
#[derive(Clone)]
pub(crate) struct Trees(Vec<sled::Tree>);

/// Names of the trees (part of the on-disk format).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Tree {
    Meta,
    Rooms,
    RoomsById,
    RoomsByCreated,
    Tokens,
    TokensByRoom,
    Events,
    Sessions,
    SessionsByRoom,
    SessionsByToken,
    SessionsByUser,
    Bans,
    Revocations,
    Timers,
    TimersByKey,
    Webhooks,
    Attempts,
}

impl Tree {
    /// In on-disk order: journal records name trees by their index here, so only append.
    const ALL: [Tree; 17] = [
        Tree::Meta,
        Tree::Rooms,
        Tree::RoomsById,
        Tree::RoomsByCreated,
        Tree::Tokens,
        Tree::TokensByRoom,
        Tree::Events,
        Tree::Sessions,
        Tree::SessionsByRoom,
        Tree::SessionsByToken,
        Tree::SessionsByUser,
        Tree::Bans,
        Tree::Revocations,
        Tree::Timers,
        Tree::TimersByKey,
        Tree::Webhooks,
        Tree::Attempts,
    ];

    fn name(self) -> &'static str {
        match self {
            Tree::Meta => "meta",
            Tree::Rooms => "rooms",
            Tree::RoomsById => "rooms_by_id",
            Tree::RoomsByCreated => "rooms_by_created",
            Tree::Tokens => "tokens",
            Tree::TokensByRoom => "tokens_by_room",
            Tree::Events => "events",
            Tree::Sessions => "sessions",
            Tree::SessionsByRoom => "sessions_by_room",
            Tree::SessionsByToken => "sessions_by_token",
            Tree::SessionsByUser => "sessions_by_user",
            Tree::Bans => "bans",
            Tree::Revocations => "revocations",
            Tree::Timers => "timers",
            Tree::TimersByKey => "timers_by_key",
            Tree::Webhooks => "webhooks",
            Tree::Attempts => "attempts",
        }
    }
}

impl Trees {
    fn get(&self, t: Tree) -> &sled::Tree {
        &self.0[t as usize]
    }
}

/// What the writer shares with readers.
struct Shared {
    db: sled::Db,
    trees: Trees,
    domain_id: uuid::Uuid,
    /// Highest event seq covered by a completed flush: readers never look past it.
    durable: watch::Receiver<u64>,
    /// False while the last write or flush failed (disk full): mutations answer 503.
    writable: Arc<AtomicBool>,
    /// Notified when timers change (the deadline task waits on it).
    timers_changed: Arc<tokio::sync::Notify>,
    webhooks_changed: Arc<watch::Sender<u64>>,
    stats: Arc<StoreStats>,
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    jobs: mpsc::Sender<writer::Job>,
    shed_after: std::time::Duration,
    /// The writer and checkpointer threads, joined by `close`.
    threads: Arc<std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>>,
}

impl Store {
    /// Opens (or creates) the store, replays the journal into sled, and starts the writer and
    /// checkpointer threads.
    pub fn open(opts: StoreOptions, clock: SharedClock) -> Result<Store, StoreError> {
        let db = open_sled(&opts)?;
        let trees = Trees(Tree::ALL.iter().map(|t| db.open_tree(t.name())).collect::<Result<_, _>>()?);
        let meta = trees.get(Tree::Meta);
        check_schema(meta)?;
        let domain_id = load_domain_id(meta)?;
        let journal_dir = journal_dir(&opts.path);
        std::fs::create_dir_all(&journal_dir).map_err(|e| StoreError::Setup(format!("journal folder: {e}")))?;
        recover(&db, &trees, &journal_dir, &opts.path)?;
        let next_seq = recover_next_seq(&trees)?;

        let (durable_tx, durable_rx) = watch::channel(next_seq - 1);
        let writable = Arc::new(AtomicBool::new(true));
        let (jobs_tx, jobs_rx) = mpsc::channel(opts.queue.max(1));
        let (ckpt_tx, ckpt_rx) = std::sync::mpsc::channel();
        let timers_changed = Arc::new(tokio::sync::Notify::new());
        let webhooks_changed = Arc::new(watch::channel(0u64).0);
        let stats = Arc::new(StoreStats::default());
        let state = writer::Writer::new(writer::WriterInit {
            trees: trees.clone(),
            next_seq,
            room_count: read_u64(meta, keys::META_ROOMS)?.unwrap_or(0),
            domain8: domain_id.simple().to_string()[..8].to_string(),
            journal: journal::Journal::create(&journal_dir)?,
            sync: opts.sync,
            checkpoints: ckpt_tx,
            public_url: opts.public_url.clone(),
            clock,
            durable: durable_tx,
            writable: writable.clone(),
            lease_ms: opts.lease_ms,
            timers_changed: timers_changed.clone(),
            webhooks_changed: webhooks_changed.clone(),
            stats: stats.clone(),
        })?;
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| StoreError::Setup(format!("cannot start the {name} thread: {e}")))
        };
        let writer = spawn("gatehouse-writer", Box::new(move || state.run(jobs_rx)))?;
        let ckpt = {
            let (db, path, dir) = (db.clone(), opts.path.clone(), journal_dir.clone());
            spawn("gatehouse-checkpoint", Box::new(move || checkpointer(db, path, dir, ckpt_rx)))?
        };
        Ok(Store {
            shared: Arc::new(Shared {
                db,
                trees,
                domain_id,
                durable: durable_rx,
                writable,
                timers_changed,
                webhooks_changed,
                stats,
            }),
            jobs: jobs_tx,
            shed_after: opts.shed_after,
            threads: Arc::new(std::sync::Mutex::new(vec![writer, ckpt])),
        })
    }

    /// Submits commands in this order (they may share a batch) and waits for every answer.
    pub async fn submit_all(&self, cmds: Vec<Command>) -> Vec<Result<Outcome, StoreError>> {
        let gone = || StoreError::Unavailable("the store is shutting down".into());
        let mut waits = Vec::with_capacity(cmds.len());
        for cmd in cmds {
            let (tx, rx) = oneshot::channel();
            if self.jobs.send(writer::Job { cmd, reply: tx }).await.is_err() {
                break;
            }
            waits.push(rx);
        }
        let mut out = Vec::with_capacity(waits.len());
        for rx in waits {
            out.push(rx.await.unwrap_or_else(|_| Err(gone())));
        }
        out
    }

    /// Applies a command through the writer and waits until it is durable. When the writer's
    /// queue stays full for the admission wait, gives up with [`StoreError::Overloaded`]
    /// instead of queueing without end (requests from clients use this).
    pub async fn submit(&self, cmd: Command) -> Result<Outcome, StoreError> {
        use mpsc::error::SendTimeoutError;
        let (tx, rx) = oneshot::channel();
        let gone = || StoreError::Unavailable("the store is shutting down".into());
        match self.jobs.send_timeout(writer::Job { cmd, reply: tx }, self.shed_after).await {
            Ok(()) => {}
            Err(SendTimeoutError::Timeout(_)) => {
                self.shared.stats.shed.fetch_add(1, Ordering::Relaxed);
                return Err(StoreError::Overloaded);
            }
            Err(SendTimeoutError::Closed(_)) => return Err(gone()),
        }
        rx.await.map_err(|_| gone())?
    }

    /// Like [`Store::submit`], but waits for room in the queue however long it takes: for the
    /// server's own work (deadlines, deliveries, housekeeping), which must not be shed.
    pub async fn submit_wait(&self, cmd: Command) -> Result<Outcome, StoreError> {
        let (tx, rx) = oneshot::channel();
        let gone = || StoreError::Unavailable("the store is shutting down".into());
        self.jobs.send(writer::Job { cmd, reply: tx }).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Stops the writer after it has applied and flushed everything queued before this call.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.jobs.send(writer::Job { cmd: Command::Shutdown, reply: tx }).await.is_ok() {
            let _ = rx.await;
        }
        let handles: Vec<_> = self.threads.lock().map(|mut t| t.drain(..).collect()).unwrap_or_default();
        let _ = tokio::task::spawn_blocking(move || handles.into_iter().for_each(|h| drop(h.join()))).await;
    }

    pub fn domain_id(&self) -> uuid::Uuid {
        self.shared.domain_id
    }

    pub fn is_writable(&self) -> bool {
        self.shared.writable.load(Ordering::SeqCst)
    }

    /// Highest durable event seq.
    pub fn durable_seq(&self) -> u64 {
        *self.shared.durable.borrow()
    }

    /// Notified whenever the durable head moves.
    pub fn watch_durable(&self) -> watch::Receiver<u64> {
        self.shared.durable.clone()
    }

    /// Bytes the store occupies on disk, as sled reports it.
    pub fn size_on_disk(&self) -> u64 {
        self.shared.db.size_on_disk().unwrap_or(0)
    }

    fn tree(&self, t: Tree) -> &sled::Tree {
        self.shared.trees.get(t)
    }

    pub fn room(&self, name: &str) -> Result<Option<Room>, StoreError> {
        match self.tree(Tree::Rooms).get(name.as_bytes())? {
            Some(bytes) => Ok(Some(room_from_record(decode_room(name.as_bytes(), &bytes)?)?)),
            None => Ok(None),
        }
    }

    pub fn room_count(&self) -> Result<u64, StoreError> {
        Ok(read_u64(self.tree(Tree::Meta), keys::META_ROOMS)?.unwrap_or(0))
    }

    /// A page of rooms, newest first. `Ok(None)` when the cursor names no room.
    pub fn list_rooms(&self, limit: usize, cursor: &RoomCursor) -> Result<Option<Vec<Room>>, StoreError> {
        let by_created = self.tree(Tree::RoomsByCreated);
        let names: Vec<sled::IVec> = match cursor {
            RoomCursor::First => by_created.iter().values().rev().take(limit).collect::<Result<_, _>>()?,
            RoomCursor::After(id) | RoomCursor::Before(id) => {
                let Some(anchor) = self.room_by_id(id)? else {
                    return Ok(None);
                };
                let key = keys::room_created(anchor.created_ms, &anchor.name);
                if matches!(cursor, RoomCursor::After(_)) {
                    by_created.range(..key).values().rev().take(limit).collect::<Result<_, _>>()?
                } else {
                    let mut newer: Vec<sled::IVec> =
                        by_created.range(key..).values().skip(1).take(limit).collect::<Result<_, _>>()?;
                    newer.reverse();
                    newer
                }
            }
        };
        let mut rooms = Vec::with_capacity(names.len());
        for n in names {
            if let Some(r) = self.room(&String::from_utf8_lossy(&n))? {
                rooms.push(r);
            }
        }
        Ok(Some(rooms))
    }

    fn room_by_id(&self, id: &uuid::Uuid) -> Result<Option<Room>, StoreError> {
        match self.tree(Tree::RoomsById).get(id.as_bytes())? {
            Some(name) => self.room(&String::from_utf8_lossy(&name)),
            None => Ok(None),
        }
    }

    pub fn token(&self, jti: &str) -> Result<Option<TokenRecord>, StoreError> {
        match self.tree(Tree::Tokens).get(jti.as_bytes())? {
            Some(b) => Ok(Some(records::decode("tokens", jti.as_bytes(), records::TOKEN_V1, &b)?)),
            None => Ok(None),
        }
    }

    /// Issued tokens, newest first (jtis are UUIDv7, so key order is creation order).
    /// `room`: only those for that room. `before`: only those older than this jti.
    pub fn list_tokens(
        &self,
        room: Option<&str>,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<TokenRecord>, StoreError> {
        let jtis: Vec<Vec<u8>> = match room {
            Some(room) => {
                let prefix = keys::room_prefix(room);
                let end = match before {
                    Some(b) => keys::token_room(Some(room), b),
                    None => {
                        let mut e = prefix.clone();
                        e.push(0xff);
                        e
                    }
                };
                self.tree(Tree::TokensByRoom)
                    .range(prefix.clone()..end)
                    .keys()
                    .rev()
                    .take(limit)
                    .map(|k| k.map(|k| k[prefix.len()..].to_vec()))
                    .collect::<Result<_, _>>()?
            }
            None => {
                let tokens = self.tree(Tree::Tokens);
                let it = match before {
                    Some(b) => tokens.range(..b.as_bytes().to_vec()),
                    None => tokens.range::<Vec<u8>, _>(..),
                };
                it.keys().rev().take(limit).map(|k| k.map(|k| k.to_vec())).collect::<Result<_, _>>()?
            }
        };
        let mut out = Vec::with_capacity(jtis.len());
        for j in jtis {
            if let Some(t) = self.token(&String::from_utf8_lossy(&j))? {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// Durable events after `after`, at most `limit`, only of `types` when given.
    pub fn events(&self, after: u64, limit: usize, types: Option<&[String]>) -> Result<EventPage, StoreError> {
        let head = self.durable_seq();
        let mut page = EventPage { envelopes: Vec::new(), next_after: after, has_more: false, head_seq: head };
        if after >= head {
            return Ok(page);
        }
        // Bound how much one call examines when a filter skips most events.
        let mut examined = 0usize;
        let budget = limit.saturating_mul(100).max(10_000);
        for item in self.tree(Tree::Events).range(keys::seq(after + 1)..=keys::seq(head)) {
            let (k, v) = item?;
            let seq = keys::u64_of(&k).ok_or_else(|| StoreError::Corrupt {
                tree: "events",
                key: keys::printable(&k),
                why: "key is not a u64".into(),
            })?;
            if page.envelopes.len() >= limit || examined >= budget {
                page.has_more = true;
                break;
            }
            examined += 1;
            page.next_after = seq;
            let rec: EventRecord = records::decode("events", &k, records::EVENT_V1, &v)?;
            if types.is_none_or(|t| t.contains(&rec.kind)) {
                page.envelopes.push(rec.envelope);
            }
        }
        Ok(page)
    }

    /// Woken whenever a timer is written or the clock is moved (test builds).
    pub fn timers_changed(&self) -> Arc<tokio::sync::Notify> {
        self.shared.timers_changed.clone()
    }

    /// Changes whenever webhook configuration or state changes.
    pub fn watch_webhooks(&self) -> watch::Receiver<u64> {
        self.shared.webhooks_changed.subscribe()
    }

    pub fn webhook(&self, id: &str) -> Result<Option<WebhookRecord>, StoreError> {
        webhooks::read(self.tree(Tree::Webhooks), id)
    }

    pub fn webhooks(&self) -> Result<Vec<WebhookRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree(Tree::Webhooks).iter() {
            let (k, v) = item?;
            out.push(records::decode("webhooks", &k, records::WEBHOOK_V1, &v)?);
        }
        Ok(out)
    }

    /// Recorded failed attempts of a webhook, newest first.
    pub fn attempts(&self, id: &str, limit: usize) -> Result<Vec<AttemptRecord>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree(Tree::Attempts).scan_prefix(keys::room_prefix(id)).values().rev().take(limit) {
            let v = item?;
            out.push(records::decode("attempts", id.as_bytes(), records::ATTEMPT_V1, &v)?);
        }
        Ok(out)
    }

    /// A live session and the digest of its secret.
    pub fn session(&self, id: &str) -> Result<Option<(crate::sessions::Session, [u8; 32])>, StoreError> {
        participants::read_session(self.tree(Tree::Sessions), id)
    }

    /// Sessions present in a room (by check-on-read: not past their ejection deadline).
    pub fn room_sessions(&self, room: &str, now_ms: i64) -> Result<Vec<crate::sessions::Session>, StoreError> {
        let mut out = Vec::new();
        for k in self.tree(Tree::SessionsByRoom).scan_prefix(keys::room_prefix(room)).keys() {
            let k = k?;
            let id = String::from_utf8_lossy(&k[room.len() + 1..]).to_string();
            if let Some((s, _)) = self.session(&id)? {
                if !s.is_over(now_ms) {
                    out.push(s);
                }
            }
        }
        Ok(out)
    }

    /// Every present session, for `GET /v1/presence`.
    pub fn all_sessions(&self, now_ms: i64) -> Result<Vec<crate::sessions::Session>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree(Tree::Sessions).iter() {
            let (k, v) = item?;
            let (s, _) = participants::decode_session(&k, &v)?;
            if !s.is_over(now_ms) {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// Bans in force for a room: (user id, ban).
    pub fn bans(&self, room: &str, now_ms: i64) -> Result<Vec<(String, BanRecord)>, StoreError> {
        participants::read_bans(self.tree(Tree::Bans), room, now_ms)
    }

    pub fn is_banned(&self, room: &str, user_id: &str, now_ms: i64) -> Result<bool, StoreError> {
        participants::is_banned(self.tree(Tree::Bans), room, user_id, now_ms)
    }

    /// Whether a verified token is revoked for use in `room` (its own room when `None`).
    pub fn is_revoked(
        &self,
        claims: &crate::tokens::Claims,
        token_id: &str,
        room: Option<&str>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        participants::is_revoked(self.tree(Tree::Revocations), claims, token_id, room, now_ms)
    }

    /// The earliest timer: `(deadline_ms, kind, id)`.
    pub fn first_timer(&self) -> Result<Option<(i64, u8, String)>, StoreError> {
        Ok(self.tree(Tree::Timers).first()?.and_then(|(k, _)| keys::parse_timer(&k)))
    }

    /// Timers due at `now_ms`, earliest first, at most `limit`.
    pub fn due_timers(&self, now_ms: i64, limit: usize) -> Result<Vec<(i64, u8, String)>, StoreError> {
        let end = u64::try_from(now_ms).unwrap_or(0).saturating_add(1).to_be_bytes();
        let mut out = Vec::new();
        for k in self.tree(Tree::Timers).range(..end.to_vec()).keys().take(limit) {
            if let Some(t) = keys::parse_timer(&k?) {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// Number of pending timers (a scan: for metrics, not hot paths).
    pub fn timer_count(&self) -> usize {
        self.tree(Tree::Timers).len()
    }

    /// Number of live sessions (a scan: for metrics, not hot paths).
    pub fn session_count(&self) -> usize {
        self.tree(Tree::Sessions).len()
    }

    pub fn stats(&self) -> &StoreStats {
        &self.shared.stats
    }

    /// Seq of the oldest retained event (1 until compaction exists), or head+1 if empty.
    pub fn oldest_seq(&self) -> Result<u64, StoreError> {
        match self.tree(Tree::Events).first()? {
            Some((k, _)) => Ok(keys::u64_of(&k).unwrap_or(1)),
            None => Ok(self.durable_seq() + 1),
        }
    }
}

/// Opens sled, waiting up to 5 s for its file lock: after a store in this process is closed,
/// sled's own threads may hold the file for a moment longer. Another live process holding it
/// is still an error, with sled's message.
fn open_sled(opts: &StoreOptions) -> Result<sled::Db, StoreError> {
    let config =
        sled::Config::new().path(&opts.path).cache_capacity(opts.cache_bytes).flush_every_ms(opts.background_flush_ms);
    let started = std::time::Instant::now();
    loop {
        match config.open() {
            Err(e)
                if e.to_string().contains("could not acquire lock")
                    && started.elapsed() < std::time::Duration::from_secs(5) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return Ok(other?),
        }
    }
}

/// The journal lives beside sled's folder: `<data>/store` → `<data>/journal`.
fn journal_dir(store: &Path) -> PathBuf {
    store.with_file_name("journal")
}

/// Makes everything sled holds durable: `flush()` (sync_file_range), then a real `fdatasync`
/// of its file, since journal files are deleted on the strength of it.
fn checkpoint_sled(db: &sled::Db, store: &Path) -> Result<(), StoreError> {
    db.flush()?;
    std::fs::File::open(store.join("db"))
        .and_then(|f| f.sync_data())
        .map_err(|e| StoreError::Setup(format!("fdatasync of the store: {e}")))
}

/// Replays journal entries sled does not have yet (those whose events are past sled's last
/// event: every entry carries events, and sled applies each entry atomically and in order),
/// then checkpoints and starts over with an empty journal.
fn recover(db: &sled::Db, trees: &Trees, journal_dir: &Path, store: &Path) -> Result<(), StoreError> {
    let files = journal::list(journal_dir)?;
    let Some(last_file) = files.last().map(|(n, _)| *n) else {
        return Ok(());
    };
    let have = recover_next_seq(trees)? - 1;
    let mut replayed = 0u64;
    for entry in journal::read_all(journal_dir)? {
        if entry.first_seq > have {
            writer::apply_ops(trees, &entry.ops)?;
            replayed += 1;
        }
    }
    checkpoint_sled(db, store)?;
    journal::remove_upto(journal_dir, last_file)?;
    tracing::info!(replayed, "journal recovered");
    Ok(())
}

/// Folds closed journal files into sled: checkpoint, then delete them. On failure the files
/// stay and the next round covers them too.
fn checkpointer(db: sled::Db, store: PathBuf, journal_dir: PathBuf, rx: std::sync::mpsc::Receiver<u64>) {
    while let Ok(mut upto) = rx.recv() {
        while let Ok(later) = rx.try_recv() {
            upto = later;
        }
        let res = checkpoint_sled(&db, &store).and_then(|_| journal::remove_upto(&journal_dir, upto));
        if let Err(e) = res {
            tracing::error!(error = %e, "checkpoint failed; the journal is kept and replayed if needed");
        }
    }
}

fn read_u64(tree: &sled::Tree, key: &[u8]) -> Result<Option<u64>, StoreError> {
    match tree.get(key)? {
        Some(v) => keys::u64_of(&v).map(Some).ok_or_else(|| StoreError::Corrupt {
            tree: "meta",
            key: keys::printable(key),
            why: "not a u64".into(),
        }),
        None => Ok(None),
    }
}

fn check_schema(meta: &sled::Tree) -> Result<(), StoreError> {
    match meta.get(keys::META_SCHEMA)? {
        None => {
            meta.insert(keys::META_SCHEMA, &SCHEMA_VERSION.to_be_bytes())?;
            Ok(())
        }
        Some(v) => {
            let found = <[u8; 4]>::try_from(v.as_ref())
                .map(u32::from_be_bytes)
                .map_err(|_| StoreError::Setup("unreadable schema version".into()))?;
            if found > SCHEMA_VERSION {
                return Err(StoreError::Setup(format!(
                    "the data dir was written by a newer Gatehouse (schema {found}; this build reads up to {SCHEMA_VERSION})"
                )));
            }
            Ok(())
        }
    }
}

fn load_domain_id(meta: &sled::Tree) -> Result<uuid::Uuid, StoreError> {
    if let Some(v) = meta.get(keys::META_DOMAIN)? {
        return uuid::Uuid::from_slice(&v).map_err(|_| StoreError::Setup("unreadable domain id".into()));
    }
    let id = uuid::Uuid::new_v4();
    meta.insert(keys::META_DOMAIN, id.as_bytes())?;
    Ok(id)
}

/// The next event seq: the stored counter, cross-checked against the last event (both are
/// written in the same transaction, so they agree unless the data dir was tampered with).
fn recover_next_seq(trees: &Trees) -> Result<u64, StoreError> {
    let stored = read_u64(trees.get(Tree::Meta), keys::META_NEXT_SEQ)?.unwrap_or(1);
    let last = match trees.get(Tree::Events).last()? {
        Some((k, _)) => keys::u64_of(&k).unwrap_or(0),
        None => 0,
    };
    Ok(stored.max(last + 1).max(1))
}

fn decode_room(key: &[u8], bytes: &[u8]) -> Result<RoomRecord, StoreError> {
    records::decode("rooms", key, records::ROOM_V1, bytes)
}

fn room_from_record(r: RoomRecord) -> Result<Room, StoreError> {
    let config: Map<String, Value> = serde_json::from_str(&r.config_json).map_err(|e| StoreError::Corrupt {
        tree: "rooms",
        key: r.name.clone(),
        why: format!("config is not a JSON object: {e}"),
    })?;
    Ok(Room {
        id: uuid::Uuid::from_bytes(r.id),
        name: r.name,
        privacy: if r.private { Privacy::Private } else { Privacy::Public },
        created_ms: r.created_ms,
        api_created: r.api_created,
        config,
    })
}

fn room_to_record(room: &Room) -> RoomRecord {
    RoomRecord {
        id: *room.id.as_bytes(),
        name: room.name.clone(),
        private: room.privacy == Privacy::Private,
        created_ms: room.created_ms,
        api_created: room.api_created,
        config_json: Value::Object(room.config.clone()).to_string(),
    }
}
