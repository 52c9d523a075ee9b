//! Rooms: create, update, delete. Names, properties and merges are `rooms`' rules; these
//! commands apply them to the current state, so checks that depend on it are race-free.

use serde_json::{Map, Value};

use crate::rooms::{self, Privacy, Room, RoomError};
use crate::store::command::Command;
use crate::store::ctx::Ctx;
use crate::store::timers::TimerId;
use crate::store::StoreError;

use super::sessions::{drop_room, end_sessions, remove_room, Ending};

/// Creates a room; `name: None` picks a random free one. Inputs are validated already.
#[derive(Debug)]
pub struct CreateRoom {
    pub name: Option<String>,
    pub privacy: Privacy,
    pub config: Map<String, Value>,
}

impl Command for CreateRoom {
    type Reply = Result<Room, RoomError>;

    fn apply(self, cx: &mut Ctx<'_>) -> Result<Self::Reply, StoreError> {
        let domain = cx.domain_config()?;
        let name = match self.name {
            Some(n) if taken(cx, &n)? => return Ok(Err(RoomError::NameTaken(n))),
            Some(n) => n,
            None => free_random_name(cx, &Default::default())?,
        };
        Ok(Ok(create(cx, name, self.privacy, rooms::with_domain_defaults(self.config, &domain))?))
    }
}

/// Creates up to [`MAX_BATCH`] rooms, all or none (`POST /v1/batch/rooms`): every name is
/// checked against the state and the rest of the batch before the first room is written.
#[derive(Debug)]
pub struct CreateRooms {
    pub rooms: Vec<CreateRoom>,
}

/// Most rooms one batch call may create or delete (Daily's limit).
pub const MAX_BATCH: usize = 1000;

impl Command for CreateRooms {
    type Reply = Result<Vec<Room>, RoomError>;

    fn apply(self, cx: &mut Ctx<'_>) -> Result<Self::Reply, StoreError> {
        let mut named: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for r in &self.rooms {
            let Some(n) = r.name.as_deref() else { continue };
            if !named.insert(n) {
                return Ok(Err(RoomError::Repeated(n.to_string())));
            }
            if taken(cx, n)? {
                return Ok(Err(RoomError::NameTaken(n.to_string())));
            }
        }
        let mut used: std::collections::HashSet<String> = named.iter().map(|n| n.to_string()).collect();
        let domain = cx.domain_config()?;
        let mut out = Vec::with_capacity(self.rooms.len());
        for r in self.rooms {
            let name = match r.name {
                Some(n) => n,
                None => {
                    let n = free_random_name(cx, &used)?;
                    used.insert(n.clone());
                    n
                }
            };
            out.push(create(cx, name, r.privacy, rooms::with_domain_defaults(r.config, &domain))?);
        }
        Ok(Ok(out))
    }
}

/// A live room has the name (an expired room's tombstone does not count: [`create`] removes it).
/// Only reads, so a batch can check every name before it writes anything.
fn taken(cx: &Ctx<'_>, name: &str) -> Result<bool, StoreError> {
    Ok(cx.room(name)?.is_some_and(|r| !r.is_expired(cx.now_secs())))
}

fn free_random_name(cx: &Ctx<'_>, taken: &std::collections::HashSet<String>) -> Result<String, StoreError> {
    loop {
        let n = rooms::random_name();
        if !taken.contains(&n) && cx.room(&n)?.is_none() {
            return Ok(n);
        }
    }
}

/// Writes a new room under a name no live room has, with its expiry deadline and
/// `room.created`; an expired room's tombstone under that name goes first, with its leftovers.
fn create(cx: &mut Ctx<'_>, name: String, privacy: Privacy, config: Map<String, Value>) -> Result<Room, StoreError> {
    if let Some(old) = cx.room(&name)? {
        remove_room(cx, &old, "room_deleted", "scheduler")?;
    }
    let room = Room { id: uuid::Uuid::new_v4(), name, privacy, created_ms: cx.now_ms(), api_created: true, config };
    cx.put_room(&room, true)?;
    sync_room_timer(cx, &room);
    let payload = cx.room_json(&room);
    cx.event(crate::events::EventKind::RoomCreated, payload);
    Ok(room)
}

/// Updates a live room: `patch` is validated; `null` values remove properties.
#[derive(Debug)]
pub struct UpdateRoom {
    pub name: String,
    pub privacy: Option<Privacy>,
    pub patch: Map<String, Value>,
}

impl Command for UpdateRoom {
    type Reply = Result<Room, RoomError>;

    fn apply(self, cx: &mut Ctx<'_>) -> Result<Self::Reply, StoreError> {
        let now_s = cx.now_secs();
        let Some(mut room) = cx.room(&self.name)?.filter(|r| !r.is_expired(now_s)) else {
            return Ok(Err(RoomError::NotFound));
        };
        room.config = match rooms::merge_properties(&room.config, &self.patch) {
            Ok(c) => c,
            Err(e) => return Ok(Err(e)),
        };
        if let Some(p) = self.privacy {
            room.privacy = p;
        }
        cx.put_room(&room, false)?;
        sync_room_timer(cx, &room);
        reschedule_room_sessions(cx, &room)?;
        let payload = cx.room_json(&room);
        cx.event(crate::events::EventKind::RoomUpdated, payload);
        Ok(Ok(room))
    }
}

/// Deletes a room and ejects everyone present (reason `room_deleted`); `by` names the caller.
#[derive(Debug)]
pub struct DeleteRoom {
    pub name: String,
    pub by: String,
}

impl Command for DeleteRoom {
    type Reply = Result<String, RoomError>;

    fn apply(self, cx: &mut Ctx<'_>) -> Result<Self::Reply, StoreError> {
        let Some(room) = cx.room(&self.name)? else {
            return Ok(Err(RoomError::NotFound));
        };
        remove_room(cx, &room, "room_deleted", &self.by)?;
        let payload = cx.room_json(&room);
        cx.event(crate::events::EventKind::RoomDeleted, payload);
        Ok(Ok(room.name))
    }
}

/// Deletes up to [`MAX_BATCH`] live rooms, all or none (`DELETE /v1/batch/rooms`): a name
/// that is not a live room's, or one named twice, refuses the whole batch.
#[derive(Debug)]
pub struct DeleteRooms {
    pub names: Vec<String>,
    pub by: String,
}

impl Command for DeleteRooms {
    type Reply = Result<usize, RoomError>;

    fn apply(self, cx: &mut Ctx<'_>) -> Result<Self::Reply, StoreError> {
        let now_s = cx.now_secs();
        let mut found = Vec::with_capacity(self.names.len());
        let mut seen = std::collections::HashSet::new();
        for name in &self.names {
            if !seen.insert(name.as_str()) {
                return Ok(Err(RoomError::Repeated(name.clone())));
            }
            match cx.room(name)?.filter(|r| !r.is_expired(now_s)) {
                Some(room) => found.push(room),
                None => return Ok(Err(RoomError::Missing(name.clone()))),
            }
        }
        for room in &found {
            remove_room(cx, room, "room_deleted", &self.by)?;
            let payload = cx.room_json(room);
            cx.event(crate::events::EventKind::RoomDeleted, payload);
        }
        Ok(Ok(found.len()))
    }
}

/// Changes the domain settings (`POST /v1/`): a validated patch, `null` removing a setting.
/// Rooms created afterwards take the inherited ones; rooms that exist keep their rules.
#[derive(Debug)]
pub struct SetDomain {
    pub patch: Map<String, Value>,
}

impl Command for SetDomain {
    type Reply = Map<String, Value>;

    fn apply(self, cx: &mut Ctx<'_>) -> Result<Self::Reply, StoreError> {
        let mut config = cx.domain_config()?;
        for (name, v) in self.patch {
            if v.is_null() {
                config.remove(&name);
            } else {
                config.insert(name, v);
            }
        }
        cx.put_domain_config(&config)?;
        cx.event(crate::events::EventKind::DomainUpdated, serde_json::json!({"config": config}));
        Ok(config)
    }
}

/// Keeps what `--acme-domain` needs across restarts and in backups: the ACME account's
/// credentials and the certificate with its key (secrets: no event tells of it).
pub struct SetAcme {
    pub state: Map<String, Value>,
}

impl Command for SetAcme {
    type Reply = ();

    fn apply(self, cx: &mut Ctx<'_>) -> Result<(), StoreError> {
        cx.put_acme(&self.state)
    }
}

/// Keeps the room's expiry deadline in step with its `exp`.
pub fn sync_room_timer(cx: &mut Ctx<'_>, room: &Room) {
    let id = TimerId::RoomExp(std::sync::Arc::from(room.name.as_str()));
    match room.exp() {
        Some(exp) => cx.set_timer(id, cx.due(exp.saturating_mul(1000))),
        None => cx.clear_timer(&id),
    }
}

/// After a room's settings change: recomputes the ejection deadline of every present session
/// that follows the room's rules, and moves its own deadline.
fn reschedule_room_sessions(cx: &mut Ctx<'_>, room: &Room) -> Result<(), StoreError> {
    for e in cx.present_in(&room.name).into_iter().filter(|e| e.session.room_rules) {
        let joined = e.session.joined_ms;
        let all = crate::sessions::eject_deadline(room, None, joined);
        let own = crate::sessions::eject_timer(room, None, joined).map(|(at, _)| at);
        if e.session.eject_at_ms == all.map(|d| d.0) && e.eject_timer_ms == own {
            continue;
        }
        let mut updated = (*e).clone();
        updated.session.eject_at_ms = all.map(|d| d.0);
        updated.session.eject_reason = all.map(|d| d.1.to_string());
        updated.eject_timer_ms = own;
        cx.put_session(updated)?;
    }
    Ok(())
}

/// `room.expired`; with `eject_at_room_exp`, everyone following the room's rules is ejected
/// (one firing, however many are present); an expired room nobody stays in is removed, else
/// it stays as a tombstone (joins get `exp-room`) until its last participant is gone.
pub fn expire(cx: &mut Ctx<'_>, name: &str) -> Result<usize, StoreError> {
    let now = cx.now_ms();
    cx.clear_timer(&TimerId::RoomExp(std::sync::Arc::from(name)));
    let Some(room) = cx.room(name)?.filter(|r| r.is_expired(now.div_euclid(1000))) else {
        return Ok(0);
    };
    let payload = cx.room_json(&room);
    cx.event(crate::events::EventKind::RoomExpired, payload);
    let present = cx.present_in(name);
    let eject_all = room.config.get("eject_at_room_exp").and_then(Value::as_bool) == Some(true);
    let (ejected, staying): (Vec<_>, Vec<_>) = present.into_iter().partition(|e| eject_all && e.session.room_rules);
    // Nobody waits in the lobby of a room that has ended.
    let mut leaving = ejected;
    leaving.extend(cx.waiting_in(name));
    end_sessions(cx, &leaving, "room_expired", "scheduler", Ending::Normal)?;
    if staying.is_empty() {
        if let Some(still) = cx.room(name)? {
            drop_room(cx, &still, "room_expired")?;
        }
    }
    Ok(1)
}
