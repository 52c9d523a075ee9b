//! Joining, leaving and keeping a lease, and ending sessions (which every kind of ejection,
//! expiry and deletion does through [`end_sessions`]).

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::sessions::{self, Denial, JoinFacts, Session, TokenCheck};
use crate::store::command::Command;
use crate::store::ctx::Ctx;
use crate::store::live::Entry;
use crate::store::StoreError;

/// A join attempt, verified as far as the handler can without state.
#[derive(Debug)]
pub struct Join {
    pub room: String,
    pub token: TokenCheck,
    /// From the body; a token's `u` wins.
    pub user_name: Option<String>,
    /// Chosen by the handler, which alone sees the secret.
    pub session_id: String,
    pub secret_digest: [u8; 32],
    pub leeway_s: u64,
}

#[derive(Debug)]
pub enum JoinOutcome {
    Joined(Box<Session>),
    Denied(Denial),
}

impl Command for Join {
    type Reply = JoinOutcome;

    fn apply(self, cx: &mut Ctx<'_>) -> Result<JoinOutcome, StoreError> {
        let now = cx.now_ms();
        let room = cx.room(&self.room)?;
        let claims = match &self.token {
            TokenCheck::Valid { claims, .. } => Some(claims.as_ref()),
            _ => None,
        };
        let revoked = match &self.token {
            TokenCheck::Valid { claims, token_id } => cx.is_revoked(claims, token_id, Some(&self.room))?,
            _ => false,
        };
        let user_id = claims.and_then(|c| c.user_id.clone());
        let banned = match &user_id {
            Some(u) => cx.is_banned(&self.room, u)?,
            None => false,
        };
        let unique = room
            .as_ref()
            .is_some_and(|r| r.config.get("enforce_unique_user_ids").and_then(Value::as_bool) == Some(true));
        let duplicates: Vec<Arc<Entry>> = match (&user_id, unique) {
            (Some(u), true) => cx.user_sessions(&self.room, u).into_iter().filter(|e| !e.waiting).collect(),
            _ => Vec::new(),
        };
        let facts = JoinFacts {
            now_ms: now,
            leeway_s: self.leeway_s,
            room: room.as_ref(),
            token: &self.token,
            revoked,
            banned,
            present: cx.present(&self.room).saturating_sub(duplicates.len() as u64),
        };
        let room = match (sessions::decide_join(&facts), room) {
            (Ok(()), Some(room)) => room,
            (Err(d), _) => {
                denied(cx, &self, &d);
                return Ok(JoinOutcome::Denied(d));
            }
            (Ok(()), None) => return Err(StoreError::Unavailable("join admitted without a room".into())),
        };
        end_sessions(cx, &duplicates, "duplicate_user_id", "scheduler", Ending::Replaced)?;
        let (meeting_id, start_ms) = match cx.meeting(&self.room) {
            Some(m) => m,
            None => {
                let id = uuid::Uuid::new_v4().to_string();
                cx.event(
                    crate::events::MEETING_STARTED,
                    json!({"room": self.room, "meeting_id": id, "start_ts": now as f64 / 1000.0}),
                );
                (id, now)
            }
        };
        let deadline = sessions::eject_deadline(&room, claims, now);
        let (token_id, token_iat, token_exp) = match &self.token {
            TokenCheck::Valid { claims, token_id } => (Some(token_id.clone()), claims.iat, claims.exp),
            _ => (None, None, None),
        };
        let session = Session {
            id: self.session_id.clone(),
            room: self.room.clone(),
            user_id,
            user_name: claims.and_then(|c| c.user_name.clone()).or(self.user_name.clone()),
            owner: claims.is_some_and(|c| c.is_owner),
            token_id,
            token_iat,
            joined_ms: now,
            eject_at_ms: deadline.map(|d| d.0),
            eject_reason: deadline.map(|d| d.1.to_string()),
            permissions: claims.and_then(|c| c.permissions.clone()),
            meeting_id,
            room_rules: sessions::follows_room_rules(claims),
        };
        let entry = Entry {
            session: session.clone(),
            digest: self.secret_digest,
            token_exp,
            eject_timer_ms: sessions::eject_timer(&room, claims, now).map(|(at, _)| at),
            meeting_start_ms: start_ms,
            waiting: false,
        };
        cx.put_session(entry)?;
        cx.event(crate::events::PARTICIPANT_JOINED, session.joined_payload());
        Ok(JoinOutcome::Joined(Box::new(session)))
    }
}

/// Logs a refused join, with the precise reason and never the token.
fn denied(cx: &mut Ctx<'_>, req: &Join, d: &Denial) {
    let (user_id, user_name, jti) = match &req.token {
        TokenCheck::Valid { claims, token_id } => (
            claims.user_id.clone(),
            claims.user_name.clone().or(req.user_name.clone()),
            Some(crate::tokens::short_id(token_id).to_string()),
        ),
        _ => (None, req.user_name.clone(), None),
    };
    cx.event(
        crate::events::PARTICIPANT_JOIN_DENIED,
        json!({"room": req.room, "reason": d.error, "detail": d.detail, "info": d.info, "user_id": user_id, "user_name": user_name, "jti": jti}),
    );
}

/// A participant leaves. Replies false when there is no such session.
#[derive(Debug)]
pub struct Leave {
    pub session_id: String,
}

impl Command for Leave {
    type Reply = bool;

    fn apply(self, cx: &mut Ctx<'_>) -> Result<bool, StoreError> {
        let Some(e) = cx.session(&self.session_id) else { return Ok(false) };
        end_sessions(cx, &[e], "left", "participant", Ending::Normal)?;
        Ok(true)
    }
}

/// A sign of life: extends the lease in memory only (no record, no event, no sync). Replies
/// the lease's end, or `None` when there is no such session.
#[derive(Debug)]
pub struct Heartbeat {
    pub session_id: String,
}

impl Command for Heartbeat {
    type Reply = Option<i64>;

    fn apply(self, cx: &mut Ctx<'_>) -> Result<Option<i64>, StoreError> {
        if cx.session(&self.session_id).is_none() {
            return Ok(None);
        }
        cx.touch(&self.session_id);
        Ok(Some(cx.now_ms() + cx.lease_ms()))
    }
}

/// Renews the leases of many sessions at once (those with a stream open); replies the ids
/// that are no longer live.
pub struct Heartbeats {
    pub session_ids: Vec<String>,
}

impl Command for Heartbeats {
    type Reply = Vec<String>;

    fn apply(self, cx: &mut Ctx<'_>) -> Result<Vec<String>, StoreError> {
        let mut gone = Vec::new();
        for id in self.session_ids {
            if cx.session(&id).is_none() {
                gone.push(id);
            } else {
                cx.touch(&id);
            }
        }
        Ok(gone)
    }
}

/// How sessions end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Normal,
    /// Replaced by a new session of the same user: the meeting goes on.
    Replaced,
}

/// Ends sessions, logging `participant.ejected` (unless the reason is a plain leave or a
/// timeout), `participant.left`, and `meeting.ended` for rooms left empty. The last one out of
/// an expired room takes its tombstone away.
pub fn end_sessions(
    cx: &mut Ctx<'_>,
    ended: &[Arc<Entry>],
    reason: &str,
    by: &str,
    ending: Ending,
) -> Result<(), StoreError> {
    let now = cx.now_ms();
    let mut seen = BTreeSet::new();
    for e in ended {
        let s = &e.session;
        if !seen.insert(s.id.clone()) {
            continue;
        }
        let meeting = cx.meeting(&s.room);
        if cx.remove_session(&s.id).is_none() {
            continue;
        }
        if e.waiting {
            cx.event(crate::events::WAITING_PARTICIPANT_LEFT, waiting_left_payload(s, reason));
            continue;
        }
        let left_reason = match reason {
            "left" | "timeout" => reason,
            _ => {
                cx.event(crate::events::PARTICIPANT_EJECTED, s.ejected_payload(reason, by));
                "ejected"
            }
        };
        cx.event(crate::events::PARTICIPANT_LEFT, s.left_payload(now, left_reason));
        if cx.present(&s.room) > 0 || ending == Ending::Replaced {
            continue;
        }
        let (meeting_id, start) = meeting.unwrap_or((s.meeting_id.clone(), s.joined_ms));
        cx.event(
            crate::events::MEETING_ENDED,
            json!({"room": s.room, "meeting_id": meeting_id, "start_ts": start as f64 / 1000.0, "end_ts": now as f64 / 1000.0}),
        );
        if let Some(room) = cx.room(&s.room)?.filter(|r| r.is_expired(now.div_euclid(1000))) {
            if cx.waiting_in(&s.room).is_empty() {
                cx.drop_room(&room);
            }
        }
    }
    Ok(())
}

/// `waiting-participant.left`: Daily's fields for a lobby visitor who went (denied, gone, or
/// the room went).
pub fn waiting_left_payload(s: &Session, reason: &str) -> Value {
    json!({"room": s.room, "session_id": s.id, "id": s.id, "user_id": s.user_id, "user_name": s.user_name, "name": s.user_name, "reason": reason})
}

/// Ends everyone in a room (present and waiting), then removes it.
pub fn remove_room(cx: &mut Ctx<'_>, room: &crate::rooms::Room, reason: &str, by: &str) -> Result<(), StoreError> {
    let mut everyone = cx.present_in(&room.name);
    everyone.extend(cx.waiting_in(&room.name));
    end_sessions(cx, &everyone, reason, by, Ending::Normal)?;
    // Ending the last session of an expired room may have removed it already.
    if let Some(still) = cx.room(&room.name)? {
        cx.drop_room(&still);
    }
    Ok(())
}
