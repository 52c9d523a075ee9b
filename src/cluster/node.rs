//! A node in cluster mode (`serve --store etcd`).
//!
//! The app drives a node's life ([`Node`]: join, follow, take over, step down). Every node
//! campaigns (`leader.rs`). A follower forwards every request to the leader (`proxy.rs`). The node that wins takes over: it rebuilds its local store from what the
//! cluster committed (every batch record under `<prefix>wal/`, replayed by the store's own
//! recovery into a fresh data dir), then runs the whole server — writer, deadlines, webhooks,
//! housekeeping — with one change: each batch is committed to etcd, in a transaction fenced by
//! the leader key, before anyone is answered (`Replicate`). So a 2xx means the change and its
//! events are committed by an etcd quorum, and a deposed leader cannot commit anything. A
//! leader that loses the lead, or cannot commit, exits (status 75) and is restarted as a
//! follower by its supervisor.
//!
//! Records: `wal/<lsn 016x>` holds a framed journal record, or, for one over the size a
//! transaction may carry, `P` + its part count (u32 BE), the parts under `wap/<lsn>/<k 04x>`
//! written (fenced) before it. Every `--etcd-snapshot-every` records the leader writes a
//! snapshot (a backup file, in parts under `snap/<id>/`), names it in `snap/current` with its
//! last batch, and in that same transaction drops the records it covers and the previous
//! snapshot; then it compacts etcd's history. A takeover restores the snapshot, then replays
//! the records after it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::etcd::{Compare, Etcd, EtcdError, Op};
use super::leader::{Leadership, Role};
use crate::config::Settings;
use crate::store::{ClusterHooks, Replicate, ReplicateError};

/// Most bytes of records in one transaction (etcd takes 1.5 MiB per request; base64 adds a
/// third).
const TXN_BYTES: usize = 900 * 1024;
/// Most puts in one transaction (etcd allows 128 operations).
const TXN_OPS: usize = 100;
/// The process exit status when the node stops leading (its supervisor restarts it).
pub const EXIT_DEPOSED: i32 = 75;

fn wal_key(etcd: &Etcd, lsn: u64) -> Vec<u8> {
    etcd.key(&format!("wal/{lsn:016x}"))
}

fn part_key(etcd: &Etcd, lsn: u64, k: usize) -> Vec<u8> {
    etcd.key(&format!("wap/{lsn:016x}/{k:04x}"))
}

/// The cluster's domain id (token `d` claims, event ids): created once, by whichever node
/// comes first.
async fn domain_id(etcd: &Etcd) -> Result<uuid::Uuid, EtcdError> {
    let key = etcd.key("domain_id");
    let fresh = uuid::Uuid::new_v4();
    let r = etcd
        .txn(
            &[Compare::CreateRevision(key.clone(), 0)],
            &[Op::Put { key: key.clone(), value: fresh.as_bytes().to_vec(), lease: 0 }],
            &[Op::Get { key: key.clone() }],
        )
        .await?;
    if r.succeeded {
        return Ok(fresh);
    }
    let v = r.gets.into_iter().flatten().next().map(|kv| kv.value).unwrap_or_default();
    uuid::Uuid::from_slice(&v).map_err(|_| EtcdError::Protocol("the cluster's domain_id is unreadable".into()))
}

/// Every committed batch record after `after`, in lsn order (parts joined).
async fn committed_records(etcd: &Etcd, after: u64) -> Result<Vec<Vec<u8>>, EtcdError> {
    let prefix = etcd.key("wal/");
    let mut out = Vec::new();
    for kv in etcd.get_prefix_paged(&prefix, 256).await? {
        let lsn_hex = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
        let lsn = u64::from_str_radix(&lsn_hex, 16)
            .map_err(|_| EtcdError::Protocol(format!("unexpected key under wal/: {lsn_hex}")))?;
        if lsn <= after {
            continue; // in the snapshot (left by a trim that did not finish)
        }
        if kv.value.len() == 5 && kv.value[0] == b'P' {
            let parts = etcd.get_prefix_paged(&etcd.key(&format!("wap/{lsn_hex}/")), 64).await?;
            let want = u32::from_be_bytes([kv.value[1], kv.value[2], kv.value[3], kv.value[4]]) as usize;
            if parts.len() != want {
                return Err(EtcdError::Protocol(format!("batch {lsn_hex}: {} of {want} parts", parts.len())));
            }
            out.push(parts.into_iter().flat_map(|p| p.value).collect());
        } else {
            out.push(kv.value);
        }
    }
    Ok(out)
}

/// The snapshot `snap/current` names: `{"id", "lsn", "parts"}`.
#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotRef {
    id: String,
    lsn: u64,
    parts: usize,
}

async fn current_snapshot(etcd: &Etcd) -> Result<Option<SnapshotRef>, EtcdError> {
    match etcd.get(&etcd.key("snap/current")).await? {
        None => Ok(None),
        Some(kv) => serde_json::from_slice(&kv.value)
            .map(Some)
            .map_err(|e| EtcdError::Protocol(format!("snap/current is unreadable: {e}"))),
    }
}

/// The snapshot's bytes (a backup file), parts joined.
async fn snapshot_bytes(etcd: &Etcd, snap: &SnapshotRef) -> Result<Vec<u8>, EtcdError> {
    let parts = etcd.get_prefix_paged(&etcd.key(&format!("snap/{}/", snap.id)), 16).await?;
    if parts.len() != snap.parts {
        return Err(EtcdError::Protocol(format!("snapshot {}: {} of {} parts", snap.id, parts.len(), snap.parts)));
    }
    Ok(parts.into_iter().flat_map(|p| p.value).collect())
}

/// Writes a backup file's bytes as the cluster's snapshot at `lsn`, then (in the same
/// transaction as naming it) drops every record it covers and the previous snapshot; then
/// compacts etcd's history. `fence`: the leader's, or none for a restore into an empty prefix
/// (then `snap/current` must not exist yet).
pub async fn put_snapshot(etcd: &Etcd, fence: Option<&Compare>, bytes: &[u8], lsn: u64) -> Result<(), EtcdError> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let chunks: Vec<&[u8]> = bytes.chunks(TXN_BYTES).collect();
    let guard: Vec<Compare> = fence.cloned().into_iter().collect();
    let refused =
        |what: &str| EtcdError::Protocol(format!("snapshot {what}: refused (no longer the leader, or not empty)"));
    for (k, c) in chunks.iter().enumerate() {
        let put = Op::Put { key: etcd.key(&format!("snap/{id}/{k:06x}")), value: c.to_vec(), lease: 0 };
        if !etcd.txn(&guard, &[put], &[]).await?.succeeded {
            return Err(refused("part"));
        }
    }
    let previous = current_snapshot(etcd).await?;
    let reference = serde_json::to_vec(&SnapshotRef { id: id.clone(), lsn, parts: chunks.len() })
        .map_err(|e| EtcdError::Protocol(e.to_string()))?;
    let upto = |p: &str| etcd.key(&format!("{p}{:016x}", lsn.saturating_add(1)));
    let mut ops = vec![
        Op::Put { key: etcd.key("snap/current"), value: reference, lease: 0 },
        Op::DeleteRange { key: etcd.key("wal/"), end: upto("wal/") },
        Op::DeleteRange { key: etcd.key("wap/"), end: upto("wap/") },
    ];
    if let Some(old) = &previous {
        let p = etcd.key(&format!("snap/{}/", old.id));
        ops.push(Op::DeleteRange { end: super::etcd::prefix_end(&p), key: p });
    }
    let mut cond = guard.clone();
    if fence.is_none() {
        cond.push(Compare::CreateRevision(etcd.key("snap/current"), 0));
    }
    let r = etcd.txn(&cond, &ops, &[]).await?;
    if !r.succeeded {
        return Err(refused("reference"));
    }
    etcd.compact(r.revision).await
}

/// `gatehouse restore FILE --store etcd`: a backup (of a single node or of a cluster) becomes
/// the snapshot of an empty prefix, with its domain id, so that tokens signed before still
/// validate. Checked by restoring it into a temporary data dir first. Returns its record count.
pub async fn restore_into(s: &super::EtcdSettings, file: &std::path::Path) -> Result<u64, NodeError> {
    let tmp = tempfile_dir()?;
    let report = crate::store::restore(file, &tmp.0, &mut |_, _| {})?;
    let domain = crate::store::read_domain_id(&tmp.0)?.ok_or(NodeError::NoDomainInBackup)?;
    let bytes =
        std::fs::read(file).map_err(|err| NodeError::Io { what: format!("reading {}", file.display()), err })?;
    let etcd = Etcd::new(s)?;
    let taken = |what: &'static str| NodeError::PrefixTaken { prefix: s.prefix.clone(), what };
    if current_snapshot(&etcd).await?.is_some() {
        return Err(taken("snapshot"));
    }
    if etcd.count_prefix(&etcd.key("wal/")).await? > 0 {
        return Err(taken("history"));
    }
    let key = etcd.key("domain_id");
    let put = Op::Put { key: key.clone(), value: domain.as_bytes().to_vec(), lease: 0 };
    if !etcd.txn(&[Compare::CreateRevision(key, 0)], &[put], &[]).await?.succeeded {
        return Err(taken("domain id"));
    }
    put_snapshot(&etcd, None, &bytes, 0).await?;
    Ok(report.records)
}

/// A temporary folder, removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> Result<TempDir, NodeError> {
    let p = std::env::temp_dir().join(format!("gatehouse-restore-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&p).map_err(|err| NodeError::Io { what: format!("creating {}", p.display()), err })?;
    Ok(TempDir(p))
}

/// Takes a snapshot whenever `every` records were committed since the last one.
async fn snapshots(
    store: crate::store::Store,
    etcd: Arc<Etcd>,
    fence: Compare,
    since: Arc<AtomicU64>,
    every: u64,
    dir: std::path::PathBuf,
    gauges: Arc<crate::metrics::ClusterGauges>,
) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if since.load(Ordering::Relaxed) < every {
            continue;
        }
        let started = Instant::now();
        let file = dir.join("cluster-snapshot.tmp");
        let taken = async {
            let f = std::fs::File::create(&file)?;
            let before = since.load(Ordering::Relaxed);
            let (_, lsn) = store.backup_at(crate::store::BackupSink(Box::new(f)), Vec::new()).await?;
            let bytes = std::fs::read(&file)?;
            put_snapshot(&etcd, Some(&fence), &bytes, lsn).await?;
            since.fetch_sub(before.min(since.load(Ordering::Relaxed)), Ordering::Relaxed);
            Ok::<_, SnapshotError>((lsn, bytes.len()))
        }
        .await;
        let _ = std::fs::remove_file(&file);
        match taken {
            Ok((lsn, size)) => {
                gauges.snapshot_lsn.store(lsn, Ordering::Relaxed);
                tracing::info!(
                    lsn,
                    bytes = size,
                    millis = started.elapsed().as_millis() as u64,
                    "cluster: snapshot written, older records dropped"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "cluster: snapshot failed; will retry");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
}

/// Commits batch records to etcd, fenced by this node's leadership.
struct EtcdReplicate {
    etcd: Arc<Etcd>,
    fence: Compare,
    /// Records committed since the last snapshot.
    since_snapshot: Arc<AtomicU64>,
    rt: tokio::runtime::Handle,
    /// How long to keep trying when etcd cannot be reached (then the node gives up leading).
    patience: Duration,
}

/// Why a snapshot of the state could not be put in etcd (the next one is tried later).
#[derive(Debug, thiserror::Error)]
enum SnapshotError {
    #[error("{0}")]
    File(#[from] std::io::Error),
    #[error("{0}")]
    Backup(#[from] crate::store::StoreError),
    #[error("{0}")]
    Etcd(#[from] EtcdError),
}

/// Why batches could not be committed to etcd.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("this node is no longer the leader (fenced out)")]
    Fenced,
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

impl EtcdReplicate {
    async fn fenced(&self, ops: Vec<Op>) -> Result<(), CommitError> {
        let started = Instant::now();
        loop {
            // Short attempts: during an etcd election, ask again (another member, or the same
            // one once it has a leader) rather than wait out a long timeout. A put that timed
            // out may have committed: putting the same record again is harmless.
            let attempt = Some(Duration::from_millis(1000));
            match self.etcd.txn_within(std::slice::from_ref(&self.fence), &ops, &[], attempt).await {
                Ok(r) if r.succeeded => return Ok(()),
                Ok(_) => return Err(CommitError::Fenced),
                Err(e @ (EtcdError::Unreachable(_) | EtcdError::Server { .. }))
                    if started.elapsed() < self.patience =>
                {
                    tracing::warn!(error = %e, "cluster: commit failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn commit_all(&self, records: &[(u64, Vec<u8>)]) -> Result<(), CommitError> {
        let mut ops = Vec::new();
        let mut bytes = 0;
        for (lsn, rec) in records {
            let value = if rec.len() > TXN_BYTES {
                // Too big for one transaction: its parts first, then the record's marker.
                let chunks: Vec<&[u8]> = rec.chunks(TXN_BYTES).collect();
                for (k, c) in chunks.iter().enumerate() {
                    let put = Op::Put { key: part_key(&self.etcd, *lsn, k), value: c.to_vec(), lease: 0 };
                    self.fenced(vec![put]).await?;
                }
                let mut m = vec![b'P'];
                m.extend_from_slice(&(chunks.len() as u32).to_be_bytes());
                m
            } else {
                rec.clone()
            };
            let size = value.len();
            if !ops.is_empty() && (ops.len() >= TXN_OPS || bytes + size > TXN_BYTES) {
                self.fenced(std::mem::take(&mut ops)).await?;
                bytes = 0;
            }
            bytes += size;
            ops.push(Op::Put { key: wal_key(&self.etcd, *lsn), value, lease: 0 });
        }
        if !ops.is_empty() {
            self.fenced(ops).await?;
        }
        self.since_snapshot.fetch_add(records.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

impl Replicate for EtcdReplicate {
    fn commit(&self, records: &[(u64, Vec<u8>)]) -> Result<(), ReplicateError> {
        let r = self.rt.block_on(self.commit_all(records));
        if let Err(why) = &r {
            // Nothing of these batches is acknowledged; what the cluster committed is the
            // truth, and another node serves it. Step aside at once.
            tracing::error!(error = %why, "cluster: cannot commit; this node stops leading");
            eprintln!("gatehouse: cluster commit failed ({why}); exiting so another node leads");
            std::process::exit(EXIT_DEPOSED);
        }
        r.map_err(|e| Box::new(e) as ReplicateError)
    }
}

/// Why a node could not join, follow or take over (the process ends with it).
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("--store etcd: every node must be given the same API key (GATEHOUSE_API_KEY or api_keys in the file)")]
    NoApiKey,
    #[error("the API keys: {0}")]
    Keys(#[from] crate::tokens::TokenError),
    #[error("etcd: {0}")]
    Etcd(#[from] EtcdError),
    #[error("cannot listen on {addr}: {err}")]
    Listen { addr: std::net::SocketAddr, err: std::io::Error },
    #[error("{what}: {err}")]
    Io { what: String, err: std::io::Error },
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("the backup holds no domain id")]
    NoDomainInBackup,
    #[error("etcd prefix '{prefix}' already holds a cluster's {what}: restore into an empty prefix (a new --etcd-prefix, or delete the old one with etcdctl del --prefix)")]
    PrefixTaken { prefix: String, what: &'static str },
}

/// What an elected node brings to the server (`app::run_with`): the store's hooks, what to
/// start once the store is open, and the gauges `/metrics` reports.
pub struct Takeover {
    pub hooks: ClusterHooks,
    pub started: Box<dyn FnOnce(crate::store::Store) + Send>,
    pub gauges: Arc<crate::metrics::ClusterGauges>,
}

/// This process as a cluster node: in etcd, campaigning. The app drives its life: [`Node::join`],
/// [`Node::follow`] until elected, [`Node::take_over`], the server, [`Node::step_down`].
pub struct Node {
    etcd: Arc<Etcd>,
    cfg: super::EtcdSettings,
    domain: uuid::Uuid,
    me: String,
    secret: [u8; 32],
    keys: Arc<crate::tokens::KeyRing>,
    leadership: Leadership,
    deposed: Option<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// Reaches etcd (waiting until it answers), listens, and starts campaigning.
    pub async fn join(
        settings: &Settings,
        cfg: super::EtcdSettings,
    ) -> Result<(Node, tokio::net::TcpListener), NodeError> {
        if settings.api_keys.is_empty() {
            return Err(NodeError::NoApiKey);
        }
        let keys = Arc::new(crate::tokens::KeyRing::new(&settings.api_keys)?);
        let etcd = Arc::new(Etcd::new(&cfg)?);
        let domain = loop {
            match domain_id(&etcd).await {
                Ok(d) => break d,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster: etcd not ready; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        let listen = settings.listen;
        let listener =
            tokio::net::TcpListener::bind(listen).await.map_err(|err| NodeError::Listen { addr: listen, err })?;
        let addr = listener.local_addr().map_err(|err| NodeError::Listen { addr: listen, err })?;
        let me = cfg.advertise_url.clone().unwrap_or_else(|| format!("http://{addr}"));
        let leadership = Leadership::start(etcd.clone(), me.clone(), cfg.lease_ttl_secs);
        tracing::info!(node = %me, "cluster: following until elected");
        {
            // As the server does: a closed stdout is no reason to stop.
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "gatehouse listening on http://{addr}");
            let _ = out.flush();
        }
        let secret = super::node_secret(&settings.api_keys[0]);
        Ok((Node { etcd, cfg, domain, me, secret, keys, leadership, deposed: None }, listener))
    }

    /// How this node's front forwards requests while it follows (`api::Mode::Forward`).
    pub fn forwarder(&self) -> crate::api::Forward {
        super::proxy::forwarder(self.keys.clone(), self.me.clone(), self.secret, self.leadership.watch())
    }

    /// Waits until this node is elected: then its fence. `None`: stopped by a signal first
    /// (then [`Node::step_down`]).
    pub async fn follow(&self) -> Option<i64> {
        let mut role = self.leadership.watch();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminated = async move {
            match &mut term {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::pin!(terminated);
        loop {
            if let Role::Leader { fence, .. } = *role.borrow_and_update() {
                return Some(fence);
            }
            tokio::select! {
                changed = role.changed() => if changed.is_err() {
                    tracing::error!("cluster: the election stopped; leaving");
                    return None;
                },
                _ = tokio::signal::ctrl_c() => return None,
                _ = &mut terminated => return None,
            }
        }
    }

    /// Elected with `fence`: loads what the cluster committed into the (fresh, empty) data dir
    /// as the store's journal, and from now on ends the process if the lead is lost.
    pub async fn take_over(&mut self, settings: &Settings, fence: i64) -> Result<Takeover, NodeError> {
        let started = Instant::now();
        tracing::info!(node = %self.me, "cluster: elected; loading the committed state");
        let etcd = self.etcd.clone();
        let snap = current_snapshot(&etcd).await?;
        let floor = match &snap {
            None => 0,
            Some(snap) => {
                let bytes = snapshot_bytes(&etcd, snap).await?;
                let file = settings.data_dir.join("cluster-snapshot.tmp");
                std::fs::write(&file, &bytes)
                    .map_err(|err| NodeError::Io { what: format!("writing {}", file.display()), err })?;
                let restored = crate::store::restore(&file, &settings.data_dir, &mut |_, _| {});
                let _ = std::fs::remove_file(&file);
                restored?;
                snap.lsn
            }
        };
        let records = committed_records(&etcd, floor).await?;
        crate::store::seed_journal(&settings.data_dir, &records)?;
        tracing::info!(
            snapshot_lsn = floor,
            batches = records.len(),
            millis = started.elapsed().as_millis() as u64,
            "cluster: committed state loaded"
        );
        // Losing the lead ends the process; so does the next commit's fence failing.
        let mut watch = self.leadership.watch();
        self.deposed = Some(tokio::spawn(async move {
            while watch.changed().await.is_ok() {
                if !matches!(*watch.borrow(), Role::Leader { .. }) {
                    tracing::error!(
                        "cluster: this node lost the leadership; exiting so that it restarts as a follower"
                    );
                    eprintln!("gatehouse: lost the cluster leadership; exiting");
                    std::process::exit(EXIT_DEPOSED);
                }
            }
        }));
        let fence = Compare::CreateRevision(etcd.key("leader"), fence);
        let gauges = Arc::new(crate::metrics::ClusterGauges::default());
        gauges.snapshot_lsn.store(floor, Ordering::Relaxed);
        let since = gauges.since_snapshot.clone();
        since.store(records.len() as u64, Ordering::Relaxed);
        tokio::spawn({
            let (etcd, gauges) = (etcd.clone(), gauges.clone());
            async move {
                loop {
                    for ep in etcd.endpoints() {
                        if let Ok(st) = etcd.status_of(ep).await {
                            gauges.db_size.store(u64::try_from(st.db_size).unwrap_or(0), Ordering::Relaxed);
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
            }
        });
        let hooks = ClusterHooks {
            domain_id: self.domain,
            replicate: Arc::new(EtcdReplicate {
                etcd: etcd.clone(),
                fence: fence.clone(),
                since_snapshot: since.clone(),
                rt: tokio::runtime::Handle::current(),
                patience: Duration::from_secs(self.cfg.lease_ttl_secs),
            }),
            lsn_floor: floor,
        };
        let (every, dir, snapshot_gauges) = (self.cfg.snapshot_every, settings.data_dir.clone(), gauges.clone());
        let started: Box<dyn FnOnce(crate::store::Store) + Send> = Box::new(move |store| {
            tokio::spawn(snapshots(store, etcd, fence, since, every, dir, snapshot_gauges));
        });
        Ok(Takeover { hooks, started, gauges })
    }

    /// Stops leading (or campaigning) by choice: the lease is revoked, another node takes over.
    pub async fn step_down(self) {
        if let Some(d) = &self.deposed {
            d.abort();
        }
        self.leadership.resign().await;
    }
}
