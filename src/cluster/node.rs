//! A node in cluster mode (`serve --store etcd`).
//!
//! Every node campaigns (`leader.rs`). A follower forwards every request to the leader
//! (`proxy.rs`). The node that wins takes over: it rebuilds its local store from what the
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
//! written (fenced) before it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::etcd::{Compare, Etcd, EtcdError, Op};
use super::leader::{Leadership, Role};
use crate::config::Settings;
use crate::store::{ClusterHooks, Replicate};

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

/// Every committed batch record, in lsn order (parts joined).
async fn committed_records(etcd: &Etcd) -> Result<Vec<Vec<u8>>, EtcdError> {
    let prefix = etcd.key("wal/");
    let mut out = Vec::new();
    for kv in etcd.get_prefix_paged(&prefix, 256).await? {
        if kv.value.len() == 5 && kv.value[0] == b'P' {
            let lsn_hex = String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned();
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

/// Commits batch records to etcd, fenced by this node's leadership.
struct EtcdReplicate {
    etcd: Arc<Etcd>,
    fence: Compare,
    rt: tokio::runtime::Handle,
    /// How long to keep trying when etcd cannot be reached (then the node gives up leading).
    patience: Duration,
}

impl EtcdReplicate {
    async fn fenced(&self, ops: Vec<Op>) -> Result<(), String> {
        let started = Instant::now();
        loop {
            match self.etcd.txn(std::slice::from_ref(&self.fence), &ops, &[]).await {
                Ok(r) if r.succeeded => return Ok(()),
                Ok(_) => return Err("this node is no longer the leader (fenced out)".into()),
                Err(e @ (EtcdError::Unreachable(_) | EtcdError::Server { .. }))
                    if started.elapsed() < self.patience =>
                {
                    tracing::warn!(error = %e, "cluster: commit failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    async fn commit_all(&self, records: &[(u64, Vec<u8>)]) -> Result<(), String> {
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
        Ok(())
    }
}

impl Replicate for EtcdReplicate {
    fn commit(&self, records: &[(u64, Vec<u8>)]) -> Result<(), String> {
        let r = self.rt.block_on(self.commit_all(records));
        if let Err(why) = &r {
            // Nothing of these batches is acknowledged; what the cluster committed is the
            // truth, and another node serves it. Step aside at once.
            tracing::error!(error = %why, "cluster: cannot commit; this node stops leading");
            eprintln!("gatehouse: cluster commit failed ({why}); exiting so another node leads");
            std::process::exit(EXIT_DEPOSED);
        }
        r
    }
}

/// Runs this node: follower (forwarding) until elected, then leader until it stops leading.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let cfg = settings.etcd.clone().context("cluster mode needs the etcd settings")?;
    if settings.api_keys.is_empty() {
        anyhow::bail!(
            "--store etcd: every node must be given the same API key (GATEHOUSE_API_KEY or api_keys in the file)"
        );
    }
    let etcd = Arc::new(Etcd::new(&cfg).map_err(|e| anyhow::anyhow!("etcd: {e}"))?);
    let domain = loop {
        match domain_id(&etcd).await {
            Ok(d) => break d,
            Err(e) => {
                tracing::warn!(error = %e, "cluster: etcd not ready; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let me = cfg.advertise_url.clone().unwrap_or_else(|| format!("http://{addr}"));
    let leadership = Leadership::start(etcd.clone(), me.clone(), cfg.lease_ttl_secs);
    let mut role = leadership.watch();
    tracing::info!(node = %me, "cluster: following until elected");
    println!("gatehouse listening on http://{addr}");
    {
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let proxy = tokio::spawn(super::proxy::serve(listener, me.clone(), leadership.watch(), stop_rx));
    let fence = loop {
        if let Role::Leader { fence, .. } = *role.borrow_and_update() {
            break fence;
        }
        tokio::select! {
            _ = role.changed() => {}
            _ = tokio::signal::ctrl_c() => {
                leadership.resign().await;
                return Ok(());
            }
        }
    };
    let _ = stop_tx.send(true);
    let _ = proxy.await;
    let started = Instant::now();
    tracing::info!(node = %me, "cluster: elected; loading the committed state");
    // A fresh local store: whatever a previous life of this node wrote locally may hold
    // batches the cluster never committed.
    for d in ["store", "wal", "events"] {
        let p = settings.data_dir.join(d);
        if p.exists() {
            std::fs::remove_dir_all(&p).with_context(|| format!("clearing {}", p.display()))?;
        }
    }
    let records = committed_records(&etcd).await.map_err(|e| anyhow::anyhow!("loading the committed state: {e}"))?;
    crate::app::create_data_dir(&settings.data_dir)?;
    crate::store::seed_journal(&settings.data_dir, &records).map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(
        batches = records.len(),
        millis = started.elapsed().as_millis() as u64,
        "cluster: committed state loaded"
    );
    // Losing the lead ends the process; so does the next commit's fence failing.
    let mut watch = leadership.watch();
    tokio::spawn(async move {
        while watch.changed().await.is_ok() {
            if !matches!(*watch.borrow(), Role::Leader { .. }) {
                tracing::error!("cluster: this node lost the leadership; exiting so that it restarts as a follower");
                eprintln!("gatehouse: lost the cluster leadership; exiting");
                std::process::exit(EXIT_DEPOSED);
            }
        }
    });
    let hooks = ClusterHooks {
        domain_id: domain,
        replicate: Arc::new(EtcdReplicate {
            etcd: etcd.clone(),
            fence: Compare::CreateRevision(etcd.key("leader"), fence),
            rt: tokio::runtime::Handle::current(),
            patience: Duration::from_secs(cfg.lease_ttl_secs),
        }),
    };
    let result = crate::app::run_with(settings, Some(hooks)).await;
    leadership.resign().await;
    result
}
