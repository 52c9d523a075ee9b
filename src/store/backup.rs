//! Backups: a consistent copy of every tree and of the event log (the writer makes it once the
//! applier has caught up, so sled holds exactly the state as of the last batch), and restore
//! into an empty data dir.
//!
//! Format 2: `GHBK` | format u32 BE | records `tree index u8 | key len u32 | key | value len
//! u32 | value`, events as records with index `0xFD` (key empty, value the bincode of one
//! event), files of the data dir with `0xFE` (key the file name), then `0xFF` and a CRC-32
//! (BE) of everything before it. Format 1 backups (schema 1, events in a tree) restore as a
//! schema 1 store, which the first open migrates. The file holds the API key too (when the
//! data dir has one), so it is as secret as the key.

use std::io::{Read, Write};
use std::ops::Bound;
use std::path::Path;

use super::eventlog::EventLog;
use super::history::{self, History};
use super::journal::LoggedEvent;
use super::keys;
use super::state::{Tree, Trees};
use super::StoreError;
use crate::disk;

const MAGIC: &[u8; 4] = b"GHBK";
const FORMAT: u32 = 2;
const EVENT_RECORD: u8 = 0xFD;
/// Pseudo-tree index for files of the data dir (the API key).
const FILE_RECORD: u8 = 0xFE;
const END: u8 = 0xFF;

/// Where a backup goes: a file, or a temporary file an HTTP response streams.
pub struct BackupSink(pub Box<dyn Write + Send>);

impl std::fmt::Debug for BackupSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BackupSink")
    }
}

struct Crc<W> {
    inner: W,
    hasher: crc32fast::Hasher,
}

impl<W: Write> Write for Crc<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn io(e: std::io::Error) -> StoreError {
    StoreError::Setup(format!("backup: {e}"))
}

fn record(out: &mut impl Write, tree: u8, k: &[u8], v: &[u8]) -> Result<(), StoreError> {
    let len =
        |n: usize| u32::try_from(n).map(u32::to_be_bytes).map_err(|_| StoreError::Encode("record over 4 GiB".into()));
    out.write_all(&[tree]).map_err(io)?;
    out.write_all(&len(k.len())?).map_err(io)?;
    out.write_all(k).map_err(io)?;
    out.write_all(&len(v.len())?).map_err(io)?;
    out.write_all(v).map_err(io)
}

/// Writes every tree, every retained event and `extra_files` (name → content) to `out`;
/// returns the record count.
pub(super) fn write(
    trees: &Trees,
    events: &EventLog,
    extra_files: &[(&str, Vec<u8>)],
    out: &mut dyn Write,
) -> Result<u64, StoreError> {
    let mut w = Crc { inner: out, hasher: crc32fast::Hasher::new() };
    w.write_all(MAGIC).map_err(io)?;
    w.write_all(&FORMAT.to_be_bytes()).map_err(io)?;
    let mut n = 0;
    for t in Tree::ALL {
        for item in trees.entries(t, Bound::Unbounded, Bound::Unbounded, false) {
            let (k, v) = item?;
            record(&mut w, t.index(), &k, &v)?;
            n += 1;
        }
    }
    super::eventlog::read_dir_events(events, events.oldest(), |e| {
        let v = bincode::serde::encode_to_vec(e, bincode::config::standard())
            .map_err(|err| StoreError::Encode(err.to_string()))?;
        record(&mut w, EVENT_RECORD, &[], &v)?;
        n += 1;
        Ok(())
    })?;
    for (name, content) in extra_files {
        record(&mut w, FILE_RECORD, name.as_bytes(), content)?;
    }
    w.write_all(&[END]).map_err(io)?;
    let crc = w.hasher.clone().finalize();
    w.inner.write_all(&crc.to_be_bytes()).map_err(io)?;
    w.flush().map_err(io)?;
    Ok(n)
}

/// What a restore brought back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreReport {
    pub records: u64,
    pub files: u64,
}

/// Restores `file` into `data_dir`, which must not hold a store yet. `progress` is told the
/// bytes done and the total every few thousand records.
///
/// The store is built aside (`<data_dir>/.restoring/`), made durable, and moved in at the end,
/// the store folder last: a restore that a crash or a power cut interrupts leaves no store
/// behind, and running it again starts over.
pub fn restore(file: &Path, data_dir: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<RestoreReport, StoreError> {
    let mut bytes = Vec::new();
    std::fs::File::open(file).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(io)?;
    let bad = |why: &str| StoreError::Setup(format!("backup file {}: {why}", file.display()));
    if bytes.len() < 13 || &bytes[..4] != MAGIC {
        return Err(bad("not a Gatehouse backup"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body).to_be_bytes() != crc {
        return Err(bad("checksum mismatch (truncated or damaged)"));
    }
    let format = u32::from_be_bytes([body[4], body[5], body[6], body[7]]);
    if format != 1 && format != FORMAT {
        return Err(bad("written by an unknown backup format version"));
    }
    if data_dir.join("store").exists() {
        return Err(StoreError::Setup(format!(
            "{} already holds a store; restore into an empty data dir",
            data_dir.display()
        )));
    }
    if super::journal::list(&data_dir.join("wal"))?.first().is_some() {
        return Err(StoreError::Setup(format!(
            "{} holds a journal without a store; remove its wal folder or restore into an empty data dir",
            data_dir.display()
        )));
    }
    let stage = data_dir.join(STAGE);
    if stage.exists() {
        // A restore was cut short: whatever it had moved in is incomplete without its store.
        tracing::warn!(dir = %data_dir.display(), "finishing off a restore that was interrupted; starting over");
        std::fs::remove_dir_all(&stage).map_err(io)?;
        remove_moved_in(data_dir)?;
    }
    disk::create_dir_all(&stage).map_err(io)?;
    let report = restore_into(body, format, &stage, progress, &bad)?;
    // Moved in with the store last: its presence says the restore is complete.
    for name in ["events", "api_key", "store"] {
        let from = stage.join(name);
        if from.exists() {
            std::fs::rename(&from, data_dir.join(name)).map_err(io)?;
        }
    }
    disk::sync_dir(data_dir).map_err(io)?;
    std::fs::remove_dir(&stage).map_err(io)?;
    disk::sync_dir(data_dir).map_err(io)?;
    Ok(report)
}

/// The staging folder of a restore in progress.
pub(super) const STAGE: &str = ".restoring";

/// Removes what an interrupted restore moved into `data_dir` before its store.
fn remove_moved_in(data_dir: &Path) -> Result<(), StoreError> {
    let events = data_dir.join("events");
    if events.exists() {
        std::fs::remove_dir_all(&events).map_err(io)?;
    }
    disk::remove_files(data_dir, &[data_dir.join("api_key")]).map_err(io)
}

/// Writes the backup's records as a store in `dir` (sled, the event log, files), durable.
fn restore_into(
    body: &[u8],
    format: u32,
    dir: &Path,
    progress: &mut dyn FnMut(u64, u64),
    bad: &dyn Fn(&str) -> StoreError,
) -> Result<RestoreReport, StoreError> {
    let store = dir.join("store");
    disk::create_dir_all(&store).map_err(io)?;
    // sled's own flusher off: it only logs a failed fsync (the checkpoint below must see it).
    let db = sled::Config::new().path(&store).flush_every_ms(None).open()?;
    let sled_dir = super::applier::SledDir::open(&store)?;
    // Format 1 holds schema 1's trees (the first open migrates them); format 2 this schema's.
    let names: Vec<&str> =
        if format == 1 { super::migrate::V1_TREES.to_vec() } else { Tree::ALL.iter().map(|t| t.name()).collect() };
    let trees: Vec<sled::Tree> = names.iter().map(|t| db.open_tree(t)).collect::<Result<_, _>>()?;
    // This schema's history file (meeting history, tokens) gets its trees, a page at a time.
    let history = (format == FORMAT).then(|| History::open(&store, 2 << 20)).transpose()?;
    let mut history_page: Vec<(Tree, Vec<u8>, Vec<u8>)> = Vec::new();
    let flush_history = |page: &mut Vec<(Tree, Vec<u8>, Vec<u8>)>| -> Result<(), StoreError> {
        let Some(h) = &history else { return Ok(()) };
        h.apply_trees(history::TREES.map(|t| {
            (t, page.iter().filter(move |(x, _, _)| *x == t).map(|(_, k, v)| (k.as_slice(), Some(v.as_slice()))))
        }))?;
        page.clear();
        Ok(())
    };
    let log = (format == FORMAT)
        .then(|| EventLog::open(&dir.join("events"), 1, super::eventlog::SEGMENT_BYTES))
        .transpose()?;
    let mut at = 8usize;
    let mut report = RestoreReport { records: 0, files: 0 };
    let mut first_event: Option<u64> = None;
    let mut pending: Vec<LoggedEvent> = Vec::new();
    let take = |at: &mut usize, n: usize| -> Result<&[u8], StoreError> {
        let s = body.get(*at..*at + n).ok_or_else(|| bad("cut short"))?;
        *at += n;
        Ok(s)
    };
    loop {
        let tree = take(&mut at, 1)?[0];
        if tree == END {
            break;
        }
        let kl = u32::from_be_bytes(take(&mut at, 4)?.try_into().map_err(|_| bad("bad length"))?) as usize;
        let k = take(&mut at, kl)?.to_vec();
        let vl = u32::from_be_bytes(take(&mut at, 4)?.try_into().map_err(|_| bad("bad length"))?) as usize;
        let v = take(&mut at, vl)?.to_vec();
        match tree {
            FILE_RECORD => {
                let name = String::from_utf8(k).map_err(|_| bad("bad file name"))?;
                if name != "api_key" {
                    return Err(bad("unexpected file"));
                }
                disk::create_new(&dir.join(&name), &v).map_err(io)?;
                report.files += 1;
                continue;
            }
            EVENT_RECORD => {
                let Some(log) = &log else { return Err(bad("events in a format 1 backup")) };
                let (e, _): (LoggedEvent, usize) = bincode::serde::decode_from_slice(&v, bincode::config::standard())
                    .map_err(|e| bad(&format!("bad event: {e}")))?;
                first_event.get_or_insert(e.seq);
                pending.push(e);
                if pending.len() >= 4096 {
                    log.append(&pending)?;
                    pending.clear();
                }
            }
            _ => match Tree::from_index(tree).filter(|t| history.is_some() && history::holds(*t)) {
                Some(t) => {
                    history_page.push((t, k, v));
                    if history_page.len() >= 4096 {
                        flush_history(&mut history_page)?;
                    }
                }
                None => {
                    let t = trees.get(usize::from(tree)).ok_or_else(|| bad("unknown tree"))?;
                    t.insert(k, v)?;
                }
            },
        }
        report.records += 1;
        if report.records % 4096 == 0 {
            progress(at as u64, body.len() as u64);
        }
    }
    progress(body.len() as u64, body.len() as u64);
    if let Some(log) = &log {
        log.append(&pending)?;
        log.set_head(log.last());
        log.sync()?;
        let meta = db.open_tree(Tree::Meta.name())?;
        // The restored store starts with an empty journal: nothing to replay.
        meta.insert(keys::META_APPLIED_LSN, &0u64.to_be_bytes())?;
        meta.insert(keys::META_NEXT_SEQ, &(log.last() + 1).to_be_bytes())?;
        if let Some(first) = first_event {
            meta.insert(keys::META_EVENTS_OLDEST, &first.to_be_bytes())?;
        }
    }
    flush_history(&mut history_page)?;
    if let Some(h) = &history {
        h.sync()?;
    }
    super::applier::checkpoint_sled(&db, &sled_dir, true)?;
    Ok(report)
}
