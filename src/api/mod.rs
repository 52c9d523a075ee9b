//! The HTTP API: the hyper 1 server, routing, and one handler module per resource. The only
//! user of hyper's server types (DESIGN invariant 7). Handlers read the store directly and
//! hand mutations to the writer; they never call the scheduler or webhook code.

mod auth;
mod error;
mod events;
pub mod openapi;
mod ops;
mod participants;
mod ratelimit;
mod rooms;
mod tls;
mod tokens;
mod webhooks;
mod wire;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use error::ApiError;
pub use tls::Tls;

use crate::clock::SharedClock;
use crate::store::Store;
use crate::tokens::KeyRing;

/// Response body type for every handler (plain JSON now, streams later).
pub type Body = BoxBody<Bytes, Infallible>;

/// Settings the handlers need.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub public_url: String,
    pub domain_name: String,
    pub body_limit: usize,
    pub token_leeway_secs: u64,
    pub lease_ms: i64,
    pub join_rate: f64,
    pub join_burst: u32,
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// `/metrics` without an API key.
    pub metrics_public: bool,
    /// The data dir (backups include its API key file).
    pub data_dir: std::path::PathBuf,
}

/// Everything a handler can reach. Shared behind an `Arc`.
pub struct AppState {
    pub store: Store,
    pub keys: KeyRing,
    pub clock: SharedClock,
    pub settings: ApiSettings,
    /// The test control endpoint's handle on the clock (`test-clock` builds only).
    #[cfg(feature = "test-clock")]
    pub test_clock: Arc<crate::clock::OffsetClock>,
    /// Set once start-up has finished (store open, timers loaded).
    pub ready: AtomicBool,
    pub limiter: ratelimit::JoinLimiter,
    /// Outbound HTTP for webhook test POSTs.
    pub outbound: crate::webhooks::Outbound,
    /// Housekeeping totals (for metrics).
    pub housekeeping: Arc<crate::scheduler::HousekeepingStats>,
    pub metrics: crate::metrics::ApiMetrics,
    /// Turns true at shutdown; long-lived responses (streams) watch it.
    pub shutdown: watch::Receiver<bool>,
    request_ids: AtomicU64,
}

impl AppState {
    pub fn new(
        store: Store,
        keys: KeyRing,
        clock: SharedClock,
        settings: ApiSettings,
        shutdown: watch::Receiver<bool>,
        outbound: crate::webhooks::Outbound,
        #[cfg(feature = "test-clock")] test_clock: Arc<crate::clock::OffsetClock>,
    ) -> AppState {
        AppState {
            store,
            keys,
            clock,
            limiter: ratelimit::JoinLimiter::new(
                settings.join_rate,
                settings.join_burst,
                settings.trusted_proxies.clone(),
            ),
            settings,
            shutdown,
            outbound,
            housekeeping: Arc::default(),
            metrics: crate::metrics::ApiMetrics::default(),
            #[cfg(feature = "test-clock")]
            test_clock,
            ready: AtomicBool::new(false),
            request_ids: AtomicU64::new(1),
        }
    }

    /// This server's domain id as it appears in tokens' `d` claim.
    pub fn domain_id(&self) -> String {
        self.store.domain_id().to_string()
    }
}

/// Serves HTTP on `listener` until `shutdown` turns true, then stops accepting and gives
/// in-flight connections `grace` to finish.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    mut shutdown: watch::Receiver<bool>,
    grace: Duration,
    tls: Option<Arc<Tls>>,
) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let svc = hyper::service::service_fn(move |req| handle(state.clone(), peer, req));
        match &tls {
            None => {
                let conn =
                    graceful.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).into_owned());
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            Some(tls) => {
                // The handshake runs in the connection's task, so a slow client cannot stall accepting.
                let (acceptor, watcher, builder) = (tls.acceptor(), graceful.watcher(), builder.clone());
                tokio::spawn(async move {
                    let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await
                    else {
                        return;
                    };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc).into_owned();
                    let _ = watcher.watch(conn).await;
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
        tracing::warn!(grace_secs = grace.as_secs(), "some connections were still busy at the shutdown deadline");
    }
}

/// Runs one request in its own task so that a panic becomes a 500, not a dropped connection.
async fn handle(state: Arc<AppState>, peer: SocketAddr, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let id = format!("{:x}", state.request_ids.fetch_add(1, Ordering::Relaxed));
    let method = req.method().clone();
    let route = route_name(req.method(), req.uri().path());
    let st = state.clone();
    let res = match tokio::spawn(async move { dispatch(&st, peer, req).await }).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => wire::error_response(&e),
        Err(_) => {
            tracing::error!(request_id = %id, %route, "handler panicked");
            wire::error_response(&ApiError::internal(&id))
        }
    };
    state.metrics.request(&route, res.status().as_u16(), started.elapsed().as_secs_f64());
    tracing::debug!(request_id = %id, %method, %route, status = res.status().as_u16(), micros = started.elapsed().as_micros() as u64, "request");
    Ok(res)
}

/// The route pattern of a path, for logs: never the path itself, which may hold a token.
fn route_name(method: &Method, path: &str) -> String {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let pattern = match segs.as_slice() {
        ["v1", "meeting-tokens", t] if *t != "revoke" => "/v1/meeting-tokens/:token".to_string(),
        ["v1", "rooms", _, rest @ ..] => {
            format!("/v1/rooms/:name{}", rest.iter().map(|r| format!("/{r}")).collect::<String>())
        }
        ["v1", "webhooks", _, rest @ ..] => {
            format!("/v1/webhooks/:id{}", rest.iter().map(|r| format!("/{r}")).collect::<String>())
        }
        ["v1", ..] | ["healthz"] | ["readyz"] | ["metrics"] | ["dashboard"] => path.to_string(),
        ["assets", _] => "/assets/:file".to_string(),
        _ => "/:page".to_string(),
    };
    format!("{method} {pattern}")
}

async fn dispatch(state: &Arc<AppState>, peer: SocketAddr, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let segs = wire::segments(req.uri().path())?;
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let m = req.method().clone();
    match (segs.as_slice(), &m) {
        (["healthz"], &Method::GET) => Ok(ops::healthz()),
        (["readyz"], &Method::GET) => Ok(ops::readyz(state)),
        (["metrics"], &Method::GET) => ops::metrics(state, &req),
        (["v1", "backup"], &Method::GET) => ops::backup(state, &req),
        (["v1", "openapi.json"], &Method::GET) => Ok(wire::ok(&openapi::document())),
        (["v1"], &Method::GET) => ops::domain(state, &req),
        (["v1", "rooms"], &Method::GET) => rooms::list(state, &req),
        (["v1", "rooms"], &Method::POST) => rooms::create(state, req).await,
        (["v1", "rooms", name], &Method::GET) => rooms::get(state, &req, name),
        (["v1", "rooms", name], &Method::POST) => rooms::update(state, req, name).await,
        (["v1", "rooms", name], &Method::DELETE) => rooms::delete(state, &req, name).await,
        (["v1", "rooms", name, "join"], &Method::POST) => participants::join(state, req, peer, name).await,
        (["v1", "rooms", name, "eject"], &Method::POST) => participants::eject(state, req, name).await,
        (["v1", "rooms", name, "presence"], &Method::GET) => participants::room_presence(state, &req, name),
        (["v1", "rooms", name, "bans"], &Method::GET) => participants::bans(state, &req, name),
        (["v1", "rooms", name, "bans", user], &Method::DELETE) => participants::lift_ban(state, &req, name, user).await,
        (["v1", "presence"], &Method::GET) => participants::presence_all(state, &req),
        (["v1", "sessions", id, "heartbeat"], &Method::POST) => participants::heartbeat(state, &req, id).await,
        (["v1", "sessions", id, "leave"], &Method::POST) => participants::leave(state, &req, id).await,
        (["v1", "sessions", id, "stream"], &Method::GET) => participants::stream(state, &req, id).await,
        (["v1", "meeting-tokens", "revoke"], &Method::POST) => tokens::revoke(state, req).await,
        (["v1", "meeting-tokens"], &Method::POST) => tokens::create(state, req).await,
        (["v1", "meeting-tokens"], &Method::GET) => tokens::list(state, &req),
        (["v1", "meeting-tokens", token], &Method::GET) => tokens::validate(state, &req, token),
        (["v1", "events"], &Method::GET) => events::list(state, &req).await,
        (["v1", "events", "stream"], &Method::GET) => events::stream(state, &req),
        (["v1", "webhooks"], &Method::POST) => webhooks::create(state, req).await,
        (["v1", "webhooks"], &Method::GET) => webhooks::list(state, &req),
        (["v1", "webhooks", id], &Method::GET) => webhooks::get(state, &req, id),
        (["v1", "webhooks", id], &Method::POST) => webhooks::update(state, req, id).await,
        (["v1", "webhooks", id], &Method::DELETE) => webhooks::delete(state, &req, id).await,
        (["v1", "webhooks", id, "replay"], &Method::POST) => webhooks::replay(state, req, id).await,
        (["v1", "webhooks", id, "attempts"], &Method::GET) => webhooks::attempts(state, &req, id),
        #[cfg(feature = "test-clock")]
        (["v1", "_test", "clock"], &Method::POST) => ops::test_clock(state, req).await,
        (["healthz"] | ["readyz"] | ["v1"] | ["v1", "meeting-tokens", _] | ["v1", "events"], _) => {
            Err(ApiError::method_not_allowed("GET"))
        }
        (["v1", "rooms"] | ["v1", "meeting-tokens"] | ["v1", "webhooks"], _) => {
            Err(ApiError::method_not_allowed("GET, POST"))
        }
        (["v1", "webhooks", _], _) => Err(ApiError::method_not_allowed("GET, POST, DELETE")),
        (["v1", "webhooks", _, "replay"], _) => Err(ApiError::method_not_allowed("POST")),
        (["v1", "webhooks", _, "attempts"] | ["v1", "events", "stream"], _) => Err(ApiError::method_not_allowed("GET")),
        (["v1", "rooms", _], _) => Err(ApiError::method_not_allowed("GET, POST, DELETE")),
        (["v1", "rooms", _, "join" | "eject"] | ["v1", "sessions", _, "heartbeat" | "leave"], _) => {
            Err(ApiError::method_not_allowed("POST"))
        }
        (["v1", "rooms", _, "presence" | "bans"] | ["v1", "presence"] | ["v1", "sessions", _, "stream"], _) => {
            Err(ApiError::method_not_allowed("GET"))
        }
        (["dashboard"], &Method::GET) => Ok(crate::web::dashboard()),
        (["assets", file], &Method::GET) => crate::web::asset(file).ok_or_else(|| ApiError::not_found("no such asset")),
        ([name], &Method::GET) if crate::rooms::validate_name(name).is_ok() => Ok(crate::web::room_page()),
        _ => Err(ApiError::not_found("no such route")),
    }
}
