//! One leader among the nodes, elected in etcd and fenced.
//!
//! A node campaigns by creating the leader key (`<prefix>leader`) bound to a lease of
//! `lease_ttl` seconds, in a transaction that succeeds only if the key does not exist. The
//! creation revision of that key is the leader's *fence*: every write only a leader may make
//! carries `Compare::CreateRevision(leader key, fence)`, so a deposed leader that wakes up late
//! (its lease expired while it was paused, and someone else created the key since) cannot write:
//! its compare fails. Locks without fencing are unsafe (Jepsen, etcd 3.4.3); this is the fencing.
//!
//! The leader renews its lease every `ttl/3`. If renewals fail (etcd unreachable), it steps
//! down once the lease may have expired (`ttl` after the last renewal), before anyone else can
//! have been elected. Followers look at the leader key every 200 ms and campaign when it is
//! gone. A leader whose process is gone (its address refuses connections, or the key names the
//! follower's own previous process) has its lease revoked by the follower at once, so a
//! `kill -9` costs well under a second; a frozen or cut-off leader is replaced once its lease
//! runs out, about `ttl` after its last renewal. The leader's
//! loop reconnects by itself: every request goes through [`Etcd`], which moves to another
//! endpoint when one cannot be reached.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::etcd::{Compare, Etcd, EtcdError, Op};

/// This node's part, as the election loop last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Not leading; `leader` names the node that is, when known.
    Follower { leader: Option<String> },
    /// Leading: `fence` is the leader key's creation revision, `lease` the lease it is bound to.
    Leader { fence: i64, lease: i64 },
}

pub struct Leadership {
    etcd: Arc<Etcd>,
    key: Vec<u8>,
    role: watch::Receiver<Role>,
    task: tokio::task::JoinHandle<()>,
    stop: Arc<tokio::sync::Notify>,
}

impl Leadership {
    /// Starts campaigning as `node` (the leader key's value: how other nodes name and reach it).
    pub fn start(etcd: Arc<Etcd>, node: String, ttl: u64) -> Leadership {
        let key = etcd.key("leader");
        let (tx, rx) = watch::channel(Role::Follower { leader: None });
        let stop = Arc::new(tokio::sync::Notify::new());
        let task = tokio::spawn(campaign(etcd.clone(), key.clone(), node, ttl.max(2), tx, stop.clone()));
        Leadership { etcd, key, role: rx, task, stop }
    }

    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    /// Changes of role, for whoever starts and stops leader-only work.
    pub fn watch(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }

    /// The compare that fences a leader-only write, while this node leads.
    pub fn fence(&self) -> Option<Compare> {
        match *self.role.borrow() {
            Role::Leader { fence, .. } => Some(Compare::CreateRevision(self.key.clone(), fence)),
            Role::Follower { .. } => None,
        }
    }

    /// A write only the leader may make: `ops` commit only if `fence` still names the leader.
    /// `Ok(false)`: the fence failed, this node is no longer the leader (nothing was written).
    pub async fn fenced(&self, fence: &Compare, ops: &[Op]) -> Result<bool, EtcdError> {
        Ok(self.etcd.txn(std::slice::from_ref(fence), ops, &[]).await?.succeeded)
    }

    /// Steps down and gives the lease back, so another node takes over at once.
    pub async fn resign(self) {
        self.stop.notify_one();
        let _ = self.task.await;
    }

    /// Stops campaigning without telling etcd (as `kill -9` would): the lease runs out by
    /// itself. For tests of failover.
    pub fn abandon(self) {
        self.task.abort();
    }
}

async fn campaign(
    etcd: Arc<Etcd>,
    key: Vec<u8>,
    node: String,
    ttl: u64,
    role: watch::Sender<Role>,
    stop: Arc<tokio::sync::Notify>,
) {
    let tick = Duration::from_millis(ttl * 1000 / 3);
    let mut gone = Gone::default();
    loop {
        match try_lead(&etcd, &key, &node, ttl).await {
            Ok(Some((fence, lease, granted))) => {
                tracing::info!(node = %node, fence, "cluster: this node is the leader");
                role.send_replace(Role::Leader { fence, lease });
                let resigned = hold(&etcd, lease, granted, ttl, tick, &stop).await;
                role.send_replace(Role::Follower { leader: None });
                if resigned {
                    let _ = etcd.lease_revoke(lease).await;
                    tracing::info!(node = %node, "cluster: resigned the leadership");
                    return;
                }
                tracing::warn!(node = %node, "cluster: lost the leadership (lease not renewed in time)");
                // Give the lease back if it still exists, so the next election need not wait
                // for it to run out (this node can no longer be sure it leads).
                let _ = etcd.lease_revoke(lease).await;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cluster: campaign failed; retrying"),
        }
        // Who leads now (a follower forwards there), before waiting.
        if let Ok(current) = etcd.get(&key).await {
            if let Some(kv) = &current {
                if gone.leader_is_gone(kv, &node).await {
                    // Its lease ends now (the key with it): whatever that process still
                    // tries to commit fails its fence, and the next campaign is at once.
                    match etcd.lease_revoke(kv.lease).await {
                        Ok(()) => continue,
                        Err(e) => tracing::warn!(error = %e, "cluster: could not end the gone leader's lease"),
                    }
                }
            }
            let leader = current.map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
            role.send_if_modified(|r| {
                let new = Role::Follower { leader: leader.clone() };
                let changed = *r != new;
                *r = new;
                changed
            });
        }
        // A follower looks often (a read is cheap), so that it notices a dead leader soon.
        tokio::select! {
            _ = tokio::time::sleep(tick.min(FOLLOWER_POLL)) => {}
            _ = stop.notified() => return,
        }
    }
}

/// A follower's evidence that the leader's process is gone, so that it need not wait for its
/// lease to run out: the leader key names this very node (its previous process: this one
/// does not lead), or the leader's address refused connections twice in a row (nothing listens
/// there: a process that leads accepts connections for as long as it lives). A leader that
/// is merely slow, frozen or cut off is not gone by this test (its address does not refuse):
/// its lease decides.
#[derive(Default)]
struct Gone {
    /// The leader key (its creation revision) whose address refused last time.
    refused: Option<i64>,
}

impl Gone {
    async fn leader_is_gone(&mut self, kv: &super::etcd::Kv, me: &str) -> bool {
        let name = String::from_utf8_lossy(&kv.value);
        if name == me {
            tracing::warn!(node = %me, "cluster: the leader key names this node's previous process; ending its lease");
            return true;
        }
        let refused = match leader_address(&name) {
            Some(addr) => matches!(
                tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr)).await,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
            ),
            None => false,
        };
        let twice = refused && self.refused == Some(kv.create_revision);
        self.refused = refused.then_some(kv.create_revision);
        if twice {
            tracing::warn!(leader = %name, "cluster: the leader's address refuses connections (its process is gone); ending its lease");
        }
        twice
    }
}

/// `host:port` of a node's advertised `http://host:port`.
fn leader_address(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?))
}

/// How long a probe of the leader's address may take (a timeout is no evidence either way).
const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// How often a follower looks at the leader key, at most.
const FOLLOWER_POLL: Duration = Duration::from_millis(200);

/// Creates the leader key if there is none: `Some((fence, lease, when the lease was asked
/// for))` when this node now leads.
async fn try_lead(etcd: &Etcd, key: &[u8], node: &str, ttl: u64) -> Result<Option<(i64, i64, Instant)>, EtcdError> {
    if etcd.get(key).await?.is_some() {
        return Ok(None);
    }
    let granted = Instant::now();
    let lease = etcd.lease_grant(ttl).await?;
    let put = Op::Put { key: key.to_vec(), value: node.as_bytes().to_vec(), lease };
    let r = etcd.txn(&[Compare::CreateRevision(key.to_vec(), 0)], &[put], &[]).await;
    match r {
        // Won, but so slowly that the lease may be nearly over: give it back and try again.
        Ok(r)
            if r.succeeded && granted.elapsed() + Duration::from_millis(ttl * 1000 / 6) >= Duration::from_secs(ttl) =>
        {
            let _ = etcd.lease_revoke(lease).await;
            Ok(None)
        }
        Ok(r) if r.succeeded => Ok(Some((r.revision, lease, granted))),
        Ok(_) => {
            let _ = etcd.lease_revoke(lease).await;
            Ok(None)
        }
        Err(e) => {
            let _ = etcd.lease_revoke(lease).await;
            Err(e)
        }
    }
}

/// Renews the lease until it is lost (false) or the node resigns (true).
async fn hold(etcd: &Etcd, lease: i64, granted: Instant, ttl: u64, tick: Duration, stop: &tokio::sync::Notify) -> bool {
    // The lease may have expired `ttl` after the last renewal etcd confirmed; step down a
    // little before that, so two nodes never both believe they lead.
    let margin = Duration::from_millis(ttl * 1000 / 6);
    // A member that hangs must not use up the lease: each endpoint gets a slice of it.
    let attempt = Duration::from_millis((ttl * 1000 / 6).max(300));
    let mut renewed = granted;
    let mut wait = tick;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.notified() => return true,
        }
        let left = Duration::from_secs(ttl).saturating_sub(renewed.elapsed()).saturating_sub(margin);
        // The lease was renewed somewhere between sending and the answer: count from sending.
        let sent = Instant::now();
        match tokio::time::timeout(left.max(Duration::from_millis(1)), etcd.lease_keepalive(lease, attempt)).await {
            Ok(Ok(secs)) if secs > 0 => {
                renewed = sent;
                wait = tick;
            }
            Ok(Ok(_)) => return false, // expired or revoked
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cluster: lease renewal failed; retrying");
                wait = Duration::from_millis(200); // etcd may be electing a leader: try again soon
            }
            Err(_) => wait = Duration::from_millis(200),
        }
        if renewed.elapsed() + margin >= Duration::from_secs(ttl) {
            return false;
        }
    }
}
