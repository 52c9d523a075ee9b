//! `/v1/meeting-tokens`: create (signed with the API key used), validate, list issued tokens.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::Value;

use super::error::ApiError;
use super::requests;
use super::responses as R;
use super::wire::{self, ok};
use super::{AppState, Body};
use crate::events::NewEvent;
use crate::store::{CreateToken, Revoke, StoreError, TokenRecord};
use crate::tokens::SigningKey;
use crate::tokens::{self, Rejection, TimeStatus, TokenProps};

pub async fn create(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    key: &SigningKey,
) -> Result<Response<Body>, ApiError> {
    let body: requests::TokenRequest = wire::read(state, req).await?;
    let props = TokenProps::validate(&body.properties.unwrap_or_default())?;
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
    // Written here (its keys sorted, as stored events always had them); the writer only
    // splices it into the envelope.
    let event = NewEvent::new(crate::events::EventKind::MeetingTokenCreated, &token_info(&record), record.room.clone())
        .map_err(|e| StoreError::Encode(format!("the token's event: {e}")))?;
    state.store.submit(CreateToken { record, event }).await?;
    Ok(wire::ok_sorted(&R::TokenResponse { token }))
}

/// An issued token's metadata (also the `meeting-token.created` payload). Never the JWT.
fn token_info(r: &TokenRecord) -> R::TokenInfo {
    R::TokenInfo {
        jti: r.jti.clone(),
        room: r.room.clone(),
        room_name: r.room.clone(),
        user_id: r.user_id.clone(),
        user_name: r.user_name.clone(),
        is_owner: r.is_owner,
        nbf: r.nbf,
        exp: r.exp,
        kid: r.kid.clone(),
        created_at: crate::clock::rfc3339_ms(r.created_ms),
    }
}

fn status_word(r: &Rejection) -> &'static str {
    match r {
        Rejection::UnknownKey => "unknown_key",
        Rejection::BadClaim(_) | Rejection::InvalidClaim(_) => "invalid_claims",
        _ => "bad_signature",
    }
}

pub fn validate(state: &Arc<AppState>, req: &Request<Incoming>, token: &str) -> Result<Response<Body>, ApiError> {
    let q = wire::query(req)?;
    let ignore_nbf = wire::bool_param(&q, "ignoreNbf")?;
    let verbose = wire::bool_param(&q, "verbose")?;
    let verified = match tokens::verify(&state.keys, &state.domain_id(), token) {
        Ok(v) => v,
        Err(r) if verbose => {
            let mut m = serde_json::Map::new();
            m.insert("status".into(), Value::from(status_word(&r)));
            m.insert("info".into(), Value::from(r.to_string()));
            return Ok(ok(&R::TokenCheck(m)));
        }
        Err(r) => return Err(ApiError::invalid(r.to_string())),
    };
    let now = state.clock.now_ms();
    let c = &verified.claims;
    let banned = match (&c.room, &c.user_id) {
        (Some(r), Some(u)) => state.store.is_banned(r, u, now)?,
        _ => false,
    };
    let status = match c.time_status(now, state.settings.token_leeway_secs, ignore_nbf) {
        TimeStatus::Expired => "expired",
        _ if state.store.is_revoked(c, &verified.token_id, None, now)? => "revoked",
        _ if banned => "banned",
        TimeStatus::Valid => "valid",
        TimeStatus::NotYetValid => "not_yet_valid",
    };
    let mut body = verified.claims.to_long_json();
    if verbose {
        body.insert("status".into(), Value::from(status));
        if let Some(jti) = &verified.claims.jti {
            body.insert("jti".into(), Value::from(jti.as_str()));
        }
        return Ok(ok(&R::TokenCheck(body)));
    }
    match status {
        "valid" => Ok(ok(&R::TokenCheck(body))),
        "not_yet_valid" => Err(ApiError::invalid("token is not valid yet (nbf is in the future)")),
        "revoked" => Err(ApiError::invalid("token has been revoked")),
        "banned" => Err(ApiError::invalid("the token's user is banned from its room")),
        _ => Err(ApiError::invalid("token has expired")),
    }
}

pub fn list(state: &Arc<AppState>, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let q = wire::query(req)?;
    let limit = wire::int_param(&q, "limit", 1, 100)?.unwrap_or(100) as usize;
    let room = q.get("room_name").filter(|s| !s.is_empty()).map(String::as_str);
    let before = q.get("starting_after").filter(|s| !s.is_empty()).map(String::as_str);
    let records = state.store.list_tokens(room, limit + 1, before)?;
    let has_more = records.len() > limit;
    let data = records.iter().take(limit).map(token_info).collect();
    Ok(ok(&R::TokenList { data, has_more }))
}

/// `POST /v1/meeting-tokens/revoke`: by `jti`, by `token`, by (`room_name`, `user_id`), or by
/// (`room_name`, `issued_before`). Sessions using what is revoked are ejected.
pub async fn revoke(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    key: &SigningKey,
) -> Result<Response<Body>, ApiError> {
    let by = super::auth::actor(key);
    let body: requests::Revoke = wire::read(state, req).await?;
    let jti = body.jti.as_deref();
    let token = body.token.as_deref();
    let room = body.room_name.as_deref();
    let user = body.user_id.as_deref();
    let before = match &body.issued_before {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .ok_or_else(|| ApiError::invalid("'issued_before' must be a unix time in seconds"))?,
        ),
    };
    let request = match (jti, token, room, user, before) {
        (Some(jti), None, None, None, None) => {
            let record = state.store.token(jti)?;
            let exp_ms = record.as_ref().and_then(|t| t.exp).map(|e| e.saturating_mul(1000));
            Revoke::Token { token_id: jti.to_string(), exp_ms, room: record.and_then(|t| t.room), by }
        }
        (None, Some(t), None, None, None) => {
            let v = tokens::verify(&state.keys, &state.domain_id(), t)
                .map_err(|r| ApiError::invalid(format!("cannot revoke: {r}")))?;
            let exp_ms = v.claims.exp.map(|e| (e * 1000.0) as i64);
            Revoke::Token { token_id: v.token_id, exp_ms, room: v.claims.room, by }
        }
        (None, None, Some(r), Some(u), None) => Revoke::RoomUser { room: r.to_string(), user_id: u.to_string(), by },
        (None, None, Some(r), None, Some(b)) => Revoke::RoomBefore { room: r.to_string(), before_s: b, by },
        _ => {
            return Err(ApiError::invalid(
                "give exactly one of: 'jti'; 'token'; 'room_name' with 'user_id'; 'room_name' with 'issued_before'",
            ))
        }
    };
    let ejected = state.store.submit(request).await?;
    Ok(ok(&R::Revoked { revoked: true, ejected_ids: ejected }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The event payload is `TokenInfo` serialized as it is: its keys must come out sorted, as
    /// a JSON value (a sorted map) writes them and stored payloads always had them.
    #[test]
    fn token_info_serializes_with_sorted_keys() {
        let record = TokenRecord {
            jti: "j".into(),
            kid: "k".into(),
            room: Some("r".into()),
            user_id: None,
            user_name: Some("u".into()),
            is_owner: true,
            nbf: Some(1),
            exp: None,
            created_ms: 0,
        };
        let direct = serde_json::to_string(&token_info(&record)).unwrap();
        let sorted = serde_json::to_value(token_info(&record)).unwrap().to_string();
        assert_eq!(direct, sorted);
    }
}
