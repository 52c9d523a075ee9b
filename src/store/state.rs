//! The store's state as of a batch: the writes sled may not hold yet (the overlay), who is
//! present (`live`), the deadlines, the leases and the counters. The writer works on its own
//! copy and publishes it after each durable batch; readers use the published copy and fall
//! back to sled for everything the overlay does not hold. Every collection is persistent
//! (`imbl`), so copying the state is O(1).
//!
//! Must not: write sled (the applier does), or be changed by anything but the writer.

use std::ops::Bound;
use std::sync::Arc;

use super::history::{self, History};
use super::live::Live;
use super::timers::Timers;
use super::StoreError;

/// What only the writer needs: deadlines and leases (readers get the deadline count).
#[derive(Debug, Default)]
pub struct Private {
    pub timers: Timers,
    /// Last sign of life per session (join, heartbeat, open stream).
    pub leases: std::collections::HashMap<Arc<str>, i64>,
    /// Ban rows per room, for the rooms whose bans were counted since the start (counted once
    /// from the trees, then kept up to date by every ban written or removed): the per-room cap
    /// is checked without reading every ban of the room at each call.
    pub ban_counts: std::collections::HashMap<Arc<str>, usize>,
}

/// Names of the sled trees, in the order journal records number them (only ever append).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tree {
    Meta,
    Rooms,
    RoomsById,
    RoomsByCreated,
    Tokens,
    TokensByRoom,
    Sessions,
    Bans,
    Revocations,
    Timers,
    Webhooks,
    Attempts,
    Meetings,
    MeetingParticipants,
}

impl Tree {
    pub const ALL: [Tree; 14] = [
        Tree::Meta,
        Tree::Rooms,
        Tree::RoomsById,
        Tree::RoomsByCreated,
        Tree::Tokens,
        Tree::TokensByRoom,
        Tree::Sessions,
        Tree::Bans,
        Tree::Revocations,
        Tree::Timers,
        Tree::Webhooks,
        Tree::Attempts,
        Tree::Meetings,
        Tree::MeetingParticipants,
    ];

    /// The tree's name in sled (part of the on-disk format). Trees whose key layout changed
    /// in schema 2 have new names, so the migration never confuses the two.
    pub fn name(self) -> &'static str {
        match self {
            Tree::Meta => "meta",
            Tree::Rooms => "rooms",
            Tree::RoomsById => "rooms_by_id",
            Tree::RoomsByCreated => "rooms_by_created",
            Tree::Tokens => "tokens",
            Tree::TokensByRoom => "v2/tokens_by_room",
            Tree::Sessions => "v2/sessions",
            Tree::Bans => "v2/bans",
            Tree::Revocations => "v2/revocations",
            Tree::Timers => "v2/timers",
            Tree::Webhooks => "webhooks",
            Tree::Attempts => "v2/attempts",
            Tree::Meetings => "v2/meetings",
            Tree::MeetingParticipants => "v2/meeting_participants",
        }
    }

    pub fn index(self) -> u8 {
        self as u8
    }

    pub fn from_index(i: u8) -> Option<Tree> {
        Tree::ALL.get(usize::from(i)).copied()
    }
}

/// One tree's writes: puts (`Some`) and deletes (`None`), in order.
pub type Ops<'a> = [(&'a [u8], Option<&'a [u8]>)];

/// The stored trees, in the order of [`Tree::ALL`]: sled's, and the meeting history's
/// ([`History`], a file of its own).
#[derive(Clone)]
pub struct Trees {
    sled: Vec<sled::Tree>,
    history: Arc<History>,
}

impl Trees {
    pub fn open(db: &sled::Db, history: Arc<History>) -> Result<Trees, StoreError> {
        Ok(Trees { sled: Tree::ALL.iter().map(|t| db.open_tree(t.name())).collect::<Result<_, _>>()?, history })
    }

    /// A tree sled keeps (never one of the history's: those are empty in sled).
    pub fn sled(&self, t: Tree) -> &sled::Tree {
        debug_assert!(!history::holds(t), "{} is kept in the history file", t.name());
        &self.sled[t as usize]
    }

    pub fn history(&self) -> &Arc<History> {
        &self.history
    }

    /// A stored value (what the applier has written).
    pub fn value(&self, t: Tree, key: &[u8]) -> Result<Option<Arc<[u8]>>, StoreError> {
        if history::holds(t) {
            return Ok(self.history.get(t, key)?.map(Arc::from));
        }
        Ok(self.sled[t as usize].get(key)?.map(|v| Arc::from(v.as_ref())))
    }

    /// Stored entries in `lo..hi`, in key order or reversed.
    pub fn entries(
        &self,
        t: Tree,
        lo: Bound<Vec<u8>>,
        hi: Bound<Vec<u8>>,
        rev: bool,
    ) -> Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>), StoreError>> + '_> {
        if history::holds(t) {
            return Box::new(self.history.range(t, lo, hi, rev));
        }
        let iter = self.sled[t as usize].range::<Vec<u8>, _>((lo, hi));
        let owned = |item: sled::Result<(sled::IVec, sled::IVec)>| {
            item.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(StoreError::from)
        };
        if rev {
            Box::new(iter.rev().map(owned))
        } else {
            Box::new(iter.map(owned))
        }
    }

    /// Applies puts (`Some`) and deletes (`None`) to tree `t`.
    pub fn apply(&self, t: Tree, ops: &Ops<'_>) -> Result<(), StoreError> {
        self.apply_trees(&[(t, ops)])
    }

    /// Applies several trees' writes: sled's one `apply_batch` per tree, the history file's in
    /// one commit.
    pub fn apply_trees(&self, writes: &[(Tree, &Ops<'_>)]) -> Result<(), StoreError> {
        let kept: Vec<_> = writes.iter().filter(|(t, ops)| history::holds(*t) && !ops.is_empty()).collect();
        if !kept.is_empty() {
            self.history.apply_trees(kept.iter().map(|(t, ops)| (*t, ops.iter().copied())))?;
        }
        for (t, ops) in writes {
            if !history::holds(*t) && !ops.is_empty() {
                self.apply_sled(*t, ops)?;
            }
        }
        Ok(())
    }

    fn apply_sled(&self, t: Tree, ops: &Ops<'_>) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (k, v) in ops {
            match v {
                Some(v) => batch.insert(*k, *v),
                None => batch.remove(*k),
            }
        }
        Ok(self.sled[t as usize].apply_batch(batch)?)
    }
}

/// A write sled may not hold yet: the batch that made it, and the value (`None`: deleted).
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    pub lsn: u64,
    pub value: Option<Arc<[u8]>>,
}

/// Per tree, the writes of batches the applier has not confirmed yet. Keys are shared
/// (`Arc`), so the node copies a persistent map makes on a write allocate nothing per key.
#[derive(Debug, Clone, Default)]
pub struct Overlay(Vec<imbl::OrdMap<Arc<[u8]>, Slot>>);

impl Overlay {
    pub fn new() -> Overlay {
        Overlay(vec![imbl::OrdMap::new(); Tree::ALL.len()])
    }

    pub fn slot(&self, t: Tree, key: &[u8]) -> Option<&Slot> {
        self.0[t as usize].get(key)
    }

    /// Records a write; returns the slot it replaced.
    pub fn set(&mut self, t: Tree, key: &[u8], slot: Slot) -> Option<Slot> {
        self.0[t as usize].insert(Arc::from(key), slot)
    }

    /// Puts back what a write replaced (`None`: nothing).
    pub fn restore(&mut self, t: Tree, key: &[u8], prev: Option<Slot>) {
        match prev {
            Some(slot) => {
                self.0[t as usize].insert(Arc::from(key), slot);
            }
            None => {
                self.0[t as usize].remove(key);
            }
        }
    }

    /// Forgets a key's write if it is still the one batch `lsn` made (sled has it now).
    pub fn forget(&mut self, t: Tree, key: &[u8], lsn: u64) {
        let map = &mut self.0[t as usize];
        if map.get(key).is_some_and(|s| s.lsn == lsn) {
            map.remove(key);
        }
    }

    fn range(&self, t: Tree, lo: &Bound<Vec<u8>>, hi: &Bound<Vec<u8>>) -> Vec<(Vec<u8>, Slot)> {
        let bound = |b: &Bound<Vec<u8>>| match b {
            Bound::Included(k) => Bound::Included(Arc::<[u8]>::from(k.as_slice())),
            Bound::Excluded(k) => Bound::Excluded(Arc::<[u8]>::from(k.as_slice())),
            Bound::Unbounded => Bound::Unbounded,
        };
        self.0[t as usize].range((bound(lo), bound(hi))).map(|(k, v)| (k.to_vec(), v.clone())).collect()
    }
}

/// The state as of a batch.
#[derive(Debug, Clone)]
pub struct State {
    /// The last batch included.
    pub lsn: u64,
    /// The seq the next event gets.
    pub next_seq: u64,
    pub overlay: Overlay,
    pub live: Live,
    /// Pending deadlines (the writer's [`Private::timers`] hold them).
    pub timer_count: usize,
    pub room_count: u64,
    /// The first event seq served (older ones are compacted away).
    pub events_oldest: u64,
}

impl State {
    /// A value: the overlay's if it has one, else the stored one.
    pub fn get(&self, trees: &Trees, t: Tree, key: &[u8]) -> Result<Option<Arc<[u8]>>, StoreError> {
        if let Some(slot) = self.overlay.slot(t, key) {
            return Ok(slot.value.clone());
        }
        trees.value(t, key)
    }

    /// Entries in `lo..hi` (overlay over what is stored), in key order or reversed, at most `limit`.
    pub fn range(
        &self,
        trees: &Trees,
        t: Tree,
        lo: Bound<Vec<u8>>,
        hi: Bound<Vec<u8>>,
        rev: bool,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Arc<[u8]>)>, StoreError> {
        let mut over = self.overlay.range(t, &lo, &hi);
        if rev {
            over.reverse();
        }
        let mut over = over.into_iter().peekable();
        let mut stored = trees.entries(t, lo, hi, rev);
        let mut next_stored = stored.next().transpose()?;
        let mut out = Vec::new();
        let before = |a: &[u8], b: &[u8]| if rev { a > b } else { a < b };
        while out.len() < limit {
            let take_overlay = match (over.peek(), &next_stored) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((ok, _)), Some((sk, _))) => before(ok, sk) || ok == sk,
            };
            if take_overlay {
                let Some((k, slot)) = over.next() else { break };
                if next_stored.as_ref().is_some_and(|(sk, _)| *sk == k) {
                    next_stored = stored.next().transpose()?;
                }
                if let Some(v) = slot.value {
                    out.push((k, v));
                }
            } else if let Some((k, v)) = next_stored.take() {
                out.push((k, Arc::from(v)));
                next_stored = stored.next().transpose()?;
            }
        }
        Ok(out)
    }

    /// Entries whose key starts with `prefix`.
    pub fn scan_prefix(&self, trees: &Trees, t: Tree, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Arc<[u8]>)>, StoreError> {
        let hi = match prefix_end(prefix) {
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        self.range(trees, t, Bound::Included(prefix.to_vec()), hi, false, usize::MAX)
    }
}

/// The first key after every key starting with `prefix` (`None`: there is none).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}
