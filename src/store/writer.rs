//! The one writer and group commit (ARCHITECTURE.md, invariants 1 and 2), reduced to its loop.
//!
//! A dedicated thread takes commands in arrival order, as many as are waiting, and runs each
//! in a [`Ctx`] over its working state (a failed command's changes are undone); it then fires
//! the deadlines that came due. The batch — every write and event it produced — is one journal
//! record, appended and synced once before anyone is answered; then the state is published to
//! readers, the events appended to the event log and the durable head moved, and the writes
//! handed to the applier, which puts them in sled off the acknowledgement path.
//!
//! Must not: know what a command does (commands are [`Job`]s), or write sled.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::applier::{Applied, Closed};
use super::command::{Answer, Job};
use super::ctx::{BatchBuf, Ctx, Env};
use super::journal::{self, Journal};
use super::state::{Private, State, Tree, Trees};
use super::timers::TimerId;
use super::{Shared, StoreError, SyncMode};

/// Most commands in one batch.
const MAX_BATCH: usize = 1024;
/// Most deadlines fired in one batch (the rest go in the next).
const FIRE_BUDGET: usize = 4096;
/// The journal is rotated (and the checkpointer told) past this size...
const ROTATE_BYTES: u64 = 64 << 20;
/// ...or this long after the last rotation, if anything was written.
const ROTATE_EVERY: Duration = Duration::from_secs(2);
/// Writes the applier has not confirmed past which the writer waits for it.
const MAX_UNAPPLIED_OPS: usize = 2_000_000;
/// Longest wait without looking at the clock (bounds what a wall-clock jump can delay).
const MAX_WAIT: Duration = Duration::from_secs(1);

/// What the writer's queue carries.
pub enum Msg {
    Job(Box<dyn Job>),
    /// Look at the clock again (it moved: test builds).
    Tick,
    /// A consistent copy of the store into the sink; replies the record count.
    Backup {
        sink: super::BackupSink,
        files: Vec<(&'static str, Vec<u8>)>,
        reply: oneshot::Sender<Result<u64, StoreError>>,
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
    pub sync: SyncMode,
    pub env: Arc<Env>,
    pub trees: Trees,
    pub shared: Arc<Shared>,
    pub applier: flume::Sender<Applied>,
    pub checkpoints: std::sync::mpsc::Sender<Closed>,
    pub fire: Fire,
    /// Batches handed to the applier and not confirmed yet: (lsn, the keys they wrote).
    pub unapplied: VecDeque<(u64, Vec<(Tree, Vec<u8>)>)>,
    pub unapplied_ops: usize,
    /// A journal sync failed: whether the record is durable is unknown, so every later command
    /// answers 503 until a restart (whose recovery reads the journal).
    pub poisoned: Option<String>,
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
                self.rotate(true);
                let _ = done.send(());
                return;
            }
            self.rotate(false);
        }
        self.rotate(true);
    }

    /// Waits for a message or the next deadline. `None` when every sender is gone;
    /// `Some(None)` when a deadline (or the clock) calls.
    fn next_message(&mut self, rx: &flume::Receiver<Msg>) -> Option<Option<Msg>> {
        let now = self.env.clock.now_ms();
        let wait = match self.private.timers.first() {
            Some(at) => Duration::from_millis(u64::try_from(at - now).unwrap_or(0)).min(MAX_WAIT),
            None => MAX_WAIT,
        };
        match rx.recv_timeout(wait) {
            Ok(m) => Some(Some(m)),
            Err(flume::RecvTimeoutError::Timeout) => Some(None),
            Err(flume::RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Runs one batch; returns the shutdown reply if a shutdown came.
    fn batch(&mut self, msgs: Vec<Msg>) -> Option<oneshot::Sender<()>> {
        self.forget_applied();
        self.wait_for_applier();
        let base = self.state.clone();
        let lsn = self.state.lsn + 1;
        let mut buf = BatchBuf::new(lsn);
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
                #[cfg(feature = "test-clock")]
                Msg::Freeze(ms) => std::thread::sleep(Duration::from_millis(ms)),
            }
        }
        self.fire_due(&mut buf, now);
        let synced = self.commit(buf, base);
        for a in answers {
            a.send(synced.clone());
        }
        for (sink, files, reply) in backups {
            let _ = reply.send(self.backup(sink, &files));
        }
        stop
    }

    fn ctx<'a>(&'a mut self, buf: &'a mut BatchBuf, now: i64) -> Ctx<'a> {
        Ctx { st: &mut self.state, pv: &mut self.private, batch: buf, trees: &self.trees, env: &self.env, now_ms: now }
    }

    /// Runs a command; if it fails, everything it recorded is undone.
    fn run_job(&mut self, job: Box<dyn Job>, buf: &mut BatchBuf, now: i64) -> Box<dyn Answer> {
        if let Some(why) = &self.poisoned {
            return Box::new(Refused(StoreError::Unavailable(why.clone()), job));
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
        if self.poisoned.is_some() {
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

    /// Makes the batch durable and visible: journal (synced when it carries events), then the
    /// published state, the event log and its head, and the applier. On a journal failure the
    /// batch is undone and refused.
    fn commit(&mut self, mut buf: BatchBuf, base: State) -> Result<(), String> {
        if let Some(why) = &self.poisoned {
            return Err(why.clone());
        }
        if buf.ops.is_empty() && buf.events.is_empty() {
            return Ok(());
        }
        if self.state.room_count != base.room_count {
            let key = super::keys::META_ROOMS.to_vec();
            let value = self.state.room_count.to_be_bytes().to_vec();
            buf.ops.push((Tree::Meta.index(), key, Some(value)));
        }
        let hard = !buf.events.is_empty();
        let batch = journal::Batch { lsn: buf.lsn, ops: std::mem::take(&mut buf.ops), events: buf.events };
        let appended = journal::encode_batch(&batch).and_then(|record| {
            self.journal.append(&record).map_err(|e| StoreError::Unavailable(format!("journal write failed: {e}")))
        });
        if let Err(e) = appended {
            // Nothing of this batch was written: undo it and carry on (a full disk may clear).
            self.state = base;
            self.shared.writable.store(false, Ordering::SeqCst);
            tracing::error!(error = %e, "journal append failed; the batch is refused");
            return Err(e.to_string());
        }
        if hard && self.sync == SyncMode::Fdatasync {
            let started = Instant::now();
            let synced = self.journal.sync();
            self.env.stats.sync_seconds.observe(started.elapsed().as_secs_f64());
            if let Err(e) = synced {
                let why = format!("journal fdatasync failed: {e}");
                self.poison(why.clone());
                return Err(why);
            }
        }
        self.shared.writable.store(true, Ordering::SeqCst);
        self.state.lsn = batch.lsn;
        self.last_lsn_in_file = batch.lsn;
        self.publish(batch, buf.webhooks_touched, base.events_oldest);
        Ok(())
    }

    fn publish(&mut self, batch: journal::Batch, webhooks_touched: bool, oldest_before: u64) {
        self.state.timer_count = self.private.timers.len();
        self.shared.published.store(Arc::new(self.state.clone()));
        if let Some(last) = batch.events.last().map(|e| e.seq) {
            match self.shared.events.append(&batch.events) {
                Ok(()) => {
                    self.shared.events.set_head(last);
                    self.shared.hub.publish(&batch.events);
                }
                // The journal holds them; a restart re-appends them.
                Err(e) => self.poison(format!("event log append failed: {e}")),
            }
        }
        if self.state.events_oldest != oldest_before {
            if let Err(e) = self.shared.events.retain_from(self.state.events_oldest) {
                tracing::warn!(error = %e, "could not drop compacted event segments");
            }
        }
        if webhooks_touched {
            self.shared.webhooks_changed.send_modify(|v| *v += 1);
        }
        let keys: Vec<(Tree, Vec<u8>)> =
            batch.ops.iter().filter_map(|(t, k, _)| Tree::from_index(*t).map(|t| (t, k.clone()))).collect();
        self.unapplied_ops += keys.len();
        self.unapplied.push_back((batch.lsn, keys));
        if self.applier.send(Applied { lsn: batch.lsn, ops: batch.ops }).is_err() {
            self.poison("the applier thread is gone".into());
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

    fn poison(&mut self, why: String) {
        tracing::error!(error = %why, "the store cannot write; refusing writes until restart (recovery replays the journal)");
        self.shared.writable.store(false, Ordering::SeqCst);
        self.poisoned = Some(why);
    }

    /// Starts a new journal file when the current one is big or old (or at shutdown), and lets
    /// the checkpointer fold the closed one into sled.
    fn rotate(&mut self, force: bool) {
        let len = self.journal.len();
        let due = len >= ROTATE_BYTES || (len > 0 && self.last_rotation.elapsed() >= ROTATE_EVERY);
        if self.poisoned.is_some() || !(due || (force && len > 0)) {
            return;
        }
        match self.journal.rotate() {
            Ok(file) => {
                self.last_rotation = Instant::now();
                let _ = self.checkpoints.send(Closed { file, last_lsn: self.last_lsn_in_file });
            }
            Err(e) => tracing::warn!(error = %e, "journal rotation failed; will retry"),
        }
    }

    /// A consistent copy: once the applier has caught up, sled holds exactly the state as of
    /// the last batch, and the event log every event up to the head. The writer is busy for as
    /// long as the copy takes; the sink is a local file.
    fn backup(&mut self, mut sink: super::BackupSink, files: &[(&'static str, Vec<u8>)]) -> Result<u64, StoreError> {
        while self.shared.applied.load(Ordering::Acquire) < self.state.lsn {
            std::thread::sleep(Duration::from_millis(2));
        }
        self.forget_applied();
        super::backup::write(&self.trees, &self.shared.events, files, sink.0.as_mut())
    }
}

/// The answer of a command refused before it ran.
struct Refused(StoreError, Box<dyn Job>);

impl Answer for Refused {
    fn failed(&self) -> bool {
        true
    }

    fn send(self: Box<Self>, _synced: Result<(), String>) {
        // The job's own reply channel is inside it; dropping it tells the caller the store is
        // unavailable ("shutting down" would be wrong, so run it against nothing instead).
        let Refused(err, job) = *self;
        job.refuse(err);
    }
}
