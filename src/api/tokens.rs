//! `/v1/meeting-tokens`: create (signed with the API key used), validate, list issued tokens.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::wire::{self, ok};
use super::{auth, AppState, Body};
use crate::events::{self, NewEvent};
use crate::store::{Command, Outcome, TokenRecord};
use crate::tokens::{self, Rejection, TimeStatus, TokenProps};

pub async fn create(state: &Arc<AppState>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let key = auth::api_key(&req, &state.keys)?;
    let bytes = wire::read_body(req, state.settings.body_limit).await?;
    let body = wire::parse_object(&bytes)?;
    wire::only_fields(&body, &["properties"])?;
    let props = TokenProps::validate(wire::opt_object(&body, "properties")?.unwrap_or(&Map::new()))?;
    let now_ms = state.clock.now_ms();
    let jti = uuid::Uuid::now_v7().to_string();
    let token = tokens::sign(key, &props, &state.domain_id(), now_ms.div_euclid(1000), &jti)?;
    let record = TokenRecord {
        jti: jti.clone(),
        kid: key.kid.clone(),
        room: props.str("room_name").map(String::from),
        user_id: props.str("user_id").map(String::from),
        user_name: props.str("user_name").map(String::from),
        is_owner: props.is_owner(),
        nbf: props.int("nbf"),
        exp: props.int("exp"),
        created_ms: now_ms,
    };
    let event = NewEvent::new(events::MEETING_TOKEN_CREATED, record_json(&record));
    match state.store.submit(Command::CreateToken { record, event }).await? {
        Outcome::TokenRecorded => Ok(ok(&json!({"token": token}))),
        other => Err(super::rooms::unexpected(other)),
    }
}

/// An issued token's metadata (also the `meeting-token.created` payload). Never the JWT.
fn record_json(r: &TokenRecord) -> Value {
    json!({
        "jti": r.jti,
        "room": r.room,
        "room_name": r.room,
        "user_id": r.user_id,
        "user_name": r.user_name,
        "is_owner": r.is_owner,
        "nbf": r.nbf,
        "exp": r.exp,
        "kid": r.kid,
        "created_at": crate::clock::rfc3339_ms(r.created_ms),
    })
}

fn status_word(r: &Rejection) -> &'static str {
    match r {
        Rejection::UnknownKey => "unknown_key",
        _ => "bad_signature",
    }
}

pub fn validate(state: &Arc<AppState>, req: &Request<Incoming>, token: &str) -> Result<Response<Body>, ApiError> {
    auth::api_key(req, &state.keys)?;
    let q = wire::query(req)?;
    let ignore_nbf = wire::bool_param(&q, "ignoreNbf")?;
    let verbose = wire::bool_param(&q, "verbose")?;
    let verified = match tokens::verify(&state.keys, &state.domain_id(), token) {
        Ok(v) => v,
        Err(r) if verbose => return Ok(ok(&json!({"status": status_word(&r), "info": r.to_string()}))),
        Err(r) => return Err(ApiError::invalid(r.to_string())),
    };
    let status = match verified
        .claims
        .time_status(state.clock.now_ms(), state.settings.token_leeway_secs, ignore_nbf)
    {
        TimeStatus::Valid => "valid",
        TimeStatus::NotYetValid => "not_yet_valid",
        TimeStatus::Expired => "expired",
    };
    let mut body = verified.claims.to_long_json();
    if verbose {
        if let Some(obj) = body.as_object_mut() {
            obj.insert("status".into(), Value::from(status));
            if let Some(jti) = &verified.claims.jti {
                obj.insert("jti".into(), Value::from(jti.as_str()));
            }
        }
        return Ok(ok(&body));
    }
    match status {
        "valid" => Ok(ok(&body)),
        "not_yet_valid" => Err(ApiError::invalid("token is not valid yet (nbf is in the future)")),
        _ => Err(ApiError::invalid("token has expired")),
    }
}

pub fn list(state: &Arc<AppState>, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    auth::api_key(req, &state.keys)?;
    let q = wire::query(req)?;
    let limit = wire::int_param(&q, "limit", 1, 100)?.unwrap_or(100) as usize;
    let room = q.get("room_name").filter(|s| !s.is_empty()).map(String::as_str);
    let before = q.get("starting_after").filter(|s| !s.is_empty()).map(String::as_str);
    let records = state.store.list_tokens(room, limit + 1, before)?;
    let has_more = records.len() > limit;
    let data: Vec<Value> = records.iter().take(limit).map(record_json).collect();
    Ok(ok(&json!({"data": data, "has_more": has_more})))
}
