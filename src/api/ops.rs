//! Operational endpoints: `/healthz`, `/readyz`, `GET /v1/` (the domain), and, in `test-clock`
//! builds only, `POST /v1/_test/clock`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use super::error::ApiError;
use super::wire::{self, ok};
use super::{auth, AppState, Body};

pub fn healthz() -> Response<Body> {
    ok(&json!({"status": "ok"}))
}

pub fn readyz(state: &AppState) -> Response<Body> {
    let ready = state.ready.load(Ordering::SeqCst);
    let writable = state.store.is_writable();
    let status = if ready && writable { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    wire::json_response(status, &json!({"ready": ready, "store_writable": writable}))
}

pub fn domain(state: &Arc<AppState>, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    auth::api_key(req, &state.keys)?;
    Ok(ok(&json!({
        "domain_id": state.domain_id(),
        "domain_name": state.settings.domain_name,
        "config": {
            "max_participants": crate::rooms::DEFAULT_MAX_PARTICIPANTS,
            "token_leeway_seconds": state.settings.token_leeway_secs,
        },
    })))
}

/// Moves the server's clock: `{"advance_secs": n}` or `{"set_ms": t}`. Test builds only.
#[cfg(feature = "test-clock")]
pub async fn test_clock(state: &Arc<AppState>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    auth::api_key(&req, &state.keys)?;
    let bytes = wire::read_body(req, state.settings.body_limit).await?;
    let body = wire::parse_object(&bytes)?;
    if let Some(secs) = body.get("advance_secs").and_then(serde_json::Value::as_f64) {
        state.test_clock.advance_ms((secs * 1000.0) as i64);
    } else if let Some(ms) = body.get("set_ms").and_then(serde_json::Value::as_i64) {
        state.test_clock.set_ms(ms);
    } else {
        return Err(ApiError::invalid("give 'advance_secs' or 'set_ms'"));
    }
    // Let the deadline task look again at once.
    state.store.timers_changed().notify_one();
    Ok(ok(&json!({"now_ms": crate::clock::Clock::now_ms(state.test_clock.as_ref())})))
}
