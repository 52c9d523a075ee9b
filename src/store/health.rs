//! Progress of the store's threads, for the watchdog. The writer, the syncer and the applier say
//! when they start work and when they finish it; one that has been busy for longer than the
//! stall limit is stuck (a hung dependency: sled has open reports of deadlocks under load).
//! `/readyz` then answers 503 with the reason, the error is logged once, and under systemd the
//! watchdog pings stop so the unit is restarted; the journal means nothing acknowledged is lost.
//!
//! Must not: try to unstick anything.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Instant;

#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Millis since `started` when the writer took its current batch (0: idle).
    writer_busy: AtomicI64,
    /// Since when the syncer has been in a journal sync (0: not syncing).
    syncer_busy: AtomicI64,
    applier_busy: AtomicI64,
    /// What the applier last failed with, if it is failing.
    applier_error: std::sync::Mutex<Option<String>>,
    stall_after_ms: i64,
    logged: AtomicBool,
}

impl Health {
    pub fn new(stall_after: std::time::Duration) -> Health {
        Health {
            started: Instant::now(),
            writer_busy: AtomicI64::new(0),
            syncer_busy: AtomicI64::new(0),
            applier_busy: AtomicI64::new(0),
            applier_error: std::sync::Mutex::new(None),
            stall_after_ms: i64::try_from(stall_after.as_millis()).unwrap_or(i64::MAX),
            logged: AtomicBool::new(false),
        }
    }

    fn now(&self) -> i64 {
        i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX).max(1)
    }

    pub fn writer_busy(&self) {
        self.writer_busy.store(self.now(), Ordering::Relaxed);
    }

    pub fn writer_idle(&self) {
        self.writer_busy.store(0, Ordering::Relaxed);
    }

    pub fn syncer_busy(&self) {
        self.syncer_busy.store(self.now(), Ordering::Relaxed);
    }

    pub fn syncer_idle(&self) {
        self.syncer_busy.store(0, Ordering::Relaxed);
    }

    pub fn applier_busy(&self) {
        self.applier_busy.store(self.now(), Ordering::Relaxed);
    }

    pub fn applier_idle(&self) {
        self.applier_busy.store(0, Ordering::Relaxed);
        if let Ok(mut e) = self.applier_error.lock() {
            *e = None;
        }
    }

    pub fn applier_failed(&self, why: String) {
        if let Ok(mut e) = self.applier_error.lock() {
            *e = Some(why);
        }
    }

    /// Why the store is stuck, if it is. The first time it is, the reason is logged as an error.
    pub fn stalled(&self) -> Option<String> {
        let now = self.now();
        let since = |a: &AtomicI64| {
            let b = a.load(Ordering::Relaxed);
            (b > 0 && now - b > self.stall_after_ms).then_some((now - b) / 1000)
        };
        let why = if let Some(s) = since(&self.writer_busy) {
            Some(format!("the writer has made no progress for {s} s"))
        } else if let Some(s) = since(&self.syncer_busy) {
            Some(format!("a journal fdatasync has not returned for {s} s (the disk is not answering)"))
        } else if let Some(s) = since(&self.applier_busy) {
            let cause = self.applier_error.lock().ok().and_then(|e| e.clone());
            Some(match cause {
                Some(c) => format!("the store's applier has made no progress for {s} s ({c})"),
                None => format!("the store's applier (sled) has made no progress for {s} s"),
            })
        } else {
            None
        };
        match &why {
            Some(w) if !self.logged.swap(true, Ordering::Relaxed) => {
                tracing::error!(reason = %w, "the store is stuck: not ready; under systemd the watchdog restarts the service, and the journal keeps every acknowledged write");
            }
            None => self.logged.store(false, Ordering::Relaxed),
            _ => {}
        }
        why
    }
}
