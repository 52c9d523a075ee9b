//! The journal: the source of truth for every acknowledged write. Each writer batch is one
//! record — its state writes and its events — appended and `fdatasync`ed once (group commit)
//! before anyone is answered. sled and the event segments are written from it afterwards, off
//! the acknowledgement path; the checkpointer deletes journal files once both cover them.
//!
//! Why: sled 0.34's `flush()` costs ~10 ms on this class of disk while an append plus
//! `fdatasync` costs ~0.5 ms, sled's flush is `sync_file_range` rather than a real sync, and a
//! sled insert costs ~10 µs: the writer must not wait for sled.
//!
//! Record: `len: u32 BE | crc32(payload): u32 BE | payload`. A record that is short or fails
//! its CRC ends the journal (a torn write at a crash: it was never acknowledged); recovery cuts
//! the file there. Files: `<dir>/<number, 16 hex digits>.wal`, replayed in number order.
//!
//! Must not: interpret payloads (the writer and recovery do), or be read by request handlers.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::StoreError;

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
    file: std::sync::Arc<File>,
    number: u64,
    len: u64,
}

fn io(what: &str, e: std::io::Error) -> StoreError {
    StoreError::Setup(format!("journal {what}: {e}"))
}

fn file_name(number: u64) -> String {
    format!("{number:016x}.wal")
}

/// Writes `records` (framed) as the first journal file of an empty folder, synced.
pub fn seed(dir: &Path, records: &[Vec<u8>]) -> Result<(), StoreError> {
    use std::io::Write as _;
    std::fs::create_dir_all(dir).map_err(|e| io("creating its folder", e))?;
    if !list(dir)?.is_empty() {
        return Err(StoreError::Setup("journal: seeding a folder that has a journal".into()));
    }
    let mut f = open_new(dir, 1)?;
    for r in records {
        f.write_all(r).map_err(|e| io("writing", e))?;
    }
    f.sync_data().map_err(|e| io("syncing", e))
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
    if at < bytes.len() {
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

fn decode_record(b: &[u8]) -> Option<(Vec<u8>, usize)> {
    let len = u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize;
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

/// A batch as a framed record.
pub fn encode_batch(batch: &Batch) -> Result<Vec<u8>, StoreError> {
    frame(&super::records::encode(BATCH_V2, batch)?)
}

impl Journal {
    /// Starts a fresh journal file numbered after every existing one.
    pub fn create(dir: &Path) -> Result<Journal, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io("creating its folder", e))?;
        let number = list(dir)?.last().map_or(1, |(n, _)| n + 1);
        let file = std::sync::Arc::new(open_new(dir, number)?);
        Ok(Journal { dir: dir.to_path_buf(), file, number, len: 0 })
    }

    /// Appends one record (no sync). On failure the file is cut back to its previous length.
    pub fn append(&mut self, record: &[u8]) -> Result<(), std::io::Error> {
        if let Err(e) = (&*self.file).write_all(record) {
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += record.len() as u64;
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// The file being appended to (what a sync of the latest records must sync).
    pub fn file(&self) -> std::sync::Arc<File> {
        self.file.clone()
    }

    /// Closes the current file and starts the next; returns the closed file's number.
    pub fn rotate(&mut self) -> Result<u64, StoreError> {
        let next = open_new(&self.dir, self.number + 1)?;
        let old = self.number;
        self.file = std::sync::Arc::new(next);
        self.number += 1;
        self.len = 0;
        Ok(old)
    }
}

fn open_new(dir: &Path, number: u64) -> Result<File, StoreError> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(dir.join(file_name(number)))
        .map_err(|e| io("creating a file", e))?;
    // Make the new file's directory entry durable, so a synced record cannot vanish with it.
    sync_dir(dir).map_err(|e| io("syncing its folder", e))?;
    Ok(f)
}

pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir).and_then(|d| d.sync_all())
}

/// Deletes journal files numbered up to and including `upto` (sled and the event segments now
/// cover them).
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
        let old = j2.rotate().unwrap();
        remove_upto(dir.path(), old).unwrap();
        assert!(read_batches(dir.path()).unwrap().is_empty());
    }
}
