//! A follower's HTTP front: every request is forwarded, as it came, to the leader (streams
//! included: bodies are passed through as they arrive), over pooled keep-alive connections.
//! The client's address goes in `X-Forwarded-For`, with a tag (`cluster::NODE_HEADER`) that
//! proves to the leader a node put it there.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::sync::watch;

use super::leader::Role;
use crate::tokens::KeyRing;

type Out = crate::api::Forwarded;

/// Hop-by-hop headers, which a proxy must not pass on (RFC 9110 §7.6.1).
const HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
];

fn unavailable(why: &str) -> Response<Out> {
    let body = serde_json::json!({"error": "server-error", "info": why}).to_string();
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    r.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
    r.headers_mut().insert("retry-after", hyper::header::HeaderValue::from_static("1"));
    r
}

/// Keep-alive connections to the leader, reused across requests.
type Client = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Incoming>;

fn client() -> Client {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(std::time::Duration::from_secs(2)));
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(30))
        .build(http)
}

async fn forward(
    client: &Client,
    secret: &[u8; 32],
    acknowledged: &AtomicU64,
    req: Request<Incoming>,
    peer: SocketAddr,
    leader: Option<String>,
) -> Response<Out> {
    let Some(leader) = leader else {
        return unavailable("no cluster leader right now (an election is under way); retry");
    };
    let Ok(url) = url::Url::parse(&leader) else { return unavailable("the leader's address is unreadable") };
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return unavailable("the leader's address is unreadable");
    };
    let authority = format!("{host}:{port}");
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let Ok(uri) = format!("http://{authority}{path}").parse() else { return unavailable("bad request path") };
    parts.uri = uri;
    for h in HOP {
        parts.headers.remove(*h);
    }
    let forwarded = match parts.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(before) => format!("{before}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(v) = hyper::header::HeaderValue::from_str(&forwarded) {
        parts.headers.insert("x-forwarded-for", v);
    }
    // Proves to the leader that this entry comes from a node (a client's own copy of the
    // header is replaced).
    if let Ok(v) = hyper::header::HeaderValue::from_str(&super::forwarded_tag(secret, &peer.ip().to_string())) {
        parts.headers.insert(super::NODE_HEADER, v);
    }
    if let Ok(v) = hyper::header::HeaderValue::from_str(&authority) {
        parts.headers.insert(hyper::header::HOST, v);
    }
    match client.request(Request::from_parts(parts, body)).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            for h in HOP {
                parts.headers.remove(*h);
            }
            // The batch the leader had published: this node's replica answers no read before
            // it holds it (the front strips the header).
            if let Some(lsn) = parts.headers.get(super::LSN_HEADER).and_then(|v| v.to_str().ok()?.parse::<u64>().ok()) {
                acknowledged.fetch_max(lsn, Ordering::AcqRel);
            }
            Response::from_parts(parts, Either::Left(body))
        }
        Err(_) => unavailable("the cluster leader did not answer; retry"),
    }
}

/// Forwards every request to the leader the election names (the mode of a follower's front,
/// `api::Front`, until this node is elected). The front holds connections to the API's rules:
/// the same deadlines for heads, bodies and idle keep-alives, the same connection cap and
/// per-address limit of unauthenticated connections as the leader's (a connection that
/// carries an API key is authenticated here, as there).
/// Every batch a forwarded answer names is noted in `acknowledged`.
pub fn forwarder(
    keys: Arc<KeyRing>,
    me: String,
    secret: [u8; 32],
    role: watch::Receiver<Role>,
    acknowledged: Arc<AtomicU64>,
) -> crate::api::Forward {
    let client = client();
    Arc::new(move |peer: SocketAddr, req: Request<Incoming>| {
        crate::api::authenticate_if_api_key(&req, &keys);
        let leader = match &*role.borrow() {
            // This node's own previous life (a lease not yet lapsed) is nobody to ask; nor is
            // this node while it takes over.
            Role::Follower { leader } if leader.as_deref() != Some(me.as_str()) => leader.clone(),
            _ => None,
        };
        let (client, acknowledged) = (client.clone(), acknowledged.clone());
        Box::pin(async move { forward(&client, &secret, &acknowledged, req, peer, leader).await })
    })
}
