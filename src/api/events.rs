//! `GET /v1/events`: the durable event log, paged, filtered by type, long-poll capable.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use super::error::ApiError;
use super::wire;
use super::{AppState, Body};
use crate::tokens::SigningKey;

pub async fn list(state: &Arc<AppState>, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let q = wire::query(req)?;
    let after = wire::int_param(&q, "after", 0, i64::MAX)?.unwrap_or(0) as u64;
    let limit = wire::int_param(&q, "limit", 1, 1000)?.unwrap_or(100) as usize;
    let wait = wire::int_param(&q, "wait", 0, 60)?.unwrap_or(0) as u64;
    let types = types_param(&q)?;
    check_position(state, after)?;
    let mut durable = state.store.watch_durable();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
    loop {
        let page = state.store.events(after, limit, types.as_deref())?;
        let waiting = page.events.is_empty() && page.next_after == after && tokio::time::Instant::now() < deadline;
        if !waiting {
            return Ok(page_response(&page));
        }
        if tokio::time::timeout_at(deadline, durable.changed()).await.is_err() {
            continue;
        }
    }
}

/// The page as JSON, the stored envelopes spliced in as they are (no parse, no re-encode).
fn page_response(page: &crate::store::Page) -> Response<Body> {
    let mut out = String::with_capacity(page.events.iter().map(|e| e.envelope.len() + 1).sum::<usize>() + 96);
    out.push_str("{\"data\":[");
    for (i, e) in page.events.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&e.envelope);
    }
    out.push_str(&format!(
        "],\"next_after\":{},\"has_more\":{},\"head_seq\":{}}}",
        page.next_after, page.has_more, page.head_seq
    ));
    wire::answered::<super::responses::Events>(wire::json_bytes(hyper::StatusCode::OK, out.into_bytes()))
}

/// The event type filter of a request (`types=a,b`), checked against the known types.
fn types_param(q: &std::collections::HashMap<String, String>) -> Result<Option<Vec<String>>, ApiError> {
    let Some(s) = q.get("types").filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let list: Vec<String> = s.split(',').map(|t| t.trim().to_string()).collect();
    if let Some(bad) = list.iter().find(|t| !crate::events::is_known(t)) {
        return Err(ApiError::invalid(format!("unknown event type '{}'", wire::clip(bad))));
    }
    Ok(Some(list))
}

/// 410 with `oldest_seq`/`head_seq` when `after` is older than the retained log (`after = 0`
/// means "from the oldest retained").
fn check_position(state: &AppState, after: u64) -> Result<(), ApiError> {
    let oldest = state.store.oldest_seq()?;
    if after > 0 && after + 1 < oldest {
        return Err(gone(state, oldest));
    }
    Ok(())
}

/// The 410 for a position the log no longer holds.
pub(super) fn gone(state: &AppState, oldest: u64) -> ApiError {
    let mut e = ApiError::new(StatusCode::GONE, "gone", "that position is older than the retained event log");
    e.extra = Some(json!({"oldest_seq": oldest, "head_seq": state.store.durable_seq()}));
    e
}

/// `GET /v1/events/stream`: SSE with `id:` = seq, resuming after `Last-Event-ID` (which wins)
/// or `after`; a comment every 15 s; only durable events.
pub fn stream(state: &Arc<AppState>, req: &Request<Incoming>, key: &SigningKey) -> Result<Response<Body>, ApiError> {
    let cap = state.settings.max_event_streams_per_key;
    let slot = state.streams.take(&format!("key:{}", key.kid), cap).ok_or_else(|| {
        super::participants::too_many(format!("this API key already has {cap} open event streams; close one first"))
    })?;
    let q = wire::query(req)?;
    let types = types_param(&q)?;
    let from_header = match req.headers().get("last-event-id") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::invalid("Last-Event-ID must be an event seq"))?,
        ),
    };
    let after = match from_header {
        Some(a) => a,
        None => wire::int_param(&q, "after", 0, i64::MAX)?.unwrap_or(0) as u64,
    };
    check_position(state, after)?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let state = state.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let mut after = after;
        let mut durable = state.store.watch_durable();
        let mut shutdown = state.shutdown.clone();
        let mut ping = tokio::time::interval(Duration::from_secs(15));
        ping.tick().await;
        loop {
            let Ok(page) = state.store.events(after, 500, types.as_deref()) else {
                return;
            };
            for e in &page.events {
                if tx.send(super::participants::sse(&e.kind, Some(e.seq), &e.envelope)).await.is_err() {
                    return;
                }
            }
            after = page.next_after;
            if page.has_more {
                continue;
            }
            tokio::select! {
                r = durable.changed() => if r.is_err() { return },
                _ = ping.tick() => if tx.send(bytes::Bytes::from_static(b": heartbeat\n\n")).await.is_err() { return },
                _ = shutdown.changed() => return,
            }
        }
    });
    Ok(super::participants::sse_response(rx))
}
