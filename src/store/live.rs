//! Who is in which room, in memory: every live session with the indexes the writer needs
//! (by room in join order, by room and user, by token). Persistent collections (`imbl`), so
//! the writer can hand readers a consistent copy after each durable batch in O(1), and undo a
//! failed command by keeping the copy it started from.
//!
//! Must not: do I/O. The sessions tree holds one record per session and nothing else; a
//! restart rebuilds this from it.

use std::sync::Arc;

use serde_json::Value;

use super::records::SessionRecord;
use crate::sessions::Session;

/// One live session (present, or waiting in a lobby).
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub session: Session,
    /// SHA-256 of the session secret.
    pub digest: [u8; 32],
    pub token_exp: Option<f64>,
    /// The session's own ejection timer (see [`SessionRecord::eject_timer_ms`]).
    pub eject_timer_ms: Option<i64>,
    pub meeting_start_ms: i64,
    pub waiting: bool,
}

impl Entry {
    pub fn from_record(r: SessionRecord) -> Entry {
        let permissions = r.permissions_json.as_deref().and_then(|p| serde_json::from_str::<Value>(p).ok());
        Entry {
            session: Session {
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
            },
            digest: r.secret_digest,
            token_exp: r.token_exp,
            eject_timer_ms: r.eject_timer_ms,
            meeting_start_ms: r.meeting_start_ms,
            waiting: r.waiting,
        }
    }

    pub fn to_record(&self) -> SessionRecord {
        let s = &self.session;
        SessionRecord {
            id: s.id.clone(),
            secret_digest: self.digest,
            room: s.room.clone(),
            user_id: s.user_id.clone(),
            user_name: s.user_name.clone(),
            owner: s.owner,
            token_id: s.token_id.clone(),
            token_iat: s.token_iat,
            token_exp: self.token_exp,
            joined_ms: s.joined_ms,
            eject_at_ms: s.eject_at_ms,
            eject_reason: s.eject_reason.clone(),
            eject_timer_ms: self.eject_timer_ms,
            permissions_json: s.permissions.as_ref().map(Value::to_string),
            meeting_id: s.meeting_id.clone(),
            meeting_start_ms: self.meeting_start_ms,
            room_rules: s.room_rules,
            waiting: self.waiting,
        }
    }
}

/// Order of a room's members: join time, then id.
pub type Order = (i64, Arc<str>);

/// A room with someone in it.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomLive {
    /// The current meeting (from the first join into an empty room to the last leave).
    pub meeting_id: Arc<str>,
    pub start_ms: i64,
    pub present: imbl::OrdMap<Order, ()>,
    pub waiting: imbl::OrdMap<Order, ()>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Live {
    sessions: imbl::HashMap<Arc<str>, Arc<Entry>>,
    rooms: imbl::HashMap<Arc<str>, RoomLive>,
    by_user: imbl::HashMap<(Arc<str>, Arc<str>), imbl::OrdSet<Arc<str>>>,
    by_token: imbl::HashMap<Arc<str>, imbl::OrdSet<Arc<str>>>,
    present_total: usize,
}

impl Live {
    pub fn get(&self, id: &str) -> Option<&Arc<Entry>> {
        self.sessions.get(id)
    }

    pub fn room(&self, room: &str) -> Option<&RoomLive> {
        self.rooms.get(room)
    }

    /// Present (not waiting) sessions in a room.
    pub fn present(&self, room: &str) -> u64 {
        self.rooms.get(room).map_or(0, |r| r.present.len() as u64)
    }

    /// Present sessions everywhere.
    pub fn present_total(&self) -> usize {
        self.present_total
    }

    /// Live sessions, waiting ones included.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Present sessions of a room, in join order.
    pub fn present_in(&self, room: &str) -> Vec<Arc<Entry>> {
        self.members(room, false)
    }

    /// Waiting sessions of a room, in arrival order.
    pub fn waiting_in(&self, room: &str) -> Vec<Arc<Entry>> {
        self.members(room, true)
    }

    fn members(&self, room: &str, waiting: bool) -> Vec<Arc<Entry>> {
        let Some(r) = self.rooms.get(room) else { return Vec::new() };
        let set = if waiting { &r.waiting } else { &r.present };
        set.keys().filter_map(|(_, id)| self.sessions.get(id).cloned()).collect()
    }

    /// A page of a room's present sessions in join order, after `after` (an order key).
    pub fn present_page(&self, room: &str, after: Option<&Order>, limit: usize) -> Vec<Arc<Entry>> {
        let Some(r) = self.rooms.get(room) else { return Vec::new() };
        let it: Box<dyn Iterator<Item = (&Order, &())>> = match after {
            Some(a) => Box::new(r.present.range((std::ops::Bound::Excluded(a.clone()), std::ops::Bound::Unbounded))),
            None => Box::new(r.present.iter()),
        };
        it.take(limit).filter_map(|((_, id), _)| self.sessions.get(id).cloned()).collect()
    }

    /// A room's present members in join order (join time, then id), after `after`.
    pub fn members_after<'a>(&'a self, room: &str, after: Option<&Order>) -> impl Iterator<Item = &'a Arc<Entry>> + 'a {
        let r = self.rooms.get(room);
        let it: Box<dyn Iterator<Item = (&Order, &())> + 'a> = match (r, after) {
            (None, _) => Box::new(std::iter::empty()),
            (Some(r), Some(a)) => {
                Box::new(r.present.range((std::ops::Bound::Excluded(a.clone()), std::ops::Bound::Unbounded)))
            }
            (Some(r), None) => Box::new(r.present.iter()),
        };
        it.filter_map(move |((_, id), _)| self.sessions.get(id))
    }

    /// A room's `n` latest joiners, newest first.
    pub fn newest<'a>(&'a self, room: &str, n: usize) -> impl Iterator<Item = &'a Arc<Entry>> + 'a {
        let r = self.rooms.get(room);
        r.into_iter().flat_map(|r| r.present.keys().rev()).take(n).filter_map(move |(_, id)| self.sessions.get(id))
    }

    /// Rooms with someone present or waiting, in no particular order.
    pub fn rooms(&self) -> impl Iterator<Item = (&Arc<str>, &RoomLive)> {
        self.rooms.iter()
    }

    /// Every live session of one user id in one room (present or waiting).
    pub fn user_sessions(&self, room: &str, user: &str) -> Vec<Arc<Entry>> {
        let key: (Arc<str>, Arc<str>) = (Arc::from(room), Arc::from(user));
        self.by_user
            .get(&key)
            .map_or_else(Vec::new, |ids| ids.iter().filter_map(|id| self.sessions.get(id).cloned()).collect())
    }

    /// Every live session that joined with this token.
    pub fn token_sessions(&self, token_id: &str) -> Vec<Arc<Entry>> {
        self.by_token
            .get(token_id)
            .map_or_else(Vec::new, |ids| ids.iter().filter_map(|id| self.sessions.get(id).cloned()).collect())
    }

    /// Adds (or replaces) a session; returns the one it replaced. A first present session
    /// starts the room's meeting (its entry gives the meeting's id and start).
    pub fn insert(&mut self, e: Arc<Entry>) -> Option<Arc<Entry>> {
        let id: Arc<str> = Arc::from(e.session.id.as_str());
        let prev = self.remove(&id);
        let room: Arc<str> = Arc::from(e.session.room.as_str());
        let order: Order = (e.session.joined_ms, id.clone());
        let entry = self.rooms.entry(room.clone()).or_insert_with(|| RoomLive {
            meeting_id: Arc::from(e.session.meeting_id.as_str()),
            start_ms: e.meeting_start_ms,
            present: imbl::OrdMap::new(),
            waiting: imbl::OrdMap::new(),
        });
        if e.waiting {
            entry.waiting.insert(order, ());
        } else {
            if entry.present.is_empty() {
                entry.meeting_id = Arc::from(e.session.meeting_id.as_str());
                entry.start_ms = e.meeting_start_ms;
            }
            entry.present.insert(order, ());
            self.present_total += 1;
        }
        if let Some(u) = &e.session.user_id {
            self.by_user.entry((room, Arc::from(u.as_str()))).or_default().insert(id.clone());
        }
        if let Some(t) = &e.session.token_id {
            self.by_token.entry(Arc::from(t.as_str())).or_default().insert(id.clone());
        }
        self.sessions.insert(id, e);
        prev
    }

    /// Removes a session; returns it.
    pub fn remove(&mut self, id: &str) -> Option<Arc<Entry>> {
        let e = self.sessions.remove(id)?;
        let s = &e.session;
        let room: Arc<str> = Arc::from(s.room.as_str());
        let order: Order = (s.joined_ms, Arc::from(s.id.as_str()));
        if let Some(r) = self.rooms.get_mut(&room) {
            if e.waiting {
                r.waiting.remove(&order);
            } else if r.present.remove(&order).is_some() {
                self.present_total -= 1;
            }
            if r.present.is_empty() && r.waiting.is_empty() {
                self.rooms.remove(&room);
            }
        }
        if let Some(u) = &s.user_id {
            let key = (room, Arc::from(u.as_str()));
            if let Some(set) = self.by_user.get_mut(&key) {
                set.remove(s.id.as_str());
                if set.is_empty() {
                    self.by_user.remove(&key);
                }
            }
        }
        if let Some(t) = &s.token_id {
            if let Some(set) = self.by_token.get_mut(t.as_str()) {
                set.remove(s.id.as_str());
                if set.is_empty() {
                    self.by_token.remove(t.as_str());
                }
            }
        }
        Some(e)
    }

    /// Every session (for start-up bookkeeping and backups).
    pub fn all(&self) -> impl Iterator<Item = &Arc<Entry>> {
        self.sessions.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, room: &str, user: Option<&str>, joined: i64, waiting: bool) -> Entry {
        Entry::from_record(SessionRecord {
            id: id.into(),
            secret_digest: [0; 32],
            room: room.into(),
            user_id: user.map(String::from),
            user_name: None,
            owner: false,
            token_id: Some("tok".into()),
            token_iat: None,
            token_exp: None,
            joined_ms: joined,
            eject_at_ms: None,
            eject_reason: None,
            eject_timer_ms: None,
            permissions_json: None,
            meeting_id: format!("m-{id}"),
            meeting_start_ms: joined,
            room_rules: true,
            waiting,
        })
    }

    #[test]
    fn indexes_follow_inserts_and_removals() {
        let mut l = Live::default();
        l.insert(Arc::new(entry("s2", "r", Some("u"), 20, false)));
        l.insert(Arc::new(entry("s1", "r", Some("u"), 10, false)));
        l.insert(Arc::new(entry("w1", "r", Some("v"), 15, true)));
        l.insert(Arc::new(entry("x", "other", None, 5, false)));
        let snapshot = l.clone();
        assert_eq!(l.present("r"), 2);
        assert_eq!(l.present_total(), 3);
        assert_eq!(l.present_in("r").iter().map(|e| e.session.id.as_str()).collect::<Vec<_>>(), ["s1", "s2"]);
        assert_eq!(l.waiting_in("r").len(), 1);
        assert_eq!(l.user_sessions("r", "u").len(), 2);
        assert_eq!(l.token_sessions("tok").len(), 4);
        assert_eq!(l.room("r").unwrap().meeting_id.as_ref(), "m-s2", "the first present join starts the meeting");
        let page = l.present_page("r", Some(&(10, Arc::from("s1"))), 10);
        assert_eq!(page.len(), 1);
        l.remove("s1");
        l.remove("s2");
        l.remove("w1");
        assert!(l.room("r").is_none());
        assert!(l.user_sessions("r", "u").is_empty());
        assert_eq!(l.present_total(), 1);
        assert_eq!(snapshot.present("r"), 2, "a copy is unaffected");
    }
}
