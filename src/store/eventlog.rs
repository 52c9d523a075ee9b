//! The event log, outside sled: append-only segment files indexed by seq, with the most recent
//! events also kept in memory.
//!
//! The writer appends each batch's events after the journal sync that made them durable, then
//! moves the durable head; readers (the long-poll, the SSE stream, webhooks, session streams,
//! backups) never look past the head. Segments are not synced per batch: the journal holds
//! every event until the checkpointer has synced the segments, and recovery re-appends from
//! the journal whatever a crash cut off.
//!
//! Files, in `<data>/events/`, named by their first seq (16 hex digits):
//! - `<first>.seg`: the segment being written, and closed ones not packed yet: records
//!   `len u32 BE | crc32 u32 BE | payload` (payload: bincode of [`LoggedEvent`]);
//! - `<first>.pack`: a closed segment packed by a background thread: zstd-compressed blocks of
//!   such records, then an index of the blocks, its length (u32 BE) and `GHPACK01`.
//!
//! Retention is logical and exact: `oldest` is the first seq served (older positions get 410),
//! kept durable by the writer in sled's meta tree; whole segments below it are deleted.
//!
//! Must not: write sled, or hand out an event above the durable head.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::journal::LoggedEvent;
use super::StoreError;
use crate::disk;

/// A segment is closed (and later packed) past this size, unless configured otherwise.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// Recent events kept in memory (envelope bytes).
const TAIL_BYTES: usize = 32 << 20;
/// What an event in memory costs beyond its envelope (the `Arc<Event>`, its kind and room, the
/// queue slot, the allocator's rounding), counted against [`TAIL_BYTES`] so the cap is memory.
const TAIL_OVERHEAD: usize = 160;
/// Events per packed block (fewer if the block passes [`BLOCK_BYTES`]).
const BLOCK_EVENTS: usize = 2048;
const BLOCK_BYTES: usize = 512 << 10;
const PACK_MAGIC: &[u8; 8] = b"GHPACK01";
const ZSTD_LEVEL: i32 = 3;

/// One event as readers get it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub seq: u64,
    pub ts_ms: i64,
    pub kind: Arc<str>,
    pub room: Option<Arc<str>>,
    /// The envelope exactly as stored, served and delivered.
    pub envelope: Arc<str>,
}

impl From<&LoggedEvent> for Event {
    fn from(e: &LoggedEvent) -> Event {
        Event {
            seq: e.seq,
            ts_ms: e.ts_ms,
            kind: Arc::from(e.kind.as_str()),
            room: e.room.as_deref().map(Arc::from),
            envelope: Arc::from(e.envelope.as_str()),
        }
    }
}

impl Event {
    fn logged(&self) -> LoggedEvent {
        LoggedEvent {
            seq: self.seq,
            ts_ms: self.ts_ms,
            kind: self.kind.to_string(),
            room: self.room.as_deref().map(String::from),
            envelope: self.envelope.to_string(),
            session: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct BlockIndex {
    first_seq: u64,
    last_seq: u64,
    offset: u64,
    len: u64,
}

enum Layout {
    /// Offsets of each record, by `seq - first`.
    Plain {
        offsets: Vec<u64>,
    },
    Packed {
        blocks: Vec<BlockIndex>,
    },
}

struct Segment {
    first: u64,
    /// Last seq held (`first - 1` when empty).
    last: u64,
    path: PathBuf,
    /// Open while the segment is plain (appended to, synced, packed from). A packed one is
    /// opened only when a block is read that the cache lacks, so open files do not grow with
    /// the history kept (thirty days of it by default).
    file: Option<Arc<File>>,
    layout: Layout,
    bytes: u64,
}

struct LogState {
    segments: Vec<Segment>,
    /// The most recent events, contiguous, ending at the last appended one.
    tail: VecDeque<Arc<Event>>,
    tail_bytes: usize,
    /// First seq served; older positions are gone (410).
    oldest: u64,
    /// Last seq appended.
    last: u64,
}

/// What the writer appends through (only one appender).
struct Appender {
    file: Arc<File>,
    len: u64,
}

pub struct EventLog {
    dir: PathBuf,
    segment_bytes: u64,
    state: RwLock<LogState>,
    appender: Mutex<Option<Appender>>,
    head: watch::Sender<u64>,
    /// Decoded packed blocks, by (segment first seq, block number).
    cache: Mutex<lru::LruCache<(u64, usize), Arc<Vec<Arc<Event>>>>>,
    /// Closed segments waiting to be packed.
    to_pack: Mutex<Vec<u64>>,
}

/// A page of events.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub events: Vec<Arc<Event>>,
    /// Highest seq examined (even if filtered out).
    pub next_after: u64,
    pub has_more: bool,
    pub head_seq: u64,
}

fn io(what: &str, e: std::io::Error) -> StoreError {
    StoreError::Setup(format!("event log {what}: {e}"))
}

/// A failed sync: the data's fate is unknown (see [`StoreError::Durability`]).
fn durability(what: &str, e: std::io::Error) -> StoreError {
    StoreError::Durability(format!("event log fsync failed ({what}): {e}"))
}

fn corrupt(path: &Path, why: String) -> StoreError {
    StoreError::Corrupt { tree: "events", key: path.display().to_string(), why }
}

fn encode(e: &LoggedEvent) -> Result<Vec<u8>, StoreError> {
    let payload = bincode::serde::encode_to_vec(e, bincode::config::standard())
        .map_err(|err| StoreError::Encode(err.to_string()))?;
    super::journal::frame(&payload)
}

/// Decodes the records in `bytes`; returns them with the length they cover.
/// A record's event, if the payload matches its CRC and decodes (else the log ends there).
fn decode_payload(crc: u32, payload: &[u8]) -> Option<LoggedEvent> {
    if crc32fast::hash(payload) != crc {
        return None;
    }
    bincode::serde::decode_from_slice::<LoggedEvent, _>(payload, bincode::config::standard()).ok().map(|(e, _)| e)
}

fn decode_all(bytes: &[u8]) -> (Vec<(LoggedEvent, u64)>, u64) {
    let mut out = Vec::new();
    let mut at = 0usize;
    loop {
        let Some(len) = bytes.get(at..at + 4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize) else {
            break;
        };
        let (Some(crc), Some(payload)) = (bytes.get(at + 4..at + 8), bytes.get(at + 8..at + 8 + len)) else {
            break;
        };
        let Some(e) = decode_payload(u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]), payload) else { break };
        out.push((e, at as u64));
        at += 8 + len;
    }
    (out, at as u64)
}

fn name(first: u64, ext: &str) -> String {
    format!("{first:016x}.{ext}")
}

impl EventLog {
    /// Opens the log in `dir`: reads every segment's index (a packed one's footer, a plain one
    /// whole, cutting a torn or zero-filled tail), and serves from `oldest`. A damaged file is
    /// cut back to what it holds intact, with a warning; it never stops the start.
    pub fn open(dir: &Path, oldest: u64, segment_bytes: u64) -> Result<EventLog, StoreError> {
        disk::create_dir_all(dir).map_err(|e| io("creating its folder", e))?;
        let mut plain = Vec::new();
        let mut packed = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io("listing", e))? {
            let entry = entry.map_err(|e| io("listing", e))?;
            let fname = entry.file_name().to_string_lossy().to_string();
            let Some((stem, ext)) = fname.split_once('.') else { continue };
            let Ok(first) = u64::from_str_radix(stem, 16) else { continue };
            match ext {
                "seg" => plain.push(first),
                "pack" => packed.push(first),
                "pack.tmp" | "seg.tmp" => {
                    let _ = std::fs::remove_file(entry.path());
                }
                _ => {}
            }
        }
        let mut segments = Vec::new();
        for first in &packed {
            match open_packed(dir, *first) {
                Ok(seg) => segments.push(seg),
                Err(e) if plain.contains(first) => {
                    // The plain copy is still there: the pack was never needed.
                    tracing::warn!(error = %e, "an unreadable event pack beside its segment; using the segment");
                    disk::remove_files(dir, &[dir.join(name(*first, "pack"))]).map_err(|e| io("removing a pack", e))?;
                }
                Err(e) => {
                    tracing::error!(error = %e, "an unreadable event pack; keeping the events it still holds");
                    segments.push(salvage_pack(dir, *first)?);
                }
            }
        }
        for first in plain {
            if segments.iter().any(|s| s.first == first) {
                // Packed, and the crash came before the plain copy was removed.
                let _ = std::fs::remove_file(dir.join(name(first, "seg")));
                continue;
            }
            segments.push(open_plain(dir, first)?);
        }
        segments.sort_by_key(|s| s.first);
        for pair in segments.windows(2) {
            if pair[1].first != pair[0].last + 1 {
                tracing::error!(
                    after = pair[0].last,
                    next = pair[1].first,
                    "the event log has a hole: events between these seqs were lost from disk"
                );
            }
        }
        let last = segments.last().map_or(oldest.saturating_sub(1), |s| s.last);
        // Events below the first segment are gone (a retention whose record a cut undid):
        // serve from where the log starts, with 410 below it, rather than stall there.
        let oldest = match segments.first() {
            Some(s) if s.first > oldest.max(1) => {
                tracing::warn!(
                    oldest,
                    first = s.first,
                    "the event log starts after its recorded oldest seq; serving from its start"
                );
                s.first
            }
            _ => oldest,
        };
        let log = EventLog {
            dir: dir.to_path_buf(),
            segment_bytes: segment_bytes.max(4096),
            state: RwLock::new(LogState {
                segments,
                tail: VecDeque::new(),
                tail_bytes: 0,
                oldest: oldest.max(1),
                last,
            }),
            appender: Mutex::new(None),
            head: watch::channel(last).0,
            cache: Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(16).unwrap_or(std::num::NonZeroUsize::MIN),
            )),
            to_pack: Mutex::new(Vec::new()),
        };
        // Closed plain segments (all but the last) are packed in the background.
        if let Ok(st) = log.state.read() {
            let closed: Vec<u64> = st
                .segments
                .iter()
                .rev()
                .skip(1)
                .filter(|s| matches!(s.layout, Layout::Plain { .. }))
                .map(|s| s.first)
                .collect();
            if let Ok(mut q) = log.to_pack.lock() {
                q.extend(closed);
            }
        }
        Ok(log)
    }

    /// Last seq appended (after recovery: the log's end).
    pub fn last(&self) -> u64 {
        self.state.read().map(|s| s.last).unwrap_or(0)
    }

    /// First seq served.
    pub fn oldest(&self) -> u64 {
        self.state.read().map(|s| s.oldest).unwrap_or(1)
    }

    /// The durable head: readers see events up to it.
    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    pub fn watch_head(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    /// Moves the durable head (the writer calls this after the journal sync).
    pub fn set_head(&self, seq: u64) {
        self.head.send_if_modified(|h| {
            let moved = *h != seq;
            *h = seq;
            moved
        });
    }

    /// Appends events that continue the log exactly (the syncer's appends): a gap would be a hole
    /// readers skip for good, so it is refused.
    /// Takes references: the syncer appends a whole group's batches in one write.
    pub fn append_next(&self, events: &[&LoggedEvent]) -> Result<(), StoreError> {
        if let Some(first) = events.first() {
            let last = self.last();
            if first.seq != last + 1 {
                return Err(StoreError::Setup(format!("event log: seq {} does not follow {last}", first.seq)));
            }
        }
        self.append_refs(events)
    }

    /// Appends events (contiguous among themselves; a restore, a migration or a recovery that
    /// found events lost from disk may start past the log's end). The head does not move: see
    /// [`set_head`].
    pub fn append(&self, events: &[LoggedEvent]) -> Result<(), StoreError> {
        self.append_refs(&events.iter().collect::<Vec<_>>())
    }

    fn append_refs(&self, events: &[&LoggedEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut app = self.appender.lock().map_err(|_| StoreError::Setup("event log lock poisoned".into()))?;
        let mut bytes = Vec::with_capacity(events.iter().map(|e| e.envelope.len() + 64).sum());
        let mut offsets = Vec::with_capacity(events.len());
        for e in events {
            offsets.push(bytes.len() as u64);
            bytes.extend_from_slice(&encode(e)?);
        }
        let first = events[0].seq;
        let needs_new = {
            let st = self.state.read().map_err(|_| StoreError::Setup("event log lock poisoned".into()))?;
            match (st.segments.last(), app.as_ref()) {
                (Some(s), Some(a)) => a.len >= self.segment_bytes || s.last + 1 != first,
                _ => true,
            }
        };
        if needs_new {
            *app = Some(self.start_segment(first, app.take())?);
        }
        let Some(a) = app.as_mut() else {
            return Err(StoreError::Setup("event log has no open segment".into()));
        };
        let base = a.len;
        if let Err(e) = a.file.write_all_at(&bytes, base) {
            let _ = a.file.set_len(base);
            return Err(StoreError::Unavailable(format!("event log write failed: {e}")));
        }
        a.len += bytes.len() as u64;
        let mut st = self.state.write().map_err(|_| StoreError::Setup("event log lock poisoned".into()))?;
        if let Some(seg) = st.segments.last_mut() {
            if let Layout::Plain { offsets: o } = &mut seg.layout {
                o.extend(offsets.iter().map(|x| x + base));
            }
            seg.last = events[events.len() - 1].seq;
            seg.bytes = a.len;
        }
        st.last = events[events.len() - 1].seq;
        if st.tail.back().is_some_and(|b| b.seq + 1 != first) {
            // The tail holds contiguous events only: after a hole it starts over.
            st.tail.clear();
            st.tail_bytes = 0;
        }
        for e in events {
            let ev = Arc::new(Event::from(*e));
            st.tail_bytes += ev.envelope.len();
            st.tail.push_back(ev);
        }
        while st.tail_bytes + st.tail.len() * TAIL_OVERHEAD > TAIL_BYTES && st.tail.len() > 1 {
            if let Some(e) = st.tail.pop_front() {
                st.tail_bytes -= e.envelope.len();
            }
        }
        Ok(())
    }

    /// Closes the current segment (syncing it) and starts a new one at `first`. A last segment
    /// that holds nothing (a restart soon after it was started) is written to instead: it has
    /// the same name, and a second segment of that name would be packed over the live one.
    fn start_segment(&self, first: u64, closing: Option<Appender>) -> Result<Appender, StoreError> {
        drop(closing);
        let previous = self.state.read().ok().and_then(|st| {
            st.segments
                .last()
                .filter(|s| matches!(s.layout, Layout::Plain { .. }))
                .and_then(|s| Some((s.first, s.last, s.file.clone()?, s.path.clone())))
        });
        match previous {
            Some((f, last, file, _)) if last + 1 == f && f == first => {
                return Ok(Appender { file, len: 0 });
            }
            Some((f, last, _, path)) if last + 1 == f => {
                // Empty, and named for another seq: nothing to keep.
                tracing::warn!(segment = f, next = first, "dropping an empty event segment");
                let mut st = self.state.write().map_err(|_| StoreError::Setup("event log lock poisoned".into()))?;
                st.segments.pop();
                drop(st);
                disk::remove_files(&self.dir, &[path]).map_err(|e| io("removing an empty segment", e))?;
            }
            Some((f, _, file, _)) => {
                // The previous last segment (the one being closed, or the one a restart left)
                // is done: sync it and queue it for packing.
                file.sync_data().map_err(|e| durability("closing a segment", e))?;
                if let Ok(mut q) = self.to_pack.lock() {
                    q.push(f);
                }
            }
            None => {}
        }
        let path = self.dir.join(name(first, "seg"));
        let file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .mode(disk::FILE_MODE)
            .open(&path)
            .map_err(|e| io("creating a segment", e))?;
        disk::sync_dir(&self.dir).map_err(|e| durability("syncing its folder", e))?;
        let file = Arc::new(file);
        let mut st = self.state.write().map_err(|_| StoreError::Setup("event log lock poisoned".into()))?;
        st.segments.push(Segment {
            first,
            last: first - 1,
            path,
            file: Some(file.clone()),
            layout: Layout::Plain { offsets: Vec::new() },
            bytes: 0,
        });
        Ok(Appender { file, len: 0 })
    }

    /// Makes every appended event durable (the checkpointer calls this before it deletes the
    /// journal files that also hold them). Closed segments were synced when they were closed;
    /// the last one is synced even when nothing was appended since the open: after a `kill -9`
    /// what it holds may still be only in the page cache, and the journal is about to go.
    pub fn sync(&self) -> Result<(), StoreError> {
        let file = self.state.read().ok().and_then(|st| {
            st.segments.last().filter(|s| matches!(s.layout, Layout::Plain { .. })).and_then(|s| s.file.clone())
        });
        if let Some(f) = file {
            f.sync_data().map_err(|e| durability("sync", e))?;
        }
        Ok(())
    }

    /// Events after `after` up to the durable head, at most `limit`, only those `keep` accepts;
    /// at most `budget` are examined (a filter that skips most cannot make a call run long).
    pub fn read(
        &self,
        after: u64,
        limit: usize,
        budget: usize,
        keep: &dyn Fn(&Event) -> bool,
    ) -> Result<Page, StoreError> {
        let head = self.head();
        let mut page = Page { events: Vec::new(), next_after: after, has_more: false, head_seq: head };
        let mut next = after.saturating_add(1).max(self.oldest());
        let mut examined = 0usize;
        while next <= head {
            if page.events.len() >= limit || examined >= budget {
                page.has_more = true;
                break;
            }
            let chunk = self.chunk(next, head, (budget - examined).clamp(1, 4096))?;
            if chunk.is_empty() {
                break;
            }
            for e in chunk {
                if page.events.len() >= limit || examined >= budget {
                    page.has_more = true;
                    return Ok(page);
                }
                examined += 1;
                next = e.seq + 1;
                page.next_after = e.seq;
                if keep(&e) {
                    page.events.push(e);
                }
            }
        }
        page.has_more |= page.next_after < head && (page.events.len() >= limit || examined >= budget);
        Ok(page)
    }

    /// Up to `max` events from `from` (not past `head`): from memory when the tail holds them,
    /// else from the segment holding `from`.
    fn chunk(&self, from: u64, head: u64, max: usize) -> Result<Vec<Arc<Event>>, StoreError> {
        let st = self.state.read().map_err(|_| StoreError::Setup("event log lock poisoned".into()))?;
        if let Some(front) = st.tail.front() {
            if from >= front.seq {
                let skip = usize::try_from(from - front.seq).unwrap_or(usize::MAX);
                return Ok(st.tail.iter().skip(skip).take_while(|e| e.seq <= head).take(max).cloned().collect());
            }
        }
        let idx = st.segments.partition_point(|s| s.last < from);
        let Some(seg) = st.segments.get(idx) else {
            return Ok(Vec::new());
        };
        // Events lost from disk (logged at open) leave a hole: read on from after it.
        let from = from.max(seg.first);
        let upto = head.min(seg.last).min(from + max as u64 - 1);
        if from > upto {
            return Ok(Vec::new());
        }
        match &seg.layout {
            Layout::Plain { offsets } => {
                let i = usize::try_from(from - seg.first).unwrap_or(usize::MAX);
                let j = usize::try_from(upto - seg.first).unwrap_or(usize::MAX);
                let (Some(&start), end) = (offsets.get(i), offsets.get(j + 1).copied().unwrap_or(seg.bytes)) else {
                    return Ok(Vec::new());
                };
                let mut buf = vec![0u8; usize::try_from(end - start).unwrap_or(0)];
                let Some(file) = &seg.file else {
                    return Err(corrupt(&seg.path, "a plain segment without its file".into()));
                };
                file.read_exact_at(&mut buf, start).map_err(|e| io("reading", e))?;
                let (records, _) = decode_all(&buf);
                Ok(records.iter().map(|(e, _)| Arc::new(Event::from(e))).filter(|e| e.seq <= upto).collect())
            }
            Layout::Packed { blocks } => {
                let b = blocks.partition_point(|bl| bl.last_seq < from);
                let Some(block) = blocks.get(b) else { return Ok(Vec::new()) };
                let events = self.block(seg, b, block)?;
                Ok(events.iter().filter(|e| e.seq >= from && e.seq <= upto).cloned().collect())
            }
        }
    }

    fn block(&self, seg: &Segment, n: usize, b: &BlockIndex) -> Result<Arc<Vec<Arc<Event>>>, StoreError> {
        if let Some(hit) = self.cache.lock().ok().and_then(|mut c| c.get(&(seg.first, n)).cloned()) {
            return Ok(hit);
        }
        let mut buf = vec![0u8; usize::try_from(b.len).unwrap_or(0)];
        // Under the log's read lock: retention and the packer delete files only under its write lock.
        File::open(&seg.path).and_then(|f| f.read_exact_at(&mut buf, b.offset)).map_err(|e| io("reading a pack", e))?;
        let raw = zstd::bulk::decompress(&buf, BLOCK_BYTES * 4 + (64 << 20))
            .map_err(|e| corrupt(&seg.path, format!("block {n} does not decompress: {e}")))?;
        let (records, _) = decode_all(&raw);
        let events: Arc<Vec<Arc<Event>>> = Arc::new(records.iter().map(|(e, _)| Arc::new(Event::from(e))).collect());
        if let Ok(mut c) = self.cache.lock() {
            c.put((seg.first, n), events.clone());
        }
        Ok(events)
    }

    /// Moves the first served seq up to `oldest` and deletes whole segments below it.
    pub fn retain_from(&self, oldest: u64) -> Result<(), StoreError> {
        let mut st = self.state.write().map_err(|_| StoreError::Setup("event log lock poisoned".into()))?;
        if oldest <= st.oldest {
            return Ok(());
        }
        st.oldest = oldest;
        while st.tail.front().is_some_and(|e| e.seq < oldest) {
            if let Some(e) = st.tail.pop_front() {
                st.tail_bytes -= e.envelope.len();
            }
        }
        // Never the segment being written.
        while st.segments.len() > 1 && st.segments[0].last < oldest {
            let seg = st.segments.remove(0);
            if let Err(e) = std::fs::remove_file(&seg.path) {
                tracing::warn!(error = %e, file = %seg.path.display(), "could not delete a compacted segment");
            }
        }
        Ok(())
    }

    /// Bytes the log occupies on disk.
    pub fn size_on_disk(&self) -> u64 {
        self.state.read().map(|s| s.segments.iter().map(|g| g.bytes).sum()).unwrap_or(0)
    }

    /// Mean envelope size of the recent events (for size-based retention), at least 1.
    pub fn mean_event_bytes(&self) -> u64 {
        self.state.read().map(|s| (s.tail_bytes / s.tail.len().max(1)) as u64).unwrap_or(1).max(1)
    }

    /// Timestamp of the event at `seq`, if it is still held.
    pub fn ts_of(&self, seq: u64) -> Result<Option<i64>, StoreError> {
        Ok(self.chunk(seq, self.last(), 1)?.first().filter(|e| e.seq == seq).map(|e| e.ts_ms))
    }

    /// Packs closed segments into compressed files (run by a background thread). Returns how
    /// many it packed.
    pub fn pack_closed(&self) -> Result<usize, StoreError> {
        let pending: Vec<u64> = self.to_pack.lock().map(|mut q| std::mem::take(&mut *q)).unwrap_or_default();
        let mut packed = 0;
        for first in pending {
            let source = {
                let st = self.state.read().map_err(|_| StoreError::Setup("event log lock poisoned".into()))?;
                st.segments.iter().find(|s| s.first == first).and_then(|s| match &s.layout {
                    Layout::Plain { offsets } => Some((s.file.clone()?, s.bytes, s.path.clone(), offsets.clone())),
                    Layout::Packed { .. } => None,
                })
            };
            let Some((file, bytes, path, offsets)) = source else { continue };
            let packed_seg = self.write_pack(first, &file, &offsets, bytes)?;
            let mut st = self.state.write().map_err(|_| StoreError::Setup("event log lock poisoned".into()))?;
            if let Some(slot) = st.segments.iter_mut().find(|s| s.first == first) {
                *slot = packed_seg;
                let _ = std::fs::remove_file(&path);
                packed += 1;
            } else {
                // Compacted away meanwhile.
                let _ = std::fs::remove_file(self.dir.join(name(first, "pack")));
            }
        }
        Ok(packed)
    }

    /// Packs a closed plain segment (`offsets`: where each of its records starts, `end`: the
    /// length they cover) block by block: the records' bytes are compressed as they are, never
    /// decoded, and never more than one block is in memory (a 64 MiB segment read whole, and
    /// decoded, was the server's largest transient allocation).
    fn write_pack(&self, first: u64, file: &File, offsets: &[u64], end: u64) -> Result<Segment, StoreError> {
        let tmp = self.dir.join(name(first, "pack.tmp"));
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(disk::FILE_MODE)
            .open(&tmp)
            .map_err(|e| io("creating a pack", e))?;
        let mut out = std::io::BufWriter::with_capacity(256 << 10, f);
        let mut blocks = Vec::new();
        let mut written = 0u64;
        let mut i = 0;
        while i < offsets.len() {
            let start = offsets[i];
            let mut j = i + 1;
            while j < offsets.len() && j - i < BLOCK_EVENTS && offsets[j] - start < BLOCK_BYTES as u64 {
                j += 1;
            }
            let stop = offsets.get(j).copied().unwrap_or(end);
            let mut raw = vec![0u8; usize::try_from(stop - start).unwrap_or(0)];
            file.read_exact_at(&mut raw, start).map_err(|e| io("reading a segment to pack", e))?;
            let z = zstd::bulk::compress(&raw, ZSTD_LEVEL).map_err(|e| io("compressing", e))?;
            let (first_seq, last_seq) = (first + i as u64, first + j as u64 - 1);
            blocks.push(BlockIndex { first_seq, last_seq, offset: written, len: z.len() as u64 });
            out.write_all(&z).map_err(|e| io("writing a pack", e))?;
            written += z.len() as u64;
            i = j;
        }
        let index = bincode::serde::encode_to_vec(&blocks, bincode::config::standard())
            .map_err(|e| StoreError::Encode(e.to_string()))?;
        let mut footer = index;
        footer.extend_from_slice(&u32::try_from(footer.len()).unwrap_or(u32::MAX).to_be_bytes());
        footer.extend_from_slice(PACK_MAGIC);
        out.write_all(&footer).map_err(|e| io("writing a pack", e))?;
        let f = out.into_inner().map_err(|e| io("writing a pack", e.into_error()))?;
        f.sync_all().map_err(|e| io("writing a pack", e))?;
        let path = self.dir.join(name(first, "pack"));
        std::fs::rename(&tmp, &path).map_err(|e| io("renaming a pack", e))?;
        disk::sync_dir(&self.dir).map_err(|e| io("syncing its folder", e))?;
        let last = first + offsets.len() as u64 - 1;
        let bytes = written + footer.len() as u64;
        Ok(Segment { first, last, path, file: None, layout: Layout::Packed { blocks }, bytes })
    }
}

/// Reads a plain segment record by record (never the whole file at once): where each record
/// starts that is intact and continues the sequence from `first`, and the length they cover.
fn scan_plain(file: &File, first: u64, path: &Path) -> Result<(Vec<u64>, u64), StoreError> {
    use std::io::Read;
    let size = file.metadata().map_err(|e| io("reading a segment", e))?.len();
    let mut r = std::io::BufReader::with_capacity(256 << 10, file);
    let (mut offsets, mut at, mut expect) = (Vec::new(), 0u64, first);
    let mut head = [0u8; 8];
    let mut payload = Vec::new();
    while r.read_exact(&mut head).is_ok() {
        let len = u64::from(u32::from_be_bytes([head[0], head[1], head[2], head[3]]));
        let crc = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        // Zeros, or a length past the file's end: a tail the disk never wrote whole.
        if len == 0 || at + 8 + len > size {
            break;
        }
        payload.resize(usize::try_from(len).unwrap_or(0), 0);
        if r.read_exact(&mut payload).is_err() {
            break;
        }
        let Some(e) = decode_payload(crc, &payload) else { break };
        if e.seq != expect {
            tracing::warn!(file = %path.display(), seq = e.seq, expected = expect, "event segment out of sequence; cutting it there");
            break;
        }
        offsets.push(at);
        at += 8 + len;
        expect += 1;
    }
    Ok((offsets, at))
}

fn open_plain(dir: &Path, first: u64) -> Result<Segment, StoreError> {
    let path = dir.join(name(first, "seg"));
    let file = OpenOptions::new().read(true).write(true).open(&path).map_err(|e| io("opening a segment", e))?;
    let size = file.metadata().map_err(|e| io("reading a segment", e))?.len();
    let (offsets, valid) = scan_plain(&file, first, &path)?;
    if valid < size {
        tracing::warn!(file = %path.display(), torn_bytes = size - valid, "event segment ends in a torn or zero-filled tail; cutting it (the journal still holds anything acknowledged)");
        file.set_len(valid).map_err(|e| io("cutting a torn segment", e))?;
    }
    let last = first + offsets.len() as u64 - 1;
    Ok(Segment { first, last, path, file: Some(Arc::new(file)), layout: Layout::Plain { offsets }, bytes: valid })
}

fn open_packed(dir: &Path, first: u64) -> Result<Segment, StoreError> {
    let path = dir.join(name(first, "pack"));
    let file = File::open(&path).map_err(|e| io("opening a pack", e))?;
    let len = file.metadata().map_err(|e| io("reading a pack", e))?.len();
    let bad = |why: &str| corrupt(&path, why.to_string());
    if len < 12 {
        return Err(bad("too short to be a pack"));
    }
    let mut tail = [0u8; 12];
    file.read_exact_at(&mut tail, len - 12).map_err(|e| io("reading a pack", e))?;
    if &tail[4..] != PACK_MAGIC {
        return Err(bad("no pack footer"));
    }
    let index_len = u64::from(u32::from_be_bytes([tail[0], tail[1], tail[2], tail[3]]));
    let start = len.checked_sub(12 + index_len).ok_or_else(|| bad("index longer than the file"))?;
    let mut index = vec![0u8; usize::try_from(index_len).unwrap_or(0)];
    file.read_exact_at(&mut index, start).map_err(|e| io("reading a pack", e))?;
    let (blocks, _): (Vec<BlockIndex>, usize) =
        bincode::serde::decode_from_slice(&index, bincode::config::standard()).map_err(|e| bad(&e.to_string()))?;
    let last = blocks.last().map_or(first - 1, |b| b.last_seq);
    Ok(Segment { first, last, path, file: None, layout: Layout::Packed { blocks }, bytes: len })
}

/// What an unreadable pack still holds: its blocks from the start, as long as they decompress
/// and continue the sequence, rewritten as a plain segment that replaces it.
fn salvage_pack(dir: &Path, first: u64) -> Result<Segment, StoreError> {
    let pack = dir.join(name(first, "pack"));
    let bytes = std::fs::read(&pack).map_err(|e| io("reading a pack", e))?;
    let mut at = 0usize;
    let mut kept = Vec::new();
    let mut expect = first;
    'blocks: while at < bytes.len() {
        let Ok(size) = zstd::zstd_safe::find_frame_compressed_size(&bytes[at..]) else { break };
        let Ok(raw) = zstd::bulk::decompress(&bytes[at..at + size], BLOCK_BYTES * 4 + (64 << 20)) else { break };
        let (records, _) = decode_all(&raw);
        for (e, _) in records {
            if e.seq != expect {
                break 'blocks;
            }
            expect += 1;
            kept.extend_from_slice(&encode(&e)?);
        }
        at += size;
    }
    tracing::warn!(file = %pack.display(), events = expect - first, "kept the intact start of a damaged pack as a plain segment");
    let seg = dir.join(name(first, "seg"));
    disk::write_atomic(&seg, &kept).map_err(|e| io("rewriting a damaged pack", e))?;
    disk::remove_files(dir, &[pack]).map_err(|e| io("removing a damaged pack", e))?;
    open_plain(dir, first)
}

/// Every event of a log directory from `from` on, in order (backups and the migration's
/// check use it; it reads packed and plain segments alike).
pub fn read_dir_events(
    log: &EventLog,
    from: u64,
    mut each: impl FnMut(&LoggedEvent) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut after = from.saturating_sub(1);
    loop {
        let page = log.read(after, 4096, 4096, &|_| true)?;
        for e in &page.events {
            each(&e.logged())?;
        }
        if page.events.is_empty() {
            return Ok(());
        }
        after = page.next_after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64) -> LoggedEvent {
        LoggedEvent {
            seq,
            ts_ms: seq as i64,
            kind: if seq % 2 == 0 { "a".into() } else { "b".into() },
            room: Some(format!("room-{}", seq % 3)),
            envelope: format!("{{\"seq\":{seq},\"padding\":\"{}\"}}", "x".repeat(100)),
            session: None,
        }
    }

    #[test]
    fn append_read_pack_retain_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path(), 1, 8192).unwrap();
        for chunk in (1..=500u64).collect::<Vec<_>>().chunks(7) {
            let batch: Vec<_> = chunk.iter().map(|s| ev(*s)).collect();
            log.append(&batch).unwrap();
            log.set_head(*chunk.last().unwrap());
        }
        let all = log.read(0, 1000, 100_000, &|_| true).unwrap();
        assert_eq!(all.events.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=500).collect::<Vec<_>>());
        assert!(!all.has_more);
        let evens = log.read(10, 5, 100_000, &|e| &*e.kind == "a").unwrap();
        assert_eq!(evens.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![12, 14, 16, 18, 20]);
        assert!(evens.has_more);
        // Never past the head.
        log.append(&[ev(501)]).unwrap();
        assert_eq!(log.read(499, 10, 100, &|_| true).unwrap().events.len(), 1);
        log.set_head(501);
        assert!(log.pack_closed().unwrap() > 0, "small segments were closed and packed");
        // A packed segment keeps no file open (it is opened on a block-cache miss): open files
        // do not grow with the history kept.
        {
            let st = log.state.read().unwrap();
            let packed: Vec<&Segment> =
                st.segments.iter().filter(|s| matches!(s.layout, Layout::Packed { .. })).collect();
            assert!(!packed.is_empty() && packed.iter().all(|s| s.file.is_none()));
        }
        let from_disk = EventLog::open(dir.path(), 1, 8192).unwrap();
        from_disk.set_head(from_disk.last());
        let again = from_disk.read(0, 1000, 100_000, &|_| true).unwrap();
        assert_eq!(again.events.len(), 501);
        assert!(
            from_disk.state.read().unwrap().segments.iter().any(|s| s.file.is_none()),
            "reopened packs stay closed"
        );
        assert_eq!(again.events[100].envelope, all.events[100].envelope);
        // Retention: positions below `oldest` are gone, whole old segments deleted.
        let files_before = std::fs::read_dir(dir.path()).unwrap().count();
        from_disk.retain_from(300).unwrap();
        assert_eq!(from_disk.read(0, 10, 100, &|_| true).unwrap().events[0].seq, 300);
        assert!(std::fs::read_dir(dir.path()).unwrap().count() < files_before);
        // Appending goes on after a reopen.
        from_disk.append(&[ev(502)]).unwrap();
        from_disk.set_head(502);
        assert_eq!(from_disk.read(499, 10, 100, &|_| true).unwrap().events.len(), 3);
    }

    fn seqs(log: &EventLog) -> Vec<u64> {
        log.set_head(log.last());
        log.read(0, 100_000, 1_000_000, &|_| true).unwrap().events.iter().map(|e| e.seq).collect()
    }

    /// A restart soon after a segment was started (normal after a power cut) leaves an empty
    /// last segment; the next append used to create a second segment of the same name, which
    /// the packer then packed empty, deleting the live file with it.
    #[test]
    fn an_empty_last_segment_is_written_to_not_packed_over() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path(), 1, 8192).unwrap();
        log.append(&(1..=5).map(ev).collect::<Vec<_>>()).unwrap();
        log.sync().unwrap();
        drop(log);
        let log = EventLog::open(dir.path(), 1, 8192).unwrap();
        log.append(&[ev(6)]).unwrap();
        drop(log);
        // The power went before segment 6 held anything.
        let six = dir.path().join(name(6, "seg"));
        OpenOptions::new().write(true).open(&six).unwrap().set_len(0).unwrap();
        let log = EventLog::open(dir.path(), 1, 8192).unwrap();
        assert_eq!(log.last(), 5);
        log.append(&(6..=11).map(ev).collect::<Vec<_>>()).unwrap();
        log.pack_closed().unwrap();
        assert_eq!(seqs(&log), (1..=11).collect::<Vec<_>>());
        drop(log);
        assert_eq!(seqs(&EventLog::open(dir.path(), 1, 8192).unwrap()), (1..=11).collect::<Vec<_>>());
    }

    #[test]
    fn a_zero_filled_or_torn_tail_is_cut_back() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path(), 1, 1 << 20).unwrap();
        log.append(&(1..=7).map(ev).collect::<Vec<_>>()).unwrap();
        drop(log);
        let path = dir.path().join(name(1, "seg"));
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[0u8; 300]).unwrap();
        let log = EventLog::open(dir.path(), 1, 1 << 20).unwrap();
        assert_eq!(seqs(&log), (1..=7).collect::<Vec<_>>());
        log.append(&[ev(8)]).unwrap();
        drop(log);
        // A record cut short.
        let len = std::fs::metadata(dir.path().join(name(8, "seg"))).unwrap().len();
        OpenOptions::new().write(true).open(dir.path().join(name(8, "seg"))).unwrap().set_len(len - 3).unwrap();
        let log = EventLog::open(dir.path(), 1, 1 << 20).unwrap();
        assert_eq!(log.last(), 7);
        log.append(&[ev(8), ev(9)]).unwrap();
        assert_eq!(seqs(&log), (1..=9).collect::<Vec<_>>());
    }

    #[test]
    fn a_damaged_pack_keeps_its_intact_start() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path(), 1, 4096).unwrap();
        for chunk in (1..=300u64).collect::<Vec<_>>().chunks(10) {
            log.append(&chunk.iter().map(|s| ev(*s)).collect::<Vec<_>>()).unwrap();
        }
        assert!(log.pack_closed().unwrap() > 0);
        drop(log);
        let pack = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "pack"))
            .min()
            .unwrap();
        // The footer and part of the index lost.
        let len = std::fs::metadata(&pack).unwrap().len();
        OpenOptions::new().write(true).open(&pack).unwrap().set_len(len - 6).unwrap();
        let log = EventLog::open(dir.path(), 1, 4096).unwrap();
        assert_eq!(seqs(&log), (1..=300).collect::<Vec<_>>(), "the salvaged pack's events are all there");
    }

    #[test]
    fn a_gap_is_refused_and_readers_read_past_a_hole() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path(), 1, 1 << 20).unwrap();
        log.append_next(&(1..=3).map(ev).collect::<Vec<_>>().iter().collect::<Vec<_>>()).unwrap();
        assert!(log.append_next(&[&ev(5)]).is_err(), "a gap would be a hole readers skip");
        // Events lost from disk (a recovery that found them gone appends past the hole).
        log.append(&(7..=9).map(ev).collect::<Vec<_>>()).unwrap();
        assert_eq!(seqs(&log), vec![1, 2, 3, 7, 8, 9]);
        drop(log);
        let log = EventLog::open(dir.path(), 1, 1 << 20).unwrap();
        assert_eq!(seqs(&log), vec![1, 2, 3, 7, 8, 9]);
    }
}
