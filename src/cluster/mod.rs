//! Cluster mode on etcd: several nodes sharing their state in an etcd cluster
//! (ARCHITECTURE.md, "Cluster mode on etcd"): the etcd client (`etcd`: JSON gateway, several
//! endpoints, user/password auth, TLS with client certificates), the fenced leader election
//! (`leader`), a node's life (`node`), a follower's forwarding (`proxy`), and the health
//! report of `gatehouse config check --store etcd`.
//!
//! Must not: log or print the etcd password or auth token.

pub mod etcd;
pub mod leader;
pub mod node;
mod proxy;
mod replica;

/// The header a follower adds to what it forwards: an HMAC, under a secret every node derives
/// from the shared API key, of the client address it appended to `X-Forwarded-For`. The leader
/// believes that address when the tag is right, whatever `--trusted-proxies` says.
pub const NODE_HEADER: &str = "x-gatehouse-forwarded";

/// The header the leader adds to its answers of requests a follower forwarded: the last batch
/// it had published when it answered. The follower holds the answer until its replica has that
/// batch, so a client that stays on one node reads its own writes.
pub const LSN_HEADER: &str = "x-gatehouse-lsn";

/// The nodes' shared secret, derived from the (shared) API key.
pub fn node_secret(api_key: &str) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(format!("gatehouse-node-v1|{api_key}").as_bytes()).into()
}

/// The tag of a forwarded client address.
pub fn forwarded_tag(secret: &[u8; 32], client: &str) -> String {
    crate::tokens::hmac_hex(secret, client.as_bytes())
}

pub use crate::config::EtcdSettings;

/// Why `config check` found the cluster unusable.
#[derive(Debug, thiserror::Error)]
pub enum CheckFailed {
    /// etcd refused the credentials.
    #[error("etcd: {0}")]
    Etcd(etcd::EtcdError),
    /// What was asked and what failed, as `config check` prints it.
    #[error("{0}")]
    Report(String),
}

/// `gatehouse config check --store etcd`: asks every endpoint for its status and the member
/// list, then reads Gatehouse's keys. `Ok(report)` when the members that answer agree on a
/// leader and the read succeeds (a linearizable read needs a quorum, and read permission);
/// `Err` otherwise (its report says what failed). A cluster that works but that fewer
/// than a majority of its members can be reached through the configured endpoints gets a
/// warning. Never prints the password.
pub async fn check(s: &EtcdSettings) -> Result<String, CheckFailed> {
    use std::fmt::Write as _;
    let client = etcd::Etcd::new(s).map_err(|e| CheckFailed::Report(e.to_string()))?;
    let mut out = String::new();
    let mut answered = Vec::new();
    for ep in &s.endpoints {
        match client.status_of(ep).await {
            Ok(st) => {
                let _ = writeln!(
                    out,
                    "  {ep}: etcd {}, member {}, leader {}, raft term {} index {}, db {:.1} MiB{}",
                    st.version,
                    st.member_id,
                    st.leader,
                    st.raft_term,
                    st.raft_index,
                    st.db_size as f64 / 1048576.0,
                    if st.errors.is_empty() { String::new() } else { format!(", errors: {}", st.errors.join("; ")) }
                );
                answered.push(st);
            }
            Err(e @ etcd::EtcdError::Auth(_)) => return Err(CheckFailed::Etcd(e)),
            Err(etcd::EtcdError::Unreachable(why)) => {
                let why = why.strip_prefix(&format!("{ep}: ")).unwrap_or(&why);
                let _ = writeln!(out, "  {ep}: NOT ANSWERING ({why})");
            }
            Err(e) => {
                let _ = writeln!(out, "  {ep}: NOT ANSWERING ({e})");
            }
        }
    }
    if answered.is_empty() {
        return Err(CheckFailed::Report(format!("etcd: no endpoint answered\n{out}")));
    }
    let members = match client.members().await {
        Ok(m) => m,
        Err(e) => return Err(CheckFailed::Report(format!("etcd: the member list failed: {e}\n{out}"))),
    };
    let total = members.len().max(1);
    let names: Vec<String> = members.iter().map(|m| format!("{} ({})", m.name, m.client_urls.join(" "))).collect();
    let leaders: std::collections::BTreeSet<&str> =
        answered.iter().map(|s| s.leader.as_str()).filter(|l| !l.is_empty() && *l != "0").collect();
    let leader_name = leaders
        .iter()
        .next()
        .and_then(|l| members.iter().find(|m| m.id == *l))
        .map_or_else(|| "none".to_string(), |m| m.name.clone());
    let quorum = total / 2 + 1;
    // Distinct members: two endpoints can name the same one.
    let reachable_members =
        answered.iter().map(|s| s.member_id.as_str()).collect::<std::collections::BTreeSet<_>>().len();
    let mut head = String::new();
    let _ = writeln!(
        head,
        "etcd cluster: {} of {} configured endpoints answer; {} members ({}); leader {}; keys under '{}'",
        answered.len(),
        s.endpoints.len(),
        total,
        names.join(", "),
        leader_name,
        s.prefix
    );
    let healthy = leaders.len() == 1 && leader_name != "none";
    if !healthy {
        return Err(CheckFailed::Report(format!("{head}{out}etcd: the members do not agree on a leader (no quorum?)")));
    }
    // Status and the member list need no permission; reading Gatehouse's keys does.
    match client.count_prefix(s.prefix.as_bytes()).await {
        Ok(n) => {
            let _ = writeln!(out, "  {n} keys under '{}' (readable with these credentials)", s.prefix);
        }
        Err(e @ etcd::EtcdError::Auth(_)) => return Err(CheckFailed::Etcd(e)),
        Err(e) => {
            return Err(CheckFailed::Report(format!(
                "{head}{out}etcd: cannot read keys under '{}' (no quorum, or no permission): {e}",
                s.prefix
            )))
        }
    }
    if reachable_members < quorum {
        let _ = writeln!(
            out,
            "  warning: {reachable_members} of {total} members answer through the configured endpoints (a majority is {quorum}): \
             list more of them in --etcd-endpoints, or one more failure cuts this node off"
        );
    }
    Ok(format!("{head}{out}"))
}
