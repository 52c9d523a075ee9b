//! The HTTP API: the hyper 1 server, routing, and one handler module per resource. The only
//! user of hyper's server types (ARCHITECTURE.md, invariant 10). Handlers read the store directly and
//! hand mutations to the writer; they never call the scheduler or webhook code.

mod access;
mod auth;
mod call;
pub mod conn;
mod error;
mod events;
mod media;
mod meetings;
pub mod openapi;
mod ops;
mod participants;
mod presence;
mod ratelimit;
mod requests;
pub mod responses;
mod rooms;
pub mod routes;
pub mod session_stream;
mod streams;
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
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use error::ApiError;
pub use tls::{certified_key, validity, AcmeCerts, Tls, TlsError};

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
    /// Cluster mode: the nodes' secret, to believe the client address a node forwards.
    pub node_secret: Option<[u8; 32]>,
    /// `/metrics` without an API key.
    pub metrics_public: bool,
    /// The data dir (backups include its API key file).
    pub data_dir: std::path::PathBuf,
    /// Connection deadlines and caps.
    pub conn: conn::Limits,
    /// Open `GET /v1/events/stream` responses per API key.
    pub max_event_streams_per_key: usize,
    /// Open `GET /v1/sessions/:id/stream` responses per session.
    pub max_streams_per_session: usize,
    /// Most bans one room may hold.
    pub max_bans_per_room: usize,
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
    /// The Janus media server kept in step, if any (admissions hand out its credentials).
    pub janus: Option<Arc<crate::janus::Mirror>>,
    /// Connection counters (open, refused, closed by each deadline).
    pub conn_metrics: Arc<conn::ConnMetrics>,
    /// Open streams per API key and per session (their caps are in `settings`).
    pub streams: streams::StreamCounts,
    /// Sessions with a stream open, and participant lists for snapshots.
    pub session_streams: Arc<session_stream::Registry>,
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
            )
            .with_node_secret(settings.node_secret),
            settings,
            shutdown,
            outbound,
            housekeeping: Arc::default(),
            metrics: crate::metrics::ApiMetrics::default(),
            conn_metrics: Arc::default(),
            janus: None,
            streams: streams::StreamCounts::default(),
            session_streams: Arc::default(),
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

/// What the front does with the requests it accepts: a cluster follower forwards them to the
/// leader; a server answers them.
pub enum Mode {
    Forward(Forward),
    /// A cluster follower with a replica of the store: the reads its route table allows
    /// ([`routes::Route::replica_reads`]) are answered from the replica while it is fresh; the
    /// rest are forwarded, and a forwarded answer waits until the replica holds the batch the
    /// leader answered after (read-your-writes).
    Replica {
        state: Arc<AppState>,
        forward: Forward,
        replica: Arc<dyn ReplicaReads>,
    },
    Serve(Arc<AppState>),
}

/// What the front asks of a follower's replica.
pub trait ReplicaReads: Send + Sync {
    /// Whether reads may be answered from it now (within the staleness bound, and holding
    /// every write this node acknowledged).
    fn fresh(&self) -> bool;
    /// Waits (bounded) until it holds batch `lsn`.
    fn wait_for(&self, lsn: u64) -> BoxFuture<'_, ()>;
}

/// A cluster follower's forwarding: the request as it came, answered by the leader.
pub type Forward = Arc<dyn Fn(SocketAddr, Request<Incoming>) -> BoxFuture<'static, Response<Forwarded>> + Send + Sync>;
/// A forwarded answer's body: the leader's, passed through as it arrives, or the follower's own
/// (503 while no leader answers).
pub type Forwarded = http_body_util::Either<Incoming, http_body_util::Full<Bytes>>;
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// The HTTP front: one accept loop under the connection rules (see [`conn`]), whatever the
/// node does with the requests. Its [`Mode`] can change while connections stay open: a follower
/// that is elected answers on the connections it was forwarding from (none is closed under a
/// client that is sending a request).
pub struct Front {
    addr: SocketAddr,
    mode: Arc<arc_swap::ArcSwap<Mode>>,
    gate: Arc<conn::Gate>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<TcpListener>,
}

impl Front {
    /// Starts accepting on `listener` (over TLS with `tls`), counting connections in `metrics`.
    pub fn start(
        listener: TcpListener,
        mode: Mode,
        limits: conn::Limits,
        metrics: Arc<conn::ConnMetrics>,
        tls: Option<Arc<Tls>>,
    ) -> std::io::Result<Front> {
        let addr = listener.local_addr()?;
        let gate = Arc::new(conn::Gate::new(limits, metrics));
        let mode = Arc::new(arc_swap::ArcSwap::from_pointee(mode));
        let (stop, stop_rx) = watch::channel(false);
        let current = mode.clone();
        let task = tokio::spawn(accept(listener, gate.clone(), stop_rx, tls, move |peer, req| {
            let mode = current.load_full();
            async move {
                match &*mode {
                    Mode::Serve(state) => {
                        handle(state.clone(), peer, req).await.map(|r| r.map(http_body_util::Either::Left))
                    }
                    Mode::Forward(forward) => {
                        let from_a_node = req.headers().contains_key(crate::cluster::NODE_HEADER);
                        let mut res = forward(peer, req).await;
                        leader_batch(&mut res, from_a_node);
                        Ok(res.map(http_body_util::Either::Right))
                    }
                    Mode::Replica { state, forward, replica } => {
                        // A request another node forwarded here (it takes this node for the
                        // leader: a failover is under way) is passed on, with the leader's
                        // batch, so that the node it came from keeps its promise.
                        let from_a_node = req.headers().contains_key(crate::cluster::NODE_HEADER);
                        let local = !from_a_node
                            && routes::find(req.method(), req.uri().path()).is_ok_and(|(r, _)| r.replica_reads())
                            && replica.fresh();
                        if local {
                            return handle(state.clone(), peer, req).await.map(|r| r.map(http_body_util::Either::Left));
                        }
                        // A write's answer waits until the replica has its batch; a read's need
                        // not (the forwarder noted the batch: no local read goes back before it).
                        let write = !matches!(*req.method(), hyper::Method::GET | hyper::Method::HEAD);
                        let mut res = forward(peer, req).await;
                        if let Some(lsn) = leader_batch(&mut res, from_a_node).filter(|_| write) {
                            replica.wait_for(lsn).await;
                        }
                        Ok(res.map(http_body_util::Either::Right))
                    }
                }
            }
        }));
        Ok(Front { addr, mode, gate, stop, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The connection counters (`/metrics` reports them).
    pub fn metrics(&self) -> Arc<conn::ConnMetrics> {
        self.gate.metrics.clone()
    }

    /// From now on this node answers reads from its replica and forwards the rest (a cluster
    /// follower whose store is a replica).
    pub fn replica(&self, state: Arc<AppState>, forward: Forward, replica: Arc<dyn ReplicaReads>) {
        self.mode.store(Arc::new(Mode::Replica { state, forward, replica }));
    }

    /// From now on this server answers every request, on the connections already open too.
    pub fn serve(&self, state: Arc<AppState>) {
        self.mode.store(Arc::new(Mode::Serve(state)));
    }

    /// Stops accepting, closes the connections gracefully and gives those in flight `grace` to
    /// finish.
    pub async fn close(self, grace: Duration) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        if tokio::time::timeout(grace, self.gate.drained()).await.is_err() {
            tracing::warn!(grace_secs = grace.as_secs(), "some connections were still busy at the shutdown deadline");
        }
    }
}

/// Accepts connections on `listener` within `gate`'s limits and deadlines (over TLS with
/// `tls`), each request answered by `handler` (which finds the connection in the request's
/// extensions, to mark it authenticated), until `stop` turns true; then the connections close
/// gracefully and the listener is handed back. [`Front`] runs it, in every mode.
async fn accept<H, F, B>(
    listener: TcpListener,
    gate: Arc<conn::Gate>,
    mut stop: watch::Receiver<bool>,
    tls: Option<Arc<Tls>>,
    handler: H,
) -> TcpListener
where
    H: Fn(SocketAddr, Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let accept_errors_logged = conn::Throttle::default();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning, and
                    // say so at most once a minute.
                    if accept_errors_logged.due() {
                        tracing::warn!(error = %e, "accept failed; backing off (logged at most once a minute)");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Some(conn) = gate.open(ratelimit::canonical(peer.ip())) else {
            continue; // over its address's cap: dropping the stream closes it
        };
        // Taken only for a connection that will be served: at the cap this may close an idle one.
        let permit = tokio::select! {
            p = gate.slot() => p,
            _ = stop.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let svc = {
            let (handler, conn) = (handler.clone(), conn.clone());
            hyper::service::service_fn(move |mut req: Request<Incoming>| {
                let in_flight = conn.request_started();
                req.extensions_mut().insert(conn.clone());
                let handled = handler(peer, req);
                async move { handled.await.map(|res| res.map(|body| conn::Tracked::new(body, in_flight))) }
            })
        };
        let (gate, builder, tls, mut stopping) = (gate.clone(), builder.clone(), tls.clone(), stop.clone());
        tokio::spawn(async move {
            let _permit = permit;
            // A closed channel means the server is going away too.
            let stop = async move {
                let _ = stopping.wait_for(|stop| *stop).await;
            };
            match tls {
                None => {
                    let io = TokioIo::new(conn::Watched::new(stream, conn.clone()));
                    gate.supervise(&conn, builder.serve_connection(io, svc), stop).await;
                }
                Some(tls) => {
                    // The handshake runs in the connection's task, so a slow client cannot stall accepting.
                    let limit = gate.limits.tls_handshake_timeout;
                    let stream = match tokio::time::timeout(limit, tls.acceptor().accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(_)) => return,
                        Err(_) => return gate.metrics.closed(conn::Closed::TlsHandshakeTimeout),
                    };
                    let io = TokioIo::new(conn::Watched::new(stream, conn.clone()));
                    gate.supervise(&conn, builder.serve_connection(io, svc), stop).await;
                }
            }
        });
    }
    listener
}

/// The batch the leader names in a forwarded answer (`cluster::LSN_HEADER`). The header is
/// for nodes: it is taken off unless the request came from another node (which needs it).
fn leader_batch(res: &mut Response<Forwarded>, from_a_node: bool) -> Option<u64> {
    let v = match from_a_node {
        true => res.headers().get(crate::cluster::LSN_HEADER).cloned(),
        false => res.headers_mut().remove(crate::cluster::LSN_HEADER),
    };
    v?.to_str().ok()?.parse().ok()
}

/// Marks the request's connection authenticated when it carries one of `keys` (a cluster
/// follower's front, which forwards without reading anything else of the request).
pub fn authenticate_if_api_key(req: &Request<Incoming>, keys: &KeyRing) {
    if let Ok(Some(cred)) = auth::bearer(req) {
        if keys.authenticate(cred).is_some() {
            auth::authenticated(req);
        }
    }
}

/// Runs one request in its own task so that a panic becomes a 500, not a dropped connection.
async fn handle(state: Arc<AppState>, peer: SocketAddr, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let id = format!("{:x}", state.request_ids.fetch_add(1, Ordering::Relaxed));
    // The label comes from the route table, never from the path (which may hold a token).
    let found = routes::find(req.method(), req.uri().path());
    let label = found.as_ref().map_or(routes::UNMATCHED, |(r, _)| r.label);
    let route = found.as_ref().ok().map(|(r, _)| *r);
    let from_a_node = req.headers().contains_key(crate::cluster::NODE_HEADER);
    let mut res = match CatchUnwind(dispatch(&state, peer, req, found)).await {
        Ok(Ok(r)) if cfg!(debug_assertions) => as_declared(route, r),
        Ok(Ok(r)) => r,
        Ok(Err(e)) => wire::error_response(&e),
        Err(()) => {
            tracing::error!(request_id = %id, route = label, "handler panicked");
            wire::error_response(&ApiError::internal(&id))
        }
    };
    if from_a_node {
        // The forwarding follower holds the answer until its replica has this batch.
        res.headers_mut()
            .insert(crate::cluster::LSN_HEADER, hyper::header::HeaderValue::from(state.store.published_lsn()));
    }
    state.metrics.request(label, res.status().as_u16(), started.elapsed().as_secs_f64());
    tracing::debug!(request_id = %id, route = label, status = res.status().as_u16(), micros = started.elapsed().as_micros() as u64, "request");
    Ok(res)
}

/// In debug builds (every test run): an answer made from a type its route does not declare is
/// a bug, answered 500 and logged so that the test that provoked it fails.
fn as_declared(route: Option<&'static routes::Route>, res: Response<Body>) -> Response<Body> {
    let (Some(route), Some(wire::Answered(name))) = (route, res.extensions().get::<wire::Answered>()) else {
        return res;
    };
    if route.declares(res.status().as_u16(), name) {
        return res;
    }
    tracing::error!(route = route.label, answered = %name, status = res.status().as_u16(), "an answer of a type its route does not declare");
    wire::error_response(&ApiError::new(
        hyper::StatusCode::INTERNAL_SERVER_ERROR,
        "server-error",
        format!("{} answered {name} ({}), which its route does not declare", route.label, res.status().as_u16()),
    ))
}

/// Polls a handler, turning a panic into `Err(())`: the request gets a 500 and the connection
/// and the server go on. In place: a task spawned per request to catch it cost an allocation,
/// a copy of the whole handler future and a trip through the scheduler on every request.
struct CatchUnwind<F>(F);

impl<F: std::future::Future> std::future::Future for CatchUnwind<F> {
    type Output = Result<F::Output, ()>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        // SAFETY: the future is the only field and is never moved out (structural pinning).
        let inner = unsafe { self.map_unchecked_mut(|s| &mut s.0) };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(std::task::Poll::Ready(out)) => std::task::Poll::Ready(Ok(out)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(_) => std::task::Poll::Ready(Err(())),
        }
    }
}

async fn dispatch(
    state: &Arc<AppState>,
    peer: SocketAddr,
    req: Request<Incoming>,
    found: Result<(&'static routes::Route, Vec<String>), routes::Miss>,
) -> Result<Response<Body>, ApiError> {
    use routes::{Access, Op};
    let (route, params) = match found {
        Ok(f) => f,
        Err(routes::Miss::BadPath) => {
            return Err(ApiError::invalid(
                "request path is not valid UTF-8, or holds a control or bidirectional-control character",
            ))
        }
        Err(routes::Miss::Method(allow)) => return Err(ApiError::method_not_allowed(allow)),
        Err(routes::Miss::NotFound) => return Err(ApiError::not_found("no such route")),
    };
    // A cluster node forwarding its clients' requests holds one connection for many of them;
    // its tag (an HMAC under the shared key) authenticates the connection as the key would.
    if state.limiter.forwarded_by_a_node(req.headers()) {
        auth::authenticated(&req);
    }
    // Parameters come in the order the route's pattern names them.
    let p = |i: usize| params.get(i).map_or("", String::as_str);
    // A name no room can have names no room: answered before any handler could log it.
    if route.names_a_room() && crate::rooms::validate_name(p(0)).is_err() {
        return Err(ApiError::not_found("room not found"));
    }
    // Who may call the route is declared with it: the API key is checked here, once, for every
    // route that needs it (handlers of the others check their own credentials).
    let key = match route.access {
        Access::ApiKey => Some(auth::api_key(&req, &state.keys)?),
        Access::JanusEventHandler => Some(auth::basic_api_key(&req, &state.keys)?),
        Access::Metrics if !state.settings.metrics_public => Some(auth::api_key(&req, &state.keys)?),
        _ => None,
    };
    // The key of a route declared `ApiKey`, for the handlers that sign or name with it.
    let key = || {
        key.ok_or_else(|| {
            ApiError::new(
                hyper::StatusCode::INTERNAL_SERVER_ERROR,
                "server-error",
                "route declared without the API key",
            )
        })
    };
    match route.op {
        Op::Healthz => Ok(ops::healthz()),
        Op::Readyz => Ok(ops::readyz(state)),
        Op::Metrics => ops::metrics(state),
        Op::Backup => ops::backup(state).await,
        Op::OpenApi => Ok(wire::ok(&responses::Document(openapi::document()))),
        Op::Domain => ops::domain(state),
        Op::UpdateDomain => ops::update_domain(state, req).await,
        Op::BatchCreateRooms => rooms::batch_create(state, req).await,
        Op::BatchDeleteRooms => rooms::batch_delete(state, req, key()?).await,
        Op::ListRooms => rooms::list(state, &req),
        Op::CreateRoom => rooms::create(state, req).await,
        Op::GetRoom => rooms::get(state, p(0)),
        Op::UpdateRoom => rooms::update(state, req, p(0)).await,
        Op::DeleteRoom => rooms::delete(state, p(0), key()?).await,
        Op::Join => participants::join(state, req, peer, p(0)).await,
        Op::PreAuth => access::pre_auth(state, req, peer, p(0)).await,
        Op::Eject => participants::eject(state, req, p(0)).await,
        Op::UpdatePermissions => access::update_permissions(state, req, p(0)).await,
        Op::WaitingList => access::waiting(state, &req, p(0)),
        Op::WaitingDecide => access::decide(state, req, p(0)).await,
        Op::RoomPresence => presence::room(state, &req, p(0)),
        Op::SendAppMessage => call::send_app_message(state, req, p(0)).await,
        Op::GetSessionData => call::get_session_data(state, p(0)),
        Op::SetSessionData => call::set_session_data(state, req, p(0)).await,
        Op::Bans => participants::bans(state, &req, p(0)),
        Op::LiftBan => participants::lift_ban(state, p(0), p(1)).await,
        Op::Presence => presence::all(state, &req),
        Op::Heartbeat => participants::heartbeat(state, &req, p(0)).await,
        Op::Leave => participants::leave(state, &req, p(0)).await,
        Op::SessionStream => session_stream::stream(state, &req, p(0)).await,
        Op::RevokeTokens => tokens::revoke(state, req, key()?).await,
        Op::CreateToken => tokens::create(state, req, key()?).await,
        Op::ListTokens => tokens::list(state, &req),
        Op::ValidateToken => tokens::validate(state, &req, p(0)),
        Op::Events => events::list(state, &req).await,
        Op::EventStream => events::stream(state, &req, key()?),
        Op::CreateWebhook => webhooks::create(state, req).await,
        Op::ListWebhooks => webhooks::list(state),
        Op::GetWebhook => webhooks::get(state, p(0)),
        Op::UpdateWebhook => webhooks::update(state, req, p(0)).await,
        Op::DeleteWebhook => webhooks::delete(state, p(0)).await,
        Op::ReplayWebhook => webhooks::replay(state, req, p(0)).await,
        Op::WebhookAttempts => webhooks::attempts(state, p(0)),
        Op::ListMeetings => meetings::list(state, &req),
        Op::GetMeeting => meetings::get(state, p(0)),
        Op::MeetingParticipants => meetings::participants(state, &req, p(0)),
        #[cfg(feature = "test-clock")]
        Op::TestClock => ops::test_clock(state, req).await,
        #[cfg(feature = "test-clock")]
        Op::TestFaults => ops::test_faults(state, req).await,
        #[cfg(not(feature = "test-clock"))]
        Op::TestClock | Op::TestFaults => Err(ApiError::not_found("no such route")),
        Op::Janus => media::relay(state, req, p(0), p(1)).await,
        Op::JanusEvents => media::events(state, req).await,
        Op::Dashboard => Ok(crate::web::dashboard()),
        Op::Asset => crate::web::asset(p(0)).ok_or_else(|| ApiError::not_found("no such asset")),
        Op::RoomPage if crate::rooms::validate_name(p(0)).is_ok() => Ok(crate::web::room_page()),
        Op::RoomPage => Err(ApiError::not_found("no such route")),
    }
}

#[cfg(test)]
mod tests {
    use super::CatchUnwind;

    #[tokio::test]
    async fn a_handler_that_panics_becomes_an_error_and_others_go_on() {
        assert_eq!(CatchUnwind(async { 7 }).await, Ok(7));
        let panicked = CatchUnwind(async {
            tokio::task::yield_now().await;
            panic!("a handler bug");
        })
        .await;
        assert_eq!(panicked, Err(()));
        assert_eq!(CatchUnwind(async { 8 }).await, Ok(8), "the next request is served");
    }
}
