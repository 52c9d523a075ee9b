//! `/v1/rooms`: create, list, get, update, delete (Daily's shapes).

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::Value;

use super::error::ApiError;
use super::requests;
use super::responses as R;
use super::wire::{self, ok};
use super::{AppState, Body};
use crate::rooms::{self, Privacy, Room};
use crate::store::{CreateRoom, CreateRooms, DeleteRoom, DeleteRooms, RoomCursor, UpdateRoom, MAX_BATCH};
use crate::tokens::SigningKey;

fn privacy_field(v: Option<&Value>) -> Result<Option<Privacy>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => Ok(Some(Privacy::parse(v)?)),
    }
}

fn room_response(state: &AppState, outcome: Result<Room, rooms::RoomError>) -> Result<Response<Body>, ApiError> {
    Ok(ok(&outcome?.view(&state.settings.public_url)))
}

pub async fn create(state: &Arc<AppState>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let body: requests::RoomWrite = wire::read(state, req).await?;
    let out = state.store.submit(new_room(body)?).await?;
    room_response(state, out)
}

/// A room to create, from a `POST /v1/rooms` body (or one item of a batch).
fn new_room(body: requests::RoomWrite) -> Result<CreateRoom, ApiError> {
    // An empty name is a bad name; only an absent (or null) one means "pick a random name".
    if let Some(n) = &body.name {
        rooms::validate_name(n)?;
    }
    let privacy = privacy_field(body.privacy.as_ref())?.unwrap_or(Privacy::Public);
    let config = rooms::validate_properties(&body.properties.unwrap_or_default())?;
    Ok(CreateRoom { name: body.name, privacy, config })
}

/// How much a batch call may send: room objects and their properties for up to
/// [`MAX_BATCH`] rooms, at least 1 MiB whatever the per-request limit.
fn batch_body_limit(state: &AppState) -> usize {
    state.settings.body_limit.max(1 << 20)
}

/// A batch body's list field, 1 to [`MAX_BATCH`] items.
fn batch_list(list: Option<Value>, field: &str) -> Result<Vec<Value>, ApiError> {
    match list {
        Some(Value::Array(items)) if !items.is_empty() && items.len() <= MAX_BATCH => Ok(items),
        Some(Value::Array(items)) if !items.is_empty() => {
            Err(ApiError::invalid(format!("'{field}' lists {} rooms; at most {MAX_BATCH} per call", items.len())))
        }
        _ => Err(ApiError::invalid(format!("'{field}' must be a list of 1 to {MAX_BATCH} rooms"))),
    }
}

/// `POST /v1/batch/rooms` `{"rooms": [{name?, privacy?, properties?}, ...]}`: up to 1,000
/// rooms, all or none, answered `{"data": [room, ...]}` in the order given.
pub async fn batch_create(state: &Arc<AppState>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let body: requests::BatchRooms = wire::read_up_to(state, req, batch_body_limit(state)).await?;
    let mut rooms = Vec::new();
    for (i, item) in batch_list(body.rooms, "rooms")?.into_iter().enumerate() {
        let Value::Object(item) = item else {
            return Err(ApiError::invalid(format!("rooms[{i}] must be an object")));
        };
        rooms.push(wire::typed(item).and_then(new_room).map_err(|e| e.prefixed(&format!("rooms[{i}]: ")))?);
    }
    let made = state.store.submit(CreateRooms { rooms }).await??;
    let data = made.iter().map(|r| r.view(&state.settings.public_url)).collect();
    Ok(ok(&R::BatchCreated { data }))
}

/// `DELETE /v1/batch/rooms` `{"room_names": [...]}`: up to 1,000 live rooms, all or none;
/// each is deleted as `DELETE /v1/rooms/:name` does. Answers `{"deleted_count": n}`.
pub async fn batch_delete(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    key: &SigningKey,
) -> Result<Response<Body>, ApiError> {
    let by = super::auth::actor(key);
    let body: requests::BatchRoomNames = wire::read_up_to(state, req, batch_body_limit(state)).await?;
    let mut names = Vec::new();
    for (i, v) in batch_list(body.room_names, "room_names")?.iter().enumerate() {
        match v.as_str() {
            // A name no room can have names no room.
            Some(n) if rooms::validate_name(n).is_ok() => names.push(n.to_string()),
            Some(n) => return Err(ApiError::not_found(format!("room '{}' not found", wire::clip(n)))),
            None => return Err(ApiError::invalid(format!("room_names[{i}] must be a string"))),
        }
    }
    let deleted = state.store.submit(DeleteRooms { names, by }).await??;
    Ok(ok(&R::BatchDeleted { deleted_count: deleted as u64 }))
}

/// A live room, or 404 (unknown, deleted, or expired: Daily answers 404 for expired rooms).
fn live_room(state: &AppState, name: &str) -> Result<Room, ApiError> {
    let now = state.clock.now_secs();
    state.store.room(name)?.filter(|r| !r.is_expired(now)).ok_or_else(|| ApiError::not_found("room not found"))
}

pub fn get(state: &Arc<AppState>, name: &str) -> Result<Response<Body>, ApiError> {
    let room = live_room(state, name)?;
    Ok(ok(&room.view(&state.settings.public_url)))
}

fn cursor_param(q: &std::collections::HashMap<String, String>, name: &str) -> Result<Option<uuid::Uuid>, ApiError> {
    match q.get(name).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => {
            uuid::Uuid::parse_str(s).map(Some).map_err(|_| ApiError::invalid(format!("'{name}' must be a room id")))
        }
    }
}

pub fn list(state: &Arc<AppState>, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let q = wire::query(req)?;
    let limit = wire::int_param(&q, "limit", 1, 100)?.unwrap_or(100) as usize;
    let cursor = match (cursor_param(&q, "starting_after")?, cursor_param(&q, "ending_before")?) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid("use either 'starting_after' or 'ending_before', not both"))
        }
        (Some(id), None) => RoomCursor::After(id),
        (None, Some(id)) => RoomCursor::Before(id),
        (None, None) => RoomCursor::First,
    };
    let rooms = state.store.list_rooms(limit, &cursor)?.ok_or_else(|| ApiError::invalid("the cursor names no room"))?;
    let now = state.clock.now_secs();
    let data = rooms.iter().filter(|r| !r.is_expired(now)).map(|r| r.view(&state.settings.public_url)).collect();
    Ok(ok(&R::RoomList { total_count: state.store.room_count()? as u64, data }))
}

pub async fn update(state: &Arc<AppState>, req: Request<Incoming>, name: &str) -> Result<Response<Body>, ApiError> {
    let body: requests::RoomUpdate = wire::read(state, req).await?;
    let privacy = privacy_field(body.privacy.as_ref())?;
    let patch = rooms::validate_patch(&body.properties.unwrap_or_default())?;
    let out = state.store.submit(UpdateRoom { name: name.to_string(), privacy, patch }).await?;
    room_response(state, out)
}

pub async fn delete(state: &Arc<AppState>, name: &str, key: &SigningKey) -> Result<Response<Body>, ApiError> {
    live_room(state, name)?;
    let name = state.store.submit(DeleteRoom { name: name.to_string(), by: super::auth::actor(key) }).await??;
    Ok(ok(&R::RoomDeleted { deleted: true, name }))
}
