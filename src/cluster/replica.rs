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
//! [`hold_history`]); the leader's snapshots drop no record a live replica still needs. A replica that finds its next record gone anyway (it was cut off from
//! etcd longer than that) cannot go on: the process ends (status 75) and, restarted by its
//! supervisor, rebuilds from the snapshot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use super::etcd::{Etcd, EtcdError, Op};
use super::node::{records_after, EXIT_DEPOSED};
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
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Replica {
    /// Starts following what the cluster commits into `store` (a replica store), as node `me`.
    /// `lease`: the one [`hold_history`] bound the progress key to.
    pub fn start(
        etcd: Arc<Etcd>,
        store: Store,
        me: String,
        bound: Duration,
        acknowledged: Arc<AtomicU64>,
        lease: i64,
    ) -> Arc<Replica> {
        let held = watch::channel(store.published_lsn()).0;
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
            tasks: std::sync::Mutex::default(),
        });
        let follow = tokio::spawn(r.clone().follow());
        let progress = tokio::spawn(r.clone().progress(me, lease));
        if let Ok(mut t) = r.tasks.lock() {
            t.extend([follow, progress]);
        }
        r
    }

    /// Stops following (the node takes over, or stops).
    pub fn stop(&self) {
        if let Ok(mut t) = self.tasks.lock() {
            for task in t.drain(..) {
                task.abort();
            }
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
                    if let Some((first, _)) = records.first().filter(|(first, _)| *first != after + 1) {
                        self.fell_behind(after, *first);
                    }
                    if !records.is_empty() {
                        match self.store.replicate(records.into_iter().map(|(_, r)| r).collect()).await {
                            Ok(lsn) => {
                                self.held.send_replace(lsn);
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

    /// Names the last batch held under `replica/<me>`, every second, bound to a lease.
    async fn progress(self: Arc<Self>, me: String, mut lease: i64) {
        let key = self.etcd.key(&format!("replica/{me}"));
        loop {
            let put = async {
                if lease == 0 || self.etcd.lease_keepalive(lease, Duration::from_secs(1)).await? <= 0 {
                    lease = self.etcd.lease_grant(PROGRESS_TTL).await?;
                }
                let value = self.store.published_lsn().to_string().into_bytes();
                self.etcd.txn(&[], &[Op::Put { key: key.clone(), value, lease }], &[]).await?;
                Ok::<_, EtcdError>(())
            };
            if let Err(e) = put.await {
                tracing::debug!(error = %e, "cluster: could not record the replica's progress");
                lease = 0;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
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

/// Before a node loads the cluster's state: its progress key says it needs every record
/// (batch 0), so that no snapshot drops one between its load and its replica's first report.
/// Returns the key's lease.
pub async fn hold_history(etcd: &Etcd, me: &str) -> Result<i64, EtcdError> {
    let lease = etcd.lease_grant(PROGRESS_TTL).await?;
    let put = Op::Put { key: etcd.key(&format!("replica/{me}")), value: b"0".to_vec(), lease };
    etcd.txn(&[], &[put], &[]).await?;
    Ok(lease)
}

/// The lowest batch any live replica still needs (`None`: no replica said).
pub async fn lowest_needed(etcd: &Etcd) -> Result<Option<u64>, EtcdError> {
    let kvs = etcd.get_prefix(&etcd.key("replica/")).await?;
    Ok(kvs.iter().filter_map(|kv| std::str::from_utf8(&kv.value).ok()?.parse::<u64>().ok()).min())
}
