//! The one writer (DESIGN invariant 1) and group commit (invariant 2).
//!
//! A dedicated thread takes commands in arrival order. Each command runs its checks against the
//! current trees (it is the only writer, so what it reads cannot change under it), then commits
//! its state change *and* its events in one sled transaction. Commands that arrive while a flush
//! is running queue up and share the next flush. Replies go out only after the flush that
//! covers them; then the durable head advances, which wakes event readers.
//!
//! Must not: do anything with side effects inside a transaction closure (sled may re-run it);
//! the closure only replays a prepared write set.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::{Map, Value};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use tokio::sync::{mpsc, oneshot, watch};

use super::records::{self, EventRecord, TokenRecord};
use super::{keys, room_from_record, room_to_record, StoreError, Tree, Trees};
use crate::clock::SharedClock;
use crate::events::{self, NewEvent};
use crate::rooms::{self, Privacy, Room, RoomError};

/// Most commands applied before one flush.
const MAX_BATCH: usize = 1024;

/// A mutation. Inputs are already validated by the domain module; the writer runs the checks
/// that depend on current state.
#[derive(Debug)]
pub enum Command {
    CreateRoom {
        name: Option<String>,
        privacy: Privacy,
        config: Map<String, Value>,
    },
    /// `patch` is validated; `null` values remove properties.
    UpdateRoom {
        name: String,
        privacy: Option<Privacy>,
        patch: Map<String, Value>,
    },
    DeleteRoom {
        name: String,
    },
    CreateToken {
        record: TokenRecord,
        event: NewEvent,
    },
    /// Flush, answer, and stop the writer.
    Shutdown,
}

/// What a command did. Domain refusals are values, not errors.
#[derive(Debug)]
pub enum Outcome {
    Room(Room),
    RoomDeleted(String),
    TokenRecorded,
    Refused(RoomError),
    Stopped,
}

pub(super) struct Job {
    pub cmd: Command,
    pub reply: oneshot::Sender<Result<Outcome, StoreError>>,
}

pub(super) struct WriterInit {
    pub db: sled::Db,
    pub trees: Trees,
    pub next_seq: u64,
    pub room_count: u64,
    pub domain8: String,
    pub sync_file: Option<std::fs::File>,
    pub public_url: String,
    pub clock: SharedClock,
    pub durable: watch::Sender<u64>,
    pub writable: Arc<AtomicBool>,
}

pub(super) struct Writer {
    s: WriterInit,
}

/// Staged writes of one command: replayed verbatim inside the transaction.
#[derive(Default)]
struct WriteSet {
    ops: Vec<(Tree, Vec<u8>, Option<Vec<u8>>)>,
    events: Vec<NewEvent>,
    room_delta: i64,
}

impl WriteSet {
    fn put(&mut self, t: Tree, k: impl Into<Vec<u8>>, v: Vec<u8>) {
        self.ops.push((t, k.into(), Some(v)));
    }

    fn del(&mut self, t: Tree, k: impl Into<Vec<u8>>) {
        self.ops.push((t, k.into(), None));
    }

    fn event(&mut self, kind: &'static str, payload: Value) {
        self.events.push(NewEvent::new(kind, payload));
    }
}

impl Writer {
    pub fn new(s: WriterInit) -> Writer {
        Writer { s }
    }

    /// The writer loop: take a batch, apply each command, flush once, answer everyone.
    pub fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            let stop = batch.iter().any(|j| matches!(j.cmd, Command::Shutdown));
            let results: Vec<_> = batch.iter_mut().map(|j| self.apply(&mut j.cmd)).collect();
            let flushed = self.flush();
            for (job, res) in batch.into_iter().zip(results) {
                let answer = match (&flushed, res) {
                    (Ok(()), r) => r,
                    (Err(e), _) => Err(StoreError::Unavailable(e.clone())),
                };
                let _ = job.reply.send(answer);
            }
            if stop {
                break;
            }
        }
        // Every sender is gone or Shutdown arrived: leave nothing unflushed.
        let _ = self.flush();
    }

    /// Flushes sled (and `fdatasync`s its file when configured), then publishes the new head.
    fn flush(&mut self) -> Result<(), String> {
        let res = self
            .s
            .db
            .flush()
            .map_err(|e| e.to_string())
            .and_then(|_| match &self.s.sync_file {
                Some(f) => f.sync_data().map_err(|e| e.to_string()),
                None => Ok(()),
            });
        match &res {
            Ok(_) => {
                self.s.writable.store(true, Ordering::SeqCst);
                self.s.durable.send_replace(self.s.next_seq - 1);
            }
            Err(e) => {
                tracing::error!(error = %e, "store flush failed; refusing writes until a flush succeeds");
                self.s.writable.store(false, Ordering::SeqCst);
            }
        }
        res
    }

    fn apply(&mut self, cmd: &mut Command) -> Result<Outcome, StoreError> {
        if !self.s.writable.load(Ordering::SeqCst) && !matches!(cmd, Command::Shutdown) {
            // Try to recover first: if the disk has room again, carry on.
            self.flush().map_err(StoreError::Unavailable)?;
        }
        let (ws, outcome) = match cmd {
            Command::CreateRoom { name, privacy, config } => {
                self.create_room(name.take(), *privacy, std::mem::take(config))?
            }
            Command::UpdateRoom { name, privacy, patch } => self.update_room(name, *privacy, patch)?,
            Command::DeleteRoom { name } => self.delete_room(name)?,
            Command::CreateToken { record, event } => self.create_token(record, event)?,
            Command::Shutdown => return Ok(Outcome::Stopped),
        };
        if let Some(ws) = ws {
            self.commit(ws)?;
        }
        Ok(outcome)
    }

    fn now_ms(&self) -> i64 {
        self.s.clock.now_ms()
    }

    fn get_room(&self, name: &str) -> Result<Option<Room>, StoreError> {
        match self.s.trees.get(Tree::Rooms).get(name.as_bytes())? {
            Some(b) => Ok(Some(room_from_record(super::decode_room(name.as_bytes(), &b)?)?)),
            None => Ok(None),
        }
    }

    fn room_json(&self, room: &Room) -> Value {
        events::room_payload(&room.to_json(&self.s.public_url))
    }

    fn put_room(&self, ws: &mut WriteSet, room: &Room) -> Result<(), StoreError> {
        ws.put(
            Tree::Rooms,
            room.name.as_bytes(),
            records::encode(records::ROOM_V1, &room_to_record(room))?,
        );
        Ok(())
    }

    fn create_room(
        &mut self,
        name: Option<String>,
        privacy: Privacy,
        config: Map<String, Value>,
    ) -> Result<(Option<WriteSet>, Outcome), StoreError> {
        let name = match name {
            Some(n) => {
                if self.get_room(&n)?.is_some() {
                    return Ok((None, Outcome::Refused(RoomError::NameTaken(n))));
                }
                n
            }
            None => loop {
                let n = rooms::random_name();
                if self.get_room(&n)?.is_none() {
                    break n;
                }
            },
        };
        let room = Room {
            id: uuid::Uuid::new_v4(),
            name,
            privacy,
            created_ms: self.now_ms(),
            api_created: true,
            config,
        };
        let mut ws = WriteSet::default();
        self.put_room(&mut ws, &room)?;
        ws.put(
            Tree::RoomsById,
            room.id.as_bytes().to_vec(),
            room.name.as_bytes().to_vec(),
        );
        ws.put(
            Tree::RoomsByCreated,
            keys::room_created(room.created_ms, &room.name),
            room.name.as_bytes().to_vec(),
        );
        ws.room_delta = 1;
        ws.event(events::ROOM_CREATED, self.room_json(&room));
        Ok((Some(ws), Outcome::Room(room)))
    }

    fn update_room(
        &mut self,
        name: &str,
        privacy: Option<Privacy>,
        patch: &Map<String, Value>,
    ) -> Result<(Option<WriteSet>, Outcome), StoreError> {
        let now_s = self.now_ms().div_euclid(1000);
        let Some(mut room) = self.get_room(name)?.filter(|r| !r.is_expired(now_s)) else {
            return Ok((None, Outcome::Refused(RoomError::NotFound)));
        };
        room.config = match rooms::merge_properties(&room.config, patch) {
            Ok(c) => c,
            Err(e) => return Ok((None, Outcome::Refused(e))),
        };
        if let Some(p) = privacy {
            room.privacy = p;
        }
        let mut ws = WriteSet::default();
        self.put_room(&mut ws, &room)?;
        ws.event(events::ROOM_UPDATED, self.room_json(&room));
        Ok((Some(ws), Outcome::Room(room)))
    }

    fn delete_room(&mut self, name: &str) -> Result<(Option<WriteSet>, Outcome), StoreError> {
        let Some(room) = self.get_room(name)? else {
            return Ok((None, Outcome::Refused(RoomError::NotFound)));
        };
        let mut ws = WriteSet::default();
        ws.del(Tree::Rooms, room.name.as_bytes());
        ws.del(Tree::RoomsById, room.id.as_bytes().to_vec());
        ws.del(Tree::RoomsByCreated, keys::room_created(room.created_ms, &room.name));
        ws.room_delta = -1;
        ws.event(events::ROOM_DELETED, self.room_json(&room));
        Ok((Some(ws), Outcome::RoomDeleted(room.name)))
    }

    fn create_token(
        &mut self,
        record: &TokenRecord,
        event: &NewEvent,
    ) -> Result<(Option<WriteSet>, Outcome), StoreError> {
        let mut ws = WriteSet::default();
        ws.put(
            Tree::Tokens,
            record.jti.as_bytes(),
            records::encode(records::TOKEN_V1, record)?,
        );
        ws.put(
            Tree::TokensByRoom,
            keys::token_room(record.room.as_deref(), &record.jti),
            Vec::new(),
        );
        ws.events.push(event.clone());
        Ok((Some(ws), Outcome::TokenRecorded))
    }

    /// One transaction: the state change, its events (with the next seqs), and the counters.
    fn commit(&mut self, mut ws: WriteSet) -> Result<(), StoreError> {
        let ts = self.now_ms();
        let mut seq = self.s.next_seq;
        for ev in std::mem::take(&mut ws.events) {
            let envelope = events::render(&self.s.domain8, seq, ev.kind, &ev.payload, ts);
            let rec = EventRecord {
                kind: ev.kind.to_string(),
                ts_ms: ts,
                envelope,
            };
            ws.put(
                Tree::Events,
                keys::seq(seq).to_vec(),
                records::encode(records::EVENT_V1, &rec)?,
            );
            seq += 1;
        }
        ws.put(Tree::Meta, keys::META_NEXT_SEQ, seq.to_be_bytes().to_vec());
        let rooms = self.s.room_count.saturating_add_signed(ws.room_delta);
        if ws.room_delta != 0 {
            ws.put(Tree::Meta, keys::META_ROOMS, rooms.to_be_bytes().to_vec());
        }

        let used: Vec<Tree> = ws
            .ops
            .iter()
            .map(|(t, _, _)| *t)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let handles: Vec<sled::Tree> = used.iter().map(|t| self.s.trees.get(*t).clone()).collect();
        let slot = |t: Tree| used.iter().position(|u| *u == t).unwrap_or(0);
        let res: Result<(), TransactionError<()>> = handles.as_slice().transaction(|txs| {
            for (t, k, v) in &ws.ops {
                let tx = &txs[slot(*t)];
                match v {
                    Some(v) => tx.insert(k.as_slice(), v.as_slice())?,
                    None => tx.remove(k.as_slice())?,
                };
            }
            Ok::<(), ConflictableTransactionError<()>>(())
        });
        match res {
            Ok(()) => {
                self.s.next_seq = seq;
                self.s.room_count = rooms;
                Ok(())
            }
            Err(TransactionError::Storage(e)) => {
                self.s.writable.store(false, Ordering::SeqCst);
                tracing::error!(error = %e, "store write failed; refusing writes until a flush succeeds");
                Err(StoreError::Unavailable(e.to_string()))
            }
            Err(TransactionError::Abort(())) => Err(StoreError::Unavailable("transaction aborted".into())),
        }
    }
}
