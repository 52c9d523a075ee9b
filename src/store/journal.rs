//! The journal: the source of truth for every acknowledged write. Each writer batch is one
//! record — its state writes and its events — appended and `fdatasync`ed once (group commit)
//! before anyone is answered. sled and the event segments are written from it afterwards, off
//! the acknowledgement path; the checkpointer deletes journal files once both cover them.
//!
//! Why: sled 0.34's `flush()` costs ~10 ms on this class of disk while an append plus
//! `fdatasync` costs ~0.5 ms, sled's flush is `sync_file_range` rather than a real sync, and a
//! sled insert costs ~10 µs: the writer must not wait for sled.
//!
//! Record: `len: u32 BE | crc32(payload): u32 BE | payload`. A record that is short, empty
//! (a zero-filled tail reads as length 0) or fails its CRC ends the journal (a torn write at a
//! crash or a power cut: it was never acknowledged); recovery cuts the file there. Files:
//! `<dir>/<number, 16 hex digits>.wal`, replayed in number order. A file is synced whole before
//! the next one gets its first record, so a durable batch never follows a lost one.
//!
//! A new file is a spare when one is ready: `<dir>/spare`, zero-filled and synced ahead of use
//! by a thread of its own, then renamed into place. Records overwrite its zeros, so a sync
//! writes data only: no size or block map to write as well (on this class of disk ~170 µs
//! instead of ~230 µs a sync, and a third less kernel CPU). Without a spare the file simply
//! grows. Either way `fdatasync` makes a record and what finds it durable; the zeros after the
//! last record read as the end.
//!
//! `<dir>/checkpoint` names the last batch sled and the event log hold durably (written, synced
//! and renamed into place before the journal files it covers are deleted): recovery replays
//! what follows it, never trusting what sled says it applied.
//!
//! Must not: interpret payloads (the writer and recovery do), or be read by request handlers.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::disk;

/// Payload version of a [`Batch`] record.
pub const BATCH_V2: u8 = 2;

/// One writer batch: everything it changed, in order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Batch {
    /// Log sequence number: batches are numbered 1, 2, 3… without gaps.
    pub lsn: u64,
    /// State writes: (tree index, key, value or `None` for a delete), applied in order.
    pub ops: Vec<Op>,
    /// The events, with their seqs (contiguous, continuing the previous batch's).
    pub events: Vec<LoggedEvent>,
}

/// One journaled write: (tree index, key, value or `None` for a delete).
pub type Op = (u8, Vec<u8>, Option<Vec<u8>>);

/// An event as the journal and the event segments carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedEvent {
    pub seq: u64,
    pub ts_ms: i64,
    pub kind: String,
    /// The room it is about, when it is about one (for per-room fan-out without parsing).
    pub room: Option<String>,
    /// The envelope exactly as it is served and delivered.
    pub envelope: String,
    /// The session it is about, for fan-out (not journaled: only live fan-out needs it).
    #[serde(skip)]
    pub session: Option<String>,
}

pub struct Journal {
    dir: PathBuf,
    /// Shared with the syncer, which syncs the file a batch was appended to.
    file: Arc<File>,
    number: u64,
    len: u64,
    /// The next file being zero-filled (`<dir>/spare`), if any.
    spare: Option<Spare>,
}

/// The thread making the spare, and how to stop it (a journal dropped waits for it, so no
/// spare of an earlier journal is ever written beside a later one's).
struct Spare {
    thread: std::thread::JoinHandle<Result<(), String>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Journal {
    fn drop(&mut self) {
        if let Some(spare) = self.spare.take() {
            spare.stop.store(true, Ordering::Relaxed);
            let _ = spare.thread.join();
        }
    }
}

/// The spare file's name: not `*.wal`, so recovery never reads it.
const SPARE: &str = "spare";
/// A closed file shorter than this gets no spare after it (a quiet store's files are small,
/// and growing them costs little). Test builds make spares after almost every file, so that
/// crash and power-cut tests whose load outlasts a rotation write over them.
#[cfg(not(feature = "test-clock"))]
const SPARE_MIN: u64 = 256 << 10;
#[cfg(feature = "test-clock")]
const SPARE_MIN: u64 = 4 << 10;
/// The largest spare (the writer rotates past 64 MiB anyway).
const SPARE_MAX: u64 = 64 << 20;
/// The spare made at the open, for the first rotation.
const SPARE_FIRST: u64 = 1 << 20;
/// A spare is made only while its file system has four times its size free and this much
/// more: it must never take the room a full disk's writes and checkpoints need.
const SPARE_HEADROOM: u64 = 256 << 20;

fn io(what: &str, e: std::io::Error) -> StoreError {
    StoreError::Setup(format!("journal {what}: {e}"))
}

fn file_name(number: u64) -> String {
    format!("{number:016x}.wal")
}

/// Writes `records` (framed) as the first journal file of an empty folder, synced.
pub fn seed(dir: &Path, records: &[Vec<u8>]) -> Result<(), StoreError> {
    use std::io::Write as _;
    disk::create_dir_all(dir).map_err(|e| io("creating its folder", e))?;
    if !list(dir)?.is_empty() {
        return Err(StoreError::Setup("journal: seeding a folder that has a journal".into()));
    }
    let mut f = open_new(dir, 1)?;
    for r in records {
        f.write_all(r).map_err(|e| io("writing", e))?;
    }
    f.sync_data().map_err(|e| StoreError::Durability(format!("journal fdatasync failed: {e}")))
}

/// The file naming the last checkpointed batch.
const CHECKPOINT: &str = "checkpoint";

/// The last batch sled and the event log hold durably (0: none recorded).
pub fn checkpointed(dir: &Path) -> Result<u64, StoreError> {
    let bytes = match std::fs::read(dir.join(CHECKPOINT)) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io("reading the checkpoint", e)),
    };
    match decode_record(&bytes).and_then(|(p, _)| <[u8; 8]>::try_from(p.as_slice()).ok()) {
        Some(lsn) => Ok(u64::from_be_bytes(lsn)),
        None => {
            // Torn by a cut while it was rewritten: no journal file had been deleted on its
            // strength yet, so replaying every batch the journal holds is still exact.
            tracing::warn!(file = %dir.join(CHECKPOINT).display(), "the journal checkpoint is torn; replaying the whole journal");
            Ok(0)
        }
    }
}

/// Records durably that sled and the event log hold every batch up to `lsn`: one 16-byte
/// record rewritten in place and `fdatasync`ed (its name synced when it is first made). A cut
/// that tears it loses nothing (see [`checkpointed`]); journal files go only after it is durable.
pub fn set_checkpoint(dir: &Path, lsn: u64) -> Result<(), StoreError> {
    use std::os::unix::fs::FileExt;
    let failed = |e: std::io::Error| StoreError::Durability(format!("writing the journal checkpoint failed: {e}"));
    let record = frame(&lsn.to_be_bytes())?;
    let path = dir.join(CHECKPOINT);
    let new = !path.exists();
    let f = OpenOptions::new().create(true).write(true).mode(disk::FILE_MODE).open(&path).map_err(failed)?;
    f.write_all_at(&record, 0).and_then(|()| f.sync_data()).map_err(failed)?;
    if new {
        disk::sync_dir(dir).map_err(failed)?;
    }
    Ok(())
}

/// Journal files present, in replay order.
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io("listing", e)),
    };
    for e in entries {
        let e = e.map_err(|e| io("listing", e))?;
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(n) = name.strip_suffix(".wal").and_then(|h| u64::from_str_radix(h, 16).ok()) {
            out.push((n, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The intact records of one file, and the length they cover (anything after is torn).
pub fn read_file(path: &Path) -> Result<(Vec<Vec<u8>>, u64), StoreError> {
    let mut bytes = Vec::new();
    File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(|e| io("reading", e))?;
    let mut records = Vec::new();
    let mut at = 0usize;
    while let Some((payload, used)) = decode_record(&bytes[at..]) {
        records.push(payload);
        at += used;
    }
    if bytes[at..].iter().any(|b| *b != 0) {
        tracing::warn!(file = %path.display(), torn_bytes = bytes.len() - at, "journal ends in a torn record (never acknowledged); ignoring it");
    }
    Ok((records, at as u64))
}

/// Reads and decodes every batch of every file, in order, cutting torn tails off the files
/// (so that new records never follow garbage).
pub fn read_batches(dir: &Path) -> Result<Vec<Batch>, StoreError> {
    let mut out = Vec::new();
    for (_, path) in list(dir)? {
        let (records, valid) = read_file(&path)?;
        let len = std::fs::metadata(&path).map_err(|e| io("reading", e))?.len();
        if valid < len {
            OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(valid).and_then(|_| f.sync_data()))
                .map_err(|e| io("cutting a torn tail", e))?;
        }
        for r in records {
            out.push(super::records::decode::<Batch>("journal", path.to_string_lossy().as_bytes(), BATCH_V2, &r)?);
        }
    }
    Ok(out)
}

/// The batches recovery replays: those after the checkpoint, in order, up to the first one
/// missing. A batch after a gap was never acknowledged (a file is synced whole before the next
/// one gets a record, and no batch is answered before every one before it is durable).
pub fn after_checkpoint(batches: Vec<Batch>, checkpoint: u64) -> Vec<Batch> {
    let mut out: Vec<Batch> = Vec::with_capacity(batches.len());
    let total = batches.len();
    for b in batches.into_iter().filter(|b| b.lsn > checkpoint) {
        let expect = out.last().map_or(checkpoint + 1, |p| p.lsn + 1);
        if b.lsn != expect && !(out.is_empty() && checkpoint == 0) {
            if out.is_empty() {
                tracing::error!(checkpoint, first = b.lsn, "journal batches after the checkpoint are missing");
            } else {
                tracing::warn!(
                    after = expect - 1,
                    next = b.lsn,
                    "journal batches after a gap were never acknowledged; dropping them"
                );
                break;
            }
        }
        out.push(b);
    }
    if out.len() < total {
        tracing::debug!(kept = out.len(), total, "journal batches the checkpoint covers are not replayed");
    }
    out
}

fn decode_record(b: &[u8]) -> Option<(Vec<u8>, usize)> {
    let len = u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize;
    if len == 0 {
        // Every payload holds at least a version byte; zeros are a tail the disk never wrote.
        return None;
    }
    let crc = u32::from_be_bytes(b.get(4..8)?.try_into().ok()?);
    let payload = b.get(8..8 + len)?;
    (crc32fast::hash(payload) == crc).then(|| (payload.to_vec(), 8 + len))
}

/// Frames a payload as a record.
pub fn frame(payload: &[u8]) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(
        &u32::try_from(payload.len()).map_err(|_| StoreError::Encode("batch over 4 GiB".into()))?.to_be_bytes(),
    );
    out.extend_from_slice(&crc32fast::hash(payload).to_be_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// A framed record (as [`encode_batch`] writes it, and the cluster commits it) as a batch.
pub fn decode_framed(record: &[u8]) -> Result<Batch, StoreError> {
    let Some((payload, _)) = decode_record(record) else {
        return Err(StoreError::Corrupt { tree: "journal", key: "replicated record".into(), why: "bad frame".into() });
    };
    super::records::decode::<Batch>("journal", b"replicated record", BATCH_V2, &payload)
}

/// A batch as a framed record.
pub fn encode_batch(batch: &Batch) -> Result<Vec<u8>, StoreError> {
    frame(&super::records::encode(BATCH_V2, batch)?)
}

impl Journal {
    /// Starts a fresh journal file numbered after every existing one.
    pub fn create(dir: &Path) -> Result<Journal, StoreError> {
        disk::create_dir_all(dir).map_err(|e| io("creating its folder", e))?;
        let number = list(dir)?.last().map_or(1, |(n, _)| n + 1);
        // A spare a stop left behind may be half written: never used, made again when needed.
        match std::fs::remove_file(dir.join(SPARE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("removing an old spare", e)),
            _ => {}
        }
        let file = Arc::new(open_new(dir, number)?);
        let mut journal = Journal { dir: dir.to_path_buf(), file, number, len: 0, spare: None };
        journal.make_spare(SPARE_FIRST);
        Ok(journal)
    }

    /// Appends one record (no sync). On failure the file is cut back to its previous length;
    /// when even that fails, the garbage would hide every record appended after it, so the
    /// error is a [`StoreError::Durability`] (the store stops) rather than a refusal of one batch.
    pub fn append(&mut self, record: &[u8]) -> Result<(), StoreError> {
        use std::os::unix::fs::FileExt;
        if let Err(e) = self.file.write_all_at(record, self.len) {
            if let Err(cut) = self.file.set_len(self.len) {
                return Err(StoreError::Durability(format!(
                    "journal write failed ({e}) and could not be undone ({cut})"
                )));
            }
            return Err(StoreError::Unavailable(format!("journal write failed: {e}")));
        }
        self.len += record.len() as u64;
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// The file being appended to (what a sync of the latest records must sync).
    pub fn file(&self) -> Arc<File> {
        self.file.clone()
    }

    /// Closes the current file and starts the next; returns the closed file's number. The
    /// syncer syncs the files of every batch before it finishes any of them, in order, so a
    /// batch of the next file is never acknowledged while one before it is not durable (a cut
    /// between the two syncs leaves a gap recovery stops at, with nothing acknowledged after).
    /// `spare_next`: whether to make a spare for the rotation after (not at a shutdown).
    pub fn rotate(&mut self, spare_next: bool) -> Result<u64, StoreError> {
        let next = if self.spare_ready() {
            open_spare(&self.dir, self.number + 1)?
        } else {
            open_new(&self.dir, self.number + 1)?
        };
        let closed_len = self.len;
        let old = self.number;
        self.file = Arc::new(next);
        self.number += 1;
        self.len = 0;
        if spare_next && closed_len >= SPARE_MIN {
            // Room for a file like the one just closed, and a quarter more.
            self.make_spare((closed_len + closed_len / 4).next_multiple_of(1 << 20).min(SPARE_MAX));
        }
        Ok(old)
    }

    /// Starts zero-filling a spare of `size` bytes, unless one is on its way or the disk is
    /// short of room.
    fn make_spare(&mut self, size: u64) {
        let room = size.saturating_mul(4).saturating_add(SPARE_HEADROOM);
        if self.spare.is_some() || disk::free_bytes(&self.dir).is_none_or(|free| free < room) {
            return;
        }
        let (dir, stop) = (self.dir.clone(), Arc::new(AtomicBool::new(false)));
        let stopped = stop.clone();
        self.spare = std::thread::Builder::new()
            .name("gatehouse-spare".into())
            .spawn(move || make_spare(&dir, size, &stopped))
            .map_err(|e| tracing::warn!(error = %e, "could not start the journal's spare thread"))
            .ok()
            .map(|thread| Spare { thread, stop });
    }

    /// Whether a spare is ready to be taken (a spare still being written is left to finish,
    /// for a later rotation: nobody waits for it).
    fn spare_ready(&mut self) -> bool {
        let Some(spare) = self.spare.take_if(|s| s.thread.is_finished()) else { return false };
        match spare.thread.join() {
            Ok(Ok(())) => true,
            Ok(Err(why)) => {
                tracing::warn!(error = %why, "no journal spare (the journal grows its file instead)");
                false
            }
            Err(_) => {
                tracing::warn!("the journal's spare thread panicked (the journal grows its file instead)");
                false
            }
        }
    }
}

/// Zero-fills `<dir>/spare` to `size` and makes it durable (the file whole: its blocks are then
/// written ones, which a later `fdatasync` of records over them need not describe again). A
/// failure (a full disk), or a stop, removes what was made.
fn make_spare(dir: &Path, size: u64, stop: &AtomicBool) -> Result<(), String> {
    let path = dir.join(SPARE);
    let made = (|| {
        let mut f = OpenOptions::new().create(true).truncate(true).write(true).mode(disk::FILE_MODE).open(&path)?;
        let zeros = vec![0u8; 1 << 20];
        let mut at = 0;
        while at < size {
            if stop.load(Ordering::Relaxed) {
                return Err(std::io::Error::other("the journal closed"));
            }
            let n = zeros.len().min((size - at) as usize);
            f.write_all(&zeros[..n])?;
            at += n as u64;
        }
        f.sync_all()
    })();
    made.map_err(|e| {
        let _ = std::fs::remove_file(&path);
        format!("writing {size} bytes of zeros: {e}")
    })
}

/// The spare, renamed `<number>.wal`, its new name durable before a record goes in. Opened
/// before the rename: a failure leaves either the spare as it was or the renamed file open.
fn open_spare(dir: &Path, number: u64) -> Result<File, StoreError> {
    let spare = dir.join(SPARE);
    let f = OpenOptions::new().write(true).open(&spare).map_err(|e| io("opening its spare", e))?;
    std::fs::rename(&spare, dir.join(file_name(number))).map_err(|e| io("naming its spare", e))?;
    sync_folder(dir)?;
    Ok(f)
}

fn open_new(dir: &Path, number: u64) -> Result<File, StoreError> {
    let f = OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(disk::FILE_MODE)
        .open(dir.join(file_name(number)))
        .map_err(|e| io("creating a file", e))?;
    sync_folder(dir)?;
    Ok(f)
}

/// Makes a new file's directory entry durable, so a synced record cannot vanish with it.
fn sync_folder(dir: &Path) -> Result<(), StoreError> {
    disk::sync_dir(dir).map_err(|e| StoreError::Durability(format!("fsync of the journal's folder failed: {e}")))
}

/// Deletes journal files numbered up to and including `upto` (the checkpoint covers them).
/// Their absence need not be durable: a file a cut brings back holds batches the checkpoint
/// covers, which recovery skips; the next file's creation syncs the folder anyway.
pub fn remove_upto(dir: &Path, upto: u64) -> Result<(), StoreError> {
    for (n, path) in list(dir)? {
        if n <= upto {
            std::fs::remove_file(&path).map_err(|e| io("removing a file", e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_tail_is_cut_and_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::create(dir.path()).unwrap();
        for lsn in 1..=3 {
            let b = Batch { lsn, ops: vec![(1, vec![lsn as u8], Some(vec![7]))], events: vec![] };
            j.append(&encode_batch(&b).unwrap()).unwrap();
        }
        j.file().sync_data().unwrap();
        let rec = encode_batch(&Batch { lsn: 4, ..Default::default() }).unwrap();
        j.append(&rec[..rec.len() - 2]).unwrap();
        let got = read_batches(dir.path()).unwrap();
        assert_eq!(got.iter().map(|b| b.lsn).collect::<Vec<_>>(), vec![1, 2, 3]);
        // The torn bytes are gone: a record appended now is read back.
        let mut j2 = Journal::create(dir.path()).unwrap();
        j2.append(&encode_batch(&Batch { lsn: 4, ..Default::default() }).unwrap()).unwrap();
        assert_eq!(read_batches(dir.path()).unwrap().len(), 4);
        let old = j2.rotate(true).unwrap();
        remove_upto(dir.path(), old).unwrap();
        assert!(read_batches(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn a_zero_filled_tail_is_cut_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::create(dir.path()).unwrap();
        for lsn in 1..=3 {
            j.append(&encode_batch(&Batch { lsn, ..Default::default() }).unwrap()).unwrap();
        }
        // A size that reached the disk before the data did.
        j.append(&[0u8; 4096]).unwrap();
        let got = read_batches(dir.path()).unwrap();
        assert_eq!(got.iter().map(|b| b.lsn).collect::<Vec<_>>(), vec![1, 2, 3]);
        let (_, path) = &list(dir.path()).unwrap()[0];
        let expected = 3 * encode_batch(&Batch { lsn: 1, ..Default::default() }).unwrap().len() as u64;
        assert_eq!(std::fs::metadata(path).unwrap().len(), expected, "the zeros are cut off");
    }

    fn wait_for_spare(j: &Journal) {
        while j.spare.as_ref().is_some_and(|s| !s.thread.is_finished()) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn len(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().len()
    }

    #[test]
    fn records_go_over_a_spare_zero_filled_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let spare = dir.path().join(SPARE);
        let mut j = Journal::create(dir.path()).unwrap();
        wait_for_spare(&j);
        assert_eq!(len(&spare), SPARE_FIRST, "the open makes a spare for the first rotation");
        let big = Batch { lsn: 1, ops: vec![(1, vec![1], Some(vec![7; 300 << 10]))], events: vec![] };
        j.append(&encode_batch(&big).unwrap()).unwrap();
        assert_eq!(j.rotate(true).unwrap(), 1);
        let (_, second) = list(dir.path()).unwrap().pop().unwrap();
        assert_eq!(len(&second), 1 << 20, "file 2 is the spare");
        // File 1 was past SPARE_MIN: a spare of its size and a quarter, in MiB, for file 3.
        wait_for_spare(&j);
        assert_eq!(len(&spare), 1 << 20);
        j.append(&encode_batch(&Batch { lsn: 2, ..Default::default() }).unwrap()).unwrap();
        assert_eq!(j.rotate(false).unwrap(), 2);
        assert!(!spare.exists() && j.spare.is_none(), "the spare became file 3; none after a last rotation");
        let (_, third) = list(dir.path()).unwrap().pop().unwrap();
        for lsn in 3..=4 {
            j.append(&encode_batch(&Batch { lsn, ..Default::default() }).unwrap()).unwrap();
        }
        assert_eq!(len(&third), 1 << 20, "records overwrite the zeros");
        assert_eq!(lsns(read_batches(dir.path()).unwrap()), vec![1, 2, 3, 4]);
        // A spare a stop left behind is not trusted: the open makes a new one.
        drop(j);
        std::fs::write(&spare, b"half").unwrap();
        let j = Journal::create(dir.path()).unwrap();
        wait_for_spare(&j);
        assert_eq!(len(&spare), SPARE_FIRST);
        assert_eq!(std::fs::read(&spare).unwrap().iter().filter(|b| **b != 0).count(), 0);
        // A journal dropped while its spare is being made stops it: no spare is left half made.
        std::fs::remove_file(&spare).unwrap();
        let mut j = Journal::create(dir.path()).unwrap();
        if let Some(s) = j.spare.take() {
            let _ = s.thread.join();
        }
        j.make_spare(SPARE_MAX);
        drop(j);
        assert!(!spare.exists() || len(&spare) == SPARE_MAX, "a half-made spare was left behind");
    }

    fn lsns(batches: Vec<Batch>) -> Vec<u64> {
        batches.iter().map(|b| b.lsn).collect()
    }

    fn batches(lsns: &[u64]) -> Vec<Batch> {
        lsns.iter().map(|l| Batch { lsn: *l, ..Default::default() }).collect()
    }

    #[test]
    fn recovery_replays_after_the_checkpoint_up_to_a_gap() {
        // Files the checkpoint covers but whose deletion a cut undid are not replayed.
        assert_eq!(lsns(after_checkpoint(batches(&[3, 4, 5, 6, 7]), 5)), vec![6, 7]);
        // No checkpoint yet (or a store of an earlier release): everything, from wherever it starts.
        assert_eq!(lsns(after_checkpoint(batches(&[40, 41]), 0)), vec![40, 41]);
        // A batch after a missing one was never acknowledged.
        assert_eq!(lsns(after_checkpoint(batches(&[6, 7, 9, 10]), 5)), vec![6, 7]);
        assert_eq!(lsns(after_checkpoint(batches(&[6, 6, 7]), 5)), vec![6]);
        // Missing right after the checkpoint: a damaged disk; what is there is still replayed.
        assert_eq!(lsns(after_checkpoint(batches(&[8, 9]), 5)), vec![8, 9]);
    }

    #[test]
    fn the_checkpoint_is_durable_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(checkpointed(dir.path()).unwrap(), 0);
        set_checkpoint(dir.path(), 42).unwrap();
        set_checkpoint(dir.path(), 43).unwrap();
        assert_eq!(checkpointed(dir.path()).unwrap(), 43);
        std::fs::write(dir.path().join(CHECKPOINT), b"garbage").unwrap();
        assert_eq!(checkpointed(dir.path()).unwrap(), 0, "a torn checkpoint replays everything");
        set_checkpoint(dir.path(), 44).unwrap();
        assert_eq!(checkpointed(dir.path()).unwrap(), 44, "rewritten in place");
    }
}
