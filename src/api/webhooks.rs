//! `/v1/webhooks`: Daily's webhook API (create with a test POST, list, get, update —
//! re-activating — and delete), plus replay and the failed-attempt log.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::Value;

use super::error::ApiError;
use super::requests;
use super::responses as R;
use super::wire::{self, ok};
use super::{AppState, Body};
use crate::clock::rfc3339_ms;
use crate::store::{CreateWebhook, DeleteWebhook, ReplayWebhook, UpdateWebhook, WebhookPatch, WebhookRecord};
use crate::webhooks::{self, signing};

const RETRY_TYPES: &[&str] = &["circuit-breaker", "exponential"];

/// Daily's webhook object, plus the cursor and success count.
fn webhook_json(w: &WebhookRecord) -> R::Webhook {
    R::Webhook {
        uuid: w.uuid.clone(),
        url: w.url.clone(),
        hmac: w.hmac.clone(),
        basic_auth: w.basic_auth.clone(),
        retry_type: w.retry_type.clone(),
        event_types: w.event_types.clone(),
        state: w.state.clone(),
        failed_count: w.failed_count,
        last_moment_pushed: w.last_pushed_ms.map(rfc3339_ms),
        created_at: rfc3339_ms(w.created_ms),
        updated_at: rfc3339_ms(w.updated_ms),
        cursor: w.cursor,
        successes: w.successes,
        failures: w.failures,
        events_lost_before: w.lost_before,
    }
}

/// Validated fields of a create or update body.
fn parse(body: requests::WebhookWrite) -> Result<WebhookPatch, ApiError> {
    let mut p = WebhookPatch::default();
    if let Some(u) = body.url.as_deref() {
        if u.len() > 2048 || !(u.starts_with("http://") || u.starts_with("https://")) || reqwest_url_invalid(u) {
            return Err(ApiError::invalid("'url' must be an http(s) URL of at most 2048 characters"));
        }
        p.url = Some(u.to_string());
    }
    if let Some(h) = body.hmac.as_deref() {
        if signing::secret_key(h).is_none_or(|k| k.len() < 16) {
            return Err(ApiError::invalid("'hmac' must be base64 of at least 16 bytes"));
        }
        p.hmac = Some(h.to_string());
    }
    match &body.basic_auth {
        None => {}
        Some(Value::Null) => p.basic_auth = Some(None),
        Some(Value::String(s)) if s.len() <= 512 && !s.chars().any(char::is_control) => {
            p.basic_auth = Some(Some(s.clone()))
        }
        Some(_) => return Err(ApiError::invalid("'basicAuth' must be a string of at most 512 characters")),
    }
    if let Some(r) = body.retry_type.as_deref() {
        if !RETRY_TYPES.contains(&r) {
            return Err(ApiError::invalid("'retryType' must be \"circuit-breaker\" or \"exponential\""));
        }
        p.retry_type = Some(r.to_string());
    }
    match &body.event_types {
        None | Some(Value::Null) => {}
        Some(Value::Array(a)) => {
            let mut types = Vec::new();
            for t in a {
                match t.as_str() {
                    Some(t) if crate::events::is_known(t) => types.push(t.to_string()),
                    _ => return Err(ApiError::invalid(format!("unknown event type {}", wire::clip(&t.to_string())))),
                }
            }
            p.event_types = Some(types);
        }
        Some(_) => return Err(ApiError::invalid("'eventTypes' must be an array of event types")),
    }
    Ok(p)
}

fn reqwest_url_invalid(u: &str) -> bool {
    url::Url::parse(u).map(|u| u.host().is_none()).unwrap_or(true)
}

async fn probe(state: &AppState, w: &WebhookRecord) -> Result<(), ApiError> {
    webhooks::probe(&state.outbound, &w.url, &w.hmac, w.basic_auth.as_deref(), state.clock.now_secs()).await.map_err(
        |e| ApiError::invalid(format!("the URL must answer a test POST with 2xx: {}", wire::clip_long(&e.to_string()))),
    )
}

fn answer(out: Option<WebhookRecord>) -> Result<Response<Body>, ApiError> {
    match out {
        Some(w) => Ok(ok(&webhook_json(&w))),
        None => Err(ApiError::not_found("webhook not found")),
    }
}

pub async fn create(state: &Arc<AppState>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let p = parse(wire::read(state, req).await?)?;
    let url = p.url.clone().ok_or_else(|| ApiError::invalid("'url' is required"))?;
    let now = state.clock.now_ms();
    let w = WebhookRecord {
        uuid: uuid::Uuid::new_v4().to_string(),
        url,
        hmac: p.hmac.unwrap_or_else(signing::new_secret),
        basic_auth: p.basic_auth.flatten(),
        retry_type: p.retry_type.unwrap_or_else(|| "circuit-breaker".into()),
        event_types: p.event_types.unwrap_or_default(),
        state: "ACTIVE".into(),
        failed_count: 0,
        cursor: 0,
        last_pushed_ms: None,
        first_failure_ms: None,
        successes: 0,
        failures: 0,
        created_ms: now,
        updated_ms: now,
        lost_before: None,
        version: 0,
    };
    probe(state, &w).await?;
    answer(Some(state.store.submit(CreateWebhook(w)).await?))
}

pub fn list(state: &Arc<AppState>) -> Result<Response<Body>, ApiError> {
    let all: Vec<R::Webhook> = state.store.webhooks()?.iter().map(webhook_json).collect();
    Ok(ok(&all))
}

pub fn get(state: &Arc<AppState>, id: &str) -> Result<Response<Body>, ApiError> {
    let w = state.store.webhook(id)?.ok_or_else(|| ApiError::not_found("webhook not found"))?;
    Ok(ok(&webhook_json(&w)))
}

/// Updates and re-activates: a `FAILED` webhook resumes from its cursor, losing nothing.
pub async fn update(state: &Arc<AppState>, req: Request<Incoming>, id: &str) -> Result<Response<Body>, ApiError> {
    let p = parse(wire::read(state, req).await?)?;
    let mut preview = state.store.webhook(id)?.ok_or_else(|| ApiError::not_found("webhook not found"))?;
    p.apply(&mut preview);
    probe(state, &preview).await?;
    answer(state.store.submit(UpdateWebhook { id: id.to_string(), patch: p }).await?)
}

pub async fn delete(state: &Arc<AppState>, id: &str) -> Result<Response<Body>, ApiError> {
    match state.store.submit(DeleteWebhook { id: id.to_string() }).await? {
        Some(_) => Ok(ok(&R::WebhookDeleted { deleted: true, uuid: id.to_string() })),
        None => Err(ApiError::not_found("webhook not found")),
    }
}

pub async fn replay(state: &Arc<AppState>, req: Request<Incoming>, id: &str) -> Result<Response<Body>, ApiError> {
    let body: requests::Replay = wire::read(state, req).await?;
    let head = state.store.durable_seq();
    let from = body
        .from_seq
        .as_ref()
        .and_then(Value::as_u64)
        .filter(|f| *f >= 1 && *f <= head + 1)
        .ok_or_else(|| ApiError::invalid(format!("'from_seq' must be an event seq between 1 and {}", head + 1)))?;
    let oldest = state.store.oldest_seq()?;
    if from < oldest {
        return Err(super::events::gone(state, oldest));
    }
    answer(state.store.submit(ReplayWebhook { id: id.to_string(), from_seq: from }).await?)
}

pub fn attempts(state: &Arc<AppState>, id: &str) -> Result<Response<Body>, ApiError> {
    let w = state.store.webhook(id)?.ok_or_else(|| ApiError::not_found("webhook not found"))?;
    let data = state
        .store
        .attempts(id, 100)?
        .into_iter()
        .map(|a| R::Attempt {
            seq: a.seq,
            at: rfc3339_ms(a.at_ms),
            status: a.status,
            duration_ms: a.duration_ms,
            detail: a.detail,
        })
        .collect();
    Ok(ok(&R::WebhookAttempts {
        uuid: id.to_string(),
        state: w.state,
        successes: w.successes,
        failed_count: w.failed_count,
        cursor: w.cursor,
        data,
    }))
}
