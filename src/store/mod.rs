//! The durable store: the only user of sled and bincode (ARCHITECTURE.md, invariant 10).
//!
//! The write path: every mutation is a [`Command`] the one writer runs; each writer batch is
//! one journal record, synced once before anyone is answered (the journal is the source of
//! truth); sled is the index, written from the journal by the applier off the acknowledgement
//! path; events go to their own segment files. Readers see every acknowledged write: the
//! writer publishes its state after each durable batch (the writes sled may not hold yet, who
//! is present, the counters) and readers look there before sled.
//!
//! The seam: callers see [`Store`] (reads, `submit` of typed commands, the event log, the
//! fan-out hub) and nothing of sled, the journal or the writer. A second backend (cluster
//! mode) implements the same surface.
//!
//! Must not: know about HTTP, or decide domain rules; those are `rooms`/`tokens`/`sessions`
//! functions the commands call.

mod applier;
mod backup;
pub mod command;
pub mod commands;
mod ctx;
pub mod eventlog;
pub mod fanout;
mod health;
mod history;
mod journal;
mod keys;
pub mod live;
mod migrate;
mod records;
mod state;
mod syncer;
mod timers;
mod writer;

use std::collections::VecDeque;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde_json::{Map, Value};
use tokio::sync::{oneshot, watch};

pub use backup::{restore, BackupSink, RestoreReport};
pub use command::Command;
pub use commands::webhooks::public_payload as webhook_payload;
pub use commands::{
    Compact, CreateRoom, CreateRooms, CreateToken, CreateWebhook, DecideWaiting, DeleteRoom, DeleteRooms,
    DeleteWebhook, Delivery, Eject, EjectError, Heartbeat, Heartbeats, Join, JoinOutcome, Leave, LiftBan, Merge,
    PermissionsError, Progress, PurgeReport, ReplayWebhook, Retention, Revoke, SessionDataError, SetAcme, SetDomain,
    SetSessionData, Sweep, Sweeping, SweptPage, UpdatePermissions, UpdateRoom, UpdateWebhook, Waiting, WaitingError,
    WaitingReport, WebhookPatch, WebhookProgress, COMPACT_CHUNK, MAX_BATCH, MAX_SESSION_DATA, MAX_WAITING_PER_ROOM,
};
pub use eventlog::{Event, Page};
pub use live::Entry;
pub use records::{AttemptRecord, BanRecord, MeetingParticipantRecord, MeetingRecord, TokenRecord, WebhookRecord};

use crate::clock::SharedClock;
use crate::rooms::{Privacy, Room};
use records::RoomRecord;
use state::{State, Tree, Trees};

/// The on-disk schema this build writes (and the oldest it migrates: 1).
pub const SCHEMA_VERSION: u32 = 4;

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
    /// The meeting history's file refused an operation (a full disk, an I/O error).
    #[error("meeting history storage error: {0}")]
    History(String),
    /// A sync failed: whether the data it was to make durable is on disk is unknown, and a retry
    /// could succeed without it (Linux drops the data a failed fsync held). Writes are refused
    /// until a restart, whose recovery reads the journal.
    #[error("{0}")]
    Durability(String),
    /// A cluster replica takes no commands (its node forwards writes to the leader).
    #[error("this cluster node is a replica: it takes no writes (they go to the leader)")]
    Replica,
    /// A replica was handed a batch that does not follow the last one it holds.
    #[error("replica holds batches up to {have}; the next one offered is {offered}")]
    Gap { have: u64, offered: u64 },
}

/// Why a batch was not made durable. Every command of the batch is answered with it (a 503:
/// nothing of the batch was acknowledged). Cloned to each of them, so it carries text.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NotDurable {
    /// The store refuses writes until a restart, for this reason (an earlier failed sync, a
    /// hole in the event log, a failed checkpoint…).
    #[error("{0}")]
    Refusing(String),
    /// The batch could not be appended to the journal (a full disk may clear: later batches
    /// are tried).
    #[error("{0}")]
    Append(String),
    /// The journal's `fdatasync` failed: the store refuses writes from now on.
    #[error("journal fdatasync failed: {0}")]
    Sync(String),
    /// Cluster mode: the batches could not be committed to etcd.
    #[error("committing to the cluster failed: {0}")]
    Replicate(String),
    /// A batch could not be encoded (for the cluster, before anything was committed).
    #[error("{0}")]
    Encode(String),
    /// The applier thread is gone.
    #[error("the applier thread is gone")]
    ApplierGone,
    /// The syncer thread is gone.
    #[error("the syncer thread is gone")]
    SyncerGone,
}

/// Why a cluster commit failed: nothing of the batches may be acknowledged.
pub type ReplicateError = Box<dyn std::error::Error + Send + Sync>;

/// How hard a sync pushes data down before a mutation is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMode {
    /// The journal is written (not synced) before the acknowledgement: survives a process crash,
    /// not a power cut.
    Flush,
    /// The journal is `fdatasync`ed before the acknowledgement: survives both.
    Fdatasync,
}

/// What cluster mode (`src/cluster`) adds to a store: the domain id every node shares, and
/// the commit of each batch where every node can read it, before anyone is answered. Without
/// `replicate` the store is a *replica*: it takes no commands, fires no deadlines, and applies
/// the batches the leader committed ([`Store::replicate`]) until it is promoted
/// ([`Store::promote`]).
pub struct ClusterHooks {
    pub domain_id: uuid::Uuid,
    pub replicate: Option<Arc<dyn Replicate>>,
    /// The last batch of the snapshot the store was restored from: numbering goes on after it.
    pub lsn_floor: u64,
}

/// The domain id of a stopped data dir's store, if it has one.
pub fn read_domain_id(data_dir: &Path) -> Result<Option<uuid::Uuid>, StoreError> {
    let db = sled::Config::new().path(data_dir.join("store")).flush_every_ms(None).open()?;
    let meta = db.open_tree(Tree::Meta.name())?;
    match meta.get(keys::META_DOMAIN)? {
        Some(v) => uuid::Uuid::from_slice(&v).map(Some).map_err(|_| StoreError::Setup("unreadable domain id".into())),
        None => Ok(None),
    }
}

pub trait Replicate: Send + Sync {
    /// Commits the framed journal records `(lsn, record)`, in order; `Err`: not committed
    /// (nothing of them may be acknowledged).
    fn commit(&self, records: &[(u64, Vec<u8>)]) -> Result<(), ReplicateError>;
}

/// Starts the journal of an empty data dir with `records` (framed, in lsn order), for the
/// store's recovery to replay at open: how a node that takes over in cluster mode rebuilds the
/// state from what the cluster committed.
pub fn seed_journal(data_dir: &Path, records: &[Vec<u8>]) -> Result<(), StoreError> {
    journal::seed(&data_dir.join("wal"), records)
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Folder holding sled's files (`store/`); the journal (`wal/`) and the event segments
    /// (`events/`) are beside it.
    pub path: PathBuf,
    pub cache_bytes: u64,
    /// sled's background flusher period; `None` switches it off (crash tests use this so an
    /// acknowledgement before our own sync cannot hide).
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
    /// A thread (writer, applier) busy this long without progress is stuck (see `stalled`).
    pub stall_after: std::time::Duration,
    /// People present from which a room's streams get summaries instead of every change.
    pub large_room: u64,
    /// Bytes past which an event segment is closed (and packed).
    pub segment_bytes: u64,
}

impl StoreOptions {
    /// Defaults for tools and tests: everything but the path.
    pub fn at(path: PathBuf) -> StoreOptions {
        StoreOptions {
            path,
            cache_bytes: 64 << 20,
            background_flush_ms: None,
            sync: SyncMode::Fdatasync,
            public_url: String::new(),
            lease_ms: 30_000,
            queue: 4096,
            shed_after: std::time::Duration::from_secs(60),
            stall_after: std::time::Duration::from_secs(30),
            large_room: fanout::DEFAULT_LARGE_ROOM,
            segment_bytes: eventlog::SEGMENT_BYTES,
        }
    }
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
    pub shed: AtomicU64,
}

impl Default for StoreStats {
    fn default() -> Self {
        StoreStats {
            sync_seconds: crate::metrics::Histogram::new(crate::metrics::SECONDS),
            batch_size: crate::metrics::Histogram::new(crate::metrics::SIZES),
            lateness_seconds: crate::metrics::Histogram::new(crate::metrics::SECONDS),
            shed: AtomicU64::new(0),
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

/// Batches appended and not yet synced past which the writer waits for the syncer.
const SYNCER_QUEUE: usize = 16;

impl Shared {
    /// Why writes are refused until a restart, if they are.
    fn poisoned(&self) -> Option<String> {
        self.poisoned.lock().map(|p| p.clone()).unwrap_or_else(|p| p.into_inner().clone())
    }

    fn poison(&self, why: String) {
        tracing::error!(error = %why, "the store cannot write; refusing writes until a restart (recovery replays the journal)");
        self.writable.store(false, Ordering::SeqCst);
        let mut p = self.poisoned.lock().unwrap_or_else(|p| p.into_inner());
        p.get_or_insert(why);
    }
}

/// What the writer shares with readers.
pub(crate) struct Shared {
    db: sled::Db,
    trees: Trees,
    domain_id: uuid::Uuid,
    /// The state as of the last durable batch.
    published: ArcSwap<State>,
    events: Arc<eventlog::EventLog>,
    hub: fanout::Hub,
    /// False while the last write failed (disk full): mutations answer 503.
    writable: AtomicBool,
    /// The size of the last batch the journal refused (a full disk), until one as large is
    /// appended: a small batch that still fits (housekeeping's) does not make the store
    /// writable again for the writes that do not.
    refused_bytes: AtomicU64,
    /// The journal's folder, to ask its file system for free space.
    wal_dir: PathBuf,
    webhooks_changed: watch::Sender<u64>,
    stats: Arc<StoreStats>,
    health: Arc<health::Health>,
    /// The last batch the applier put in sled.
    applied: Arc<AtomicU64>,
    /// Why the store refuses writes until a restart: a journal sync failed (whether the record
    /// is durable is unknown; recovery reads the journal) or a thread it needs is gone.
    poisoned: std::sync::Mutex<Option<String>>,
    /// Cluster mode: where each batch is committed before anyone is answered (set when the
    /// store leads; a replica's is empty until it is promoted).
    replicate: std::sync::OnceLock<Arc<dyn Replicate>>,
    /// A cluster replica: it applies the leader's batches and takes no commands.
    replica: AtomicBool,
    #[cfg(feature = "test-clock")]
    applier_frozen_until: Arc<std::sync::atomic::AtomicI64>,
    #[cfg(feature = "test-clock")]
    applier_crash: Arc<std::sync::Mutex<Option<applier::Crash>>>,
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
    jobs: flume::Sender<writer::Msg>,
    shed_after: std::time::Duration,
    /// The writer, applier, checkpointer and packer threads, joined by `close`.
    threads: Arc<std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>>,
    stop_packer: Arc<AtomicBool>,
}

impl Store {
    /// Opens (or creates) the store: migrates a schema 1 store, replays the journal into sled
    /// and the event log, loads the live state, and starts the threads.
    pub fn open(opts: StoreOptions, clock: SharedClock) -> Result<Store, StoreError> {
        Store::open_with(opts, clock, None)
    }

    /// [`Store::open`], in cluster mode with `cluster`'s domain id and replication.
    pub fn open_with(
        opts: StoreOptions,
        clock: SharedClock,
        cluster: Option<ClusterHooks>,
    ) -> Result<Store, StoreError> {
        let data_dir = opts.path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        if data_dir.join(backup::STAGE).exists() {
            return Err(StoreError::Setup(format!(
                "a restore into {} was interrupted ({} is there): run the restore again",
                data_dir.display(),
                data_dir.join(backup::STAGE).display()
            )));
        }
        // Each folder's name durable in its parent before anything is written inside it.
        for d in [opts.path.clone(), data_dir.join("wal"), data_dir.join("events")] {
            crate::disk::create_dir_all(&d)
                .map_err(|e| StoreError::Setup(format!("cannot create {}: {e}", d.display())))?;
        }
        read_from_disk(&[opts.path.clone(), opts.path.join("blobs"), data_dir.join("wal"), data_dir.join("events")])?;
        let db = open_sled(&opts)?;
        let sled_dir = Arc::new(applier::SledDir::open(&opts.path)?);
        let history = Arc::new(upgrade(&db, &data_dir, &sled_dir, history_cache(opts.cache_bytes))?);
        let meta = db.open_tree(Tree::Meta.name())?;
        let trees = Trees::open(&db, history.clone())?;
        let domain_id = match &cluster {
            Some(c) => {
                meta.insert(keys::META_DOMAIN, c.domain_id.as_bytes())?;
                c.domain_id
            }
            None => load_domain_id(&meta)?,
        };
        let read_u64 =
            |k: &[u8]| -> Result<Option<u64>, StoreError> { Ok(meta.get(k)?.and_then(|v| keys::u64_of(&v))) };
        let oldest_meta = read_u64(keys::META_EVENTS_OLDEST)?.unwrap_or(1);
        let events = Arc::new(eventlog::EventLog::open(&data_dir.join("events"), oldest_meta, opts.segment_bytes)?);
        let wal = data_dir.join("wal");
        let lsn = recover(&db, &trees, &events, &wal, &sled_dir)?.max(cluster.as_ref().map_or(0, |c| c.lsn_floor));
        let next_seq = events.last().max(read_u64(keys::META_NEXT_SEQ)?.unwrap_or(1).saturating_sub(1)) + 1;
        events.set_head(next_seq - 1);
        let (state, private) = load_state(
            &trees,
            lsn,
            next_seq,
            read_u64(keys::META_ROOMS)?.unwrap_or(0),
            events.oldest(),
            clock.now_ms(),
            opts.lease_ms,
        )?;
        let stats = Arc::new(StoreStats::default());
        let health = Arc::new(health::Health::new(opts.stall_after));
        let applied = Arc::new(AtomicU64::new(lsn));
        let frozen: Arc<std::sync::atomic::AtomicI64> = Arc::default();
        let crash: Arc<std::sync::Mutex<Option<applier::Crash>>> = Arc::default();
        let applier_done: Arc<AtomicBool> = Arc::default();
        let shared = Arc::new(Shared {
            db: db.clone(),
            trees: trees.clone(),
            domain_id,
            published: ArcSwap::from_pointee(state.clone()),
            events: events.clone(),
            hub: {
                let hub = fanout::Hub::default();
                hub.set_large_threshold(opts.large_room);
                hub
            },
            writable: AtomicBool::new(true),
            refused_bytes: AtomicU64::new(0),
            wal_dir: data_dir.join("wal"),
            webhooks_changed: watch::channel(0u64).0,
            stats: stats.clone(),
            health: health.clone(),
            applied: applied.clone(),
            poisoned: std::sync::Mutex::new(None),
            replicate: match cluster.as_ref().and_then(|c| c.replicate.clone()) {
                Some(r) => std::sync::OnceLock::from(r),
                None => std::sync::OnceLock::new(),
            },
            replica: AtomicBool::new(cluster.as_ref().is_some_and(|c| c.replicate.is_none())),
            #[cfg(feature = "test-clock")]
            applier_frozen_until: frozen.clone(),
            #[cfg(feature = "test-clock")]
            applier_crash: crash.clone(),
        });
        let (jobs_tx, jobs_rx) = flume::bounded(opts.queue.max(1));
        let (apply_tx, apply_rx) = flume::unbounded();
        let (ckpt_tx, ckpt_rx) = std::sync::mpsc::channel();
        let (sync_tx, sync_rx) = std::sync::mpsc::sync_channel(SYNCER_QUEUE);
        let env = Arc::new(ctx::Env {
            clock,
            public_url: opts.public_url.clone(),
            domain8: crate::events::domain8(&domain_id),
            lease_ms: opts.lease_ms,
            stats,
            events: events.clone(),
        });
        let writer = writer::Writer {
            state,
            private,
            journal: journal::Journal::create(&wal)?,
            env: env.clone(),
            trees: trees.clone(),
            shared: shared.clone(),
            syncer: sync_tx,
            checkpoints: ckpt_tx,
            fire: commands::deadlines::fire,
            unapplied: VecDeque::new(),
            unapplied_ops: 0,
            last_rotation: std::time::Instant::now(),
            last_lsn_in_file: lsn,
        };
        let syncer =
            syncer::Syncer { shared: shared.clone(), stats: env.stats.clone(), sync: opts.sync, applier: apply_tx };
        let applier = applier::Applier {
            trees,
            shared: Some(shared.clone()),
            applied: applied.clone(),
            health,
            frozen_until: frozen,
            crash,
            done: applier_done.clone(),
        };
        let checkpointer = applier::Checkpointer {
            shared: shared.clone(),
            db,
            history,
            store_dir: sled_dir,
            journal_dir: wal,
            events: events.clone(),
            applied,
            applier_done,
        };
        let stop_packer = Arc::new(AtomicBool::new(false));
        let packer = {
            let (events, stop) = (events, stop_packer.clone());
            move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Err(e) = events.pack_closed() {
                        tracing::warn!(error = %e, "packing event segments failed; will retry");
                    }
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
            }
        };
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(f)
                .map_err(|e| StoreError::Setup(format!("cannot start the {name} thread: {e}")))
        };
        let threads = vec![
            spawn("gatehouse-writer", Box::new(move || writer.run(jobs_rx)))?,
            spawn("gatehouse-syncer", Box::new(move || syncer.run(sync_rx)))?,
            spawn("gatehouse-applier", Box::new(move || applier.run(apply_rx)))?,
            spawn("gatehouse-checkpoint", Box::new(move || checkpointer.run(ckpt_rx)))?,
            spawn("gatehouse-packer", Box::new(packer))?,
        ];
        Ok(Store {
            shared,
            jobs: jobs_tx,
            shed_after: opts.shed_after,
            threads: Arc::new(std::sync::Mutex::new(threads)),
            stop_packer,
        })
    }

    async fn send(&self, msg: writer::Msg, shed: bool) -> Result<(), StoreError> {
        let gone = || StoreError::Unavailable("the store is shutting down".into());
        if !shed {
            return self.jobs.send_async(msg).await.map_err(|_| gone());
        }
        match tokio::time::timeout(self.shed_after, self.jobs.send_async(msg)).await {
            Ok(r) => r.map_err(|_| gone()),
            Err(_) => {
                self.shared.stats.shed.fetch_add(1, Ordering::Relaxed);
                Err(StoreError::Overloaded)
            }
        }
    }

    async fn run<C: Command>(&self, cmd: C, shed: bool) -> Result<C::Reply, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(writer::Msg::Job(Box::new(command::Typed { cmd, reply: tx })), shed).await?;
        rx.await.map_err(|_| StoreError::Unavailable("the store is shutting down".into()))?
    }

    /// Runs a command through the writer and waits until it is durable. When the writer's
    /// queue stays full for the admission wait, gives up with [`StoreError::Overloaded`]
    /// instead of queueing without end (requests from clients use this).
    pub async fn submit<C: Command>(&self, cmd: C) -> Result<C::Reply, StoreError> {
        self.run(cmd, true).await
    }

    /// Like [`Store::submit`], but waits for room in the queue however long it takes: for the
    /// server's own work (deliveries, housekeeping), which must not be shed.
    pub async fn submit_wait<C: Command>(&self, cmd: C) -> Result<C::Reply, StoreError> {
        self.run(cmd, false).await
    }

    /// A replica: applies `records` (framed batch records the leader committed, in lsn order),
    /// each as a batch of its own through the journal, the event log and the applier, as if
    /// the writer had made them; returns the last batch it now holds. A record it holds already
    /// is skipped; one after a gap is refused ([`StoreError::Gap`]).
    pub async fn replicate(&self, records: Vec<Vec<u8>>) -> Result<u64, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(writer::Msg::Replicated { records, reply: tx }, false).await?;
        rx.await.map_err(|_| StoreError::Unavailable("the store is shutting down".into()))?
    }

    /// A replica becomes the store that leads: once everything it applied is in sled, its
    /// deadlines and sessions are loaded as at an open (every session gets a fresh lease), and
    /// from its next batch on it takes commands, fires deadlines and commits each batch through
    /// `replicate` before anyone is answered.
    pub async fn promote(&self, replicate: Arc<dyn Replicate>) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(writer::Msg::Promote { replicate, reply: tx }, false).await?;
        rx.await.map_err(|_| StoreError::Unavailable("the store is shutting down".into()))?
    }

    /// Whether this store is a cluster replica (not promoted).
    pub fn is_replica(&self) -> bool {
        self.shared.replica.load(Ordering::Acquire)
    }

    /// Asks the writer to look at the clock again (the test clock moved).
    pub async fn tick(&self) {
        let _ = self.send(writer::Msg::Tick, false).await;
    }

    /// A consistent backup of every tree and the event log (plus `files`) into `sink`.
    pub async fn backup(&self, sink: BackupSink, files: Vec<(&'static str, Vec<u8>)>) -> Result<u64, StoreError> {
        Ok(self.backup_at(sink, files).await?.0)
    }

    /// [`Store::backup`], also saying the last batch (lsn) the copy holds.
    pub async fn backup_at(
        &self,
        sink: BackupSink,
        files: Vec<(&'static str, Vec<u8>)>,
    ) -> Result<(u64, u64), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(writer::Msg::Backup { sink, files, reply: tx }, false).await?;
        rx.await.map_err(|_| StoreError::Unavailable("the store is shutting down".into()))?
    }

    /// Test builds: stops the writer (or the applier) for `ms`, as a hung dependency would.
    #[cfg(feature = "test-clock")]
    pub async fn freeze(&self, writer: bool, ms: u64) {
        if writer {
            let _ = self.send(writer::Msg::Freeze(ms), false).await;
        } else {
            let until = crate::clock::system_now_ms() + i64::try_from(ms).unwrap_or(i64::MAX / 2);
            self.shared.applier_frozen_until.store(until, Ordering::Relaxed);
        }
    }

    /// Test builds: closes the store as a crash would leave it: the applier puts `batches`
    /// more batches in sled, then part (`trees` trees' writes) of the next, then nothing; the
    /// journal keeps the rest. The next open must recover it all.
    #[cfg(feature = "test-clock")]
    pub async fn close_as_if_crashed(&self, batches: usize, trees: usize) {
        if let Ok(mut c) = self.shared.applier_crash.lock() {
            *c = Some(applier::Crash { batches, trees });
        }
        self.close_inner(false).await;
    }

    /// Stops the writer after it has made durable everything queued before this call, then
    /// the other threads (sled is flushed by its own drop).
    pub async fn close(&self) {
        self.close_inner(true).await;
    }

    async fn close_inner(&self, wait_for_applier: bool) {
        let (tx, rx) = oneshot::channel();
        if self.jobs.send_async(writer::Msg::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
        self.stop_packer.store(true, Ordering::Relaxed);
        let handles: Vec<_> = self.threads.lock().map(|mut t| t.drain(..).collect()).unwrap_or_default();
        let db = self.shared.db.clone();
        let applied = self.shared.applied.clone();
        let lsn = self.shared.published.load().lsn;
        let _ = tokio::task::spawn_blocking(move || {
            // The applier finishes what it has; then sled is flushed for a quick next start.
            while wait_for_applier && applied.load(Ordering::Acquire) < lsn {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let _ = db.flush();
            // The writer has stopped, so the applier's and checkpointer's channels are closed:
            // they finish what they have and end; the packer sees its flag.
            for h in handles {
                let _ = h.join();
            }
        })
        .await;
    }

    pub fn domain_id(&self) -> uuid::Uuid {
        self.shared.domain_id
    }

    /// Whether writes can be taken: no append has failed since the last one as large as it
    /// succeeded, or the journal's file system has room for it again (so readiness comes back
    /// when space is freed, before any write proves it).
    pub fn is_writable(&self) -> bool {
        if self.shared.writable.load(Ordering::SeqCst) {
            return true;
        }
        let needed = self.shared.refused_bytes.load(Ordering::SeqCst);
        self.shared.poisoned().is_none()
            && needed > 0
            && crate::disk::free_bytes(&self.shared.wal_dir).is_some_and(|free| free >= needed.saturating_add(1 << 20))
    }

    /// Why writes are refused until a restart (a sync failed, a thread is gone), if they are.
    pub fn write_refused(&self) -> Option<String> {
        self.shared.poisoned()
    }

    /// Why the store is stuck (a thread that makes no progress), if it is.
    pub fn stalled(&self) -> Option<String> {
        self.shared.health.stalled()
    }

    /// The last durable batch: the published state changes only when this does.
    pub fn published_lsn(&self) -> u64 {
        self.state().lsn
    }

    /// Waits (up to `at_most`) until sled holds every batch published so far. Housekeeping
    /// paces itself with it: a sweep's deletes are never more than a page ahead of sled, so
    /// the writes waiting in memory for the applier stay a page's worth, not a whole purge's.
    pub async fn applier_caught_up(&self, at_most: std::time::Duration) {
        let target = self.published_lsn();
        let deadline = tokio::time::Instant::now() + at_most;
        while self.shared.applied.load(Ordering::Acquire) < target
            && self.is_writable()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Highest durable event seq.
    pub fn durable_seq(&self) -> u64 {
        self.shared.events.head()
    }

    /// Notified whenever the durable head moves.
    pub fn watch_durable(&self) -> watch::Receiver<u64> {
        self.shared.events.watch_head()
    }

    /// The frames about `room` from now on, as its events become durable, and whether the
    /// room is large now (see `fanout`).
    pub fn subscribe_room(&self, room: &str) -> (tokio::sync::broadcast::Receiver<Arc<fanout::Frame>>, bool) {
        let present = self.state().live.present(room);
        self.shared.hub.subscribe(room, present)
    }

    /// The frames about session `id` from now on (its ejection, its departure).
    pub fn follow_session(&self, id: &str) -> tokio::sync::broadcast::Receiver<Arc<fanout::Frame>> {
        self.shared.hub.follow_session(id)
    }

    /// Call after dropping a receiver from [`Store::follow_session`].
    pub fn unfollow_session(&self, id: &str) {
        self.shared.hub.unfollow_session(id)
    }

    /// Hands a frame to the open streams of session `id`.
    pub fn notify_session(&self, id: &str, frame: fanout::Frame) {
        self.shared.hub.notify(id, frame)
    }

    /// Sends the pending `presence-summary` of every large room that changed (call every tick).
    pub fn flush_summaries(&self, now_ms: i64) {
        self.shared.hub.flush_summaries(now_ms)
    }

    /// `send-app-message`: an `app-message` frame to the streams of everyone present in `room`
    /// (`recipient` `None`) or of one session present there. Not stored: whoever is not in the
    /// call (or has no stream open) never gets it, as with Daily. Answers how many present
    /// sessions it was addressed to.
    pub fn send_app_message(&self, room: &str, recipient: Option<&str>, data: &Value) -> usize {
        let st = self.state();
        let to = match recipient {
            None => None,
            Some(id) => match st.live.get(id) {
                Some(e) if !e.waiting && e.session.room == room => Some(Arc::from(id)),
                _ => return 0,
            },
        };
        let n = if to.is_some() { 1 } else { st.live.present(room) as usize };
        if n > 0 {
            let body =
                serde_json::json!({"room": room, "fromId": "api", "recipient": recipient.unwrap_or("*"), "data": data})
                    .to_string();
            let bytes = fanout::sse_frame("app-message", None, &body);
            self.shared.hub.broadcast(
                room,
                fanout::Frame { kind: Arc::from("app-message"), about: None, admin_only: false, to, bytes },
            );
        }
        n
    }

    /// A `session-data` frame (`{"room", "meeting_id", "seq", "data"}`) to the streams of those
    /// present in `room`: session data goes to the people in the call, not to the event log.
    /// `seq` orders frames of concurrent changes (a later change has a higher one; `null` in a
    /// snapshot's frame, which holds the data as it is now).
    pub fn send_session_data(&self, room: &str, meeting_id: &str, seq: Option<u64>, data: &Map<String, Value>) {
        let frame = session_data_frame(room, meeting_id, seq, data);
        self.shared.hub.broadcast(room, frame);
    }

    /// Whether `room` is in large mode now.
    pub fn is_large_room(&self, room: &str) -> bool {
        self.shared.hub.is_large(room)
    }

    /// Rooms with open streams, and sessions with open streams.
    pub fn fanout_counts(&self) -> (usize, usize) {
        self.shared.hub.counts()
    }

    /// Bytes the store occupies on disk: sled and the event segments.
    pub fn size_on_disk(&self) -> u64 {
        let history = self.shared.trees.history().file_len();
        self.shared.db.size_on_disk().unwrap_or(0) + history + self.shared.events.size_on_disk()
    }

    fn state(&self) -> arc_swap::Guard<Arc<State>> {
        self.shared.published.load()
    }

    fn get(&self, t: Tree, key: &[u8]) -> Result<Option<Arc<[u8]>>, StoreError> {
        self.state().get(&self.shared.trees, t, key)
    }

    pub fn room(&self, name: &str) -> Result<Option<Room>, StoreError> {
        match self.get(Tree::Rooms, name.as_bytes())? {
            Some(bytes) => {
                Ok(Some(room_from_record(records::decode("rooms", name.as_bytes(), records::ROOM_V1, &bytes)?)?))
            }
            None => Ok(None),
        }
    }

    /// The domain settings (`POST /v1/`), empty until set.
    /// What `--acme-domain` kept (empty before its first certificate).
    pub fn acme_state(&self) -> Result<Map<String, Value>, StoreError> {
        let key = keys::META_ACME;
        records::decode_object("meta", key, self.get(Tree::Meta, key)?.as_deref())
    }

    pub fn domain_config(&self) -> Result<Map<String, Value>, StoreError> {
        let key = keys::META_DOMAIN_CONFIG;
        records::decode_object("meta", key, self.get(Tree::Meta, key)?.as_deref())
    }

    /// The session data of the meeting running in `room` (`get-session-data`); `None` when no
    /// meeting is running there.
    pub fn session_data(&self, room: &str) -> Result<Option<(String, Map<String, Value>)>, StoreError> {
        let st = self.state();
        let Some(id) = st.live.room(room).filter(|r| !r.present.is_empty()).map(|r| r.meeting_id.clone()) else {
            return Ok(None);
        };
        let key = keys::meeting_data(&id);
        let data =
            records::decode_object("meetings", &key, st.get(&self.shared.trees, Tree::Meetings, &key)?.as_deref())?;
        Ok(Some((id.to_string(), data)))
    }

    pub fn room_count(&self) -> Result<u64, StoreError> {
        Ok(self.state().room_count)
    }

    /// A page of rooms, newest first. `Ok(None)` when the cursor names no room.
    pub fn list_rooms(&self, limit: usize, cursor: &RoomCursor) -> Result<Option<Vec<Room>>, StoreError> {
        let st = self.state();
        let trees = &self.shared.trees;
        let names = match cursor {
            RoomCursor::First => {
                st.range(trees, Tree::RoomsByCreated, Bound::Unbounded, Bound::Unbounded, true, limit)?
            }
            RoomCursor::After(id) | RoomCursor::Before(id) => {
                let Some(anchor) = self.room_by_id(id)? else {
                    return Ok(None);
                };
                let key = keys::room_created(anchor.created_ms, &anchor.name);
                if matches!(cursor, RoomCursor::After(_)) {
                    st.range(trees, Tree::RoomsByCreated, Bound::Unbounded, Bound::Excluded(key), true, limit)?
                } else {
                    let mut newer =
                        st.range(trees, Tree::RoomsByCreated, Bound::Excluded(key), Bound::Unbounded, false, limit)?;
                    newer.reverse();
                    newer
                }
            }
        };
        let mut rooms = Vec::with_capacity(names.len());
        for (_, n) in names {
            if let Some(r) = self.room(&String::from_utf8_lossy(&n))? {
                rooms.push(r);
            }
        }
        Ok(Some(rooms))
    }

    fn room_by_id(&self, id: &uuid::Uuid) -> Result<Option<Room>, StoreError> {
        match self.get(Tree::RoomsById, id.as_bytes())? {
            Some(name) => self.room(&String::from_utf8_lossy(&name)),
            None => Ok(None),
        }
    }

    pub fn token(&self, jti: &str) -> Result<Option<TokenRecord>, StoreError> {
        match self.get(Tree::Tokens, jti.as_bytes())? {
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
        let st = self.state();
        let trees = &self.shared.trees;
        let jtis: Vec<String> = match room {
            Some(room) => {
                let prefix = keys::token_room(Some(room), "");
                // The room's part, without the (empty) jti's length.
                let prefix = prefix[..prefix.len() - 2].to_vec();
                let hi = match before {
                    Some(b) => Bound::Excluded(keys::token_room(Some(room), b)),
                    None => state::prefix_end(&prefix).map_or(Bound::Unbounded, Bound::Excluded),
                };
                st.range(trees, Tree::TokensByRoom, Bound::Included(prefix), hi, true, limit)?
                    .into_iter()
                    .filter_map(|(k, _)| keys::split(&k).and_then(|p| p.get(1).cloned()))
                    .collect()
            }
            None => {
                let hi = before.map_or(Bound::Unbounded, |b| Bound::Excluded(b.as_bytes().to_vec()));
                st.range(trees, Tree::Tokens, Bound::Unbounded, hi, true, limit)?
                    .into_iter()
                    .map(|(k, _)| String::from_utf8_lossy(&k).to_string())
                    .collect()
            }
        };
        let mut out = Vec::with_capacity(jtis.len());
        for j in jtis {
            if let Some(t) = self.token(&j)? {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// Durable events after `after`, at most `limit`, only of `types` when given. At most
    /// `max(limit × 100, 10,000)` are examined per call.
    pub fn events(&self, after: u64, limit: usize, types: Option<&[String]>) -> Result<Page, StoreError> {
        let budget = limit.saturating_mul(100).max(10_000);
        self.shared.events.read(after, limit, budget, &|e| types.is_none_or(|t| t.iter().any(|k| *k == *e.kind)))
    }

    /// Seq of the oldest retained event (head + 1 if none is).
    pub fn oldest_seq(&self) -> Result<u64, StoreError> {
        Ok(self.shared.events.oldest())
    }

    /// Changes whenever webhook configuration or state changes.
    pub fn watch_webhooks(&self) -> watch::Receiver<u64> {
        self.shared.webhooks_changed.subscribe()
    }

    pub fn webhook(&self, id: &str) -> Result<Option<WebhookRecord>, StoreError> {
        match self.get(Tree::Webhooks, id.as_bytes())? {
            Some(v) => Ok(Some(records::decode_webhook(id.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    pub fn webhooks(&self) -> Result<Vec<WebhookRecord>, StoreError> {
        self.state()
            .scan_prefix(&self.shared.trees, Tree::Webhooks, b"")?
            .iter()
            .map(|(k, v)| records::decode_webhook(k, v))
            .collect()
    }

    /// Recorded failed attempts of a webhook, newest first.
    pub fn attempts(&self, id: &str, limit: usize) -> Result<Vec<AttemptRecord>, StoreError> {
        let mut all = self.state().scan_prefix(&self.shared.trees, Tree::Attempts, &keys::attempts_of(id))?;
        all.reverse();
        all.iter().take(limit).map(|(k, v)| records::decode("attempts", k, records::ATTEMPT_V1, v)).collect()
    }

    /// A live session (present or waiting), with the digest of its secret.
    pub fn session(&self, id: &str) -> Option<Arc<Entry>> {
        self.state().live.get(id).cloned()
    }

    /// Sessions present in a room, in join order (by check-on-read: not past their deadline).
    pub fn room_sessions(&self, room: &str, now_ms: i64) -> Vec<Arc<Entry>> {
        self.state().live.present_in(room).into_iter().filter(|e| !e.session.is_over(now_ms)).collect()
    }

    /// A page of a room's present sessions in join order, after the session `after`.
    pub fn room_sessions_page(
        &self,
        room: &str,
        after: Option<&str>,
        limit: usize,
        now_ms: i64,
    ) -> Option<Vec<Arc<Entry>>> {
        let st = self.state();
        let anchor = match after {
            Some(id) => {
                let e = st.live.get(id).filter(|e| e.session.room == room)?;
                Some((e.session.joined_ms, Arc::from(id)))
            }
            None => None,
        };
        Some(
            st.live
                .present_page(room, anchor.as_ref(), limit)
                .into_iter()
                .filter(|e| !e.session.is_over(now_ms))
                .collect(),
        )
    }

    /// Sessions waiting in a room's lobby, in arrival order.
    pub fn waiting_sessions(&self, room: &str) -> Vec<Arc<Entry>> {
        self.state().live.waiting_in(room)
    }

    /// The live state as of the last durable batch (presence of every room, counts).
    pub fn live(&self) -> live::Live {
        self.state().live.clone()
    }

    /// A meeting's record.
    pub fn meeting(&self, id: &str) -> Result<Option<MeetingRecord>, StoreError> {
        let key = keys::meeting(id);
        let Some(v) = self.get(Tree::Meetings, &key)? else { return Ok(None) };
        let mut m = records::decode("meetings", &key, records::MEETING_V1, &v)?;
        with_live_peak(&self.state().live, &mut m);
        Ok(Some(m))
    }

    /// Retained meetings, newest first; of one room with `room`. All of them: for tests and
    /// small stores; a listing uses [`Store::visit_meetings`].
    pub fn meetings(&self, room: Option<&str>) -> Result<Vec<MeetingRecord>, StoreError> {
        let mut out = Vec::new();
        self.visit_meetings(room, |m| {
            out.push(m);
            true
        })?;
        Ok(out)
    }

    /// Retained meetings, newest first (of one room with `room`), handed to `visit` one at a
    /// time until it returns false. Read a page at a time: a listing holds what it keeps, not
    /// the history (30 days of it by default).
    pub fn visit_meetings(
        &self,
        room: Option<&str>,
        mut visit: impl FnMut(MeetingRecord) -> bool,
    ) -> Result<(), StoreError> {
        const PAGE: usize = 1024;
        let st = self.state();
        let trees = &self.shared.trees;
        let prefix = match room {
            None => b"m".to_vec(),
            Some(room) => keys::meetings_of_room(room),
        };
        let mut hi = match state::prefix_end(&prefix) {
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        loop {
            let rows = st.range(trees, Tree::Meetings, Bound::Included(prefix.clone()), hi, true, PAGE)?;
            for (k, v) in &rows {
                let mut m = match room {
                    None => records::decode("meetings", k, records::MEETING_V1, v)?,
                    Some(_) => {
                        let Some(id) = keys::split(&k[1..]).and_then(|p| p.get(1).cloned()) else { continue };
                        let key = keys::meeting(&id);
                        let Some(v) = st.get(trees, Tree::Meetings, &key)? else { continue };
                        records::decode("meetings", &key, records::MEETING_V1, &v)?
                    }
                };
                with_live_peak(&st.live, &mut m);
                if !visit(m) {
                    return Ok(());
                }
            }
            match rows.last() {
                Some((last, _)) if rows.len() == PAGE => hi = Bound::Excluded(last.clone()),
                _ => return Ok(()),
            }
        }
    }

    /// A meeting's participants, in join order.
    pub fn meeting_participants(&self, id: &str) -> Result<Vec<MeetingParticipantRecord>, StoreError> {
        self.state()
            .scan_prefix(&self.shared.trees, Tree::MeetingParticipants, &keys::parts(&[id]))?
            .iter()
            .map(|(k, v)| records::decode("meeting_participants", k, records::MEETING_PARTICIPANT_V1, v))
            .collect()
    }

    /// Bans in force for a room: (user id, ban).
    pub fn bans(&self, room: &str, now_ms: i64) -> Result<Vec<(String, BanRecord)>, StoreError> {
        let prefix = keys::parts(&[room]);
        let mut out = Vec::new();
        for (k, v) in self.state().scan_prefix(&self.shared.trees, Tree::Bans, &prefix)? {
            let ban: BanRecord = records::decode("bans", &k, records::BAN_V1, &v)?;
            let user = keys::split(&k).and_then(|p| p.get(1).cloned()).unwrap_or_default();
            if ban.until_ms.is_none_or(|u| u > now_ms) {
                out.push((user, ban));
            }
        }
        // Keys order by length first; callers get user ids in text order.
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    pub fn is_banned(&self, room: &str, user_id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let key = keys::ban(room, user_id);
        match self.get(Tree::Bans, &key)? {
            Some(v) => {
                let ban: BanRecord = records::decode("bans", &key, records::BAN_V1, &v)?;
                Ok(ban.until_ms.is_none_or(|u| u > now_ms))
            }
            None => Ok(false),
        }
    }

    /// Whether a verified token is revoked for use in `room` (its own room when `None`).
    pub fn is_revoked(
        &self,
        claims: &crate::tokens::Claims,
        token_id: &str,
        room: Option<&str>,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let lookup = |k: &[u8]| -> Result<Option<records::RevocationRecord>, StoreError> {
            match self.get(Tree::Revocations, k)? {
                Some(v) => Ok(Some(records::decode("revocations", k, records::REVOCATION_V1, &v)?)),
                None => Ok(None),
            }
        };
        is_revoked(&lookup, claims, token_id, room, now_ms)
    }

    /// Whether update-permissions withdrew the right to administer participants from a session
    /// of this token (it sticks to the token until the token expires).
    pub fn admin_withdrawn(&self, token_id: &str, now_ms: i64) -> Result<bool, StoreError> {
        let key = keys::revoke_admin(token_id);
        match self.get(Tree::Revocations, &key)? {
            Some(v) => {
                let r: records::RevocationRecord = records::decode("revocations", &key, records::REVOCATION_V1, &v)?;
                Ok(r.until_ms.is_none_or(|u| u > now_ms))
            }
            None => Ok(false),
        }
    }

    /// Number of pending deadlines.
    pub fn timer_count(&self) -> usize {
        self.state().timer_count
    }

    /// Number of present sessions.
    pub fn session_count(&self) -> usize {
        self.state().live.present_total()
    }

    pub fn stats(&self) -> &StoreStats {
        &self.shared.stats
    }
}

/// Revoked for use in `room`: by its id, by (room, user) before its `iat`, or by room before
/// its `iat`. `lookup` reads a revocation record by key.
fn is_revoked(
    lookup: &dyn Fn(&[u8]) -> Result<Option<records::RevocationRecord>, StoreError>,
    c: &crate::tokens::Claims,
    token_id: &str,
    room: Option<&str>,
    now_ms: i64,
) -> Result<bool, StoreError> {
    if let Some(r) = lookup(&keys::revoke_token(token_id))? {
        if r.until_ms.is_none_or(|u| u > now_ms) {
            return Ok(true);
        }
    }
    let Some(room) = room.or(c.room.as_deref()) else {
        return Ok(false);
    };
    let before = |r: Option<records::RevocationRecord>| {
        r.and_then(|r| r.issued_before_s).is_some_and(|b| c.iat.is_none_or(|iat| iat < b))
    };
    if let Some(user) = &c.user_id {
        if before(lookup(&keys::revoke_user(room, user))?) {
            return Ok(true);
        }
    }
    Ok(before(lookup(&keys::revoke_room(room))?))
}

/// The meeting history's cache: a quarter of sled's (`--cache-mb`), at least 2 MiB.
fn history_cache(sled_cache_bytes: u64) -> usize {
    usize::try_from(sled_cache_bytes / 4).unwrap_or(usize::MAX).max(2 << 20)
}

/// Opens sled, waiting up to 5 s for its file lock: after a store in this process is closed,
/// sled's own threads may hold the file for a moment longer. Another live process holding it
/// is still an error, with sled's message.
fn open_sled(opts: &StoreOptions) -> Result<sled::Db, StoreError> {
    drop_torn_sled_conf(&opts.path)?;
    drop_sled_snapshot_leftovers(&opts.path)?;
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

/// Syncs every file of `dirs` and drops its cached pages, so what the open reads next comes from
/// the disk. After a failed fsync Linux marks the lost pages clean and keeps serving them from
/// the page cache, and a descriptor opened later is told nothing: a restart in the same boot
/// would trust data the disk never got, and delete the journal that holds it. A failed sync
/// here refuses the start (the disk does not keep writes).
fn read_from_disk(dirs: &[PathBuf]) -> Result<(), StoreError> {
    for file in dirs.iter().flat_map(|d| crate::disk::files_in(d)) {
        crate::disk::drop_cached(&file)
            .map_err(|e| StoreError::Durability(format!("fsync of {} failed at start: {e}", file.display())))?;
    }
    Ok(())
}

/// sled writes a snapshot at open as `snap.<lsn>.generating`, then renames it; one that a crash
/// left behind (empty or partial) sorts after every finished snapshot, and sled picks it and
/// refuses to open. It holds nothing a finished snapshot or sled's log does not.
fn drop_sled_snapshot_leftovers(store_dir: &Path) -> Result<(), StoreError> {
    let leftovers: Vec<PathBuf> = crate::disk::files_in(store_dir)
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().ends_with(".generating")))
        .collect();
    if leftovers.is_empty() {
        return Ok(());
    }
    tracing::warn!(files = leftovers.len(), "removing sled snapshots a crash left half written");
    crate::disk::remove_files(store_dir, &leftovers)
        .map_err(|e| StoreError::Setup(format!("removing a half-written sled snapshot: {e}")))
}

/// sled writes its `conf` (the parameters it was opened with) without syncing it; a power cut
/// can leave the name durable and the bytes not, and sled then refuses to open. It holds
/// nothing but the parameters every open passes, so a torn one is removed for sled to write
/// again (a `conf` of 8 bytes or fewer sled already treats as missing).
fn drop_torn_sled_conf(store_dir: &Path) -> Result<(), StoreError> {
    let path = store_dir.join("conf");
    let Ok(bytes) = std::fs::read(&path) else { return Ok(()) };
    let Some(split) = bytes.len().checked_sub(4).filter(|_| bytes.len() > 8) else { return Ok(()) };
    let (body, crc) = bytes.split_at(split);
    if crc32fast::hash(body).to_le_bytes() == crc {
        return Ok(());
    }
    tracing::warn!(file = %path.display(), "sled's conf is torn (a power cut); writing it again");
    crate::disk::remove_files(store_dir, &[path])
        .map_err(|e| StoreError::Setup(format!("removing a torn sled conf: {e}")))
}

/// Replays the journal batches after the last checkpoint into sled and the event log (never
/// trusting what sled says it applied: sled's own flush is not an fsync), makes sled, its
/// folder and the event log durable, records the checkpoint and starts over with an empty
/// journal. Runs at every open, so whatever the open wrote itself (the schema, a new domain
/// id) is durable before anything is served. Returns the last batch number.
fn recover(
    db: &sled::Db,
    trees: &Trees,
    events: &eventlog::EventLog,
    wal: &Path,
    store_dir: &applier::SledDir,
) -> Result<u64, StoreError> {
    let meta = trees.sled(Tree::Meta);
    let applied = meta.get(keys::META_APPLIED_LSN)?.and_then(|v| keys::u64_of(&v)).unwrap_or(0);
    let checkpoint = journal::checkpointed(wal)?;
    let files = journal::list(wal)?;
    let replay = journal::after_checkpoint(journal::read_batches(wal)?, checkpoint);
    applier::apply_now(trees, &replay)?;
    let log_end = events.last();
    let lost: Vec<journal::LoggedEvent> =
        replay.iter().flat_map(|b| b.events.iter()).filter(|e| e.seq > log_end).cloned().collect();
    if let Some(first) = lost.first().filter(|e| e.seq != log_end + 1) {
        tracing::error!(
            log_end,
            next = first.seq,
            "events between the log's end and the journal's were lost from disk"
        );
    }
    events.append(&lost)?;
    let last = replay.last().map_or(0, |b| b.lsn).max(checkpoint).max(applied);
    meta.insert(keys::META_APPLIED_LSN, &last.to_be_bytes())?;
    meta.insert(keys::META_NEXT_SEQ, &(events.last() + 1).to_be_bytes())?;
    applier::checkpoint(db, trees.history(), store_dir, events, wal, last, files.last().map(|(n, _)| *n), true)?;
    if !replay.is_empty() {
        tracing::info!(batches = replay.len(), events = lost.len(), "journal recovered");
    }
    Ok(last)
}

/// The state at start-up: every session (with a fresh lease and its own deadline), the room
/// and ban deadlines, the counters.
fn load_state(
    trees: &Trees,
    lsn: u64,
    next_seq: u64,
    room_count: u64,
    events_oldest: u64,
    now_ms: i64,
    lease_ms: i64,
) -> Result<(State, state::Private), StoreError> {
    let mut st = State {
        lsn,
        next_seq,
        overlay: state::Overlay::new(),
        live: live::Live::default(),
        timer_count: 0,
        room_count,
        events_oldest,
    };
    let mut pv = state::Private::default();
    for item in trees.sled(Tree::Sessions).iter() {
        let (k, v) = item?;
        let rec: records::SessionRecord = records::decode("sessions", &k, records::SESSION_V2, &v)?;
        let e = Entry::from_record(rec);
        let id: Arc<str> = Arc::from(e.session.id.as_str());
        pv.leases.insert(id.clone(), now_ms);
        pv.timers.set(timers::TimerId::Lease(id.clone()), now_ms + lease_ms);
        if let Some(at) = e.eject_timer_ms {
            pv.timers.set(timers::TimerId::Eject(id), at);
        }
        st.live.insert(Arc::new(e));
    }
    for item in trees.sled(Tree::Timers).iter() {
        let (k, _) = item?;
        let Some((at, kind, id)) = keys::parse_timer(&k) else {
            return Err(StoreError::Corrupt { tree: "timers", key: keys::printable(&k), why: "unreadable key".into() });
        };
        let id = match (kind, id.as_slice()) {
            (keys::TIMER_ROOM_EXP, [room]) => timers::TimerId::RoomExp(Arc::from(room.as_str())),
            (keys::TIMER_BAN, [room, user]) => timers::TimerId::Ban(Arc::from(room.as_str()), Arc::from(user.as_str())),
            _ => continue,
        };
        pv.timers.set(id, at);
    }
    st.timer_count = pv.timers.len();
    Ok((st, pv))
}

fn schema_of(meta: &sled::Tree) -> Result<Option<u32>, StoreError> {
    match meta.get(keys::META_SCHEMA)? {
        None => Ok(None),
        Some(v) => <[u8; 4]>::try_from(v.as_ref())
            .map(u32::from_be_bytes)
            .map(Some)
            .map_err(|_| StoreError::Setup("unreadable schema version".into())),
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

/// The `session-data` frame of [`Store::send_session_data`] and of stream snapshots.
pub fn session_data_frame(room: &str, meeting_id: &str, seq: Option<u64>, data: &Map<String, Value>) -> fanout::Frame {
    let body = serde_json::json!({"room": room, "meeting_id": meeting_id, "seq": seq, "data": data}).to_string();
    fanout::Frame {
        kind: Arc::from("session-data"),
        about: None,
        admin_only: false,
        to: None,
        bytes: fanout::sse_frame("session-data", None, &body),
    }
}

/// `gatehouse migrate`: opens (and so migrates) a stopped data dir, then closes it.
pub fn migrate_data_dir(data_dir: &Path) -> Result<(), StoreError> {
    let store = data_dir.join("store");
    let db = sled::Config::new().path(&store).flush_every_ms(None).open()?;
    if schema_of(&db.open_tree(Tree::Meta.name())?)?.is_none() {
        return Err(StoreError::Setup(format!("{} holds no store", data_dir.display())));
    }
    let sled_dir = applier::SledDir::open(&store)?;
    upgrade(&db, data_dir, &sled_dir, 2 << 20)?;
    applier::checkpoint_sled(&db, &sled_dir, true)
}

/// Brings the store opened as `db` to this build's schema and opens the history file:
/// schema 1 is migrated to 2 (`migrate.rs`); schema 2 kept the meeting history in sled, and
/// schemas 2 and 3 the tokens: they are copied into the history file, made durable, the schema
/// set to 4 and made durable (an older build refuses the data dir from then on, instead of
/// showing no history or tokens), and only then is sled's copy cleared. A newer schema is
/// refused.
fn upgrade(
    db: &sled::Db,
    data_dir: &Path,
    sled_dir: &applier::SledDir,
    cache: usize,
) -> Result<history::History, StoreError> {
    let meta = db.open_tree(Tree::Meta.name())?;
    let found = schema_of(&meta)?;
    match found {
        None => {}
        Some(1) => {
            migrate::run(db, data_dir)?;
        }
        Some(2..=SCHEMA_VERSION) => migrate::drop_v1(db, data_dir)?,
        Some(found) => {
            return Err(StoreError::Setup(format!(
            "the data dir was written by a newer Gatehouse (schema {found}; this build reads up to {SCHEMA_VERSION})"
        )))
        }
    }
    let history = history::History::open(&sled_dir.path, cache)?;
    if found != Some(SCHEMA_VERSION) {
        // What sled held for that schema: schema 3 had the meeting history in the file already
        // (meeting rows left in sled by a cut after its own move are stale, never copied).
        let moving: &[Tree] = match found {
            Some(3) => &[Tree::Tokens, Tree::TokensByRoom],
            _ => &history::TREES,
        };
        let started = std::time::Instant::now();
        let copied = history.copy_from_sled(db, moving)?;
        meta.insert(keys::META_SCHEMA, &SCHEMA_VERSION.to_be_bytes())?;
        applier::checkpoint_sled(db, sled_dir, true)?;
        if copied > 0 {
            tracing::info!(
                records = copied,
                millis = started.elapsed().as_millis() as u64,
                "the store is at schema {SCHEMA_VERSION}: meeting history and tokens have their own file"
            );
        }
    }
    // From here on the file holds these trees; whatever sled still has of them (the drop of a
    // move cut short before the next checkpoint made it durable) goes, and the open's
    // checkpoint makes that durable.
    history::clear_sled(db)?;
    Ok(history)
}

/// An ongoing meeting's record holds its peak as of the last departure (joins into a running
/// meeting do not rewrite it); the room's live count may be higher now.
fn with_live_peak(live: &live::Live, m: &mut MeetingRecord) {
    if m.end_ms.is_some() {
        return;
    }
    if let Some(r) = live.room(&m.room).filter(|r| *r.meeting_id == *m.id) {
        m.max_participants = m.max_participants.max(r.present.len() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Schema 2 kept the meeting history in sled, and schemas 2 and 3 the tokens: the open
    /// copies them into the history file, records this schema and only then clears sled's copy;
    /// a newer schema than this build's is refused.
    /// A sled store in a temp dir that says it is at `schema`: the dir, `store/`, sled, `meta`.
    fn sled_at(schema: u32) -> (tempfile::TempDir, std::path::PathBuf, sled::Db, sled::Tree) {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let db = sled::Config::new().path(&store).open().unwrap();
        let meta = db.open_tree(Tree::Meta.name()).unwrap();
        meta.insert(keys::META_SCHEMA, &schema.to_be_bytes()).unwrap();
        (dir, store, db, meta)
    }

    #[test]
    fn schemas_2_and_3_move_their_history_and_tokens_out_of_sled() {
        for schema in [2u32, 3] {
            let (dir, store, db, meta) = sled_at(schema);
            // Schema 2 kept its meetings in sled. Schema 3 had them in the file; a cut after its
            // own move can leave stale rows in sled, which must not be copied over the file's.
            db.open_tree(Tree::Meetings.name()).unwrap().insert(b"m-one", b"record").unwrap();
            if schema == 3 {
                let h = history::History::open(&store, 2 << 20).unwrap();
                h.apply(Tree::Meetings, [(&b"m-one"[..], Some(&b"current"[..]))]).unwrap();
                h.sync().unwrap();
            }
            db.open_tree(Tree::Tokens.name()).unwrap().insert(b"jti-one", b"token").unwrap();
            db.open_tree(Tree::TokensByRoom.name()).unwrap().insert(b"room-jti-one", b"").unwrap();
            db.open_tree(Tree::Rooms.name()).unwrap().insert(b"room", b"stays").unwrap();
            let sled_dir = applier::SledDir::open(&store).unwrap();
            let moved = |history: &history::History| {
                let meeting: &[u8] = if schema == 2 { b"record" } else { b"current" };
                assert_eq!(history.get(Tree::Meetings, b"m-one").unwrap().as_deref(), Some(meeting));
                assert_eq!(history.get(Tree::Tokens, b"jti-one").unwrap().as_deref(), Some(&b"token"[..]));
                assert_eq!(history.get(Tree::TokensByRoom, b"room-jti-one").unwrap().as_deref(), Some(&b""[..]));
            };
            let history = upgrade(&db, dir.path(), &sled_dir, 2 << 20).unwrap();
            moved(&history);
            for t in history::TREES {
                assert!(db.open_tree(t.name()).unwrap().is_empty(), "sled's copy of {} is dropped", t.name());
            }
            assert_eq!(db.open_tree(Tree::Rooms.name()).unwrap().get(b"room").unwrap().as_deref(), Some(&b"stays"[..]));
            assert_eq!(schema_of(&meta).unwrap(), Some(SCHEMA_VERSION));
            drop(history);
            // Opening again moves nothing and keeps what the file holds.
            let history = upgrade(&db, dir.path(), &sled_dir, 2 << 20).unwrap();
            moved(&history);
            drop(history);
        }
        // A store at this schema whose sled still holds token rows (a cut before the drop was
        // durable): they are dropped, not copied.
        let (dir, store, db, meta) = sled_at(SCHEMA_VERSION);
        db.open_tree(Tree::Tokens.name()).unwrap().insert(b"left", b"over").unwrap();
        let sled_dir = applier::SledDir::open(&store).unwrap();
        let history = upgrade(&db, dir.path(), &sled_dir, 2 << 20).unwrap();
        assert!(db.open_tree(Tree::Tokens.name()).unwrap().is_empty(), "the leftover is dropped");
        assert_eq!(history.get(Tree::Tokens, b"left").unwrap(), None);
        drop(history);
        meta.insert(keys::META_SCHEMA, &(SCHEMA_VERSION + 1).to_be_bytes()).unwrap();
        let refused = upgrade(&db, dir.path(), &sled_dir, 2 << 20).err().expect("a newer schema is refused");
        assert!(refused.to_string().contains("newer Gatehouse"), "{refused}");
    }

    /// A power cut can leave sled's `conf` named but torn; sled would then refuse to open.
    #[test]
    fn a_torn_sled_conf_is_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        drop(sled::Config::new().path(&store).open().unwrap());
        let conf = store.join("conf");
        let good = std::fs::read(&conf).unwrap();
        drop_torn_sled_conf(&store).unwrap();
        assert_eq!(std::fs::read(&conf).unwrap(), good, "an intact conf is kept");
        let mut torn = good.clone();
        let n = torn.len();
        torn[n / 2..].fill(0);
        std::fs::write(&conf, &torn).unwrap();
        drop_torn_sled_conf(&store).unwrap();
        assert!(!conf.exists());
        drop(sled::Config::new().path(&store).open().expect("sled opens once the torn conf is gone"));
        assert_eq!(std::fs::read(&conf).unwrap(), good);
    }

    /// sled picks a `snap.*.generating` a crash left behind over every finished snapshot.
    #[test]
    fn a_half_written_sled_snapshot_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let db = sled::Config::new().path(&store).open().unwrap();
        db.insert(b"k", b"v").unwrap();
        drop(db);
        std::fs::write(store.join("snap.7FFFFFFFFFFFFFFF.generating"), b"half a snapshot").unwrap();
        assert!(sled::Config::new().path(&store).open().is_err(), "sled opens over a half-written snapshot");
        drop_sled_snapshot_leftovers(&store).unwrap();
        // A sled that was just dropped (or failed to open) may hold its file lock a moment
        // longer, in a background thread: wait for it rather than fail on it.
        let mut opened = sled::Config::new().path(&store).open();
        for _ in 0..100 {
            match &opened {
                Err(e) if e.to_string().contains("could not acquire lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    opened = sled::Config::new().path(&store).open();
                }
                _ => break,
            }
        }
        let db = opened.expect("sled opens once the leftover is gone");
        assert_eq!(db.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    }
}
