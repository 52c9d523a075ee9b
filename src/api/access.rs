//! The rest of Daily's access control: knock-to-join (the lobby of a private room with
//! `enable_knocking`) and live permission changes.
//!
//! - `POST /v1/rooms/:name/pre-auth` (public): what a join would get now — `full`, `lobby` or
//!   `none` (daily-js `preAuth`), so a page can offer "Ask to join" before knocking.
//! - `GET /v1/rooms/:name/waiting-participants`: who waits (daily-js `waitingParticipants`).
//! - `POST /v1/rooms/:name/waiting-participants` `{"<id>"|"*": {"grantRequestedAccess": bool}}`
//!   (daily-js `updateWaitingParticipants`): admit or deny.
//! - `POST /v1/rooms/:name/update-permissions` `{"data": {"<id>"|"*": {...}}}` (Daily's REST).
//!
//! The last three take the API key, or a token of the room that passes every join check and
//! is an owner's or has `canAdmin: participants`.
//!
//! Must not: decide anything the writer decides (a grant re-runs the join decision there).

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::Value;

use super::error::ApiError;
use super::participants::{check_token, join_gate, room_admin};
use super::requests;
use super::responses as R;
use super::wire::{self, ok};
use super::{AppState, Body};
use crate::sessions::{self, JoinFacts, TokenCheck};
use crate::store::{DecideWaiting, PermissionsError, UpdatePermissions, Waiting, WaitingError};

/// Most entries in one `update-permissions` or waiting-participants body.
const MAX_TARGETS: usize = 1000;

/// `POST /v1/rooms/:name/pre-auth` `{"token"?}` → `{"room", "access": {"level"}}`, plus
/// `error`/`info` when the level is `none`. Counts toward the per-address join limit.
pub async fn pre_auth(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    peer: std::net::SocketAddr,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    join_gate(state, &req, peer)?;
    let body: requests::PreAuth = wire::read(state, req).await?;
    let token = check_token(state, body.token.as_deref().filter(|t| !t.is_empty()));
    let room = state.store.room(name)?;
    let now = state.clock.now_ms();
    // The same facts a join would be judged on now (revocations, bans, who is present).
    let (revoked, banned) = match &token {
        TokenCheck::Valid { claims, token_id } => (
            state.store.is_revoked(claims, token_id, Some(name), now)?,
            match &claims.user_id {
                Some(u) => state.store.is_banned(name, u, now)?,
                None => false,
            },
        ),
        _ => (false, false),
    };
    let facts = JoinFacts {
        now_ms: now,
        leeway_s: state.settings.token_leeway_secs,
        room: room.as_ref(),
        token: &token,
        revoked,
        banned,
        present: state.store.live().present(name),
    };
    let knocks = room.as_ref().is_some_and(sessions::room_knocks);
    let token_knocks = matches!(&token, TokenCheck::Valid { claims, .. }
        if !claims.is_owner && claims.ui.get("knocking") == Some(&Value::Bool(true)));
    let (level, why) = match sessions::decide_join(&facts) {
        Ok(()) if knocks && token_knocks => (R::Level::Lobby, None),
        Ok(()) => (R::Level::Full, None),
        Err(d) if d.error == "no-room" => return Err(ApiError::new(StatusCode::NOT_FOUND, d.error, d.info)),
        Err(d) if knocks && d.detail == "private_room" => (R::Level::Lobby, None),
        Err(d) => (R::Level::None, Some(d)),
    };
    Ok(ok(&R::Access {
        room: name.to_string(),
        access: R::AccessLevel { level },
        error: why.as_ref().map(|d| d.error.to_string()),
        info: why.map(|d| d.info),
    }))
}

/// `GET /v1/rooms/:name/waiting-participants` → `{"total_count", "data": [{"id", "name",
/// "user_id", "joined_at", "awaitingAccess": {"level": "full"}}]}` in arrival order.
pub fn waiting(state: &Arc<AppState>, req: &Request<Incoming>, room: &str) -> Result<Response<Body>, ApiError> {
    room_admin(state, req, room)?;
    if state.store.room(room)?.is_none() {
        return Err(ApiError::not_found("room not found"));
    }
    let data: Vec<R::Waiting> = state
        .store
        .waiting_sessions(room)
        .iter()
        .map(|e| R::Waiting {
            id: e.session.id.clone(),
            name: e.session.user_name.clone().unwrap_or_default(),
            user_id: e.session.user_id.clone(),
            joined_at: e.session.joined_ms / 1000,
            awaiting_access: R::AccessLevel { level: R::Level::Full },
        })
        .collect();
    Ok(ok(&R::WaitingList { total_count: data.len() as u64, data }))
}

/// `POST /v1/rooms/:name/waiting-participants`: `{"<session id>": {"grantRequestedAccess":
/// true|false}, "*": {...}}` → `{"ids", "granted", "denied", "refused": [{"id", "error",
/// "info"}]}`. A named id that is not waiting in this room is a 404 and nothing changes.
pub async fn decide(state: &Arc<AppState>, req: Request<Incoming>, room: &str) -> Result<Response<Body>, ApiError> {
    let (by, _) = room_admin(state, &req, room)?;
    let body = wire::read_object(state, req).await?;
    if body.is_empty() || body.len() > MAX_TARGETS {
        return Err(ApiError::invalid(format!(
            "the body must map 1 to {MAX_TARGETS} waiting participant ids (or \"*\") to {{\"grantRequestedAccess\": true|false}}"
        )));
    }
    let mut decisions = Vec::new();
    for (id, v) in &body {
        let grant = grant_of(id, v)?;
        let target = if id == "*" { Waiting::All } else { Waiting::Ids(vec![id.clone()]) };
        decisions.push((target, grant));
    }
    if state.store.room(room)?.is_none() {
        return Err(ApiError::not_found("room not found"));
    }
    let cmd = DecideWaiting { room: room.to_string(), decisions, by, leeway_s: state.settings.token_leeway_secs };
    match state.store.submit(cmd).await? {
        Ok(r) => {
            let mut ids: Vec<String> = r.granted.iter().chain(&r.denied).cloned().collect();
            ids.extend(r.refused.iter().map(|(id, _)| id.clone()));
            let refused = r
                .refused
                .into_iter()
                .map(|(id, d)| R::Refused { id, error: d.error.to_string(), info: d.info })
                .collect();
            Ok(ok(&R::WaitingDecided { ids, granted: r.granted, denied: r.denied, refused }))
        }
        Err(e @ WaitingError::NotWaiting(_)) => Err(ApiError::not_found(wire::clip_long(&e.to_string()))),
    }
}

fn grant_of(id: &str, v: &Value) -> Result<bool, ApiError> {
    let bad = || ApiError::invalid(format!("'{}' must be {{\"grantRequestedAccess\": true|false}}", wire::clip(id)));
    if id != "*" && !crate::properties::is_plain_text(id, 255) {
        return Err(ApiError::invalid(
            "a waiting participant id must be at most 255 characters, without control characters",
        ));
    }
    let o = v.as_object().ok_or_else(bad)?;
    if o.len() != 1 {
        return Err(bad());
    }
    o.get("grantRequestedAccess").and_then(Value::as_bool).ok_or_else(bad)
}

/// `POST /v1/rooms/:name/update-permissions` `{"data": {"<session id>"|"*": {"hasPresence"?,
/// "canSend"?, "canReceive"?, "canAdmin"?}}}` → `{"status": "sent", "updated": [ids]}`.
pub async fn update_permissions(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    room: &str,
) -> Result<Response<Body>, ApiError> {
    room_admin(state, &req, room)?;
    let body: requests::UpdatePermissions = wire::read(state, req).await?;
    let data = match &body.data {
        Some(Value::Object(m)) if !m.is_empty() && m.len() <= MAX_TARGETS => m,
        _ => {
            return Err(ApiError::invalid(format!(
                "'data' must be an object of 1 to {MAX_TARGETS} participant ids (or \"*\") to permission updates"
            )))
        }
    };
    let mut updates = Vec::new();
    for (id, patch) in data {
        if id != "*" && !crate::properties::is_plain_text(id, 255) {
            return Err(ApiError::invalid(
                "a participant id must be at most 255 characters, without control characters",
            ));
        }
        crate::properties::check_permissions(&format!("data.{}", wire::clip(id)), patch)
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        let Some(p) = patch.as_object() else { continue };
        if p.is_empty() {
            return Err(ApiError::invalid(format!(
                "data.{} names no permission to change (hasPresence, canSend, canReceive, canAdmin)",
                wire::clip(id)
            )));
        }
        updates.push((id.clone(), p.clone()));
    }
    match state.store.submit(UpdatePermissions { room: room.to_string(), updates }).await? {
        Ok(updated) => Ok(ok(&R::PermissionsSent { status: R::Sent::Is, updated })),
        Err(PermissionsError::NoRoom) => Err(ApiError::not_found("room not found")),
    }
}
