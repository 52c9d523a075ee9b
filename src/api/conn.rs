//! Connections: accepting them within limits, and closing the ones that stall.
//!
//! A public endpoint must survive clients that open connections and never finish with them
//! (slowloris, slow POST, idle keep-alive). Every phase of a connection has a deadline:
//! - the TLS handshake;
//! - a request's head, from its first byte ([`Limits::head_timeout`]);
//! - a request's body, read by the handler under [`Limits::body_timeout`] (`wire::read_body`);
//! - idle time between requests ([`Limits::idle_timeout`]).
//!
//! A connection with a request in flight (a handler running, or a response still streaming: an
//! SSE stream, a long-poll, a backup) is exempt from the head and idle deadlines.
//!
//! Limits: at most [`Limits::max_connections`] open at once. At the cap, a new connection is
//! admitted by closing the connection idle longest between requests (as nginx reuses its idle
//! keep-alives: a client whose idle connection closes retries on a new one), so a client that
//! leaks keep-alives cannot lock others out; a connection with a request in flight, or that has
//! not made one yet, is never closed for it. Only when none is idle does the server stop
//! accepting until one closes or goes idle, and say so in the log at most once a minute. At most
//! [`Limits::max_unauthenticated_per_address`] connections per client address that have not yet
//! made a request with the API key (or, in cluster mode, a node's tag). Session and lobby
//! secrets do not lift the cap: anyone can get one by joining a public room or knocking.
//! Connections from trusted proxies are exempt from the per-address cap: behind a proxy every
//! client shares its address.
//!
//! Must not: read request contents; handlers mark a connection authenticated through
//! [`Conn::authenticated`], found in the request's extensions.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// How long a connection closed to make room gets to finish (an HTTP/2 client answers the
/// GOAWAY's ping) before it is dropped: the newcomer it makes room for waits meanwhile.
const RECLAIM_GRACE: Duration = Duration::from_secs(1);

/// The connection settings (all configurable; see `config`).
#[derive(Debug, Clone)]
pub struct Limits {
    pub head_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    pub max_connections: usize,
    pub max_unauthenticated_per_address: usize,
    pub trusted_proxies: Vec<IpAddr>,
}

/// Why the server closed a connection, for metrics and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    HeadTimeout,
    IdleTimeout,
    BodyTimeout,
    TlsHandshakeTimeout,
    /// Idle between requests at the cap, closed to admit a new connection.
    ReclaimedIdle,
}

/// Connection counters for `/metrics`.
#[derive(Debug, Default)]
pub struct ConnMetrics {
    pub open: AtomicU64,
    pub accepted: AtomicU64,
    /// Connections closed at once because their address had too many unauthenticated ones.
    pub refused_per_address: AtomicU64,
    /// Times the accept loop had to wait for a free slot (every slot taken, none idle).
    pub waited_for_slot: AtomicU64,
    pub head_timeouts: AtomicU64,
    pub idle_timeouts: AtomicU64,
    pub body_timeouts: AtomicU64,
    pub tls_handshake_timeouts: AtomicU64,
    pub reclaimed_idle: AtomicU64,
}

impl ConnMetrics {
    pub fn closed(&self, why: Closed) {
        let c = match why {
            Closed::HeadTimeout => &self.head_timeouts,
            Closed::IdleTimeout => &self.idle_timeouts,
            Closed::BodyTimeout => &self.body_timeouts,
            Closed::TlsHandshakeTimeout => &self.tls_handshake_timeouts,
            Closed::ReclaimedIdle => &self.reclaimed_idle,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Unauthenticated connections per client address. Entries exist only while such connections
/// are open, so the map is bounded by the connection cap.
#[derive(Debug, Default)]
pub struct PerAddress {
    /// A std Mutex: nothing is awaited while it is held.
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerAddress {
    /// Counts one more unauthenticated connection from `ip`, unless it is at `cap`.
    fn admit(&self, ip: IpAddr, cap: usize) -> bool {
        let Ok(mut m) = self.open.lock() else { return true };
        let n = m.entry(ip).or_insert(0);
        if *n >= cap {
            if *n == 0 {
                m.remove(&ip);
            }
            return false;
        }
        *n += 1;
        true
    }

    fn release(&self, ip: IpAddr) {
        let Ok(mut m) = self.open.lock() else { return };
        if let Some(n) = m.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}

/// Connections idle between requests, longest idle first: the ones closed to admit new
/// connections at the cap. A connection joins at the back each time its last request finishes.
/// Entries stay when their connection gets busy again or closes (removing them would cost a
/// search on every request); they are recognised as stale and dropped when they reach the front,
/// and by a sweep of the whole queue once it holds twice as many entries as connections can be
/// open, so each entry costs O(1) amortised and the queue stays bounded.
struct IdleQueue {
    /// (the connection's idle count when it was queued, the connection). A std Mutex: nothing
    /// is awaited while it is held.
    entries: Mutex<VecDeque<(u64, Weak<Conn>)>>,
    sweep_at: usize,
    /// Wakes a paused accept loop: a connection went idle.
    went_idle: Notify,
    /// The accept loop is paused, every slot taken and none idle.
    paused: AtomicBool,
    /// Wakes the accept loop: the connection it asked to close got a request first and stays.
    declined: Notify,
}

impl IdleQueue {
    fn new(max_connections: usize) -> IdleQueue {
        IdleQueue {
            entries: Mutex::default(),
            sweep_at: max_connections.saturating_mul(2).max(64),
            went_idle: Notify::new(),
            paused: AtomicBool::new(false),
            declined: Notify::new(),
        }
    }

    /// `conn` went idle (for the `epoch`th time).
    fn push(&self, epoch: u64, conn: Weak<Conn>) {
        if let Ok(mut q) = self.entries.lock() {
            while q.front().is_some_and(|e| idle_conn(e).is_none()) {
                q.pop_front();
            }
            if q.len() >= self.sweep_at {
                q.retain(|e| idle_conn(e).is_some());
            }
            q.push_back((epoch, conn));
        }
        if self.paused.load(Ordering::SeqCst) {
            self.went_idle.notify_one();
        }
    }

    /// Asks the connection idle longest to close; false when none is idle.
    fn reclaim_longest(&self) -> bool {
        let Ok(mut q) = self.entries.lock() else { return false };
        while let Some(entry) = q.pop_front() {
            if let Some(conn) = idle_conn(&entry) {
                conn.reclaim.notify_one();
                return true;
            }
        }
        false
    }
}

/// An idle queue entry's connection, if it is still open and has stayed idle since.
fn idle_conn((epoch, conn): &(u64, Weak<Conn>)) -> Option<Arc<Conn>> {
    let conn = conn.upgrade()?;
    (conn.idle_epoch.load(Ordering::SeqCst) == *epoch && conn.is_idle()).then_some(conn)
}

/// One open connection's state, shared by its I/O wrapper, its requests and its watchdog.
pub struct Conn {
    ip: IpAddr,
    started: Instant,
    /// Requests whose response has not finished (handlers running, bodies streaming).
    in_flight: AtomicUsize,
    /// Millis since `started` when the current request's head began arriving (0: none).
    head_since_ms: AtomicU64,
    /// Millis since `started` of the last time the connection went idle.
    idle_since_ms: AtomicU64,
    /// Times the connection went idle after a request: an idle queue entry from an earlier
    /// time is stale.
    idle_epoch: AtomicU64,
    /// The client spoke HTTP/2 (its first bytes were the connection preface).
    http2: AtomicBool,
    /// Still counted against its address's unauthenticated cap.
    counted: AtomicBool,
    per_address: Arc<PerAddress>,
    idle: Arc<IdleQueue>,
    changed: Notify,
    /// The accept loop asks this connection to close and make room.
    reclaim: Notify,
}

impl Conn {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX).max(1)
    }

    /// The connection made an authenticated request: it no longer counts against its address.
    pub fn authenticated(&self) {
        if self.counted.swap(false, Ordering::Relaxed) {
            self.per_address.release(self.ip);
        }
    }

    /// A request's head was parsed and its handler starts.
    pub fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.head_since_ms.store(0, Ordering::SeqCst);
        self.changed.notify_one();
        InFlight(self.clone())
    }

    /// No request in flight and none arriving.
    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0 && self.head_since_ms.load(Ordering::SeqCst) == 0
    }

    /// Resolves when the accept loop asked this connection to make room and it is still idle.
    /// One that got a request meanwhile stays, and the accept loop picks another.
    async fn reclaimed(&self) {
        loop {
            self.reclaim.notified().await;
            if self.is_idle() {
                return;
            }
            self.idle.declined.notify_one();
        }
    }

    /// Bytes arrived: when nothing is in flight, they begin a new HTTP/1 request's head. Not on
    /// an HTTP/2 connection, where control frames (window updates, pings, settings) come and
    /// go between requests: a request there is in flight as soon as its headers are in, and a
    /// connection without one is idle (its idle deadline applies, and it can make room at the
    /// cap).
    fn bytes_read(&self) {
        if self.http2.load(Ordering::Relaxed) {
            return;
        }
        if self.in_flight.load(Ordering::SeqCst) == 0 && self.head_since_ms.load(Ordering::SeqCst) == 0 {
            self.head_since_ms.store(self.now_ms(), Ordering::SeqCst);
            self.changed.notify_one();
        }
    }

    /// Resolves when the connection has outstayed a deadline, with the reason.
    async fn watchdog(&self, limits: &Limits) -> Closed {
        loop {
            let notified = self.changed.notified();
            if self.in_flight.load(Ordering::SeqCst) > 0 {
                notified.await;
                continue;
            }
            let head = self.head_since_ms.load(Ordering::SeqCst);
            let (since, limit, why) = if head > 0 {
                (head, limits.head_timeout, Closed::HeadTimeout)
            } else {
                (self.idle_since_ms.load(Ordering::SeqCst), limits.idle_timeout, Closed::IdleTimeout)
            };
            let deadline = self.started + Duration::from_millis(since) + limit;
            if Instant::now() >= deadline {
                return why;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline.into()) => {}
                _ = notified => {}
            }
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.counted.load(Ordering::Relaxed) {
            self.per_address.release(self.ip);
        }
    }
}

/// Held by a request until its response (body included) is finished.
pub struct InFlight(Arc<Conn>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let c = &self.0;
        if c.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            c.idle_since_ms.store(c.now_ms(), Ordering::SeqCst);
            c.head_since_ms.store(0, Ordering::SeqCst);
            let epoch = c.idle_epoch.fetch_add(1, Ordering::SeqCst) + 1;
            c.idle.push(epoch, Arc::downgrade(c));
        }
        c.changed.notify_one();
    }
}

/// A log line's rate: at most once a minute.
#[derive(Default)]
pub struct Throttle(Mutex<Option<Instant>>);

impl Throttle {
    /// True at most once a minute.
    pub fn due(&self) -> bool {
        let Ok(mut last) = self.0.lock() else { return false };
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }
}

/// Decides whether a new connection is served, and sets up its state.
pub struct Gate {
    pub limits: Limits,
    pub metrics: Arc<ConnMetrics>,
    per_address: Arc<PerAddress>,
    /// One permit per open connection, held by its task until the connection is closed.
    slots: Arc<Semaphore>,
    idle: Arc<IdleQueue>,
    reclaiming_log: Throttle,
    paused_log: Throttle,
}

impl Gate {
    pub fn new(limits: Limits, metrics: Arc<ConnMetrics>) -> Gate {
        let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        let idle = Arc::new(IdleQueue::new(limits.max_connections));
        Gate {
            limits,
            metrics,
            per_address: Arc::default(),
            slots,
            idle,
            reclaiming_log: Throttle::default(),
            paused_log: Throttle::default(),
        }
    }

    /// A slot for a connection just accepted. At the cap, the connection idle longest between
    /// requests is asked to close, and its slot taken once it has; with none idle, this waits
    /// (and the accept loop with it: new clients queue in the kernel's backlog) until a
    /// connection closes or goes idle.
    pub async fn slot(&self) -> OwnedSemaphorePermit {
        let mut paused = false;
        loop {
            if let Ok(p) = self.slots.clone().try_acquire_owned() {
                return p;
            }
            // Registered before looking for an idle connection, so that none going idle in
            // between is missed.
            let mut went_idle = std::pin::pin!(self.idle.went_idle.notified());
            went_idle.as_mut().enable();
            self.idle.paused.store(true, Ordering::SeqCst);
            let reclaiming = self.idle.reclaim_longest();
            if reclaiming {
                self.idle.paused.store(false, Ordering::SeqCst);
                self.log_full(&self.reclaiming_log, "closing the connections idle longest to admit new ones");
            } else if !paused {
                paused = true;
                self.metrics.waited_for_slot.fetch_add(1, Ordering::Relaxed);
                self.log_full(&self.paused_log, "none is idle: not accepting until a connection closes or goes idle");
            }
            let freed = tokio::select! {
                p = self.slots.clone().acquire_owned() => p.ok(),
                () = self.idle.declined.notified(), if reclaiming => None,
                () = went_idle, if !reclaiming => None,
            };
            self.idle.paused.store(false, Ordering::SeqCst);
            if let Some(p) = freed {
                return p;
            }
        }
    }

    fn log_full(&self, throttle: &Throttle, what: &str) {
        if throttle.due() {
            tracing::warn!(
                max_connections = self.limits.max_connections,
                "connection limit reached: {what} (logged at most once a minute)"
            );
        }
    }

    /// Resolves once every connection has closed: every slot is free.
    pub async fn drained(&self) {
        let all = u32::try_from(self.limits.max_connections.max(1)).unwrap_or(u32::MAX);
        let _ = self.slots.acquire_many(all).await;
    }

    /// The new connection's state, or `None` when its address is at its unauthenticated cap.
    pub fn open(&self, ip: IpAddr) -> Option<Arc<Conn>> {
        let exempt = self.limits.trusted_proxies.contains(&ip);
        if !exempt && !self.per_address.admit(ip, self.limits.max_unauthenticated_per_address) {
            self.metrics.refused_per_address.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        self.metrics.accepted.fetch_add(1, Ordering::Relaxed);
        Some(Arc::new(Conn {
            ip,
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            head_since_ms: AtomicU64::new(0),
            idle_since_ms: AtomicU64::new(0),
            idle_epoch: AtomicU64::new(0),
            http2: AtomicBool::new(false),
            counted: AtomicBool::new(!exempt),
            per_address: self.per_address.clone(),
            idle: self.idle.clone(),
            changed: Notify::new(),
            reclaim: Notify::new(),
        }))
    }

    /// Runs `http` (the connection's hyper future) until it ends. A connection that outstays a
    /// deadline is dropped. One asked to make room, or still open when `stop` resolves (the
    /// server is stopping), is finished through hyper's graceful shutdown: an HTTP/1 connection
    /// closes once the response in progress is sent, an HTTP/2 one gets a GOAWAY.
    pub async fn supervise<C: GracefulConnection>(&self, conn: &Conn, http: C, stop: impl Future<Output = ()>) {
        self.metrics.open.fetch_add(1, Ordering::Relaxed);
        let mut http = std::pin::pin!(http);
        let finish_within = tokio::select! {
            _ = http.as_mut() => None,
            why = conn.watchdog(&self.limits) => {
                self.stalled(why);
                None
            }
            () = conn.reclaimed() => {
                self.metrics.closed(Closed::ReclaimedIdle);
                Some(RECLAIM_GRACE)
            }
            // The server's shutdown grace bounds this one.
            () = stop => Some(Duration::MAX),
        };
        if let Some(within) = finish_within {
            http.as_mut().graceful_shutdown();
            tokio::select! {
                _ = http => {}
                why = conn.watchdog(&self.limits) => self.stalled(why),
                () = tokio::time::sleep(within) => {}
            }
        }
        self.metrics.open.fetch_sub(1, Ordering::Relaxed);
    }

    fn stalled(&self, why: Closed) {
        self.metrics.closed(why);
        tracing::debug!(reason = ?why, "closing a stalled connection");
    }
}

/// A connection's byte stream, telling its [`Conn`] when bytes arrive.
pub struct Watched<S> {
    inner: S,
    conn: Arc<Conn>,
    /// Nothing read yet (the first bytes tell HTTP/2 from HTTP/1).
    first: bool,
}

impl<S> Watched<S> {
    pub fn new(inner: S, conn: Arc<Conn>) -> Self {
        Watched { inner, conn, first: true }
    }
}

/// How an HTTP/2 connection begins (RFC 9113, 3.4), as far as an HTTP/1 request cannot.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            if std::mem::take(&mut self.first) {
                let got = &buf.filled()[before..];
                let n = got.len().min(HTTP2_PREFACE.len());
                if got[..n] == HTTP2_PREFACE[..n] {
                    self.conn.http2.store(true, Ordering::Relaxed);
                }
            }
            self.conn.bytes_read();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A response body that keeps its request counted as in flight until it is finished or dropped.
pub struct Tracked<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    pub fn new(inner: B, in_flight: InFlight) -> Self {
        Tracked { inner, _in_flight: in_flight }
    }
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_address_cap_counts_and_releases() {
        let p = PerAddress::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(p.admit(ip, 2) && p.admit(ip, 2));
        assert!(!p.admit(ip, 2));
        p.release(ip);
        assert!(p.admit(ip, 2));
        p.release(ip);
        p.release(ip);
        assert!(p.open.lock().unwrap().is_empty(), "entries go when their last connection does");
    }

    fn gate(max_connections: usize) -> Gate {
        let limits = Limits {
            head_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            tls_handshake_timeout: Duration::from_secs(10),
            max_connections,
            max_unauthenticated_per_address: 1000,
            trusted_proxies: Vec::new(),
        };
        Gate::new(limits, Arc::default())
    }

    /// Whether the accept loop asked `c` to close (consuming the request).
    async fn asked(c: &Conn) -> bool {
        tokio::time::timeout(Duration::ZERO, c.reclaim.notified()).await.is_ok()
    }

    #[tokio::test]
    async fn the_longest_idle_is_reclaimed_never_a_busy_closed_or_fresh_one() {
        let g = gate(16);
        let open = || g.open("10.0.0.1".parse().unwrap()).unwrap();
        let (busy, closed, older, newer, fresh) = (open(), open(), open(), open(), open());
        for c in [&busy, &closed, &older, &newer] {
            drop(c.request_started());
        }
        let _in_flight = busy.request_started();
        drop(closed);
        assert!(g.idle.reclaim_longest());
        assert!(asked(&older).await && !asked(&newer).await);
        assert!(g.idle.reclaim_longest());
        assert!(asked(&newer).await);
        assert!(!g.idle.reclaim_longest(), "each idle spell is reclaimed once");
        assert!(!asked(&busy).await && !asked(&fresh).await);
    }

    #[test]
    fn the_idle_queue_stays_bounded_behind_a_long_idle_connection() {
        let g = gate(16);
        let open = || g.open("10.0.0.1".parse().unwrap()).unwrap();
        let (long_idle, busy) = (open(), open());
        drop(long_idle.request_started());
        for _ in 0..10_000 {
            drop(busy.request_started());
        }
        let len = g.idle.entries.lock().unwrap().len();
        assert!(len <= g.idle.sweep_at, "{len} entries");
    }
}
