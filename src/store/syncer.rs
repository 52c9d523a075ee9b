//! The syncer: the second half of group commit (ARCHITECTURE.md, invariants 1 and 2).
//!
//! The writer appends a batch to the journal and hands it here without waiting; while this
//! thread syncs the journal, the writer runs the next batch. The syncer takes every batch
//! waiting, syncs each journal file they were appended to once, appends all their events to
//! the event log in one write (invisible until the head moves), and then, in batch order,
//! publishes the state as of each batch to readers, moves the durable head, hands its writes
//! to the applier, and answers its commands. So no one is answered, and nothing is seen,
//! before the batch — and every batch before it — is durable.
//!
//! A failed sync leaves the batches' fate unknown: they and every later command are refused
//! until a restart, whose recovery reads the journal.
//!
//! Must not: run commands or touch the writer's state.

use std::fs::File;
use std::sync::Arc;
use std::time::Instant;

use super::applier::Applied;
use super::command::Answer;
use super::journal;
use super::journal::LoggedEvent;
use super::state::State;
use super::{NotDurable, Shared, StoreStats, SyncMode};

/// Most messages taken in one round (one sync per journal file covers them all).
const MAX_GROUP: usize = 256;

/// A batch the writer appended (or could not), with everything needed to finish it.
pub struct Appended {
    /// The journal file it was appended to; `None` when nothing was appended (an empty batch,
    /// or an append that failed — then `outcome` says so).
    pub file: Option<Arc<File>>,
    /// It writes (state or events), so it must be synced before it is finished.
    pub hard: bool,
    /// The writer's state after the batch, to publish once it is durable.
    pub state: Option<State>,
    pub batch: Option<journal::Batch>,
    pub webhooks_touched: bool,
    /// `events_oldest` before the batch (compaction moved it if they differ).
    pub oldest_before: u64,
    pub answers: Vec<Box<dyn Answer>>,
    /// The writer's verdict before any sync (an append failure, a poisoned store).
    pub outcome: Result<(), NotDurable>,
}

pub enum ToSyncer {
    Batch(Appended),
    /// Answered once every batch sent before it is finished.
    Barrier(std::sync::mpsc::Sender<()>),
}

pub struct Syncer {
    pub shared: Arc<Shared>,
    pub stats: Arc<StoreStats>,
    pub sync: SyncMode,
    pub applier: flume::Sender<Applied>,
}

impl Syncer {
    pub fn run(self, rx: std::sync::mpsc::Receiver<ToSyncer>) {
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(m) => group.push(m),
                    Err(_) => break,
                }
            }
            let synced = self.sync_files(&group).and_then(|()| self.replicate(&group));
            if synced.is_ok() {
                self.log_events(&group);
            }
            for m in group {
                match m {
                    ToSyncer::Batch(a) => self.finish(a, &synced),
                    ToSyncer::Barrier(tx) => {
                        let _ = tx.send(());
                    }
                }
            }
        }
    }

    /// Syncs, once each and in order, the files the group's hard batches were appended to.
    fn sync_files(&self, group: &[ToSyncer]) -> Result<(), NotDurable> {
        if let Some(why) = self.shared.poisoned() {
            return Err(NotDurable::Refusing(why));
        }
        if self.sync != SyncMode::Fdatasync {
            return Ok(());
        }
        let mut files: Vec<&Arc<File>> = Vec::new();
        for m in group {
            if let ToSyncer::Batch(Appended { file: Some(f), hard: true, outcome: Ok(()), .. }) = m {
                if !files.iter().any(|g| Arc::ptr_eq(g, f)) {
                    files.push(f);
                }
            }
        }
        for f in files {
            let started = Instant::now();
            self.shared.health.syncer_busy();
            let synced = f.sync_data();
            self.shared.health.syncer_idle();
            self.stats.sync_seconds.observe(started.elapsed().as_secs_f64());
            if let Err(e) = synced {
                let why = NotDurable::Sync(e.to_string());
                self.shared.poison(why.to_string());
                return Err(why);
            }
        }
        Ok(())
    }

    /// Cluster mode: commits the group's batches (in order) where every node reads them.
    fn replicate(&self, group: &[ToSyncer]) -> Result<(), NotDurable> {
        // Cluster mode: batches are committed to etcd too before anyone is answered.
        let Some(r) = self.shared.replicate.get() else { return Ok(()) };
        let mut records = Vec::new();
        for m in group {
            if let ToSyncer::Batch(Appended { batch: Some(b), outcome: Ok(()), .. }) = m {
                if b.ops.is_empty() && b.events.is_empty() {
                    continue;
                }
                records.push((b.lsn, journal::encode_batch(b).map_err(|e| NotDurable::Encode(e.to_string()))?));
            }
        }
        if records.is_empty() {
            return Ok(());
        }
        if let Err(e) = r.commit(&records) {
            let why = NotDurable::Replicate(e.to_string());
            self.shared.poison(why.to_string());
            return Err(why);
        }
        Ok(())
    }

    /// Appends the events of the group's batches that will be published, in one write (one
    /// per batch cost a `pwrite` each). A failure poisons the store: none of the group is then
    /// published, and the journal holds them all for the restart to re-append.
    fn log_events(&self, group: &[ToSyncer]) {
        if self.shared.poisoned().is_some() {
            return;
        }
        let events: Vec<&LoggedEvent> = group
            .iter()
            .filter_map(|m| match m {
                ToSyncer::Batch(Appended { batch: Some(b), state: Some(_), outcome: Ok(()), .. }) => Some(&b.events),
                _ => None,
            })
            .flatten()
            .collect();
        if let Err(e) = self.shared.events.append_next(&events) {
            self.shared.poison(format!("event log append failed: {e}"));
        }
    }

    fn finish(&self, a: Appended, synced: &Result<(), NotDurable>) {
        let mut outcome = a.outcome.and_then(|()| synced.clone());
        // An earlier batch of this group may have poisoned the store since the sync (its events
        // could not be logged): nothing after it may be published over the hole.
        if let (Ok(()), Some(why)) = (&outcome, self.shared.poisoned()) {
            outcome = Err(NotDurable::Refusing(why));
        }
        if outcome.is_ok() {
            if let (Some(batch), Some(state)) = (a.batch, a.state) {
                if let Err(why) = self.publish(batch, state, a.webhooks_touched, a.oldest_before) {
                    outcome = Err(why);
                }
            }
        }
        for answer in a.answers {
            answer.send(outcome.clone());
        }
    }

    /// Makes a durable batch visible: state, events and head, webhooks, applier.
    fn publish(
        &self,
        batch: journal::Batch,
        state: State,
        webhooks_touched: bool,
        oldest_before: u64,
    ) -> Result<(), NotDurable> {
        let oldest = state.events_oldest;
        let state = Arc::new(state);
        self.shared.published.store(state.clone());
        // The group's events are in the log already (`log_events`; had that failed, the store
        // would be poisoned and nothing published).
        if let Some(last) = batch.events.last().map(|e| e.seq) {
            self.shared.events.set_head(last);
            self.shared.hub.publish(&batch.events, &state.live);
        }
        if oldest != oldest_before {
            if let Err(e) = self.shared.events.retain_from(oldest) {
                tracing::warn!(error = %e, "could not drop compacted event segments");
            }
        }
        if webhooks_touched {
            self.shared.webhooks_changed.send_modify(|v| *v += 1);
        }
        if self.applier.send(Applied { lsn: batch.lsn, ops: batch.ops }).is_err() {
            self.shared.poison(NotDurable::ApplierGone.to_string());
            return Err(NotDurable::ApplierGone);
        }
        Ok(())
    }
}
