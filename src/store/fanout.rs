//! Fan-out per room: after each durable batch the writer hands the events about a room to
//! that room's subscribers (session streams). A change in a room is encoded once and shared;
//! streams of other rooms do no work for it.
//!
//! Each room has a bounded ring of recent events shared by its subscribers: memory per room is
//! bounded whatever the number of streams, and a subscriber that falls behind the ring learns
//! it (`Lagged`) and starts again from a fresh snapshot.
//!
//! Must not: block the writer (a send never waits).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::eventlog::Event;
use super::journal::LoggedEvent;

/// Events each room's ring holds.
pub const ROOM_RING: usize = 1024;

#[derive(Default)]
pub struct Hub {
    /// A std Mutex: held only to look up or insert a sender.
    rooms: Mutex<HashMap<Arc<str>, broadcast::Sender<Arc<Event>>>>,
}

impl Hub {
    /// The events about `room` from now on.
    pub fn subscribe(&self, room: &str) -> broadcast::Receiver<Arc<Event>> {
        let Ok(mut rooms) = self.rooms.lock() else {
            return broadcast::channel(1).1;
        };
        rooms.entry(Arc::from(room)).or_insert_with(|| broadcast::channel(ROOM_RING).0).subscribe()
    }

    /// Hands each event about a room to that room's subscribers, if it has any.
    pub fn publish(&self, events: &[LoggedEvent]) {
        let Ok(mut rooms) = self.rooms.lock() else { return };
        for e in events {
            let Some(room) = e.room.as_deref() else { continue };
            let Some(tx) = rooms.get(room) else { continue };
            if tx.receiver_count() == 0 {
                rooms.remove(room);
                continue;
            }
            let _ = tx.send(Arc::new(Event::from(e)));
        }
    }

    /// Rooms with subscribers (for metrics).
    pub fn rooms(&self) -> usize {
        self.rooms.lock().map(|r| r.len()).unwrap_or(0)
    }
}
