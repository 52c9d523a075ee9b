//! The history file: what the server has issued and held, kept for as long as its retention or
//! expiry says — the meeting history (`v2/meetings`, `v2/meeting_participants`) and the issued
//! tokens (`tokens`, `v2/tokens_by_room`) — lives in `store/history.redb` (a redb B-tree
//! file), not in sled.
//!
//! Why: sled 0.34 keeps bookkeeping in memory for every page it stores, whatever its cache
//! size, so with meeting history kept (the default retention is 30 days) the server's memory
//! grew with every meeting ever held (~39 bytes a lifecycle, measured). redb's index is pages of
//! its file, read through a cache of fixed size: memory stays flat however much is kept.
//! Tokens came later for speed: sled rewrote 2.3–3.3 KB of log pages per 80-byte token record,
//! which cost token creation a third of its CPU; one redb commit per applied group of batches,
//! its keys (UUIDv7) appended at the B-trees' right edges, costs far less.
//!
//! The journal stays the source of truth: the applier writes here off the acknowledgement path
//! with non-durable commits, and each checkpoint makes them durable (one durable commit, which
//! fsyncs the file) before the journal files that hold them go. Recovery replays the journal
//! past the checkpoint here as into sled; the writes are absolute, so replaying is exact.
//! Each durable commit records redb's allocator state, so an open after a crash does not walk
//! the file to rebuild it.
//!
//! Must not: be written by anything but the applier, recovery, a restore and the open's
//! adoption of history an older build kept in sled.

use std::collections::VecDeque;
use std::ops::Bound;
use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableError};

use super::state::Tree;
use super::StoreError;

/// The file, in sled's folder (so a restore moves it in with the rest of the store).
pub const FILE: &str = "history.redb";
/// Where a new file is made before it takes [`FILE`]'s name: redb sizes a new file before it
/// writes its magic bytes, so a crash mid-creation leaves a file it refuses to open.
const NEW: &str = "history.redb.new";

/// Entries a range reads per read transaction (a listing takes a page of 100 or so).
const CHUNK: usize = 256;

/// The trees kept here rather than in sled.
pub const TREES: [Tree; 4] = [Tree::Tokens, Tree::TokensByRoom, Tree::Meetings, Tree::MeetingParticipants];

pub fn holds(t: Tree) -> bool {
    TREES.contains(&t)
}

fn table(t: Tree) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(t.name())
}

fn err(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::History(format!("{what}: {e}"))
}

pub struct History {
    db: Database,
    path: std::path::PathBuf,
}

impl History {
    /// Opens (or creates) `dir/history.redb` with a cache of `cache_bytes`.
    /// A new file is made whole aside (both tables, durable), then renamed in and `dir`
    /// synced: its name is durable before anything is written to it that sled then forgets.
    pub fn open(dir: &Path, cache_bytes: usize) -> Result<History, StoreError> {
        let path = dir.join(FILE);
        let setup = |what: &Path, e: &dyn std::fmt::Display| StoreError::Setup(format!("{}: {e}", what.display()));
        let started = std::time::Instant::now();
        let new = dir.join(NEW);
        if new.exists() {
            std::fs::remove_file(&new).map_err(|e| setup(&new, &e))?;
        }
        if !path.exists() {
            let made = History {
                db: Self::builder(cache_bytes).create(&new).map_err(|e| setup(&new, &e))?,
                path: new.clone(),
            };
            // Every table exists from the first open on, so readers never meet a missing one.
            made.write(Durability::Immediate, |w| {
                for t in TREES {
                    w.open_table(table(t)).map_err(|e| err("creating a history table", e))?;
                }
                Ok(())
            })?;
            drop(made);
            std::fs::rename(&new, &path).map_err(|e| setup(&path, &e))?;
            crate::disk::sync_dir(dir).map_err(|e| setup(dir, &e))?;
        }
        let h = History { db: Self::builder(cache_bytes).open(&path).map_err(|e| setup(&path, &e))?, path };
        if started.elapsed() > std::time::Duration::from_secs(1) {
            tracing::info!(secs = started.elapsed().as_secs_f64(), "meeting history opened");
        }
        Ok(h)
    }

    /// The file's size on disk.
    pub fn file_len(&self) -> u64 {
        std::fs::metadata(&self.path).map_or(0, |m| m.len())
    }

    fn builder(cache_bytes: usize) -> redb::Builder {
        let mut b = Database::builder();
        b.set_cache_size(cache_bytes).set_repair_callback(|s| {
            tracing::warn!(progress = s.progress(), "repairing the meeting history file after a crash");
        });
        b
    }

    fn write(
        &self,
        durability: Durability,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut w = self.db.begin_write().map_err(|e| err("starting a history write", e))?;
        w.set_durability(durability).map_err(|e| err("setting a history write's durability", e))?;
        if matches!(durability, Durability::Immediate) {
            // The allocator state goes with the commit: an open after a crash reads it instead
            // of walking the whole file.
            w.set_quick_repair(true);
        }
        f(&w)?;
        w.commit().map_err(|e| err("committing to the history", e))
    }

    /// Applies puts (`Some`) and deletes (`None`) to tree `t`, visible to readers at once,
    /// durable at the next [`History::sync`].
    pub fn apply<'a>(
        &self,
        t: Tree,
        ops: impl IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    ) -> Result<(), StoreError> {
        self.apply_trees([(t, ops)])
    }

    /// [`History::apply`] for several trees in one commit (a commit costs more than a key).
    pub fn apply_trees<'a, I>(&self, trees: impl IntoIterator<Item = (Tree, I)>) -> Result<(), StoreError>
    where
        I: IntoIterator<Item = (&'a [u8], Option<&'a [u8]>)>,
    {
        self.write(Durability::None, |w| {
            for (t, ops) in trees {
                let mut tab = w.open_table(table(t)).map_err(|e| err("opening a history table", e))?;
                for (k, v) in ops {
                    match v {
                        Some(v) => tab.insert(k, v).map(drop),
                        None => tab.remove(k).map(drop),
                    }
                    .map_err(|e| err("writing the history", e))?;
                }
            }
            Ok(())
        })
    }

    /// Makes every write applied so far durable (the file fsynced).
    pub fn sync(&self) -> Result<(), StoreError> {
        self.write(Durability::Immediate, |_| Ok(())).map_err(|e| match e {
            StoreError::History(why) => StoreError::Durability(format!("syncing the meeting history failed: {why}")),
            other => other,
        })
    }

    pub fn get(&self, t: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let r = self.db.begin_read().map_err(|e| err("reading the history", e))?;
        let tab = match r.open_table(table(t)) {
            Ok(tab) => tab,
            Err(TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(err("opening a history table", e)),
        };
        let value = tab.get(key).map_err(|e| err("reading the history", e))?.map(|v| v.value().to_vec());
        Ok(value)
    }

    /// Entries of `t` in `lo..hi`, in key order or reversed. Read a chunk at a time, each in a
    /// short read transaction (a long one would keep redb from reusing freed pages).
    pub fn range(&self, t: Tree, lo: Bound<Vec<u8>>, hi: Bound<Vec<u8>>, rev: bool) -> Range<'_> {
        Range { history: self, t, lo, hi, rev, buf: VecDeque::new(), done: false }
    }

    fn chunk(&self, r: &mut Range<'_>) -> Result<(), StoreError> {
        let txn = self.db.begin_read().map_err(|e| err("reading the history", e))?;
        let tab = match txn.open_table(table(r.t)) {
            Ok(tab) => tab,
            Err(TableError::TableDoesNotExist(_)) => {
                r.done = true;
                return Ok(());
            }
            Err(e) => return Err(err("opening a history table", e)),
        };
        let range = tab.range((slice_bound(&r.lo), slice_bound(&r.hi))).map_err(|e| err("reading the history", e))?;
        let items: Box<dyn Iterator<Item = _>> = if r.rev { Box::new(range.rev()) } else { Box::new(range) };
        for item in items.take(CHUNK) {
            let (k, v) = item.map_err(|e| err("reading the history", e))?;
            r.buf.push_back((k.value().to_vec(), v.value().to_vec()));
        }
        if r.buf.len() < CHUNK {
            r.done = true;
        }
        if let Some((last, _)) = r.buf.back() {
            if r.rev {
                r.hi = Bound::Excluded(last.clone());
            } else {
                r.lo = Bound::Excluded(last.clone());
            }
        }
        Ok(())
    }

    /// Copies `trees` as an older build kept them in sled (the meeting history before schema 3,
    /// the tokens before schema 4) here, in place of whatever this file holds of them (a copy
    /// cut short, after which an older build went on writing sled), and makes them durable (a
    /// sync every 64 pages bounds what redb holds unsynced); returns how many rows. The open
    /// then records the new schema and clears sled's copy ([`clear_sled`]). Cut short anywhere,
    /// the next open copies again: the rows are the same.
    pub fn copy_from_sled(&self, db: &sled::Db, trees: &[Tree]) -> Result<u64, StoreError> {
        self.write(Durability::Immediate, |w| {
            for t in trees {
                w.delete_table(table(*t)).map_err(|e| err("emptying a history table", e))?;
                w.open_table(table(*t)).map_err(|e| err("creating a history table", e))?;
            }
            Ok(())
        })?;
        let mut moved = 0;
        for &t in trees {
            let tree = db.open_tree(t.name())?;
            let mut page: Vec<(sled::IVec, sled::IVec)> = Vec::with_capacity(4096);
            let mut pages = 0u64;
            for item in tree.iter() {
                page.push(item?);
                if page.len() == 4096 {
                    moved += page.len() as u64;
                    self.apply(t, page.iter().map(|(k, v)| (k.as_ref(), Some(v.as_ref()))))?;
                    page.clear();
                    pages += 1;
                    if pages % 64 == 0 {
                        self.sync()?;
                    }
                }
            }
            moved += page.len() as u64;
            self.apply(t, page.iter().map(|(k, v)| (k.as_ref(), Some(v.as_ref()))))?;
        }
        if moved > 0 {
            self.sync()?;
            tracing::info!(records = moved, "meeting history and tokens copied out of sled into {FILE}");
        }
        Ok(moved)
    }
}

/// Removes sled's copy of what this file holds (after [`History::copy_from_sled`] made it
/// durable here, or a leftover of a move cut short). The trees that hold anything are dropped
/// whole (removing key by key cost ~10 µs a row); `Trees::open` opens them again, empty.
pub fn clear_sled(db: &sled::Db) -> Result<(), StoreError> {
    for t in TREES {
        if !db.open_tree(t.name())?.is_empty() {
            db.drop_tree(t.name())?;
        }
    }
    Ok(())
}

fn slice_bound(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(k) => Bound::Included(k.as_slice()),
        Bound::Excluded(k) => Bound::Excluded(k.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// See [`History::range`].
pub struct Range<'a> {
    history: &'a History,
    t: Tree,
    lo: Bound<Vec<u8>>,
    hi: Bound<Vec<u8>>,
    rev: bool,
    buf: VecDeque<(Vec<u8>, Vec<u8>)>,
    done: bool,
}

impl Iterator for Range<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>), StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() && !self.done {
            let history = self.history;
            if let Err(e) = history.chunk(self) {
                self.done = true;
                self.buf.clear();
                return Some(Err(e));
            }
        }
        self.buf.pop_front().map(Ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> History {
        History::open(dir, 1 << 20).unwrap()
    }

    #[test]
    fn ranges_cross_chunks_both_ways_and_stop_at_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let h = open(dir.path());
        let keys: Vec<Vec<u8>> = (0u32..1000).map(|i| i.to_be_bytes().to_vec()).collect();
        h.apply(Tree::Meetings, keys.iter().map(|k| (k.as_slice(), Some(k.as_slice())))).unwrap();
        let lo = Bound::Included(10u32.to_be_bytes().to_vec());
        let hi = Bound::Excluded(900u32.to_be_bytes().to_vec());
        let fwd: Vec<_> = h.range(Tree::Meetings, lo.clone(), hi.clone(), false).map(|r| r.unwrap().0).collect();
        assert_eq!(fwd, keys[10..900].to_vec());
        let back: Vec<_> = h.range(Tree::Meetings, lo, hi, true).map(|r| r.unwrap().0).collect();
        assert_eq!(back, keys[10..900].iter().rev().cloned().collect::<Vec<_>>());
        assert_eq!(h.range(Tree::MeetingParticipants, Bound::Unbounded, Bound::Unbounded, false).count(), 0);
        h.apply(Tree::Meetings, [(keys[5].as_slice(), None)]).unwrap();
        assert_eq!(h.get(Tree::Meetings, &keys[5]).unwrap(), None);
        assert_eq!(h.get(Tree::Meetings, &keys[6]).unwrap(), Some(keys[6].clone()));
    }

    /// redb sizes a new file before it writes its magic bytes: a crash then leaves a file it
    /// refuses. The file is made aside, so such a leftover is only ever the `.new` one.
    #[test]
    fn a_file_cut_short_while_being_made_is_made_again() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(NEW), vec![0u8; 8192]).unwrap();
        let h = open(dir.path());
        h.apply(Tree::Meetings, [(&b"k"[..], Some(&b"v"[..]))]).unwrap();
        assert!(!dir.path().join(NEW).exists());
        assert!(dir.path().join(FILE).exists());
    }

    #[test]
    fn synced_writes_survive_a_reopen_and_a_copy_from_sled_replaces_its_trees() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path().join("sled")).open().unwrap();
        let old = db.open_tree(Tree::MeetingParticipants.name()).unwrap();
        old.insert(b"p1", b"v1").unwrap();
        old.insert(b"p2", b"v2").unwrap();
        {
            let h = open(dir.path());
            // Left by a copy cut short, after which an older build deleted it in sled.
            h.apply(Tree::Tokens, [(&b"t-stale"[..], Some(&b"x"[..]))]).unwrap();
            // Not among the trees copied: kept, and made durable by the copy's sync.
            h.apply(Tree::Meetings, [(&b"m1"[..], Some(&b"x"[..]))]).unwrap();
            assert_eq!(h.copy_from_sled(&db, &[Tree::Tokens, Tree::MeetingParticipants]).unwrap(), 2);
            clear_sled(&db).unwrap();
            assert!(db.open_tree(Tree::MeetingParticipants.name()).unwrap().is_empty(), "dropped");
        }
        let h = open(dir.path());
        assert_eq!(h.get(Tree::Meetings, b"m1").unwrap(), Some(b"x".to_vec()), "the copy's sync covered it");
        assert_eq!(h.get(Tree::MeetingParticipants, b"p2").unwrap(), Some(b"v2".to_vec()));
        assert_eq!(h.get(Tree::Tokens, b"t-stale").unwrap(), None, "the copy replaced the tree");
    }
}
