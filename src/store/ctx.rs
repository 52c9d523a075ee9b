//! The narrow context a command runs in: it reads the current state (the writer's working copy
//! over sled) and records its changes — writes, events, sessions, deadlines — in the batch being
//! built. A command never sees the writer, the journal or sled's handles.
//!
//! Must not: do I/O other than reading sled (through [`State`]), or publish anything; the
//! writer makes a batch durable and visible as a whole.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::journal::{LoggedEvent, Op};
use super::keys;
use super::live::Entry;
use super::records::{
    self, BanRecord, MeetingParticipantRecord, MeetingRecord, RevocationRecord, RoomRecord, TokenRecord, WebhookRecord,
};
use super::state::{Private, Slot, State, Tree, Trees};
use super::timers::TimerId;
use super::StoreError;
use crate::clock::SharedClock;
use crate::rooms::Room;

/// What every command may know about the server.
pub struct Env {
    pub clock: SharedClock,
    /// Base of room URLs, for room payloads in events.
    pub public_url: String,
    /// The first 8 hex digits of the domain id (event ids).
    pub domain8: String,
    /// Presence lease length.
    pub lease_ms: i64,
    pub stats: Arc<super::StoreStats>,
    /// The event log, for commands that look at old events (compaction).
    pub events: Arc<super::eventlog::EventLog>,
}

/// The batch being built: its journal record's contents, what to do once it is durable, and
/// how to undo the running command's changes to the state.
#[derive(Debug, Default)]
pub struct BatchBuf {
    pub lsn: u64,
    pub ops: Vec<Op>,
    pub events: Vec<LoggedEvent>,
    /// Webhook configuration or state changed: the delivery manager reloads.
    pub webhooks_touched: bool,
    /// What each change to the state replaced, newest last (see [`BatchBuf::rollback`]).
    undo: Vec<Undo>,
}

/// What a change to the state replaced.
#[derive(Debug)]
enum Undo {
    Overlay(Tree, Vec<u8>, Option<Slot>),
    Timer(TimerId, Option<i64>),
    Session(Arc<str>, Option<Arc<Entry>>),
    Lease(Arc<str>, Option<i64>),
    BanCount(Arc<str>, Option<usize>),
}

/// A point to roll a batch back to (a failed command leaves nothing behind).
pub struct Mark {
    ops: usize,
    events: usize,
    undo: usize,
    webhooks_touched: bool,
    next_seq: u64,
    room_count: u64,
    events_oldest: u64,
}

impl BatchBuf {
    pub fn new(lsn: u64) -> BatchBuf {
        BatchBuf { lsn, ..Default::default() }
    }

    pub fn mark(&self, st: &State) -> Mark {
        Mark {
            ops: self.ops.len(),
            events: self.events.len(),
            undo: self.undo.len(),
            webhooks_touched: self.webhooks_touched,
            next_seq: st.next_seq,
            room_count: st.room_count,
            events_oldest: st.events_oldest,
        }
    }

    /// Undoes everything recorded since `m`, in the state and in the batch. (Cheaper than
    /// copying the state before each command: a copy of a persistent map makes the next write
    /// to each of its nodes copy that node.)
    pub fn rollback(&mut self, st: &mut State, pv: &mut Private, m: Mark) {
        while self.undo.len() > m.undo {
            match self.undo.pop() {
                Some(Undo::Overlay(t, key, prev)) => st.overlay.restore(t, &key, prev),
                Some(Undo::Timer(id, prev)) => match prev {
                    Some(at) => {
                        pv.timers.set(id, at);
                    }
                    None => {
                        pv.timers.clear(&id);
                    }
                },
                Some(Undo::Session(id, prev)) => match prev {
                    Some(e) => {
                        st.live.insert(e);
                    }
                    None => {
                        st.live.remove(&id);
                    }
                },
                Some(Undo::Lease(id, prev)) => match prev {
                    Some(at) => {
                        pv.leases.insert(id, at);
                    }
                    None => {
                        pv.leases.remove(&id);
                    }
                },
                Some(Undo::BanCount(room, prev)) => match prev {
                    Some(n) => {
                        pv.ban_counts.insert(room, n);
                    }
                    None => {
                        pv.ban_counts.remove(&room);
                    }
                },
                None => break,
            }
        }
        self.ops.truncate(m.ops);
        self.events.truncate(m.events);
        self.webhooks_touched = m.webhooks_touched;
        st.next_seq = m.next_seq;
        st.room_count = m.room_count;
        st.events_oldest = m.events_oldest;
    }
}

pub struct Ctx<'a> {
    pub(super) st: &'a mut State,
    pub(super) pv: &'a mut Private,
    pub(super) batch: &'a mut BatchBuf,
    pub(super) trees: &'a Trees,
    pub(super) env: &'a Env,
    pub(super) now_ms: i64,
}

impl Ctx<'_> {
    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    pub fn now_secs(&self) -> i64 {
        self.now_ms.div_euclid(1000)
    }

    pub fn lease_ms(&self) -> i64 {
        self.env.lease_ms
    }

    pub fn stats(&self) -> &super::StoreStats {
        &self.env.stats
    }

    /// The seq the next event will get.
    pub fn next_seq(&self) -> u64 {
        self.st.next_seq
    }

    pub fn events_oldest(&self) -> u64 {
        self.st.events_oldest
    }

    /// The durable event log (read only).
    pub fn event_log(&self) -> &super::eventlog::EventLog {
        &self.env.events
    }

    // --- raw writes -------------------------------------------------------------------------

    fn get(&self, t: Tree, key: &[u8]) -> Result<Option<Arc<[u8]>>, StoreError> {
        self.st.get(self.trees, t, key)
    }

    pub(super) fn scan(&self, t: Tree, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Arc<[u8]>)>, StoreError> {
        self.st.scan_prefix(self.trees, t, prefix)
    }

    /// At most `limit` entries under `prefix` after the key `after`, in key order: housekeeping
    /// goes through a tree a page at a time, so a sweep never holds a whole tree in memory nor
    /// the writer for long.
    fn page(
        &self,
        t: Tree,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Arc<[u8]>)>, StoreError> {
        use std::ops::Bound;
        let lo = match after {
            Some(k) => Bound::Excluded(k.to_vec()),
            None => Bound::Included(prefix.to_vec()),
        };
        let hi = match super::state::prefix_end(prefix) {
            Some(end) => Bound::Excluded(end),
            None => Bound::Unbounded,
        };
        self.st.range(self.trees, t, lo, hi, false, limit)
    }

    /// [`Ctx::page`], each value decoded as a `version` record (`name` labels a corrupt one).
    fn decoded_page<T: serde::de::DeserializeOwned>(
        &self,
        t: Tree,
        name: &'static str,
        version: u8,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, T)>, StoreError> {
        self.page(t, prefix, after, limit)?
            .into_iter()
            .map(|(k, v)| records::decode(name, &k, version, &v).map(|r| (k, r)))
            .collect()
    }

    fn write(&mut self, t: Tree, key: Vec<u8>, value: Option<Vec<u8>>) {
        let slot = Slot { lsn: self.batch.lsn, value: value.as_deref().map(Arc::from) };
        let prev = self.st.overlay.set(t, &key, slot);
        self.batch.undo.push(Undo::Overlay(t, key.clone(), prev));
        self.batch.ops.push((t.index(), key, value));
    }

    fn set_lease(&mut self, id: Arc<str>, at: Option<i64>) {
        let prev = match at {
            Some(at) => self.pv.leases.insert(id.clone(), at),
            None => self.pv.leases.remove(&id),
        };
        self.batch.undo.push(Undo::Lease(id, prev));
    }

    pub(super) fn put(&mut self, t: Tree, key: Vec<u8>, value: Vec<u8>) {
        self.write(t, key, Some(value));
    }

    pub(super) fn del(&mut self, t: Tree, key: Vec<u8>) {
        self.write(t, key, None);
    }

    /// Logs an event: it gets the next seq now, its envelope is rendered now, and it becomes
    /// readable with the batch, once durable.
    pub fn event(&mut self, kind: crate::events::EventKind, payload: Value) {
        let room = payload.get("room").and_then(Value::as_str).map(String::from);
        let session = payload.get("session_id").and_then(Value::as_str).map(String::from);
        self.log_event(kind, &payload, room, session);
    }

    /// An event whose payload the request's task wrote already.
    pub fn new_event(&mut self, e: crate::events::NewEvent) {
        self.log_event(e.kind, &*e.payload, e.room, None);
    }

    fn log_event(
        &mut self,
        kind: crate::events::EventKind,
        payload: &(impl serde::Serialize + ?Sized),
        room: Option<String>,
        session: Option<String>,
    ) {
        let kind = kind.as_str();
        let seq = self.st.next_seq;
        self.st.next_seq += 1;
        let envelope = crate::events::render(&self.env.domain8, seq, kind, payload, self.now_ms);
        self.batch.events.push(LoggedEvent {
            seq,
            ts_ms: self.now_ms,
            kind: kind.to_string(),
            room,
            envelope,
            session,
        });
    }

    // --- rooms -------------------------------------------------------------------------------

    pub fn room(&self, name: &str) -> Result<Option<Room>, StoreError> {
        match self.get(Tree::Rooms, name.as_bytes())? {
            Some(b) => Ok(Some(super::room_from_record(records::decode::<RoomRecord>(
                "rooms",
                name.as_bytes(),
                records::ROOM_V1,
                &b,
            )?)?)),
            None => Ok(None),
        }
    }

    /// Writes a room (a new one also gets its indexes and counts).
    pub fn put_room(&mut self, room: &Room, new: bool) -> Result<(), StoreError> {
        let rec = records::encode(records::ROOM_V1, &super::room_to_record(room))?;
        self.put(Tree::Rooms, room.name.as_bytes().to_vec(), rec);
        if new {
            self.put(Tree::RoomsById, room.id.as_bytes().to_vec(), room.name.as_bytes().to_vec());
            self.put(
                Tree::RoomsByCreated,
                keys::room_created(room.created_ms, &room.name),
                room.name.as_bytes().to_vec(),
            );
            self.st.room_count += 1;
        }
        Ok(())
    }

    /// Removes a room's records and its expiry deadline.
    pub fn drop_room(&mut self, room: &Room) {
        self.del(Tree::Rooms, room.name.as_bytes().to_vec());
        self.del(Tree::RoomsById, room.id.as_bytes().to_vec());
        self.del(Tree::RoomsByCreated, keys::room_created(room.created_ms, &room.name));
        self.st.room_count = self.st.room_count.saturating_sub(1);
        self.clear_timer(&TimerId::RoomExp(Arc::from(room.name.as_str())));
    }

    /// The domain settings (empty until set).
    pub fn domain_config(&self) -> Result<Map<String, Value>, StoreError> {
        self.object(Tree::Meta, "meta", keys::META_DOMAIN_CONFIG)
    }

    pub fn put_domain_config(&mut self, config: &Map<String, Value>) -> Result<(), StoreError> {
        self.put(Tree::Meta, keys::META_DOMAIN_CONFIG.to_vec(), records::encode_object(config)?);
        Ok(())
    }

    pub fn put_acme(&mut self, state: &Map<String, Value>) -> Result<(), StoreError> {
        self.put(Tree::Meta, keys::META_ACME.to_vec(), records::encode_object(state)?);
        Ok(())
    }

    /// A JSON object record (an empty object if there is none).
    fn object(&self, t: Tree, name: &'static str, key: &[u8]) -> Result<Map<String, Value>, StoreError> {
        records::decode_object(name, key, self.get(t, key)?.as_deref())
    }

    /// A running meeting's session data (empty until set).
    pub fn session_data(&self, meeting_id: &str) -> Result<Map<String, Value>, StoreError> {
        self.object(Tree::Meetings, "meetings", &keys::meeting_data(meeting_id))
    }

    pub fn put_session_data(&mut self, meeting_id: &str, data: &Map<String, Value>) -> Result<(), StoreError> {
        self.put(Tree::Meetings, keys::meeting_data(meeting_id), records::encode_object(data)?);
        Ok(())
    }

    /// Session data lives as long as its meeting runs. (Looked up first: most meetings have
    /// none, and a delete would cost the applier a sled write per meeting.)
    pub fn del_session_data(&mut self, meeting_id: &str) -> Result<(), StoreError> {
        let key = keys::meeting_data(meeting_id);
        if self.get(Tree::Meetings, &key)?.is_some() {
            self.del(Tree::Meetings, key);
        }
        Ok(())
    }

    pub fn room_json(&self, room: &Room) -> Value {
        crate::events::room_payload(&room.to_json(&self.env.public_url))
    }

    // --- tokens ------------------------------------------------------------------------------

    pub fn token(&self, jti: &str) -> Result<Option<TokenRecord>, StoreError> {
        match self.get(Tree::Tokens, jti.as_bytes())? {
            Some(b) => Ok(Some(records::decode("tokens", jti.as_bytes(), records::TOKEN_V1, &b)?)),
            None => Ok(None),
        }
    }

    pub fn put_token(&mut self, t: &TokenRecord) -> Result<(), StoreError> {
        self.put(Tree::Tokens, t.jti.as_bytes().to_vec(), records::encode(records::TOKEN_V1, t)?);
        self.put(Tree::TokensByRoom, keys::token_room(t.room.as_deref(), &t.jti), Vec::new());
        Ok(())
    }

    pub fn del_token(&mut self, t: &TokenRecord) {
        self.del(Tree::Tokens, t.jti.as_bytes().to_vec());
        self.del(Tree::TokensByRoom, keys::token_room(t.room.as_deref(), &t.jti));
    }

    /// At most `limit` issued tokens after the key `after`, in jti order (a housekeeping page).
    pub fn tokens_page(&self, after: Option<&[u8]>, limit: usize) -> Result<Vec<(Vec<u8>, TokenRecord)>, StoreError> {
        self.decoded_page(Tree::Tokens, "tokens", records::TOKEN_V1, b"", after, limit)
    }

    // --- meetings (history) ------------------------------------------------------------------

    pub fn meeting_record(&self, id: &str) -> Result<Option<MeetingRecord>, StoreError> {
        let key = keys::meeting(id);
        match self.get(Tree::Meetings, &key)? {
            Some(v) => Ok(Some(records::decode("meetings", &key, records::MEETING_V1, &v)?)),
            None => Ok(None),
        }
    }

    pub fn put_meeting(&mut self, m: &MeetingRecord) -> Result<(), StoreError> {
        self.put(Tree::Meetings, keys::meeting(&m.id), records::encode(records::MEETING_V1, m)?);
        self.put(Tree::Meetings, keys::meeting_of_room(&m.room, &m.id), Vec::new());
        Ok(())
    }

    /// Records a session's part in its meeting (at its join, and again when it leaves).
    pub fn put_meeting_participant(
        &mut self,
        s: &crate::sessions::Session,
        leave_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        let r = MeetingParticipantRecord {
            participant_id: s.id.clone(),
            user_id: s.user_id.clone(),
            user_name: s.user_name.clone(),
            join_ms: s.joined_ms,
            leave_ms,
        };
        let key = keys::meeting_participant(&s.meeting_id, s.joined_ms, &s.id);
        self.put(Tree::MeetingParticipants, key, records::encode(records::MEETING_PARTICIPANT_V1, &r)?);
        Ok(())
    }

    /// At most `limit` meeting records after the key `after`, oldest first (a housekeeping page).
    pub fn meetings_page(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, MeetingRecord)>, StoreError> {
        self.decoded_page(Tree::Meetings, "meetings", records::MEETING_V1, b"m", after, limit)
    }

    /// Removes a meeting and its participants.
    pub fn del_meeting(&mut self, m: &MeetingRecord) -> Result<(), StoreError> {
        self.del(Tree::Meetings, keys::meeting(&m.id));
        self.del(Tree::Meetings, keys::meeting_of_room(&m.room, &m.id));
        for (k, _) in self.scan(Tree::MeetingParticipants, &keys::parts(&[&m.id]))? {
            self.del(Tree::MeetingParticipants, k);
        }
        Ok(())
    }

    // --- bans and revocations ----------------------------------------------------------------

    pub fn ban(&self, room: &str, user: &str) -> Result<Option<BanRecord>, StoreError> {
        let key = keys::ban(room, user);
        match self.get(Tree::Bans, &key)? {
            Some(v) => Ok(Some(records::decode("bans", &key, records::BAN_V1, &v)?)),
            None => Ok(None),
        }
    }

    /// Bans `user` from `room` (until `ban.until_ms`, with its deadline).
    pub fn put_ban(&mut self, room: &str, user: &str, ban: &BanRecord) -> Result<(), StoreError> {
        let id = TimerId::Ban(Arc::from(room), Arc::from(user));
        match ban.until_ms {
            Some(at) => self.set_timer(id, at),
            None => self.clear_timer(&id),
        }
        let key = keys::ban(room, user);
        if self.get(Tree::Bans, &key)?.is_none() {
            self.count_bans(room, 1);
        }
        self.put(Tree::Bans, key, records::encode(records::BAN_V1, ban)?);
        Ok(())
    }

    pub fn del_ban(&mut self, room: &str, user: &str) -> Result<(), StoreError> {
        self.clear_timer(&TimerId::Ban(Arc::from(room), Arc::from(user)));
        let key = keys::ban(room, user);
        if self.get(Tree::Bans, &key)?.is_some() {
            self.count_bans(room, -1);
        }
        self.del(Tree::Bans, key);
        Ok(())
    }

    /// How many ban rows `room` has (in force or not yet fired): read from the trees the first
    /// time, then from the writer's count.
    pub fn ban_count(&mut self, room: &str) -> Result<usize, StoreError> {
        if let Some(n) = self.pv.ban_counts.get(room) {
            return Ok(*n);
        }
        let n = self.banned_in(room, usize::MAX)?.len();
        self.set_ban_count(room, Some(n));
        Ok(n)
    }

    /// Moves a room's ban count, if it is kept (one not kept yet is read when first needed).
    fn count_bans(&mut self, room: &str, delta: isize) {
        if let Some(n) = self.pv.ban_counts.get(room).copied() {
            self.set_ban_count(room, Some(n.saturating_add_signed(delta)));
        }
    }

    fn set_ban_count(&mut self, room: &str, n: Option<usize>) {
        let room: Arc<str> = Arc::from(room);
        let prev = match n {
            Some(n) => self.pv.ban_counts.insert(room.clone(), n),
            None => self.pv.ban_counts.remove(&room),
        };
        self.batch.undo.push(Undo::BanCount(room, prev));
    }

    /// Forgets a room's ban count (the room is gone with its bans).
    pub fn forget_ban_count(&mut self, room: &str) {
        if self.pv.ban_counts.contains_key(room) {
            self.set_ban_count(room, None);
        }
    }

    /// The user ids with a ban row in `room` (in force or not yet fired), at most `at_most`, in
    /// key order.
    pub fn banned_in(&self, room: &str, at_most: usize) -> Result<Vec<String>, StoreError> {
        let prefix = keys::parts(&[room]);
        let hi = match super::state::prefix_end(&prefix) {
            Some(end) => std::ops::Bound::Excluded(end),
            None => std::ops::Bound::Unbounded,
        };
        let rows = self.st.range(self.trees, Tree::Bans, std::ops::Bound::Included(prefix), hi, false, at_most)?;
        Ok(rows.iter().filter_map(|(k, _)| keys::split(k).and_then(|p| p.get(1).cloned())).collect())
    }

    /// At most `limit` ban rows after the key `after`, in key order, each with its (room, user
    /// id) when the key parses (a housekeeping page).
    pub fn bans_page(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Option<(String, String)>)>, StoreError> {
        Ok(self
            .page(Tree::Bans, b"", after, limit)?
            .into_iter()
            .map(|(k, _)| {
                let parsed = match keys::split(&k).as_deref() {
                    Some([room, user]) => Some((room.clone(), user.clone())),
                    _ => None,
                };
                (k, parsed)
            })
            .collect())
    }

    pub fn revocation(&self, key: &[u8]) -> Result<Option<RevocationRecord>, StoreError> {
        match self.get(Tree::Revocations, key)? {
            Some(v) => Ok(Some(records::decode("revocations", key, records::REVOCATION_V1, &v)?)),
            None => Ok(None),
        }
    }

    pub fn put_revocation(&mut self, key: Vec<u8>, r: &RevocationRecord) -> Result<(), StoreError> {
        self.put(Tree::Revocations, key, records::encode(records::REVOCATION_V1, r)?);
        Ok(())
    }

    /// At most `limit` revocations after the key `after`, in key order (a housekeeping page).
    pub fn revocations_page(
        &self,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, RevocationRecord)>, StoreError> {
        self.decoded_page(Tree::Revocations, "revocations", records::REVOCATION_V1, b"", after, limit)
    }

    pub fn del_revocation(&mut self, key: Vec<u8>) {
        self.del(Tree::Revocations, key);
    }

    /// Whether a verified token is revoked for use in `room` (its own room when `None`).
    pub fn is_revoked(
        &self,
        claims: &crate::tokens::Claims,
        token_id: &str,
        room: Option<&str>,
    ) -> Result<bool, StoreError> {
        super::is_revoked(&|k| self.revocation(k), claims, token_id, room, self.now_ms)
    }

    /// Whether update-permissions withdrew the right to administer participants from a session
    /// of this token (it then sticks to every later session of the token).
    pub fn admin_withdrawn(&self, token_id: &str) -> Result<bool, StoreError> {
        Ok(self.revocation(&keys::revoke_admin(token_id))?.is_some_and(|r| r.until_ms.is_none_or(|u| u > self.now_ms)))
    }

    /// Records that a token's right to administer participants is withdrawn (`Some(until)`,
    /// kept until the token expires) or given back (`None`).
    pub fn set_admin_withdrawn(&mut self, token_id: &str, withdrawn: Option<Option<i64>>) -> Result<(), StoreError> {
        let key = keys::revoke_admin(token_id);
        match withdrawn {
            Some(until_ms) => {
                let r = RevocationRecord { until_ms, issued_before_s: None, created_ms: self.now_ms };
                self.put_revocation(key, &r)
            }
            None => {
                if self.revocation(&key)?.is_some() {
                    self.del_revocation(key);
                }
                Ok(())
            }
        }
    }

    pub fn is_banned(&self, room: &str, user: &str) -> Result<bool, StoreError> {
        Ok(self.ban(room, user)?.is_some_and(|b| b.until_ms.is_none_or(|u| u > self.now_ms)))
    }

    // --- webhooks ----------------------------------------------------------------------------

    pub fn webhook(&self, id: &str) -> Result<Option<WebhookRecord>, StoreError> {
        match self.get(Tree::Webhooks, id.as_bytes())? {
            Some(v) => Ok(Some(records::decode_webhook(id.as_bytes(), &v)?)),
            None => Ok(None),
        }
    }

    pub fn webhooks(&self) -> Result<Vec<WebhookRecord>, StoreError> {
        self.scan(Tree::Webhooks, b"")?.iter().map(|(k, v)| records::decode_webhook(k, v)).collect()
    }

    /// Writes a webhook; `reload` tells the delivery manager to look again.
    pub fn put_webhook(&mut self, w: &WebhookRecord, reload: bool) -> Result<(), StoreError> {
        self.put(Tree::Webhooks, w.uuid.as_bytes().to_vec(), records::encode(records::WEBHOOK_V2, w)?);
        self.batch.webhooks_touched |= reload;
        Ok(())
    }

    pub fn del_webhook(&mut self, id: &str) -> Result<(), StoreError> {
        self.del(Tree::Webhooks, id.as_bytes().to_vec());
        for (k, _) in self.scan(Tree::Attempts, &keys::attempts_of(id))? {
            self.del(Tree::Attempts, k);
        }
        self.batch.webhooks_touched = true;
        Ok(())
    }

    /// Records a failed attempt, keeping the newest `keep`.
    pub fn add_attempt(&mut self, id: &str, a: &records::AttemptRecord, keep: usize) -> Result<(), StoreError> {
        let existing = self.scan(Tree::Attempts, &keys::attempts_of(id))?;
        for (k, _) in existing.iter().take((existing.len() + 1).saturating_sub(keep)) {
            self.del(Tree::Attempts, k.clone());
        }
        self.put(Tree::Attempts, keys::attempt(id, a.at_ms, a.seq), records::encode(records::ATTEMPT_V1, a)?);
        Ok(())
    }

    // --- sessions ----------------------------------------------------------------------------

    pub fn session(&self, id: &str) -> Option<Arc<Entry>> {
        self.st.live.get(id).cloned()
    }

    /// Present sessions of a room, in join order.
    pub fn present_in(&self, room: &str) -> Vec<Arc<Entry>> {
        self.st.live.present_in(room)
    }

    pub fn waiting_in(&self, room: &str) -> Vec<Arc<Entry>> {
        self.st.live.waiting_in(room)
    }

    pub fn present(&self, room: &str) -> u64 {
        self.st.live.present(room)
    }

    /// The room's current meeting: (id, start ms), if anyone is present.
    pub fn meeting(&self, room: &str) -> Option<(String, i64)> {
        self.st.live.room(room).filter(|r| !r.present.is_empty()).map(|r| (r.meeting_id.to_string(), r.start_ms))
    }

    pub fn user_sessions(&self, room: &str, user: &str) -> Vec<Arc<Entry>> {
        self.st.live.user_sessions(room, user)
    }

    pub fn token_sessions(&self, token_id: &str) -> Vec<Arc<Entry>> {
        self.st.live.token_sessions(token_id)
    }

    /// Adds (or replaces) a session: its record, its lease (fresh), its own ejection deadline.
    pub fn put_session(&mut self, e: Entry) -> Result<(), StoreError> {
        let id: Arc<str> = Arc::from(e.session.id.as_str());
        self.put(Tree::Sessions, id.as_bytes().to_vec(), records::encode(records::SESSION_V2, &e.to_record())?);
        match e.eject_timer_ms {
            Some(at) => self.set_timer(TimerId::Eject(id.clone()), self.due(at)),
            None => self.clear_timer(&TimerId::Eject(id.clone())),
        }
        if !self.pv.leases.contains_key(&id) {
            self.set_lease(id.clone(), Some(self.now_ms));
            self.set_timer(TimerId::Lease(id.clone()), self.now_ms + self.env.lease_ms);
        }
        let prev = self.st.live.insert(Arc::new(e));
        self.batch.undo.push(Undo::Session(id, prev));
        Ok(())
    }

    /// Removes a session and its deadlines; returns it.
    pub fn remove_session(&mut self, id: &str) -> Option<Arc<Entry>> {
        let e = self.st.live.remove(id)?;
        let id: Arc<str> = Arc::from(id);
        self.batch.undo.push(Undo::Session(id.clone(), Some(e.clone())));
        self.del(Tree::Sessions, id.as_bytes().to_vec());
        self.clear_timer(&TimerId::Eject(id.clone()));
        self.clear_timer(&TimerId::Lease(id.clone()));
        self.set_lease(id, None);
        Some(e)
    }

    /// When a session was last heard from.
    pub fn seen(&self, id: &str) -> Option<i64> {
        self.pv.leases.get(id).copied()
    }

    /// A sign of life from a session: memory only (no record, no event, no sync).
    pub fn touch(&mut self, id: &str) {
        self.set_lease(Arc::from(id), Some(self.now_ms));
    }

    // --- deadlines ---------------------------------------------------------------------------

    /// Sets (or moves) a deadline; room and ban deadlines are also written as rows. Kept as
    /// given, even when past: a deadline a firing moves fires in its turn, in deadline order
    /// (invariant 4). Deadlines a command takes from its caller are set with [`Ctx::due`].
    pub fn set_timer(&mut self, id: TimerId, at_ms: i64) {
        let prev = self.pv.timers.set(id.clone(), at_ms);
        self.batch.undo.push(Undo::Timer(id.clone(), prev));
        if let Some(old) = prev {
            if id.is_durable() && old != at_ms {
                self.del(Tree::Timers, timer_key(old, &id));
            }
        }
        if id.is_durable() {
            self.put(Tree::Timers, timer_key(at_ms, &id), Vec::new());
        }
    }

    /// When a deadline a caller asked for is due: `at_ms`, or now if that has passed (a room
    /// created or updated with an `exp` already gone, a session whose room's rules changed
    /// under it). It fires at once, and the lateness metric counts only what the writer takes
    /// from now, not the time before anyone asked for it.
    pub fn due(&self, at_ms: i64) -> i64 {
        at_ms.max(self.now_ms)
    }

    pub fn clear_timer(&mut self, id: &TimerId) {
        if let Some(old) = self.pv.timers.clear(id) {
            self.batch.undo.push(Undo::Timer(id.clone(), Some(old)));
            if id.is_durable() {
                self.del(Tree::Timers, timer_key(old, id));
            }
        }
    }

    pub fn timer(&self, id: &TimerId) -> Option<i64> {
        self.pv.timers.get(id)
    }

    // --- events log --------------------------------------------------------------------------

    /// Moves the first event seq served (compaction); written to meta with the batch.
    pub fn set_events_oldest(&mut self, oldest: u64) {
        self.st.events_oldest = oldest;
        self.put(Tree::Meta, keys::META_EVENTS_OLDEST.to_vec(), oldest.to_be_bytes().to_vec());
    }

    pub fn public_url(&self) -> &str {
        &self.env.public_url
    }
}

/// The `timers` row of a durable deadline.
pub fn timer_key(at_ms: i64, id: &TimerId) -> Vec<u8> {
    match id {
        TimerId::RoomExp(room) => keys::timer(at_ms, keys::TIMER_ROOM_EXP, &[room]),
        TimerId::Ban(room, user) => keys::timer(at_ms, keys::TIMER_BAN, &[room, user]),
        // Session deadlines are never rows; a key is still well defined.
        TimerId::Lease(id) | TimerId::Eject(id) => keys::timer(at_ms, 0, &[id]),
    }
}
