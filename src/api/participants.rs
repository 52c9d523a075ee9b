//! Participant-facing endpoints: join, session heartbeat / leave / stream, presence, eject,
//! and bans. Joins carry a meeting token (or none, for public rooms); session calls carry the
//! session secret as a bearer. Neither is ever logged or echoed.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;

use super::error::ApiError;
use super::requests;
use super::responses as R;
use super::wire::{self, ok};
use super::{auth, AppState, Body};
use crate::sessions::{self, Session, TokenCheck};
use crate::store::{Eject, Heartbeat, Join, JoinOutcome, Leave, LiftBan};
use crate::tokens;

/// Verifies a token as far as possible without state.
pub(super) fn check_token(state: &AppState, token: Option<&str>) -> TokenCheck {
    match token {
        None => TokenCheck::None,
        Some(t) => match tokens::verify(&state.keys, &state.domain_id(), t) {
            Ok(v) => TokenCheck::Valid { claims: Box::new(v.claims), token_id: v.token_id },
            Err(r) => TokenCheck::Invalid(r),
        },
    }
}

/// The per-address join limit. A trusted caller (a media server or app backend joining on
/// behalf of participants, with the API key) is not limited per address; a wrong key is
/// refused rather than ignored.
pub(super) fn join_gate(state: &AppState, req: &Request<Incoming>, peer: std::net::SocketAddr) -> Result<(), ApiError> {
    let trusted = match auth::bearer(req)? {
        Some(_) => {
            auth::api_key(&req, &state.keys)?;
            true
        }
        None => false,
    };
    let client = state.limiter.client(peer, req.headers());
    let limited = if trusted { Ok(()) } else { state.limiter.check(client) };
    if let Err(retry) = limited {
        state.metrics.join("rate_limited");
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limit-error",
            "too many join attempts from this address; retry later",
        );
        e.retry_after = Some(retry);
        return Err(e);
    }
    Ok(())
}

pub async fn join(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    peer: std::net::SocketAddr,
    room: &str,
) -> Result<Response<Body>, ApiError> {
    join_gate(state, &req, peer)?;
    let body: requests::Join = wire::read(state, req).await?;
    let token = body.token.as_deref().filter(|t| !t.is_empty());
    let user_name = body.user_name.as_deref();
    if let Some(n) = user_name {
        if !crate::properties::is_plain_text(n, 100) {
            return Err(ApiError::invalid("'user_name' must be at most 100 characters, without control characters"));
        }
    }
    let secret = tokens::random_hex(32);
    let request = Join {
        // A valid room name (the router refuses others with 404 before any handler runs).
        room: room.to_string(),
        token: check_token(state, token),
        user_name: user_name.map(String::from),
        session_id: uuid::Uuid::new_v4().to_string(),
        secret_digest: Sha256::digest(secret.as_bytes()).into(),
        leeway_s: state.settings.token_leeway_secs,
    };
    match state.store.submit(request).await? {
        JoinOutcome::Joined(s) => {
            state.metrics.join("admitted");
            // With Janus: the media credential (without it if Janus cannot be reached: the join
            // stands, and the log says why there is no media).
            let janus = match &state.janus {
                Some(j) => match j.admit(&s.room, &s.id).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(error = %e, room = %s.room, "janus: could not admit a participant; joined without media");
                        None
                    }
                },
                None => None,
            };
            Ok(ok(&R::Joined {
                session: s.view(),
                session_secret: secret,
                lease_seconds: state.settings.lease_ms / 1000,
                access: R::AccessLevel { level: R::Level::Full },
                awaiting_access: None,
                janus,
            }))
        }
        JoinOutcome::Waiting(s) => {
            state.metrics.join("knocked");
            Ok(ok(&R::Joined {
                session: s.waiting_view(),
                session_secret: secret,
                lease_seconds: state.settings.lease_ms / 1000,
                access: R::AccessLevel { level: R::Level::Lobby },
                awaiting_access: Some(R::AccessLevel { level: R::Level::Full }),
                janus: None,
            }))
        }
        JoinOutcome::Denied(d) => {
            state.metrics.join(d.error);
            Err(d.into())
        }
    }
}

/// The session named in the path, if the bearer is its secret.
pub(super) fn session_auth(state: &AppState, req: &Request<Incoming>, id: &str) -> Result<Session, ApiError> {
    let secret = auth::bearer(req)?
        .ok_or_else(|| ApiError::unauthenticated("missing Authorization header with the session secret"))?;
    let entry = state.store.session(id).ok_or_else(|| ApiError::not_found("no such session"))?;
    let presented: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    if !bool::from(presented.ct_eq(&entry.digest)) {
        return Err(ApiError::unauthenticated("the session secret is not valid"));
    }
    // The connection still counts toward its address's cap: anyone can get a session secret
    // (a public room, a knock), so it proves nothing about who holds the connection.
    Ok(entry.session.clone())
}

pub async fn heartbeat(state: &Arc<AppState>, req: &Request<Incoming>, id: &str) -> Result<Response<Body>, ApiError> {
    session_auth(state, req, id)?;
    match state.store.submit(Heartbeat { session_id: id.to_string() }).await? {
        Some(lease_until_ms) => Ok(ok(&R::Lease { lease_until: lease_until_ms / 1000 })),
        None => Err(ApiError::not_found("no such session")),
    }
}

pub async fn leave(state: &Arc<AppState>, req: &Request<Incoming>, id: &str) -> Result<Response<Body>, ApiError> {
    session_auth(state, req, id)?;
    match state.store.submit(Leave { session_id: id.to_string() }).await? {
        true => Ok(ok(&R::Left { left: true, session_id: id.to_string() })),
        false => Err(ApiError::not_found("no such session")),
    }
}

/// 429 for a stream over its cap.
pub(super) fn too_many(info: String) -> ApiError {
    let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate-limit-error", info);
    e.retry_after = Some(5);
    e
}

/// A response body fed by a channel: each message is one SSE chunk.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}

pub(super) fn sse_response(rx: mpsc::Receiver<Bytes>) -> Response<Body> {
    let mut r = Response::new(ChannelBody(rx).boxed());
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub(super) fn sse(kind: &str, id: Option<u64>, data: &str) -> Bytes {
    crate::store::fanout::sse_frame(kind, id, data)
}

/// Who may eject in `room`: an API key, or a meeting token for that room that passes every
/// join check and may administer participants.
fn eject_authority(state: &AppState, req: &Request<Incoming>, room: &str) -> Result<(String, bool), ApiError> {
    let cred = auth::bearer(req)?.ok_or_else(|| ApiError::unauthenticated("missing Authorization header"))?;
    if let Some(key) = state.keys.authenticate(cred) {
        auth::authenticated(req);
        return Ok((super::auth::actor(key), false));
    }
    if cred.split('.').count() != 3 {
        return Err(ApiError::unauthenticated("the credential is neither an API key nor a meeting token"));
    }
    let forbidden = |why: &str| ApiError::new(StatusCode::FORBIDDEN, "forbidden-error", why);
    let v = tokens::verify(&state.keys, &state.domain_id(), cred)
        .map_err(|_| forbidden("the meeting token is not valid"))?;
    let c = &v.claims;
    if c.room.as_deref() != Some(room) {
        return Err(forbidden("the meeting token is not for this room"));
    }
    let now = state.clock.now_ms();
    if c.time_status(now, state.settings.token_leeway_secs, false) != tokens::TimeStatus::Valid {
        return Err(forbidden("the meeting token is expired or not valid yet"));
    }
    if state.store.is_revoked(c, &v.token_id, Some(room), now)? {
        return Err(forbidden("the meeting token has been revoked"));
    }
    if let Some(u) = &c.user_id {
        if state.store.is_banned(room, u, now)? {
            return Err(forbidden("the token's user is banned from this room"));
        }
    }
    // Permissions live on sessions: while the token has a session in the room, that
    // session's current permissions decide (update-permissions can grant or withdraw
    // canAdmin); without one, the token's own claims do, as they would for a new join, less
    // what update-permissions withdrew from an earlier session of the token (it sticks).
    let live: Vec<_> = state
        .store
        .live()
        .token_sessions(&v.token_id)
        .into_iter()
        .filter(|e| !e.waiting && e.session.room == room)
        .collect();
    let admin = c.is_owner
        || if live.is_empty() {
            c.can_admin_participants() && !state.store.admin_withdrawn(&v.token_id, now)?
        } else {
            live.iter().any(|e| e.session.can_admin_participants())
        };
    if !admin {
        return Err(forbidden("only an owner token, or one with canAdmin 'participants', may do this"));
    }
    Ok((format!("token:{}", tokens::short_id(&v.token_id)), true))
}

/// The caller may administer `room`'s participants: the API key, or a token of the room's that
/// passes every join check and is an owner's or has `canAdmin: participants`.
pub(super) fn room_admin(state: &AppState, req: &Request<Incoming>, room: &str) -> Result<(String, bool), ApiError> {
    eject_authority(state, req, room)
}

fn id_list(v: Option<&Value>, name: &str) -> Result<Vec<String>, ApiError> {
    let bad = || {
        ApiError::invalid(format!(
            "'{name}' must be an array of at most {} strings of at most 255 characters without control characters",
            sessions::MAX_EJECT_IDS
        ))
    };
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) if a.len() <= sessions::MAX_EJECT_IDS => a
            .iter()
            .map(|v| v.as_str().filter(|s| crate::properties::is_plain_text(s, 255)).map(String::from).ok_or_else(bad))
            .collect(),
        Some(_) => Err(bad()),
    }
}

pub async fn eject(state: &Arc<AppState>, req: Request<Incoming>, room: &str) -> Result<Response<Body>, ApiError> {
    let (by, by_token) = eject_authority(state, &req, room)?;
    let body: requests::Eject = wire::read(state, req).await?;
    let ids = id_list(body.ids.as_ref(), "ids")?;
    let user_ids = id_list(body.user_ids.as_ref(), "user_ids")?;
    let ban = match &body.ban {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::invalid("'ban' must be true or false")),
    };
    let ban_until_s = match &body.ban_until {
        None | Some(Value::Null) => None,
        Some(v) => {
            let now = state.clock.now_secs();
            // Any JSON number, kept as whole seconds (like every unix time the API takes).
            let secs = v.as_f64().filter(|t| t.is_finite()).map(f64::trunc);
            match secs {
                Some(t) if t > now as f64 && t <= crate::properties::MAX_UNIX_SECS as f64 => Some(t as i64),
                _ => return Err(ApiError::invalid("'ban_until' must be a future unix time in seconds")),
            }
        }
    };
    // The writer answers 404 for a room that is gone (or expired), in order with deletions.
    let max_bans = state.settings.max_bans_per_room;
    let request = Eject { room: room.to_string(), ids, user_ids, ban, ban_until_s, by, by_token, max_bans };
    let ids = state.store.submit(request).await??;
    Ok(ok(&R::Ejected { ejected_ids: ids }))
}

/// Most bans one page of `GET /v1/rooms/:name/bans` holds.
pub const MAX_BANS_PAGE: i64 = 1000;

/// `GET /v1/rooms/:name/bans?limit=&starting_after=<user id>`: the bans in force, in user id
/// order, a page at a time (default 100).
pub fn bans(state: &Arc<AppState>, req: &Request<Incoming>, room: &str) -> Result<Response<Body>, ApiError> {
    let q = wire::query(req)?;
    let limit = wire::int_param(&q, "limit", 1, MAX_BANS_PAGE)?.unwrap_or(100) as usize;
    let all = state.store.bans(room, state.clock.now_ms())?;
    let from = match q.get("starting_after").filter(|s| !s.is_empty()) {
        Some(after) => all.partition_point(|(user, _)| user.as_str() <= after.as_str()),
        None => 0,
    };
    let to = from.saturating_add(limit).min(all.len());
    let data = all[from..to]
        .iter()
        .map(|(user, b)| R::Ban {
            user_id: user.clone(),
            until: b.until_ms.map(|m| m / 1000),
            created_at: crate::clock::rfc3339_ms(b.created_ms),
            by: b.by.clone(),
        })
        .collect();
    Ok(ok(&R::BanList { total_count: all.len() as u64, data, has_more: to < all.len() }))
}

pub async fn lift_ban(state: &Arc<AppState>, room: &str, user_id: &str) -> Result<Response<Body>, ApiError> {
    match state.store.submit(LiftBan { room: room.to_string(), user_id: user_id.to_string() }).await? {
        true => Ok(ok(&R::BanLifted { deleted: true, room: room.to_string(), user_id: user_id.to_string() })),
        false => Err(ApiError::not_found("no such ban")),
    }
}
