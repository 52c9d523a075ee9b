//! Participant rules: the join decision, ejection deadlines (token settings override the
//! room's, as in Daily), bans' lifetimes, and the shapes sessions take in responses and events.
//! Pure functions over facts the writer gathers; no I/O.
//!
//! Must not: touch the store or HTTP, or put a token or session secret in anything it returns.

use serde_json::{json, Value};

use crate::rooms::{Privacy, Room};
use crate::tokens::{can_admin_participants, Claims, Rejection, TimeStatus};

/// Default presence lease: a session not heard from for this long leaves with reason `timeout`.
pub const DEFAULT_LEASE_MS: i64 = 30_000;
/// A ban made with a meeting token, without `ban_until`, on a room without `exp`.
pub const TOKEN_BAN_DEFAULT_MS: i64 = 24 * 3600 * 1000;
/// Most `ids` / `user_ids` in one eject call.
pub const MAX_EJECT_IDS: usize = 100;

/// Why a join was refused: Daily's error type, a precise detail word for the event log, and
/// the text the participant sees. Never carries a secret.
#[derive(Debug, Clone, PartialEq)]
pub struct Denial {
    pub error: &'static str,
    pub detail: &'static str,
    pub info: String,
}

impl Denial {
    fn new(error: &'static str, detail: &'static str, info: &str) -> Denial {
        Denial { error, detail, info: info.to_string() }
    }

    /// Daily's `not-allowed` text, then why.
    fn not_allowed(detail: &'static str, why: &str) -> Denial {
        Denial::new("not-allowed", detail, &format!("You are not allowed to join this meeting: {why}"))
    }

    /// Too many people already wait in the room's lobby.
    pub fn lobby_full(max: usize) -> Denial {
        Denial::new(
            "rate-limit-error",
            "lobby_full",
            &format!("Too many people ({max}) are already waiting to join this meeting; try again later"),
        )
    }
}

/// The token part of a join attempt, as verified by the handler.
#[derive(Debug, Clone)]
pub enum TokenCheck {
    None,
    Invalid(Rejection),
    Valid { claims: Box<Claims>, token_id: String },
}

impl TokenCheck {
    /// What a session keeps of a valid token: its id, `iat` and `exp`.
    pub fn session_parts(&self) -> (Option<String>, Option<f64>, Option<f64>) {
        match self {
            TokenCheck::Valid { claims, token_id } => (Some(token_id.clone()), claims.iat, claims.exp),
            _ => (None, None, None),
        }
    }
}

/// Facts the writer gathers for one join attempt.
pub struct JoinFacts<'a> {
    pub now_ms: i64,
    pub leeway_s: u64,
    pub room: Option<&'a Room>,
    pub token: &'a TokenCheck,
    pub revoked: bool,
    pub banned: bool,
    pub present: u64,
}

/// Decides a join in Daily's order of checks. `Ok` means admitted (capacity included).
pub fn decide_join(f: &JoinFacts) -> Result<(), Denial> {
    let room = room_open(f.room, f.now_ms)?;
    match f.token {
        TokenCheck::None if room.privacy == Privacy::Private => {
            return Err(Denial::not_allowed(
                "private_room",
                "the room is private and the join carries no meeting token",
            ))
        }
        TokenCheck::None => {}
        TokenCheck::Invalid(r) => return Err(Denial::not_allowed(r.detail(), &r.to_string())),
        TokenCheck::Valid { claims, .. } => {
            if claims.room.as_deref().is_some_and(|r| r != room.name) {
                return Err(Denial::not_allowed("wrong_room", "the meeting token is for another room"));
            }
            match claims.time_status(f.now_ms, f.leeway_s, false) {
                TimeStatus::NotYetValid => {
                    return Err(Denial::new("nbf-token", "token_not_yet_valid", "Your meeting token is not valid yet"))
                }
                TimeStatus::Expired => {
                    return Err(Denial::new("exp-token", "token_expired", "Your meeting token has expired"))
                }
                TimeStatus::Valid => {}
            }
            if f.revoked {
                return Err(Denial::not_allowed("revoked", "the meeting token has been revoked"));
            }
        }
    }
    room_has_place(room, f.banned, f.present)
}

/// The room exists and its meeting is on (`nbf` passed, `exp` not): the first checks of a join
/// and of a grant.
fn room_open(room: Option<&Room>, now_ms: i64) -> Result<&Room, Denial> {
    let Some(room) = room else {
        return Err(Denial::new("no-room", "no_room", "This room does not exist"));
    };
    let now_s = now_ms.div_euclid(1000);
    if room.nbf().is_some_and(|nbf| now_s < nbf) {
        return Err(Denial::new("nbf-room", "room_not_started", "This meeting has not started yet"));
    }
    if room.is_expired(now_s) {
        return Err(Denial::new("exp-room", "room_expired", "This meeting has ended"));
    }
    Ok(room)
}

/// The user is not banned and the room has a place: the last checks of a join and of a grant.
fn room_has_place(room: &Room, banned: bool, present: u64) -> Result<(), Denial> {
    if banned {
        return Err(Denial::new("ejected", "banned", "You were removed from this meeting and cannot rejoin"));
    }
    if present >= room.max_participants() {
        return Err(Denial::new("meeting-full", "meeting_full", "This meeting is full"));
    }
    Ok(())
}

/// Facts the writer gathers when an owner admits someone from the lobby.
pub struct GrantFacts<'a> {
    pub now_ms: i64,
    pub leeway_s: u64,
    pub room: Option<&'a Room>,
    /// `exp` of the token the visitor knocked with, if any.
    pub token_exp: Option<f64>,
    pub revoked: bool,
    pub banned: bool,
    pub present: u64,
}

/// Decides an admission from the lobby: the join decision at this moment, less the privacy
/// check the owner's grant stands for (a room that has filled, expired, or banned the user in
/// the meantime still refuses).
pub fn decide_grant(f: &GrantFacts) -> Result<(), Denial> {
    let room = room_open(f.room, f.now_ms)?;
    if f.token_exp.is_some_and(|exp| f.now_ms as f64 / 1000.0 >= exp + f.leeway_s as f64) {
        return Err(Denial::new("exp-token", "token_expired", "Your meeting token has expired"));
    }
    if f.revoked {
        return Err(Denial::not_allowed("revoked", "the meeting token has been revoked"));
    }
    room_has_place(room, f.banned, f.present)
}

/// The room knocks: private, with `enable_knocking`.
pub fn room_knocks(room: &Room) -> bool {
    room.privacy == Privacy::Private && room.config.get("enable_knocking").and_then(Value::as_bool) == Some(true)
}

/// The permissions a session starts with: the token's, field by field over the room's
/// `permissions` (Daily: token, then room).
pub fn initial_permissions(room: &Room, claims: Option<&Claims>) -> Option<Value> {
    let from_room = room.config.get("permissions").and_then(Value::as_object);
    let from_token = claims.and_then(|c| c.permissions.as_ref()).and_then(Value::as_object);
    match (from_room, from_token) {
        (None, None) => None,
        (r, t) => {
            let mut m = r.cloned().unwrap_or_default();
            for (k, v) in t.into_iter().flatten() {
                m.insert(k.clone(), v.clone());
            }
            Some(Value::Object(m))
        }
    }
}

/// Permissions without the right to administer participants: `canAdmin: true` becomes
/// `false`, a list loses `participants` (what a later session of a token starts with once
/// update-permissions withdrew that right from one of its sessions).
pub fn without_participants_admin(permissions: Option<Value>) -> Option<Value> {
    let mut p = permissions?;
    match p.get_mut("canAdmin") {
        Some(Value::Bool(b)) => *b = false,
        Some(Value::Array(a)) => a.retain(|v| v.as_str() != Some("participants")),
        _ => {}
    }
    Some(p)
}

/// Applies an `update-permissions` patch to a session's permissions: `hasPresence`, `canSend`
/// and `canAdmin` replace; `canReceive` replaces its sub-fields one by one (Daily's rules).
pub fn patch_permissions(current: Option<&Value>, patch: &serde_json::Map<String, Value>) -> Value {
    // A session without permissions of its own shows (and starts from) `hasPresence: true`.
    let mut m = match current.and_then(Value::as_object) {
        Some(c) => c.clone(),
        None => serde_json::Map::from_iter([("hasPresence".to_string(), Value::Bool(true))]),
    };
    for (k, v) in patch {
        if k == "canReceive" {
            let mut r = m.get("canReceive").and_then(Value::as_object).cloned().unwrap_or_default();
            for (sub, sv) in v.as_object().into_iter().flatten() {
                r.insert(sub.clone(), sv.clone());
            }
            m.insert(k.clone(), Value::Object(r));
        } else {
            m.insert(k.clone(), v.clone());
        }
    }
    Value::Object(m)
}

/// Whether a session is listed in presence (`hasPresence` not false).
pub fn has_presence(permissions: Option<&Value>) -> bool {
    permissions.and_then(|p| p.get("hasPresence")).and_then(Value::as_bool) != Some(false)
}

/// True when the room's ejection settings apply to a session: its token sets neither
/// `eject_at_token_exp` nor `eject_after_elapsed` (Daily's rule).
pub fn follows_room_rules(claims: Option<&Claims>) -> bool {
    !claims.is_some_and(|c| c.eject_at_token_exp || c.eject_after_elapsed.is_some())
}

/// When a session will be ejected and why. Token settings (`ejt`/`eje`) replace the room's
/// (`eject_at_room_exp`, `eject_after_elapsed`) for that session when either is set.
pub fn eject_deadline(room: &Room, claims: Option<&Claims>, joined_ms: i64) -> Option<(i64, &'static str)> {
    eject_candidates(room, claims, joined_ms).into_iter().min_by_key(|(at, _)| *at)
}

/// The session's own ejection timer: like [`eject_deadline`] but without the room's expiry,
/// which the room's own timer enforces for everyone at once (and moves when `exp` changes).
pub fn eject_timer(room: &Room, claims: Option<&Claims>, joined_ms: i64) -> Option<(i64, &'static str)> {
    eject_candidates(room, claims, joined_ms)
        .into_iter()
        .filter(|(_, r)| *r != "room_expired")
        .min_by_key(|(at, _)| *at)
}

/// Every ejection deadline that applies, each on a whole second (see [`whole_second_up`]).
fn eject_candidates(room: &Room, claims: Option<&Claims>, joined_ms: i64) -> Vec<(i64, &'static str)> {
    let mut candidates = raw_eject_candidates(room, claims, joined_ms);
    for (at, _) in &mut candidates {
        *at = whole_second_up(*at);
    }
    candidates
}

/// Up to the next whole second. Deadlines are announced in whole seconds (`will_eject_at`), so
/// they are made to land on one: the ejection comes exactly at the time announced, and never
/// before the time asked for (3 s after a join at x.5 s is x+4, not x+3).
fn whole_second_up(ms: i64) -> i64 {
    let up = i64::from(ms.rem_euclid(1000) != 0);
    ms.div_euclid(1000).saturating_add(up).saturating_mul(1000)
}

fn raw_eject_candidates(room: &Room, claims: Option<&Claims>, joined_ms: i64) -> Vec<(i64, &'static str)> {
    let mut candidates: Vec<(i64, &'static str)> = Vec::new();
    let token_rules = claims.filter(|c| c.eject_at_token_exp || c.eject_after_elapsed.is_some());
    match token_rules {
        Some(c) => {
            if let Some(secs) = c.eject_after_elapsed {
                candidates.push((joined_ms.saturating_add(secs_to_ms(secs)), "elapsed"));
            }
            if let (true, Some(exp)) = (c.eject_at_token_exp, c.exp) {
                candidates.push(((exp * 1000.0) as i64, "token_expired"));
            }
        }
        None => {
            if let Some(secs) = room.config.get("eject_after_elapsed").and_then(Value::as_u64) {
                candidates.push((joined_ms.saturating_add(secs_to_ms(secs)), "elapsed"));
            }
            let at_exp = room.config.get("eject_at_room_exp").and_then(Value::as_bool).unwrap_or(false);
            if let (true, Some(exp)) = (at_exp, room.exp()) {
                candidates.push((exp.saturating_mul(1000), "room_expired"));
            }
        }
    }
    candidates
}

fn secs_to_ms(s: u64) -> i64 {
    i64::try_from(s).unwrap_or(i64::MAX / 1000).saturating_mul(1000)
}

/// How long a ban lasts, in unix ms (`None` = until lifted). API-key bans last until
/// `ban_until` or forever; token bans at most until `ban_until`, else the room's `exp`, else 24 h.
pub fn ban_until_ms(by_token: bool, ban_until_s: Option<i64>, room_exp_s: Option<i64>, now_ms: i64) -> Option<i64> {
    let asked = ban_until_s.map(|s| s.saturating_mul(1000));
    if !by_token {
        return asked;
    }
    let cap = room_exp_s.map(|e| e.saturating_mul(1000)).unwrap_or(now_ms + TOKEN_BAN_DEFAULT_MS);
    Some(asked.map_or(cap, |a| a.min(cap)))
}

/// A session as the API shows it (a join's answer, `participant.joined`'s payload).
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct SessionView {
    /// Unix seconds, with milliseconds.
    pub joined_at: f64,
    pub session_id: String,
    pub room: String,
    /// `null` when the token named no user; left out of a knock's answer then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Option<String>>,
    pub user_name: Option<String>,
    pub owner: bool,
    /// Unix seconds: when the session will be ejected, if a deadline applies.
    pub will_eject_at: Option<i64>,
    /// Daily's permissions object.
    #[schemars(with = "serde_json::Map<String, Value>")]
    pub permissions: Value,
}

/// A live session as the domain sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub id: String,
    pub room: String,
    pub user_id: Option<String>,
    pub user_name: Option<String>,
    pub owner: bool,
    pub token_id: Option<String>,
    /// `iat` of the token used (seconds), for `issued_before` revocations.
    pub token_iat: Option<f64>,
    pub joined_ms: i64,
    pub eject_at_ms: Option<i64>,
    pub eject_reason: Option<String>,
    pub permissions: Option<Value>,
    pub meeting_id: String,
    /// The room's ejection settings apply (the token set none of its own).
    pub room_rules: bool,
}

fn secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

impl Session {
    /// The session as the API shows it.
    pub fn view(&self) -> SessionView {
        SessionView {
            joined_at: secs(self.joined_ms),
            session_id: self.id.clone(),
            room: self.room.clone(),
            user_id: Some(self.user_id.clone()),
            user_name: self.user_name.clone(),
            owner: self.owner,
            will_eject_at: self.eject_at_ms.map(|ms| ms.div_euclid(1000)),
            permissions: self.permissions.clone().unwrap_or_else(|| json!({"hasPresence": true})),
        }
    }

    /// `participant.joined` payload (also the base of the join response and `participant.left`).
    pub fn joined_payload(&self) -> Value {
        serde_json::to_value(self.view()).unwrap_or(Value::Null)
    }

    pub fn left_payload(&self, now_ms: i64, reason: &str) -> Value {
        let mut v = self.joined_payload();
        if let Some(o) = v.as_object_mut() {
            o.insert("duration".into(), json!(((now_ms - self.joined_ms).max(0)) / 1000));
            o.insert("reason".into(), json!(reason));
        }
        v
    }

    pub fn ejected_payload(&self, reason: &str, by: &str) -> Value {
        json!({"session_id": self.id, "room": self.room, "user_id": self.user_id, "user_name": self.user_name, "reason": reason, "by": by})
    }

    /// May manage the room's participants: an owner, or `canAdmin` true or naming `participants`
    /// (as the session's permissions stand now, after any update).
    pub fn can_admin_participants(&self) -> bool {
        can_admin_participants(self.owner, self.permissions.as_ref())
    }

    /// `waiting-participant.joined` payload (Daily's fields; no `user_id` key without one).
    pub fn waiting_payload(&self) -> Value {
        serde_json::to_value(self.waiting_view()).unwrap_or(Value::Null)
    }

    /// The session as a knock's answer and `waiting-participant.joined` show it: without
    /// `user_id` when it has none.
    pub fn waiting_view(&self) -> SessionView {
        SessionView { user_id: self.user_id.clone().map(Some), ..self.view() }
    }

    /// Gone at `now_ms` by check-on-read: its ejection deadline has passed.
    pub fn is_over(&self, now_ms: i64) -> bool {
        self.eject_at_ms.is_some_and(|at| now_ms >= at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn room(config: Value, privacy: Privacy) -> Room {
        Room {
            id: uuid::Uuid::nil(),
            name: "r".into(),
            privacy,
            created_ms: 0,
            api_created: true,
            config: config.as_object().cloned().unwrap_or_else(Map::new),
        }
    }

    fn facts<'a>(room: Option<&'a Room>, token: &'a TokenCheck) -> JoinFacts<'a> {
        JoinFacts { now_ms: 100_000, leeway_s: 0, room, token, revoked: false, banned: false, present: 0 }
    }

    #[test]
    fn refusals_in_order() {
        let none = TokenCheck::None;
        assert_eq!(decide_join(&facts(None, &none)).unwrap_err().error, "no-room");
        let early = room(json!({"nbf": 200}), Privacy::Public);
        assert_eq!(decide_join(&facts(Some(&early), &none)).unwrap_err().error, "nbf-room");
        let late = room(json!({"exp": 100}), Privacy::Public);
        assert_eq!(decide_join(&facts(Some(&late), &none)).unwrap_err().error, "exp-room");
        let private = room(json!({}), Privacy::Private);
        let d = decide_join(&facts(Some(&private), &none)).unwrap_err();
        assert_eq!(d.error, "not-allowed");
        assert!(d.info.starts_with("You are not allowed to join this meeting: the room is private"), "{}", d.info);
        let other = TokenCheck::Valid {
            claims: Box::new(Claims { room: Some("x".into()), ..Default::default() }),
            token_id: "j".into(),
        };
        assert_eq!(decide_join(&facts(Some(&private), &other)).unwrap_err().detail, "wrong_room");
        let expired = TokenCheck::Valid {
            claims: Box::new(Claims { exp: Some(99.0), ..Default::default() }),
            token_id: "j".into(),
        };
        assert_eq!(decide_join(&facts(Some(&private), &expired)).unwrap_err().error, "exp-token");
        let full = room(json!({"max_participants": 2}), Privacy::Public);
        let mut f = facts(Some(&full), &none);
        f.present = 2;
        assert_eq!(decide_join(&f).unwrap_err().error, "meeting-full");
        f.present = 1;
        assert!(decide_join(&f).is_ok());
        f.banned = true;
        assert_eq!(decide_join(&f).unwrap_err().error, "ejected");
    }

    #[test]
    fn token_eject_settings_replace_the_rooms() {
        let r = room(json!({"eject_after_elapsed": 60, "eject_at_room_exp": true, "exp": 500}), Privacy::Public);
        assert_eq!(eject_deadline(&r, None, 1_000), Some((61_000, "elapsed")));
        let c = Claims { eject_after_elapsed: Some(3), ..Default::default() };
        assert_eq!(eject_deadline(&r, Some(&c), 1_000), Some((4_000, "elapsed")));
        let c = Claims { eject_at_token_exp: true, exp: Some(200.0), ..Default::default() };
        assert_eq!(eject_deadline(&r, Some(&c), 1_000), Some((200_000, "token_expired")));
        let plain = Claims::default();
        assert_eq!(eject_deadline(&r, Some(&plain), 1_000), Some((61_000, "elapsed")));
        let three = Claims { eject_after_elapsed: Some(3), ..Default::default() };
        assert_eq!(eject_deadline(&r, Some(&three), 1_500), Some((5_000, "elapsed")), "on the announced second");
        let c = Claims { eject_at_token_exp: true, exp: Some(200.25), ..Default::default() };
        assert_eq!(eject_deadline(&r, Some(&c), 1_000), Some((201_000, "token_expired")));
        let r2 = room(json!({"eject_at_room_exp": true, "exp": 50}), Privacy::Public);
        assert_eq!(eject_deadline(&r2, None, 1_000), Some((50_000, "room_expired")));
        assert_eq!(eject_timer(&r2, None, 1_000), None, "the room's own timer handles its expiry");
        assert!(follows_room_rules(Some(&plain)) && follows_room_rules(None));
        assert!(!follows_room_rules(Some(&Claims { eject_after_elapsed: Some(3), ..Default::default() })));
    }

    #[test]
    fn a_withdrawn_admin_right_is_taken_out_of_permissions() {
        let w = |v: Value| without_participants_admin(Some(v));
        assert_eq!(w(json!({"canAdmin": true, "canSend": true})), Some(json!({"canAdmin": false, "canSend": true})));
        assert_eq!(w(json!({"canAdmin": ["participants", "streaming"]})), Some(json!({"canAdmin": ["streaming"]})));
        assert_eq!(w(json!({"hasPresence": true})), Some(json!({"hasPresence": true})));
        assert_eq!(without_participants_admin(None), None);
        assert!(!can_admin_participants(false, w(json!({"canAdmin": ["participants"]})).as_ref()));
    }

    #[test]
    fn ban_lifetimes() {
        assert_eq!(ban_until_ms(false, None, Some(10), 0), None);
        assert_eq!(ban_until_ms(false, Some(5), None, 0), Some(5_000));
        assert_eq!(ban_until_ms(true, None, Some(10), 0), Some(10_000));
        assert_eq!(ban_until_ms(true, None, None, 7), Some(7 + TOKEN_BAN_DEFAULT_MS));
        assert_eq!(ban_until_ms(true, Some(50), Some(10), 0), Some(10_000));
    }
}
