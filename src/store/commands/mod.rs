//! Every mutation of the store, one type per command, grouped by what they change. Each
//! runs in a [`Ctx`](super::ctx::Ctx) and answers with its own reply type.
//!
//! Must not: touch the writer, the journal or sled's handles (only `Ctx`), or decide domain
//! rules that `rooms`, `tokens` and `sessions` own — they call them.

pub mod deadlines;
pub mod housekeeping;
pub mod moderation;
pub mod rooms;
pub mod session_data;
pub mod sessions;
pub mod tokens;
pub mod webhooks;

pub use housekeeping::{Compact, PurgeReport, Retention, Sweep, Sweeping, SweptPage, COMPACT_CHUNK};
pub use moderation::{Eject, EjectError, LiftBan, PermissionsError, Revoke, UpdatePermissions};
pub use rooms::{CreateRoom, CreateRooms, DeleteRoom, DeleteRooms, SetAcme, SetDomain, UpdateRoom, MAX_BATCH};
pub use session_data::{Merge, SessionData, SessionDataError, SetSessionData, MAX_SESSION_DATA};
pub use sessions::{
    DecideWaiting, Heartbeat, Heartbeats, Join, JoinOutcome, Leave, MediaChanged, Waiting, WaitingError, WaitingReport,
    MAX_WAITING_PER_ROOM,
};
pub use tokens::CreateToken;
pub use webhooks::{
    CreateWebhook, DeleteWebhook, Delivery, Progress, ReplayWebhook, UpdateWebhook, WebhookPatch, WebhookProgress,
};
