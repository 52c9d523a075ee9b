//! The one writer and group commit (ARCHITECTURE.md, invariants 1 and 2), reduced to its loop.
//!
//! A dedicated thread takes commands in arrival order, as many as are waiting, and runs each
//! in a [`Ctx`] over its working state (a failed command's changes are undone); it then fires
//! the deadlines that came due. The batch — every write and event it produced — is one journal
//! record, appended and handed to the syncer (`syncer.rs`), which syncs it (once for every
//! batch waiting) before anyone is answered or anything published, while the writer runs the
//! next batch. The applier then puts the writes in sled off the acknowledgement path.
//!
//! Must not: know what a command does (commands are [`Job`]s), answer a command, publish, or
//! write sled.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::applier::Closed;
use super::command::{Answer, Job};
use super::ctx::{BatchBuf, Ctx, Env};
use super::journal::{self, Journal};
use super::state::{Private, State, Tree, Trees};
use super::syncer::{Appended, ToSyncer};
use super::timers::TimerId;
use super::{NotDurable, Shared, StoreError};

/// Most commands in one batch.
const MAX_BATCH: usize = 1024;
/// Most deadlines fired in one batch (the rest go in the next).
const FIRE_BUDGET: usize = 4096;
/// The journal is rotated (and the checkpointer told) past this size...
const ROTATE_BYTES: u64 = 64 << 20;
/// ...or this long after the last rotation, if anything was written.
const ROTATE_EVERY: Duration = Duration::from_secs(2);
/// Writes the applier has not confirmed past which the writer waits for it: each is held in
/// memory (the overlay, the applier's queue) until sled has it, so this bounds that memory
/// (~150 bytes a write) whatever a burst of writes does; it is ~2 s of sled's work.
const MAX_UNAPPLIED_OPS: usize = 200_000;
/// Longest wait without looking at the clock (bounds what a wall-clock jump can delay).
const MAX_WAIT: Duration = Duration::from_secs(1);

/// What the writer's queue carries.
pub enum Msg {
    Job(Box<dyn Job>),
    /// Look at the clock again (it moved: test builds).
    Tick,
    /// A consistent copy of the store into the sink; replies the record count and the last
    /// batch it holds.
    Backup {
        sink: super::BackupSink,
        files: Vec<(&'static str, Vec<u8>)>,
        reply: oneshot::Sender<Result<(u64, u64), StoreError>>,
    },
    /// A replica: the leader's batch records, applied in order (see [`Writer::replicated`]);
    /// replies the last batch held.
    Replicated {
        records: Vec<Vec<u8>>,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    /// A replica becomes the writer that leads (see [`Writer::promote`]).
    Promote {
        replicate: Arc<dyn super::Replicate>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Sync, answer, and stop.
    Shutdown(oneshot::Sender<()>),
    /// Test builds only: the writer stops for this long, as if a dependency hung.
    #[cfg(feature = "test-clock")]
    Freeze(u64),
}

/// How the writer fires a deadline (given by the store, so the writer need not know commands).
pub type Fire = fn(&mut Ctx<'_>, i64, &TimerId) -> Result<usize, StoreError>;

pub struct Writer {
    pub state: State,
    /// Deadlines and leases: the writer's alone.
    pub private: Private,
    pub journal: Journal,
    pub env: Arc<Env>,
    pub trees: Trees,
    pub shared: Arc<Shared>,
    /// Bounded: a syncer stuck in a sync stops the writer (and the watchdog sees it).
    pub syncer: std::sync::mpsc::SyncSender<ToSyncer>,
    pub checkpoints: std::sync::mpsc::Sender<Closed>,
    pub fire: Fire,
    /// Batches handed to the applier and not confirmed yet: (lsn, the keys they wrote).
    pub unapplied: VecDeque<(u64, Vec<(Tree, Vec<u8>)>)>,
    pub unapplied_ops: usize,
    pub last_rotation: Instant,
    /// The last batch in the current journal file.
    pub last_lsn_in_file: u64,
}

impl Writer {
    pub fn run(mut self, rx: flume::Receiver<Msg>) {
        loop {
            let Some(first) = self.next_message(&rx) else { break };
            let mut msgs: Vec<Msg> = first.into_iter().collect();
            while msgs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => msgs.push(m),
                    Err(_) => break,
                }
            }
            self.shared.health.writer_busy();
            self.env.stats.batch_size.observe(msgs.len() as f64);
            let stop = self.batch(msgs);
            self.shared.health.writer_idle();
            if let Some(done) = stop {
                self.drain_syncer();
                self.rotate(true);
                let _ = done.send(());
                return;
            }
            self.rotate(false);
        }
        self.drain_syncer();
        self.rotate(true);
    }

    /// Waits until the syncer has finished every batch handed to it.
    fn drain_syncer(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.syncer.send(ToSyncer::Barrier(tx)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// Waits for a message or the next deadline. `None` when every sender is gone;
    /// `Some(None)` when a deadline (or the clock) calls.
    fn next_message(&mut self, rx: &flume::Receiver<Msg>) -> Option<Option<Msg>> {
        let now = self.env.clock.now_ms();
        let wait = match self.private.timers.first() {
            // A replica fires nothing: the leader's firings come as batches.
            Some(at) if !self.replica() => Duration::from_millis(u64::try_from(at - now).unwrap_or(0)).min(MAX_WAIT),
            _ => MAX_WAIT,
        };
        match rx.recv_timeout(wait) {
            Ok(m) => Some(Some(m)),
            Err(flume::RecvTimeoutError::Timeout) => Some(None),
            Err(flume::RecvTimeoutError::Disconnected) => None,
        }
    }

    fn replica(&self) -> bool {
        self.shared.replica.load(Ordering::Acquire)
    }

    /// Runs one batch; returns the shutdown reply if a shutdown came. A replica's batches
    /// (and a promotion) end the batch being built: each has its own lsn.
    fn batch(&mut self, msgs: Vec<Msg>) -> Option<oneshot::Sender<()>> {
        self.forget_applied();
        self.wait_for_applier();
        let mut base = self.state.clone();
        let mut buf = BatchBuf::new(self.state.lsn + 1);
        let now = self.env.clock.now_ms();
        let mut answers: Vec<Box<dyn Answer>> = Vec::new();
        let mut stop = None;
        let mut backups = Vec::new();
        for m in msgs {
            match m {
                Msg::Job(job) => answers.push(self.run_job(job, &mut buf, now)),
                Msg::Tick => {}
                Msg::Backup { sink, files, reply } => backups.push((sink, files, reply)),
                Msg::Shutdown(done) => stop = Some(done),
                Msg::Replicated { records, reply } => {
                    self.commit(std::mem::take(&mut buf), base, std::mem::take(&mut answers));
                    self.replicated(records, reply);
                    (base, buf) = (self.state.clone(), BatchBuf::new(self.state.lsn + 1));
                }
                Msg::Promote { replicate, reply } => {
                    self.commit(std::mem::take(&mut buf), base, std::mem::take(&mut answers));
                    let _ = reply.send(self.promote(replicate));
                    (base, buf) = (self.state.clone(), BatchBuf::new(self.state.lsn + 1));
                }
                #[cfg(feature = "test-clock")]
                Msg::Freeze(ms) => std::thread::sleep(Duration::from_millis(ms)),
            }
        }
        if !self.replica() {
            self.fire_due(&mut buf, now);
        }
        self.commit(buf, base, answers);
        for (sink, files, reply) in backups {
            let _ = reply.send(self.backup(sink, &files));
        }
        stop
    }

    /// A replica applies the leader's batch records: each becomes a batch of this store with
    /// the leader's lsn, ops and events (their seqs), through the journal, the event log, the
    /// published state and the applier, as the writer's own batches go. The state follows
    /// the writes: the overlay, who is present (the sessions tree), the counters (meta).
    /// Replicated batches are not synced: the cluster holds them, and a node rebuilds its
    /// store from the cluster at every start.
    fn replicated(&mut self, records: Vec<Vec<u8>>, reply: oneshot::Sender<Result<u64, StoreError>>) {
        let mut reply = Some(reply);
        let count = records.len();
        for (i, record) in records.into_iter().enumerate() {
            let last = i + 1 == count;
            let batch = match journal::decode_framed(&record) {
                Ok(b) => b,
                Err(e) => {
                    let _ = reply.take().map(|r| r.send(Err(e)));
                    return;
                }
            };
            if batch.lsn <= self.state.lsn {
                if last {
                    let _ = reply.take().map(|r| r.send(Ok(self.state.lsn)));
                }
                continue;
            }
            if batch.lsn != self.state.lsn + 1 {
                let gap = StoreError::Gap { have: self.state.lsn, offered: batch.lsn };
                let _ = reply.take().map(|r| r.send(Err(gap)));
                return;
            }
            self.forget_applied();
            self.wait_for_applier();
            let base = self.state.clone();
            if let Err(e) = self.follow(&batch) {
                self.state = base;
                let _ = reply.take().map(|r| r.send(Err(e)));
                return;
            }
            let answers: Vec<Box<dyn Answer>> = match (last, reply.take()) {
                (true, Some(r)) => vec![Box::new(ReplicatedAnswer(r, batch.lsn))],
                (_, r) => {
                    reply = r;
                    Vec::new()
                }
            };
            let mut buf = BatchBuf::new(batch.lsn);
            (buf.ops, buf.events) = (batch.ops, batch.events);
            self.commit_as(buf, base, answers, true);
            self.rotate(false);
        }
    }

    /// The state after a replicated batch's writes: each in the overlay (tagged with the
    /// batch, as the writer's own), a session written or removed in `live`, the counters from
    /// the meta rows the leader wrote with the batch, the next seq after its events.
    fn follow(&mut self, batch: &journal::Batch) -> Result<(), StoreError> {
        use super::{keys, records};
        for (t, key, value) in &batch.ops {
            let Some(tree) = Tree::from_index(*t) else {
                return Err(StoreError::Corrupt {
                    tree: "journal",
                    key: format!("batch {}", batch.lsn),
                    why: format!("unknown tree {t}"),
                });
            };
            let slot = super::state::Slot { lsn: batch.lsn, value: value.as_deref().map(Arc::from) };
            self.state.overlay.set(tree, key, slot);
            match (tree, value) {
                (Tree::Sessions, Some(v)) => {
                    let rec: records::SessionRecord = records::decode("sessions", key, records::SESSION_V2, v)?;
                    self.state.live.insert(Arc::new(super::live::Entry::from_record(rec)));
                }
                (Tree::Sessions, None) => {
                    self.state.live.remove(&String::from_utf8_lossy(key));
                }
                (Tree::Meta, Some(v)) if key.as_slice() == keys::META_ROOMS => {
                    self.state.room_count = keys::u64_of(v).unwrap_or(self.state.room_count);
                }
                (Tree::Meta, Some(v)) if key.as_slice() == keys::META_EVENTS_OLDEST => {
                    self.state.events_oldest = keys::u64_of(v).unwrap_or(self.state.events_oldest);
                }
                _ => {}
            }
        }
        if let Some(e) = batch.events.last() {
            self.state.next_seq = e.seq + 1;
        }
        Ok(())
    }

    /// The replica becomes the writer that leads: every batch handed to the syncer is
    /// finished and in sled, then the state is loaded from sled as an open loads it (sessions
    /// with fresh leases and their deadlines, room and ban deadlines), and from the next batch
    /// each is committed through `replicate` before it is finished.
    fn promote(&mut self, replicate: Arc<dyn super::Replicate>) -> Result<(), StoreError> {
        if !self.replica() {
            return Err(StoreError::Setup("the store leads already".into()));
        }
        self.drain_syncer();
        while self.shared.applied.load(Ordering::Acquire) < self.state.lsn {
            if let Some(why) = self.shared.poisoned() {
                return Err(StoreError::Unavailable(why));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.forget_applied();
        let st = &self.state;
        let (state, private) = super::load_state(
            &self.trees,
            st.lsn,
            st.next_seq,
            st.room_count,
            st.events_oldest,
            self.env.clock.now_ms(),
            self.env.lease_ms,
        )?;
        (self.state, self.private) = (state, private);
        if self.shared.replicate.set(replicate).is_err() {
            return Err(StoreError::Setup("the store has a replication hook already".into()));
        }
        self.shared.replica.store(false, Ordering::Release);
        Ok(())
    }

    fn ctx<'a>(&'a mut self, buf: &'a mut BatchBuf, now: i64) -> Ctx<'a> {
        Ctx { st: &mut self.state, pv: &mut self.private, batch: buf, trees: &self.trees, env: &self.env, now_ms: now }
    }

    /// Runs a command; if it fails, everything it recorded is undone.
    fn run_job(&mut self, job: Box<dyn Job>, buf: &mut BatchBuf, now: i64) -> Box<dyn Answer> {
        if let Some(why) = self.shared.poisoned() {
            return Box::new(Refused(StoreError::Unavailable(why), job));
        }
        if self.replica() {
            return Box::new(Refused(StoreError::Replica, job));
        }
        let mark = buf.mark(&self.state);
        let answer = job.run(&mut self.ctx(buf, now));
        if answer.failed() {
            buf.rollback(&mut self.state, &mut self.private, mark);
        }
        answer
    }

    /// Fires what is due, in deadline order, up to [`FIRE_BUDGET`] firings; a deadline a firing
    /// moves to a moment already past fires in its turn in the same pass. A firing that fails
    /// is undone and tried again at the next pass.
    fn fire_due(&mut self, buf: &mut BatchBuf, now: i64) {
        if self.shared.poisoned().is_some() {
            return;
        }
        let fire = self.fire;
        let mut failed: Vec<(i64, TimerId)> = Vec::new();
        for _ in 0..FIRE_BUDGET {
            // The earliest due deadline, looked up afresh: a firing may have moved another.
            let next = self.private.timers.due(now, failed.len() + 1).into_iter().find(|d| !failed.contains(d));
            let Some((at, id)) = next else { return };
            let mark = buf.mark(&self.state);
            if let Err(e) = fire(&mut self.ctx(buf, now), at, &id) {
                tracing::warn!(error = %e, deadline = ?id, "a deadline could not fire; it stays and is tried again");
                buf.rollback(&mut self.state, &mut self.private, mark);
                failed.push((at, id));
            }
        }
    }

    /// Appends the batch to the journal and hands it, with its answers, to the syncer, which
    /// makes it durable and visible. Every batch goes through the syncer, even an empty one,
    /// so no answer overtakes an earlier batch that is not durable yet. On a journal write
    /// failure the batch is undone and refused.
    fn commit(&mut self, buf: BatchBuf, base: State, answers: Vec<Box<dyn Answer>>) {
        self.commit_as(buf, base, answers, false);
    }

    /// [`Writer::commit`]; `replicated`: a replica's batch, whose meta rows came with it and
    /// which is not synced.
    fn commit_as(&mut self, mut buf: BatchBuf, base: State, answers: Vec<Box<dyn Answer>>, replicated: bool) {
        let oldest_before = base.events_oldest;
        let mut out = Appended {
            file: None,
            hard: false,
            state: None,
            batch: None,
            webhooks_touched: buf.webhooks_touched,
            oldest_before,
            answers,
            outcome: Ok(()),
        };
        if let Some(why) = self.shared.poisoned() {
            out.outcome = Err(NotDurable::Refusing(why));
        } else if !(buf.ops.is_empty() && buf.events.is_empty()) {
            if self.state.room_count != base.room_count && !replicated {
                let key = super::keys::META_ROOMS.to_vec();
                let value = self.state.room_count.to_be_bytes().to_vec();
                buf.ops.push((Tree::Meta.index(), key, Some(value)));
            }
            let batch = journal::Batch { lsn: buf.lsn, ops: std::mem::take(&mut buf.ops), events: buf.events };
            let mut size = 0u64;
            let appended = journal::encode_batch(&batch).and_then(|record| {
                size = record.len() as u64;
                self.journal.append(&record)
            });
            if let Err(StoreError::Durability(why)) = &appended {
                self.shared.poison(why.clone());
            }
            match appended {
                Err(e) => {
                    // Nothing of this batch was written: undo it and carry on (a full disk may clear).
                    self.state = base;
                    self.shared.refused_bytes.store(size.max(1), Ordering::SeqCst);
                    self.shared.writable.store(false, Ordering::SeqCst);
                    tracing::error!(error = %e, "journal append failed; the batch is refused");
                    out.outcome = Err(NotDurable::Append(e.to_string()));
                }
                Ok(()) => {
                    // Writable again once a batch as large as the one refused fits.
                    if size >= self.shared.refused_bytes.load(Ordering::SeqCst) {
                        self.shared.refused_bytes.store(0, Ordering::SeqCst);
                        self.shared.writable.store(true, Ordering::SeqCst);
                    }
                    self.state.lsn = batch.lsn;
                    self.state.timer_count = self.private.timers.len();
                    self.last_lsn_in_file = batch.lsn;
                    let keys: Vec<(Tree, Vec<u8>)> =
                        batch.ops.iter().filter_map(|(t, k, _)| Tree::from_index(*t).map(|t| (t, k.clone()))).collect();
                    self.unapplied_ops += keys.len();
                    self.unapplied.push_back((batch.lsn, keys));
                    out.file = Some(self.journal.file());
                    // Every batch that writes is synced before it is finished: one that is not
                    // durable must reach neither sled nor the event log's retention.
                    out.hard = !replicated;
                    out.state = Some(self.state.clone());
                    out.batch = Some(batch);
                }
            }
        }
        if let Err(std::sync::mpsc::SendError(ToSyncer::Batch(lost))) = self.syncer.send(ToSyncer::Batch(out)) {
            self.shared.poison(NotDurable::SyncerGone.to_string());
            for a in lost.answers {
                a.send(Err(NotDurable::SyncerGone));
            }
        }
    }

    /// Forgets overlay writes sled now holds.
    fn forget_applied(&mut self) {
        let applied = self.shared.applied.load(Ordering::Acquire);
        while self.unapplied.front().is_some_and(|(lsn, _)| *lsn <= applied) {
            let Some((lsn, keys)) = self.unapplied.pop_front() else { break };
            self.unapplied_ops -= keys.len();
            for (t, k) in keys {
                self.state.overlay.forget(t, &k, lsn);
            }
        }
    }

    /// Backpressure: past [`MAX_UNAPPLIED_OPS`] the writer waits for the applier (the
    /// watchdog reports it if the applier is stuck).
    fn wait_for_applier(&mut self) {
        while self.unapplied_ops > MAX_UNAPPLIED_OPS {
            std::thread::sleep(Duration::from_millis(2));
            self.forget_applied();
        }
    }

    /// Starts a new journal file when the current one is big or old (or at shutdown), and lets
    /// the checkpointer fold the closed one into sled.
    fn rotate(&mut self, force: bool) {
        let len = self.journal.len();
        let due = len >= ROTATE_BYTES || (len > 0 && self.last_rotation.elapsed() >= ROTATE_EVERY);
        if self.shared.poisoned().is_some() || !(due || (force && len > 0)) {
            return;
        }
        match self.journal.rotate(!force) {
            Ok(file) => {
                self.last_rotation = Instant::now();
                let _ = self.checkpoints.send(Closed { file, last_lsn: self.last_lsn_in_file });
            }
            Err(StoreError::Durability(why)) => self.shared.poison(why),
            Err(e) => tracing::warn!(error = %e, "journal rotation failed; will retry"),
        }
    }

    /// A consistent copy: once the applier has caught up, sled holds exactly the state as of
    /// the last batch, and the event log every event up to the head. The writer is busy for as
    /// long as the copy takes; the sink is a local file.
    fn backup(
        &mut self,
        mut sink: super::BackupSink,
        files: &[(&'static str, Vec<u8>)],
    ) -> Result<(u64, u64), StoreError> {
        while self.shared.applied.load(Ordering::Acquire) < self.state.lsn {
            std::thread::sleep(Duration::from_millis(2));
        }
        self.forget_applied();
        let records = super::backup::write(&self.trees, &self.shared.events, files, sink.0.as_mut())?;
        Ok((records, self.state.lsn))
    }
}

/// The reply to a replica's batches, once the last is published.
struct ReplicatedAnswer(oneshot::Sender<Result<u64, StoreError>>, u64);

impl Answer for ReplicatedAnswer {
    fn failed(&self) -> bool {
        false
    }

    fn send(self: Box<Self>, synced: Result<(), NotDurable>) {
        let _ = self.0.send(synced.map(|()| self.1).map_err(|e| StoreError::Unavailable(e.to_string())));
    }
}

/// The answer of a command refused before it ran.
struct Refused(StoreError, Box<dyn Job>);

impl Answer for Refused {
    fn failed(&self) -> bool {
        true
    }

    fn send(self: Box<Self>, _synced: Result<(), NotDurable>) {
        // The job's own reply channel is inside it; dropping it tells the caller the store is
        // unavailable ("shutting down" would be wrong, so run it against nothing instead).
        let Refused(err, job) = *self;
        job.refuse(err);
    }
}
