//! Meeting history in Daily's shapes: `GET /v1/meetings`, `GET /v1/meetings/:id`,
//! `GET /v1/meetings/:id/participants`. Read from the records the writer keeps as sessions
//! start and end (never recomputed from the event log). Times are unix seconds, durations
//! seconds; an ongoing meeting's duration runs to now.
//!
//! Must not: write anything.

use std::sync::Arc;

use super::responses as R;
use hyper::body::Incoming;
use hyper::{Request, Response};

use super::error::ApiError;
use super::wire::{self, ok};
use super::{AppState, Body};
use crate::store::{MeetingParticipantRecord, MeetingRecord};

/// Most meetings in one page (Daily's limit).
const MAX_MEETINGS: i64 = 100;
/// Most participants listed inside each meeting of `GET /v1/meetings` (the rest are paged with
/// `GET /v1/meetings/:id/participants`).
pub const MAX_EMBEDDED_PARTICIPANTS: usize = 1000;
/// Most participants in one page of `GET /v1/meetings/:id/participants`.
const MAX_PARTICIPANTS_PAGE: i64 = 1000;

fn secs(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

fn meeting_json(m: &MeetingRecord, now_ms: i64) -> R::Meeting {
    R::Meeting {
        id: m.id.clone(),
        room: m.room.clone(),
        start_time: secs(m.start_ms),
        duration: secs(m.end_ms.unwrap_or(now_ms) - m.start_ms).max(0),
        ongoing: m.end_ms.is_none(),
        max_participants: m.max_participants,
        participants: None,
    }
}

fn participant_json(p: &MeetingParticipantRecord, now_ms: i64) -> R::MeetingParticipant {
    R::MeetingParticipant {
        user_id: p.user_id.clone(),
        participant_id: p.participant_id.clone(),
        user_name: p.user_name.clone(),
        join_time: secs(p.join_ms),
        duration: secs(p.leave_ms.unwrap_or(now_ms) - p.join_ms).max(0),
    }
}

fn unix_param(q: &std::collections::HashMap<String, String>, name: &str) -> Result<Option<i64>, ApiError> {
    wire::int_param(q, name, 0, crate::properties::MAX_UNIX_SECS)
}

/// `GET /v1/meetings`: `room`, `timeframe_start` (start ≥), `timeframe_end` (start <),
/// `ongoing`, `no_participants`, `limit` (1–100), `starting_after` / `ending_before` (a
/// meeting id) → `{"total_count", "data": [...]}`, newest first. `total_count` counts every
/// meeting the filters match, whatever the page.
pub fn list(state: &Arc<AppState>, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let q = wire::query(req)?;
    let room = q.get("room").filter(|s| !s.is_empty());
    if let Some(r) = room {
        if crate::rooms::validate_name(r).is_err() {
            return Err(ApiError::invalid("'room' must be a room name"));
        }
    }
    let from = unix_param(&q, "timeframe_start")?;
    let to = unix_param(&q, "timeframe_end")?;
    if let (Some(f), Some(t)) = (from, to) {
        if f >= t {
            return Err(ApiError::invalid("'timeframe_start' must be before 'timeframe_end'"));
        }
    }
    let ongoing = match q.get("ongoing").map(String::as_str) {
        None => None,
        Some("true") | Some("1") => Some(true),
        Some("false") | Some("0") => Some(false),
        Some(_) => return Err(ApiError::invalid("'ongoing' must be true or false")),
    };
    let no_participants = wire::bool_param(&q, "no_participants")?;
    let limit = wire::int_param(&q, "limit", 1, MAX_MEETINGS)?.unwrap_or(MAX_MEETINGS) as usize;
    let after = q.get("starting_after").filter(|s| !s.is_empty());
    let before = q.get("ending_before").filter(|s| !s.is_empty());
    if after.is_some() && before.is_some() {
        return Err(ApiError::invalid("use either 'starting_after' or 'ending_before', not both"));
    }
    let now = state.clock.now_ms();
    let matches = |m: &MeetingRecord| {
        from.is_none_or(|f| secs(m.start_ms) >= f)
            && to.is_none_or(|t| secs(m.start_ms) < t)
            && ongoing.is_none_or(|o| m.end_ms.is_none() == o)
    };
    // One pass, newest first, keeping only the page: `total_count` counts every match, and the
    // history can be long. `starting_after` pages on to older meetings, `ending_before` back
    // to newer ones.
    let mut total = 0usize;
    let mut cursor_found = false;
    let mut page: std::collections::VecDeque<MeetingRecord> = std::collections::VecDeque::new();
    state.store.visit_meetings(room.map(String::as_str), |m| {
        if !matches(&m) {
            return true;
        }
        total += 1;
        match (after, before) {
            (Some(id), _) => {
                if cursor_found {
                    if page.len() < limit {
                        page.push_back(m);
                    }
                } else if m.id == **id {
                    cursor_found = true;
                }
            }
            (_, Some(id)) => {
                if m.id == **id {
                    cursor_found = true;
                } else if !cursor_found {
                    // The last `limit` before the cursor.
                    if page.len() == limit {
                        page.pop_front();
                    }
                    page.push_back(m);
                }
            }
            _ => {
                if page.len() < limit {
                    page.push_back(m);
                }
            }
        }
        true
    })?;
    if (after.is_some() || before.is_some()) && !cursor_found {
        return Err(ApiError::invalid("the cursor names no meeting that matches these filters"));
    }
    let mut data = Vec::with_capacity(page.len());
    for m in &page {
        let mut v = meeting_json(m, now);
        if !no_participants {
            let ps = state
                .store
                .meeting_participants(&m.id)?
                .iter()
                .take(MAX_EMBEDDED_PARTICIPANTS)
                .map(|p| participant_json(p, now))
                .collect();
            v.participants = Some(ps);
        }
        data.push(v);
    }
    Ok(ok(&R::MeetingList { total_count: total as u64, data }))
}

fn meeting_or_404(state: &AppState, id: &str) -> Result<MeetingRecord, ApiError> {
    if !crate::properties::is_plain_text(id, 64) {
        return Err(ApiError::not_found("meeting not found"));
    }
    state.store.meeting(id)?.ok_or_else(|| ApiError::not_found("meeting not found"))
}

/// `GET /v1/meetings/:id` → `{"id", "room", "start_time", "duration", "ongoing",
/// "max_participants"}`.
pub fn get(state: &Arc<AppState>, id: &str) -> Result<Response<Body>, ApiError> {
    let m = meeting_or_404(state, id)?;
    Ok(ok(&meeting_json(&m, state.clock.now_ms())))
}

/// `GET /v1/meetings/:id/participants?limit=&joined_after=&joined_before=` → `{"total_count",
/// "data": [...]}` in join order; a page with nobody left is a 404, as Daily answers.
pub fn participants(state: &Arc<AppState>, req: &Request<Incoming>, id: &str) -> Result<Response<Body>, ApiError> {
    let q = wire::query(req)?;
    let limit = wire::int_param(&q, "limit", 1, MAX_PARTICIPANTS_PAGE)?.unwrap_or(MAX_PARTICIPANTS_PAGE) as usize;
    let m = meeting_or_404(state, id)?;
    let all = state.store.meeting_participants(&m.id)?;
    let position = |name: &str| -> Result<Option<usize>, ApiError> {
        match q.get(name).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(pid) => all
                .iter()
                .position(|p| &p.participant_id == pid)
                .map(Some)
                .ok_or_else(|| ApiError::invalid(format!("'{name}' names no participant of this meeting"))),
        }
    };
    let after = position("joined_after")?;
    let before = position("joined_before")?;
    let mut start = after.map_or(0, |a| a + 1);
    let end = before.unwrap_or(all.len()).max(start);
    // Paging backwards (only `joined_before`): the `limit` participants just before it.
    if after.is_none() && before.is_some() {
        start = end.saturating_sub(limit);
    }
    let now = state.clock.now_ms();
    let page: Vec<R::MeetingParticipant> =
        all[start..end].iter().take(limit).map(|p| participant_json(p, now)).collect();
    if page.is_empty() {
        return Err(ApiError::not_found("no more participants"));
    }
    Ok(ok(&R::MeetingParticipants { total_count: all.len() as u64, data: page }))
}
