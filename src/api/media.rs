//! The Janus relay (`/janus...`, with `--janus-url`): browsers reach Janus's HTTP API through
//! this server, on its origin and certificate, under its connection rules (deadlines, caps,
//! per-address limits, TLS). Only the API's own paths pass: a new session (`POST /janus`),
//! `GET /janus/info`, a session (`/janus/<id>`: requests, and the long-poll for its events) and
//! a plugin handle (`/janus/<id>/<id>`); never the Admin API, which stays on loopback. Janus
//! checks what passes (a VideoRoom room admits only a Gatehouse credential); the relay adds
//! bounds: the request body under the body limit, Janus's answer under 1 MiB.
//!
//! Must not: log what passes (credentials and SDPs), or forward a client's headers.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};

use super::error::ApiError;
use super::{wire, AppState, Body};

/// The server's Janus, or 404 when it runs without one.
fn janus(state: &AppState) -> Result<&Arc<crate::janus::Mirror>, ApiError> {
    state
        .janus
        .as_ref()
        .ok_or_else(|| ApiError::not_found("no media server here (the server runs without --janus-url)"))
}

/// What may follow `/janus/`: Janus's ids are numbers.
fn is_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit())
}

pub async fn relay(
    state: &Arc<AppState>,
    req: Request<Incoming>,
    session: &str,
    handle: &str,
) -> Result<Response<Body>, ApiError> {
    let mirror = janus(state)?;
    let post = req.method() == Method::POST;
    // The route gave 0, 1 or 2 segments; each must be an id (or `info`, alone, read with GET).
    let tail = match (session, handle) {
        ("", _) => String::new(),
        ("info", "") if !post => "/info".to_string(),
        (s, "") if is_id(s) => format!("/{s}"),
        (s, h) if is_id(s) && is_id(h) && post => format!("/{s}/{h}"),
        _ => return Err(ApiError::not_found("no such Janus path (ids are numbers)")),
    };
    // A long-poll's own parameters (`maxev`, `rid`, a cache-buster) pass; nothing else does.
    let query = if post { None } else { req.uri().query().map(str::to_string) };
    let body = if post { Some(wire::read_bytes(state, req, state.settings.body_limit).await?) } else { None };
    let tail = match query.filter(|q| !q.is_empty()) {
        Some(q) if q.len() <= 256 => format!("{tail}?{q}"),
        Some(_) => return Err(ApiError::invalid("the query string is longer than 256 bytes")),
        None => tail,
    };
    let (status, answer) = mirror.janus().relay(body, &tail).await.map_err(|e| {
        tracing::warn!(error = %e, "janus relay: no answer from Janus");
        ApiError::new(StatusCode::BAD_GATEWAY, "server-error", "the media server did not answer")
    })?;
    let mut r = Response::new(wire::full(answer));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// Most bytes one post of Janus's event handler may hold (it groups what queued up).
const EVENTS_LIMIT: usize = 1024 * 1024;
/// Most events one post may hold.
const MAX_EVENTS: usize = 10_000;

/// `POST /v1/janus/events`: a batch of Janus's event handler's events (an array, or one event).
/// What they say of the participants' media becomes `participant.media` events and the `media`
/// of presence; the router checked the API key (HTTP Basic).
pub async fn events(state: &Arc<AppState>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let mirror = janus(state)?;
    let body = wire::read_bytes(state, req, EVENTS_LIMIT).await?;
    let events = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Array(a)) => a,
        Ok(v @ serde_json::Value::Object(_)) => vec![v],
        _ => return Err(ApiError::invalid("the body must be a JSON array of Janus events, or one event")),
    };
    if events.len() > MAX_EVENTS {
        return Err(ApiError::invalid(format!("at most {MAX_EVENTS} events in one post")));
    }
    for change in mirror.learn(&events) {
        let cmd = crate::store::commands::MediaChanged { session: change.session, connected: change.connected };
        state.store.submit(cmd).await.map_err(ApiError::from)?;
    }
    Ok(wire::json_bytes(StatusCode::OK, b"{}".to_vec()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_numbers_are_janus_ids() {
        assert!(super::is_id("1234567890"));
        for bad in ["", "admin", "12a", "-1", "1.0", "123456789012345678901"] {
            assert!(!super::is_id(bad), "{bad}");
        }
    }
}
