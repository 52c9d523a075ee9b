//! A small etcd v3 client over etcd's own JSON gateway (`POST /v3/...`, keys and values in
//! base64, 64-bit numbers as strings). The gateway is part of every etcd 3.4+ server and speaks
//! the same API as gRPC, so Gatehouse needs no gRPC stack and no `protoc` to build: the default
//! build stays one `cargo build` on a fresh machine.
//!
//! Several endpoints: a request goes to the endpoint that last answered and moves on to the
//! next when one cannot be reached (a member down changes only latency). With a user and
//! password it authenticates and re-authenticates when etcd says the token lapsed. TLS: a CA
//! for the server's certificate and, optionally, a client certificate and key.
//!
//! Must not: log or return the password or the auth token.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use super::EtcdSettings;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint could be reached (each endpoint's reason).
    #[error("no etcd endpoint answered: {0}")]
    Unreachable(String),
    #[error("etcd refused the credentials of user '{0}' (wrong user or password)")]
    Auth(String),
    /// etcd answered with an error (its gRPC code and message).
    #[error("etcd error (code {code}): {message}")]
    Server { code: i64, message: String },
    #[error("unexpected answer from etcd: {0}")]
    Protocol(String),
    #[error("etcd client setup: {0}")]
    Setup(String),
}

/// gRPC `UNAUTHENTICATED`, which etcd answers when an auth token lapsed.
const UNAUTHENTICATED: i64 = 16;
/// gRPC `UNAVAILABLE` and `DEADLINE_EXCEEDED`: a member without a leader, or a proposal that
/// timed out.
const UNAVAILABLE: i64 = 14;
const DEADLINE_EXCEEDED: i64 = 4;

/// A key-value pair as etcd stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: i64,
}

/// A condition of a transaction (all compare with `EQUAL`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key's creation revision (0: the key does not exist).
    CreateRevision(Vec<u8>, i64),
    ModRevision(Vec<u8>, i64),
    Value(Vec<u8>, Vec<u8>),
}

/// One operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `lease` 0: none.
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: i64,
    },
    Delete {
        key: Vec<u8>,
    },
    /// Every key from `key` (included) to `end` (excluded).
    DeleteRange {
        key: Vec<u8>,
        end: Vec<u8>,
    },
    Get {
        key: Vec<u8>,
    },
}

#[derive(Debug, Clone)]
pub struct TxnResult {
    pub succeeded: bool,
    /// The store's revision after the transaction (its own revision when it wrote).
    pub revision: i64,
    /// For each `Op::Get` of the branch taken, in order: the key's pair, if any.
    pub gets: Vec<Option<Kv>>,
}

/// One member's answer to `status`.
#[derive(Debug, Clone)]
pub struct MemberStatus {
    pub endpoint: String,
    pub version: String,
    pub db_size: i64,
    pub member_id: String,
    pub leader: String,
    pub raft_term: i64,
    pub raft_index: i64,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Member {
    pub id: String,
    pub name: String,
    pub client_urls: Vec<String>,
}

pub struct Etcd {
    http: reqwest::Client,
    endpoints: Vec<String>,
    current: AtomicUsize,
    credentials: Option<(String, String)>,
    token: tokio::sync::RwLock<Option<String>>,
    prefix: Vec<u8>,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd").field("endpoints", &self.endpoints).field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

/// An int64 of the gateway's JSON: a string, a number, or absent (0).
fn num(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

fn unb64(v: &Value) -> Result<Vec<u8>, EtcdError> {
    match v.as_str() {
        None => Ok(Vec::new()),
        Some(s) => B64.decode(s).map_err(|e| EtcdError::Protocol(format!("bad base64: {e}"))),
    }
}

fn kv(v: &Value) -> Result<Kv, EtcdError> {
    Ok(Kv {
        key: unb64(&v["key"])?,
        value: unb64(&v["value"])?,
        create_revision: num(&v["create_revision"]),
        mod_revision: num(&v["mod_revision"]),
        lease: num(&v["lease"]),
    })
}

/// The end of a prefix range: the prefix with its last byte incremented (etcd's convention).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0] // every key
}

impl Etcd {
    pub fn new(s: &EtcdSettings) -> Result<Etcd, EtcdError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(2))
            .timeout(s.request_timeout)
            .user_agent(concat!("Gatehouse/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &s.ca_file {
            let pem =
                std::fs::read(ca).map_err(|e| EtcdError::Setup(format!("--etcd-ca-file {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| EtcdError::Setup(format!("--etcd-ca-file {}: {e}", ca.display())))?;
            b = b.tls_certs_only(certs);
        }
        if let Some((cert, key)) = &s.client_cert {
            let mut pem = std::fs::read(cert)
                .map_err(|e| EtcdError::Setup(format!("--etcd-cert-file {}: {e}", cert.display())))?;
            pem.push(b'\n');
            pem.extend(
                std::fs::read(key).map_err(|e| EtcdError::Setup(format!("--etcd-key-file {}: {e}", key.display())))?,
            );
            let id = reqwest::Identity::from_pem(&pem)
                .map_err(|e| EtcdError::Setup(format!("--etcd-cert-file/--etcd-key-file: {e}")))?;
            b = b.identity(id);
        }
        Ok(Etcd {
            http: b.build().map_err(|e| EtcdError::Setup(e.to_string()))?,
            endpoints: s.endpoints.clone(),
            current: AtomicUsize::new(0),
            credentials: s.user.clone().zip(s.password.clone()),
            token: tokio::sync::RwLock::new(None),
            prefix: s.prefix.as_bytes().to_vec(),
        })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// `prefix` + `suffix`: every key Gatehouse uses lives under the configured prefix.
    pub fn key(&self, suffix: &str) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(suffix.as_bytes());
        k
    }

    async fn authenticate(&self, endpoint: &str) -> Result<Option<String>, EtcdError> {
        let Some((user, password)) = &self.credentials else { return Ok(None) };
        let v = self
            .post_once(endpoint, "/v3/auth/authenticate", &json!({"name": user, "password": password}), None, None)
            .await?;
        if let Some(e) = gateway_error(&v) {
            return Err(match e {
                // "etcdserver: authentication failed, invalid user ID or password"; anything
                // else (no leader, auth not enabled, a timeout) is said as it is.
                EtcdError::Server { message, .. } if message.contains("authentication failed") => {
                    EtcdError::Auth(user.clone())
                }
                other => other,
            });
        }
        let token = v["token"].as_str().ok_or_else(|| EtcdError::Protocol("authenticate: no token".into()))?;
        *self.token.write().await = Some(token.to_string());
        Ok(Some(token.to_string()))
    }

    async fn post_once(
        &self,
        endpoint: &str,
        path: &str,
        body: &Value,
        token: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<Value, EtcdError> {
        let mut req = self
            .http
            .post(format!("{}{path}", endpoint.trim_end_matches('/')))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        if let Some(t) = token {
            req = req.header("authorization", t);
        }
        let resp = req.send().await.map_err(|e| EtcdError::Unreachable(format!("{endpoint}: {}", describe(&e))))?;
        let bytes = resp.bytes().await.map_err(|e| EtcdError::Unreachable(format!("{endpoint}: {}", describe(&e))))?;
        serde_json::from_slice(&bytes).map_err(|e| EtcdError::Protocol(format!("{endpoint}{path}: {e}")))
    }

    /// One request to one endpoint, authenticating first (and once more if the token lapsed).
    pub async fn call_at(&self, endpoint: &str, path: &str, body: &Value) -> Result<Value, EtcdError> {
        self.call_at_within(endpoint, path, body, None).await
    }

    async fn call_at_within(
        &self,
        endpoint: &str,
        path: &str,
        body: &Value,
        timeout: Option<Duration>,
    ) -> Result<Value, EtcdError> {
        let mut token = self.token.read().await.clone();
        if token.is_none() {
            token = self.authenticate(endpoint).await?;
        }
        let v = self.post_once(endpoint, path, body, token.as_deref(), timeout).await?;
        match gateway_error(&v) {
            Some(EtcdError::Server { code: UNAUTHENTICATED, .. }) if self.credentials.is_some() => {
                let token = self.authenticate(endpoint).await?;
                let v = self.post_once(endpoint, path, body, token.as_deref(), timeout).await?;
                gateway_error(&v).map_or(Ok(v), Err)
            }
            Some(e) => Err(e),
            None => Ok(v),
        }
    }

    /// One request, to the endpoint that last answered, then to each other one in turn while
    /// they cannot be reached.
    pub async fn call(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        self.call_within(path, body, None).await
    }

    /// [`Etcd::call`] with a limit on each attempt (a member that hangs costs only that).
    pub async fn call_within(&self, path: &str, body: &Value, attempt: Option<Duration>) -> Result<Value, EtcdError> {
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut why = Vec::new();
        for i in 0..n {
            let at = (start + i) % n;
            match self.call_at_within(&self.endpoints[at], path, body, attempt).await {
                Err(EtcdError::Unreachable(e)) => why.push(e),
                // A member that is up but cut off from the quorum ("no leader", a timed-out
                // proposal): another member may do better.
                Err(EtcdError::Server { code: UNAVAILABLE | DEADLINE_EXCEEDED, message }) => {
                    why.push(format!("{}: {message}", self.endpoints[at]));
                }
                other => {
                    if i > 0 {
                        tracing::info!(endpoint = %self.endpoints[at], "etcd: moved to another endpoint");
                    }
                    self.current.store(at, Ordering::Relaxed);
                    return other;
                }
            }
        }
        Err(EtcdError::Unreachable(why.join("; ")))
    }

    pub async fn get(&self, key: &[u8]) -> Result<Option<Kv>, EtcdError> {
        let v = self.call("/v3/kv/range", &json!({"key": b64(key)})).await?;
        v["kvs"].as_array().and_then(|a| a.first()).map(kv).transpose()
    }

    /// Every pair whose key starts with `prefix`, in key order.
    pub async fn get_prefix(&self, prefix: &[u8]) -> Result<Vec<Kv>, EtcdError> {
        let v = self.call("/v3/kv/range", &json!({"key": b64(prefix), "range_end": b64(&prefix_end(prefix))})).await?;
        v["kvs"].as_array().map(|a| a.iter().map(kv).collect()).unwrap_or_else(|| Ok(Vec::new()))
    }

    /// Every pair whose key starts with `prefix`, in key order, fetched `page` at a time (so no
    /// answer grows with the data).
    pub async fn get_prefix_paged(&self, prefix: &[u8], page: usize) -> Result<Vec<Kv>, EtcdError> {
        let end = prefix_end(prefix);
        let mut from = prefix.to_vec();
        let mut out = Vec::new();
        loop {
            let (kvs, more) = self.range(&from, &end, page).await?;
            if let Some(last) = kvs.last() {
                from = last.key.clone();
                from.push(0);
            }
            out.extend(kvs);
            if !more {
                return Ok(out);
            }
        }
    }

    /// The pairs with keys in `from..end`, in key order, at most `limit`; and whether more follow.
    pub async fn range(&self, from: &[u8], end: &[u8], limit: usize) -> Result<(Vec<Kv>, bool), EtcdError> {
        let v = self
            .call("/v3/kv/range", &json!({"key": b64(from), "range_end": b64(end), "limit": limit.to_string()}))
            .await?;
        let kvs: Vec<Kv> = v["kvs"].as_array().map(|a| a.iter().map(kv).collect()).unwrap_or_else(|| Ok(Vec::new()))?;
        Ok((kvs, v["more"].as_bool().unwrap_or(false)))
    }

    /// How many keys start with `prefix`.
    pub async fn count_prefix(&self, prefix: &[u8]) -> Result<i64, EtcdError> {
        let v = self
            .call(
                "/v3/kv/range",
                &json!({"key": b64(prefix), "range_end": b64(&prefix_end(prefix)), "count_only": true}),
            )
            .await?;
        Ok(num(&v["count"]))
    }

    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<i64, EtcdError> {
        let v = self.call("/v3/kv/put", &json!({"key": b64(key), "value": b64(value)})).await?;
        Ok(num(&v["header"]["revision"]))
    }

    /// All `compare`s hold → `success` runs, else `failure`; atomically, at one revision.
    pub async fn txn(&self, compare: &[Compare], success: &[Op], failure: &[Op]) -> Result<TxnResult, EtcdError> {
        self.txn_within(compare, success, failure, None).await
    }

    /// [`Etcd::txn`] with a limit on each endpoint's attempt (a member waiting for its raft
    /// group to elect a leader is left for the next one).
    pub async fn txn_within(
        &self,
        compare: &[Compare],
        success: &[Op],
        failure: &[Op],
        attempt: Option<Duration>,
    ) -> Result<TxnResult, EtcdError> {
        let cmp: Vec<Value> = compare
            .iter()
            .map(|c| match c {
                Compare::CreateRevision(k, r) => {
                    json!({"key": b64(k), "result": "EQUAL", "target": "CREATE", "create_revision": r.to_string()})
                }
                Compare::ModRevision(k, r) => {
                    json!({"key": b64(k), "result": "EQUAL", "target": "MOD", "mod_revision": r.to_string()})
                }
                Compare::Value(k, val) => {
                    json!({"key": b64(k), "result": "EQUAL", "target": "VALUE", "value": b64(val)})
                }
            })
            .collect();
        let ops = |ops: &[Op]| -> Vec<Value> {
            ops.iter()
                .map(|o| match o {
                    Op::Put { key, value, lease } => {
                        json!({"request_put": {"key": b64(key), "value": b64(value), "lease": lease.to_string()}})
                    }
                    Op::Delete { key } => json!({"request_delete_range": {"key": b64(key)}}),
                    Op::DeleteRange { key, end } => {
                        json!({"request_delete_range": {"key": b64(key), "range_end": b64(end)}})
                    }
                    Op::Get { key } => json!({"request_range": {"key": b64(key)}}),
                })
                .collect()
        };
        let v = self
            .call_within(
                "/v3/kv/txn",
                &json!({"compare": cmp, "success": ops(success), "failure": ops(failure)}),
                attempt,
            )
            .await?;
        let mut gets = Vec::new();
        for r in v["responses"].as_array().into_iter().flatten() {
            if let Some(range) = r.get("response_range") {
                gets.push(range["kvs"].as_array().and_then(|a| a.first()).map(kv).transpose()?);
            }
        }
        Ok(TxnResult {
            succeeded: v["succeeded"].as_bool().unwrap_or(false),
            revision: num(&v["header"]["revision"]),
            gets,
        })
    }

    /// Drops the history before `revision` (what etcd keeps for watches and old reads).
    pub async fn compact(&self, revision: i64) -> Result<(), EtcdError> {
        match self.call("/v3/kv/compaction", &json!({"revision": revision.to_string()})).await {
            // Someone compacted further already.
            Err(EtcdError::Server { message, .. }) if message.contains("compacted") => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// A lease of `ttl` seconds: its id.
    pub async fn lease_grant(&self, ttl: u64) -> Result<i64, EtcdError> {
        let v = self.call("/v3/lease/grant", &json!({"TTL": ttl.to_string()})).await?;
        match num(&v["ID"]) {
            0 => Err(EtcdError::Protocol("lease grant: no ID".into())),
            id => Ok(id),
        }
    }

    /// Renews a lease: the seconds it has left, 0 when it is gone (expired or revoked). Each
    /// endpoint gets at most `attempt`.
    pub async fn lease_keepalive(&self, id: i64, attempt: Duration) -> Result<i64, EtcdError> {
        let v = self.call_within("/v3/lease/keepalive", &json!({"ID": id.to_string()}), Some(attempt)).await?;
        // One message of the keep-alive stream: `{"result": {"ID", "TTL"}}` (TTL absent: the
        // lease is gone), or a stream error `{"error": {"grpc_code", "message"}}`.
        if let Some(r) = v.get("result") {
            return Ok(num(&r["TTL"]));
        }
        let e = &v["error"];
        Err(EtcdError::Server {
            code: num(&e["grpc_code"]),
            message: e["message"].as_str().unwrap_or("lease keep-alive: no result").to_string(),
        })
    }

    pub async fn lease_revoke(&self, id: i64) -> Result<(), EtcdError> {
        match self.call("/v3/lease/revoke", &json!({"ID": id.to_string()})).await {
            // Already gone: what revoking wanted.
            Err(EtcdError::Server { message, .. }) if message.contains("not found") => Ok(()),
            other => other.map(|_| ()),
        }
    }

    pub async fn status_of(&self, endpoint: &str) -> Result<MemberStatus, EtcdError> {
        let v = self.call_at(endpoint, "/v3/maintenance/status", &json!({})).await?;
        Ok(MemberStatus {
            endpoint: endpoint.to_string(),
            version: v["version"].as_str().unwrap_or("?").to_string(),
            db_size: num(&v["dbSize"]),
            member_id: v["header"]["member_id"].as_str().unwrap_or("").to_string(),
            leader: v["leader"].as_str().unwrap_or("").to_string(),
            raft_term: num(&v["raftTerm"]),
            raft_index: num(&v["raftIndex"]),
            errors: v["errors"]
                .as_array()
                .map(|a| a.iter().filter_map(|e| e.as_str().map(String::from)).collect())
                .unwrap_or_default(),
        })
    }

    pub async fn members(&self) -> Result<Vec<Member>, EtcdError> {
        let v = self.call("/v3/cluster/member/list", &json!({})).await?;
        Ok(v["members"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| Member {
                id: m["ID"].as_str().map_or_else(|| num(&m["ID"]).to_string(), String::from),
                name: m["name"].as_str().unwrap_or("").to_string(),
                client_urls: m["clientURLs"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|u| u.as_str().map(String::from)).collect())
                    .unwrap_or_default(),
            })
            .collect())
    }
}

/// The gateway's error body `{"error", "code", "message"}`, if that is what `v` is.
fn gateway_error(v: &Value) -> Option<EtcdError> {
    if v.get("code").is_some() && (v.get("error").is_some() || v.get("message").is_some()) && v.get("header").is_none()
    {
        let message = v["message"].as_str().or_else(|| v["error"].as_str()).unwrap_or("").to_string();
        return Some(EtcdError::Server { code: num(&v["code"]), message });
    }
    None
}

/// A transport error with its causes (reqwest's own text stops at "error sending request").
fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/gh/"), b"/gh0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }

    #[test]
    fn gateway_numbers_and_errors() {
        assert_eq!(num(&json!("123")), 123);
        assert_eq!(num(&json!(7)), 7);
        assert_eq!(num(&Value::Null), 0);
        let e = gateway_error(
            &json!({"error": "etcdserver: invalid auth token", "code": 16, "message": "etcdserver: invalid auth token"}),
        );
        assert!(matches!(e, Some(EtcdError::Server { code: 16, .. })));
        assert!(gateway_error(&json!({"header": {"revision": "2"}})).is_none());
    }
}
