//! Firing deadlines. The writer calls [`fire`] for each deadline that came due (in deadline
//! order, many per batch); each re-checks current state, so a moved or cancelled deadline, a
//! session already gone, or a lease renewed since, makes it a no-op or a re-arm.

use std::sync::Arc;

use serde_json::json;

use crate::store::ctx::Ctx;
use crate::store::timers::TimerId;
use crate::store::StoreError;

use super::sessions::{end_sessions, Ending};

/// Fires one due deadline; returns how many things it ended (sessions, rooms, bans).
pub fn fire(cx: &mut Ctx<'_>, at_ms: i64, id: &TimerId) -> Result<usize, StoreError> {
    let now = cx.now_ms();
    if at_ms > now || cx.timer(id) != Some(at_ms) {
        return Ok(0);
    }
    cx.stats().lateness_seconds.observe((now - at_ms) as f64 / 1000.0);
    match id {
        TimerId::Lease(sid) => lease(cx, sid, at_ms, now),
        TimerId::Eject(sid) => {
            let Some(e) = cx.session(sid) else {
                cx.clear_timer(id);
                return Ok(0);
            };
            // A session's own deadline is never the room's expiry (the room's timer does that),
            // so a stored "room_expired" means the room's exp moved and the elapsed time is due.
            let reason = match e.session.eject_reason.as_deref() {
                Some("token_expired") => "token_expired",
                _ => "elapsed",
            };
            end_sessions(cx, &[e], reason, "scheduler", Ending::Normal)?;
            Ok(1)
        }
        TimerId::RoomExp(name) => super::rooms::expire(cx, name),
        TimerId::Ban(room, user) => ban_expiry(cx, room, user, now),
    }
}

/// A lease deadline: the session leaves (`timeout`) if it was not heard from for a lease;
/// if it was heard from since the deadline was set, the deadline moves to a lease after that
/// (and, when that moment has passed too, fires again in its turn, so that deadlines that came
/// before it — an ejection, the room's expiry — fire first).
fn lease(cx: &mut Ctx<'_>, sid: &Arc<str>, at_ms: i64, now: i64) -> Result<usize, StoreError> {
    let Some(e) = cx.session(sid) else {
        cx.clear_timer(&TimerId::Lease(sid.clone()));
        return Ok(0);
    };
    let seen = cx.seen(sid).unwrap_or(e.session.joined_ms);
    let runs_out = seen + cx.lease_ms();
    if runs_out > at_ms || now < runs_out {
        cx.set_timer(TimerId::Lease(sid.clone()), runs_out);
        return Ok(0);
    }
    end_sessions(cx, &[e], "timeout", "scheduler", Ending::Normal)?;
    Ok(1)
}

fn ban_expiry(cx: &mut Ctx<'_>, room: &str, user: &str, now: i64) -> Result<usize, StoreError> {
    cx.clear_timer(&TimerId::Ban(Arc::from(room), Arc::from(user)));
    let Some(ban) = cx.ban(room, user)? else { return Ok(0) };
    if ban.until_ms.is_none_or(|u| u > now) {
        return Ok(0);
    }
    cx.del_ban(room, user)?;
    cx.event(crate::events::EventKind::BanRemoved, json!({"room": room, "user_id": user, "reason": "expired"}));
    Ok(1)
}
