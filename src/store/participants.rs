//! The writer's participant commands: joins (and refusals), leaves, heartbeats, ejections,
//! bans, revocations, and firing due deadlines. Decisions come from `sessions` and `tokens`;
//! this file gathers the facts, builds the write set, and keeps the timers tree in step.
//!
//! Must not: write anything outside a write set, or put a secret in an event.

use std::collections::{BTreeSet, HashMap};

use serde_json::{json, Value};

use super::keys::{self, TIMER_BAN, TIMER_EJECT, TIMER_LEASE, TIMER_ROOM_EXP};
use super::records::{self, BanRecord, RevocationRecord, SessionRecord};
use super::writer::{LiveChange, Outcome, RoomLive, WriteSet, Writer};
use super::{StoreError, Tree, Trees};
use crate::sessions::{self, Denial, JoinFacts, Session, TokenCheck};
use crate::tokens::Claims;

/// A join attempt, verified as far as the handler can without state.
#[derive(Debug)]
pub struct JoinRequest {
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
pub struct EjectRequest {
    pub room: String,
    pub ids: Vec<String>,
    pub user_ids: Vec<String>,
    pub ban: bool,
    pub ban_until_s: Option<i64>,
    /// `api:<kid>` or `token:<id>`.
    pub by: String,
    pub by_token: bool,
}

#[derive(Debug)]
pub enum RevokeRequest {
    /// One token, by `jti` or `sha256:<hash>`; kept until `exp_ms` (forever when `None`).
    /// `room` is the token's room, when known, for the event.
    Token { token_id: String, exp_ms: Option<i64>, room: Option<String>, by: String },
    /// Every token for (room, user) issued up to now.
    RoomUser { room: String, user_id: String, by: String },
    /// Every token for the room issued before `before_s` (and every token without `iat`).
    RoomBefore { room: String, before_s: f64, by: String },
}

pub(super) fn decode_session(key: &[u8], bytes: &[u8]) -> Result<(Session, [u8; 32]), StoreError> {
    let r: SessionRecord = records::decode("sessions", key, records::SESSION_V1, bytes)?;
    let permissions = r.permissions_json.as_deref().and_then(|p| serde_json::from_str(p).ok());
    let s = Session {
        id: r.id,
        room: r.room,
        user_id: r.user_id,
        user_name: r.user_name,
        owner: r.owner,
        token_id: r.token_id,
        token_iat: r.token_iat,
        joined_ms: r.joined_ms,
        eject_at_ms: r.eject_at_ms,
        eject_reason: r.eject_reason,
        permissions,
        meeting_id: r.meeting_id,
        room_rules: r.room_rules,
    };
    Ok((s, r.secret_digest))
}

pub(super) fn read_session(tree: &sled::Tree, id: &str) -> Result<Option<(Session, [u8; 32])>, StoreError> {
    match tree.get(id.as_bytes())? {
        Some(v) => Ok(Some(decode_session(id.as_bytes(), &v)?)),
        None => Ok(None),
    }
}

fn full_record(tree: &sled::Tree, id: &str) -> Result<Option<SessionRecord>, StoreError> {
    match tree.get(id.as_bytes())? {
        Some(v) => Ok(Some(records::decode("sessions", id.as_bytes(), records::SESSION_V1, &v)?)),
        None => Ok(None),
    }
}

pub(super) fn read_bans(tree: &sled::Tree, room: &str, now_ms: i64) -> Result<Vec<(String, BanRecord)>, StoreError> {
    let prefix = keys::room_prefix(room);
    let mut out = Vec::new();
    for item in tree.scan_prefix(&prefix) {
        let (k, v) = item?;
        let ban: BanRecord = records::decode("bans", &k, records::BAN_V1, &v)?;
        if ban.until_ms.is_none_or(|u| u > now_ms) {
            out.push((String::from_utf8_lossy(&k[prefix.len()..]).to_string(), ban));
        }
    }
    Ok(out)
}

pub(super) fn is_banned(tree: &sled::Tree, room: &str, user_id: &str, now_ms: i64) -> Result<bool, StoreError> {
    let key = keys::pair(room, user_id);
    match tree.get(&key)? {
        Some(v) => {
            let ban: BanRecord = records::decode("bans", &key, records::BAN_V1, &v)?;
            Ok(ban.until_ms.is_none_or(|u| u > now_ms))
        }
        None => Ok(false),
    }
}

fn revocation(tree: &sled::Tree, key: &[u8]) -> Result<Option<RevocationRecord>, StoreError> {
    match tree.get(key)? {
        Some(v) => Ok(Some(records::decode("revocations", key, records::REVOCATION_V1, &v)?)),
        None => Ok(None),
    }
}

/// Revoked for use in `room`: by its id, by (room, user) before its `iat`, or by room before its `iat`.
pub(super) fn is_revoked(
    tree: &sled::Tree,
    c: &Claims,
    token_id: &str,
    room: Option<&str>,
    now_ms: i64,
) -> Result<bool, StoreError> {
    if let Some(r) = revocation(tree, &keys::revoke_token(token_id))? {
        if r.until_ms.is_none_or(|u| u > now_ms) {
            return Ok(true);
        }
    }
    let Some(room) = room.or(c.room.as_deref()) else {
        return Ok(false);
    };
    let before = |r: Option<RevocationRecord>| {
        r.and_then(|r| r.issued_before_s).is_some_and(|b| c.iat.is_none_or(|iat| iat < b))
    };
    if let Some(user) = &c.user_id {
        if before(revocation(tree, &keys::revoke_user(room, user))?) {
            return Ok(true);
        }
    }
    Ok(before(revocation(tree, &keys::revoke_room(room))?))
}

/// The writer's presence bookkeeping from the sessions tree: per-room counts and meetings, and
/// a fresh lease for every session.
pub(super) fn rebuild_presence(
    trees: &Trees,
    now_ms: i64,
) -> Result<(HashMap<String, RoomLive>, HashMap<String, i64>), StoreError> {
    let mut live: HashMap<String, RoomLive> = HashMap::new();
    let mut leases = HashMap::new();
    for item in trees.get(Tree::Sessions).iter() {
        let (k, v) = item?;
        let r: SessionRecord = records::decode("sessions", &k, records::SESSION_V1, &v)?;
        let e = live.entry(r.room.clone()).or_insert(RoomLive {
            count: 0,
            meeting_id: r.meeting_id.clone(),
            start_ms: r.meeting_start_ms,
        });
        e.count += 1;
        leases.insert(r.id, now_ms);
    }
    Ok((live, leases))
}

impl Writer {
    fn sessions_tree(&self) -> &sled::Tree {
        self.s.trees.get(Tree::Sessions)
    }

    fn present(&self, room: &str) -> u64 {
        self.live.get(room).map_or(0, |l| l.count)
    }

    /// Every session of a room (no check-on-read: the writer ends even overdue ones).
    pub(super) fn room_sessions(&self, room: &str) -> Result<Vec<Session>, StoreError> {
        self.sessions_by_index(Tree::SessionsByRoom, &keys::room_prefix(room))
    }

    /// Every session of one user id in one room.
    fn user_sessions(&self, room: &str, user: &str) -> Result<Vec<Session>, StoreError> {
        self.sessions_by_index(Tree::SessionsByUser, &[keys::pair(room, user), vec![0]].concat())
    }

    fn sessions_by_index(&self, t: Tree, prefix: &[u8]) -> Result<Vec<Session>, StoreError> {
        let mut out = Vec::new();
        for k in self.s.trees.get(t).scan_prefix(prefix).keys() {
            let k = k?;
            let id = k.rsplit(|b| *b == 0).next().map(|id| String::from_utf8_lossy(id).to_string()).unwrap_or_default();
            if let Some((s, _)) = read_session(self.sessions_tree(), &id)? {
                out.push(s);
            }
        }
        Ok(out)
    }

    fn put_timer(&self, ws: &mut WriteSet, kind: u8, id: &str, deadline_ms: i64) -> Result<(), StoreError> {
        self.del_timer(ws, kind, id)?;
        ws.put(Tree::Timers, keys::timer(deadline_ms, kind, id), Vec::new());
        ws.put(Tree::TimersByKey, keys::timer_ref(kind, id), deadline_ms.to_be_bytes().to_vec());
        Ok(())
    }

    fn del_timer(&self, ws: &mut WriteSet, kind: u8, id: &str) -> Result<(), StoreError> {
        let r = keys::timer_ref(kind, id);
        if let Some(d) = self.s.trees.get(Tree::TimersByKey).get(&r)? {
            let deadline = <[u8; 8]>::try_from(d.as_ref()).map(i64::from_be_bytes).unwrap_or(0);
            ws.del(Tree::Timers, keys::timer(deadline, kind, id));
            ws.del(Tree::TimersByKey, r);
        }
        Ok(())
    }

    fn denied(&self, ws: &mut WriteSet, req: &JoinRequest, d: &Denial) {
        let (user_id, user_name, jti) = match &req.token {
            TokenCheck::Valid { claims, token_id } => (
                claims.user_id.clone(),
                claims.user_name.clone().or(req.user_name.clone()),
                Some(crate::tokens::short_id(token_id).to_string()),
            ),
            _ => (None, req.user_name.clone(), None),
        };
        ws.event(
            crate::events::PARTICIPANT_JOIN_DENIED,
            json!({"room": req.room, "reason": d.error, "detail": d.detail, "info": d.info, "user_id": user_id, "user_name": user_name, "jti": jti}),
        );
    }

    pub(super) fn join(&mut self, req: &JoinRequest) -> Result<(Option<WriteSet>, Outcome), StoreError> {
        let now = self.now_ms();
        let room = self.get_room(&req.room)?;
        let claims = match &req.token {
            TokenCheck::Valid { claims, .. } => Some(claims.as_ref()),
            _ => None,
        };
        let revoked = match &req.token {
            TokenCheck::Valid { claims, token_id } => {
                is_revoked(self.s.trees.get(Tree::Revocations), claims, token_id, Some(&req.room), now)?
            }
            _ => false,
        };
        let user_id = claims.and_then(|c| c.user_id.clone());
        let banned = match &user_id {
            Some(u) => is_banned(self.s.trees.get(Tree::Bans), &req.room, u, now)?,
            None => false,
        };
        let unique = room
            .as_ref()
            .is_some_and(|r| r.config.get("enforce_unique_user_ids").and_then(Value::as_bool) == Some(true));
        let duplicates = match (&user_id, unique) {
            (Some(u), true) => self.user_sessions(&req.room, u)?,
            _ => Vec::new(),
        };
        let facts = JoinFacts {
            now_ms: now,
            leeway_s: req.leeway_s,
            room: room.as_ref(),
            token: &req.token,
            revoked,
            banned,
            present: self.present(&req.room).saturating_sub(duplicates.len() as u64),
        };
        let mut ws = WriteSet::default();
        let room = match (sessions::decide_join(&facts), room) {
            (Ok(()), Some(room)) => room,
            (Err(d), _) => {
                self.denied(&mut ws, req, &d);
                return Ok((Some(ws), Outcome::JoinDenied(d)));
            }
            (Ok(()), None) => return Err(StoreError::Unavailable("join admitted without a room".into())),
        };
        self.end_sessions_inner(&mut ws, &duplicates, "duplicate_user_id", "scheduler", true)?;
        let (meeting_id, start_ms) = match self.live.get(&req.room) {
            Some(l) if l.count > 0 => (l.meeting_id.clone(), l.start_ms),
            _ => {
                let id = uuid::Uuid::new_v4().to_string();
                ws.event(
                    crate::events::MEETING_STARTED,
                    json!({"room": req.room, "meeting_id": id, "start_ts": now as f64 / 1000.0}),
                );
                (id, now)
            }
        };
        let deadline = sessions::eject_deadline(&room, claims, now);
        let (token_id, token_iat, token_exp) = match &req.token {
            TokenCheck::Valid { claims, token_id } => (Some(token_id.clone()), claims.iat, claims.exp),
            _ => (None, None, None),
        };
        let record = SessionRecord {
            id: req.session_id.clone(),
            secret_digest: req.secret_digest,
            room: req.room.clone(),
            user_id: user_id.clone(),
            user_name: claims.and_then(|c| c.user_name.clone()).or(req.user_name.clone()),
            owner: claims.is_some_and(|c| c.is_owner),
            token_id,
            token_iat,
            token_exp,
            joined_ms: now,
            eject_at_ms: deadline.map(|d| d.0),
            eject_reason: deadline.map(|d| d.1.to_string()),
            permissions_json: claims.and_then(|c| c.permissions.as_ref()).map(Value::to_string),
            meeting_id: meeting_id.clone(),
            meeting_start_ms: start_ms,
            room_rules: sessions::follows_room_rules(claims),
        };
        self.put_session(&mut ws, &record)?;
        self.put_timer(&mut ws, TIMER_LEASE, &record.id, now + self.s.lease_ms)?;
        if let Some((at, _)) = sessions::eject_timer(&room, claims, now) {
            self.put_timer(&mut ws, TIMER_EJECT, &record.id, at)?;
        }
        let (session, _) = decode_session(record.id.as_bytes(), &records::encode(records::SESSION_V1, &record)?)?;
        ws.event(crate::events::PARTICIPANT_JOINED, session.joined_payload());
        ws.live.push(LiveChange::Joined {
            room: req.room.clone(),
            session_id: record.id.clone(),
            meeting_id,
            start_ms,
            at_ms: now,
        });
        Ok((Some(ws), Outcome::Joined(Box::new(session))))
    }

    fn put_session(&self, ws: &mut WriteSet, r: &SessionRecord) -> Result<(), StoreError> {
        ws.put(Tree::Sessions, r.id.as_bytes(), records::encode(records::SESSION_V1, r)?);
        ws.put(Tree::SessionsByRoom, keys::pair(&r.room, &r.id), Vec::new());
        if let Some(t) = &r.token_id {
            ws.put(Tree::SessionsByToken, keys::pair(t, &r.id), Vec::new());
        }
        if let Some(u) = &r.user_id {
            ws.put(Tree::SessionsByUser, keys::triple(&r.room, u, &r.id), Vec::new());
        }
        Ok(())
    }

    /// Ends sessions (all of one room or not), logging `participant.ejected` (unless the reason
    /// is a plain leave or timeout), `participant.left`, and `meeting.ended` for rooms left
    /// empty. Returns how many remain in the room of the last session ended.
    pub(super) fn end_sessions(
        &self,
        ws: &mut WriteSet,
        ended: &[Session],
        reason: &str,
        by: &str,
    ) -> Result<(), StoreError> {
        self.end_sessions_inner(ws, ended, reason, by, false)
    }

    fn end_sessions_inner(
        &self,
        ws: &mut WriteSet,
        ended: &[Session],
        reason: &str,
        by: &str,
        replaced: bool,
    ) -> Result<(), StoreError> {
        let now = self.now_ms();
        let mut remaining: HashMap<&str, u64> = HashMap::new();
        let mut seen = BTreeSet::new();
        for s in ended {
            if !seen.insert(s.id.clone()) {
                continue;
            }
            ws.del(Tree::Sessions, s.id.as_bytes());
            ws.del(Tree::SessionsByRoom, keys::pair(&s.room, &s.id));
            if let Some(t) = &s.token_id {
                ws.del(Tree::SessionsByToken, keys::pair(t, &s.id));
            }
            if let Some(u) = &s.user_id {
                ws.del(Tree::SessionsByUser, keys::triple(&s.room, u, &s.id));
            }
            self.del_timer(ws, TIMER_LEASE, &s.id)?;
            self.del_timer(ws, TIMER_EJECT, &s.id)?;
            let left_reason = match reason {
                "left" | "timeout" => reason,
                _ => {
                    ws.event(crate::events::PARTICIPANT_EJECTED, s.ejected_payload(reason, by));
                    "ejected"
                }
            };
            ws.event(crate::events::PARTICIPANT_LEFT, s.left_payload(now, left_reason));
            let left = remaining.entry(&s.room).or_insert_with(|| self.present(&s.room));
            *left = left.saturating_sub(1);
            if *left == 0 && !replaced {
                let (meeting_id, start) = self
                    .live
                    .get(&s.room)
                    .map_or((s.meeting_id.clone(), s.joined_ms), |l| (l.meeting_id.clone(), l.start_ms));
                ws.event(
                    crate::events::MEETING_ENDED,
                    json!({"room": s.room, "meeting_id": meeting_id, "start_ts": start as f64 / 1000.0, "end_ts": now as f64 / 1000.0}),
                );
                // The last one out of an expired room takes its tombstone away.
                if let Some(room) = self.get_room(&s.room)?.filter(|r| r.is_expired(now.div_euclid(1000))) {
                    self.drop_room_records(ws, &room)?;
                }
            }
            ws.live.push(LiveChange::Left { room: s.room.clone(), session_id: s.id.clone() });
        }
        Ok(())
    }

    /// Removes a room's records and its expiry timer (once per write set).
    pub(super) fn drop_room_records(&self, ws: &mut WriteSet, room: &crate::rooms::Room) -> Result<(), StoreError> {
        if !ws.removed_rooms.insert(room.name.clone()) {
            return Ok(());
        }
        ws.del(Tree::Rooms, room.name.as_bytes());
        ws.del(Tree::RoomsById, room.id.as_bytes().to_vec());
        ws.del(Tree::RoomsByCreated, keys::room_created(room.created_ms, &room.name));
        ws.room_delta -= 1;
        self.del_timer(ws, TIMER_ROOM_EXP, &room.name)
    }

    /// Ends everyone in the room, then removes it.
    pub(super) fn remove_room(
        &self,
        ws: &mut WriteSet,
        room: &crate::rooms::Room,
        reason: &str,
        by: &str,
    ) -> Result<(), StoreError> {
        ws.removed_rooms.insert(room.name.clone());
        let present = self.room_sessions(&room.name)?;
        self.end_sessions(ws, &present, reason, by)?;
        ws.removed_rooms.remove(&room.name);
        self.drop_room_records(ws, room)
    }

    /// Keeps the room's expiry timer in step with its `exp`.
    pub(super) fn sync_room_timer(&self, ws: &mut WriteSet, room: &crate::rooms::Room) -> Result<(), StoreError> {
        match room.exp() {
            Some(exp) => self.put_timer(ws, TIMER_ROOM_EXP, &room.name, exp.saturating_mul(1000)),
            None => self.del_timer(ws, TIMER_ROOM_EXP, &room.name),
        }
    }

    /// After a room's settings change: recomputes the ejection deadline of every session that
    /// follows the room's rules, and moves its timer.
    pub(super) fn reschedule_room_sessions(
        &self,
        ws: &mut WriteSet,
        room: &crate::rooms::Room,
    ) -> Result<(), StoreError> {
        for s in self.room_sessions(&room.name)?.into_iter().filter(|s| s.room_rules) {
            let Some(mut r) = full_record(self.sessions_tree(), &s.id)? else {
                continue;
            };
            let all = sessions::eject_deadline(room, None, r.joined_ms);
            let own = sessions::eject_timer(room, None, r.joined_ms);
            if r.eject_at_ms != all.map(|d| d.0) {
                r.eject_at_ms = all.map(|d| d.0);
                r.eject_reason = all.map(|d| d.1.to_string());
                ws.put(Tree::Sessions, r.id.as_bytes(), records::encode(records::SESSION_V1, &r)?);
            }
            match own {
                Some((at, _)) => self.put_timer(ws, TIMER_EJECT, &r.id, at)?,
                None => self.del_timer(ws, TIMER_EJECT, &r.id)?,
            }
        }
        Ok(())
    }

    pub(super) fn leave(&mut self, id: &str) -> Result<(Option<WriteSet>, Outcome), StoreError> {
        let Some((s, _)) = read_session(self.sessions_tree(), id)? else {
            return Ok((None, Outcome::NoSession));
        };
        let mut ws = WriteSet::default();
        self.end_sessions(&mut ws, &[s], "left", "participant")?;
        Ok((Some(ws), Outcome::SessionEnded))
    }

    pub(super) fn heartbeat(&mut self, id: &str) -> Result<Outcome, StoreError> {
        if self.sessions_tree().get(id.as_bytes())?.is_none() {
            return Ok(Outcome::NoSession);
        }
        let now = self.now_ms();
        self.leases.insert(id.to_string(), now);
        Ok(Outcome::Heartbeat { lease_until_ms: now + self.s.lease_ms })
    }

    pub(super) fn eject(&mut self, req: &EjectRequest) -> Result<(Option<WriteSet>, Outcome), StoreError> {
        let now = self.now_ms();
        let mut targets: Vec<Session> = Vec::new();
        for id in &req.ids {
            if let Some((s, _)) = read_session(self.sessions_tree(), id)? {
                if s.room == req.room {
                    targets.push(s);
                }
            }
        }
        for u in &req.user_ids {
            targets.extend(self.user_sessions(&req.room, u)?);
        }
        targets.sort_by(|a, b| a.id.cmp(&b.id));
        targets.dedup_by(|a, b| a.id == b.id);
        let reason = if req.ban {
            "banned"
        } else if req.by_token {
            "owner"
        } else {
            "api"
        };
        let mut ws = WriteSet::default();
        self.end_sessions(&mut ws, &targets, reason, &req.by)?;
        if req.ban {
            let room_exp = self.get_room(&req.room)?.and_then(|r| r.exp());
            let until = sessions::ban_until_ms(req.by_token, req.ban_until_s, room_exp, now);
            let users: BTreeSet<String> =
                req.user_ids.iter().cloned().chain(targets.iter().filter_map(|s| s.user_id.clone())).collect();
            for u in users {
                let ban = BanRecord { until_ms: until, created_ms: now, by: req.by.clone() };
                let key = keys::pair(&req.room, &u);
                let timer_id = String::from_utf8_lossy(&key).to_string();
                match until {
                    Some(at) => self.put_timer(&mut ws, TIMER_BAN, &timer_id, at)?,
                    None => self.del_timer(&mut ws, TIMER_BAN, &timer_id)?,
                }
                ws.put(Tree::Bans, key, records::encode(records::BAN_V1, &ban)?);
                ws.event(
                    crate::events::BAN_CREATED,
                    json!({"room": req.room, "user_id": u, "until": until.map(|ms| ms / 1000), "by": req.by}),
                );
            }
            for s in &targets {
                let Some(token_id) = &s.token_id else { continue };
                let exp =
                    full_record(self.sessions_tree(), &s.id)?.and_then(|r| r.token_exp).map(|e| (e * 1000.0) as i64);
                self.put_revocation(&mut ws, &keys::revoke_token(token_id), exp, None)?;
                ws.event(crate::events::MEETING_TOKEN_REVOKED, json!({"room": req.room, "jti": crate::tokens::short_id(token_id), "user_id": s.user_id, "by": req.by, "reason": "banned"}));
            }
        }
        let ids: Vec<String> = targets.into_iter().map(|s| s.id).collect();
        Ok(((!ws.is_empty()).then_some(ws), Outcome::Ejected(ids)))
    }

    fn put_revocation(
        &self,
        ws: &mut WriteSet,
        key: &[u8],
        until_ms: Option<i64>,
        issued_before_s: Option<f64>,
    ) -> Result<(), StoreError> {
        let r = RevocationRecord { until_ms, issued_before_s, created_ms: self.now_ms() };
        ws.put(Tree::Revocations, key.to_vec(), records::encode(records::REVOCATION_V1, &r)?);
        Ok(())
    }

    pub(super) fn lift_ban(&mut self, room: &str, user_id: &str) -> Result<(Option<WriteSet>, Outcome), StoreError> {
        let key = keys::pair(room, user_id);
        if self.s.trees.get(Tree::Bans).get(&key)?.is_none() {
            return Ok((None, Outcome::BanLifted(false)));
        }
        let mut ws = WriteSet::default();
        self.del_timer(&mut ws, TIMER_BAN, &String::from_utf8_lossy(&key))?;
        ws.del(Tree::Bans, key);
        ws.event(crate::events::BAN_REMOVED, json!({"room": room, "user_id": user_id, "reason": "lifted"}));
        Ok((Some(ws), Outcome::BanLifted(true)))
    }

    pub(super) fn revoke(&mut self, req: &RevokeRequest) -> Result<(Option<WriteSet>, Outcome), StoreError> {
        let mut ws = WriteSet::default();
        let (targets, by, payload) = match req {
            RevokeRequest::Token { token_id, exp_ms, room, by } => {
                self.put_revocation(&mut ws, &keys::revoke_token(token_id), *exp_ms, None)?;
                let targets = self.sessions_by_index(Tree::SessionsByToken, &keys::room_prefix(token_id))?;
                (
                    targets,
                    by,
                    json!({"jti": crate::tokens::short_id(token_id), "room": room, "until": exp_ms.map(|ms| ms / 1000)}),
                )
            }
            RevokeRequest::RoomUser { room, user_id, by } => {
                let before = (self.now_ms() / 1000 + 1) as f64;
                self.put_revocation(&mut ws, &keys::revoke_user(room, user_id), None, Some(before))?;
                let targets = self.user_sessions(room, user_id)?;
                (
                    targets.into_iter().filter(|s| s.token_id.is_some()).collect(),
                    by,
                    json!({"room": room, "user_id": user_id, "issued_before": before}),
                )
            }
            RevokeRequest::RoomBefore { room, before_s, by } => {
                self.put_revocation(&mut ws, &keys::revoke_room(room), None, Some(*before_s))?;
                let targets = self.room_sessions(room)?;
                let hit = targets
                    .into_iter()
                    .filter(|s| s.token_id.is_some() && s.token_iat.is_none_or(|iat| iat < *before_s))
                    .collect();
                (hit, by, json!({"room": room, "issued_before": before_s}))
            }
        };
        let mut payload = payload;
        if let Some(o) = payload.as_object_mut() {
            o.insert("by".into(), json!(by));
            if o.get("room").is_none_or(Value::is_null) {
                o.insert("room".into(), json!(targets.first().map(|s| s.room.clone())));
            }
        }
        ws.event(crate::events::MEETING_TOKEN_REVOKED, payload);
        self.end_sessions(&mut ws, &targets, "token_revoked", by)?;
        let ejected = targets.into_iter().map(|s| s.id).collect();
        Ok((Some(ws), Outcome::Revoked { ejected }))
    }

    /// Fires one due timer. It re-checks current state: a timer moved or cancelled since it was
    /// read, a session already gone, or a lease renewed since, makes it a no-op (or a re-arm).
    pub(super) fn fire_timer(
        &mut self,
        deadline: i64,
        kind: u8,
        id: &str,
    ) -> Result<(Option<WriteSet>, Outcome), StoreError> {
        let now = self.now_ms();
        let mut ws = WriteSet::default();
        if deadline > now {
            return Ok((None, Outcome::Fired(0)));
        }
        let current = self.s.trees.get(Tree::TimersByKey).get(keys::timer_ref(kind, id))?;
        if current.as_deref() != Some(deadline.to_be_bytes().as_slice()) {
            ws.del(Tree::Timers, keys::timer(deadline, kind, id));
            return Ok((Some(ws), Outcome::Fired(0)));
        }
        self.s.stats.lateness_seconds.observe((now - deadline) as f64 / 1000.0);
        let fired = match kind {
            TIMER_LEASE | TIMER_EJECT => self.fire_session_timer(&mut ws, kind, id, now)?,
            TIMER_ROOM_EXP => self.fire_room_expiry(&mut ws, id, now)?,
            TIMER_BAN => self.fire_ban_expiry(&mut ws, id, now)?,
            _ => {
                self.del_timer(&mut ws, kind, id)?;
                0
            }
        };
        Ok((Some(ws), Outcome::Fired(fired)))
    }

    fn fire_session_timer(&self, ws: &mut WriteSet, kind: u8, id: &str, now: i64) -> Result<usize, StoreError> {
        let Some((s, _)) = read_session(self.sessions_tree(), id)? else {
            self.del_timer(ws, kind, id)?;
            return Ok(0);
        };
        if kind == TIMER_LEASE {
            let seen = self.leases.get(id).copied().unwrap_or(s.joined_ms);
            if now - seen < self.s.lease_ms {
                self.put_timer(ws, TIMER_LEASE, id, seen + self.s.lease_ms)?;
                return Ok(0);
            }
            self.end_sessions(ws, &[s], "timeout", "scheduler")?;
            return Ok(1);
        }
        // A session's own timer is never the room's expiry (the room's timer does that), so a
        // stored "room_expired" here means the room's exp moved and the elapsed time is due.
        let reason = match s.eject_reason.as_deref() {
            Some("token_expired") => "token_expired",
            _ => "elapsed",
        };
        self.end_sessions(ws, &[s], reason, "scheduler")?;
        Ok(1)
    }

    /// `room.expired`; with `eject_at_room_exp`, everyone following the room's rules is
    /// ejected; an empty expired room is removed, otherwise it stays as a tombstone (joins get
    /// `exp-room`) until its last participant is gone.
    fn fire_room_expiry(&self, ws: &mut WriteSet, name: &str, now: i64) -> Result<usize, StoreError> {
        self.del_timer(ws, TIMER_ROOM_EXP, name)?;
        let Some(room) = self.get_room(name)?.filter(|r| r.is_expired(now.div_euclid(1000))) else {
            return Ok(0);
        };
        ws.event(crate::events::ROOM_EXPIRED, self.room_json(&room));
        let present = self.room_sessions(name)?;
        let eject_all = room.config.get("eject_at_room_exp").and_then(Value::as_bool) == Some(true);
        let (ejected, staying): (Vec<Session>, Vec<Session>) =
            present.into_iter().partition(|s| eject_all && s.room_rules);
        self.end_sessions(ws, &ejected, "room_expired", "scheduler")?;
        if staying.is_empty() {
            self.drop_room_records(ws, &room)?;
        }
        Ok(1)
    }

    fn fire_ban_expiry(&self, ws: &mut WriteSet, id: &str, now: i64) -> Result<usize, StoreError> {
        self.del_timer(ws, TIMER_BAN, id)?;
        let key = id.as_bytes().to_vec();
        let Some(v) = self.s.trees.get(Tree::Bans).get(&key)? else {
            return Ok(0);
        };
        let ban: BanRecord = records::decode("bans", &key, records::BAN_V1, &v)?;
        if ban.until_ms.is_none_or(|u| u > now) {
            return Ok(0);
        }
        let (room, user) = id.split_once('\0').unwrap_or((id, ""));
        ws.del(Tree::Bans, key);
        ws.event(crate::events::BAN_REMOVED, json!({"room": room, "user_id": user, "reason": "expired"}));
        Ok(1)
    }
}
