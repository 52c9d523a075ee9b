//! Joining, leaving and keeping a lease, and ending sessions (which every kind of ejection,
//! expiry and deletion does through [`end_sessions`]).

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::rooms::Room;
use crate::sessions::{self, Denial, JoinFacts, Session, TokenCheck};
use crate::store::command::Command;
use crate::store::ctx::Ctx;
use crate::store::live::Entry;
use crate::store::records::MeetingRecord;
use crate::store::StoreError;
use crate::tokens::Claims;

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
    /// Knocked: waiting in the room's lobby for an owner's decision.
    Waiting(Box<Session>),
    Denied(Denial),
}

/// Most people waiting in one room's lobby; past it a knock answers 429.
pub const MAX_WAITING_PER_ROOM: usize = 100;

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
        let decision = sessions::decide_join(&facts);
        // Knock-to-join: a private room with `enable_knocking` puts a tokenless visitor (and a
        // token holder whose token says `knocking: true`) in its lobby instead.
        let knocks = room.as_ref().is_some_and(sessions::room_knocks)
            && match &decision {
                Err(d) => d.detail == "private_room",
                Ok(()) => claims.is_some_and(|c| !c.is_owner && c.ui.get("knocking") == Some(&Value::Bool(true))),
            };
        let room = match (decision, room) {
            (_, Some(room)) if knocks => return knock(cx, &self, &room, claims),
            (Ok(()), Some(room)) => room,
            (Err(d), _) => {
                denied(cx, &self, &d);
                return Ok(JoinOutcome::Denied(d));
            }
            (Ok(()), None) => return Err(StoreError::Unavailable("join admitted without a room".into())),
        };
        // A replaced session's meeting goes on with its replacement.
        let carried = if duplicates.is_empty() { None } else { cx.meeting(&self.room) };
        end_sessions(cx, &duplicates, "duplicate_user_id", "scheduler", Ending::Replaced)?;
        let deadline = sessions::eject_deadline(&room, claims, now);
        let (token_id, token_iat, token_exp) = self.token.session_parts();
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
            permissions: starting_permissions(cx, &room, &self.token)?,
            meeting_id: String::new(),
            room_rules: sessions::follows_room_rules(claims),
        };
        let timer = sessions::eject_timer(&room, claims, now).map(|(at, _)| at);
        let session = enter(cx, session, self.secret_digest, token_exp, timer, carried)?;
        Ok(JoinOutcome::Joined(Box::new(session)))
    }
}

/// The permissions a new session starts with: the room's and its token's, less the right to
/// administer participants if update-permissions withdrew it from an earlier session of the
/// token.
fn starting_permissions(cx: &Ctx<'_>, room: &Room, token: &TokenCheck) -> Result<Option<Value>, StoreError> {
    let TokenCheck::Valid { claims, token_id } = token else {
        return Ok(sessions::initial_permissions(room, None));
    };
    let permissions = sessions::initial_permissions(room, Some(claims));
    if cx.admin_withdrawn(token_id)? {
        return Ok(sessions::without_participants_admin(permissions));
    }
    Ok(permissions)
}

/// Makes a session present: starts the room's meeting if it has none (`meeting.started`),
/// records it (and its part in the meeting's history), logs `participant.joined`.
fn enter(
    cx: &mut Ctx<'_>,
    mut session: Session,
    digest: [u8; 32],
    token_exp: Option<f64>,
    eject_timer_ms: Option<i64>,
    carried: Option<(String, i64)>,
) -> Result<Session, StoreError> {
    let now = cx.now_ms();
    let (meeting_id, start_ms, started) = match carried.or_else(|| cx.meeting(&session.room)) {
        Some((id, start)) => (id, start, false),
        None => {
            let id = uuid::Uuid::now_v7().to_string();
            cx.event(
                crate::events::EventKind::MeetingStarted,
                json!({"room": session.room, "meeting_id": id, "start_ts": now as f64 / 1000.0}),
            );
            (id, now, true)
        }
    };
    session.meeting_id = meeting_id.clone();
    let entry = Entry {
        session: session.clone(),
        digest,
        token_exp,
        eject_timer_ms,
        meeting_start_ms: start_ms,
        waiting: false,
    };
    cx.put_session(entry)?;
    // The record is written when a meeting starts and again at departures (see `end`): a join
    // into a running meeting writes nothing of it; its peak is counted when someone leaves, and
    // readers take the larger of the record and the room's live count meanwhile.
    if started {
        let m = MeetingRecord {
            id: meeting_id.clone(),
            room: session.room.clone(),
            start_ms: now,
            end_ms: None,
            max_participants: cx.present(&session.room),
        };
        cx.put_meeting(&m)?;
    }
    cx.put_meeting_participant(&session, None)?;
    cx.event(crate::events::EventKind::ParticipantJoined, session.joined_payload());
    Ok(session)
}

/// Puts a visitor in the room's lobby: a waiting session (its own id, secret and lease) and
/// `waiting-participant.joined`; never counted toward `max_participants`, never in presence.
fn knock(cx: &mut Ctx<'_>, req: &Join, room: &Room, claims: Option<&Claims>) -> Result<JoinOutcome, StoreError> {
    let now = cx.now_ms();
    if cx.waiting_in(&req.room).len() >= MAX_WAITING_PER_ROOM {
        let d = Denial::lobby_full(MAX_WAITING_PER_ROOM);
        denied(cx, req, &d);
        return Ok(JoinOutcome::Denied(d));
    }
    // A token's own ejection rules count from the knock; the room's, from the admission.
    let room_rules = sessions::follows_room_rules(claims);
    let (deadline, timer) = if room_rules {
        (None, None)
    } else {
        (sessions::eject_deadline(room, claims, now), sessions::eject_timer(room, claims, now).map(|(at, _)| at))
    };
    let (token_id, token_iat, token_exp) = req.token.session_parts();
    let session = Session {
        id: req.session_id.clone(),
        room: req.room.clone(),
        user_id: claims.and_then(|c| c.user_id.clone()),
        user_name: claims.and_then(|c| c.user_name.clone()).or(req.user_name.clone()),
        owner: false,
        token_id,
        token_iat,
        joined_ms: now,
        eject_at_ms: deadline.map(|d| d.0),
        eject_reason: deadline.map(|d| d.1.to_string()),
        permissions: starting_permissions(cx, room, &req.token)?,
        meeting_id: String::new(),
        room_rules,
    };
    cx.put_session(Entry {
        session: session.clone(),
        digest: req.secret_digest,
        token_exp,
        eject_timer_ms: timer,
        meeting_start_ms: 0,
        waiting: true,
    })?;
    cx.event(crate::events::EventKind::WaitingParticipantJoined, session.waiting_payload());
    Ok(JoinOutcome::Waiting(Box::new(session)))
}

/// Which waiting participants an owner's decision is about.
#[derive(Debug, Clone)]
pub enum Waiting {
    All,
    Ids(Vec<String>),
}

/// An owner's decision on waiting participants (daily-js `updateWaitingParticipants`):
/// `grant` re-runs the join decision now and makes each a full session; otherwise each leaves
/// the lobby (`waiting-participant.left`, reason `denied`).
#[derive(Debug)]
pub struct DecideWaiting {
    pub room: String,
    /// Per target: grant (`true`) or deny; `All` with its own decision for everyone else.
    pub decisions: Vec<(Waiting, bool)>,
    pub by: String,
    pub leeway_s: u64,
}

/// What became of each waiting participant.
#[derive(Debug, Default)]
pub struct WaitingReport {
    pub granted: Vec<String>,
    pub denied: Vec<String>,
    /// Granted, but the join decision now refuses: (id, why). They leave the lobby.
    pub refused: Vec<(String, Denial)>,
}

#[derive(Debug, thiserror::Error)]
pub enum WaitingError {
    #[error("'{0}' is not waiting in this room")]
    NotWaiting(String),
}

impl Command for DecideWaiting {
    type Reply = Result<WaitingReport, WaitingError>;

    fn apply(self, cx: &mut Ctx<'_>) -> Result<Self::Reply, StoreError> {
        let waiting = cx.waiting_in(&self.room);
        let mut plan: Vec<(Arc<Entry>, bool)> = Vec::new();
        let mut everyone_else = None;
        for (target, grant) in &self.decisions {
            match target {
                Waiting::All => everyone_else = Some(*grant),
                Waiting::Ids(ids) => {
                    for id in ids {
                        let Some(e) = waiting.iter().find(|e| &e.session.id == id) else {
                            return Ok(Err(WaitingError::NotWaiting(id.clone())));
                        };
                        if !plan.iter().any(|(p, _)| p.session.id == *id) {
                            plan.push((e.clone(), *grant));
                        }
                    }
                }
            }
        }
        if let Some(grant) = everyone_else {
            for e in &waiting {
                if !plan.iter().any(|(p, _)| p.session.id == e.session.id) {
                    plan.push((e.clone(), grant));
                }
            }
        }
        let mut report = WaitingReport::default();
        for (e, grant) in plan {
            if !grant {
                end_sessions(cx, std::slice::from_ref(&e), "denied", &self.by, Ending::Normal)?;
                report.denied.push(e.session.id.clone());
                continue;
            }
            match admit(cx, &e, self.leeway_s)? {
                Ok(()) => report.granted.push(e.session.id.clone()),
                Err(d) => {
                    end_sessions(cx, std::slice::from_ref(&e), d.detail, &self.by, Ending::Normal)?;
                    report.refused.push((e.session.id.clone(), d));
                }
            }
        }
        Ok(Ok(report))
    }
}

/// Admits one waiting participant if the join decision allows it now.
fn admit(cx: &mut Ctx<'_>, e: &Entry, leeway_s: u64) -> Result<Result<(), Denial>, StoreError> {
    let now = cx.now_ms();
    let s = &e.session;
    let room = cx.room(&s.room)?;
    let revoked = match &s.token_id {
        Some(token_id) => {
            let c = Claims {
                user_id: s.user_id.clone(),
                iat: s.token_iat,
                room: Some(s.room.clone()),
                ..Claims::default()
            };
            cx.is_revoked(&c, token_id, Some(&s.room))?
        }
        None => false,
    };
    let banned = match &s.user_id {
        Some(u) => cx.is_banned(&s.room, u)?,
        None => false,
    };
    // As at a join: with unique user ids, the user's present sessions give way to this one
    // (and do not count toward the capacity it needs).
    let unique =
        room.as_ref().is_some_and(|r| r.config.get("enforce_unique_user_ids").and_then(Value::as_bool) == Some(true));
    let duplicates: Vec<Arc<Entry>> = match (&s.user_id, unique) {
        (Some(u), true) => {
            cx.user_sessions(&s.room, u).into_iter().filter(|d| !d.waiting && d.session.id != s.id).collect()
        }
        _ => Vec::new(),
    };
    let facts = sessions::GrantFacts {
        now_ms: now,
        leeway_s,
        room: room.as_ref(),
        token_exp: e.token_exp,
        revoked,
        banned,
        present: cx.present(&s.room).saturating_sub(duplicates.len() as u64),
    };
    if let Err(d) = sessions::decide_grant(&facts) {
        return Ok(Err(d));
    }
    let Some(room) = room else { return Err(StoreError::Unavailable("a grant decided without a room".into())) };
    let carried = if duplicates.is_empty() { None } else { cx.meeting(&s.room) };
    end_sessions(cx, &duplicates, "duplicate_user_id", "scheduler", Ending::Replaced)?;
    let mut session = s.clone();
    session.joined_ms = now;
    let mut timer = e.eject_timer_ms;
    if session.room_rules {
        let deadline = sessions::eject_deadline(&room, None, now);
        session.eject_at_ms = deadline.map(|d| d.0);
        session.eject_reason = deadline.map(|d| d.1.to_string());
        timer = sessions::eject_timer(&room, None, now).map(|(at, _)| at);
    }
    // The lobby entry gives way to the full session (same id, secret and lease).
    enter(cx, session, e.digest, e.token_exp, timer, carried)?;
    Ok(Ok(()))
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
        crate::events::EventKind::ParticipantJoinDenied,
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
            cx.event(crate::events::EventKind::WaitingParticipantLeft, waiting_left_payload(s, reason));
            continue;
        }
        let left_reason = match reason {
            "left" | "timeout" => reason,
            _ => {
                cx.event(crate::events::EventKind::ParticipantEjected, s.ejected_payload(reason, by));
                "ejected"
            }
        };
        cx.event(crate::events::EventKind::ParticipantLeft, s.left_payload(now, left_reason));
        cx.put_meeting_participant(s, Some(now))?;
        let present = cx.present(&s.room);
        let over = present == 0 && ending != Ending::Replaced;
        let (meeting_id, start) = meeting.unwrap_or((s.meeting_id.clone(), s.joined_ms));
        // The meeting's peak is the count just before this departure, if that is a new high.
        let (mut m, mut changed) = match cx.meeting_record(&meeting_id)? {
            Some(m) => (m, false),
            // A meeting that started before meetings were recorded.
            None => {
                let m = MeetingRecord {
                    id: meeting_id.clone(),
                    room: s.room.clone(),
                    start_ms: start,
                    end_ms: None,
                    max_participants: 0,
                };
                (m, true)
            }
        };
        if present + 1 > m.max_participants {
            m.max_participants = present + 1;
            changed = true;
        }
        if over {
            m.end_ms = Some(now);
            changed = true;
        }
        if changed {
            cx.put_meeting(&m)?;
        }
        if !over {
            continue;
        }
        cx.del_session_data(&meeting_id)?;
        cx.event(
            crate::events::EventKind::MeetingEnded,
            json!({"room": s.room, "meeting_id": meeting_id, "start_ts": start as f64 / 1000.0, "end_ts": now as f64 / 1000.0}),
        );
        if let Some(room) = cx.room(&s.room)?.filter(|r| r.is_expired(now.div_euclid(1000))) {
            if cx.waiting_in(&s.room).is_empty() {
                drop_room(cx, &room, "room_expired")?;
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
        drop_room(cx, &still, reason)?;
    }
    Ok(())
}

/// Removes a room that is gone (deleted, or expired with nobody left in it): its records, its
/// deadline, and its bans, each with `ban.removed` (`reason`), so that a room made later under
/// the same name starts without them.
pub fn drop_room(cx: &mut Ctx<'_>, room: &crate::rooms::Room, reason: &str) -> Result<(), StoreError> {
    cx.drop_room(room);
    for user in cx.banned_in(&room.name, usize::MAX)? {
        cx.del_ban(&room.name, &user)?;
        cx.event(crate::events::EventKind::BanRemoved, json!({"room": room.name, "user_id": user, "reason": reason}));
    }
    cx.forget_ban_count(&room.name);
    Ok(())
}

/// A participant's media went up or down in Janus (what Janus's event handler told): the event
/// `participant.media`, with the session's `participant.joined` fields and `media`
/// (`connected` or `disconnected`). Nothing is stored: a session that ended meanwhile gets
/// none.
#[derive(Debug)]
pub struct MediaChanged {
    pub session: String,
    pub connected: bool,
}

impl Command for MediaChanged {
    /// Whether the session was live (and the event written).
    type Reply = bool;

    fn apply(self, cx: &mut Ctx<'_>) -> Result<bool, StoreError> {
        let Some(e) = cx.session(&self.session).filter(|e| !e.waiting) else { return Ok(false) };
        let mut payload = e.session.joined_payload();
        payload["media"] = serde_json::json!(if self.connected { "connected" } else { "disconnected" });
        cx.event(crate::events::EventKind::ParticipantMedia, payload);
        Ok(true)
    }
}
