//! What reaches the people in a call (Daily's shapes): `send-app-message` (to the session
//! streams of those present now, not stored) and meeting session data (`get-session-data`,
//! `set-session-data`: kept with the running meeting).

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{Map, Value};

use super::error::ApiError;
use super::requests;
use super::responses as R;
use super::wire::{self, ok};
use super::{AppState, Body};
use crate::store::{Merge, SessionDataError, SetSessionData};

/// Largest app message `data`, as JSON (Daily's 4 KB).
pub const MAX_APP_MESSAGE: usize = 4096;

/// The room exists and has not expired (404 otherwise, as every room call answers).
fn live_room(state: &AppState, name: &str) -> Result<(), ApiError> {
    let now = state.clock.now_secs();
    match state.store.room(name)? {
        Some(r) if !r.is_expired(now) => Ok(()),
        _ => Err(ApiError::not_found("room not found")),
    }
}

/// `POST /v1/rooms/:name/send-app-message` `{"data": <JSON ≤ 4 KB>, "recipient": "*" | session id}`
/// → `{"sent": "true", "recipients": n}`. Delivered as an `app-message` frame
/// (`{"room", "fromId": "api", "recipient", "data"}`) on the session streams of those present
/// now; someone not in the call never gets it (as with Daily), which `recipients` (ext, how many
/// present sessions it was addressed to) tells.
pub async fn send_app_message(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    room: &str,
) -> Result<Response<Body>, ApiError> {
    let body: requests::AppMessage = wire::read(state, req).await?;
    // Any JSON value: some clients send a string they serialized themselves.
    let data = body.data.unwrap_or_else(|| Value::Object(Map::new()));
    let size = serde_json::to_vec(&data).map_or(usize::MAX, |b| b.len());
    if size > MAX_APP_MESSAGE {
        return Err(ApiError::invalid(format!("'data' is {size} bytes as JSON; at most {MAX_APP_MESSAGE}")));
    }
    let recipient = match body.recipient.as_deref() {
        None | Some("*") => None,
        Some("") => return Err(ApiError::invalid("'recipient' must be \"*\" or a session id")),
        Some(id) => Some(id),
    };
    live_room(state, room)?;
    let n = state.store.send_app_message(room, recipient, &data);
    Ok(ok(&R::AppMessageSent { sent: R::TrueText::Is, recipients: n as u64 }))
}

/// `GET /v1/rooms/:name/get-session-data` → `{"data": {...}}`, the running meeting's session
/// data (`{}` until set); 400 when no meeting is running.
pub fn get_session_data(state: &Arc<AppState>, room: &str) -> Result<Response<Body>, ApiError> {
    live_room(state, room)?;
    match state.store.session_data(room)? {
        Some((_, data)) => Ok(ok(&R::SessionData { data })),
        None => Err(SessionDataError::NoMeeting(room.to_string()).into()),
    }
}

/// `POST /v1/rooms/:name/set-session-data` `{"data": {...}, "mergeStrategy": "replace" |
/// "shallow-merge", "keysToDelete": [...]}` → `{"sent": "true", "data": {...}}` (Daily's
/// answer, and the data as it now is). The streams of those in the call get a `session-data`
/// frame with it; the event log only says it changed.
pub async fn set_session_data(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    room: &str,
) -> Result<Response<Body>, ApiError> {
    let body: requests::SetSessionData = wire::read(state, req).await?;
    let data = body.data.unwrap_or_default();
    let merge = match body.merge_strategy.as_deref() {
        None | Some("replace") => Merge::Replace,
        Some("shallow-merge") => Merge::ShallowMerge,
        Some(_) => return Err(ApiError::invalid("'mergeStrategy' must be \"replace\" or \"shallow-merge\"")),
    };
    let delete = match &body.keys_to_delete {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(keys)) => keys
            .iter()
            .map(|k| k.as_str().map(String::from))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| ApiError::invalid("'keysToDelete' must be a list of strings"))?,
        Some(_) => return Err(ApiError::invalid("'keysToDelete' must be a list of strings")),
    };
    if !delete.is_empty() && merge == Merge::Replace {
        return Err(ApiError::invalid("'keysToDelete' applies only with \"mergeStrategy\": \"shallow-merge\""));
    }
    let set = state.store.submit(SetSessionData { room: room.to_string(), merge, data, delete }).await??;
    // Durable now: the people in the call get it.
    state.store.send_session_data(room, &set.meeting_id, Some(set.seq), &set.data);
    Ok(ok(&R::SessionDataSet { sent: R::TrueText::Is, data: set.data }))
}
