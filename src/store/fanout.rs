//! Fan-out per room (ARCHITECTURE.md, "Session streams"): after each durable batch the syncer
//! hands the events about a room to that room's subscribers (session streams), each event
//! encoded once as an SSE frame and shared; streams of other rooms do no work for it.
//!
//! Each room has a bounded ring of recent frames shared by its subscribers: memory per room is
//! bounded whatever the number of streams, and a subscriber that falls behind the ring learns
//! it (`Lagged`) and starts again from a fresh snapshot. Events about one session (its join,
//! ejection, departure) also go to that session's own small ring, so a stream learns of its
//! own end without looking at everyone else's.
//!
//! **Large rooms.** From `threshold` people present (until the room falls 10% below it), joins
//! and departures are no longer sent to everyone one by one: they are folded into a
//! `presence-summary` frame (the count, and the latest few joiners and leavers) that
//! [`Hub::flush_summaries`] sends at most every tick. The cost per change is then O(1), and per
//! tick O(streams in rooms that changed), instead of O(streams) per change.
//!
//! Must not: block the syncer (a send never waits), or parse an event per subscriber.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::journal::LoggedEvent;
use super::live::Live;
use crate::events::{Audience, EventKind};

/// Frames each room's ring holds.
pub const ROOM_RING: usize = 1024;
/// Frames each session's own ring holds (its join, ejection and departure are all it gets).
pub const OWN_RING: usize = 16;
/// Joiners (and leavers) a summary lists, newest first; the totals count the rest.
pub const SUMMARY_LIST: usize = 5;
/// Default size from which a room is large (Daily's call UI switches around 1,000).
pub const DEFAULT_LARGE_ROOM: u64 = 1000;

/// One SSE frame, encoded once and shared by every stream it goes to.
#[derive(Debug)]
pub struct Frame {
    pub kind: Arc<str>,
    /// The session the event is about, if one.
    pub about: Option<Arc<str>>,
    /// For the room's admins only: its kind's audience (`EventKind::audience`), or it is about a
    /// participant hidden from presence.
    pub admin_only: bool,
    /// For this session's streams only (an app message sent to one participant): it travels
    /// in the room's ring, which a reader that falls behind resynchronizes from, rather than
    /// in the session's own small ring, where a burst could push out the session's ending.
    pub to: Option<Arc<str>>,
    pub bytes: Bytes,
}

impl Frame {
    /// The room became small again: every stream sends a fresh full snapshot.
    pub fn is_resync(&self) -> bool {
        &*self.kind == RESYNC
    }
}

const RESYNC: &str = "resync";

/// `id: <seq>\nevent: <kind>\ndata: <data>\n\n` (`data` must be one line: JSON is).
pub fn sse_frame(kind: &str, id: Option<u64>, data: &str) -> Bytes {
    let mut s = String::with_capacity(kind.len() + data.len() + 32);
    if let Some(i) = id {
        s.push_str("id: ");
        s.push_str(&i.to_string());
        s.push('\n');
    }
    s.push_str("event: ");
    s.push_str(kind);
    s.push_str("\ndata: ");
    s.push_str(data);
    s.push_str("\n\n");
    Bytes::from(s)
}

struct RoomFan {
    tx: broadcast::Sender<Arc<Frame>>,
    large: bool,
    count: u64,
    /// Since the last summary, newest last, at most [`SUMMARY_LIST`] each.
    joined: VecDeque<Value>,
    left: VecDeque<Value>,
    joined_total: u64,
    left_total: u64,
    dirty: bool,
}

impl RoomFan {
    fn new() -> RoomFan {
        RoomFan {
            tx: broadcast::channel(ROOM_RING).0,
            large: false,
            count: 0,
            joined: VecDeque::new(),
            left: VecDeque::new(),
            joined_total: 0,
            left_total: 0,
            dirty: false,
        }
    }
}

pub struct Hub {
    /// std Mutexes: held only to look up, insert, or send (a send never waits).
    rooms: Mutex<HashMap<Arc<str>, RoomFan>>,
    own: Mutex<HashMap<Arc<str>, broadcast::Sender<Arc<Frame>>>>,
    threshold: AtomicU64,
}

impl Default for Hub {
    fn default() -> Hub {
        Hub { rooms: Mutex::default(), own: Mutex::default(), threshold: AtomicU64::new(DEFAULT_LARGE_ROOM) }
    }
}

/// Below this many present a large room is small again (10% under the threshold: no flapping).
fn small_again_below(threshold: u64) -> u64 {
    threshold.saturating_sub((threshold / 10).max(1))
}

impl Hub {
    pub fn set_large_threshold(&self, n: u64) {
        self.threshold.store(n.max(1), Ordering::Relaxed);
    }

    pub fn large_threshold(&self) -> u64 {
        self.threshold.load(Ordering::Relaxed)
    }

    /// The frames about `room` from now on, and whether the room is large now.
    pub fn subscribe(&self, room: &str, present: u64) -> (broadcast::Receiver<Arc<Frame>>, bool) {
        let Ok(mut rooms) = self.rooms.lock() else {
            return (broadcast::channel(1).1, false);
        };
        let threshold = self.large_threshold();
        let fan = rooms.entry(Arc::from(room)).or_insert_with(|| {
            let mut f = RoomFan::new();
            f.count = present;
            f.large = present >= threshold;
            f
        });
        (fan.tx.subscribe(), fan.large)
    }

    /// The frames about session `id` from now on (its ejection, its departure).
    pub fn follow_session(&self, id: &str) -> broadcast::Receiver<Arc<Frame>> {
        let Ok(mut own) = self.own.lock() else {
            return broadcast::channel(1).1;
        };
        own.entry(Arc::from(id)).or_insert_with(|| broadcast::channel(OWN_RING).0).subscribe()
    }

    /// Forgets session `id`'s ring once no stream follows it (call after dropping a receiver).
    pub fn unfollow_session(&self, id: &str) {
        if let Ok(mut own) = self.own.lock() {
            if own.get(id).is_some_and(|tx| tx.receiver_count() == 0) {
                own.remove(id);
            }
        }
    }

    /// Hands a frame to every stream following `room` (the people in the call: a lobby stream
    /// follows only its own session), if any; it is not stored anywhere.
    pub fn broadcast(&self, room: &str, frame: Frame) {
        if let Ok(rooms) = self.rooms.lock() {
            if let Some(fan) = rooms.get(room) {
                let _ = fan.tx.send(Arc::new(frame));
            }
        }
    }

    /// Hands a frame to session `id`'s streams, if any are open.
    pub fn notify(&self, id: &str, frame: Frame) {
        if let Ok(own) = self.own.lock() {
            if let Some(tx) = own.get(id) {
                let _ = tx.send(Arc::new(frame));
            }
        }
    }

    /// Hands each event about a session to that session's streams, and each event about a room
    /// to that room's subscribers, if it has any. `live` is the state the events were published
    /// with. Each kind has its audience (`EventKind::audience`: tokens, refusals, knocks,
    /// ejections and bans are for the room's admins only); events about participants hidden
    /// from presence (`hasPresence: false`) go to the room's admins only too.
    pub fn publish(&self, events: &[LoggedEvent], live: &Live) {
        let Ok(mut rooms) = self.rooms.lock() else { return };
        let Ok(own) = self.own.lock() else { return };
        if rooms.is_empty() && own.is_empty() {
            return;
        }
        // Departed sessions are no longer in `live`: their `participant.left` says whether they
        // were hidden (and covers their `participant.ejected` of the same batch).
        let mut hidden_gone: Vec<&str> = Vec::new();
        for e in events.iter().filter(|e| EventKind::parse(&e.kind) == Some(EventKind::ParticipantLeft)) {
            if let (Some(id), Ok(v)) = (e.session.as_deref(), serde_json::from_str::<Value>(&e.envelope)) {
                if !crate::sessions::has_presence(v["payload"].get("permissions")) {
                    hidden_gone.push(id);
                }
            }
        }
        let hidden = |id: &str| match live.get(id) {
            Some(entry) => !crate::sessions::has_presence(entry.session.permissions.as_ref()),
            None => hidden_gone.contains(&id),
        };
        let threshold = self.large_threshold();
        for e in events {
            let to_own = e.session.as_deref().and_then(|id| own.get(id));
            let room = e.room.as_deref();
            let fan = match room.and_then(|r| rooms.get_mut(r)) {
                Some(fan) if fan.tx.receiver_count() == 0 => {
                    if let Some(r) = room {
                        rooms.remove(r);
                    }
                    None
                }
                other => other,
            };
            if to_own.is_none() && fan.is_none() {
                continue;
            }
            let kind = EventKind::parse(&e.kind);
            let about_participant = matches!(
                kind,
                Some(
                    EventKind::ParticipantJoined
                        | EventKind::ParticipantLeft
                        | EventKind::ParticipantEjected
                        | EventKind::ParticipantJoinDenied
                        | EventKind::ParticipantUpdated
                )
            );
            let about_hidden = about_participant && e.session.as_deref().is_some_and(|id| hidden(id));
            let frame = Arc::new(Frame {
                to: None,
                kind: Arc::from(e.kind.as_str()),
                about: e.session.as_deref().map(Arc::from),
                admin_only: crate::events::audience_of(kind) == Audience::Admins || about_hidden,
                bytes: sse_frame(&e.kind, Some(e.seq), &e.envelope),
            });
            // A session's own streams get its events whatever the room's subscriptions.
            if let Some(tx) = to_own {
                let _ = tx.send(frame.clone());
            }
            let (Some(fan), Some(room)) = (fan, room) else { continue };
            let count = live.present(room);
            fan.count = count;
            let was_large = fan.large;
            fan.large = if was_large { count >= small_again_below(threshold) } else { count >= threshold };
            match (was_large, fan.large) {
                (false, true) => fan.dirty = true,
                (true, false) => {
                    fan.dirty = false;
                    fan.joined.clear();
                    fan.left.clear();
                    let _ = fan.tx.send(resync());
                    continue;
                }
                _ => {}
            }
            // Someone hidden or shown: everyone's view of who is present changes; each stream
            // takes a fresh snapshot (rare: an admin's update).
            let presence_changed = kind == Some(EventKind::ParticipantUpdated)
                && serde_json::from_str::<Value>(&e.envelope)
                    .is_ok_and(|v| v["payload"]["presence_changed"] == Value::Bool(true));
            if !fan.large {
                let _ = fan.tx.send(frame);
                if presence_changed {
                    let _ = fan.tx.send(resync());
                }
                continue;
            }
            match kind {
                // Joins and departures are folded into the next summary (the hidden ones left
                // out); an ejection is followed by its departure.
                Some(EventKind::ParticipantJoined | EventKind::ParticipantLeft) if !about_hidden => fold(fan, e),
                Some(EventKind::ParticipantJoined | EventKind::ParticipantLeft | EventKind::ParticipantEjected) => {}
                _ => {
                    let _ = fan.tx.send(frame);
                    if presence_changed {
                        let _ = fan.tx.send(resync());
                    }
                }
            }
        }
    }

    /// Sends one `presence-summary` frame to each large room that changed since the last call
    /// (`at`: when, in unix ms).
    pub fn flush_summaries(&self, now_ms: i64) {
        let Ok(mut rooms) = self.rooms.lock() else { return };
        rooms.retain(|_, fan| fan.tx.receiver_count() > 0);
        for (room, fan) in rooms.iter_mut().filter(|(_, f)| f.large && f.dirty) {
            let body = json!({
                "room": &**room,
                "at": now_ms,
                "count": fan.count,
                "joined": fan.joined.iter().rev().collect::<Vec<_>>(),
                "left": fan.left.iter().rev().collect::<Vec<_>>(),
                "joined_total": fan.joined_total,
                "left_total": fan.left_total,
            });
            let frame = Frame {
                to: None,
                kind: Arc::from("presence-summary"),
                about: None,
                admin_only: false,
                bytes: sse_frame("presence-summary", None, &body.to_string()),
            };
            let _ = fan.tx.send(Arc::new(frame));
            fan.joined.clear();
            fan.left.clear();
            fan.joined_total = 0;
            fan.left_total = 0;
            fan.dirty = false;
        }
    }

    /// Whether `room` is in large mode now (as its streams see it).
    pub fn is_large(&self, room: &str) -> bool {
        self.rooms.lock().ok().and_then(|r| r.get(room).map(|f| f.large)).unwrap_or(false)
    }

    /// Rooms with subscribers, and sessions followed (for metrics).
    pub fn counts(&self) -> (usize, usize) {
        let rooms = self.rooms.lock().map(|r| r.len()).unwrap_or(0);
        let own = self.own.lock().map(|o| o.len()).unwrap_or(0);
        (rooms, own)
    }
}

fn resync() -> Arc<Frame> {
    Arc::new(Frame { kind: Arc::from(RESYNC), about: None, admin_only: false, to: None, bytes: Bytes::new() })
}

/// Folds a join or a departure into the room's next summary.
fn fold(fan: &mut RoomFan, e: &LoggedEvent) {
    fan.dirty = true;
    let payload = serde_json::from_str::<Value>(&e.envelope).ok().map(|mut v| v["payload"].take()).unwrap_or_default();
    let who = |with_time: bool| {
        let mut o = json!({"id": payload["session_id"], "userName": payload["user_name"]});
        if with_time {
            let ms = payload["joined_at"].as_f64().map_or(0, |s| (s * 1000.0) as i64);
            o["joinTime"] = json!(crate::clock::rfc3339_ms(ms));
        }
        o
    };
    let (list, total, entry) = if EventKind::parse(&e.kind) == Some(EventKind::ParticipantJoined) {
        (&mut fan.joined, &mut fan.joined_total, who(true))
    } else {
        (&mut fan.left, &mut fan.left_total, who(false))
    };
    *total += 1;
    list.push_back(entry);
    if list.len() > SUMMARY_LIST {
        list.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Audience, EventKind};

    /// Issue 24, item 3: every kind reaches a room's streams marked as its audience says.
    #[test]
    fn frames_are_marked_with_their_kinds_audience() {
        let hub = Hub::default();
        let (mut rx, _) = hub.subscribe("r", 0);
        let events: Vec<LoggedEvent> = EventKind::ALL
            .iter()
            .enumerate()
            .map(|(i, kind)| LoggedEvent {
                seq: i as u64 + 1,
                ts_ms: 0,
                kind: kind.as_str().to_string(),
                room: Some("r".into()),
                envelope: r#"{"payload":{"room":"r"}}"#.into(),
                session: None,
            })
            .collect();
        hub.publish(&events, &Live::default());
        for kind in EventKind::ALL {
            let f = rx.try_recv().unwrap_or_else(|e| panic!("no frame for {kind:?}: {e}"));
            assert_eq!(&*f.kind, kind.as_str());
            assert_eq!(f.admin_only, kind.audience() == Audience::Admins, "{kind:?}");
        }
    }
}
