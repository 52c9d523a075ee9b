//! The journal: an append-only log of committed write sets, fsynced once per batch (group
//! commit). It is what makes an acknowledgement durable; sled is the materialised state and is
//! flushed off the request path by the checkpointer, which then deletes journal files that sled
//! fully covers.
//!
//! Why: sled 0.34's `flush()` costs ~10 ms on this class of disk while an append plus
//! `fdatasync` costs ~0.5 ms, and sled's flush is `sync_file_range`, not a real sync.
//!
//! Record: `len: u32 BE | crc32(payload): u32 BE | payload`. A record that is short or fails its
//! CRC ends the journal (a torn write at a crash: it was never acknowledged).
//! Files: `<dir>/<number, 16 hex digits>.wal`, replayed in number order.
//!
//! Must not: be read by anything but recovery; readers use sled.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::StoreError;

/// One committed write set and the event seqs it carries (every entry carries at least one).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub first_seq: u64,
    pub last_seq: u64,
    pub ops: Vec<Op>,
}

/// One journaled write: (tree index, key, value or `None` for a delete).
pub type Op = (u8, Vec<u8>, Option<Vec<u8>>);

pub const ENTRY_V1: u8 = 1;

pub struct Journal {
    dir: PathBuf,
    file: File,
    number: u64,
    len: u64,
}

fn io(what: &str, e: std::io::Error) -> StoreError {
    StoreError::Setup(format!("journal {what}: {e}"))
}

fn file_name(number: u64) -> String {
    format!("{number:016x}.wal")
}

/// Journal files present, in replay order.
pub fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| io("listing", e))? {
        let e = e.map_err(|e| io("listing", e))?;
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(n) = name.strip_suffix(".wal").and_then(|h| u64::from_str_radix(h, 16).ok()) {
            out.push((n, e.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Reads every intact entry of every journal file, in order.
pub fn read_all(dir: &Path) -> Result<Vec<Entry>, StoreError> {
    let mut entries = Vec::new();
    for (_, path) in list(dir)? {
        let mut bytes = Vec::new();
        File::open(&path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(|e| io("reading", e))?;
        let mut at = 0usize;
        while let Some((entry, used)) = decode_record(&bytes[at..]) {
            entries.push(super::records::decode::<Entry>(
                "journal",
                path.to_string_lossy().as_bytes(),
                ENTRY_V1,
                &entry,
            )?);
            at += used;
        }
        if at < bytes.len() {
            tracing::warn!(file = %path.display(), torn_bytes = bytes.len() - at, "journal ends in a torn record (never acknowledged); ignoring it");
        }
    }
    Ok(entries)
}

fn decode_record(b: &[u8]) -> Option<(Vec<u8>, usize)> {
    let len = u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_be_bytes(b.get(4..8)?.try_into().ok()?);
    let payload = b.get(8..8 + len)?;
    (crc32fast::hash(payload) == crc).then(|| (payload.to_vec(), 8 + len))
}

pub fn encode_record(entry: &Entry) -> Result<Vec<u8>, StoreError> {
    let payload = super::records::encode(ENTRY_V1, entry)?;
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(
        &u32::try_from(payload.len()).map_err(|_| StoreError::Encode("write set over 4 GiB".into()))?.to_be_bytes(),
    );
    out.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

impl Journal {
    /// Starts a fresh journal file numbered after every existing one.
    pub fn create(dir: &Path) -> Result<Journal, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| io("creating its folder", e))?;
        let number = list(dir)?.last().map_or(1, |(n, _)| n + 1);
        let file = open_new(dir, number)?;
        Ok(Journal { dir: dir.to_path_buf(), file, number, len: 0 })
    }

    /// Appends one record (no sync). On failure the file is cut back to its previous length.
    pub fn append(&mut self, record: &[u8]) -> Result<(), String> {
        if let Err(e) = self.file.write_all(record) {
            let _ = self.file.set_len(self.len);
            return Err(format!("journal write failed: {e}"));
        }
        self.len += record.len() as u64;
        Ok(())
    }

    /// Makes everything appended so far durable.
    pub fn sync(&self) -> Result<(), String> {
        self.file.sync_data().map_err(|e| format!("journal fdatasync failed: {e}"))
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    /// Closes the current file and starts the next; returns the closed file's number.
    pub fn rotate(&mut self) -> Result<u64, String> {
        let next = open_new(&self.dir, self.number + 1).map_err(|e| e.to_string())?;
        let old = self.number;
        self.file = next;
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
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io("syncing its folder", e))?;
    Ok(f)
}

/// Deletes journal files numbered up to and including `upto` (sled now covers them).
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
    fn torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::create(dir.path()).unwrap();
        for s in 1..=3 {
            let e = Entry { first_seq: s, last_seq: s, ops: vec![(1, vec![s as u8], Some(vec![7]))] };
            j.append(&encode_record(&e).unwrap()).unwrap();
        }
        j.sync().unwrap();
        let e = Entry { first_seq: 4, last_seq: 4, ops: vec![] };
        let rec = encode_record(&e).unwrap();
        j.append(&rec[..rec.len() - 2]).unwrap();
        let got = read_all(dir.path()).unwrap();
        assert_eq!(got.iter().map(|e| e.first_seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        let old = j.rotate().unwrap();
        remove_upto(dir.path(), old).unwrap();
        assert!(read_all(dir.path()).unwrap().is_empty());
    }
}
