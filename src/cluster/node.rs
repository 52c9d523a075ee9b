//! A node in cluster mode (`serve --store etcd`).
//!
//! The app drives a node's life ([`Node`]: join, load, follow, take over, step down). Every node
//! campaigns (`leader.rs`). At start a node rebuilds its local store from what the cluster
//! committed (the latest snapshot, then every batch record after it under `<prefix>wal/`,
//! replayed by the store's own recovery into a fresh data dir) and keeps it current as a
//! replica (`replica.rs`), answering reads from it and forwarding the rest to the leader
//! (`proxy.rs`). The node that wins applies the records it does not hold yet and promotes its
//! store: it runs the whole server — writer, deadlines, webhooks, housekeeping — with one
//! change: each batch is committed to etcd, in a transaction fenced by the leader key, before
//! anyone is answered (`Replicate`). So a 2xx means the change and its events are committed by
//! an etcd quorum, and a deposed leader cannot commit anything. A leader that loses the lead,
//! or cannot commit, exits (status 75) and is restarted as a follower by its supervisor.
//!
//! Records: `wal/<lsn 016x>` holds a framed journal record, or, for one over the size a
//! transaction may carry, `P` + its part count (u32 BE), the parts under `wap/<lsn>/<k 04x>`
//! written (fenced) before it. Every `--etcd-snapshot-every` records the leader writes a
//! snapshot (a backup file, in parts under `snap/<id>/`), names it in `snap/current` with its
//! last batch, and in that same transaction drops the records it covers that no replica still
//! needs (`replica/<node>`) and the previous snapshot; then it compacts etcd's history.

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

/// Committed batch records after `after`, in lsn order (parts joined), at most `limit`; and
/// whether more follow.
pub(super) async fn records_after(
    etcd: &Etcd,
    after: u64,
    limit: usize,
) -> Result<(Vec<(u64, Vec<u8>)>, bool), EtcdError> {
    let prefix = etcd.key("wal/");
    let from = wal_key(etcd, after.saturating_add(1));
    let (kvs, more) = etcd.range(&from, &super::etcd::prefix_end(&prefix), limit).await?;
    let mut out = Vec::with_capacity(kvs.len());
    for kv in kvs {
        let lsn_hex = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
        let lsn = u64::from_str_radix(&lsn_hex, 16)
            .map_err(|_| EtcdError::Protocol(format!("unexpected key under wal/: {lsn_hex}")))?;
        if kv.value.len() == 5 && kv.value[0] == b'P' {
            let parts = etcd.get_prefix_paged(&etcd.key(&format!("wap/{lsn_hex}/")), 64).await?;
            let want = u32::from_be_bytes([kv.value[1], kv.value[2], kv.value[3], kv.value[4]]) as usize;
            if parts.len() != want {
                return Err(EtcdError::Protocol(format!("batch {lsn_hex}: {} of {want} parts", parts.len())));
            }
            out.push((lsn, parts.into_iter().flat_map(|p| p.value).collect()));
        } else {
            out.push((lsn, kv.value));
        }
    }
    Ok((out, more))
}

/// The first of `records` that does not follow `after` (or the one before it) without a hole:
/// a snapshot dropped the records between.
pub(super) fn hole(after: u64, records: &[(u64, Vec<u8>)]) -> Option<u64> {
    let mut last = after;
    for (lsn, _) in records {
        if *lsn != last + 1 {
            return Some(*lsn);
        }
        last = *lsn;
    }
    None
}

/// Every committed batch record after `after`, in lsn order. They must follow `after` without
/// a hole: a snapshot written while they were read may have dropped some (then the caller
/// reads the new snapshot).
async fn committed_records(etcd: &Etcd, after: u64) -> Result<Vec<Vec<u8>>, EtcdError> {
    let mut out = Vec::new();
    let mut last = after;
    loop {
        let (page, more) = records_after(etcd, last, 256).await?;
        if let Some(next) = hole(last, &page) {
            return Err(EtcdError::Protocol(format!("the history after batch {last} starts at {next}")));
        }
        last = page.last().map_or(last, |(lsn, _)| *lsn);
        out.extend(page.into_iter().map(|(_, r)| r));
        if !more {
            return Ok(out);
        }
    }
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
/// transaction as naming it) drops every record it covers up to `trim` (a replica may still
/// need the later ones) and the previous snapshot; then compacts etcd's history. `fence`: the
/// leader's, or none for a restore into an empty prefix (then `snap/current` must not exist yet).
pub async fn put_snapshot(
    etcd: &Etcd,
    fence: Option<&Compare>,
    bytes: &[u8],
    lsn: u64,
    trim: u64,
) -> Result<(), EtcdError> {
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
    let mut ops = vec![Op::Put { key: etcd.key("snap/current"), value: reference, lease: 0 }];
    ops.extend(trim_ops(etcd, trim.min(lsn)));
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
    put_snapshot(&etcd, None, &bytes, 0, 0).await?;
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
    // (snapshot lsn, trimmed up to): records a replica still needed when the snapshot was
    // written are dropped once no replica needs them.
    let mut trim_left: Option<(u64, u64)> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if since.load(Ordering::Relaxed) < every {
            if let Some((lsn, done)) = trim_left {
                match trim_more(&etcd, &fence, lsn, done).await {
                    Ok(now) if now >= lsn => trim_left = None,
                    Ok(now) => trim_left = Some((lsn, now)),
                    Err(e) => tracing::debug!(error = %e, "cluster: trimming the history failed; will retry"),
                }
            }
            continue;
        }
        let started = Instant::now();
        let file = dir.join("cluster-snapshot.tmp");
        let taken = async {
            let f = std::fs::File::create(&file)?;
            let before = since.load(Ordering::Relaxed);
            let (_, lsn) = store.backup_at(crate::store::BackupSink(Box::new(f)), Vec::new()).await?;
            let bytes = std::fs::read(&file)?;
            // Records a live replica has not applied yet stay (it could not go on without them).
            let trim = super::replica::lowest_needed(&etcd).await?.unwrap_or(lsn);
            put_snapshot(&etcd, Some(&fence), &bytes, lsn, trim).await?;
            since.fetch_sub(before.min(since.load(Ordering::Relaxed)), Ordering::Relaxed);
            Ok::<_, SnapshotError>((lsn, bytes.len(), trim))
        }
        .await;
        let _ = std::fs::remove_file(&file);
        match taken {
            Ok((lsn, size, trim)) => {
                trim_left = (trim < lsn).then_some((lsn, trim));
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

/// What drops every record (and record part) up to batch `upto`.
fn trim_ops(etcd: &Etcd, upto: u64) -> [Op; 2] {
    let end = |p: &str| etcd.key(&format!("{p}{:016x}", upto.saturating_add(1)));
    [
        Op::DeleteRange { key: etcd.key("wal/"), end: end("wal/") },
        Op::DeleteRange { key: etcd.key("wap/"), end: end("wap/") },
    ]
}

/// Drops the records up to the snapshot at `lsn` that no replica needs any more (those up to
/// `done` are gone already); returns how far the history is now trimmed.
async fn trim_more(etcd: &Etcd, fence: &Compare, lsn: u64, done: u64) -> Result<u64, EtcdError> {
    let upto = super::replica::lowest_needed(etcd).await?.unwrap_or(lsn).min(lsn);
    if upto <= done {
        return Ok(done);
    }
    if !etcd.txn(std::slice::from_ref(fence), &trim_ops(etcd, upto), &[]).await?.succeeded {
        return Err(EtcdError::Protocol("trimming: refused (no longer the leader)".into()));
    }
    Ok(upto)
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
    #[error("listening on {addr}, the node needs --etcd-advertise-url http://<its address>:{port} (how the other nodes reach it)", port = addr.port())]
    NoAdvertiseUrl { addr: std::net::SocketAddr },
    #[error("the replica holds batches up to {have} but the cluster's history now starts at {next}; restart the node to rebuild it")]
    Behind { have: u64, next: u64 },
    #[error("etcd prefix '{prefix}' already holds a cluster's {what}: restore into an empty prefix (a new --etcd-prefix, or delete the old one with etcdctl del --prefix)")]
    PrefixTaken { prefix: String, what: &'static str },
}

/// This process as a cluster node: in etcd, campaigning. The app drives its life:
/// [`Node::join`], [`Node::load`] and a replica store kept current ([`Node::replicate_into`]),
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
    replica: Option<Arc<super::replica::Replica>>,
    /// The highest batch a forwarded answer named: the replica answers no read before it
    /// holds it (read-your-writes).
    acknowledged: Arc<AtomicU64>,
    /// This node's progress key (`replica/<node>`), from its load until it leads or stops.
    progress: Option<super::replica::Progress>,
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
        // Nodes know each other (and themselves) by this name: one every node would share
        // (0.0.0.0) would have each take the others' leadership for its own previous life.
        let me = match &cfg.advertise_url {
            Some(u) => u.clone(),
            None if addr.ip().is_unspecified() => return Err(NodeError::NoAdvertiseUrl { addr }),
            None => format!("http://{addr}"),
        };
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
        Ok((
            Node {
                etcd,
                cfg,
                domain,
                me,
                secret,
                keys,
                leadership,
                deposed: None,
                replica: None,
                acknowledged: Arc::default(),
                progress: None,
            },
            listener,
        ))
    }

    /// How this node's front forwards requests while it follows (`api::Mode::Forward`).
    pub fn forwarder(&self) -> crate::api::Forward {
        super::proxy::forwarder(
            self.keys.clone(),
            self.me.clone(),
            self.secret,
            self.leadership.watch(),
            self.acknowledged.clone(),
        )
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

    /// Loads what the cluster committed into the (fresh, empty) data dir: the snapshot, and
    /// the records after it as the store's journal. Returns the snapshot's last batch, after
    /// which the store numbers (see [`Node::replica_hooks`]).
    pub async fn load(&mut self, data_dir: &std::path::Path) -> Result<u64, NodeError> {
        self.progress = Some(super::replica::Progress::start(self.etcd.clone(), &self.me).await?);
        // A snapshot that replaces the one being read deletes its parts: read again.
        let mut attempt = 0;
        loop {
            match self.load_once(data_dir).await {
                Err(NodeError::Etcd(EtcdError::Protocol(why))) if attempt < 5 => {
                    tracing::warn!(why = %why, "cluster: the state changed while it was read; reading it again");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn load_once(&self, data_dir: &std::path::Path) -> Result<u64, NodeError> {
        let started = Instant::now();
        // A fresh local store: whatever a previous life of this node (or a load cut short)
        // wrote locally may hold batches the cluster never committed.
        for d in ["store", "wal", "events"] {
            let p = data_dir.join(d);
            if p.exists() {
                std::fs::remove_dir_all(&p)
                    .map_err(|err| NodeError::Io { what: format!("clearing {}", p.display()), err })?;
            }
        }
        let snap = current_snapshot(&self.etcd).await?;
        let floor = match &snap {
            None => 0,
            Some(snap) => {
                let bytes = snapshot_bytes(&self.etcd, snap).await?;
                let file = data_dir.join("cluster-snapshot.tmp");
                std::fs::write(&file, &bytes)
                    .map_err(|err| NodeError::Io { what: format!("writing {}", file.display()), err })?;
                let restored = crate::store::restore(&file, data_dir, &mut |_, _| {});
                let _ = std::fs::remove_file(&file);
                restored?;
                snap.lsn
            }
        };
        let records = committed_records(&self.etcd, floor).await?;
        crate::store::seed_journal(data_dir, &records)?;
        tracing::info!(
            snapshot_lsn = floor,
            batches = records.len(),
            millis = started.elapsed().as_millis() as u64,
            "cluster: committed state loaded"
        );
        Ok(floor)
    }

    /// What the store of this node needs to open as a replica.
    pub fn replica_hooks(&self, lsn_floor: u64) -> ClusterHooks {
        ClusterHooks { domain_id: self.domain, replicate: None, lsn_floor }
    }

    /// Keeps `store` (opened with [`Node::replica_hooks`]) current with what the cluster
    /// commits, until [`Node::take_over`]; the front answers reads from it while it is fresh.
    pub fn replicate_into(&mut self, store: crate::store::Store) -> Arc<dyn crate::api::ReplicaReads> {
        let r = super::replica::Replica::start(
            self.etcd.clone(),
            store,
            self.cfg.read_staleness,
            self.acknowledged.clone(),
            self.progress.as_ref().map_or_else(Arc::default, |p| p.held.clone()),
        );
        self.replica = Some(r.clone());
        r
    }

    /// Elected with `fence`: the replica applies whatever the previous leader committed that it
    /// does not hold yet (the previous leader is fenced out: nothing more can come), and the
    /// store is promoted: from now on it commits each batch to etcd, fenced, before anyone is
    /// answered. Losing the lead from now on ends the process.
    pub async fn take_over(
        &mut self,
        data_dir: &std::path::Path,
        fence: i64,
        store: &crate::store::Store,
    ) -> Result<Arc<crate::metrics::ClusterGauges>, NodeError> {
        let started = Instant::now();
        // Losing the lead from here on ends the process (the takeover too: it may take a
        // moment); so does the next commit's fence failing.
        let mut watch = self.leadership.watch();
        self.deposed = Some(tokio::spawn(async move {
            loop {
                if !matches!(*watch.borrow_and_update(), Role::Leader { fence: f, .. } if f == fence) {
                    tracing::error!(
                        "cluster: this node lost the leadership; exiting so that it restarts as a follower"
                    );
                    eprintln!("gatehouse: lost the cluster leadership; exiting");
                    std::process::exit(EXIT_DEPOSED);
                }
                if watch.changed().await.is_err() {
                    return;
                }
            }
        }));
        self.stop_following();
        self.replica = None;
        let etcd = self.etcd.clone();
        if let Some(p) = self.progress.take() {
            p.end(&etcd).await;
        }
        let before = store.published_lsn();
        loop {
            let after = store.published_lsn();
            // etcd may be electing a member: ask again for as long as the lease lasts.
            let (records, more) = loop {
                match records_after(&etcd, after, 256).await {
                    Ok(r) => break r,
                    Err(e @ (EtcdError::Unreachable(_) | EtcdError::Server { .. }))
                        if started.elapsed() < Duration::from_secs(self.cfg.lease_ttl_secs) =>
                    {
                        tracing::warn!(error = %e, "cluster: reading the last records failed; retrying");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            };
            if let Some(next) = hole(after, &records) {
                return Err(NodeError::Behind { have: after, next });
            }
            if !records.is_empty() {
                store.replicate(records.into_iter().map(|(_, r)| r).collect()).await?;
            }
            if !more {
                break;
            }
        }
        let snapshot_lsn = current_snapshot(&etcd).await?.map_or(0, |s| s.lsn);
        let fence = Compare::CreateRevision(etcd.key("leader"), fence);
        let gauges = Arc::new(crate::metrics::ClusterGauges::default());
        gauges.snapshot_lsn.store(snapshot_lsn, Ordering::Relaxed);
        let since = gauges.since_snapshot.clone();
        since.store(store.published_lsn().saturating_sub(snapshot_lsn), Ordering::Relaxed);
        store
            .promote(Arc::new(EtcdReplicate {
                etcd: etcd.clone(),
                fence: fence.clone(),
                since_snapshot: since.clone(),
                rt: tokio::runtime::Handle::current(),
                patience: Duration::from_secs(self.cfg.lease_ttl_secs),
            }))
            .await?;
        tracing::info!(
            node = %self.me,
            caught_up = store.published_lsn() - before,
            lsn = store.published_lsn(),
            millis = started.elapsed().as_millis() as u64,
            "cluster: elected; leading"
        );
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
        let (every, dir) = (self.cfg.snapshot_every, data_dir.to_path_buf());
        tokio::spawn(snapshots(store.clone(), etcd, fence, since, every, dir, gauges.clone()));
        Ok(gauges)
    }

    /// Stops the replica's loop (before its store closes: a batch it brought then could not be
    /// applied, which ends the process).
    pub fn stop_following(&self) {
        if let Some(r) = &self.replica {
            r.stop();
        }
        if let Some(p) = &self.progress {
            p.stop();
        }
    }

    /// Stops leading (or campaigning) by choice: the lease is revoked, another node takes over.
    pub async fn step_down(self) {
        self.stop_following();
        if let Some(d) = &self.deposed {
            d.abort();
        }
        self.leadership.resign().await;
    }
}
