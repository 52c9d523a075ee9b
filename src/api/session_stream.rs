//! `GET /v1/sessions/:id/stream`: a session's view of its room, as SSE (ARCHITECTURE.md,
//! "Session streams").
//!
//! The first frame is a `presence` snapshot; then the room's frames (each encoded once by the
//! store's fan-out and shared by every stream of the room), and this session's own events
//! (its ejection, its departure: the stream then closes). In a large room the snapshot carries
//! the count and the latest joiners, and changes come as `presence-summary` frames a few times
//! a second.
//!
//! Memory per stream is bounded whatever the room's size: frames are shared, a snapshot's
//! participant list is shared between streams that take it at the same moment, and what a
//! reader has not taken yet is bounded by a byte budget ([`BUDGET`]); past it the stream drops
//! what comes and, once the reader has caught up, sends one fresh snapshot instead of the
//! backlog. Leases of sessions with a stream open are renewed for all of them at once
//! ([`run_background`]), not by one command per stream.
//!
//! Must not: build per-participant JSON values, or parse events.

use std::collections::HashMap;
use std::convert::Infallible;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Request, Response};
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use super::error::ApiError;
use super::presence::PresenceEntry;
use super::{AppState, Body};
use crate::events::EventKind;
use crate::sessions::{self, Session};
use crate::store::fanout::{self, sse_frame};
use crate::store::{Heartbeat, Heartbeats};

/// Bytes a stream may hold that its reader has not taken (frames are mostly shared; this
/// bounds what one slow reader can pin).
pub const BUDGET: usize = 256 * 1024;
/// Chunks a stream may hold that its reader has not taken.
const QUEUE: usize = 32;
/// Latest joiners in a large room's snapshot.
const LARGE_SNAPSHOT: usize = 20;
/// How often large rooms' summaries go out.
pub const SUMMARY_EVERY: Duration = Duration::from_millis(100);
/// Participant lists and session-data frames kept for streams opening at the same moment (rooms;
/// each list is at most the large-room threshold long, each frame at most 100 KB of data).
const SNAPSHOT_CACHE: usize = 64;
/// Sessions renewed per command.
const RENEW_CHUNK: usize = 5000;

/// Open session streams (for lease renewal), recently built participant lists and session-data
/// frames.
pub struct Registry {
    open: Mutex<HashMap<Arc<str>, usize>>,
    /// (admin or not, room) → (batch, second, count, list); `d:` + room → (batch, 0, 0, its
    /// session-data frame, empty when there is no data).
    lists: Mutex<lru::LruCache<Arc<str>, (u64, i64, u64, Bytes)>>,
}

impl Default for Registry {
    fn default() -> Registry {
        Registry {
            open: Mutex::default(),
            lists: Mutex::new(lru::LruCache::new(NonZeroUsize::new(SNAPSHOT_CACHE).unwrap_or(NonZeroUsize::MIN))),
        }
    }
}

impl Registry {
    fn hold(self: &Arc<Self>, id: &str) -> Held {
        if let Ok(mut open) = self.open.lock() {
            *open.entry(Arc::from(id)).or_default() += 1;
        }
        Held { reg: self.clone(), id: Arc::from(id) }
    }

    fn open_ids(&self) -> Vec<String> {
        self.open.lock().map(|o| o.keys().map(|k| k.to_string()).collect()).unwrap_or_default()
    }

    /// Sessions with a stream open.
    pub fn open_count(&self) -> usize {
        self.open.lock().map(|o| o.len()).unwrap_or(0)
    }
}

/// A stream's place in the registry; gone when the stream is.
struct Held {
    reg: Arc<Registry>,
    id: Arc<str>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Ok(mut open) = self.reg.open.lock() {
            if let Some(n) = open.get_mut(&self.id) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&self.id);
                }
            }
        }
    }
}

/// Renews the leases of every session with a stream open (one command per [`RENEW_CHUNK`]),
/// tells the streams of sessions that are gone, and sends large rooms' summaries; until
/// shutdown.
pub async fn run_background(state: Arc<AppState>) {
    let mut shutdown = state.shutdown.clone();
    let renew_every = Duration::from_millis(u64::try_from(state.settings.lease_ms / 3).unwrap_or(10_000).max(100));
    let mut renew = tokio::time::interval(renew_every);
    let mut summaries = tokio::time::interval(SUMMARY_EVERY);
    summaries.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = summaries.tick() => state.store.flush_summaries(state.clock.now_ms()),
            _ = renew.tick() => {
                let ids = state.session_streams.open_ids();
                for chunk in ids.chunks(RENEW_CHUNK) {
                    match state.store.submit_wait(Heartbeats { session_ids: chunk.to_vec() }).await {
                        Ok(gone) => {
                            for id in gone {
                                state.store.notify_session(&id, ended(&id));
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "renewing the leases of open streams failed; will retry"),
                    }
                }
            }
        }
    }
}

/// The frame a stream ends with when its session is gone (not an event: nothing is logged).
const ENDED: &str = "ended";

fn ended(id: &str) -> fanout::Frame {
    fanout::Frame {
        to: None,
        kind: Arc::from(ENDED),
        about: Some(Arc::from(id)),
        admin_only: false,
        bytes: sse_frame(ENDED, None, &json!({"session_id": id}).to_string()),
    }
}

/// `GET /v1/sessions/:id/stream`.
pub async fn stream(state: &Arc<AppState>, req: &Request<Incoming>, id: &str) -> Result<Response<Body>, ApiError> {
    let session = super::participants::session_auth(state, req, id)?;
    let cap = state.settings.max_streams_per_session;
    let slot = state.streams.take(&format!("session:{id}"), cap).ok_or_else(|| {
        super::participants::too_many(format!(
            "this session already has {cap} open streams; close one (or reconnect later)"
        ))
    })?;
    // The lease is renewed now (the next renewal of all open streams may be a while away).
    if !matches!(state.store.submit(Heartbeat { session_id: id.to_string() }).await?, Some(_)) {
        return Err(ApiError::not_found("no such session"));
    }
    let (tx, rx) = mpsc::channel(QUEUE);
    let queued = Arc::new(AtomicUsize::new(0));
    let drained = Arc::new(Drained::default());
    let out = Out { tx, queued: queued.clone(), lagging: false, drained: drained.clone() };
    let state = state.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let _held = state.session_streams.hold(&session.id);
        follow(&state, &session, out).await;
        state.store.unfollow_session(&session.id);
    });
    let mut r = Response::new(BudgetBody { rx, queued, drained }.boxed());
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// The stream's outgoing side, with its budget.
struct Out {
    tx: mpsc::Sender<Bytes>,
    queued: Arc<AtomicUsize>,
    /// Over budget: frames are dropped until the reader catches up, then a snapshot goes.
    lagging: bool,
    drained: Arc<Drained>,
}

/// Tells a lagging stream that its reader has taken (nearly) everything.
#[derive(Default)]
struct Drained {
    wanted: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl Out {
    /// Queues `b`, waiting for room (snapshots and the session's own events must arrive).
    async fn send(&self, b: Bytes) -> bool {
        self.queued.fetch_add(b.len(), Ordering::Relaxed);
        self.tx.send(b).await.is_ok()
    }

    /// Queues a room frame if the budget allows; otherwise starts lagging and drops it.
    fn offer(&mut self, b: &Bytes) -> bool {
        // The reader went away (its body was dropped): end, lagging or not, so the stream
        // stops renewing the session's lease.
        if self.tx.is_closed() {
            return false;
        }
        if self.lagging {
            return true;
        }
        if self.queued.load(Ordering::Relaxed) + b.len() > BUDGET {
            self.lagging = true;
            return true;
        }
        self.queued.fetch_add(b.len(), Ordering::Relaxed);
        match self.tx.try_send(b.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(b)) => {
                self.queued.fetch_sub(b.len(), Ordering::Relaxed);
                self.lagging = true;
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// The reader has taken (nearly) everything: a lagging stream may resume. (The body
    /// notifies on the same condition.)
    fn caught_up(&self) -> bool {
        self.queued.load(Ordering::Relaxed) < BUDGET / 4 && self.tx.max_capacity() - self.tx.capacity() < QUEUE / 2
    }
}

async fn follow(state: &AppState, me: &Session, mut out: Out) {
    // Follow the session's own ring first, then look at where it stands: a decision taken in
    // between is not missed.
    let mut own = state.store.follow_session(&me.id);
    let Some(entry) = state.store.session(&me.id) else {
        let _ = out.send(ended(&me.id).bytes).await;
        return;
    };
    let mut me = entry.session.clone();
    let mut shutdown = state.shutdown.clone();
    let mut ping = tokio::time::interval(Duration::from_secs(15));
    ping.tick().await;
    if entry.waiting {
        // In the lobby: nothing of the room, only the decision.
        if !out.send(access_frame(&me, "lobby")).await {
            return;
        }
        loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    let _ = out.send(sse_frame("shutdown", None, "{}")).await;
                    return;
                }
                _ = out.tx.closed() => return,
                _ = ping.tick() => {
                    if !out.offer(&Bytes::from_static(b": keep-alive\n\n")) {
                        return;
                    }
                }
                got = own.recv() => match got {
                    Ok(f) => {
                        if &*f.kind == EventKind::ParticipantJoined.as_str() {
                            // Admitted: the session is a full one now.
                            match state.store.session(&me.id) {
                                Some(e) if !e.waiting => me = e.session.clone(),
                                _ => return,
                            }
                            if !out.send(admitted_frame(state, &me).await).await || !out.send(f.bytes.clone()).await {
                                return;
                            }
                            break;
                        }
                        if !out.send(f.bytes.clone()).await || ends_me(&f.kind) {
                            return;
                        }
                    }
                    // Missed frames of its own: where does it stand now?
                    Err(RecvError::Lagged(_)) => match state.store.session(&me.id) {
                        None => {
                            let _ = out.send(ended(&me.id).bytes).await;
                            return;
                        }
                        Some(e) if !e.waiting => {
                            me = e.session.clone();
                            if !out.send(admitted_frame(state, &me).await).await {
                                return;
                            }
                            break;
                        }
                        Some(_) => {}
                    },
                    Err(RecvError::Closed) => return,
                }
            }
        }
    }
    let mut admin = me.can_admin_participants();
    // Subscribe first, then take the snapshot: nothing happens in between unseen.
    let (room_rx, mut large) = state.store.subscribe_room(&me.room);
    // `None` while lagging: a stream whose reader is behind does no work for the room until
    // the reader has caught up; then it subscribes again and sends a fresh snapshot.
    let mut room = Some(room_rx);
    if !send_snapshot(state, &me, large, admin, &out).await {
        return;
    }
    loop {
        tokio::select! {
            _ = shutdown.changed() => {
                let _ = out.send(sse_frame("shutdown", None, "{}")).await;
                return;
            }
            // The reader went away: nothing more to do (and no lease to renew).
            _ = out.tx.closed() => return,
            _ = ping.tick() => {
                if !out.offer(&Bytes::from_static(b": keep-alive\n\n")) {
                    return;
                }
            }
            got = own.recv() => match got {
                Ok(f) => {
                    if &*f.kind == EventKind::ParticipantUpdated.as_str() {
                        // Its permissions changed: it may have become (or stopped being) an
                        // admin, who sees hidden participants and the lobby: a fresh snapshot.
                        if let Some(e) = state.store.session(&me.id) {
                            me = e.session.clone();
                            let now_admin = me.can_admin_participants();
                            if now_admin != admin {
                                admin = now_admin;
                                out.lagging = true;
                            }
                        }
                    }
                    if !out.send(f.bytes.clone()).await || ends_me(&f.kind) {
                        return;
                    }
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
            _ = out.drained.notify.notified(), if room.is_none() => {}
            got = async {
                match room.as_mut() {
                    Some(r) => r.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let f = match got {
                    Ok(f) => f,
                    // Fell behind the room's ring: start again from a fresh snapshot.
                    Err(RecvError::Lagged(_)) => {
                        out.lagging = true;
                        room = None;
                        out.drained.wanted.store(true, Ordering::Release);
                        continue;
                    }
                    Err(RecvError::Closed) => return,
                };
                if f.about.as_deref() == Some(me.id.as_str()) || (f.admin_only && !admin) {
                    continue; // its own ring has it, or it is for the room's admins
                }
                if f.to.as_deref().is_some_and(|to| to != me.id.as_str()) {
                    continue; // a message for someone else
                }
                if f.is_resync() {
                    // The room left large mode, or someone was hidden or shown: a fresh snapshot.
                    large = state.store.is_large_room(&me.room);
                    out.lagging = true;
                } else {
                    if &*f.kind == "presence-summary" {
                        large = true;
                    }
                    // The stream ends after a room's deletion (the frame is queued unless the
                    // reader lags; the body ends once the queue is drained). Other endings in
                    // the room are someone else's.
                    if !out.offer(&f.bytes) || &*f.kind == EventKind::RoomDeleted.as_str() {
                        return;
                    }
                }
            }
        }
        if out.lagging && !out.caught_up() {
            // Behind: stop following the room until the reader has caught up (the body says
            // when; armed again in case it said so just before).
            room = None;
            out.drained.wanted.store(true, Ordering::Release);
            if out.caught_up() {
                out.drained.notify.notify_one();
            }
        }
        if out.lagging && out.caught_up() {
            out.lagging = false;
            if room.is_none() {
                let (r, l) = state.store.subscribe_room(&me.room);
                room = Some(r);
                large = l;
            }
            if !send_snapshot(state, &me, large, admin, &out).await {
                return;
            }
        }
    }
}

/// `access` `{"session_id", "room", "access": {"level"}}`: in the lobby, or admitted.
fn access_frame(me: &Session, level: &str) -> Bytes {
    sse_frame("access", None, &access(me, level).to_string())
}

fn access(me: &Session, level: &str) -> Value {
    json!({"session_id": me.id, "room": me.room, "access": {"level": level}})
}

/// `access` with level `full` for a knock just admitted; with Janus, its media credential
/// too (as a join's answer has it), once Janus has its token.
async fn admitted_frame(state: &AppState, me: &Session) -> Bytes {
    let mut v = access(me, "full");
    if let Some(j) = &state.janus {
        match j.admit(&me.room, &me.id).await {
            Ok(Some(c)) => v["janus"] = serde_json::to_value(c).unwrap_or(Value::Null),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, room = %me.room, "janus: could not admit a participant let in from the lobby; no media")
            }
        }
    }
    sse_frame("access", None, &v.to_string())
}

/// The event ends this session's stream.
fn ends_me(kind: &str) -> bool {
    kind == ENDED
        || matches!(
            EventKind::parse(kind),
            Some(EventKind::ParticipantLeft | EventKind::WaitingParticipantLeft | EventKind::RoomDeleted)
        )
}

/// `presence`: `{"session_id","room","will_eject_at","large","count","participants":[…]}`;
/// in a large room `participants` holds the latest joiners only. Participants hidden by
/// `hasPresence: false` are listed only to the room's admins.
async fn send_snapshot(state: &AppState, me: &Session, large: bool, admin: bool, out: &Out) -> bool {
    let now = state.clock.now_ms();
    let live = state.store.live();
    let (count, list) = if large {
        let mut v = Vec::with_capacity(4096);
        v.push(b'[');
        let newest = live
            .newest(&me.room, LARGE_SNAPSHOT * 2)
            .filter(|e| admin || sessions::has_presence(e.session.permissions.as_ref()))
            .take(LARGE_SNAPSHOT);
        for (i, e) in newest.enumerate() {
            if i > 0 {
                v.push(b',');
            }
            let media = super::presence::media_of(state, &e.session.id);
            let _ = serde_json::to_writer(&mut v, &PresenceEntry::of(&e.session, now, media));
        }
        v.push(b']');
        (live.present(&me.room), Bytes::from(v))
    } else {
        participants(state, &me.room, now, admin)
    };
    let head = format!(
        "event: presence\ndata: {{\"session_id\":{},\"room\":{},\"will_eject_at\":{},\"large\":{large},\"count\":{count},\"participants\":",
        json!(me.id),
        json!(me.room),
        json!(me.eject_at_ms.map(|m| m / 1000)),
    );
    if !(out.send(Bytes::from(head)).await && out.send(list).await && out.send(Bytes::from_static(b"}\n\n")).await) {
        return false;
    }
    // The meeting's session data as it is now, if it has some: a late joiner, or a stream that
    // fell behind, gets the state and then the changes after it.
    let data = session_data(state, &me.room);
    data.is_empty() || out.send(data).await
}

/// The room's `session-data` frame as the data is now (empty when the meeting has none), built
/// once per published batch and shared, like [`participants`], by the streams that take a
/// snapshot meanwhile: a room's streams resyncing together do not each decode up to 100 KB and
/// hold their own copy.
fn session_data(state: &AppState, room: &str) -> Bytes {
    let lsn = state.store.published_lsn();
    let key: Arc<str> = Arc::from(format!("d:{room}"));
    if let Ok(mut lists) = state.session_streams.lists.lock() {
        if let Some((l, _, _, b)) = lists.get(&key) {
            if *l == lsn {
                return b.clone();
            }
        }
    }
    let b = match state.store.session_data(room) {
        Ok(Some((meeting, data))) if !data.is_empty() => {
            crate::store::session_data_frame(room, &meeting, None, &data).bytes
        }
        _ => Bytes::new(),
    };
    if let Ok(mut lists) = state.session_streams.lists.lock() {
        lists.put(key, (lsn, 0, 0, b.clone()));
    }
    b
}

/// The whole room as a JSON array (without hidden participants unless for an admin), shared by
/// streams that ask within the same second and batch; with its length.
fn participants(state: &AppState, room: &str, now_ms: i64, admin: bool) -> (u64, Bytes) {
    let lsn = state.store.published_lsn();
    let second = now_ms / 1000;
    let key: Arc<str> = Arc::from(format!("{}{room}", if admin { "a:" } else { "p:" }));
    if let Ok(mut lists) = state.session_streams.lists.lock() {
        if let Some((l, s, n, b)) = lists.get(&key) {
            if *l == lsn && *s == second {
                return (*n, b.clone());
            }
        }
    }
    let live = state.store.live();
    let mut v = Vec::with_capacity(4096);
    v.push(b'[');
    let mut n = 0u64;
    let shown = live
        .members_after(room, None)
        .filter(|e| !e.session.is_over(now_ms))
        .filter(|e| admin || sessions::has_presence(e.session.permissions.as_ref()));
    for e in shown {
        if n > 0 {
            v.push(b',');
        }
        let media = super::presence::media_of(state, &e.session.id);
        let _ = serde_json::to_writer(&mut v, &PresenceEntry::of(&e.session, now_ms, media));
        n += 1;
    }
    v.push(b']');
    let b = Bytes::from(v);
    if let Ok(mut lists) = state.session_streams.lists.lock() {
        lists.put(key, (lsn, second, n, b.clone()));
    }
    (n, b)
}

/// The response body: chunks from the stream's queue, each taken off its budget.
struct BudgetBody {
    rx: mpsc::Receiver<Bytes>,
    queued: Arc<AtomicUsize>,
    drained: Arc<Drained>,
}

impl hyper::body::Body for BudgetBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(b)) => {
                let left = self.queued.fetch_sub(b.len(), Ordering::Relaxed) - b.len();
                if left < BUDGET / 4 && self.rx.len() < QUEUE / 2 && self.drained.wanted.swap(false, Ordering::AcqRel) {
                    self.drained.notify.notify_one();
                }
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::body::Body as _;

    #[tokio::test]
    async fn a_reader_that_takes_nothing_pins_at_most_the_budget() {
        let (tx, mut rx) = mpsc::channel(QUEUE);
        let queued = Arc::new(AtomicUsize::new(0));
        let mut out = Out { tx, queued: queued.clone(), lagging: false, drained: Arc::default() };
        // Frames of 10 KiB each: unique bytes, so nothing is shared.
        for _ in 0..1000 {
            assert!(out.offer(&Bytes::from(vec![b'x'; 10 * 1024])));
        }
        assert!(out.lagging, "past the budget the stream lags instead of queueing");
        assert!(queued.load(Ordering::Relaxed) <= BUDGET, "{} bytes queued", queued.load(Ordering::Relaxed));
        assert!(!out.caught_up());
        // Small frames: the count of chunks bounds them too.
        let (tx2, _rx2) = mpsc::channel(QUEUE);
        let mut small = Out { tx: tx2, queued: Arc::new(AtomicUsize::new(0)), lagging: false, drained: Arc::default() };
        for _ in 0..1000 {
            small.offer(&Bytes::from_static(b"event: x\ndata: {}\n\n"));
        }
        assert!(small.lagging);
        // The reader catches up: the stream may resume (with a fresh snapshot).
        let mut body = BudgetBody {
            rx: std::mem::replace(&mut rx, mpsc::channel(1).1),
            queued: queued.clone(),
            drained: out.drained.clone(),
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        while let Poll::Ready(Some(_)) = Pin::new(&mut body).poll_frame(&mut cx) {}
        assert_eq!(queued.load(Ordering::Relaxed), 0);
        assert!(out.caught_up());
    }

    #[tokio::test]
    async fn a_lagging_stream_whose_reader_went_away_ends() {
        let (tx, rx) = mpsc::channel(QUEUE);
        let mut out = Out { tx, queued: Arc::new(AtomicUsize::new(0)), lagging: false, drained: Arc::default() };
        for _ in 0..100 {
            out.offer(&Bytes::from(vec![b'x'; 10 * 1024]));
        }
        assert!(out.lagging && !out.caught_up());
        // The client disconnects: its body (the receiver) is dropped with bytes still queued.
        drop(rx);
        assert!(!out.offer(&Bytes::from_static(b": keep-alive\n\n")), "a ghost stream would renew its lease forever");
    }
}
