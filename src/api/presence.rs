//! Presence: `GET /v1/presence` (everyone, by room, in Daily's shape) and
//! `GET /v1/rooms/:name/presence` (one room, `{total_count, data}`).
//!
//! Both are written from the published state straight into the response bytes — no tree of
//! JSON values per participant — and both page on request (`limit`, `starting_after`) in a
//! stable order: rooms by name, then members by join time and id. The cursor of the next page
//! is in a `Link: <…>; rel="next"` header, so the body keeps Daily's shape; `starting_after`
//! takes that cursor or, Daily-style, the id of a participant still present.
//!
//! Must not: scan the store, or build per-participant JSON values.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, LINK};
use hyper::{Request, Response, StatusCode};
use serde::Serialize;

use super::error::ApiError;
use super::wire;
use super::{AppState, Body};
use crate::sessions::Session;
use crate::store::live::{Entry, Live, Order};

/// Most participants one page may hold.
pub const MAX_PAGE: i64 = 1000;

/// One participant, in Daily's presence shape, borrowed from the session.
#[derive(Debug, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PresenceEntry<'a> {
    room: &'a str,
    id: &'a str,
    user_id: Option<&'a str>,
    user_name: Option<&'a str>,
    join_time: String,
    duration: i64,
    owner: bool,
    /// Hidden by `hasPresence: false` (listed only where admins look).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    hidden: bool,
    /// (ext) With Janus: `connected` or `disconnected`, as Janus's event handler last told it
    /// (absent when it has said nothing of this session).
    #[serde(skip_serializing_if = "Option::is_none")]
    media: Option<&'static str>,
}

impl<'a> PresenceEntry<'a> {
    /// `media`: what Janus told of the session's media ([`media_of`]).
    pub fn of(s: &'a Session, now_ms: i64, media: Option<&'static str>) -> PresenceEntry<'a> {
        PresenceEntry {
            room: &s.room,
            id: &s.id,
            user_id: s.user_id.as_deref(),
            user_name: s.user_name.as_deref(),
            join_time: crate::clock::rfc3339_ms(s.joined_ms),
            duration: (now_ms - s.joined_ms).max(0) / 1000,
            owner: s.owner,
            hidden: !crate::sessions::has_presence(s.permissions.as_ref()),
            media,
        }
    }
}

/// Session `id`'s media as Janus told it, with `--janus-url`.
pub fn media_of(state: &AppState, id: &str) -> Option<&'static str> {
    state.janus.as_ref().and_then(|j| j.media_of(id))
}

/// Where a page starts: after this member of this room.
#[derive(Debug, Clone, PartialEq)]
struct Cursor {
    room: String,
    order: Order,
}

impl Cursor {
    fn encode(&self) -> String {
        format!("{}.{}.{}", self.room, self.order.0, self.order.1)
    }

    /// Our own cursor (`room.joined_ms.id`), or the id of a participant still present.
    fn parse(s: &str, live: &Live) -> Result<Cursor, ApiError> {
        if let Some(e) = live.get(s) {
            return Ok(Cursor { room: e.session.room.clone(), order: (e.session.joined_ms, Arc::from(s)) });
        }
        let bad = || {
            ApiError::invalid(
                "'starting_after' must be the cursor from a previous page's Link header, or the id of a participant who is present",
            )
        };
        let mut parts = s.splitn(3, '.');
        let (Some(room), Some(ms), Some(id)) = (parts.next(), parts.next(), parts.next()) else { return Err(bad()) };
        let ms: i64 = ms.parse().map_err(|_| bad())?;
        if crate::rooms::validate_name(room).is_err() || id.is_empty() || id.len() > 64 {
            return Err(bad());
        }
        Ok(Cursor { room: room.into(), order: (ms, Arc::from(id)) })
    }
}

struct Page {
    limit: Option<usize>,
    after: Option<Cursor>,
}

fn page(req: &Request<Incoming>, live: &Live) -> Result<Page, ApiError> {
    let q = wire::query(req)?;
    let limit = wire::int_param(&q, "limit", 1, MAX_PAGE)?.map(|n| n as usize);
    let after = match q.get("starting_after").filter(|s| !s.is_empty()) {
        Some(s) => Some(Cursor::parse(s, live)?),
        None => None,
    };
    Ok(Page { limit, after })
}

/// Members of `room` in order, after `after` (when it is in this room).
fn members<'l>(live: &'l Live, room: &str, after: Option<&Order>) -> impl Iterator<Item = &'l Arc<Entry>> + 'l {
    live.members_after(room, after)
}

fn json(body: Vec<u8>, next: Option<(String, Cursor)>) -> Response<Body> {
    let mut r = wire::json_bytes(StatusCode::OK, body);
    if let Some((base, c)) = next {
        let link = format!("<{base}starting_after={}>; rel=\"next\"", c.encode());
        if let Ok(v) = HeaderValue::from_str(&link) {
            r.headers_mut().insert(LINK, v);
        }
    }
    r
}

/// `GET /v1/presence`: `{room: [participant…]}` for every room with someone present.
pub fn all(state: &Arc<AppState>, req: &Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let now = state.clock.now_ms();
    let live = state.store.live();
    let p = page(req, &live)?;
    let mut rooms: Vec<&Arc<str>> = live.rooms().filter(|(_, r)| !r.present.is_empty()).map(|(n, _)| n).collect();
    rooms.sort_unstable();
    if let Some(c) = &p.after {
        let from = rooms.partition_point(|r| &***r < c.room.as_str());
        rooms.drain(..from);
    }
    let mut left = p.limit.unwrap_or(usize::MAX);
    let mut out = Vec::with_capacity(256);
    out.push(b'{');
    let mut first_room = true;
    let mut last: Option<Cursor> = None;
    let mut more = false;
    for room in rooms {
        let after = p.after.as_ref().filter(|c| *c.room == **room).map(|c| &c.order);
        let mut opened = false;
        for e in members(&live, room, after) {
            // `hasPresence: false` hides a participant here (the room's own list shows them).
            if e.session.is_over(now) || !crate::sessions::has_presence(e.session.permissions.as_ref()) {
                continue;
            }
            if left == 0 {
                more = true;
                break;
            }
            if !opened {
                if !first_room {
                    out.push(b',');
                }
                first_room = false;
                serde_json::to_writer(&mut out, &**room).map_err(internal)?;
                out.extend_from_slice(b":[");
                opened = true;
            } else {
                out.push(b',');
            }
            let media = media_of(state, &e.session.id);
            serde_json::to_writer(&mut out, &PresenceEntry::of(&e.session, now, media)).map_err(internal)?;
            left -= 1;
            last =
                Some(Cursor { room: room.to_string(), order: (e.session.joined_ms, Arc::from(e.session.id.as_str())) });
        }
        if opened {
            out.push(b']');
        }
        if more {
            break;
        }
    }
    out.push(b'}');
    let next = match (more, p.limit, last) {
        (true, Some(limit), Some(c)) => Some((format!("/v1/presence?limit={limit}&"), c)),
        _ => None,
    };
    Ok(wire::answered::<super::responses::PresenceByRoom>(json(out, next)))
}

/// `GET /v1/rooms/:name/presence`: `{total_count, data: [participant…]}`, by API key or by a
/// token that may administer the room's participants (an owner's).
pub fn room(state: &Arc<AppState>, req: &Request<Incoming>, room: &str) -> Result<Response<Body>, ApiError> {
    super::participants::room_admin(state, req, room)?;
    let now = state.clock.now_ms();
    if state.store.room(room)?.is_none() {
        return Err(ApiError::not_found("room not found"));
    }
    let live = state.store.live();
    let p = page(req, &live)?;
    if let Some(c) = &p.after {
        if c.room != room {
            return Err(ApiError::invalid("'starting_after' belongs to another room"));
        }
    }
    let total = live.members_after(room, None).filter(|e| !e.session.is_over(now)).count();
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(format!("{{\"total_count\":{total},\"data\":[").as_bytes());
    let mut left = p.limit.unwrap_or(usize::MAX);
    let mut last = None;
    let mut more = false;
    for e in members(&live, room, p.after.as_ref().map(|c| &c.order)) {
        if e.session.is_over(now) {
            continue;
        }
        if left == 0 {
            more = true;
            break;
        }
        if last.is_some() {
            out.push(b',');
        }
        let media = media_of(state, &e.session.id);
        serde_json::to_writer(&mut out, &PresenceEntry::of(&e.session, now, media)).map_err(internal)?;
        left -= 1;
        last = Some(Cursor { room: room.to_string(), order: (e.session.joined_ms, Arc::from(e.session.id.as_str())) });
    }
    out.extend_from_slice(b"]}");
    let next = match (more, p.limit, last) {
        (true, Some(limit), Some(c)) => Some((format!("/v1/rooms/{room}/presence?limit={limit}&"), c)),
        _ => None,
    };
    Ok(wire::answered::<super::responses::Presence>(json(out, next)))
}

fn internal(e: serde_json::Error) -> ApiError {
    tracing::error!(error = %e, "writing a presence list failed");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server-error", "could not write the presence list")
}
