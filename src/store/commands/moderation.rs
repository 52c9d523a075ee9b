//! Ejections, bans and revocations. Who may do them is the API's check; when bans end and
//! which sessions a revocation covers are `sessions`' and `tokens`' rules.

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::sessions;
use crate::store::command::Command;
use crate::store::ctx::Ctx;
use crate::store::keys;
use crate::store::live::Entry;
use crate::store::records::{BanRecord, RevocationRecord};
use crate::store::StoreError;

use super::sessions::{end_sessions, Ending};

/// `POST /v1/rooms/:name/eject`. Replies the ids of the sessions ejected, or why nothing was
/// done (a refused call ejects nobody and bans nobody).
#[derive(Debug)]
pub struct Eject {
    pub room: String,
    pub ids: Vec<String>,
    pub user_ids: Vec<String>,
    pub ban: bool,
    pub ban_until_s: Option<i64>,
    /// `api:<kid>` or `token:<id>`.
    pub by: String,
    pub by_token: bool,
    /// Most bans the room may hold (`--max-bans-per-room`).
    pub max_bans: usize,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EjectError {
    /// Checked here, in order with deletions: a ban must never outlive its room (a room made
    /// later under the same name would inherit it).
    #[error("room not found")]
    NoRoom,
    #[error(
        "session '{0}' has no user_id, so a ban could not keep it out (it can come back as anyone); \
         eject it without 'ban', or revoke its token"
    )]
    Anonymous(String),
    #[error(
        "this room has {have} bans and may hold at most {max} (--max-bans-per-room); this call would add \
         {adding}: lift some bans first"
    )]
    TooManyBans { have: usize, adding: usize, max: usize },
}

impl Command for Eject {
    type Reply = Result<Vec<String>, EjectError>;

    fn apply(self, cx: &mut Ctx<'_>) -> Result<Self::Reply, StoreError> {
        let now = cx.now_ms();
        if cx.room(&self.room)?.filter(|r| !r.is_expired(cx.now_secs())).is_none() {
            return Ok(Err(EjectError::NoRoom));
        }
        let mut targets: Vec<Arc<Entry>> = Vec::new();
        for id in &self.ids {
            if let Some(e) = cx.session(id).filter(|e| e.session.room == self.room) {
                targets.push(e);
            }
        }
        for u in &self.user_ids {
            targets.extend(cx.user_sessions(&self.room, u));
        }
        targets.sort_by(|a, b| a.session.id.cmp(&b.session.id));
        targets.dedup_by(|a, b| a.session.id == b.session.id);
        let banned: BTreeSet<String> =
            self.user_ids.iter().cloned().chain(targets.iter().filter_map(|e| e.session.user_id.clone())).collect();
        if self.ban {
            if let Some(anonymous) = targets.iter().find(|e| e.session.user_id.is_none()) {
                return Ok(Err(EjectError::Anonymous(anonymous.session.id.clone())));
            }
            if let Err(e) = room_has_room_for(cx, &self.room, &banned, self.max_bans)? {
                return Ok(Err(e));
            }
        }
        let reason = if self.ban {
            "banned"
        } else if self.by_token {
            "owner"
        } else {
            "api"
        };
        end_sessions(cx, &targets, reason, &self.by, Ending::Normal)?;
        if self.ban {
            ban(cx, &self, &banned, &targets, now)?;
        }
        Ok(Ok(targets.iter().map(|e| e.session.id.clone()).collect()))
    }
}

/// Whether `room` can take bans of `users` within `max` (users banned already take no new
/// place). The room's count is the writer's, kept as bans come and go: a call at the cap costs
/// a lookup per user named, not a read of every ban.
fn room_has_room_for(
    cx: &mut Ctx<'_>,
    room: &str,
    users: &BTreeSet<String>,
    max: usize,
) -> Result<Result<(), EjectError>, StoreError> {
    let have = cx.ban_count(room)?;
    let mut adding = 0;
    for u in users {
        if cx.ban(room, u)?.is_none() {
            adding += 1;
        }
    }
    if have.saturating_add(adding) > max {
        return Ok(Err(EjectError::TooManyBans { have, adding, max }));
    }
    Ok(Ok(()))
}

/// Bans `users` (each with `ban.created`) and revokes the tokens the ejected sessions used
/// (each with `meeting-token.revoked`).
fn ban(
    cx: &mut Ctx<'_>,
    eject: &Eject,
    users: &BTreeSet<String>,
    targets: &[Arc<Entry>],
    now: i64,
) -> Result<(), StoreError> {
    let room_exp = cx.room(&eject.room)?.and_then(|r| r.exp());
    let until = sessions::ban_until_ms(eject.by_token, eject.ban_until_s, room_exp, now);
    for u in users {
        let ban = BanRecord { until_ms: until, created_ms: now, by: eject.by.clone() };
        cx.put_ban(&eject.room, u, &ban)?;
        cx.event(
            crate::events::EventKind::BanCreated,
            json!({"room": eject.room, "user_id": u, "until": until.map(|ms| ms / 1000), "by": eject.by}),
        );
    }
    for e in targets {
        let Some(token_id) = &e.session.token_id else { continue };
        let exp = e.token_exp.map(|x| (x * 1000.0) as i64);
        let r = RevocationRecord { until_ms: exp, issued_before_s: None, created_ms: now };
        cx.put_revocation(keys::revoke_token(token_id), &r)?;
        cx.event(
            crate::events::EventKind::MeetingTokenRevoked,
            json!({"room": eject.room, "jti": crate::tokens::short_id(token_id), "user_id": e.session.user_id, "by": eject.by, "reason": "banned"}),
        );
    }
    Ok(())
}

/// Lifts a ban. Replies false when there was none.
#[derive(Debug)]
pub struct LiftBan {
    pub room: String,
    pub user_id: String,
}

impl Command for LiftBan {
    type Reply = bool;

    fn apply(self, cx: &mut Ctx<'_>) -> Result<bool, StoreError> {
        if cx.ban(&self.room, &self.user_id)?.is_none() {
            return Ok(false);
        }
        cx.del_ban(&self.room, &self.user_id)?;
        cx.event(
            crate::events::EventKind::BanRemoved,
            json!({"room": self.room, "user_id": self.user_id, "reason": "lifted"}),
        );
        Ok(true)
    }
}

/// What to revoke.
#[derive(Debug)]
pub enum Revoke {
    /// One token, by `jti` or `sha256:<hash>`; kept until `exp_ms` (forever when `None`).
    /// `room` is the token's room, when known, for the event.
    Token { token_id: String, exp_ms: Option<i64>, room: Option<String>, by: String },
    /// Every token for (room, user) issued up to now.
    RoomUser { room: String, user_id: String, by: String },
    /// Every token for the room issued before `before_s` (and every token without `iat`).
    RoomBefore { room: String, before_s: f64, by: String },
}

impl Command for Revoke {
    /// The sessions ejected.
    type Reply = Vec<String>;

    fn apply(self, cx: &mut Ctx<'_>) -> Result<Vec<String>, StoreError> {
        let now = cx.now_ms();
        let record = |until_ms, issued_before_s| RevocationRecord { until_ms, issued_before_s, created_ms: now };
        let (targets, by, mut payload) = match self {
            Revoke::Token { token_id, exp_ms, room, by } => {
                cx.put_revocation(keys::revoke_token(&token_id), &record(exp_ms, None))?;
                let targets = cx.token_sessions(&token_id);
                let payload = json!({"jti": crate::tokens::short_id(&token_id), "room": room, "until": exp_ms.map(|ms| ms / 1000)});
                (targets, by, payload)
            }
            Revoke::RoomUser { room, user_id, by } => {
                let before = (now / 1000 + 1) as f64;
                cx.put_revocation(keys::revoke_user(&room, &user_id), &record(None, Some(before)))?;
                let targets = cx.user_sessions(&room, &user_id).into_iter().filter(|e| e.session.token_id.is_some());
                let payload = json!({"room": room, "user_id": user_id, "issued_before": before});
                (targets.collect(), by, payload)
            }
            Revoke::RoomBefore { room, before_s, by } => {
                cx.put_revocation(keys::revoke_room(&room), &record(None, Some(before_s)))?;
                let mut all = cx.present_in(&room);
                all.extend(cx.waiting_in(&room));
                let hit = all
                    .into_iter()
                    .filter(|e| e.session.token_id.is_some() && e.session.token_iat.is_none_or(|iat| iat < before_s));
                (hit.collect::<Vec<_>>(), by, json!({"room": room, "issued_before": before_s}))
            }
        };
        if let Some(o) = payload.as_object_mut() {
            o.insert("by".into(), json!(by));
            if o.get("room").is_none_or(Value::is_null) {
                o.insert("room".into(), json!(targets.first().map(|e| e.session.room.clone())));
            }
        }
        cx.event(crate::events::EventKind::MeetingTokenRevoked, payload);
        end_sessions(cx, &targets, "token_revoked", &by, Ending::Normal)?;
        Ok(targets.iter().map(|e| e.session.id.clone()).collect())
    }
}

/// `POST /v1/rooms/:name/update-permissions`: patches the permissions of present sessions —
/// each listed id its own patch, `*` everyone present not listed (Daily's rules; sessions that
/// join later keep their token's or room's). Each session changed gets `participant.updated`.
#[derive(Debug)]
pub struct UpdatePermissions {
    pub room: String,
    /// (session id or `*`, patch), already validated.
    pub updates: Vec<(String, serde_json::Map<String, Value>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum PermissionsError {
    #[error("room not found")]
    NoRoom,
}

impl Command for UpdatePermissions {
    /// The ids of the sessions whose permissions changed.
    type Reply = Result<Vec<String>, PermissionsError>;

    fn apply(self, cx: &mut Ctx<'_>) -> Result<Self::Reply, StoreError> {
        if cx.room(&self.room)?.is_none() {
            return Ok(Err(PermissionsError::NoRoom));
        }
        let star = self.updates.iter().find(|(id, _)| id == "*").map(|(_, p)| p);
        let mut updated = Vec::new();
        for e in cx.present_in(&self.room) {
            let own = self.updates.iter().find(|(id, _)| *id == e.session.id).map(|(_, p)| p);
            let Some(patch) = own.or(star) else { continue };
            let permissions = sessions::patch_permissions(e.session.permissions.as_ref(), patch);
            if patch.contains_key("canAdmin") {
                remember_admin_right(cx, &e, &permissions)?;
            }
            if e.session.permissions.as_ref() == Some(&permissions) {
                continue;
            }
            let shown_before = sessions::has_presence(e.session.permissions.as_ref());
            let mut next = (*e).clone();
            next.session.permissions = Some(permissions);
            let mut payload = next.session.joined_payload();
            // Hidden or shown: streams must redraw who is present (the fan-out sends a resync).
            payload["presence_changed"] =
                json!(shown_before != sessions::has_presence(next.session.permissions.as_ref()));
            cx.event(crate::events::EventKind::ParticipantUpdated, payload);
            updated.push(next.session.id.clone());
            cx.put_session(next)?;
        }
        Ok(Ok(updated))
    }
}

/// A `canAdmin` update sticks to the session's token (its lineage): withdrawn, later sessions of
/// the token start without the right to administer participants, and the token without a
/// session may not use it either, until the token expires; given back, the token has it again.
/// Owners keep theirs whatever `canAdmin` says, as they do for the session.
fn remember_admin_right(cx: &mut Ctx<'_>, e: &Entry, permissions: &Value) -> Result<(), StoreError> {
    let (false, Some(token_id)) = (e.session.owner, &e.session.token_id) else { return Ok(()) };
    if crate::tokens::can_admin_participants(false, Some(permissions)) {
        return cx.set_admin_withdrawn(token_id, None);
    }
    let until_ms = e.token_exp.map(|exp| (exp * 1000.0).ceil() as i64);
    cx.set_admin_withdrawn(token_id, Some(until_ms))
}
