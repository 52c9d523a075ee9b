//! The applier and the checkpointer: sled is written off the acknowledgement path.
//!
//! The applier takes batches the writer made durable and, in rounds at least 10 ms apart,
//! coalesces whatever is waiting into one `apply_batch` per sled tree (the writer and sled then
//! use both cores) and one commit for the history file's trees (`history.rs`), records the last batch
//! applied in `meta`, and tells the writer, which then forgets those writes from its overlay.
//! sled may hold part of a batch after a crash; recovery replays every batch past the recorded
//! one, in order, and the writes are absolute, so replaying is harmless.
//!
//! The checkpointer, when the writer closes a journal file, waits until sled holds all of it,
//! makes sled (its files and folder), the history file and the event segments durable with
//! real fsyncs, records
//! the checkpoint, and deletes the file. A failed fsync stops it for good and the store
//! refuses writes: the journal keeps everything, and a restart recovers from it.
//!
//! Must not: write anything the journal does not hold.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::eventlog::EventLog;
use super::health::Health;
use super::history::History;
use super::journal::{self, Op};
use super::keys;
use super::state::{Tree, Trees};
use super::StoreError;
use crate::disk;

/// A durable batch's writes, for the applier.
pub struct Applied {
    pub lsn: u64,
    pub ops: Vec<Op>,
}

/// Most ops coalesced into one round of `apply_batch`: enough to amortise a round, few enough
/// that a round's batches stay a few MiB (200,000 made the applier's round the largest
/// transient allocation after the packer's).
const MAX_COALESCED_OPS: usize = 20_000;

/// Least time between the starts of two rounds: under a steady load, rounds of 10 ms cost
/// the applier 3.7 µs a token, rounds as they came 9.6 µs (one redb commit each, measured).
const PACE: Duration = Duration::from_millis(10);

pub struct Applier {
    pub trees: Trees,
    /// To refuse writes when the history file fails (`None` in recovery, which reports it).
    pub shared: Option<Arc<super::Shared>>,
    pub applied: Arc<AtomicU64>,
    pub health: Arc<Health>,
    /// Test builds: the applier stops until this instant (millis since the epoch; 0: no).
    pub frozen_until: Arc<std::sync::atomic::AtomicI64>,
    /// Test builds: a crash to simulate (see [`Crash`]).
    pub crash: Arc<std::sync::Mutex<Option<Crash>>>,
    /// Set when the applier has stopped (the checkpointer stops waiting for it).
    pub done: Arc<std::sync::atomic::AtomicBool>,
}

/// A crash in the middle of applying, for tests: `batches` more batches are applied whole,
/// then `trees` of the next one's per-tree writes, then nothing more — as if the process died
/// there. sled then holds part of the journal, and part of one batch.
#[derive(Debug, Clone, Copy)]
pub struct Crash {
    pub batches: usize,
    pub trees: usize,
}

impl Applier {
    pub fn run(self, rx: flume::Receiver<Applied>) {
        self.apply_all(&rx);
        self.done.store(true, Ordering::Release);
    }

    fn apply_all(&self, rx: &flume::Receiver<Applied>) {
        let mut last_round = std::time::Instant::now() - PACE;
        while let Ok(first) = rx.recv() {
            match self.crash_step(&first) {
                Some(true) => continue,
                Some(false) => {
                    // "Dead": whatever else comes is never applied.
                    while rx.recv().is_ok() {}
                    return;
                }
                None => {}
            }
            // Gather for a while: each round costs a redb commit and a sled write of its own
            // besides its keys, and nobody waits on it (readers have the overlay).
            let since = last_round.elapsed();
            if since < PACE {
                std::thread::sleep(PACE - since);
            }
            last_round = std::time::Instant::now();
            self.health.applier_busy();
            let mut batches = vec![first];
            let mut ops = batches[0].ops.len();
            while ops < MAX_COALESCED_OPS {
                match rx.try_recv() {
                    Ok(b) => {
                        ops += b.ops.len();
                        batches.push(b);
                    }
                    Err(_) => break,
                }
            }
            self.wait_while_frozen();
            let last = batches.last().map_or(0, |b| b.lsn);
            let mut delay = Duration::from_millis(100);
            loop {
                match self.apply(&batches, last) {
                    Ok(()) => break,
                    Err(StoreError::History(why)) => {
                        // redb refuses every write after a failed commit until it is opened
                        // again: no retry can succeed. The journal holds every batch, and a
                        // restart replays them.
                        if let Some(shared) = &self.shared {
                            shared.poison(format!(
                                "the history file failed ({why}); restart to recover from the journal"
                            ));
                        }
                        self.health.applier_failed(why);
                        while rx.recv().is_ok() {}
                        return;
                    }
                    Err(e) => {
                        // The journal still holds every batch; keep trying (a full disk may clear).
                        self.health.applier_failed(e.to_string());
                        std::thread::sleep(delay);
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
            self.applied.store(last, Ordering::Release);
            self.health.applier_idle();
        }
    }

    /// With a crash armed (tests): applies `b` whole (`Some(true)`), or part of it and then
    /// nothing more (`Some(false)`). `None` when no crash is armed.
    fn crash_step(&self, b: &Applied) -> Option<bool> {
        let mut armed = self.crash.lock().ok()?;
        let crash = armed.as_mut()?;
        if crash.batches > 0 {
            crash.batches -= 1;
            drop(armed);
            if self.apply(std::slice::from_ref(b), b.lsn).is_ok() {
                self.applied.store(b.lsn, Ordering::Release);
            }
            return Some(true);
        }
        let trees = crash.trees;
        drop(armed);
        // Tree by tree in the order the batch first writes them; only the first `trees`.
        let mut order: Vec<u8> = Vec::new();
        for (t, _, _) in &b.ops {
            if !order.contains(t) {
                order.push(*t);
            }
        }
        for t in order.into_iter().take(trees) {
            if let Some(tree) = Tree::from_index(t) {
                let ops: Vec<(&[u8], Option<&[u8]>)> =
                    b.ops.iter().filter(|(x, _, _)| *x == t).map(|(_, k, v)| (k.as_slice(), v.as_deref())).collect();
                let _ = self.trees.apply(tree, &ops);
            }
        }
        Some(false)
    }

    fn apply(&self, batches: &[Applied], last: u64) -> Result<(), StoreError> {
        let mut per_tree: Vec<Vec<(&[u8], Option<&[u8]>)>> = (0..Tree::ALL.len()).map(|_| Vec::new()).collect();
        for b in batches {
            for (t, k, v) in &b.ops {
                let ops = per_tree.get_mut(usize::from(*t)).ok_or_else(|| StoreError::Corrupt {
                    tree: "journal",
                    key: String::new(),
                    why: format!("unknown tree index {t}"),
                })?;
                ops.push((k.as_slice(), v.as_deref()));
            }
        }
        let writes: Vec<(Tree, &super::state::Ops<'_>)> =
            Tree::ALL.iter().zip(&per_tree).map(|(t, ops)| (*t, ops.as_slice())).collect();
        self.trees.apply_trees(&writes)?;
        self.trees.sled(Tree::Meta).insert(keys::META_APPLIED_LSN, &last.to_be_bytes())?;
        Ok(())
    }

    fn wait_while_frozen(&self) {
        loop {
            let until = self.frozen_until.load(Ordering::Relaxed);
            let now = crate::clock::system_now_ms();
            if until <= now {
                return;
            }
            std::thread::sleep(Duration::from_millis((until - now).clamp(1, 100) as u64));
        }
    }
}

/// Applies journal batches to sled directly (recovery), one tree batch per tree per call.
pub fn apply_now(trees: &Trees, batches: &[journal::Batch]) -> Result<(), StoreError> {
    let Some(last) = batches.last().map(|b| b.lsn) else { return Ok(()) };
    let applier = Applier {
        trees: trees.clone(),
        shared: None,
        applied: Arc::default(),
        health: Arc::new(Health::new(Duration::from_secs(3600))),
        frozen_until: Arc::default(),
        crash: Arc::default(),
        done: Arc::default(),
    };
    let as_applied: Vec<Applied> = batches.iter().map(|b| Applied { lsn: b.lsn, ops: b.ops.clone() }).collect();
    for chunk in as_applied.chunks(256) {
        let chunk_last = chunk.last().map_or(last, |b| b.lsn);
        applier.apply(chunk, chunk_last)?;
    }
    Ok(())
}

/// A journal file the writer closed, and the last batch in it.
pub struct Closed {
    pub file: u64,
    pub last_lsn: u64,
}

pub struct Checkpointer {
    /// To refuse writes when a sync fails.
    pub shared: Arc<super::Shared>,
    pub db: sled::Db,
    pub history: Arc<History>,
    pub store_dir: Arc<SledDir>,
    pub journal_dir: PathBuf,
    pub events: Arc<EventLog>,
    pub applied: Arc<AtomicU64>,
    /// The applier has stopped: what it has not applied stays in the journal.
    pub applier_done: Arc<std::sync::atomic::AtomicBool>,
}

impl Checkpointer {
    /// Folds closed journal files into sled and the segments. A checkpoint that fails keeps
    /// every journal file, refuses writes from then on, and stops checkpointing: a sync that
    /// failed may have lost what it was to write, and trying again could "succeed" without it.
    pub fn run(self, rx: std::sync::mpsc::Receiver<Closed>) {
        while let Ok(mut closed) = rx.recv() {
            while let Ok(later) = rx.try_recv() {
                closed = later;
            }
            while self.applied.load(Ordering::Acquire) < closed.last_lsn {
                if self.applier_done.load(Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Err(e) = checkpoint(
                &self.db,
                &self.history,
                &self.store_dir,
                &self.events,
                &self.journal_dir,
                closed.last_lsn,
                Some(closed.file),
                false,
            ) {
                self.shared.poison(format!("checkpoint failed: {e}"));
                while rx.recv().is_ok() {}
                return;
            }
        }
    }
}

/// Makes sled, the meeting history and the event log durable, records that they hold every
/// batch up to `lsn`, and deletes the journal files up to `upto`. `at_open`: sled's own files
/// and folders too.
pub fn checkpoint(
    db: &sled::Db,
    history: &History,
    store_dir: &SledDir,
    events: &EventLog,
    journal_dir: &Path,
    lsn: u64,
    upto: Option<u64>,
    at_open: bool,
) -> Result<(), StoreError> {
    checkpoint_sled(db, store_dir, at_open)?;
    history.sync()?;
    events.sync()?;
    journal::set_checkpoint(journal_dir, lsn)?;
    match upto {
        Some(n) => journal::remove_upto(journal_dir, n),
        None => Ok(()),
    }
}

/// sled's folder, with its log file held open from the store's open on: Linux reports a
/// failed writeback once to each descriptor open when it happened, so an fsync through this
/// one sees a failure even when one of sled's own syncs saw it first (a descriptor opened
/// afterwards would be told nothing).
pub struct SledDir {
    pub path: PathBuf,
    db_file: std::fs::File,
}

impl SledDir {
    /// Opens sled's log file (`db`, which sled creates) for syncing.
    pub fn open(path: &Path) -> Result<SledDir, StoreError> {
        let db_file = std::fs::File::open(path.join("db"))
            .map_err(|e| StoreError::Setup(format!("opening {}: {e}", path.join("db").display())))?;
        Ok(SledDir { path: path.to_path_buf(), db_file })
    }
}

/// Makes everything sled holds durable: `flush()` writes its buffers with `sync_file_range`,
/// which syncs neither the file's size nor the disk's cache; then a real fsync of its log
/// (through the descriptor held since the open) and of its blobs, since journal files are
/// deleted on the strength of it. `all` also syncs the files and names sled only makes when it
/// opens (`conf`, `snap.*`, the folders): at an open, a restore, a migration.
pub fn checkpoint_sled(db: &sled::Db, dir: &SledDir, all: bool) -> Result<(), StoreError> {
    let failed = |what: &Path, e: std::io::Error| {
        StoreError::Durability(format!("fsync of the store's {} failed: {e}", what.display()))
    };
    db.flush().map_err(|e| StoreError::Durability(format!("sled's flush failed: {e}")))?;
    dir.db_file.sync_all().map_err(|e| failed(&dir.path.join("db"), e))?;
    let blobs = dir.path.join("blobs");
    let folders = if all { vec![blobs, dir.path.clone()] } else { vec![blobs] };
    for folder in folders {
        let files: Vec<PathBuf> = disk::files_in(&folder).into_iter().filter(|p| *p != dir.path.join("db")).collect();
        if files.is_empty() && !all {
            continue;
        }
        for path in files {
            // A blob sled removes meanwhile needs no sync: the folder's sync covers its removal.
            match disk::sync_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(failed(&path, e)),
            }
        }
        if folder.is_dir() {
            disk::sync_dir(&folder).map_err(|e| failed(&folder, e))?;
        }
    }
    Ok(())
}
