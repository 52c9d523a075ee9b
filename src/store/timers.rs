//! Deadlines, in the writer's memory: every lease, session ejection, room expiry and ban
//! expiry, in deadline order. Session deadlines are derived from the sessions (a restart
//! rebuilds them); room and ban deadlines are also rows of the `timers` tree, written by the
//! writer with the change that set them (see `ctx`). The writer's alone (readers get only the
//! count), so plain collections: a failed command's changes are undone from the undo log.
//!
//! Must not: decide what a firing does (`commands::deadlines` does).

use std::sync::Arc;

/// What a deadline is for. The order (leases, then ejections, rooms, bans) breaks ties
/// between equal deadlines, as the kind byte did in the rows.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TimerId {
    /// A session's presence lease (memory only: a restart gives every session a fresh one).
    Lease(Arc<str>),
    /// A session's own ejection deadline (`eject_after_elapsed`, `eject_at_token_exp`).
    Eject(Arc<str>),
    /// A room's `exp`.
    RoomExp(Arc<str>),
    /// A ban's `until`: (room, user id).
    Ban(Arc<str>, Arc<str>),
}

impl TimerId {
    /// Kept as a row of the `timers` tree (the others are derived from sessions).
    pub fn is_durable(&self) -> bool {
        matches!(self, TimerId::RoomExp(_) | TimerId::Ban(..))
    }
}

#[derive(Debug, Clone, Default)]
pub struct Timers {
    due: std::collections::BTreeSet<(i64, TimerId)>,
    at: std::collections::HashMap<TimerId, i64>,
}

impl Timers {
    /// Sets (or moves) a deadline; returns the previous one.
    pub fn set(&mut self, id: TimerId, at_ms: i64) -> Option<i64> {
        let old = self.clear(&id);
        self.due.insert((at_ms, id.clone()));
        self.at.insert(id, at_ms);
        old
    }

    /// Cancels a deadline; returns it.
    pub fn clear(&mut self, id: &TimerId) -> Option<i64> {
        let old = self.at.remove(id)?;
        self.due.remove(&(old, id.clone()));
        Some(old)
    }

    pub fn get(&self, id: &TimerId) -> Option<i64> {
        self.at.get(id).copied()
    }

    /// The earliest deadline.
    pub fn first(&self) -> Option<i64> {
        self.due.first().map(|(at, _)| *at)
    }

    /// Deadlines due at `now_ms`, earliest first, at most `limit`.
    pub fn due(&self, now_ms: i64, limit: usize) -> Vec<(i64, TimerId)> {
        self.due.iter().take_while(|(at, _)| *at <= now_ms).take(limit).cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.at.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_order_moves_and_cancels() {
        let mut t = Timers::default();
        let a = TimerId::Eject(Arc::from("a"));
        t.set(a.clone(), 50);
        t.set(TimerId::Lease(Arc::from("a")), 50);
        t.set(TimerId::RoomExp(Arc::from("r")), 10);
        assert_eq!(t.first(), Some(10));
        assert_eq!(t.set(a.clone(), 70), Some(50));
        let due = t.due(60, 10);
        assert_eq!(due.iter().map(|(at, _)| *at).collect::<Vec<_>>(), vec![10, 50]);
        assert!(matches!(due[1].1, TimerId::Lease(_)));
        assert_eq!(t.clear(&a), Some(70));
        assert_eq!(t.len(), 2);
    }
}
