//! Meeting session data (`set-session-data`): a JSON object that lives with the meeting running
//! in a room — written durably like any change, in backups while the meeting runs, and deleted
//! in the batch that ends the meeting (`sessions::end_sessions`).

use serde_json::{json, Map, Value};

use crate::store::command::Command;
use crate::store::ctx::Ctx;
use crate::store::StoreError;

/// Largest session data, as JSON (Daily's limit for meeting session data).
pub const MAX_SESSION_DATA: usize = 100 * 1024;

/// How new data meets what is there (Daily's `mergeStrategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// The new object replaces the old one.
    Replace,
    /// `keysToDelete` go, then the new object's top-level keys replace the old ones'.
    ShallowMerge,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SessionDataError {
    #[error("room not found")]
    NoRoom,
    #[error("no meeting is running in room '{0}': session data lives with a meeting")]
    NoMeeting(String),
    #[error("session data would be {0} bytes as JSON; at most {MAX_SESSION_DATA}")]
    TooLarge(usize),
}

#[derive(Debug)]
pub struct SetSessionData {
    pub room: String,
    pub merge: Merge,
    pub data: Map<String, Value>,
    pub delete: Vec<String>,
}

/// A meeting's session data as one change left it.
#[derive(Debug)]
pub struct SessionData {
    pub meeting_id: String,
    /// The seq of the change's `meeting-session-data.updated` event: a later change has a
    /// higher one.
    pub seq: u64,
    pub data: Map<String, Value>,
}

impl Command for SetSessionData {
    /// The session data now.
    type Reply = Result<SessionData, SessionDataError>;

    fn apply(self, cx: &mut Ctx<'_>) -> Result<Self::Reply, StoreError> {
        let now_s = cx.now_secs();
        if cx.room(&self.room)?.filter(|r| !r.is_expired(now_s)).is_none() {
            return Ok(Err(SessionDataError::NoRoom));
        }
        let Some((meeting_id, _)) = cx.meeting(&self.room) else {
            return Ok(Err(SessionDataError::NoMeeting(self.room)));
        };
        let data = match self.merge {
            Merge::Replace => self.data,
            Merge::ShallowMerge => {
                let mut d = cx.session_data(&meeting_id)?;
                for k in &self.delete {
                    d.remove(k);
                }
                d.extend(self.data);
                d
            }
        };
        let size = serde_json::to_vec(&data).map_or(usize::MAX, |b| b.len());
        if size > MAX_SESSION_DATA {
            return Ok(Err(SessionDataError::TooLarge(size)));
        }
        cx.put_session_data(&meeting_id, &data)?;
        // The log keeps that it changed, not the data: session data goes with its meeting, and
        // the log outlives meetings. The streams of those in the call get the data itself.
        let seq = cx.next_seq();
        let keys: Vec<&String> = data.keys().collect();
        cx.event(
            crate::events::EventKind::MeetingSessionDataUpdated,
            json!({"room": self.room, "meeting_id": meeting_id, "keys": keys, "bytes": size}),
        );
        Ok(Ok(SessionData { meeting_id, seq, data }))
    }
}
