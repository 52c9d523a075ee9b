//! Caps on open streams: `GET /v1/events/stream` per API key, `GET /v1/sessions/:id/stream`
//! per session. A stream holds a [`StreamSlot`] for as long as it is open.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Open streams by owner (an API key's kid, or a session id). Entries exist only while a
/// stream is open.
#[derive(Debug, Default, Clone)]
pub struct StreamCounts {
    /// A std Mutex: nothing is awaited while it is held.
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// One open stream; dropping it frees the place.
#[derive(Debug)]
pub struct StreamSlot {
    counts: StreamCounts,
    owner: String,
}

impl StreamCounts {
    /// A place for one more stream of `owner`, or `None` when it already has `cap`.
    pub fn take(&self, owner: &str, cap: usize) -> Option<StreamSlot> {
        let mut m = self.open.lock().ok()?;
        let n = m.entry(owner.to_string()).or_insert(0);
        if *n >= cap {
            if *n == 0 {
                m.remove(owner);
            }
            return None;
        }
        *n += 1;
        Some(StreamSlot { counts: self.clone(), owner: owner.to_string() })
    }

    /// Streams open now, all owners together.
    pub fn total(&self) -> usize {
        self.open.lock().map(|m| m.values().sum()).unwrap_or(0)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.counts.open.lock() {
            if let Some(n) = m.get_mut(&self.owner) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.owner);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_owner() {
        let c = StreamCounts::default();
        let a = c.take("k", 2);
        let b = c.take("k", 2);
        assert!(a.is_some() && b.is_some() && c.take("k", 2).is_none());
        assert!(c.take("other", 2).is_some());
        drop(a);
        assert!(c.take("k", 2).is_some());
        drop(b);
        assert_eq!(c.total(), 0);
    }
}
