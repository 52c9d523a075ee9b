//! A follower's replica: the node's own store, kept current by applying every batch record the
//! leader commits to etcd (a hot standby, and what the follower answers reads from).
//!
//! The loop asks etcd for the records after the last batch the store holds, every
//! [`POLL`] or at once when woken (a forwarded write waits for its batch), and hands them to
//! the store ([`Store::replicate`]), which runs them through its journal, event log, published
//! state and applier as if its own writer had made them. It reconnects by itself: every request
//! goes through [`Etcd`], which moves to another endpoint when one cannot be reached.
//!
//! *Fresh*: the replica has applied everything etcd held when a poll began at most
//! `bound` ago, and every batch this node has acknowledged through forwarding. Only then does
//! the node answer reads itself; otherwise it forwards them to the leader.
//!
//! *Progress*: the replica names the last batch it holds under `<prefix>replica/<node>`, bound
//! to a lease of its own ([`PROGRESS_TTL`]; batch 0 from before the node loads the state,
//! [`Progress`]); the leader's snapshots drop no record a live replica still needs. A replica that finds its next record gone anyway (it was cut off from
//! etcd longer than that) cannot go on: the process ends (status 75) and, restarted by its
//! supervisor, rebuilds from the snapshot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use super::etcd::{Etcd, EtcdError, Op};
use super::node::{hole, records_after, EXIT_DEPOSED};
use crate::store::Store;

/// How often the replica asks etcd for new records when nobody wakes it.
const POLL: Duration = Duration::from_millis(100);
/// Most records asked for at once.
const PAGE: usize = 128;
/// The lease of a replica's progress key: a replica silent this long no longer holds back
/// the leader's trimming.
pub const PROGRESS_TTL: u64 = 10;
/// How long a forwarded answer waits for the replica to hold its batch.
const WAIT_FOR_BATCH: Duration = Duration::from_secs(2);

pub struct Replica {
    store: Store,
    etcd: Arc<Etcd>,
    epoch: Instant,
    /// When (ms after `epoch`) the last poll began that left the replica holding all etcd
    /// held; `u64::MAX`: never.
    caught_up_ms: AtomicU64,
    /// The highest batch this node acknowledged through forwarding (shared with its
    /// forwarder): reads wait for it.
    acknowledged: Arc<AtomicU64>,
    bound: Duration,
    /// When the last "batch not in time" warning was logged (ms after `epoch`; `u64::MAX`: never).
    late_said_ms: AtomicU64,
    wake: Notify,
    held: watch::Sender<u64>,
    /// The last batch held, for the progress key.
    progress: Arc<AtomicU64>,
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Replica {
    /// Starts following what the cluster commits into `store` (a replica store); the last
    /// batch it holds goes to `progress` ([`Progress::held`]).
    pub fn start(
        etcd: Arc<Etcd>,
        store: Store,
        bound: Duration,
        acknowledged: Arc<AtomicU64>,
        progress: Arc<AtomicU64>,
    ) -> Arc<Replica> {
        let held = watch::channel(store.published_lsn()).0;
        progress.store(store.published_lsn(), Ordering::Relaxed);
        let r = Arc::new(Replica {
            store,
            etcd,
            epoch: Instant::now(),
            caught_up_ms: AtomicU64::new(u64::MAX),
            acknowledged,
            bound,
            late_said_ms: AtomicU64::new(u64::MAX),
            wake: Notify::new(),
            held,
            progress,
            task: std::sync::Mutex::default(),
        });
        let follow = tokio::spawn(r.clone().follow());
        if let Ok(mut t) = r.task.lock() {
            *t = Some(follow);
        }
        r
    }

    /// Stops following (the node takes over, or stops).
    pub fn stop(&self) {
        if let Some(task) = self.task.lock().ok().and_then(|mut t| t.take()) {
            task.abort();
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    async fn follow(self: Arc<Self>) {
        let mut failing_since: Option<Instant> = None;
        loop {
            let began = self.now_ms();
            let after = self.store.published_lsn();
            let more = match records_after(&self.etcd, after, PAGE).await {
                Ok((records, more)) => {
                    if failing_since.take().is_some() {
                        tracing::info!("cluster: the replica reaches etcd again");
                    }
                    if let Some(next) = hole(after, &records) {
                        self.fell_behind(after, next);
                    }
                    if !records.is_empty() {
                        match self.store.replicate(records.into_iter().map(|(_, r)| r).collect()).await {
                            Ok(lsn) => {
                                self.held.send_replace(lsn);
                                self.progress.store(lsn, Ordering::Relaxed);
                            }
                            Err(e) => {
                                // A record the store cannot apply: this replica can no longer
                                // be trusted; restarted, the node rebuilds it from the cluster.
                                tracing::error!(error = %e, "cluster: the replica cannot apply a committed batch; exiting to rebuild it");
                                eprintln!("gatehouse: the replica cannot apply a committed batch ({e}); exiting");
                                std::process::exit(EXIT_DEPOSED);
                            }
                        }
                    }
                    if !more {
                        self.caught_up_ms.store(began, Ordering::Release);
                    }
                    more
                }
                Err(e) => {
                    if failing_since.is_none() {
                        tracing::warn!(error = %e, "cluster: the replica cannot read etcd; reads are forwarded once it is behind");
                        failing_since = Some(Instant::now());
                    }
                    false
                }
            };
            if !more {
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    _ = self.wake.notified() => {}
                }
            }
        }
    }

    /// The next record is gone: a snapshot dropped it while this replica was away.
    fn fell_behind(&self, have: u64, next: u64) -> ! {
        tracing::error!(
            have,
            next,
            "cluster: the replica fell behind the cluster's snapshot; exiting so that it restarts and rebuilds"
        );
        eprintln!("gatehouse: the replica holds batches up to {have}, the cluster's history starts at {next}; exiting to rebuild");
        std::process::exit(EXIT_DEPOSED)
    }
}

impl crate::api::ReplicaReads for Replica {
    fn fresh(&self) -> bool {
        let at = self.caught_up_ms.load(Ordering::Acquire);
        at != u64::MAX
            && self.now_ms().saturating_sub(at) <= u64::try_from(self.bound.as_millis()).unwrap_or(u64::MAX)
            && !self.bound.is_zero()
            && self.store.published_lsn() >= self.acknowledged.load(Ordering::Acquire)
    }

    fn wait_for(&self, lsn: u64) -> crate::api::BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut held = self.held.subscribe();
            if *held.borrow() >= lsn {
                return;
            }
            self.wake.notify_one();
            if tokio::time::timeout(WAIT_FOR_BATCH, held.wait_for(|h| *h >= lsn)).await.is_err() {
                // Said at most once a minute (every forwarded write waits while etcd is away).
                let now = self.now_ms();
                let last = self.late_said_ms.load(Ordering::Relaxed);
                if (last == u64::MAX || now.saturating_sub(last) >= 60_000)
                    && self.late_said_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
                {
                    tracing::warn!(lsn, "cluster: the replica did not get a forwarded write's batch in time; reads are forwarded until it does (said at most once a minute)");
                }
            }
        })
    }
}

/// This node's progress key, `replica/<node>`: the last batch its replica holds ([`held`]),
/// on a lease of its own, written every second by one task. It starts before the node loads
/// the cluster's state, saying batch 0 (every record), so that no snapshot drops one between
/// the load and the replica's first report; it ends when the node leads or stops.
///
/// [`held`]: Progress::held
pub struct Progress {
    pub held: Arc<AtomicU64>,
    /// The key's lease (a new one is granted if it lapsed).
    lease: Arc<std::sync::atomic::AtomicI64>,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    pub async fn start(etcd: Arc<Etcd>, me: &str) -> Result<Progress, EtcdError> {
        let key = etcd.key(&format!("replica/{me}"));
        let lease = etcd.lease_grant(PROGRESS_TTL).await?;
        put_progress(&etcd, &key, 0, lease).await?;
        let held = Arc::new(AtomicU64::new(0));
        let lease = Arc::new(std::sync::atomic::AtomicI64::new(lease));
        let task = tokio::spawn(report(etcd, key, held.clone(), lease.clone()));
        Ok(Progress { held, lease, task })
    }

    /// Stops reporting (the key lapses with its lease).
    pub fn stop(&self) {
        self.task.abort();
    }

    /// Stops reporting and drops the key now (a leader needs no record kept for it).
    pub async fn end(&self, etcd: &Etcd) {
        self.stop();
        let _ = etcd.lease_revoke(self.lease.load(Ordering::Relaxed)).await;
    }
}

async fn put_progress(etcd: &Etcd, key: &[u8], lsn: u64, lease: i64) -> Result<(), EtcdError> {
    let put = Op::Put { key: key.to_vec(), value: lsn.to_string().into_bytes(), lease };
    etcd.txn(&[], &[put], &[]).await.map(|_| ())
}

/// Every second: keeps the lease alive (a new one if it lapsed) and writes the batch held.
async fn report(etcd: Arc<Etcd>, key: Vec<u8>, held: Arc<AtomicU64>, lease: Arc<std::sync::atomic::AtomicI64>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let put = async {
            let mut current = lease.load(Ordering::Relaxed);
            if etcd.lease_keepalive(current, Duration::from_secs(1)).await? <= 0 {
                current = etcd.lease_grant(PROGRESS_TTL).await?;
                lease.store(current, Ordering::Relaxed);
            }
            put_progress(&etcd, &key, held.load(Ordering::Relaxed), current).await
        };
        if let Err(e) = put.await {
            tracing::debug!(error = %e, "cluster: could not record the replica's progress");
        }
    }
}

/// The lowest batch any live replica still needs (`None`: no replica said).
pub async fn lowest_needed(etcd: &Etcd) -> Result<Option<u64>, EtcdError> {
    let kvs = etcd.get_prefix(&etcd.key("replica/")).await?;
    Ok(kvs.iter().filter_map(|kv| std::str::from_utf8(&kv.value).ok()?.parse::<u64>().ok()).min())
}
